"""The Redis Streams transport plugin: messages travel through a Redis server.

It registers the transport ``redis`` and its settings, the table
``[scoop.transport.redis]`` (environment ``SCOOP_TRANSPORT_REDIS_<KEY>``):

- ``url`` -- the Redis server: ``redis://host:port/db``, ``rediss://`` for
  TLS, ``unix:///path/to/socket``. Default ``redis://127.0.0.1:6379/0``.
- ``username`` and ``password`` -- Redis ACL credentials (a password in the
  URL works too). The password never appears in the store's address, in logs
  or on a command line: workers receive settings through the environment.
- ``prefix`` -- every key of a run lives under ``{prefix}:{run_id}:``
  (default ``scoop``), and the launcher deletes them all when the run ends.
- ``maxlen`` -- the most futures the run's queue stream holds at once (0,
  the default: no limit). A program that submits more keeps the rest in its
  own process and adds them as workers finish others: Redis's memory stays
  bounded, and no entry is ever trimmed away.
- ``expire`` -- seconds after which a key of the run expires even if nobody
  deletes it (default 86400): a safety net for runs that die.

Redis is the broker: the transport offers a
:class:`~scoop_transport_redis.store.RedisStore`, and every process of a run
plays its part of the broker against it (see :mod:`scoop_core.store_driver`).
Anyone who can write to the server can write into a run's keys: the core
signs everything of a run kept there with the run's key and checks it
before use, and the store keeps nothing the core acts on outside what it
signed. redis-py is imported only when a transport is built (see
:mod:`.transport`), so listing plugins never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoop_core.plugins import Setting, TransportPlugin, hookimpl, lazy

__all__ = ["TRANSPORT", "scoop_transports"]

TRANSPORT = TransportPlugin(
    name="redis",
    factory=lazy("scoop_transport_redis.transport:RedisTransport"),
    description="Redis Streams through a Redis server (>= 5.0) you run",
    settings=(
        Setting(
            "url",
            str,
            "redis://127.0.0.1:6379/0",
            "the Redis server: redis://host:port/db, rediss:// for TLS, unix:///path",
        ),
        Setting("username", str, "", "Redis ACL user name; empty = the default user"),
        Setting("password", str, "", "Redis password; never shown in logs or addresses"),
        Setting("prefix", str, "scoop", "every key of a run lives under {prefix}:{run_id}:"),
        Setting(
            "maxlen",
            int,
            0,
            "the most futures queued in Redis at once; more wait in the submitting "
            "process; 0 = no limit",
        ),
        Setting(
            "expire",
            int,
            86400,
            "seconds after which a key of the run expires if nobody deleted it",
        ),
    ),
)


@hookimpl
def scoop_transports() -> Iterable[TransportPlugin]:
    return (TRANSPORT,)
