"""The root runs a cheap future itself while it waits for it (``root_runs_futures``).

A loop that submits a small call and waits for it would otherwise pay a
round trip through the broker and a worker every time. These programs run
through the real launcher and tell, by process id, where each future ran.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import program_results

PRELUDE = """
import json
import os
import time

from scoop import futures


def out(value):
    print("RESULT " + json.dumps(value), flush=True)


def pid(x=None):
    return os.getpid()


def slow_pid(x=None):
    time.sleep(0.005)
    return os.getpid()


def roots(values):
    return sum(1 for v in values if v == os.getpid())
"""


@pytest.mark.both_transports
def test_a_cheap_function_that_ran_well_on_workers_runs_in_the_root(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    first = [futures.submit(pid).result() for _ in range(3)]
    later = [futures.submit(pid, i).result() for i in range(20)]
    mapped = list(futures.map(pid, range(50)))
    done, _ = futures.wait([futures.submit(pid) for _ in range(5)])
    out([roots(first), roots(later), roots(mapped), roots(f.result() for f in done)])
""")
    first, later, mapped, waited = program_results(scoop_run(prog))[0]
    # Learned from three runs on workers; from then on a call waited for
    # before it left runs in the root. (One may still leave first: the I/O
    # thread holds such a future back only for a millisecond, and a busy
    # machine can keep the program from waiting for it that long.)
    assert first == 0
    assert later >= 10 and mapped >= 1 and waited >= 1, (later, mapped, waited)


def test_root_runs_futures_false_keeps_every_future_on_the_workers(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    ran = [futures.submit(pid, i).result() for i in range(30)] + list(futures.map(pid, range(50)))
    out([roots(ran), len(ran)])
""")
    proc = scoop_run(prog, env={"SCOOP_ROOT_RUNS_FUTURES": "false"})
    assert program_results(proc) == [[0, 80]]


def test_a_function_slower_than_a_millisecond_never_runs_in_the_root(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    out(roots(futures.submit(slow_pid, i).result() for i in range(10)))
""")
    assert program_results(scoop_run(prog)) == [0]


def test_a_function_that_lost_its_worker_never_runs_in_the_root(program, scoop_run):
    prog = program("""
def fragile(x):
    if x == "die":
        os._exit(3)
    return os.getpid()

if __name__ == "__main__":
    try:
        futures.submit(fragile, "die").result()
    except Exception as exc:
        out(type(exc).__name__)
    out(roots(futures.submit(fragile, i).result() for i in range(10)))
""")
    proc = scoop_run(prog, env={"SCOOP_MAX_LOSSES": "1"})
    assert program_results(proc) == ["WorkerLostError", 0]


@pytest.mark.both_transports
def test_os_exit_in_a_future_the_root_runs_ends_a_worker_not_the_root(program, scoop_run):
    prog = program("""
def square_or_die(x):
    if x == 25:
        os._exit(1)
    return x * x, os.getpid()

if __name__ == "__main__":
    got = []
    for i in range(30):
        try:
            got.append(futures.submit(square_or_die, i).result())
        except Exception as exc:
            got.append(type(exc).__name__)
    out([got[25], [v[0] for v in got if v != got[25]], roots(v[1] for v in got[:25])])
""")
    proc = scoop_run(prog, env={"SCOOP_MAX_LOSSES": "1"})
    lost, squares, in_root = program_results(proc)[0]
    # The killer ran in the root (its function had run well), was caught
    # there, and went to a worker, which it killed: it alone failed.
    assert lost == "WorkerLostError"
    assert squares == [i * i for i in range(30) if i != 25]
    assert in_root >= 10
    assert "called os._exit(1) in the root; sending it to a worker" in proc.stderr


def test_a_function_that_fails_in_the_root_gets_its_workers_answer(program, scoop_run):
    prog = program("""
import scoop

if not scoop.IS_ORIGIN:
    TABLE = {i: i * i for i in range(100)}  # loaded by workers only

def lookup(x):
    return TABLE[x], os.getpid()

if __name__ == "__main__":
    got = [futures.submit(lookup, i).result() for i in range(30)]
    mapped = list(futures.map(lookup, range(100)))
    out([[v for v, _ in got], [v for v, _ in mapped], roots(p for _, p in got + mapped)])
""")
    squares, mapped, in_root = program_results(scoop_run(prog))[0]
    # The root tried once, failed (no TABLE there), and left it to the workers.
    assert squares == [i * i for i in range(30)]
    assert mapped == [i * i for i in range(100)]
    assert in_root == 0


def test_a_future_run_in_the_root_behaves_as_on_a_worker(program, scoop_run):
    prog = program("""
class Odd(Exception):
    pass

def grow(items, x):
    items.append(x)  # a worker appends to its own copy
    if x % 2:
        raise Odd(x)
    return len(items), os.getpid()

if __name__ == "__main__":
    mine = []
    for x in (0, 2, 4, 6):
        futures.submit(grow, mine, x).result()
    size, where = futures.submit(grow, mine, 8).result()
    try:
        futures.submit(grow, mine, 9).result()
        raised = None
    except Odd as exc:
        raised = exc.args[0]
    out([mine, size, where == os.getpid(), raised])
""")
    (got,) = program_results(scoop_run(prog))
    assert got == [[], 1, True, 9]


@pytest.mark.both_transports
def test_many_tiny_futures_are_shared_by_the_root_and_the_workers_each_run_once(
    program, scoop_run, tmp_path
):
    # More tiny futures than the root keeps on the workers: the rest wait in
    # the root, which runs them while it waits for the ones it sent. Each
    # future claims a file of its own, so a second run of any would fail.
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    prog = program(f"""
def claim(i):
    os.close(os.open(os.path.join({str(claimed)!r}, str(i)), os.O_CREAT | os.O_EXCL))
    return i, os.getpid()

if __name__ == "__main__":
    for i in range(20):  # its cost learned, and steady
        futures.submit(claim, -1 - i).result()
    pending = [futures.submit(claim, i) for i in range(3000)]
    got = [f.result() for f in pending]
    out([[i for i, _ in got] == list(range(3000)), roots(p for _, p in got)])
""")
    (got,) = program_results(scoop_run(prog))
    in_order, in_root = got
    assert in_order
    assert 0 < in_root < 3000, in_root
    assert len(list(claimed.iterdir())) == 3020
