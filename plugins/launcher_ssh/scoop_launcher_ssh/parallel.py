"""Doing one thing per host, on many hosts at once, each within a time limit.

Logging in can hang where nothing can interrupt it (a host that drops
packets, a stalled banner, a ProxyCommand that never answers), so each host
is handled in its own thread and the caller enforces the limit from outside:
an :class:`Attempt` registers everything it opens (sockets, SSH clients,
processes) as soon as it opens it, and :meth:`Attempt.abort` closes them all,
which makes the blocked call fail. Whatever an attempt opens after it was
aborted is closed at once, so an attempt that finishes late leaks nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("scoop.launcher.ssh")


class Attempt:
    """One host's piece of work: what it is doing now, and how to undo it."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.stage = "waiting for a free connection slot"
        """What the attempt is doing, in words that finish "timed out while ..."."""
        self.started: float | None = None
        self.timed_out = False
        self.reached = False
        """Whether the host answered and let us in (set by the job)."""
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._aborted = False
        self._cleanups: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def progressed(self) -> None:
        """The attempt moved on (another piece of a file sent): its time limit starts again."""
        self.started = time.monotonic()

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the attempt is aborted (at once if it already was)."""
        with self._lock:
            if not self._aborted:
                self._cleanups.append(cleanup)
                return
        _quietly(cleanup)

    def abort(self) -> None:
        """Close everything the attempt opened, newest first. Idempotent."""
        with self._lock:
            self._aborted = True
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            _quietly(cleanup)


def _quietly(cleanup: Callable[[], None]) -> None:
    try:
        cleanup()
    except Exception as exc:  # closing something already broken
        log.debug("cleanup %r failed: %s", cleanup, exc)


def run_all(
    jobs: Sequence[tuple[str, Callable[[Attempt], Any]]], *, timeout: float, limit: int
) -> list[Attempt]:
    """Run each ``(label, job)`` as ``job(attempt)`` in its own thread, at most
    ``limit`` at a time; return the attempts, in order, once each has finished
    or run for ``timeout`` seconds since it started or last
    :meth:`~Attempt.progressed` (then it is aborted and ``timed_out``).

    A finished attempt has its ``result`` or its ``error``; nothing raised by
    a job escapes. Resources of successful attempts stay open (the caller
    owns them and aborts the attempt to close them)."""
    attempts = [Attempt(label) for label, _ in jobs]
    slots = threading.BoundedSemaphore(max(1, limit))
    changed = threading.Condition()

    def run(attempt: Attempt, job: Callable[[Attempt], Any]) -> None:
        with slots:
            with changed:
                if attempt.timed_out:
                    return
                attempt.started = time.monotonic()
                changed.notify_all()
            try:
                attempt.result = job(attempt)
            except BaseException as exc:
                attempt.error = exc
            with changed:
                attempt._done.set()
                changed.notify_all()

    for attempt, (_, job) in zip(attempts, jobs, strict=True):
        threading.Thread(
            target=run, args=(attempt, job), name=f"scoop-ssh {attempt.label}", daemon=True
        ).start()
    try:
        while True:
            with changed:
                pending = [a for a in attempts if not a.done and not a.timed_out]
                if not pending:
                    break
                now = time.monotonic()
                expired = [
                    a for a in pending if a.started is not None and now >= a.started + timeout
                ]
                for a in expired:
                    a.timed_out = True
                if not expired:
                    deadlines = [a.started + timeout for a in pending if a.started is not None]
                    changed.wait(min(deadlines) - now if deadlines else None)
            for a in expired:
                a.abort()
    except BaseException:
        for a in attempts:
            a.timed_out = a.timed_out or not a.done
            a.abort()
        raise
    return attempts


def close_all(attempts: Sequence[Attempt]) -> None:
    """Abort every attempt at once (closing what each opened), in parallel."""
    threads = [threading.Thread(target=a.abort, daemon=True) for a in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
