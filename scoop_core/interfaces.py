"""The contracts between the core and its plugins: Transport, Serializer, Launcher.

Each interface is an abstract base class whose docstrings state the whole
contract (ordering, thread-safety, close, errors), so that a third-party
plugin can be written from this module alone and checked with the
conformance suite in :mod:`scoop_core.testing`.

A *frame* is any object supporting the buffer protocol (``bytes``,
``memoryview``, ``pickle.PickleBuffer``, a ``zmq.Frame``...). Transports move
lists of frames without looking inside them and without joining them: a
64 MB array travels as its own frame and is never copied into one bytes
object by the core.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scoop_core.hosts import Host

Frame = Any
"""A buffer-protocol object: bytes, bytearray, memoryview, PickleBuffer, zmq.Frame."""


class Hub(abc.ABC):
    """The broker's end of a transport: one bound endpoint that many peers dial.

    Contract:

    - ``address`` is a string a peer passes to :meth:`Transport.connect`.
    - The ``peer`` that :meth:`recv` reports, and :meth:`send` takes, is an
      opaque *connection id*: the same for every message of one endpoint's
      connection, different for two connections at once even if they were
      given the same ``identity``, and never one connection's id for
      another's messages. It is not a name: the broker binds a peer's name
      to it when an authenticated ``Hello`` arrives on it. Where the
      transport can, it chooses the id itself rather than let the dialling
      side choose (a ZeroMQ ROUTER without handover); a connection that
      dials again after a break may get a new id.
    - :meth:`send` and :meth:`recv` are called from one thread at a time (the
      broker's); only :meth:`wakeup` and :meth:`close` may come from another.
    - Messages from one peer arrive in the order that peer sent them, whole
      (every frame of a message, or none), and messages to one peer likewise.
    - :meth:`send` never blocks for long and never drops a message to a
      connected peer; sending to a peer that is gone is silently dropped
      (the broker learns of departures from heartbeats and ``Bye`` messages,
      not from transport errors).
    - After :meth:`close`, :meth:`recv` returns ``None`` at once and
      :meth:`send` raises :class:`scoop_core.errors.TransportClosed`.
    """

    address: str

    @abc.abstractmethod
    def send(self, peer: bytes, frames: Sequence[Frame]) -> None:
        """Queue one message (a list of frames) for ``peer``."""

    def send_many(self, messages: Sequence[tuple[bytes, Sequence[Frame]]]) -> None:
        """Send several ``(peer, frames)`` messages, in order.

        The default sends them one by one; a transport whose every send costs
        a round trip overrides this to send them together."""
        for peer, frames in messages:
            self.send(peer, frames)

    @abc.abstractmethod
    def recv(self, timeout: float | None) -> tuple[bytes, list[Frame]] | None:
        """Return the next ``(peer, frames)``, or ``None``.

        ``None`` means the timeout passed, :meth:`wakeup` was called, or the
        hub is closed. ``timeout=None`` waits for ever, ``0`` polls.
        """

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a :meth:`recv` waiting in another thread return ``None`` soon.

        Thread-safe and cheap; a wake-up with no waiting ``recv`` makes the
        next ``recv`` return ``None`` at once (it is not lost)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent."""


class Endpoint(abc.ABC):
    """A peer's connection to the hub (root, worker or embedded client).

    Contract: as for :class:`Hub`, but with no peer names, since an endpoint
    talks only to the hub. The ``peer`` a hub reports for this endpoint's
    messages is a connection id of the hub's (see :class:`Hub`), not the
    ``identity`` given to :meth:`Transport.connect`, which names the
    endpoint in logs only. Messages sent before the hub is reachable are
    queued, not lost, so a worker may start before the broker binds.
    """

    @abc.abstractmethod
    def send(self, frames: Sequence[Frame]) -> None:
        """Queue one message for the hub."""

    def send_many(self, messages: Sequence[Sequence[Frame]]) -> None:
        """Send several messages to the hub, in order (see :meth:`Hub.send_many`)."""
        for frames in messages:
            self.send(frames)

    @abc.abstractmethod
    def recv(self, timeout: float | None) -> list[Frame] | None:
        """Return the next message from the hub, or ``None`` (timeout, wake-up, closed)."""

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Thread-safe: make a waiting :meth:`recv` return ``None`` soon."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent."""


class Transport(abc.ABC):
    """Creates hubs and endpoints for one run.

    A transport is built by its plugin's factory from the plugin's settings
    (a mapping, already validated against the plugin's declared settings).
    It must be usable in a child process after its settings are passed on,
    so everything a worker needs to connect is in ``address``, settings and
    the run's key.

    Options that came later are keyword arguments a transport may add to
    :meth:`bind` and :meth:`connect` (with defaults); the core passes each
    only to a method that declares it (or ``**kwargs``), so a transport
    written without them keeps working:

    - ``bind(..., local=False)``: True when every peer is a process of
      this machine started for the run (not even an SSH tunnel): the hub
      should then use an endpoint other users of the machine cannot open
      at all, if the transport has one (ZeroMQ: an ``ipc://`` socket in a
      directory only this user may enter).
    - ``bind(..., key=None)`` and ``connect(..., key=None)``: the run's
      secret, which every peer has. A transport may derive credentials from
      it so that only the run's processes can connect (ZeroMQ: CurveZMQ
      client keys), but never puts it in ``address``.
    - ``bind(..., max_message_size=None)``: the core's bound on one message,
      in bytes (None: none). A transport should refuse a bigger one before
      it buffers it, where it can (ZeroMQ: ``ZMQ_MAXMSGSIZE``, per frame).
    """

    @abc.abstractmethod
    def bind(self, *, run_id: str, public: bool = False) -> Hub:
        """Create the broker's hub.

        ``public`` is False when every peer dials from this machine (a local
        run, or remote workers that come through SSH tunnels): the hub must
        then be unreachable from other machines (loopback only)."""

    @abc.abstractmethod
    def connect(self, address: str, *, identity: bytes) -> Endpoint:
        """Create an endpoint that talks to the hub at ``address``.

        ``identity`` is this peer's name, for logs; it is not what the hub
        reports as the peer (see :class:`Hub`)."""

    def open_store(
        self, *, run_id: str | None = None, address: str | None = None, identity: str
    ) -> BrokerStore | None:
        """The transport's :class:`BrokerStore`, if its server is the broker.

        The launcher passes ``run_id`` (a new run, or, for ``scoop worker``,
        one to look up: opening must write nothing, so that looking up a run
        that does not exist leaves no trace); every other process passes the
        ``address`` of the launcher's store. The default, None,
        means the core runs its own broker on a :class:`Hub`."""
        return None


@dataclass(frozen=True)
class Entry:
    """A future's entry in a :class:`BrokerStore`'s queue.

    ``frames`` are opaque: a record the core signed, which holds everything
    the core acts on (the future, its owner, how often it was lost and
    queued); an entry the store cannot read back as it wrote it (a field it
    never writes, a frame missing) comes with no frames, for the core to
    refuse. ``id`` is the store's id for it (empty before it is added);
    ``holder`` is the taker that held it, when the store says (claims): the
    store's own bookkeeping, which the core only names in messages."""

    frames: tuple[Frame, ...]
    id: bytes = b""
    holder: str = ""


class BrokerStore(abc.ABC):
    """A server that is itself the broker (Redis): a queue of futures every
    worker takes from, a mailbox per peer, tables of shared constants, peer
    records and taken marks.

    A transport offers one through :meth:`Transport.open_store`; the core
    then runs no broker process of its own: every peer talks to the store
    through :class:`scoop_core.store_driver.SharedBrokerEndpoint`. The store
    never looks inside frames or records; the core signs everything it puts
    there with the run's key and checks everything it reads back, since
    anyone who can write to the server can write there too. So a store
    keeps no field the core would act on outside a signed record, and
    offers the ``drop_*`` methods, which delete records the core refused
    only if they are still the same (never a good one written meanwhile).

    Contract:

    - One store object per process and identity; every method except
      :meth:`wakeup` and :meth:`close` is called from one thread at a time.
    - Queue entries are handed to one taker at a time. An entry stays
      *pending* for its taker until :meth:`commit` lists it in ``done``.
      :meth:`touch` says the taker still works on entries; an entry whose
      taker has not touched it for ``min_idle`` seconds can be claimed by
      anyone (:meth:`claim_stale`), as can every entry of a taker known to
      be dead (:meth:`claim_from`).
    - :meth:`commit` is atomic: its additions, mail and acknowledgements all
      happen, or (on an error) none does.
    - Messages to one mailbox arrive in the order they were committed.
    - Records (peers, constants, marks) are opaque bytes, returned exactly
      as they were stored.
    - Errors: a store that cannot reach its server raises
      :class:`scoop_core.errors.TransportClosed` whose message names the
      server (password masked) and the cause.
    """

    address: str
    """Where the store is, for other processes' :meth:`Transport.open_store`
    (never holds a password)."""

    @abc.abstractmethod
    def new_index(self) -> int:
        """A peer index unique in the run (>= 1), for a peer about to :meth:`register`."""

    @abc.abstractmethod
    def register(self, name: str, record: bytes) -> None:
        """Store peer ``name``'s ``record`` (the core's, signed), replacing any."""

    @abc.abstractmethod
    def unregister(self, name: str) -> None:
        """Peer ``name`` has left: forget its record (and its liveness)."""

    @abc.abstractmethod
    def peers(self) -> dict[str, bytes]:
        """Every peer record there is: name -> record."""

    @abc.abstractmethod
    def drop_peers(self, records: Mapping[str, bytes]) -> int:
        """Delete each ``name: record`` whose record is still that; how many were deleted."""

    @abc.abstractmethod
    def commit(
        self,
        *,
        add: Sequence[Entry] = (),
        mail: Sequence[tuple[str, Sequence[Frame]]] = (),
        done: Sequence[bytes] = (),
    ) -> list[bytes]:
        """Atomically: append ``add`` to the queue, deliver each ``(peer
        name, frames)`` of ``mail`` to that peer's mailbox, and remove the
        entries ``done`` (acknowledged and deleted). Returns the ids of the
        added entries, in order."""

    @abc.abstractmethod
    def take(self, count: int, timeout: float | None) -> tuple[list[Entry], list[list[Frame]]]:
        """Up to ``count`` queue entries for this process (0: none) and the
        messages waiting in its own mailbox.

        Waits up to ``timeout`` seconds (``None``: a few seconds at most)
        until there is one or the other, or :meth:`wakeup` is called; then
        returns what there is, possibly nothing. Mail is deleted once it has
        been returned; a message the store cannot read back as it wrote it
        comes as an empty list, for the core to refuse."""

    @abc.abstractmethod
    def withdraw(self, entry_id: bytes) -> bool:
        """Remove the entry if nobody has taken it yet; True if it was removed."""

    @abc.abstractmethod
    def touch(self, entry_ids: Sequence[bytes]) -> None:
        """This process still works on these entries (resets their idle time)."""

    @abc.abstractmethod
    def claim_stale(self, min_idle: float, count: int = 100) -> list[Entry]:
        """Take over entries whose taker has not touched them for ``min_idle``
        seconds; each comes back with ``holder`` set to that taker."""

    @abc.abstractmethod
    def claim_from(self, name: str) -> list[Entry]:
        """Take over every entry the (dead) taker ``name`` holds."""

    @abc.abstractmethod
    def mark_taken(self, marks: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """For each ``(token, record)``, in order: keep ``record`` as the
        token's mark unless the token has one already. Returns, for each,
        None where it was kept, else the mark already there. Marks last as
        long as the run; the core makes a copied queue entry detectable
        with them."""

    @abc.abstractmethod
    def drop_mark(self, token: bytes, record: bytes) -> bool:
        """Delete ``token``'s mark if it is still ``record``; True if deleted."""

    @abc.abstractmethod
    def set_const(self, name: str, record: bytes) -> bool:
        """Define a constant (its signed record); False if ``name`` was already defined."""

    @abc.abstractmethod
    def constants(self) -> dict[str, bytes]:
        """Every constant's record there is: name -> record."""

    @abc.abstractmethod
    def drop_consts(self, records: Mapping[str, bytes]) -> int:
        """Delete each constant ``name: record`` whose record is still that; how many were deleted."""

    @abc.abstractmethod
    def put_info(self, info: bytes) -> bool:
        """Store the run's description; False if the run already has one
        (its id is in use)."""

    @abc.abstractmethod
    def get_info(self) -> bytes | None:
        """The run's description, or None if there is no such run."""

    @abc.abstractmethod
    def beat(self, ttl: float, record: bytes | None = None) -> None:
        """This process is alive for the next ``ttl`` seconds. With
        ``record``, also store it again as this peer's record, unless the
        run's peer records are gone altogether (the run ended): a record
        someone overwrote is back within a heartbeat."""

    @abc.abstractmethod
    def alive(self, name: str) -> bool:
        """Whether peer ``name`` has beaten within its last ``ttl``."""

    def room(self) -> int | None:
        """How many more entries the queue takes now; None: no limit (the default).

        A peer holds back what does not fit and adds it later, so a store
        with a length limit never has to drop a future."""
        return None

    def waiting(self, min_idle: float) -> list[Entry]:
        """Every entry that no live taker works on: those nobody has taken,
        and those whose taker has not touched them for ``min_idle`` seconds
        (``holder`` set to that taker). For a peer that fails the futures it
        owns when no worker is left to run them.

        The default lists none: queued futures then wait for a worker."""
        return []

    def remove_waiting(self, entry_ids: Sequence[bytes], min_idle: float) -> list[bytes]:
        """Atomically, for each entry: delete it if it is still as
        :meth:`waiting` lists it (nobody took it, or its taker has not
        touched it for ``min_idle`` seconds), so that no taker can run it
        after this. Returns the ids deleted, in order; an entry a taker took
        or touched meanwhile stays."""
        return []

    def mark_hungry(self, ttl: float) -> None:
        """A worker found the queue empty: for ``ttl`` seconds, the run is hungry.

        The default does nothing: futures are then never stolen, only taken."""
        return None

    def anyone_hungry(self) -> bool:
        """Whether the run is hungry; answering True clears the mark, so one
        mark brings one hand-over of spare futures."""
        return False

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Thread-safe: make a waiting :meth:`take` return soon."""

    @abc.abstractmethod
    def close(self, *, end_run: bool = False) -> None:
        """Disconnect; with ``end_run``, first delete every key of the run.
        Idempotent; never raises for an unreachable server (logs instead)."""


class Serializer(abc.ABC):
    """Turns Python objects into frames and back.

    ``dumps`` returns the main pickle first and then each out-of-band buffer
    as its own frame (pickle protocol 5), so large arrays are never copied
    into the main frame. ``loads(dumps(x))`` equals ``x``. Errors: ``dumps``
    raises whatever the pickler raises; the core turns it into a
    :class:`scoop_core.errors.SerializationError` naming the object.
    """

    name: str

    @abc.abstractmethod
    def dumps(self, obj: Any) -> list[Frame]:
        """Serialize ``obj`` to one main frame plus out-of-band buffers."""

    @abc.abstractmethod
    def loads(self, frames: Sequence[Frame]) -> Any:
        """Rebuild the object from the frames ``dumps`` returned."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a launcher needs to start one worker process."""

    name: str
    host: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


class WorkerGroup(abc.ABC):
    """The processes a launcher started; it owns them until :meth:`stop`."""

    @abc.abstractmethod
    def poll(self) -> dict[str, int | None]:
        """Exit status per worker name (``None`` while running)."""

    @abc.abstractmethod
    def stop(self, grace: float) -> None:
        """Stop every process: terminate, wait ``grace`` seconds, then kill.

        Must leave no process behind, whatever state they are in."""


class Launcher(abc.ABC):
    """Starts worker processes on some hosts and stops them again."""

    @abc.abstractmethod
    def start(self, workers: Sequence[WorkerSpec]) -> WorkerGroup:
        """Start the workers; raise :class:`scoop_core.errors.LaunchError`
        naming the host and cause if any cannot start (and stop the others).

        A worker's ``host`` is ``[user@]name[:port]`` as the user wrote it;
        :func:`scoop_core.hosts.is_local` says whether it is this machine.
        Workers on other machines get their environment through the
        launcher's channel, never their command line: run
        :mod:`scoop_core.host_supervisor` there (one per host) and hand it the plan."""

    def allocation(self) -> Sequence[Host] | None:
        """The hosts this launcher's surroundings give the run without being
        asked (a scheduler's allocation), or None. Called only when the user
        named no hosts and the plugin's ``detect()`` said yes."""
        return None

    def count_cores(self, hosts: Sequence[Host]) -> dict[str, int]:
        """Cores of each of ``hosts`` (by ``Host.address``) that gave no
        worker count; hosts missing from the answer get one worker."""
        return {}
