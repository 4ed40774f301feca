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
- Anyone who can write to the store's server can write into the run, so
  everything a process acts on is signed with the run's key and checked
  before it is decoded or used: queue entries, mail, constants, peer
  records, taken marks and the run's description. The signature is the
  messages' HMAC-SHA256 (:func:`scoop_core.messages.mac_of`), over a header
  that names what the record is (so one kind cannot pass for another, nor a
  constant for another name), and the size is checked against
  ``max_message_size`` before the HMAC is computed. Whatever fails the
  check is deleted unread, and each process says so once per kind of
  record, however many there are.
- A queue entry is one future with all the store used to keep beside it:
  its owner (to whom its result goes: never looked up in the store's
  peer records, which only name mailboxes for constants and the end of the
  run), how many times it was lost and where, and its *attempt*, which
  every queuing of the future (lost, handed back, stolen) increases.
- A copy of a signed entry (someone added the same fields again) must not
  run the future twice. A worker that takes an entry first records a
  signed *taken mark* for (future, attempt) naming that very entry and
  itself (``HSETNX``): if another entry already has the mark, this one is a
  copy, and is deleted unrun; the worker also remembers the last
  (future, attempt) pairs it took, which no change in the store can undo.
- An entry claimed from a silent taker counts as lost only if its mark
  names it: that taker did take it. With no mark, nobody of the run took it
  (something without the key read it from the queue, or its taker died
  before it marked it): it is queued again as it was, without a loss, after
  the claimer marks it. With a mark naming another entry, it is a copy.
  So neither a forged loss count nor an outsider holding entries can fail
  a future, and a future lost with its worker runs again once.
- Mail between peers goes through each sender's :class:`~scoop_core.messages.Codec`,
  so replays and spoofed senders are refused as on a hub.
- A worker touches the entries it holds every heartbeat; entries of a
  worker silent for ``heartbeat_timeout`` are claimed by another worker
  (or at once by the launcher, which sees its own workers die) and queued
  again with one more loss, or failed with :class:`WorkerLostError` once
  the future's ``max_losses`` is reached.
- A future lost with a worker before (its signed loss count is 1 or more)
  runs alone, since it may be what killed that worker: the worker that
  takes it hands back what came with it and asks its runtime back the
  futures it holds and has not started, gives it to its runtime only once
  everything else it held is finished (results committed) or queued again
  (without a loss), and takes nothing else until it is done. So the
  futures that travelled with a killer are charged at most that first
  loss, and only the killer reaches ``max_losses``. If what the worker
  still runs has not finished within ``heartbeat_timeout`` (it may wait
  for children only this worker would take), the future goes back to the
  queue, without a loss, for a worker that holds nothing.
- Results go straight to their owner's mailbox, in the same atomic commit
  that removes the finished entries: a result is delivered if and only if
  its entry is gone. A future run twice (its worker was only slow) gives
  two results; the owner reads the first and drops the other.
- Messages that carry many futures (tasks to our runtime, results and
  starts to an owner) are cut to fit ``max_message_size``, as the ZeroMQ
  broker cuts them; a message that still cannot be encoded is logged and
  dropped, and a call or result too big for any message fails its future
  saying why: no encode error stops a process's I/O thread.
- With no live worker for ``heartbeat_timeout`` (as the ZeroMQ broker
  counts them), each program fails the queued futures it owns with
  :class:`WorkerLostError`: entries nobody took, and those of a taker
  silent that long, deleted first in one atomic step, so a worker that
  wakes up or joins later cannot take them too.
- A peer writes its record again at every heartbeat, so a record someone
  overwrote (and a reader then deleted) is back within a heartbeat.
- Stealing: a worker with nothing to do marks the run hungry; a worker
  holding spare futures of its own sees that and hands half of them to the
  queue, where the hungry one takes them.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from scoop_core import messages as m
from scoop_core.broker_policy import lost_reason
from scoop_core.errors import ProtocolError, SerializationError, TransportClosed
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

PEERS, CONSTANTS, MARKS, RUN = "peers", "constants", "marks", "run"
"""The store's record tables: peer records, shared constants, taken marks, the run's description."""

HUNGRY = "hungry"
"""The store's flag a worker raises when it found the queue empty."""


def alive_flag(name: str) -> str:
    """The store's flag that says peer ``name`` is alive (raised every heartbeat)."""
    return f"alive:{name}"


RECORD_ALLOWANCE = 1024
"""Bytes a signed record may have beyond ``max_message_size``: its header
and mac around a payload that fitted in one message."""

REMEMBERED = 1 << 16
"""How many (future, attempt) pairs a worker remembers having taken."""


# -- signed records -------------------------------------------------------------------
#
# Two forms, both signed with the run's key by the messages' own mac:
# frames ``[header, *payload, mac]`` for stream entries (large payloads stay
# separate frames), and one ``mac + body`` blob for hash fields. A header
# or body is the msgpack list ``[PROTOCOL_VERSION, kind, *fields]``; a
# kind is a string, where every message kind is a number, so no record
# passes for a message nor a message for a record.

ENTRY = "queue entry"
CONSTANT = "constant"
PEER = "peer record"
MARK = "taken mark"
INFO = "run description"


def _limit(max_size: int | None) -> int | None:
    return None if max_size is None else max_size + RECORD_ALLOWANCE


def _too_big(what: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise ProtocolError(f"{what} of {size} bytes, over the limit of {limit} bytes")


def _parse(header: bytes, kind: str) -> list[Any]:
    try:
        head = msgpack.unpackb(header, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"unreadable {kind}: {exc}") from None
    if not isinstance(head, list) or len(head) < 2 or head[:2] != [m.PROTOCOL_VERSION, kind]:
        raise ProtocolError(f"not a {kind} of this protocol version")
    return head[2:]


def seal_frames(key: bytes, kind: str, fields: list[Any], payload: Sequence[Frame]) -> list[Frame]:
    """A stream entry's frames: ``fields`` and ``payload`` under the run's mac."""
    header = msgpack.packb([m.PROTOCOL_VERSION, kind, *fields], use_bin_type=True)
    return [header, *payload, m.mac_of(key, header, payload)]


def open_frames(
    frames: Sequence[Frame], key: bytes, kind: str, max_size: int | None
) -> tuple[list[Any], list[Frame]]:
    """``(fields, payload)`` of frames :func:`seal_frames` made; ProtocolError
    for anything else. The size is checked first, then the mac, and only
    then is anything parsed."""
    if len(frames) < 2:
        raise ProtocolError(f"a {kind} needs at least 2 frames, got {len(frames)}")
    _too_big(f"a {kind}", sum(memoryview(f).nbytes for f in frames), _limit(max_size))
    header, payload, mac = bytes(frames[0]), list(frames[1:-1]), bytes(frames[-1])
    if len(mac) != m.MAC_SIZE or not hmac.compare_digest(mac, m.mac_of(key, header, payload)):
        raise ProtocolError("bad or missing HMAC: not written with this run's key")
    return _parse(header, kind), payload


def seal_record(key: bytes, kind: str, fields: list[Any]) -> bytes:
    """A hash field's value: ``fields`` under the run's mac, as one blob."""
    body = msgpack.packb([m.PROTOCOL_VERSION, kind, *fields], use_bin_type=True)
    return m.mac_of(key, body, ()) + body


def open_record(blob: bytes, key: bytes, kind: str, max_size: int | None) -> list[Any]:
    """The fields of a blob :func:`seal_record` made; ProtocolError for anything else."""
    _too_big(f"a {kind}", len(blob), _limit(max_size))
    mac, body = blob[: m.MAC_SIZE], blob[m.MAC_SIZE :]
    if len(mac) != m.MAC_SIZE or not hmac.compare_digest(mac, m.mac_of(key, body, ())):
        raise ProtocolError("bad or missing HMAC: not written with this run's key")
    return _parse(body, kind)


class _Refusals:
    """Says once per kind of record, in this process, that it deleted one
    (a flood of forged entries must not flood the log), and counts them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def note(self, who: str, kind: str, what: str, why: object) -> None:
        with self._lock:
            self.counts[kind] += 1
            first = self.counts[kind] == 1
        if first:
            log.warning(
                "%s: deleted %s (%s); more of these are deleted without a word",
                who,
                what,
                why,
            )


refusals = _Refusals()


def _shown(name: str) -> str:
    """A name someone else may have written, short and on one line, for a message."""
    return repr(name[:40] + ("..." if len(name) > 40 else ""))


def _text_field(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"malformed record: bad {what} {value!r:.40}")
    return value


def _int_field(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"malformed record: bad {what} {value!r:.40}")
    return value


# -- queue entries ----------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """What a queue entry says: the future, its owner, its attempt (each
    queuing of it counts one), and how many times and where it was lost."""

    task: m.Task
    owner: str
    attempt: int = 0
    losses: int = 0
    lost_on: tuple[str, ...] = ()

    @property
    def token(self) -> bytes:
        """Names this queuing of this future, for its taken mark."""
        return b"%x:%d" % (self.task.fid, self.attempt)

    def again(self, lost_on: str | None = None) -> Queued:
        """The entry of the next queuing, with one more loss if it was ``lost_on`` a worker."""
        if lost_on is None:
            return replace(self, attempt=self.attempt + 1)
        return replace(
            self,
            attempt=self.attempt + 1,
            losses=self.losses + 1,
            lost_on=(*self.lost_on, lost_on),
        )


def entry_for(queued: Queued, key: bytes) -> Entry:
    """The signed queue entry of ``queued``."""
    t = queued.task
    head = [queued.owner, t.fid, t.parent, t.depth, t.max_losses]
    head += [queued.attempt, queued.losses, list(queued.lost_on)]
    return Entry(tuple(seal_frames(key, ENTRY, head, t.frames)))


def read_entry(entry: Entry, key: bytes, max_size: int | None = None) -> Queued:
    """What a queue entry says; ProtocolError if it is not signed with ``key``."""
    fields, payload = open_frames(entry.frames, key, ENTRY, max_size)
    if len(fields) != 8 or not isinstance(fields[7], list):
        raise ProtocolError("malformed queue entry")
    owner = _text_field(fields[0], "owner")
    fid, parent, depth, max_losses, attempt, losses = (_int_field(v, "number") for v in fields[1:7])
    lost_on = tuple(_text_field(n, "worker name") for n in fields[7])
    task = m.Task(fid, parent, depth, tuple(payload), max_losses)
    return Queued(task, owner, attempt, losses, lost_on)


@dataclass(frozen=True)
class Mark:
    """A taken mark: which entry of a (future, attempt) was taken, and by whom."""

    entry_id: bytes
    holder: str


def seal_mark(key: bytes, token: bytes, entry_id: bytes, holder: str) -> bytes:
    return seal_record(key, MARK, [token, entry_id, holder])


def read_mark(blob: bytes, key: bytes, token: bytes) -> Mark:
    fields = open_record(blob, key, MARK, None)
    if len(fields) != 3 or fields[0] != token or not isinstance(fields[1], bytes):
        raise ProtocolError("a taken mark for another future, or malformed")
    return Mark(fields[1], _text_field(fields[2], "holder"))


def _marks(
    store: BrokerStore, key: bytes, holder: str, pairs: Sequence[tuple[Queued, bytes]]
) -> list[Mark | None]:
    """Mark each ``(queued, entry id)`` as taken by ``holder``: None where we
    marked it, else the mark of the entry that was marked before. A mark
    that is not the run's is deleted and ours written instead."""
    if not pairs:
        return []
    tokens = [q.token for q, _ in pairs]
    there = store.put_records(
        MARKS,
        [
            (t.decode(), seal_mark(key, t, entry_id, holder))
            for t, (_, entry_id) in zip(tokens, pairs, strict=True)
        ],
    )
    found: list[Mark | None] = []
    for token, (_, entry_id), blob in zip(tokens, pairs, there, strict=True):
        if blob is None:
            found.append(None)
            continue
        try:
            found.append(read_mark(blob, key, token))
            continue
        except ProtocolError as exc:
            refusals.note(holder, "mark", "a taken mark", exc)
            store.drop_records(MARKS, {token.decode(): blob})
        [again] = store.put_records(
            MARKS, [(token.decode(), seal_mark(key, token, entry_id, holder))]
        )
        # Marked again meanwhile (by whom, we cannot tell): this entry is not
        # the one marked, so it is left be, as a copy.
        found.append(None if again is None else _UNKNOWN)
    return found


_UNKNOWN = Mark(b"", "")
"""The mark of some entry other than ours, whoever took it."""


# -- peer records ------------------------------------------------------------------------


def seal_peer(key: bytes, name: str, index: int, role: str) -> bytes:
    return seal_record(key, PEER, [name, index, role])


class Peers:
    """The run's peers as their signed records say: names, indices, roles.

    Records that are not the run's are deleted as they are read. An index,
    once known, keeps its name (indices are never reused), so a record
    rewritten later changes nothing here. Without ``key`` it knows nobody
    (a caller that only passes it on)."""

    def __init__(
        self, store: BrokerStore, key: bytes | None = None, *, who: str = LAUNCHER
    ) -> None:
        self.store = store
        self.key = key
        self.who = who
        self._names: dict[int, str] = {}

    def records(self) -> dict[str, tuple[int, str]]:
        """Every peer with a good record: name -> (index, role)."""
        good: dict[str, tuple[int, str]] = {}
        if self.key is None:
            return good
        bad: dict[str, bytes] = {}
        for name, blob in self.store.records(PEERS).items():
            try:
                fields = open_record(blob, self.key, PEER, None)
                if len(fields) != 3 or fields[0] != name:
                    raise ProtocolError("a record of another peer, or malformed")
                good[name] = (_int_field(fields[1], "index"), _text_field(fields[2], "role"))
            except ProtocolError as exc:
                refusals.note(self.who, "peer", f"the peer record {_shown(name)}", exc)
                bad[name] = blob
        self.store.drop_records(PEERS, bad)
        return good

    def names(self) -> list[str]:
        return list(self.records())

    def workers(self) -> int:
        return sum(1 for _, role in self.records().values() if role == m.WORKER)

    def owner(self, fid: int) -> str | None:
        index = fid >> 32
        if index not in self._names:
            for name, (i, _) in self.records().items():
                self._names.setdefault(i, name)
        return self._names.get(index)


# -- constants ------------------------------------------------------------------------------


def seal_const(key: bytes, name: str, frames: Sequence[Frame]) -> bytes:
    return seal_record(key, CONSTANT, [name, [memoryview(f).tobytes() for f in frames]])


def read_const(blob: bytes, key: bytes, name: str, max_size: int | None) -> list[Frame]:
    fields = open_record(blob, key, CONSTANT, max_size)
    if len(fields) != 2 or fields[0] != name or not isinstance(fields[1], list):
        raise ProtocolError("a record of another constant, or malformed")
    frames = fields[1]
    if not frames or not all(isinstance(f, bytes) for f in frames):
        raise ProtocolError("malformed constant")
    # As from a socket: out-of-band buffers come back writable.
    return frames[:1] + [bytearray(f) for f in frames[1:]]


@dataclass
class _Batch:
    """What one turn of messages will change in the store, in one commit."""

    add: list[tuple[int, Entry]] = field(default_factory=list)
    requeue: list[Entry] = field(default_factory=list)  # handed back: queued again
    results: dict[str, list[m.Outcome]] = field(default_factory=dict)
    started: dict[str, list[int]] = field(default_factory=dict)
    mail: list[tuple[str, m.Message]] = field(default_factory=list)
    done: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.add or self.requeue or self.results or self.started or self.mail or self.done
        )


def recover(
    store: BrokerStore,
    entries: Iterable[Entry],
    *,
    key: bytes,
    codec: m.Codec,
    max_losses: int,
    lost_by: str = "",
    max_size: int | None = None,
) -> list[int]:
    """Entries claimed from a taker that was lost: queue each again with
    one more loss, or fail it (its owner gets a LOST outcome) once its
    future's ``max_losses`` is reached. Only an entry its taker marked
    counts as lost (see the module's docstring); copies are deleted. Returns
    the ids of the futures queued again."""
    me = codec.sender.decode(errors="replace")
    done: list[bytes] = []
    claimed: list[tuple[Queued, bytes]] = []
    for entry in entries:
        done.append(entry.id)
        try:
            claimed.append((read_entry(entry, key, max_size), entry.id))
        except ProtocolError as exc:
            refusals.note(me, "queue", "a queue entry", exc)
    add: list[Entry] = []
    failed: dict[str, list[m.Outcome]] = {}
    requeued: list[int] = []
    for (queued, entry_id), mark in zip(claimed, _marks(store, key, me, claimed), strict=True):
        fid = queued.task.fid
        if mark is None:
            # Nobody of the run took it: no loss.
            add.append(entry_for(queued.again(), key))
            requeued.append(fid)
            continue
        if mark.entry_id != entry_id:
            refusals.note(
                me, "queue", f"a copy of the queue entry of future {fid:#x}", "a future runs once"
            )
            continue
        lost = queued.again(lost_on=mark.holder or lost_by or "a worker")
        if lost.losses >= (queued.task.max_losses or max_losses):
            reason = lost_reason(fid, lost.losses, list(lost.lost_on))
            log.warning("%s", reason)
            outcome = m.Outcome(fid, m.LOST, 0.0, (reason.encode(),))
            failed.setdefault(queued.owner, []).append(outcome)
        else:
            add.append(entry_for(lost, key))
            requeued.append(fid)
    mail = [
        (owner, codec.encode(m.Results(tuple(part)), to=owner.encode()))
        for owner, outs in failed.items()
        for part in m.split_by_size(outs, codec.max_size)
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
        self.launcher_alive = launcher_alive or (lambda: store.flagged(alive_flag(LAUNCHER)))
        self.key = key
        self.name = name
        self.identity = name.encode()
        self.root = root
        self.max_losses = max_losses
        self.max_size = max_message_size
        self.expected_workers = expected_workers
        self.join_timeout = join_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        # Talks to our own runtime as the broker does.
        self.local = m.Codec(key, m.BROKER_IDENTITY, max_size=max_message_size)
        # Talks to the other peers through their mailboxes.
        self.mailer = m.Codec(key, self.identity, max_size=max_message_size)
        self.peers = Peers(store, key, who=name)
        self.role = ""
        self.index = 0
        self._record: bytes | None = None  # our signed peer record, once registered
        self.credit = 0
        self.spare = 0
        # Futures this worker runs: fid -> (entry id, what the entry says).
        self.held: dict[int, tuple[bytes, Queued]] = {}
        self.started: set[int] = set()  # those of them that started
        # The (future, attempt) pairs taken here lately: a copy is refused
        # even if someone deleted the taken marks.
        self._taken: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._recalling: set[int] = set()  # asked back from our runtime for a hungry worker
        # A future lost before runs alone here: its id while we hold it, and
        # its entry while it waits for the others we hold to be gone.
        self._alone: int | None = None
        self._aside: Queued | None = None
        self._aside_since = 0.0
        self.submitted: dict[int, bytes] = {}  # futures we own, not done: fid -> entry id
        # Futures held back while the store's queue is full (its length limit).
        self._backlog: list[tuple[int, Entry]] = []
        self.inbox: collections.deque[list[Frame]] = collections.deque()
        self._welcome_due: float | None = None
        self._next_duty = 0.0
        self._last_hungry = 0.0
        self._last_steal_check = 0.0
        self._root_seen = False
        # When a live worker was last seen (for futures we own that wait in
        # the queue: with none for heartbeat_timeout, they fail).
        self._workers_seen = time.monotonic()
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
            self._deliver_alone()
        except TransportClosed as exc:
            self._store_lost(exc)

    def _handle(self, msg: m.Message, batch: _Batch) -> None:
        if isinstance(msg, m.Submit):
            for task in msg.tasks:
                if task.fid >> 32 != self.index:
                    log.warning("%s: refused future %#x it does not own", self.name, task.fid)
                    continue
                batch.add.append((task.fid, entry_for(Queued(task, self.name), self.key)))
        elif isinstance(msg, m.Results):
            self._note_started(msg.started, batch)
            for out in msg.outcomes:
                self.started.discard(out.fid)
                if out.fid == self._alone:
                    self._alone = None
                held = self.held.pop(out.fid, None)
                if held is not None:
                    batch.done.append(held[0])
                owner = held[1].owner if held is not None else self.peers.owner(out.fid)
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
            held = self.held.pop(msg.fid, None) if msg.cancelled else None
            if held is not None:
                batch.requeue.append(entry_for(held[1].again(), self.key))
                batch.done.append(held[0])
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
                cancelled = entry_id is not None and self.store.withdraw([entry_id])[0] is None
            if cancelled:
                self.submitted.pop(msg.fid, None)
            self._reply(m.CancelReply(msg.fid, cancelled))
        elif isinstance(msg, m.SetConst):
            if self._set_const(msg.name, msg.frames):
                self._reply(m.ConstReply(msg.name, ""))
                for peer in self.peers.names():
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

    def _set_const(self, name: str, frames: Sequence[Frame]) -> bool:
        """Define a constant; a record of that name that is not the run's
        is deleted, and does not stand in the way."""
        record = seal_const(self.key, name, frames)
        [there] = self.store.put_records(CONSTANTS, [(name, record)])
        if there is None:
            return True
        if self._constants({name: there}):
            return False
        return self.store.put_records(CONSTANTS, [(name, record)])[0] is None

    def _constants(self, records: dict[str, bytes]) -> list[m.Constant]:
        """The constants in ``records``; those that are not the run's are deleted."""
        good, bad = [], {}
        for name, record in records.items():
            try:
                frames = read_const(record, self.key, name, self.max_size)
            except ProtocolError as exc:
                refusals.note(self.name, "constant", f"the shared constant {_shown(name)}", exc)
                bad[name] = record
                continue
            good.append(m.Constant(name, tuple(frames)))
        self.store.drop_records(CONSTANTS, bad)
        return good

    def _note_started(self, fids: Iterable[int], batch: _Batch) -> None:
        """Futures we hold began running: their owners learn it (``running()``)."""
        for fid in fids:
            held = self.held.get(fid)
            if held is not None and fid not in self.started:
                self.started.add(fid)
                batch.started.setdefault(held[1].owner, []).append(fid)

    def _hello(self, msg: m.Hello) -> None:
        self.role = msg.role
        self.index = self.store.new_index()
        self._record = seal_peer(self.key, self.name, self.index, msg.role)
        [there] = self.store.put_records(PEERS, [(self.name, self._record)])
        if there is not None and there != self._record:
            self.store.put_records(PEERS, [(self.name, self._record)], replace=True)
        self.store.flag(alive_flag(self.name), self.heartbeat_timeout)
        log.debug("%s joined the run as peer %d", self.name, self.index)
        if msg.role != m.WORKER and self.peers.workers() < self.expected_workers:
            self._welcome_due = time.monotonic() + self.join_timeout
        else:
            self._welcome()

    def _welcome(self) -> None:
        self._welcome_due = None
        self._reply(m.Welcome(self.index, tuple(self._constants(self.store.records(CONSTANTS)))))

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
        mail: list[tuple[str, list[Frame]]] = []
        for peer, msg in batch.mail:
            self._post(mail, peer, msg)
        limit = self.max_size
        for owner, fids in batch.started.items():
            # Those that also finished in this turn need no word of their start.
            finished = {o.fid for o in batch.results.get(owner, ())}
            running = [f for f in fids if f not in finished]
            for some in m.split_by_size(running, limit):
                self._post(mail, owner, m.Started(some))
        for owner, outs in batch.results.items():
            # Cut to fit: results that fit one by one may not fit together.
            for part in m.split_by_size([self._sendable(o) for o in outs], limit):
                self._post(mail, owner, m.Results(tuple(part)))
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

    def _post(self, mail: list[tuple[str, list[Frame]]], peer: str, msg: m.Message) -> None:
        """Add ``msg`` for ``peer`` to ``mail``. A message too big to encode
        is said loudly and dropped: it must not stop this process's I/O
        (callers cut batches to fit, so only a message of one item can be)."""
        try:
            mail.append((peer, self.mailer.encode(msg, to=peer.encode())))
        except SerializationError as exc:
            log.error("%s could not send %s to %s: %s", self.name, type(msg).__name__, peer, exc)

    def _too_big(self, item: m.Task | m.Outcome) -> str:
        """Why ``item`` cannot travel in any message ("" if it can)."""
        limit = self.max_size
        payload_limit = m.payload_limit(limit)
        size = m.item_size(item) - m.ITEM_ALLOWANCE
        if limit is None or payload_limit is None or size <= payload_limit:
            return ""
        what = "call" if isinstance(item, m.Task) else "result"
        return (
            f"{self.name} cannot pass on the {what} of future {item.fid:#x}: it is "
            + m.too_big_for_one_message(size, limit)
        )

    def _sendable(self, out: m.Outcome) -> m.Outcome:
        """``out``, or if it is too big for any message, its future's failure
        saying so (a runtime whose limit is not ours let it through)."""
        too_big = self._too_big(out)
        if not too_big:
            return out
        log.error("%s", too_big)
        return m.Outcome(out.fid, m.LOST, out.elapsed, (too_big.encode(),))

    def _reply(self, msg: m.Message) -> None:
        if isinstance(msg, m.Shutdown):
            self.over.set()
        try:
            self.inbox.append(self.local.encode(msg, to=self.identity))
        except SerializationError as exc:
            # Callers cut batches to fit; whatever slips through is said
            # loudly, and must not stop this process's I/O.
            log.error("%s could not pass on %s: %s", self.name, type(msg).__name__, exc)

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
                taking = self.role == m.WORKER and self._alone is None
                entries, mail = self.store.take(self.credit if taking else 0, self._wait(timeout))
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
            now > self._welcome_due or self.peers.workers() >= self.expected_workers
        ):
            if now > self._welcome_due:
                log.warning(
                    "%d of %d workers joined within %g s; starting with those",
                    self.peers.workers(),
                    self.expected_workers,
                    self.join_timeout,
                )
            self._welcome()
        if self._could_give() and now - self._last_steal_check > STEAL_CHECK:
            self._last_steal_check = now
            if self.store.flagged(HUNGRY):
                self.store.flag(HUNGRY, 0)  # one mark of hunger, one hand-over
                self._give()
        if now < self._next_duty or not self.role:
            return
        self._next_duty = now + self.heartbeat_interval
        self.store.flag(alive_flag(self.name), self.heartbeat_timeout)
        if self._record is not None:
            # Only while the run's peer table exists: an ended run is not brought back.
            self.store.put_records(PEERS, [(self.name, self._record)], replace=True)
        if self.held:
            self.store.renew([entry_id for entry_id, _ in self.held.values()])
        if self.role == m.WORKER:
            self._give_up_alone(now)
            stale = self.store.claim_expired(self.heartbeat_timeout)
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
                    max_losses=self.max_losses,
                    max_size=self.max_size,
                )
            if self.root:
                if self.store.flagged(alive_flag(self.root)):
                    self._root_seen = True
                elif self._root_seen:
                    self._reply(m.Shutdown(f"the run's program ({self.root}) is gone"))
                    return
        elif self.submitted or self._backlog:
            self._no_worker_left(now)
        # The runtime counts a silent broker as lost: we are its broker.
        self._reply(m.Heartbeat(0))

    def _no_worker_left(self, now: float) -> None:
        """As the ZeroMQ broker does: once no worker has been alive for
        ``heartbeat_timeout``, fail the queued futures we own (nobody would
        run them). A worker that took one and was then silent that long too
        counts as not there; each entry is deleted before it is failed, so a
        worker that wakes up or joins later cannot also take it."""
        for name, (_, role) in self.peers.records().items():
            if role == m.WORKER and self.store.flagged(alive_flag(name)):
                self._workers_seen = now
                return
        silent = now - self._workers_seen
        if silent <= self.heartbeat_timeout:
            return
        reason = f"no worker has been connected for {silent:.0f} s"
        # Entries of a taker silent that long come back first, as a worker would claim them.
        stale = self.store.claim_expired(self.heartbeat_timeout)
        if stale:
            recover(
                self.store,
                stale,
                key=self.key,
                codec=self.mailer,
                max_losses=self.max_losses,
                max_size=self.max_size,
            )
        doomed: dict[bytes, int] = {}
        for entry in self.store.queued():
            try:
                queued = read_entry(entry, self.key, self.max_size)
            except ProtocolError:
                continue  # not ours to judge here: its taker refuses and deletes it
            if queued.owner == self.name:
                doomed[entry.id] = queued.task.fid
        ids = list(doomed)
        answers = self.store.withdraw(ids) if ids else []
        fids = [doomed[i] for i, held in zip(ids, answers, strict=True) if held is None]
        fids += [fid for fid, _ in self._backlog]
        self._backlog.clear()
        if not fids:
            return
        log.error("no worker left: %d queued future(s) failed", len(fids))
        outcomes = []
        for fid in fids:
            self.submitted.pop(fid, None)
            text = f"future {fid:#x} cannot run: {reason}"
            outcomes.append(m.Outcome(fid, m.LOST, 0.0, (text.encode(),)))
        for outs in m.split_by_size(outcomes, self.max_size):
            self._reply(m.Results(tuple(outs)))

    def _unstarted(self) -> list[int]:
        """Futures we hold that our runtime has not started (a future that
        runs alone is not among them: it is not given up for a hungry worker)."""
        return [
            f
            for f in self.held
            if f not in self.started and f not in self._recalling and f != self._alone
        ]

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
        for (queued, entry_id), mark in zip(
            fresh, _marks(self.store, self.key, self.name, fresh), strict=True
        ):
            if mark is None:
                admitted.append((entry_id, queued))
            else:
                self._copy(queued)
                bad.append(entry_id)
        return admitted, bad

    def _run_alone(self, entry_id: bytes, queued: Queued) -> None:
        """Hold ``queued``, a future lost with a worker before, and run it
        alone: ask our runtime back every future it holds and has not
        started, and hand it over once the others are finished (their
        results committed) or back in the queue. Nothing else is taken
        until it is done."""
        fid = queued.task.fid
        self.held[fid] = (entry_id, queued)
        self._alone = fid
        self._aside = queued
        self._aside_since = time.monotonic()
        recalled = [f for f in self._unstarted() if f != fid]
        for other in recalled:
            self._recalling.add(other)
            self._reply(m.Cancel(other))
        log.info(
            "%s runs future %#x alone (lost %d time(s) before); handing back %d future(s)",
            self.name,
            fid,
            queued.losses,
            len(recalled),
        )
        self._deliver_alone()

    def _deliver_alone(self) -> None:
        """Hand the future set aside to our runtime once it is all we hold."""
        aside = self._aside
        if aside is None or len(self.held) > 1:
            return
        self._aside = None
        self.credit = max(0, self.credit - 1)
        self._reply(m.Tasks((aside.task,)))

    def _give_up_alone(self, now: float) -> None:
        """The future set aside has waited ``heartbeat_timeout`` for the
        others we run (which may wait for children that only we would have
        taken): it goes back to the queue for a worker that holds nothing,
        without a loss, and we take futures again."""
        aside = self._aside
        if aside is None or now - self._aside_since <= self.heartbeat_timeout:
            return
        fid = aside.task.fid
        held = self.held.pop(fid, None)
        self._aside = None
        self._alone = None
        if held is not None:
            self.store.commit(add=[entry_for(aside.again(), self.key)], done=[held[0]])
        log.info("%s hands back future %#x: what it runs did not finish in time", self.name, fid)

    def _copy(self, queued: Queued) -> None:
        fid = queued.task.fid
        refusals.note(
            self.name,
            "queue",
            f"a copy of the queue entry of future {fid:#x}",
            "a future runs once",
        )

    def _arrived(self, entries: list[Entry], mail: list[list[Frame]]) -> None:
        admitted, bad = self._admit(entries)
        failed: list[tuple[str, m.Message]] = []
        tasks = []
        for entry_id, queued in admitted:
            too_big = self._too_big(queued.task)
            if too_big:
                # Its owner's settings let it through, ours cannot pass it on.
                log.error("%s", too_big)
                bad.append(entry_id)
                outcome = m.Outcome(queued.task.fid, m.LOST, 0.0, (too_big.encode(),))
                failed.append((queued.owner, m.Results((outcome,))))
                continue
            tasks.append((entry_id, queued))
        requeue: list[Entry] = []
        suspect = None
        if self._alone is None:
            suspect = next((t for t in tasks if t[1].losses >= 1), None)
        if suspect is not None or self._alone is not None:
            # A future lost before runs alone: what came with it goes back
            # to the queue, without a loss.
            back = [t for t in tasks if t is not suspect]
            requeue = [entry_for(queued.again(), self.key) for _, queued in back]
            bad += [entry_id for entry_id, _ in back]
            tasks = []
        for entry_id, queued in tasks:
            self.held[queued.task.fid] = (entry_id, queued)
        if bad:
            letters: list[tuple[str, list[Frame]]] = []
            for owner, msg in failed:
                self._post(letters, owner, msg)
            self.store.commit(add=requeue, mail=letters, done=bad)
        if suspect is not None:
            self._run_alone(*suspect)
        if tasks:
            self.credit = max(0, self.credit - len(tasks))
            for part in m.split_by_size([queued.task for _, queued in tasks], self.max_size):
                self._reply(m.Tasks(tuple(part)))
        elif self.role == m.WORKER and self.credit and not entries and not mail:
            now = time.monotonic()
            if now - self._last_hungry > HUNGRY_MARK:
                self._last_hungry = now
                self.store.flag(HUNGRY, HUNGRY_TTL)
        for frames in mail:
            try:
                msg = self.mailer.decode(frames)
            except ProtocolError as exc:
                refusals.note(self.name, "mail", "a message in its mailbox", exc)
                continue
            if isinstance(msg, m.Results):
                for out in msg.outcomes:
                    self.submitted.pop(out.fid, None)
                # Cut again: our envelope is not the sender's.
                for outs in m.split_by_size(msg.outcomes, self.max_size):
                    self._reply(m.Results(tuple(outs)))
                continue
            if isinstance(msg, m.Started):
                for fids in m.split_by_size(msg.fids, self.max_size):
                    self._reply(m.Started(fids))
                continue
            if not isinstance(msg, m.Const | m.Shutdown | m.Heartbeat):
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
        held = list(self.held.values())
        self.held.clear()
        self._alone = self._aside = None
        self.store.commit(
            add=[entry_for(queued.again(), self.key) for _, queued in held],
            done=[entry_id for entry_id, _ in held],
        )
        log.warning("%s left; handed back %d future(s)", self.name, len(held))

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
                if self._record is not None:
                    self.store.drop_records(PEERS, {self.name: self._record})
                self.store.flag(alive_flag(self.name), 0)
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
    peers = Peers(store, codec.key, who=codec.sender.decode(errors="replace"))
    told = {p for p in peers.names() if p != LAUNCHER and p.encode() != codec.sender}
    alive = {p for p in told if store.flagged(alive_flag(p))}
    shutdown = m.Shutdown(reason)
    store.commit(mail=[(p, codec.encode(shutdown, to=p.encode())) for p in told])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        staying = [p for p in store.records(PEERS) if p in alive and store.flagged(alive_flag(p))]
        if not staying:
            break
        time.sleep(0.02)  # polling the store for departures
    return alive


INFO_LIMIT = 1 << 20
"""The most bytes a run's description may have (it is a few hundred)."""


def sign_info(info: dict[str, object], key: bytes) -> bytes:
    """The run's description as stored: JSON in a signed record, so that a
    worker joining later imports only what the run's launcher wrote."""
    return seal_record(key, INFO, [json.dumps(info, sort_keys=True)])


def read_info(blob: bytes, key: bytes) -> dict[str, object]:
    """The description :func:`sign_info` made; ValueError if ``key`` is not the run's."""
    try:
        fields = open_record(blob, key, INFO, INFO_LIMIT)
    except ProtocolError as exc:
        raise ValueError(f"the run's description is not signed with this key ({exc})") from None
    try:
        info = json.loads(fields[0]) if len(fields) == 1 and isinstance(fields[0], str) else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise ValueError("the run's description is not a JSON object")
    return info
