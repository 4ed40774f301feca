"""Wire messages between root, broker and workers, and their authenticated framing.

Rules of this module:

- Every message is a frozen dataclass with a ``KIND`` number. Nothing here
  does I/O or unpickles: payloads (pickled calls, results, constants) are
  opaque frames that only their final recipient deserializes.
- On the wire a message is ``[header, *payload frames, mac]``. The header is a
  small msgpack list ``[PROTOCOL_VERSION, KIND, *fields]``; the mac is an
  HMAC-SHA256, under the run's key, over the header and every payload frame
  (each prefixed by its length so frames cannot be re-cut).
- :func:`decode` checks the mac before it parses anything, and raises
  :class:`~scoop_core.errors.ProtocolError` for anything malformed, so the
  broker can drop a bad message and carry on.
- Messages that carry many futures (``Submit``, ``Tasks``, ``Results``)
  exist so that ``map`` sends items in batches: one transport message for
  many futures.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from scoop_core.errors import ProtocolError
from scoop_core.interfaces import Frame

PROTOCOL_VERSION = 1
MAC_SIZE = 32

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


@dataclass(frozen=True)
class Task:
    """One future on its way to be run: the pickled call is ``frames``."""

    fid: int
    parent: int
    depth: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Outcome:
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


@_plain(1, "role", "name", "pid", "host", "slots")
@dataclass(frozen=True)
class Hello(Message):
    """Peer → broker, first message: who I am and how many futures I run at once."""

    role: str
    name: str
    pid: int
    host: str
    slots: int


@dataclass(frozen=True)
class Welcome(Message):
    """Broker → peer: the peer's index (the high bits of its future ids) and
    every shared constant defined so far."""

    KIND = 2
    index: int
    constants: tuple[Constant, ...] = ()

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for c in self.constants:
            heads.append([c.name, len(c.frames)])
            frames.extend(c.frames)
        return [self.index, heads], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Welcome:
        index, heads = fields
        consts, pos = [], 0
        for name, count in heads:
            consts.append(Constant(name, _take(frames, pos, count)))
            pos += count
        if pos != len(frames):
            raise ProtocolError("payload frame count does not match the header")
        return cls(index, tuple(consts))


class _TaskBatch(Message):
    tasks: tuple[Task, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for t in self.tasks:
            heads.append([t.fid, t.parent, t.depth, len(t.frames)])
            frames.extend(t.frames)
        return [heads], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Message:
        (heads,) = fields
        tasks, pos = [], 0
        for fid, parent, depth, count in heads:
            tasks.append(Task(fid, parent, depth, _take(frames, pos, count)))
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
    """Worker → broker → owner: outcomes of finished futures, and (from a
    worker) the futures that ``started`` since its last message, so one
    message says both."""

    KIND = 7
    outcomes: tuple[Outcome, ...]
    started: tuple[int, ...] = ()

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        frames: list[Frame] = []
        heads = []
        for o in self.outcomes:
            heads.append([o.fid, o.status, o.elapsed, len(o.frames)])
            frames.extend(o.frames)
        return [heads, list(self.started)], frames

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Results:
        heads, started = fields
        if not isinstance(started, list) or not all(_is_int(f) for f in started):
            raise ProtocolError("malformed Results message: bad started list")
        outs, pos = [], 0
        for fid, status, elapsed, count in heads:
            outs.append(Outcome(fid, status, elapsed, _take(frames, pos, count)))
            pos += count
        if pos != len(frames):
            raise ProtocolError("payload frame count does not match the header")
        return cls(tuple(outs), tuple(started))


@_plain(8, "fid")
@dataclass(frozen=True)
class Cancel(Message):
    """Owner → broker (→ worker holding it): cancel this future if it has not started."""

    fid: int


@_plain(9, "fid", "cancelled")
@dataclass(frozen=True)
class CancelReply(Message):
    """Answer to :class:`Cancel`: True if the future will never run."""

    fid: int
    cancelled: bool


@dataclass(frozen=True)
class SetConst(Message):
    """Peer → broker: define a shared constant (once per run)."""

    KIND = 10
    name: str
    frames: tuple[Frame, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        return [self.name], list(self.frames)

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> SetConst:
        (name,) = fields
        return cls(name, tuple(frames))


@_plain(11, "name", "error")
@dataclass(frozen=True)
class ConstReply(Message):
    """Broker → peer: the constant was defined (``error`` empty) or why not."""

    name: str
    error: str


@dataclass(frozen=True)
class Const(Message):
    """Broker → every peer: a newly defined constant."""

    KIND = 12
    name: str
    frames: tuple[Frame, ...]

    def _fields(self) -> tuple[list[Any], list[Frame]]:
        return [self.name], list(self.frames)

    @classmethod
    def _build(cls, fields: list[Any], frames: list[Frame]) -> Const:
        (name,) = fields
        return cls(name, tuple(frames))


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
    )
}


def _mac(key: bytes, header: bytes, payload: Sequence[Frame]) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(_LEN.pack(len(header)))
    mac.update(header)
    for frame in payload:
        view = memoryview(frame)
        mac.update(_LEN.pack(view.nbytes))
        mac.update(view)
    return mac.digest()


def encode(message: Message, key: bytes) -> list[Frame]:
    """The frames of ``message``, signed with ``key``."""
    fields, payload = message._fields()
    header = msgpack.packb([PROTOCOL_VERSION, message.KIND, *fields], use_bin_type=True)
    return [header, *payload, _mac(key, header, payload)]


def _bytes(frame: Frame) -> bytes:
    if isinstance(frame, bytes):
        return frame
    b = getattr(frame, "bytes", None)  # zmq.Frame
    if isinstance(b, bytes):
        return b
    return bytes(memoryview(frame))


def _buffer(frame: Frame) -> Frame:
    # zmq.Frame exposes its memory as .buffer; everything else is a buffer already.
    buf = getattr(frame, "buffer", None)
    return buf if buf is not None else frame


def decode(frames: Sequence[Frame], key: bytes) -> Message:
    """Check the mac, then parse. Raises ProtocolError for anything wrong."""
    if len(frames) < 2:
        raise ProtocolError(f"a message needs at least 2 frames, got {len(frames)}")
    try:
        header = _bytes(frames[0])
        payload = [_buffer(f) for f in frames[1:-1]]
        mac = _bytes(frames[-1])
        expected = _mac(key, header, payload)
    except (TypeError, ValueError, BufferError) as exc:
        raise ProtocolError(f"a frame is not a readable buffer: {exc}") from None
    if len(mac) != MAC_SIZE or not hmac.compare_digest(mac, expected):
        raise ProtocolError("bad or missing HMAC: sender does not have this run's key")
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
    try:
        return cls._build(fields, payload)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {cls.__name__} message: {exc}") from None
