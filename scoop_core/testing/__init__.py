"""Test helpers for scoop-core and its plugins.

- :class:`MemoryTransport` -- an in-process transport: core tests run the
  broker and its peers as threads of one process, with no sockets.
- :func:`check_transport` -- the conformance suite every transport passes
  (the in-memory one included). A transport plugin calls it from its own
  tests with a function that builds a fresh transport::

      from scoop_core.testing import check_transport

      def test_my_transport_keeps_the_contract():
          check_transport(lambda: MyTransport({}))

  Each check is also in :data:`TRANSPORT_CHECKS`, to parametrize a test over
  them and see every failure by name.
"""

from __future__ import annotations

from scoop_core.testing.conformance import TRANSPORT_CHECKS, check_transport
from scoop_core.testing.memory import MemoryTransport

__all__ = ["TRANSPORT_CHECKS", "MemoryTransport", "check_transport"]
