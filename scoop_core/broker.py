"""The broker: moves messages between peers around :class:`~scoop_core._state.BrokerBook`.

It runs in a thread of the launcher (or of an embedding program), owns the
transport's hub, checks every message's HMAC before anything else, and
hands decoded messages to the book; what the book queues is signed and
sent. Payload frames are forwarded as they came: the broker never unpickles.
Other threads talk to it only through :meth:`Broker.peer_lost` and
:meth:`Broker.shutdown`, which queue a request and wake the hub.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from scoop_core import _messages as m
from scoop_core._state import BrokerBook
from scoop_core.errors import ProtocolError, SerializationError
from scoop_core.interfaces import Transport

log = logging.getLogger("scoop.broker")

# How many messages to take in before dispatching and sending: bounds the
# latency one busy peer can add for the others.
_BATCH = 512


class Broker:
    def __init__(
        self,
        transport: Transport,
        *,
        key: bytes,
        run_id: str,
        public: bool = False,
        max_losses: int = 3,
        expected_workers: int = 0,
        join_timeout: float = 10.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        max_message_size: int | None = None,
    ) -> None:
        self.key = key
        self.codec = m.Codec(key, m.BROKER_IDENTITY, max_size=max_message_size)
        self.hub = transport.bind(run_id=run_id, public=public)
        self.address = self.hub.address
        self.book = BrokerBook(max_losses=max_losses, expected_workers=expected_workers)
        self.join_timeout = join_timeout
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._running = False
        self._thread = threading.Thread(target=self._loop, name="scoop-broker", daemon=True)
        self._rejected: set[bytes] = set()
        self._closing_until = 0.0
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._last_heard: dict[bytes, float] = {}
        self._last_beat = 0.0
        self._workers_seen = time.monotonic()
        self.lost: set[str] = set()  # names of peers counted as lost (not a goodbye)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    # -- requests from other threads ---------------------------------------------

    def _request(self, fn: Callable[[], None]) -> None:
        self._requests.put(fn)
        self.hub.wakeup()

    def peer_lost(self, identity: bytes) -> None:
        """A peer's process is known to be dead: queue its futures again."""

        def _leave() -> None:
            self.book.leave(identity)
            self.lost.add(identity.decode(errors="replace"))

        self._request(_leave)

    def shutdown(self, reason: str = "the run is over") -> None:
        """Tell every peer to exit, then stop the loop (after sending)."""

        def _stop() -> None:
            self.book.broadcast(m.Shutdown(reason))
            self._running = False
            # Read the peers' goodbyes for a moment: a peer whose last
            # messages find the hub gone waits out its transport's linger.
            self._closing_until = time.monotonic() + 1.0

        if self._thread.is_alive():
            self._request(_stop)
            self._thread.join(10)
        self.hub.close()

    # -- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        hub, book = self.hub, self.book
        join_deadline = time.monotonic() + self.join_timeout
        wait = min(1.0, self.heartbeat_interval)
        try:
            while self._running or (book.peers and time.monotonic() < self._closing_until):
                item = hub.recv(wait if self._running else 0.05)
                count = 0
                while item is not None:
                    self._receive(*item)
                    count += 1
                    item = hub.recv(0) if count < _BATCH else None
                while not self._requests.empty():
                    self._requests.get_nowait()()
                if book.parked and time.monotonic() > join_deadline:
                    log.warning(
                        "%d of %d workers joined within %g s; starting with those",
                        len(book.workers),
                        book.expected_workers,
                        self.join_timeout,
                    )
                    book.release_parked()
                if self._running:
                    self._keep_alive()
                book.dispatch()
                outgoing = []
                for peer, msg in book.take_outbox():
                    frames = self._encode(peer, msg)
                    if frames is not None:
                        outgoing.append((peer, frames))
                if outgoing:
                    hub.send_many(outgoing)
        except Exception:
            log.exception("the broker failed")
            raise

    def _keep_alive(self) -> None:
        """Heartbeats to every peer; peers silent past the timeout are lost
        (their futures run again elsewhere); with no worker left for that
        long, queued futures fail instead of waiting for ever."""
        book, now = self.book, time.monotonic()
        if now - self._last_beat >= self.heartbeat_interval:
            self._last_beat = now
            book.broadcast(m.Heartbeat(0))
            log.info("heartbeat to %d peer(s)", len(book.peers))
        for peer in [p for p in self._last_heard if p not in book.peers]:
            del self._last_heard[peer]  # said goodbye
            self.codec.forget(peer)
        for peer, rec in list(book.peers.items()):
            silent = now - self._last_heard.get(peer, now)
            if silent > self.heartbeat_timeout:
                log.warning(
                    "%s has been silent for %.0f s (heartbeat_timeout); counting it as lost",
                    rec.name,
                    silent,
                )
                book.leave(peer)
                self.lost.add(rec.name)
                self._last_heard.pop(peer, None)
                self.codec.forget(peer)
        if book.workers:
            self._workers_seen = now
        elif now - self._workers_seen > self.heartbeat_timeout:
            failed = book.fail_queued(
                f"no worker has been connected for {now - self._workers_seen:.0f} s"
            )
            if failed:
                log.error("no worker left: %d queued future(s) failed", failed)

    def _encode(self, peer: bytes, msg: m.Message) -> list[object] | None:
        try:
            return self.codec.encode(msg, to=peer)
        except SerializationError as exc:
            # A forwarded message a few header bytes over the limit: say so
            # loudly rather than stop the broker for every peer.
            log.error("could not send %s to %r: %s", type(msg).__name__, peer, exc)
            return None

    def _send(self, peer: bytes, msg: m.Message) -> None:
        frames = self._encode(peer, msg)
        if frames is not None:
            self.hub.send(peer, frames)

    def _receive(self, peer: bytes, frames: list[object]) -> None:
        try:
            msg = self.codec.decode(frames, peer)
        except ProtocolError as exc:
            # Logged once per peer: a flood of forged messages must not flood the log.
            if peer not in self._rejected:
                self._rejected.add(peer)
                log.warning("rejected a message from peer %r: %s", peer, exc)
                if isinstance(exc, m.VersionMismatch):
                    # It reads our version first, so it learns why.
                    self._send(peer, m.Refused(str(exc)))
            return
        self._last_heard[peer] = time.monotonic()
        try:
            self.book.handle(peer, msg)
        except ProtocolError as exc:
            log.warning("ignored %s from peer %r: %s", type(msg).__name__, peer, exc)
            if peer not in self.book.peers and not isinstance(msg, m.Hello):
                # A peer we counted as lost is alive after all: its futures
                # already run elsewhere, so it must not go on alone.
                self._send(peer, m.Shutdown("the broker counted this peer as lost"))
                self._last_heard.pop(peer, None)
        except Exception:
            # A well-signed but malformed message (a peer of another version,
            # or a bug): the broker must outlive it.
            log.exception("could not apply %s from peer %r", type(msg).__name__, peer)
