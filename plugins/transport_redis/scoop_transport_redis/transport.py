"""The Redis Streams transport: a stream the hub reads, and one stream per peer.

Why these choices:

- Every key of a run lives under ``{prefix}:{run_id}:``: the stream
  ``...:broker`` that the hub reads, and ``...:peer:{connection id hex}``
  that each endpoint reads. A stream keeps each writer's messages in order, and one
  entry holds one whole message, so messages arrive in order and whole.
- An entry's fields are ``p`` (the sender's connection id, on the broker stream)
  and ``f0``, ``f1``, ... the frames, as binary values: no re-encoding and
  no joining, so a large buffer reaches Redis as it is.
- Each endpoint draws a fresh random *connection id* when it connects, and
  reads ``...:peer:{connection id hex}``; the hub reports that id (field
  ``p``) as the sender of each message, and answers to it. The identity an
  endpoint is given names nobody in Redis, so a second endpoint under the
  same identity neither takes nor shares the first one's stream; binding
  names to connections is the broker's work, after an authenticated hello.
  (Runs with Redis use the broker store, :mod:`scoop_transport_redis.store`,
  not this pair; it serves the conformance suite and the benchmark.)
- Each ``XADD`` is pipelined with an ``EXPIRE`` of its key: one round trip,
  and a run that dies leaves nothing behind for longer than ``expire``.
- A reader keeps the id of the last entry it read, so ``XREAD`` never sees an
  entry twice; the entries it read are deleted (``XDEL``) in the same
  pipeline as its next read, so Redis holds about what is in flight.
- ``XREAD BLOCK`` waits at most :data:`BLOCK_MS` at a time, so a reader
  notices a server that went away; ``recv(None)`` simply reads again.
- ``wakeup()`` adds a tiny entry (field ``w``) to the reader's own stream,
  through another connection of the client's pool, which ends a blocked
  ``XREAD`` at once. A flag coalesces a burst into one entry; ``recv`` serves
  the flag, not the entry, so an entry that arrives after its wake-up was
  already served is skipped silently.
- No retries in redis-py: retrying an ``XADD`` that timed out could deliver
  a message twice.
- The password is never in the hub's address: a peer takes the host from the
  address and the credentials from its own settings, which workers receive
  through the environment.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scoop_core.errors import ConfigError, LaunchError, TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Hub, Transport

if TYPE_CHECKING:
    from scoop_transport_redis.store import RedisStore

__all__ = [
    "BLOCK_MS",
    "CONNECT_TIMEOUT",
    "RedisEndpoint",
    "RedisHub",
    "RedisTransport",
    "mask_url",
]

log = logging.getLogger("scoop.transport.redis")

CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP (or TLS, or Unix socket) connection to Redis."""

SOCKET_TIMEOUT = 60.0
"""Seconds to wait for any reply; longer than :data:`BLOCK_MS` and than moving a large frame."""

BLOCK_MS = 2000
"""The longest a single ``XREAD BLOCK`` waits; ``recv(None)`` reads again after it."""

BATCH = 512
"""The most entries one ``XREAD`` fetches."""

CONNECTION_ID_SIZE = 16
"""Random bytes of an endpoint's connection id: nobody guesses another's."""

MIN_VERSION = (5, 0)
"""Streams came with Redis 5.0."""

SEPARATOR = "#"
"""Separates the Redis URL from the run's key base in ``Hub.address``."""

_WAKE = b"w"
_PEER = b"p"
_FRAME_FIELDS = [b"f%d" % i for i in range(64)]


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages)."""
    return _rebuild(url, "***")


def _strip_password(url: str) -> str:
    """``url`` with no password at all (for ``Hub.address``)."""
    return _rebuild(url, None)


def _rebuild(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    user, colon, secret = userinfo.partition(":")
    if at and colon:
        if password and secret:
            netloc = f"{user}:{password}@{hostport}"
        else:
            netloc = f"{user}@{hostport}" if user else hostport
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(key == "password" for key, _ in pairs):
        kept = [(k, password if k == "password" else v) for k, v in pairs]
        query = urlencode([(k, v) for k, v in kept if v is not None])
    if netloc == parts.netloc and query == parts.query:
        return url
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _value(frame: Frame) -> bytes | memoryview:
    """A frame as redis-py sends it: bytes, or a flat byte memoryview (never copied if contiguous)."""
    if isinstance(frame, bytes):
        return frame
    view = memoryview(frame)
    if view.format == "B" and view.ndim == 1:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return view.tobytes()


def _frames(fields: Mapping[bytes, bytes]) -> list[Frame]:
    # The first frame is a message header; the others may be out-of-band
    # pickle buffers, which become arrays the user expects to write to: hand
    # those over writable (redis-py gives read-only bytes), as ZeroMQ does.
    count = len(fields) - (_PEER in fields)
    frames: list[Frame] = [fields[_frame_field(i)] for i in range(count)]
    return frames[:1] + [bytearray(f) for f in frames[1:]]


def _frame_field(index: int) -> bytes:
    return _FRAME_FIELDS[index] if index < len(_FRAME_FIELDS) else b"f%d" % index


def _entry(frames: Sequence[Frame], peer: bytes | None = None) -> list[Any]:
    if not frames:
        raise ValueError("a message needs at least one frame, got an empty sequence")
    pieces: list[Any] = [] if peer is None else [_PEER, peer]
    for index, frame in enumerate(frames):
        pieces += (_frame_field(index), _value(frame))
    return pieces


class _Options:
    """The settings every hub and endpoint of one transport share."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.url = str(settings.get("url") or "redis://127.0.0.1:6379/0")
        if urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"transport.redis.url must start with redis://, rediss:// or unix://, "
                f"got {mask_url(self.url)!r}"
            )
        parts = urlsplit(self.url)
        self.username = str(settings.get("username") or "") or (parts.username or "")
        self.password = (
            str(settings.get("password") or "")
            or parts.password
            or dict(parse_qsl(parts.query)).get("password", "")
        )
        self.prefix = str(settings.get("prefix") or "scoop")
        self.maxlen = int(settings.get("maxlen") or 0)
        expire = settings.get("expire")
        self.expire = 86400 if expire is None else int(expire)
        if self.maxlen < 0 or self.expire <= 0:
            raise ConfigError(
                "transport.redis.maxlen must be 0 (no limit) or more, and "
                f"transport.redis.expire a positive number of seconds; got maxlen={self.maxlen}, "
                f"expire={self.expire}"
            )

    def client(self, url: str) -> redis.Redis:
        """A checked client for the server at ``url``, or :class:`LaunchError` naming why not."""
        # TCP keep-alive notices a server host that vanished; a Unix socket has no such option.
        tcp = {} if urlsplit(url).scheme == "unix" else {"socket_keepalive": True}
        client = redis.Redis.from_url(
            url,
            username=self.username or None,
            password=self.password or None,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            **tcp,
        )
        shown = mask_url(url)
        try:
            version = str(client.info("server").get("redis_version", "0"))
        except redis.RedisError as exc:
            client.close()
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.password:
                cause = cause.replace(self.password, "***")
            # A TLS port hangs up on a plain-text client: say what that likely means.
            dropped = any(word in cause.lower() for word in ("reset", "closed"))
            if urlsplit(url).scheme == "redis" and dropped:
                cause += " (if that port speaks TLS, use a rediss:// URL)"
            raise LaunchError(f"cannot use Redis at {shown}: {cause}") from None
        numbers = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
        if numbers < MIN_VERSION:
            client.close()
            raise LaunchError(
                f"cannot use Redis at {shown}: it is version {version}, and the redis transport "
                "needs streams, which came with Redis 5.0; upgrade the server"
            )
        return client


class _Reader:
    """One client and the one stream it reads; the part hub and endpoint share.

    ``_io_lock`` is held by whoever reads or writes (the owner thread's
    send/recv, and the end of close). ``_wake_lock`` guards the wake-up flag
    and the client's shutdown, so a wakeup() racing close() never uses a
    closed client.
    """

    def __init__(self, options: _Options, client: redis.Redis, key: bytes, describe: str) -> None:
        self._options = options
        self._client = client
        self.key = key
        self._describe = describe
        self._last_id = b"0-0"
        self._buffer: deque[Mapping[bytes, bytes]] = deque()
        self._read_ids: list[bytes] = []
        self._io_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._closed = False

    def _xadd(self, pipe: Any, key: bytes, pieces: list[Any]) -> None:
        # Never trimmed (no MAXLEN): a trimmed entry would be a lost message.
        pipe.execute_command("XADD", key, "*", *pieces)
        pipe.execute_command("EXPIRE", key, self._options.expire)

    def add(self, entries: Sequence[tuple[bytes, list[Any]]]) -> None:
        """XADD each ``(key, pieces)``, all in one round trip."""
        with self._io_lock:
            if self._closed:
                raise TransportClosed(f"{self._describe} is closed; it cannot send any more")
            pipe = self._client.pipeline(transaction=False)
            for key, pieces in entries:
                self._xadd(pipe, key, pieces)
            pipe.execute()

    def recv(self, timeout: float | None) -> Mapping[bytes, bytes] | None:
        with self._io_lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            polled = False
            while True:
                if self._closed:
                    return None
                # A pending wake-up is served before queued messages, so a
                # steady stream of messages cannot starve it.
                if self._wake_pending:
                    self._take_wakeup()
                    return None
                while self._buffer:
                    fields = self._buffer.popleft()
                    if _WAKE not in fields:
                        return fields
                if deadline is None:
                    block: int | None = BLOCK_MS
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        if polled:
                            return None
                        block = None  # timeout 0: one look, no waiting
                    else:
                        block = min(BLOCK_MS, math.ceil(remaining * 1000))
                self._read(block)
                polled = True

    def _read(self, block: int | None) -> None:
        pipe = self._client.pipeline(transaction=False)
        if self._read_ids:
            pipe.execute_command("XDEL", self.key, *self._read_ids)
        args: list[Any] = ["XREAD", "COUNT", BATCH]
        if block is not None:
            args += ["BLOCK", block]
        pipe.execute_command(*args, "STREAMS", self.key, self._last_id)
        reply = pipe.execute()[-1]
        self._read_ids = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self._last_id = entry_id
                self._read_ids.append(entry_id)
                self._buffer.append(fields)

    def _take_wakeup(self) -> None:
        with self._wake_lock:
            self._wake_pending = False

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
        pipe = self._client.pipeline(transaction=False)
        self._xadd(pipe, self.key, [_WAKE, b""])
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("%s: could not add a wake-up entry: %s", self._describe, exc)

    def close(self, keys: Sequence[bytes] = (), match: bytes | None = None) -> None:
        """Delete ``keys`` and the keys matching the glob ``match``, then disconnect."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            # Ends an XREAD blocked in another thread, so we can take _io_lock.
            self._poke()
        with self._io_lock:
            try:
                doomed = list(keys)
                if match is not None:
                    doomed += self._client.scan_iter(match=match, count=1000)
                for start in range(0, len(doomed), 1000):
                    self._client.delete(*doomed[start : start + 1000])
            except redis.RedisError as exc:
                log.warning(
                    "%s: could not delete its keys (they expire in %d s): %s",
                    self._describe,
                    self._options.expire,
                    exc,
                )
            self._buffer.clear()
            with self._wake_lock:
                self._client.close()
        log.debug("closed %s", self._describe)


class RedisHub(Hub):
    """The broker's end: reads ``{base}broker``, writes ``{base}peer:{hex}``,
    where ``hex`` is the connection id the endpoint's entries carry.

    Build it with :meth:`RedisTransport.bind`."""

    def __init__(self, reader: _Reader, address: str, base: bytes) -> None:
        self.address = address
        self._reader = reader
        self._base = base

    def send(self, peer: bytes, frames: Sequence[Frame]) -> None:
        self.send_many([(peer, frames)])

    def send_many(self, messages: Sequence[tuple[bytes, Sequence[Frame]]]) -> None:
        # A peer that is gone or never came just gets a stream that expires.
        self._reader.add(
            [
                (self._base + b"peer:" + peer.hex().encode(), _entry(frames))
                for peer, frames in messages
            ]
        )

    def recv(self, timeout: float | None) -> tuple[bytes, list[Frame]] | None:
        while True:
            fields = self._reader.recv(timeout)
            if fields is None:
                return None
            peer = fields.get(_PEER)
            if peer is not None:
                return peer, _frames(fields)
            log.debug("hub %s: dropped an entry with no sender", self.address)

    def wakeup(self) -> None:
        self._reader.wakeup()

    def close(self) -> None:
        self._reader.close(match=_glob_escape(self._base.decode()).encode() + b"*")


class RedisEndpoint(Endpoint):
    """A peer's end: writes ``{base}broker``, reads its own ``{base}peer:{hex}``,
    named by its connection id.

    Build it with :meth:`RedisTransport.connect`."""

    def __init__(self, reader: _Reader, broker_key: bytes, connection: bytes) -> None:
        self._reader = reader
        self._broker_key = broker_key
        self._connection = connection

    def send(self, frames: Sequence[Frame]) -> None:
        self.send_many([frames])

    def send_many(self, messages: Sequence[Sequence[Frame]]) -> None:
        self._reader.add(
            [(self._broker_key, _entry(frames, self._connection)) for frames in messages]
        )

    def recv(self, timeout: float | None) -> list[Frame] | None:
        fields = self._reader.recv(timeout)
        return None if fields is None else _frames(fields)

    def wakeup(self) -> None:
        self._reader.wakeup()

    def close(self) -> None:
        self._reader.close(keys=[self._reader.key])


def _split_address(address: str) -> tuple[str, str]:
    url, mark, base = address.rpartition(SEPARATOR)
    if not mark or not url or not base:
        raise ValueError(
            f"bad Redis broker address {address!r}: expected URL{SEPARATOR}PREFIX:RUN_ID, "
            "as the hub reports it"
        )
    return url, base


class RedisTransport(Transport):
    """Creates hubs and endpoints that talk through streams on one Redis server.

    ``settings`` are the ``[scoop.transport.redis]`` keys: ``url``,
    ``username``, ``password``, ``prefix``, ``maxlen`` and ``expire`` (see
    the plugin's docstring). An empty mapping means the defaults. Endpoints
    take the server and the run's keys from the hub's address, and only the
    credentials and limits from these settings.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self._options = _Options(settings or {})

    def bind(self, *, run_id: str, public: bool = False) -> RedisHub:
        # ``public`` changes nothing: every peer dials the Redis server, not us.
        options = self._options
        client = options.client(options.url)
        base = f"{options.prefix}:{run_id}:"
        address = f"{_strip_password(options.url)}{SEPARATOR}{base[:-1]}"
        reader = _Reader(options, client, (base + "broker").encode(), f"Redis hub of run {run_id}")
        log.debug("hub of run %s reads %s on %s", run_id, reader.key, mask_url(options.url))
        return RedisHub(reader, address, base.encode())

    def connect(self, address: str, *, identity: bytes) -> RedisEndpoint:
        if not isinstance(identity, bytes) or not identity:
            raise ValueError(f"an identity must be non-empty bytes, got {identity!r}")
        url, base_text = _split_address(address)
        client = self._options.client(url)
        base = (base_text + ":").encode()
        connection = secrets.token_bytes(CONNECTION_ID_SIZE)
        key = base + b"peer:" + connection.hex().encode()
        reader = _Reader(
            self._options, client, key, f"Redis endpoint {identity!r} to {mask_url(url)}"
        )
        return RedisEndpoint(reader, base + b"broker", connection)

    def open_store(
        self, *, run_id: str | None = None, address: str | None = None, identity: str
    ) -> RedisStore:
        """The run's broker in Redis (see :mod:`scoop_transport_redis.store`).

        The launcher passes ``run_id`` and gets a new run's store on the
        server of these settings; any other process passes that store's
        ``address``. ``identity`` is this process's peer name. Raises
        ValueError for a bad address and LaunchError if the server cannot
        be used."""
        from scoop_transport_redis.store import RedisStore

        return RedisStore.open(self._options, run_id=run_id, address=address, identity=identity)
