"""100,000 broken messages at a running broker's socket: it never dies, loses no future, unpickles nothing.

A separate process with plain pyzmq DEALER sockets and no run key opens a
run's broker socket (the ipc socket of a run on one machine, which a process
of the same user may open) from several connections, some under the names
of the run's peers, and sends multipart messages made by a seeded generator:

- random frames (any count, any length, empty ones);
- real messages of every kind, signed by a :class:`Codec` with another key,
  whose payload frames are a pickle that writes a marker file if anything
  ever unpickles it; and the same messages truncated (frames cut short,
  frames dropped, frames repeated) and with bits flipped anywhere;
- valid-looking headers (this protocol version, a plausible sender, session
  and sequence) under random macs, bit-flipped too.

Each connection ends with a message of an unknown protocol version, which
the broker answers (it tells a peer of another version why it refuses it):
when every connection has its answer, the broker has read everything sent
before. Meanwhile the program keeps running maps and checks each result;
then it runs a last one. The run must exit 0 with every result right, and
the marker must never appear.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import read_output, run_command, start_go_ahead_run, wait_gone

MESSAGES = 100_000

PROGRAM = """
import os, sys, time
from scoop import futures


def square(x):
    return x * x


if __name__ == "__main__":
    go = sys.argv[1]
    rounds, wrong = 0, 0
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        if list(futures.map(square, range(200))) != [x * x for x in range(200)]:
            wrong += 1
        rounds += 1
    final = sum(futures.map(square, range(1000)))
    print("RESULT", rounds, wrong, final, flush=True)
"""

FUZZER = '''
"""Not part of the run: no key, plain sockets, a seeded generator of broken messages."""
import os, pickle, random, sys, time
import msgpack, zmq
from scoop_core import messages as m

address, marker, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)


class Plant:
    def __reduce__(self):
        return (open, (marker, "w"))


evil = pickle.dumps(Plant())
other_key = bytes(rng.randrange(256) for _ in range(32))
task = m.Task(1 << 32 | 1, 0, 1, (evil, evil[:10]))
outcome = m.Outcome(1 << 32 | 1, m.OK, 0.1, (evil,))
kinds = [
    m.Hello("root", "root", 1, "h", 0),
    m.Hello("worker", "worker-1", 1, "h", 4),
    m.Submit((task, task)),
    m.Tasks((task,)),
    m.Ready(3),
    m.Started([1 << 32 | 1]),
    m.Results((outcome,)),
    m.Cancel(1 << 32 | 1),
    m.Recall(1 << 32 | 1),
    m.RecallReply(1 << 32 | 1, True),
    m.Returned([1 << 32 | 1], [0], "worker-1"),
    m.SetConst("evil", (evil,)),
    m.Const("evil", (evil,)),
    m.Bye("bye"),
    m.Heartbeat(0),
    m.Spare(2),
    m.Welcome(1, (m.Constant("evil", (evil,)),)),
]
signed = []
for name in (b"root", b"worker-1", b"worker-2", b"broker"):
    codec = m.Codec(other_key, name)
    for msg in kinds:
        signed.append([bytes(memoryview(f)) for f in codec.encode(msg)])


def looks_valid():
    name = rng.choice([b"root", b"worker-1", b"worker-2", b"x"])
    head = [m.PROTOCOL_VERSION, rng.randrange(1, 19), name, b"broker", os.urandom(16),
            rng.randrange(1, 1 << 20)]
    head += rng.choice([[], ["root", "root", 1, "h", 0], [[[1 << 32 | 1, 0, 1, 1, 0]]], ["evil"]])
    frames = [msgpack.packb(head, use_bin_type=True)]
    frames += [evil] * rng.randrange(0, 3)
    frames.append(os.urandom(rng.choice([32, 32, 31, 0, 64])))
    return frames


def flip(frames):
    frames = [bytearray(f) for f in frames]
    for _ in range(rng.randrange(1, 9)):
        target = rng.randrange(len(frames))
        if frames[target]:
            i = rng.randrange(len(frames[target]))
            frames[target][i] ^= 1 << rng.randrange(8)
    return [bytes(f) for f in frames]


def truncate(frames):
    frames = list(frames)
    how = rng.randrange(4)
    if how == 0 and len(frames) > 1:
        del frames[rng.randrange(len(frames)):]
    elif how == 1:
        i = rng.randrange(len(frames))
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    elif how == 2:
        del frames[rng.randrange(len(frames))]
    else:
        frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
    return frames or [b""]


def random_frames():
    return [rng.randbytes(rng.choice([0, 1, 8, 33, 200, 2000])) for _ in range(rng.randrange(1, 7))]


def message():
    pick = rng.random()
    if pick < 0.25:
        return random_frames()
    if pick < 0.35:
        return rng.choice(signed)
    if pick < 0.55:
        return truncate(rng.choice(signed))
    if pick < 0.75:
        return flip(rng.choice(signed))
    if pick < 0.85:
        return looks_valid()
    return flip(looks_valid())


context = zmq.Context()
url = address.partition("#")[0]
sockets = []
# Names of the run's peers, names nobody has, and none at all (the ROUTER
# numbers those); never one starting with a zero byte, which libzmq keeps
# for its own numbering.
for identity in (b"root", b"worker-1", b"worker-2", b"broker", b"fuzz", None, None, None):
    sock = context.socket(zmq.DEALER)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(url)
    sockets.append(sock)
poller = zmq.Poller()
for sock in sockets:
    poller.register(sock, zmq.POLLIN)
start = time.monotonic()
for n in range(count):
    rng.choice(sockets).send_multipart(message())
    if n % 1000 == 0:
        for sock, _ in poller.poll(0):  # the broker's refusals of odd versions
            sock.recv_multipart()
print("SENT", count, f"{time.monotonic() - start:.1f}", flush=True)
probe = msgpack.packb([7777, 1], use_bin_type=True)
answered = set()
for sock in sockets:
    sock.send_multipart([probe, b"", os.urandom(32)])
deadline = time.monotonic() + 60
while len(answered) < len(sockets) and time.monotonic() < deadline:
    for sock, _ in poller.poll(100):
        if any(b"7777" in f for f in sock.recv_multipart()):
            answered.add(sock)
print("ANSWERED", len(answered), "of", len(sockets), f"{time.monotonic() - start:.1f}", flush=True)
for sock in sockets:
    sock.close(0)
context.term()
'''


def test_a_running_broker_survives_100000_broken_messages(tmp_path: Path) -> None:
    fuzzer = tmp_path / "fuzzer.py"
    fuzzer.write_text(textwrap.dedent(FUZZER))
    marker = tmp_path / "unpickled"
    run, program, go = start_go_ahead_run(tmp_path, PROGRAM, ["-v", "-n", "2"])
    out, err, readers = read_output(run)
    fuzz: subprocess.CompletedProcess[str] | None = None
    try:
        deadline = time.monotonic() + 60
        while "READY\n" not in out and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the program's output, with a deadline
        assert "READY\n" in out, "".join(err)[-3000:]
        address = next(
            line.split("broker at ")[1].split(",")[0] for line in err if "broker at " in line
        )
        assert address.startswith("ipc://"), address
        fuzz = run_command(
            [sys.executable, str(fuzzer), address, str(marker), str(MESSAGES), "20261204"]
        )
        go.touch()
        run.wait(60)
    finally:
        go.touch()
        if run.poll() is None:
            run.kill()
            run.wait(5)
        for reader in readers:
            reader.join(5)
    stderr = "".join(err)
    assert fuzz is not None and fuzz.returncode == 0, fuzz
    assert f"SENT {MESSAGES}" in fuzz.stdout
    # Every connection's last message was answered: the broker read them all.
    assert "ANSWERED 8 of 8" in fuzz.stdout, fuzz.stdout
    assert run.returncode == 0, stderr[-3000:]
    result = next(line.split() for line in out if line.startswith("RESULT"))
    rounds, wrong, final = int(result[1]), int(result[2]), int(result[3])
    assert rounds > 0 and wrong == 0, result
    assert final == sum(x * x for x in range(1000))
    assert not marker.exists(), "a forged pickle was unpickled"
    assert "the broker failed" not in stderr
    # Each connection is logged once, whatever it sends.
    assert stderr.count("rejected a message from peer") <= 8, stderr[-3000:]
    assert wait_gone(str(program)) == []
    print(f"fuzz: {fuzz.stdout.strip()}; maps during it: {rounds}, all right")
