"""``scoop status`` asked about real runs, on both transports, while they run.

Each run's program finishes a first map, prints READY, then maps futures
that each wait until the test creates a file: while they wait, the run has
two workers busy, futures queued and three done, and ``scoop status`` must
say so. Every run gets its own ``HOME``, so the runs it lists are the
test's alone; "another machine" is another ``HOME``, without the run's
registration or key file.

docs/status.md hands its example of a live run to this file: its program
is started as the page says, and its ``scoop status`` commands print what
the page shows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import drain, environ_without_scoop, kill_run, processes_of, wait_for, wait_gone
from test_doc_pages import blocks, console_steps, matches

PROGRAM = """
import os, sys, time
from scoop import futures


def quick(x):
    return x


def held(x):
    deadline = time.monotonic() + 90
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the test's go-ahead, with a deadline
    return x


if __name__ == "__main__":
    first = sum(futures.map(quick, range(3)))
    print("READY", flush=True)
    print("RESULT", first + sum(futures.map(held, range(6))), flush=True)
"""


def scoop_command() -> list[str]:
    """The ``scoop`` console script of this Python."""
    beside = Path(sys.executable).with_name("scoop")
    found = str(beside) if beside.exists() else shutil.which("scoop")
    assert found, "the scoop console script is not installed"
    return [found]


@dataclass
class LiveRun:
    """A run held in its second map until :meth:`finish`."""

    run_id: str
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[str]
    program: Path
    go: Path

    def status(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``scoop status ARGS`` as this run's user (or with ``env``)."""
        return subprocess.run(
            [*scoop_command(), "status", *args],
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def snapshot(self) -> dict[str, Any]:
        proc = self.status(self.run_id, "--json")
        assert proc.returncode == 0, proc.stderr
        snapshot: dict[str, Any] = json.loads(proc.stdout)
        return snapshot

    def settled(self) -> dict[str, Any]:
        """The snapshot once every worker's report of the held map has come."""
        found: dict[str, Any] = {}

        def held() -> bool:
            found.update(self.snapshot())
            return found["running"] >= 1 and found["done"] == 3 and len(found["processes"]) == 3

        wait_for(held, "futures running and three done in scoop status")
        return found

    def finish(self) -> str:
        self.go.touch()
        out, err = drain(self.proc, 90)
        assert self.proc.returncode == 0, err
        return out


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, transport: str) -> str:
    return str(request.getfixturevalue("redis_server_url")) if transport == "redis" else ""


@pytest.fixture
def live_run(tmp_path: Path, transport: str, redis_url: str) -> Iterator[LiveRun]:
    home = tmp_path / "home"
    home.mkdir()
    env = {**environ_without_scoop(), "HOME": str(home)}
    if transport == "redis":
        env.update(
            SCOOP_TRANSPORT="redis",
            SCOOP_TRANSPORT_REDIS_URL=redis_url,
            SCOOP_TRANSPORT_REDIS_PREFIX=f"test-{uuid.uuid4().hex[:8]}",
        )
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent(PROGRAM))
    go = tmp_path / "go"
    run_id = f"status-{secrets.token_hex(4)}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "2", "--run-id", run_id, str(program), str(go)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "READY\n", proc.stderr.read() if proc.stderr else ""
        yield LiveRun(run_id, home, env, proc, program, go)
    finally:
        go.touch()
        kill_run(str(program), proc)
        assert wait_gone(str(program)) == []


@pytest.mark.both_transports
def test_status_shows_the_workers_and_futures_of_a_running_run(
    live_run: LiveRun, transport: str
) -> None:
    run = live_run
    snapshot = run.settled()
    assert snapshot["run_id"] == run.run_id and snapshot["transport"] == transport
    assert snapshot["queued"] >= 1
    rows = {p["name"]: p for p in snapshot["processes"]}
    assert sorted(rows) == ["root", "worker-1", "worker-2"], "the asker never joins the run"
    pids = set(processes_of(str(run.program)))
    assert all(p["pid"] in pids for p in rows.values())
    # Which worker runs what is the run's business (one may hold the others'
    # futures); what status shows must add up.
    busy = [w for w in ("worker-1", "worker-2") if rows[w]["state"] == "busy"]
    assert busy and all(rows[w]["running"] == 1 for w in busy)
    assert snapshot["running"] == len(busy)
    assert snapshot["queued"] + snapshot["running"] + 3 == snapshot["submitted"]

    started = time.monotonic()
    proc = run.status(run.run_id)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].startswith(f"run {run.run_id} ({transport}), running for ")
    assert table[1].split() == [
        "process",
        "host",
        "pid",
        "futures",
        "run",
        "state",
        "last",
        "heard",
    ]
    for name in ("root", "worker-1", "worker-2"):
        [line] = [line.split() for line in table if line.startswith(name + " ")]
        assert line[1] == rows[name]["host"] and int(line[2]) == rows[name]["pid"]
    totals = f"futures: {snapshot['queued']} queued, {snapshot['running']} running, 3 done"
    assert totals in proc.stdout
    # A second is the goal; this machine is shared, so only a gross miss fails.
    assert took < 5, f"scoop status took {took:.2f} s"

    listing = run.status()
    assert listing.returncode == 0, listing.stderr
    [line] = [line.split() for line in listing.stdout.splitlines() if run.run_id in line]
    assert line[:4] == [run.run_id, transport, "prog.py", "2"]
    assert line[-1] == str(run.proc.pid)
    [listed] = json.loads(run.status("--json").stdout)
    assert (listed["run_id"], listed["pid"]) == (run.run_id, run.proc.pid)
    assert "key" not in listed and "settings" not in listed, "secrets stay in the file"

    assert "RESULT 18" in run.finish()
    registration = run.home / ".scoop" / "runs" / f"{run.run_id}.json"
    assert not registration.exists()
    assert run.status().stdout.strip() == "no running runs"
    gone = run.status(run.run_id)
    assert gone.returncode == 1
    assert f"run {run.run_id}" in gone.stderr and "no running runs" in gone.stderr


@pytest.mark.parametrize("transport", ["redis"])
def test_a_redis_run_answers_from_another_machine_and_a_wrong_key_harms_nothing(
    live_run: LiveRun, redis_url: str, tmp_path: Path
) -> None:
    run = live_run
    run.settled()
    key = (run.home / ".scoop" / "runs" / f"{run.run_id}.key").read_text().strip()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    prefix = run.env["SCOOP_TRANSPORT_REDIS_PREFIX"]
    # The run's key prefix is a setting of the launcher's, not a flag: given as it was.
    other = {
        **environ_without_scoop(),
        "HOME": str(elsewhere),
        "SCOOP_RUN_KEY": key,
        "SCOOP_TRANSPORT_REDIS_PREFIX": prefix,
    }
    flags = ("--transport", "redis", "--url", redis_url)

    import redis

    server = redis.Redis.from_url(redis_url)
    reports = f"{prefix}:{run.run_id}:table:reports"
    before = server.hgetall(reports)
    try:
        proc = run.status(run.run_id, *flags, env=other)
        assert proc.returncode == 0, proc.stderr
        assert "worker-1" in proc.stdout and "worker-2" in proc.stdout
        assert "running, 3 done" in proc.stdout

        wrong = {**other, "SCOOP_RUN_KEY": secrets.token_hex(32)}
        refused = run.status(run.run_id, *flags, env=wrong)
        assert refused.returncode == 1
        assert f"the key is not run {run.run_id}'s" in refused.stderr
        assert server.hgetall(reports).keys() == before.keys()

        missing = run.status("no-such-run", *flags, env=other)
        assert missing.returncode == 1
        assert "there is no run no-such-run at redis://" in missing.stderr
        assert not server.keys(f"{prefix}:no-such-run*"), "status wrote to the store"
    finally:
        server.close()
    assert "RESULT 18" in run.finish()


@pytest.mark.parametrize("transport", ["zmq"])
def test_a_zmq_run_gives_nothing_for_a_wrong_key(live_run: LiveRun, tmp_path: Path) -> None:
    run = live_run
    run.settled()
    runs = run.home / ".scoop" / "runs"
    assert stat.S_IMODE(os.stat(run.home / ".scoop").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(runs).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(runs / f"{run.run_id}.json").st_mode) == 0o600

    wrong = tmp_path / "wrong.key"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    started = time.monotonic()
    refused = run.status(run.run_id, "--key-file", str(wrong))
    assert refused.returncode == 1
    assert f"run {run.run_id}" in refused.stderr and "did not answer" in refused.stderr
    assert refused.stdout == ""
    assert time.monotonic() - started < 10

    unknown = run.status("no-such-run")
    assert unknown.returncode == 1
    assert f"your running runs: {run.run_id} (zmq)" in unknown.stderr

    # The run goes on unharmed, and still answers its key.
    assert run.snapshot()["running"] >= 1
    assert "RESULT 18" in run.finish()


@pytest.mark.parametrize("transport", ["zmq"])
def test_a_run_whose_launcher_was_killed_is_reported_gone(live_run: LiveRun) -> None:
    run = live_run
    registration = run.home / ".scoop" / "runs" / f"{run.run_id}.json"
    assert registration.exists()
    run.proc.kill()  # SIGKILL: the launcher cannot remove its registration
    run.proc.wait(10)
    gone = run.status(run.run_id)
    assert gone.returncode == 1
    assert f"run {run.run_id} is not running: its launcher (pid {run.proc.pid}) has exited" in (
        gone.stderr
    )
    assert not registration.exists()
    assert run.status().stdout.strip() == "no running runs"


PAGE = Path(__file__).resolve().parents[2] / "docs" / "status.md"


def test_the_pages_commands_show_a_running_run_as_the_page_does(tmp_path: Path) -> None:
    """docs/status.md: its program, started as the page says, then its
    ``scoop status`` commands, while both workers are busy."""
    here = [b for b in blocks(PAGE) if b.delegated_to == "tests/integration/test_status.py"]
    [program] = [b.text for b in here if b.language == "python"]
    [console] = [b.text for b in here if b.language == "console"]
    start = re.search(r"`(python -m scoop [^`]*prog\.py)`", PAGE.read_text())
    assert program.startswith("# prog.py\n") and start, "the page's program and how it starts"
    (tmp_path / "prog.py").write_text(program)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **environ_without_scoop(),
        "HOME": str(home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    launcher = subprocess.Popen(
        start.group(1).split(),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*scoop_command(), "status", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        wait_for(lambda: json.loads(status("--json").stdout or "[]"), "the run to be listed")
        [listed] = json.loads(status("--json").stdout)
        run_id = listed["run_id"]

        def both_busy() -> bool:
            snapshot = json.loads(status(run_id, "--json").stdout)
            states = [p["state"] for p in snapshot["processes"] if p["role"] == "worker"]
            return states == ["busy", "busy"]

        wait_for(both_busy, "both workers busy")
        steps = console_steps(console)
        page_id = re.fullmatch(r"scoop status (\w+)", steps[-1][0])
        assert page_id, steps[-1][0]
        for command, expected in steps:
            command = command.replace(page_id.group(1), run_id)
            expected = [line.replace(page_id.group(1), run_id) for line in expected]
            shown = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=60,
            )
            actual = shown.stdout.rstrip().splitlines()
            assert matches(expected, actual), (
                f"`{command}` printed:\n{shown.stdout}\nthe page says:\n" + "\n".join(expected)
            )
    finally:
        kill_run(str(tmp_path / "prog.py"), launcher)
        assert wait_gone(str(tmp_path / "prog.py")) == []
