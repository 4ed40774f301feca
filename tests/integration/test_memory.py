"""Memory stays flat (issue 3, item 4): finished futures leave no bookkeeping
behind, in the broker (a thread of the launcher) or in the root.

A scaled-down ``bench/memory.py``: the root runs rounds of small futures
(``submit`` collected with ``result()``, then a ``map``) and reads the
resident set size of itself and of the launcher (its parent) after a
warm-up and at the end. Keeping a record of each finished future (a few
hundred bytes at least) would grow by tens of MiB over these 200,000
calls; allocator noise stays within a few MiB.
"""

from __future__ import annotations

import json

import pytest

PROGRAM = """
import gc, json, os, sys
from scoop import futures

def inc(x):
    return x + 1

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def one_round(batch, base):
    fs = [futures.submit(inc, base + i) for i in range(batch)]
    assert sum(f.result() for f in fs) == sum(range(base + 1, base + batch + 1))
    assert sum(futures.map(inc, range(batch))) == batch * (batch + 1) // 2

def sample():
    gc.collect()
    return {"launcher": rss_kib(os.getppid()), "root": rss_kib(os.getpid())}

if __name__ == "__main__":
    rounds, batch, warmup = (int(a) for a in sys.argv[1:4])
    for r in range(warmup):
        one_round(batch, 0)
    before = sample()
    for r in range(rounds):
        one_round(batch, r * batch)
    after = sample()
    print("RESULT " + json.dumps({"before": before, "after": after}), flush=True)
"""

ROUNDS, BATCH, WARMUP = 20, 5000, 3  # 100,000 submitted futures and 100,000 mapped items
MAX_GROWTH_KIB = 12 * 1024


@pytest.mark.both_transports
def test_launcher_and_root_memory_stay_flat_over_many_futures(write_program, scoop_run):
    prog = write_program(PROGRAM)
    proc = scoop_run(prog, str(ROUNDS), str(BATCH), str(WARMUP), timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT ") :])
    for process in ("launcher", "root"):
        before, after = got["before"][process], got["after"][process]
        assert after - before < MAX_GROWTH_KIB, (
            f"the {process}'s RSS grew from {before / 1024:.1f} MiB to {after / 1024:.1f} MiB "
            f"over {2 * ROUNDS * BATCH:,} calls after warm-up"
        )
