"""One wake-up for a transport's blocking receive: the flag, the lock and the close ordering.

Every hub, endpoint and store must let another thread end its blocking
receive (``Hub.wakeup``, ``Endpoint.wakeup``, ``BrokerStore.wakeup`` in
:mod:`scoop_core.interfaces`), with the same promises each time: thread-safe
and cheap; a wake-up with no receive waiting makes the next receive return
at once (it is never lost); it is served before queued messages, so a busy
stream cannot starve it; and a wake-up racing close never touches a closed
resource. Only the way to interrupt a blocked call differs from one
transport to the next (a byte on a socket pair polled next to the real
socket, an entry in a stream read by a blocking read, a condition's
notify): that is the ``poke`` a :class:`WakeUp` is given, and everything
else is written here once.

How a transport uses it::

    self._wake = WakeUp(self._write_wake_byte, drain=self._read_wake_bytes)

    def recv(self, timeout):
        with self._wake.receiving():
            while True:
                if self._wake.take():  # a wake-up, or closed: before any message
                    return None
                ...  # return a message, or wait for one or for a poke, up to the deadline

    def wakeup(self):
        self._wake.wakeup()

    def close(self):
        if self._wake.close():  # from here on nothing pokes or drains
            ...  # release the socket, then what the poke writes to
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["WakeUp"]


class WakeUp:
    """The wake-up state of one receiving object (a hub, an endpoint, a store).

    ``poke()`` must make a receive blocked in another thread return soon,
    and must not raise (a transport logs or ignores a poke that failed: the
    wake-up stays pending, so the next receive still returns at once). It
    runs under this object's lock: once when a wake-up becomes pending (a
    burst of :meth:`wakeup` calls before the receive takes it pokes once),
    and once from :meth:`close` if a receive is under way. ``drain()``,
    optional, clears what pokes left behind (bytes on a socket pair, say);
    it runs under the same lock when :meth:`take` takes a wake-up, so a
    poke is never half drained. Neither runs, nor is running, once
    :meth:`close` has returned: the transport may then close what they use
    without any lock.

    A poke must not wait for a lock the receiving thread holds while it
    calls :meth:`take` (a condition's lock, for one): the receiving thread
    calls :meth:`take` with no such lock held, and under it looks at
    :attr:`due` (which takes no lock) before it waits.
    """

    def __init__(self, poke: Callable[[], None], *, drain: Callable[[], None] | None = None):
        self._poke = poke
        self._drain = drain
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False
        self._receiving = 0

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def due(self) -> bool:
        """True if :meth:`take` would return True now; takes no lock, consumes nothing."""
        return self._pending or self._closed

    def wakeup(self) -> None:
        """Make the waiting receive return, or the next one if none waits. Thread-safe."""
        # Lock-free fast path: a poke is on its way already (it is made under
        # the lock, together with setting the flag).
        if self._pending:
            return
        with self._lock:
            if self._closed or self._pending:
                return
            self._pending = True
            self._poke()

    def take(self) -> bool:
        """For the receiving thread: True if its receive must return now, because a
        wake-up was pending (it is taken, and what its poke left is drained) or
        because of :meth:`close`; False to go on receiving."""
        if self._closed:
            return True
        if not self._pending:
            return False
        with self._lock:
            self._pending = False
            if not self._closed and self._drain is not None:
                self._drain()
        return True

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Hold around a receive that may block, so that :meth:`close` knows to poke it."""
        with self._lock:
            self._receiving += 1
        try:
            yield
        finally:
            with self._lock:
                self._receiving -= 1

    def close(self) -> bool:
        """Close for good: a receive under way is poked once, and every later
        :meth:`take` returns True, every later :meth:`wakeup` does nothing.
        True the first time, False if already closed. Thread-safe."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            # A receive that enters receiving() after this sees closed in take().
            if self._receiving:
                self._poke()
        return True
