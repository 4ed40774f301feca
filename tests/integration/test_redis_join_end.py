"""``scoop worker`` joining a Redis run as it ends: every process stops, no key stays.

A worker that joins finds the run's description in Redis, then starts its
worker processes, which register in the run a moment later; the run may
end in between. Here the run's launcher side is this test (a store
backend over a redis-server of the test's own), and the workers of
``scoop worker`` run through a Python that waits for the test's
go-ahead before it starts them, so each window is entered on purpose:
the run ended and its keys deleted, the run ending (its peers told, its
keys not yet deleted), the keys deleted under a worker that had
registered, and a run id whose keys were left by a run with another key.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import (
    drain,
    go_ahead_program,
    kill_run,
    redis_run_env,
    start_go_ahead_run,
    wait_for,
    wait_gone,
)

from scoop_core import run_keys
from scoop_core import store_records as records
from scoop_core.plugins.manager import get_plugin_manager
from scoop_core.run_backend import INFO, RunSettings, StoreBackend, backend_for

DESCRIPTION = {
    "program": "",
    "argv": [],
    "root": "root",
    "workers": 1,
    "serializer": "cloudpickle",
    "prefetch": 1,
    "max_losses": 3,
    "heartbeat": [0.2, 5.0],
    "max_message_size": 1 << 26,
}
"""The run's description, as ``scoop run`` writes it, with quick heartbeats for its workers."""

EXIT_WITHIN = 30.0
"""Seconds a ``scoop worker`` of an ended run may take at the most (it takes about one)."""


@dataclass
class Joining:
    """A run of the test's own on the test's redis-server, and what joins it."""

    url: str
    prefix: str
    run_id: str
    env: dict[str, str]
    tmp: Path

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.env["SCOOP_RUN_KEY"])

    def keys(self) -> list[bytes]:
        client = redis.Redis.from_url(self.url)
        try:
            return sorted(client.scan_iter(match=f"{self.prefix}:{self.run_id}:*"))
        finally:
            client.close()

    def start_run(self) -> StoreBackend:
        """The run, as ``scoop run`` starts it."""
        plugins = get_plugin_manager([])
        settings = {"url": self.url, "prefix": self.prefix}
        transport = plugins.transport("redis").factory(settings)
        run = RunSettings(run_id=self.run_id, key=self.key, transport="redis")
        backend = backend_for(transport, run)
        assert isinstance(backend, StoreBackend)
        backend.start(DESCRIPTION)
        return backend

    def leave_keys(self, key: bytes) -> bytes:
        """The run's description signed with ``key``, as a run killed left it: its key."""
        client = redis.Redis.from_url(self.url)
        leftover = f"{self.prefix}:{self.run_id}:table:{records.RUN}"
        client.hset(leftover, INFO, records.sign_info(DESCRIPTION, key))
        client.close()
        return leftover.encode()

    def held_python(self) -> tuple[Path, Path]:
        """A Python for the workers that waits for the go-ahead file: its path and the file's.
        The file ``started`` appears once ``scoop worker`` has started a worker."""
        go = self.tmp / "go-workers"
        script = self.tmp / "held-python"
        script.write_text(
            "#!/bin/sh\n"
            f"touch {self.tmp / 'started'}\n"
            f"while [ ! -e {go} ]; do sleep 0.01; done\n"  # the test's go-ahead
            f'exec {sys.executable} "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return script, go

    def join(self, *flags: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["scoop", "--transport", "redis", "worker", "--run", self.run_id, "-n", "1", *flags],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def peer_registered(self) -> bool:
        client = redis.Redis.from_url(self.url)
        try:
            return bool(client.hlen(f"{self.prefix}:{self.run_id}:table:{records.PEERS}"))
        finally:
            client.close()


@pytest.fixture
def joining(
    redis_server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Joining]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = redis_run_env(redis_server_url, tmp_path, prefix)
    # This process is the run's launcher: its key comes from the environment, as the joiners'.
    monkeypatch.setenv(run_keys.KEY_ENV, env["SCOOP_RUN_KEY"])
    run_id = f"late-{uuid.uuid4().hex[:6]}"
    yield Joining(redis_server_url, prefix, run_id, env, tmp_path)
    kill_run(run_id)


def _ended_quietly(joiner: subprocess.Popen[str], run_id: str) -> str:
    """``scoop worker`` ended on its own with status 0, leaving no process; its stderr."""
    _, err = drain(joiner, EXIT_WITHIN)
    assert joiner.returncode == 0, err
    assert wait_gone(run_id) == []
    return err


def test_a_worker_that_joins_as_the_program_ends_exits_and_leaves_no_key(joining):
    # What was seen: scoop worker started a moment before the run ended never exited.
    flags = ["-n", "1", "--run-id", joining.run_id]
    run, _, go_run = start_go_ahead_run(joining.tmp, go_ahead_program(4, 4), flags, joining.env)
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == "READY\n"
        python, go = joining.held_python()
        joiner = joining.join("--python-interpreter", str(python))
        wait_for((joining.tmp / "started").exists, "scoop worker to start its worker")
        go_run.touch()
        out, err = drain(run, EXIT_WITHIN)
        assert run.returncode == 0, err
        assert out.split() == ["RESULT", "14", "14"]
        go.touch()
        err = _ended_quietly(joiner, joining.run_id)
        assert f"the run {joining.run_id} has ended" in err
        assert joining.keys() == []
    finally:
        kill_run(joining.run_id, run)


def test_a_worker_that_starts_after_the_run_ended_exits_and_writes_nothing(joining):
    backend = joining.start_run()
    python, go = joining.held_python()
    joiner = joining.join("--python-interpreter", str(python))
    wait_for((joining.tmp / "started").exists, "scoop worker to start its worker")
    backend.end("the run is over")
    backend.close()
    assert joining.keys() == []
    go.touch()
    err = _ended_quietly(joiner, joining.run_id)
    assert f"the run {joining.run_id} has ended" in err
    assert joining.keys() == []


def test_a_worker_that_starts_while_the_run_ends_exits_and_writes_nothing(joining):
    backend = joining.start_run()
    python, go = joining.held_python()
    joiner = joining.join("--python-interpreter", str(python))
    wait_for((joining.tmp / "started").exists, "scoop worker to start its worker")
    # Its peers are told; its keys are still there, and stay until the worker has gone.
    backend.end("the run is over")
    go.touch()
    err = _ended_quietly(joiner, joining.run_id)
    assert f"the run {joining.run_id} has ended" in err
    backend.close()
    assert joining.keys() == []


def test_a_worker_whose_run_is_deleted_under_it_exits_and_leaves_no_key(joining):
    # As for a worker that registered after the launcher told the run's
    # peers it is over: nobody tells it, and the keys go.
    backend = joining.start_run()
    joiner = joining.join()
    wait_for(joining.peer_registered, "the joined worker to register")
    backend.close()
    err = _ended_quietly(joiner, joining.run_id)
    assert f"the run {joining.run_id} has ended" in err
    assert joining.keys() == []


def test_a_worker_that_joins_a_killed_run_exits_and_writes_nothing(joining):
    leftover = joining.leave_keys(joining.key)  # no launcher, no program: nobody ends it
    err = _ended_quietly(joining.join(), joining.run_id)
    assert (
        f"the run {joining.run_id} has ended: neither its launcher nor its program (root) "
        "is alive" in err
    )
    assert joining.keys() == [leftover]


def test_a_run_id_left_by_a_run_with_another_key_is_refused_in_one_line(joining):
    leftover = joining.leave_keys(os.urandom(32))
    joiner = joining.join()
    _, err = drain(joiner, EXIT_WITHIN)
    assert joiner.returncode == 1
    [line] = err.splitlines()
    assert line.startswith(f"scoop: error: cannot join run {joining.run_id}: "), err
    assert "not signed with this key" in line
    assert "give the run's key (SCOOP_RUN_KEY or --key-file)" in line
    assert wait_gone(joining.run_id) == []
    assert joining.keys() == [leftover]
