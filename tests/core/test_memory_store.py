"""The in-memory broker store keeps the BrokerStore contract, so core tests can rely on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from scoop_core.interfaces import BrokerStore
from scoop_core.testing import STORE_CHECKS, MemoryStoreTransport, check_store

MakeStore = Callable[[str, "str | None"], BrokerStore]


def make_store(identity: str, address: str | None) -> BrokerStore:
    transport = MemoryStoreTransport()
    if address is None:
        return transport.open_store(run_id=f"run-{uuid.uuid4().hex}", identity=identity)
    return transport.open_store(address=address, identity=identity)


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda check: check.__name__)
def test_the_memory_store_passes(check: Callable[[MakeStore], None]) -> None:
    check(make_store)


def test_check_store_runs_every_check() -> None:
    check_store(make_store)


def test_a_run_id_opens_the_same_run_in_every_transport_of_a_namespace() -> None:
    launcher = MemoryStoreTransport("shared").open_store(run_id="r1", identity="launcher")
    joiner = MemoryStoreTransport("shared").open_store(run_id="r1", identity="joiner")
    elsewhere = MemoryStoreTransport("other").open_store(run_id="r1", identity="joiner")
    try:
        launcher.put_records("run", [("info", b"the run")])
        assert joiner.records("run") == {"info": b"the run"}
        assert elsewhere.records("run") == {}
    finally:
        for store in (elsewhere, joiner, launcher):
            store.close(end_run=True)


def test_open_store_needs_a_run_id_or_an_address() -> None:
    transport = MemoryStoreTransport()
    with pytest.raises(ValueError, match="either run_id"):
        transport.open_store(identity="worker")
    with pytest.raises(ValueError, match="memory://"):
        transport.open_store(address="redis://h#a:r", identity="worker")
