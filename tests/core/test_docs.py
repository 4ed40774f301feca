"""docs/plugins.md documents every hook, with its signature and example, and every record field.

The hooks and records are discovered from the code (pluggy's spec marker,
dataclass fields), so adding a hook or a field without documenting it fails
here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scoop_core.plugins import hookspec, types
from scoop_core.plugins.manager import PluginManager

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
    assert {"scoop_transports", "scoop_serializers", "scoop_launchers", "scoop_settings"} <= set(
        HOOKS
    )
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
