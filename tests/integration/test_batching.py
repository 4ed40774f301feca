"""Batches of futures that fit one by one but not together (issue 9, item 5).

With ``max_message_size`` at 10 MB, results and calls of 4 MB each travel
fine alone; three of them do not fit one message. Every process that
coalesces futures into one message (a worker's results, the root's
submits, the broker's hand-overs) cuts its batches to fit, and a single
result or call over the limit is that future's own ``SerializationError``,
which names its size, the limit and the setting, while the rest of the run
goes on and ends normally. Real runs through the launcher, on both
transports.
"""

from __future__ import annotations

import re

import pytest
from conftest import program_results

# The same limits on both built-in transports.
pytestmark = pytest.mark.both_transports

LIMIT = 10_000_000
MB4 = 4_000_000
# These futures must travel: a future the root runs itself (a cheap one, once
# it has come back a few times) never meets the message size limit.
ENV = {"SCOOP_MAX_MESSAGE_SIZE": str(LIMIT), "SCOOP_ROOT_RUNS_FUTURES": "false"}

PRELUDE = f"""
import hashlib, json, time
from scoop import futures
from scoop_core.errors import SerializationError

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def blob(i, size={MB4}):
    # A different big value for each i, quick to make.
    return bytes([i % 256]) * size

def digest(data):
    return hashlib.sha256(data).hexdigest()

def expected(i, size={MB4}):
    return digest(blob(i, size))
"""


def test_results_that_fit_one_by_one_but_not_together_all_arrive(program, scoop_run):
    prog = program("""
if __name__ == "__main__":
    start = time.monotonic()
    # Quick futures with 4 MB results: each worker finishes several before it
    # sends, and the broker passes both workers' results on to the root.
    fs = [futures.submit(blob, i) for i in range(12)]
    out([digest(f.result()) == expected(i) for i, f in enumerate(fs)])
    out([digest(v) == expected(i) for i, v in enumerate(futures.map(blob, range(3)))])
    out(time.monotonic() - start)
""")
    proc = scoop_run(prog, env=ENV, timeout=30)
    got = program_results(proc)
    assert got[0] == [True] * 12
    assert got[1] == [True] * 3
    assert "could not send" not in proc.stderr and "failed" not in proc.stderr
    print(f"12 + 3 results of 4 MB under a 10 MB limit arrived in {got[2]:.2f} s")


def test_a_map_whose_chunks_of_results_do_not_fit_one_message_returns_every_value(
    program, scoop_run
):
    # Quick items with small calls: map sends them in growing chunks, whose
    # 4 MB results do not fit one message together. Every value arrives, in
    # order; so do those of a map run inside a future on a worker.
    prog = program("""
def nested(n):
    return [digest(v) for v in futures.map(blob, range(n))]

if __name__ == "__main__":
    start = time.monotonic()
    got = [digest(v) for v in futures.map(blob, range(24))]
    out(got == [expected(i) for i in range(24)])
    out(futures.submit(nested, 12).result() == [expected(i) for i in range(12)])
    out(time.monotonic() - start)
""")
    got = program_results(scoop_run(prog, env=ENV, timeout=30))
    assert got[0] is True
    assert got[1] is True
    print(f"maps of 24 and 12 results of 4 MB each under a 10 MB limit took {got[2]:.2f} s")


def test_one_result_over_the_limit_fails_alone_and_the_run_goes_on(program, scoop_run):
    prog = program(f"""
if __name__ == "__main__":
    start = time.monotonic()
    sizes = [{MB4}, {LIMIT + 1}, {MB4}, {LIMIT - 500}, {MB4}]
    fs = [futures.submit(blob, i, size) for i, size in enumerate(sizes)]
    for i, f in enumerate(fs):
        try:
            out(["ok", digest(f.result()) == expected(i, sizes[i])])
        except SerializationError as exc:
            out(["error", str(exc)])
    try:
        list(futures.map(blob, [1, 2], [{MB4}, {LIMIT + 1}]))
        out("no error")
    except SerializationError as exc:
        out(["map error", str(exc)])
    out([digest(v) == expected(i) for i, v in enumerate(futures.map(blob, range(3)))])
    out(time.monotonic() - start)
""")
    proc = scoop_run(prog, env=ENV, timeout=30)
    got = program_results(proc)
    assert got[0] == ["ok", True]
    assert got[2] == ["ok", True]
    assert got[4] == ["ok", True]
    # Over the limit alone, and just under it but not with its message header.
    for kind, message in (got[1], got[3]):
        assert kind == "error"
        assert "the result of blob" in message
        assert str(LIMIT) in message and "max_message_size" in message
    assert re.search(rf"it is 1000\d{{4}} bytes, over the limit of {LIMIT} bytes", got[1][1])
    assert re.search(r"it is 99995\d\d bytes, which with its message header", got[3][1])
    kind, message = got[5]
    assert kind == "map error" and "the result of blob" in message
    assert re.search(rf"it is 1000\d{{4}} bytes, over the limit of {LIMIT} bytes", message)
    assert got[6] == [True] * 3
    print(f"two results over the limit failed alone; the run ended normally in {got[7]:.2f} s")


def test_calls_that_fit_one_by_one_but_not_together_all_run(program, scoop_run):
    prog = program(f"""
if __name__ == "__main__":
    start = time.monotonic()
    # Submitted in a loop, the calls are sent in as few messages as fit.
    fs = [futures.submit(digest, blob(i)) for i in range(8)]
    out([f.result() == expected(i) for i, f in enumerate(fs)])
    ok = list(futures.map(digest, [blob(i) for i in range(4)]))
    out([v == expected(i) for i, v in enumerate(ok)])
    # One call too big alone is refused where it is made, naming the limit;
    # the others made with it still run.
    fs = [futures.submit(digest, blob(0))]
    for size in ({LIMIT + 1}, {LIMIT - 500}):
        try:
            futures.submit(digest, blob(1, size))
            out("no error")
        except SerializationError as exc:
            out(str(exc))
    fs.append(futures.submit(digest, blob(2)))
    out([f.result() == expected(i * 2) for i, f in enumerate(fs)])
    # So is a shared constant too big for one message.
    from scoop import shared
    try:
        shared.setConst(big=blob(3, {LIMIT - 500}))
        out("no error")
    except SerializationError as exc:
        out(str(exc))
    shared.setConst(fits=blob(4))
    out(futures.submit(digest, shared.getConst("fits")).result() == expected(4))
    out(time.monotonic() - start)
""")
    proc = scoop_run(prog, env=ENV, timeout=30)
    got = program_results(proc)
    assert got[0] == [True] * 8
    assert got[1] == [True] * 4
    for message in got[2:4]:
        assert "the call to digest" in message
        assert str(LIMIT) in message and "max_message_size" in message
    assert "header" in got[3]
    assert got[4] == [True, True]
    assert "shared constant 'big'" in got[5] and str(LIMIT) in got[5]
    assert got[6] is True
    print(f"8 + 4 calls of 4 MB under a 10 MB limit ran in {got[7]:.2f} s")


def test_a_map_whose_chunks_of_calls_do_not_fit_one_message_runs_every_item(program, scoop_run):
    # map sizes its chunks for 4 MB of calls; under a 1 MB limit a chunk of
    # 300 kB arguments is sent in pieces that fit, and every value returns.
    prog = program("""
if __name__ == "__main__":
    start = time.monotonic()
    args = [blob(i, 300_000) for i in range(40)]
    got = list(futures.map(digest, args))
    out(got == [expected(i, 300_000) for i in range(40)])
    out(time.monotonic() - start)
""")
    got = program_results(scoop_run(prog, env={"SCOOP_MAX_MESSAGE_SIZE": "1000000"}, timeout=30))
    assert got[0] is True
    print(f"a map of 40 calls of 300 kB under a 1 MB limit took {got[1]:.2f} s")


def test_futures_stolen_from_a_worker_travel_in_batches_that_fit(program, scoop_run):
    prog = program("""
def parent(n):
    # Children submitted on a worker stay there unless the idle worker
    # steals them: then they travel, big arguments and all.
    fs = [futures.submit(child, blob(i)) for i in range(n)]
    return [f.result() for f in fs]

def child(data):
    time.sleep(0.05)
    return digest(data)[:8]

if __name__ == "__main__":
    start = time.monotonic()
    got = futures.submit(parent, 8).result()
    out(got == [expected(i)[:8] for i in range(8)])
    out(time.monotonic() - start)
""")
    got = program_results(scoop_run(prog, env=ENV, timeout=30))
    assert got[0] is True
    print(f"a worker's 8 children of 4 MB each ran in {got[1]:.2f} s")
