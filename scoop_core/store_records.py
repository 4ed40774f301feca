"""The signed records of a store-backed run: queue entries, taken marks,
peer records, the census of live workers, shared constants and the run's
description.

Anyone who can write to the store's server can write into the run, so
everything a process acts on is signed with the run's key and checked
before it is decoded or used. The signature is the messages' HMAC-SHA256
(:func:`scoop_core.messages.seal`), over a header that names what the
record is (so one kind cannot pass for another, nor a constant for another
name), and the size is checked against ``max_message_size`` before the
HMAC is computed. Whatever fails the check is deleted unread, and each
process says so once per kind of record, however many there are
(:data:`refusals`).

- A queue entry is one future with all the store used to keep beside it:
  its owner (to whom its result goes: never looked up in the peer records,
  which only name mailboxes for constants and the end of the run), how many
  times it was lost and where, and its *attempt*, which every queuing of
  the future increases.
- A copy of a signed entry (someone added the same fields again) must not
  run the future twice. A worker that takes an entry first records a signed
  *taken mark* for (future, attempt) naming that very entry and itself
  (:func:`mark_taken`): if another entry already has the mark, this one is
  a copy, and is deleted unrun.
- An entry claimed from a silent taker counts as lost only if its mark
  names it: that taker did take it. With no mark, nobody of the run took it
  (something without the key read it from the queue, or its taker died
  before it marked it), and it is not charged a loss.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from scoop_core import activity
from scoop_core import messages as m
from scoop_core.errors import ProtocolError
from scoop_core.interfaces import BrokerStore, Entry, Frame

if TYPE_CHECKING:
    from scoop_core.run_activity import RunActivity

log = logging.getLogger("scoop.broker")

LAUNCHER = "launcher"
"""The launcher's peer name in the store (it mails, it runs no futures)."""

PEERS, CONSTANTS, MARKS, RUN = "peers", "constants", "marks", "run"
"""The store's record tables: peer records, shared constants, taken marks, the run's description."""

REPORTS, TRACE = "reports", "trace"
"""The tables of the processes' reports (:mod:`scoop_core.activity`): the
newest of each process by its name, and the trace events not yet read by
the launcher, by process name and report number."""


CENSUS = "census"
"""The store's table of the census: its records :data:`WORKERS` and :data:`TAKER`."""

WORKERS, TAKER = "workers", "taker"
"""The census's records: how many workers are alive, and which peer counts them."""

HUNGRY = "hungry"
"""The store's flag a worker raises when it found the queue empty."""


def alive_flag(name: str) -> str:
    """The store's flag that says peer ``name`` is alive (raised every heartbeat)."""
    return f"alive:{name}"


RECORD_ALLOWANCE = 1024
"""Bytes a signed record may have beyond ``max_message_size``: its header
and mac around a payload that fitted in one message."""


# -- signed records -------------------------------------------------------------------
#
# Two forms, both signed with the run's key by the messages' own mac:
# frames ``[header, *payload, seal]`` for stream entries (large payloads stay
# separate frames, signed by their digests as in a message), and one
# ``mac + body`` blob for hash fields. A header
# or body is the msgpack list ``[PROTOCOL_VERSION, kind, *fields]``; a
# kind is a string, where every message kind is a number, so no record
# passes for a message nor a message for a record.

ENTRY = "queue entry"
CONSTANT = "constant"
PEER = "peer record"
MARK = "taken mark"
INFO = "run description"
REPORT = "report"
TRACE_EVENTS = "trace events"
COUNT = "census"
CENSUS_TAKER = "census taker"


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
    """A stream entry's frames: ``fields`` and ``payload`` sealed as a message
    is (:func:`scoop_core.messages.seal`): a large payload frame is signed by
    its digest, made once where the payload was made."""
    header = msgpack.packb([m.PROTOCOL_VERSION, kind, *fields], use_bin_type=True)
    return m.seal(key, header, payload)


def open_frames(
    frames: Sequence[Frame], key: bytes, kind: str, max_size: int | None, *, payload: str = m.CHECK
) -> tuple[list[Any], list[Frame]]:
    """``(fields, payload)`` of frames :func:`seal_frames` made; ProtocolError
    for anything else. The size is checked first, then the mac and, unless
    ``payload`` is :data:`~scoop_core.messages.RELAY`, each large payload
    frame against its digest; only then is anything parsed. Large frames come
    back as :class:`~scoop_core.messages.Sealed` frames, signed again by
    their digest wherever they go next."""
    if len(frames) < 2:
        raise ProtocolError(f"a {kind} needs at least 2 frames, got {len(frames)}")
    _too_big(f"a {kind}", m.frames_nbytes(frames), _limit(max_size))
    header, stamp = bytes(frames[0]), bytes(frames[-1])
    body = m.unseal(header, [m.buffer_of(f) for f in frames[1:-1]], stamp, key, mode=payload)
    return _parse(header, kind), body


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
            if activity.here is not None:  # in the trace, on this process's track
                activity.here.instant("rejected", f"deleted {what}", reason=str(why))


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


def entry_for(queued: Queued, key: bytes) -> Entry:
    """The signed queue entry of ``queued``."""
    t = queued.task
    head = [queued.owner, t.fid, t.parent, t.depth, t.max_losses]
    head += [queued.attempt, queued.losses, list(queued.lost_on)]
    return Entry(tuple(seal_frames(key, ENTRY, head, t.frames)))


def read_entry(
    entry: Entry, key: bytes, max_size: int | None = None, *, payload: str = m.CHECK
) -> Queued:
    """What a queue entry says; ProtocolError if it is not signed with ``key``.
    Its payload is checked unless ``payload`` is :data:`~scoop_core.messages.RELAY`
    (whoever reads the entry only for its header)."""
    fields, frames = open_frames(entry.frames, key, ENTRY, max_size, payload=payload)
    if len(fields) != 8 or not isinstance(fields[7], list):
        raise ProtocolError("malformed queue entry")
    owner = _text_field(fields[0], "owner")
    fid, parent, depth, max_losses, attempt, losses = (_int_field(v, "number") for v in fields[1:7])
    lost_on = tuple(_text_field(n, "worker name") for n in fields[7])
    task = m.Task(fid, parent, depth, tuple(frames), max_losses)
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


def mark_taken(
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

    Records that are not the run's are deleted as they are read. They only
    name mailboxes (for constants, departures and the end of the run) and
    count workers: a future's owner is read from its signed entry, never
    from here. Without ``key`` it knows nobody (a caller that only passes
    it on). A record is checked once: read again unchanged, it is known
    (a run of a thousand peers reads a thousand records at each count)."""

    def __init__(
        self, store: BrokerStore, key: bytes | None = None, *, who: str = LAUNCHER
    ) -> None:
        self.store = store
        self.key = key
        self.who = who
        self._checked: dict[str, tuple[bytes, tuple[int, str]]] = {}

    def records(self) -> dict[str, tuple[int, str]]:
        """Every peer with a good record: name -> (index, role)."""
        good: dict[str, tuple[int, str]] = {}
        if self.key is None:
            return good
        bad: dict[str, bytes] = {}
        checked: dict[str, tuple[bytes, tuple[int, str]]] = {}
        for name, blob in self.store.records(PEERS).items():
            known = self._checked.get(name)
            if known is not None and known[0] == blob:
                checked[name] = known
                good[name] = known[1]
                continue
            try:
                fields = open_record(blob, self.key, PEER, None)
                if len(fields) != 3 or fields[0] != name:
                    raise ProtocolError("a record of another peer, or malformed")
                good[name] = (_int_field(fields[1], "index"), _text_field(fields[2], "role"))
                checked[name] = (blob, good[name])
            except ProtocolError as exc:
                refusals.note(self.who, "peer", f"the peer record {_shown(name)}", exc)
                bad[name] = blob
        self._checked = checked
        self.store.drop_records(PEERS, bad)
        return good

    def names(self) -> list[str]:
        return list(self.records())


# -- the census -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Census:
    """How many workers were alive at a count, by whom, and the count's
    number: each count takes the next, so an older census copied over a
    newer one is known for what it is."""

    number: int
    workers: int
    taker: str


def seal_census(key: bytes, census: Census) -> bytes:
    return seal_record(key, COUNT, [census.number, census.workers, census.taker])


def seal_taker(key: bytes, name: str) -> bytes:
    return seal_record(key, CENSUS_TAKER, [name])


def read_taker(blob: bytes, key: bytes) -> str:
    """The census taker :func:`seal_taker` names; ProtocolError for anything else."""
    fields = open_record(blob, key, CENSUS_TAKER, RECORD_ALLOWANCE)
    if len(fields) != 1:
        raise ProtocolError("malformed census taker")
    return _text_field(fields[0], "census taker")


def read_census(blob: bytes, key: bytes) -> Census:
    """The census :func:`seal_census` made; ProtocolError for anything else."""
    fields = open_record(blob, key, COUNT, RECORD_ALLOWANCE)
    if len(fields) != 3:
        raise ProtocolError("malformed census")
    number, workers = (_int_field(v, "number") for v in fields[:2])
    return Census(number, workers, _text_field(fields[2], "census taker"))


# -- constants ------------------------------------------------------------------------------


def seal_const(key: bytes, name: str, frames: Sequence[Frame]) -> bytes:
    return seal_record(
        key, CONSTANT, [name, [memoryview(m.buffer_of(f)).tobytes() for f in frames]]
    )


def read_const(blob: bytes, key: bytes, name: str, max_size: int | None) -> list[Frame]:
    fields = open_record(blob, key, CONSTANT, max_size)
    if len(fields) != 2 or fields[0] != name or not isinstance(fields[1], list):
        raise ProtocolError("a record of another constant, or malformed")
    frames = fields[1]
    if not frames or not all(isinstance(f, bytes) for f in frames):
        raise ProtocolError("malformed constant")
    # As from a socket: out-of-band buffers come back writable.
    return frames[:1] + [bytearray(f) for f in frames[1:]]


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


def seal_report(key: bytes, name: str, counters: dict[str, Any]) -> bytes:
    """The ``reports`` record of process ``name``."""
    return seal_record(key, REPORT, [name, counters])


def seal_trace(
    key: bytes, name: str, anchor: list[Any], trace: dict[str, Any], events: bytes
) -> bytes:
    """A ``trace`` record: events of process ``name``, with its clock anchor
    and its report's trace part (function names, instants)."""
    return seal_record(key, TRACE_EVENTS, [name, anchor, trace, events])


def _opened(blob: bytes, key: bytes, kind: str, name: str, count: int) -> list[Any]:
    fields = open_record(blob, key, kind, None)
    if len(fields) != count or fields[0] != name:
        raise ProtocolError(f"a {kind} filed under another name or malformed")
    return fields


def read_reports(
    store: BrokerStore,
    key: bytes,
    run: RunActivity,
    *,
    trace: bool = True,
    now_ns: int | None = None,
    reader: bool = False,
) -> int:
    """Give ``run`` the newest report of each process in ``store``, and,
    with ``trace``, the trace events not read yet (which are then deleted);
    how many reports failed their check. ``now_ns``: the store server's
    clock now, against which the reports' ages are told (default: ours
    with the launcher's offset from it). Records not signed with the run's
    key are deleted unread, unless this is only a ``reader`` (``scoop
    status``), who may hold the wrong key and must leave the run alone."""
    if now_ns is None:
        now_ns = time.time_ns() + run.launcher.clock_offset
    now = time.monotonic()
    bad: dict[str, bytes] = {}
    for name, blob in store.records(REPORTS).items():
        if name == LAUNCHER:
            continue
        try:
            _, counters = _opened(blob, key, REPORT, name, 2)
            anchor = counters.get("anchor") if isinstance(counters, dict) else None
            offset = anchor[2] if isinstance(anchor, list) and len(anchor) == 3 else 0
            age = max(0.0, (now_ns - (int(counters.get("sent", 0)) + int(offset))) / 1e9)
            run.add(name, counters, heard=now - age)
        except (ProtocolError, TypeError, ValueError) as exc:
            if not reader:
                refusals.note(store.identity, REPORT, f"the report {_shown(name)}", exc)
            bad[name] = blob
    if bad and not reader:
        store.drop_records(REPORTS, bad)
    if not (trace and run.tracing and not reader):
        return len(bad)
    records = store.records(TRACE)
    records.pop(LAUNCHER, None)
    for where in sorted(records, key=_report_order):
        name = where.rpartition(".")[0]
        try:
            _, anchor, part, events = _opened(records[where], key, TRACE_EVENTS, name, 4)
            run.add_events(name, anchor, part, events)
        except (ProtocolError, TypeError, ValueError) as exc:
            refusals.note(store.identity, TRACE_EVENTS, f"the trace events {_shown(where)}", exc)
    if records:
        store.drop_records(TRACE, records)
    return len(bad)


def _report_order(where: str) -> tuple[str, int]:
    name, _, number = where.rpartition(".")
    return name, int(number) if number.isdigit() else 0
