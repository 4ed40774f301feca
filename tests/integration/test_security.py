"""Nobody let in: a process without the run's key gets nothing unpickled and stops nobody.

A *foreign* process (its own interpreter, its own plain ZeroMQ socket, no
key) dials the broker's socket and sends what an attacker would: a pickle that
creates a marker file when unpickled, framed like a real ``Submit`` or
``SetConst`` with no mac, a short one, or a well-formed header signed with
a guessed key, and floods of garbage. The marker must never appear, the
broker must log each stranger once and keep serving, and a run going on at
the same time must give the right answer.

These tests are about the HMAC, the guard behind the socket: the brokers
here listen on plain TCP (no CurveZMQ, which would keep a plain socket out
altogether) or on a run's ipc socket, which a process of the same user may
open. Curve, ipc and names taken over are tested in test_zmq_security.py.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import zmq
from conftest import drain, go_ahead_program, read_output, start_go_ahead_run, wait_for, wait_gone
from scoop_transport_zmq.transport import ZmqTransport

from scoop_core import messages as m
from scoop_core import runtime
from scoop_core.broker import Broker
from scoop_core.serialization import CloudpickleSerializer

KEY = bytes(range(32))
WAIT = 20.0

FOREIGN = '''
"""Not part of the run: knows the broker's address, not its key."""
import hashlib, hmac, os, pickle, random, sys, time
import msgpack, zmq

address, mode, marker, stop = sys.argv[1:5]
url = address.partition("#")[0]
evil = pickle.dumps(type("Plant", (), {"__reduce__": lambda self: (open, (marker, "w"))})())
context = zmq.Context()


def dealer(identity):
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    sock.connect(url)
    return sock


def signed(head, payload, key):
    header = msgpack.packb(head, use_bin_type=True)
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (header, *payload):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return [header, *payload, mac.digest()]


def conversations():
    """What an attacker would send, framed as the core frames it, under macs nobody can check
    out: each list is sent over one connection, in order."""
    fid = 1 << 32 | 1
    for version in (1, 2):
        seal = [b"root", b"broker", os.urandom(16), 1]
        for sealed in ([], seal):
            hello = [version, 1, *sealed, "root", "root", 1, "host", 0]
            submit = [version, 3, *sealed, [[fid, 0, 1, 1]]]
            set_const = [version, 10, *sealed, "evil"]  # the broker would broadcast it
            header = msgpack.packb(submit, use_bin_type=True)
            yield [[header, evil, os.urandom(32)]]  # a random mac
            yield [[header, evil]]  # no mac at all
            yield [[header, evil, b""]]
            for key in (os.urandom(32), b""):  # a guessed key
                yield [signed(hello, [], key), signed(set_const, [evil], key), signed(submit, [evil], key)]
    yield [[evil]]


if mode == "each":  # every forgery from its own connection: the broker logs each one
    sent = 0
    for i, messages in enumerate(conversations()):
        sock = dealer(b"intruder-%d" % i)
        for frames in messages:
            sock.send_multipart(frames)
        sock.close()
        sent += 1
    print("SENT", sent, flush=True)
elif mode == "burst":  # many from one connection: logged once
    sock = dealer(b"flooder")
    for _ in range(10):
        for messages in conversations():
            for frames in messages:
                sock.send_multipart(frames)
    sock.close()
    print("SENT", flush=True)
else:  # flood until told to stop
    rng = random.Random(7)
    sock = dealer(b"flood")
    pool = [frames for messages in conversations() for frames in messages]
    sent = 0
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        if rng.random() < 0.3:
            frames = rng.choice(pool)
        else:
            frames = [rng.randbytes(rng.randrange(4096)) for _ in range(rng.randrange(1, 6))]
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            continue
        sent += 1
        if sent == 200:
            print("FLOODING", flush=True)
    sock.close()
    print("SENT", sent, flush=True)
context.term()
'''


class Records(logging.Handler):
    """The broker's log records, collected whatever the logging configuration."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def rejections(self, peer: bytes) -> list[str]:
        return [
            r.getMessage()
            for r in list(self.records)
            if r.levelno == logging.WARNING
            and "rejected" in r.getMessage()
            and repr(peer) in r.getMessage()
        ]


@pytest.fixture
def broker_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("scoop.broker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def foreign(tmp_path: Path, address: str, mode: str, marker: Path) -> subprocess.Popen[str]:
    script = tmp_path / "foreign.py"
    script.write_text(textwrap.dedent(FOREIGN))
    return subprocess.Popen(
        [sys.executable, str(script), address, mode, str(marker), str(tmp_path / "stop")],
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = WAIT) -> str:
    out, _ = drain(proc, timeout)
    assert proc.returncode == 0, f"the foreign process failed: {out}"
    return out


def in_thread(fn: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Run ``fn`` and fail, rather than hang, if it does not return in time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{what}: no answer within {timeout} s"
    if errors:
        raise errors[0]


PLAIN = {"curve": False}


def connect_root(address: str, name: str) -> runtime.RootRuntime:
    endpoint = ZmqTransport(PLAIN).connect(address, identity=name.encode())
    rt = runtime.RootRuntime(endpoint, key=KEY, serializer=CloudpickleSerializer(), name=name)
    rt.start(WAIT)
    return rt


def test_a_foreign_process_gets_nothing_unpickled_and_the_broker_keeps_serving(
    tmp_path: Path, broker_log: Records
) -> None:
    marker = tmp_path / "marker"
    broker = Broker(ZmqTransport(PLAIN), key=KEY, run_id="security")
    broker.start()
    roots: list[runtime.RootRuntime] = []
    try:
        # A legitimate peer, which would unpickle any constant the broker accepted.
        roots.append(connect_root(broker.address, "root"))

        out = finish(foreign(tmp_path, broker.address, "each", marker))
        sent = int(out.split()[1])
        for peer in [b"intruder-%d" % i for i in range(sent)]:
            wait_for(partial(broker_log.rejections, peer), f"the broker logging {peer!r}", WAIT)
        finish(foreign(tmp_path, broker.address, "burst", marker))
        wait_for(lambda: broker_log.rejections(b"flooder"), "the broker logging the flooder", WAIT)

        # Still serving: a request makes the round trip, and a new peer may join.
        in_thread(lambda: roots[0].set_const("answer", 42), "a shared constant after the attack")
        roots.append(connect_root(broker.address, "late"))
        assert roots[1].get_const("answer", WAIT) == 42
        assert not marker.exists(), "a forged pickle was unpickled"
    finally:
        for rt in roots:
            rt.close()
        broker.shutdown()
    assert not marker.exists(), "a forged pickle was unpickled"
    assert len(broker_log.rejections(b"flooder")) == 1, "a flood must not flood the log"
    intruders = [r.getMessage() for r in broker_log.records if "intruder" in r.getMessage()]
    assert len(intruders) == sent, "each stranger is logged once, and only once"
    # Refused by decode, before the broker's bookkeeping saw any of it.
    assert all(line.startswith("rejected a message") for line in intruders), intruders


def test_a_replayed_message_is_refused_over_the_real_transport(tmp_path: Path) -> None:
    # A message captured on the wire and sent again, even from a connection
    # that names itself after the sender, is refused; so is one passed off
    # as another peer's.
    transport = ZmqTransport(PLAIN)
    hub = transport.bind(run_id="replay")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        broker = m.Codec(KEY, m.BROKER_IDENTITY)
        worker = m.Codec(KEY, b"worker-1")
        endpoint = transport.connect(hub.address, identity=b"worker-1")
        captured = [bytes(memoryview(f)) for f in worker.encode(m.Ready(3))]
        endpoint.send(captured)
        got = hub.recv(WAIT)
        assert got is not None
        assert broker.decode(got[1], b"worker-1") == m.Ready(3)
        endpoint.close()

        for identity in (b"worker-1", b"worker-2"):
            replayer = context.socket(zmq.DEALER)
            replayer.setsockopt(zmq.LINGER, 0)
            replayer.setsockopt(zmq.IDENTITY, identity)
            replayer.connect(hub.address)
            replayer.send_multipart(captured)
            got = hub.recv(WAIT)
            assert got is not None and got[0] == identity
            with pytest.raises(m.ProtocolError, match="replayed"):
                broker.decode(got[1], got[0])
            replayer.close()
    finally:
        context.term()
        hub.close()


PROGRAM = go_ahead_program(50, 300)


def test_a_run_gives_the_right_answer_while_a_stranger_floods_its_broker(tmp_path: Path) -> None:
    run, program, go = start_go_ahead_run(tmp_path, PROGRAM, ["-vv", "-n", "2"])
    marker = tmp_path / "marker"
    flood: subprocess.Popen[str] | None = None
    out, err, readers = read_output(run)
    try:
        wait_for(lambda: any("peers dial" in line for line in err), "the broker's address", 60)
        [address] = re.findall(r"peers dial (\S+)", "".join(err))[:1]
        wait_for(lambda: "READY\n" in out, "the program's first map", 60)

        flood = foreign(tmp_path, address, "flood", marker)
        assert flood.stdout is not None
        assert flood.stdout.readline().strip() == "FLOODING"
        go.touch()
        run.wait(90)
        (tmp_path / "stop").touch()
        finish(flood)
        flood = None
    finally:
        (tmp_path / "stop").touch()
        for proc in (run, flood):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for reader in readers:
            reader.join(5)
    stderr = "".join(err)
    assert run.returncode == 0, stderr[-3000:]
    expected = (sum(x * x for x in range(50)), sum(x * x for x in range(300)))
    assert f"RESULT {expected[0]} {expected[1]}\n" in out, stderr[-3000:]
    assert not marker.exists(), "a forged pickle was unpickled"
    assert len(re.findall(r"rejected a message from peer b'flood'", stderr)) == 1
    assert wait_gone(str(program)) == []
