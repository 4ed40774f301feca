"""--tunnel's rewrite of the broker's address: only the host and port change."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scoop_launcher_ssh.address import parse_address, tunnelled


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("tcp://10.0.0.5:5555", 40001, "tcp://127.0.0.1:40001"),
        (
            "tcp://node1.example.org:5555#curve=" + "ab" * 32,
            40001,
            "tcp://127.0.0.1:40001#curve=" + "ab" * 32,
        ),
        ("tcp://[fe80::1]:5555", 7, "tcp://127.0.0.1:7"),
        ("redis://db:6380/0#scoop:run1", 9000, "redis://127.0.0.1:9000/0#scoop:run1"),
        ("redis://alice@db/2#scoop:run1", 9000, "redis://alice@127.0.0.1:9000/2#scoop:run1"),
        (
            "rediss://db:6390/0?ssl_cert_reqs=none#p:r",
            9,
            "rediss://127.0.0.1:9/0?ssl_cert_reqs=none#p:r",
        ),
    ],
)
def test_the_forwarded_port_replaces_host_and_port_and_keeps_the_rest(
    address: str, port: int, expected: str
) -> None:
    assert tunnelled(address, port) == expected


def test_redis_without_a_port_means_its_default_port() -> None:
    assert (parse_address("redis://db/0#p:r").host, parse_address("redis://db/0#p:r").port) == (
        "db",
        6379,
    )


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("unix:///run/redis.sock#p:r", "names no host"),
        ("tcp://node1", "names no port"),
        ("tcp://node1:http", "bad port"),
        ("tcp://node1:70000", "bad port"),
        ("node1:5555", "is not a URL"),
        ("tcp://[fe80::1:5555", "malformed"),
    ],
)
def test_addresses_that_cannot_be_tunnelled_say_why(address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_address(address)


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.integers(1, 65535)
tails = st.from_regex(r"(/[a-z0-9]{0,5})?(\?[a-z=&]{0,10})?(#[a-z0-9:=]{0,70})?", fullmatch=True)


@given(
    st.sampled_from(["tcp", "redis", "rediss"]),
    st.sampled_from(["", "alice@"]),
    hosts,
    ports,
    tails,
    ports,
)
def test_rewriting_changes_nothing_but_host_and_port(
    scheme: str, user: str, host: str, port: int, tail: str, forwarded: int
) -> None:
    address = f"{scheme}://{user}{host}:{port}{tail}"

    parsed = parse_address(address)
    rewritten = tunnelled(address, forwarded)

    assert (parsed.host, parsed.port) == (host.strip("[]"), port)
    assert rewritten == f"{scheme}://{user}127.0.0.1:{forwarded}{tail}"
    assert parse_address(parsed.with_endpoint(parsed.host, parsed.port)) == parsed
