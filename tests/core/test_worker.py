"""The worker process's scheduler (``scoop_core.worker``), run in this process.

A real :class:`~scoop_core.broker.Broker`, one :class:`WorkerRuntime` serving
in a thread and a root runtime, all over the in-memory transport: the root
submits real functions (of ``peer_functions.py`` and this module) and the
test reads what a user would see, its futures' results, exceptions and cancels. One worker only, so
nested futures have nowhere else to go: if its scheduler let a future
waiting on its children hold the worker, these tests would hang.

The worker's functions and the test share this process: a function tells
the test it started, or waits for its go-ahead, as ``peer_functions.py``
says. The stories that read the same over a store are told once, in
``peer_runs.py``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import peer_runs
import pytest
from peer_functions import (
    NEVER,
    WAIT,
    boom,
    fib,
    restore_process_wide,
    sum_of_squares,
)

from scoop_core import futures, runtime
from scoop_core.broker import Broker
from scoop_core.testing.memory import MemoryTransport
from scoop_core.worker import WorkerRuntime


def parent_of_boom() -> str:
    return str(futures.submit(boom, "in a child").result())


def parent_that_catches() -> str:
    try:
        futures.submit(boom, "caught").result()
    except ValueError as exc:
        return f"caught {exc}"
    return "nothing raised"


@dataclass
class Run(peer_runs.Submits):
    broker: Broker
    worker: WorkerRuntime
    serving: threading.Thread
    root: runtime.RootRuntime


def start_run(prefetch: int) -> Run:
    key = os.urandom(32)
    transport = MemoryTransport()
    broker = Broker(
        transport, key=key, run_id="worker", expected_workers=1, heartbeat_timeout=NEVER
    )
    broker.start()
    worker, serving = peer_runs.start_worker(
        transport.connect(broker.address, identity=b"worker-1"), key, "worker-1", prefetch
    )
    root = peer_runs.start_root(transport.connect(broker.address, identity=b"root"), key)
    return Run(broker, worker, serving, root)


def stop_run(run: Run) -> None:
    peer_runs.close_root(run.root)
    run.broker.shutdown()
    run.serving.join(WAIT)


@pytest.fixture(params=[1, 2], ids=["prefetch-1", "prefetch-2"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    restore_process_wide(monkeypatch)
    run = start_run(request.param)
    yield run
    stop_run(run)
    assert not run.serving.is_alive(), "the worker did not stop when the run ended"


@peer_runs.TOGETHER
def test_each_future_gets_its_own_result(run: Run, together: bool) -> None:
    peer_runs.check_results(run, together)


def test_nested_futures_waited_for_on_the_only_worker_do_not_deadlock(run: Run) -> None:
    assert run.submit(fib, 10).result(WAIT) == 55


def test_a_map_inside_a_future_runs_on_the_same_worker(run: Run) -> None:
    assert run.submit(sum_of_squares, 30).result(WAIT) == sum(x * x for x in range(30))


def test_a_raising_future_raises_at_its_owner_with_the_workers_traceback(run: Run) -> None:
    peer_runs.check_a_raising_future(run)


def test_a_childs_exception_reaches_its_parent_and_then_the_root(run: Run) -> None:
    with pytest.raises(ValueError, match="boom: in a child") as caught:
        run.submit(parent_of_boom).result(WAIT)
    assert "in boom" in str(caught.value.__cause__)
    assert run.submit(parent_that_catches).result(WAIT) == "caught boom: caught"


def test_a_future_not_yet_started_is_cancelled_while_the_worker_is_busy(run: Run) -> None:
    peer_runs.check_cancel_while_busy(run)
