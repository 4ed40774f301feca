"""``scoop_core.Executor``: a pool started by an ordinary Python program, no launcher.

Workers import the program's main file (as ``multiprocessing``'s spawn
does), so each test writes a real program and runs it with ``python prog.py``;
the program prints ``RESULT <json>`` lines and the test reads them back.
Afterwards no process of the program may be left (workers carry the
program's path in their environment). One test uses an Executor from the
pytest process itself, whose ``__main__`` is pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    environ_without_scoop,
    kill_run,
    processes_of,
    program_results,
    run_command,
    wait_for,
    wait_gone,
)

import scoop_core
from scoop import futures
from scoop_core.errors import NotLaunchedError, PluginError

PRELUDE = """
import asyncio, concurrent.futures as cf, json, os, sys, time
import scoop_core
from scoop import futures

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def sq(x):
    return x * x

def nap(seconds):
    time.sleep(seconds)
    return seconds

def pid(_=None):
    return os.getpid()
"""


@pytest.fixture
def run_program(tmp_path: Path) -> Iterator[Callable[[Path], list[Any]]]:
    """Run ``python PROGRAM`` to the end and return its results; then check
    that none of its processes is left."""
    programs: list[Path] = []

    def run(program: Path) -> list[Any]:
        programs.append(program)
        proc = run_command([sys.executable, str(program)], cwd=tmp_path)
        return program_results(proc)

    yield run
    for program in programs:
        assert reap(str(program), 10) == [], f"processes of {program} were left running"


def test_submit_and_map_work_like_any_concurrent_futures_executor(program, run_program):
    prog = program("""
def slower_first(i):
    time.sleep((5 - i) * 0.03)
    return i

def add3(a, b, c):
    return a + b + c

def submit_many(pool, k):
    return [f.result() for f in [pool.submit(sq, k * 100 + i) for i in range(50)]]

if __name__ == "__main__":
    with scoop_core.Executor(workers=2, transport="zmq") as pool:
        out(isinstance(pool, cf.Executor))
        out(pool.submit(sq, 7).result())
        out(pool.submit(add3, 1, 2, c=3).result())
        out(list(pool.map(sq, range(300))))
        out(list(pool.map(slower_first, range(6))))
        out(list(pool.map(add3, range(5), range(10, 15), [100] * 7)))
        fs = [pool.submit(sq, i) for i in range(10)]
        done, not_done = cf.wait(fs)
        out([len(done), len(not_done)])
        out(sorted(f.result() for f in cf.as_completed(fs)))
        with cf.ThreadPoolExecutor(8) as threads:
            per_thread = list(threads.map(submit_many, [pool] * 8, range(8)))
        out(per_thread == [[(k * 100 + i) ** 2 for i in range(50)] for k in range(8)])
        t = time.monotonic()
        try:
            list(pool.map(nap, [0.01, 1.5], timeout=0.3))
            out("no timeout")
        except cf.TimeoutError:
            out(["timeout", time.monotonic() - t < 1.2])
""")
    got = run_program(prog)
    assert got == [
        True,
        49,
        6,
        [x * x for x in range(300)],
        [0, 1, 2, 3, 4, 5],
        [110, 112, 114, 116, 118],
        [10, 0],
        sorted(x * x for x in range(10)),
        True,
        ["timeout", True],
    ]


def test_with_block_shuts_the_pool_down_and_leaves_no_worker(program, tmp_path):
    prog = program("""
if __name__ == "__main__":
    with scoop_core.Executor(workers=2) as pool:
        workers = sorted(set(pool.map(pid, range(20))))
        out(workers)
        sys.stdin.readline()
    try:
        pool.submit(sq, 2)
        out("accepted")
    except RuntimeError as exc:
        out(["refused", str(exc)])
    sys.stdin.readline()
""")
    # Relative path: the program's own command line must not match the marker.
    proc = subprocess.Popen(
        [sys.executable, prog.name],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        workers = json.loads(proc.stdout.readline()[7:])
        running = processes_of(str(prog))
        assert len(running) == 2 and proc.pid not in running
        assert set(workers) <= set(running)

        proc.stdin.write("leave the block\n")
        proc.stdin.flush()
        refused = json.loads(proc.stdout.readline()[7:])
        assert refused[0] == "refused"
        assert "shutdown" in refused[1]
        assert wait_gone(str(prog)) == []
        assert proc.poll() is None

        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_shutdown_waits_for_running_futures_and_cancels_queued_ones(program, run_program):
    prog = program("""
def wait_running(fs):
    deadline = time.monotonic() + 30
    while not all(f.running() for f in fs) and time.monotonic() < deadline:
        time.sleep(0.01)

if __name__ == "__main__":
    pool = scoop_core.Executor(workers=2)
    running = [pool.submit(nap, 0.5) for _ in range(2)]
    pool.shutdown(wait=True)
    out([f.done() for f in running] + [f.result() for f in running])

    pool = scoop_core.Executor(workers=2)
    running = [pool.submit(nap, 1.0) for _ in range(2)]
    wait_running(running)
    queued = [pool.submit(nap, 1.0) for _ in range(8)]
    t = time.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    out([f.result() for f in running])
    out([f.cancelled() for f in queued])
    out(time.monotonic() - t < 4.0)
    for call in (lambda: pool.submit(sq, 1), lambda: pool.map(sq, [1])):
        try:
            call()
            out("accepted")
        except RuntimeError:
            out("refused")
""")
    got = run_program(prog)
    assert got == [
        [True, True, 0.5, 0.5],
        [1.0, 1.0],
        [True] * 8,
        True,
        "refused",
        "refused",
    ]


def test_shutdown_without_waiting_lets_running_futures_finish(program, run_program):
    prog = program("""
if __name__ == "__main__":
    pool = scoop_core.Executor(workers=2)
    running = pool.submit(nap, 0.3)
    deadline = time.monotonic() + 30
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.shutdown(wait=False)
    try:
        out(running.result(timeout=30))
    except Exception as exc:
        out(repr(exc))
""")
    assert run_program(prog) == [0.3]


def run_unattended(program: Path, timeout: float) -> tuple[int | None, str]:
    """Run ``python PROGRAM`` with its output in a file (its workers may hold
    a pipe open); kill it after ``timeout`` seconds. Its status (None if it
    was killed) and output."""
    output = program.with_suffix(".out")
    with output.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(program)], cwd=program.parent, stdout=sink, stderr=sink
        )
        try:
            status: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
    return status, output.read_text()


def reap(marker: str, timeout: float) -> list[int]:
    """Wait ``timeout`` seconds for the processes of a run to go; kill (by pid)
    and return those still there, so a failing test leaves nothing behind."""
    left = wait_gone(marker, timeout)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(marker, 5)
    return left


def test_a_program_that_never_shuts_its_executor_down_still_exits(program):
    prog = program("""
if __name__ == "__main__":
    pool = scoop_core.Executor(workers=2)
    out(pool.submit(sq, 3).result())
""")
    # A clean exit takes well under a second; the bug hangs for ever.
    status, output = run_unattended(prog, timeout=8)
    left = reap(str(prog), 5)
    assert status == 0, f"the program did not exit by itself (status {status}):\n{output}"
    assert "RESULT 9" in output
    assert left == []


def test_workers_go_when_the_program_is_killed_right_after_starting_them(program):
    prog = program("""
import signal

if __name__ == "__main__":
    pool = scoop_core.Executor(workers=2)
    out("started")
    os.kill(os.getpid(), signal.SIGKILL)
""")
    status, output = run_unattended(prog, timeout=60)
    assert status == -signal.SIGKILL and "RESULT" in output
    assert reap(str(prog), 5) == [], "workers outlived their killed program"


def test_asyncio_awaits_the_executors_futures(program, run_program):
    prog = program("""
async def main(pool):
    loop = asyncio.get_running_loop()
    a = await loop.run_in_executor(pool, sq, 4)
    b = await asyncio.wrap_future(pool.submit(sq, 5))
    many = await asyncio.gather(*(loop.run_in_executor(pool, sq, i) for i in range(100)))
    wrapped = await asyncio.gather(*(asyncio.wrap_future(pool.submit(pid)) for _ in range(20)))
    return [a, b, many, os.getpid() not in wrapped]

if __name__ == "__main__":
    with scoop_core.Executor(workers=2) as pool:
        out(asyncio.run(main(pool)))
""")
    (got,) = run_program(prog)
    assert got == [16, 25, [x * x for x in range(100)], True]


def test_futures_nest_and_scoop_futures_use_the_pool(program, run_program):
    prog = program("""
def fib(n):
    if n < 2:
        return n
    a, b = futures.submit(fib, n - 1), futures.submit(fib, n - 2)
    return a.result() + b.result()

def nested(n):
    inner = futures.submit(sq, n).result()
    return [inner, sum(futures.map(sq, range(n))), list(futures.map(pid, range(4))) != []]

if __name__ == "__main__":
    with scoop_core.Executor(workers=2) as pool:
        out(pool.submit(nested, 10).result())
        out(pool.submit(fib, 15).result())
        workers = sorted(set(futures.map(pid, range(40))))
        out([os.getpid() not in workers, len(workers) >= 1])
        out(futures.submit(pid).result() != os.getpid())
        out(list(futures.map(sq, range(5))))
    # Outside the block scoop.futures falls back to serial: the pool is gone.
    out(list(futures.map(pid, range(3))) == [os.getpid()] * 3)
""")
    got = run_program(prog)
    assert got == [[100, 285, True], 610, [True, True], True, [0, 1, 4, 9, 16], True]


def test_exceptions_carry_the_remote_traceback(program, run_program):
    prog = program("""
def boom(x):
    if x == 3:
        raise ValueError(f"boom {x}")
    return x

if __name__ == "__main__":
    with scoop_core.Executor(workers=2) as pool:
        try:
            pool.submit(boom, 3).result()
        except ValueError as exc:
            out([str(exc), type(exc.__cause__).__name__, str(exc.__cause__)])
        seen = []
        try:
            for value in pool.map(boom, range(6)):
                seen.append(value)
        except ValueError as exc:
            out([seen, str(exc), "in boom" in str(exc.__cause__)])
        out(pool.submit(boom, 4).result())
""")
    got = run_program(prog)
    message, cause_type, remote = got[0]
    assert message == "boom 3"
    assert cause_type == "RemoteTraceback"
    assert "Traceback from worker" in remote
    assert 'in boom\n    raise ValueError(f"boom {x}")' in remote
    assert "ValueError: boom 3" in remote
    assert got[1:] == [[[0, 1, 2], "boom 3", True], 4]


def test_creating_an_executor_inside_a_worker_is_a_clear_error(program, run_program):
    prog = program("""
def make_pool():
    with scoop_core.Executor(1) as inner:
        return inner.submit(sq, 2).result()

if __name__ == "__main__":
    with scoop_core.Executor(workers=1) as pool:
        try:
            out(pool.submit(make_pool).result(timeout=60))
        except scoop_core.errors.LaunchError as exc:
            out(["LaunchError", str(exc)])
        out(pool.submit(sq, 3).result())
""")
    got = run_program(prog)
    assert got[0][0] == "LaunchError"
    assert "cannot be created in a worker" in got[0][1]
    assert "if __name__ == '__main__':" in got[0][1]
    assert got[1] == 9


def test_two_executors_one_after_the_other(program, run_program):
    prog = program("""
if __name__ == "__main__":
    with scoop_core.Executor(workers=2) as pool:
        first = sorted(set(pool.map(pid, range(20))))
        out(list(pool.map(sq, range(10))))
    with scoop_core.Executor(workers=2) as pool:
        second = sorted(set(pool.map(pid, range(20))))
        out(pool.submit(sq, 12).result())
        out(sorted(futures.map(sq, range(4))))
    out(set(first).isdisjoint(second))
    out([os.path.exists(f"/proc/{p}") for p in first + second])
""")
    got = run_program(prog)
    assert got[:4] == [[x * x for x in range(10)], 144, [0, 1, 4, 9], True]
    assert got[4] and not any(got[4]), "a worker outlived its Executor"


def test_a_lambda_from_the_pytest_process_runs_on_a_worker(monkeypatch):
    # Here ``__main__`` is pytest, not a program of ours: lambdas still work
    # because they travel by value. The marker finds this pool's workers.
    marker = f"executor-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("EXECUTOR_TEST_MARKER", marker)
    with scoop_core.Executor(workers=2) as pool:
        assert pool.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        assert list(pool.map(lambda a, b: a * b, range(5), range(5))) == [0, 1, 4, 9, 16]
        assert pool.submit(lambda: os.getpid()).result(timeout=60) != os.getpid()
        assert processes_of(marker) != []
    assert wait_gone(marker) == []
    with pytest.raises(NotLaunchedError):
        futures.submit(abs, -1)
    with pytest.raises(PluginError, match="unknown transport 'nope'; choose one of: .*zmq"):
        scoop_core.Executor(1, transport="nope")


JOINED = """
def where(_):
    time.sleep(0.02)
    return [scoop_core.context.worker, os.environ.get("JOIN_TAG", "no initializer")]

def tag(value):
    os.environ["JOIN_TAG"] = value

if __name__ == "__main__":
    with scoop_core.Executor(
        1, transport="redis", initializer=tag, initargs=("tagged",), max_tasks_per_child=2
    ) as pool:
        out([pool.run_id, pool.key_file])
        seen = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen.update(tuple(x) for x in pool.map(where, range(20)))
            if len([name for name, _ in seen if not name.startswith("worker-")]) >= 2:
                break
        out(sorted(seen))
"""


def test_a_scoop_worker_joins_a_redis_executor_and_runs_its_initializer_first(
    program, tmp_path, redis_server_url
):
    """``scoop worker --run ID`` on another machine (here, another process
    with the same home directory) joins the Executor's run: it finds the
    key in the file the pool names, runs the pool's initializer, then
    futures; its workers retire after max_tasks_per_child futures and it
    starts new ones; it exits once the pool shuts down."""
    prog = program(JOINED)
    env = {
        **environ_without_scoop(),
        "HOME": str(tmp_path),
        "SCOOP_TRANSPORT_REDIS_URL": redis_server_url,
        "SCOOP_TRANSPORT_REDIS_PREFIX": f"exec-{uuid.uuid4().hex[:8]}",
    }
    pool = subprocess.Popen(
        [sys.executable, prog.name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    joiner = None
    try:
        assert pool.stdout is not None
        run_id, key_file = json.loads(pool.stdout.readline()[7:])
        assert key_file == str(tmp_path / ".scoop" / "runs" / f"{run_id}.key")
        assert os.stat(key_file).st_mode & 0o077 == 0
        joiner = subprocess.Popen(
            ["scoop", "--transport", "redis", "worker", "--run", run_id, "-n", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        out, err = pool.communicate(timeout=120)
        assert pool.returncode == 0, err
        seen = json.loads(out.splitlines()[-1][7:])
        joined = [name for name, _ in seen if not name.startswith("worker-")]
        assert len(joined) >= 2, f"no joined worker was replaced after retiring: {seen}"
        assert {tag for _, tag in seen} == {"tagged"}, seen
        # The pool is shut down: the run is over, the joined worker exits, its key file is gone.
        assert joiner.wait(30) == 0, joiner.stderr.read() if joiner.stderr else ""
        assert not os.path.exists(key_file)
    finally:
        kill_run(str(prog), pool)
        if joiner is not None and joiner.poll() is None:
            joiner.kill()
            joiner.wait()
    assert wait_gone(str(prog)) == []


HOSTS = """
import socket

if __name__ == "__main__":
    with scoop_core.Executor(hosts=["127.0.0.1", "127.0.0.1", "localhost"]) as pool:
        out(pool.workers)
        out(len(set(pool.map(pid, range(60)))) >= 1)
    hostfile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hosts")
    with open(hostfile, "w") as fh:
        fh.write("127.0.0.1 2\\n")
    with scoop_core.Executor(3, hostfile=hostfile) as pool:
        out([pool.workers, pool.submit(sq, 9).result()])
"""


def test_hosts_and_hostfile_place_the_workers(program, run_program):
    """``hosts=`` takes ``--hosts`` words (one per worker); ``hostfile=`` a
    hostfile, whose counts ``max_workers`` overrides as ``-n`` does."""
    assert run_program(program(HOSTS)) == [3, True, [3, 81]]


RETIRING = """
if __name__ == "__main__":
    with scoop_core.Executor(1, max_tasks_per_child=1) as pool:
        pids = [pool.submit(pid).result(timeout=60) for _ in range(6)]
        out([len(set(pids)), list(pool.map(sq, range(5)))])
"""


def test_retired_workers_count_neither_as_restarts_nor_as_losses(program, tmp_path):
    """With max_restarts = 1, a worker that retires six times in a row is
    replaced each time: retiring is not dying."""
    prog = program(RETIRING)
    env = {**environ_without_scoop(), "SCOOP_MAX_RESTARTS": "1"}
    proc = run_command([sys.executable, prog.name], cwd=tmp_path, env=env)
    assert program_results(proc) == [[6, [0, 1, 4, 9, 16]]]
    assert "max_restarts" not in proc.stderr and "lost" not in proc.stderr, proc.stderr
    assert reap(str(prog), 10) == []


DOCS = Path(__file__).resolve().parents[2] / "docs" / "executor.md"
RUN_WITH = re.compile(r"# (\w+\.py) -- run with: python \1\n")


def doc_examples() -> list[tuple[str, str]]:
    """The ``python`` code blocks of docs/executor.md, each a whole program:
    (its file name, its text). The page hands its examples to this file."""
    found = []
    for block in re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.M | re.S):
        head = RUN_WITH.match(block)
        assert head, f"a block of docs/executor.md does not say how to run it:\n{block}"
        found.append((head[1], block))
    return found


@pytest.mark.parametrize(("name", "source"), doc_examples(), ids=lambda v: str(v)[:20])
def test_the_examples_of_the_executor_docs_run(name, source, tmp_path, redis_server_url):
    """Every example of docs/executor.md runs as its first line says (the
    Redis one over a server of the test's own) and leaves no process behind."""
    prog = tmp_path / name
    prog.write_text(source)
    env = {**environ_without_scoop(), "HOME": str(tmp_path)}
    if 'transport="redis"' in source:
        env["SCOOP_TRANSPORT_REDIS_URL"] = redis_server_url
        env["SCOOP_TRANSPORT_REDIS_PREFIX"] = f"docs-{uuid.uuid4().hex[:8]}"
    proc = run_command([sys.executable, prog.name], cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), "the example printed nothing"
    assert reap(str(prog), 10) == []


def test_ctrl_c_in_a_with_block_cancels_what_was_queued_and_exits(program, tmp_path):
    """concurrent.futures would wait for every queued future on the way out
    of the block; after Ctrl-C only those already running finish."""
    marks = tmp_path / "marks"
    marks.mkdir()
    prog = program("""
def mark(i):
    open(os.path.join(os.environ["MARKS"], str(i)), "w").close()
    time.sleep(0.5)

if __name__ == "__main__":
    with scoop_core.run(workers=2) as run:
        fs = [run.submit(mark, i) for i in range(200)]
        out("submitted")
        cf.wait(fs)
""")
    proc = subprocess.Popen(
        [sys.executable, prog.name],
        cwd=tmp_path,
        env={**environ_without_scoop(), "MARKS": str(marks)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("RESULT")
        wait_for(lambda: len(os.listdir(marks)) >= 2, "two futures running")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert len(os.listdir(marks)) < 100, "the queued futures ran after Ctrl-C"
    assert reap(str(prog), 10) == []
