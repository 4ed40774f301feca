"""A future lost with its worker runs alone on Redis, so innocent futures
that travelled with it are not charged its next losses.

When a worker dies, every future it held is charged a loss: the one that
killed it, and the others it held (not started yet, or finished with their
results not sent). A worker that takes a future already lost once first
finishes or hands back everything else it holds, and takes nothing else
until that one is done: so a future that kills every worker fails alone
after ``max_losses``, and the others run. Real runs through the launcher,
over a throw-away redis-server.
"""

from __future__ import annotations

import json
import subprocess

import pytest

PRELUDE = """
import json, os, time
from scoop import futures
from scoop_core.errors import WorkerLostError

def out(value):
    print("RESULT " + json.dumps(value), flush=True)
"""


def results(proc: subprocess.CompletedProcess[str]) -> list:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
def test_only_the_future_that_kills_its_workers_fails_and_every_square_is_right(
    write_program, scoop_run
):
    prog = write_program(
        PRELUDE
        + """
def square(x):
    return x * x

def killer():
    os._exit(1)

def result_or_error(f):
    try:
        return f.result()
    except WorkerLostError as exc:
        return "lost: " + str(exc)

if __name__ == "__main__":
    start = time.monotonic()
    # Queued together, so the killer's first worker holds squares too.
    doomed = futures.submit(killer)
    mapped = futures.map(square, range(20))
    submitted = [futures.submit(square, i) for i in range(20, 40)]
    values = list(mapped) + [result_or_error(f) for f in submitted]
    out(values)
    out(result_or_error(doomed))
    out(time.monotonic() - start)
"""
    )
    proc = scoop_run(prog, flags=("-n", "2"), timeout=90)
    values, doomed, took = results(proc)
    assert values == [i * i for i in range(40)]
    assert doomed.startswith("lost: ") and "was lost with its worker 3 times" in doomed, doomed
    assert proc.stderr.count("was lost with its worker 3 times") == 1, proc.stderr
    print(f"a killer future failed alone after 3 losses; 40 squares right, in {took:.2f} s")
