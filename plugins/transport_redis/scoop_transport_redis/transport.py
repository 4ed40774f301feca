"""The Redis transport: a Redis server is the run's broker, through a store.

:class:`RedisTransport` is a :class:`~scoop_core.interfaces.StoreTransport`
only: it opens :class:`~scoop_transport_redis.store.RedisStore` objects, and
every process of a run plays its part of the broker against the server
(see :mod:`scoop_core.store_driver`). This module holds what the store
builds on: the settings, the client, and how frames become stream fields.

Why these choices:

- An entry's fields are ``f0``, ``f1``, ... the frames, as binary values:
  no re-encoding and no joining, so a large buffer reaches Redis as it is.
- Every command waits at most :data:`BLOCK_MS` at a time, so a reader
  notices a server that went away.
- No retries in redis-py: retrying an ``XADD`` that timed out could deliver
  a message twice.
- The password is never in a store's address: a peer takes the host from
  the address and the credentials from its own settings, which workers
  receive through the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.interfaces import Frame, StoreTransport

if TYPE_CHECKING:
    from scoop_transport_redis.store import RedisStore

__all__ = [
    "BLOCK_MS",
    "CONNECT_TIMEOUT",
    "RedisTransport",
    "cannot_use",
    "mask_url",
]

log = logging.getLogger("scoop.transport.redis")

CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP (or TLS, or Unix socket) connection to Redis."""

SOCKET_TIMEOUT = 60.0
"""Seconds to wait for any reply; longer than :data:`BLOCK_MS` and than moving a large frame."""

BLOCK_MS = 2000
"""The longest a single ``XREADGROUP BLOCK`` waits; ``take(None)`` returns after it."""

BATCH = 512
"""The most entries one read of a stream fetches."""

MIN_VERSION = (5, 0)
"""Streams came with Redis 5.0."""

SEPARATOR = "#"
"""Separates the Redis URL from the run's key base in a store's address."""

_FRAME_FIELDS = [b"f%d" % i for i in range(64)]


def cannot_use(shown: str, url: str, exc: redis.RedisError, cause: str) -> LaunchError:
    """The error for a server that did not answer as Redis, with what likely fixes it."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        # A TLS port hangs up on a plain-text client: say what that likely means.
        dropped = any(word in cause.lower() for word in ("reset", "closed"))
        if urlsplit(url).scheme == "redis" and dropped:
            cause += " (if that port speaks TLS, use a rediss:// URL)"
        elif not isinstance(exc, redis.AuthenticationError):
            cause = cause.rstrip(".") + (
                "; is a Redis server running there, and reachable from here? The URL comes "
                "from SCOOP_TRANSPORT_REDIS_URL or url under [scoop.transport.redis]"
            )
    return LaunchError(f"cannot use Redis at {shown}: {cause}")


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages)."""
    return _rebuild(url, "***")


def _strip_password(url: str) -> str:
    """``url`` with no password at all (for a store's address)."""
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


def _frame_field(index: int) -> bytes:
    return _FRAME_FIELDS[index] if index < len(_FRAME_FIELDS) else b"f%d" % index


def _entry(frames: Sequence[Frame]) -> list[Any]:
    """The ``XADD`` field-value pieces of one entry or letter: ``f0``, frame 0, ``f1``..."""
    if not frames:
        raise ValueError("a message needs at least one frame, got an empty sequence")
    pieces: list[Any] = []
    for index, frame in enumerate(frames):
        pieces += (_frame_field(index), _value(frame))
    return pieces


class _Options:
    """The settings every store of one transport shares."""

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
            raise cannot_use(shown, url, exc, cause) from None
        numbers = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
        if numbers < MIN_VERSION:
            client.close()
            raise LaunchError(
                f"cannot use Redis at {shown}: it is version {version}, and the redis transport "
                "needs streams, which came with Redis 5.0; upgrade the server"
            )
        return client


def _split_address(address: str) -> tuple[str, str]:
    url, mark, base = address.rpartition(SEPARATOR)
    if not mark or not url or not base:
        raise ValueError(
            f"bad Redis store address {address!r}: expected URL{SEPARATOR}PREFIX:RUN_ID, "
            "as the launcher's store reports it"
        )
    return url, base


class RedisTransport(StoreTransport):
    """Opens the stores of runs kept on one Redis server.

    ``settings`` are the ``[scoop.transport.redis]`` keys: ``url``,
    ``username``, ``password``, ``prefix``, ``maxlen`` and ``expire`` (see
    the plugin's docstring). An empty mapping means the defaults. A store
    opened by address takes the server and the run's keys from the address,
    and only the credentials and limits from these settings.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self._options = _Options(settings or {})

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
