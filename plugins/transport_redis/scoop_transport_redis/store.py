"""The Redis broker store: Redis itself schedules the futures, with streams and consumer groups.

Why these choices:

- Every key of a run lives under ``{prefix}:{run_id}:``, as for the hub, and
  the store's address has the hub's form, ``URL#PREFIX:RUN_ID`` (never with
  a password: each process takes credentials from its own settings).
- The queue of futures is one stream, ``...:queue``, read through one
  consumer group, ``scoop``, by consumers named after the peers. The group
  is what hands an entry to exactly one taker and keeps it *pending* for
  that taker until it is acknowledged: ``XACK`` + ``XDEL`` in the commit
  that carries the result. ``XCLAIM ... JUSTID`` with no minimum idle time
  is a touch (it resets the idle time without counting a delivery), and
  ``XAUTOCLAIM`` hands over what a silent taker held.
- An entry's fields are ``f0``, ``f1``, ... the frames, as binary values
  (as on the hub's streams), and nothing else: everything the core acts on
  is inside the frames, under the core's signature. An entry or a letter
  with any other field was not written by a store; it comes back with no
  frames, which the core refuses (and deletes).
- Each peer has a mailbox stream, ``...:mail:{name hex}``, read through its
  own group ``scoop``, so one ``XREADGROUP BLOCK`` waits for the queue and
  the mailbox at once. Mail read is acknowledged and deleted in the same
  pipeline as the next read.
- Opening a store writes nothing: a process that only looks (a run id in
  use, ``scoop worker --run`` reading the run's description) leaves no key
  behind. The groups are created (``XGROUP CREATE ... MKSTREAM``, an
  existing one is fine) by the successful :meth:`RedisStore.put_info` that
  starts a run, by :meth:`RedisStore.register`, and by a process's first
  :meth:`RedisStore.take`. They start at ``0``, not ``$``, so whenever one
  is created, nothing already in its stream is missed (mail sent to a peer
  before it opened the store, say).
- :meth:`RedisStore.waiting` lists the queue (``XRANGE``) beside its
  pending entries (``XPENDING``); :meth:`RedisStore.remove_waiting` deletes
  each entry by a script that first checks, in the same step, that nobody
  took it or that its taker has been idle long enough.
- ``COUNT`` applies to each stream of one ``XREADGROUP``, so :meth:`take`
  first looks without blocking (mailbox up to :data:`BATCH`, queue up to
  ``count``, one pipeline) and only if both are empty blocks on both.
- :meth:`RedisStore.commit` is one ``MULTI``/``EXEC`` round trip: the
  additions, the mail and the acknowledgements happen together or not at all.
- Records are hashes of opaque values the core signed: ``...:consts``
  (a field per constant, so ``HSETNX`` defines one at most once),
  ``...:peers`` (a field per peer; indices come from the counter
  ``...:index``) and ``...:taken`` (a field per taken queue entry's token,
  written with ``HSETNX`` and read back in the same ``MULTI``). A record
  the core refused is deleted by a script that checks it is still the
  same, so a good record written meanwhile is never lost. Field names come
  back decoded with ``surrogateescape``, so any bytes an attacker used
  name the field again when it is deleted.
- ``...:info`` is the run's description (``SET NX``: a run id in use is
  refused); ``...:alive:{name hex}`` is a peer's heartbeat (``SET PX``);
  ``...:hungry`` is a worker's mark that it found the queue empty (``SET
  PX``), which ``anyone_hungry`` reads and clears in one ``DEL``. What
  these say is not signed, and a writer without the key can only make a
  run slower or end it with them: nothing in them is unpickled or routes
  anything.
- Every key gets an ``EXPIRE`` when it is written, pipelined in the same
  round trip, and :meth:`RedisStore.beat` renews the run's long-lived
  keys: a run that dies leaves nothing behind for longer than ``expire``,
  and a live run never loses its constants. With a record, a beat also
  writes the peer's record again, by a script that does so only while the
  peers hash exists (a run that ended is not brought back).
- ``wakeup()`` is the hub's: a flag, and one tiny entry (field ``w``) in
  the process's own mailbox through another connection of the client's
  pool, which ends a blocked ``XREADGROUP`` at once.
- Replies are parsed from the wire (RESP2 or RESP3), not through redis-py's
  reply callbacks, whose shapes differ between versions.
- Any Redis error becomes :class:`~scoop_core.errors.TransportClosed` naming
  the server (password masked) and the cause; redis-py retries nothing,
  since retrying a commit could add futures twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis

from scoop_core.errors import LaunchError, TransportClosed
from scoop_core.interfaces import BrokerStore, Entry, Frame
from scoop_transport_redis.transport import (
    BATCH,
    BLOCK_MS,
    SEPARATOR,
    _entry,
    _frame_field,
    _glob_escape,
    _Options,
    _split_address,
    _strip_password,
    mask_url,
)

__all__ = ["GROUP", "MIN_STORE_VERSION", "RedisStore"]

log = logging.getLogger("scoop.transport.redis")

GROUP = b"scoop"
"""The consumer group of the queue and of every mailbox."""

MIN_STORE_VERSION = (6, 2)
"""``XAUTOCLAIM`` and ``XPENDING ... IDLE`` came with Redis 6.2."""

_WAKE = b"w"
_RAW_REPLIES = ("XREADGROUP", "XAUTOCLAIM", "XCLAIM", "XPENDING", "XRANGE", "SET", "HGETALL")
_LONG_LIVED = ("queue", "peers", "index", "consts", "taken", "info")

# Deletes a record the core refused, only if it is still that one;
# KEYS: the hash; ARGV: field, record.
_DROP_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# A peer's record again, unless the run's records are gone; KEYS: peers;
# ARGV: name, record.
_REASSERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""

# Starts a run: its description, if it has none yet, and the queue's group;
# KEYS: info, queue; ARGV: info, expire, group.
_PUT_INFO = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
local made = redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[3], '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Deletes an entry nobody has taken; KEYS: queue; ARGV: group, id.
_WITHDRAW = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) > 0 then
  return 0
end
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


# Deletes each entry that nobody took, or whose taker has not touched it
# for a while; KEYS: queue; ARGV: group, min idle (ms), ids. Returns 1 or 0
# per id: deleted or not.
_REMOVE_WAITING = """
local deleted = {}
for i = 3, #ARGV do
  local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  local gone = 0
  if #rows == 0 or tonumber(rows[1][3]) >= tonumber(ARGV[2]) then
    if #rows > 0 then
      redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    end
    gone = redis.call('XDEL', KEYS[1], ARGV[i])
  end
  deleted[#deleted + 1] = gone
end
return deleted
"""


def _streams(reply: Any) -> list[tuple[bytes, list[Any]]]:
    """An ``XREADGROUP`` reply as ``[(key, entries)]``: RESP2 gives a list, RESP3 a map."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return list(reply.items())
    return [(key, entries) for key, entries in reply]


def _fields(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, Mapping):
        return dict(raw)
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _stored_frames(fields: Mapping[bytes, bytes]) -> list[Frame]:
    frames: list[Frame] = []
    while (frame := fields.get(_frame_field(len(frames)))) is not None:
        frames.append(frame)
    # As on the hub's streams: out-of-band buffers come back writable.
    return frames[:1] + [bytearray(f) for f in frames[1:]]


def _written_frames(fields: Mapping[bytes, bytes]) -> list[Frame]:
    """The frames of an entry as a store wrote it; none if it has any other field."""
    frames = _stored_frames(fields)
    return frames if len(frames) == len(fields) else []


def _queue_entry(entry_id: bytes, fields: Mapping[bytes, bytes], holder: str = "") -> Entry:
    return Entry(tuple(_written_frames(fields)), entry_id, holder)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _name(value: bytes | str) -> str:
    """A field name as text that encodes back to the same bytes (:func:`_field`)."""
    return value.decode(errors="surrogateescape") if isinstance(value, bytes) else str(value)


def _field(name: str) -> bytes:
    return name.encode(errors="surrogateescape")


def _records(raw: Any) -> dict[str, bytes]:
    return {_name(name): bytes(value) for name, value in _fields(raw or []).items()}


class RedisStore(BrokerStore):
    """A run's broker in a Redis server (see the module's docstring for the keys).

    Build it with :meth:`RedisTransport.open_store
    <scoop_transport_redis.transport.RedisTransport.open_store>`. ``identity``
    is this process's peer name, which is also its consumer name in the
    groups. ``_io_lock`` is held by whoever talks to Redis (the owner thread,
    and the end of :meth:`close`); ``_wake_lock`` guards the wake-up flag and
    the client's shutdown, so a :meth:`wakeup` racing :meth:`close` never
    uses a closed client.
    """

    def __init__(
        self,
        options: _Options,
        client: redis.Redis,
        url: str,
        base: str,
        identity: str,
    ) -> None:
        self.address = f"{_strip_password(url)}{SEPARATOR}{base}"
        self.identity = identity
        self._options = options
        self._client = client
        self._shown = mask_url(url)
        self._base = (base + ":").encode()
        self._consumer = identity.encode()
        self._queue = self._key("queue")
        self._mail = self._mailbox(identity)
        self._mail_read: list[bytes] = []  # mail returned, to acknowledge and delete
        self._queue_gone: list[bytes] = []  # pending ids of deleted entries, to acknowledge
        self._io_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._closed = False
        self._groups_ready = False  # the queue's and our mailbox's groups exist
        for command in _RAW_REPLIES:
            client.set_response_callback(command, lambda reply, **_: reply)

    @classmethod
    def open(
        cls,
        options: _Options,
        *,
        run_id: str | None,
        address: str | None,
        identity: str,
    ) -> RedisStore:
        """The store of a new run (``run_id``, the launcher) or of the run at ``address``.

        Raises ValueError for a bad argument and
        :class:`~scoop_core.errors.LaunchError` if the server cannot be used."""
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"a store identity must be a non-empty peer name, got {identity!r}")
        if (run_id is None) == (address is None):
            raise ValueError("open_store needs either run_id (a new run) or address, not both")
        if run_id is not None:
            if not run_id or SEPARATOR in run_id:
                raise ValueError(f"a run id must be non-empty, without {SEPARATOR!r}: {run_id!r}")
            url, base = options.url, f"{options.prefix}:{run_id}"
        else:
            assert address is not None
            url, base = _parse_address(address)
        client = options.client(url)
        store = cls(options, client, url, base, identity)
        try:
            store._check_version()
        except (redis.RedisError, LaunchError) as exc:
            client.close()
            if isinstance(exc, LaunchError):
                raise
            raise LaunchError(f"cannot use Redis at {store._shown}: {store._cause(exc)}") from None
        log.debug("store %s opened for %s", store.address, identity)
        return store

    def _check_version(self) -> None:
        version = str(self._client.info("server").get("redis_version", "0"))
        numbers = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
        if numbers < MIN_STORE_VERSION:
            raise LaunchError(
                f"cannot use Redis at {self._shown} as the broker: it is version {version}, "
                "and the store needs XAUTOCLAIM, which came with Redis 6.2; upgrade the server "
                "or choose another transport"
            )

    # -- keys and helpers ----------------------------------------------------------

    def _key(self, name: str) -> bytes:
        return self._base + name.encode()

    def _mailbox(self, peer: str) -> bytes:
        return self._base + b"mail:" + peer.encode().hex().encode()

    def _alive_key(self, peer: str) -> bytes:
        return self._base + b"alive:" + peer.encode().hex().encode()

    def _create_group(self, pipe: Any, key: bytes) -> None:
        pipe.execute_command("XGROUP", "CREATE", key, GROUP, b"0", "MKSTREAM")
        pipe.execute_command("EXPIRE", key, self._options.expire)

    @staticmethod
    def _execute_ignoring_busygroup(pipe: Any) -> list[Any]:
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, redis.ResponseError) and not str(reply).startswith("BUSYGROUP"):
                raise reply
        return replies

    def _cause(self, exc: BaseException) -> str:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = self._options.password
        return cause.replace(password, "***") if password else cause

    def _lost(self, exc: redis.RedisError) -> NoReturn:
        raise TransportClosed(f"lost Redis at {self._shown}: {self._cause(exc)}") from None

    @contextmanager
    def _io(self) -> Iterator[None]:
        """Hold the I/O lock, refuse a closed store, turn Redis errors into TransportClosed."""
        with self._io_lock:
            if self._closed:
                raise TransportClosed(f"the Redis store {self.address} is closed")
            try:
                yield
            except redis.RedisError as exc:
                self._lost(exc)

    def _xadd(self, pipe: Any, key: bytes, pieces: list[Any]) -> None:
        pipe.execute_command("XADD", key, "*", *pieces)

    def _flush_acks(self, pipe: Any) -> None:
        """Acknowledge (and delete) in ``pipe`` what earlier reads left to acknowledge."""
        if self._mail_read:
            pipe.execute_command("XACK", self._mail, GROUP, *self._mail_read)
            pipe.execute_command("XDEL", self._mail, *self._mail_read)
            self._mail_read = []
        if self._queue_gone:
            pipe.execute_command("XACK", self._queue, GROUP, *self._queue_gone)
            self._queue_gone = []

    # -- peers ---------------------------------------------------------------------

    def _drop_if(self, key: bytes, records: Mapping[bytes, bytes]) -> int:
        if not records:
            return 0
        with self._io():
            pipe = self._client.pipeline(transaction=False)
            for field, record in records.items():
                pipe.execute_command("EVAL", _DROP_IF, 1, key, field, record)
            return sum(int(n) for n in pipe.execute())

    def new_index(self) -> int:
        with self._io():
            pipe = self._client.pipeline(transaction=True)
            pipe.execute_command("INCR", self._key("index"))
            pipe.execute_command("EXPIRE", self._key("index"), self._options.expire)
            return int(pipe.execute()[0])

    def register(self, name: str, record: bytes) -> None:
        with self._io():
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command("HSET", self._key("peers"), _field(name), record)
            pipe.execute_command("EXPIRE", self._key("peers"), self._options.expire)
            self._create_group(pipe, self._queue)
            self._create_group(pipe, self._mailbox(name))
            self._execute_ignoring_busygroup(pipe)
            self._groups_ready = self._groups_ready or name == self.identity

    def unregister(self, name: str) -> None:
        with self._io():
            pipe = self._client.pipeline(transaction=True)
            pipe.execute_command("HDEL", self._key("peers"), _field(name))
            pipe.execute_command("DEL", self._alive_key(name))
            pipe.execute()

    def peers(self) -> dict[str, bytes]:
        with self._io():
            return _records(self._client.execute_command("HGETALL", self._key("peers")))

    def drop_peers(self, records: Mapping[str, bytes]) -> int:
        return self._drop_if(self._key("peers"), {_field(n): r for n, r in records.items()})

    # -- the queue and the mailboxes -------------------------------------------------

    def commit(
        self,
        *,
        add: Sequence[Entry] = (),
        mail: Sequence[tuple[str, Sequence[Frame]]] = (),
        done: Sequence[bytes] = (),
    ) -> list[bytes]:
        pieces = [_entry(entry.frames) for entry in add]
        letters = [(self._mailbox(peer), _entry(frames)) for peer, frames in mail]
        if not (pieces or letters or done):
            return []
        with self._io():
            pipe = self._client.pipeline(transaction=True)
            for fields in pieces:
                self._xadd(pipe, self._queue, fields)
            for key, fields in letters:
                self._xadd(pipe, key, fields)
            if done:
                pipe.execute_command("XACK", self._queue, GROUP, *done)
                pipe.execute_command("XDEL", self._queue, *done)
            expire = self._options.expire
            if pieces or done:
                pipe.execute_command("EXPIRE", self._queue, expire)
            for key in dict.fromkeys(key for key, _ in letters):
                pipe.execute_command("EXPIRE", key, expire)
            replies = pipe.execute()
        return [bytes(entry_id) for entry_id in replies[: len(pieces)]]

    def room(self) -> int | None:
        if not self._options.maxlen:
            return None
        with self._io():
            length = self._client.execute_command("XLEN", self._queue)
        return max(0, self._options.maxlen - int(length or 0))

    def take(self, count: int, timeout: float | None) -> tuple[list[Entry], list[list[Frame]]]:
        count = max(0, int(count))
        deadline = time.monotonic() + (BLOCK_MS / 1000 if timeout is None else max(0.0, timeout))
        with self._io_lock:
            block: int | None = None  # the first look never blocks
            while True:
                if self._closed:
                    return [], []
                # A wake-up is served before anything else, so a busy queue cannot starve it.
                if self._wake_pending:
                    with self._wake_lock:
                        self._wake_pending = False
                    return [], []
                try:
                    entries, mail = self._read(count, block)
                except redis.RedisError as exc:
                    if self._closed:
                        return [], []
                    self._lost(exc)
                if entries or mail:
                    return entries, mail
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], []
                block = max(1, min(BLOCK_MS, math.ceil(remaining * 1000)))

    def _read(self, count: int, block: int | None) -> tuple[list[Entry], list[list[Frame]]]:
        pipe = self._client.pipeline(transaction=False)
        if not self._groups_ready:
            self._create_group(pipe, self._queue)
            self._create_group(pipe, self._mail)
        self._flush_acks(pipe)
        read = ("XREADGROUP", "GROUP", GROUP, self._consumer)
        if block is None:
            pipe.execute_command(*read, "COUNT", BATCH, "STREAMS", self._mail, ">")
            if count:
                pipe.execute_command(*read, "COUNT", count, "STREAMS", self._queue, ">")
            replies = self._execute_ignoring_busygroup(pipe)[-1 - bool(count) :]
        elif count:
            streams = ("STREAMS", self._queue, self._mail, ">", ">")
            pipe.execute_command(*read, "COUNT", count, "BLOCK", block, *streams)
            replies = self._execute_ignoring_busygroup(pipe)[-1:]
        else:
            pipe.execute_command(*read, "COUNT", BATCH, "BLOCK", block, "STREAMS", self._mail, ">")
            replies = self._execute_ignoring_busygroup(pipe)[-1:]
        self._groups_ready = True
        entries: list[Entry] = []
        mail: list[list[Frame]] = []
        for reply in replies:
            for key, items in _streams(reply):
                from_queue = bytes(key) == self._queue
                for entry_id, raw in items:
                    if raw is None:  # deleted after it was added: nothing to hand out
                        if from_queue:
                            self._queue_gone.append(entry_id)
                        else:
                            self._mail_read.append(entry_id)
                        continue
                    fields = _fields(raw)
                    if from_queue:
                        entries.append(_queue_entry(entry_id, fields))
                        continue
                    self._mail_read.append(entry_id)
                    if _WAKE not in fields:
                        mail.append(_written_frames(fields))
        return entries, mail

    def withdraw(self, entry_id: bytes) -> bool:
        with self._io():
            deleted = self._client.execute_command(
                "EVAL", _WITHDRAW, 1, self._queue, GROUP, entry_id
            )
        return bool(deleted)

    def touch(self, entry_ids: Sequence[bytes]) -> None:
        if not entry_ids:
            return
        with self._io():
            self._client.execute_command(
                "XCLAIM", self._queue, GROUP, self._consumer, 0, *entry_ids, "JUSTID"
            )

    def claim_stale(self, min_idle: float, count: int = 100) -> list[Entry]:
        idle = max(0, int(min_idle * 1000))
        count = max(1, int(count))
        with self._io():
            # In one transaction, so the holders XPENDING names are those XAUTOCLAIM took from.
            pipe = self._client.pipeline(transaction=True)
            pipe.execute_command("XPENDING", self._queue, GROUP, "IDLE", idle, "-", "+", count)
            pipe.execute_command(
                "XAUTOCLAIM", self._queue, GROUP, self._consumer, idle, "0-0", "COUNT", count
            )
            pending, claimed = pipe.execute()
        holders = {bytes(row[0]): _text(row[1]) for row in pending or ()}
        self._queue_gone += claimed[2] if len(claimed) > 2 else []
        entries = []
        for item in claimed[1] or ():
            if item is None:
                continue
            entry_id, raw = item
            if raw is None:
                self._queue_gone.append(entry_id)
                continue
            holder = holders.get(bytes(entry_id), "")
            if holder != self.identity:  # our own stale entries stay ours
                entries.append(_queue_entry(entry_id, _fields(raw), holder))
        return entries

    def waiting(self, min_idle: float) -> list[Entry]:
        idle = max(0, int(min_idle * 1000))
        with self._io():
            # Who holds what first, then the entries: an entry taken in
            # between looks untaken here, and remove_waiting leaves it be.
            held: dict[bytes, tuple[str, int]] = {}
            start: bytes = b"-"
            while True:
                rows = self._client.execute_command(
                    "XPENDING", self._queue, GROUP, start, "+", BATCH
                )
                for row in rows or ():
                    held[bytes(row[0])] = (_text(row[1]), int(row[2]))
                if not rows or len(rows) < BATCH:
                    break
                start = b"(" + bytes(rows[-1][0])
            entries: list[Entry] = []
            start = b"-"
            while True:
                items = self._client.execute_command(
                    "XRANGE", self._queue, start, "+", "COUNT", BATCH
                )
                for entry_id, raw in items or ():
                    holder, idle_ms = held.get(bytes(entry_id), ("", idle))
                    if idle_ms >= idle:
                        entries.append(_queue_entry(bytes(entry_id), _fields(raw), holder))
                if not items or len(items) < BATCH:
                    break
                start = b"(" + bytes(items[-1][0])
        return entries

    def remove_waiting(self, entry_ids: Sequence[bytes], min_idle: float) -> list[bytes]:
        if not entry_ids:
            return []
        idle = max(0, int(min_idle * 1000))
        with self._io():
            deleted = self._client.execute_command(
                "EVAL", _REMOVE_WAITING, 1, self._queue, GROUP, idle, *entry_ids
            )
        return [bytes(i) for i, gone in zip(entry_ids, deleted or (), strict=True) if int(gone)]

    def claim_from(self, name: str) -> list[Entry]:
        if name == self.identity:
            raise ValueError(f"a store cannot claim the entries of its own peer {name!r}")
        consumer = name.encode()
        entries: list[Entry] = []
        with self._io():
            previous: list[bytes] = []
            while True:
                rows = self._client.execute_command(
                    "XPENDING", self._queue, GROUP, "-", "+", BATCH, consumer
                )
                ids = [bytes(row[0]) for row in rows or ()]
                if not ids or ids == previous:
                    break
                previous = ids
                claimed = self._client.execute_command(
                    "XCLAIM", self._queue, GROUP, self._consumer, 0, *ids
                )
                for item in claimed or ():
                    if item is None or item[1] is None:
                        continue
                    entries.append(_queue_entry(item[0], _fields(item[1]), name))
                gone = set(ids) - {bytes(e.id) for e in entries}
                self._queue_gone += sorted(gone)
            self._client.execute_command("XGROUP", "DELCONSUMER", self._queue, GROUP, consumer)
        return entries

    # -- constants, the run's description, heartbeats ------------------------------

    # -- records: taken marks, constants ---------------------------------------------

    def mark_taken(self, marks: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        if not marks:
            return []
        key = self._key("taken")
        with self._io():
            pipe = self._client.pipeline(transaction=True)
            for token, record in marks:
                pipe.execute_command("HSETNX", key, token, record)
                pipe.execute_command("HGET", key, token)
            pipe.execute_command("EXPIRE", key, self._options.expire)
            replies = pipe.execute()
        return [
            None if kept else bytes(there)
            for kept, there in zip(replies[0:-1:2], replies[1:-1:2], strict=True)
        ]

    def drop_mark(self, token: bytes, record: bytes) -> bool:
        return bool(self._drop_if(self._key("taken"), {token: record}))

    def set_const(self, name: str, record: bytes) -> bool:
        with self._io():
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command("HSETNX", self._key("consts"), _field(name), record)
            pipe.execute_command("EXPIRE", self._key("consts"), self._options.expire)
            created = pipe.execute()[0]
        return bool(created)

    def constants(self) -> dict[str, bytes]:
        with self._io():
            return _records(self._client.execute_command("HGETALL", self._key("consts")))

    def drop_consts(self, records: Mapping[str, bytes]) -> int:
        return self._drop_if(self._key("consts"), {_field(n): r for n, r in records.items()})

    def put_info(self, info: bytes) -> bool:
        with self._io():
            keys = (self._key("info"), self._queue)
            made = self._client.execute_command(
                "EVAL", _PUT_INFO, len(keys), *keys, info, self._options.expire, GROUP
            )
        return bool(made)

    def get_info(self) -> bytes | None:
        with self._io():
            info = self._client.execute_command("GET", self._key("info"))
        return None if info is None else bytes(info)

    def beat(self, ttl: float, record: bytes | None = None) -> None:
        expire = self._options.expire
        with self._io():
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command(
                "SET", self._alive_key(self.identity), b"1", "PX", max(1, int(ttl * 1000))
            )
            if record is not None:
                pipe.execute_command(
                    "EVAL", _REASSERT, 1, self._key("peers"), _field(self.identity), record
                )
            # A run that lives longer than ``expire`` keeps its keys while anyone beats.
            for name in _LONG_LIVED:
                pipe.execute_command("EXPIRE", self._key(name), expire)
            pipe.execute_command("EXPIRE", self._mail, expire)
            pipe.execute()

    def alive(self, name: str) -> bool:
        with self._io():
            return bool(self._client.execute_command("EXISTS", self._alive_key(name)))

    def mark_hungry(self, ttl: float) -> None:
        with self._io():
            self._client.execute_command(
                "SET", self._key("hungry"), b"1", "PX", max(1, int(ttl * 1000))
            )

    def anyone_hungry(self) -> bool:
        # DEL answers and clears at once: one mark, one hand-over.
        with self._io():
            return bool(self._client.execute_command("DEL", self._key("hungry")))

    # -- wake-ups and the end -----------------------------------------------------

    def wakeup(self) -> None:
        # Lock-free fast path: an entry is already on its way.
        if self._wake_pending:
            return
        with self._wake_lock:
            if self._closed or self._wake_pending:
                return
            self._wake_pending = True
            self._poke()

    def _poke(self) -> None:
        # Through another connection of the pool: ours may be blocked in XREADGROUP.
        pipe = self._client.pipeline(transaction=False)
        self._xadd(pipe, self._mail, [_WAKE, b""])
        pipe.execute_command("EXPIRE", self._mail, self._options.expire)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("store %s: could not add a wake-up entry: %s", self.address, exc)

    def close(self, *, end_run: bool = False) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            # Ends an XREADGROUP blocked in another thread, so we can take
            # _io_lock. Only then: a store that only looked writes nothing.
            # A take() that gets the lock after this looks sees _closed first.
            if self._io_lock.locked():
                self._poke()
        with self._io_lock:
            try:
                if end_run:
                    match = _glob_escape(self._base.decode()).encode() + b"*"
                    doomed = list(self._client.scan_iter(match=match, count=1000))
                    for start in range(0, len(doomed), 1000):
                        self._client.delete(*doomed[start : start + 1000])
                else:
                    pipe = self._client.pipeline(transaction=False)
                    self._flush_acks(pipe)
                    if len(pipe):
                        pipe.execute()
            except redis.RedisError as exc:
                log.warning(
                    "store %s: could not %s (the run's keys expire within %d s anyway): %s",
                    self.address,
                    "delete the run's keys" if end_run else "acknowledge the mail it read",
                    self._options.expire,
                    self._cause(exc),
                )
            with self._wake_lock:
                self._client.close()
        log.debug("closed store %s for %s", self.address, self.identity)


def _parse_address(address: str) -> tuple[str, str]:
    """``(url, prefix:run_id)`` from a store's address; ValueError naming what is wrong."""
    try:
        url, base = _split_address(address)
    except ValueError:
        url, base = "", ""
    prefix, colon, run_id = base.rpartition(":")
    if not (url and prefix and colon and run_id):
        raise ValueError(
            f"bad Redis store address {_masked(address)!r}: expected URL{SEPARATOR}PREFIX:RUN_ID, "
            "as the launcher's store reports it (e.g. redis://host:6379/0#scoop:run-1)"
        )
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"bad Redis store address {_masked(address)!r}: the URL must start with "
            "redis://, rediss:// or unix://"
        )
    return url, base


def _masked(address: str) -> str:
    """``address`` with any password in its URL part masked, for a message."""
    url, mark, base = address.rpartition(SEPARATOR)
    if not mark:
        url, base = address, ""
    try:
        return mask_url(url) + mark + base
    except ValueError:
        return "<an address that is not a URL>"
