"""Someone who can write to the Redis server of a run, but has no run key, attacks it.

Each test starts a real run (launcher, root, workers: processes) over a
redis-server started for this module (never the one on 6379), and attacks
it from a plain ``redis.Redis`` client, the way another user of that server
could: a crafted pickle in the constants table, a forged loss count on a queue
entry, a rewritten peer record, a copied queue entry, and a flood of random,
truncated and bit-flipped entries and fields. Each test asserts what a user
would notice: nothing an attacker wrote is unpickled (the pickles would
create a file), no future runs twice (each run appends a line to a file),
no result goes astray, the run's results are right, it exits 0, and each
process says once what it deleted.

Tests wait for real events (a key appears, a file exists, a line is
printed), never for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from conftest import redis_run_env, wait_for, wait_gone

PRELUDE = """
import json, os, sys, time
from pathlib import Path
from scoop import futures, shared
import scoop

HERE = Path(sys.argv[1])

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def wait_for(name):
    while not (HERE / name).exists():
        time.sleep(0.02)

def ran(i):
    # One line per run of a future: a future run twice shows as two lines.
    with open(HERE / "runs", "a") as fh:
        fh.write(f"{i}\\n")
"""


class Evil:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


class Run:
    """One run of a program through ``python -m scoop`` over the test server,
    with a plain Redis client for the attacker."""

    def __init__(self, url: str, tmp: Path, run_id: str) -> None:
        self.url = url
        self.dir = tmp
        self.run_id = run_id
        self.prefix = f"sec{uuid.uuid4().hex[:8]}"
        self.base = f"{self.prefix}:{run_id}:"
        self.proof = tmp / "unpickled"
        self.attacker = redis.Redis.from_url(url)
        self.env = redis_run_env(url, tmp, self.prefix)
        self.procs: list[subprocess.Popen[str]] = []
        self.prog: Path | None = None

    def key(self, name: str) -> str:
        return self.base + name

    def mailbox(self, peer: str) -> str:
        return self.key("mail:" + peer.encode().hex())

    def launch(self, source: str, *flags: str, **env: str) -> subprocess.Popen[str]:
        self.prog = self.dir / "prog.py"
        self.prog.write_text(PRELUDE + source)
        proc = subprocess.Popen(
            [sys.executable, "-m", "scoop", "-n", "2", "--run-id", self.run_id, *flags]
            + [str(self.prog), str(self.dir)],
            cwd=self.dir,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def join(self) -> subprocess.Popen[str]:
        """A worker started elsewhere with ``scoop worker``: its welcome reads the constants."""
        proc = subprocess.Popen(
            ["scoop", "--transport", "redis", "worker", "--url", self.url]
            + ["--run", self.run_id, "-n", "1"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def peers(self) -> dict[bytes, bytes]:
        return dict(self.attacker.hgetall(self.key("table:peers")))

    def runs(self) -> list[int]:
        path = self.dir / "runs"
        return sorted(int(line) for line in path.read_text().split()) if path.exists() else []

    def go(self, name: str = "go") -> None:
        (self.dir / name).touch()

    def close(self) -> None:
        """Stop what a failed test left running; check a passed one left nothing."""
        left = [] if self.prog is None else wait_gone(str(self.prog))
        for pid in left:  # the root and workers of a run whose launcher was killed
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self.attacker.close()
        assert left == [], "processes of the run were left running"


@pytest.fixture
def run(redis_server_url: str, tmp_path: Path) -> Iterator[Run]:
    attacked = Run(redis_server_url, tmp_path, f"r{uuid.uuid4().hex[:8]}")
    try:
        yield attacked
    finally:
        attacked.close()


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def _results(out: str) -> list[object]:
    return [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]


def _said(err: str, pattern: str) -> int:
    """How many lines of ``err`` match ``pattern``."""
    return sum(1 for line in err.splitlines() if re.search(pattern, line))


# -- (a) a crafted pickle in the constants table ---------------------------------------

CONSTANTS = """
def tagged(i):
    ran(i)
    return scoop.worker + "=" + shared.getConst("tag", timeout=10)

if __name__ == "__main__":
    shared.setConst(tag="blue")
    wait_for("go")
    out(sorted(set(x.split("=")[1] for x in futures.map(tagged, range(20)))))
"""


def test_a_crafted_pickle_constant_is_deleted_unread(run: Run) -> None:
    proc = run.launch(CONSTANTS)
    wait_for(lambda: run.attacker.exists(run.key("table:run")), "the run to start")
    # The stored form of a constant today: a msgpack list of its pickled frames.
    crafted = msgpack.packb([pickle.dumps(Evil(str(run.proof)))])
    run.attacker.hset(run.key("table:constants"), "evil", crafted)
    joiner = run.join()  # a welcome that surely comes after the attack

    def joined() -> bool:
        names = [n.decode() for n in run.peers()]
        return any(not n.startswith(("worker-", "root")) for n in names)

    wait_for(joined, "the joined worker to register")
    wait_for(
        lambda: not run.attacker.hexists(run.key("table:constants"), "evil") or run.proof.exists(),
        "the crafted constant to be deleted",
    )
    assert not run.proof.exists(), "a constant written without the run's key was unpickled"
    assert run.attacker.hexists(run.key("table:constants"), "tag"), "the run's own constant is kept"
    run.go()
    out, err = _finish(proc)
    _, joiner_err = joiner.communicate(timeout=30)
    assert _results(out) == [["blue"]]
    assert run.runs() == list(range(20))
    assert not run.proof.exists()
    # Said, by each process that saw it, once.
    said = _said(err + joiner_err, r"deleted .*constant")
    assert 1 <= said <= 4, err + joiner_err


# -- (b) a forged loss count ------------------------------------------------------------

HOLD = """
def hold(i):
    ran(i)
    wait_for("go")
    return i * 10

if __name__ == "__main__":
    out(list(futures.map(hold, range(4))))
"""


def test_a_forged_loss_count_neither_fails_nor_reruns_a_future(run: Run) -> None:
    # Quick heartbeats: an entry held by a silent taker is claimed within 3 s.
    proc = run.launch(HOLD, SCOOP_HEARTBEAT_INTERVAL="0.3", SCOOP_HEARTBEAT_TIMEOUT="3")
    queue = run.key("queue")
    wait_for(lambda: len(run.runs()) == 2, "both workers to start a future")

    def all_taken() -> bool:
        return run.attacker.exists(queue) and run.attacker.xpending(queue, "scoop")["pending"] == 4

    wait_for(all_taken, "every future to be taken")
    entry_id, fields = run.attacker.xrange(queue, count=1)[0]
    # One copy with the loss fields of old set to "lost 99 times", one exact
    # copy; both taken by a consumer that then stays silent, so a worker
    # claims them as lost.
    forged = {**fields, b"l": b"99", b"o": b"worker-1,worker-2"}
    pipe = run.attacker.pipeline(transaction=True)
    pipe.xadd(queue, forged)
    pipe.xadd(queue, fields)
    pipe.xreadgroup("scoop", "ghost", {queue: ">"}, count=2)
    copies = [i for i, _ in pipe.execute()[2][0][1]]
    assert len(copies) == 2
    wait_for(
        lambda: not any(run.attacker.xrange(queue, i, i) for i in copies),
        "the copies to be claimed and deleted",
    )
    run.go()
    out, err = _finish(proc)
    assert _results(out) == [[0, 10, 20, 30]], err
    assert run.runs() == [0, 1, 2, 3], "a future ran twice"
    assert "WorkerLostError" not in err and "lost" not in out
    assert 1 <= _said(err, r"deleted .*queue entr") <= 2, err


# -- (c) a rewritten peer record ---------------------------------------------------------

ROUTED = """
def work(i):
    ran(i)
    return i, scoop.worker

if __name__ == "__main__":
    wait_for("go")
    shared.setConst(after="the attack")  # reads every peer record, to tell them
    got = list(futures.map(work, range(30)))
    out([i for i, _ in got])
"""


def test_a_rewritten_peer_record_misroutes_nothing(run: Run) -> None:
    proc = run.launch(ROUTED)
    wait_for(lambda: len(run.peers()) >= 3, "the root and both workers to register")
    peers = run.peers()
    [root] = [n for n in peers if n.startswith(b"root")]
    # Whatever the root's record is, copy it under another name and over a
    # worker's: a reader trusting the hash would send the root's results
    # to the mailbox of "evil" or of worker-2.
    run.attacker.hset(
        run.key("table:peers"), mapping={b"evil": peers[root], b"worker-2": peers[root]}
    )
    evil = run.mailbox("evil")
    run.go()
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        assert not run.attacker.exists(evil), "results were sent to the attacker's mailbox"
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.02)
    out, err = _finish(proc)
    assert _results(out) == [list(range(30))]
    assert run.runs() == list(range(30))
    assert 1 <= _said(err, r"deleted .*peer record") <= 4, err


# -- (d) a copied queue entry --------------------------------------------------------------

COPIED = """
def work(i):
    ran(i)
    wait_for("release")
    return i

if __name__ == "__main__":
    wait_for("go")
    first = [futures.submit(work, i) for i in range(40)]
    got = [f.result() for f in first]
    # Queued behind every copy: these finish only once the copies were read.
    second = [futures.submit(work, i) for i in range(40, 50)]
    out(got + [f.result() for f in second])
"""


def _all_queued(
    run: Run, program: str, count: int, **env: str
) -> tuple[subprocess.Popen[str], str]:
    """Launch ``program``, let it go, and wait until its ``count`` futures are
    all in the queue (none can finish before "release"): the run and the queue."""
    proc = run.launch(program, **env)
    wait_for(lambda: len(run.peers()) >= 3, "the root and both workers to register")
    queue = run.key("queue")
    run.go()
    wait_for(lambda: run.attacker.xlen(queue) == count, f"the {count} futures in the queue")
    return proc, queue


def test_a_copied_queue_entry_does_not_run_a_future_twice(run: Run) -> None:
    # Some futures are running, some taken ahead, the others waiting. Copy them all.
    proc, queue = _all_queued(run, COPIED, 40)
    pipe = run.attacker.pipeline(transaction=False)
    for _, fields in run.attacker.xrange(queue):
        pipe.xadd(queue, fields)
    assert len(pipe.execute()) == 40
    run.go("release")
    out, err = _finish(proc)
    assert _results(out) == [list(range(50))]
    assert run.runs() == list(range(50)), "a copied entry ran a future twice"
    assert 1 <= _said(err, r"deleted .*queue entr") <= 2, err


LARGE = """
def work(i, blob):
    ran(i)
    wait_for("release")
    return [i, len(blob), blob[-1]]

if __name__ == "__main__":
    wait_for("go")
    pending = [futures.submit(work, i, bytearray([i]) * 300_000) for i in range(20)]
    out([f.result() for f in pending])
"""


def test_a_queue_entry_whose_large_payload_was_altered_is_deleted_unread(run: Run) -> None:
    # A large argument is signed by its digest, made once by the root: the
    # worker that takes a copy with one bit of it flipped checks it and deletes it.
    proc, queue = _all_queued(run, LARGE, 20, SCOOP_ROOT_RUNS_FUTURES="false")
    pipe = run.attacker.pipeline(transaction=False)
    for _, fields in run.attacker.xrange(queue):
        largest = max(fields, key=lambda name: len(fields[name]))
        altered = bytearray(fields[largest])
        altered[len(altered) // 2] ^= 1
        pipe.xadd(queue, {**fields, largest: bytes(altered)})
    assert len(pipe.execute()) == 20
    run.go("release")
    out, err = _finish(proc)
    assert _results(out) == [[[i, 300_000, i] for i in range(20)]], err
    assert run.runs() == list(range(20)), "an altered entry ran a future"
    assert 1 <= _said(err, r"deleted a queue entry \(bad payload digest") <= 2, err


# -- a flood of random, truncated and bit-flipped entries -----------------------------------

ROUNDS = """
def work(i):
    ran(i)
    return i * i

if __name__ == "__main__":
    shared.setConst(tag="blue")
    rounds = 0
    while not (HERE / "stop").exists() or rounds < 2:
        base = rounds * 50
        # One entry per future (a map queues a few chunks): many entries to copy.
        got = [f.result() for f in [futures.submit(work, i) for i in range(base, base + 50)]]
        assert got == [i * i for i in range(base, base + 50)], got
        rounds += 1
        (HERE / "rounds.new").write_text(str(rounds))
        os.replace(HERE / "rounds.new", HERE / "rounds")  # never seen half written
    out({"rounds": rounds, "tag": shared.getConst("tag")})
"""

FLOOD = 100_000


def _mangled(rng: random.Random, sample: list[bytes], evil: bytes) -> bytes:
    """Random bytes, or a real value truncated or with a bit flipped, or the evil pickle."""
    choice = rng.randrange(5)
    if choice == 0 or not sample:
        return rng.randbytes(rng.randrange(0, 64))
    value = bytearray(rng.choice(sample))
    if choice == 1 and value:
        return bytes(value[: rng.randrange(len(value))])
    if choice == 2 and value:
        bit = rng.randrange(len(value) * 8)
        value[bit // 8] ^= 1 << (bit % 8)
        return bytes(value)
    if choice == 3:
        return evil
    return bytes(value)  # an exact copy


def test_a_flood_of_forged_entries_changes_nothing(run: Run) -> None:
    start = time.monotonic()
    # Every future through the queue, where the attacker copies entries from:
    # the root would run these cheap ones itself.
    proc = run.launch(ROUNDS, SCOOP_ROOT_RUNS_FUTURES="false")
    queue = run.key("queue")
    wait_for(lambda: len(run.peers()) >= 3, "the root and both workers to register")
    entries: list[dict[bytes, bytes]] = []

    def queued() -> bool:
        # Read in the same look that counts them: workers empty the queue fast.
        entries[:] = [fields for _, fields in run.attacker.xrange(queue, count=20)]
        return len(entries) >= 5

    wait_for(queued, "futures in the queue")
    rng = random.Random(20261204)
    evil = pickle.dumps(Evil(str(run.proof)))
    samples = [v for fields in entries for v in fields.values()]
    peer_records = list(run.peers().values())
    consts = list(run.attacker.hgetall(run.key("table:constants")).values())
    mailboxes = [run.mailbox(n.decode()) for n in run.peers()]
    streams = [queue, *mailboxes]
    written = 0
    pipe = run.attacker.pipeline(transaction=False)
    for n in range(FLOOD):
        kind = n % 4
        if kind < 2:
            stream = rng.choice(streams) if kind else queue
            fields = dict(rng.choice(entries))
            for name in rng.sample(list(fields), rng.randrange(1, len(fields) + 1)):
                fields[name] = _mangled(rng, samples, evil)
            if rng.random() < 0.2:  # cut off the last frames
                fields = dict(list(fields.items())[: rng.randrange(1, len(fields) + 1)])
            if rng.random() < 0.1:  # fields the store never writes
                fields[rng.choice([b"l", b"o", b"x", b"f99"])] = rng.randbytes(4)
            pipe.xadd(stream, fields)
        elif kind == 2:
            value = _mangled(rng, consts, msgpack.packb([evil]))
            pipe.hset(run.key("table:constants"), f"c{n}", value)
        else:
            pipe.hset(run.key("table:peers"), f"p{n}", _mangled(rng, peer_records, evil))
        written += 1
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    assert written == FLOOD
    # A worker that joins now reads every constant and peer record there is.
    joiner = run.join()
    wait_for(
        lambda: run.attacker.hlen(run.key("table:constants")) == 1 or run.proof.exists(),
        "the forged constants to be deleted",
        45,
    )

    def rounds_done() -> int:
        path = run.dir / "rounds"
        return int(path.read_text()) if path.exists() else 0

    rounds_then = rounds_done()
    wait_for(lambda: rounds_done() > rounds_then, "a round of futures after the flood", 45)
    run.go("stop")
    out, err = _finish(proc)
    joiner.communicate(timeout=30)
    took = time.monotonic() - start
    [result] = _results(out)
    assert isinstance(result, dict) and result["tag"] == "blue"
    rounds = result["rounds"]
    assert run.runs() == list(range(rounds * 50)), "a future ran twice or not at all"
    assert not run.proof.exists(), "something an attacker wrote was unpickled"
    assert "Traceback" not in err and "exited with status" not in err, err
    # Each process (launcher, root, two workers) says once per kind of
    # record (queue entry, mail, constant, peer record, taken mark) what it
    # deleted: no flood of warnings.
    assert 1 <= _said(err, r"deleted ") <= 4 * 5, err
    assert joiner.returncode == 0
    print(f"{FLOOD} forged entries and fields; {rounds} rounds of 50 futures in {took:.1f} s")


# -- an oversized entry ---------------------------------------------------------------------


def test_an_entry_over_the_size_limit_is_refused_before_its_hmac_is_computed(run: Run) -> None:
    proc = run.launch(COPIED, SCOOP_MAX_MESSAGE_SIZE=str(256 * 1024))
    wait_for(lambda: len(run.peers()) >= 3, "the root and both workers to register")
    big = {b"f0": b"header", b"f1": b"\0" * (4 << 20), b"f2": b"m" * 32}
    run.attacker.xadd(run.key("queue"), big)
    run.go("release")
    run.go()
    out, err = _finish(proc)
    assert _results(out) == [list(range(50))]
    assert run.runs() == list(range(50))
    # Refused for its size: its HMAC was never computed (that would say "HMAC").
    [said] = [line for line in err.splitlines() if "deleted a queue entry" in line]
    assert "over the limit" in said and "HMAC" not in said, said


# -- (f) forged reports and trace events --------------------------------------------------

REPORTED = """
def work(i):
    ran(i)
    return i

if __name__ == "__main__":
    wait_for("go")
    out(sum(futures.map(work, range(20))))
"""


def test_forged_reports_and_trace_events_are_deleted_unread(run: Run) -> None:
    trace = run.dir / "trace.json"
    proc = run.launch(REPORTED, "-v", "--trace", str(trace))
    wait_for(lambda: run.attacker.exists(run.key("table:reports")), "the run to start")
    # A process that never was, and events for a real one, written without the key.
    run.attacker.hset(
        run.key("table:reports"), "worker-9", msgpack.packb(["report", {"ran": 10**6}])
    )
    run.attacker.hset(run.key("table:trace"), "worker-1.999", pickle.dumps(Evil(str(run.proof))))
    # The launcher reads the tables twice a second, and deletes what fails its check.
    wait_for(
        lambda: (
            not run.attacker.hexists(run.key("table:reports"), "worker-9")
            and not run.attacker.hexists(run.key("table:trace"), "worker-1.999")
        ),
        "the forged records to be deleted",
    )
    run.go()
    out, err = _finish(proc)
    assert _results(out) == [sum(range(20))]
    assert not run.proof.exists()
    assert "worker-9" not in err.split("process ")[-1]  # not in the summary
    assert "futures: 20 submitted, 20 done" in err
    written = json.loads(trace.read_text())
    assert "worker-9" not in {p["name"] for p in written["scoop"]["processes"]}
    runs = [e for e in written["traceEvents"] if e.get("cat") == "future"]
    assert sum(e["args"]["items"] for e in runs) == 20
