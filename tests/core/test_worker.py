"""The worker process's scheduler (``scoop_core.worker``), run in this process.

A real :class:`~scoop_core.broker.Broker`, one :class:`WorkerRuntime` serving
in a thread and a root runtime, all over the in-memory transport: the root
submits real functions (of ``peer_functions.py`` and this module) and the
test reads what a user would see, its futures' results, exceptions and cancels. One worker only, so
nested futures have nowhere else to go: if its scheduler let a future
waiting on its children hold the worker, these tests would hang.

The worker's functions and the test share this process: a function tells
the test it started, or waits for its go-ahead, as ``peer_functions.py``
says.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from peer_functions import (
    EVENTS,
    NEVER,
    RAN,
    WAIT,
    boom,
    fib,
    held,
    hold,
    note,
    restore_process_wide,
    square,
    sum_of_squares,
)

from scoop_core import futures, runtime
from scoop_core.broker import Broker
from scoop_core.calls import Call
from scoop_core.future import Future
from scoop_core.serialization import CloudpickleSerializer
from scoop_core.testing.memory import MemoryTransport
from scoop_core.worker import WorkerRuntime, set_worker_name


def parent_of_boom() -> str:
    return str(futures.submit(boom, "in a child").result())


def parent_that_catches() -> str:
    try:
        futures.submit(boom, "caught").result()
    except ValueError as exc:
        return f"caught {exc}"
    return "nothing raised"


@dataclass
class Run:
    broker: Broker
    worker: WorkerRuntime
    serving: threading.Thread
    root: runtime.RootRuntime

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        (fut,) = self.root.submit([Call(fn, args, {})])
        return fut

    def submit_all(self, *calls: tuple[Any, ...]) -> list[Future]:
        """Several futures in one message, as ``map`` sends them."""
        return self.root.submit([Call(fn, tuple(args), {}) for fn, *args in calls])


def start_run(prefetch: int) -> Run:
    key = os.urandom(32)
    transport = MemoryTransport()
    broker = Broker(
        transport, key=key, run_id="worker", expected_workers=1, heartbeat_timeout=NEVER
    )
    broker.start()
    serializer = CloudpickleSerializer()
    name = "worker-1"
    worker = WorkerRuntime(
        transport.connect(broker.address, identity=name.encode()),
        key=key,
        serializer=serializer,
        name=name,
        prefetch=prefetch,
        heartbeat_timeout=NEVER,
    )
    worker.start(WAIT)
    # What bootstrap.run_worker does in a worker process: the futures API
    # and tracebacks find the worker through these.
    runtime.set_current(worker)
    set_worker_name(name)
    serving = threading.Thread(target=worker.serve, name="test-worker-serve", daemon=True)
    serving.start()
    root = runtime.RootRuntime(
        transport.connect(broker.address, identity=b"root"),
        key=key,
        serializer=serializer,
        name="root",
        heartbeat_timeout=NEVER,
    )
    root.start(WAIT)
    return Run(broker, worker, serving, root)


def stop_run(run: Run) -> None:
    for event in EVENTS.values():
        event.set()  # a test that failed may have left a future waiting
    run.root.close()
    run.broker.shutdown()
    run.serving.join(WAIT)


@pytest.fixture(params=[1, 2], ids=["prefetch-1", "prefetch-2"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    restore_process_wide(monkeypatch)
    run = start_run(request.param)
    yield run
    stop_run(run)
    assert not run.serving.is_alive(), "the worker did not stop when the run ended"


def test_each_future_gets_its_own_result(run: Run) -> None:
    futs = [run.submit(square, x) for x in range(20)]
    assert [f.result(WAIT) for f in futs] == [x * x for x in range(20)]


def test_futures_sent_together_all_come_back(run: Run) -> None:
    futs = run.submit_all(*((square, x) for x in range(50)))
    assert [f.result(WAIT) for f in futs] == [x * x for x in range(50)]


def test_nested_futures_waited_for_on_the_only_worker_do_not_deadlock(run: Run) -> None:
    assert run.submit(fib, 10).result(WAIT) == 55


def test_a_map_inside_a_future_runs_on_the_same_worker(run: Run) -> None:
    assert run.submit(sum_of_squares, 30).result(WAIT) == sum(x * x for x in range(30))


def test_a_raising_future_raises_at_its_owner_with_the_workers_traceback(run: Run) -> None:
    fut = run.submit(boom, "at the root")
    with pytest.raises(ValueError, match="boom: at the root") as caught:
        fut.result(WAIT)
    remote = str(caught.value.__cause__)
    assert "Traceback from worker-1" in remote
    assert "in boom" in remote
    assert "ValueError: boom: at the root" in remote
    # The worker goes on serving.
    assert run.submit(square, 3).result(WAIT) == 9


def test_a_childs_exception_reaches_its_parent_and_then_the_root(run: Run) -> None:
    with pytest.raises(ValueError, match="boom: in a child") as caught:
        run.submit(parent_of_boom).result(WAIT)
    assert "in boom" in str(caught.value.__cause__)
    assert run.submit(parent_that_catches).result(WAIT) == "caught boom: caught"


def test_a_future_not_yet_started_is_cancelled_while_the_worker_is_busy(run: Run) -> None:
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
