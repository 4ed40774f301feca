"""The documentation site builds without a warning, and its API reference
documents every public name.

The site is built here as ``.ci/run`` builds it (``sphinx-build -W``); the
names it documents are read from its inventory (``objects.inv``), and the
public names from the code: the ``__all__`` of ``scoop``, ``scoop.futures``,
``scoop.shared``, ``scoop_core``, ``scoop_core.errors`` and the plugin
interfaces' modules, and the public members of their classes. A class or
function counts as documented under any name it has (``scoop.futures.submit``
is ``scoop_core.futures.submit``); a constant only under its own name.
"""

from __future__ import annotations

import importlib
import inspect
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "scoop",
    "scoop.futures",
    "scoop.shared",
    "scoop_core",
    "scoop_core.errors",
    "scoop_core.plugins",
    "scoop_core.interfaces",
    "scoop_core.scheduler_launcher",
    "scoop_core.testing",
)
# Classes whose public members are documented one by one.
CLASSES = ("scoop_core.Executor", "scoop.futures.Future", "scoop.futures.options")


def public_names() -> list[str]:
    names: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            exported = [
                n
                for n, obj in vars(module).items()
                if not n.startswith("_") and getattr(obj, "__module__", None) == module_name
            ]
        names += [f"{module_name}.{name}" for name in exported]
    for path in CLASSES:
        cls = resolve(path)
        names += [
            f"{path}.{member}"
            for member in vars(cls)
            if not member.startswith("_") and member not in DOCUMENTED_BY_THE_STANDARD
        ]
    return sorted(set(names))


# Future's methods that concurrent.futures documents, which ours keep as they are.
DOCUMENTED_BY_THE_STANDARD = {"mark_cancelled"}


def resolve(path: str) -> Any:
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(path)


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[int]]:
    """The site's documented names, and the ids of the objects they name."""
    from sphinx.util.inventory import InventoryFile

    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", site],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"the site does not build cleanly:\n{proc.stderr}"
    with open(site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", posixpath.join)
    names = {
        name for kind, entries in inventory.items() if kind.startswith("py:") for name in entries
    }
    ids: set[int] = set()
    for name in names:
        try:
            obj = resolve(name)
        except (LookupError, AttributeError):
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
            ids.add(id(obj))
    return {"names": names, "ids": ids}  # type: ignore[dict-item]


def test_every_public_name_is_in_the_api_reference(documented: dict[str, Any]) -> None:
    missing = []
    for name in public_names():
        obj = resolve(name)
        by_object = inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)
        if name not in documented["names"] and not (by_object and id(obj) in documented["ids"]):
            missing.append(name)
    assert not missing, (
        "public names the API reference (docs/reference/) does not document: "
        + ", ".join(missing)
        + "; give them a docstring, or add them to a page there"
    )
