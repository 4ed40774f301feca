"""Timeouts and cancellation (issue 3, item 3), through the real launcher.

Every timeout raises ``concurrent.futures.TimeoutError`` on time, counted
from the call as PEP 3148 says (not from each ``next()``), in the root and
inside a future on a worker; ``cancel()`` succeeds on a future that has not
started wherever it waits (the broker's queue or a worker's) and fails on a
running one, which still completes; ``shutdown(cancel_futures=True)``
cancels what is queued.

Futures that must stay busy wait for a *gate* file the root creates when the
test is done with them, so nothing depends on how long a sleep lasts; the
fixed sleeps below are the user program's workload, whose length the
timeouts are measured against.
"""

from __future__ import annotations

import pytest
from conftest import PROGRAM_HELPERS, program_results

# Every program here runs on both built-in transports: they are interchangeable.
pytestmark = pytest.mark.both_transports

PRELUDE = (
    """
import concurrent.futures, json, os, sys, threading, time
from scoop import futures
import scoop

"""
    + PROGRAM_HELPERS
    + """
def gated(gate, value, mark=None):
    # Hold this worker until the root creates the file `gate` (at most 60 s).
    if mark:
        open(mark, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value

def release(gate):
    open(gate, "w").close()

def nap(seconds, value=None):
    time.sleep(seconds)
    return value

def fail(_):
    raise ValueError("failed on purpose")

def timed(call):
    # (what happened, seconds taken) for call()
    t = time.monotonic()
    try:
        call()
        what = "returned"
    except futures.TimeoutError:
        what = "TimeoutError"
    return [what, time.monotonic() - t]

def block_both_workers(values):
    # A gated future on each of the two workers, both running: the gate
    # that holds them and the futures.
    gate = os.path.abspath("gate")
    blockers = [futures.submit(gated, gate, value) for value in values]
    wait_until(lambda: all(b.running() for b in blockers), "both blockers to start")
    return gate, blockers

def slow_child(seconds):
    # Waits cooperatively, on a future nobody completes, so its worker
    # runs other futures meanwhile.
    futures.wait([concurrent.futures.Future()], timeout=seconds)
    return "late"
"""
)


# How late a timeout may fire on a loaded 2-core machine, in seconds.
LATE = 0.5


def on_time(got: list, timeout: float) -> bool:
    what, seconds = got
    return what == "TimeoutError" and timeout <= seconds < timeout + LATE


def test_waiting_methods_time_out_counted_from_the_call(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    gate = os.path.abspath("gate")
    slow = futures.submit(gated, gate, "slow")
    fast = futures.submit(nap, 0.05, "fast")
    wait_until(slow.running, "the slow future to start")
    out(timed(lambda: slow.result(timeout=0.3)))
    out(timed(lambda: slow.exception(timeout=0.3)))
    out(timed(lambda: slow.result(timeout=0)))
    fast.result()

    t = time.monotonic()
    done, not_done = futures.wait([slow, fast], timeout=0.3)
    out([fast in done, slow in not_done, time.monotonic() - t])

    # as_completed: the timeout counts from the call, however long the
    # caller spends on each future it is given.
    t = time.monotonic()
    order = []
    try:
        for f in futures.as_completed([slow, fast], timeout=1.0):
            order.append(f.result())
            time.sleep(0.9)  # the caller's own work on each result
        what = "returned"
    except futures.TimeoutError:
        what = "TimeoutError"
    out([order, [what, time.monotonic() - t]])

    release(gate)
    out(slow.result(timeout=30))
""")
    got = program_results(scoop_run(prog, timeout=60))
    assert on_time(got[0], 0.3), got[0]
    assert on_time(got[1], 0.3), got[1]
    assert on_time(got[2], 0.0), got[2]
    fast_done, slow_not_done, waited = got[3]
    assert fast_done and slow_not_done and 0.3 <= waited < 0.3 + LATE, got[3]
    order, as_completed = got[4]
    assert order == ["fast"]
    # 1.0 s after the call, not 1.0 s after the second next() (1.9 s)
    assert on_time(as_completed, 1.0), as_completed
    assert got[5] == "slow"


def test_timeout_zero_on_a_done_future_returns_at_once(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    ok = futures.submit(abs, -3)
    bad = futures.submit(fail, 0)
    futures.wait([ok, bad])
    t = time.monotonic()
    values = [ok.result(timeout=0), ok.exception(timeout=0)]
    values.append(type(bad.exception(timeout=0)).__name__)
    try:
        bad.result(timeout=0)
    except ValueError as exc:
        values.append(str(exc))
    done, not_done = futures.wait([ok, bad], timeout=0)
    values.append([len(done), len(not_done)])
    values.append(len(list(futures.as_completed([ok, bad], timeout=0))))
    out([values, time.monotonic() - t])
""")
    got = program_results(scoop_run(prog, timeout=60))
    values, seconds = got[0]
    assert values == [3, None, "ValueError", "failed on purpose", [2, 0], 2]
    assert seconds < 0.1


def test_map_timeouts_count_from_the_call_not_from_each_next(program, scoop_run):
    # Ten items of 0.4 s on two workers: two results every 0.4 s. Counted
    # from each next() no wait is longer than 0.4 s, so nothing would time
    # out; counted from the call, the fifth result (due at 1.2 s) is late.
    prog = program("""
def item(i):
    time.sleep(0.4)
    return i

if __name__ == "__main__":
    for name, fn in [("map", futures.map), ("map_as_completed", futures.map_as_completed)]:
        t = time.monotonic()
        got = []
        try:
            for value in fn(item, range(10), timeout=1.0):
                got.append(value)
            what = "returned"
        except futures.TimeoutError:
            what = "TimeoutError"
        out([name, got, [what, time.monotonic() - t]])
        # let the abandoned items drain before the next measurement
        list(futures.map(abs, range(4)))
    out(list(futures.map(abs, range(-5, 0), timeout=30)))
""")
    got = program_results(scoop_run(prog, timeout=60))
    for name, values, outcome in got[:2]:
        assert on_time(outcome, 1.0), (name, outcome)
        assert len(values) <= 4, (name, values)
        if name == "map":
            assert values == list(range(len(values)))
        else:
            assert len(set(values)) == len(values) and set(values) <= set(range(10))
    assert got[2] == [5, 4, 3, 2, 1]


def test_map_results_already_there_are_returned_after_the_deadline(program, scoop_run):
    # Four instant items on two workers are all sent at the call and done at
    # once; the caller spends 0.3 s on each, so it asks for the third after
    # the 0.5 s deadline. As with concurrent.futures, a result that is there
    # is returned: only waiting for one past the deadline raises.
    prog = program("""
def consume(iterator):
    got = []
    try:
        for value in iterator:
            got.append(value)
            time.sleep(0.3)  # the caller's own work on each result
    except futures.TimeoutError:
        got.append("TimeoutError")
    return got

if __name__ == "__main__":
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        out(consume(pool.map(abs, range(4), timeout=0.5)))
    out(consume(futures.map(abs, range(4), timeout=0.5)))
    out(sorted(consume(futures.map_as_completed(abs, range(4), timeout=0.5)), key=str))
""")
    got = program_results(scoop_run(prog, timeout=60))
    assert got[0] == [0, 1, 2, 3]  # the reference: concurrent.futures
    assert got[1] == [0, 1, 2, 3]
    assert got[2] == [0, 1, 2, 3]


def test_a_timeout_inside_a_future_fires_there_while_the_worker_runs_others(program, scoop_run):
    # One worker: the parent waits 0.5 s on a child that takes 1.5 s; the
    # same worker runs the child and another future meanwhile. The child
    # waits cooperatively (futures.wait on a future nobody completes), as a
    # future blocked on its own children would; a child busy in time.sleep
    # would hold the worker's only thread.
    prog = program("""
def parent(patience):
    child = futures.submit(slow_child, 1.5)
    start = time.monotonic()
    what = timed(lambda: child.result(timeout=patience))
    end = time.monotonic()
    also = [timed(lambda: child.exception(timeout=0.1))[0]]
    done, not_done = futures.wait([child], timeout=0.1)
    also.append(child in not_done)
    return [what, start, end, scoop.worker, also, child.result(timeout=30)]

def other():
    return [time.monotonic(), scoop.worker]

if __name__ == "__main__":
    p = futures.submit(parent, 0.5)
    q = futures.submit(other)
    out(p.result(timeout=30))
    out(q.result(timeout=30))
""")
    got = program_results(scoop_run(prog, flags=("-n", "1"), timeout=60))
    what, start, end, parent_worker, also, late = got[0]
    other_finished, other_worker = got[1]
    assert on_time(what, 0.5), what
    assert also == ["TimeoutError", True]
    assert late == "late"
    assert other_worker == parent_worker
    assert start < other_finished < end, "the other future did not run while the parent waited"


def test_cancel_works_wherever_an_unstarted_future_waits(program, scoop_run):
    # Two workers that ask for three futures each: while each runs a gated
    # blocker it holds two unstarted futures; the rest wait at the broker.
    prog = program("""
if __name__ == "__main__":
    gate, blockers = block_both_workers([f"blocker {i}" for i in range(2)])
    queued = [futures.submit(abs, -i) for i in range(12)]
    # The last one cannot have been handed out (the workers asked for four
    # in all): it is at the broker. Its answer also means the broker has
    # dispatched the first four to the workers' queues.
    at_broker = queued[-1].cancel()
    in_worker_queues = [q.cancel() for q in queued[:4]]
    running = blockers[0].cancel()
    out([at_broker, in_worker_queues, running])
    out([q.cancelled() for q in queued[:4] + queued[-1:]])
    try:
        queued[0].result(timeout=5)
        out("no error")
    except futures.CancelledError:
        out("CancelledError")
    release(gate)
    out([b.result(timeout=30) for b in blockers] + [blockers[0].cancelled()])
    out([q.result(timeout=30) for q in queued[4:-1]])

    # A future that has started, as its worker saw it: cancel() says False
    # even before the root has heard that it started.
    gate2, mark = os.path.abspath("gate2"), os.path.abspath("started")
    f = futures.submit(gated, gate2, "ran", mark)
    wait_until(lambda: os.path.exists(mark), "the future to start")
    out(f.cancel())
    release(gate2)
    out([f.result(timeout=30), f.cancelled()])
""")
    got = program_results(scoop_run(prog, env={"SCOOP_PREFETCH": "3"}, timeout=60))
    assert got[0] == [True, [True, True, True, True], False]
    assert got[1] == [True] * 5
    assert got[2] == "CancelledError"
    assert got[3] == ["blocker 0", "blocker 1", False]
    assert got[4] == list(range(4, 11))
    assert got[5] is False
    assert got[6] == ["ran", False]


def test_shutdown_with_cancel_futures_cancels_the_queue(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    gate, blockers = block_both_workers(range(2))
    queued = [futures.submit(abs, -i) for i in range(10)]
    futures.shutdown(wait=False, cancel_futures=True)
    out([[q.cancelled() for q in queued], [b.done() or b.cancelled() for b in blockers]])
    release(gate)
    t = time.monotonic()
    futures.shutdown(wait=True)
    out([[b.result(timeout=0) for b in blockers], time.monotonic() - t < 30])
""")
    got = program_results(scoop_run(prog, timeout=60))
    assert got[0] == [[True] * 10, [False, False]]
    assert got[1] == [[0, 1], True]


def test_cancel_inside_a_future_of_the_futures_it_submitted(program, scoop_run):
    # One worker, so nothing is stolen: the children wait in that worker's
    # own queue until their parent waits.
    prog = program("""
def parent():
    kids = [futures.submit(abs, -i) for i in range(3)]
    report = [kids[-1].cancel(), kids[-1].cancelled()]
    report.append([k.result(timeout=30) for k in kids[:-1]])
    try:
        kids[-1].result(timeout=5)
        report.append("no error")
    except futures.CancelledError:
        report.append("CancelledError")
    slow = futures.submit(slow_child, 0.5)
    futures.wait([slow], timeout=0.1)  # lets it start
    report += [slow.running(), slow.cancel(), slow.result(timeout=30), slow.cancelled()]
    return report

if __name__ == "__main__":
    out(futures.submit(parent).result(timeout=30))
""")
    got = program_results(scoop_run(prog, flags=("-n", "1"), timeout=60))
    assert got[0] == [True, True, [0, 1], "CancelledError", True, False, "late", False]


def test_cancel_from_a_done_callback_does_not_stall_the_root(program, scoop_run):
    # "When one finishes, cancel the other", as concurrent.futures allows.
    prog = program("""
if __name__ == "__main__":
    gate, blockers = block_both_workers(range(2))
    victim = futures.submit(abs, -5)
    other = futures.submit(abs, -6)
    answers = []
    answered = threading.Event()

    def cancel_the_victim(_):
        answers.append(victim.cancel())
        answered.set()

    blockers[0].add_done_callback(cancel_the_victim)
    release(gate)
    done, not_done = futures.wait([blockers[1], victim, other], timeout=5)
    # A future's waiters wake before its callbacks run: wait for the answer too.
    answered.wait(5)
    out([len(answers), len(not_done)])
    os._exit(0)  # do not wait for a stuck I/O thread at exit
""")
    got = program_results(scoop_run(prog, timeout=60))
    assert got[0] == [1, 0]
