"""The broker's policy driven by a store: every peer's endpoint on a store-backed run.

When the transport is a :class:`~scoop_core.interfaces.StoreTransport`
(Redis), the run has no broker process. Every process's runtime still
speaks the core's protocol to "the broker"; its endpoint is a
:class:`StoreEndpoint`, which holds a :class:`~scoop_core.broker_policy.BrokerPolicy`
of its own (``shared_queue=True``) whose one local peer is that runtime,
and drives it with what the store says:

- the runtime's messages go to the policy as they would to a broker;
- queue entries the store hands this peer (as many as the policy
  :meth:`~scoop_core.broker_policy.BrokerPolicy.wants`) *arrive* there,
  checked first (:mod:`scoop_core.store_records`: signed with the run's
  key, not a copy of an entry taken before);
- mail from peers elsewhere is checked by the codec (who signed it, no
  replay) and handed to the policy;
- entries of takers silent for ``heartbeat_timeout`` are claimed and
  reported to their owners (:func:`report_lost`), whose policies decide.

Some duties cost a look at every peer: counting the live workers (each
peer's signed record, and its flag) and claiming what silent takers held.
Done by every peer at every heartbeat, that is N looks for each of N
peers, and a run of a thousand consumers spent its time, and its Redis
server's, on it. So one peer does them for all, the *census taker*: the
peer a signed record of the table :data:`~scoop_core.store_records.CENSUS`
names (the first to write it; once the peer it names is no longer alive,
the first to replace it). It counts, claims, and writes the *census*, a
record signed with the run's key that says how many workers are alive and
carries the count's number. Every other peer reads that table, two
records, at its heartbeat. The census is as trustworthy as the count it
replaces: only a holder of the run's key writes one, and an old census
copied over a newer one has a smaller number, which a peer that read the
newer one ignores. Whoever copies an old taker record back only makes
another live peer the taker; whoever keeps the flag of a dead taker raised
only stops the census, and a peer that has read no newer census for twice
``heartbeat_timeout`` counts and claims for itself, as every peer once did
(slower, never wrong).

What the policy decides is carried out as store operations, in one atomic
commit per turn: its messages to the runtime go to the runtime, those to
other peers by mail; a future to queue becomes a signed entry, a future
done removes its entry in the same commit that mails its result (a result
is delivered if and only if its entry is gone). So the runtimes, the
worker scheduler, the message formats and every scheduling decision are
the same on both kinds of transport; what differs is written in the
policy's module docstring and docs/redis.md.

Why a run on a store is built this way: a run's state is in the store, not
in the launcher, so the launcher may die and the run goes on, and workers
started anywhere (``scoop worker``) join a running run by opening the store.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Unpack

from scoop_core import activity
from scoop_core import messages as m
from scoop_core.broker_policy import (
    Ack,
    Arrival,
    Broadcast,
    BrokerPolicy,
    DefineConst,
    Enqueue,
    FutureRecord,
    PolicyOptions,
    StoreOp,
    Withdraw,
)
from scoop_core.errors import ProtocolError, SerializationError, TransportClosed
from scoop_core.interfaces import BrokerStore, Endpoint, Entry, Frame
from scoop_core.run_activity import joined
from scoop_core.store_records import (
    CENSUS,
    CONSTANTS,
    HUNGRY,
    LAUNCHER,
    PEERS,
    REPORTS,
    RUN,
    TAKER,
    TRACE,
    WORKERS,
    Census,
    Peers,
    Queued,
    alive_flag,
    entry_for,
    mark_taken,
    open_record,
    read_census,
    read_const,
    read_entry,
    read_taker,
    refusals,
    seal_census,
    seal_const,
    seal_peer,
    seal_record,
    seal_report,
    seal_taker,
    seal_trace,
)

log = logging.getLogger("scoop.broker")

STEAL_CHECK = 0.02
"""Seconds between two looks, by a worker that could give futures away, for hungry workers."""

HUNGRY_MARK = 0.1
"""Seconds between two flags of hunger by a worker that found the queue empty."""

HUNGRY_TTL = 0.5
"""Seconds a flag of hunger lasts if nobody answers it."""

COUNT_SHARE = 0.2
"""The most of its time a program waiting for workers spends counting them:
it counts again no sooner than the last count's duration over this share
(and every :data:`STEAL_CHECK` at the most), so a wait for a thousand
workers does not make the program as busy as the count is long."""

REMEMBERED = 1 << 16
"""How many (future, attempt) pairs a worker remembers having taken: a copy
of an entry is refused even if someone deleted the taken marks."""

RUN_END = "end"
"""The record of the ``run`` table that says the run is ending, signed with
its key: :func:`tell_everyone` writes it before it reads whom to tell, so a
worker that registers after that read finds it when it looks, right after
registering, and leaves (nobody would tell it)."""

END_MARK = "run end"
"""The kind of the :data:`RUN_END` record."""

SWEEP_WAIT = 10.0
"""Seconds a worker that found its run ending waits, as it leaves, for the
run's launcher to delete the run's keys, before it deletes what it wrote
meanwhile (a key written after the launcher listed the keys would stay)."""


def report_lost(
    store: BrokerStore,
    entries: Iterable[Entry],
    *,
    key: bytes,
    codec: m.Codec,
    lost_by: str = "",
    max_size: int | None = None,
) -> int:
    """Entries claimed from a taker that is gone (``lost_by``, or the
    holder the store names): tell each future's owner, in the same commit
    that removes the entries. An entry its taker marked taken was lost with
    it; an entry nobody marked was not taken by anyone of the run, and is
    handed back without a loss; a copy of an entry, or one not signed with
    the run's key, is deleted. The owners decide what happens next (see
    :class:`~scoop_core.messages.Returned`). Returns how many were reported."""
    me = codec.sender.decode(errors="replace")
    done: list[bytes] = []
    claimed: list[tuple[Queued, bytes]] = []
    holders: dict[bytes, str] = {}
    for entry in entries:
        done.append(entry.id)
        holders[entry.id] = lost_by or entry.holder or "a worker"
        try:
            # Only the header is read: the owner queues its future again from its own copy.
            claimed.append((read_entry(entry, key, max_size, payload=m.RELAY), entry.id))
        except ProtocolError as exc:
            refusals.note(me, "queue", "a queue entry", exc)
    back: dict[tuple[str, str], list[Queued]] = collections.defaultdict(list)
    for (queued, entry_id), mark in zip(claimed, mark_taken(store, key, me, claimed), strict=True):
        if mark is None:
            back[queued.owner, ""].append(queued)  # nobody of the run took it
        elif mark.entry_id != entry_id:
            fid = queued.task.fid
            refusals.note(
                me, "queue", f"a copy of the queue entry of future {fid:#x}", "a future runs once"
            )
        else:
            back[queued.owner, mark.holder or holders[entry_id]].append(queued)
    mail = []
    for (owner, lost_on), items in back.items():
        msg = m.Returned([q.task.fid for q in items], [q.attempt for q in items], lost_on)
        with contextlib.suppress(SerializationError):  # ids only: always fits
            mail.append((owner, codec.encode(msg, to=owner.encode())))
    if done:
        store.commit(mail=mail, done=done)
    reported = sum(len(items) for items in back.values())
    if reported:
        log.info("%s reported %d future(s) back to their owners", me, reported)
    return reported


def server_clock_offset(store: BrokerStore) -> int:
    """How far (ns) the store server's clock is ahead of this process's wall
    clock, read halfway through one round trip; 0 if the store has no clock."""
    before = time.time_ns()
    server = store.server_time()
    if server is None:
        return 0
    return server - (before + time.time_ns()) // 2


class StoreEndpoint(Endpoint):
    """An endpoint that is its own process's broker, through a :class:`BrokerStore`.

    The runtime sends it signed messages addressed to the broker and
    receives signed messages from "the broker", as over any transport; in
    between, this object drives its :class:`BrokerPolicy` with the store's
    events and carries out its decisions there. Like any endpoint, it is
    used by one thread (the runtime's I/O thread); :meth:`wakeup` and
    :meth:`leave` may be called from others.

    ``root`` names the run's root program: a worker leaves once it has
    seen the root alive and then not for ``heartbeat_timeout``.

    ``description`` names the run's description in the store's ``run``
    table (empty: not looked at). A worker given it joins no run that has
    ended or is ending (its description gone, or :data:`RUN_END` written):
    it writes nothing there, is told the run ``run_id`` has ended, and
    exits. It looks again right after it registers, and at each heartbeat:
    a run whose keys were deleted under it (it registered as the run's
    peers were told, and the mail was deleted unread) is over too; then
    what it wrote goes with whatever the run left (see :meth:`close`).
    """

    def __init__(
        self,
        store: BrokerStore,
        *,
        key: bytes,
        name: str,
        root: str = "",
        launcher_alive: Callable[[], bool] | None = None,
        key_path: str = "",
        run_id: str = "",
        description: str = "",
        **options: Unpack[PolicyOptions],
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.description = description
        self.key_path = key_path  # the launcher's key file, which a run ending here deletes
        self.launcher_alive = launcher_alive or (lambda: store.flagged(alive_flag(LAUNCHER)))
        self.key = key
        self.name = name
        self.identity = name.encode()
        self.root = root
        self.policy = BrokerPolicy(**options, shared_queue=True, now=time.monotonic())
        self.max_size = max_message_size = self.policy.max_message_size
        self.heartbeat_interval = self.policy.heartbeat_interval
        self.heartbeat_timeout = self.policy.heartbeat_timeout
        # Talks to our own runtime as the broker does. Its payloads were made
        # in this process: relayed, not hashed again.
        self.local = m.Codec(key, m.BROKER_IDENTITY, max_size=max_message_size, payload=m.RELAY)
        # Talks to the other peers through their mailboxes. A payload from
        # elsewhere is checked here, where a bad message is refused, and
        # handed to our runtime in memory as checked, so it hashes it no more.
        self.mailer = m.Codec(key, self.identity, max_size=max_message_size, payload=m.CHECK)
        self.peers = Peers(store, key, who=name)
        self.role = ""
        self._record: bytes | None = None  # our signed peer record, once registered
        # The (future, attempt) pairs taken here lately.
        self._taken: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # Futures to queue that wait for room in the store's queue (its length limit).
        self._backlog: list[FutureRecord] = []
        self.inbox: collections.deque[list[Frame]] = collections.deque()
        self._next_duty = 0.0
        self._census = Census(0, 0, "")  # the newest census read or taken here
        self._census_read = time.monotonic()  # when it was read (or this endpoint was made)
        self._count_took = 0.0  # seconds our last count of the live workers took
        self._counting_alone = False  # said once: the census is not kept, we count ourselves
        self._last_hungry = 0.0
        self._last_steal_check = 0.0
        self._root_seen = False
        self._reports_sent = 0
        self._closed = False
        self._finished = False
        self._store_gone = False
        self._run_ended = False  # this worker found its run ended (not told so)
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
        ended = ""
        try:
            for frames in messages:
                try:
                    msg = self.local.decode(frames, self.identity)
                except ProtocolError as exc:
                    log.warning("%s: dropped a message of its own runtime: %s", self.name, exc)
                    continue
                if isinstance(msg, m.Hello):
                    ended = self._join(msg)
                elif isinstance(msg, m.Report):
                    self._report(msg)
                try:
                    self.policy.handle(self.identity, msg)
                except ProtocolError as exc:
                    log.warning("%s: ignored %s: %s", self.name, type(msg).__name__, exc)
            self._turn()
            if ended:  # welcomed, and told at once that the run is over
                self._leave_ended_run(ended)
        except TransportClosed as exc:
            self._store_lost(exc)

    def _join(self, msg: m.Hello) -> str:
        """Our runtime says hello: take an index and a record in the run, and
        give the policy the constants defined so far (for the welcome).
        Returns why not, for a worker whose run is over or ending (it wrote
        nothing there if it found so before it registered), else ""."""
        self.role = msg.role
        ended = self._ended(ending=True)
        if ended:
            return ended
        # The flag first: a launcher that reads our record as it tells the
        # run's peers it is over waits for us to read that (see tell_everyone).
        self.store.flag(alive_flag(self.name), self.heartbeat_timeout)
        index = self.store.new_index()
        self._record = seal_peer(self.key, self.name, index, msg.role)
        [there] = self.store.put_records(PEERS, [(self.name, self._record)])
        if there is not None:
            self.store.put_records(PEERS, [(self.name, self._record)], replace=True)
        ended = self._ended(ending=True)
        if ended:
            return ended
        self.policy.next_index = index
        self.policy.activity = activity.here  # its losses go in our reports
        offset = server_clock_offset(self.store)
        # The welcome's clock is the server's, whatever kernel we share with it.
        self.policy.clock = lambda: time.time_ns() + offset
        self.policy.boot = ""
        self.policy.constants.update(self._constants(self.store.records(CONSTANTS)))
        self._read_census(self.store.records(CENSUS).get(WORKERS))
        log.debug("%s joined the run as peer %d", self.name, index)
        return ""

    def _ended(self, *, ending: bool) -> str:
        """Why this worker's run is over, or "" while it goes on: its
        description is gone, or, with ``ending`` (as it joins), the end is
        marked (:data:`RUN_END`), or neither its launcher nor its program
        is alive (a run killed, whose keys wait to expire). See the class
        docstring. Never for a process that is not a worker, or is not told
        where to look. An end mark not signed with the run's key is deleted."""
        if not self.description or self.role != m.WORKER:
            return ""
        ended = f"the run {self.run_id} has ended" if self.run_id else "the run has ended"
        run = self.store.records(RUN)
        if self.description not in run:
            return ended
        if not ending:
            return ""
        mark = run.get(RUN_END)
        if mark is not None:
            try:
                open_record(mark, self.key, END_MARK, None)
            except ProtocolError as exc:
                refusals.note(self.name, "run", "the end mark of the run", exc)
                self.store.drop_records(RUN, {RUN_END: mark})
            else:
                return ended
        if not any(self.store.flagged(alive_flag(p)) for p in (LAUNCHER, self.root) if p):
            return f"{ended}: neither its launcher nor its program ({self.root}) is alive"
        return ""

    def _leave_ended_run(self, reason: str) -> None:
        """This worker found its run over (``reason``): it says so, and its
        runtime is told; nothing more of it goes to the store (see :meth:`close`)."""
        log.warning("%s: %s; exiting", self.name, reason)
        self._run_ended = True
        self._reply(m.Shutdown(reason))
        self._closed = True
        self._store_gone = True

    def _report(self, msg: m.Report) -> None:
        """Our runtime's report goes into the store's tables, where the
        launcher and ``scoop status`` read it (see :mod:`scoop_core.run_activity`)."""
        # The trace part goes with the events: the newest report replaces
        # the one before, and with it the names and instants it told.
        counters = dict(msg.counters)
        trace = counters.pop("trace", None) or {}
        self.store.put_records(
            REPORTS, [(self.name, seal_report(self.key, self.name, counters))], replace=True
        )
        if msg.events or trace:
            self._reports_sent += 1
            anchor = counters.get("anchor", [0, 0, 0])
            record = seal_trace(self.key, self.name, anchor, trace, joined(msg.events))
            self.store.put_records(
                TRACE, [(f"{self.name}.{self._reports_sent}", record)], replace=True
            )

    # -- carrying out the policy's decisions ------------------------------------

    def _turn(self) -> None:
        """Dispatch, and carry out what the policy decided, until it decides
        nothing more (the store's answers to a withdrawal or a constant bring
        decisions of their own)."""
        policy = self.policy
        while True:
            policy.dispatch()
            outbox, ops = policy.take_outbox(), policy.take_store_ops()
            if not outbox and not ops:
                if self._backlog:
                    self._carry_out([], [])
                return
            self._carry_out(outbox, ops)

    def _carry_out(self, outbox: list[tuple[bytes, m.Message]], ops: list[StoreOp]) -> None:
        """One commit: messages to our runtime, mail to the others, entries
        to add (as room allows) and to remove; then withdrawals and constants,
        whose answers go back to the policy."""
        mail: list[tuple[str, list[Frame]]] = []
        done: list[bytes] = []
        withdraws: list[Withdraw] = []
        consts: list[DefineConst] = []
        for peer, msg in outbox:
            if peer == self.identity:
                self._reply(msg)
            else:
                self._post(mail, peer.decode(errors="replace"), msg)
        for op in ops:
            if isinstance(op, Enqueue):
                self._backlog.append(op.fut)
            elif isinstance(op, Ack):
                done.append(op.entry)
            elif isinstance(op, Withdraw):
                withdraws.append(op)
            elif isinstance(op, DefineConst):
                consts.append(op)
            elif isinstance(op, Broadcast):
                for peer_name in self.peers.names():
                    if peer_name not in (self.name, LAUNCHER):
                        self._post(mail, peer_name, op.msg)
        fit = self._backlog
        if fit:
            room = self.store.room()
            if room is not None and room < len(fit):
                fit, self._backlog = fit[:room], fit[room:]
            else:
                self._backlog = []
        if fit or mail or done:
            add = [
                entry_for(
                    Queued(f.task, self.name, f.attempt, f.losses, tuple(f.lost_on)), self.key
                )
                for f in fit
            ]
            ids = self.store.commit(add=add, mail=mail, done=done)
            for fut, entry_id in zip(fit, ids, strict=False):
                self.policy.enqueued(fut.fid, entry_id)
        if withdraws:
            answers = self.store.withdraw([w.entry for w in withdraws])
            for w, holder in zip(withdraws, answers, strict=True):
                self.policy.withdrawn(w.fid, holder)
        for c in consts:
            self.policy.const_defined(c.name, c.frames, c.asker, self._set_const(c.name, c.frames))

    def _post(self, mail: list[tuple[str, list[Frame]]], peer: str, msg: m.Message) -> None:
        """Add ``msg`` for ``peer`` to ``mail``. A message too big to encode
        is said loudly and dropped: it must not stop this process's I/O
        (the policy cuts batches to fit, so only a message of one item can be)."""
        try:
            mail.append((peer, self.mailer.encode(msg, to=peer.encode())))
        except SerializationError as exc:
            log.error("%s could not send %s to %s: %s", self.name, type(msg).__name__, peer, exc)

    def _reply(self, msg: m.Message) -> None:
        if isinstance(msg, m.Shutdown):
            self.over.set()
        try:
            self.inbox.append(self.local.encode(msg, to=self.identity, in_memory=True))
        except SerializationError as exc:
            # The policy cuts batches to fit; whatever slips through is said
            # loudly, and must not stop this process's I/O.
            log.error("%s could not pass on %s: %s", self.name, type(msg).__name__, exc)

    def _set_const(self, name: str, frames: Sequence[Frame]) -> bool:
        """Define a constant in the store, unless it is; a record of that
        name that is not the run's is deleted, and does not stand in the way."""
        record = seal_const(self.key, name, frames)
        [there] = self.store.put_records(CONSTANTS, [(name, record)])
        if there is None:
            return True
        if self._constants({name: there}):
            return False
        return self.store.put_records(CONSTANTS, [(name, record)])[0] is None

    def _constants(self, records: dict[str, bytes]) -> dict[str, tuple[Frame, ...]]:
        """The constants in ``records``; those that are not the run's are deleted."""
        good: dict[str, tuple[Frame, ...]] = {}
        bad: dict[str, bytes] = {}
        for name, record in records.items():
            try:
                good[name] = tuple(read_const(record, self.key, name, self.max_size))
            except ProtocolError as exc:
                refusals.note(self.name, "constant", f"the shared constant {name[:40]!r}", exc)
                bad[name] = record
        if bad:
            self.store.drop_records(CONSTANTS, bad)
        return good

    # -- what the store says ------------------------------------------------------

    def recv(self, timeout: float | None) -> list[Frame] | None:
        if self.inbox:
            return self.inbox.popleft()
        if self._closed:
            return None
        try:
            if self._leaving.is_set():
                self._leave_now()
            else:
                self._duties()
            if not self.inbox:
                want = self.policy.wants() if self.role == m.WORKER else 0
                entries, mail = self.store.take(want, self._wait(timeout))
                self._arrived(entries, mail, want)
        except TransportClosed as exc:
            self._store_lost(exc)
        return self.inbox.popleft() if self.inbox else None

    def _wait(self, timeout: float | None) -> float:
        wait = self._next_duty - time.monotonic()
        if timeout is not None:
            wait = min(wait, timeout)
        if self.policy.parked or self._backlog or self.policy.could_give():
            wait = min(wait, STEAL_CHECK)
        return max(0.0, wait)

    def _duties(self) -> None:
        now = time.monotonic()
        policy = self.policy
        if policy.parked and now - self._last_steal_check > max(
            STEAL_CHECK, self._count_took / COUNT_SHARE
        ):
            # Waiting for workers to join: counted here, not at the census's pace.
            self._last_steal_check = now
            self._count_workers()
        elif policy.could_give() and now - self._last_steal_check > STEAL_CHECK:
            self._last_steal_check = now
            if self.store.flagged(HUNGRY):
                self.store.flag(HUNGRY, 0)  # one flag of hunger, one hand-over
                policy.someone_hungry()
        if now >= self._next_duty and self.role:
            self._next_duty = now + self.heartbeat_interval
            ended = self._ended(ending=False)
            if ended:
                self._leave_ended_run(ended)
                return
            self._heartbeat()
            if self.role == m.WORKER and self.root:
                if self.store.flagged(alive_flag(self.root)):
                    self._root_seen = True
                elif self._root_seen:
                    self._reply(m.Shutdown(f"the run's program ({self.root}) is gone"))
                    return
        policy.tick(now)
        self._turn()

    def _heartbeat(self) -> None:
        """Say we live (and keep our record, should someone overwrite it),
        keep the entries we hold, and learn how many workers live (for the
        policy's join wait and its failing of queued futures when none is
        left): from the census, or by taking it (see the module's docstring)."""
        store = self.store
        store.flag(alive_flag(self.name), self.heartbeat_timeout)
        if self._record is not None:
            store.put_records(PEERS, [(self.name, self._record)], replace=True)
        held = [f.entry for f in self.policy.futures.values() if f.entry and not f.away]
        if held:
            store.renew(held)
        # Owners of futures held here that are gone (without a launcher to say so).
        owners = {f.owner for f in self.policy.futures.values() if not f.away}
        for owner in owners - {self.identity}:
            if not store.flagged(alive_flag(owner.decode(errors="replace"))):
                self.policy.owner_gone(owner)
        census = store.records(CENSUS)
        self._read_census(census.get(WORKERS))
        taker = self._census_taker(census.get(TAKER))
        if taker != self.name:
            if time.monotonic() - self._census_read <= 2 * self.heartbeat_timeout:
                if not self._census.workers and self.role != m.WORKER:
                    # No worker, says the census (or there is none yet): maybe
                    # one joined since. A program counts for itself, since its
                    # policy fails what is queued once it has seen no worker for
                    # a while (a worker's policy counts itself as one).
                    self._count_workers()
                return
            if not self._counting_alone:
                self._counting_alone = True
                log.warning(
                    "%s has read no new census of the workers for %g s (its taker is %s): "
                    "it counts them itself",
                    self.name,
                    2 * self.heartbeat_timeout,
                    repr(taker[:40]),
                )
        self._take_census()

    def _census_taker(self, blob: bytes | None) -> str:
        """Who takes the census: the live peer the taker record names, else
        us if we write ours in its place first (a record that is not the
        run's, or names a peer no longer alive, is deleted)."""
        if blob is not None:
            try:
                taker = read_taker(blob, self.key)
            except ProtocolError as exc:
                refusals.note(self.name, "census", "the record of the census taker", exc)
            else:
                if taker == self.name or self.store.flagged(alive_flag(taker)):
                    return taker
            self.store.drop_records(CENSUS, {TAKER: blob})
        [there] = self.store.put_records(CENSUS, [(TAKER, seal_taker(self.key, self.name))])
        if there is None:
            return self.name
        try:
            return read_taker(there, self.key)
        except ProtocolError:
            return "unknown"  # written meanwhile by someone else: deleted at the next look

    def _take_census(self) -> None:
        """Claim the entries of takers silent too long, count the live
        workers, and write the census."""
        store = self.store
        stale = store.claim_expired(self.heartbeat_timeout)
        for holder in sorted({e.holder or "a worker" for e in stale}):
            log.warning(
                "%s has been silent for over %g s (heartbeat_timeout); counting it as lost",
                holder,
                self.heartbeat_timeout,
            )
        if stale:
            report_lost(store, stale, key=self.key, codec=self.mailer, max_size=self.max_size)
        census = Census(self._census.number + 1, self._count_workers(), self.name)
        blob = seal_census(self.key, census)
        [there] = store.put_records(CENSUS, [(WORKERS, blob)])
        if there is not None:
            store.put_records(CENSUS, [(WORKERS, blob)], replace=True)
        self._census, self._census_read = census, time.monotonic()

    def _read_census(self, blob: bytes | None) -> None:
        """The census ``blob``, if it is newer than the one we know: the live
        workers elsewhere. One that is not the run's is deleted."""
        if blob is None:
            return
        try:
            census = read_census(blob, self.key)
        except ProtocolError as exc:
            refusals.note(self.name, "census", "the census of the workers", exc)
            self.store.drop_records(CENSUS, {WORKERS: blob})
            return
        if census.number > self._census.number:
            self._census, self._census_read = census, time.monotonic()
            self._counting_alone = False
            me = 1 if self.role == m.WORKER else 0
            self.policy.remote_workers = max(0, census.workers - me)

    def _count_workers(self) -> int:
        """Count the live workers (a look at every peer's record and flag):
        those elsewhere go to the policy; returns them all."""
        start = time.monotonic()
        workers = [name for name, (_, role) in self.peers.records().items() if role == m.WORKER]
        alive = _alive(self.store, workers)
        self.policy.remote_workers = len(alive - {self.name})
        self._count_took = time.monotonic() - start
        return len(alive)

    def _arrived(self, entries: list[Entry], mail: list[list[Frame]], want: int) -> None:
        admitted, bad = self._admit(entries)
        if bad:
            self.store.commit(done=bad)
        if admitted:
            self.policy.arrived(
                Arrival(q.task, q.owner.encode(), entry_id, q.attempt, q.losses, q.lost_on)
                for entry_id, q in admitted
            )
        elif want and not entries and not mail:
            now = time.monotonic()
            if now - self._last_hungry > HUNGRY_MARK:
                self._last_hungry = now
                self.store.flag(HUNGRY, HUNGRY_TTL)
        for frames in mail:
            try:
                sender, msg = self.mailer.decode_from(frames)
            except ProtocolError as exc:
                refusals.note(self.name, "mail", "a message in its mailbox", exc)
                continue
            try:
                self.policy.handle_mail(sender, msg)
            except ProtocolError as exc:
                log.warning(
                    "%s: ignored a %s message in its mailbox: %s",
                    self.name,
                    type(msg).__name__,
                    exc,
                )
        self._turn()

    def _admit(self, entries: list[Entry]) -> tuple[list[tuple[bytes, Queued]], list[bytes]]:
        """The entries this worker may run, ``(entry id, what it says)``, and
        the ids of the others, to delete: those not signed with the run's
        key, and copies of an entry taken before (here, or marked taken)."""
        fresh: list[tuple[Queued, bytes]] = []
        bad: list[bytes] = []
        for entry in entries:
            try:
                queued = read_entry(entry, self.key, self.max_size)
            except ProtocolError as exc:
                refusals.note(self.name, "queue", "a queue entry", exc)
                bad.append(entry.id)
                continue
            if queued.token in self._taken:
                self._copy(queued)
                bad.append(entry.id)
                continue
            self._taken[queued.token] = None
            if len(self._taken) > REMEMBERED:
                self._taken.popitem(last=False)
            fresh.append((queued, entry.id))
        admitted = []
        marks = mark_taken(self.store, self.key, self.name, fresh)
        for (queued, entry_id), mark in zip(fresh, marks, strict=True):
            if mark is None:
                admitted.append((entry_id, queued))
            else:
                self._copy(queued)
                bad.append(entry_id)
        return admitted, bad

    def _copy(self, queued: Queued) -> None:
        fid = queued.task.fid
        refusals.note(
            self.name,
            "queue",
            f"a copy of the queue entry of future {fid:#x}",
            "a future runs once",
        )

    # -- leaving --------------------------------------------------------------

    def _leave_now(self) -> None:
        """Asked to leave: hand back what we hold, without a loss, and stop."""
        if self.identity in self.policy.peers:
            self.policy.leave(self.identity, lost=False)
            self._turn()
        self._left.set()
        self._reply(m.Shutdown("this worker was asked to leave"))

    def leave(self, timeout: float) -> bool:
        """From any thread: hand back what this worker holds, then stop it.
        True if that was done within ``timeout`` seconds."""
        self._leaving.set()
        self.store.wakeup()
        return self._left.wait(timeout)

    def _store_lost(self, exc: TransportClosed) -> None:
        if self._closed:
            return
        # A store may refuse to go on without the run's keys (Redis: its
        # streams are gone): a run whose keys were deleted has ended.
        with contextlib.suppress(TransportClosed):
            ended = self._ended(ending=False)
            if ended:
                self._leave_ended_run(ended)
                return
        log.error("%s: %s", self.name, exc)
        self.inbox.clear()
        self._reply(m.Shutdown(str(exc)))
        self._closed = True
        self._store_gone = True

    def wakeup(self) -> None:
        # Once closed, this endpoint takes nothing more: a store's wake-up
        # would only write (to the mailbox of a worker whose run has ended).
        if not self._closed:
            self.store.wakeup()

    def _sweep(self) -> None:
        """Close the store of a worker that found its run ended. If it wrote
        anything there, once the run's launcher has deleted the run's keys
        (:data:`SWEEP_WAIT` at the most), it deletes what is left: what it
        wrote, and what other late peers did; else what it wrote expires.
        Its record and flag go at once."""
        end_run = False
        if self._record is not None:
            try:
                # Neither creates a key; a launcher that waits for us waits no more.
                self.store.drop_records(PEERS, {self.name: self._record})
                self.store.flag(alive_flag(self.name), 0)
                deadline = time.monotonic() + SWEEP_WAIT
                while self.description in self.store.records(RUN):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)  # polling the store for the launcher's end
                else:
                    end_run = True
            except TransportClosed as exc:
                log.debug("%s: could not leave the ended run cleanly: %s", self.name, exc)
        self.store.close(end_run=end_run)

    def close(self) -> None:
        """Hand back what we hold and leave the run; a program whose launcher
        is gone ends the run itself (tells every peer, deletes the run's keys)."""
        if self._finished:
            return
        self.over.set()
        self._finished = True
        self._closed = True
        self.inbox.clear()
        if self._run_ended:
            self._sweep()
            return
        end_run = False
        if not self._store_gone:
            try:
                if self.identity in self.policy.peers:
                    self.policy.leave(self.identity, lost=False)
                    self._turn()
                self.inbox.clear()
                if self._record is not None:
                    self.store.drop_records(PEERS, {self.name: self._record})
                self.store.flag(alive_flag(self.name), 0)
                if self._census.taker == self.name:  # the next peer to look takes it at once
                    self.store.drop_records(CENSUS, {TAKER: seal_taker(self.key, self.name)})
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


def announce_departure(store: BrokerStore, codec: m.Codec, name: str) -> None:
    """Peer ``name``'s process has ended: lower its flag and tell every other
    peer (:class:`~scoop_core.messages.Departed`), whose policies cancel its
    futures that have not started (nobody would read them)."""
    store.flag(alive_flag(name), 0)
    peers = Peers(store, codec.key, who=codec.sender.decode(errors="replace"))
    told = [p for p in peers.names() if p not in (LAUNCHER, name) and p.encode() != codec.sender]
    departed = m.Departed(name)
    store.commit(mail=[(p, codec.encode(departed, to=p.encode())) for p in told])


def tell_everyone(store: BrokerStore, codec: m.Codec, reason: str, wait: float) -> set[str]:
    """Mark the run's end (:data:`RUN_END`), tell every peer the run is
    over, and give them ``wait`` seconds to leave (a worker busy with a
    future reads its mail in its I/O thread at once, but must not find its
    mailbox deleted first). Returns the peers told that were alive then (a
    frozen worker will not leave)."""
    mark = [(RUN_END, seal_record(codec.key, END_MARK, [reason]))]
    if store.put_records(RUN, mark)[0] is not None:
        store.put_records(RUN, mark, replace=True)  # over one that may not be the run's
    peers = Peers(store, codec.key, who=codec.sender.decode(errors="replace"))
    told = {p for p in peers.names() if p != LAUNCHER and p.encode() != codec.sender}
    alive = _alive(store, told)
    shutdown = m.Shutdown(reason)
    store.commit(mail=[(p, codec.encode(shutdown, to=p.encode())) for p in told])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _alive(store, alive & set(store.records(PEERS))):
            break
        time.sleep(0.02)  # polling the store for departures
    return alive


def _alive(store: BrokerStore, peers: Iterable[str]) -> set[str]:
    """Those of ``peers`` whose flag is up."""
    return {p for p in peers if store.flagged(alive_flag(p))}
