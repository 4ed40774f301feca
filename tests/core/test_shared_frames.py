"""Shared frames: a large payload frame crosses to a peer on the same host as
a small handle to a memfd, and arrives whole, writable, or not at all.

Codecs here talk as a run's processes do (root → broker → worker), through
real memfds; "same host" is what their Hello and Welcome say, so a peer
elsewhere is one whose Hello names another place.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from scoop_core import messages as m
from scoop_core import shared_frames as sf
from scoop_core.errors import ProtocolError
from scoop_core.interfaces import Frame

KEY = b"run-key-" * 4
ROOT = b"root"
WORKER = b"worker-1"
BIG = sf.SHARED_THRESHOLD * 3  # bytes of the array a future carries


def wire(frames: Sequence[Frame]) -> list[bytes]:
    """Frames as they come out of a socket."""
    return [bytes(memoryview(m.buffer_of(f))) for f in frames]


def memfds() -> list[str]:
    """This process's fds open on shared frames."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{sf.MEMFD_NAME}"):
                found.append(fd)
        except OSError:
            pass  # the fd listdir itself used
    return found


def joined(peer: m.Codec, broker: m.Codec, role: str, place: str | None = None) -> None:
    """``peer`` says hello and is welcomed; with ``place``, each tells the
    other it is there, as two hosts would."""
    name = peer.sender.decode()
    if place is None:
        hello, welcome = m.Hello(role, name, 1, "h", 1), m.Welcome(1)
    else:
        hello, welcome = m.Hello(role, name, 1, "h", 1, place), m.Welcome(1, (), place)
    broker.decode(wire(peer.encode(hello)), peer.sender)
    peer.decode(wire(broker.encode(welcome, to=peer.sender)), m.BROKER_IDENTITY)


@pytest.fixture
def run() -> Iterator[tuple[m.Codec, m.Codec, m.Codec]]:
    """A root, a broker and a worker that have joined on this host; at the
    end, what nobody took is let go of."""
    assert memfds() == []
    root = m.Codec(KEY, ROOT)
    broker = m.Codec(KEY, m.BROKER_IDENTITY, payload=m.RELAY)
    worker = m.Codec(KEY, WORKER)
    joined(root, broker, m.ROOT)
    joined(worker, broker, m.WORKER)
    yield root, broker, worker
    for codec in (root, worker):
        codec.forget(m.BROKER_IDENTITY)
    for peer in (ROOT, WORKER, b"worker-far", b"root-far", b"store-endpoint"):
        broker.forget(peer)
    gc.collect()  # the broker's frames of a test that failed


def submit(array: np.ndarray) -> m.Submit:
    buffers: list[pickle.PickleBuffer] = []
    main = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    return m.Submit((m.Task(7, 0, 0, (main, *buffers)),))


def received(broker: m.Codec, frames: Sequence[Frame], sender: bytes) -> tuple[m.Task, ...]:
    """The futures of the Submit ``frames`` from ``sender``, as the broker holds them."""
    msg = broker.decode(frames, sender)
    assert isinstance(msg, m.Submit)
    return msg.tasks


def unpickled(msg: m.Message) -> np.ndarray:
    assert isinstance(msg, m.Submit | m.Tasks)
    frames = msg.tasks[0].frames
    return pickle.loads(frames[0], buffers=frames[1:])


def array() -> np.ndarray:
    return np.arange(BIG // 8, dtype=np.float64)


def largest(frames: Sequence[Frame]) -> int:
    return max(len(f) for f in wire(frames))


def test_a_large_frame_reaches_a_worker_on_this_host_as_a_handle_and_arrives_writable(run):
    root, broker, worker = run
    sent = array()
    to_broker = root.encode(submit(sent))
    assert largest(to_broker) < 1024  # the array went as a handle
    relayed = received(broker, wire(to_broker), ROOT)
    to_worker = broker.encode(m.Tasks(relayed), to=WORKER)
    assert largest(to_worker) < 1024
    got = unpickled(worker.decode(wire(to_worker), m.BROKER_IDENTITY))
    assert np.array_equal(got, sent)
    got[0] = -1.0  # as writable as an array that came through a socket
    assert sent[0] == 0.0
    again = broker.encode(m.Tasks(relayed), to=WORKER)  # the broker sends it again
    assert unpickled(worker.decode(wire(again), m.BROKER_IDENTITY))[0] == 0.0


def test_a_peer_elsewhere_gets_bytes_and_their_digest_as_before(run):
    root, broker, _ = run
    far = m.Codec(KEY, b"worker-far")
    joined(far, broker, m.WORKER, place="another-host")
    sent = array()
    relayed = received(broker, wire(root.encode(submit(sent))), ROOT)
    frames = wire(broker.encode(m.Tasks(relayed), to=b"worker-far"))
    assert largest(frames) == BIG
    assert len(frames[-1]) == m.MAC_SIZE + m.DIGEST_SIZE  # signed by its digest
    assert np.array_equal(unpickled(far.decode(frames, m.BROKER_IDENTITY)), sent)


def test_a_root_elsewhere_sends_bytes_that_the_broker_passes_on_as_a_handle_here(run):
    _, broker, worker = run
    far = m.Codec(KEY, b"root-far")
    joined(far, broker, m.ROOT, place="another-host")
    sent = array()
    to_broker = wire(far.encode(submit(sent)))
    assert largest(to_broker) == BIG
    relayed = received(broker, to_broker, b"root-far")
    to_worker = broker.encode(m.Tasks(relayed), to=WORKER)
    assert largest(to_worker) < 1024
    assert np.array_equal(unpickled(worker.decode(wire(to_worker), m.BROKER_IDENTITY)), sent)


def test_an_altered_handle_is_refused(run):
    root, broker, _ = run
    frames = wire(root.encode(submit(array())))
    handle = bytearray(frames[2])
    handle[9] ^= 1  # another fd
    frames[2] = bytes(handle)
    with pytest.raises(m.BadSeal):
        broker.decode(frames, ROOT)


def test_a_handle_with_another_token_is_refused_naming_it(run):
    root, broker, _ = run
    frames = wire(root.encode(submit(array())))
    pid, fd, size, token, slot = sf.HANDLE.unpack(frames[2])
    forged = sf.HANDLE.pack(pid, fd, size, bytes(len(token)), slot)
    # Signed with the key: only the token is wrong.
    frames = m.seal(KEY, frames[0], [frames[1], forged])
    with pytest.raises(ProtocolError, match="another token"):
        broker.decode(frames, ROOT)


def test_a_handle_whose_sender_let_go_is_refused(run):
    root, broker, _ = run
    frames = wire(root.encode(submit(array())))
    root.forget(m.BROKER_IDENTITY)  # as when its peer is gone: its memfd is closed
    with pytest.raises(ProtocolError, match="cannot be opened"):
        broker.decode(frames, ROOT)


def test_the_senders_fd_is_closed_once_its_reader_took_the_frame(run):
    root, broker, worker = run
    frames = wire(root.encode(submit(array())))
    assert len(memfds()) == 1
    relayed = received(broker, frames, ROOT)
    root.encode(m.Heartbeat(0))  # the root's next message
    assert len(memfds()) == 1  # the root's fd closed, the broker's open
    got = unpickled(
        worker.decode(wire(broker.encode(m.Tasks(relayed), to=WORKER)), m.BROKER_IDENTITY)
    )
    del relayed
    sf.sweep()
    assert memfds() == []  # the worker's mapping is no fd
    assert got[-1] == BIG // 8 - 1


def test_a_broker_near_its_open_file_limit_still_passes_frames_on(run):
    root, broker, worker = run
    count = 40
    arrays = [np.full(sf.SHARED_THRESHOLD // 8, float(k)) for k in range(count)]
    tasks = tuple(submit(a).tasks[0] for a in arrays)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for the root's fds, not for the broker's too.
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + count + 20, hard)
    )
    try:
        relayed = received(broker, wire(root.encode(m.Submit(tasks))), ROOT)
        got = worker.decode(wire(broker.encode(m.Tasks(relayed), to=WORKER)), m.BROKER_IDENTITY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(got, m.Tasks)
    for task, sent in zip(got.tasks, arrays, strict=True):
        assert np.array_equal(pickle.loads(task.frames[0], buffers=task.frames[1:]), sent)


def test_a_forked_child_holds_no_frame_of_its_parent(run):
    root, broker, _ = run
    frames = wire(root.encode(submit(array())))
    pid = os.fork()
    if pid == 0:
        os._exit(0 if memfds() == [] else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert len(received(broker, frames, ROOT)) == 1  # the parent's frame is still there


def test_a_checking_codec_neither_sends_nor_takes_handles(run):
    root, broker, _ = run
    store = m.Codec(KEY, b"store-endpoint", payload=m.CHECK)
    joined(store, broker, m.WORKER)
    relayed = received(broker, wire(root.encode(submit(array()))), ROOT)
    assert largest(broker.encode(m.Tasks(relayed), to=b"store-endpoint")) < 1024
    with pytest.raises(ProtocolError, match="store-backed endpoint"):
        store.decode(wire(broker.encode(m.Tasks(relayed), to=b"store-endpoint")))
    assert largest(store.encode(submit(array()))) == BIG


def test_frames_handed_over_in_memory_go_as_objects_and_ask_for_none(run):
    root, broker, _ = run
    welcome = broker.decode(broker.encode(m.Welcome(3), to=m.BROKER_IDENTITY, in_memory=True))
    assert isinstance(welcome, m.Welcome) and welcome.place == ""
    relayed = received(broker, wire(root.encode(submit(array()))), ROOT)
    frames = broker.encode(m.Tasks(relayed), to=ROOT, in_memory=True)
    assert len(memfds()) == 1  # the broker's own, no new one
    assert np.array_equal(unpickled(root.decode(frames, m.BROKER_IDENTITY)), array())


def test_with_the_setting_off_a_process_announces_no_place_and_sends_bytes(monkeypatch):
    monkeypatch.setenv("SCOOP_SHARED_MEMORY", "false")
    root = m.Codec(KEY, ROOT)
    broker = m.Codec(KEY, m.BROKER_IDENTITY, payload=m.RELAY)
    joined(root, broker, m.ROOT)
    assert m.Hello(m.ROOT, "root", 1, "h", 0).place == ""
    assert largest(root.encode(submit(array()))) == BIG


SENDER = """
import json, pickle, sys
import numpy as np
from scoop_core import messages as m
root = m.Codec({key!r}, b"root")
root.decode([bytes.fromhex(f) for f in json.loads(sys.stdin.readline())], m.BROKER_IDENTITY)
buffers = []
main = pickle.dumps(np.full({count}, 7.0), protocol=5, buffer_callback=buffers.append)
frames = root.encode(m.Submit((m.Task(7, 0, 0, (main, *buffers)),)))
print(json.dumps([bytes(memoryview(m.buffer_of(f))).hex() for f in frames]), flush=True)
"""


def test_a_process_that_sends_and_ends_waits_until_its_frame_is_taken():
    broker = m.Codec(KEY, m.BROKER_IDENTITY, payload=m.RELAY)
    broker.decode(wire(m.Codec(KEY, ROOT).encode(m.Hello(m.ROOT, "root", 1, "h", 0))), ROOT)
    code = textwrap.dedent(SENDER).format(key=KEY, count=BIG // 8)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        welcome = wire(broker.encode(m.Welcome(1), to=ROOT))
        child.stdin.write(json.dumps([f.hex() for f in welcome]) + "\n")
        child.stdin.close()
        frames = [bytes.fromhex(f) for f in json.loads(child.stdout.readline())]
        assert largest(frames) < 1024
        # The child's program is over: it is still there only for this frame.
        got = received(broker, frames, ROOT)
        assert child.wait(30) == 0
    array = unpickled(m.decode(m.encode(m.Submit(got), KEY), KEY))
    assert array.shape == (BIG // 8,) and (array == 7.0).all()
