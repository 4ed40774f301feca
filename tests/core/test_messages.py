"""Wire messages: every kind survives encode/decode, and decode lets nothing else through.

``decode`` is what stands between the network and the broker: whatever
frames arrive, it either returns a message that was signed with the run's
key or raises ProtocolError, so the broker can drop the frames and carry on.
Frames are what a transport delivers: ``bytes`` once they have crossed a
socket, the sender's own buffers (``memoryview``, ``PickleBuffer``) in
memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import pickle
import re
import struct
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoop_core import messages as m
from scoop_core.errors import ProtocolError, SerializationError
from scoop_core.interfaces import Frame

KEY = b"run-key-" * 4
OTHER_KEY = b"not-the-run-key!" * 2

FID = 3 << 32 | 17


def sign(header: bytes, payload: Sequence[bytes], key: bytes = KEY) -> list[bytes]:
    """Frames as the wire format documents them, signed without _messages' help:
    HMAC-SHA256 over the header and each payload frame, each after its 8-byte
    length, a large payload frame by its SHA-256 digest, which follows the
    mac in the last frame."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(struct.pack("!Q", len(header)))
    mac.update(header)
    digests = []
    for part in payload:
        mac.update(struct.pack("!Q", len(part)))
        if len(part) >= m.DIGEST_THRESHOLD:
            digests.append(hashlib.sha256(part).digest())
            mac.update(digests[-1])
        else:
            mac.update(part)
    return [header, *payload, mac.digest() + b"".join(digests)]


def signed(head: Any, payload: Sequence[bytes] = (), key: bytes = KEY) -> list[bytes]:
    """A correctly signed message with any header at all (as only a key holder can send)."""
    return sign(msgpack.packb(head, use_bin_type=True), payload, key)


def wire(frames: Sequence[Frame]) -> list[bytes]:
    """The frames as they come out of a socket."""
    return [bytes(memoryview(f)) for f in frames]


def plain(value: Any) -> Any:
    """``value`` with every buffer turned to bytes, so messages compare by content."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(*(plain(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (memoryview, bytearray, pickle.PickleBuffer)):
        return bytes(memoryview(value))
    return value


def decoded_or_refused(frames: Sequence[Frame], key: bytes = KEY) -> m.Message | None:
    """decode's answer; None for ProtocolError. Any other exception fails the test."""
    try:
        return m.decode(frames, key)
    except ProtocolError:
        return None


def large_frames(frames: Sequence[Frame]) -> int:
    """How many of ``frames`` are signed by their digest."""
    return sum(memoryview(f).nbytes >= m.DIGEST_THRESHOLD for f in frames)


def _samples() -> list[m.Message]:
    big = bytearray(range(256)) * 16
    huge = bytearray(range(256)) * (m.DIGEST_THRESHOLD // 256 + 1)
    return [
        m.Hello(m.WORKER, "worker-1@host", 4242, "node-7", 4),
        m.Hello(m.ROOT, "root", 1, "héte", 0),
        m.Welcome(5),
        m.Welcome(
            5,
            (
                m.Constant("table", (b"pickled", memoryview(big))),
                m.Constant("empty", ()),
                m.Constant("one", (pickle.PickleBuffer(bytearray(b"oob")),)),
            ),
        ),
        m.Submit(()),
        m.Submit(
            (
                m.Task(FID, 0, 1, (b"call",)),
                m.Task(FID + 1, FID, 2, (b"call", memoryview(big), pickle.PickleBuffer(big))),
                m.Task(FID + 2, FID, 2, ()),
                m.Task(FID + 3, 0, 0, (b"", b"")),
                m.Task(FID + 4, 0, 0, (b"call", memoryview(huge), b"", pickle.PickleBuffer(huge))),
            )
        ),
        m.Tasks((m.Task(2**64 - 1, 2**63, 1000, (memoryview(b"x"),)),)),
        m.Ready(3),
        m.Started([FID, FID + 1]),
        m.Started([]),
        m.Results(
            (
                m.Outcome(FID, m.OK, 0.25, (b"42",)),
                m.Outcome(FID + 1, m.RAISED, 1e-9, (b"exc", pickle.PickleBuffer(big))),
                m.Outcome(FID + 2, m.CANCELLED, 0.0, ()),
                m.Outcome(FID + 3, m.LOST, 0.0, ()),
                m.Outcome(FID + 4, m.OK, 0.5, (b"array", memoryview(huge))),
            )
        ),
        m.Cancel(FID),
        m.CancelReply(FID, True),
        m.CancelReply(FID, False),
        m.Recall(FID),
        m.RecallReply(FID, True),
        m.RecallReply(FID, False),
        m.Returned([FID, FID + 1], [0, 2], "worker-3"),
        m.Returned([], [], ""),
        m.Departed("worker-3"),
        m.SetConst("answer", (b"42", memoryview(big))),
        m.SetConst("nothing", ()),
        m.ConstReply("answer", ""),
        m.ConstReply("answer", "shared constant 'answer' is already defined"),
        m.Const("answer", (pickle.PickleBuffer(big),)),
        m.Const("table", (b"pickled", bytes(huge))),
        m.Bye("done"),
        m.Shutdown("the run is over"),
        m.Heartbeat(7),
        m.Refused("bad HMAC"),
        m.Spare(4),
        m.Steal(2),
        m.Welcome(5, (), "", clock=1_796_000_000_000_000_000, held=12_345, boot="b0"),
        m.Report({"role": "worker", "ran": 3, "busy": 0.5, "losses": {"worker-2": 1}}),
        m.Report({"role": "root"}, (b"\x00" * 32, b"\x01" * 8)),
        m.StatusRequest(1),
        m.StatusReply(b"\x80"),
    ]


SAMPLES = _samples()


def _sample_id(msg: m.Message) -> str:
    return type(msg).__name__


def test_the_samples_cover_every_message_kind() -> None:
    assert {type(msg) for msg in SAMPLES} == set(m.MESSAGE_TYPES.values())
    assert all(kind == cls.KIND for kind, cls in m.MESSAGE_TYPES.items())


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=_sample_id)
def test_every_message_survives_the_wire(msg: m.Message) -> None:
    back = m.decode(wire(m.encode(msg, KEY)), KEY)
    assert type(back) is type(msg)
    assert plain(back) == plain(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=_sample_id)
def test_every_message_survives_an_in_memory_hop(msg: m.Message) -> None:
    # An in-memory transport hands the sender's buffers over as they are.
    back = m.decode(m.encode(msg, KEY), KEY)
    assert type(back) is type(msg)
    assert plain(back) == plain(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=_sample_id)
def test_the_frames_follow_the_documented_layout(msg: m.Message) -> None:
    frames = wire(m.encode(msg, KEY))
    assert len(frames[-1]) == m.MAC_SIZE + m.DIGEST_SIZE * large_frames(frames[1:-1])
    assert sign(frames[0], frames[1:-1]) == frames
    head = msgpack.unpackb(frames[0], raw=False)
    assert head[:2] == [m.PROTOCOL_VERSION, msg.KIND]


def test_payload_frames_travel_apart_not_joined() -> None:
    frames = (b"a" * 10, memoryview(b"b" * 20), pickle.PickleBuffer(bytearray(b"c" * 30)))
    encoded = m.encode(m.Submit((m.Task(FID, 0, 1, frames),)), KEY)
    assert all(a is b for a, b in zip(encoded[1:-1], frames, strict=True))


def test_a_big_buffer_is_not_copied() -> None:
    big = memoryview(bytearray(64 * 2**20))
    msg = m.Submit((m.Task(FID, 0, 1, (b"head", big)),))
    tracemalloc.start()
    try:
        frames = m.encode(msg, KEY)
        back = m.decode(frames, KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames[2] is big
    assert isinstance(back, m.Submit)
    assert back.tasks[0].frames[1] is big
    assert peak < 2**20, f"encode+decode allocated {peak} bytes for a 64 MiB frame"


_names = st.text(max_size=20)
_ints = st.integers(0, 2**64 - 1)
_frames = st.lists(st.binary(max_size=40), max_size=3).map(tuple)
_tasks = st.lists(
    st.builds(
        m.Task,
        fid=_ints,
        parent=_ints,
        depth=st.integers(0, 10**6),
        frames=_frames,
        max_losses=st.integers(0, 1000),
    ),
    max_size=4,
).map(tuple)
_outcomes = st.lists(
    st.builds(
        m.Outcome,
        fid=_ints,
        status=st.sampled_from(sorted(m.STATUS_NAMES)),
        elapsed=st.floats(allow_nan=False),
        frames=_frames,
    ),
    max_size=4,
).map(tuple)
MESSAGES = st.one_of(
    st.builds(
        m.Hello,
        role=st.sampled_from([m.ROOT, m.WORKER, m.CLIENT]),
        name=_names,
        pid=st.integers(0, 2**31),
        host=_names,
        slots=st.integers(0, 1024),
    ),
    st.builds(
        m.Welcome,
        index=st.integers(1, 2**32 - 1),
        constants=st.lists(st.builds(m.Constant, name=_names, frames=_frames), max_size=3).map(
            tuple
        ),
    ),
    st.builds(m.Submit, tasks=_tasks),
    st.builds(m.Tasks, tasks=_tasks),
    st.builds(m.Ready, count=st.integers(0, 1000)),
    st.builds(m.Started, fids=st.lists(_ints, max_size=5)),
    st.builds(m.Results, outcomes=_outcomes),
    st.builds(m.Cancel, fid=_ints),
    st.builds(m.CancelReply, fid=_ints, cancelled=st.booleans()),
    st.builds(m.SetConst, name=_names, frames=_frames),
    st.builds(m.ConstReply, name=_names, error=_names),
    st.builds(m.Const, name=_names, frames=_frames),
    st.builds(m.Bye, reason=_names),
    st.builds(m.Shutdown, reason=_names),
    st.builds(m.Heartbeat, info=_ints),
    st.builds(m.Refused, reason=_names),
)


@settings(max_examples=200, deadline=None)
@given(msg=MESSAGES)
def test_any_message_survives_the_wire(msg: m.Message) -> None:
    assert m.decode(wire(m.encode(msg, KEY)), KEY) == msg


# -- what decode refuses -------------------------------------------------------------

TWO_PAYLOADS = m.Submit((m.Task(FID, 0, 1, (b"first frame", b"second frame")),))


@pytest.mark.parametrize("msg", SAMPLES, ids=_sample_id)
def test_a_message_signed_with_another_key_is_refused(msg: m.Message) -> None:
    frames = m.encode(msg, OTHER_KEY)
    with pytest.raises(ProtocolError, match="HMAC"):
        m.decode(frames, KEY)


def test_a_flipped_bit_anywhere_is_refused() -> None:
    frames = wire(m.encode(TWO_PAYLOADS, KEY))
    assert len(frames) == 4  # header, two payload frames, mac
    for index, frame in enumerate(frames):
        for pos in range(len(frame)):
            for bit in (0, 7):
                changed = bytearray(frame)
                changed[pos] ^= 1 << bit
                tampered = [*frames[:index], bytes(changed), *frames[index + 1 :]]
                with pytest.raises(ProtocolError):
                    m.decode(tampered, KEY)


@pytest.mark.parametrize(
    "recut",
    [
        lambda h, a, b, mac: [h, a[:-3], a[-3:] + b, mac],  # bytes moved to the next frame
        lambda h, a, b, mac: [h, a + b[:3], b[3:], mac],  # bytes moved to the previous one
        lambda h, a, b, mac: [h, a + b, mac],  # two frames joined
        lambda h, a, b, mac: [h, a + b, b"", mac],  # joined, count kept
        lambda h, a, b, mac: [h, a[:4], a[4:], b, mac],  # one frame split
        lambda h, a, b, mac: [h + a[:1], a[1:], b, mac],  # from the payload into the header
        lambda h, a, b, mac: [h, b, a, mac],  # swapped
        lambda h, a, b, mac: [h, a, b, b"", mac],  # an empty frame added
    ],
    ids=[
        "move-forward",
        "move-back",
        "join",
        "join-keep-count",
        "split",
        "into-header",
        "swap",
        "add-empty",
    ],
)
def test_recut_frames_are_refused(recut: Any) -> None:
    frames = wire(m.encode(TWO_PAYLOADS, KEY))
    with pytest.raises(ProtocolError, match="HMAC"):
        m.decode(recut(*frames), KEY)


@pytest.mark.parametrize(
    "frames",
    [[], [b""], [b"\x92\x01\x0f"], [m.encode(m.Heartbeat(1), KEY)[-1]]],
    ids=["none", "empty", "header-only", "mac-only"],
)
def test_fewer_than_two_frames_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError, match="at least 2 frames"):
        m.decode(frames, KEY)


@pytest.mark.parametrize("mac", [b"", b"short", b"x" * 33], ids=["empty", "short", "long"])
def test_a_mac_of_the_wrong_size_is_refused(mac: bytes) -> None:
    header, *_ = m.encode(m.Heartbeat(1), KEY)
    with pytest.raises(ProtocolError, match="HMAC"):
        m.decode([header, mac], KEY)


@pytest.mark.parametrize("kind", [0, 99, 255, -1, 2**40, "Hello", None, 1.0])
def test_an_unknown_kind_is_refused(kind: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown message kind"):
        m.decode(signed([m.PROTOCOL_VERSION, kind, "x"]), KEY)


@pytest.mark.parametrize("version", [0, m.PROTOCOL_VERSION + 1, 99, "1", None])
def test_another_protocol_version_is_refused_naming_both(version: Any) -> None:
    frames = signed([version, m.Heartbeat.KIND, 0])
    with pytest.raises(ProtocolError, match="protocol version") as info:
        m.decode(frames, KEY)
    text = str(info.value)
    assert repr(version) in text
    assert str(m.PROTOCOL_VERSION) in re.findall(r"\d+", text.replace(repr(version), "", 1))
    assert "same scoop-core version" in text


@pytest.mark.parametrize(
    "head",
    [{"version": 1, "kind": 15}, 15, "heartbeat", b"\x01\x0f", None, [], [m.PROTOCOL_VERSION]],
    ids=["map", "int", "str", "bin", "nil", "empty-list", "version-only"],
)
def test_a_header_that_is_not_a_list_of_version_and_kind_is_refused(head: Any) -> None:
    with pytest.raises(ProtocolError, match="not a list"):
        m.decode(signed(head), KEY)


_V = bytes([m.PROTOCOL_VERSION])  # a msgpack positive fixint


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x93" + _V, b"\x92" + _V + b"\x0f\x00"])
def test_a_header_that_is_not_msgpack_is_refused(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="unreadable message header"):
        m.decode(sign(header, []), KEY)


V = m.PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("head", "payload"),
    [
        ([V, m.Submit.KIND, [[FID, 0, 1, 2]]], [b"only one"]),
        ([V, m.Submit.KIND, [[FID, 0, 1, 1]]], [b"one", b"too many"]),
        ([V, m.Submit.KIND, [[FID, 0, 1, -1]]], []),
        ([V, m.Tasks.KIND, []], [b"nobody's"]),
        ([V, m.Results.KIND, [[FID, m.OK, 0.0, 3]]], [b"a", b"b"]),
        ([V, m.Results.KIND, [[FID, m.OK, 0.0, 0]]], [b"extra"]),
        ([V, m.Welcome.KIND, 1, [["c", 2]]], [b"only one"]),
        ([V, m.Heartbeat.KIND, 0], [b"unexpected"]),
        ([V, m.Cancel.KIND, FID], [b"unexpected"]),
    ],
    ids=[
        "submit-short",
        "submit-long",
        "submit-negative",
        "tasks-extra",
        "results-short",
        "results-extra",
        "welcome-short",
        "plain-with-payload",
        "cancel-with-payload",
    ],
)
def test_a_frame_count_that_does_not_match_the_header_is_refused(
    head: list[Any], payload: list[bytes]
) -> None:
    with pytest.raises(ProtocolError):
        m.decode(signed(head, payload), KEY)


def test_a_welcome_with_unclaimed_frames_is_refused() -> None:
    frames = signed([V, m.Welcome.KIND, 1, [["c", 1]]], [b"claimed", b"unclaimed"])
    assert decoded_or_refused(frames) is None


@pytest.mark.parametrize(
    "head",
    [
        [V, m.Hello.KIND, "worker", "w", 1, "host"],  # a field short
        [V, m.Hello.KIND, "worker", "w", 1, "host", 1, "place", "extra"],
        [V, m.Submit.KIND],
        [V, m.Submit.KIND, 5],
        [V, m.Submit.KIND, [[FID, 0, 1]]],
        [V, m.Submit.KIND, [[FID, 0, 1, "two"]]],
        [V, m.Results.KIND, [None]],
        [V, m.Welcome.KIND, 1],
        [V, m.Welcome.KIND, 1, [["c"]]],
        [V, m.SetConst.KIND],
        [V, m.Const.KIND, "a", "b"],
        [V, m.CancelReply.KIND, FID],
    ],
)
def test_fields_that_do_not_fit_the_kind_are_refused(head: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        m.decode(signed(head, []), KEY)


@pytest.mark.parametrize("position", ["header", "payload"])
def test_frames_that_are_not_buffers_are_refused(position: str) -> None:
    header, payload, mac = m.encode(m.SetConst("c", (b"v",)), KEY)
    frames = ["header", payload, mac] if position == "header" else [header, 42, mac]
    with pytest.raises(ProtocolError):
        m.decode(frames, KEY)


def test_a_mac_frame_that_is_not_a_buffer_is_refused() -> None:
    header, mac = m.encode(m.Heartbeat(1), KEY)
    with pytest.raises(ProtocolError):
        m.decode([header, "not a mac"], KEY)


@pytest.mark.parametrize(
    "head",
    [[V, m.Ready.KIND, "3"], [V, m.Started.KIND, 5], [V, m.Hello.KIND, "worker", "w", 1, "h", "4"]],
    ids=["ready-str", "started-int", "hello-str-slots"],
)
def test_fields_of_the_wrong_type_are_refused(head: list[Any]) -> None:
    assert decoded_or_refused(signed(head)) is None


# -- fuzz: nothing but a message or ProtocolError ------------------------------------

_raw_frames = st.lists(st.binary(max_size=80), max_size=6)


@settings(max_examples=200, deadline=None)
@given(frames=_raw_frames)
def test_random_frames_are_refused_cleanly(frames: list[bytes]) -> None:
    msg = decoded_or_refused(frames)
    if msg is not None:  # only a correctly signed message gets through
        assert sign(frames[0], frames[1:-1]) == frames


@settings(max_examples=200, deadline=None)
@given(frames=_raw_frames, mac_right=st.booleans())
def test_random_frames_with_a_random_or_valid_mac_are_refused_cleanly(
    frames: list[bytes], mac_right: bool
) -> None:
    # Signed with the run's key, random headers reach the parser itself.
    if mac_right and frames:
        frames = sign(frames[0], frames[1:])
    msg = decoded_or_refused(frames)
    assert msg is None or isinstance(msg, m.Message)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=20,
)


def _headers_of_any_shape(max_fields: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Draws a test's ``kind`` (known or not), up to ``max_fields`` header
    ``fields`` of any msgpack shape, and its ``payload`` frames."""
    return given(
        kind=st.sampled_from([*m.MESSAGE_TYPES, 0, 99]),
        fields=st.lists(_msgpack_values, max_size=max_fields),
        payload=st.lists(st.binary(max_size=10), max_size=4),
    )


@settings(max_examples=200, deadline=None)
@_headers_of_any_shape(max_fields=7)
def test_signed_headers_of_any_shape_are_parsed_or_refused_cleanly(
    kind: int, fields: list[Any], payload: list[bytes]
) -> None:
    msg = decoded_or_refused(signed([m.PROTOCOL_VERSION, kind, *fields], payload))
    assert msg is None or type(msg) is m.MESSAGE_TYPES[kind]


def _mutations(frames: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    n = len(frames)
    index = st.integers(0, n - 1)

    def flip(i: int, pos: int, bit: int) -> list[bytes]:
        frame = bytearray(frames[i])
        if frame:
            frame[pos % len(frame)] ^= 1 << bit
        return [*frames[:i], bytes(frame), *frames[i + 1 :]]

    def cut(i: int, keep: int) -> list[bytes]:
        return [*frames[:i], frames[i][:keep], *frames[i + 1 :]]

    def insert(i: int, pos: int, junk: bytes) -> list[bytes]:
        f = frames[i]
        return [*frames[:i], f[:pos] + junk + f[pos:], *frames[i + 1 :]]

    return st.one_of(
        st.integers(0, n).map(lambda k: frames[:k]),  # the message cut short
        st.integers(0, n - 1).map(lambda k: frames[:k] + frames[k + 1 :]),  # a frame lost
        index.map(lambda k: frames[:k] + [frames[k]] + frames[k:]),  # a frame doubled
        st.builds(flip, index, st.integers(0, 2**16), st.integers(0, 7)),
        st.builds(cut, index, st.integers(0, 64)),
        st.builds(insert, index, st.integers(0, 64), st.binary(min_size=1, max_size=4)),
        st.permutations(frames),
        st.binary(max_size=40).map(lambda junk: [*frames, junk]),
    )


@settings(max_examples=200, deadline=None)
@given(data=st.data(), msg=MESSAGES)
def test_mangled_messages_are_refused(data: st.DataObject, msg: m.Message) -> None:
    frames = wire(m.encode(msg, KEY))
    mangled = data.draw(_mutations(frames))
    back = decoded_or_refused(mangled)
    if mangled == frames:
        assert back == msg
    else:
        assert back is None


# -- Codec: who sent it, for whom, and was it seen before ------------------------------

WORKER = b"worker-1"


def codecs(max_size: int | None = None) -> tuple[m.Codec, m.Codec]:
    """A broker's codec and a worker's, as two processes of one run hold them."""
    return (
        m.Codec(KEY, m.BROKER_IDENTITY, max_size=max_size),
        m.Codec(KEY, WORKER, max_size=max_size),
    )


def refusal(codec: m.Codec, frames: Sequence[Frame], peer: bytes | None = None) -> str:
    """The ProtocolError message ``codec.decode`` refuses ``frames`` with."""
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames, peer)
    return str(info.value)


@pytest.mark.parametrize("msg", SAMPLES, ids=_sample_id)
def test_every_message_survives_a_codec_both_ways(msg: m.Message) -> None:
    broker, worker = codecs()
    up = broker.decode(wire(worker.encode(msg)), WORKER)
    down = worker.decode(wire(broker.encode(msg, to=WORKER)), m.BROKER_IDENTITY)
    assert plain(up) == plain(down) == plain(msg)


def test_codec_frames_carry_sender_recipient_session_and_sequence_under_the_mac() -> None:
    _, worker = codecs()
    first, second = wire(worker.encode(m.Ready(1))), wire(worker.encode(m.Ready(2)))
    for frames in (first, second):
        assert sign(frames[0], frames[1:-1]) == frames
    head1, head2 = (msgpack.unpackb(f[0], raw=False) for f in (first, second))
    assert head1[:4] == [m.PROTOCOL_VERSION, m.Ready.KIND, WORKER, m.BROKER_IDENTITY]
    assert head1[4] == head2[4] and len(head1[4]) == m.SESSION_SIZE
    assert head2[5] > head1[5]
    assert m.Codec(KEY, WORKER).session != worker.session


def test_a_replayed_message_is_refused() -> None:
    broker, worker = codecs()
    frames = wire(worker.encode(m.Submit((m.Task(FID, 0, 1, (b"call",)),))))
    assert isinstance(broker.decode(frames, WORKER), m.Submit)
    assert "replayed" in refusal(broker, frames, WORKER)
    # Later messages still get through: the replay changed nothing.
    assert broker.decode(wire(worker.encode(m.Ready(1))), WORKER) == m.Ready(1)
    assert "replayed" in refusal(broker, frames, WORKER)


def test_an_older_message_after_a_newer_one_is_refused() -> None:
    broker, worker = codecs()
    older, newer = (wire(worker.encode(m.Heartbeat(i))) for i in (1, 2))
    assert broker.decode(newer, WORKER) == m.Heartbeat(2)
    assert "reordered" in refusal(broker, older, WORKER)


def test_gaps_in_the_sequence_are_fine() -> None:
    # The broker numbers messages across all its peers: each sees a subset.
    broker, worker = codecs()
    sent = [broker.encode(m.Heartbeat(i), to=WORKER if i % 3 == 0 else b"other") for i in range(9)]
    for i in (0, 3, 6):
        assert worker.decode(wire(sent[i]), m.BROKER_IDENTITY) == m.Heartbeat(i)


def test_a_message_from_another_peer_is_refused_naming_both() -> None:
    broker, worker = codecs()
    frames = wire(worker.encode(m.Hello(m.WORKER, "worker-1", 1, "h", 1)))
    text = refusal(broker, frames, b"intruder")
    assert repr(WORKER) in text and repr(b"intruder") in text
    assert isinstance(broker.decode(frames, WORKER), m.Hello)  # the real peer still may


def test_a_message_for_another_peer_is_refused() -> None:
    broker, worker = codecs()
    other = m.Codec(KEY, b"worker-2")
    for_other = wire(broker.encode(m.Shutdown("bye"), to=b"worker-2"))
    assert repr(b"worker-2") in refusal(worker, for_other, m.BROKER_IDENTITY)
    assert other.decode(for_other, m.BROKER_IDENTITY) == m.Shutdown("bye")


def test_a_message_reflected_to_its_sender_is_refused() -> None:
    broker, _ = codecs()
    frames = wire(broker.encode(m.Tasks(()), to=WORKER))
    refusal(broker, frames, m.BROKER_IDENTITY)


def test_a_restarted_sender_starts_a_new_session_and_its_old_one_is_over() -> None:
    broker, worker = codecs()
    old = [wire(worker.encode(m.Heartbeat(i))) for i in range(5)]
    for frames in old[:3]:
        broker.decode(frames, WORKER)
    restarted = m.Codec(KEY, WORKER)  # same identity, new process: numbers start again
    assert broker.decode(wire(restarted.encode(m.Heartbeat(100))), WORKER) == m.Heartbeat(100)
    for frames in old:  # the old process's messages, seen or not, are replays now
        assert "ended session" in refusal(broker, frames, WORKER) or "replayed" in refusal(
            broker, frames, WORKER
        )
    assert broker.decode(wire(restarted.encode(m.Heartbeat(101))), WORKER) == m.Heartbeat(101)


def test_a_forgotten_peer_can_come_back_but_its_old_messages_cannot() -> None:
    broker, worker = codecs()
    bye = wire(worker.encode(m.Bye("done")))
    unsent = wire(worker.encode(m.Ready(1)))
    broker.decode(bye, WORKER)
    broker.forget(WORKER)
    assert "ended session" in refusal(broker, unsent, WORKER)
    assert "ended session" in refusal(broker, bye, WORKER)
    back = m.Codec(KEY, WORKER)
    assert isinstance(
        broker.decode(wire(back.encode(m.Hello(m.WORKER, "w", 1, "h", 1))), WORKER), m.Hello
    )
    broker.forget(b"never-seen")  # harmless


def test_memory_stays_bounded_however_often_peers_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(m, "RETIRED_SESSIONS", 256)
    broker, _ = codecs()

    def restarts(count: int) -> None:
        for i in range(count):
            peer = b"w%d" % (i % 50)
            broker.decode(wire(m.Codec(KEY, peer).encode(m.Heartbeat(i))), peer)
            if i % 7 == 0:
                broker.forget(peer)

    tracemalloc.start()
    try:
        restarts(1000)  # the memory of ended sessions is full from here on
        before, _ = tracemalloc.get_traced_memory()
        restarts(4000)  # would keep about 1 MB if ended sessions were never let go
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 200 * 1024, f"{after - before} bytes kept for ended sessions"


def test_a_message_without_the_codec_header_is_refused_cleanly() -> None:
    broker, worker = codecs()
    assert "sender" in refusal(broker, wire(m.encode(m.Ready(1), KEY)), WORKER)
    with pytest.raises(ProtocolError):
        m.decode(wire(worker.encode(m.Ready(1))), KEY)


@pytest.mark.parametrize(
    "seal",
    [
        ["w", m.BROKER_IDENTITY, b"s" * 16, 1],
        [WORKER, "broker", b"s" * 16, 1],
        [WORKER, m.BROKER_IDENTITY, b"short", 1],
        [WORKER, m.BROKER_IDENTITY, b"s" * 16, 0],
        [WORKER, m.BROKER_IDENTITY, b"s" * 16, -5],
        [WORKER, m.BROKER_IDENTITY, b"s" * 16, True],
        [WORKER, m.BROKER_IDENTITY, b"s" * 16, "1"],
    ],
    ids=[
        "text-sender",
        "text-recipient",
        "short-session",
        "seq-0",
        "seq-negative",
        "seq-bool",
        "seq-str",
    ],
)
def test_a_malformed_seal_is_refused(seal: list[Any]) -> None:
    broker, _ = codecs()
    refusal(broker, signed([V, m.Ready.KIND, *seal, 1]))


@pytest.mark.parametrize("bad", [b"", "key"])
def test_a_codec_needs_a_key(bad: Any) -> None:
    with pytest.raises(ValueError, match="key"):
        m.Codec(bad, WORKER)


@pytest.mark.parametrize("bad", [b"", "worker-1", None])
def test_a_codec_needs_a_sender(bad: Any) -> None:
    with pytest.raises(ValueError, match="sender"):
        m.Codec(KEY, bad)


# -- the size limit ---------------------------------------------------------------------

LIMIT = 4096


def _big_submit(size: int) -> m.Submit:
    return m.Submit((m.Task(FID, 0, 1, (b"call", bytes(size))),))


def test_a_message_over_the_limit_is_refused_naming_size_limit_and_setting() -> None:
    unlimited = m.Codec(KEY, WORKER)
    broker = m.Codec(KEY, m.BROKER_IDENTITY, max_size=LIMIT)
    frames = wire(unlimited.encode(_big_submit(LIMIT)))
    size = sum(len(f) for f in frames)
    text = refusal(broker, frames, WORKER)
    assert str(size) in text and str(LIMIT) in text and "max_message_size" in text


def test_the_limit_is_checked_before_the_mac() -> None:
    # A stranger's huge message is refused on its size alone: nothing is hashed.
    broker = m.Codec(KEY, m.BROKER_IDENTITY, max_size=LIMIT)
    assert "max_message_size" in refusal(broker, [b"\x90", bytes(LIMIT), b"no mac"])


def test_a_message_at_the_limit_gets_through() -> None:
    unlimited = m.Codec(KEY, WORKER)
    frames = wire(unlimited.encode(_big_submit(LIMIT)))
    size = sum(len(f) for f in frames)
    assert isinstance(m.Codec(KEY, m.BROKER_IDENTITY, max_size=size).decode(frames), m.Submit)


def test_encoding_a_message_over_the_limit_raises_a_serialization_error() -> None:
    worker = m.Codec(KEY, WORKER, max_size=LIMIT)
    with pytest.raises(SerializationError) as info:
        worker.encode(_big_submit(LIMIT))
    assert isinstance(info.value, TypeError)
    text = str(info.value)
    assert "Submit" in text and str(LIMIT) in text and "max_message_size" in text
    assert re.search(r"\b\d{4,}\b bytes, over", text)
    assert worker.encode(_big_submit(LIMIT // 2))  # smaller ones still go


def test_check_size_names_what_is_too_big() -> None:
    worker = m.Codec(KEY, WORKER, max_size=LIMIT)
    with pytest.raises(
        SerializationError, match=rf"the call to f.*{LIMIT + 1} bytes.*{LIMIT}.*max_message_size"
    ):
        worker.check_size([b"x" * LIMIT, b"!"], "the call to f")
    m.Codec(KEY, WORKER).check_size([bytes(10 * LIMIT)], "anything")  # no limit


def test_check_size_keeps_room_for_the_header_of_every_hop() -> None:
    # A call that passes the check travels alone in a message that fits, even
    # when the broker forwards it under the longest identities there are.
    worker = m.Codec(KEY, b"w" * 255, max_size=LIMIT)
    broker = m.Codec(KEY, m.BROKER_IDENTITY, max_size=LIMIT)
    limit = m.payload_limit(LIMIT)
    assert limit is not None and limit > LIMIT // 2
    worker.check_size([bytes(limit)], "the call to f")
    task = m.Task(2**64 - 1, 2**64 - 1, 2**32, (bytes(limit),), 2**32)
    assert broker.encode(m.Tasks((task,)), to=b"v" * 255)
    with pytest.raises(SerializationError, match=r"with its message header.*max_message_size"):
        worker.check_size([bytes(limit + 1)], "the call to f")


def test_check_size_keeps_room_for_the_digests_of_many_large_frames() -> None:
    # The most digests a payload can need: every frame just large enough to have one.
    max_size = 64 * m.DIGEST_THRESHOLD
    worker = m.Codec(KEY, b"w" * 255, max_size=max_size)
    broker = m.Codec(KEY, m.BROKER_IDENTITY, max_size=max_size, payload=m.RELAY)
    limit = m.payload_limit(max_size)
    assert limit is not None
    count, rest = divmod(limit, m.DIGEST_THRESHOLD)
    frames = (*[bytes(m.DIGEST_THRESHOLD)] * count, bytes(rest))
    worker.check_size(frames, "the call to f")
    task = m.Task(2**64 - 1, 2**64 - 1, 2**32, frames, 2**32)
    relayed = broker.decode(worker.encode(m.Submit((task,))), b"w" * 255)
    assert isinstance(relayed, m.Submit)
    assert broker.encode(m.Tasks(relayed.tasks), to=b"v" * 255)


@pytest.mark.parametrize("kind", ["tasks", "outcomes", "ids"])
def test_split_by_size_makes_batches_that_each_fit(kind: str) -> None:
    sizes = [1500, 10, 1500, 1500, 0, 700, 2900]
    items: list[Any]
    if kind == "tasks":
        items = [m.Task(i, 0, 1, (bytes(n),)) for i, n in enumerate(sizes)]
    elif kind == "outcomes":
        items = [m.Outcome(i, m.OK, 0.5, (bytes(n), b"")) for i, n in enumerate(sizes)]
    else:
        items = list(range(2**40, 2**40 + 2000))
    batches = m.split_by_size(items, LIMIT)
    assert [x for b in batches for x in b] == items  # all of them, in order
    assert len(batches) > 1
    codec = m.Codec(KEY, b"w" * 255, max_size=LIMIT)
    for batch in batches:
        if kind == "tasks":
            msg: m.Message = m.Tasks(tuple(batch))
        elif kind == "outcomes":
            msg = m.Results(tuple(batch))
        else:
            msg = m.Started(batch)
        assert codec.encode(msg, to=b"v" * 255)  # fits: no SerializationError


def test_split_by_size_gives_an_item_too_big_for_any_message_a_batch_of_its_own() -> None:
    small = [m.Outcome(i, m.OK, 0.0, (b"x",)) for i in range(3)]
    huge = m.Outcome(99, m.OK, 0.0, (bytes(LIMIT),))
    batches = m.split_by_size([*small[:2], huge, small[2]], LIMIT)
    assert batches == [small[:2], [huge], [small[2]]]
    assert m.split_by_size(small, None) == [small]
    assert m.split_by_size([], LIMIT) == []


@pytest.mark.parametrize("bad", [0, -1])
def test_a_limit_below_one_byte_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        m.Codec(KEY, WORKER, max_size=bad)


# -- Codec fuzz: nothing but a message or ProtocolError --------------------------------


def codec_decoded_or_refused(codec: m.Codec, frames: Sequence[Frame]) -> m.Message | None:
    try:
        return codec.decode(frames, WORKER)
    except ProtocolError:
        return None


@settings(max_examples=200, deadline=None)
@given(frames=_raw_frames, mac_right=st.booleans(), limit=st.sampled_from([None, 1, 64, 1000]))
def test_random_frames_are_refused_cleanly_by_a_codec(
    frames: list[bytes], mac_right: bool, limit: int | None
) -> None:
    if mac_right and frames:
        frames = sign(frames[0], frames[1:])
    broker = m.Codec(KEY, m.BROKER_IDENTITY, max_size=limit)
    msg = codec_decoded_or_refused(broker, frames)
    assert msg is None or isinstance(msg, m.Message)


@settings(max_examples=100, deadline=None)
@_headers_of_any_shape(max_fields=9)
def test_signed_codec_headers_of_any_shape_are_parsed_or_refused_cleanly(
    kind: int, fields: list[Any], payload: list[bytes]
) -> None:
    broker = m.Codec(KEY, m.BROKER_IDENTITY)
    seal = [WORKER, m.BROKER_IDENTITY, b"s" * m.SESSION_SIZE, 1]
    for head in ([V, kind, *fields], [V, kind, *seal, *fields]):
        msg = codec_decoded_or_refused(broker, signed(head, payload))
        assert msg is None or type(msg) is m.MESSAGE_TYPES[kind]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), msg=MESSAGES)
def test_mangled_codec_messages_are_refused(data: st.DataObject, msg: m.Message) -> None:
    broker, worker = codecs()
    frames = wire(worker.encode(msg))
    mangled = data.draw(_mutations(frames))
    back = codec_decoded_or_refused(broker, mangled)
    if mangled == frames:
        assert back == msg
    else:
        assert back is None


# -- large payloads: hashed where they are made and where they are read, relayed unread ---

ARRAY = bytes(range(256)) * (m.DIGEST_THRESHOLD // 64)


def _relayed(tamper: Callable[[list[bytes]], list[bytes]] = list) -> tuple[list[bytes], m.Task]:
    """A root's Submit of a large payload through a relaying broker's codec:
    ``(the broker's Tasks for the worker, the task as the broker holds it)``.
    ``tamper`` changes the Submit's frames on the way to the broker."""
    root, broker = m.Codec(KEY, b"root"), m.Codec(KEY, m.BROKER_IDENTITY, payload=m.RELAY)
    submit = wire(root.encode(m.Submit((m.Task(FID, 0, 1, (b"call", ARRAY, b"tail")),))))
    got = broker.decode(tamper(submit), b"root")
    assert isinstance(got, m.Submit)
    return wire(broker.encode(m.Tasks(got.tasks), to=WORKER)), got.tasks[0]


def _altered(frames: list[bytes], index: int, pos: int) -> list[bytes]:
    changed = bytearray(frames[index])
    changed[pos] ^= 1
    return [*frames[:index], bytes(changed), *frames[index + 1 :]]


def test_a_relay_passes_a_large_frame_on_by_the_digest_it_came_with() -> None:
    tasks, held = _relayed()
    assert isinstance(held.frames[1], m.Sealed)
    assert held.frames[1].digest == hashlib.sha256(ARRAY).digest()
    assert held.frames[0] == b"call" and held.frames[2] == b"tail"  # small ones stay as they are
    assert m.frames_nbytes(held.frames) == len(ARRAY) + 8
    assert tasks[-1][m.MAC_SIZE :] == held.frames[1].digest
    got = m.Codec(KEY, WORKER).decode(tasks, m.BROKER_IDENTITY)
    assert isinstance(got, m.Tasks)
    assert plain(got.tasks[0].frames) == (b"call", ARRAY, b"tail")


@pytest.mark.parametrize("pos", [0, len(ARRAY) // 2, len(ARRAY) - 1], ids=["first", "mid", "last"])
@pytest.mark.parametrize("hop", ["to-broker", "to-worker"])
def test_a_large_frame_altered_on_its_way_is_refused_where_it_is_read(hop: str, pos: int) -> None:
    if hop == "to-broker":
        # The broker does not read it, so it relays it: the worker refuses it.
        tasks, _ = _relayed(lambda frames: _altered(frames, 2, pos))
    else:
        tasks = _altered(_relayed()[0], 2, pos)
    why = refusal(m.Codec(KEY, WORKER), tasks, m.BROKER_IDENTITY)
    assert "payload digest" in why and "altered" in why
    submit = wire(m.Codec(KEY, b"root").encode(m.Submit((m.Task(FID, 0, 1, (ARRAY,)),))))
    assert "payload digest" in refusal(m.Codec(KEY, m.BROKER_IDENTITY), _altered(submit, 1, pos))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda f: _altered(f, -1, m.MAC_SIZE),  # a digest's first byte
        lambda f: _altered(f, -1, len(f[-1]) - 1),  # its last byte
        lambda f: [*f[:-1], f[-1][: m.MAC_SIZE]],  # the digest left out
        lambda f: [*f[:-1], f[-1] + hashlib.sha256(b"more").digest()],  # one digest too many
        lambda f: [*f[:-1], f[-1][:-1]],  # a digest one byte short
        lambda f: [f[0], f[1], f[2][: m.DIGEST_THRESHOLD - 1], f[3], f[4]],  # cut below the size
        lambda f: [f[0], f[1], f[2] + b"x", f[3], f[4]],  # grown
        lambda f: [f[0], f[2], f[1], f[3], f[4]],  # moved to another place
    ],
    ids=["digest-first", "digest-last", "no-digest", "extra", "short", "cut", "grown", "moved"],
)
def test_a_seal_that_does_not_match_its_large_frames_is_refused_by_the_relay(
    tamper: Callable[[list[bytes]], list[bytes]],
) -> None:
    root, broker = m.Codec(KEY, b"root"), m.Codec(KEY, m.BROKER_IDENTITY, payload=m.RELAY)
    submit = wire(root.encode(m.Submit((m.Task(FID, 0, 1, (b"call", ARRAY, b"tail")),))))
    assert "HMAC" in refusal(broker, tamper(submit), b"root")
    assert isinstance(broker.decode(submit, b"root"), m.Submit)  # the real one still passes


def test_a_large_frame_that_a_reader_checked_is_signed_by_a_digest_made_again() -> None:
    # A reader's frames are plain buffers: passing them on hashes them again.
    broker, worker = codecs()
    got = broker.decode(wire(worker.encode(m.Const("table", (ARRAY,)))), WORKER)
    assert isinstance(got, m.Const) and not isinstance(got.frames[0], m.Sealed)
    down = wire(broker.encode(got, to=WORKER))
    assert down[-1][m.MAC_SIZE :] == hashlib.sha256(ARRAY).digest()


def test_a_checking_codec_refuses_an_altered_large_frame_and_hands_over_the_others_sealed() -> None:
    root, endpoint = m.Codec(KEY, b"root"), m.Codec(KEY, m.BROKER_IDENTITY, payload=m.CHECK)
    frames = wire(root.encode(m.Results((m.Outcome(FID, m.OK, 0.1, (b"head", ARRAY)),))))
    assert "payload digest" in refusal(endpoint, _altered(frames, 2, 7), b"root")
    got = endpoint.decode(frames, b"root")
    assert isinstance(got, m.Results)
    sealed = got.outcomes[0].frames[1]
    assert isinstance(sealed, m.Sealed) and sealed.checked


def test_a_frame_handed_over_in_memory_is_hashed_again_only_if_nobody_here_checked_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, runtime = m.Codec(KEY, m.BROKER_IDENTITY), m.Codec(KEY, WORKER)
    hashed: list[int] = []
    real = m.digest_of
    monkeypatch.setattr(m, "digest_of", lambda f: hashed.append(len(f)) or real(f))
    digest = hashlib.sha256(ARRAY).digest()
    for checked in (True, False):
        task = m.Task(FID, 0, 1, (b"call", m.Sealed(ARRAY, digest, checked=checked)))
        frames = endpoint.encode(m.Tasks((task,)), to=WORKER, in_memory=True)
        got = runtime.decode(frames, m.BROKER_IDENTITY)
        assert isinstance(got, m.Tasks) and bytes(got.tasks[0].frames[1]) == ARRAY
        assert hashed == ([] if checked else [len(ARRAY)])
    # Through a socket it is a buffer like any other, checked by its reader.
    frames = wire(endpoint.encode(m.Tasks((task,)), to=WORKER))
    assert isinstance(runtime.decode(frames, m.BROKER_IDENTITY), m.Tasks)
    assert hashed == [len(ARRAY)] * 2


def test_a_codec_payload_mode_is_one_of_the_three() -> None:
    with pytest.raises(ValueError, match="payload mode"):
        m.Codec(KEY, WORKER, payload="trust")


def test_a_peer_of_another_version_is_told_both_versions_before_any_mac_check() -> None:
    # Another version may sign differently: the version is read first.
    frames = [msgpack.packb([m.PROTOCOL_VERSION + 1, 1, "anything"]), b"mac of another layout"]
    with pytest.raises(
        m.VersionMismatch, match=rf"version {m.PROTOCOL_VERSION + 1}.*speaks {m.PROTOCOL_VERSION}"
    ):
        m.Codec(KEY, b"broker").decode(frames, b"worker-1")
