"""Large payload frames handed to a peer on the same host through shared memory.

A frame of :data:`SHARED_THRESHOLD` bytes or more, going to a peer of the
same *place* (:func:`place`: same boot of the same kernel, same pid
namespace, same user), is copied once into a Linux memfd, and the message
carries a small *handle* instead of the bytes: ``(pid, fd, size, token,
hop slot)``. The reader opens ``/proc/<pid>/fd/<fd>``, checks the token,
marks its hop slot taken and maps the frame. Why this way:

- memfd, not a named segment: a memfd is not in ``/dev/shm`` nor anywhere
  else in the file system, and the kernel frees it when its last fd and
  mapping go away, so a run that crashes or is killed (``kill -9``, any
  process) leaves nothing behind.
- The handle is covered by the message's mac (:mod:`scoop_core.messages`),
  so only a holder of the run's key can make one, and the frame needs no
  SHA-256 digest: only processes of this user can open another's fds.
- The token, in the first page of the memfd, tells this frame from
  whatever a reused pid or fd number may be now; a handle that cannot be
  opened or whose token differs is a :class:`~scoop_core.errors.ProtocolError`,
  never wrong bytes for a user.
- The sender keeps its fd until the reader has marked its slot taken
  (:func:`sweep`, on every message a codec encodes or decodes; at exit it
  waits a few seconds for what is still pending), and holds at most
  :func:`held_cap` bytes untaken: above it, frames go as bytes.
- The reader maps the frame privately (copy on write) and readable and
  writable, so an array unpickled from it is writable, as one from a socket
  is, and writing it changes nobody else's copy.
- A broker (relay) keeps its own fd in a :class:`SharedFrame` as long as it
  holds the future, and hands the next hop a handle to it (the next slot)
  without copying; for a peer elsewhere it sends the bytes.

The setting ``shared_memory`` (environment ``SCOOP_SHARED_MEMORY``, or
``_SCOOP_SHARED_MEMORY`` as a launcher passes settings to its processes)
turns this off: a process with it off announces no place, so no peer sends
it handles, and sends none.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import hashlib
import hmac
import logging
import mmap
import os
import secrets
import stat
import struct
import threading
import time
import weakref
from collections.abc import Hashable
from typing import Any

from scoop_core.errors import ProtocolError

log = logging.getLogger("scoop.shared_frames")

SHARED_THRESHOLD = 1 << 20
"""Payload frames of this many bytes or more go to a peer on the same host
as a handle to a memfd. Below it, a copy through the socket costs less than
making a memfd and mapping it."""

MEMFD_NAME = "scoop-frame"
"""The name of every memfd this module makes (``/proc/<pid>/fd`` shows
``/memfd:scoop-frame (deleted)``), so that they can be recognised."""

TOKEN_SIZE = 16
HEADER_SIZE = mmap.PAGESIZE
"""The first page of a memfd: the token, then one "taken" byte per hop slot.
The frame follows, page-aligned so that it can be mapped alone."""

SLOTS = HEADER_SIZE - TOKEN_SIZE
"""Hops a frame can make: its first, then one per handle a relay passes on."""

WAIT_AT_EXIT = 5.0
"""Seconds a process that ends waits for its readers to take what it sent."""

HANDLE = struct.Struct("!IIQ16sH")
"""A handle on the wire: pid, fd, size, token, hop slot."""

_MAP_FAILED = ctypes.c_void_p(-1).value
_OFF_WORDS = {"0", "false", "no", "off"}


def enabled() -> bool:
    """Whether this process hands frames over through shared memory: on
    Linux, unless the setting says no."""
    for var in ("_SCOOP_SHARED_MEMORY", "SCOOP_SHARED_MEMORY"):
        value = os.environ.get(var)
        if value is not None:
            return value.strip().lower() not in _OFF_WORDS
    return True


@functools.cache
def _place() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""  # no /proc as on Linux: no shared frames
    return f"{boot}:{namespace}:{os.getuid()}" if hasattr(os, "memfd_create") else ""


def place() -> str:
    """Where this process is, for shared frames: boot id, pid namespace and
    user, or ``""`` if it hands over no shared frames (turned off, or not
    Linux). Two processes can open each other's memfds if their places are
    equal and not empty."""
    return _place() if enabled() else ""


class _Memfd:
    """An fd of a frame's memfd, closed once, by :meth:`close` or when
    nothing refers to it any more."""

    __slots__ = ("__weakref__", "_closer", "fd", "size", "token")

    def __init__(self, fd: int, size: int, token: bytes) -> None:
        self.fd = fd
        self.size = size
        self.token = token
        self._closer = weakref.finalize(self, os.close, fd)
        # Not at exit: the wait for readers (atexit, below) needs the fds, and
        # the kernel closes them when the process ends.
        self._closer.atexit = False
        _open_files.add(self)

    def close(self) -> None:
        self._closer()

    def taken(self, slot: int) -> bool:
        """Whether the reader of hop ``slot`` has opened the frame."""
        try:
            return os.pread(self.fd, 1, TOKEN_SIZE + slot) == b"\x01"
        except OSError:
            return True  # our fd is gone (closed after a fork): nothing to keep


_open_files: weakref.WeakSet[_Memfd] = weakref.WeakSet()


def _close_all_in_child() -> None:
    """A forked child must neither keep the parent's memfds alive nor think
    it sent them."""
    for f in list(_open_files):
        f.close()
    _pending.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_all_in_child)


def _seals() -> int:
    """The seals of a frame's memfd: it may neither shrink (which would crash
    a reader that maps it, SIGBUS) nor grow, nor take other seals. Linux
    only, as is this module's use (imported here, not on other systems)."""
    import fcntl

    return fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _create(buffer: Any) -> _Memfd:
    """A new memfd holding ``buffer`` after its header page."""
    import fcntl

    view = memoryview(buffer).cast("B")
    size = view.nbytes
    token = secrets.token_bytes(TOKEN_SIZE)
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, HEADER_SIZE + size)
        os.pwrite(fd, token, 0)
        done = 0
        while done < size:
            done += os.pwrite(fd, view[done:], HEADER_SIZE + done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _seals())
    except BaseException:
        os.close(fd)
        raise
    return _Memfd(fd, size, token)


def _handle(f: _Memfd, slot: int) -> bytes:
    return HANDLE.pack(os.getpid(), f.fd, f.size, f.token, slot)


def _open(handle: bytes) -> tuple[_Memfd, int]:
    """Open the memfd ``handle`` names and mark its hop slot taken; the fd
    is ours then. ProtocolError names what went wrong."""
    import fcntl

    if type(handle) is not bytes or len(handle) != HANDLE.size:
        raise ProtocolError(f"a shared frame's handle must be {HANDLE.size} bytes")
    pid, fd, size, token, slot = HANDLE.unpack(handle)
    if size < SHARED_THRESHOLD or slot >= SLOTS:
        raise ProtocolError(f"a shared frame's handle is malformed (size {size}, slot {slot})")
    path = f"/proc/{pid}/fd/{fd}"
    try:
        if not os.readlink(path).startswith(f"/memfd:{MEMFD_NAME}"):
            raise ProtocolError(f"a shared frame of process {pid} is gone: its fd is another file")
        own = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        gone = exc.errno == errno.ENOENT
        raise ProtocolError(
            f"a shared frame of process {pid} cannot be opened ({exc.strerror})"
            + (": its sender ended, or let go of it, before it was taken" if gone else "")
        ) from None
    f = _Memfd(own, size, token)
    try:
        info = os.fstat(own)
        if not stat.S_ISREG(info.st_mode) or info.st_size != HEADER_SIZE + size:
            raise ProtocolError(f"a shared frame of process {pid} is not the size its handle says")
        if fcntl.fcntl(own, fcntl.F_GET_SEALS) & _seals() != _seals():
            raise ProtocolError(f"a shared frame of process {pid} is not sealed against resizing")
        if not hmac.compare_digest(os.pread(own, TOKEN_SIZE, 0), token):
            raise ProtocolError(
                f"a shared frame of process {pid} has another token: its fd now holds another frame"
            )
        os.pwrite(own, b"\x01", TOKEN_SIZE + slot)
    except OSError as exc:
        f.close()
        raise ProtocolError(f"a shared frame of process {pid} cannot be read: {exc}") from None
    except BaseException:
        f.close()
        raise
    return f, slot


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _map(f: _Memfd, *, writable: bool) -> memoryview:
    """The frame's bytes: a private writable (copy on write) mapping, or a
    shared read-only one, unmapped once nothing uses it. Not ``mmap.mmap``:
    before Python 3.13 it keeps a copy of the fd as long as the mapping,
    and a reader must hold no fd of a frame it took."""
    libc = _libc()
    if writable:
        flags, prot = mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE
    else:
        flags, prot = mmap.MAP_SHARED, mmap.PROT_READ
    address = libc.mmap(None, f.size, prot, flags, f.fd, HEADER_SIZE)
    if address is None or address == _MAP_FAILED:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot map a shared frame of {f.size} bytes: {os.strerror(errno)}")
    pages = (ctypes.c_ubyte * f.size).from_address(address)
    unmap = weakref.finalize(pages, libc.munmap, address, f.size)
    unmap.atexit = False  # objects still in use at exit may live in it
    view = memoryview(pages).cast("B")
    return view if writable else view.toreadonly()


def read(handle: bytes) -> memoryview:
    """The frame ``handle`` names, mapped privately and writable; the fd
    opened for it is closed (the mapping keeps the memory)."""
    f, _ = _open(handle)
    try:
        return _map(f, writable=True)
    except OSError as exc:
        raise ProtocolError(str(exc)) from None
    finally:
        f.close()


class SharedFrame:
    """A large payload frame a relay passes on without reading it: its own
    fd of the sender's memfd, kept as long as this object is.

    :func:`pass_on` gives the next hop a handle to it; ``buffer`` and
    ``digest`` (computed once, when first asked) are for a peer elsewhere,
    which gets the bytes."""

    __slots__ = ("_buffer", "_digest", "_file", "_next_slot")

    def __init__(self, file: _Memfd, slot: int) -> None:
        self._file = file
        self._next_slot = slot + 1
        self._buffer: memoryview | None = None
        self._digest: bytes | None = None

    @property
    def size(self) -> int:
        return self._file.size

    @property
    def buffer(self) -> memoryview:
        if self._buffer is None:
            self._buffer = _map(self._file, writable=False)
        return self._buffer

    @property
    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = hashlib.sha256(self.buffer).digest()
        return self._digest

    def __repr__(self) -> str:
        return f"SharedFrame({self.size} bytes, fd {self._file.fd})"


def relay(handle: bytes) -> SharedFrame | memoryview:
    """The frame ``handle`` names, for a relay to pass on: held by its fd,
    or, once this process has a quarter of the files it may open, mapped
    read-only, its fd closed. A mapping counts against no file limit (a
    broker holding many futures must not fail to open their frames), and
    passing it on costs a copy into a new memfd."""
    import resource

    f, slot = _open(handle)
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if files == resource.RLIM_INFINITY or len(_open_files) <= files // 4:
        return SharedFrame(f, slot)
    try:
        return _map(f, writable=False)
    except OSError as exc:
        raise ProtocolError(str(exc)) from None
    finally:
        f.close()


class _Pending:
    """Handles sent and not yet taken, each holding its memfd open, by
    the peer they went to. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (memfd, slot, peer key, bytes made here: 0 for a relayed frame)
        self._entries: list[tuple[_Memfd, int, Hashable, int]] = []
        self.made = 0  # bytes of memfds made here that wait for their reader

    def add(self, f: _Memfd, slot: int, peer: Hashable, made: int) -> None:
        with self._lock:
            self._entries.append((f, slot, peer, made))
            self.made += made

    def sweep(self) -> None:
        if not self._entries:
            return
        with self._lock:
            self._keep(lambda e: not e[0].taken(e[1]))

    def release(self, peer: Hashable) -> None:
        with self._lock:
            self._keep(lambda e: e[2] != peer)

    def reset(self) -> None:
        """Forget every entry, without the lock: in a forked child, whose
        lock may have been held by a thread of its parent."""
        self._lock = threading.Lock()
        self._entries = []
        self.made = 0

    def _keep(self, wanted: Any) -> None:
        kept = []
        for entry in self._entries:
            if wanted(entry):
                kept.append(entry)
                continue
            self.made -= entry[3]
            if entry[3]:
                entry[0].close()  # made here: nobody else needs our fd
        self._entries = kept

    def wait_made(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the readers of the frames made
        here; they cannot read them once this process has ended."""
        deadline = time.monotonic() + timeout
        self.sweep()
        while self.made and time.monotonic() < deadline:
            time.sleep(0.005)  # polling flags in a memfd: there is nothing to wait on
            self.sweep()
        if self.made:
            log.warning(
                "%d bytes of shared frames were not taken by their readers before this "
                "process ended",
                self.made,
            )


_pending = _Pending()
atexit.register(_pending.wait_made, WAIT_AT_EXIT)


@functools.cache
def held_cap() -> int:
    """The most bytes of memfds a process makes and holds for readers that
    have not taken them: 2 GiB, or a quarter of the memory if less."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        memory = 8 << 30
    return min(2 << 30, memory // 4)


def sweep() -> None:
    """Close the memfds whose readers have taken them."""
    _pending.sweep()


def release(peer: Hashable) -> None:
    """``peer`` left: nothing sent to it will be taken."""
    _pending.release(peer)


def share(frame: Any, size: int, peer: Hashable) -> bytes | None:
    """A handle to ``frame`` (``size`` bytes) for ``peer``, or None if it
    goes as bytes: a relayed frame that has made its last hop, or a new one
    that would take this process over :func:`held_cap`, or for which no
    memfd could be made."""
    if type(frame) is SharedFrame:
        slot = frame._next_slot
        if slot >= SLOTS:
            return None
        frame._next_slot += 1
        _pending.add(frame._file, slot, peer, 0)
        return _handle(frame._file, slot)
    if _pending.made + size > held_cap():
        return None
    try:
        f = _create(frame)
    except OSError as exc:
        log.debug("sending a frame of %d bytes as bytes: no memfd (%s)", size, exc)
        return None
    _pending.add(f, 0, peer, size)
    return _handle(f, 0)


def handle_size(handle: bytes) -> int:
    """The frame size a handle claims (0 if it is no handle)."""
    if type(handle) is not bytes or len(handle) != HANDLE.size:
        return 0
    return int(HANDLE.unpack(handle)[2])
