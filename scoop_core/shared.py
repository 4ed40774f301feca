"""Constants shared by every worker of a run: ``setConst`` and ``getConst``.

A constant is defined once for the whole pool (defining it again anywhere
raises :class:`~scoop_core.errors.ConstantError`) and reaches every worker,
including workers that join later. The broker sends it to every worker
before any future submitted after ``setConst`` returns, so such futures
never wait for it. Outside a launched program the constants live in this
process, so a program run serially still works.
"""

from __future__ import annotations

from typing import Any

from scoop_core import runtime
from scoop_core.errors import ConstantError, ConstantNotFound

__all__ = ["getConst", "get_const", "setConst", "set_const"]

_MISSING: Any = runtime.MISSING
_local: dict[str, Any] = {}


def setConst(**kwargs: Any) -> None:
    """Define shared constants: ``shared.setConst(size=10, table=data)``."""
    rt = runtime.current()
    for name, value in kwargs.items():
        if rt is None:
            if name in _local:
                raise ConstantError(ConstantError.defined_twice(name))
            _local[name] = value
        else:
            rt.set_const(name, value)


def getConst(name: str, timeout: float | None = 0.1, default: Any = _MISSING) -> Any:
    """The value of shared constant ``name``.

    Waits up to ``timeout`` seconds (``None``: for ever) for a constant being
    defined elsewhere to arrive. A constant whose value is ``None`` returns
    ``None``; a constant that does not exist returns ``default`` if given,
    else raises :class:`~scoop_core.errors.ConstantNotFound` (a ``KeyError``)."""
    rt = runtime.current()
    if rt is not None:
        return rt.get_const(name, timeout, default)
    if name in _local:
        return _local[name]
    if default is not _MISSING:
        return default
    raise ConstantNotFound(
        f"no shared constant named {name!r} (defined: {', '.join(sorted(_local)) or 'none'})"
    )


set_const = setConst
get_const = getConst
