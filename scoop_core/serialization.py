"""The built-in serializers, ``cloudpickle`` (the default) and ``pickle``.

Both use pickle protocol 5 with out-of-band buffers, so a large array or
bytes object becomes its own frame and is never copied into the main pickle.

One rule differs from plain cloudpickle: a function or class defined at the
top level of the program being run (module ``__main__``, with a file) is sent
*by reference*, as plain pickle does. Every worker imports the program, so
the reference resolves there, and module-level data the function reads is
not shipped with every call (the seed's "Large datasets" advice keeps
working). Lambdas, closures and anything defined in an interactive session
are sent by value.
"""

from __future__ import annotations

import io
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


def _is_main_toplevel(obj: Any) -> bool:
    """True for a function or class reachable as ``__main__.<qualname>``."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    qualname = getattr(obj, "__qualname__", "")
    if "<" in qualname or not _main_has_file():
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


class CloudpickleSerializer(Serializer):
    """cloudpickle: lambdas, closures, bound methods and decorated functions."""

    name = "cloudpickle"

    def dumps(self, obj: Any) -> list[Frame]:
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
