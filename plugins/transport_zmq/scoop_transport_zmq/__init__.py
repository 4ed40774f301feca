"""The ZeroMQ transport plugin, scoop-core's default transport.

It registers the transport ``zmq`` and its settings, the table
``[scoop.transport.zmq]`` (environment ``SCOOP_TRANSPORT_ZMQ_<KEY>``):

- ``interface`` -- where a hub listens when remote hosts are in the run
  (``"*"``, the default, for every interface). A run on one machine listens
  on an ``ipc://`` socket in a directory only this user may enter; a run
  whose remote workers come through SSH tunnels, on 127.0.0.1.
- ``port`` -- a TCP hub's port; 0 (the default) picks a free one.
- ``broker_hostname`` -- the host name remote peers dial; by default this
  machine's fully qualified name.
- ``max_message_size`` -- the largest *frame*, in bytes, the hub accepts (0,
  the default: the core's ``max_message_size`` in ``[scoop]``). libzmq
  drops a peer that sends a bigger frame before Python sees any of it, so a
  flood of huge frames costs no memory. Set it only to go lower than the
  core's bound, and no lower than the biggest single buffer a run sends.
- ``curve`` -- CurveZMQ on TCP hubs (true by default): encrypted
  connections, and a ZAP handler that admits only peers holding the run's
  key (each derives the run's client key pair from it), so that a process
  without the key cannot send the broker anything. The hub's key pair is
  new for each run; its public key travels in the hub's address. Turning it
  off leaves the HMAC as the only guard, and a ROUTER that anyone can reach
  can be crashed by a routing-id collision inside libzmq.

pyzmq is imported only when a transport is built (see :mod:`.transport`), so
listing plugins never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoop_core.plugins import Setting, TransportPlugin, hookimpl, lazy

__all__ = ["TRANSPORT", "make_transport", "scoop_transports"]

make_transport = lazy("scoop_transport_zmq.transport:ZmqTransport")
"""``make_transport(settings)``: a :class:`~scoop_transport_zmq.transport.ZmqTransport`,
importing pyzmq only then; for transports that wrap this one."""

TRANSPORT = TransportPlugin(
    name="zmq",
    factory=make_transport,
    description="ZeroMQ ROUTER/DEALER over ipc or TCP; embedded, no server to start (default)",
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
            "disconnect their sender); 0 = the core's max_message_size",
        ),
        Setting(
            "curve",
            bool,
            True,
            "CurveZMQ on TCP: encrypted, and only peers holding the run's key may connect",
        ),
    ),
)


@hookimpl
def scoop_transports() -> Iterable[TransportPlugin]:
    return (TRANSPORT,)
