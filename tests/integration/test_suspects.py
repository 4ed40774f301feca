"""A future that kills its worker at once fails alone; the futures its
worker held with it (results not sent yet, calls not started) complete.

After a worker dies, everything it held has one loss and is a *suspect*:
the broker runs each suspect on a worker that holds nothing else, so an
innocent one completes and the killer is the only one charged again, until
it fails with WorkerLostError at ``max_losses`` (3 by default).

Real runs through ``python -m scoop -n 2`` on both transports (the killer
among submitted futures, queued ahead of them, among a map's items, and
nested under a future); every other result is checked, and the log must
name exactly one future lost 3 times.
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import program_results

# The same rules on both built-in transports.
pytestmark = pytest.mark.both_transports

PRELUDE = """
import json, os, sys, time
from scoop import futures
from scoop_core.errors import WorkerLostError

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def square(x):
    return x * x

def deadly():
    os._exit(1)

def result_or_error(f):
    try:
        return f.result()
    except WorkerLostError as exc:
        return "lost: " + str(exc)
"""

# Twenty quick squares mapped and twenty submitted just before a future
# that kills its worker the moment it starts, and twenty after: the killer
# shares every batch its worker takes.
SUBMITS = """
if __name__ == "__main__":
    start = time.monotonic()
    mapped = futures.map(square, range(20))
    fs = [futures.submit(square, i) for i in range(20)]
    bad = futures.submit(deadly)
    fs += [futures.submit(square, i) for i in range(20, 40)]
    try:
        out(list(mapped))
    except WorkerLostError as exc:
        out(str(exc))
    outcomes = [result_or_error(f) for f in fs]
    out(result_or_error(bad))
    out([v for v in outcomes if not isinstance(v, str)])
    out([v for v in outcomes if isinstance(v, str)])
    out(list(futures.map(square, range(10))))
    out(time.monotonic() - start)
"""

# The killer is queued first, ahead of a map and submitted squares, so
# the first worker to take it holds squares too.
KILLER_FIRST = """
if __name__ == "__main__":
    start = time.monotonic()
    doomed = futures.submit(deadly)
    mapped = futures.map(square, range(20))
    submitted = [futures.submit(square, i) for i in range(20, 40)]
    values = list(mapped) + [result_or_error(f) for f in submitted]
    out(values)
    out(result_or_error(doomed))
    out(time.monotonic() - start)
"""

# The killer is one of a map's items (KILLER): a map runs its items in
# chunks, each one future, so the chunk holding the killer is the future
# that fails; separately submitted squares around the map all complete.
MAPPED = """
def square_or_die(x):
    if x == KILLER:
        os._exit(1)
    return x * x

if __name__ == "__main__":
    start = time.monotonic()
    fs = [futures.submit(square, i) for i in range(20)]
    got, error = [], None
    try:
        for value in futures.map(square_or_die, range(40)):
            got.append(value)
    except WorkerLostError as exc:
        error = str(exc)
    fs += [futures.submit(square, i) for i in range(20, 40)]
    out(error)
    out(got)
    out([f.result() for f in fs])
    out(time.monotonic() - start)
"""

# The killer is a nested future: one item of a map that a top-level future
# runs, beside seven top-level futures that run the same map without it.
# Its worker dies with its parent (and whatever else it held); only the
# parent, whose work kills every worker it runs on, fails.
NESTED = """
def leaf(x):
    if x < 0:
        os._exit(1)
    time.sleep(0.005)
    return x * x

def parent(n, deadly):
    xs = list(range(n)) + ([-1] if deadly else [])
    return sum(futures.map(leaf, xs))

if __name__ == "__main__":
    start = time.monotonic()
    fs = [futures.submit(parent, 20, i == 3) for i in range(8)]
    out([result_or_error(f) for f in fs])
    out(time.monotonic() - start)
"""


def _failed_futures(stderr: str) -> list[str]:
    """Ids of the futures the broker gave up on (it logs each one once)."""
    return re.findall(r"future (0x[0-9a-f]+) was lost with its worker \d+ times", stderr)


def _deaths(stderr: str) -> int:
    return len(re.findall(r"worker-\d+ exited with status 1", stderr))


def test_only_the_future_that_kills_its_worker_fails(program, scoop_run):
    prog = program(SUBMITS)
    start = time.monotonic()
    proc = scoop_run(prog, flags=("-n", "2"), timeout=120)
    took = time.monotonic() - start
    mapped, message, values, errors, after, inside = program_results(proc)
    assert "was lost with its worker 3 times" in message
    # Every square came back right; none failed with the killer.
    assert mapped == [i * i for i in range(20)]
    assert errors == []
    assert values == [i * i for i in range(40)]
    assert after == [i * i for i in range(10)]
    # The broker gave up on one future only: the killer, which killed
    # exactly max_losses workers (each replaced).
    failed = _failed_futures(proc.stderr)
    assert len(failed) == 1 and failed[0] in message, proc.stderr
    assert _deaths(proc.stderr) == 3, proc.stderr
    print(
        f"submits: 20 mapped and 40 submitted squares right, the killer failed after "
        f"3 deaths; "
        f"{inside:.2f} s in the program, {took:.2f} s in all"
    )


def test_a_killer_queued_ahead_of_the_others_fails_alone_and_every_square_is_right(
    program, scoop_run
):
    prog = program(KILLER_FIRST)
    proc = scoop_run(prog, flags=("-n", "2"), timeout=90)
    values, doomed, took = program_results(proc)
    assert values == [i * i for i in range(40)]
    assert doomed.startswith("lost: ") and "was lost with its worker 3 times" in doomed, doomed
    failed = _failed_futures(proc.stderr)
    assert len(failed) == 1 and failed[0] in doomed, proc.stderr
    print(f"a killer future failed alone after 3 losses; 40 squares right, in {took:.2f} s")


def test_a_killer_among_a_maps_items_fails_at_its_place_only(program, scoop_run):
    killer = 25
    prog = program(MAPPED.replace("KILLER", str(killer)))
    start = time.monotonic()
    proc = scoop_run(prog, flags=("-n", "2"), timeout=120)
    took = time.monotonic() - start
    error, got, values, inside = program_results(proc)
    # The killer's chunk was lost max_losses times, then each of its items
    # ran alone: the map gave every item before the killer, right, then the
    # killer's own error.
    assert error is not None and "was lost with its worker 2 times" in error
    assert got == [i * i for i in range(killer)]
    assert "running each item alone so that only the one at fault fails" in proc.stderr
    # Every separately submitted square came back right.
    assert values == [i * i for i in range(40)]
    failed = _failed_futures(proc.stderr)
    assert len(failed) == 2 and failed[1] in error, proc.stderr  # the chunk, then the item
    assert _deaths(proc.stderr) == 3 + 2, proc.stderr
    print(
        f"map: the {len(got)} items before the killer came back right, then its error "
        f"after 5 deaths, 40 submitted squares right; "
        f"{inside:.2f} s in the program, {took:.2f} s in all"
    )


def test_a_killer_nested_under_a_future_fails_that_future_only(program, scoop_run):
    prog = program(NESTED)
    start = time.monotonic()
    proc = scoop_run(prog, flags=("-n", "2"), timeout=120)
    took = time.monotonic() - start
    sums, inside = program_results(proc)
    right = sum(i * i for i in range(20))
    assert [s for i, s in enumerate(sums) if i != 3] == [right] * 7
    assert "was lost with its worker 3 times" in sums[3]
    failed = _failed_futures(proc.stderr)
    assert len(failed) == 1 and failed[0] in sums[3], proc.stderr
    # The parent killed its worker 3 times. An idle worker may also steal the
    # killer's chunk of the parent's map and die of it, which depends on
    # timing; the run stays within max_restarts (10) all the same.
    deaths = _deaths(proc.stderr)
    assert 3 <= deaths <= 10, proc.stderr
    print(
        f"nested: 7 sums right, the parent of the killer failed after {deaths} deaths; "
        f"{inside:.2f} s in the program, {took:.2f} s in all"
    )
