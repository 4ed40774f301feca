"""The futures and shared API, run by real programs through the real launcher
on real worker processes over the default ZeroMQ transport.

Each program prints ``RESULT <json>`` lines; the tests read them back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_command

# Every program here runs on both built-in transports: they are interchangeable.
pytestmark = pytest.mark.both_transports


def results(proc) -> list:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


PRELUDE = """
import json, sys, time, operator, functools, itertools, threading
from scoop import futures, shared
import scoop

def out(value):
    print("RESULT " + json.dumps(value), flush=True)
"""


def test_submit_map_and_reductions_match_the_serial_results(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
def sq(x):
    return x * x

def add3(a, b, c):
    return a + b + c

def concat(a, b):
    return a + b

def letter(i):
    return "abcdefghijklmnopqrstuvwxyz"[i % 26]

if __name__ == "__main__":
    out(futures.submit(sq, 7).result())
    out(futures.submit(add3, 1, 2, c=3).result())
    out(list(futures.map(sq, range(1000))))
    out(list(futures.map(add3, range(5), range(10, 15), [100] * 7)))
    out(sorted(futures.map_as_completed(sq, range(500))))
    out(futures.mapReduce(letter, concat, range(300)))
    out(futures.mapScan(sq, operator.sub, range(50)))
    # a huge (endless) iterable: map must not read it all
    gen = futures.map(sq, itertools.count())
    out([next(gen) for _ in range(2000)][-1])
    gen.close()
"""
    )
    got = results(scoop_run(prog))
    assert got[0] == 49
    assert got[1] == 6
    assert got[2] == [x * x for x in range(1000)]
    assert got[3] == [110, 112, 114, 116, 118]
    assert got[4] == sorted(x * x for x in range(500))
    assert got[5] == "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(300))
    import itertools
    import operator

    assert got[6] == list(itertools.accumulate((x * x for x in range(50)), operator.sub))
    assert got[7] == 1999 * 1999


def test_wait_and_as_completed_return_as_soon_as_their_condition_holds(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
def nap(seconds, fail=False):
    time.sleep(seconds)
    if fail:
        raise ValueError("boom")
    return seconds

if __name__ == "__main__":
    slow = futures.submit(nap, 60)
    fast = futures.submit(nap, 0.05)
    t = time.monotonic()
    done, not_done = futures.wait([slow, fast], return_when=futures.FIRST_COMPLETED)
    out([fast in done, slow in not_done, time.monotonic() - t < 30])
    bad = futures.submit(nap, 0.05, True)
    done, not_done = futures.wait([slow, bad], return_when=futures.FIRST_EXCEPTION)
    out([bad in done, slow in not_done])
    try:
        for f in futures.as_completed([slow, fast], timeout=0.5):
            pass
        out("no timeout")
    except futures.TimeoutError:
        out("timeout")
    t = time.monotonic()
    try:
        slow.result(timeout=0.3)
    except futures.TimeoutError as exc:
        out(["result timeout", 0.25 < time.monotonic() - t < 10, str(exc)])
    quick = [futures.submit(nap, 0.01 * i) for i in range(4)]
    done, not_done = futures.wait(quick, timeout=-1)  # SCOOP's default: no limit
    out([len(done), len(not_done)])
    out(sorted(f.result() for f in futures.as_completed(quick)))
"""
    )
    got = results(scoop_run(prog))
    assert got[0] == [True, True, True]
    assert got[1] == [True, True]
    assert got[2] == "timeout"
    assert got[3] == ["result timeout", True, "no result within 0.3 s"]
    assert got[4] == [4, 0]
    assert got[5] == [0.0, 0.01, 0.02, 0.03]


def test_future_methods_and_callbacks(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
def nap(seconds):
    time.sleep(seconds)
    return seconds

def broken_callback(f):
    raise RuntimeError("callback went wrong")

if __name__ == "__main__":
    # one worker is kept busy, so queued futures have not started
    blockers = [futures.submit(nap, 2) for _ in range(2)]
    while not all(b.running() for b in blockers):
        time.sleep(0.01)
    queued = [futures.submit(nap, 0) for _ in range(10)]
    out([queued[-1].cancel(), queued[-1].cancelled(), queued[-1].done()])
    try:
        queued[-1].result()
    except futures.CancelledError:
        out("cancelled error")
    out([blockers[0].running(), blockers[0].cancel()])
    seen = []
    blockers[0].add_done_callback(lambda f: seen.append(("later", f.result())))
    blockers[0].add_done_callback(broken_callback)
    blockers[0].result()
    done = futures.submit(nap, 0)
    done.result()
    done.add_done_callback(lambda f: seen.append(("at once", f.result())))
    out([s[0] for s in seen])
    out([f.result() for f in queued[:-1]])
    out([done.done(), done.running(), done.cancelled(), done.exception()])
"""
    )
    proc = scoop_run(prog)
    got = results(proc)
    assert got[0] == [True, True, True]
    assert got[1] == "cancelled error"
    assert got[2] == [True, False]
    assert got[3] == ["later", "at once"]
    assert got[4] == [0] * 9
    assert got[5] == [True, False, False, None]
    assert "callback went wrong" in proc.stderr


def test_exceptions_come_back_with_their_remote_traceback_and_the_pool_keeps_working(
    write_program, scoop_run
):
    prog = write_program(
        PRELUDE
        + """
class Custom(Exception):
    pass

def explode(x):
    if x == 3:
        raise Custom(f"bad item {x}")
    return x

if __name__ == "__main__":
    f = futures.submit(explode, 3)
    try:
        f.result()
    except Custom as exc:
        out([str(exc), "explode" in str(exc.__cause__), "worker-" in str(exc.__cause__)])
    out(type(f.exception()).__name__)
    seen = []
    try:
        for value in futures.map(explode, range(10)):
            seen.append(value)
    except Custom as exc:
        out([seen, str(exc)])
    out(list(futures.map(explode, [1, 2, 4])))
"""
    )
    got = results(scoop_run(prog))
    assert got[0] == ["bad item 3", True, True]
    assert got[1] == "Custom"
    assert got[2] == [[0, 1, 2], "bad item 3"]
    assert got[3] == [1, 2, 4]


def test_what_cannot_be_sent_is_named(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
def identity(x):
    return x

def make_lock(_):
    return threading.Lock()

if __name__ == "__main__":
    try:
        futures.submit(identity, threading.Lock())
    except TypeError as exc:
        out(["submit", type(exc).__name__, str(exc)])
    try:
        futures.submit(make_lock, 1).result()
    except TypeError as exc:
        out(["result", type(exc).__name__, str(exc)])
    try:
        futures.submit(42)
    except TypeError as exc:
        out(["callable", str(exc)])
    out(futures.submit(identity, 5).result())
"""
    )
    got = results(scoop_run(prog))
    assert got[0][:2] == ["submit", "SerializationError"]
    assert "argument 1 of identity()" in got[0][2] and "lock" in got[0][2]
    assert got[1][:2] == ["result", "SerializationError"]
    assert "lock" in got[1][2] and "cannot be sent back" in got[1][2]
    assert got[2][0] == "callable" and "42" in got[2][1]
    assert got[3] == 5


def test_lambdas_closures_bound_methods_and_decorated_functions_can_be_sent(
    write_program, scoop_run
):
    prog = write_program(
        PRELUDE
        + """
def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return ("decorated", fn(*args))
    return wrapper

@decorate
def double(x):
    return 2 * x

class Counter:
    def __init__(self, start):
        self.start = start
    def add(self, x):
        return self.start + x

if __name__ == "__main__":
    offset = 10
    out(futures.submit(lambda x: x + 1, 1).result())
    out(list(futures.map(lambda x: x + offset, range(3))))
    out(futures.submit(Counter(100).add, 5).result())
    out(futures.submit(double, 4).result())
"""
    )
    got = results(scoop_run(prog))
    assert got == [2, [10, 11, 12], 105, ["decorated", 8]]


def test_shared_constants(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
from scoop_core.errors import ConstantError, ConstantNotFound

def read(name):
    return shared.getConst(name)

def read_missing(_):
    try:
        shared.getConst("nope", timeout=0.05)
    except ConstantNotFound as exc:
        return "missing: " + str(exc)[:30]

def define_in_worker(_):
    shared.setConst(from_worker=[1, 2])
    return True

if __name__ == "__main__":
    shared.setConst(size=10, nothing=None)
    out(list(futures.map(read, ["size"] * 4)))
    out(futures.submit(read, "nothing").result())
    out(futures.submit(read_missing, 0).result())
    out(shared.getConst("nope", timeout=0, default="dflt"))
    try:
        shared.setConst(size=11)
    except TypeError as exc:  # what SCOOP raised, so SCOOP's programs catch it
        out("twice: " + str(exc) if isinstance(exc, ConstantError) else "not ours")
    out(futures.submit(define_in_worker, 0).result())
    out(shared.getConst("from_worker", timeout=5))
    out(list(futures.map(read, ["from_worker"] * 3)))
"""
    )
    got = results(scoop_run(prog))
    assert got[0] == [10] * 4
    assert got[1] is None
    assert got[2].startswith("missing: no shared constant named")
    assert got[3] == "dflt"
    assert got[4].startswith("twice: shared constant 'size' is already defined")
    assert got[5] is True
    assert got[6] == [1, 2]
    assert got[7] == [[1, 2]] * 3


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

NESTED = (
    PRELUDE
    # examples/fibonacci.py's naive recursion: a nested future at every call
    + f"sys.path.insert(0, {str(EXAMPLES)!r})\nfrom fibonacci import fib\n"
    + """
def square(x):
    return x * x

def nested_map(n):
    return sum(futures.map(square, range(n)))

def nested_wait(n):
    fs = [futures.submit(square, i) for i in range(n)]
    done, _ = futures.wait(fs)
    return sorted(f.result() for f in futures.as_completed(fs)) == sorted(f.result() for f in done)

def tree(depth):
    if depth == 0:
        return 1
    return sum(futures.map(tree, [depth - 1] * 3))

if __name__ == "__main__":
    n = int(sys.argv[1])
    out(futures.submit(fib, n).result())
    out(futures.submit(nested_map, 100).result())
    out(futures.submit(nested_wait, 20).result())
    out(futures.submit(tree, 4).result())
"""
)


@pytest.mark.parametrize(("workers", "n", "expected"), [("2", "20", 6765), ("1", "15", 610)])
def test_nested_futures_never_deadlock(write_program, scoop_run, workers, n, expected):
    prog = write_program(NESTED)
    got = results(scoop_run(prog, n, flags=("-n", workers), timeout=240))
    assert got == [expected, sum(x * x for x in range(100)), True, 81]


def test_large_arrays_travel_intact(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
import numpy as np

def total(a):
    a += 1  # arrives writable
    return float(a.sum()), a.nbytes

def make(n):
    return np.ones(n, dtype=np.float64)

if __name__ == "__main__":
    arr = np.zeros(8 * 1024 * 1024)  # 64 MiB
    out(futures.submit(total, arr).result())
    back = futures.submit(make, 8 * 1024 * 1024).result()
    out([float(back.sum()), back.nbytes])
"""
    )
    got = results(scoop_run(prog))
    assert got[0] == [8 * 1024 * 1024, 64 * 1024 * 1024]
    assert got[1] == [8 * 1024 * 1024, 64 * 1024 * 1024]


def test_every_worker_imports_the_program_and_only_the_root_runs_main(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
print("LOADED", scoop.worker, __name__, flush=True)

def who(_):
    print("OUTPUT FROM", scoop.worker, flush=True)
    scoop.logger.warning("logged by a worker")
    return [scoop.worker, scoop.IS_ORIGIN, scoop.IS_RUNNING]

if __name__ == "__main__":
    out([scoop.IS_ORIGIN, scoop.IS_RUNNING, scoop.worker, scoop.SIZE, bool(scoop.BROKER)])
    out(futures.submit(who, 0).result())
"""
    )
    proc = scoop_run(prog, flags=("-n", "3"))
    got = results(proc)
    assert got[0] == [True, True, "root", 3, True]
    assert got[1][0].startswith("worker-") and got[1][1:] == [False, True]
    loaded = sorted(
        line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("LOADED")
    )
    assert loaded == [
        ["root", "__main__"],
        ["worker-1", "__scoop_main__"],
        ["worker-2", "__scoop_main__"],
        ["worker-3", "__scoop_main__"],
    ]
    assert "OUTPUT FROM worker-" in proc.stdout
    log_line = next(line for line in proc.stderr.splitlines() if "logged by a worker" in line)
    assert "worker-" in log_line and "prog" in log_line and "WARNING" in log_line


def test_outside_a_launch_map_runs_serially_with_one_warning_and_submit_says_how_to_launch(
    tmp_path,
):

    prog = tmp_path / "plain.py"
    prog.write_text(
        PRELUDE
        + """
if __name__ == "__main__":
    out(list(futures.map(abs, [-1, -2])))
    out(list(futures.map(abs, [-3])))
    out(futures.mapReduce(abs, operator.add, [-1, -2, -3]))
    try:
        futures.submit(abs, 1)
    except Exception as exc:
        out([type(exc).__name__, str(exc)])
"""
    )
    proc = run_command([sys.executable, str(prog)], timeout=60)
    got = results(proc)
    assert got[:3] == [[1, 2], [3], 6]
    assert got[3][0] == "NotLaunchedError" and "python -m scoop" in got[3][1]
    assert proc.stderr.count("runs serially") == 1
