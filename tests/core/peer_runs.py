"""A root and workers serving in this process, for ``test_worker.py`` (over a
broker) and ``test_store_driver.py`` (over a store).

Each test file opens its peers' endpoints its own way; this module starts a
root or a worker on an endpoint as a process of its own would, and holds the
stories that read the same over either driver (:func:`check_results`,
:func:`check_a_raising_future`, :func:`check_cancel_while_busy`), so both
drivers are held to the same outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from peer_functions import EVENTS, NEVER, RAN, WAIT, boom, held, hold, note, square

from scoop_core import runtime
from scoop_core.calls import Call
from scoop_core.future import Future
from scoop_core.interfaces import Endpoint
from scoop_core.serialization import CloudpickleSerializer
from scoop_core.worker import WorkerRuntime, set_worker_name


class Submits:
    """What a run's root submits: one future, or several in one message."""

    root: runtime.RootRuntime

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        (fut,) = self.root.submit([Call(fn, args, {})])
        return fut

    def submit_all(self, *calls: tuple[Any, ...]) -> list[Future]:
        """Several futures in one message, as ``map`` sends them."""
        return self.root.submit([Call(fn, tuple(args), {}) for fn, *args in calls])


def start_root(endpoint: Endpoint, key: bytes) -> runtime.RootRuntime:
    root = runtime.RootRuntime(
        endpoint, key=key, serializer=CloudpickleSerializer(), name="root", heartbeat_timeout=NEVER
    )
    root.start(WAIT)
    return root


def start_worker(
    endpoint: Endpoint, key: bytes, name: str, prefetch: int
) -> tuple[WorkerRuntime, threading.Thread]:
    """``name`` serving in a thread of its own; the worker and that thread."""
    worker = WorkerRuntime(
        endpoint,
        key=key,
        serializer=CloudpickleSerializer(),
        name=name,
        prefetch=prefetch,
        heartbeat_timeout=NEVER,
    )
    worker.start(WAIT)
    # What bootstrap.run_worker does in a worker process: the futures API,
    # constants and tracebacks find the worker through these.
    runtime.set_current(worker)
    set_worker_name(name)
    serving = threading.Thread(target=worker.serve, name=f"test-{name}-serve", daemon=True)
    serving.start()
    return worker, serving


def close_root(root: runtime.RootRuntime) -> None:
    """The root's end of a run, with no future of a failed test left waiting."""
    for event in EVENTS.values():
        event.set()
    root.close()


def check_results(run: Submits, together: bool) -> None:
    """Each future gets its own result, submitted one by one or ``together``
    in one message."""
    if together:
        futs = run.submit_all(*((square, x) for x in range(50)))
    else:
        futs = [run.submit(square, x) for x in range(20)]
    assert [f.result(WAIT) for f in futs] == [x * x for x in range(len(futs))]


TOGETHER = pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])


def check_a_raising_future(run: Submits) -> None:
    """A raising future raises at its owner with worker-1's traceback."""
    fut = run.submit(boom, "at the root")
    with pytest.raises(ValueError, match="boom: at the root") as caught:
        fut.result(WAIT)
    remote = str(caught.value.__cause__)
    assert "Traceback from worker-1" in remote
    assert "in boom" in remote
    assert "ValueError: boom: at the root" in remote
    assert run.submit(square, 3).result(WAIT) == 9  # the worker goes on serving


def check_cancel_while_busy(run: Submits) -> None:
    """A future not yet started is cancelled while the only worker is busy."""
    started, go = held("first")
    first, second = run.submit_all((hold, "first"), (note, "second"))
    assert started.wait(WAIT), "the first future never started"
    # The worker's thread is stuck in the user's function: its I/O thread answers.
    assert second.cancel() is True
    assert second.cancelled()
    assert first.cancel() is False  # started: too late
    go.set()
    assert first.result(WAIT) == "first"
    assert run.submit(note, "third").result(WAIT) == "third"
    assert RAN == ["third"]  # the cancelled future never ran
