"""A future that kills its worker: the launcher replaces the worker, the
future fails with WorkerLostError after ``max_losses`` losses, and the run
goes on with as many workers as it started with.

Real runs through ``python -m scoop``; each program measures, in the root,
how long the loss took to become an exception and how long until the run
had its workers back, and the tests print it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from datetime import datetime

import pytest
from conftest import kill_run, processes_of, program_results, stopped_early, wait_gone
from test_ssh_runs import Machines, machines, run_scoop  # noqa: F401 (a fixture)

PRELUDE = """
import ctypes, json, os, signal, sys, time
from scoop import futures
from scoop_core.errors import WorkerLostError
import scoop

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def square(x):
    time.sleep(0.01)
    return x * x

def crash(*_):
    # Ends its worker at once, as a crash would.
    os._exit(1)

def whoami(_):
    time.sleep(0.05)
    return [os.getpid(), scoop.worker]

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

def back_to(size, deadline=60):
    # The workers serving now: distinct live pids, asked until there are
    # `size` of them (a replacement may still be starting).
    end = time.monotonic() + deadline
    while True:
        seen = {pid: name for pid, name in futures.map(whoami, range(8 * size))}
        live = {pid: name for pid, name in seen.items() if alive(pid)}
        if len(live) >= size or time.monotonic() > end:
            return live
"""

# One future in the middle of others dies the same way wherever it runs:
# it ends its process with CRASH at once. Its first worker dies with results
# of other futures unsent and others not started; those are not charged
# with it (see test_suspects).
ONE_DEADLY = """
def deadly():
    print("DYING", scoop.worker, time.time(), flush=True)
    CRASH

if __name__ == "__main__":
    start = time.monotonic()
    fs = [futures.submit(square, i) for i in range(10)]
    bad = futures.submit(deadly)
    fs += [futures.submit(square, i) for i in range(10, 20)]
    try:
        bad.result()
        out("no error")
    except WorkerLostError as exc:
        out(str(exc))
    lost = time.monotonic()
    out([f.result() for f in fs])
    live = back_to(2)
    out(sorted(live.values()))
    out([lost - start, time.monotonic() - lost])
"""

CRASHES = {
    "os._exit": ("os._exit(1)", 1),
    "segfault": ("ctypes.string_at(0)", -signal.SIGSEGV),
    # The statuses of a worker that could not import the program, and of one
    # that retired: from a future, without the worker's word, still deaths.
    "os._exit-import-status": ("os._exit(3)", 3),
    "os._exit-retired-status": ("os._exit(75)", 75),
}


def _detection_delays(proc: subprocess.CompletedProcess[str]) -> list[float]:
    """Seconds from each worker's last words (``DYING name time``) to the
    launcher's line saying it exited: the time to see a worker die."""
    died = {
        words[1]: float(words[2])
        for words in (line.split() for line in proc.stdout.splitlines())
        if words[:1] == ["DYING"]
    }
    seen = {}
    for stamp, name in re.findall(
        r"^\[([^\]]+)\].* (worker-\d+) exited with status", proc.stderr, re.M
    ):
        seen[name] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert set(died) == set(seen), (died, seen)
    return [seen[name] - died[name] for name in died]


def _replacements(stderr: str) -> list[tuple[str, str]]:
    """(dead, replacement) for each worker the launcher replaced."""
    return re.findall(r"(worker-\d+) exited with status -?\d+; (worker-\d+) replaces it", stderr)


@pytest.mark.both_transports
@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_future_that_kills_its_worker_fails_and_the_run_goes_on_with_all_its_workers(
    program, scoop_run, crash
):
    code, status = CRASHES[crash]
    prog = program(ONE_DEADLY.replace("CRASH", code))
    proc = scoop_run(prog, flags=("-n", "2"), timeout=120)
    message, squares, workers, (detect, recover) = program_results(proc)
    # The root caught the loss, with the default max_losses (3).
    assert "was lost with its worker 3 times" in message
    # Every other future's result is right.
    assert squares == [i * i for i in range(20)]
    # Each death was seen and the worker replaced, under a new name...
    replaced = _replacements(proc.stderr)
    assert len(replaced) == 3, proc.stderr
    assert f"exited with status {status}; worker-" in proc.stderr
    assert [new for _, new in replaced] == ["worker-3", "worker-4", "worker-5"]
    # ...so the run ends with two live workers, at least one a replacement.
    assert len(workers) == 2 and set(workers) & {"worker-3", "worker-4", "worker-5"}
    delays = _detection_delays(proc)
    assert len(delays) == 3 and max(delays) < 5, delays
    print(
        f"{crash} (exit status {status}): each death seen by the launcher after "
        f"{', '.join(f'{d:.2f}' for d in delays)} s; three losses became WorkerLostError "
        f"{detect:.2f} s after submitting; two live workers again {recover:.2f} s later "
        f"({', '.join(workers)})"
    )


@pytest.mark.both_transports
def test_with_restarts_off_a_dead_worker_is_not_replaced_and_the_message_names_the_setting(
    program, scoop_run
):
    prog = program("""
if __name__ == "__main__":
    list(futures.map(crash, range(10)))
    out("not reached")
""")
    env = {"SCOOP_MAX_RESTARTS": "0"}
    proc, took = stopped_early(scoop_run, prog, flags=("-n", "2"), env=env, timeout=60)
    assert "worker-1 exited with status 1; not replaced (max_restarts = 0)" in proc.stderr
    assert "worker-2 exited with status 1; not replaced (max_restarts = 0)" in proc.stderr
    assert "every worker has exited" in proc.stderr
    assert _replacements(proc.stderr) == []
    print(f"restarts off: the run stopped with status 1 after {took:.2f} s")


@pytest.mark.both_transports
def test_a_crash_loop_ends_with_an_error_naming_the_host_and_max_restarts(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    # Every future kills its worker; the program would go on for ever if
    # the dead workers were replaced without a bound.
    for f in [futures.submit(crash, i) for i in range(40)]:
        try:
            f.result()
        except WorkerLostError:
            pass
    out("not reached")
""")
    proc, took = stopped_early(scoop_run, prog, flags=("-n", "2"), timeout=120)
    # The default bound: ten replacements on the host, then none.
    assert len(_replacements(proc.stderr)) == 10
    assert "10 worker(s) on this machine were replaced already (max_restarts = 10)" in (proc.stderr)
    assert "every worker has exited" in proc.stderr
    assert took < 60
    print(f"crash loop: ended with status 1 after {took:.2f} s and 10 restarts")


@pytest.mark.both_transports
def test_ctrl_c_after_a_restart_stops_everything_and_replaces_nothing(
    program, tmp_path, transport_env
):
    prog = program("""
def nap(_):
    time.sleep(60)

if __name__ == "__main__":
    try:
        futures.submit(crash).result()
    except WorkerLostError:
        pass
    live = back_to(2)
    fs = [futures.submit(nap, i) for i in range(2)]
    print("READY", len(live), flush=True)
    for f in fs:
        f.result()
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "2", str(prog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
        env={**os.environ, **transport_env},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the program never got ready"
        line = proc.stdout.readline()
        assert line.split() == ["READY", "2"], line
        before = processes_of(str(prog))
        assert len(before) == 4  # launcher, root, two workers
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signal.SIGINT, stderr
        # The three deaths of the deadly future were replaced; the workers
        # stopped by Ctrl-C were not.
        assert len(_replacements(stderr)) == 3, stderr
        assert wait_gone(str(prog)) == []
    finally:
        kill_run(str(prog), proc)


@pytest.mark.cluster
def test_a_remote_worker_killed_by_its_future_is_replaced_on_its_host(
    machines: Machines,  # noqa: F811 (the fixture imported above)
    program,
):
    # Every worker on another host (the first host runs the program): each
    # replacement is started there by the host's supervisor.
    prog = program(
        ONE_DEADLY.replace("CRASH", "os._exit(1)").replace("live = back_to(2)", "live = back_to(3)")
    )
    proc = run_scoop(machines, prog, "--hosts", "h1", "h2", "h2", timeout=180)
    message, squares, workers, (detect, recover) = program_results(proc)
    assert "was lost with its worker 3 times" in message
    assert squares == [i * i for i in range(20)]
    replaced = _replacements(proc.stderr)
    assert [new for _, new in replaced] == ["worker-4", "worker-5", "worker-6"], proc.stderr
    assert re.findall(r"replaces it \(restart \d of max_restarts = 10 on host (h\d)\)", proc.stderr)
    assert len(workers) == 3 and set(workers) & {"worker-4", "worker-5", "worker-6"}
    assert machines.leftovers() == {}
    print(
        f"remote: three losses became WorkerLostError {detect:.2f} s after submitting; "
        f"three live workers again {recover:.2f} s later ({', '.join(workers)})"
    )
