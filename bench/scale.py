"""How many workers one broker serves: thousands of simulated workers on one run.

    python bench/scale.py --quick                 # 200 and 1,000 workers, 200 Redis consumers
    python bench/scale.py                         # 1,000 and 10,000 workers, 1,000 consumers
    python bench/scale.py --workers 2000 --futures 50000 --consumers

A simulated worker is not an interpreter: it is one DEALER socket and one
:class:`~scoop_core.messages.Codec` of its own, thousands of them multiplexed
with a ``zmq.Poller`` in each of ``--processes`` processes. Each speaks the
real protocol to a real :class:`~scoop_core.broker.Broker`: a signed
``Hello`` (role worker, one slot), ``Ready`` for work, a ``Results`` of the
pickled value ``None`` for every future it is given, at once, and a
``Heartbeat`` whenever it has said nothing for the run's
``heartbeat_interval``, as a runtime does. A simulated root (one more
process, the same protocol) submits ``--futures`` futures once every worker
has joined, and waits for every result.

The broker runs alone in a child process, so that its CPU time and memory
(``/proc/<pid>/stat`` and ``status``) are the broker's and nothing else's:
its thread, the ZeroMQ I/O thread under it, and its interpreter. For each
number of workers this reports how long they took to join, the broker's CPU
per second while they sit idle (heartbeats only) divided by their number,
the futures per second and the broker's CPU per future, and the broker's
peak memory. The workers' own processes' CPU is shown beside it.

On Redis there is no broker process: every peer drives its own part of the
broker against the server (:mod:`scoop_core.store_driver`). ``--consumers``
simulated workers, each a real :class:`~scoop_core.store_driver.StoreEndpoint`
in a thread of one of ``--processes`` processes, join one run on a throw-away
``redis-server`` (bench/transports.py's, on a free loopback port, never
6379), and a root submits futures to the run's queue. The figures are the
server's CPU and memory, and the consumers' processes' CPU (their share of the
broker's work).

Every process started here is in a session of its own and is stopped at the
end, or killed with its group after a timeout. Exit status 1 if a simulated
worker failed its handshake or a future was lost (or any child failed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pickle
import platform
import resource
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KEY_ENV = "SCOOP_SCALE_KEY"  # the run's key reaches the children here, not on a command line
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CREDIT = 2  # futures a simulated worker asks for at once: a real worker's prefetch
BATCH = 1000  # futures per Submit from the simulated root
IN_FLIGHT = 20000  # futures the root keeps submitted and unanswered, at most
NONE = pickle.dumps(None)
CALL = pickle.dumps((abs, (-1,), {}))  # what a future carries; nobody unpickles it here


# -- what a process costs, from /proc --------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` (every thread) so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of process ``pid``."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found.get("VmRSS", 0.0), found.get("VmHWM", 0.0)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- children: one JSON line per report on stdout -----------------------------------------


def say(**report: Any) -> None:
    """A child's report to the benchmark: one JSON line."""
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


class Child:
    """A process of this benchmark (this file with ``--role``), in its own
    session; its reports are read with a timeout, and :meth:`stop` ends it."""

    def __init__(self, role: str, *args: str, key: bytes, stderr: Path) -> None:
        self.role = role
        self.stderr_path = stderr
        env = {**os.environ, KEY_ENV: key.hex()}
        self._err = stderr.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            start_new_session=True,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def report(self, timeout: float) -> dict[str, Any]:
        """The child's next report; RuntimeError after ``timeout`` s or if it exits first."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"{self.role} (pid {self.pid}) said nothing in {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                status = self.proc.wait()
                raise RuntimeError(f"{self.role} (pid {self.pid}) exited ({status}): {self.tail()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def tail(self) -> str:
        if not self._err.closed:
            self._err.flush()
        lines = self.stderr_path.read_bytes().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-4:]) or "no error output"

    def stop(self, timeout: float) -> bool:
        """Close its stdin (its cue to finish), wait up to ``timeout`` s, then
        kill its process group. True if it exited by itself with status 0."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        return status == 0


def stdin_closed() -> bool:
    """In a child: the benchmark closed our stdin (or wrote a line): time to finish."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def wait_for_stdin() -> None:
    with contextlib.suppress(OSError):
        sys.stdin.readline()


# -- the broker and its simulated peers (ZeroMQ) -------------------------------------


def serve_broker(args: argparse.Namespace, key: bytes) -> int:
    """Role ``broker``: a real Broker on ZeroMQ (ipc), until our stdin closes."""
    from scoop_transport_zmq.transport import ZmqTransport

    from scoop_core.broker import Broker

    if args.broker_files:
        # The hard limit too: a broker lifts its soft limit to the hard one.
        limit = args.broker_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    broker = Broker(
        ZmqTransport({}),
        key=key,
        run_id=f"scale-{os.getpid()}",
        local=True,
        expected_workers=args.expected,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    broker.start()
    say(address=broker.address, limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    wait_for_stdin()
    broker.shutdown()
    say(lost=sorted(broker.lost), files=open_files(os.getpid()))
    return 0


def answer(msg: Any) -> list[Any] | None:
    """What a simulated worker says to ``msg`` from the broker, as a worker
    with one slot would: every future it is given ends at once with the
    value ``None``, and it asks for as many more. None: a message a worker
    is never sent."""
    from scoop_core import messages as m

    if isinstance(msg, m.Tasks):
        outcomes = tuple(m.Outcome(t.fid, m.OK, 0.0, (NONE,)) for t in msg.tasks)
        return [m.Results(outcomes), m.Ready(len(outcomes))]
    if isinstance(msg, m.Welcome):
        return [m.Ready(CREDIT)]
    if isinstance(msg, m.Recall):
        # Asked back for an idle worker: it has run already, as all of ours have.
        return [m.RecallReply(msg.fid, False)]
    if isinstance(msg, m.Shutdown):
        return [m.Bye("shutdown")]
    if isinstance(msg, m.Heartbeat):
        return []
    return None


@dataclass(eq=False)
class SimWorker:
    """One simulated worker: a socket, a codec, and what it has done."""

    name: str
    sock: Any
    codec: Any
    last_sent: float = 0.0
    welcomed: bool = False
    done: bool = False
    answered: int = 0

    def send(self, msg: Any, now: float) -> None:
        self.sock.send_multipart(self.codec.encode(msg), copy=False)
        self.last_sent = now


def run_workers(args: argparse.Namespace, key: bytes) -> int:
    """Role ``workers``: ``--count`` simulated workers in this process."""
    import zmq

    from scoop_core import messages as m

    raise_file_limit()
    context = zmq.Context(io_threads=1)
    context.set(zmq.MAX_SOCKETS, args.count + 64)
    poller = zmq.Poller()
    by_socket: dict[Any, SimWorker] = {}
    start = time.monotonic()
    pid, host = os.getpid(), socket.gethostname()
    failed: list[str] = []
    for i in range(args.count):
        name = f"{args.prefix}{i}"
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        try:
            sock.connect(args.address)
        except zmq.ZMQError as exc:
            failed.append(f"{name}: {exc}")
            sock.close(linger=0)
            break
        worker = SimWorker(name, sock, m.Codec(key, name.encode()))
        worker.send(m.Hello(m.WORKER, name, pid, host, 1), start)
        by_socket[sock] = worker
        poller.register(sock, zmq.POLLIN)
    stdin = sys.stdin.fileno()  # the poller reports it by number
    poller.register(stdin, zmq.POLLIN)
    workers = list(by_socket.values())
    joined = 0
    reported = bool(failed)
    if failed:
        say(joined=0, seconds=0.0, failed=failed[:5], files=open_files(pid))
    interval = args.heartbeat_interval
    next_beat = start + interval / 4
    errors: list[str] = []
    # Until every worker the broker welcomed has been told to leave.
    while not reported or any(w.welcomed and not w.done for w in workers):
        events = poller.poll(max(0, int((next_beat - time.monotonic()) * 1000)) + 1)
        now = time.monotonic()
        for sock, _ in events:
            if sock == stdin:
                sys.stdin.readline()
                say(joined=joined, answered=sum(w.answered for w in workers), errors=errors[:5])
                return 1  # told to stop before the broker's shutdown
            worker = by_socket[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = worker.codec.decode(frames, m.BROKER_IDENTITY)
                except Exception as exc:
                    errors.append(f"{worker.name}: {exc}")
                    continue
                replies = answer(msg)
                if replies is None:
                    errors.append(f"{worker.name}: unexpected {type(msg).__name__}")
                    continue
                for reply in replies:
                    worker.send(reply, now)
                if isinstance(msg, m.Tasks):
                    worker.answered += len(msg.tasks)
                elif isinstance(msg, m.Welcome):
                    worker.welcomed = True
                    joined += 1
                elif isinstance(msg, m.Shutdown):
                    worker.done = True
                    poller.unregister(sock)
                    break
        if not reported and joined == len(workers):
            reported = True
            say(joined=joined, seconds=now - start, failed=[], files=open_files(pid))
        elif not reported and now - start > args.join_timeout:
            reported = True
            late = len(workers) - joined
            failed = [f"{late} of {len(workers)} not welcomed in {args.join_timeout:g} s"]
            say(joined=joined, seconds=now - start, failed=failed, files=open_files(pid))
        if now >= next_beat:
            next_beat = now + interval / 4
            for w in workers:
                if not w.done and now - w.last_sent >= interval:
                    w.send(m.Heartbeat(0), now)
    say(joined=joined, answered=sum(w.answered for w in workers), errors=errors[:5])
    for w in workers:
        w.sock.close()
    context.term()
    return 0 if not errors else 1


def run_root(args: argparse.Namespace, key: bytes) -> int:
    """Role ``root``: submit ``--futures`` futures through one endpoint and
    wait for all their results (on ZeroMQ, or on Redis with ``--redis``)."""
    from scoop_core import messages as m

    name = "root"
    codec = m.Codec(key, name.encode())
    endpoint = connect(args, key, name, expected_workers=args.expected)
    try:
        endpoint.send(codec.encode(m.Hello(m.ROOT, name, os.getpid(), socket.gethostname(), 0)))
        last_sent = time.monotonic()
        index = None
        deadline = time.monotonic() + args.join_timeout
        while index is None:
            if time.monotonic() > deadline:
                say(error=f"no Welcome in {args.join_timeout:g} s")
                return 1
            frames = endpoint.recv(1.0)
            if frames is not None:
                msg = codec.decode(frames, m.BROKER_IDENTITY)
                if isinstance(msg, m.Welcome):
                    index = msg.index
        say(welcomed=True)
        wait_for_stdin()  # the benchmark measures the idle broker first
        start = time.monotonic()
        submitted = 0
        pending: set[int] = set()
        errors: list[str] = []
        deadline = start + args.deadline
        while submitted < args.futures or pending:
            now = time.monotonic()
            if now > deadline:
                break
            if submitted < args.futures and len(pending) < IN_FLIGHT:
                count = min(BATCH, args.futures - submitted)
                fids = [(index << 32) | (submitted + i + 1) for i in range(count)]
                tasks = tuple(m.Task(fid, 0, 0, (CALL,)) for fid in fids)
                endpoint.send(codec.encode(m.Submit(tasks)))
                pending.update(fids)
                submitted += count
                last_sent = now
            elif now - last_sent >= args.heartbeat_interval:
                endpoint.send(codec.encode(m.Heartbeat(0)))
                last_sent = now
            frames = endpoint.recv(0 if submitted < args.futures else 0.5)
            while frames is not None:
                msg = codec.decode(frames, m.BROKER_IDENTITY)
                if isinstance(msg, m.Results):
                    for out in msg.outcomes:
                        if out.status != m.OK and len(errors) < 5:
                            errors.append(f"future {out.fid:#x}: {m.STATUS_NAMES[out.status]}")
                        pending.discard(out.fid)
                elif isinstance(msg, m.Shutdown):
                    errors.append(f"shut down: {msg.reason}")
                    deadline = 0
                frames = endpoint.recv(0)
        seconds = time.monotonic() - start
        say(futures=submitted, seconds=seconds, lost=len(pending), errors=errors)
        endpoint.send(codec.encode(m.Bye("done")))
        return 0 if not pending and not errors else 1
    finally:
        endpoint.close()


def connect(args: argparse.Namespace, key: bytes, name: str, expected_workers: int = 0) -> Any:
    """The endpoint a peer of the run speaks through: a ZeroMQ DEALER to the
    broker, or on Redis a StoreEndpoint that is this peer's part of the broker."""
    if not args.redis:
        from scoop_transport_zmq.transport import ZmqTransport

        return ZmqTransport({}).connect(args.address, identity=name.encode(), key=key)
    from scoop_transport_redis.transport import RedisTransport

    from scoop_core.store_driver import StoreEndpoint

    return StoreEndpoint(
        RedisTransport({}).open_store(address=args.address, identity=name),
        key=key,
        name=name,
        root="root",
        expected_workers=expected_workers,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        launcher_alive=lambda: True,
    )


def raise_file_limit() -> None:
    """Our simulated peers hold two descriptors each (a socket and its
    mailbox): take all the descriptors we may. The broker does not: its
    limit is the one a launcher would have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- simulated consumers of a Redis run ------------------------------------------------


def run_consumers(args: argparse.Namespace, key: bytes) -> int:
    """Role ``consumers``: ``--count`` simulated workers, each a StoreEndpoint
    driven by a thread of its own (a store's endpoint blocks in its reads)."""
    from scoop_core import messages as m

    raise_file_limit()
    stop = threading.Event()
    lock = threading.Lock()
    tally = {"joined": 0, "answered": 0}
    errors: list[str] = []
    pid, host = os.getpid(), socket.gethostname()

    def consume(name: str) -> None:
        codec = m.Codec(key, name.encode())
        try:
            endpoint = connect(args, key, name)
        except Exception as exc:
            with lock:
                errors.append(f"{name}: {exc}")
            return
        try:
            endpoint.send(codec.encode(m.Hello(m.WORKER, name, pid, host, 1)))
            while not stop.is_set():
                frames = endpoint.recv(1.0)
                if frames is None:
                    continue
                msg = codec.decode(frames, m.BROKER_IDENTITY)
                replies = answer(msg)
                if replies is None:
                    raise RuntimeError(f"unexpected {type(msg).__name__}")
                for reply in replies:
                    endpoint.send(codec.encode(reply))
                with lock:
                    if isinstance(msg, m.Tasks):
                        tally["answered"] += len(msg.tasks)
                    elif isinstance(msg, m.Welcome):
                        tally["joined"] += 1
                if isinstance(msg, m.Shutdown):
                    return
        except Exception as exc:
            with lock:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            endpoint.close()

    start = time.monotonic()
    threads = [
        threading.Thread(target=consume, args=(f"{args.prefix}{i}",), daemon=True)
        for i in range(args.count)
    ]
    for t in threads:
        t.start()
    deadline = start + args.join_timeout
    while tally["joined"] + len(errors) < args.count and time.monotonic() < deadline:
        if stdin_closed():
            break
        time.sleep(0.05)  # polling a counter of threads, for the report
    late = args.count - tally["joined"]
    failed = [f"{late} of {args.count} not welcomed in {args.join_timeout:g} s"] if late else []
    say(joined=tally["joined"], seconds=time.monotonic() - start, failed=errors[:5] + failed)
    while any(t.is_alive() for t in threads) and not stdin_closed():
        time.sleep(0.1)  # the threads end at the run's Shutdown
    stop.set()
    for t in threads:
        t.join(10)
    say(answered=tally["answered"], errors=errors[:5])
    return 0 if not errors else 1


# -- the measurements ---------------------------------------------------------------------


@dataclass
class Row:
    transport: str
    peers: int
    futures: int = 0
    joined: int = 0
    join_s: float | None = None
    idle_cpu_per_peer_us: float | None = None  # server (broker) CPU, microseconds/s per peer
    peer_idle_cpu_per_peer_us: float | None = None  # the simulated peers' own
    futures_per_s: float | None = None
    cpu_per_future_us: float | None = None
    server_cpu_s: float | None = None
    peak_mib: float | None = None
    files: int | None = None
    failures: list[str] = field(default_factory=list)


class Stopwatch:
    """CPU seconds of some processes between two readings."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.cpu = [cpu_seconds(p) for p in pids]

    def lap(self) -> tuple[float, list[float]]:
        """(seconds, CPU seconds of each process) since the start."""
        cpu = [cpu_seconds(p) - c for p, c in zip(self.pids, self.cpu, strict=True)]
        return time.monotonic() - self.start, cpu


def common(args: argparse.Namespace) -> list[str]:
    return [
        "--heartbeat-interval",
        str(args.heartbeat_interval),
        "--heartbeat-timeout",
        str(args.heartbeat_timeout),
        "--join-timeout",
        str(args.join_timeout),
        "--deadline",
        str(args.deadline),
    ]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.contextmanager
def children(row: Row) -> Iterator[list[Child]]:
    """The children of one measurement, all stopped at the end, whatever
    happens. One that dies or hangs ends the measurement, and ``row`` says
    which (those that died first: the cause), and why."""
    started: list[Child] = []
    try:
        yield started
    except RuntimeError as exc:
        dead = [c for c in started if c.proc.poll() not in (None, 0)]
        row.failures[:0] = [f"{c.role} died ({c.proc.returncode}): {c.tail()}" for c in dead]
        row.failures.append(str(exc))
    finally:
        for child in reversed(started):
            if child.proc.poll() is None:
                child.stop(15)


def start_peers(
    started: list[Child], role: str, n: int, args: argparse.Namespace, extra: list[str], key: bytes
) -> list[Child]:
    """``n`` simulated peers in ``--processes`` processes of ``role``."""
    sims = []
    for p, count in enumerate(split(n, args.processes)):
        prefix = f"{role[0]}{p}-"
        err = args.logs / f"{role}-{n}-{p}.err"
        sim = Child(role, "--count", str(count), "--prefix", prefix, *extra, key=key, stderr=err)
        started.append(sim)
        sims.append(sim)
    return sims


def join(row: Row, sims: list[Child], start: float, args: argparse.Namespace) -> bool:
    """Wait for the peers to join; False if none did. Those that did not
    are failures, but the others are measured all the same: how far a run
    gets is the finding."""
    for sim in sims:
        report = sim.report(args.join_timeout + 30)
        row.joined += report["joined"]
        row.failures += report["failed"]
    row.join_s = time.monotonic() - start
    return row.joined > 0


def measure_zmq(args: argparse.Namespace, n: int, key: bytes, logs: Path) -> Row:
    row = Row("zmq", n, args.futures)
    with children(row) as started:
        err = logs / f"broker-{n}.err"
        limit = ["--broker-files", str(args.broker_files)] if args.broker_files else []
        broker = Child("broker", "--expected", str(n), *limit, *common(args), key=key, stderr=err)
        started.append(broker)
        ready = broker.report(30)
        address = ready["address"]
        progress(f"zmq, {n} workers: broker {broker.pid} at {address}, file limit {ready['limit']}")
        start = time.monotonic()
        extra = ["--address", address, *common(args)]
        sims = start_peers(started, "workers", n, args, extra, key)
        joined = join(row, sims, start, args)
        row.files = open_files(broker.pid)
        progress(f"  {row.joined} joined in {row.join_s:.2f} s; broker holds {row.files} files")
        if not joined:
            return row
        err = logs / f"root-{n}.err"
        root = Child("root", "--futures", str(args.futures), *extra, key=key, stderr=err)
        started.append(root)
        root.report(args.join_timeout + 30)
        idle(args, row, broker.pid, [s.pid for s in sims])
        run_futures(args, row, root, broker.pid)
        broker.tell("stop")
        closing = broker.report(60)
        row.failures += [f"the broker counted {p} as lost" for p in closing["lost"]]
        finish_peers(row, sims)
        if not root.stop(30):
            row.failures.append(f"root failed: {root.tail()}")
        if not broker.stop(30):
            row.failures.append(f"broker failed: {broker.tail()}")
    return row


def finish_peers(row: Row, sims: list[Child]) -> None:
    """Their last reports, once the run told them to leave, and their exit."""
    for sim in sims:
        row.failures += sim.report(60)["errors"]
        if not sim.stop(30):
            row.failures.append(f"{sim.role} process {sim.pid} failed: {sim.tail()}")


def idle(args: argparse.Namespace, row: Row, server: int, peers: list[int]) -> None:
    """The server's and the peers' CPU per second per peer, with every peer
    joined and no future: the price of heartbeats (and, on a store, of every
    peer's share of the broker's duties)."""
    watch = Stopwatch([server, *peers])
    time.sleep(args.idle)  # the measurement itself: CPU spent doing nothing else
    seconds, cpu = watch.lap()
    row.idle_cpu_per_peer_us = cpu[0] / seconds / row.joined * 1e6
    row.peer_idle_cpu_per_peer_us = sum(cpu[1:]) / seconds / row.joined * 1e6
    progress(f"  idle {seconds:.1f} s: server {cpu[0]:.2f} CPU s, peers {sum(cpu[1:]):.2f} CPU s")


def run_futures(args: argparse.Namespace, row: Row, root: Child, server: int) -> None:
    watch = Stopwatch([server])
    root.tell("go")
    done = root.report(args.deadline + 60)
    _, cpu = watch.lap()
    row.server_cpu_s = cpu[0]
    row.peak_mib = memory_mib(server)[1]
    if done.get("lost"):
        row.failures.append(f"{done['lost']} of {done['futures']} futures lost")
    row.failures += done.get("errors", [])
    if done.get("seconds"):
        # Futures that came back: those lost at the deadline count for nothing.
        answered = done["futures"] - done.get("lost", 0)
        row.futures_per_s = answered / done["seconds"]
        row.cpu_per_future_us = cpu[0] / answered * 1e6 if answered else None
    progress(
        f"  {done.get('futures')} futures in {done.get('seconds', 0):.2f} s, "
        f"server {cpu[0]:.2f} CPU s"
    )


def measure_redis(args: argparse.Namespace, n: int, key: bytes, logs: Path) -> Row:
    from scoop_transport_redis.transport import RedisTransport
    from transports import RedisServer

    from scoop_core import messages as m
    from scoop_core.store_driver import tell_everyone
    from scoop_core.store_records import LAUNCHER

    row = Row("redis", n, args.redis_futures)
    server = RedisServer(args.redis_server)
    server.start()
    store = None
    try:
        settings = {"url": server.url, "prefix": f"scale{os.getpid()}"}
        store = RedisTransport(settings).open_store(run_id=f"scale-{n}", identity=LAUNCHER)
        assert server.proc is not None
        pid = server.proc.pid
        progress(f"redis, {n} consumers: redis-server {server.version()} pid {pid}")
        extra = ["--redis", "--address", store.address, *common(args)]
        with children(row) as started:
            start = time.monotonic()
            sims = start_peers(started, "consumers", n, args, extra, key)
            joined = join(row, sims, start, args)
            row.files = open_files(pid)
            progress(f"  {row.joined} joined in {row.join_s:.2f} s")
            if not joined:
                return row
            futures = ["--futures", str(args.redis_futures), "--expected", str(n)]
            err = logs / f"redis-root-{n}.err"
            root = Child("root", *futures, *extra, key=key, stderr=err)
            started.append(root)
            root.report(args.join_timeout + 30)
            idle(args, row, pid, [s.pid for s in sims])
            run_futures(args, row, root, pid)
            if not root.stop(30):
                row.failures.append(f"root failed: {root.tail()}")
            tell_everyone(store, m.Codec(key, LAUNCHER.encode()), "the run is over", wait=30)
            finish_peers(row, sims)
    finally:
        if store is not None:
            store.close(end_run=True)
        server.close()
    return row


# -- the report ----------------------------------------------------------------------------


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


HEAD = [
    "transport",
    "peers",
    "joined",
    "join (s)",
    "server idle CPU per peer (us/s)",
    "peers' own idle CPU per peer (us/s)",
    "futures",
    "futures/s",
    "server CPU per future (us)",
    "server CPU (s)",
    "server peak RSS (MiB)",
    "server descriptors",
    "failures",
]


def table(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * (len(HEAD) - 2) + "---|"]
    for r in rows:
        cells = [
            r.transport,
            f"{r.peers:,}",
            f"{r.joined:,}",
            number(r.join_s, 2),
            number(r.idle_cpu_per_peer_us, 1),
            number(r.peer_idle_cpu_per_peer_us, 1),
            f"{r.futures:,}",
            number(r.futures_per_s),
            number(r.cpu_per_future_us, 1),
            number(r.server_cpu_s, 2),
            number(r.peak_mib, 1),
            number(r.files),
            "; ".join(r.failures[:3]) or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 and 1,000 workers, 200 consumers")
    p.add_argument("--workers", type=int, nargs="*", help="simulated workers per broker run")
    p.add_argument("--futures", type=int, help="futures per broker run (default 100,000)")
    p.add_argument("--consumers", type=int, nargs="*", help="simulated consumers per Redis run")
    p.add_argument("--redis-futures", type=int, help="futures per Redis run (default 20,000)")
    p.add_argument("--processes", type=int, default=2, help="processes of simulated peers")
    p.add_argument("--idle", type=float, help="seconds of idle measurement (default 3 intervals)")
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument(
        "--broker-files",
        type=int,
        help="the broker's hard limit of open files (default: this process's; 1024 is "
        "common as a soft limit, which a broker lifts, and on some machines as a hard one)",
    )
    p.add_argument("--json", type=Path, help="write the rows here too")
    p.add_argument("--heartbeat-interval", type=float, default=5.0)
    p.add_argument("--heartbeat-timeout", type=float, default=30.0)
    p.add_argument("--join-timeout", type=float, default=120.0)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds a root may take")
    # The parts this file plays in its children.
    p.add_argument("--role", choices=["broker", "workers", "root", "consumers"])
    p.add_argument("--address", default="")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--prefix", default="w-")
    p.add_argument("--expected", type=int, default=0)
    p.add_argument("--redis", action="store_true")
    args = p.parse_args(argv)
    quick = args.quick
    if args.workers is None:
        args.workers = [200, 1000] if quick else [1000, 10000]
    if args.consumers is None:
        args.consumers = [200] if quick else [1000]
    if args.futures is None:
        args.futures = 20000 if quick else 100000
    if args.redis_futures is None:
        args.redis_futures = 5000 if quick else 20000
    if args.idle is None:
        args.idle = 3 * args.heartbeat_interval
    return args


ROLES = {
    "broker": serve_broker,
    "workers": run_workers,
    "root": run_root,
    "consumers": run_consumers,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return ROLES[args.role](args, bytes.fromhex(os.environ[KEY_ENV]))
    key = secrets.token_bytes(32)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"scoop-scale-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    args.logs = logs
    rows: list[Row] = []
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that children are stopped
    for n in args.workers:
        rows.append(measure_zmq(args, n, key, logs))
    for n in args.consumers:
        rows.append(measure_redis(args, n, key, logs))
    print(
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {args.processes} processes of simulated peers, "
        f"heartbeat every {args.heartbeat_interval:g} s, in {time.monotonic() - started:.0f} s "
        f"(children's output in {logs})\n"
    )
    print("\n".join(table(rows)))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    if any(r.failures for r in rows):
        return 1
    shutil.rmtree(logs, ignore_errors=True)  # kept only to explain a failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
