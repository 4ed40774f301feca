"""The per-host supervisor (``python -m scoop_core.host_supervisor``) and its handle.

Each test runs a real supervisor as a subprocess whose pipes stand for the
channel a launcher has to a host (what ssh, srun or qrsh give): the plan
goes in on stdin, output and exit reports come back on stdout and stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import processes_of, wait_gone

from scoop_core.errors import LaunchError
from scoop_core.host_supervisor import HostGroup, RemoteHost, command, plan
from scoop_core.interfaces import WorkerSpec

# Each line in one write: two workers share the supervisor's stdout, and a
# line written in pieces (print's arguments, unbuffered) would interleave.
SLEEPER = """
import os, sys, time
name, env = sys.argv[1], os.environ
sys.stdout.write(f"{name} has {env['SECRET']} parent {env['_SCOOP_PARENT_PID']}\\n")
sys.stdout.flush()
sys.stderr.write(f"{name} on stderr\\n")
sys.stderr.flush()
time.sleep(120)
"""


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """A string on every command line of the test's processes, to find them."""
    mark = f"scoop-remote-test-{uuid.uuid4().hex[:8]}"
    yield mark
    for pid in processes_of(mark):
        os.kill(pid, signal.SIGKILL)


def _host(specs: list[WorkerSpec]) -> tuple[RemoteHost, subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        command(sys.executable),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    return RemoteHost("nodeA", specs, proc.stdin, proc.stdout, proc.stderr, proc.kill), proc


def _sleepers(tmp_path: Path, marker: str, names: list[str]) -> list[WorkerSpec]:
    script = tmp_path / f"{marker}.py"
    script.write_text(SLEEPER)
    return [
        WorkerSpec(n, "nodeA", (sys.executable, str(script), n), {"SECRET": "s3cr3t-" + n})
        for n in names
    ]


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().decode().split("\0")[:-1]


def _wait(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_workers_start_report_output_and_exits_and_stop_leaves_nothing(tmp_path, marker, capfd):
    specs = _sleepers(tmp_path, marker, ["w1", "w2"])
    host, proc = _host(specs)
    try:
        _wait(lambda: len(processes_of(marker)) == 2, "both workers")
        out_seen: list[str] = []

        def said() -> bool:
            out, err = capfd.readouterr()
            out_seen.append(out + err)
            text = "".join(out_seen)
            return "[nodeA] w1 has s3cr3t-w1" in text and "[nodeA] w2 on stderr" in text

        _wait(said, "the workers' output, prefixed with the host")
        text = "".join(out_seen)
        # Workers belong to the supervisor, whose death they watch.
        assert f"parent {proc.pid}" in text
        # The secret came through the pipe, never a command line.
        for pid in processes_of(marker):
            assert b"s3cr3t" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        w1 = next(
            p for p in processes_of(marker) if b"w1" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        os.kill(w1, signal.SIGKILL)
        _wait(lambda: host.poll()["w1"] == -signal.SIGKILL, "the report of w1's death")
        assert host.poll()["w2"] is None
        HostGroup([host]).stop(2.0)
        assert host.poll()["w2"] == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(marker) == []


def test_a_lost_connection_kills_the_hosts_workers(tmp_path, marker):
    specs = _sleepers(tmp_path, marker, ["w1", "w2", "w3"])
    host, proc = _host(specs)
    try:
        _wait(lambda: len(processes_of(marker)) == 3, "three workers")
        assert proc.stdin is not None
        proc.stdin.close()  # the launcher, or its connection, is gone
        assert wait_gone(marker) == []
        _wait(lambda: all(s is not None for s in host.poll().values()), "every exit reported")
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_launcher_that_stopped_reading_is_gone_for_the_supervisor(tmp_path, marker):
    """The launcher's end of stdout is gone before its end of stdin is read
    (both go when it dies, in either order): the next exit report cannot be
    written, and the supervisor kills the other workers then and exits,
    without waiting for stdin."""
    specs = _sleepers(tmp_path, marker, ["w1", "w2", "w3"])
    proc = subprocess.Popen(
        command(sys.executable),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(plan(specs))
        proc.stdin.flush()
        # Each worker's one line: none of them writes to the broken pipe later.
        lines = [proc.stdout.readline() for _ in specs]
        assert all(line.endswith(f"parent {proc.pid}\n".encode()) for line in lines), lines
        proc.stdout.close()
        os.kill(processes_of(marker)[0], signal.SIGKILL)
        assert wait_gone(marker) == []
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_supervisor_takes_its_workers_along(tmp_path, marker):
    """A supervisor killed outright (SIGKILL: no clean-up of its own) leaves no
    worker behind, neither one of its plan nor one started later in a dead
    one's place: the kernel kills them (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("workers die with their supervisor through Linux's PR_SET_PDEATHSIG")
    specs = _sleepers(tmp_path, marker, ["w1", "w2"])
    host, proc = _host(specs)
    try:
        _wait(lambda: len(processes_of(marker)) == 2, "both workers")
        [w1] = [pid for pid in processes_of(marker) if _argv(pid)[-1] == "w1"]
        os.kill(w1, signal.SIGKILL)
        _wait(lambda: host.poll()["w1"] == -signal.SIGKILL, "the report of w1's death")
        [w3] = _sleepers(tmp_path, marker, ["w3"])
        host.replace("w1", w3)
        _wait(lambda: len(processes_of(marker)) == 2, "w3, started in a dead worker's place")
        proc.kill()
        assert wait_gone(marker) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_worker_that_cannot_start_is_reported_and_the_others_run(tmp_path, marker):
    specs = _sleepers(tmp_path, marker, ["w1"])
    specs.append(WorkerSpec("w2", "nodeA", ("/nonexistent/python",), {}))
    host, proc = _host(specs)
    try:
        _wait(lambda: host.poll()["w2"] == 127, "the failed start's report")
        _wait(lambda: len(processes_of(marker)) == 1, "w1")
        HostGroup([host]).stop(1.0)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(marker) == []


def test_the_launcher_replaces_dead_workers_through_the_supervisor(tmp_path, marker, capfd):
    specs = _sleepers(tmp_path, marker, ["w1"])
    host, proc = _host(specs)
    try:
        _wait(lambda: len(processes_of(marker)) == 1, "w1")
        [w1] = processes_of(marker)
        os.kill(w1, signal.SIGKILL)
        _wait(lambda: host.poll()["w1"] == -signal.SIGKILL, "the report of w1's death")
        # No worker is left on the host; the supervisor stays for a replacement.
        [w2] = _sleepers(tmp_path, marker, ["w2"])
        host.replace("w1", w2)
        assert host.poll()["w2"] is None
        _wait(lambda: len(processes_of(marker)) == 1, "w2, started in w1's place")
        seen: list[str] = []

        def said() -> bool:
            out, err = capfd.readouterr()
            seen.append(out + err)
            return "[nodeA] w2 has s3cr3t-w2" in "".join(seen)

        _wait(said, "w2's output, with its own environment")
        assert f"parent {proc.pid}" in "".join(seen)
        # A worker the supervisor cannot start is reported like any exit.
        host.replace("w1", WorkerSpec("w3", "nodeA", ("/nonexistent/python",), {}))
        _wait(lambda: host.poll()["w3"] == 127, "the failed replacement's report")
        HostGroup([host]).stop(2.0)
        assert host.poll()["w2"] == -signal.SIGTERM
        assert proc.wait(10) == 0
        # Once stopped, the supervisor and its connection are gone: nothing starts.
        [w4] = _sleepers(tmp_path, marker, ["w4"])
        with pytest.raises(LaunchError, match="nodeA: cannot start w4"):
            host.replace("w2", w4)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(marker) == []


def test_a_supervisor_started_by_hand_explains_itself():
    proc = subprocess.run(
        command(sys.executable), input=b"hello\n", capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    assert b"run by scoop launchers, not by hand" in proc.stderr
