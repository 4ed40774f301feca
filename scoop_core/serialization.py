"""The built-in serializers, ``cloudpickle`` (the default) and ``pickle``.

Both use pickle protocol 5 with out-of-band buffers, so a large array or
bytes object becomes its own frame and is never copied into the main pickle.

One rule differs from plain cloudpickle: a function or class defined at the
top level of the program being run (module ``__main__``, with a file) is sent
*by reference*, as plain pickle does, when a worker's import of the program
defines it too. Every worker imports the program, so the reference resolves
there, and module-level data the function reads is not shipped with every
call (the seed's "Large datasets" advice keeps working). What a worker's
import defines is read from the program's source: a name bound only under
``if __name__ == "__main__":`` (or ``if scoop.IS_ORIGIN:``), rebound there,
or bound through ``global`` inside a function exists on the root alone, so
such a function or class goes by value, as do lambdas, closures and anything
defined in an interactive session.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import pickle
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

import cloudpickle

from scoop_core.interfaces import Frame, Serializer
from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import SerializerPlugin

PROTOCOL = 5


def _main_has_file() -> bool:
    main = sys.modules.get("__main__")
    return bool(getattr(main, "__file__", None)) and not getattr(main, "__scoop_no_import__", False)


def _root_only_test(test: ast.expr) -> bool | None:
    """For an ``if`` at the program's top level: True if its body runs in the
    root alone (``__name__ == "__main__"``, ``scoop.IS_ORIGIN``), False if its
    ``else`` does (``__name__ != "__main__"``), None if both may run anywhere."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        sides = [test.left, test.comparators[0]]
        names = {s.id for s in sides if isinstance(s, ast.Name)}
        values = {s.value for s in sides if isinstance(s, ast.Constant)}
        if names == {"__name__"} and values == {"__main__"}:
            if isinstance(test.ops[0], ast.Eq | ast.Is):
                return True
            if isinstance(test.ops[0], ast.NotEq | ast.IsNot):
                return False
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return True if name == "IS_ORIGIN" else None


def _bound(node: ast.AST) -> set[str]:
    """Names a statement binds in its own scope (not inside functions it defines)."""
    names: set[str] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(current.name)
            todo.extend(current.decorator_list)
            continue
        if isinstance(current, ast.Lambda):
            continue
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Store):
            names.add(current.id)
        elif isinstance(current, ast.alias):
            names.add((current.asname or current.name).partition(".")[0])
        elif isinstance(current, ast.ExceptHandler) and current.name:
            names.add(current.name)
        todo.extend(ast.iter_child_nodes(current))
    return names


def _declared_global(tree: ast.Module) -> set[str]:
    return {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}


@functools.lru_cache(maxsize=8)
def _worker_names(path: str) -> frozenset[str] | None:
    """Names that a worker's import of the program at ``path`` binds and the
    root does not bind again; None if the source cannot be read. Read once:
    workers imported the program as it was when they started."""
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    everywhere: set[str] = set()
    root_only: set[str] = set()
    todo: list[tuple[list[ast.stmt], bool]] = [(tree.body, False)]
    while todo:
        body, in_root = todo.pop()
        for stmt in body:
            if isinstance(stmt, ast.If):
                where = _root_only_test(stmt.test)
                todo.append((stmt.body, in_root or where is True))
                todo.append((stmt.orelse, in_root or where is False))
                continue
            if isinstance(stmt, ast.Try | ast.TryStar | ast.With | ast.For | ast.While):
                for field in ("body", "orelse", "finalbody"):
                    todo.append((getattr(stmt, field, []), in_root))
                for handler in getattr(stmt, "handlers", []):
                    todo.append((handler.body, in_root))
                    if handler.name:
                        (root_only if in_root else everywhere).add(handler.name)
                header = [getattr(stmt, "target", None), *getattr(stmt, "items", [])]
                for part in header:
                    if part is not None:
                        (root_only if in_root else everywhere).update(_bound(part))
                continue
            (root_only if in_root else everywhere).update(_bound(stmt))
    return frozenset(everywhere - root_only - _declared_global(tree))


def _defined_on_workers(name: str) -> bool:
    path = getattr(sys.modules["__main__"], "__file__", None)
    if not path:
        return False
    names = _worker_names(_absolute(path))
    return names is not None and name in names


@functools.lru_cache(maxsize=8)
def _absolute(path: str) -> str:
    # Asked for every function pickled: os.path.abspath costs microseconds.
    return os.path.abspath(path)


def _is_main_toplevel(obj: Any) -> bool:
    """True for a function or class reachable as ``__main__.<qualname>`` that
    a worker's import of the program defines as well."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    qualname = getattr(obj, "__qualname__", "")
    if "<" in qualname or not _main_has_file():
        return False
    if not _defined_on_workers(qualname.partition(".")[0]):
        return False
    target: Any = sys.modules["__main__"]
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is obj


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType | type) and _is_main_toplevel(obj):
            return NotImplemented
        return super().reducer_override(obj)


def _frames(main: bytes, buffers: list[pickle.PickleBuffer]) -> list[Frame]:
    return [main, *buffers]


def _loads(frames: Sequence[Frame]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


class _ByValue(Exception):
    """The object holds a function or class that must travel by value."""


def _by_reference(obj: Any) -> bool:
    """Whether plain pickle's reference to a function or class resolves on a worker
    as it does here (plain pickle itself checks that the name leads back to ``obj``)."""
    module = getattr(obj, "__module__", None)
    if module == "__main__":
        return _is_main_toplevel(obj)
    return module in sys.modules and "<" not in getattr(obj, "__qualname__", "<")


class _PlainPickler(pickle.Pickler):
    """The C pickler, stopped by any function or class that cloudpickle would
    send by value: most calls and results hold none, and pickle several times
    faster this way."""

    def reducer_override(self, obj: Any) -> Any:
        if (type(obj) is types.FunctionType or isinstance(obj, type)) and not _by_reference(obj):
            raise _ByValue
        return NotImplemented


def _plain_dumps(obj: Any) -> list[Frame] | None:
    """``obj`` pickled by the C pickler, or None where cloudpickle is needed."""
    if cloudpickle.list_registry_pickle_by_value():
        return None  # modules the program asked cloudpickle to send by value
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    try:
        _PlainPickler(out, protocol=PROTOCOL, buffer_callback=buffers.append).dump(obj)
    except Exception:
        return None  # by value, or unpicklable: cloudpickle decides and explains
    return _frames(out.getvalue(), buffers)


class CloudpickleSerializer(Serializer):
    """cloudpickle: lambdas, closures, bound methods and decorated functions.

    Objects that hold no function or class to send by value (most calls and
    results) are pickled by the standard C pickler, with the same outcome."""

    name = "cloudpickle"

    def dumps(self, obj: Any) -> list[Frame]:
        plain = _plain_dumps(obj)
        if plain is not None:
            return plain
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        _Pickler(out, protocol=PROTOCOL, buffer_callback=buffers.append).dump(obj)
        return _frames(out.getvalue(), buffers)

    def loads(self, frames: Sequence[Frame]) -> Any:
        return _loads(frames)


class PickleSerializer(Serializer):
    """The standard library's pickle: top-level functions and classes only."""

    name = "pickle"

    def dumps(self, obj: Any) -> list[Frame]:
        buffers: list[pickle.PickleBuffer] = []
        main = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
        return _frames(main, buffers)

    def loads(self, frames: Sequence[Frame]) -> Any:
        return _loads(frames)


@hookimpl
def scoop_serializers() -> Iterable[SerializerPlugin]:
    return (
        SerializerPlugin(
            name="cloudpickle",
            factory=CloudpickleSerializer,
            description="cloudpickle, protocol 5, out-of-band buffers (default)",
        ),
        SerializerPlugin(
            name="pickle",
            factory=PickleSerializer,
            description="standard pickle, protocol 5, out-of-band buffers",
        ),
    )
