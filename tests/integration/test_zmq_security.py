"""A stranger on the broker's socket, during a real run: it takes no name and costs no memory.

A *stranger* is a separate process with a plain pyzmq DEALER socket and no
run key. It knows the broker's address (the launcher logs it) and connects
under the names of the run's peers, ``root`` and ``worker-1``, each name
from its own connection, the way a ROUTER with handover once let anyone
take a name over and read that peer's traffic. It sends a forged ``Hello``
under each name, then listens. Whatever it does:

- it reads nothing, not one message;
- the run finishes with the right results and exit status 0 (before, the
  real root was never heard from again and the run died 30 s later);
- the broker says what it refused, once.

The runs: a run on one machine (``-n 2``: an ipc socket in a private
directory, which a process of the same user, like this stranger, may
still open: the names are what is tested there); a ``--hosts`` run, whose
broker listens on every interface with CurveZMQ, started through an
rsh stand-in that runs the "remote" command here, so no sshd is needed;
and the same ``--hosts`` run with Curve turned off, where only the binding
of names to connections stands between the stranger and the run.

Then the broker's edge itself, driven by peers that hold the key: a live
peer's name cannot be taken by a second connection even so, a replayed
``Hello`` is refused, a peer whose connection broke keeps its name, and a
name is free again once its peer has left.

Then what a run on one machine promises other users: its socket is in a
directory only its user may enter, there is no TCP port, and the directory
is gone when the run ends. And the memory a stranger can make the broker
spend: frames over ``max_message_size`` are refused by libzmq before they
are buffered, so the launcher's peak memory hardly moves.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import drain, go_ahead_program, read_output, start_go_ahead_run, wait_for, wait_gone
from scoop_transport_zmq.transport import ZmqTransport

from scoop_core import messages as m
from scoop_core.broker import Broker
from scoop_core.errors import ProtocolError

WAIT = 60.0

PROGRAM = go_ahead_program(100, 500)

EXPECTED = f"RESULT {sum(x * x for x in range(100))} {sum(x * x for x in range(500))}"

STRANGER = '''
"""Not part of the run: knows the broker's address, not its key."""
import os, sys, time
import msgpack, zmq
from zmq.utils import z85
from scoop_core.messages import PROTOCOL_VERSION

address, names, stop = sys.argv[1:4]
url, _, server_key = address.partition("#curve=")
context = zmq.Context()
sockets = []
for name in names.split(","):
    for curve in ([False, True] if server_key else [False]):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, name.encode())  # the name it would take over
        sock.setsockopt(zmq.LINGER, 0)
        if curve:  # the server's public key is in the address; its own keys are made up
            public, secret = zmq.curve_keypair()
            sock.setsockopt(zmq.CURVE_SERVERKEY, z85.encode(bytes.fromhex(server_key)))
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.connect(url)
        header = msgpack.packb(
            [PROTOCOL_VERSION, 1, name.encode(), b"broker", os.urandom(16), 1, "root", name, os.getpid(), "h", 1],
            use_bin_type=True,
        )
        sock.send_multipart([header, os.urandom(32)])  # a Hello under a mac nobody can check
        sockets.append(sock)
print("SENT", flush=True)
poller = zmq.Poller()
for sock in sockets:
    poller.register(sock, zmq.POLLIN)
messages = size = 0
deadline = time.monotonic() + 150
while not os.path.exists(stop) and time.monotonic() < deadline:
    for sock, _ in poller.poll(50):
        frames = sock.recv_multipart()
        messages += 1
        size += sum(len(f) for f in frames)
print("READ", messages, size, flush=True)
for sock in sockets:
    sock.close()
context.term()
'''

FLOODER = '''
"""Not part of the run: sends frames over the broker's limit, and times each disconnect."""
import sys, time
import zmq

address, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
context = zmq.Context()
sock = context.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
sock.connect(address.partition("#")[0])
big = bytearray(size)
for _ in range(count):
    start = time.monotonic()
    sock.send_multipart([b"header", big], copy=False)
    if monitor.poll(15000):  # the broker hung up: the frame was refused
        monitor.recv_multipart()
        print("DROPPED", f"{time.monotonic() - start:.3f}", flush=True)
    else:
        print("KEPT", flush=True)
sock.disable_monitor()
monitor.close()
sock.close()
context.term()
print("DONE", flush=True)
'''

RSH = """#!/bin/sh
# An rsh stand-in: "rsh host command" runs the command on this machine.
shift
exec /bin/sh -c "$1"
"""


class Run:
    """``python -m scoop -v FLAGS prog.py GO``, its output read as it comes."""

    def __init__(self, tmp_path: Path, flags: list[str], env: dict[str, str]) -> None:
        self.proc, self.program, self.go = start_go_ahead_run(
            tmp_path, PROGRAM, ["-v", *flags], env
        )
        self.out, self.err, self._readers = read_output(self.proc)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def logged(self, text: str) -> bool:
        """Whether the launcher has logged ``text`` so far."""
        return text in self.stderr

    def address(self) -> str:
        wait_for(
            lambda: "broker at " in self.stderr, "the launcher logging the broker's address", WAIT
        )
        found = re.search(r"broker at (\S+), \d+ worker", self.stderr)
        assert found, self.stderr
        return found.group(1)

    def ready(self) -> str:
        """Waits for the program's first map; the broker's address."""
        wait_for(
            lambda: "READY\n" in self.out, f"the program's first map\n{self.stderr[-2000:]}", WAIT
        )
        return self.address()

    def finish(self, timeout: float = 90) -> float:
        """Let the program go on; the seconds until the run exited."""
        start = time.monotonic()
        self.go.touch()
        self.proc.wait(timeout)
        elapsed = time.monotonic() - start
        for reader in self._readers:
            reader.join(10)
        return elapsed

    def check_result(self) -> None:
        """The run ended with status 0 and the program's right result."""
        assert self.proc.returncode == 0, self.stderr[-3000:]
        assert f"{EXPECTED}\n" in self.out, self.stderr[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(flags: list[str], env: dict[str, str] | None = None) -> Run:
        runs.append(Run(tmp_path, flags, env or {}))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()
        assert wait_gone(str(run.program)) == [], "processes of the run were left running"


def helper(tmp_path: Path, source: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"helper-{len(list(tmp_path.glob('helper-*')))}.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True)


def rsh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    rsh = tmp_path / "rsh"
    rsh.write_text(RSH)
    rsh.chmod(0o755)
    return {"SCOOP_LAUNCHER_SSH_SSH_EXECUTABLE": str(rsh), **extra}


RUNS: dict[str, tuple[list[str], Callable[[Path], dict[str, str]], str]] = {
    # name: (flags, environment maker, what the broker logs about the stranger)
    "one-machine": (["-n", "2"], lambda tmp: {}, "rejected a message from peer b'{name}'"),
    "hosts-curve": (
        ["--hosts", "h1", "h1", "h1"],
        rsh_env,
        "refused a connection from ",
    ),
    "hosts-plain-tcp": (
        ["--hosts", "h1", "h1", "h1"],
        lambda tmp: rsh_env(tmp, SCOOP_TRANSPORT_ZMQ_CURVE="false"),
        "rejected a message from peer b'{name}'",
    ),
}


@pytest.mark.parametrize("kind", RUNS)
def test_a_stranger_under_a_peers_name_reads_nothing_and_the_run_finishes(
    tmp_path: Path, start_run: Callable[..., Run], kind: str
) -> None:
    flags, make_env, logged = RUNS[kind]
    run = start_run(flags, make_env(tmp_path))
    address = run.address()
    if kind == "one-machine":
        assert address.startswith("ipc://"), address
    else:
        assert address.startswith("tcp://") and ("#curve=" in address) == (kind == "hosts-curve")
    assert run.ready() == address

    stop = tmp_path / "stop"
    stranger = helper(tmp_path, STRANGER, address, "root,worker-1", str(stop))
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "SENT"
        for line in [logged.format(name=name) for name in ("root", "worker-1")]:
            wait_for(partial(run.logged, line), f"the broker refusing {line!r}", WAIT)
        took = run.finish()
        stop.touch()
        out, _ = stranger.communicate(timeout=WAIT)
    finally:
        stop.touch()
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait(5)
    run.check_result()
    stderr = run.stderr
    assert "READ 0 0" in out, f"the stranger read the run's traffic: {out}"
    # Well within the 30 s heartbeat timeout that ended such runs before.
    assert took < 20, f"the run's second map took {took:.1f} s"
    if logged.startswith("rejected"):
        for name in ("root", "worker-1"):
            assert stderr.count(logged.format(name=name)) == 1, "a stranger is logged once"
    print(f"{kind}: stranger read nothing, run exit 0, second map {took:.2f} s")


def _listening_tcp_inodes(pid: int) -> set[str]:
    """Inodes of the TCP sockets in LISTEN state that process ``pid`` holds."""
    listening = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)
            listening |= {row.split()[9] for row in rows if row.split()[3] == "0A"}
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[len("socket:[") : -1])
    return listening & held


def test_a_run_on_one_machine_listens_where_only_its_user_can_reach(
    tmp_path: Path, start_run: Callable[..., Run]
) -> None:
    run = start_run(["-n", "2"])
    address = run.ready()
    path = Path(address.removeprefix("ipc://"))
    directory = path.parent
    info = directory.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == os.getuid()
    assert stat.S_ISSOCK(path.stat().st_mode)
    # The launcher, where the broker runs, listens on no TCP port at all.
    assert _listening_tcp_inodes(run.proc.pid) == set()
    if os.geteuid() == 0:
        # Another user cannot even reach the socket: the directory stops it.
        # An interpreter that user may run (this virtualenv may be in root's home).
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        probe = subprocess.run(
            [
                python,
                "-c",
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('DENIED')\n"
                "else:\n    print('CONNECTED')\n",
                str(path),
            ],
            user="nobody",
            cwd="/",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert probe.stdout.strip() == "DENIED", probe
    assert run.finish() < 20
    run.check_result()
    assert not directory.exists(), "the run left its socket's directory behind"


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of process ``pid``, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


def test_frames_over_the_limit_from_a_stranger_cost_the_broker_no_memory(
    tmp_path: Path, start_run: Callable[..., Run]
) -> None:
    # The default max_message_size, 256 MiB, and 400 MB frames: what grew a
    # broker to 429 MB before libzmq was told the limit.
    run = start_run(["-n", "2"])
    address = run.ready()
    before = _memory(run.proc.pid)
    count, size = 3, 400_000_000
    flooder = helper(tmp_path, FLOODER, address, str(size), str(count))
    out, _ = drain(flooder, WAIT)
    after = _memory(run.proc.pid)
    grown = after["VmHWM"] - before["VmHWM"]
    assert grown < 32 << 20, f"the launcher's peak memory grew by {grown >> 20} MiB: {after}"
    drops = [float(line.split()[1]) for line in out.splitlines() if line.startswith("DROPPED")]
    assert len(drops) == count and "DONE" in out, out
    took = run.finish()
    run.check_result()
    print(
        f"launcher VmRSS {before['VmRSS'] >> 20} -> {after['VmRSS'] >> 20} MiB, "
        f"peak {before['VmHWM'] >> 20} -> {after['VmHWM'] >> 20} MiB; "
        f"{count} frames of {size} bytes each dropped within {max(drops):.3f} s; "
        f"run finished {took:.2f} s after"
    )


# -- the broker's edge, with peers that hold the key ------------------------------------

KEY = bytes(range(32))


class Peer:
    """A peer of the run as its runtime would be: an endpoint and a codec with the key."""

    def __init__(self, address: str, name: str) -> None:
        self.address = address
        self.name = name
        self.codec = m.Codec(KEY, name.encode())
        self.endpoint = self._connect()

    def _connect(self) -> Any:
        return ZmqTransport({}).connect(self.address, identity=self.name.encode(), key=KEY)

    def reconnect(self) -> None:
        """A new connection, the same process (session) behind it."""
        self.endpoint.close()
        self.endpoint = self._connect()

    def send(self, msg: m.Message) -> None:
        self.endpoint.send(self.codec.encode(msg))

    def hello(self) -> None:
        self.send(m.Hello(m.ROOT, self.name, os.getpid(), "here", 0))

    def join(self) -> m.Welcome:
        """Say hello and be welcomed."""
        self.hello()
        welcome = self.expect(m.Welcome)
        assert isinstance(welcome, m.Welcome)
        return welcome

    def recv(self, timeout: float) -> m.Message | None:
        """The next message from the broker, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frames = self.endpoint.recv(left)
            if frames is not None:
                msg = self.codec.decode(frames, m.BROKER_IDENTITY)
                if not isinstance(msg, m.Heartbeat):
                    return msg
        return None

    def recv_frames(self, timeout: float) -> list[bytes]:
        """The frames of the broker's next message that is not a heartbeat, unread."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frames = self.endpoint.recv(left)
            if frames is not None:
                wire = [bytes(memoryview(getattr(f, "buffer", f))) for f in frames]
                if msgpack.unpackb(wire[0])[1] != m.Heartbeat.KIND:
                    return wire
        raise AssertionError(f"{self.name} got nothing from the broker in {timeout} s")

    def expect(self, kind: type[m.Message]) -> m.Message:
        msg = self.recv(WAIT)
        assert isinstance(msg, kind), f"{self.name} expected a {kind.__name__}, got {msg!r}"
        return msg


class BrokerLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


@pytest.fixture
def broker() -> Iterator[tuple[Broker, BrokerLog]]:
    handler = BrokerLog()
    logger = logging.getLogger("scoop.broker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    running = Broker(ZmqTransport({}), key=KEY, run_id="edge", local=True)
    running.start()
    try:
        yield running, handler
    finally:
        running.shutdown()
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def broker_log(broker: tuple[Broker, BrokerLog]) -> BrokerLog:
    return broker[1]


@pytest.fixture
def peers(broker: tuple[Broker, BrokerLog]) -> Iterator[Callable[..., Peer]]:
    """Makes a peer of the broker under a name, with the run's key; one made
    with ``join=True`` has said hello and been welcomed."""
    made: list[Peer] = []

    def make(name: str, join: bool = False) -> Peer:
        made.append(Peer(broker[0].address, name))
        if join:
            made[-1].join()
        return made[-1]

    yield make
    for peer in made:
        peer.endpoint.close()


def test_a_second_connection_cannot_take_a_live_name_even_with_the_key(
    broker_log: BrokerLog, peers: Callable[..., Peer]
) -> None:
    root = peers("root", join=True)
    impostor = peers("root")  # another process: the key, the name, its own session
    impostor.hello()
    impostor.send(m.SetConst("stolen", (b"x",)))
    wait_for(
        lambda: broker_log.count("is connected already") > 0,
        "the broker refusing the impostor",
        WAIT,
    )
    # The real root is served as before; a constant it defines reaches a
    # peer that joins later, never the impostor.
    root.send(m.SetConst("answer", (b"42",)))
    assert root.expect(m.ConstReply) == m.ConstReply("answer", "")
    late = peers("late")
    welcome = late.join()
    assert [c.name for c in welcome.constants] == ["answer"]
    assert impostor.recv(0.5) is None, "the impostor was sent something"
    assert broker_log.count("is connected already") == 1, "refused, and logged once"


def test_a_replayed_hello_on_another_connection_is_refused(
    broker_log: BrokerLog, peers: Callable[..., Peer]
) -> None:
    root = peers("root")
    captured = [bytes(memoryview(f)) for f in root.codec.encode(m.Hello(m.ROOT, "root", 1, "h", 0))]
    root.endpoint.send(captured)
    root.expect(m.Welcome)
    replayer = peers("root")
    replayer.endpoint.send(captured)
    wait_for(lambda: broker_log.count("replayed") > 0, "the broker refusing the replay", WAIT)
    assert replayer.recv(0.5) is None
    root.send(m.SetConst("still", (b"here",)))
    assert root.expect(m.ConstReply) == m.ConstReply("still", "")


def test_a_peer_whose_connection_broke_keeps_its_name(
    broker_log: BrokerLog, peers: Callable[..., Peer]
) -> None:
    root = peers("root", join=True)
    root.reconnect()  # a new connection id at the hub, the same session
    root.send(m.SetConst("after", (b"reconnecting",)))
    assert root.expect(m.ConstReply) == m.ConstReply("after", "")
    assert broker_log.count("root reconnected") == 1


def test_a_name_is_free_again_once_its_peer_has_left(
    broker: tuple[Broker, BrokerLog], peers: Callable[..., Peer]
) -> None:
    first = peers("root", join=True)
    first.send(m.Bye("done"))
    running, _ = broker
    wait_for(lambda: b"root" not in running.book.peers, "the broker seeing the goodbye", WAIT)
    second = peers("root")  # a new process of the same name
    second.join()
    # The first one's session has ended: its messages are refused.
    first.send(m.SetConst("late", (b"x",)))
    assert first.recv(0.5) is None


ARRAY = bytes(range(256)) * (m.DIGEST_THRESHOLD // 64)
"""A payload large enough to be signed by its digest, and relayed by the broker unread."""


def _altered(frames: list[bytes], index: int) -> list[bytes]:
    """``frames`` with one bit of frame ``index`` flipped, in its middle."""
    changed = bytearray(frames[index])
    changed[len(changed) // 2] ^= 1
    return [*frames[:index], bytes(changed), *frames[index + 1 :]]


def test_a_large_payload_altered_on_its_way_is_refused_by_the_worker_that_reads_it(
    broker_log: BrokerLog, peers: Callable[..., Peer]
) -> None:
    worker = peers("worker-1")
    worker.send(m.Hello(m.WORKER, "worker-1", os.getpid(), "here", 2))
    worker.expect(m.Welcome)
    worker.send(m.Ready(2))
    root = peers("root")
    fid = root.join().index << 32
    # Altered between the root and the broker: the broker checks the header
    # and the digests, not the payload, so it passes it on; the worker refuses it.
    sent = root.codec.encode(m.Submit((m.Task(fid + 1, 0, 1, (b"call", ARRAY)),)))
    root.endpoint.send(_altered([bytes(memoryview(f)) for f in sent], 2))
    with pytest.raises(ProtocolError, match="bad payload digest.*altered"):
        worker.codec.decode(worker.recv_frames(WAIT), m.BROKER_IDENTITY)
    assert broker_log.count("rejected") == 0, "the broker read the payload"
    # Altered between the broker and the worker: refused too; as it came, read.
    root.send(m.Submit((m.Task(fid + 2, 0, 1, (b"call", ARRAY)),)))
    frames = worker.recv_frames(WAIT)
    with pytest.raises(ProtocolError, match="bad payload digest.*altered"):
        worker.codec.decode(_altered(frames, 2), m.BROKER_IDENTITY)
    tasks = worker.codec.decode(frames, m.BROKER_IDENTITY)
    assert isinstance(tasks, m.Tasks)
    assert [(t.fid, [bytes(f) for f in t.frames]) for t in tasks.tasks] == [
        (fid + 2, [b"call", ARRAY])
    ]
    # A digest altered anywhere is a bad mac: the broker refuses it, as any forgery.
    forged = root.codec.encode(m.Submit((m.Task(fid + 3, 0, 1, (b"call", ARRAY)),)))
    root.endpoint.send(_altered([bytes(memoryview(f)) for f in forged], 3))
    wait_for(lambda: broker_log.count("bad or missing HMAC") == 1, "the broker refusing it", WAIT)
