"""The broker's rules, seen from a program, are the same on both transports.

One policy decides where futures go: on ZeroMQ the broker thread drives
one for the whole run, on Redis every process drives its own. Each test
here runs one program through the real launcher on both, and checks what a
user would notice: a cancelled future never runs, the futures of a peer
that is gone are not run for nobody, a future that killed its worker runs
alone without stalling its worker, a worker that leaves on request charges
no loss, and a shared constant is defined once and reaches late workers.

Futures that must stay put wait for a *gate* file the root creates when the
test is done with them; what ran is told by the files futures create.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PROGRAM_HELPERS

pytestmark = pytest.mark.both_transports

PRELUDE = (
    """
import json, os, signal, sys, time
from pathlib import Path
from scoop import futures, shared
from scoop_core import runtime
from scoop_core.errors import ConstantError, WorkerLostError
import scoop

HERE = Path(sys.argv[1])

"""
    + PROGRAM_HELPERS
    + """
def gated(name):
    # Hold this worker until the root creates the file `name` (at most 60 s).
    deadline = time.monotonic() + 60
    while not (HERE / name).exists() and time.monotonic() < deadline:
        time.sleep(0.005)

def release(name):
    (HERE / name).touch()

def held_here():
    # How many futures this worker holds that it has not started: only to
    # know when the situation under test has come about.
    return runtime.current().book.unstarted

def touch(name):
    (HERE / name).touch()
    return name
"""
)


def results(proc: subprocess.CompletedProcess[str]) -> list:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def test_a_future_a_worker_holds_but_has_not_started_is_cancelled_and_never_runs(
    write_program, scoop_run, tmp_path
):
    # One worker asking for three futures: while it runs a gated blocker it
    # holds the next two, unstarted, and the root cancels those.
    prog = write_program(
        PRELUDE
        + """
def blocker():
    wait_until(lambda: held_here() >= 2, "the worker to hold two more futures")
    release("held")
    gated("gate")
    return "blocker"

if __name__ == "__main__":
    first = futures.submit(blocker)
    held = [futures.submit(touch, f"held-{i}") for i in range(2)]
    wait_until(lambda: (HERE / "held").exists(), "the worker to hold them")
    out([f.cancel() for f in held])
    out([f.cancelled() for f in held])
    try:
        held[0].result(timeout=5)
        out("no error")
    except futures.CancelledError:
        out("CancelledError")
    release("gate")
    out(first.result(timeout=30))
    # The worker ran these after whatever it still held.
    out(sorted(futures.map(touch, ["after-0", "after-1", "after-2"])))
"""
    )
    proc = scoop_run(
        prog, str(tmp_path), flags=("-n", "1"), env={"SCOOP_PREFETCH": "3"}, timeout=60
    )
    got = results(proc)
    assert got[0] == [True, True]
    assert got[1] == [True, True]
    assert got[2] == "CancelledError"
    assert got[3] == "blocker"
    assert got[4] == ["after-0", "after-1", "after-2"]
    assert not (tmp_path / "held-0").exists() and not (tmp_path / "held-1").exists()


def test_the_unstarted_futures_of_a_worker_that_died_are_not_run_for_nobody(
    write_program, scoop_run, tmp_path
):
    # A future on worker A submits gated children and waits for them; the
    # idle worker B takes some (it steals). Once B has started one and holds
    # at least one more, a child on A kills A: nobody is left to read A's
    # children. The one B runs finishes, unread; those B holds unstarted are
    # not run. The parent runs again (it was lost with A) and returns at once.
    prog = write_program(
        PRELUDE
        + """
def child(i):
    if scoop.worker == (HERE / "parent-on").read_text():
        wait_until(lambda: (HERE / "held-by-thief").exists(), "another worker to take children")
        (HERE / "died").touch()
        os._exit(1)
    if not (HERE / "first-start").exists():
        (HERE / "first-start").write_text(str(i))
        wait_until(lambda: held_here() >= 1, "this worker to hold another child")
        (HERE / "held-by-thief").write_text(str(held_here()))
    gated("gate")
    (HERE / f"ran-{i}").touch()
    return i

def parent():
    if (HERE / "died").exists():
        return "again"
    (HERE / "parent-on").write_text(scoop.worker)
    kids = [futures.submit(child, i) for i in range(8)]
    futures.wait(kids, timeout=60)
    return "not reached"

if __name__ == "__main__":
    out(futures.submit(parent).result(timeout=60))
    release("gate")
    # Both workers take more work: whatever they still held has run by now.
    out(sorted(futures.map(touch, [f"after-{i}" for i in range(8)])))
"""
    )
    proc = scoop_run(
        prog, str(tmp_path), flags=("-n", "2"), env={"SCOOP_PREFETCH": "3"}, timeout=90
    )
    got = results(proc)
    assert got[0] == "again"
    assert got[1] == [f"after-{i}" for i in range(8)]
    held = int((tmp_path / "held-by-thief").read_text())
    assert held >= 1
    first = int((tmp_path / "first-start").read_text())
    ran = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("ran-*"))
    # Only the child that had started when its owner died ran to the end.
    assert ran == [first], proc.stderr
    print(f"the thief held {held} unstarted child(ren) of the dead worker; it ran child {first}")


def test_a_suspect_waiting_on_its_own_children_does_not_stall_a_single_worker(
    write_program, scoop_run, tmp_path
):
    # The parent kills its first worker once: from then on it is a suspect
    # and runs alone. Its own children (a map and submits) still run on the
    # one worker it has, and so do the futures queued behind it.
    prog = write_program(
        PRELUDE
        + """
def square(x):
    return x * x

def parent(n):
    if not (HERE / "died").exists():
        (HERE / "died").touch()
        os._exit(1)
    kids = [futures.submit(square, i) for i in range(n)]
    return [sum(futures.map(square, range(n))), sum(k.result() for k in kids)]

if __name__ == "__main__":
    start = time.monotonic()
    p = futures.submit(parent, 20)
    others = [futures.submit(square, i) for i in range(10)]
    out(p.result(timeout=60))
    out([f.result(timeout=60) for f in others])
    out(time.monotonic() - start)
"""
    )
    proc = scoop_run(prog, str(tmp_path), flags=("-n", "1"), timeout=90)
    got = results(proc)
    right = sum(i * i for i in range(20))
    assert got[0] == [right, right]
    assert got[1] == [i * i for i in range(10)]
    assert "worker-1 exited with status 1; worker-2 replaces it" in proc.stderr
    print(f"a suspect with its own children on one worker finished in {got[2]:.2f} s")


def test_a_worker_asked_to_leave_hands_back_its_future_without_a_loss(
    write_program, scoop_run, tmp_path
):
    # The future may be lost once at most (max_losses=1): if the worker that
    # is asked to leave (SIGTERM, as the launcher stops a worker) charged it a
    # loss, it would fail; handed back, it runs again on the other worker.
    prog = write_program(
        PRELUDE
        + """
def hold():
    with open(HERE / "runs", "a") as fh:
        fh.write(f"{scoop.worker} {os.getpid()}\\n")
    gated("gate")
    return scoop.worker

def runs():
    path = HERE / "runs"
    return path.read_text().splitlines() if path.exists() else []

if __name__ == "__main__":
    f = futures.options(max_losses=1).submit(hold)
    wait_until(lambda: runs(), "the future to start")
    first, pid = runs()[0].split()
    os.kill(int(pid), signal.SIGTERM)
    wait_until(lambda: len(runs()) >= 2 or f.done(), "the future to start again")
    release("gate")
    try:
        out([first, f.result(timeout=30)])
    except WorkerLostError as exc:
        out([first, "lost: " + str(exc)])
"""
    )
    proc = scoop_run(prog, str(tmp_path), flags=("-n", "2"), timeout=60)
    (first, second), *_ = results(proc)
    assert not second.startswith("lost: "), second
    assert second != first
    assert "was lost" not in proc.stderr, proc.stderr


def test_a_constant_is_defined_once_and_reaches_a_worker_that_joins_later(
    write_program, scoop_run, tmp_path
):
    prog = write_program(
        PRELUDE
        + """
def define(name, value):
    try:
        shared.setConst(**{name: value})
        return "defined"
    except ConstantError as exc:
        return "refused: " + str(exc)

def read(_):
    return [scoop.worker, shared.getConst("size", timeout=5)]

def die_once():
    if not (HERE / "died").exists():
        (HERE / "died").touch()
        os._exit(1)
    return scoop.worker

if __name__ == "__main__":
    shared.setConst(size=10)
    out(define("size", 11))
    out(futures.submit(define, "size", 12).result())
    out(futures.submit(define, "other", 1).result())
    out(define("other", 2))
    # The worker that dies is replaced by worker-3, which joins after the
    # constants were defined.
    out(futures.submit(die_once).result(timeout=60))
    seen = {}
    deadline = time.monotonic() + 30
    while "worker-3" not in seen and time.monotonic() < deadline:
        seen.update(dict(futures.map(read, range(8))))
    out(seen)
"""
    )
    # The reads must reach the workers: the root would run them itself.
    env = {"SCOOP_ROOT_RUNS_FUTURES": "false"}
    proc = scoop_run(prog, str(tmp_path), flags=("-n", "2"), timeout=90, env=env)
    got = results(proc)
    refusal = "shared constant {!r} is already defined; a constant is defined once per run"
    assert got[0] == "refused: " + refusal.format("size")
    assert got[1] == "refused: " + refusal.format("size")
    assert got[2] == "defined"
    assert got[3] == "refused: " + refusal.format("other")
    assert got[5].get("worker-3") == 10, got[5]
    assert set(got[5].values()) == {10}
