"""The broker: moves messages between peers around :class:`~scoop_core.broker_policy.BrokerPolicy`.

It runs in a thread of the launcher (or of an embedding program), owns the
transport's hub, checks every message's HMAC before anything else, and
hands decoded messages to the book; what the book queues is signed and
sent. Payload frames are forwarded as they came: the broker never unpickles.
Its codec is a relay (``payload=RELAY``): it checks each message's mac, which
covers the digest of every large payload frame, but not the large frames
themselves, which it passes on with their digests for their reader to check
(see :mod:`scoop_core.messages`), so a large payload is not hashed here.
Other threads talk to it only through :meth:`Broker.peer_lost` and
:meth:`Broker.shutdown`, which queue a request and wake the hub.

Names are bound to connections here, at the broker's edge. The hub reports
an opaque connection id for each message, not a name: a transport cannot
tell who is at the other end of a socket, and letting a connection name
itself (ZeroMQ's ROUTER identities with handover did) let any process that
could connect take over ``root`` and read its traffic. So:

- A connection is bound to a peer's name when a ``Hello`` signed by that
  name (the run's key, a fresh session) arrives on it. From then on only
  messages signed by that name are read from it, and messages to that peer
  go to that connection only.
- A connection that claims a name bound to another live connection with a
  new session is refused (logged once) and gets nothing; the live peer's
  session is left as it was (``Codec.decode_from(take_over=False)``).
  A replayed ``Hello`` is refused by the codec (old sequence number, or a
  session that ended).
- A message that continues a live peer's session (next sequence number)
  on a new connection is that peer come back after its connection broke:
  the name moves to the new connection. Only the key's holder can sign it.
- When a peer leaves (``Bye``, lost), its name is unbound and its session
  ended, so a new process may take the name with a new ``Hello``; a
  connection of a peer counted as lost that speaks again is told to exit.

The book (:class:`~scoop_core.broker_policy.BrokerPolicy`) and the codec see names
only, as before.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Unpack

from scoop_core import messages as m
from scoop_core.broker_policy import BrokerPolicy, PolicyOptions
from scoop_core.errors import ProtocolError, SerializationError
from scoop_core.interfaces import Hub, Transport
from scoop_core.run_activity import RunActivity, pack_snapshot
from scoop_core.shared_frames import SharedFrame

log = logging.getLogger("scoop.broker")

# How many messages to take in before dispatching and sending: bounds the
# latency one busy peer can add for the others.
_BATCH = 512


def supported(method: Callable[..., Any], **options: Any) -> dict[str, Any]:
    """The ``options`` that ``method`` declares (all of them if it takes
    ``**kwargs``): the keyword arguments that came later to
    :meth:`Transport.bind` and :meth:`Transport.connect` reach a transport
    written before them only if it asks, the way pluggy calls a hook."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return options
    names = {p.name for p in params}
    return {k: v for k, v in options.items() if k in names}


def bind_hub(
    transport: Transport,
    *,
    run_id: str,
    public: bool,
    local: bool = False,
    key: bytes | None = None,
    max_message_size: int | None = None,
) -> Hub:
    """``transport.bind(...)`` with every option the transport takes."""
    extra = supported(transport.bind, local=local, key=key, max_message_size=max_message_size)
    return transport.bind(run_id=run_id, public=public, **extra)


def allow_many_connections() -> int:
    """Lift this process's soft limit on open files to its hard limit, and
    return the limit now in force.

    Every peer's connection to the hub is a file descriptor, and the
    common soft limit of 1,024 would make ZeroMQ abort the whole process
    (launcher, broker and all) when about a thousand workers join."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to lift
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is still capped by the kernel (nr_open).
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.debug("could not raise the open-file limit from %d: %s", soft, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


class Broker:
    def __init__(
        self,
        transport: Transport,
        *,
        key: bytes,
        run_id: str,
        public: bool = False,
        local: bool = False,
        activity: RunActivity | None = None,
        **options: Unpack[PolicyOptions],
    ) -> None:
        self.key = key
        allow_many_connections()
        self.book = BrokerPolicy(**options, now=time.monotonic())
        # The peers' reports, for status, progress, the summary and the trace.
        self.activity = activity or RunActivity(
            run_id, heartbeat_timeout=self.book.heartbeat_timeout
        )
        self.book.activity = self.activity.launcher
        max_message_size = self.book.max_message_size
        self.codec = m.Codec(key, m.BROKER_IDENTITY, max_size=max_message_size, payload=m.RELAY)
        self.hub = bind_hub(
            transport,
            run_id=run_id,
            public=public,
            local=local,
            key=key,
            max_message_size=max_message_size,
        )
        self.address = self.hub.address
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._running = False
        self._thread = threading.Thread(target=self._loop, name="scoop-broker", daemon=True)
        self._rejected: set[bytes] = set()  # connections whose refusal was logged
        # Peer name <-> connection id (see the module's docstring).
        self._conn_of: dict[bytes, bytes] = {}
        self._name_of: dict[bytes, bytes] = {}
        # Connections of peers counted as lost: name, to tell them if they speak.
        self._lost_conns: dict[bytes, bytes] = {}
        self._closing_until = 0.0
        self.heartbeat_interval = self.book.heartbeat_interval
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
            self._unbind(identity, lost=True)

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
                self._unbind_departed()
                if self._running:
                    book.tick(time.monotonic())
                    for peer in book.take_lost():
                        name = peer.decode(errors="replace")
                        self.lost.add(name)
                        self.activity.lost(name)
                        self._unbind(peer, lost=True)
                book.dispatch()
                outgoing = []
                for peer, msg in book.take_outbox():
                    conn = self._conn_of.get(peer)
                    if conn is None:
                        log.debug("dropped %s to %r: not connected", type(msg).__name__, peer)
                        continue
                    frames = self._encode(peer, msg)
                    if frames is not None:
                        outgoing.append((conn, frames))
                if outgoing:
                    hub.send_many(outgoing)
        except Exception:
            log.exception("the broker failed")
            raise

    def _encode(self, peer: bytes, msg: m.Message) -> list[object] | None:
        try:
            return self.codec.encode(msg, to=peer)
        except SerializationError as exc:
            # A forwarded message a few header bytes over the limit: say so
            # loudly rather than stop the broker for every peer.
            log.error("could not send %s to %r: %s", type(msg).__name__, peer, exc)
            return None

    def _send(self, conn: bytes, peer: bytes, msg: m.Message) -> None:
        frames = self._encode(peer, msg)
        if frames is not None:
            self.hub.send(conn, frames)

    # -- names and connections ---------------------------------------------------

    def _bind(self, conn: bytes, sender: bytes, msg: m.Message) -> bool:
        """A message signed by ``sender`` came on ``conn``, bound to nobody
        (the codec accepted it without ending a live session): bind them, if
        it is a ``Hello`` or ``sender`` reconnected. False: refused."""
        old = self._conn_of.get(sender)
        if old is not None:
            # The codec took it as the next message of sender's live session.
            log.info("%s reconnected", sender.decode(errors="replace"))
            del self._name_of[old]
        elif not isinstance(msg, m.Hello) or msg.name.encode() != sender:
            # Signed, but no way to join: end the session it started.
            self.codec.forget(sender)
            what = "a Hello for another name" if isinstance(msg, m.Hello) else "no Hello first"
            self._refuse(conn, f"{type(msg).__name__} signed by {sender!r} with {what}")
            return False
        self._conn_of[sender] = conn
        self._name_of[conn] = sender
        return True

    def _unbind(self, peer: bytes, *, lost: bool = False) -> None:
        """``peer`` left the run: forget its connection, end its session."""
        conn = self._conn_of.pop(peer, None)
        if conn is not None:
            del self._name_of[conn]
            if lost:
                self._lost_conns[conn] = peer
        self.codec.forget(peer)

    def _unbind_departed(self) -> None:
        for peer in [p for p in self._conn_of if p not in self.book.peers]:
            self._unbind(peer)

    def _refuse(self, conn: bytes, reason: str) -> None:
        # Logged once per connection: a flood of forged messages must not flood the log.
        if conn not in self._rejected:
            self._rejected.add(conn)
            log.warning("rejected a message from peer %r: %s", conn, reason)
            self.activity.launcher.instant(
                "rejected", f"rejected a message: {reason}", reason=reason
            )

    def _answer_status(self, conn: bytes, client: bytes) -> None:
        """``scoop status`` asks (a signed request, on a connection bound to
        nobody): answer on that connection, and end the client's session so
        that the request cannot be replayed. It never joins the run."""
        snapshot = self.activity.snapshot()
        self._send(conn, client, m.StatusReply(pack_snapshot(snapshot)))
        self.codec.forget(client)

    def _receive(self, conn: bytes, frames: list[object]) -> None:
        name = self._name_of.get(conn)
        try:
            if name is not None:
                sender, msg = name, self.codec.decode(frames, name)
            else:
                sender, msg = self.codec.decode_from(frames, take_over=False)
                if isinstance(msg, m.StatusRequest):
                    self._answer_status(conn, sender)
                    return
        except ProtocolError as exc:
            self._refuse(conn, str(exc))
            if isinstance(exc, m.VersionMismatch) and conn not in self._name_of:
                # It reads our version first, so it learns why.
                self._send(conn, conn, m.Refused(str(exc)))
            lost = self._lost_conns.pop(conn, None)
            if lost is not None:
                # A peer we counted as lost is alive after all: its futures
                # already run elsewhere, so it must not go on alone.
                self._send(conn, lost, m.Shutdown("the broker counted this peer as lost"))
            return
        if name is None and not self._bind(conn, sender, msg):
            return
        if isinstance(msg, m.Report):
            try:
                if any(isinstance(f, m.Sealed | SharedFrame) for f in msg.events):
                    # Cut into small frames (activity.FRAME_BYTES): not one of ours.
                    raise ProtocolError("its events came in a large frame")
                self.activity.add(sender.decode(errors="replace"), msg.counters, msg.events)
            except ProtocolError as exc:
                log.warning("ignored a report from peer %r: %s", sender, exc)
            except Exception:  # a bug must not stop the broker for every peer
                log.exception("could not read a report from peer %r", sender)
        try:
            self.book.handle(sender, msg)
        except ProtocolError as exc:
            log.warning("ignored %s from peer %r: %s", type(msg).__name__, sender, exc)
        except Exception:
            # A well-signed but malformed message (a peer of another version,
            # or a bug): the broker must outlive it.
            log.exception("could not apply %s from peer %r", type(msg).__name__, sender)
        if sender not in self.book.peers:
            self._unbind(sender)  # said goodbye
