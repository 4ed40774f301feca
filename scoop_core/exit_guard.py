"""``os._exit`` in a future the root runs itself does not end the root.

On a worker, a future that calls ``os._exit`` ends its worker, and the
broker's loss accounting takes over: the future runs again elsewhere, then
fails alone with ``WorkerLostError`` (see :mod:`scoop_core.broker_policy`).
A root that runs a cheap future itself (``root_runs_futures``) must not
turn that into the end of the whole program. While a thread runs such a
future inside :func:`guarded`, ``os._exit`` raises :class:`ExitInFuture`
in that thread instead, and the root sends the future to a worker, where
it meets the usual fate. Every other thread, and this thread outside the
block, exits as ``os._exit`` always does.

What cannot be caught (a crash in C code, a signal that kills the
process) still ends the root; ``root_runs_futures = false`` keeps every
future on the workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

__all__ = ["ExitInFuture", "guarded"]

_real_exit = os._exit
_local = threading.local()
_install_lock = threading.Lock()


class ExitInFuture(BaseException):
    """A future running in the root called ``os._exit(status)``.

    A ``BaseException``, so that a future's ``except Exception`` does not
    swallow it."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _exit(status: int) -> NoReturn:
    if getattr(_local, "guarded", False):
        raise ExitInFuture(status)
    _real_exit(status)


@contextmanager
def guarded() -> Iterator[None]:
    """In this thread, for the block: ``os._exit`` raises :class:`ExitInFuture`."""
    if os._exit is not _exit:
        with _install_lock:
            os._exit = _exit
    _local.guarded = True
    try:
        yield
    finally:
        _local.guarded = False
