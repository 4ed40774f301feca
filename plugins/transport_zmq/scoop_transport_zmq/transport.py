"""The ZeroMQ transport: a ROUTER socket for the broker, a DEALER socket per peer.

Why these choices:

- ROUTER/DEALER keeps each peer's messages in order and whole, and needs no
  server: the broker binds, peers dial, and a peer may dial before the
  broker has bound.
- Peers do not choose their routing id. A DEALER could name itself, and a
  ROUTER with ``ROUTER_HANDOVER`` gives a name to whoever claims it last,
  so any process able to connect could take over ``root`` and read its
  traffic. Our DEALERs set no identity: the ROUTER numbers each connection
  itself, and the hub reports that number as an opaque connection id. The
  broker binds a peer's name to a connection when a signed ``Hello``
  arrives on it (see :mod:`scoop_core.broker`). A stranger may still pick
  an id of its own, but an id is not a name, and no handover means it
  cannot take over another connection's id either.
- A run on one machine listens on an ``ipc://`` socket in a fresh
  directory only this user may enter (mode 0700, removed when the hub
  closes): other users of the machine cannot even connect, which no TCP
  port on loopback can promise. Runs with other machines (and SSH
  tunnels, which need a port) use TCP. A launcher killed outright (SIGKILL)
  cannot remove its directory; the next hub of the same user removes such
  leftovers (its own ``scoop-zmq-*`` directories whose socket nobody
  listens on any more).
- A TCP hub speaks CurveZMQ by default (``curve``): every connection is
  encrypted, and a ZAP handler admits only clients whose Curve key is the
  run's, a key pair every peer derives from the run's secret key (which it
  has from its environment). A process without the key cannot finish the
  handshake, so it can send nothing at all, not even a frame to buffer.
  The hub's own key pair is new for each run and its public key travels in
  its address (``tcp://host:port#curve=<64 hex digits>``); hex rather than
  Z85, whose alphabet holds ``# : $ &`` and other characters that address
  parsers and shells take for their own. The core's HMAC still
  authenticates every message: Curve only keeps strangers off the socket.
- ``ZMQ_MAXMSGSIZE`` is set on the hub from the core's ``max_message_size``
  (plus a little for Curve's framing), or lower with this plugin's own
  ``max_message_size``: libzmq counts it per frame, and drops a peer that
  announces a bigger frame before reading it, so nobody can make the
  broker buffer one. libzmq has no bound on a whole multipart message;
  ipc and Curve are what keep strangers from sending one.
- High-water marks are off (0). The core does its own flow control, and a
  ROUTER at its high-water mark would otherwise drop messages silently.
- ``ROUTER_MANDATORY`` makes a send to an unknown peer fail loudly inside
  libzmq; :meth:`ZmqHub.send` turns that into the silent drop the contract
  asks for, logged at DEBUG, instead of queueing for a peer that never comes.
- Frames go out with ``copy=False`` and come back as :class:`zmq.Frame`
  objects, so a large buffer is never copied by us (pyzmq still copies small
  frames itself, below ``zmq.COPY_THRESHOLD``, where that is faster). A
  sender must not mutate a frame after sending it.
- Small frames of a message travel packed together in one ZeroMQ frame
  (:func:`pack`): a message of many small futures is a few frames, not one
  per future, and each ZeroMQ frame costs microseconds to send and receive
  from Python. The receiver hands them over as views of that one frame. A
  message whose first frame is not a pack passes as it is, so a stranger's
  raw frames meet the core's checks as they came.
- ``wakeup()`` writes one byte to a socket pair polled next to the ZeroMQ
  socket; it works from any thread, and a burst of calls writes one byte
  (:class:`scoop_core.wakeup.WakeUp` keeps the flag, the lock and the
  order against ``close()``).
  A socket pair rather than a pipe because ``zmq.Poller`` on Windows polls
  sockets only.
- Each hub and endpoint owns its own ``zmq.Context``, so ``close()`` can
  terminate it and so wait (at most :data:`LINGER_MS`) for the last messages
  to flush: a worker's final ``Bye`` goes out before its process exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
from zmq.utils import z85

from scoop_core.errors import ConfigError, LaunchError, TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Hub, Transport
from scoop_core.wakeup import WakeUp

__all__ = ["LINGER_MS", "ZmqEndpoint", "ZmqHub", "ZmqTransport", "client_keys"]

log = logging.getLogger("scoop.transport.zmq")

LINGER_MS = 2000
"""How long ``close()`` waits for queued messages to leave, at most."""

CURVE_MARK = "#curve="
"""Separates a Curve hub's TCP address from its public key (hex) in ``Hub.address``."""

CURVE_ALLOWANCE = 4096
"""Bytes added to the core's message bound for ``ZMQ_MAXMSGSIZE``: a frame
the core lets through must not be refused for Curve's few bytes of framing."""

ZAP_DOMAIN = "scoop"

_LOOPBACK = "127.0.0.1"
_ANY_INTERFACE = {"*", "0.0.0.0", "::", "[::]"}
_IPC_NAME = "broker"
_IPC_PREFIX = "scoop-zmq-"
# sun_path holds 108 bytes on Linux, 104 on macOS; keep under both.
_IPC_PATH_MAX = 100
_ZAP_MAX_LOGGED = 100


def _message(frames: Sequence[Frame]) -> list[Frame]:
    if not frames:
        raise ValueError("a message needs at least one frame, got an empty sequence")
    return pack(frames)


PACK_MARK = b"\x00scoop-pack\x00"
"""How a frame holding several small frames starts. A message's first frame
is the core's header, a msgpack list, which never starts with a zero byte."""

PACK_SMALL = 16 * 1024
"""Frames shorter than this travel packed; longer ones go as they are."""

PACK_MOST = 256
"""Frames described by one pack at most, so that a pack is never more than
a few KiB over the frames it holds (ZMQ_MAXMSGSIZE allows CURVE_ALLOWANCE)."""

# Plain ints: pyzmq's constants are enum.IntFlag members, whose operators
# are Python code, paid on every receive.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

_COUNT = struct.Struct("<I")
_IN_NEXT_FRAME = 0xFFFFFFFF  # this frame is the next ZeroMQ frame, not in the pack


def _nbytes(frame: Frame) -> int:
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def pack(frames: Sequence[Frame]) -> list[Frame]:
    """The ZeroMQ frames that carry ``frames``: each run of up to
    :data:`PACK_MOST` frames becomes one pack of the small ones (their
    lengths, then their bytes) followed by the large ones, which it names
    in their places. Two frames or fewer go as they are."""
    if len(frames) < 3:
        return list(frames)
    out: list[Frame] = []
    for start in range(0, len(frames), PACK_MOST):
        group = frames[start : start + PACK_MOST]
        lengths, small, large = [], [], []
        for frame in group:
            n = _nbytes(frame)
            if n < PACK_SMALL:
                lengths.append(n)
                small.append(frame)
            else:
                lengths.append(_IN_NEXT_FRAME)
                large.append(frame)
        head = PACK_MARK + struct.pack(f"<{len(lengths) + 1}I", len(lengths), *lengths)
        out.append(b"".join([head, *small]))
        out.extend(large)
    return out


def unpack(frames: list[Any]) -> list[Any]:
    """The frames :func:`pack` packed, small ones as views of their pack; a
    message that is not packed, or not well (a stranger's), as it came:
    the core's checks refuse what is wrong with it."""
    first = frames[0] if frames else None
    if not isinstance(first, zmq.Frame) or first.buffer[: len(PACK_MARK)] != PACK_MARK:
        return frames
    out: list[Any] = []
    i = 0
    try:
        while i < len(frames):
            view = memoryview(frames[i].buffer).cast("B")
            if view[: len(PACK_MARK)] != PACK_MARK:
                return frames
            i += 1
            pos = len(PACK_MARK)
            (count,) = _COUNT.unpack_from(view, pos)
            if not 0 < count <= PACK_MOST:
                return frames
            lengths = struct.unpack_from(f"<{count}I", view, pos + _COUNT.size)
            pos += _COUNT.size * (count + 1)
            for n in lengths:
                if n == _IN_NEXT_FRAME:
                    out.append(frames[i])
                    i += 1
                else:
                    if pos + n > view.nbytes:
                        return frames
                    out.append(view[pos : pos + n])
                    pos += n
            if pos != view.nbytes:
                return frames
    except (struct.error, IndexError, AttributeError):
        return frames
    return out


def client_keys(key: bytes) -> tuple[bytes, bytes]:
    """The run's CurveZMQ client key pair ``(public, secret)``, Z85-encoded,
    derived from the run's secret ``key``: every peer of the run makes the
    same pair, and the hub admits no other."""
    secret = hmac.new(key, b"scoop-core zmq curve client key", hashlib.sha256).digest()
    secret_z85 = z85.encode(secret)
    return zmq.curve_public(secret_z85), secret_z85


class _Zap(threading.Thread):
    """A ZAP handler (ZeroMQ RFC 27) for one hub's context: admits CURVE
    clients whose public key is ``allowed`` (raw 32 bytes), refuses the rest,
    and logs a refused address once."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], allowed: bytes, describe: str):
        super().__init__(name="scoop-zap", daemon=True)
        self._allowed = allowed
        self._describe = describe
        self._sock: zmq.Socket[bytes] = context.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Bound before the hub's socket is, so no handshake goes unchecked.
        self._sock.bind("inproc://zeromq.zap.01")
        self._stop_r, self._stop_w = socket.socketpair()
        self._refused: set[bytes] = set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._stop_r.fileno(), zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._stop_r.fileno() in events:
                    return
                try:
                    request = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                self._sock.send_multipart(self._answer(request))
        finally:
            self._sock.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"malformed", b"", b""]
        version, request_id, _domain, address, _identity, mechanism, *credentials = request
        if (
            mechanism == b"CURVE"
            and credentials
            and hmac.compare_digest(credentials[0], self._allowed)
        ):
            return [version, request_id, b"200", b"OK", b"", b""]
        if address not in self._refused and len(self._refused) < _ZAP_MAX_LOGGED:
            self._refused.add(address)
            log.warning(
                "%s: refused a connection from %s: its Curve key is not this run's",
                self._describe,
                address.decode(errors="replace") or "?",
            )
        return [version, request_id, b"400", b"not a key of this run", b"", b""]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\0")
        self.join(LINGER_MS / 1000 + 5)
        self._stop_r.close()
        self._stop_w.close()


class _Socket:
    """One ZeroMQ socket, its context and its wake-up channel; the part hub and endpoint share.

    ``_io_lock`` is held by whoever uses the ZeroMQ socket (the owner thread's
    send/recv, and close); ZeroMQ sockets are not thread-safe, and close may
    come from another thread. The wake-up (:class:`~scoop_core.wakeup.WakeUp`)
    writes to the socket pair and drains it under its own lock, and never
    once closed, so the pair is closed last without a lock and a wakeup()
    racing close() never writes to a closed (and possibly reused) file
    descriptor. ``before_term`` and ``after_term`` are called by
    :meth:`close` around terminating the context (a ZAP handler's socket
    must be closed first; an ipc directory removed after).
    """

    def __init__(self, kind: int, describe: str) -> None:
        self._describe = describe
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self.sock: zmq.Socket[bytes] = self.context.socket(kind)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self._io_lock = threading.Lock()
        self._wake = WakeUp(self._poke, drain=self._drain)
        self.before_term: list[Callable[[], None]] = []
        self.after_term: list[Callable[[], None]] = []

    def send(self, frames: list[Frame]) -> None:
        with self._io_lock:
            if self._wake.closed:
                raise TransportClosed(f"{self._describe} is closed; it cannot send any more")
            sock = self.sock
            for frame in frames[:-1]:  # send_multipart, with int flags (see _NOBLOCK)
                sock.send(frame, _SNDMORE, copy=False)
            sock.send(frames[-1], 0, copy=False)

    def recv(self, timeout: float | None) -> list[zmq.Frame] | None:
        with self._io_lock, self._wake.receiving():
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # A pending wake-up is served before queued messages, so a
                # steady stream of messages cannot starve it.
                if self._wake.take():
                    return None
                flags = self.sock.get(_EVENTS)
                if isinstance(flags, int) and flags & _POLLIN:  # cheaper than zmq.Again
                    return self._recv_message()
                if deadline is None:
                    poll_ms = None
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    poll_ms = math.ceil(remaining * 1000)
                events = dict(self._poller.poll(poll_ms))
                if self._wake_r.fileno() in events:
                    self._wake.take()
                    return None

    def _recv_message(self) -> list[zmq.Frame]:
        """The message waiting on the socket: its frames, asked for until
        one says it is the last (``Frame.more``, cheaper than RCVMORE)."""
        frame = self.sock.recv(_NOBLOCK, copy=False)
        frames = [frame]
        while frame.more:
            frame = self.sock.recv(_NOBLOCK, copy=False)
            frames.append(frame)
        return frames

    def _poke(self) -> None:
        # A full buffer means wake-up bytes are waiting already: recv will wake.
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def wakeup(self) -> None:
        self._wake.wakeup()

    def close(self) -> None:
        # Pokes a recv waiting in another thread, so we can take _io_lock.
        if not self._wake.close():
            return
        with self._io_lock:
            self.sock.close(linger=LINGER_MS)
            for call in self.before_term:
                call()
            self.context.term()
            for call in self.after_term:
                call()
        self._wake_r.close()
        self._wake_w.close()
        log.debug("closed %s", self._describe)


class ZmqHub(Hub):
    """The broker's ROUTER socket. Build it with :meth:`ZmqTransport.bind`.

    The peers it reports are the ROUTER's routing ids: connection ids that
    the ROUTER makes up for our own peers (which set no identity)."""

    def __init__(self, core: _Socket, address: str) -> None:
        self.address = address
        self._core = core

    def send(self, peer: bytes, frames: Sequence[Frame]) -> None:
        try:
            self._core.send([peer, *_message(frames)])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # Gone or never connected: the broker learns of departures from
            # heartbeats, not from here.
            log.debug("hub %s: dropped a message to unknown peer %r", self.address, peer)

    def recv(self, timeout: float | None) -> tuple[bytes, list[Frame]] | None:
        frames = self._core.recv(timeout)
        if frames is None:
            return None
        return frames[0].bytes, unpack(frames[1:])

    def wakeup(self) -> None:
        self._core.wakeup()

    def close(self) -> None:
        self._core.close()


class ZmqEndpoint(Endpoint):
    """A peer's DEALER socket. Build it with :meth:`ZmqTransport.connect`."""

    def __init__(self, core: _Socket) -> None:
        self._core = core

    def send(self, frames: Sequence[Frame]) -> None:
        self._core.send(_message(frames))

    def recv(self, timeout: float | None) -> list[Frame] | None:
        frames = self._core.recv(timeout)
        return None if frames is None else unpack(frames)

    def wakeup(self) -> None:
        self._core.wakeup()

    def close(self) -> None:
        self._core.close()


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigError(
            f"transport.zmq.curve is on, but this libzmq ({zmq.zmq_version()}) was built "
            "without CURVE support; install a pyzmq wheel (they bundle libsodium) "
            "or set curve = false in [scoop.transport.zmq]"
        )


def _split_address(address: str) -> tuple[str, bytes | None]:
    """``(url, Z85 server key or None)`` from a hub address."""
    url, mark, key = address.partition(CURVE_MARK)
    if not mark:
        return url, None
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            f"bad CurveZMQ key in the broker address {address!r}: expected 64 hex digits "
            f"after {CURVE_MARK!r}, as the hub reports it"
        )
    return url, z85.encode(raw)


def _host_for_url(host: str) -> str:
    """``host`` as it goes in a ``tcp://host:port`` URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False


def _ipc_directory() -> str | None:
    """A new directory only this user may enter (``mkdtemp`` makes it 0700),
    short enough for a socket path; None where ipc cannot be had."""
    if not zmq.has("ipc"):
        return None
    for parent in (tempfile.gettempdir(), "/tmp"):
        _remove_leftovers(parent)
        try:
            directory = tempfile.mkdtemp(prefix=_IPC_PREFIX, dir=parent)
        except OSError:
            continue
        if len(os.path.join(directory, _IPC_NAME)) <= _IPC_PATH_MAX:
            return directory
        os.rmdir(directory)
    return None


def _remove_leftovers(parent: str) -> None:
    """Remove this user's hub directories in ``parent`` whose socket refuses
    connections: their launcher was killed before it could. A directory
    without a socket yet (a hub being made) or with a live one is left."""
    af_unix = getattr(socket, "AF_UNIX", None)
    if af_unix is None:
        return
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        try:
            if not (
                entry.name.startswith(_IPC_PREFIX)
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.getuid()
            ):
                continue
        except OSError:
            continue
        probe = socket.socket(af_unix, socket.SOCK_STREAM)
        try:
            probe.connect(os.path.join(entry.path, _IPC_NAME))
        except ConnectionRefusedError:
            log.debug("removing %s, left by a hub that is gone", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass
        finally:
            probe.close()


class ZmqTransport(Transport):
    """Creates ROUTER hubs and DEALER endpoints over ipc or TCP.

    ``settings`` are the ``[scoop.transport.zmq]`` keys: ``interface`` (where
    a public hub listens, ``"*"`` for all), ``port`` (a TCP hub's port, 0 for
    a free one), ``broker_hostname`` (the host name peers dial for a public
    hub; by default this machine's fully qualified name),
    ``max_message_size`` (the largest frame a hub accepts, 0: the core's
    bound alone) and ``curve`` (CurveZMQ on TCP hubs, on unless false). An
    empty mapping means the defaults. Endpoints need none of them: whether
    to use Curve, and the hub's key, come with the address.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        settings = settings or {}
        self.interface = str(settings.get("interface") or "*")
        self.port = int(settings.get("port") or 0)
        self.broker_hostname = str(settings.get("broker_hostname") or "")
        self.max_message_size = int(settings.get("max_message_size") or 0)
        if self.max_message_size < 0:
            raise ConfigError(
                f"transport.zmq.max_message_size must be 0 (no limit) or a number of bytes, "
                f"got {self.max_message_size}"
            )
        self.curve = bool(settings.get("curve", True))

    def _advertised_host(self, bind_host: str) -> str:
        if self.broker_hostname:
            return self.broker_hostname
        if bind_host not in _ANY_INTERFACE:
            try:
                ipaddress.ip_address(bind_host.strip("[]"))
                return bind_host
            except ValueError:
                pass  # an interface name such as eth0: not something peers can dial
        return socket.getfqdn()

    def _frame_limit(self, max_message_size: int | None) -> int:
        limits = [self.max_message_size] if self.max_message_size else []
        if max_message_size:
            limits.append(max_message_size + CURVE_ALLOWANCE)
        return min(limits, default=0)

    def bind(
        self,
        *,
        run_id: str,
        public: bool = False,
        local: bool = False,
        key: bytes | None = None,
        max_message_size: int | None = None,
    ) -> ZmqHub:
        describe = f"ZeroMQ hub of run {run_id}"
        directory = _ipc_directory() if local and not public else None
        core = _Socket(zmq.ROUTER, describe)
        if directory is not None:
            core.after_term.append(_rmtree_later(directory))
        try:
            core.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            limit = self._frame_limit(max_message_size)
            if limit:
                core.sock.setsockopt(zmq.MAXMSGSIZE, limit)
            if directory is not None:
                address = f"ipc://{os.path.join(directory, _IPC_NAME)}"
                self._bind_ipc(core, address)
            else:
                address = self._bind_tcp(core, describe, public=public, key=key)
        except BaseException:
            core.close()
            raise
        log.debug("hub of run %s: peers dial %s", run_id, address)
        return ZmqHub(core, address)

    def _bind_ipc(self, core: _Socket, address: str) -> None:
        try:
            core.sock.bind(address)
        except zmq.ZMQError as exc:
            raise LaunchError(f"cannot bind the ZeroMQ broker to {address}: {exc}") from exc

    def _bind_tcp(self, core: _Socket, describe: str, *, public: bool, key: bytes | None) -> str:
        bind_host = self.interface if public else _LOOPBACK
        url_host = _host_for_url(bind_host)
        if self.curve:
            _require_curve()
            public_key, secret_key = zmq.curve_keypair()
            if key is not None:
                zap = _Zap(core.context, z85.decode(client_keys(key)[0]), describe)
                zap.start()
                core.before_term.append(zap.stop)
                core.sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            core.sock.setsockopt(zmq.CURVE_SERVER, 1)
            core.sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
        if _is_ipv6(bind_host):
            core.sock.setsockopt(zmq.IPV6, 1)
        try:
            if self.port:
                core.sock.bind(f"tcp://{url_host}:{self.port}")
                port = self.port
            else:
                port = core.sock.bind_to_random_port(f"tcp://{url_host}")
        except zmq.ZMQError as exc:
            raise LaunchError(
                f"cannot bind the ZeroMQ broker to tcp://{url_host}:{self.port or '*'}: {exc}. "
                "Choose another port (setting transport.zmq.port, 0 for a free one) "
                "or interface (transport.zmq.interface)."
            ) from exc
        host = _LOOPBACK if not public else self._advertised_host(bind_host)
        address = f"tcp://{_host_for_url(host)}:{port}"
        if self.curve:
            address += CURVE_MARK + z85.decode(public_key).hex()
        log.debug("%s listening on tcp://%s:%d", describe, url_host, port)
        return address

    def connect(self, address: str, *, identity: bytes, key: bytes | None = None) -> ZmqEndpoint:
        # The identity names the endpoint in logs only: the hub numbers
        # connections itself (see the module's docstring). It is still
        # checked, so that a name ZeroMQ could not carry fails early.
        if not isinstance(identity, bytes) or not 0 < len(identity) <= 255 or identity[0] == 0:
            raise ValueError(
                f"a ZeroMQ identity must be 1 to 255 bytes not starting with a zero byte, got {identity!r}"
            )
        url, server_key = _split_address(address)
        if server_key is not None:
            _require_curve()
        core = _Socket(zmq.DEALER, f"ZeroMQ endpoint {identity!r} to {url}")
        try:
            if server_key is not None:
                public_key, secret_key = client_keys(key) if key else zmq.curve_keypair()
                core.sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                core.sock.setsockopt(zmq.CURVE_PUBLICKEY, public_key)
                core.sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
            if _is_ipv6(url.partition("://")[2].rpartition(":")[0]):
                core.sock.setsockopt(zmq.IPV6, 1)
            core.sock.connect(url)
        except zmq.ZMQError as exc:
            core.close()
            raise ValueError(
                f"cannot connect to the ZeroMQ broker at {address!r}: {exc}; "
                "expected an address like tcp://host:port or ipc:///path, as the hub reports it"
            ) from exc
        return ZmqEndpoint(core)


def _rmtree_later(directory: str) -> Callable[[], None]:
    """A call that removes ``directory`` (an ipc hub's), whatever is left in it."""
    return lambda: shutil.rmtree(directory, ignore_errors=True)
