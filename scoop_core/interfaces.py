"""The contracts between the core and its plugins: Transport, Serializer, Launcher.

Each interface is an abstract base class whose docstrings state the whole
contract (ordering, thread-safety, close, errors), so that a third-party
plugin can be written from this module alone and checked with the
conformance suite in :mod:`scoop_core.testing`.

A *frame* is any object supporting the buffer protocol (``bytes``,
``memoryview``, ``pickle.PickleBuffer``, a ``zmq.Frame``...). Transports move
lists of frames without looking inside them and without joining them: a
64 MB array travels as its own frame and is never copied into one bytes
object by the core.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Frame = Any
"""A buffer-protocol object: bytes, bytearray, memoryview, PickleBuffer, zmq.Frame."""


class Hub(abc.ABC):
    """The broker's end of a transport: one bound endpoint that many peers dial.

    Contract:

    - ``address`` is a string a peer passes to :meth:`Transport.connect`.
    - :meth:`send` and :meth:`recv` are called from one thread at a time (the
      broker's); only :meth:`wakeup` and :meth:`close` may come from another.
    - Messages from one peer arrive in the order that peer sent them, whole
      (every frame of a message, or none), and messages to one peer likewise.
    - :meth:`send` never blocks for long and never drops a message to a
      connected peer; sending to a peer that is gone is silently dropped
      (the broker learns of departures from heartbeats and ``Bye`` messages,
      not from transport errors).
    - After :meth:`close`, :meth:`recv` returns ``None`` at once and
      :meth:`send` raises :class:`scoop_core.errors.TransportClosed`.
    """

    address: str

    @abc.abstractmethod
    def send(self, peer: bytes, frames: Sequence[Frame]) -> None:
        """Queue one message (a list of frames) for ``peer``."""

    def send_many(self, messages: Sequence[tuple[bytes, Sequence[Frame]]]) -> None:
        """Send several ``(peer, frames)`` messages, in order.

        The default sends them one by one; a transport whose every send costs
        a round trip overrides this to send them together."""
        for peer, frames in messages:
            self.send(peer, frames)

    @abc.abstractmethod
    def recv(self, timeout: float | None) -> tuple[bytes, list[Frame]] | None:
        """Return the next ``(peer, frames)``, or ``None``.

        ``None`` means the timeout passed, :meth:`wakeup` was called, or the
        hub is closed. ``timeout=None`` waits for ever, ``0`` polls.
        """

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a :meth:`recv` waiting in another thread return ``None`` soon.

        Thread-safe and cheap; a wake-up with no waiting ``recv`` makes the
        next ``recv`` return ``None`` at once (it is not lost)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent."""


class Endpoint(abc.ABC):
    """A peer's connection to the hub (root, worker or embedded client).

    Contract: as for :class:`Hub`, but with no peer names, since an endpoint
    talks only to the hub. The ``peer`` a hub reports for this endpoint's
    messages is the ``identity`` given to :meth:`Transport.connect`.
    Messages sent before the hub is reachable are queued, not lost, so a
    worker may start before the broker binds.
    """

    @abc.abstractmethod
    def send(self, frames: Sequence[Frame]) -> None:
        """Queue one message for the hub."""

    def send_many(self, messages: Sequence[Sequence[Frame]]) -> None:
        """Send several messages to the hub, in order (see :meth:`Hub.send_many`)."""
        for frames in messages:
            self.send(frames)

    @abc.abstractmethod
    def recv(self, timeout: float | None) -> list[Frame] | None:
        """Return the next message from the hub, or ``None`` (timeout, wake-up, closed)."""

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Thread-safe: make a waiting :meth:`recv` return ``None`` soon."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent."""


class Transport(abc.ABC):
    """Creates hubs and endpoints for one run.

    A transport is built by its plugin's factory from the plugin's settings
    (a mapping, already validated against the plugin's declared settings).
    It must be usable in a child process after its settings are passed on,
    so everything a worker needs to connect is in ``address`` plus settings.
    """

    @abc.abstractmethod
    def bind(self, *, run_id: str, public: bool = False) -> Hub:
        """Create the broker's hub.

        ``public`` is False for a run whose peers are all on this machine:
        the hub must then listen on loopback only."""

    @abc.abstractmethod
    def connect(self, address: str, *, identity: bytes) -> Endpoint:
        """Create an endpoint that talks to the hub at ``address``."""


class Serializer(abc.ABC):
    """Turns Python objects into frames and back.

    ``dumps`` returns the main pickle first and then each out-of-band buffer
    as its own frame (pickle protocol 5), so large arrays are never copied
    into the main frame. ``loads(dumps(x))`` equals ``x``. Errors: ``dumps``
    raises whatever the pickler raises; the core turns it into a
    :class:`scoop_core.errors.SerializationError` naming the object.
    """

    name: str

    @abc.abstractmethod
    def dumps(self, obj: Any) -> list[Frame]:
        """Serialize ``obj`` to one main frame plus out-of-band buffers."""

    @abc.abstractmethod
    def loads(self, frames: Sequence[Frame]) -> Any:
        """Rebuild the object from the frames ``dumps`` returned."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a launcher needs to start one worker process."""

    name: str
    host: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


class WorkerGroup(abc.ABC):
    """The processes a launcher started; it owns them until :meth:`stop`."""

    @abc.abstractmethod
    def poll(self) -> dict[str, int | None]:
        """Exit status per worker name (``None`` while running)."""

    @abc.abstractmethod
    def stop(self, grace: float) -> None:
        """Stop every process: terminate, wait ``grace`` seconds, then kill.

        Must leave no process behind, whatever state they are in."""


class Launcher(abc.ABC):
    """Starts worker processes on some hosts and stops them again."""

    @abc.abstractmethod
    def start(self, workers: Sequence[WorkerSpec]) -> WorkerGroup:
        """Start the workers; raise :class:`scoop_core.errors.LaunchError`
        naming the host and cause if any cannot start (and stop the others)."""
