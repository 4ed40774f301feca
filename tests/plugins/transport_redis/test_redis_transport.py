"""The Redis transport keeps the Transport contract, fails clearly, and cleans up after itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
import redis
from scoop_transport_redis import scoop_transports
from scoop_transport_redis.transport import RedisTransport, mask_url

from scoop_core.errors import LaunchError
from scoop_core.interfaces import Transport
from scoop_core.plugins.types import TransportPlugin
from scoop_core.testing import TRANSPORT_CHECKS, check_transport


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keys_of(url: str, pattern: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=pattern))
    finally:
        client.close()


@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda check: check.__name__)
def test_redis_transport_passes(
    check: Callable[[Callable[[], Transport]], None], redis_url: str
) -> None:
    check(lambda: RedisTransport({"url": redis_url}))


def test_check_transport_runs_every_check(redis_url: str) -> None:
    check_transport(lambda: RedisTransport({"url": redis_url, "prefix": "every-check"}))
    assert keys_of(redis_url, "every-check:*") == []


def test_a_closed_hub_leaves_no_key_of_its_run(redis_url: str) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "cleanup"})
    hub = transport.bind(run_id="run-1")
    endpoints = [transport.connect(hub.address, identity=b"peer-%d" % n) for n in range(3)]
    for endpoint in endpoints:
        endpoint.send([b"hello", b"x" * 100_000])
    for _ in endpoints:
        got = hub.recv(10)
        assert got is not None
        hub.send(got[0], [b"welcome"])
    hub.send(b"nobody", [b"lost"])
    hub.wakeup()
    endpoints[0].wakeup()
    assert keys_of(redis_url, "cleanup:run-1:*") != []
    endpoints[1].close()
    hub.close()
    assert keys_of(redis_url, "cleanup:run-1:*") == []
    for endpoint in endpoints:
        endpoint.close()
    assert keys_of(redis_url, "cleanup:*") == []


def test_every_key_expires(redis_url: str) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "expiry", "expire": 300})
    hub = transport.bind(run_id="run-1")
    endpoint = transport.connect(hub.address, identity=b"peer")
    try:
        endpoint.send([b"hello"])
        got = hub.recv(10)
        assert got is not None
        hub.send(got[0], [b"welcome"])
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match="expiry:run-1:*"))
        assert len(keys) == 2
        assert all(0 < client.ttl(key) <= 300 for key in keys)
        client.close()
    finally:
        endpoint.close()
        hub.close()


def test_the_password_stays_out_of_the_address_and_errors(
    redis_server: Callable[..., AbstractContextManager[str]],
) -> None:
    secret = "s3cret-Pa55word"
    with redis_server(password=secret) as url:
        plain = url.replace(f":{secret}@", "")
        transport = RedisTransport({"url": plain, "password": secret})
        hub = transport.bind(run_id="secret-run")
        try:
            assert secret not in hub.address
            endpoint = RedisTransport({"url": plain, "password": secret}).connect(
                hub.address, identity=b"peer"
            )
            endpoint.send([b"hello"])
            got = hub.recv(10)
            assert got is not None and got[1] == [b"hello"]
            endpoint.close()
        finally:
            hub.close()
        in_url = RedisTransport({"url": url}).bind(run_id="secret-run-2")
        assert secret not in in_url.address
        in_url.close()
        for settings in ({"url": plain, "password": "wrong-" + secret}, {"url": plain}):
            with pytest.raises(LaunchError) as failed:
                RedisTransport(settings).bind(run_id="denied")
            message = str(failed.value)
            assert secret not in message
            assert plain in message and "\n" not in message
        with pytest.raises(LaunchError) as failed:
            RedisTransport({"url": url.replace(secret, "wrong-" + secret)}).bind(run_id="denied")
        assert secret not in str(failed.value)
        assert "***" in str(failed.value)


def test_unreachable_redis_fails_quickly_naming_the_url() -> None:
    url = f"redis://:hidden@127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        RedisTransport({"url": url}).bind(run_id="nowhere")
    assert time.monotonic() - start < 5
    assert "hidden" not in str(failed.value)
    assert mask_url(url) in str(failed.value)


def test_listing_plugins_does_not_import_redis() -> None:
    code = (
        "import sys, scoop_transport_redis as p; list(p.scoop_transports()); "
        "from scoop_core.plugins.manager import get_plugin_manager; "
        "get_plugin_manager(); assert 'redis' not in sys.modules, 'redis was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plugin_registers_transport_and_settings() -> None:
    [record] = scoop_transports()
    assert isinstance(record, TransportPlugin) and record.name == "redis"
    assert record.section == "transport.redis"
    assert {s.name for s in record.settings} == {
        "url",
        "username",
        "password",
        "prefix",
        "maxlen",
        "expire",
    }
