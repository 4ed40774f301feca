"""Wire messages between root, broker and workers, and their authenticated framing.

Rules of this module:

- Every message is a frozen dataclass with a ``KIND`` number. Nothing here
  does I/O or unpickles: payloads (pickled calls, results, constants) are
  opaque frames that only their final recipient deserializes.
- On the wire a message is ``[header, *payload frames, seal]``. The seal is
  an HMAC-SHA256 under the run's key, followed by the SHA-256 digest of each
  *large* payload frame (:data:`DIGEST_THRESHOLD` bytes or more), in order.
  The mac covers the header and every payload frame, each prefixed by its
  length so frames cannot be re-cut, a large frame by its digest in place
  of its bytes. So a large payload is hashed once by the process that made
  it and once by the one that reads it: the broker checks the mac (the
  header, the digests, the small frames) and relays large frames unread,
  as :class:`Sealed` frames whose digest it signs again for the next hop;
  the recipient checks each large frame against its digest. Digests are
  per frame, not per message, because the broker regroups futures from
  the batches they came in.
- A payload frame of :data:`~scoop_core.shared_frames.SHARED_THRESHOLD`
  bytes or more going from a :class:`Codec` to a peer on the same host
  travels as a small handle to a memfd (:mod:`scoop_core.shared_frames`)
  instead of its bytes: the handle is a small frame, so the mac covers it
  whole, and the bytes need no digest. A codec knows where its peers are
  from the ``place`` in their :class:`Hello` or :class:`Welcome`.
- The header is a small msgpack list. :class:`Codec`, which every process
  uses, writes ``[PROTOCOL_VERSION, KIND, sender, recipient, session, seq,
  shared, *fields]``: who signed it, for whom, the sender's random session
  nonce and its sequence number, and which payload frames are handles to
  shared frames (their indexes), all under the mac. So a message captured
  on the wire cannot be replayed, reordered, reflected back to its sender
  or passed off as another peer's, and no frame can pass for a handle. The bare :func:`encode`/:func:`decode` write and read
  ``[PROTOCOL_VERSION, KIND, *fields]`` with none of that bookkeeping.
- Decoding checks the size, the mac and the digests before it parses
  anything, and raises
  :class:`~scoop_core.errors.ProtocolError` for anything malformed, oversized
  or replayed, so the broker can drop a bad message and carry on.
- Messages that carry many futures (``Submit``, ``Tasks``, ``Results``)
  exist so that ``map`` sends items in batches: one transport message for
  many futures. Whoever builds one cuts it with :func:`split_by_size`, so
  that futures that fit one by one never make a message over the limit
  together; :func:`payload_limit` is what one future may carry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import msgpack

from scoop_core import shared_frames as sf
from scoop_core.errors import ProtocolError, SerializationError
from scoop_core.interfaces import Frame
from scoop_core.shared_frames import SharedFrame

PROTOCOL_VERSION = 6
MAC_SIZE = 32

DIGEST_SIZE = 32
"""Bytes of the SHA-256 digest of one large payload frame, in a message's seal."""

DIGEST_THRESHOLD = 1 << 16
"""Payload frames of this many bytes or more are signed by their SHA-256
digest, computed once where they are made. Smaller ones are signed as they
are: hashing a few bytes twice costs less than carrying a digest."""

BROKER_IDENTITY = b"broker"
"""The broker's identity in :class:`Codec` headers; roots and workers talk to it alone."""

SESSION_SIZE = 16
"""Bytes of the random nonce that tells one process's run of a :class:`Codec` from the next."""

RETIRED_SESSIONS = 4096
"""How many ended sessions a :class:`Codec` remembers, to refuse replays of their messages."""

_SIZE_SETTING = "max_message_size in [scoop] (environment SCOOP_MAX_MESSAGE_SIZE)"

# Outcome statuses.
OK = 0
RAISED = 1
CANCELLED = 2
LOST = 3
STATUS_NAMES = {OK: "ok", RAISED: "raised", CANCELLED: "cancelled", LOST: "lost"}

# Peer roles.
ROOT = "root"
WORKER = "worker"
CLIENT = "client"

_LEN = struct.Struct("!Q")


# Task and Outcome are named tuples, not frozen dataclasses: one is made
# for every future at every hop, and a tuple is made in half the time.


class Task(NamedTuple):
    """One future on its way to be run: the pickled call is ``frames``."""

    fid: int
    parent: int
    depth: int
    frames: tuple[Frame, ...]
    max_losses: int = 0  # times it may be lost with its worker; 0: the run's setting


class Outcome(NamedTuple):
    """How one future ended: ``status`` is OK, RAISED, CANCELLED or LOST."""

    fid: int
    status: int
    elapsed: float
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Constant:
    name: str
    frames: tuple[Frame, ...]


class Message:
    KIND: ClassVar[int]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        raise NotImplementedError

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Message:
        raise NotImplementedError


def _take(frames: list[Frame], start: int, count: int) -> tuple[Frame, ...]:
    if count < 0 or start + count > len(frames):
        raise ProtocolError("payload frame count does not match the header")
    return tuple(frames[start : start + count])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_FIELD_TYPES = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "list[int]": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    "bytes": lambda v: isinstance(v, bytes),
}


def _plain(kind: int, *names: str) -> Any:
    """Class decorator for messages whose fields are all msgpack scalars."""

    def wrap(cls: Any) -> Any:
        cls.KIND = kind
        checks = [_FIELD_TYPES[cls.__annotations__[n]] for n in names]

        def _fields(self: Any) -> tuple[list[Any], list[Frame]]:
            return [getattr(self, n) for n in names], []

        @classmethod  # type: ignore[misc]
        def _build(c: Any, fields: list[Any], frames: list[Frame]) -> Any:
            if len(fields) != len(names) or frames:
                raise ProtocolError(f"malformed {c.__name__} message")
            for name, value, check in zip(names, fields, checks, strict=True):
                if not check(value):
                    raise ProtocolError(f"malformed {c.__name__} message: bad {name} {value!r}")
            return c(*fields)

        cls._fields = _fields
        cls._build = _build
        return cls

    return wrap


@_plain(1, "role", "name", "pid", "host", "slots", "place")
@dataclass(frozen=True)
class Hello(Message):
    """Peer → broker, first message: who I am and how many futures I run at
    once. ``place`` says which peers can share frames with it
    (:func:`~scoop_core.shared_frames.place`, this process's by default)."""

    role: str
    name: str
    pid: int
    host: str
    slots: int
    place: str = dataclasses.field(default_factory=sf.place)


@dataclass(frozen=True)
class Welcome(Message):
    """Broker → peer: the peer's index (the high bits of its future ids) and
    every shared constant defined so far. ``place``: as in :class:`Hello`,
    the broker's. ``clock``: the run's reference clock (ns since the epoch)
    when the hello came, ``held``: ns from then to the welcome, from which
    the peer learns how far its own clock is off, as NTP does
    (:mod:`scoop_core.activity`); 0 if unknown. ``boot``: the boot id of the
    kernel whose clock that is (empty if unknown): a peer under the same
    kernel reads the same clock."""

    KIND = 2
    index: int
    constants: tuple[Constant, ...] = ()
    place: str = dataclasses.field(default_factory=sf.place)
    clock: int = 0
    held: int = 0
    boot: str = ""

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for c in self.constants:
            heads.append([c.name, len(c.frames)])
            frames.extend(c.frames)
        return [self.index, heads, self.place, self.clock, self.held, self.boot], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Welcome:
        index, heads, place, clock, held, boot = fields
        if not isinstance(place, str) or not isinstance(boot, str):
            raise ProtocolError(f"malformed Welcome message: bad place {place!r} or boot {boot!r}")
        if not (_is_int(clock) and _is_int(held)):
            raise ProtocolError(f"malformed Welcome message: bad clock {clock!r}, {held!r}")
        consts, pos = [], 0
        for name, count in heads:
            consts.append(Constant(name, _take(frames, pos, count)))
            pos += count
        if pos != len(frames):
            raise ProtocolError("payload frame count does not match the header")
        return cls(index, tuple(consts), place, clock, held, boot)


class _TaskBatch(Message):
    tasks: tuple[Task, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for t in self.tasks:
            heads.append([t.fid, t.parent, t.depth, len(t.frames), t.max_losses])
            frames.extend(t.frames)
        return [heads], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Message:
        (heads,) = fields
        tasks, pos = [], 0
        for fid, parent, depth, count, max_losses in heads:
            tasks.append(Task(fid, parent, depth, _take(frames, pos, count), max_losses))
            pos += count
        if pos != len(frames):
            raise ProtocolError("payload frame count does not match the header")
        return cls(tuple(tasks))  # type: ignore[call-arg]


@dataclass(frozen=True)
class Submit(_TaskBatch):
    """Peer → broker: new futures to run."""

    KIND = 3
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Tasks(_TaskBatch):
    """Broker → worker: futures for you to run (never more than you asked for)."""

    KIND = 4
    tasks: tuple[Task, ...]


@_plain(5, "count")
@dataclass(frozen=True)
class Ready(Message):
    """Worker → broker: send me up to ``count`` more futures (credit)."""

    count: int


@_plain(6, "fids")
@dataclass(frozen=True)
class Started(Message):
    """Worker → broker → owner: these futures began running."""

    fids: list[int]


@dataclass(frozen=True)
class Results(Message):
    """Worker → broker → owner: outcomes of finished futures."""

    KIND = 7
    outcomes: tuple[Outcome, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for o in self.outcomes:
            heads.append([o.fid, o.status, o.elapsed, len(o.frames)])
            frames.extend(o.frames)
        return [heads], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Results:
        (heads,) = fields
        outs, pos = [], 0
        for fid, status, elapsed, count in heads:
            outs.append(Outcome(fid, status, elapsed, _take(frames, pos, count)))
            pos += count
        if pos != len(frames):
            raise ProtocolError("payload frame count does not match the header")
        return cls(tuple(outs))


@_plain(8, "fid")
@dataclass(frozen=True)
class Cancel(Message):
    """Owner → broker (→ worker holding it): cancel this future if it has
    not started. Only a future's owner cancels it; the broker's own asking
    back is :class:`Recall`."""

    fid: int


@_plain(9, "fid", "cancelled")
@dataclass(frozen=True)
class CancelReply(Message):
    """Answer to :class:`Cancel`: True if the future will never run."""

    fid: int
    cancelled: bool


class _NamedPayload(Message):
    """A name and the frames of a pickled value."""

    name: str
    frames: tuple[Frame, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        return [self.name], list(self.frames)

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Message:
        (name,) = fields
        if not isinstance(name, str):
            raise ProtocolError(f"malformed {cls.__name__} message: bad name {name!r}")
        return cls(name, tuple(frames))  # type: ignore[call-arg]


@dataclass(frozen=True)
class SetConst(_NamedPayload):
    """Peer → broker: define a shared constant (once per run)."""

    KIND = 10
    name: str
    frames: tuple[Frame, ...]


@_plain(11, "name", "error")
@dataclass(frozen=True)
class ConstReply(Message):
    """Broker → peer: the constant was defined (``error`` empty) or why not."""

    name: str
    error: str


@dataclass(frozen=True)
class Const(_NamedPayload):
    """Broker → every peer: a newly defined constant."""

    KIND = 12
    name: str
    frames: tuple[Frame, ...]


@_plain(13, "reason")
@dataclass(frozen=True)
class Bye(Message):
    """Peer → broker: I am leaving; hand back what I hold."""

    reason: str


@_plain(14, "reason")
@dataclass(frozen=True)
class Shutdown(Message):
    """Broker → peer: the run is over, exit."""

    reason: str


@_plain(15, "info")
@dataclass(frozen=True)
class Heartbeat(Message):
    """Either way: I am alive."""

    info: int


@_plain(16, "reason")
@dataclass(frozen=True)
class Refused(Message):
    """Broker → peer: your message was not accepted (and why)."""

    reason: str


@_plain(17, "count")
@dataclass(frozen=True)
class Spare(Message):
    """Worker → broker: I hold ``count`` futures of my own not yet started,
    which an idle worker may take."""

    count: int


@_plain(18, "count")
@dataclass(frozen=True)
class Steal(Message):
    """Broker → worker: hand up to ``count`` of your spare futures over (as a
    :class:`Submit`), for workers that have nothing to do."""

    count: int


@_plain(19, "fid")
@dataclass(frozen=True)
class Recall(Message):
    """Broker → worker: hand this future back if it has not started (an idle
    worker elsewhere could run it now, or a suspect must run alone)."""

    fid: int


@_plain(20, "fid", "recalled")
@dataclass(frozen=True)
class RecallReply(Message):
    """Answer to :class:`Recall`: True if the future was handed back unstarted."""

    fid: int
    recalled: bool


@_plain(21, "fids", "attempts", "lost_on")
@dataclass(frozen=True)
class Returned(Message):
    """Peer → owner, on a store: these futures of yours are out of the
    store's queue again, each at the attempt it was queued as: handed back
    unstarted (``lost_on`` empty), or lost with the worker ``lost_on`` names.
    The owner decides what happens next (queue again, fail, cancel), as the
    broker does for a future whose worker left."""

    fids: list[int]
    attempts: list[int]
    lost_on: str


@_plain(22, "name")
@dataclass(frozen=True)
class Departed(Message):
    """Launcher → peers, on a store: peer ``name`` has left the run (its
    process ended), so its futures that have not started have nobody to
    read them."""

    name: str


@dataclass(frozen=True)
class Report(Message):
    """Peer → broker: what this process did (:mod:`scoop_core.activity`):
    its ``counters``, a map of msgpack values, and the bytes of its trace
    ``events`` since its last report, in frames (none when the run is not
    traced)."""

    KIND = 23
    counters: dict[str, Any]
    events: tuple[Frame, ...] = ()

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        return [self.counters], list(self.events)

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Report:
        if len(fields) != 1 or not isinstance(fields[0], dict):
            raise ProtocolError("malformed Report message")
        return cls(fields[0], tuple(frames))


@_plain(24, "detail")
@dataclass(frozen=True)
class StatusRequest(Message):
    """Client → broker: how is the run doing? (``scoop status``)."""

    detail: int


@_plain(25, "status")
@dataclass(frozen=True)
class StatusReply(Message):
    """Broker → client: the run's snapshot (:mod:`scoop_core.run_activity`), packed."""

    status: bytes


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        Welcome,
        Submit,
        Tasks,
        Ready,
        Started,
        Results,
        Cancel,
        CancelReply,
        SetConst,
        ConstReply,
        Const,
        Bye,
        Shutdown,
        Heartbeat,
        Refused,
        Spare,
        Steal,
        Recall,
        RecallReply,
        Returned,
        Departed,
        Report,
        StatusRequest,
        StatusReply,
    )
}


READ = "read"
"""Payload mode of a :class:`Codec` that reads payloads (a runtime, a worker):
each large frame is checked against its digest and handed over as a buffer."""

RELAY = "relay"
"""Payload mode of a :class:`Codec` that passes payloads on unread (the
broker): large frames are not checked, and are handed over as
:class:`Sealed` frames, to be signed again by the digest they came with."""

CHECK = "check"
"""Payload mode of a :class:`Codec` that checks what it passes on (a
store-backed endpoint, which refuses a bad message itself): each large frame
is checked and handed over as a :class:`Sealed` frame that says so."""

PAYLOAD_MODES = (READ, RELAY, CHECK)


class Sealed:
    """A large payload frame passed on, with the digest it was signed with.

    A :class:`Codec` in :data:`RELAY` or :data:`CHECK` mode decodes a large
    frame into one of these: encoding it again signs that digest, so the
    frame is not hashed on the way. ``checked`` says this process has
    checked the frame against the digest (:data:`CHECK`): handed over in
    memory (``Codec.encode(..., in_memory=True)``, never through a socket),
    its reader takes it as checked and does not hash it again. Only this
    process can make one: nothing from the network is a Python object.
    ``buffer`` is the frame's memory, as on a ``zmq.Frame``."""

    __slots__ = ("buffer", "checked", "digest")

    def __init__(self, buffer: Frame, digest: bytes, *, checked: bool = False) -> None:
        self.buffer = buffer
        self.digest = digest
        self.checked = checked

    def __repr__(self) -> str:
        state = "checked" if self.checked else "unread"
        return (
            f"Sealed({memoryview(self.buffer).nbytes} bytes, {state}, {self.digest[:4].hex()}...)"
        )


def digest_of(frame: Frame) -> bytes:
    """The SHA-256 digest a large payload frame is signed by."""
    return hashlib.sha256(frame).digest()


def _unwrap(
    payload: Sequence[Frame], *, in_memory: bool = False
) -> tuple[list[Frame], list[bytes]]:
    """The payload's frames to send, and the digest of each large one: hashed
    here unless it is a :class:`Sealed` frame, whose digest came signed.
    Frames go as buffers, but ``in_memory`` a Sealed frame goes as it is."""
    frames: list[Frame] = []
    digests: list[bytes] = []
    for frame in payload:
        if type(frame) is Sealed:
            frames.append(frame if in_memory else frame.buffer)
            digests.append(frame.digest)
            continue
        if type(frame) is SharedFrame:  # a relayed shared frame going as bytes
            buffer, digest = frame.buffer, frame.digest
            frames.append(Sealed(buffer, digest, checked=True) if in_memory else buffer)
            digests.append(digest)
            continue
        frame = buffer_of(frame)
        frames.append(frame)
        if _nbytes(frame) >= DIGEST_THRESHOLD:
            digests.append(digest_of(frame))
    return frames, digests


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 with ``key`` and nothing yet: copying it spares keying
    one for every message (half the cost of a small message's mac)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, header: bytes, payload: Sequence[Frame], digests: Sequence[bytes]) -> bytes:
    """The HMAC-SHA256 of a message: the header, then each payload frame
    (a buffer) prefixed by its length, a large one by its digest (the next
    of ``digests``) in place of its bytes. Empty if ``digests`` are not one
    per large frame: no mac matches that."""
    mac = _keyed(key).copy()
    mac.update(_LEN.pack(len(header)) + header)
    used = 0
    for frame in payload:
        n = _frame_nbytes(frame)
        mac.update(_LEN.pack(n))
        if n < DIGEST_THRESHOLD:
            mac.update(frame)
        elif used < len(digests):
            mac.update(digests[used])
            used += 1
        else:
            return b""
    return mac.digest() if used == len(digests) else b""


def mac_of(key: bytes, header: bytes, payload: Sequence[Frame]) -> bytes:
    """The mac of ``header`` and ``payload`` as the sender computes it
    (hashing each large frame that is not :class:`Sealed`)."""
    frames, digests = _unwrap(payload)
    return _mac(key, header, frames, digests)


def seal(
    key: bytes, header: bytes, payload: Sequence[Frame], *, in_memory: bool = False
) -> list[Frame]:
    """``[header, *payload, seal]``: the frames of a signed message or record.
    :class:`Sealed` frames are signed by their digests, and go out as their
    buffers, or ``in_memory`` (for a reader in this process) as they are."""
    frames, digests = _unwrap(payload, in_memory=in_memory)
    return [header, *frames, b"".join([_mac(key, header, frames, digests), *digests])]


class BadSeal(ProtocolError):
    """A message's mac, or a payload frame's digest, is not what the run's key
    and the frame say: the sender does not have the key, or the message was
    altered on its way."""


def unseal(
    header: bytes, payload: Sequence[Frame], stamp: bytes, key: bytes, *, mode: str = READ
) -> list[Frame]:
    """Check a sealed message's mac and, unless ``mode`` is :data:`RELAY`,
    each large payload frame against its digest. Returns the payload: large
    frames as buffers (:data:`READ`), or as :class:`Sealed` frames. A checked
    Sealed frame handed over in memory is not hashed again. Raises :class:`BadSeal`."""
    digests = [stamp[i : i + DIGEST_SIZE] for i in range(MAC_SIZE, len(stamp), DIGEST_SIZE)]
    if (
        len(stamp) < MAC_SIZE
        or (len(stamp) - MAC_SIZE) % DIGEST_SIZE
        or not hmac.compare_digest(stamp[:MAC_SIZE], _mac(key, header, payload, digests))
    ):
        raise BadSeal("bad or missing HMAC: sender does not have this run's key")
    if not digests:
        return list(payload)
    large = iter(digests)
    out: list[Frame] = []
    for frame in payload:
        if _frame_nbytes(frame) < DIGEST_THRESHOLD:
            out.append(frame)
            continue
        digest = next(large)
        buffer = frame.buffer if type(frame) is Sealed else frame
        checked = type(frame) is Sealed and frame.checked and frame.digest == digest
        if mode != RELAY and not checked:
            if not hmac.compare_digest(digest, digest_of(buffer)):
                raise BadSeal(
                    f"bad payload digest: a frame of {_nbytes(buffer)} bytes is not the one "
                    "its sender signed (altered on its way)"
                )
            checked = True
        out.append(buffer if mode == READ else Sealed(buffer, digest, checked=checked))
    return out


def _sign(key: bytes, head: list[Any], payload: list[Frame]) -> list[Frame]:
    return seal(key, msgpack.packb(head, use_bin_type=True), payload)


def encode(message: Message, key: bytes) -> list[Frame]:
    """The frames of ``message``, signed with ``key`` (no sender, no sequence number)."""
    fields, payload = message._fields()
    return _sign(key, [PROTOCOL_VERSION, message.KIND, *fields], payload)


def _bytes(frame: Frame) -> bytes:
    if isinstance(frame, bytes):
        return frame
    b = getattr(frame, "bytes", None)  # zmq.Frame
    if isinstance(b, bytes):
        return b
    return bytes(memoryview(frame))


def buffer_of(frame: Frame) -> Frame:
    """The memory of a payload frame: a ``zmq.Frame``'s or a :class:`Sealed`
    frame's ``.buffer``; any other frame is a buffer already."""
    buf = getattr(frame, "buffer", None)
    return buf if buf is not None else frame


def _nbytes(frame: Frame) -> int:
    """``memoryview(frame).nbytes``, without making a view of bytes or of a view."""
    kind = type(frame)
    if kind is bytes:
        return len(frame)
    if kind is memoryview:
        return frame.nbytes
    return memoryview(frame).nbytes


def _frame_nbytes(frame: Frame) -> int:
    """``memoryview(buffer_of(frame)).nbytes`` (bytes and views have no
    ``.buffer``; a :class:`~scoop_core.shared_frames.SharedFrame` is not mapped to be measured)."""
    kind = type(frame)
    if kind is SharedFrame:
        return int(frame.size)
    return _nbytes(frame if kind in (bytes, memoryview) else buffer_of(frame))


def _sealed_size(header: bytes, payload: Sequence[Frame]) -> int:
    """Bytes of ``[header, *payload, seal]`` once sealed, large frames sent as bytes."""
    sizes = [_frame_nbytes(f) for f in payload]
    large = sum(1 for n in sizes if n >= DIGEST_THRESHOLD)
    return len(header) + sum(sizes) + MAC_SIZE + DIGEST_SIZE * large


def frames_nbytes(frames: Sequence[Frame]) -> int:
    """The bytes in ``frames`` (buffers, or zmq.Frames): the sum of their
    ``memoryview(...).nbytes``, cheaply for the common one bytes frame."""
    if len(frames) == 1:
        return _frame_nbytes(frames[0])
    return sum(map(_frame_nbytes, frames))


def _too_big(size: int, limit: int) -> str:
    return f"{size} bytes, over the limit of {limit} bytes (setting {_SIZE_SETTING})"


ENVELOPE_ALLOWANCE = 1024
"""Bytes of a message kept for what is not its futures' payload frames:
version, kind, sender and recipient (up to 255 bytes each), session,
sequence number, the mac, list headers. Generous, so that a future that fits
one hop (worker to broker) fits the next (broker to owner) too."""

ITEM_ALLOWANCE = 64
"""Header bytes one future adds to a batch message, at most (ids, status, counts)."""

_ID_SIZE = 9  # a future id in msgpack, at most


def digest_allowance(max_size: int) -> int:
    """Bytes of a message of ``max_size`` kept for the digests in its seal:
    one per large frame, so at most one per :data:`DIGEST_THRESHOLD` bytes
    (a 32nd of a percent of the payload)."""
    return DIGEST_SIZE * (max_size // DIGEST_THRESHOLD)


def payload_limit(max_size: int | None) -> int | None:
    """The most payload bytes one future (its call, or its result) may carry
    so that a message holding it alone fits ``max_size`` on every hop."""
    if max_size is None:
        return None
    return max_size - ENVELOPE_ALLOWANCE - ITEM_ALLOWANCE - digest_allowance(max_size)


def too_big_for_one_message(size: int, max_size: int) -> str:
    """Why a future's ``size`` payload bytes cannot be sent: names the size,
    the limit and the setting that raises it."""
    if size > max_size:
        return _too_big(size, max_size)
    envelope = ENVELOPE_ALLOWANCE + ITEM_ALLOWANCE + digest_allowance(max_size)
    return (
        f"{size} bytes, which with its message header and digests (up to "
        f"{envelope} bytes) is over the limit of {max_size} bytes "
        f"(setting {_SIZE_SETTING})"
    )


Batched = TypeVar("Batched", Task, Outcome, int)


def item_size(item: Task | Outcome | int) -> int:
    """Bytes ``item`` (a future on its way, an outcome, or a future id) adds to a message."""
    if isinstance(item, int):
        return _ID_SIZE
    return ITEM_ALLOWANCE + frames_nbytes(item.frames)


def split_by_size(
    items: Sequence[Batched],
    max_size: int | None,
    *,
    reserve: int = 0,
    total: int | None = None,
) -> list[list[Batched]]:
    """``items`` (Tasks, Outcomes or future ids), in order, cut into batches
    whose message fits ``max_size`` bytes with ``reserve`` bytes of other
    fields. An item too big for any message is a batch of its own, for its
    sender to refuse. No limit (``None``): one batch. ``total``, the sum of
    the items' :func:`item_size` if the caller knows it, spares sizing each
    item again when they all fit one message."""
    if max_size is None or not items:
        return [list(items)] if items else []
    budget = max_size - ENVELOPE_ALLOWANCE - digest_allowance(max_size) - reserve
    if total is not None and total <= budget:
        return [list(items)]
    batches: list[list[Batched]] = []
    batch: list[Batched] = []
    used = 0
    for item in items:
        size = item_size(item)
        if batch and used + size > budget:
            batches.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += size
    batches.append(batch)
    return batches


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version (the message names both)."""


def _check_version(header: bytes) -> None:
    """Every version's header starts with its version number: read only that,
    before the mac (whose layout may differ between versions), so that a peer
    of another version is told why, not just "bad HMAC". msgpack reads data,
    it runs nothing, so this is safe on an unchecked header."""
    if len(header) > 1 and header[0] & 0xF0 == 0x90 and header[1] == PROTOCOL_VERSION:
        return  # a short list that starts with our version: msgpack would read just that
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(header) or 1)
        unpacker.feed(header)
        if unpacker.read_array_header() < 1:
            return
        version = unpacker.unpack()
    except Exception:
        return  # not ours to judge: the mac check refuses it
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version!r} from the peer, this side speaks {PROTOCOL_VERSION}: "
            "run the same scoop-core version everywhere"
        )


def _open(
    frames: Sequence[Frame], key: bytes, max_size: int | None, *, mode: str = READ
) -> tuple[type[Message], list[Any], list[Frame]]:
    """Check size, mac and digests (see :func:`unseal`), then read the header:
    ``(message class, fields, payload)``.

    ``fields`` are what follows version and kind in the header."""
    if len(frames) < 2:
        raise ProtocolError(f"a message needs at least 2 frames, got {len(frames)}")
    try:
        # Sealed frames (handed over in memory) stay so: unseal may trust them.
        payload = [f if type(f) is Sealed else buffer_of(f) for f in frames[1:-1]]
        if max_size is not None:
            # In frame order, as a sum of memoryview(buffer_of(f)).nbytes.
            size = _frame_nbytes(frames[0]) + frames_nbytes(payload) + _frame_nbytes(frames[-1])
            if size > max_size:
                raise ProtocolError(f"refused a message of {_too_big(size, max_size)}")
        header = _bytes(frames[0])
        stamp = _bytes(frames[-1])
        _check_version(header)
        payload = unseal(header, payload, stamp, key, mode=mode)
    except (TypeError, ValueError, BufferError) as exc:
        raise ProtocolError(f"a frame is not a readable buffer: {exc}") from None
    try:
        head = msgpack.unpackb(header, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"unreadable message header: {exc}") from None
    if not isinstance(head, list) or len(head) < 2:
        raise ProtocolError("message header is not a list of version, kind, fields")
    version, kind, *fields = head
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} from the peer, this side speaks {PROTOCOL_VERSION}: "
            "run the same scoop-core version everywhere"
        )
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, int) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return cls, fields, payload


def _build(cls: type[Message], fields: list[Any], payload: list[Frame]) -> Message:
    try:
        return cls._build(fields, payload)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {cls.__name__} message: {exc}") from None


def decode(frames: Sequence[Frame], key: bytes) -> Message:
    """Check the mac, then parse. Raises ProtocolError for anything wrong."""
    cls, fields, payload = _open(frames, key, None)
    return _build(cls, fields, payload)


class Codec:
    """Signs, numbers and checks the messages of one process of a run.

    ``key`` is the run's secret; ``sender`` is this process's identity, the
    one its transport endpoint was given (the broker's is
    :data:`BROKER_IDENTITY`). ``max_size`` bounds a message, all frames
    together, in bytes (``None``: no bound): :meth:`encode` raises
    :class:`~scoop_core.errors.SerializationError` for a bigger one and
    :meth:`decode` refuses one.

    Each codec picks a random session nonce and numbers what it encodes
    1, 2, 3... :meth:`decode` accepts a message only if it is signed with the
    key, addressed to this codec's ``sender``, comes from the peer it claims
    (when the transport says which), and is newer than the last one accepted
    from that sender's session. A sender's first message in a new session
    starts that session and ends its previous one for good (a restarted
    process gets a new nonce; a replay of the old process's messages is
    refused). Memory: one entry per sender, plus the last
    :data:`RETIRED_SESSIONS` ended sessions; :meth:`forget` ends a sender's.

    ``payload`` says what :meth:`decode` does with large payload frames:
    :data:`READ` (a runtime, a worker) checks each against its digest and
    hands it over as a buffer; :data:`RELAY` (the broker) neither reads nor
    checks it, and hands it over as a :class:`Sealed` frame, which
    :meth:`encode` signs again by the digest it came with; :data:`CHECK`
    (a store-backed endpoint) checks it and hands it over Sealed.

    Shared frames (:mod:`scoop_core.shared_frames`): a codec sends a payload
    frame of :data:`~scoop_core.shared_frames.SHARED_THRESHOLD` bytes or
    more as a handle to a memfd when the peer's ``place``, learnt from the
    :class:`Hello` or :class:`Welcome` it decoded from that peer, is its
    own. :data:`READ` maps a handle's frame as a writable buffer;
    :data:`RELAY` holds it as a :class:`~scoop_core.shared_frames.SharedFrame`,
    which :meth:`encode` passes on as a new handle, or as bytes with their
    digest to a peer elsewhere. :data:`CHECK` (a store, whose readers may be
    on any host) neither sends nor takes handles, nor do frames handed over
    ``in_memory``, which go as objects.

    Because numbers only go up, the frames must reach the transport in the
    order :meth:`encode` made them: encode in the thread that sends. Both
    methods are thread-safe.
    """

    def __init__(
        self, key: bytes, sender: bytes, *, max_size: int | None = None, payload: str = READ
    ) -> None:
        if not isinstance(key, bytes) or not key:
            raise ValueError("a Codec needs the run's key, a non-empty bytes object")
        if not isinstance(sender, bytes) or not sender:
            raise ValueError(f"a Codec's sender must be non-empty bytes, got {sender!r}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be at least 1 byte (or None), got {max_size!r}")
        if payload not in PAYLOAD_MODES:
            raise ValueError(f"a Codec's payload mode is one of {PAYLOAD_MODES}, got {payload!r}")
        self.key = key
        self.sender = sender
        self.max_size = max_size
        self.payload = payload
        self.session = secrets.token_bytes(SESSION_SIZE)
        self._seq = 0
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._sessions: dict[bytes, tuple[bytes, int]] = {}  # sender -> (session, last seq)
        self._retired: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self.place = sf.place() if payload != CHECK else ""
        self._places: dict[bytes, str] = {}  # sender -> its place, from its Hello or Welcome

    def check_size(self, payload: Sequence[Frame], what: str) -> None:
        """Raise SerializationError if ``payload`` frames cannot travel in one
        message of ``max_size``, header included (see :func:`payload_limit`).

        For callers that queue frames to be encoded later (a submit whose
        message is built by an I/O thread): the error reaches the user's
        call, naming ``what`` (for example ``"the call to f"``)."""
        limit = payload_limit(self.max_size)
        if limit is None or self.max_size is None:
            return
        size = frames_nbytes(payload)
        if size > limit:
            raise SerializationError(
                f"cannot send {what}: it is {too_big_for_one_message(size, self.max_size)}"
            )

    def encode(
        self, msg: Message, to: bytes = BROKER_IDENTITY, *, in_memory: bool = False
    ) -> list[Frame]:
        """The frames of ``msg`` for the peer ``to``, numbered and signed.

        ``in_memory``: the frames go to a reader in this process, never
        through a socket, so :class:`Sealed` frames stay so, and a reader
        takes those this process checked as checked."""
        if in_memory and isinstance(msg, Hello | Welcome) and msg.place:
            # Its reader shares this process, where frames go as objects:
            # a memfd would only add a copy, so it must not send handles back.
            msg = dataclasses.replace(msg, place="")
        fields, payload = msg._fields()
        with self._send_lock:
            self._seq += 1
            seq = self._seq
        sf.sweep()
        shared = [] if in_memory else self._shareable(payload, to)
        head = [PROTOCOL_VERSION, msg.KIND, self.sender, to, self.session, seq, shared, *fields]
        header = msgpack.packb(head, use_bin_type=True)
        if self.max_size is not None:
            size = _sealed_size(header, payload)
            if size > self.max_size:
                raise SerializationError(
                    f"cannot send a {type(msg).__name__} message of {_too_big(size, self.max_size)}; "
                    "send less at once"
                )
        if shared:
            payload, done = self._share(payload, shared, to)
            if done != shared:
                head[6] = done
                header = msgpack.packb(head, use_bin_type=True)
        return seal(self.key, header, payload, in_memory=in_memory)

    def _shareable(self, payload: Sequence[Frame], to: bytes) -> list[int]:
        """Indexes of the payload frames to send to ``to`` as shared frames."""
        if not self.place or self._places.get(to) != self.place:
            return []
        return [i for i, f in enumerate(payload) if _frame_nbytes(f) >= sf.SHARED_THRESHOLD]

    def _share(
        self, payload: Sequence[Frame], indexes: list[int], to: bytes
    ) -> tuple[list[Frame], list[int]]:
        """``payload`` with handles in place of the frames at ``indexes``
        that could be shared, and the indexes of those."""
        out, done = list(payload), []
        for i in indexes:
            frame = payload[i]
            source = frame if type(frame) is SharedFrame else buffer_of(frame)
            handle = sf.share(source, _frame_nbytes(frame), (self.session, to))
            if handle is not None:
                out[i] = handle
                done.append(i)
        return out, done

    def _take_shared(self, payload: list[Frame], shared: Any) -> list[Frame]:
        """``payload`` with the frames that the handles at indexes ``shared`` name."""
        if not (
            isinstance(shared, list)
            and all(_is_int(i) for i in shared)
            and all(a < b for a, b in zip(shared, shared[1:], strict=False))
            and (not shared or (shared[0] >= 0 and shared[-1] < len(payload)))
        ):
            raise ProtocolError("malformed list of shared frames in the header")
        if not shared:
            return payload
        if self.payload == CHECK:
            raise ProtocolError(
                "a shared frame's handle reached a store-backed endpoint, which takes payloads "
                "as bytes: its readers may be on another host"
            )
        handles = [_bytes(payload[i]) for i in shared]
        if self.max_size is not None:
            size = frames_nbytes(payload) + sum(sf.handle_size(h) - len(h) for h in handles)
            if size > self.max_size:
                raise ProtocolError(f"refused a message of {_too_big(size, self.max_size)}")
        out = list(payload)
        for i, handle in zip(shared, handles, strict=True):
            out[i] = sf.read(handle) if self.payload == READ else sf.relay(handle)
        return out

    def decode(self, frames: Sequence[Frame], peer: bytes | None = None) -> Message:
        """Check, parse and record one message; ProtocolError for anything wrong.

        ``peer`` is who the transport says sent it (for a broker, the peer
        bound to the connection it came on; :data:`BROKER_IDENTITY` for an
        endpoint): a message signed as from anybody else is refused."""
        return self.decode_from(frames, peer)[1]

    def decode_from(
        self, frames: Sequence[Frame], peer: bytes | None = None, *, take_over: bool = True
    ) -> tuple[bytes, Message]:
        """:meth:`decode`, and who signed the message.

        With ``take_over=False``, a message that would start a new session
        for a sender whose session is current is refused, and nothing is
        recorded: a broker reads so what comes on a connection not yet bound
        to a peer, so that a second connection cannot end a live peer's
        session by claiming its name (while a message that continues the
        live session, from a peer that reconnected, is accepted)."""
        cls, fields, payload = _open(frames, self.key, self.max_size, mode=self.payload)
        if len(fields) < 5:
            raise ProtocolError(
                "message header has no sender, recipient, session, sequence and shared frames"
            )
        sender, to, session, seq, shared, *fields = fields
        if not (
            isinstance(sender, bytes)
            and isinstance(to, bytes)
            and isinstance(session, bytes)
            and len(session) == SESSION_SIZE
            and _is_int(seq)
            and seq > 0
        ):
            raise ProtocolError("malformed sender, recipient, session or sequence in the header")
        if to != self.sender:
            raise ProtocolError(
                f"a message from {sender!r} for {to!r} reached {self.sender!r}: replayed or misrouted"
            )
        if peer is not None and sender != peer:
            raise ProtocolError(
                f"a message signed as from {sender!r} arrived from peer {peer!r}: "
                "a replayed or spoofed message"
            )
        sf.sweep()
        msg = _build(cls, fields, self._take_shared(payload, shared))
        with self._recv_lock:
            current = self._sessions.get(sender)
            if current is not None and current[0] == session:
                if seq <= current[1]:
                    raise ProtocolError(
                        f"replayed or reordered message from {sender!r}: sequence number {seq} "
                        f"after {current[1]}"
                    )
            elif (sender, session) in self._retired:
                raise ProtocolError(
                    f"replayed message from an ended session of {sender!r} "
                    "(a process that has left the run or restarted)"
                )
            elif current is not None:
                if not take_over:
                    raise ProtocolError(
                        f"{sender!r} is connected already: another connection may not take its name"
                    )
                self._retire(sender, current[0])
            self._sessions[sender] = (session, seq)
            if isinstance(msg, Hello | Welcome):
                self._places[sender] = msg.place
        return sender, msg

    def forget(self, sender: bytes) -> None:
        """End ``sender``'s session (it left the run): its messages are refused
        from now on, and a new session of the same identity is welcome."""
        with self._recv_lock:
            current = self._sessions.pop(sender, None)
            if current is not None:
                self._retire(sender, current[0])
            self._places.pop(sender, None)
        sf.release((self.session, sender))

    def _retire(self, sender: bytes, session: bytes) -> None:
        self._retired[(sender, session)] = None
        while len(self._retired) > RETIRED_SESSIONS:
            self._retired.popitem(last=False)
