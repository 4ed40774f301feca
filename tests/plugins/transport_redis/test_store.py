"""The Redis broker store keeps the BrokerStore contract on a real redis-server.

Every check of :mod:`scoop_core.testing.store_conformance` runs here, over
RESP3 and RESP2; the tests below cover what is Redis's own: entries and
letters someone else wrote, a blocked ``XREADGROUP``, the run's keys and
their expiry, a lost server, bad addresses."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
import redis
from scoop_transport_redis.store import GROUP, RedisStore
from scoop_transport_redis.transport import RedisTransport

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import BrokerStore, Entry, Frame
from scoop_core.testing import STORE_CHECKS

WITHIN = 5.0
"""Seconds a polling test waits for something that should happen much sooner."""

OpenStore = Callable[..., RedisStore]


@pytest.fixture
def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the test server, to look at what the store left there."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def launcher(redis_url: str, run_id: str, request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    """The launcher's store of a new run; its peers speak the same protocol (it is in the URL)."""
    url = f"{redis_url}?protocol={request.param}"
    store = RedisTransport({"url": url, "prefix": "store"}).open_store(
        run_id=run_id, identity="launcher"
    )
    yield store
    store.close(end_run=True)


@pytest.fixture
def peer(redis_url: str, launcher: RedisStore) -> Iterator[OpenStore]:
    """Opens the store of the launcher's run as another peer, registered; closes it after."""
    opened: list[RedisStore] = []

    def open_peer(name: str, *, worker: bool = True, register: bool = True) -> RedisStore:
        store = RedisTransport({"url": redis_url}).open_store(
            address=launcher.address, identity=name
        )
        opened.append(store)
        if register:
            store.new_index()
            store.put_records("peers", [(name, record(name, worker=worker))])
        return store

    yield open_peer
    for store in opened:
        store.close()


def record(name: str, *, worker: bool = True) -> bytes:
    """A peer record as the store sees one: opaque bytes (the core signs real ones)."""
    return b"record of %s as %s" % (name.encode(), b"worker" if worker else b"root")


def run_key(store: RedisStore, name: str) -> str:
    """The key ``name`` of the store's run (``queue``, ``mail:<hex>``...)."""
    return store.address.rpartition("#")[2] + ":" + name


def keys_of(raw: redis.Redis, store: RedisStore) -> list[bytes]:
    base = run_key(store, "").encode()
    return [key for key in raw.scan_iter(count=1000) if key.startswith(base)]


def blocked_in_xreadgroup(raw: redis.Redis) -> bool:
    return any(
        c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in raw.client_list()
    )


def task(n: int) -> Entry:
    return Entry((b"task-%d" % n, b"payload-%d" % n))


def poll(what: Callable[[], object], within: float = WITHIN) -> object:
    """What ``what`` returns once it is truthy; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (result := what()):
        assert time.monotonic() < deadline, f"nothing within {within} s"
        time.sleep(0.01)
    return result


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
def test_the_redis_store_passes(
    check: Callable[[Callable[[str, str | None], BrokerStore]], None],
    protocol: int,
    redis_url: str,
    raw: redis.Redis,
) -> None:
    transport = RedisTransport({"url": f"{redis_url}?protocol={protocol}", "prefix": "check"})

    def make_store(identity: str, address: str | None) -> BrokerStore:
        if address is None:
            run_id = f"run-{uuid.uuid4().hex[:12]}"
            return transport.open_store(run_id=run_id, identity=identity)
        return transport.open_store(address=address, identity=identity)

    check(make_store)


def test_each_entry_is_taken_by_exactly_one_of_two_workers(
    launcher: RedisStore, peer: OpenStore
) -> None:
    a, b = peer("worker-a"), peer("worker-b")
    ids = launcher.commit(add=[task(n) for n in range(6)])
    assert len(set(ids)) == 6
    taken_a, _ = a.take(4, 0)
    taken_b, _ = b.take(10, 0)
    assert (len(taken_a), len(taken_b)) == (4, 2)
    assert a.take(10, 0) == ([], []) and b.take(10, 0) == ([], [])
    taken = taken_a + taken_b
    assert sorted(e.id for e in taken) == sorted(ids)
    assert sorted(e.frames[0] for e in taken) == sorted(b"task-%d" % n for n in range(6))
    for entry in taken:
        n = int(entry.frames[0].split(b"-")[1])
        assert entry.frames[1] == b"payload-%d" % n
        assert isinstance(entry.frames[1], bytearray)  # out-of-band buffers are writable


def test_take_hands_out_at_most_count_entries(launcher: RedisStore, peer: OpenStore) -> None:
    worker = peer("worker")
    launcher.commit(add=[task(n) for n in range(5)])
    assert worker.take(0, 0) == ([], [])
    assert [len(worker.take(2, 0)[0]) for _ in range(4)] == [2, 2, 1, 0]


def test_an_entry_or_letter_with_a_field_the_store_never_writes_has_no_frames(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    # Written by someone else: frames the core could be made to trust, plus a field beside them.
    worker = peer("worker")
    raw.xadd(run_key(launcher, "queue"), {"f0": b"task", "f1": b"pay", "l": b"99"})
    raw.xadd(run_key(launcher, "queue"), {"f0": b"task", "f2": b"gap"})
    launcher.commit(add=[task(1)])
    raw.xadd(run_key(launcher, "mail:" + b"worker".hex()), {"f0": b"letter", "o": b"x"})
    entries, mail = worker.take(3, 0)
    assert [e.frames for e in entries] == [(), (), (b"task-1", b"payload-1")]
    assert mail == [[]]


def test_a_taker_gets_queue_entries_and_mail_together(
    launcher: RedisStore, peer: OpenStore
) -> None:
    worker = peer("worker")
    launcher.commit(add=[task(1)], mail=[("worker", [b"hello"])])
    entries, mail = worker.take(5, 0)
    assert [e.frames[0] for e in entries] == [b"task-1"] and mail == [[b"hello"]]


def test_a_blocked_take_returns_what_arrives(launcher: RedisStore, peer: OpenStore) -> None:
    worker = peer("worker")
    got: list[tuple[list[Entry], list[list[Frame]]]] = []
    thread = threading.Thread(target=lambda: got.append(worker.take(1, WITHIN)))
    thread.start()
    launcher.commit(add=[task(1)])
    thread.join(WITHIN + 1)
    assert not thread.is_alive()
    [(entries, mail)] = got
    assert [e.frames[0] for e in entries] == [b"task-1"] and mail == []


def test_an_entry_deleted_while_held_is_not_handed_out_again(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    holder, heir = peer("holder"), peer("heir")
    first, second, third = launcher.commit(add=[task(1), task(2), task(3)])
    assert len(holder.take(3, 0)[0]) == 3
    raw.xdel(run_key(launcher, "queue"), first, third)
    claimed = poll(lambda: heir.claim_expired(0.05))
    assert isinstance(claimed, list) and [e.id for e in claimed] == [second]
    assert heir.claim_from("holder") == []
    heir.commit(done=[second])
    heir.take(1, 0)
    assert raw.xpending(run_key(launcher, "queue"), GROUP)["pending"] == 0


def test_wakeup_ends_a_blocked_take_at_once(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    worker = peer("worker")
    results: list[tuple[list[Entry], list[list[Frame]]]] = []
    for count in (0, 3):
        thread = threading.Thread(target=lambda n=count: results.append(worker.take(n, None)))
        thread.start()
        poll(lambda: blocked_in_xreadgroup(raw), 1.5)  # take(None) blocks for 2 s at most
        start = time.monotonic()
        worker.wakeup()
        thread.join(WITHIN)
        assert not thread.is_alive()
        assert time.monotonic() - start < 1.0
        assert results.pop() == ([], [])
    # The wake-up entry is not mail, and a wake-up is not lost when nobody waits.
    assert worker.take(3, 0) == ([], [])
    worker.wakeup()
    start = time.monotonic()
    assert worker.take(3, WITHIN) == ([], [])
    assert time.monotonic() - start < 1.0


def test_close_ends_a_blocked_take_in_another_thread(peer: OpenStore, raw: redis.Redis) -> None:
    worker = peer("worker")
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(worker.take(1, 30)))
    thread.start()
    poll(lambda: blocked_in_xreadgroup(raw))
    start = time.monotonic()
    worker.close()
    worker.close()
    thread.join(WITHIN)
    assert not thread.is_alive() and results == [([], [])]
    assert time.monotonic() - start < 1.5
    with pytest.raises(TransportClosed, match="closed"):
        worker.commit(add=[task(1)])


def test_ending_the_run_deletes_every_key_of_it(
    redis_url: str, run_id: str, raw: redis.Redis
) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "end[run]"})
    launcher = transport.open_store(run_id=run_id, identity="launcher")
    worker = transport.open_store(address=launcher.address, identity="worker")
    other = f"end[run]:{run_id}x:keep"
    raw.set(other, b"not this run's")
    try:
        launcher.put_records("peers", [("launcher", record("launcher", worker=False))])
        worker.new_index()
        worker.put_records("peers", [("worker", record("worker"))])
        launcher.put_records("run", [("info", b"info")])
        launcher.put_records("constants", [("c", b"1")])
        launcher.commit(add=[task(1), task(2)], mail=[("worker", [b"hi"])])
        worker.take(1, 0)
        worker.put_records("marks", [("1:0", b"mark")])
        worker.flag("alive:worker", 60)
        worker.flag("hungry", 60)
        worker.wakeup()
        assert len(keys_of(raw, launcher)) >= 8
        assert all(0 < raw.ttl(key) <= 86400 for key in keys_of(raw, launcher))
        worker.close()
        launcher.close(end_run=True)
        launcher.close(end_run=True)
        assert keys_of(raw, launcher) == []
        assert raw.get(other) == b"not this run's"
    finally:
        raw.delete(other)


def test_a_store_that_only_looks_leaves_no_key(
    redis_url: str, run_id: str, raw: redis.Redis
) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "look"})
    info = f"look:{run_id}:table:run"
    raw.hset(info, "info", b"another run")
    try:
        busy = transport.open_store(run_id=run_id, identity="launcher")
        assert busy.put_records("run", [("info", b"mine")]) == [b"another run"]
        busy.close()
        joiner = transport.open_store(run_id=run_id, identity="joiner")
        assert joiner.records("run") == {"info": b"another run"}
        joiner.close()
        nowhere = transport.open_store(run_id=run_id + "-none", identity="joiner")
        assert nowhere.records("run") == {}
        assert nowhere.queued() == [] and nowhere.withdraw([b"1-0"]) == [""]
        assert nowhere.claim_expired(0) == [] and nowhere.claim_from("worker") == []
        assert not nowhere.flagged("alive:launcher")
        nowhere.close()
        assert list(raw.scan_iter(match="look:*")) == [info.encode()]
    finally:
        raw.delete(info)


def test_a_started_run_serves_a_worker_that_takes_before_registering(
    redis_url: str, run_id: str
) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "early"})
    launcher = transport.open_store(run_id=run_id, identity="launcher")
    try:
        assert launcher.put_records("run", [("info", b"info")]) == [None]
        launcher.commit(add=[task(1)], mail=[("worker", [b"hello"])])
        worker = transport.open_store(address=launcher.address, identity="worker")
        entries, mail = worker.take(5, 0)
        assert [e.frames[0] for e in entries] == [b"task-1"] and mail == [[b"hello"]]
        worker.close()
    finally:
        launcher.close(end_run=True)


def test_a_lost_server_raises_transport_closed_with_the_password_masked(
    redis_server: Callable[..., AbstractContextManager[str]], run_id: str
) -> None:
    secret = "st0re-Secret"
    with redis_server(password=secret) as url:
        launcher = RedisTransport({"url": url}).open_store(run_id=run_id, identity="launcher")
        assert secret not in launcher.address
        plain = url.replace(f":{secret}@", "")
        worker = RedisTransport({"url": plain, "password": secret}).open_store(
            address=launcher.address, identity="worker"
        )
        worker.put_records("peers", [("worker", record("worker"))])
        assert launcher.records("peers") == {"worker": record("worker")}
    for call in (
        lambda: launcher.records("peers"),
        lambda: launcher.commit(add=[task(1)]),
        lambda: worker.take(1, 0.1),
    ):
        with pytest.raises(TransportClosed) as failed:
            call()
        message = str(failed.value)
        assert secret not in message
        assert message.startswith("lost Redis at redis://")
        assert plain.removeprefix("redis://") in message.replace(":***@", "")
    with pytest.raises(TransportClosed) as failed:
        launcher.records("peers")
    assert ":***@127.0.0.1" in str(failed.value)
    worker.close()
    launcher.close(end_run=True)  # logs, does not raise


@pytest.mark.parametrize(
    "address",
    ["", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0#norunid", "#scoop:run", "x#a:b"],
)
def test_a_bad_address_is_refused_clearly(address: str) -> None:
    with pytest.raises(ValueError, match="bad Redis store address"):
        RedisTransport({}).open_store(address=address, identity="worker")


def test_open_store_needs_a_run_id_or_an_address() -> None:
    with pytest.raises(ValueError, match="either run_id"):
        RedisTransport({}).open_store(identity="worker")
    with pytest.raises(ValueError, match="either run_id"):
        RedisTransport({}).open_store(run_id="r", address="redis://h#a:r", identity="worker")
    for run_id in ("", "a#b"):
        with pytest.raises(ValueError, match="run id"):
            RedisTransport({}).open_store(run_id=run_id, identity="launcher")


def test_a_raised_flag_keeps_every_key_of_a_live_run(
    redis_url: str, run_id: str, raw: redis.Redis
) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "keep", "expire": 300})
    launcher = transport.open_store(run_id=run_id, identity="launcher")
    try:
        launcher.put_records("constants", [("c", b"1")])
        launcher.commit(add=[task(1)])
        launcher.new_index()
        kept = keys_of(raw, launcher)
        assert len(kept) == 4  # queue, index, the table and the list of tables
        for key in kept:
            raw.expire(key, 5)
        worker = transport.open_store(address=launcher.address, identity="worker")
        worker.flag("alive:worker", 60)
        worker.close()
        assert all(raw.ttl(key) > 200 for key in kept)
    finally:
        launcher.close(end_run=True)
