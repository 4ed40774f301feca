"""An in-memory :class:`~scoop_core.interfaces.BrokerStore`, for tests in one process.

The core's store path (a run with no broker process, every peer playing its
part against shared storage) can then be tested with threads instead of a
Redis server, and the store conformance suite
(:mod:`scoop_core.testing.store_conformance`) has a reference it must pass.

Why it is built this way:

- A :class:`MemoryStoreServer` holds one run's state, as a Redis server
  holds a run's keys; every :class:`MemoryStore` of the run (one per peer
  identity) shares it. One :class:`threading.Condition` guards it all: each
  method is one step under its lock, so :meth:`MemoryStore.commit` is atomic
  and :meth:`MemoryStore.take` waits on the condition, which any change,
  wake-up or close notifies. The wake-up is a
  :class:`~scoop_core.wakeup.WakeUp` whose poke notifies the condition, so
  ``take`` takes it outside the condition's lock and only looks at it inside.
- Servers are found by address in a process-wide registry, so
  :meth:`MemoryStoreTransport.open_store` by ``address`` works as a worker's
  would; a run id maps to one address per transport namespace, so a second
  launcher of the same run id finds the first one's run.
- Leases and flags are measured with :func:`time.monotonic`, the store's own
  clock, as the contract asks.
- Frames and records are copied into ``bytes`` when stored, so a caller that
  reuses its buffer cannot change what others read; out-of-band frames come
  back as ``bytearray`` (writable), as from the other transports.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import BrokerStore, Entry, Frame, Letter, StoreTransport
from scoop_core.wakeup import WakeUp

__all__ = ["MemoryStore", "MemoryStoreServer", "MemoryStoreTransport"]

TAKE_WAIT = 2.0
"""Seconds ``take(count, None)`` waits at most, as the contract allows ("a few seconds")."""

_TABLE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _stored(frames: Sequence[Frame], what: str) -> tuple[bytes, ...]:
    if not frames:
        raise ValueError(f"{what} needs at least one frame, got an empty sequence")
    return tuple(memoryview(f).tobytes() for f in frames)


def _handed(frames: tuple[bytes, ...]) -> list[Frame]:
    return [frames[0], *(bytearray(f) for f in frames[1:])]


def _check_table(table: str) -> None:
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
        raise ValueError(
            f"a table name is made of ASCII letters, digits, '-' and '_', got {table!r}"
        )


@dataclass
class _Item:
    """A queue entry: its frames, and its lease (holder, when it was last taken or renewed)."""

    frames: tuple[bytes, ...]
    holder: str = ""
    since: float = 0.0


@dataclass
class _Run:
    """Everything of one run; what ``close(end_run=True)`` deletes."""

    queue: dict[bytes, _Item] = field(default_factory=dict)  # insertion order: oldest first
    mail: dict[str, deque[tuple[bytes, ...]]] = field(default_factory=dict)
    tables: dict[str, dict[str, bytes]] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)  # name -> when it goes down
    index: int = 0


class MemoryStoreServer:
    """One run's shared state, which every :class:`MemoryStore` of the run uses.

    ``changed`` is the condition every store waits on and notifies."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.changed = threading.Condition()
        self.run = _Run()
        self._ids = itertools.count(1)  # entry ids stay unique even across an ended run

    def new_id(self) -> bytes:
        return b"%d-0" % next(self._ids)

    def end_run(self) -> None:
        """Delete everything of the run (under ``changed``)."""
        self.run = _Run()


_registry: dict[str, MemoryStoreServer] = {}
_registry_lock = threading.Lock()


def server_at(address: str) -> MemoryStoreServer:
    """The server at ``address`` in this process, made empty if there is none yet."""
    with _registry_lock:
        server = _registry.get(address)
        if server is None:
            server = _registry[address] = MemoryStoreServer(address)
        return server


class MemoryStore(BrokerStore):
    """A peer's store object on a :class:`MemoryStoreServer`, taking and reading mail as ``identity``."""

    def __init__(self, server: MemoryStoreServer, *, identity: str) -> None:
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"a store identity must be a non-empty peer name, got {identity!r}")
        self.server = server
        self.address = server.address
        self.identity = identity
        self._changed = server.changed
        self._wake = WakeUp(self._notify)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _open(self) -> _Run:
        """The run's state; call with ``_changed`` held."""
        if self._wake.closed:
            raise TransportClosed(f"the memory store {self.address} of {self.identity} is closed")
        return self.server.run

    # -- the queue and the mailboxes ----------------------------------------------

    def commit(
        self, *, add: Sequence[Entry] = (), mail: Sequence[Letter] = (), done: Sequence[bytes] = ()
    ) -> list[bytes]:
        # Everything is checked and copied before anything changes: all or nothing.
        entries = [_stored(entry.frames, "a queue entry") for entry in add]
        letters = [(str(peer), _stored(frames, "a message")) for peer, frames in mail]
        with self._changed:
            run = self._open()
            for entry_id in done:
                run.queue.pop(bytes(entry_id), None)
            ids = []
            for frames in entries:
                entry_id = self.server.new_id()
                run.queue[entry_id] = _Item(frames)
                ids.append(entry_id)
            for peer, frames in letters:
                run.mail.setdefault(peer, deque()).append(frames)
            if entries or letters:
                self._changed.notify_all()
        return ids

    def take(self, count: int, timeout: float | None) -> tuple[list[Entry], list[list[Frame]]]:
        count = max(0, int(count))
        wait = TAKE_WAIT if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + wait
        with self._wake.receiving():
            while True:
                # A wake-up is served before anything else, so a busy queue cannot starve it.
                if self._wake.take():
                    return [], []
                with self._changed:
                    if self._wake.due:
                        continue
                    run = self.server.run
                    now = time.monotonic()
                    entries: list[Entry] = []
                    for entry_id, item in run.queue.items():
                        if len(entries) >= count:
                            break
                        if not item.holder:
                            item.holder, item.since = self.identity, now
                            entries.append(Entry(tuple(_handed(item.frames)), entry_id))
                    box = run.mail.pop(self.identity, None)
                    letters = [_handed(frames) for frames in box or ()]
                    if entries or letters:
                        return entries, letters
                    remaining = deadline - now
                    if remaining <= 0:
                        return [], []
                    self._changed.wait(remaining)

    def renew(self, entry_ids: Sequence[bytes]) -> None:
        with self._changed:
            run = self._open()
            now = time.monotonic()
            for entry_id in entry_ids:
                item = run.queue.get(bytes(entry_id))
                if item is not None and item.holder == self.identity:
                    item.since = now

    def claim_expired(self, lease: float, count: int = 100) -> list[Entry]:
        with self._changed:
            run = self._open()
            now = time.monotonic()
            claimed: list[Entry] = []
            for entry_id, item in run.queue.items():
                if len(claimed) >= max(1, int(count)):
                    break
                if item.holder and item.holder != self.identity and now - item.since >= lease:
                    claimed.append(Entry(tuple(_handed(item.frames)), entry_id, item.holder))
                    item.holder, item.since = self.identity, now
            return claimed

    def claim_from(self, holder: str) -> list[Entry]:
        if holder == self.identity:
            raise ValueError(f"a store cannot claim the entries of its own identity {holder!r}")
        with self._changed:
            run = self._open()
            now = time.monotonic()
            claimed: list[Entry] = []
            for entry_id, item in run.queue.items():
                if item.holder == holder:
                    claimed.append(Entry(tuple(_handed(item.frames)), entry_id, holder))
                    item.holder, item.since = self.identity, now
            return claimed

    def withdraw(self, entry_ids: Sequence[bytes]) -> list[str | None]:
        answers: list[str | None] = []
        with self._changed:
            run = self._open()
            for entry_id in entry_ids:
                item = run.queue.get(bytes(entry_id))
                if item is None:
                    answers.append("")
                elif item.holder:
                    answers.append(item.holder)
                else:
                    del run.queue[bytes(entry_id)]
                    answers.append(None)
        return answers

    def queued(self) -> list[Entry]:
        with self._changed:
            run = self._open()
            return [
                Entry(tuple(_handed(item.frames)), entry_id)
                for entry_id, item in run.queue.items()
                if not item.holder
            ]

    # -- record tables ------------------------------------------------------------

    def put_records(
        self, table: str, records: Sequence[tuple[str, bytes]], *, replace: bool = False
    ) -> list[bytes | None]:
        _check_table(table)
        copied = [(str(name), bytes(record)) for name, record in records]
        with self._changed:
            run = self._open()
            if replace:
                there = run.tables.get(table)
                if there is not None:
                    there.update(copied)
                return [None] * len(copied)
            if not copied:
                return []
            kept = run.tables.setdefault(table, {})
            answers: list[bytes | None] = []
            for name, record in copied:
                if name in kept:
                    answers.append(kept[name])
                else:
                    kept[name] = record
                    answers.append(None)
            return answers

    def records(self, table: str) -> dict[str, bytes]:
        _check_table(table)
        with self._changed:
            return dict(self._open().tables.get(table, {}))

    def drop_records(self, table: str, records: Mapping[str, bytes]) -> int:
        _check_table(table)
        with self._changed:
            kept = self._open().tables.get(table, {})
            dropped = 0
            for name, record in records.items():
                if name in kept and kept[name] == bytes(record):
                    del kept[name]
                    dropped += 1
            return dropped

    # -- liveness ---------------------------------------------------------------------

    def new_index(self) -> int:
        with self._changed:
            run = self._open()
            run.index += 1
            return run.index

    def flag(self, name: str, ttl: float) -> None:
        with self._changed:
            run = self._open()
            if ttl <= 0:
                run.flags.pop(name, None)
            else:
                run.flags[name] = time.monotonic() + ttl

    def flagged(self, name: str) -> bool:
        with self._changed:
            run = self._open()
            until = run.flags.get(name)
            if until is not None and until <= time.monotonic():
                del run.flags[name]
                return False
            return until is not None

    # -- wake-ups and the end ---------------------------------------------------------

    def wakeup(self) -> None:
        self._wake.wakeup()

    def close(self, *, end_run: bool = False) -> None:
        if self._wake.close() and end_run:
            with self._changed:
                self.server.end_run()
                self._changed.notify_all()


class MemoryStoreTransport(StoreTransport):
    """Opens :class:`MemoryStore` objects on servers of this process.

    A run id names the server ``memory://{namespace}/{run id}``; two
    transports with the same ``namespace`` (the default, say) share runs,
    as two processes configured for one Redis server do."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace

    def open_store(
        self, *, run_id: str | None = None, address: str | None = None, identity: str
    ) -> MemoryStore:
        if (run_id is None) == (address is None):
            raise ValueError("open_store needs either run_id (a new run) or address, not both")
        if run_id is not None:
            if not run_id:
                raise ValueError("a run id must be non-empty")
            address = f"memory://{self.namespace}/{run_id}"
        assert address is not None
        if not address.startswith("memory://"):
            raise ValueError(
                f"bad memory store address {address!r}: expected memory://NAMESPACE/RUN_ID, "
                "as the launcher's store reports it"
            )
        return MemoryStore(server_at(address), identity=identity)
