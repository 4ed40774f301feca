"""The ZeroMQ transport: a ROUTER socket for the broker, a DEALER socket per peer.

Why these choices:

- ROUTER/DEALER gives each peer a name (its DEALER identity), keeps each
  peer's messages in order and whole, and needs no server: the broker binds,
  peers dial, and a peer may dial before the broker has bound.
- High-water marks are off (0). The core does its own flow control, and a
  ROUTER at its high-water mark would otherwise drop messages silently.
- ``ROUTER_MANDATORY`` makes a send to an unknown peer fail loudly inside
  libzmq; :meth:`ZmqHub.send` turns that into the silent drop the contract
  asks for, logged at DEBUG, instead of queueing for a peer that never comes.
- ``ROUTER_HANDOVER`` lets a peer that reconnects under the same identity
  (a TCP hiccup the ROUTER has not noticed yet) take its name back instead of
  being ignored.
- Frames go out with ``copy=False`` and come back as :class:`zmq.Frame`
  objects, so a large buffer is never copied by us (pyzmq still copies small
  frames itself, below ``zmq.COPY_THRESHOLD``, where that is faster). A
  sender must not mutate a frame after sending it.
- ``wakeup()`` writes one byte to a socket pair polled next to the ZeroMQ
  socket; it works from any thread, and a burst of calls writes one byte.
  A socket pair rather than a pipe because ``zmq.Poller`` on Windows polls
  sockets only.
- Each hub and endpoint owns its own ``zmq.Context``, so ``close()`` can
  terminate it and so wait (at most :data:`LINGER_MS`) for the last messages
  to flush: a worker's final ``Bye`` goes out before its process exits.
- ``max_message_size`` sets ``ZMQ_MAXMSGSIZE`` on the hub: libzmq counts it
  per frame, and disconnects a peer that announces a bigger frame before
  reading it, so strangers cannot make the broker buffer huge frames. The
  bound on a whole message is the core's (``[scoop] max_message_size``).
- With ``curve`` on, the hub makes a CurveZMQ key pair per run and appends
  its public key to its address (``tcp://host:port#curve=<64 hex digits>``),
  which is how every peer, in any process, learns it; each endpoint makes
  its own key pair. Hex rather than Z85, whose alphabet holds ``# : $ &``
  and other characters that address parsers and shells take for their own.
  No ZAP handler: any peer that knows the server key may finish the
  handshake, and the core's HMAC decides what it may say. A plain socket
  cannot talk to a Curve hub at all.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
from zmq.utils import z85

from scoop_core.errors import ConfigError, LaunchError, TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Hub, Transport

__all__ = ["LINGER_MS", "ZmqEndpoint", "ZmqHub", "ZmqTransport"]

log = logging.getLogger("scoop.transport.zmq")

LINGER_MS = 2000
"""How long ``close()`` waits for queued messages to leave, at most."""

CURVE_MARK = "#curve="
"""Separates a Curve hub's TCP address from its public key (hex) in ``Hub.address``."""

_LOOPBACK = "127.0.0.1"
_ANY_INTERFACE = {"*", "0.0.0.0", "::", "[::]"}


def _message(frames: Sequence[Frame]) -> list[Frame]:
    if not frames:
        raise ValueError("a message needs at least one frame, got an empty sequence")
    return list(frames)


class _Socket:
    """One ZeroMQ socket, its context and its wake-up channel; the part hub and endpoint share.

    ``_io_lock`` is held by whoever uses the ZeroMQ socket (the owner thread's
    send/recv, and close); ZeroMQ sockets are not thread-safe, and close may
    come from another thread. ``_wake_lock`` guards the wake-up flag and the
    socket pair, so that a wakeup() racing close() never writes to a closed
    (and possibly reused) file descriptor.
    """

    def __init__(self, kind: int, describe: str) -> None:
        self._describe = describe
        self._context = zmq.Context(io_threads=1)
        self.sock: zmq.Socket[bytes] = self._context.socket(kind)
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
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._closed = False

    def send(self, frames: list[Frame]) -> None:
        with self._io_lock:
            if self._closed:
                raise TransportClosed(f"{self._describe} is closed; it cannot send any more")
            self.sock.send_multipart(frames, copy=False)

    def recv(self, timeout: float | None) -> list[zmq.Frame] | None:
        with self._io_lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if self._closed:
                    return None
                # A pending wake-up is served before queued messages, so a
                # steady stream of messages cannot starve it.
                if self._wake_pending:
                    self._take_wakeup()
                    return None
                try:
                    return self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                if deadline is None:
                    poll_ms = None
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    poll_ms = math.ceil(remaining * 1000)
                events = dict(self._poller.poll(poll_ms))
                if self._wake_r.fileno() in events:
                    self._take_wakeup()
                    return None

    def _take_wakeup(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass

    def wakeup(self) -> None:
        # Lock-free fast path: a byte is already on its way (it was written
        # under the lock, together with setting the flag).
        if self._wake_pending:
            return
        with self._wake_lock:
            if self._closed or self._wake_pending:
                return
            self._wake_pending = True
            self._poke()

    def _poke(self) -> None:
        # A full buffer means wake-up bytes are waiting already: recv will wake.
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            # Unblock a recv waiting in another thread, so we can take _io_lock.
            self._poke()
        with self._io_lock:
            self.sock.close(linger=LINGER_MS)
            self._context.term()
            with self._wake_lock:
                self._wake_r.close()
                self._wake_w.close()
        log.debug("closed %s", self._describe)


class ZmqHub(Hub):
    """The broker's ROUTER socket. Build it with :meth:`ZmqTransport.bind`."""

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
        return frames[0].bytes, list(frames[1:])

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
        return self._core.recv(timeout)

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
    """``(tcp url, Z85 server key or None)`` from a hub address."""
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


class ZmqTransport(Transport):
    """Creates ROUTER hubs and DEALER endpoints over TCP.

    ``settings`` are the ``[scoop.transport.zmq]`` keys: ``interface`` (where
    a public hub listens, ``"*"`` for all), ``port`` (0 for a free one),
    ``broker_hostname`` (the host name peers dial for a public hub; by
    default this machine's fully qualified name), ``max_message_size`` (the
    largest frame a hub accepts, 0 for no bound) and ``curve`` (encrypt with
    CurveZMQ). An empty mapping means the defaults. Endpoints need none of
    them: whether to use Curve, and the hub's key, come with the address.
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
        self.curve = bool(settings.get("curve"))
        if self.curve:
            _require_curve()

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

    def bind(self, *, run_id: str, public: bool = False) -> ZmqHub:
        bind_host = self.interface if public else _LOOPBACK
        url_host = _host_for_url(bind_host)
        core = _Socket(zmq.ROUTER, f"ZeroMQ hub of run {run_id}")
        try:
            core.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            core.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if self.max_message_size:
                core.sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
            if self.curve:
                public_key, secret_key = zmq.curve_keypair()
                core.sock.setsockopt(zmq.CURVE_SERVER, 1)
                core.sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
            if _is_ipv6(bind_host):
                core.sock.setsockopt(zmq.IPV6, 1)
            if self.port:
                core.sock.bind(f"tcp://{url_host}:{self.port}")
                port = self.port
            else:
                port = core.sock.bind_to_random_port(f"tcp://{url_host}")
        except zmq.ZMQError as exc:
            core.close()
            raise LaunchError(
                f"cannot bind the ZeroMQ broker to tcp://{url_host}:{self.port or '*'}: {exc}. "
                "Choose another port (setting transport.zmq.port, 0 for a free one) "
                "or interface (transport.zmq.interface)."
            ) from exc
        host = _LOOPBACK if not public else self._advertised_host(bind_host)
        address = f"tcp://{_host_for_url(host)}:{port}"
        if self.curve:
            address += CURVE_MARK + z85.decode(public_key).hex()
        log.debug(
            "hub of run %s listening on tcp://%s:%d, peers dial %s", run_id, url_host, port, address
        )
        return ZmqHub(core, address)

    def connect(self, address: str, *, identity: bytes) -> ZmqEndpoint:
        # ZeroMQ reserves identities starting with a zero byte, and caps them at 255 bytes.
        if not isinstance(identity, bytes) or not 0 < len(identity) <= 255 or identity[0] == 0:
            raise ValueError(
                f"a ZeroMQ identity must be 1 to 255 bytes not starting with a zero byte, got {identity!r}"
            )
        url, server_key = _split_address(address)
        if server_key is not None:
            _require_curve()
        core = _Socket(zmq.DEALER, f"ZeroMQ endpoint {identity!r} to {url}")
        try:
            core.sock.setsockopt(zmq.IDENTITY, identity)
            if server_key is not None:
                public_key, secret_key = zmq.curve_keypair()
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
                "expected an address like tcp://host:port, as the hub reports it"
            ) from exc
        return ZmqEndpoint(core)
