"""The ZeroMQ transport plugin, scoop-core's default transport.

It registers the transport ``zmq`` and its settings, the table
``[scoop.transport.zmq]`` (environment ``SCOOP_TRANSPORT_ZMQ_<KEY>``):

- ``interface`` -- where a hub listens when remote hosts are in the run
  (``"*"``, the default, for every interface). A run on one machine always
  listens on 127.0.0.1 only.
- ``port`` -- the hub's TCP port; 0 (the default) picks a free one.
- ``broker_hostname`` -- the host name remote peers dial; by default this
  machine's fully qualified name.
- ``max_message_size`` -- the largest *frame*, in bytes, the hub accepts (0,
  the default: no bound). libzmq drops a peer that sends a bigger frame
  before Python sees any of it, so a flood of huge frames from a stranger
  costs no memory. It bounds each frame, not a whole message (the core's
  ``max_message_size`` in ``[scoop]`` does that, after the fact), so set it
  no lower than the biggest single buffer a run sends.
- ``curve`` -- encrypt every connection with CurveZMQ (false by default), for
  runs across networks you do not trust. The hub makes a key pair per run
  and its public key travels in the hub's address; each peer makes its own.
  Authentication stays the core's HMAC: Curve adds confidentiality.

pyzmq is imported only when a transport is built (see :mod:`.transport`), so
listing plugins never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import PluginSettings, Setting, TransportPlugin

if TYPE_CHECKING:
    from scoop_transport_zmq.transport import ZmqTransport

__all__ = ["ZmqTransport", "make_transport", "scoop_settings", "scoop_transports"]


def make_transport(settings: Mapping[str, Any]) -> ZmqTransport:
    """The plugin's factory: a :class:`~scoop_transport_zmq.transport.ZmqTransport`."""
    from scoop_transport_zmq.transport import ZmqTransport

    return ZmqTransport(settings)


def __getattr__(name: str) -> Any:
    # ``from scoop_transport_zmq import ZmqTransport`` works, but only then imports pyzmq.
    if name == "ZmqTransport":
        from scoop_transport_zmq.transport import ZmqTransport

        return ZmqTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def scoop_transports() -> Iterable[TransportPlugin]:
    return (
        TransportPlugin(
            name="zmq",
            factory=make_transport,
            description="ZeroMQ ROUTER/DEALER over TCP; embedded, no server to start (default)",
        ),
    )


@hookimpl
def scoop_settings() -> Iterable[PluginSettings]:
    return (
        PluginSettings(
            section="transport.zmq",
            settings=(
                Setting(
                    "interface",
                    str,
                    "*",
                    "where the broker listens when remote hosts are in the run; '*' for all",
                ),
                Setting("port", int, 0, "the broker's TCP port; 0 = a free port"),
                Setting(
                    "broker_hostname",
                    str,
                    "",
                    "the host name remote workers dial; empty = this machine's fully qualified name",
                ),
                Setting(
                    "max_message_size",
                    int,
                    0,
                    "largest frame the broker accepts, in bytes (ZMQ_MAXMSGSIZE; bigger ones "
                    "disconnect their sender); 0 = no limit",
                ),
                Setting(
                    "curve",
                    bool,
                    False,
                    "encrypt connections with CurveZMQ, with keys made for each run",
                ),
            ),
        ),
    )
