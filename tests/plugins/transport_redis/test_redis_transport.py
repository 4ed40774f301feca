"""The Redis transport is a store transport that fails clearly and keeps passwords to itself.

The store's contract is checked in ``test_store.py``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from scoop_transport_redis import scoop_transports
from scoop_transport_redis.transport import RedisTransport, mask_url

from scoop_core.errors import LaunchError
from scoop_core.interfaces import StoreTransport
from scoop_core.plugins.types import TransportPlugin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_password_stays_out_of_the_address_and_errors(
    redis_server: Callable[..., AbstractContextManager[str]],
) -> None:
    secret = "s3cret-Pa55word"
    with redis_server(password=secret) as url:
        plain = url.replace(f":{secret}@", "")
        in_url = RedisTransport({"url": url}).open_store(run_id="secret-run", identity="root")
        assert secret not in in_url.address
        in_url.close(end_run=True)
        for settings in ({"url": plain, "password": "wrong-" + secret}, {"url": plain}):
            with pytest.raises(LaunchError) as failed:
                RedisTransport(settings).open_store(run_id="denied", identity="root")
            message = str(failed.value)
            assert secret not in message
            assert plain in message and "\n" not in message
        with pytest.raises(LaunchError) as failed:
            RedisTransport({"url": url.replace(secret, "wrong-" + secret)}).open_store(
                run_id="denied", identity="root"
            )
        assert secret not in str(failed.value)
        assert "***" in str(failed.value)


def test_unreachable_redis_fails_quickly_naming_the_url() -> None:
    url = f"redis://:hidden@127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        RedisTransport({"url": url}).open_store(run_id="nowhere", identity="root")
    assert time.monotonic() - start < 5
    assert "hidden" not in str(failed.value)
    assert mask_url(url) in str(failed.value)


def test_the_core_runs_redis_runs_through_the_store() -> None:
    # The core tells a store transport from a hub-based one by this alone.
    assert isinstance(RedisTransport({}), StoreTransport)


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
