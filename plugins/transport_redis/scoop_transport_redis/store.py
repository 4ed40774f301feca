"""The Redis broker store: Redis itself keeps and hands out the futures, with streams and consumer groups.

Why these choices:

- Every key of a run lives under ``{prefix}:{run_id}:``, and the store's
  address is ``URL#PREFIX:RUN_ID`` (never with a password: each process
  takes credentials from its own settings).
- The queue is one stream, ``...:queue``, read through one consumer group,
  ``scoop``, by consumers named after the peers. The group is what hands an
  entry to exactly one taker and keeps it *pending* (leased) for that taker
  until it is acknowledged: ``XACK`` + ``XDEL`` in the commit that carries
  the result. ``XCLAIM ... JUSTID`` with no minimum idle time renews a lease
  (it resets the idle time without counting a delivery), ``XAUTOCLAIM``
  hands over what a silent taker held, and ``XPENDING`` names the holders.
- An entry's fields are ``f0``, ``f1``, ... the frames, as binary values,
  and nothing else: everything the core acts on is inside the frames, under
  the core's signature. An entry or a letter with any other field was not
  written by a store; it comes back with no frames, which the core refuses.
- Each peer has a mailbox stream, ``...:mail:{name hex}``, read through its
  own group ``scoop``, so one ``XREADGROUP BLOCK`` waits for the queue and
  the mailbox at once. Mail read is acknowledged and deleted in the same
  pipeline as the next read.
- Opening a store writes nothing: a process that only looks (a run id in
  use, ``scoop worker --run`` reading the run's description) leaves no key
  behind. A store object creates the groups it reads through (``XGROUP
  CREATE ... MKSTREAM``, an existing one is fine) before its first use of
  the queue. They start at ``0``, not ``$``, so whenever one is created,
  nothing already in its stream is missed (mail sent to a peer before it
  opened the store, say).
- ``COUNT`` applies to each stream of one ``XREADGROUP``, so :meth:`take`
  first looks without blocking (mailbox up to :data:`BATCH`, queue up to
  ``count``, one pipeline) and only if both are empty blocks on both.
- :meth:`RedisStore.commit` is one ``MULTI``/``EXEC`` round trip: the
  additions, the mail and the removals happen together or not at all.
- :meth:`RedisStore.withdraw` is one script: for each entry, who holds it
  (``XPENDING``), and if nobody, ``XDEL``, in one step no taker can come
  between. :meth:`RedisStore.queued` lists the holders first, then the
  queue (``XRANGE``): an entry taken in between looks unheld there, and a
  withdraw that follows leaves it be.
- A record table is a hash, ``...:table:{name}``: a script stores a record
  once (``HSETNX``, and ``HGET`` of what is there); records
  replaced are written by a script that does so only while the hash exists
  (a run that ended is not brought back); a record the core refused is
  deleted by a script that checks it is still the same, so a good record
  written meanwhile is never lost. Names come back decoded with
  ``surrogateescape``, so any bytes an attacker used name the field again
  when it is deleted. The set ``...:tables`` lists the tables, so that the
  keys of all of them can be kept alive.
- A flag is a key ``...:flag:{name hex}`` set with ``PX`` (lowered: ``DEL``);
  the run's counter is ``...:index`` (``INCR``). Flags are not signed, and a
  writer without the key can only make a run slower or end it with them:
  nothing in them is unpickled or routes anything.
- Every key gets an ``EXPIRE`` when it is written, pipelined in the same
  round trip, and a raised flag (every peer raises its own each heartbeat)
  renews the run's long-lived keys, at most every :data:`KEEP_EVERY`
  seconds: a run that dies leaves nothing behind for longer than
  ``expire``, and a live run never loses its constants.
- ``wakeup()`` sets a flag, and adds one tiny entry (field ``w``) to the
  process's own mailbox through another connection of the client's pool,
  which ends a blocked ``XREADGROUP`` at once; ``take`` skips such entries.
  :class:`scoop_core.wakeup.WakeUp` keeps the flag, the lock and the order
  against ``close()``, which adds an entry only if a ``take`` is under way
  (a store that only looked writes nothing).
- Replies are parsed from the wire (RESP2 or RESP3), not through redis-py's
  reply callbacks, whose shapes differ between versions.
- Any Redis error becomes :class:`~scoop_core.errors.TransportClosed` naming
  the server (password masked) and the cause; redis-py retries nothing,
  since retrying a commit could add futures twice.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis

from scoop_core.errors import LaunchError, TransportClosed
from scoop_core.interfaces import BrokerStore, Entry, Frame, Letter
from scoop_core.wakeup import WakeUp
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
    cannot_use,
    mask_url,
)

__all__ = ["GROUP", "MIN_STORE_VERSION", "RedisStore"]

log = logging.getLogger("scoop.transport.redis")

GROUP = b"scoop"
"""The consumer group of the queue and of every mailbox."""

MIN_STORE_VERSION = (6, 2)
"""``XAUTOCLAIM`` and ``XPENDING ... IDLE`` came with Redis 6.2."""

KEEP_EVERY = 30.0
"""Seconds between two renewals, by one store object, of the expiry of the run's keys."""

_WAKE = b"w"
_RAW_REPLIES = ("XREADGROUP", "XAUTOCLAIM", "XCLAIM", "XPENDING", "XRANGE", "HGETALL", "EVAL")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_-]+")

# Deletes a record the core refused, only if it is still that one;
# KEYS: the hash; ARGV: field, record.
_DROP_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Stores each record unless its name has one; lists the table (and renews
# its expiry) only if one was stored, so a store that only looked at a run
# changes nothing there. KEYS: the hash, the set of tables; ARGV: expire,
# table name, field, record, field, record... Returns, for each, 1 where
# stored, else the record there.
_PUT_ONCE = """
local answers = {}
local stored = false
for i = 3, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    answers[#answers + 1] = 1
    stored = true
  else
    answers[#answers + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  end
end
if stored then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return answers
"""

# Records over any there, unless the table is gone; KEYS: the hash;
# ARGV: field, record, field, record...
_REPLACE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
return 0
"""

# For each id: 1 if nobody held the entry and it was deleted, the holder's
# name if somebody holds it, 0 if the queue has no such entry (a pending id
# whose entry is gone is acknowledged on the way); KEYS: queue; ARGV:
# group, ids.
_WITHDRAW = """
local answers = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local rows = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    if #rows > 0 then
      redis.call('XACK', KEYS[1], ARGV[1], id)
    end
    answers[i - 1] = 0
  elseif #rows > 0 then
    answers[i - 1] = rows[1][2]
  else
    redis.call('XDEL', KEYS[1], id)
    answers[i - 1] = 1
  end
end
return answers
"""

# Renews the expiry of the run's long-lived keys and of every table;
# KEYS: queue, index, the set of tables, our mailbox; ARGV: expire,
# the tables' key prefix.
_KEEP = """
for i = 1, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('EXPIRE', ARGV[2] .. name, ARGV[1])
end
return 0
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
    and the end of :meth:`close`); the wake-up never pokes once closed, so
    the client is shut last and a :meth:`wakeup` racing :meth:`close` never
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
        self._wake = WakeUp(self._poke)
        self._groups_ready = False  # the queue's and our mailbox's groups exist
        self._keep_due = 0.0  # when a raised flag next renews the expiry of the run's keys
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
            raise cannot_use(store._shown, url, exc, store._cause(exc)) from None
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

    def _flag_key(self, name: str) -> bytes:
        return self._base + b"flag:" + name.encode(errors="surrogateescape").hex().encode()

    def _table(self, table: str) -> bytes:
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"a table name is made of ASCII letters, digits, '-' and '_', got {table!r}"
            )
        return self._base + b"table:" + table.encode()

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
        if isinstance(exc, redis.exceptions.NoPermissionError):
            # Not a lost server: an ACL user that may not touch the run's keys.
            prefix = self._options.prefix
            raise TransportClosed(
                f"Redis at {self._shown} refused the run: {self._cause(exc)}. The Redis user "
                f"needs the keys under '{prefix}:*' and the commands of a run (ACL rule: "
                f"~{prefix}:* +@all), or set [scoop.transport.redis] prefix to keys it may use"
            ) from None
        raise TransportClosed(f"lost Redis at {self._shown}: {self._cause(exc)}") from None

    @contextmanager
    def _io(self) -> Iterator[None]:
        """Hold the I/O lock, refuse a closed store, turn Redis errors into TransportClosed."""
        with self._io_lock:
            if self._wake.closed:
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

    def _queue_group(self) -> bool:
        """Make sure the queue's group exists if the queue does (under ``_io``); False if
        there is no queue (nothing was ever added, or the run ended): a look at the
        queue then writes nothing."""
        if self._groups_ready:
            return True
        try:
            self._client.execute_command("XGROUP", "CREATE", self._queue, GROUP, b"0")
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                return False
        return True

    # -- the queue and the mailboxes -------------------------------------------------

    def commit(
        self, *, add: Sequence[Entry] = (), mail: Sequence[Letter] = (), done: Sequence[bytes] = ()
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
        with self._io_lock, self._wake.receiving():
            block: int | None = None  # the first look never blocks
            while True:
                # A wake-up is served before anything else, so a busy queue cannot starve it.
                if self._wake.take():
                    return [], []
                try:
                    entries, mail = self._read(count, block)
                except redis.RedisError as exc:
                    if self._wake.closed:
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

    def withdraw(self, entry_ids: Sequence[bytes]) -> list[str | None]:
        if not entry_ids:
            return []
        with self._io():
            if not self._queue_group():
                return [""] * len(entry_ids)
            answers = self._client.execute_command(
                "EVAL", _WITHDRAW, 1, self._queue, GROUP, *entry_ids
            )
        return [
            _text(a) if isinstance(a, bytes | str) else (None if int(a) else "") for a in answers
        ]

    def renew(self, entry_ids: Sequence[bytes]) -> None:
        if not entry_ids:
            return
        with self._io():
            if not self._queue_group():
                return
            self._client.execute_command(
                "XCLAIM", self._queue, GROUP, self._consumer, 0, *entry_ids, "JUSTID"
            )

    def claim_expired(self, lease: float, count: int = 100) -> list[Entry]:
        idle = max(0, int(lease * 1000))
        count = max(1, int(count))
        with self._io():
            if not self._queue_group():
                return []
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

    def queued(self) -> list[Entry]:
        with self._io():
            if not self._queue_group():
                return []
            # Who holds what first, then the entries: an entry taken in
            # between looks unheld here, and a withdraw leaves it be.
            held: set[bytes] = set()
            start: bytes = b"-"
            while True:
                rows = self._client.execute_command(
                    "XPENDING", self._queue, GROUP, start, "+", BATCH
                )
                held.update(bytes(row[0]) for row in rows or ())
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
                    if bytes(entry_id) not in held:
                        entries.append(_queue_entry(bytes(entry_id), _fields(raw)))
                if not items or len(items) < BATCH:
                    break
                start = b"(" + bytes(items[-1][0])
        return entries

    def claim_from(self, holder: str) -> list[Entry]:
        if holder == self.identity:
            raise ValueError(f"a store cannot claim the entries of its own identity {holder!r}")
        consumer = holder.encode()
        entries: list[Entry] = []
        with self._io():
            if not self._queue_group():
                return []
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
                    entries.append(_queue_entry(item[0], _fields(item[1]), holder))
                gone = set(ids) - {bytes(e.id) for e in entries}
                self._queue_gone += sorted(gone)
            self._client.execute_command("XGROUP", "DELCONSUMER", self._queue, GROUP, consumer)
        return entries

    # -- record tables ---------------------------------------------------------------

    def put_records(
        self, table: str, records: Sequence[tuple[str, bytes]], *, replace: bool = False
    ) -> list[bytes | None]:
        key = self._table(table)
        if not records:
            return []
        pieces = [part for name, record in records for part in (_field(name), record)]
        with self._io():
            if replace:
                pipe = self._client.pipeline(transaction=False)
                pipe.execute_command("EVAL", _REPLACE, 1, key, *pieces)
                pipe.execute_command("EXPIRE", key, self._options.expire)
                pipe.execute()
                return [None] * len(records)
            keys = (key, self._key("tables"))
            answers = self._client.execute_command(
                "EVAL", _PUT_ONCE, len(keys), *keys, self._options.expire, table, *pieces
            )
        return [None if isinstance(a, int) else bytes(a) for a in answers]

    def records(self, table: str) -> dict[str, bytes]:
        key = self._table(table)
        with self._io():
            return _records(self._client.execute_command("HGETALL", key))

    def drop_records(self, table: str, records: Mapping[str, bytes]) -> int:
        key = self._table(table)
        if not records:
            return 0
        with self._io():
            pipe = self._client.pipeline(transaction=False)
            for name, record in records.items():
                pipe.execute_command("EVAL", _DROP_IF, 1, key, _field(name), record)
            return sum(int(n) for n in pipe.execute())

    # -- liveness ----------------------------------------------------------------------

    def server_time(self) -> int | None:
        with self._io():
            seconds, micros = self._client.execute_command("TIME")
            return int(seconds) * 1_000_000_000 + int(micros) * 1000

    def new_index(self) -> int:
        with self._io():
            pipe = self._client.pipeline(transaction=True)
            pipe.execute_command("INCR", self._key("index"))
            pipe.execute_command("EXPIRE", self._key("index"), self._options.expire)
            return int(pipe.execute()[0])

    def flag(self, name: str, ttl: float) -> None:
        key = self._flag_key(name)
        with self._io():
            if ttl <= 0:
                self._client.execute_command("DEL", key)
                return
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command("SET", key, b"1", "PX", max(1, math.ceil(ttl * 1000)))
            now = time.monotonic()
            if now >= self._keep_due:
                # A run that lives longer than ``expire`` keeps its keys while anyone is alive.
                self._keep_due = now + KEEP_EVERY
                keys = (self._queue, self._key("index"), self._key("tables"), self._mail)
                tables = self._base + b"table:"
                pipe.execute_command("EVAL", _KEEP, len(keys), *keys, self._options.expire, tables)
            pipe.execute()

    def flagged(self, name: str) -> bool:
        with self._io():
            return bool(self._client.execute_command("EXISTS", self._flag_key(name)))

    # -- wake-ups and the end -----------------------------------------------------

    def wakeup(self) -> None:
        self._wake.wakeup()

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
        # Ends an XREADGROUP blocked in another thread, so we can take _io_lock.
        if not self._wake.close():
            return
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
