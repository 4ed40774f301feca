"""The broker's work done by every peer against a shared store (Redis).

When a transport offers a :class:`~scoop_core.interfaces.BrokerStore`, the
run has no broker process: the store's queue hands futures to workers, each
peer has a mailbox there, and the constants live there too. Every process
keeps speaking the core's protocol to "the broker"; its endpoint is a
:class:`SharedBrokerEndpoint`, which answers as the broker would, by
reading and writing the store. So the runtimes, the worker scheduler and
the message formats are the same for both kinds of transport.

Why it is built this way:

- A run's state is in the store, not in the launcher: the launcher may die
  and the run goes on; workers started anywhere (``scoop worker``) join a
  running run by opening the store.
- A queue entry is one future, signed with the run's key (:func:`_messages.encode`,
  no sender or sequence number: any worker may read it, and read it again
  after a claim). An entry that fails the check is deleted unread: nothing
  written there by someone without the key is ever unpickled.
- Mail between peers goes through each sender's :class:`~scoop_core._messages.Codec`,
  so replays and spoofed senders are refused as on a hub.
- A worker touches the entries it holds every heartbeat; entries of a
  worker silent for ``heartbeat_timeout`` are claimed by another worker
  (or at once by the launcher, which sees its own workers die) and queued
  again with one more loss, or failed with :class:`WorkerLostError` once
  the future's ``max_losses`` is reached.
- Results go straight to their owner's mailbox, in the same atomic commit
  that removes the finished entries: a result is delivered if and only if
  its entry is gone. A future run twice (its worker was only slow) gives
  two results; the owner reads the first and drops the other.
- Stealing: a worker with nothing to do marks the run hungry; a worker
  holding spare futures of its own sees that and hands half of them to the
  queue, where the hungry one takes them.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scoop_core import _messages as m
from scoop_core._state import lost_reason
from scoop_core.errors import ProtocolError, TransportClosed
from scoop_core.interfaces import BrokerStore, Endpoint, Entry, Frame

log = logging.getLogger("scoop.broker")

LAUNCHER = "launcher"
"""The launcher's peer name in the store (it mails, it runs no futures)."""

STEAL_CHECK = 0.02
"""Seconds between two looks, by a worker holding spare futures, for hungry workers."""

HUNGRY_MARK = 0.1
"""Seconds between two marks of hunger by a worker that found the queue empty."""

HUNGRY_TTL = 0.5
"""Seconds a mark of hunger lasts if nobody answers it."""


class Peers:
    """Peer names by index (a future's id holds its owner's index), read from
    the store when an unknown index turns up."""

    def __init__(self, store: BrokerStore) -> None:
        self.store = store
        self._names: dict[int, str] = {}

    def owner(self, fid: int) -> str | None:
        index = fid >> 32
        if index not in self._names:
            self._names = {i: n for n, i in self.store.peers().items()}
        return self._names.get(index)


@dataclass
class _Batch:
    """What one turn of messages will change in the store, in one commit."""

    add: list[tuple[int, Entry]] = field(default_factory=list)
    requeue: list[Entry] = field(default_factory=list)  # handed back, queued again as they are
    results: dict[str, list[m.Outcome]] = field(default_factory=dict)
    started: dict[str, list[int]] = field(default_factory=dict)
    mail: list[tuple[str, m.Message]] = field(default_factory=list)
    done: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.add or self.requeue or self.results or self.started or self.mail or self.done
        )


def entry_for(task: m.Task, key: bytes) -> Entry:
    """The queue entry of a new future."""
    return Entry(tuple(m.encode(m.Tasks((task,)), key)))


def read_entry(entry: Entry, key: bytes) -> m.Task:
    """The future in a queue entry; ProtocolError if it is not signed with ``key``."""
    msg = m.decode(entry.frames, key)
    if not isinstance(msg, m.Tasks) or len(msg.tasks) != 1:
        raise ProtocolError(f"a queue entry holds a {type(msg).__name__} message, not one future")
    return msg.tasks[0]


def recover(
    store: BrokerStore,
    entries: Iterable[Entry],
    *,
    key: bytes,
    codec: m.Codec,
    peers: Peers,
    max_losses: int,
    lost_by: str = "",
) -> list[int]:
    """Entries whose worker was lost: queue them again with one more loss, or
    fail them (their owner gets a LOST outcome) once their future's
    ``max_losses`` is reached. Returns the ids of the futures queued again."""
    add: list[Entry] = []
    failed: dict[str, list[m.Outcome]] = {}
    done: list[bytes] = []
    requeued: list[int] = []
    for entry in entries:
        done.append(entry.id)
        try:
            task = read_entry(entry, key)
        except ProtocolError as exc:
            log.warning("deleted a queue entry that is not this run's: %s", exc)
            continue
        names = [n for n in entry.lost_on.split(",") if n]
        names.append(lost_by or entry.holder or "a worker")
        losses = entry.losses + 1
        if losses >= (task.max_losses or max_losses):
            reason = lost_reason(task.fid, losses, names)
            log.warning("%s", reason)
            owner = peers.owner(task.fid)
            if owner is not None:
                outcome = m.Outcome(task.fid, m.LOST, 0.0, (reason.encode(),))
                failed.setdefault(owner, []).append(outcome)
        else:
            add.append(Entry(entry.frames, losses, ",".join(names)))
            requeued.append(task.fid)
    mail = [
        (owner, codec.encode(m.Results(tuple(outs)), to=owner.encode()))
        for owner, outs in failed.items()
    ]
    if done:
        store.commit(add=add, mail=mail, done=done)
    if requeued:
        log.warning(
            "%s was lost holding %d future(s); queued again: %s",
            lost_by or "a worker",
            len(requeued),
            ", ".join(f"{f:#x}" for f in requeued),
        )
    return requeued


class SharedBrokerEndpoint(Endpoint):
    """An endpoint that is its own process's broker, through a :class:`BrokerStore`.

    The runtime sends it signed messages addressed to the broker and
    receives signed messages from "the broker", as over any transport; in
    between, this object reads and writes the store. Like any endpoint, it
    is used by one thread (the runtime's I/O thread); :meth:`wakeup` and
    :meth:`leave` may be called from others.

    ``root`` names the run's root program: a worker leaves once it has
    seen the root alive and then not for ``heartbeat_timeout``.
    """

    def __init__(
        self,
        store: BrokerStore,
        *,
        key: bytes,
        name: str,
        root: str = "",
        max_losses: int = 3,
        expected_workers: int = 0,
        join_timeout: float = 10.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        max_message_size: int | None = None,
        launcher_alive: Callable[[], bool] | None = None,
        key_path: str = "",
    ) -> None:
        self.store = store
        self.key_path = key_path  # the launcher's key file, which a run ending here deletes
        self.launcher_alive = launcher_alive or (lambda: store.alive(LAUNCHER))
        self.key = key
        self.name = name
        self.identity = name.encode()
        self.root = root
        self.max_losses = max_losses
        self.expected_workers = expected_workers
        self.join_timeout = join_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        # Talks to our own runtime as the broker does.
        self.local = m.Codec(key, m.BROKER_IDENTITY, max_size=max_message_size)
        # Talks to the other peers through their mailboxes.
        self.mailer = m.Codec(key, self.identity, max_size=max_message_size)
        self.peers = Peers(store)
        self.role = ""
        self.index = 0
        self.credit = 0
        self.spare = 0
        self.held: dict[int, Entry] = {}  # futures this worker runs: fid -> entry
        self.started: set[int] = set()  # those of them that started
        self._recalling: set[int] = set()  # asked back from our runtime for a hungry worker
        self.submitted: dict[int, bytes] = {}  # futures we own, not done: fid -> entry id
        # Futures held back while the store's queue is full (its length limit).
        self._backlog: list[tuple[int, Entry]] = []
        self.inbox: collections.deque[list[Frame]] = collections.deque()
        self._welcome_due: float | None = None
        self._next_duty = 0.0
        self._last_hungry = 0.0
        self._last_steal_check = 0.0
        self._root_seen = False
        self._rejected_entries = 0
        self._closed = False
        self._finished = False
        self._store_gone = False
        # Set once this process's part in the run is over (told so, or closed).
        self.over = threading.Event()
        self._leaving = threading.Event()
        self._left = threading.Event()

    # -- the runtime's messages ------------------------------------------------

    def send(self, frames: Sequence[Frame]) -> None:
        self.send_many([frames])

    def send_many(self, messages: Sequence[Sequence[Frame]]) -> None:
        if self._store_gone:
            return  # the runtime was told the run is over; its last words go nowhere
        if self._closed:
            raise TransportClosed(f"the endpoint of {self.name} is closed")
        batch = _Batch()
        try:
            for frames in messages:
                try:
                    msg = self.local.decode(frames, self.identity)
                except ProtocolError as exc:
                    log.warning("%s: dropped a message of its own runtime: %s", self.name, exc)
                    continue
                self._handle(msg, batch)
            self._commit(batch)
        except TransportClosed as exc:
            self._store_lost(exc)

    def _handle(self, msg: m.Message, batch: _Batch) -> None:
        if isinstance(msg, m.Submit):
            for task in msg.tasks:
                if task.fid >> 32 != self.index:
                    log.warning("%s: refused future %#x it does not own", self.name, task.fid)
                    continue
                batch.add.append((task.fid, entry_for(task, self.key)))
        elif isinstance(msg, m.Results):
            self._note_started(msg.started, batch)
            for out in msg.outcomes:
                self.started.discard(out.fid)
                entry = self.held.pop(out.fid, None)
                if entry is not None:
                    batch.done.append(entry.id)
                owner = self.peers.owner(out.fid)
                if owner is None:
                    log.warning(
                        "%s: future %#x has no known owner; result dropped", self.name, out.fid
                    )
                else:
                    batch.results.setdefault(owner, []).append(out)
        elif isinstance(msg, m.Started):
            self._note_started(msg.fids, batch)
        elif isinstance(msg, m.CancelReply):
            # The answer to a recall: a future not started goes back to the queue.
            self._recalling.discard(msg.fid)
            entry = self.held.pop(msg.fid, None) if msg.cancelled else None
            if entry is not None:
                batch.requeue.append(Entry(entry.frames, entry.losses, entry.lost_on))
                batch.done.append(entry.id)
        elif isinstance(msg, m.Ready):
            self.credit += max(0, msg.count)
        elif isinstance(msg, m.Spare):
            self.spare = max(0, msg.count)
        elif isinstance(msg, m.Cancel):
            self._commit(batch)  # a future submitted in this same turn must be in the queue
            held_back = [i for i, (fid, _) in enumerate(self._backlog) if fid == msg.fid]
            entry_id = self.submitted.get(msg.fid)
            if held_back:
                del self._backlog[held_back[0]]
                cancelled = True
            else:
                cancelled = entry_id is not None and self.store.withdraw(entry_id)
            if cancelled:
                self.submitted.pop(msg.fid, None)
            self._reply(m.CancelReply(msg.fid, cancelled))
        elif isinstance(msg, m.SetConst):
            if self.store.set_const(msg.name, msg.frames):
                self._reply(m.ConstReply(msg.name, ""))
                for peer in self.store.peers():
                    if peer not in (self.name, LAUNCHER):
                        batch.mail.append((peer, m.Const(msg.name, msg.frames)))
            else:
                error = (
                    f"shared constant {msg.name!r} is already defined; "
                    "a constant is defined once per run"
                )
                self._reply(m.ConstReply(msg.name, error))
        elif isinstance(msg, m.Hello):
            self._hello(msg)
        elif isinstance(msg, m.Bye):
            self._hand_back()
        # Heartbeat: nothing to do (nobody forwards it).

    def _note_started(self, fids: Iterable[int], batch: _Batch) -> None:
        """Futures we hold began running: their owners learn it (``running()``)."""
        for fid in fids:
            if fid in self.held and fid not in self.started:
                self.started.add(fid)
                owner = self.peers.owner(fid)
                if owner is not None:
                    batch.started.setdefault(owner, []).append(fid)

    def _hello(self, msg: m.Hello) -> None:
        self.role = msg.role
        self.index = self.store.register(self.name, worker=msg.role == m.WORKER)
        self.store.beat(self.heartbeat_timeout)
        log.debug("%s joined the run as peer %d", self.name, self.index)
        if msg.role != m.WORKER and self.store.workers() < self.expected_workers:
            self._welcome_due = time.monotonic() + self.join_timeout
        else:
            self._welcome()

    def _welcome(self) -> None:
        self._welcome_due = None
        consts = tuple(m.Constant(k, tuple(v)) for k, v in self.store.constants().items())
        self._reply(m.Welcome(self.index, consts))

    def _commit(self, batch: _Batch) -> None:
        if self._backlog or batch.add:
            # New futures queue behind those held back, in order.
            self._backlog.extend(batch.add)
            room = self.store.room()
            fit = len(self._backlog) if room is None else min(room, len(self._backlog))
            batch.add = self._backlog[:fit]
            del self._backlog[:fit]
        if not batch:
            return
        mail = [(peer, self.mailer.encode(msg, to=peer.encode())) for peer, msg in batch.mail]
        for owner, fids in batch.started.items():
            # Those that also finished in this turn need no word of their start.
            finished = {o.fid for o in batch.results.get(owner, ())}
            running = [f for f in fids if f not in finished]
            if running:
                mail.append((owner, self.mailer.encode(m.Started(running), to=owner.encode())))
        for owner, outs in batch.results.items():
            mail.append((owner, self.mailer.encode(m.Results(tuple(outs)), to=owner.encode())))
        ids = self.store.commit(
            add=[e for _, e in batch.add] + batch.requeue, mail=mail, done=batch.done
        )
        for (fid, _), entry_id in zip(batch.add, ids, strict=False):
            self.submitted[fid] = entry_id
        batch.add.clear()
        batch.requeue.clear()
        batch.results.clear()
        batch.started.clear()
        batch.mail.clear()
        batch.done.clear()

    def _reply(self, msg: m.Message) -> None:
        if isinstance(msg, m.Shutdown):
            self.over.set()
        self.inbox.append(self.local.encode(msg, to=self.identity))

    # -- what reaches the runtime ------------------------------------------------

    def recv(self, timeout: float | None) -> list[Frame] | None:
        if self.inbox:
            return self.inbox.popleft()
        if self._closed:
            return None
        try:
            if self._leaving.is_set():
                self._hand_back()
                self._left.set()
                self._reply(m.Shutdown("this worker was asked to leave"))
            else:
                self._duties()
            if self._backlog:
                self._commit(_Batch())
            if not self.inbox:
                entries, mail = self.store.take(
                    self.credit if self.role == m.WORKER else 0, self._wait(timeout)
                )
                self._arrived(entries, mail)
        except TransportClosed as exc:
            self._store_lost(exc)
        return self.inbox.popleft() if self.inbox else None

    def _wait(self, timeout: float | None) -> float:
        now = time.monotonic()
        wait = self._next_duty - now
        if timeout is not None:
            wait = min(wait, timeout)
        if self._welcome_due is not None or self._backlog or self._could_give():
            wait = min(wait, STEAL_CHECK)
        return max(0.0, wait)

    def _duties(self) -> None:
        now = time.monotonic()
        if self._welcome_due is not None and (
            now > self._welcome_due or self.store.workers() >= self.expected_workers
        ):
            if now > self._welcome_due:
                log.warning(
                    "%d of %d workers joined within %g s; starting with those",
                    self.store.workers(),
                    self.expected_workers,
                    self.join_timeout,
                )
            self._welcome()
        if self._could_give() and now - self._last_steal_check > STEAL_CHECK:
            self._last_steal_check = now
            if self.store.anyone_hungry():
                self._give()
        if now < self._next_duty or not self.role:
            return
        self._next_duty = now + self.heartbeat_interval
        self.store.beat(self.heartbeat_timeout)
        if self.held:
            self.store.touch([e.id for e in self.held.values()])
        if self.role == m.WORKER:
            stale = self.store.claim_stale(self.heartbeat_timeout)
            for holder in sorted({e.holder or "a worker" for e in stale}):
                log.warning(
                    "%s has been silent for over %g s (heartbeat_timeout); counting it as lost",
                    holder,
                    self.heartbeat_timeout,
                )
            if stale:
                recover(
                    self.store,
                    stale,
                    key=self.key,
                    codec=self.mailer,
                    peers=self.peers,
                    max_losses=self.max_losses,
                )
            if self.root:
                if self.store.alive(self.root):
                    self._root_seen = True
                elif self._root_seen:
                    self._reply(m.Shutdown(f"the run's program ({self.root}) is gone"))
                    return
        # The runtime counts a silent broker as lost: we are its broker.
        self._reply(m.Heartbeat(0))

    def _unstarted(self) -> list[int]:
        return [f for f in self.held if f not in self.started and f not in self._recalling]

    def _could_give(self) -> bool:
        """Whether a hungry worker could have something of ours: spare
        futures of our own, or futures we hold while running another."""
        if self.role != m.WORKER:
            return False
        return self.spare >= 2 or (bool(self.started) and bool(self._unstarted()))

    def _give(self) -> None:
        """A worker is hungry: hand over half our spare futures, or else ask
        our runtime back the newest half of those we hold and have not
        started (those it would run last)."""
        if self.spare >= 2:
            self._reply(m.Steal(self.spare // 2))
            self.spare = 0
            return
        unstarted = self._unstarted()
        for fid in unstarted[len(unstarted) // 2 :]:
            self._recalling.add(fid)
            self._reply(m.Cancel(fid))
        log.info("%s hands back %d future(s) for an idle worker", self.name, len(self._recalling))

    def _arrived(self, entries: list[Entry], mail: list[list[Frame]]) -> None:
        tasks, bad = [], []
        for entry in entries:
            try:
                task = read_entry(entry, self.key)
            except ProtocolError as exc:
                self._rejected_entries += 1
                if self._rejected_entries == 1:
                    log.warning(
                        "%s: deleted a queue entry that is not this run's: %s", self.name, exc
                    )
                bad.append(entry.id)
                continue
            self.held[task.fid] = entry
            tasks.append(task)
        if bad:
            self.store.commit(done=bad)
        if tasks:
            self.credit = max(0, self.credit - len(tasks))
            self._reply(m.Tasks(tuple(tasks)))
        elif self.role == m.WORKER and self.credit and not mail:
            now = time.monotonic()
            if now - self._last_hungry > HUNGRY_MARK:
                self._last_hungry = now
                self.store.mark_hungry(HUNGRY_TTL)
        for frames in mail:
            try:
                msg = self.mailer.decode(frames)
            except ProtocolError as exc:
                log.warning("%s: dropped a message from its mailbox: %s", self.name, exc)
                continue
            if isinstance(msg, m.Results):
                for out in msg.outcomes:
                    self.submitted.pop(out.fid, None)
                msg = m.Results(msg.outcomes)
            elif not isinstance(msg, m.Const | m.Shutdown | m.Heartbeat | m.Started):
                log.warning(
                    "%s: ignored a %s message in its mailbox", self.name, type(msg).__name__
                )
                continue
            self._reply(msg)

    # -- leaving --------------------------------------------------------------

    def _hand_back(self) -> None:
        """Queue again, unchanged, every future this worker holds (it leaves by choice)."""
        if not self.held:
            return
        entries = list(self.held.values())
        self.held.clear()
        self.store.commit(
            add=[Entry(e.frames, e.losses, e.lost_on) for e in entries],
            done=[e.id for e in entries],
        )
        log.warning("%s left; handed back %d future(s)", self.name, len(entries))

    def leave(self, timeout: float) -> bool:
        """From any thread: hand back what this worker holds, then stop it.
        True if that was done within ``timeout`` seconds."""
        self._leaving.set()
        self.store.wakeup()
        return self._left.wait(timeout)

    def _store_lost(self, exc: TransportClosed) -> None:
        if self._closed:
            return
        log.error("%s: %s", self.name, exc)
        self.inbox.clear()
        self._reply(m.Shutdown(str(exc)))
        self._closed = True
        self._store_gone = True

    def wakeup(self) -> None:
        self.store.wakeup()

    def close(self) -> None:
        """Hand back what we hold and leave the run; a program whose launcher
        is gone ends the run itself (tells every peer, deletes the run's keys)."""
        if self._finished:
            return
        self.over.set()
        self._finished = True
        self._closed = True
        self.inbox.clear()
        end_run = False
        if not self._store_gone:
            try:
                self._hand_back()
                self.store.unregister(self.name)
                if self.role == m.ROOT and not self.launcher_alive():
                    log.info("%s ends the run itself: its launcher is gone", self.name)
                    end_run = True
                    tell_everyone(
                        self.store, self.mailer, "the run is over", self.heartbeat_timeout
                    )
                    if self.key_path:
                        with contextlib.suppress(OSError):
                            os.unlink(self.key_path)
            except TransportClosed as exc:
                log.debug("%s: could not leave the run cleanly: %s", self.name, exc)
        self.store.close(end_run=end_run)


def tell_everyone(store: BrokerStore, codec: m.Codec, reason: str, wait: float) -> set[str]:
    """Tell every peer the run is over, and give them ``wait`` seconds to
    leave (a worker busy with a future reads its mail in its I/O thread
    at once, but must not find its mailbox deleted first). Returns the
    peers told that were alive then (a frozen worker will not leave)."""
    told = {p for p in store.peers() if p != LAUNCHER and p.encode() != codec.sender}
    alive = {p for p in told if store.alive(p)}
    shutdown = m.Shutdown(reason)
    store.commit(mail=[(p, codec.encode(shutdown, to=p.encode())) for p in told])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        staying = [p for p in store.peers() if p in alive and store.alive(p)]
        if not staying:
            break
        time.sleep(0.02)  # polling the store for departures
    return alive


def sign_info(info: dict[str, object], key: bytes) -> bytes:
    """The run's description as stored: JSON and its HMAC, so that a worker
    joining later imports only what the run's launcher wrote."""
    body = json.dumps(info, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b" " + body


def read_info(blob: bytes, key: bytes) -> dict[str, object]:
    """The description :func:`sign_info` made; ValueError if ``key`` is not the run's."""
    mac, _, body = blob.partition(b" ")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        raise ValueError("the run's description is not signed with this key")
    info = json.loads(body)
    if not isinstance(info, dict):
        raise ValueError("the run's description is not a JSON object")
    return info


# The run-key helpers live in scoop_core.run_keys; the launcher still finds them here.
from scoop_core.run_keys import KEY_ENV, parse_key, write_key_file  # noqa: E402, F401
