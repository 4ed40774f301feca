"""The contracts between the core and its plugins: transports, stores, serializers, launchers.

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


Letter = tuple[str, Sequence[Frame]]
"""Mail for one peer: its name, and the frames of one message to leave in its mailbox."""


class BrokerStore(abc.ABC):
    """Shared storage that stands in for a broker process (Redis, say).

    A :class:`StoreTransport` offers one through
    :meth:`StoreTransport.open_store`; the core then runs no broker of its
    own: every peer plays its part of the broker against the store, through
    :class:`scoop_core.store_driver.StoreEndpoint`. A store keeps
    and hands out; it decides nothing. It provides four things:

    1. A *queue* of entries with *leases*. :meth:`commit` appends entries;
       :meth:`take` hands each to one taker, leased to the taking store's
       :attr:`identity`, until a :meth:`commit` lists it in ``done``.
       :meth:`renew` keeps a lease; an entry whose lease was not renewed
       for a while can be taken over (:meth:`claim_expired`), as can every
       entry of a holder known to be dead (:meth:`claim_from`). An entry
       nobody holds can be removed (:meth:`withdraw`) and listed
       (:meth:`queued`).
    2. A *mailbox* per peer name, written by :meth:`commit` and read by the
       :meth:`take` of the store whose :attr:`identity` is that name.
    3. *Record tables*: named maps from a name to opaque bytes, created by
       their first :meth:`put_records` with ``replace=False``. The core
       uses the tables ``peers``, ``constants``, ``marks`` and ``run``; a
       store accepts any table name made of ASCII letters, digits, ``-``
       and ``_`` (ValueError otherwise).
    4. *Liveness*: a counter (:meth:`new_index`) and flags that go down by
       themselves (:meth:`flag`, :meth:`flagged`).

    Contract:

    - One store object per process and identity. Every method except
      :meth:`wakeup` and :meth:`close` is called from one thread at a time;
      those two may come from any thread, at any time.
    - :meth:`commit` is atomic: its additions, mail and removals all happen,
      or (on an error) none does; no other store sees part of one.
    - Entries are taken oldest first; an entry is leased to one holder at a
      time, and never handed to a second taker while its lease holds.
    - Messages to one mailbox arrive in the order they were committed, each
      once.
    - Frames and records are opaque: returned exactly as they were stored
      (any bytes, the empty record included). The store never looks inside
      them. The core signs everything it puts there with the run's key and
      checks everything it reads back, since anyone who can write to the
      server can write there too; that is why records can be deleted only
      if they are still the same (:meth:`drop_records`: never a good one
      written meanwhile), and why flags carry no data: the core never acts
      on a flag in a way that gets anything run, unpickled or misrouted.
    - Clocks (leases, flags) are the store's: durations in seconds, measured
      by the store or its server, never against the callers' wall clocks.
    - Errors: a store that cannot reach its server raises
      :class:`scoop_core.errors.TransportClosed` whose message names the
      server (password masked) and the cause; so does any method but
      :meth:`wakeup` and :meth:`close` on a closed store.
    """

    address: str
    """Where the store is, for other processes' :meth:`StoreTransport.open_store`
    (never holds a password)."""

    identity: str
    """The peer name this store object takes entries, holds leases and reads
    mail as (given to :meth:`StoreTransport.open_store`)."""

    # -- the queue and the mailboxes ----------------------------------------------

    @abc.abstractmethod
    def commit(
        self, *, add: Sequence[Entry] = (), mail: Sequence[Letter] = (), done: Sequence[bytes] = ()
    ) -> list[bytes]:
        """Atomically: append ``add`` to the queue, in order; deliver each
        ``(peer name, frames)`` of ``mail`` to that peer's mailbox, in order;
        and remove the entries ``done`` (whoever holds them; an id that is
        not in the queue is ignored). Returns the ids of the added entries,
        in order: distinct, non-empty bytes. An entry or a letter needs at
        least one frame (ValueError)."""

    @abc.abstractmethod
    def take(self, count: int, timeout: float | None) -> tuple[list[Entry], list[list[Frame]]]:
        """Up to ``count`` entries nobody holds (0: none), oldest first, each
        now leased to :attr:`identity`, and the messages waiting in the
        mailbox of :attr:`identity`, in order.

        Waits up to ``timeout`` seconds (``None``: a few seconds at most)
        until there is one or the other, or :meth:`wakeup` is called, or the
        store is closed; then returns what there is, possibly nothing. Mail
        is deleted once it has been returned. An entry or a message the
        store cannot read back as it was written (someone else wrote it)
        comes with no frames, for the core to refuse."""

    @abc.abstractmethod
    def renew(self, entry_ids: Sequence[bytes]) -> None:
        """This process still works on these entries it holds: their leases
        start again now. Ids of entries it does not hold are ignored."""

    @abc.abstractmethod
    def claim_expired(self, lease: float, count: int = 100) -> list[Entry]:
        """Take over up to ``count`` entries whose holder has not taken or
        renewed them for ``lease`` seconds; each comes back with ``holder``
        set to that holder, and is now leased to :attr:`identity`. Entries
        this store itself holds are not among them."""

    @abc.abstractmethod
    def claim_from(self, holder: str) -> list[Entry]:
        """Take over every entry ``holder`` (a taker known to be dead) holds,
        whatever its lease; each comes back with ``holder`` set. ValueError
        if ``holder`` is :attr:`identity`."""

    @abc.abstractmethod
    def withdraw(self, entry_ids: Sequence[bytes]) -> list[str | None]:
        """Remove each entry nobody holds; for each id, in order: ``None``
        if it was removed (so nobody will ever take it), else the name of
        the identity that holds it now (it stays), or ``""`` if the queue
        has no such entry (done, withdrawn, or never there). Atomic for
        each entry: a taker cannot take one between the look and the
        removal."""

    @abc.abstractmethod
    def queued(self) -> list[Entry]:
        """Every entry nobody holds, oldest first (for rare scans, such as
        cleaning up after a dead peer; it need not be fast)."""

    def server_time(self) -> int | None:
        """The store server's clock, in ns since the epoch, against which the
        run's processes align their traces; None (the default) if it has none."""
        return None

    def room(self) -> int | None:
        """How many more entries the queue takes now; None: no limit (the default).

        A peer holds back what does not fit and adds it later, so a store
        with a length limit never has to drop a future."""
        return None

    # -- record tables ------------------------------------------------------------

    @abc.abstractmethod
    def put_records(
        self, table: str, records: Sequence[tuple[str, bytes]], *, replace: bool = False
    ) -> list[bytes | None]:
        """Store each ``(name, record)`` in ``table``, in order.

        With ``replace=False``: store it unless the name has a record
        already (creating the table if need be); returns, for each, None
        where it was stored, else the record already there (so a name is
        defined once: the second of two equal names gets the first's
        record). With ``replace=True``: store it over any record, but only
        into a table that exists, so a run whose tables were deleted at its
        end stays ended; returns None for each. Atomic for each record."""

    @abc.abstractmethod
    def records(self, table: str) -> dict[str, bytes]:
        """Every record of ``table``: name -> exactly the bytes stored (empty
        if there is no such table)."""

    @abc.abstractmethod
    def drop_records(self, table: str, records: Mapping[str, bytes]) -> int:
        """Delete each ``name: record`` of ``table`` whose record is still
        exactly that (compare and delete, atomically); how many were deleted."""

    # -- liveness ---------------------------------------------------------------------

    @abc.abstractmethod
    def new_index(self) -> int:
        """A number unique in the run, >= 1 (a peer's index)."""

    @abc.abstractmethod
    def flag(self, name: str, ttl: float) -> None:
        """Raise flag ``name`` for ``ttl`` seconds; raising it again restarts
        its clock. ``ttl <= 0`` lowers it now. Flags are the run's: every
        store of the run sees them."""

    @abc.abstractmethod
    def flagged(self, name: str) -> bool:
        """Whether flag ``name`` is up."""

    # -- wake-ups and the end ---------------------------------------------------------

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Thread-safe and cheap: make a :meth:`take` waiting in another
        thread return soon; a wake-up with no waiting ``take`` makes the
        next one return at once (it is not lost)."""

    @abc.abstractmethod
    def close(self, *, end_run: bool = False) -> None:
        """Disconnect; with ``end_run``, first delete everything of the run
        (queue, mailboxes, tables, flags, counter), for every store of it.
        A :meth:`take` waiting in another thread returns. Idempotent; never
        raises for an unreachable server (logs instead)."""


class StoreTransport(abc.ABC):
    """A transport whose server is the broker: it offers a :class:`BrokerStore`.

    Built, like a :class:`Transport`, by its plugin's factory from the
    plugin's settings, and usable in a child process after its settings are
    passed on. A store-only transport implements just :meth:`open_store`;
    the core tells it from a hub-based one with
    ``isinstance(transport, StoreTransport)``.
    """

    @abc.abstractmethod
    def open_store(
        self, *, run_id: str | None = None, address: str | None = None, identity: str
    ) -> BrokerStore:
        """This process's store object for one run, taking entries as ``identity``.

        The launcher passes ``run_id`` (a new run, or, for ``scoop worker``,
        one to look up: opening must write nothing, so that looking up a run
        that does not exist leaves no trace); every other process passes the
        ``address`` of the launcher's store. Exactly one of the two (else
        ValueError). Raises :class:`scoop_core.errors.LaunchError` naming
        the server if it cannot be used."""


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

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Start the worker ``spec`` where the worker ``dead`` ran (it has
        exited: the run replaces a worker that died, up to ``max_restarts``
        per host).

        Optional. From then on :meth:`poll` reports ``spec.name`` too (and
        still ``dead``, with its status), and :meth:`stop` stops it with
        the others. Called from the thread that polls the group. Raises
        :class:`scoop_core.errors.LaunchError` naming the host and cause if
        the worker cannot be started; the run then goes on without it.

        The default raises :class:`NotImplementedError`: this group cannot
        start workers later, and the run goes on with those it has."""
        raise NotImplementedError(f"{type(self).__name__} cannot start workers later")


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


@dataclass(frozen=True)
class JobRequest:
    """One batch job of workers, as :class:`JobQueue` writes it into a job script.

    Sizes are already parsed: ``memory`` in bytes for the whole job,
    ``walltime`` in seconds (None: the queue's default); ``extra`` holds the
    user's own directive options, one per line of the header, written after
    the others."""

    name: str
    cores: int
    output: str
    error: str
    memory: int | None = None
    walltime: int | None = None
    queue: str | None = None
    extra: tuple[str, ...] = ()


class JobQueue(abc.ABC):
    """A batch scheduler's queue seen from a login node: how to write a job
    script's header and the command lines that submit, list and cancel jobs.

    A scheduler launcher plugin offers one through its record's
    ``job_queue`` field, and :mod:`scoop_core.worker_jobs` does the rest
    (the script's body, running the commands, tracking and cancelling every
    job), the same way for every scheduler. Nothing here runs a command: the
    methods build command lines and read their output, so tests drive them
    directly.

    Contract:

    - :meth:`header` returns the directive lines of a job of ``cores``
      cores on one node, whose standard output and error go to the
      request's files; it never holds a secret (the script is printed by
      ``--dry-run``).
    - A job's state is the scheduler's own word (``PENDING``, ``qw``, ``Q``);
      :meth:`phase` maps it to one of :attr:`PENDING`, :attr:`RUNNING`,
      :attr:`FAILED` or :attr:`ENDED`. A job the listing no longer shows has
      ended.
    - Errors: :meth:`job_id` and :meth:`states` raise ``ValueError`` naming
      what they could not read.
    """

    PENDING = "pending"
    """Waiting in the queue (held, or waiting for resources)."""
    RUNNING = "running"
    """Started on a node (its workers join the run)."""
    FAILED = "failed"
    """Ended, or about to, without running to its end (error state, cancelled, out of time)."""
    ENDED = "ended"
    """Ran to its end."""

    scheduler: str = ""
    """The scheduler's name for messages: ``"SLURM"``."""

    directive: str = ""
    """What starts a header line: ``"#SBATCH"``."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        # The launcher plugin's settings (its section): what the queue may need of them.
        self.settings = dict(settings or {})

    @abc.abstractmethod
    def header(self, job: JobRequest) -> list[str]:
        """The header's lines, each starting with :attr:`directive`."""

    def directives(self, job: JobRequest, options: Sequence[str | None]) -> list[str]:
        """Header lines: each of ``options`` that is not None or empty (an
        option a request leaves out), then the user's ``job.extra``, each
        after :attr:`directive`; for :meth:`header`."""
        return [f"{self.directive} {option}" for option in [*options, *job.extra] if option]

    @abc.abstractmethod
    def submit_command(self, script: str) -> list[str]:
        """The command line that submits the job script at path ``script``."""

    @abc.abstractmethod
    def job_id(self, output: str) -> str:
        """The new job's id in the submit command's standard output."""

    @abc.abstractmethod
    def list_command(self) -> list[str]:
        """The command line that lists this user's jobs with their states."""

    @abc.abstractmethod
    def states(self, output: str, ids: Sequence[str]) -> dict[str, str]:
        """The state of each of ``ids`` the listing ``output`` shows, in the
        scheduler's word; ids it does not show are left out."""

    @abc.abstractmethod
    def phase(self, state: str) -> str:
        """:attr:`PENDING`, :attr:`RUNNING`, :attr:`FAILED` or :attr:`ENDED` for ``state``."""

    @abc.abstractmethod
    def cancel_command(self, ids: Sequence[str]) -> list[str]:
        """The command line that cancels the jobs ``ids``."""
