"""A run on a store (``scoop_core.store_driver``), every peer in this process.

A root runtime and one or two :class:`WorkerRuntime` objects serving in
threads, each over a :class:`StoreEndpoint` of its own on one
:class:`MemoryStoreServer`: no broker, every peer's policy decides through
the store, as on Redis. The root submits real functions (of
``peer_functions.py`` and this module) and the test reads what a user would
see: results, exceptions, cancels, shared
constants, and a future that runs again elsewhere once the launcher reports
its worker dead (:func:`report_lost` on what ``claim_from`` takes).

As in ``test_worker.py``, a function tells the test it started, or waits
for its go-ahead, as ``peer_functions.py`` says. Nested futures and
constants are read through the process-wide current runtime, so the tests
that use them run one worker. The stories that read the same over a
broker are told once, in ``peer_runs.py``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import peer_runs
import pytest
from peer_functions import (
    NEVER,
    RAN,
    WAIT,
    fib,
    held,
    hold,
    restore_process_wide,
    sum_of_squares,
)

from scoop_core import messages as m
from scoop_core import runtime, shared
from scoop_core.errors import ConstantError, ProtocolError
from scoop_core.interfaces import BrokerStore
from scoop_core.store_driver import StoreEndpoint, report_lost, tell_everyone
from scoop_core.store_records import (
    CENSUS,
    LAUNCHER,
    TAKER,
    WORKERS,
    Census,
    Queued,
    alive_flag,
    entry_for,
    read_entry,
    seal_census,
    seal_taker,
)
from scoop_core.testing.memory_store import MemoryStore, MemoryStoreServer
from scoop_core.worker import WorkerRuntime


def hold_the_first_time(name: str) -> str:
    """The first run holds its worker until the test's go-ahead; any later run returns at once."""
    RAN.append(name)
    if RAN.count(name) == 1:
        hold(name)
        return "first run"
    return "run again"


def constant(name: str) -> Any:
    return shared.getConst(name, timeout=WAIT)


def open_endpoint(
    server: MemoryStoreServer, key: bytes, name: str, timeout: float = NEVER
) -> StoreEndpoint:
    """``name``'s way into the run, as ``connect_endpoint`` opens it in a
    process of its own; a peer silent for ``timeout`` seconds is lost."""
    return StoreEndpoint(
        MemoryStore(server, identity=name),
        key=key,
        name=name,
        root="root",
        heartbeat_interval=min(1.0, timeout / 10),
        heartbeat_timeout=timeout,
        launcher_alive=lambda: True,  # the launcher, not the root, ends the run
    )


@dataclass
class Worker:
    runtime: WorkerRuntime
    serving: threading.Thread
    store: BrokerStore


@dataclass
class Run(peer_runs.Submits):
    server: MemoryStoreServer
    key: bytes
    root: runtime.RootRuntime
    launcher: MemoryStore  # the launcher's store, as the pool opens it
    timeout: float = NEVER  # heartbeat_timeout
    workers: dict[str, Worker] = field(default_factory=dict)

    def add_worker(self, name: str, prefetch: int = 1) -> WorkerRuntime:
        endpoint = open_endpoint(self.server, self.key, name, self.timeout)
        worker, serving = peer_runs.start_worker(endpoint, self.key, name, prefetch)
        self.workers[name] = Worker(worker, serving, endpoint.store)
        return worker


def start_run(server: MemoryStoreServer, timeout: float = NEVER) -> Run:
    key = os.urandom(32)
    launcher = MemoryStore(server, identity=LAUNCHER)
    launcher.flag(alive_flag(LAUNCHER), NEVER)
    root = peer_runs.start_root(open_endpoint(server, key, "root", timeout), key)
    return Run(server, key, root, launcher, timeout)


def stop_run(run: Run) -> None:
    peer_runs.close_root(run.root)
    # What the launcher does at the end of a run.
    tell_everyone(run.launcher, m.Codec(run.key, LAUNCHER.encode()), "the run is over", WAIT)
    for worker in run.workers.values():
        worker.serving.join(WAIT)
    run.launcher.close(end_run=True)


@pytest.fixture
def new_run(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Run]]:
    restore_process_wide(monkeypatch)
    threads = set(threading.enumerate())
    runs: list[Run] = []

    def new(timeout: float = NEVER) -> Run:
        server = MemoryStoreServer(f"memory://test/{request.node.name}")
        runs.append(start_run(server, timeout))
        return runs[-1]

    yield new
    for run in runs:
        stop_run(run)
        for name, worker in run.workers.items():
            assert not worker.serving.is_alive(), f"{name} did not stop when the run ended"
    for thread in set(threading.enumerate()) - threads:
        thread.join(WAIT)
        assert not thread.is_alive(), f"thread {thread.name} outlived the run"


@pytest.fixture(params=[1, 2], ids=["prefetch-1", "prefetch-2"])
def run(request: pytest.FixtureRequest, new_run: Callable[..., Run]) -> Run:
    """A root and one worker."""
    run = new_run()
    run.add_worker("worker-1", prefetch=request.param)
    return run


@peer_runs.TOGETHER
def test_each_future_gets_its_own_result(run: Run, together: bool) -> None:
    peer_runs.check_results(run, together)


def test_nested_futures_waited_for_on_the_only_worker_do_not_deadlock(run: Run) -> None:
    assert run.submit(fib, 8).result(WAIT) == 21
    assert run.submit(sum_of_squares, 30).result(WAIT) == sum(x * x for x in range(30))


def test_a_raising_future_raises_at_its_owner_with_the_workers_traceback(run: Run) -> None:
    peer_runs.check_a_raising_future(run)


def test_a_future_not_yet_started_is_cancelled_while_the_worker_is_busy(run: Run) -> None:
    peer_runs.check_cancel_while_busy(run)


def test_a_shared_constant_reaches_the_worker_and_is_defined_once(run: Run) -> None:
    run.root.set_const("size", 10)
    assert run.submit(constant, "size").result(WAIT) == 10
    with pytest.raises(ConstantError, match="'size' is already defined"):
        run.workers["worker-1"].runtime.set_const("size", 11)
    assert run.root.get_const("size", 0) == 10


def test_a_worker_that_joins_after_a_constant_was_defined_has_it(
    new_run: Callable[..., Run],
) -> None:
    run = new_run()
    run.root.set_const("table", {"a": 1})
    run.add_worker("worker-1")
    assert run.submit(constant, "table").result(WAIT) == {"a": 1}


def test_the_futures_of_a_dead_worker_run_again_elsewhere_once_it_is_reported(
    new_run: Callable[..., Run],
) -> None:
    run = new_run()
    started, _ = held("victim")
    run.add_worker("worker-1")
    fut = run.submit(hold_the_first_time, "victim")
    assert started.wait(WAIT), "the future never started"
    # worker-1 dies (its store goes; its thread stays stuck in the function
    # until the end of the test), and worker-2 joins.
    dead = run.workers["worker-1"]
    dead.store.close()
    run.add_worker("worker-2")
    assert not fut.done()
    # The launcher sees worker-1's process end: it claims what worker-1
    # held and tells the owners, as the pool does.
    codec = m.Codec(run.key, LAUNCHER.encode())
    claimed = run.launcher.claim_from("worker-1")
    assert len(claimed) == 1
    assert report_lost(run.launcher, claimed, key=run.key, codec=codec, lost_by="worker-1") == 1
    run.launcher.flag(alive_flag("worker-1"), 0)
    assert fut.result(WAIT) == "run again"
    assert RAN == ["victim", "victim"]


@pytest.mark.parametrize("taker", ["root", "worker-1", "forged"])
def test_the_futures_of_a_silent_worker_run_again_elsewhere_without_the_launcher(
    new_run: Callable[..., Run], taker: str
) -> None:
    # Nobody reports worker-1: its entry is claimed, once its lease ran
    # out, by the peer that takes the census; if worker-1 took it, by the
    # peer that takes it over; if someone without the key wrote the taker's
    # record (naming a live peer that takes no census), by the peer that
    # replaces it.
    run = new_run(timeout=0.5)
    started, _ = held("victim")
    run.add_worker("worker-1")
    signed = (
        seal_taker(os.urandom(32), LAUNCHER) if taker == "forged" else seal_taker(run.key, taker)
    )
    named = [(TAKER, signed)]
    run.launcher.put_records(CENSUS, named)  # makes the table, if the root did not yet
    run.launcher.put_records(CENSUS, named, replace=True)
    fut = run.submit(hold_the_first_time, "victim")
    assert started.wait(WAIT), "the future never started"
    run.workers["worker-1"].store.close()  # silent from now on
    run.add_worker("worker-2")
    assert fut.result(WAIT) == "run again"
    assert RAN == ["victim", "victim"]


def _hello(endpoint: StoreEndpoint, codec: m.Codec, role: str) -> None:
    slots = 1 if role == m.WORKER else 0  # a root that runs no future waits for a worker
    endpoint.send(codec.encode(m.Hello(role, endpoint.name, os.getpid(), "here", slots)))


def _welcomed(endpoint: StoreEndpoint, codec: m.Codec, looks: int) -> bool:
    """Whether ``endpoint`` hands its runtime a Welcome within ``looks`` reads."""
    for _ in range(looks):
        frames = endpoint.recv(0.01)
        if frames is not None and isinstance(codec.decode(frames, m.BROKER_IDENTITY), m.Welcome):
            return True
    return False


@pytest.mark.parametrize("forged", ["another key", "an older count"])
def test_a_forged_census_welcomes_no_program_before_its_workers(forged: str) -> None:
    # A program that waits for one worker must not start on a census saying
    # five workers live, written with another key, or copied from before.
    server = MemoryStoreServer(f"memory://test/forged-census-{forged}")
    key = os.urandom(32)
    forger = MemoryStore(server, identity="forger")
    newer = Census(7, 0, "worker-0")
    forger.put_records(CENSUS, [(WORKERS, seal_census(key, newer))])

    def endpoint(name: str) -> StoreEndpoint:
        return StoreEndpoint(
            MemoryStore(server, identity=name),
            key=key,
            name=name,
            expected_workers=1,
            join_timeout=NEVER,
            launcher_alive=lambda: True,
        )

    root, worker = endpoint("root"), endpoint("worker-1")
    root_codec, worker_codec = m.Codec(key, b"root"), m.Codec(key, b"worker-1")
    try:
        if forged == "an older count":
            # The root read the newer census (at a heartbeat) before the copy.
            root._read_census(forger.records(CENSUS)[WORKERS])
        forger.put_records(
            CENSUS,
            [
                (
                    WORKERS,
                    seal_census(
                        os.urandom(32) if forged == "another key" else key, Census(3, 5, "x")
                    ),
                )
            ],
            replace=True,
        )
        _hello(root, root_codec, m.ROOT)
        assert not _welcomed(root, root_codec, 20), "the program started with no worker"
        _hello(worker, worker_codec, m.WORKER)
        assert _welcomed(worker, worker_codec, 100)
        assert _welcomed(root, root_codec, 1000), "the program did not start with its worker"
    finally:
        worker.close()
        root.close()
        forger.close(end_run=True)


# -- large payloads: signed by their digest, hashed once where made and once where read --

ARRAY = bytes(range(256)) * (m.DIGEST_THRESHOLD // 64)


def test_a_large_argument_and_its_result_cross_the_store_whole(run: Run) -> None:
    # A bytearray travels as an out-of-band frame, its copy as bytes comes back in-band.
    assert run.submit(bytes, bytearray(ARRAY)).result(WAIT) == ARRAY
    assert run.submit(bytes, bytearray(ARRAY[::-1])).result(WAIT) == ARRAY[::-1]


def _altered(frames: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    changed = bytearray(frames[index])
    changed[len(changed) // 2] ^= 1
    return (*frames[:index], bytes(changed), *frames[index + 1 :])


def test_a_queue_entry_whose_large_payload_was_altered_is_refused_where_it_is_read() -> None:
    key = os.urandom(32)
    entry = entry_for(Queued(m.Task(7 << 32, 0, 1, (b"call", ARRAY)), "root"), key)
    taken = read_entry(entry, key)
    assert [bytes(m.buffer_of(f)) for f in taken.task.frames] == [b"call", ARRAY]
    # Queued again, it is signed by the digest it was read with, not hashed again.
    again = entry_for(taken, key)
    assert bytes(again.frames[-1][m.MAC_SIZE :]) == bytes(entry.frames[-1][m.MAC_SIZE :])
    altered = dataclasses.replace(entry, frames=_altered(tuple(entry.frames), 2))
    with pytest.raises(ProtocolError, match="bad payload digest"):
        read_entry(altered, key)
    # Whoever reads only the header (a lost worker's entries) does not hash it.
    assert read_entry(altered, key, payload=m.RELAY).task.fid == 7 << 32
