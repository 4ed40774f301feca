"""Tests of scoop_core.hosts: hostfiles, --hosts lists and the seed's rules for -n."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoop_core.errors import UsageError
from scoop_core.hosts import Host, assign_workers, hosts_from_list, parse_host, parse_hostfile


def parse(text: str) -> list[Host]:
    return parse_hostfile(textwrap.dedent(text), "hosts")


def test_the_seeds_format_with_comments_and_blank_lines() -> None:
    assert parse(
        """
        # the cluster
        hostname_or_ip 4
        other_hostname

        third_hostname 2   # the small one
        10.0.0.7 1
        """
    ) == [
        Host(None, "hostname_or_ip", None, 4),
        Host(None, "other_hostname", None, None),
        Host(None, "third_hostname", None, 2),
        Host(None, "10.0.0.7", None, 1),
    ]


def test_users_ports_and_ipv6_addresses() -> None:
    assert parse(
        """
        alice@node1 2
        node2:2222
        bob@node3:22 3
        ::1 2
        [fe80::1%eth0]:2200
        """
    ) == [
        Host("alice", "node1", None, 2),
        Host(None, "node2", 2222, None),
        Host("bob", "node3", 22, 3),
        Host(None, "::1", None, 2),
        Host(None, "fe80::1%eth0", 2200, None),
    ]


def test_scoops_looser_forms_and_sge_pe_hostfile_lines() -> None:
    assert parse(
        """
        host1 worker=8
        host2 workers=3
        host3 workers = 2
        host4 slots=4
        node05.cluster 4 all.q@node05.cluster UNDEFINED
        node06.cluster 1 all.q@node06.cluster 0,1
        """
    ) == [
        Host(None, "host1", None, 8),
        Host(None, "host2", None, 3),
        Host(None, "host3", None, 2),
        Host(None, "host4", None, 4),
        Host(None, "node05.cluster", None, 4),
        Host(None, "node06.cluster", None, 1),
    ]


def test_an_empty_hostfile_has_no_hosts() -> None:
    assert parse_hostfile("", "hosts") == []
    assert parse_hostfile("# nothing yet\n\n   \n", "hosts") == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("node1 four", "'four' is not a whole number"),
        ("node1 0", "at least 1, not 0"),
        ("node1 -2", "at least 1, not -2"),
        ("node1 workers=0", "at least 1, not 0"),
        ("node1 workers=", "'' is not a whole number"),
        ("node1 cores=4", "unknown setting 'cores'"),
        ("node1 2 3", "expected 'host [N]'"),
        ("node1:port 2", "port 'port' is not a number"),
        ("node1:70000", "port '70000' is not a number"),
        ("@node1 2", "'' is not a user name"),
        ("no/de 2", "'no/de' is not a host name"),
        ("-node 2", "'-node' is not a host name"),
        ("[::1 2", "is not an '[IPv6 address]:port'"),
    ],
)
def test_a_malformed_line_is_an_error_naming_file_and_line(line: str, expected: str) -> None:
    text = f"# hosts\nnode0 2\n{line}\nnode9\n"
    with pytest.raises(UsageError) as info:
        parse_hostfile(text, "cluster/hosts")
    message = str(info.value)
    assert message.startswith("cluster/hosts:3: ")
    assert expected in message
    assert repr(line) in message


def test_host_addresses_read_back() -> None:
    for spec in ("node1", "alice@node1", "node1:22", "alice@10.0.0.1:2222", "::1", "[::1]:22"):
        assert parse_host(spec).address == spec


def test_a_hosts_list_counts_one_worker_per_entry_in_order_of_first_appearance() -> None:
    assert hosts_from_list(["machine_a", "machine_a", "machine_b", "machine_b", "machine_a"]) == [
        Host(None, "machine_a", None, 3),
        Host(None, "machine_b", None, 2),
    ]
    assert hosts_from_list(["u@a:22", "a", "u@a:22"]) == [
        Host("u", "a", 22, 2),
        Host(None, "a", None, 1),
    ]


def test_a_malformed_hosts_entry_is_named() -> None:
    with pytest.raises(UsageError, match=r"--hosts a:b:c"):
        hosts_from_list(["good", "a:b:c"])


HOSTS = [Host(None, "a", None, 2), Host(None, "b", None, None), Host(None, "c", None, 1)]


@pytest.mark.parametrize(
    ("workers", "counts"),
    [
        (None, {"a": 2, "b": 4, "c": 1}),  # no -n: the counts, 4 per core for b
        (7, {"a": 2, "b": 4, "c": 1}),
        (5, {"a": 2, "b": 3}),  # fewer: filled in order, c left out
        (1, {"a": 1}),
        (10, {"a": 3, "b": 5, "c": 2}),  # more: round-robin
        (12, {"a": 4, "b": 6, "c": 2}),
    ],
)
def test_n_follows_the_seeds_rules(workers: int | None, counts: dict[str, int]) -> None:
    assigned = assign_workers(HOSTS, workers, default_count=4)
    assert {host.name: host.count for host in assigned} == counts
    assert [host.name for host in assigned] == list(counts)


# -- generated hostfiles ------------------------------------------------------

_label = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,10}", fullmatch=True)
_names = st.one_of(
    st.builds(".".join, st.lists(_label, min_size=1, max_size=3)),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_hosts = st.builds(
    Host,
    user=st.none() | st.from_regex(r"[a-z_][a-z0-9_.-]{0,8}", fullmatch=True),
    name=_names,
    port=st.none() | st.integers(1, 65535),
    count=st.none() | st.integers(1, 10_000),
)
_blank = st.sampled_from([" ", "\t", "  ", " \t "])


@st.composite
def _line(draw: st.DrawFn, host: Host) -> str:
    """One way of writing ``host`` on a hostfile line."""
    gap = draw(_blank)
    if host.count is None:
        text = host.address
    else:
        form = draw(st.sampled_from(["plain", "worker=", "workers=", "slots=", "sge"]))
        if form == "plain":
            text = f"{host.address}{gap}{host.count}"
        elif form == "sge":
            text = f"{host.address}{gap}{host.count}{gap}all.q@{host.name}{gap}UNDEFINED"
        else:
            text = f"{host.address}{gap}{form}{host.count}"
    lead = draw(st.sampled_from(["", " ", "\t"]))
    comment = draw(st.sampled_from(["", " # a comment", "\t#", "  # 2 more # here"]))
    return lead + text + comment


@given(st.lists(_hosts, max_size=8), st.data())
def test_generated_hostfiles_parse_back_to_what_was_written(
    hosts: list[Host], data: st.DataObject
) -> None:
    lines = []
    for host in hosts:
        lines += data.draw(st.lists(st.sampled_from(["", "   ", "# comment", "#"]), max_size=2))
        lines.append(data.draw(_line(host)))
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines) + data.draw(st.sampled_from(["", newline]))
    assert parse_hostfile(text, "hosts") == hosts
