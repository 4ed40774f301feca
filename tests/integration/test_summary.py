"""``-v`` ends with a table of what each process did, and the run's totals."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import program_results

PRELUDE = """
import json
import os
import time

from scoop import futures


def out(value):
    print("RESULT " + json.dumps(value), flush=True)


def where(x):
    time.sleep(0.01)
    return os.getpid()


def fails(x):
    raise ValueError(x)
"""


def summary_rows(stderr: str) -> dict[str, list[str]]:
    """The summary's rows by process name (its last lines)."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("process "))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("futures: "):
            break
        name = "all workers" if line.startswith("all workers") else line.split()[0]
        rows[name] = line.removeprefix("all workers").split()
    return rows


@pytest.mark.both_transports
def test_verbose_ends_with_what_each_worker_did(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    pids = list(futures.map(where, range(40)))
    failed = futures.submit(fails, 1)
    futures.wait([failed])
    out([pids.count(p) for p in sorted(set(pids))])
""")
    proc = scoop_run(prog, flags=("-n", "2", "-v"), env={"SCOOP_ROOT_RUNS_FUTURES": "false"})
    [counts] = program_results(proc)
    rows = summary_rows(proc.stderr)
    assert set(rows) == {"root", "worker-1", "worker-2", "all workers"}
    ran = {name: int(cells[-5].replace(",", "")) for name, cells in rows.items()}
    # Each map item counts as one future; the one that raised ran too.
    assert ran["worker-1"] + ran["worker-2"] == ran["all workers"] == 41
    assert sum(counts) == 40 and len(counts) <= 2
    for name in ("worker-1", "worker-2"):
        busy, share = rows[name][-4], rows[name][-3]
        assert re.fullmatch(r"\d+\.\d+s", busy) and float(busy[:-1]) > 0
        assert re.fullmatch(r"\d+%", share) and int(share[:-1]) > 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "futures: 41 submitted, 40 done, 1 failed"


def test_without_verbose_there_is_no_summary(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    out(len(list(futures.map(where, range(4)))))
""")
    proc = scoop_run(prog)
    assert program_results(proc) == [4]
    assert "futures run" not in proc.stderr and "submitted" not in proc.stderr
