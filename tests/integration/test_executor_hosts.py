"""``scoop_core.Executor(hosts=[...])`` on the ssh test hosts: the workers
go where the launcher would put them (scoop_core.placement), remote hosts
through the ssh launcher.

The hosts are those of the ``--hosts`` runs (``test_ssh_runs.machines``):
sshd servers that the cluster suite starts (``python -m pytest --cluster``).
The program runs in this machine's namespace with plain ``python prog.py``;
its workers log in to h1 and h2 and dial its broker back.
"""

from __future__ import annotations

import sys

import pytest
from conftest import program_results, run_command
from test_ssh_runs import Machines, machines  # noqa: F401 (a fixture)

PROGRAM = """
import json, os
import scoop_core

def where(i):
    return [i * i, os.environ.get("SCOOP_TEST_HOST", "here"), os.getpid()]

def tag(value):
    os.environ["EXECUTOR_TAG"] = value

def tagged(_):
    return os.environ.get("EXECUTOR_TAG")

if __name__ == "__main__":
    with scoop_core.Executor(
        hosts=["h1", "h1", "h2"], initializer=tag, initargs=("init",), max_tasks_per_child=5
    ) as pool:
        got = list(pool.map(where, range(40), chunksize=1))
        print("RESULT " + json.dumps({
            "workers": pool.workers,
            "squares": [g[0] for g in got],
            "hosts": sorted({g[1] for g in got}),
            "tags": sorted(set(pool.map(tagged, range(20)))),
        }), flush=True)
"""


@pytest.mark.cluster
def test_an_executor_runs_its_workers_on_the_hosts_given(machines: Machines, write_program):  # noqa: F811
    prog = write_program(PROGRAM)
    proc = run_command(
        [sys.executable, str(prog)],
        cwd=prog.parent,
        env={**machines.env, "SCOOP_TRANSPORT_ZMQ_BROKER_HOSTNAME": machines.here},
        timeout=180,
    )
    [got] = program_results(proc)
    assert got["workers"] == 3
    assert got["squares"] == [i * i for i in range(40)]
    assert got["hosts"] == sorted(machines.marker(a) for a in ("h1", "h2"))
    assert got["tags"] == ["init"]
    assert machines.leftovers() == {}
