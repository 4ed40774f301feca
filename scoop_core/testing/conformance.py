"""A conformance suite for transports: call it from a transport plugin's tests.

Usage, in the test module of a transport plugin::

    from scoop_core.testing import check_transport

    def test_conformance():
        check_transport(lambda: MyTransport({}))

``make_transport`` is called with no arguments whenever a check needs a
transport (a check that plays a second process calls it twice), so it must
return a fresh, working transport each time. Each check is also a public
function in :data:`TRANSPORT_CHECKS`, so a test can be parametrized over
them and report each one by name.

Every check opens its own hub and endpoints and closes them, pass or fail.
Checks fail with :class:`AssertionError` and a message saying what the
contract in :mod:`scoop_core.interfaces` expected; they raise explicitly
rather than with ``assert``, so they still check under ``python -O``. A
check that waits does so against a deadline, never a fixed sleep, and a
blocking call that might hang is made in a helper thread, so a broken
transport fails with a message instead of hanging the test run.
"""

from __future__ import annotations

import array
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, TypeVar

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import Endpoint, Frame, Hub, Transport

__all__ = [
    "TRANSPORT_CHECKS",
    "check_address",
    "check_close",
    "check_close_from_another_thread",
    "check_forward_received_frames",
    "check_fresh_transport_connects",
    "check_frame_types",
    "check_large_frame",
    "check_many_endpoints",
    "check_ordering",
    "check_connection_ids",
    "check_recv_poll",
    "check_recv_timeout",
    "check_round_trip",
    "check_send_before_hub_receives",
    "check_send_to_unknown_peer",
    "check_transport",
    "check_wakeup_across_threads",
    "check_wakeup_burst",
    "check_wakeup_not_lost",
]

MakeTransport = Callable[[], Transport]

_Maker = TypeVar("_Maker")
"""What a suite's checks are given: ``make_transport``, or the store suite's ``make_store``."""

WAIT = 20.0
"""Seconds a check waits for something that should happen at once; generous for loaded CI hosts."""

QUICK = 1.0
"""Seconds within which a call that must not block has to return."""

IDENTITY = b"check-peer-\xe9"
"""Not ASCII on purpose: identities are bytes, not text."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def as_bytes(frame: Frame) -> bytes:
    return bytes(memoryview(frame))


def _short(data: bytes) -> str:
    return repr(data) if len(data) <= 40 else f"{data[:20]!r}...({len(data)} bytes)"


def _first_difference(data: bytes, want: bytes) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b),
        min(len(data), len(want)),
    )


def _expect_frames(got: Sequence[Frame] | None, expected: Sequence[bytes], what: str) -> None:
    if got is None:
        raise AssertionError(f"{what}: expected a message, got None")
    expect(
        len(got) == len(expected),
        f"{what}: expected {len(expected)} frames, got {len(got)} (messages must arrive whole)",
    )
    for index, (frame, want) in enumerate(zip(got, expected, strict=True)):
        data = as_bytes(frame)
        if data != want:
            raise AssertionError(
                f"{what}: frame {index} differs from byte {_first_difference(data, want)} on: "
                f"expected {_short(want)}, got {_short(data)}"
            )


def _run_id() -> str:
    return f"check-{uuid.uuid4().hex[:12]}"


@contextmanager
def _opened(
    make_transport: MakeTransport, identities: Sequence[bytes] = (IDENTITY,)
) -> Iterator[tuple[Hub, list[Endpoint]]]:
    """A hub and one endpoint per identity, all closed on the way out."""
    transport = make_transport()
    with ExitStack() as stack:
        hub = transport.bind(run_id=_run_id(), public=False)
        stack.callback(hub.close)
        endpoints = []
        for identity in identities:
            endpoint = transport.connect(hub.address, identity=identity)
            stack.callback(endpoint.close)
            endpoints.append(endpoint)
        yield hub, endpoints


def _hub_recv(hub: Hub, what: str) -> tuple[bytes, list[Frame]]:
    """The next message at the hub, waiting up to :data:`WAIT` seconds in all."""
    deadline = time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        got = hub.recv(remaining)
        if got is not None:
            return got
    raise AssertionError(f"{what}: the hub received nothing within {WAIT} s")


def _endpoint_recv(endpoint: Endpoint, what: str) -> list[Frame]:
    """The next message at the endpoint, waiting up to :data:`WAIT` seconds in all."""
    deadline = time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        got = endpoint.recv(remaining)
        if got is not None:
            return got
    raise AssertionError(f"{what}: the endpoint received nothing within {WAIT} s")


def _hello(hub: Hub, endpoint: Endpoint) -> bytes:
    """Have ``endpoint`` introduce itself, as peers do first; return the peer id the hub saw."""
    endpoint.send([b"hello"])
    peer, frames = _hub_recv(hub, "first message of a peer")
    _expect_frames(frames, [b"hello"], "first message of a peer")
    return peer


class BackgroundCall:
    """A call run in a daemon thread, so that a check can bound how long it blocks."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self._outcome: list[Any] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="scoop-transport-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome.append(self._call())
        except BaseException as exc:  # re-raised in the checking thread by value()
            self._error.append(exc)

    def done_within(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def value(self) -> Any:
        if self._error:
            raise self._error[0]
        return self._outcome[0]


def _in_thread(call: Callable[[], Any], seconds: float, what: str) -> Any:
    """The value of a call that must not block; fail if it takes over ``seconds``."""
    running = BackgroundCall(call)
    expect(running.done_within(seconds), f"{what}: still blocked after {seconds} s")
    return running.value()


def check_address(make_transport: MakeTransport) -> None:
    """``Hub.address`` is a non-empty string."""
    with _opened(make_transport, identities=()) as (hub, _):
        expect(
            isinstance(hub.address, str) and hub.address,
            f"Hub.address must be a non-empty str, got {hub.address!r}",
        )


def check_round_trip(make_transport: MakeTransport) -> None:
    """A multi-frame message goes endpoint → hub and back, every frame byte-equal.

    Includes an empty frame and a frame of every byte value.
    """
    frames = [b"envelope", b"", bytes(range(256)), b"x" * 1000]
    with _opened(make_transport) as (hub, [endpoint]):
        endpoint.send(frames)
        peer, got = _hub_recv(hub, "endpoint -> hub")
        _expect_frames(got, frames, "endpoint -> hub")
        hub.send(peer, list(reversed(frames)))
        _expect_frames(
            _endpoint_recv(endpoint, "hub -> endpoint"), list(reversed(frames)), "hub -> endpoint"
        )


def check_frame_types(make_transport: MakeTransport) -> None:
    """Any buffer-protocol frame is accepted: bytes, bytearray, memoryview, PickleBuffer, zmq.Frame.

    A memoryview with items wider than a byte (as numpy's out-of-band buffers
    have) arrives as its raw bytes.
    """
    doubles = array.array("d", [1.5, -2.25, 1e300])
    frames: list[Frame] = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"a memoryview slice")[2:12],
        pickle.PickleBuffer(bytearray(b"pickle buffer")),
        memoryview(doubles),
    ]
    try:
        import zmq
    except ImportError:  # zmq.Frame is only one more buffer type; test it where it exists
        pass
    else:
        frames.append(zmq.Frame(b"zmq frame"))
    expected = [as_bytes(frame) for frame in frames]
    with _opened(make_transport) as (hub, [endpoint]):
        endpoint.send(frames)
        peer, got = _hub_recv(hub, "buffer types, endpoint -> hub")
        _expect_frames(got, expected, "buffer types, endpoint -> hub")
        hub.send(peer, frames)
        _expect_frames(
            _endpoint_recv(endpoint, "buffer types, hub -> endpoint"),
            expected,
            "buffer types, hub -> endpoint",
        )


def check_forward_received_frames(make_transport: MakeTransport) -> None:
    """Frames that ``recv`` returned can be sent on as they are, to several peers.

    A broker relays payload frames from one peer to another without copying
    them, so a received frame must be a valid frame to send, more than once.
    """
    identities = [b"check-sender", b"check-first", b"check-second"]
    frames = [b"envelope", bytes(range(256)) * 1024]
    with _opened(make_transport, identities) as (hub, [sender, first, second]):
        conns = {b"check-first": _hello(hub, first), b"check-second": _hello(hub, second)}
        sender.send(frames)
        _, received = _hub_recv(hub, "a message to relay")
        for identity, endpoint in ((b"check-first", first), (b"check-second", second)):
            hub.send(conns[identity], received)
            relayed = _endpoint_recv(endpoint, f"relayed frames to {identity!r}")
            _expect_frames(relayed, frames, f"frames the hub received, relayed to {identity!r}")
            endpoint.send(relayed)
            _, back = _hub_recv(hub, f"frames {identity!r} received, sent back")
            _expect_frames(back, frames, f"frames {identity!r} received, sent back to the hub")


def check_connection_ids(make_transport: MakeTransport, quiet: float = 0.5) -> None:
    """The hub reports one connection id (bytes) per endpoint, the same for
    every message of it; two endpoints that connect with the same
    ``identity`` get two ids, and neither takes the other's messages.

    This is what keeps a process that connects under a peer's name from
    taking that peer's traffic: names are bound to connection ids by the
    broker, never by the transport.
    """
    with _opened(make_transport, [IDENTITY, IDENTITY]) as (hub, [first, second]):
        first_id = _hello(hub, first)
        second.send([b"second"])
        second_id, frames = _hub_recv(hub, "the second endpoint's first message")
        _expect_frames(frames, [b"second"], "the second endpoint's first message")
        expect(
            type(first_id) is bytes and type(second_id) is bytes,
            f"connection ids must be bytes, got {first_id!r} and {second_id!r}",
        )
        expect(
            first_id != second_id,
            f"two endpoints connected with the same identity {IDENTITY!r} got the same "
            f"connection id {first_id!r}: the later one could take the earlier one's messages",
        )
        first.send([b"first again"])
        again, frames = _hub_recv(hub, "the first endpoint's second message")
        _expect_frames(frames, [b"first again"], "the first endpoint's second message")
        expect(
            again == first_id,
            f"an endpoint's connection id changed between messages: {first_id!r}, then {again!r}",
        )
        hub.send(first_id, [b"for the first"])
        _expect_frames(
            _endpoint_recv(first, "a message to the first endpoint"),
            [b"for the first"],
            "a message to the first endpoint's connection id",
        )
        # A bounded wait that is itself the check: nothing may reach the second.
        stray = second.recv(quiet)
        expect(
            stray is None,
            f"the second endpoint of identity {IDENTITY!r} received {stray!r}, "
            "sent to the first one's connection id",
        )


def check_ordering(make_transport: MakeTransport, count: int = 2000) -> None:
    """``count`` messages each way arrive in the order sent, each one whole."""
    with _opened(make_transport) as (hub, [endpoint]):
        for seq in range(count):
            endpoint.send([b"up", seq.to_bytes(4, "big"), b"%d" % seq])
        for seq in range(count):
            peer, frames = _hub_recv(hub, f"message {seq} of {count} to the hub")
            _expect_frames(
                frames,
                [b"up", seq.to_bytes(4, "big"), b"%d" % seq],
                f"message {seq} of {count} to the hub (in order)",
            )
        for seq in range(count):
            hub.send(peer, [b"down", seq.to_bytes(4, "big"), b"%d" % seq])
        for seq in range(count):
            _expect_frames(
                _endpoint_recv(endpoint, f"message {seq} of {count} to the endpoint"),
                [b"down", seq.to_bytes(4, "big"), b"%d" % seq],
                f"message {seq} of {count} to the endpoint (in order)",
            )


def check_send_many(make_transport: MakeTransport, count: int = 300) -> None:
    """``send_many`` delivers every message, whole and in order, mixed with plain sends."""
    with _opened(make_transport) as (hub, [endpoint]):
        endpoint.send([b"first"])
        endpoint.send_many([[b"up", b"%d" % seq] for seq in range(count)])
        endpoint.send([b"last"])
        peer, frames = _hub_recv(hub, "the message before send_many")
        _expect_frames(frames, [b"first"], "the message before send_many")
        for seq in range(count):
            _, frames = _hub_recv(hub, f"message {seq} of send_many")
            _expect_frames(frames, [b"up", b"%d" % seq], f"message {seq} of send_many (in order)")
        _, frames = _hub_recv(hub, "the message after send_many")
        _expect_frames(frames, [b"last"], "the message after send_many")
        hub.send_many([(peer, [b"down", b"%d" % seq]) for seq in range(count)])
        for seq in range(count):
            _expect_frames(
                _endpoint_recv(endpoint, f"message {seq} of the hub's send_many"),
                [b"down", b"%d" % seq],
                f"message {seq} of the hub's send_many (in order)",
            )


def check_many_endpoints(make_transport: MakeTransport, peers: int = 5, each: int = 50) -> None:
    """Several endpoints at once: the hub tells them apart, and each gets only its own replies."""
    identities = [b"check-peer-%d" % n for n in range(peers)]
    with _opened(make_transport, identities) as (hub, endpoints):
        for seq in range(each):
            for identity, endpoint in zip(identities, endpoints, strict=True):
                endpoint.send([identity, b"%d" % seq])
        next_seq = dict.fromkeys(identities, 0)
        tags: dict[bytes, bytes] = {}  # connection id -> the identity its messages carry
        for _ in range(peers * each):
            peer, frames = _hub_recv(hub, "messages from several endpoints")
            tag = tags.setdefault(peer, as_bytes(frames[0]))
            expect(tag in next_seq, f"a message tagged with an unknown sender {tag!r}")
            _expect_frames(
                frames,
                [tag, b"%d" % next_seq[tag]],
                f"message {next_seq[tag]} from connection {peer!r} of {tag!r} "
                "(tagged with its sender, in order, one connection id per endpoint)",
            )
            next_seq[tag] += 1
            hub.send(peer, [b"reply to", tag, frames[1]])
        for identity, endpoint in zip(identities, endpoints, strict=True):
            for seq in range(each):
                _expect_frames(
                    _endpoint_recv(endpoint, f"reply {seq} to {identity!r}"),
                    [b"reply to", identity, b"%d" % seq],
                    f"reply {seq} to {identity!r} (only its own replies, in order)",
                )


def check_large_frame(make_transport: MakeTransport, size: int = 64 * 1024 * 1024) -> None:
    """A frame of ``size`` bytes (64 MiB by default) arrives intact, both ways."""
    # A period of 251 (a prime) catches shifted or reordered chunks that a
    # power-of-two pattern would hide.
    big = (bytes(range(251)) * (size // 251 + 1))[:size]
    with _opened(make_transport) as (hub, [endpoint]):
        endpoint.send([b"big", big])
        peer, frames = _hub_recv(hub, f"a {size}-byte frame to the hub")
        _expect_frames(frames, [b"big", big], f"a {size}-byte frame to the hub")
        del frames
        hub.send(peer, [big, b"big"])
        _expect_frames(
            _endpoint_recv(endpoint, f"a {size}-byte frame to the endpoint"),
            [big, b"big"],
            f"a {size}-byte frame to the endpoint",
        )


def check_send_before_hub_receives(make_transport: MakeTransport, count: int = 100) -> None:
    """An endpoint may send right after ``connect``, before the hub has received anything.

    Nothing is lost: every message arrives, in order.
    """
    with _opened(make_transport) as (hub, [endpoint]):
        for seq in range(count):
            endpoint.send([b"early", b"%d" % seq])
        for seq in range(count):
            _, frames = _hub_recv(hub, f"early message {seq}")
            _expect_frames(frames, [b"early", b"%d" % seq], f"early message {seq} (none lost)")


def check_recv_poll(make_transport: MakeTransport) -> None:
    """``recv(timeout=0)`` returns ``None`` at once when there is no traffic."""
    with _opened(make_transport) as (hub, [endpoint]):
        for name, recv in (("Hub", hub.recv), ("Endpoint", endpoint.recv)):
            start = time.monotonic()
            got = recv(0)
            elapsed = time.monotonic() - start
            expect(got is None, f"{name}.recv(0) with no traffic must return None, got {got!r}")
            expect(elapsed < QUICK, f"{name}.recv(0) took {elapsed:.2f} s; it must not wait")


def check_recv_timeout(make_transport: MakeTransport, timeout: float = 0.2) -> None:
    """``recv(timeout)`` with no traffic returns ``None`` after about ``timeout`` seconds."""
    with _opened(make_transport) as (hub, [endpoint]):
        for name, recv in (("Hub", hub.recv), ("Endpoint", endpoint.recv)):
            start = time.monotonic()
            got = recv(timeout)
            elapsed = time.monotonic() - start
            expect(
                got is None, f"{name}.recv({timeout}) with no traffic must return None, got {got!r}"
            )
            expect(
                timeout * 0.75 <= elapsed < 5.0,
                f"{name}.recv({timeout}) returned after {elapsed:.3f} s; it must wait about {timeout} s",
            )


def _expect_wakeup_unblocks(
    recv: Callable[[float | None], Any], wakeup: Callable[[], None], name: str
) -> None:
    running = BackgroundCall(lambda: recv(None))
    # A bounded wait that is itself a check: with no traffic and no wake-up,
    # recv(None) must not return. (If the thread has not reached recv yet,
    # the wake-up below must still not be lost.)
    if running.done_within(0.1):
        raise AssertionError(
            f"{name}.recv(None) returned {running.value()!r} with no traffic and no wakeup()"
        )
    wakeup()
    _expect_unblocked(running, name, "wakeup() from another thread")


def _expect_unblocked(running: BackgroundCall, name: str, after: str) -> None:
    """``running``, a ``recv(None)``, returns ``None`` within WAIT seconds of ``after``."""
    done = running.done_within(WAIT)
    expect(done, f"{name}.recv(None) was still blocked {WAIT} s after {after}")
    got = running.value()
    expect(got is None, f"{name}.recv(None) must return None after {after}, got {got!r}")


def check_wakeup_across_threads(make_transport: MakeTransport) -> None:
    """``wakeup()`` from one thread makes ``recv(None)`` blocked in another return ``None``."""
    with _opened(make_transport) as (hub, [endpoint]):
        _expect_wakeup_unblocks(hub.recv, hub.wakeup, "Hub")
        _expect_wakeup_unblocks(endpoint.recv, endpoint.wakeup, "Endpoint")


def check_wakeup_not_lost(make_transport: MakeTransport) -> None:
    """A ``wakeup()`` with no ``recv`` waiting makes the next ``recv(None)`` return ``None`` promptly."""
    with _opened(make_transport) as (hub, [endpoint]):
        for name, obj in (("Hub", hub), ("Endpoint", endpoint)):
            obj.wakeup()
            got = _in_thread(
                partial(obj.recv, None), WAIT, f"{name}.recv(None) after an earlier wakeup()"
            )
            expect(got is None, f"{name}.recv(None) after wakeup() must return None, got {got!r}")


def _call_many(call: Callable[[], None], times: int) -> None:
    for _ in range(times):
        call()


def check_wakeup_burst(make_transport: MakeTransport, burst: int = 1000) -> None:
    """A burst of wake-ups from another thread neither breaks recv nor hides a message."""
    with _opened(make_transport) as (hub, [endpoint]):
        peer = _hello(hub, endpoint)
        for name, obj in (("Hub", hub), ("Endpoint", endpoint)):
            _in_thread(
                partial(_call_many, obj.wakeup, burst),
                WAIT,
                f"{burst} calls of {name}.wakeup() from another thread",
            )
            if obj is hub:
                endpoint.send([b"after the burst"])
                _, frames = _hub_recv(hub, "a message after a burst of wakeups")
            else:
                hub.send(peer, [b"after the burst"])
                frames = _endpoint_recv(endpoint, "a message after a burst of wakeups")
            _expect_frames(frames, [b"after the burst"], f"{name}: a message after {burst} wakeups")


def check_close(make_transport: MakeTransport) -> None:
    """``close()`` is idempotent; after it ``recv`` returns ``None`` at once, ``send`` raises
    :class:`~scoop_core.errors.TransportClosed` and ``wakeup`` is a harmless no-op."""
    with _opened(make_transport) as (hub, [endpoint]):
        peer = _hello(hub, endpoint)
        sends: tuple[tuple[str, Any, Callable[[], None]], ...] = (
            ("Endpoint", endpoint, lambda: endpoint.send([b"late"])),
            ("Hub", hub, lambda: hub.send(peer, [b"late"])),
        )
        for name, obj, send in sends:
            obj.close()
            obj.close()
            obj.wakeup()
            got = _in_thread(partial(obj.recv, None), QUICK, f"{name}.recv(None) after close()")
            expect(got is None, f"{name}.recv after close() must return None, got {got!r}")
            try:
                send()
            except TransportClosed:
                pass
            else:
                raise AssertionError(f"{name}.send after close() must raise TransportClosed")


def check_close_from_another_thread(make_transport: MakeTransport) -> None:
    """``close()`` from another thread makes a blocked ``recv(None)`` return ``None``."""
    with _opened(make_transport) as (hub, [endpoint]):
        for name, obj in (("Endpoint", endpoint), ("Hub", hub)):
            running = BackgroundCall(partial(obj.recv, None))
            # Give recv a moment to block; closing before it starts is fine too.
            running.done_within(0.1)
            obj.close()
            _expect_unblocked(running, name, "close() from another thread")


def check_send_to_unknown_peer(make_transport: MakeTransport) -> None:
    """The hub drops, without raising or blocking, a message to a peer it never saw or that left."""
    transport = make_transport()
    with _opened(lambda: transport) as (hub, [endpoint]):
        leaving = transport.connect(hub.address, identity=b"check-leaving")
        try:
            gone = _hello(hub, leaving)
        finally:
            leaving.close()
        for peer in (b"check-nobody", gone):
            _in_thread(partial(hub.send, peer, [b"lost"]), QUICK, f"Hub.send to {peer!r}")
        # The hub still works for the peers that are there.
        peer = _hello(hub, endpoint)
        hub.send(peer, [b"still here"])
        _expect_frames(
            _endpoint_recv(endpoint, "a reply after sends to unknown peers"),
            [b"still here"],
            "a reply after sends to unknown peers",
        )


def check_fresh_transport_connects(make_transport: MakeTransport) -> None:
    """An endpoint from another transport instance reaches the hub through ``address`` alone.

    A worker process builds its own transport from the plugin's settings, so
    everything needed to connect must be in the address.
    """
    with _opened(make_transport, identities=()) as (hub, _):
        endpoint = make_transport().connect(hub.address, identity=IDENTITY)
        try:
            peer = _hello(hub, endpoint)
            hub.send(peer, [b"welcome"])
            _expect_frames(
                _endpoint_recv(endpoint, "a reply through a second transport instance"),
                [b"welcome"],
                "a reply through a second transport instance",
            )
        finally:
            endpoint.close()


TRANSPORT_CHECKS: tuple[Callable[[MakeTransport], None], ...] = (
    check_address,
    check_round_trip,
    check_frame_types,
    check_forward_received_frames,
    check_connection_ids,
    check_ordering,
    check_send_many,
    check_many_endpoints,
    check_large_frame,
    check_send_before_hub_receives,
    check_recv_poll,
    check_recv_timeout,
    check_wakeup_across_threads,
    check_wakeup_not_lost,
    check_wakeup_burst,
    check_close,
    check_close_from_another_thread,
    check_send_to_unknown_peer,
    check_fresh_transport_connects,
)
"""Every check :func:`check_transport` runs, in order; each takes ``make_transport``."""


def check_transport(make_transport: Callable[[], Transport]) -> None:
    """Check that the transports ``make_transport()`` builds keep the Transport contract.

    Runs every check in :data:`TRANSPORT_CHECKS` and raises
    :class:`AssertionError` naming the first one that fails.
    """
    run_checks(TRANSPORT_CHECKS, make_transport)


def run_checks(checks: Sequence[Callable[[_Maker], None]], make: _Maker) -> None:
    """Run ``checks`` on ``make`` in order; the first failure names its check."""
    for check in checks:
        try:
            check(make)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
