"""Where a run's processes meet: a broker thread on a hub, or a store.

A run has one of two kinds of transport. A hub-based one
(:class:`~scoop_core.interfaces.Transport`, ZeroMQ) needs a broker: the
launcher runs :class:`~scoop_core.broker.Broker` in a thread, and every
process dials its hub. A store-backed one
(:class:`~scoop_core.interfaces.StoreTransport`, Redis) has no broker
process: every process plays its part of the broker against the store
(:class:`~scoop_core.store_driver.StoreEndpoint`), and the launcher only
describes the run there, says it is alive, hands on what a dead worker
held and tells everyone when the run ends.

:class:`RunBackend` is what both offer the code that starts a run
(:class:`scoop_core.run.Run`) and the processes of a run
(:mod:`scoop_core.bootstrap`), so neither asks which kind it has;
:func:`backend_for` is the one place that does.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scoop_core import messages as m
from scoop_core import run_keys
from scoop_core.broker import Broker, supported
from scoop_core.errors import LaunchError, TransportClosed
from scoop_core.interfaces import BrokerStore, Endpoint, StoreTransport, Transport
from scoop_core.run_activity import RunActivity

# The store's own modules (store_records, store_driver) are imported by the
# store-backed code below only: a run over a hub never needs them, and every
# launcher would pay for their import.

log = logging.getLogger("scoop.launcher")

INFO = "info"
"""The name of the run's description in the store's ``run`` table."""


@dataclass(frozen=True)
class RunSettings:
    """What every process of a run agrees on, whoever started it."""

    run_id: str
    key: bytes
    transport: str
    """The transport plugin's name (for messages that tell the user what to type)."""
    root: str = "root"
    workers: int = 1
    max_losses: int = 3
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    max_message_size: int | None = None
    trace: bool = False
    """Whether the run's processes keep trace events (``--trace``)."""
    workers_from_jobs: bool = False
    """Whether the workers come from jobs in a scheduler's queue (``--jobs``):
    they start whenever the scheduler starts them, so the program is not
    held until they join, and queued futures wait for them however long it
    takes (the launcher ends the run when no job is left to bring any)."""


@dataclass(frozen=True)
class Connection:
    """A process's place in the run: its endpoint, and what the process must
    watch to know when to go."""

    endpoint: Endpoint
    over: threading.Event | None = None
    """Set once this process's part in the run is over, for a run that
    outlives its launcher (a store keeps it); None where the run ends with
    its launcher, so a process whose launcher is gone exits at once."""
    leave: Callable[[float], bool] | None = None
    """Hands back the futures this process holds, so they run elsewhere at
    once, and stops it; True if done within the seconds given. None where
    the broker hands them on itself when it counts the process lost."""


class RunBackend(abc.ABC):
    """The meeting place of one run's processes.

    Contract:

    - The launcher (or an embedding program) builds it with
      :func:`backend_for` and no ``address``, calls :meth:`start` once, and
      :meth:`end` then :meth:`close` when the run is over. A process that
      joins a run started elsewhere builds it with that run's ``address``
      and only calls :meth:`connect`.
    - :attr:`address` is where the run's processes reach it (after
      :meth:`start`, or as given).
    - :meth:`peer_lost`, :meth:`end` and :meth:`close` come from the
      launcher's thread; :meth:`end` and :meth:`close` are idempotent and
      safe before :meth:`start` (a run whose start failed is ended too).
    """

    def __init__(self, settings: RunSettings, address: str | None) -> None:
        self.settings = settings
        self._address = address
        # The processes' reports (scoop_core.run_activity), where this process reads them.
        self.activity = RunActivity(
            settings.run_id,
            settings.transport,
            tracing=settings.trace,
            heartbeat_timeout=settings.heartbeat_timeout,
        )

    @property
    def address(self) -> str:
        if self._address is None:
            raise RuntimeError("the run's backend has no address before start()")
        return self._address

    @abc.abstractmethod
    def start(self, description: Mapping[str, object]) -> None:
        """Open the meeting place; ``description`` is what a worker that
        joins later must know of the run (kept where such workers find it,
        if there is such a place). Raises :class:`LaunchError` naming the
        cause if the run cannot start there."""

    @abc.abstractmethod
    def connect(self, name: str, *, launcher_alive: Callable[[], bool] | None = None) -> Connection:
        """The connection of this process, peer ``name``, to the run.

        ``launcher_alive`` says whether the run's launcher still runs (None:
        ask the run itself, where it can tell)."""

    @abc.abstractmethod
    def peer_lost(self, name: str) -> None:
        """The process of peer ``name`` has ended: what it held runs elsewhere, now."""

    @abc.abstractmethod
    def end(self, reason: str) -> set[str]:
        """Tell every peer the run is over (``reason``); the names of those
        that will hear it and exit on their own."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what :meth:`start` made, the run's traces included."""

    def env(self) -> dict[str, str]:
        """Variables a process of the run needs from this backend, besides the run's own."""
        return {}

    def poll(self) -> None:  # noqa: B027 (a hook: a broker's reports come by themselves)
        """Bring :attr:`activity` up to date with the processes' reports, where
        they are not brought to it (a broker's come to it as they are sent)."""


class BrokerBackend(RunBackend):
    """A hub-based transport: the broker runs in a thread of this process."""

    def __init__(
        self,
        transport: Transport,
        settings: RunSettings,
        *,
        address: str | None = None,
        public: bool = False,
        local: bool = False,
    ) -> None:
        super().__init__(settings, address)
        self.transport = transport
        self.public = public
        self.local = local
        self.broker: Broker | None = None
        self._ended = False

    def start(self, description: Mapping[str, object]) -> None:
        s = self.settings
        self.broker = Broker(
            self.transport,
            key=s.key,
            run_id=s.run_id,
            public=self.public,
            local=self.local,
            expected_workers=0 if s.workers_from_jobs else s.workers,
            wait_for_workers=s.workers_from_jobs,
            max_losses=s.max_losses,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_timeout=s.heartbeat_timeout,
            max_message_size=s.max_message_size,
            activity=self.activity,
        )
        self.broker.start()
        self._address = self.broker.address

    def connect(self, name: str, *, launcher_alive: Callable[[], bool] | None = None) -> Connection:
        connect = self.transport.connect
        endpoint = connect(
            self.address, identity=name.encode(), **supported(connect, key=self.settings.key)
        )
        return Connection(endpoint)

    def peer_lost(self, name: str) -> None:
        if self.broker is not None:
            self.broker.peer_lost(name.encode())

    def end(self, reason: str) -> set[str]:
        if self.broker is None or self._ended:
            return set()
        self._ended = True
        self.broker.shutdown(reason)
        # A worker counted as lost (frozen, say) will not answer either.
        return self.broker.book.joined - self.broker.lost

    def close(self) -> None:
        # Ending the run stopped the broker and closed its hub.
        self.end("the run is over")


class StoreBackend(RunBackend):
    """A store-backed transport: the store is the broker; the launcher
    describes the run there, keeps its own flag up, hands on a dead
    worker's futures and tells everyone at the end."""

    def __init__(
        self,
        transport: StoreTransport,
        settings: RunSettings,
        *,
        address: str | None = None,
        key_path: str = "",
    ) -> None:
        super().__init__(settings, address)
        self.transport = transport
        self.key_path = key_path  # the launcher's key file, which a run ending deletes
        self.store: BrokerStore | None = None
        # The beat thread and the launcher's own thread share the store object.
        self._lock = threading.Lock()
        self._beating = threading.Event()
        from scoop_core.store_records import LAUNCHER

        self._codec = m.Codec(settings.key, LAUNCHER.encode())
        self._ended = False

    def start(self, description: Mapping[str, object]) -> None:
        from scoop_core import store_records as records

        s = self.settings
        store = self.transport.open_store(run_id=s.run_id, identity=records.LAUNCHER)
        signed = records.sign_info(dict(description), s.key)
        [there] = store.put_records(records.RUN, [(INFO, signed)])
        if there is not None:
            # Another run's keys: never ours to delete.
            store.close()
            raise LaunchError(
                f"run id {s.run_id} is already in use at {store.address}; "
                "choose another --run-id (or none, for a new random one)"
            )
        self.store = store
        self._address = store.address
        # The tables the run's processes report into (see poll): made here,
        # so that a process that reports after the run ended makes none again.
        store.put_records(records.REPORTS, [(records.LAUNCHER, b"")])
        store.put_records(records.TRACE, [(records.LAUNCHER, b"")])
        from scoop_core.store_driver import server_clock_offset

        self.activity.launcher.clock_offset = server_clock_offset(store)
        if not os.environ.get(run_keys.KEY_ENV):
            self.key_path = str(run_keys.write_key_file(s.run_id, s.key))
        log.info(
            "run %s: more workers can join with: scoop worker --transport %s --run %s "
            "(the run's key is in %s)",
            s.run_id,
            s.transport,
            s.run_id,
            self.key_path or f"${run_keys.KEY_ENV}",
        )
        # A program that outlives its launcher sees the flag go down, and ends the run itself.
        self._beat()
        threading.Thread(target=self._keep_beating, name="scoop-launcher-beat", daemon=True).start()

    def _beat(self) -> None:
        from scoop_core import store_records as records

        assert self.store is not None
        try:
            with self._lock:
                self.store.flag(
                    records.alive_flag(records.LAUNCHER), self.settings.heartbeat_timeout
                )
        except TransportClosed as exc:
            log.error("%s", exc)

    def _keep_beating(self) -> None:
        while not self._beating.wait(self.settings.heartbeat_interval):
            self._beat()

    def connect(self, name: str, *, launcher_alive: Callable[[], bool] | None = None) -> Connection:
        from scoop_core.store_driver import StoreEndpoint

        s = self.settings
        endpoint = StoreEndpoint(
            self.transport.open_store(address=self.address, identity=name),
            key=s.key,
            name=name,
            root=s.root,
            max_losses=s.max_losses,
            expected_workers=s.workers if name == s.root and not s.workers_from_jobs else 0,
            wait_for_workers=s.workers_from_jobs,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_timeout=s.heartbeat_timeout,
            max_message_size=s.max_message_size,
            launcher_alive=launcher_alive,
            key_path=self.key_path,
            # A worker that joins as the run ends leaves at once, and leaves nothing.
            run_id=s.run_id,
            description=INFO,
        )
        return Connection(endpoint, over=endpoint.over, leave=endpoint.leave)

    def peer_lost(self, name: str) -> None:
        from scoop_core.store_driver import announce_departure, report_lost

        if self.store is None:
            return
        try:
            with self._lock:
                report_lost(
                    self.store,
                    self.store.claim_from(name),
                    key=self.settings.key,
                    codec=self._codec,
                    lost_by=name,
                    max_size=self.settings.max_message_size,
                )
                announce_departure(self.store, self._codec, name)
        except TransportClosed as exc:
            log.error("could not hand on the futures of %s: %s", name, exc)

    def poll(self) -> None:
        from scoop_core import store_records as records

        if self.store is None:
            return
        try:
            with self._lock:
                records.read_reports(self.store, self.settings.key, self.activity)
        except TransportClosed as exc:
            log.error("could not read the run's reports: %s", exc)

    def end(self, reason: str) -> set[str]:
        from scoop_core.store_driver import tell_everyone

        if self.store is None or self._ended:
            return set()
        self._ended = True
        self._beating.set()
        try:
            with self._lock:
                return tell_everyone(self.store, self._codec, reason, 5.0)
        except TransportClosed as exc:
            log.error("could not tell the workers the run is over: %s", exc)
            return set()

    def close(self) -> None:
        if self.store is None:
            return
        self._beating.set()
        with self._lock:
            self.store.close(end_run=True)
        self.store = None
        if self.key_path:
            with contextlib.suppress(OSError):
                os.unlink(self.key_path)

    def env(self) -> dict[str, str]:
        return {"_SCOOP_KEY_FILE": self.key_path} if self.key_path else {}


def backend_for(
    transport: Transport | StoreTransport,
    settings: RunSettings,
    *,
    address: str | None = None,
    public: bool = False,
    local: bool = False,
    key_path: str = "",
) -> RunBackend:
    """The backend of a run over ``transport``.

    Without ``address``, a new run, to :meth:`~RunBackend.start` here;
    with it, the run at ``address`` that this process joins. ``public``
    and ``local`` say who must reach a broker's hub (see
    :class:`~scoop_core.interfaces.Transport`); ``key_path`` is the
    launcher's key file of a store-backed run, which the process that
    ends the run deletes."""
    if isinstance(transport, StoreTransport):
        return StoreBackend(transport, settings, address=address, key_path=key_path)
    return BrokerBackend(transport, settings, address=address, public=public, local=local)


def find_run(
    transport: StoreTransport, run_id: str, key_path: str | None
) -> tuple[str, bytes, dict[str, object]]:
    """The store address, key and description of run ``run_id``, as its
    launcher's :meth:`StoreBackend.start` left them, for workers that join
    it; :class:`LaunchError` if there is no such run or the key is not its.
    The key comes from :func:`~scoop_core.run_keys.find_run_key`."""
    from scoop_core import store_records as records

    store = transport.open_store(run_id=run_id, identity=f"joiner-{os.getpid()}")
    try:
        blob = store.records(records.RUN).get(INFO)
        address = store.address
    finally:
        store.close()
    if blob is None:
        raise LaunchError(
            f"there is no run {run_id} at {address}: it has ended, or the run id or server is "
            "wrong (scoop run -v prints the run id)"
        )
    try:
        key = run_keys.find_run_key(run_id, key_path)
    except ValueError as exc:
        raise LaunchError(f"cannot join run {run_id}: {exc}") from None
    try:
        info = records.read_info(blob, key)
    except ValueError as exc:
        raise LaunchError(
            f"cannot join run {run_id}: {exc}; give the run's key (SCOOP_RUN_KEY or "
            "--key-file), or, if an earlier run with this id left its keys there, choose "
            "another run id (they expire after the transport's expire setting)"
        ) from None
    return address, key, info
