"""Broker addresses seen through an SSH tunnel: pure string work, no I/O.

With ``tunnel = true`` a remote worker does not dial the broker itself but
a port that the host's sshd forwards to the launcher, which dials the broker
on the worker's behalf. The worker's ``_SCOOP_ADDRESS`` then names that port
on the worker's own loopback; everything else in the address (scheme, user,
path, query, fragment such as ZeroMQ's ``#curve=<key>`` or Redis's
``#prefix:run``) must reach the worker unchanged, since the transport reads it.

An address is ``scheme://[user@]host[:port][/path][?query][#fragment]``,
with an IPv6 host in brackets. Addresses without a network location
(``unix:///path``, ``inproc://x``) cannot be tunnelled.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "BrokerAddress", "parse_address", "tunnelled"]

DEFAULT_PORTS = {"redis": 6379, "rediss": 6379}
"""Ports assumed for schemes whose URLs may leave the port out."""

_NETLOC_ENDS = "/?#"


@dataclass(frozen=True)
class BrokerAddress:
    """An address split around its host and port: ``head + host:port + tail``.

    ``head`` is ``scheme://`` plus any ``user@``; ``tail`` is everything after
    the port (path, query, fragment); ``host`` has no brackets."""

    head: str
    host: str
    port: int
    tail: str

    def with_endpoint(self, host: str, port: int) -> str:
        """The same address with another host and port."""
        shown = f"[{host}]" if ":" in host else host
        return f"{self.head}{shown}:{port}{self.tail}"


def parse_address(address: str) -> BrokerAddress:
    """Split ``address``; raise ``ValueError`` saying why it has no host and port."""
    scheme, sep, rest = address.partition("://")
    if not sep or not scheme:
        raise ValueError(f"{address!r} is not a URL (scheme://host:port...)")
    end = min((i for i in (rest.find(c) for c in _NETLOC_ENDS) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    head = f"{scheme}://{userinfo}{at}"
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{address!r} has a malformed [IPv6] host")
        port_text: str | None = after[1:] if after else None
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
    else:
        host, port_text = hostport, None
    if not host:
        raise ValueError(f"{address!r} names no host (a socket file cannot be tunnelled)")
    if port_text is None:
        if scheme.lower() not in DEFAULT_PORTS:
            raise ValueError(f"{address!r} names no port")
        port = DEFAULT_PORTS[scheme.lower()]
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ValueError(f"{address!r} has a bad port {port_text!r}")
    return BrokerAddress(head, host, port, tail)


def tunnelled(address: str, port: int, host: str = "127.0.0.1") -> str:
    """``address`` with its host and port replaced by the forwarded ``host:port``."""
    return parse_address(address).with_endpoint(host, port)
