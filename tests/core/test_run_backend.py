"""A run's backend (``scoop_core.run_backend``), both kinds, every peer in this process.

The same stories run over a broker backend (a real :class:`Broker` thread
on the in-memory transport) and a store backend (the in-memory store, as
Redis is used): a root and a worker that meet through the backend get a
future's result, and every one of them hears when the run ends. The store
backend's own duties follow: one run per run id, the run's description
for workers that join later, and the key file it leaves for them and
deletes at the end.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scoop_core import calls, future, run_keys, runtime
from scoop_core.calls import Call
from scoop_core.errors import LaunchError
from scoop_core.interfaces import StoreTransport, Transport
from scoop_core.run_backend import RunBackend, RunSettings, backend_for, find_run
from scoop_core.serialization import CloudpickleSerializer
from scoop_core.testing.memory import MemoryTransport
from scoop_core.testing.memory_store import MemoryStoreTransport
from scoop_core.worker import WorkerRuntime, set_worker_name

WAIT = 30.0  # seconds: only a broken backend needs that long
# Nobody is declared lost while a test runs (a worker that loses its run
# exits its process, which here is the test's).
NEVER = 3600.0

DESCRIPTION = {"program": "", "argv": [], "root": "root", "workers": 1}


def square(x: int) -> int:
    return x * x


def settings(run_id: str, key: bytes | None = None) -> RunSettings:
    return RunSettings(
        run_id=run_id,
        key=key or os.urandom(32),
        transport="memory",
        workers=1,
        heartbeat_timeout=NEVER,
    )


@pytest.fixture(autouse=True)
def _process_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # A worker sets these process-wide, as a worker process may; put them back.
    monkeypatch.setattr(runtime, "_current", runtime.current())
    monkeypatch.setattr(calls, "WORKER_NAME", calls.WORKER_NAME)
    monkeypatch.setattr(future, "greenlet_event", future.greenlet_event)
    # Key files go to this test's home, never the user's.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(run_keys.KEY_ENV, raising=False)
    threads = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - threads:
        thread.join(WAIT)
        assert not thread.is_alive(), f"thread {thread.name} outlived the run"


@pytest.fixture(params=["broker", "store"])
def transport(request: pytest.FixtureRequest) -> Transport | StoreTransport:
    if request.param == "broker":
        return MemoryTransport()
    return MemoryStoreTransport(namespace=request.node.name)


def serve_worker(backend: RunBackend, transport: Transport | StoreTransport) -> threading.Thread:
    """worker-1, as a worker process joins the run: a backend of its own at the run's address."""
    joined = backend_for(transport, backend.settings, address=backend.address)
    worker = WorkerRuntime(
        joined.connect("worker-1").endpoint,
        key=backend.settings.key,
        serializer=CloudpickleSerializer(),
        name="worker-1",
        heartbeat_timeout=NEVER,
    )
    worker.start(WAIT)
    runtime.set_current(worker)
    set_worker_name("worker-1")
    serving = threading.Thread(target=worker.serve, name="test-worker-1-serve", daemon=True)
    serving.start()
    return serving


def test_a_root_and_a_worker_meet_through_the_backend_and_hear_the_run_end(
    transport: Transport | StoreTransport,
) -> None:
    backend = backend_for(transport, settings("meet"))
    backend.start(DESCRIPTION)
    serving = None
    try:
        # The worker first: a root waits for the run's workers to join.
        serving = serve_worker(backend, transport)
        root = runtime.RootRuntime(
            backend.connect("root", launcher_alive=lambda: True).endpoint,
            key=backend.settings.key,
            serializer=CloudpickleSerializer(),
            name="root",
            heartbeat_timeout=NEVER,
        )
        root.start(WAIT)
        futs = root.submit([Call(square, (x,), {}) for x in range(10)])
        assert [f.result(WAIT) for f in futs] == [x * x for x in range(10)]
        # As in a run: the program ends, then its launcher ends the run.
        root.close()
        heard = backend.end("the run is over")
        assert "worker-1" in heard
        serving.join(WAIT)
        assert not serving.is_alive(), "worker-1 did not stop when the run ended"
    finally:
        backend.end("the test is over")
        backend.close()
        if serving is not None:
            serving.join(WAIT)


def test_a_second_run_with_the_same_id_is_refused_and_the_first_is_left_as_it_was() -> None:
    transport = MemoryStoreTransport(namespace="same-id")
    first = backend_for(transport, settings("busy"))
    first.start(DESCRIPTION)
    try:
        with pytest.raises(LaunchError, match="run id busy is already in use.*--run-id"):
            backend_for(transport, settings("busy")).start({**DESCRIPTION, "workers": 9})
        address, key, info = find_run(transport, "busy", None)
        assert (address, key) == (first.address, first.settings.key)
        assert info == DESCRIPTION
    finally:
        first.end("the test is over")
        first.close()


def test_a_joining_worker_needs_the_runs_key_and_an_existing_run(tmp_path: Path) -> None:
    transport = MemoryStoreTransport(namespace="join")
    backend = backend_for(transport, settings("joined"))
    backend.start(DESCRIPTION)
    try:
        wrong = tmp_path / "wrong.key"
        wrong.write_text(os.urandom(32).hex())
        wrong.chmod(0o600)
        with pytest.raises(LaunchError, match="cannot join run joined: .*not signed with this key"):
            find_run(transport, "joined", str(wrong))
        with pytest.raises(LaunchError, match="there is no run elsewhere"):
            find_run(transport, "elsewhere", None)
    finally:
        backend.end("the test is over")
        backend.close()


def test_the_key_file_for_joining_workers_is_private_and_goes_with_the_run() -> None:
    transport = MemoryStoreTransport(namespace="key-file")
    backend = backend_for(transport, settings("keyed"))
    backend.start(DESCRIPTION)
    path = run_keys.key_file("keyed")
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert backend.env() == {"_SCOOP_KEY_FILE": str(path)}
        # What scoop worker finds with no key given.
        assert find_run(transport, "keyed", None)[1] == backend.settings.key
    finally:
        backend.end("the test is over")
        backend.close()
    assert not path.exists()
    with pytest.raises(LaunchError, match="there is no run keyed"):
        find_run(transport, "keyed", None)


def test_a_run_over_a_broker_leaves_no_key_file() -> None:
    backend = backend_for(MemoryTransport(), settings("hub"))
    backend.start(DESCRIPTION)
    backend.end("the test is over")
    backend.close()
    assert backend.env() == {}
    assert not run_keys.key_file("hub").exists()
