"""Redis as the broker: what a run over Redis can do that a run over ZeroMQ cannot.

Every test starts its own redis-server on a free loopback port (never the one
on 6379) and gives each run a key prefix of its own. Runs are real: the
launcher, the root and the workers are processes, and so are the workers that
join with ``scoop worker``.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from conftest import (
    environ_without_scoop,
    free_port,
    kill_run,
    processes_of,
    redis_run_env,
    run_command,
    wait_for,
    wait_gone,
)

from scoop_core import messages as m

PRELUDE = """
import json, os, sys, time
from pathlib import Path
from scoop import futures
import scoop

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def nap(i, seconds):
    time.sleep(seconds)
    return i
"""


class Server:
    """A redis-server of our own: port, working directory, extra arguments."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="scoop-redis-")
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", self.dir, "--loglevel", "warning", *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, f"redis-server on port {self.port}", 10)

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@contextmanager
def server(*extra: str) -> Iterator[Server]:
    srv = Server(*extra)
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()
        shutil.rmtree(srv.dir, ignore_errors=True)


@pytest.fixture
def srv() -> Iterator[Server]:
    with server() as s:
        yield s


@pytest.fixture
def env(srv: Server, tmp_path: Path) -> dict[str, str]:
    """A run over ``srv``, with a prefix of its own and a key shared with joiners."""
    # Key files of the run stay in the test's directory.
    return redis_run_env(srv.url, tmp_path, f"t{uuid.uuid4().hex[:8]}")


def _keys(srv: Server, prefix: str) -> list[bytes]:
    client = srv.client()
    try:
        return list(client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


def _launch(
    prog: Path, env: dict[str, str], *flags: str, args: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scoop", *flags, str(prog), *args],
        cwd=prog.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _join(run_id: str, env: dict[str, str], count: int = 1) -> subprocess.Popen[str]:
    """``scoop worker`` in a session of its own, so a Ctrl-C can be sent to it alone."""
    return subprocess.Popen(
        ["scoop", "--transport", "redis", "worker", "--url", env["SCOOP_TRANSPORT_REDIS_URL"]]
        + ["--run", run_id, "-n", str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _results(out: str) -> list[str]:
    return [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]


def _info_exists(srv: Server, prefix: str, run_id: str) -> Callable[[], bool]:
    def check() -> bool:
        client = srv.client()
        try:
            return bool(client.exists(f"{prefix}:{run_id}:table:run"))
        finally:
            client.close()

    return check


def test_the_run_id_is_shown_at_v_and_can_be_chosen(program, env, srv):
    prog = program("\nif __name__ == '__main__':\n    out(sum(futures.map(abs, [-1, -2])))\n")
    proc = run_command(
        ["scoop", "-v", "run", "-n", "1", "--run-id", "nightly-7", str(prog)],
        cwd=prog.parent,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert _results(proc.stdout) == ["3"]
    assert "run nightly-7" in proc.stderr
    assert "scoop worker --transport redis --run nightly-7" in proc.stderr
    assert _keys(srv, env["SCOOP_TRANSPORT_REDIS_PREFIX"]) == []


def test_a_run_id_in_use_is_refused_and_the_other_run_is_left_alone(program, env, srv):
    prefix = env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    client = srv.client()
    client.hset(f"{prefix}:busy:table:run", "info", b"another run")
    client.close()
    prog = program("\nif __name__ == '__main__':\n    out(1)\n")
    proc = run_command(
        [sys.executable, "-m", "scoop", "-n", "1", "--run-id", "busy", str(prog)],
        cwd=prog.parent,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "run id busy is already in use" in proc.stderr
    assert _keys(srv, prefix) == [f"{prefix}:busy:table:run".encode()]


@contextmanager
def joined_run(
    prog: Path, env: dict[str, str], srv: Server, run_id: str, args: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    """``python -m scoop -n 1 --run-id RUN_ID PROG ARGS`` over ``srv`` and,
    once the run is on the server, a ``scoop worker`` that joins it. Both
    are killed if they still run at the end; then no process of the run and
    no key of it may be left."""
    prefix = env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    run = _launch(prog, env, "-n", "1", "--run-id", run_id, args=args)
    joiner = None
    try:
        wait_for(_info_exists(srv, prefix, run_id), "the run to start")
        joiner = _join(run_id, env)
        yield run, joiner
    finally:
        for proc in (run, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert wait_gone(str(prog)) == []
    assert _keys(srv, prefix) == []


JOINABLE = """
from scoop import shared

def where(i):
    time.sleep(0.02)
    # A constant defined before this worker joined reaches it too.
    return scoop.worker + "=" + shared.getConst("tag", timeout=10)

if __name__ == "__main__":
    shared.setConst(tag="blue")
    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.update(futures.map(where, range(20)))
        if any(not name.startswith("worker-") for name in seen):
            break
    out(sorted(seen))
"""


def test_a_worker_started_elsewhere_joins_a_running_run(program, env, srv):
    with joined_run(program(JOINABLE), env, srv, "elastic") as (run, joiner):
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        names = json.loads(_results(out)[0])
        joined = [n for n in names if not n.startswith("worker-")]
        assert joined and joined[0].startswith(socket.gethostname()), names
        assert all(n.endswith("=blue") for n in names), names
        # The run is over: the joined worker exits, and so does scoop worker.
        assert joiner.wait(30) == 0, joiner.stderr.read() if joiner.stderr else ""


HAND_BACK = """
def slow(i):
    (Path(sys.argv[1]) / f"started-{i}-{scoop.worker}").touch()
    time.sleep(0.4)
    return i * 10, scoop.worker

if __name__ == "__main__":
    out(list(futures.map(slow, range(40))))
"""


def test_ctrl_c_on_a_joined_worker_hands_its_futures_back(program, env, srv, tmp_path):
    prog = program(HAND_BACK)
    with joined_run(prog, env, srv, "leaving", args=(str(tmp_path),)) as (run, joiner):
        host = socket.gethostname()

        def running_on_joiner() -> list[Path]:
            return [p for p in tmp_path.glob("started-*") if f"-{host}-" in p.name]

        wait_for(running_on_joiner, "the joined worker to start a future", 60)
        os.killpg(joiner.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert joiner.wait(20) == 128 + signal.SIGINT
        _, joiner_err = joiner.communicate()
        assert "hand back" in joiner_err
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        values = [value for value, _ in json.loads(_results(out)[0])]
        assert values == [i * 10 for i in range(40)]
        # What the joined worker had started ran again, on worker-1.
        for path in running_on_joiner():
            i = path.name.split("-")[1]
            assert (tmp_path / f"started-{i}-worker-1").exists(), path.name


class Evil:
    """Unpickling this would create a file: the proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_a_future_written_into_the_queue_without_the_key_is_dropped_unread(
    program, env, srv, tmp_path
):
    prefix = env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    prog = program("""
if __name__ == "__main__":
    go = Path(sys.argv[1]) / "go"
    while not go.exists():
        time.sleep(0.02)
    out(sorted(futures.map(abs, range(-50, 0))))
""")
    proof = tmp_path / "unpickled"
    run = _launch(prog, env, "-n", "2", "--run-id", "attacked", args=(str(tmp_path),))
    try:
        wait_for(_info_exists(srv, prefix, "attacked"), "the run to start")
        # Well-formed, but signed with another key: what someone who can
        # write to Redis but does not have the run's key could do.
        task = m.Task((1 << 32) | 99, 0, 1, (pickle.dumps(Evil(str(proof))),))
        frames = m.encode(m.Tasks((task,)), secrets.token_bytes(32))
        fields = {f"f{i}": bytes(f) for i, f in enumerate(frames)}
        client = srv.client()
        client.xadd(f"{prefix}:attacked:queue", fields)
        client.close()
        (tmp_path / "go").touch()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert _results(out) == [str(list(range(1, 51)))]
    assert not proof.exists(), "an entry without the run's key was unpickled"
    assert "deleted a queue entry" in err and "HMAC" in err
    assert _keys(srv, prefix) == []


def test_a_redis_restart_mid_run_ends_the_run_with_a_clear_error(program, tmp_path):
    prog = program("""
def marked_nap(i):
    (Path(sys.argv[1]) / f"nap-{i}").touch()
    return nap(i, 0.5)

if __name__ == "__main__":
    out(sum(futures.map(marked_nap, range(40))))
""")
    with server("--appendonly", "yes", "--appendfsync", "always") as srv:
        env = environ_without_scoop()
        env.update(
            HOME=str(tmp_path),
            SCOOP_TRANSPORT="redis",
            SCOOP_TRANSPORT_REDIS_URL=srv.url,
            SCOOP_HEARTBEAT_INTERVAL="0.5",
            SCOOP_HEARTBEAT_TIMEOUT="3",
        )
        run = _launch(prog, env, "-n", "2", args=(str(tmp_path),))
        try:
            wait_for(lambda: list(tmp_path.glob("nap-*")), "the first future", 60)
            srv.kill()  # as a crash would
            srv.start()  # same port, same AOF file
            start = time.monotonic()
            out, err = run.communicate(timeout=120)
            took = time.monotonic() - start
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode != 0
        assert _results(out) == [], "a result was printed after Redis lost the run's state"
        assert f"Redis at redis://127.0.0.1:{srv.port}" in err
        print(f"the run ended {took:.1f} s after the restart, status {run.returncode}")
    assert wait_gone(str(prog)) == []


def test_a_run_outlives_its_launcher(program, env, srv, tmp_path):
    prefix = env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    prog = program("""
if __name__ == "__main__":
    first = futures.submit(nap, 0, 0.2).result()
    print("READY", flush=True)
    total = sum(futures.map(nap, range(20), [0.2] * 20))
    (Path(sys.argv[1]) / "total").write_text(str(total))
""")
    env = {k: v for k, v in env.items() if k != "SCOOP_RUN_KEY"}  # so a key file is written
    run = _launch(prog, env, "-n", "2", args=(str(tmp_path),))
    try:
        assert run.stdout is not None
        assert run.stdout.readline().strip() == "READY"
        assert len(list((tmp_path / ".scoop" / "runs").glob("*.key"))) == 1
        run.kill()  # SIGKILL: the launcher's clean-up never runs
        run.wait(10)
        wait_for((tmp_path / "total").exists, "the program to finish without its launcher", 60)
        assert (tmp_path / "total").read_text() == str(sum(range(20)))
        assert wait_gone(str(prog), 30) == []
        wait_for(lambda: _keys(srv, prefix) == [], "the run's keys to be deleted", 10)
        assert list((tmp_path / ".scoop" / "runs").glob("*.key")) == []
    finally:
        kill_run(str(prog))


def test_unix_socket_and_acl_user(program, tmp_path):
    sock = tempfile.mktemp(prefix="scoop-", suffix=".sock", dir="/tmp")
    password = "s3cret-" + secrets.token_hex(4)
    with server("--unixsocket", sock, "--unixsocketperm", "700") as srv:
        client = srv.client()
        client.execute_command(
            "ACL", "SETUSER", "scoopy", "on", f">{password}", "~*", "&*", "+@all"
        )
        client.close()
        env = environ_without_scoop()
        env.update(
            HOME=str(tmp_path),
            SCOOP_TRANSPORT="redis",
            SCOOP_TRANSPORT_REDIS_URL=f"unix://{sock}",
            SCOOP_TRANSPORT_REDIS_USERNAME="scoopy",
            SCOOP_TRANSPORT_REDIS_PASSWORD=password,
        )
        prog = program(
            "\nif __name__ == '__main__':\n    out(sum(futures.map(abs, range(-9, 0))))\n"
        )
        proc = run_command(["scoop", "-vv", "run", "-n", "2", str(prog)], cwd=prog.parent, env=env)
        assert proc.returncode == 0, proc.stderr
        assert _results(proc.stdout) == ["45"]
        assert password not in proc.stderr and password not in proc.stdout
        client = srv.client()
        assert list(client.scan_iter(match="scoop:*")) == []
        client.close()
        # A wrong password: one line naming the server, and no password.
        env["SCOOP_TRANSPORT_REDIS_PASSWORD"] = "wrong-" + password
        bad = run_command(
            [sys.executable, "-m", "scoop", "-n", "1", str(prog)],
            cwd=prog.parent,
            env=env,
            timeout=60,
        )
        assert bad.returncode == 1
        assert f"unix://{sock}" in bad.stderr and password not in bad.stderr
    assert wait_gone(str(prog)) == []


def test_an_acl_user_kept_from_the_runs_keys_gets_one_line_naming_the_rule(program, tmp_path):
    password = "s3cret-" + secrets.token_hex(4)
    with server() as srv:
        client = srv.client()
        client.execute_command(
            "ACL", "SETUSER", "narrow", "on", f">{password}", "~other:*", "&*", "+@all"
        )
        client.close()
        env = environ_without_scoop()
        env.update(
            HOME=str(tmp_path),
            SCOOP_TRANSPORT="redis",
            SCOOP_TRANSPORT_REDIS_URL=srv.url,
            SCOOP_TRANSPORT_REDIS_USERNAME="narrow",
            SCOOP_TRANSPORT_REDIS_PASSWORD=password,
        )
        prog = program("\nif __name__ == '__main__':\n    out(sum(futures.map(abs, [-1])))\n")
        proc = run_command(
            [sys.executable, "-m", "scoop", "-n", "1", str(prog)], cwd=prog.parent, env=env
        )
        assert proc.returncode == 1
        assert proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert line.startswith("python -m scoop: error: Redis at ") and "refused the run" in line
        assert "ACL rule: ~scoop:* +@all" in line and password not in line
    assert wait_gone(str(prog)) == []


def test_maxlen_bounds_the_queue_and_loses_nothing(program, env, srv):
    prefix = env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    prog = program("""
if __name__ == "__main__":
    fs = [futures.submit(nap, i, 0.002) for i in range(400)]
    out(sum(f.result() for f in fs))
""")
    longest = [0]
    stop = threading.Event()

    def watch() -> None:
        # Measures the queue's length while the run goes; synchronises nothing.
        client = srv.client()
        while not stop.is_set():
            for key in client.scan_iter(match=f"{prefix}:*:queue"):
                longest[0] = max(longest[0], int(client.xlen(key)))
        client.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = run_command(
            [sys.executable, "-m", "scoop", "-n", "2", str(prog)],
            cwd=prog.parent,
            env={**env, "SCOOP_TRANSPORT_REDIS_MAXLEN": "20"},
        )
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    assert _results(proc.stdout) == [str(sum(range(400)))]
    assert 0 < longest[0] <= 20, f"the queue held {longest[0]} entries"
    assert _keys(srv, prefix) == []


def test_processes_that_outlived_their_launcher_exit_once_their_run_is_over(program, tmp_path):
    # A program that never ends on its own: only the end of its run can stop it.
    prog = program("""
if __name__ == "__main__":
    futures.submit(nap, 0, 0.1).result()
    print("READY", flush=True)
    while True:
        try:
            futures.submit(nap, 0, 0.1).result()
        except Exception:
            time.sleep(0.05)
""")
    with server() as srv:
        env = environ_without_scoop()
        env.update(HOME=str(tmp_path), SCOOP_TRANSPORT="redis", SCOOP_TRANSPORT_REDIS_URL=srv.url)
        run = _launch(prog, env, "-n", "2")
        try:
            assert run.stdout is not None
            assert run.stdout.readline().strip() == "READY"
            run.kill()  # the launcher goes: the run goes on...
            run.wait(10)
            assert len(processes_of(str(prog))) == 3  # root and two workers
            srv.kill()  # ...until Redis, and so the run, is gone
            assert wait_gone(str(prog), 30) == []
        finally:
            kill_run(str(prog))
