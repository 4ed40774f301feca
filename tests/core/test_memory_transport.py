"""The in-memory transport keeps the Transport contract, and what is its own."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Sequence

import pytest

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Transport
from scoop_core.testing import TRANSPORT_CHECKS, MemoryTransport, check_transport, conformance


@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda check: check.__name__)
def test_memory_transport_passes(check: Callable[[Callable[[], Transport]], None]) -> None:
    check(MemoryTransport)


def test_check_transport_runs_every_check() -> None:
    check_transport(MemoryTransport)


def test_frames_are_handed_over_uncopied() -> None:
    transport = MemoryTransport()
    hub = transport.bind(run_id="uncopied")
    endpoint = transport.connect(hub.address, identity=b"w")
    try:
        payload = pickle.PickleBuffer(bytearray(1024))
        endpoint.send([b"env", payload])
        got = hub.recv(5)
        assert got is not None
        peer, frames = got
        assert frames[1] is payload
    finally:
        endpoint.close()
        hub.close()


def test_endpoint_may_connect_before_the_hub_binds() -> None:
    transport = MemoryTransport()
    run_id = "early-worker"
    # Addresses are memory://<run_id>-<n> with a growing n; learn the next one.
    probe = transport.bind(run_id=run_id)
    probe.close()
    prefix, _, n = probe.address.rpartition("-")
    next_address = f"{prefix}-{int(n) + 1}"
    endpoint = transport.connect(next_address, identity=b"early")
    try:
        endpoint.send([b"sent before bind"])
        hub = transport.bind(run_id=run_id)
        try:
            assert hub.address == next_address
            got = hub.recv(5)
            assert got is not None and got[1] == [b"sent before bind"]
        finally:
            hub.close()
    finally:
        endpoint.close()


def test_an_endpoint_is_known_by_a_connection_id_not_by_its_identity() -> None:
    # Two endpoints given one name are two connections: the second does not
    # take over what is sent to the first (ZeroMQ's ROUTER_HANDOVER did).
    transport = MemoryTransport()
    hub = transport.bind(run_id="names")
    first = transport.connect(hub.address, identity=b"root")
    second = transport.connect(hub.address, identity=b"root")
    try:
        first.send([b"first"])
        second.send([b"second"])
        got = [hub.recv(5), hub.recv(5)]
        assert all(g is not None for g in got)
        conns = {bytes(g[1][0]): g[0] for g in got if g is not None}
        assert b"root" not in conns.values()
        assert conns[b"first"] != conns[b"second"]
        hub.send(conns[b"first"], [b"to the first"])
        assert first.recv(5) == [b"to the first"]
        assert second.recv(0) is None
    finally:
        first.close()
        second.close()
        hub.close()


def test_addresses_of_other_transports_are_refused() -> None:
    with pytest.raises(ValueError, match="memory://"):
        MemoryTransport().connect("tcp://127.0.0.1:5555", identity=b"w")


def test_an_empty_message_is_refused() -> None:
    transport = MemoryTransport()
    hub = transport.bind(run_id="empty")
    endpoint = transport.connect(hub.address, identity=b"w")
    try:
        with pytest.raises(ValueError, match="at least one frame"):
            endpoint.send([])
        with pytest.raises(ValueError, match="at least one frame"):
            hub.send(b"memory-1", [])
    finally:
        endpoint.close()
        hub.close()


class _FaultyEndpoint(Endpoint):
    """A memory endpoint with one contract violation, to show the suite catches it."""

    def __init__(self, inner: Endpoint, fault: str) -> None:
        self._inner = inner
        self._fault = fault
        self._sent = 0

    def send(self, frames: Sequence[Frame]) -> None:
        self._sent += 1
        if self._fault == "joins frames":
            frames = [b"".join(bytes(memoryview(f)) for f in frames)]
        elif self._fault == "drops a message" and self._sent == 7:
            return
        elif self._fault == "ignores send after close":
            with contextlib.suppress(TransportClosed):
                self._inner.send(frames)
            return
        self._inner.send(frames)

    def recv(self, timeout: float | None) -> list[Frame] | None:
        return self._inner.recv(timeout)

    def wakeup(self) -> None:
        if self._fault != "ignores wakeup":
            self._inner.wakeup()

    def close(self) -> None:
        self._inner.close()


class _FaultyTransport(MemoryTransport):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self._fault = fault

    def connect(  # type: ignore[override]
        self, address: str, *, identity: bytes, key: bytes | None = None
    ) -> Endpoint:
        return _FaultyEndpoint(super().connect(address, identity=identity), self._fault)


@pytest.mark.parametrize(
    ("fault", "failing_check"),
    [
        ("joins frames", "check_round_trip"),
        ("drops a message", "check_ordering"),
        ("ignores wakeup", "check_wakeup_across_threads"),
        ("ignores send after close", "check_close"),
    ],
)
def test_the_suite_names_the_broken_promise(
    monkeypatch: pytest.MonkeyPatch, fault: str, failing_check: str
) -> None:
    # A transport that never wakes would otherwise keep the suite waiting WAIT seconds.
    monkeypatch.setattr(conformance, "WAIT", 1.0)
    with pytest.raises(AssertionError, match=f"^{failing_check}: "):
        check_transport(lambda: _FaultyTransport(fault))
