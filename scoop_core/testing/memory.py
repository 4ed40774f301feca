"""An in-process transport, so core tests run a broker and peers as threads of one process.

:class:`MemoryTransport` implements the :class:`~scoop_core.interfaces.Transport`
contract with no sockets: a hub is a mailbox registered under an address like
``memory://<run_id>-<n>`` in a process-global table, and an endpoint is a
mailbox the hub finds by a connection id the transport makes up for it
(``memory-<n>``, never the identity the endpoint was given: two endpoints
of one identity are two connections, as the contract asks). Frames are handed over as
the very objects the sender passed (no copy, no join), so a test sees exactly
what a zero-copy transport would deliver, and senders must not mutate a frame
after sending it (the same rule as ZeroMQ's ``copy=False``).

Every address lives only as long as this process: a child process cannot
connect to it. Use a real transport (``zmq``) for anything that spawns.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Hub, Transport
from scoop_core.wakeup import WakeUp

__all__ = ["MemoryTransport", "MemoryHub", "MemoryEndpoint"]

log = logging.getLogger("scoop.transport.memory")

SCHEME = "memory://"

_Item = TypeVar("_Item")


class _Mailbox(Generic[_Item]):
    """A thread-safe queue whose ``get`` can be woken up, and which can be closed.

    A wake-up is a flag (:class:`~scoop_core.wakeup.WakeUp`) rather than a
    queued item: a burst of wake-ups costs one ``None`` from ``get``, and it
    is served before queued items so a steady stream of messages cannot
    starve it. The poke notifies the condition, so ``get`` takes the
    wake-up outside the condition's lock and only looks at it inside.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[_Item] = deque()
        self._wake = WakeUp(self._notify)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def put(self, item: _Item) -> bool:
        """Queue ``item``; False (and nothing queued) if the mailbox is closed."""
        with self._cond:
            if self._wake.closed:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def get(self, timeout: float | None) -> _Item | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake.receiving():
            while True:
                if self._wake.take():
                    return None
                with self._cond:
                    if self._wake.due:
                        continue
                    if self._items:
                        return self._items.popleft()
                    if deadline is None:
                        self._cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)

    def wake(self) -> None:
        self._wake.wakeup()

    def close(self) -> None:
        self._wake.close()
        with self._cond:
            self._items.clear()


class _Station:
    """What lives at one address: the hub's inbox and the endpoints' inboxes by connection id.

    An endpoint may connect before the hub binds (the contract lets a worker
    start first), so a station can exist before its hub; ``bound`` tells.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.inbox: _Mailbox[tuple[bytes, list[Frame]]] = _Mailbox()
        self.peers: dict[bytes, _Mailbox[list[Frame]]] = {}
        self.bound = False
        self.closed = False


# One table per process. Addresses never repeat (the counter only grows), so a
# hub that closed cannot be mistaken for a later one.
_stations: dict[str, _Station] = {}
_stations_lock = threading.Lock()
_counter = itertools.count(1)
_connections = itertools.count(1)


def _check_frames(frames: Sequence[Frame]) -> list[Frame]:
    if not frames:
        raise ValueError("a message needs at least one frame, got an empty sequence")
    # Copy the list, not the buffers: the caller may reuse its list.
    return list(frames)


class MemoryHub(Hub):
    """The broker's end of a :class:`MemoryTransport`."""

    def __init__(self, station: _Station) -> None:
        self.address = station.address
        self._station = station

    def send(self, peer: bytes, frames: Sequence[Frame]) -> None:
        message = _check_frames(frames)
        station = self._station
        with _stations_lock:
            if station.closed:
                raise TransportClosed(f"hub {self.address} is closed; bind a new one to send")
            box = station.peers.get(peer)
        # A peer that is gone (or never was) is dropped silently, as the contract says.
        if box is None or not box.put(message):
            log.debug("hub %s: dropped a message to unknown peer %r", self.address, peer)

    def recv(self, timeout: float | None) -> tuple[bytes, list[Frame]] | None:
        return self._station.inbox.get(timeout)

    def wakeup(self) -> None:
        self._station.inbox.wake()

    def close(self) -> None:
        station = self._station
        with _stations_lock:
            if station.closed:
                return
            station.closed = True
            if _stations.get(station.address) is station:
                del _stations[station.address]
        station.inbox.close()


class MemoryEndpoint(Endpoint):
    """A peer's connection to a :class:`MemoryHub`."""

    def __init__(self, station: _Station, identity: bytes) -> None:
        self._station = station
        self._identity = identity
        self._inbox: _Mailbox[list[Frame]] = _Mailbox()
        self._closed = False
        with _stations_lock:
            self._conn = b"memory-%d" % next(_connections)
            station.peers[self._conn] = self._inbox

    def send(self, frames: Sequence[Frame]) -> None:
        message = _check_frames(frames)
        if self._closed:
            raise TransportClosed(
                f"endpoint {self._identity!r} to {self._station.address} is closed; connect again to send"
            )
        # The hub's inbox refuses once the hub is closed: the message is dropped,
        # as it would be by a transport whose broker went away.
        self._station.inbox.put((self._conn, message))

    def recv(self, timeout: float | None) -> list[Frame] | None:
        return self._inbox.get(timeout)

    def wakeup(self) -> None:
        self._inbox.wake()

    def close(self) -> None:
        station = self._station
        with _stations_lock:
            if self._closed:
                return
            self._closed = True
            if station.peers.get(self._conn) is self._inbox:
                del station.peers[self._conn]
            # A station made by an early connect whose hub never came: forget it.
            if (
                not station.bound
                and not station.peers
                and _stations.get(station.address) is station
            ):
                del _stations[station.address]
        self._inbox.close()


class MemoryTransport(Transport):
    """A transport whose hubs and endpoints are mailboxes in this process.

    ``settings`` is accepted (and ignored) so the class can stand where a
    plugin factory is expected.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: Mapping[str, Any] = dict(settings or {})

    def bind(
        self,
        *,
        run_id: str,
        public: bool = False,
        local: bool = False,
        key: bytes | None = None,
        max_message_size: int | None = None,
    ) -> MemoryHub:
        # None of the options changes anything: a memory hub is never
        # reachable from outside this process, and frames are not buffered.
        address = f"{SCHEME}{run_id}-{next(_counter)}"
        with _stations_lock:
            station = _stations.setdefault(address, _Station(address))
            station.bound = True
        log.debug("memory hub bound at %s", address)
        return MemoryHub(station)

    def connect(self, address: str, *, identity: bytes, key: bytes | None = None) -> MemoryEndpoint:
        if not isinstance(address, str) or not address.startswith(SCHEME):
            raise ValueError(
                f"the memory transport connects to {SCHEME}... addresses only, got {address!r}"
            )
        if not isinstance(identity, bytes) or not identity:
            raise ValueError(f"an endpoint identity must be non-empty bytes, got {identity!r}")
        with _stations_lock:
            station = _stations.get(address)
            if station is None:
                station = _stations[address] = _Station(address)
        return MemoryEndpoint(station, identity)
