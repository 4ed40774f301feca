"""What a run's processes load at start-up: a ZeroMQ run on this machine
pays for neither the SSH launcher's nor the Redis transport's libraries
(``paramiko``, ``redis``, ``cryptography``), in its root or its workers."""

from __future__ import annotations

from conftest import program_results

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
