"""docs/plugins.md documents every hook, record field and public name, and its examples run.

The hooks, records and names are discovered from the code (pluggy's spec
marker, dataclass fields, ``__all__`` and the interfaces' methods), so adding
one without documenting it fails here. Every Python block of the page is
either a hook's example, loaded as a plugin, or a file of the plugin package
the page builds (its first line names the file), and those files are
written out and their tests run with pytest, as a plugin author would.
Its ``pyproject.toml`` block declares the package's entry point: installed
with it, the package's records are listed by ``scoop plugins`` as the page
shows. The page hands all its examples to this file (the marker at its top).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import scoop_core.plugins
import scoop_core.scheduler_launcher
import scoop_core.testing
from scoop_core import interfaces
from scoop_core.plugins import hookspec, types
from scoop_core.plugins.manager import ENTRY_POINT_GROUP, PluginManager

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()

HOOKS: dict[str, Callable[..., Any]] = {
    name: obj
    for name, obj in vars(hookspec).items()
    if name.startswith("scoop_") and hasattr(obj, f"{hookspec.PROJECT_NAME}_spec")
}

RECORDS = [
    obj
    for obj in vars(types).values()
    if dataclasses.is_dataclass(obj) and obj.__module__ == types.__name__
]


# The modules a plugin author works with: each name they export must be in the docs.
EXPORTING = (scoop_core.plugins, scoop_core.testing, scoop_core.scheduler_launcher)


def public_names() -> list[str]:
    """Every public name of the plugin interfaces, as ``module.name`` or ``Class.member``."""
    names = [f"{module.__name__}.{name}" for module in EXPORTING for name in module.__all__]
    for name, obj in vars(interfaces).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != interfaces.__name__:
            continue
        names.append(f"{interfaces.__name__}.{name}")
        if inspect.isclass(obj):
            names += [f"{name}.{member}" for member in vars(obj) if not member.startswith("_")]
    names.append(f"{interfaces.__name__}.Frame")
    launcher = scoop_core.scheduler_launcher.SchedulerLauncher
    names += [f"SchedulerLauncher.{m}" for m in vars(launcher) if not m.startswith("_")]
    return sorted(set(names))


FILE_LINE = re.compile(r"# ([\w./]+\.py)\n")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC, re.S | re.M)


def page_files() -> dict[str, str]:
    """The files of the plugin package the page builds: path -> text."""
    files = {}
    for block in python_blocks():
        match = FILE_LINE.match(block)
        if match:
            assert match.group(1) not in files, f"docs/plugins.md writes {match.group(1)} twice"
            files[match.group(1)] = block
    return files


class _AsWritten(str):
    """An annotation string that prints without quotes.

    With ``from __future__ import annotations`` every annotation is the
    string written in the source, and ``inspect.signature`` prints it quoted;
    the docs show it as written.
    """

    def __repr__(self) -> str:
        return str(self)


def signature_as_written(func: Callable[..., Any]) -> str:
    sig = inspect.signature(func)
    params = [
        p.replace(annotation=_AsWritten(p.annotation)) if isinstance(p.annotation, str) else p
        for p in sig.parameters.values()
    ]
    returns = sig.return_annotation
    if isinstance(returns, str):
        returns = _AsWritten(returns)
    return f"{func.__name__}{sig.replace(parameters=params, return_annotation=returns)}"


def example(func: Callable[..., Any]) -> str:
    """The code of the ``.. code-block:: python`` in a hook's docstring."""
    doc = inspect.getdoc(func) or ""
    _, found, code = doc.partition(".. code-block:: python\n")
    assert found, f"{func.__name__} has no example"
    return textwrap.dedent(code).strip("\n")


def section(heading: str) -> str:
    """The text under a ``###`` heading of the docs, up to the next heading."""
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#)", DOC + "\n#", re.S | re.M)
    assert match, f"docs/plugins.md has no heading: ### {heading}"
    return match.group(1)


def test_hooks_and_signatures_are_found() -> None:
    assert {"scoop_transports", "scoop_serializers", "scoop_launchers"} <= set(HOOKS)
    assert (
        signature_as_written(hookspec.scoop_transports)
        == "scoop_transports() -> Iterable[TransportPlugin]"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    assert name in DOC
    section(f"`{signature_as_written(HOOKS[name])}`")


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_example_is_in_the_docs(name: str) -> None:
    assert f"```python\n{example(HOOKS[name])}\n```" in section(
        f"`{signature_as_written(HOOKS[name])}`"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_example_is_a_working_plugin(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"doc_example_{name}"
    (tmp_path / f"{module}.py").write_text(example(HOOKS[name]) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SCOOP_DISABLE_PLUGINS", raising=False)
    try:
        pm = PluginManager(entry_points=False, builtins=(("example", module),))
    finally:
        sys.modules.pop(module, None)

    registered = [info for info in pm.plugins() if info.name == "example"]
    assert registered and all(info.status == "enabled" for info in registered)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_record_fields_are_documented(record: type) -> None:
    text = section(f"`{record.__name__}`")
    for field in dataclasses.fields(record):
        assert f"| `{field.name}` |" in text, f"{record.__name__}.{field.name} is not documented"


@pytest.mark.parametrize("name", public_names())
def test_public_name_is_in_the_docs(name: str) -> None:
    short = name.rsplit(".", 1)[-1]
    assert re.search(rf"\b{re.escape(short)}\b", DOC), f"docs/plugins.md never names {name}"


def test_every_python_example_runs_here() -> None:
    hook_examples = {example(func) for func in HOOKS.values()}
    for block in python_blocks():
        assert block.strip("\n") in hook_examples or FILE_LINE.match(block), (
            "a Python block of docs/plugins.md is neither a hook's example nor a file of the "
            f"example package (first line '# path/to/file.py'):\n{block[:300]}"
        )
    assert {"mypkg/plugin.py", "mypkg/transport.py", "mypkg/launcher.py"} <= set(page_files())


def write_package(where: Path) -> dict[str, str]:
    """The page's package written in ``where``; the environment that imports it."""
    for path, text in page_files().items():
        (where / path).parent.mkdir(parents=True, exist_ok=True)
        (where / path).write_text(text)
    (where / "mypkg" / "__init__.py").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), *sys.path])}
    env.pop("SCOOP_DISABLE_PLUGINS", None)
    return env


def test_the_example_package_passes_its_own_tests(tmp_path: Path) -> None:
    env = write_package(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC, re.S | re.M)


def test_installed_with_its_entry_point_the_package_is_listed_as_the_page_shows(
    tmp_path: Path,
) -> None:
    """The page's ``pyproject.toml`` entry point, in a distribution's metadata
    as ``pip install`` writes it, makes ``scoop plugins`` list the records."""
    [pyproject] = doc_blocks("toml")
    assert pyproject.startswith("# pyproject.toml\n")
    declared = tomllib.loads(pyproject)["project"]["entry-points"]
    assert set(declared) == {ENTRY_POINT_GROUP}
    env = write_package(tmp_path)
    dist_info = tmp_path / "mypkg-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        + "".join(f"{name} = {module}\n" for name, module in declared[ENTRY_POINT_GROUP].items())
    )

    listed = subprocess.run(
        [str(Path(sys.executable).parent / "scoop"), "plugins"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr
    rows = {tuple(line.split()) for line in listed.stdout.splitlines()}
    shown = next(block for block in doc_blocks("text") if block.startswith("NAME "))
    for line in shown.splitlines():
        assert tuple(line.split()) in rows, (
            f"scoop plugins does not list {line!r}:\n{listed.stdout}"
        )
