"""``scoop_core.Executor`` against the standard ``concurrent.futures`` behaviour.

Written from PEP 3148 and the ``concurrent.futures`` documentation, case by
case after CPython's ``Lib/test/test_concurrent_futures.py`` (this Python has
no ``test`` package to run it from): each test's docstring names the CPython
test it corresponds to (``WaitTests.test_first_completed``), so a reader can
compare. Where ours differs on purpose (a worker that dies, a future that
cannot be pickled), the docstring says how and why; docs/executor.md too.

The pools run in this pytest process; the functions below travel to the
workers by value (``cloudpickle.register_pickle_by_value``), since workers
cannot import this test module. Every pool's processes carry a marker in
their environment, and none may be left once the tests end.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import processes_of, wait_gone

import scoop_core
from scoop_core.errors import BrokenPool, SerializationError, WorkerLostError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# -- calls that run on the workers --------------------------------------------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    return args, kwargs


def sleep_and_raise(t: float) -> None:
    time.sleep(t)
    raise Exception("this is an exception")


def getpid(_: object = None) -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def raise_error(message: str) -> None:
    raise RuntimeError(message)


def exit_now() -> None:
    os._exit(1)


def exit_once(marker: str, value: int) -> int:
    """Kills its worker the first time it runs (``marker`` does not exist yet)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return value


def init(status: str) -> None:
    # In the process's environment: these functions travel by value, each
    # with a copy of this module's globals, so a global would not be shared.
    os.environ["EXECUTOR_INITIALIZER_STATUS"] = status


def get_init_status() -> str:
    return os.environ.get("EXECUTOR_INITIALIZER_STATUS", "uninitialized")


def init_fail() -> None:
    raise ValueError("error in initializer")


class ErrorAtUnpickle:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return raise_error, ("unpickling failed on purpose",)


class ErrorAtPickle:
    def __reduce__(self) -> tuple[Any, ...]:
        raise RuntimeError("pickling failed on purpose")


def return_instance(cls: type) -> object:
    return cls()


# -- futures in every state, as CPython's tests make them -------------------------------


def create_future(state: str = "PENDING", exception: BaseException | None = None, result=None):  # type: ignore[no-untyped-def]
    f: cf.Future[Any] = cf.Future()
    f._state = state  # type: ignore[attr-defined]
    f._exception = exception  # type: ignore[attr-defined]
    f._result = result  # type: ignore[attr-defined]
    return f


def fixed_futures() -> dict[str, cf.Future[Any]]:
    return {
        "pending": create_future(state="PENDING"),
        "cancelled": create_future(state="CANCELLED"),
        "cancelled_and_notified": create_future(state="CANCELLED_AND_NOTIFIED"),
        "exception": create_future(state="FINISHED", exception=OSError()),
        "successful": create_future(state="FINISHED", result=42),
    }


# -- pools ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def marker() -> Iterator[str]:
    """A marker in the environment of every process of this module's pools."""
    value = f"executor-standard-{uuid.uuid4().hex}"
    os.environ["EXECUTOR_STANDARD_MARKER"] = value
    try:
        yield value
    finally:
        del os.environ["EXECUTOR_STANDARD_MARKER"]
    assert wait_gone(value, 20) == [], "a worker of this module's pools was left running"


@pytest.fixture(scope="module")
def executor(marker: str) -> Iterator[scoop_core.Executor]:
    """One pool of two workers for the tests that leave it usable."""
    with scoop_core.Executor(max_workers=2, transport="zmq") as pool:
        yield pool


@pytest.fixture
def new_pool(marker: str) -> Iterator[Any]:
    """Makes pools of the test's own; each is shut down at the end."""
    pools: list[scoop_core.Executor] = []

    def make(*args: Any, **kwargs: Any) -> scoop_core.Executor:
        kwargs.setdefault("transport", "zmq")
        pool = scoop_core.Executor(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


# -- ExecutorTest -------------------------------------------------------------------


def test_submit(executor):
    """ExecutorTest.test_submit"""
    assert executor.submit(pow, 2, 8).result() == 256


def test_submit_keyword(executor):
    """ExecutorTest.test_submit_keyword: keywords reach the call, ``fn`` and
    ``self`` included (submit's own first parameter is positional-only)."""
    assert executor.submit(mul, 2, y=8).result() == 16
    assert executor.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]


def test_map(executor):
    """ExecutorTest.test_map: several iterables, results in order, the
    shortest iterable ends the map."""
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(
        map(pow, range(10), range(10))
    )
    assert list(executor.map(mul, range(100), [3] * 7)) == [0, 3, 6, 9, 12, 15, 18]


def test_map_exception(executor):
    """ExecutorTest.test_map_exception: results before the failing item come
    first; the exception is raised where iteration reaches it."""
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor):
    """ExecutorTest.test_map_timeout: TimeoutError once ``timeout`` seconds
    (from the call to map) have passed, after the results that came.
    Differs: items travel in chunks whose size adapts to their cost, so
    the quick items that share a chunk with the slow one come with it:
    what came before the TimeoutError is a prefix of ``[0, 0]``."""
    results = []
    start = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        for value in executor.map(nap, [0, 0, 3], timeout=1):
            results.append(value)
    assert time.monotonic() - start < 2.5
    assert results == [0, 0][: len(results)]


def test_map_chunksize(executor):
    """ProcessPoolExecutorTest.test_map_chunksize: chunksize below 1 is a
    ValueError; any other gives the same results (chunks adapt on their own)."""
    x = range(20)
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            executor.map(pow, x, x, chunksize=bad)
    expected = list(map(pow, x, x))
    for size in (1, 2, 5, 100):
        assert list(executor.map(pow, x, x, chunksize=size)) == expected


@pytest.mark.parametrize("count", [0, -1])
def test_max_workers_negative(count, marker):
    """ExecutorTest.test_max_workers_negative (and its alias ``workers``)."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        scoop_core.Executor(max_workers=count)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        scoop_core.Executor(workers=count)


def test_traceback(executor):
    """ProcessPoolExecutorTest.test_traceback: the exception is the worker's,
    with the worker's traceback as its ``__cause__``."""
    future = executor.submit(raise_error, "boom")
    with pytest.raises(RuntimeError, match="boom") as info:
        future.result()
    cause = info.value.__cause__
    assert type(cause).__name__ == "RemoteTraceback"
    assert "in raise_error" in str(cause)
    assert "RuntimeError: boom" in str(cause)


def test_executor_is_a_concurrent_futures_executor(executor):
    """PEP 3148: an Executor subclass, whose futures are Futures."""
    assert isinstance(executor, cf.Executor)
    assert isinstance(executor.submit(mul, 1, 1), cf.Future)


# -- FutureTests, on futures of the pool -------------------------------------------------


def test_done_callback_with_result(executor):
    """FutureTests.test_done_callback_with_result: called once, with the future."""
    calls: list[Any] = []
    done = threading.Event()

    def fn(future: cf.Future[Any]) -> None:
        calls.append(future.result())
        done.set()

    f = executor.submit(mul, 6, 7)
    f.add_done_callback(fn)
    assert done.wait(30)
    f.result()
    assert calls == [42]


def test_done_callback_with_exception(executor):
    """FutureTests.test_done_callback_with_exception"""
    got: list[BaseException | None] = []
    done = threading.Event()
    f = executor.submit(raise_error, "in a callback's future")
    f.add_done_callback(lambda fut: (got.append(fut.exception()), done.set()))
    assert done.wait(30)
    assert len(got) == 1 and isinstance(got[0], RuntimeError)


def test_done_callback_with_cancel(executor):
    """FutureTests.test_done_callback_with_cancel: a queued future cancelled
    calls its callback, once, with cancelled() True."""
    blockers = [executor.submit(nap, 1.0) for _ in range(2)]
    wait_until(lambda: any(b.running() for b in blockers), "a worker to be busy")
    queued = [executor.submit(nap, 1.0) for _ in range(30)]
    last = queued[-1]  # 15 s of work before it: not started
    was_cancelled: list[bool] = []
    last.add_done_callback(lambda fut: was_cancelled.append(fut.cancelled()))
    assert last.cancel()
    assert was_cancelled == [True]
    for f in queued[:-1]:
        f.cancel()
    cf.wait(blockers + queued)
    assert was_cancelled == [True]


def test_done_callback_raises(executor, caplog):
    """FutureTests.test_done_callback_raises: a callback that raises is
    logged, not raised, and the next callback is still called."""
    calls: list[str] = []
    done = threading.Event()

    def raising_fn(_: cf.Future[Any]) -> None:
        calls.append("raising")
        raise Exception("doh!")

    def fn(_: cf.Future[Any]) -> None:
        calls.append("fn")
        done.set()

    with caplog.at_level(logging.ERROR, logger="scoop"):
        f = executor.submit(mul, 2, 3)
        f.add_done_callback(raising_fn)
        f.add_done_callback(fn)
        assert done.wait(30)
        assert f.result() == 6
    assert calls == ["raising", "fn"]
    assert "Exception: doh!" in caplog.text


def test_done_callback_already_successful(executor):
    """FutureTests.test_done_callback_already_successful: added after the
    future is done, the callback is called at once, and once."""
    f = executor.submit(mul, 2, 5)
    f.result()
    calls: list[int] = []
    f.add_done_callback(lambda fut: calls.append(fut.result()))
    assert calls == [10]


def test_cancel_running_and_queued_futures(executor):
    """FutureTests.test_cancel, test_cancelled, test_running, test_done:
    a running future cannot be cancelled; a queued one can, and then
    result() and exception() raise CancelledError."""
    running = executor.submit(nap, 1.0)
    wait_until(running.running, "the future to run")
    others = [executor.submit(nap, 1.0) for _ in range(10)]
    queued = others[-1]  # 5 s of work before it: not started
    assert not running.cancel()
    assert running.running() and not running.done() and not running.cancelled()
    assert queued.cancel()
    assert queued.cancelled() and queued.done() and not queued.running()
    assert queued.cancel()  # cancelling again still says it is cancelled
    with pytest.raises(cf.CancelledError):
        queued.result()
    with pytest.raises(cf.CancelledError):
        queued.exception()
    for f in others:
        f.cancel()
    assert running.result() == 1.0
    assert running.done() and not running.running() and not running.cancel()
    cf.wait(others)


def test_result_with_timeout(executor):
    """FutureTests.test_result_with_timeout, test_exception_with_timeout"""
    f = executor.submit(nap, 1.0)
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.1)
    assert f.result(timeout=30) == 1.0
    assert f.exception(timeout=0) is None


def test_result_with_success_and_exception(executor):
    """FutureTests.test_result_with_success, test_exception_with_success"""
    assert executor.submit(mul, 6, 7).result(timeout=30) == 42
    failed = executor.submit(divmod, 1, 0)
    assert isinstance(failed.exception(timeout=30), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        failed.result()


# -- WaitTests ------------------------------------------------------------------------


def test_first_completed(executor):
    """WaitTests.test_first_completed"""
    fixed = fixed_futures()
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(nap, 1.5)
    done, not_done = cf.wait([fixed["cancelled"], future1, future2], return_when=cf.FIRST_COMPLETED)
    assert done == {future1}
    assert not_done == {fixed["cancelled"], future2}
    future2.result()


def test_first_completed_some_already_completed(executor):
    """WaitTests.test_first_completed_some_already_completed"""
    fixed = fixed_futures()
    future1 = executor.submit(nap, 1.5)
    finished, pending = cf.wait(
        [fixed["cancelled_and_notified"], fixed["successful"], future1],
        return_when=cf.FIRST_COMPLETED,
    )
    assert finished == {fixed["cancelled_and_notified"], fixed["successful"]}
    assert pending == {future1}
    future1.result()


def test_first_exception(executor):
    """WaitTests.test_first_exception"""
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(sleep_and_raise, 1.5)
    future3 = executor.submit(nap, 4)
    finished, pending = cf.wait([future1, future2, future3], return_when=cf.FIRST_EXCEPTION)
    assert finished == {future1, future2}, [future1, future2, future3]
    assert pending == {future3}
    future3.result()


def test_first_exception_some_already_complete(executor):
    """WaitTests.test_first_exception_some_already_complete"""
    fixed = fixed_futures()
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(nap, 1.5)
    finished, pending = cf.wait(
        [
            fixed["successful"],
            fixed["cancelled"],
            fixed["cancelled_and_notified"],
            future1,
            future2,
        ],
        return_when=cf.FIRST_EXCEPTION,
    )
    assert finished == {fixed["successful"], fixed["cancelled_and_notified"], future1}
    assert pending == {fixed["cancelled"], future2}
    future2.result()


def test_first_exception_one_already_failed(executor):
    """WaitTests.test_first_exception_one_already_failed"""
    fixed = fixed_futures()
    future1 = executor.submit(nap, 2)
    finished, pending = cf.wait([fixed["exception"], future1], return_when=cf.FIRST_EXCEPTION)
    assert finished == {fixed["exception"]}
    assert pending == {future1}
    future1.result()


def test_all_completed(executor):
    """WaitTests.test_all_completed"""
    fixed = fixed_futures()
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    every = [
        fixed["successful"],
        fixed["cancelled_and_notified"],
        fixed["exception"],
        future1,
        future2,
    ]
    finished, pending = cf.wait(every, return_when=cf.ALL_COMPLETED)
    assert finished == set(every)
    assert pending == set()


def test_timeout(executor):
    """WaitTests.test_timeout"""
    fixed = fixed_futures()
    future1 = executor.submit(mul, 6, 7)
    future2 = executor.submit(nap, 3)
    finished, pending = cf.wait(
        [
            fixed["cancelled_and_notified"],
            fixed["exception"],
            fixed["successful"],
            future1,
            future2,
        ],
        timeout=1,
        return_when=cf.ALL_COMPLETED,
    )
    assert finished == {
        fixed["cancelled_and_notified"],
        fixed["exception"],
        fixed["successful"],
        future1,
    }
    assert pending == {future2}
    future2.result()


# -- AsCompletedTests ---------------------------------------------------------------


def test_no_timeout(executor):
    """AsCompletedTests.test_no_timeout"""
    fixed = fixed_futures()
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    every = [
        fixed["cancelled_and_notified"],
        fixed["exception"],
        fixed["successful"],
        future1,
        future2,
    ]
    assert set(cf.as_completed(every)) == set(every)


def test_zero_timeout(executor):
    """AsCompletedTests.test_zero_timeout: the futures already done are
    yielded, then TimeoutError."""
    fixed = fixed_futures()
    future1 = executor.submit(nap, 2)
    done = [fixed["cancelled_and_notified"], fixed["exception"], fixed["successful"]]
    completed = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed([*done, future1], timeout=0):
            completed.add(f)
    assert completed == set(done)
    future1.result()


def test_already_done_futures_come_first(executor):
    """AsCompletedTests (the documented order): futures done before the
    call are yielded first, the others as they finish."""
    fixed = fixed_futures()
    slow = executor.submit(nap, 1.0)
    quick = executor.submit(mul, 3, 3)
    quick.result()
    order = list(cf.as_completed([slow, quick, fixed["successful"]]))
    assert set(order[:2]) == {quick, fixed["successful"]}
    assert order[2] is slow


def test_duplicate_futures(executor):
    """AsCompletedTests.test_duplicate_futures: yielded once."""
    future1 = executor.submit(nap, 1)
    completed = list(cf.as_completed(itertools.repeat(future1, 3)))
    assert completed == [future1]


def test_correct_timeout_exception_msg(executor):
    """AsCompletedTests.test_correct_timeout_exception_msg"""
    fixed = fixed_futures()
    slow = executor.submit(nap, 1.0)
    with pytest.raises(cf.TimeoutError, match=r"2 \(of 4\) futures unfinished"):
        list(
            cf.as_completed(
                [fixed["cancelled_and_notified"], fixed["pending"], slow, fixed["successful"]],
                timeout=0,
            )
        )
    slow.result()


# -- ExecutorShutdownTest -------------------------------------------------------------


def test_run_after_shutdown(new_pool):
    """ExecutorShutdownTest.test_run_after_shutdown: RuntimeError, for submit and map."""
    pool = new_pool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.map(pow, [2], [5])


def test_context_manager_shutdown(marker):
    """ExecutorShutdownTest.test_context_manager_shutdown: leaving the
    block shuts the pool down: its workers are gone."""
    with scoop_core.Executor(max_workers=2) as pool:
        pids = set(pool.map(getpid, range(10)))
        assert os.getpid() not in pids
    for pid in pids:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), f"worker {pid} to exit")


def test_cancel_futures(new_pool):
    """ExecutorShutdownTest.test_cancel_futures: shutdown(cancel_futures=True)
    cancels what has not started; what had started finishes."""
    pool = new_pool(2)
    fs = [pool.submit(nap, 0.1) for _ in range(50)]
    pool.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    for f in fs:
        assert f.done()
        if not f.cancelled():
            assert f.exception() is None


def test_shutdown_no_wait(new_pool):
    """ExecutorShutdownTest.test_shutdown_no_wait: returns at once; the
    futures still finish."""
    pool = new_pool(2)
    fs = [pool.submit(nap, 1.0) for _ in range(3)]
    pool.shutdown(wait=False)
    assert not all(f.done() for f in fs)
    assert [f.result(timeout=60) for f in fs] == [1.0] * 3


# -- InitializerMixin, FailingInitializerMixin ---------------------------------------------


def test_initializer(new_pool):
    """InitializerMixin.test_initializer: every worker ran it before its futures."""
    pool = new_pool(2, initializer=init, initargs=("initialized",))
    assert list(pool.map(lambda _: get_init_status(), range(10))) == ["initialized"] * 10
    assert {pool.submit(get_init_status).result() for _ in range(4)} == {"initialized"}


def test_failing_initializer(new_pool, caplog):
    """FailingInitializerMixin.test_initializer: the futures fail with a
    BrokenExecutor (ours: BrokenPool, as ProcessPoolExecutor's
    BrokenProcessPool), and so does a later submit."""
    pool = new_pool(2, initializer=init_fail)
    futures = [pool.submit(get_init_status) for _ in range(5)]
    for f in futures:
        with pytest.raises(cf.BrokenExecutor) as info:
            f.result(timeout=60)
        assert isinstance(info.value, BrokenPool)
        assert "ValueError: error in initializer" in str(info.value)
    with pytest.raises(BrokenPool, match="initializer"):
        pool.submit(get_init_status)
    with pytest.raises(cf.BrokenExecutor):
        pool.map(get_init_status, [])


def test_initializer_argument_checks(marker):
    """ProcessPoolExecutor's checks: a callable initializer, and no 'fork'
    context (ours starts fresh interpreters, as 'spawn' does)."""
    import multiprocessing

    with pytest.raises(TypeError, match="initializer must be a callable"):
        scoop_core.Executor(1, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fresh interpreters"):
        scoop_core.Executor(1, multiprocessing.get_context("fork"))
    with pytest.raises(TypeError, match="workers is another name for max_workers"):
        scoop_core.Executor(1, workers=2)


# -- max_tasks_per_child ---------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1])
def test_max_tasks_per_child_must_be_at_least_one(value, marker):
    """ProcessPoolExecutor's check on max_tasks_per_child."""
    with pytest.raises(ValueError, match="max_tasks_per_child must be greater than 0"):
        scoop_core.Executor(1, max_tasks_per_child=value)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        scoop_core.Executor(1, max_tasks_per_child=1.5)  # type: ignore[arg-type]


@pytest.mark.both_transports
def test_max_tasks_per_child(new_pool, transport, transport_env, monkeypatch, tmp_path):
    """ProcessPoolExecutorTest.test_max_tasks_per_child: the same worker
    for three futures, then a new one."""
    for name, value in transport_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))  # a Redis run's key file goes there
    pool = new_pool(1, max_tasks_per_child=3, transport=transport)
    original_pid = pool.submit(getpid).result()
    assert pool.submit(getpid).result() == original_pid
    assert pool.submit(getpid).result() == original_pid
    new_pid = pool.submit(getpid).result(timeout=60)
    assert new_pid != original_pid
    assert pool.workers == 1


@pytest.mark.both_transports
def test_max_tasks_early_shutdown(new_pool, transport, transport_env, monkeypatch, tmp_path):
    """ProcessPoolExecutorTest.test_max_tasks_early_shutdown, with more
    queued futures than the workers will run: none is lost, each worker
    ran at most its number."""
    for name, value in transport_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    pool = new_pool(2, max_tasks_per_child=2, transport=transport)
    futures = [pool.submit(lambda i: (i * i, os.getpid()), i) for i in range(12)]
    pool.shutdown()
    results = [f.result() for f in futures]
    assert [value for value, _ in results] == [i * i for i in range(12)]
    per_pid: dict[int, int] = {}
    for _, pid in results:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert max(per_pid.values()) <= 2
    assert len(per_pid) >= 6


def test_max_tasks_per_child_with_nested_futures(new_pool):
    """A retiring worker finishes the future it runs, children included,
    before it goes."""
    from scoop import futures

    def parent(n: int) -> tuple[int, int]:
        return sum(futures.map(lambda x: x + 1, range(n))), os.getpid()

    pool = new_pool(2, max_tasks_per_child=1)
    results = list(pool.map(parent, [10] * 6))
    assert [value for value, _ in results] == [55] * 6
    assert len({pid for _, pid in results}) >= 3


# -- a worker that dies (ProcessPoolExecutorTest.test_killed_child) -----------------------


def test_killed_child_is_replaced_and_its_future_runs_again(new_pool, tmp_path):
    """ProcessPoolExecutorTest.test_killed_child, ExecutorDeadlockTest.
    test_exit_during_func_exec_on_worker. Differs on purpose: a
    ProcessPoolExecutor whose worker dies is broken (BrokenProcessPool for
    every pending future and every later submit). Ours replaces the worker
    and runs the future it held again: a future that killed its worker
    once succeeds; one that kills every worker it runs on fails with
    WorkerLostError after max_losses; the other futures all complete and
    the pool stays usable."""
    pool = new_pool(2)
    others = [pool.submit(nap, 0.05) for _ in range(20)]
    once = pool.submit(exit_once, str(tmp_path / "died-once"), 7)
    always = pool.submit(exit_now)
    assert once.result(timeout=120) == 7
    with pytest.raises(WorkerLostError, match="lost with its worker 3 times"):
        always.result(timeout=120)
    assert [f.result(timeout=120) for f in others] == [0.05] * 20
    assert pool.submit(mul, 6, 7).result(timeout=60) == 42
    assert len(set(pool.map(getpid, range(40)))) >= 1


def nap_telling(path: str, seconds: float) -> str:
    """Writes its worker's pid to ``path``, then naps."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def test_terminated_child_is_replaced_and_its_future_runs_again(new_pool, tmp_path):
    """ProcessPoolExecutorTest.test_killed_child, as that test does it: a
    worker terminated from outside (here SIGKILL) while it runs a future.
    Ours replaces it; the future runs again on the new worker and succeeds."""
    pool = new_pool(2)
    told = tmp_path / "pid"
    future = pool.submit(nap_telling, str(told), 2.0)
    wait_until(lambda: told.exists() and told.read_text(), "the future to start")
    first = int(told.read_text())
    os.kill(first, signal.SIGKILL)
    assert future.result(timeout=120) == "slept"
    assert int(told.read_text()) != first
    assert pool.submit(mul, 6, 7).result(timeout=60) == 42


def test_a_pool_left_without_workers_is_broken(new_pool, monkeypatch):
    """ProcessPoolExecutorTest.test_killed_child, where ours agrees: with
    replacements turned off (max_restarts = 0), a pool whose only worker
    died has no worker left: its pending futures and later submits fail
    with BrokenPool, a BrokenExecutor."""
    monkeypatch.setenv("SCOOP_MAX_RESTARTS", "0")
    pool = new_pool(1)
    assert pool.submit(mul, 2, 3).result(timeout=60) == 6
    dying = pool.submit(exit_now)
    queued = [pool.submit(nap, 0.1) for _ in range(5)]
    for f in [dying, *queued]:
        with pytest.raises(cf.BrokenExecutor, match="every worker of this pool has exited"):
            f.result(timeout=60)
    with pytest.raises(BrokenPool):
        pool.submit(mul, 1, 1)


# -- ExecutorDeadlockTest: what cannot be pickled ------------------------------------------


def test_error_at_task_pickle(executor):
    """ExecutorDeadlockTest.test_error_at_task_pickle: the future fails
    (ours with SerializationError, a TypeError naming the argument)."""
    f = executor.submit(id, ErrorAtPickle())
    with pytest.raises(SerializationError, match="argument 1 of id"):
        f.result(timeout=30)
    assert executor.submit(mul, 2, 2).result() == 4


def test_error_at_task_pickle_in_map(executor):
    """ExecutorDeadlockTest.test_error_at_task_pickle, through map: the
    error is raised where iteration reaches the item's chunk."""
    results = executor.map(id, [ErrorAtPickle()])
    with pytest.raises(SerializationError, match="cannot be pickled"):
        next(results)


def test_error_at_task_unpickle(executor):
    """ExecutorDeadlockTest.test_error_at_task_unpickle"""
    f = executor.submit(id, ErrorAtUnpickle())
    with pytest.raises(RuntimeError, match="unpickling failed on purpose"):
        f.result(timeout=30)


def test_error_during_func_exec_on_worker(executor):
    """ExecutorDeadlockTest.test_error_during_func_exec_on_worker"""
    with pytest.raises(RuntimeError, match="in the function"):
        executor.submit(raise_error, "in the function").result(timeout=30)


def test_error_during_result_pickle_on_worker(executor):
    """ExecutorDeadlockTest.test_error_during_result_pickle_on_worker"""
    f = executor.submit(return_instance, ErrorAtPickle)
    with pytest.raises(SerializationError, match="cannot be sent back from the worker"):
        f.result(timeout=30)


def test_error_during_result_unpickle_in_result_handler(executor):
    """ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler.
    Differs: ProcessPoolExecutor is broken by it; ours fails that future
    alone (SerializationError) and goes on."""
    f = executor.submit(return_instance, ErrorAtUnpickle)
    with pytest.raises(SerializationError, match="cannot be read here"):
        f.result(timeout=30)
    assert executor.submit(mul, 3, 3).result() == 9


def test_no_worker_is_left(executor, marker):
    """Every worker of a pool carries the marker; the pool's own ones run now."""
    assert processes_of(marker) != []
