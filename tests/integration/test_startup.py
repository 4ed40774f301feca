"""What a run's processes load at start-up: a ZeroMQ run on this machine
pays for neither the SSH launcher's nor the Redis transport's libraries
(``paramiko``, ``redis``, ``cryptography``), in its root or its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import environ_without_scoop, free_port, program_results, wait_for

PRELUDE = """
import json
import sys

import scoop
from scoop import futures

HEAVY = ("paramiko", "redis", "cryptography")


def loaded():
    return [scoop.worker, sorted(name for name in HEAVY if name in sys.modules)]
"""


def test_a_zeromq_run_imports_no_ssh_or_redis_library(scoop_run, program) -> None:
    prog = program(
        """
if __name__ == "__main__":
    in_worker = futures.submit(loaded).result()
    print("RESULT " + json.dumps([loaded(), in_worker]), flush=True)
"""
    )

    [[root, worker]] = program_results(scoop_run(prog, flags=("-n", "2", "--transport", "zmq")))

    assert root == ["root", []]
    assert worker[0].startswith("worker-"), worker
    assert worker[1] == []


def test_the_root_and_the_workers_are_children_of_the_launcher(scoop_run, program) -> None:
    # Forked from the fork server or not, each process of a run is the
    # launcher's child, so the launcher waits for it and it dies with it.
    prog = program(
        """
import os


def parent(_=None):
    return [scoop.worker, os.getppid()]


if __name__ == "__main__":
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        launcher = fh.read().decode().split("\\0")[1:3]
    workers = [futures.submit(parent).result(), *futures.map(parent, range(4))]
    print("RESULT " + json.dumps([launcher, os.getppid(), workers]), flush=True)
"""
    )

    [[launcher, root_parent, workers]] = program_results(scoop_run(prog))

    assert launcher == ["-m", "scoop"]
    assert all(name.startswith("worker-") for name, _ in workers), workers
    assert {parent for _, parent in workers} == {root_parent}


def _worker_without_a_broker(heartbeat: str) -> subprocess.Popen[str]:
    """A worker told to reach a broker at a TCP port nothing listens on
    (as one on another host whose firewall drops the port)."""
    env = environ_without_scoop()
    env.update(
        _SCOOP_ADDRESS=f"tcp://127.0.0.1:{free_port()}",
        _SCOOP_KEY="ab" * 32,
        _SCOOP_TRANSPORT="zmq",
        _SCOOP_NAME="worker-1",
        _SCOOP_HEARTBEAT=heartbeat,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "scoop_core.bootstrap", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_that_cannot_reach_the_broker_says_so_in_one_line() -> None:
    worker = _worker_without_a_broker("0.2,1")
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 1
    assert stderr.splitlines() == [
        "scoop: error: worker-1: no answer from the broker within 1 s; "
        "is it running, and is this the right address?"
    ]


def test_a_worker_still_waiting_for_the_broker_stops_on_sigterm() -> None:
    worker = _worker_without_a_broker("5,600")
    try:
        # Its ZeroMQ context's threads exist once it has said hello and waits.
        wait_for(lambda: len(os.listdir(f"/proc/{worker.pid}/task")) > 1, "the worker's hello")
        worker.terminate()
        assert worker.wait(10) == -signal.SIGTERM
    finally:
        worker.kill()
        worker.communicate()
