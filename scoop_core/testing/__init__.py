"""Test helpers for scoop-core and its plugins.

- :class:`MemoryTransport` -- an in-process transport: core tests run the
  broker and its peers as threads of one process, with no sockets.
- :func:`check_transport` -- the conformance suite every transport passes
  (the in-memory one included), with :data:`TRANSPORT_CHECKS` to
  parametrize a test over its checks and see every failure by name. A
  transport plugin calls it from its own tests with a function that builds
  a fresh transport: see :mod:`scoop_core.testing.conformance`.
- :class:`MemoryStoreTransport` (with :class:`MemoryStore` and
  :class:`MemoryStoreServer`) -- an in-process broker store: the core's
  store path (no broker process; every peer plays its part against shared
  storage) runs with threads of one process.
- :func:`check_store` -- the conformance suite every
  :class:`~scoop_core.interfaces.BrokerStore` passes (the in-memory one
  included), with :data:`STORE_CHECKS` to parametrize over. A store
  transport's tests call it with a function that opens a store for a new
  run or on a given one: see :mod:`scoop_core.testing.store_conformance`.
"""

from __future__ import annotations

from scoop_core.testing.conformance import TRANSPORT_CHECKS, check_transport
from scoop_core.testing.memory import MemoryTransport
from scoop_core.testing.memory_store import MemoryStore, MemoryStoreServer, MemoryStoreTransport
from scoop_core.testing.store_conformance import STORE_CHECKS, check_store

__all__ = [
    "STORE_CHECKS",
    "TRANSPORT_CHECKS",
    "MemoryStore",
    "MemoryStoreServer",
    "MemoryStoreTransport",
    "MemoryTransport",
    "check_store",
    "check_transport",
]
