"""What a test's root submits to workers serving in this process, for
``test_worker.py`` (over a broker) and ``test_store_driver.py`` (over a store).

The worker's functions and the test share this process, so a function tells
the test it started, or waits for its go-ahead, through the
:class:`threading.Event` objects of :data:`EVENTS`, and notes that it ran in
:data:`RAN`. :func:`restore_process_wide` puts back what a worker sets for
the whole process and empties both.
"""

from __future__ import annotations

import threading

import pytest

from scoop_core import calls, future, futures, runtime

WAIT = 30.0  # seconds: only a broken scheduler or driver needs that long
# Nobody is declared lost while a test runs: a worker that loses its broker
# exits its process, which here is the test's.
NEVER = 3600.0

EVENTS: dict[str, threading.Event] = {}
RAN: list[str] = []


def square(x: int) -> int:
    return x * x


def fib(n: int) -> int:
    """Two nested futures a level, each waited for inside its parent."""
    if n < 2:
        return n
    a = futures.submit(fib, n - 1)
    b = futures.submit(fib, n - 2)
    return int(a.result() + b.result())


def sum_of_squares(n: int) -> int:
    return sum(futures.map(square, range(n)))


def boom(what: str) -> None:
    raise ValueError(f"boom: {what}")


def hold(name: str) -> str:
    """Say it started, then wait for the test's go-ahead (blocking the worker's thread)."""
    EVENTS[f"{name} started"].set()
    EVENTS[f"{name} go"].wait(WAIT)
    return name


def note(name: str) -> str:
    RAN.append(name)
    return name


def held(name: str) -> tuple[threading.Event, threading.Event]:
    """The events of ``hold(name)``: it started, and its go-ahead."""
    started = EVENTS[f"{name} started"] = threading.Event()
    go = EVENTS[f"{name} go"] = threading.Event()
    return started, go


def restore_process_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker sets these for the whole process, as a worker process may:
    put them back after the test, and start it with no events and no notes."""
    monkeypatch.setattr(runtime, "_current", runtime.current())
    monkeypatch.setattr(calls, "WORKER_NAME", calls.WORKER_NAME)
    monkeypatch.setattr(future, "greenlet_event", future.greenlet_event)
    EVENTS.clear()
    RAN.clear()
