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
