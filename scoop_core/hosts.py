"""Host lists and hostfiles: which machines a run's workers go to, and how many on each.

Pure parsing, no I/O, so the launcher, future remote launchers and the tests
share one reading of what users write. A host is ``[user@]name[:port]`` (an
IPv6 address with a port goes in brackets: ``[::1]:22``). A hostfile has one
host per line, in any of the forms users bring from SCOOP and schedulers::

    # comments and blank lines are skipped
    node1               one line per host; no count: one worker per core
    node2 4             the seed's form: a host and its number of workers
    alice@node3:2222 2  a user to log in as and an ssh port
    node4 workers=8     SCOOP's looser forms: worker=N, workers=N (and slots=N)
    node5 4 all.q@node5 UNDEFINED   an SGE $PE_HOSTFILE line: the 2nd field counts

Anything else on a line is a mistake, reported as a
:class:`~scoop_core.errors.UsageError` naming ``file:line``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scoop_core.errors import UsageError

__all__ = [
    "Host",
    "assign_workers",
    "hosts_from_list",
    "is_local",
    "parse_host",
    "parse_hostfile",
]

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})


def is_local(name: str) -> bool:
    """Whether the host ``name`` (no user, no port) is this machine."""
    return (
        name in LOCAL_NAMES
        or name.startswith("127.")
        or name in {socket.gethostname(), socket.getfqdn()}
    )


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_USER = re.compile(r"[^\s@\[\]:/]+\Z")
_COUNT_KEYS = ("worker", "workers", "slots")
_KEYED_COUNT = re.compile(r"(?P<key>[A-Za-z_]+)\s*=\s*(?P<value>\S*)\Z")


@dataclass(frozen=True)
class Host:
    """One machine of a run: whom to log in as, where, and how many workers.

    ``count`` is None when the user gave no number (one worker per core of
    that machine); ``user`` and ``port`` are None when not given."""

    user: str | None
    name: str
    port: int | None = None
    count: int | None = None

    @property
    def address(self) -> str:
        """``[user@]name[:port]``, as the user would write it."""
        name = f"[{self.name}]" if ":" in self.name and self.port is not None else self.name
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{name}{port}"

    def __str__(self) -> str:
        return self.address


def parse_host(spec: str) -> Host:
    """``[user@]name[:port]`` → :class:`Host` with no count.

    Raises ``ValueError`` saying what is wrong with ``spec``."""
    user: str | None = None
    rest = spec
    if "@" in spec:
        user, rest = spec.rsplit("@", 1)
        if not _USER.match(user):
            raise ValueError(f"{user!r} is not a user name")
    port_text: str | None = None
    if rest.startswith("["):
        name, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")) or ip_version(name) != 6:
            raise ValueError(f"{rest!r} is not an '[IPv6 address]:port'")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        name, _, port_text = rest.partition(":")
    else:
        name = rest
    if not (_NAME.match(name) or ip_version(name) == 6):
        raise ValueError(f"{name!r} is not a host name or IP address")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return Host(user, name, port)


def ip_version(name: str) -> int | None:
    """4 or 6 if ``name`` is an IP address of that version, else None (a host name)."""
    try:
        return ipaddress.ip_address(name).version
    except ValueError:
        return None


def hosts_from_list(specs: Iterable[str]) -> list[Host]:
    """The ``--hosts`` list: one entry per worker, so repeats add up
    (``a a b`` → a with 2 workers, b with 1), in order of first appearance.

    Raises :class:`UsageError` naming a malformed entry."""
    counts: dict[Host, int] = {}
    for spec in specs:
        try:
            host = parse_host(spec)
        except ValueError as exc:
            raise UsageError(f"--hosts {spec}: {exc}") from None
        counts[host] = counts.get(host, 0) + 1
    return [dataclasses.replace(host, count=count) for host, count in counts.items()]


def parse_hostfile(text: str, path: str) -> list[Host]:
    """Every host of a hostfile's ``text``, in order (see the module docstring).

    ``path`` only names the file in errors: a malformed line raises
    :class:`UsageError` as ``path:line: what is wrong, got 'the line'``."""
    hosts: list[Host] = []
    for number, line in enumerate(text.split("\n"), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            host = parse_host(fields[0])
            count = _count(fields[1:])
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: {exc}, got {line.strip()!r}") from None
        hosts.append(dataclasses.replace(host, count=count))
    return hosts


def _count(fields: Sequence[str]) -> int | None:
    """The number of workers from the fields after the host name."""
    if not fields:
        return None
    keyed = _KEYED_COUNT.match(" ".join(fields))
    if keyed:
        if keyed["key"].lower() not in _COUNT_KEYS:
            raise ValueError(
                f"unknown setting {keyed['key']!r}; expected 'host [N]' or 'host workers=N'"
            )
        return _positive(keyed["value"])
    if len(fields) in (1, 3):  # 'host N' or SGE's 'host N queue processors'
        return _positive(fields[0])
    raise ValueError("expected 'host [N]', 'host workers=N' or 'host N queue processors'")


def _positive(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"the number of workers {text!r} is not a whole number")
    value = int(text)
    if value < 1:
        raise ValueError(f"the number of workers must be at least 1, not {value}")
    return value


def assign_workers(hosts: Sequence[Host], workers: int | None, default_count: int) -> list[Host]:
    """How many workers each host runs, following the seed's rules for ``-n``.

    A host without a count gets ``default_count``. With ``workers`` None the
    counts stand. With fewer workers than the counts add up to, hosts are
    filled in order, so later hosts may get none (and are left out); with
    more, the extra workers go round-robin, one more per host in turn.
    Every returned host has a count of at least 1."""
    counts = [host.count or default_count for host in hosts]
    if workers is not None and hosts:
        total = sum(counts)
        if workers <= total:
            left = workers
            for i, count in enumerate(counts):
                counts[i] = min(count, left)
                left -= counts[i]
        else:
            for i in range(workers - total):
                counts[i % len(counts)] += 1
    return [
        dataclasses.replace(host, count=count)
        for host, count in zip(hosts, counts, strict=True)
        if count > 0
    ]
