"""The ZeroMQ transport keeps the Transport contract, listens where it should, and moves bytes unchanged.

The contract is checked on every kind of hub the transport makes: TCP with
CurveZMQ (the default), TCP with Curve and the run's key (only the run's
processes may connect), plain TCP, and the ipc socket of a run on one machine.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scoop_transport_zmq import scoop_transports
from scoop_transport_zmq import transport as zmq_transport
from scoop_transport_zmq.transport import CURVE_MARK, ZmqTransport

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.interfaces import Endpoint, Hub, Transport
from scoop_core.plugins.types import TransportPlugin
from scoop_core.testing import TRANSPORT_CHECKS, check_transport

KEY = bytes(range(32))


def make_transport() -> ZmqTransport:
    return ZmqTransport({})


class RunTransport(ZmqTransport):
    """The transport as a run uses it: hubs bound with the run's key (and,
    with ``local``, as for a run on one machine), endpoints given the key."""

    def __init__(self, settings: dict[str, Any] | None = None, *, key: bytes = KEY, **options: Any):
        super().__init__(settings)
        self.key = key
        self.options = options

    def bind(self, **kwargs: Any) -> Any:
        return super().bind(**{**kwargs, "key": self.key, **self.options})

    def connect(self, address: str, *, identity: bytes, key: bytes | None = None) -> Any:
        return super().connect(address, identity=identity, key=self.key)


KINDS: dict[str, Callable[[], Transport]] = {
    "curve": make_transport,
    "curve-with-run-key": RunTransport,
    "plain-tcp": lambda: ZmqTransport({"curve": False}),
    "ipc": lambda: RunTransport(local=True),
}


def _port(address: str) -> int:
    return int(address.partition(CURVE_MARK)[0].rpartition(":")[2])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda check: check.__name__)
def test_zmq_transport_passes(check: Callable[[Callable[[], Transport]], None], kind: str) -> None:
    check(KINDS[kind])


def test_check_transport_runs_every_check() -> None:
    check_transport(make_transport)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Hub, Endpoint, bytes]]:
    """One connected hub and endpoint, shared by the tests that only move messages."""
    transport = make_transport()
    hub = transport.bind(run_id="zmq-tests")
    endpoint = transport.connect(hub.address, identity=b"zmq-test-peer")
    try:
        endpoint.send([b"hello"])
        got = hub.recv(20)
        assert got is not None, "the hub did not hear from its endpoint within 20 s"
        yield hub, endpoint, got[0]
    finally:
        endpoint.close()
        hub.close()


def _round_trip(pair: tuple[Hub, Endpoint, bytes], frames: list[bytes]) -> None:
    hub, endpoint, peer = pair
    endpoint.send(frames)
    got = hub.recv(20)
    assert got is not None
    assert got[0] == peer
    assert [bytes(memoryview(f)) for f in got[1]] == frames
    hub.send(peer, frames)
    back = endpoint.recv(20)
    assert back is not None
    assert [bytes(memoryview(f)) for f in back] == frames


def test_frames_over_a_mebibyte_arrive_as_the_same_bytes(
    pair: tuple[Hub, Endpoint, bytes],
) -> None:
    big = bytes(range(256)) * (3 * 4096 + 1)  # just over 3 MiB
    _round_trip(pair, [b"envelope", big, big[::-1]])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.binary(max_size=4096), min_size=1, max_size=8))
def test_random_frames_round_trip_unchanged(
    pair: tuple[Hub, Endpoint, bytes], frames: list[bytes]
) -> None:
    _round_trip(pair, frames)


_SIZES = st.sampled_from(
    [0, 1, 100, zmq_transport.PACK_SMALL - 1, zmq_transport.PACK_SMALL, 70_000]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(_SIZES, min_size=1, max_size=zmq_transport.PACK_MOST * 2 + 3))
def test_messages_of_small_and_large_frames_round_trip_in_order(
    pair: tuple[Hub, Endpoint, bytes], sizes: list[int]
) -> None:
    # Small frames travel packed, large ones as they are, in their places:
    # whatever the mix, the receiver sees the frames that were sent.
    _round_trip(pair, [bytes([i % 251]) * n for i, n in enumerate(sizes)])


@pytest.mark.parametrize(
    "pack",
    [
        zmq_transport.PACK_MARK,  # no count
        zmq_transport.PACK_MARK + (2).to_bytes(4, "little") + (5).to_bytes(4, "little"),
        zmq_transport.PACK_MARK + (1).to_bytes(4, "little") + (9).to_bytes(4, "little") + b"short",
        zmq_transport.PACK_MARK
        + (2).to_bytes(4, "little")
        + (0xFFFFFFFF).to_bytes(4, "little") * 2,
        zmq_transport.PACK_MARK + (0).to_bytes(4, "little"),
    ],
)
def test_a_malformed_pack_arrives_as_it_was_sent(
    pair: tuple[Hub, Endpoint, bytes], pack: bytes
) -> None:
    # A stranger's bogus pack is not unpacked into something else: the core
    # gets the raw frames, and its checks refuse them.
    hub, endpoint, _ = pair
    endpoint._core.send([pack, b"seal"])  # type: ignore[attr-defined]
    got = hub.recv(20)
    assert got is not None
    assert [bytes(memoryview(f)) for f in got[1]] == [pack, b"seal"]


def test_received_frames_are_writable_buffers(pair: tuple[Hub, Endpoint, bytes]) -> None:
    # The core unpickles out-of-band buffers in place, which needs writable ones.
    hub, endpoint, _ = pair
    endpoint.send([b"main", bytes(100_000)])
    got = hub.recv(20)
    assert got is not None
    assert not memoryview(got[1][1]).readonly


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, or None if it has none."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_hub_for_tunnels_listens_on_loopback_only() -> None:
    hub = make_transport().bind(run_id="loopback", public=False)
    try:
        assert hub.address.startswith("tcp://127.0.0.1:")
        port = _port(hub.address)
        outside = _non_loopback_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=5).close()
    finally:
        hub.close()


def test_a_local_run_listens_on_a_socket_only_its_user_may_open() -> None:
    hub = RunTransport(local=True).bind(run_id="local", public=False)
    path = hub.address.removeprefix("ipc://")
    directory = os.path.dirname(path)
    try:
        assert hub.address.startswith("ipc:///")
        info = os.stat(directory)
        # Only the owner may enter: another user cannot reach the socket inside.
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        hub.close()
    assert not os.path.exists(directory), "the hub left its ipc directory behind"


def test_a_local_hub_removes_what_a_killed_one_left_and_nothing_else() -> None:
    # A launcher killed outright leaves its directory; the next hub removes
    # it, and leaves a live hub's alone.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from scoop_transport_zmq.transport import ZmqTransport\n"
            "hub = ZmqTransport({}).bind(run_id='killed', local=True)\n"
            "print(hub.address, flush=True)\n"
            "os._exit(0)\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    left = os.path.dirname(killed.stdout.strip().removeprefix("ipc://"))
    assert os.path.isdir(left), killed
    live = RunTransport(local=True).bind(run_id="live")
    try:
        fresh = RunTransport(local=True).bind(run_id="fresh")
        fresh.close()
        assert not os.path.exists(left), "a dead hub's directory was left"
        assert os.path.exists(live.address.removeprefix("ipc://")), (
            "a live hub's socket was removed"
        )
    finally:
        live.close()


def test_a_local_hub_has_no_tcp_port() -> None:
    # A hub's TCP listening socket would show in /proc/net/tcp; an ipc one does not.
    before = _listening_inodes()
    hub = RunTransport(local=True).bind(run_id="no-port")
    try:
        assert _listening_inodes() == before
    finally:
        hub.close()


def _listening_inodes() -> set[str]:
    """Socket inodes of TCP sockets of this machine in LISTEN state (0A)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            found |= {f.split()[9] for f in lines if f.split()[3] == "0A"}
    own = set()
    for fd in os.listdir("/proc/self/fd"):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.islink(f"/proc/self/fd/{fd}") else ""
        if target.startswith("socket:["):
            own.add(target[8:-1])
    return found & own


def test_a_public_hub_hands_out_a_dialable_host() -> None:
    hub = ZmqTransport({"broker_hostname": "127.0.0.1"}).bind(run_id="public", public=True)
    try:
        assert hub.address.startswith("tcp://127.0.0.1:")
        endpoint = make_transport().connect(hub.address, identity=b"remote")
        try:
            endpoint.send([b"hello"])
            got = hub.recv(20)
            assert got is not None
            assert [bytes(memoryview(f)) for f in got[1]] == [b"hello"]
        finally:
            endpoint.close()
    finally:
        hub.close()


def test_a_public_hub_names_this_machine_by_default() -> None:
    hub = make_transport().bind(run_id="public-default", public=True)
    try:
        assert hub.address.startswith(f"tcp://{socket.getfqdn()}:")
    finally:
        hub.close()


def test_a_configured_port_is_used_and_a_taken_one_is_reported() -> None:
    first = make_transport().bind(run_id="port")
    try:
        port = _port(first.address)
        with pytest.raises(LaunchError, match=f"{port}.*transport.zmq.port"):
            ZmqTransport({"port": port}).bind(run_id="port-again")
    finally:
        first.close()
    # The port is free again once the first hub closed.
    again = ZmqTransport({"port": port}).bind(run_id="port-reused")
    try:
        assert again.address.partition(CURVE_MARK)[0] == f"tcp://127.0.0.1:{port}"
    finally:
        again.close()


def test_a_worker_may_connect_and_send_before_the_broker_binds() -> None:
    # Without Curve: a Curve hub's key is new for each bind, so the address
    # of the probe would not do.
    plain = {"curve": False}
    probe = ZmqTransport(plain).bind(run_id="early")
    address = probe.address
    probe.close()  # now nothing listens there, until the hub below binds the same port
    endpoint = make_transport().connect(address, identity=b"early")
    try:
        endpoint.send([b"sent before bind"])
        hub = ZmqTransport({**plain, "port": _port(address)}).bind(run_id="early")
        try:
            got = hub.recv(20)
            assert got is not None, "the message sent before the bind never arrived"
            assert [bytes(memoryview(f)) for f in got[1]] == [b"sent before bind"]
        finally:
            hub.close()
    finally:
        endpoint.close()


@pytest.mark.parametrize("identity", [b"", b"\x00starts-with-zero", b"x" * 256])
def test_identities_zeromq_cannot_carry_are_refused(identity: bytes) -> None:
    with pytest.raises(ValueError, match="identity"):
        make_transport().connect("tcp://127.0.0.1:1", identity=identity)


def test_a_malformed_address_is_refused() -> None:
    with pytest.raises(ValueError, match="not-an-address"):
        make_transport().connect("not-an-address", identity=b"w")


def test_the_plugin_registers_zmq_and_its_settings() -> None:
    [plugin] = scoop_transports()
    assert isinstance(plugin, TransportPlugin)
    assert plugin.name == "zmq"
    assert isinstance(plugin.factory({}), ZmqTransport)
    assert plugin.section == "transport.zmq"
    assert {s.name: s.default for s in plugin.settings} == {
        "interface": "*",
        "port": 0,
        "broker_hostname": "",
        "max_message_size": 0,
        "curve": True,
    }


def test_listing_the_plugin_does_not_import_zmq() -> None:
    code = (
        "import sys, scoop_transport_zmq as p; p.scoop_transports(); sys.exit('zmq' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# -- CurveZMQ and the frame size bound ----------------------------------------------------

needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


def make_curve_transport() -> ZmqTransport:
    return ZmqTransport({"curve": True})


@needs_curve
def test_a_curve_hub_hands_out_its_public_key_and_a_new_one_each_run() -> None:
    first, second = make_curve_transport().bind(run_id="a"), make_curve_transport().bind(run_id="b")
    try:
        keys = []
        for hub in (first, second):
            url, mark, key = hub.address.partition(CURVE_MARK)
            assert url.startswith("tcp://127.0.0.1:") and mark
            assert len(bytes.fromhex(key)) == 32
            keys.append(key)
        assert keys[0] != keys[1]
    finally:
        first.close()
        second.close()


def _silent_for(hub: Hub, seconds: float) -> bool:
    """True if the hub receives nothing within ``seconds`` (waiting on a deadline)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if hub.recv(left) is not None:
            return False
    return True


def _raw_dealer(context: zmq.Context[zmq.Socket[bytes]], url: str) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


@needs_curve
def test_a_plain_client_cannot_talk_to_a_curve_hub() -> None:
    hub = make_curve_transport().bind(run_id="curve-plain")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        url = hub.address.partition(CURVE_MARK)[0]
        plain = _raw_dealer(context, url)
        plain.send_multipart([b"plain text"])
        assert _silent_for(hub, 1.0), "a plain client's message reached a Curve hub"
        # Nor does it hear the hub: a Curve client alongside it works as usual.
        endpoint = make_transport().connect(hub.address, identity=b"curve-client")
        try:
            endpoint.send([b"encrypted"])
            got = hub.recv(20)
            assert got is not None and [bytes(f) for f in got[1]] == [b"encrypted"]
            assert plain.poll(200) == 0
        finally:
            endpoint.close()
        plain.close()
    finally:
        context.term()
        hub.close()


@needs_curve
def test_a_curve_address_with_a_bad_key_is_refused() -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        make_transport().connect(f"tcp://127.0.0.1:1{CURVE_MARK}nothex", identity=b"w")


@needs_curve
def test_a_hub_with_the_run_key_admits_only_the_runs_processes(caplog: Any) -> None:
    hub = RunTransport().bind(run_id="zap")
    try:
        stranger = RunTransport(key=bytes(32)).connect(hub.address, identity=b"root")
        try:
            stranger.send([b"from another key"])
            member = RunTransport().connect(hub.address, identity=b"root")
            try:
                member.send([b"from the run"])
                got = hub.recv(20)
                assert got is not None and [bytes(f) for f in got[1]] == [b"from the run"]
                assert _silent_for(hub, 0.5), "a client with another key reached the hub"
                hub.send(got[0], [b"reply"])
                reply = member.recv(20)
                assert reply is not None and [bytes(f) for f in reply] == [b"reply"]
                assert stranger.recv(0.2) is None
            finally:
                member.close()
        finally:
            stranger.close()
    finally:
        hub.close()
    assert "its Curve key is not this run's" in caplog.text


def test_curve_without_libzmq_support_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zmq_transport.zmq, "has", lambda capability: capability != "curve")
    with pytest.raises(ConfigError, match=r"transport\.zmq\.curve"):
        ZmqTransport({"curve": True}).bind(run_id="no-curve", public=True)
    with pytest.raises(ConfigError, match=r"transport\.zmq\.curve"):
        make_transport().connect(f"tcp://127.0.0.1:1{CURVE_MARK}{'00' * 32}", identity=b"w")
    # A run on one machine needs no Curve.
    RunTransport(local=True).bind(run_id="ipc-without-curve").close()


def test_a_negative_frame_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_message_size"):
        ZmqTransport({"max_message_size": -1})


@pytest.mark.parametrize(
    ("settings", "bound", "fits"),
    [
        ({"max_message_size": 1024}, None, 1024),  # this plugin's own setting
        ({}, 64 * 1024, 64 * 1024),  # the core's max_message_size, handed to bind
        ({"max_message_size": 1024}, 64 * 1024, 1024),  # the lower of the two
    ],
)
def test_a_frame_over_the_hubs_limit_is_dropped_and_smaller_ones_still_arrive(
    settings: dict[str, int], bound: int | None, fits: int
) -> None:
    # Plain TCP, so that the plain socket below can talk to the hub at all.
    hub = ZmqTransport({**settings, "curve": False}).bind(
        run_id="maxmsgsize", max_message_size=bound
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        flooder = _raw_dealer(context, hub.address)
        for _ in range(20):
            flooder.send_multipart([b"envelope", bytes(fits + zmq_transport.CURVE_ALLOWANCE + 1)])
        assert _silent_for(hub, 0.5), "a frame over the limit reached the hub"
        endpoint = make_transport().connect(hub.address, identity=b"fits")
        try:
            endpoint.send([b"x" * fits, b"y" * fits])  # the bound is per frame
            got = hub.recv(20)
            assert got is not None
            assert [len(memoryview(f)) for f in got[1]] == [fits, fits]
        finally:
            endpoint.close()
        flooder.close()
    finally:
        context.term()
        hub.close()
