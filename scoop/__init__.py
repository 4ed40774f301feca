"""SCOOP's public package, kept so that programs written for SCOOP run unchanged.

Re-exports only: everything lives in :mod:`scoop_core`. ``IS_ORIGIN``,
``IS_RUNNING``, ``worker``, ``BROKER``, ``DEBUG`` and ``SIZE`` are read from
:mod:`scoop_core.context` when asked for, since the run sets them after
this package may have been imported.
"""

from __future__ import annotations

from typing import Any

from scoop_core import __version__, context
from scoop_core.log import logger

__all__ = ["BROKER", "DEBUG", "IS_ORIGIN", "IS_RUNNING", "SIZE", "__version__", "logger", "worker"]

_CONTEXT = {"IS_ORIGIN", "IS_RUNNING", "worker", "BROKER", "DEBUG", "SIZE"}


def __getattr__(name: str) -> Any:
    if name in _CONTEXT:
        return getattr(context, name)
    raise AttributeError(f"module 'scoop' has no attribute {name!r}")
