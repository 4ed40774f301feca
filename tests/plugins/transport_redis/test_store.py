"""The Redis broker store keeps the BrokerStore contract on a real redis-server."""

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
from scoop_core.interfaces import Entry, Frame

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
            store.register(name, record(name, worker=worker))
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


def test_mail_arrives_in_commit_order_and_is_deleted_once_read(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    a, b = peer("worker-a"), peer("worker-b")
    for n in range(0, 30, 3):
        launcher.commit(mail=[("worker-a", [b"L%d" % m]) for m in range(n, n + 3)])
        b.commit(mail=[("worker-a", [b"B%d" % n, b"x" * 10])])
    got: list[list[Frame]] = []
    while len(got) < 40:
        entries, mail = a.take(0, WITHIN)
        assert mail and not entries
        got += mail
    assert [m[0] for m in got if m[0].startswith(b"L")] == [b"L%d" % n for n in range(30)]
    assert [m[0] for m in got if m[0].startswith(b"B")] == [b"B%d" % n for n in range(0, 30, 3)]
    assert all(m[1:] == [bytearray(b"x" * 10)] for m in got if m[0].startswith(b"B"))
    assert a.take(0, 0) == ([], [])
    assert raw.xlen(run_key(a, "mail:" + b"worker-a".hex())) == 0


def test_mail_sent_before_the_peer_opens_the_store_is_delivered(
    launcher: RedisStore, peer: OpenStore
) -> None:
    launcher.commit(mail=[("late", [b"first"]), ("late", [b"second"])])
    late = peer("late")
    assert late.take(3, 0) == ([], [[b"first"], [b"second"]])


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


def test_take_with_nothing_there_returns_after_its_timeout(peer: OpenStore) -> None:
    worker = peer("worker")
    start = time.monotonic()
    assert worker.take(1, 0.2) == ([], [])
    assert 0.15 < time.monotonic() - start < 2


def test_commit_with_done_removes_the_entries(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    worker = peer("worker")
    launcher.commit(add=[task(n) for n in range(3)])
    entries, _ = worker.take(3, 0)
    key = run_key(launcher, "queue")
    assert raw.xpending(key, GROUP)["pending"] == 3
    worker.commit(done=[e.id for e in entries], mail=[("launcher", [b"results"])])
    assert raw.xpending(key, GROUP)["pending"] == 0
    assert raw.xlen(key) == 0
    assert launcher.take(0, 0) == ([], [[b"results"]])


def test_withdraw_removes_an_entry_only_before_it_is_taken(
    launcher: RedisStore, peer: OpenStore
) -> None:
    worker = peer("worker")
    first, second = launcher.commit(add=[task(1), task(2)])
    assert launcher.withdraw(first) is True
    assert launcher.withdraw(first) is False
    [entry], _ = worker.take(5, 0)
    assert entry.id == second
    assert launcher.withdraw(second) is False
    worker.commit(done=[second])
    assert launcher.withdraw(second) is False


def test_touch_keeps_an_entry_and_claim_stale_takes_the_other_naming_its_holder(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    slow, other = peer("slow-worker"), peer("other-worker")
    kept, stale = launcher.commit(add=[task(1), task(2)])
    assert len(slow.take(2, 0)[0]) == 2
    # A fresh entry is not stale yet.
    assert other.claim_stale(60) == []

    def claim() -> list[Entry]:
        slow.touch([kept])
        return other.claim_stale(0.2)

    claimed = poll(claim)
    assert isinstance(claimed, list)
    [entry] = claimed
    assert (entry.id, entry.holder, entry.frames[0]) == (stale, "slow-worker", b"task-2")
    [row] = raw.xpending_range(run_key(other, "queue"), GROUP, stale, stale, 1)
    assert row["consumer"] in (b"other-worker", "other-worker")
    other.commit(done=[stale])
    slow.commit(done=[kept])
    assert other.claim_stale(0) == []


def test_claim_from_takes_every_entry_of_a_dead_worker(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    dead, heir = peer("dead-worker"), peer("heir")
    ids = launcher.commit(add=[task(n) for n in range(3)])
    assert len(dead.take(3, 0)[0]) == 3
    claimed = heir.claim_from("dead-worker")
    assert sorted(e.id for e in claimed) == sorted(ids)
    assert {e.holder for e in claimed} == {"dead-worker"}
    assert sorted(e.frames[0] for e in claimed) == [b"task-0", b"task-1", b"task-2"]
    consumers = {c["name"] for c in raw.xinfo_consumers(run_key(heir, "queue"), GROUP)}
    assert b"dead-worker" not in consumers and "dead-worker" not in consumers
    assert heir.claim_from("dead-worker") == []
    heir.commit(done=[e.id for e in claimed])
    assert raw.xlen(run_key(heir, "queue")) == 0


def test_an_entry_deleted_while_held_is_not_handed_out_again(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    holder, heir = peer("holder"), peer("heir")
    first, second, third = launcher.commit(add=[task(1), task(2), task(3)])
    assert len(holder.take(3, 0)[0]) == 3
    raw.xdel(run_key(launcher, "queue"), first, third)
    claimed = poll(lambda: heir.claim_stale(0.05))
    assert isinstance(claimed, list) and [e.id for e in claimed] == [second]
    assert heir.claim_from("holder") == []
    heir.commit(done=[second])
    heir.take(1, 0)
    assert raw.xpending(run_key(launcher, "queue"), GROUP)["pending"] == 0


def test_waiting_entries_are_those_untaken_or_of_a_silent_taker_and_go_atomically(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    busy, silent, late = peer("busy-worker"), peer("silent-worker"), peer("late-worker")
    ids = launcher.commit(add=[task(1), task(2), task(3)])
    assert [e.id for e in busy.take(1, 0)[0]] == [ids[0]]
    assert [e.id for e in silent.take(1, 0)[0]] == [ids[1]]
    queue = run_key(launcher, "queue")

    def silence() -> None:
        # As if its taker had not touched it for a minute.
        raw.execute_command("XCLAIM", queue, GROUP, "silent-worker", 0, ids[1], "IDLE", 60_000)

    silence()
    waiting = launcher.waiting(30)
    assert [(e.id, e.holder, e.frames[0]) for e in waiting] == [
        (ids[1], "silent-worker", b"task-2"),
        (ids[2], "", b"task-3"),
    ]
    # The silent taker woke up and touched its entry before it was removed:
    # that one stays, as does the busy one's; the untaken one goes.
    silent.touch([ids[1]])
    assert launcher.remove_waiting(ids, 30) == [ids[2]]
    silence()
    assert launcher.remove_waiting(ids, 30) == [ids[1]]
    assert launcher.remove_waiting(ids, 30) == []
    assert late.take(5, 0) == ([], [])
    assert [e.id for e in launcher.waiting(0)] == [ids[0]]
    assert raw.xlen(queue) == 1
    assert raw.xpending(queue, GROUP)["pending"] == 1


def test_indices_are_unique_and_peer_records_come_back_as_stored(
    launcher: RedisStore, peer: OpenStore
) -> None:
    assert launcher.new_index() == 1
    peer("root", worker=False)
    peer("worker-1")
    assert launcher.new_index() == 4
    assert launcher.peers() == {
        "root": record("root", worker=False),
        "worker-1": record("worker-1"),
    }
    launcher.register("worker-1", b"newer")
    assert launcher.peers()["worker-1"] == b"newer"


def test_a_peer_that_left_is_forgotten(launcher: RedisStore, peer: OpenStore) -> None:
    worker = peer("worker")
    peer("other")
    worker.beat(60)
    launcher.unregister("worker")
    assert launcher.peers() == {"other": record("other")}
    assert launcher.alive("worker") is False


def test_a_refused_record_is_dropped_only_while_it_is_unchanged(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    peer("worker")
    odd = b"\xff\xfename"  # any bytes, as someone else may write them
    raw.hset(run_key(launcher, "peers"), odd, b"forged")
    [name] = [n for n in launcher.peers() if n != "worker"]
    assert launcher.drop_peers({name: b"something else"}) == 0
    assert launcher.drop_peers({name: b"forged", "worker": b"forged"}) == 1
    assert launcher.peers() == {"worker": record("worker")}
    assert launcher.drop_peers({}) == 0


def test_a_beat_with_a_record_writes_it_again_unless_the_run_ended(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    worker = peer("worker")
    raw.hset(run_key(launcher, "peers"), "worker", b"overwritten")
    worker.beat(60, record("worker"))
    assert launcher.peers() == {"worker": record("worker")}
    raw.delete(run_key(launcher, "peers"))
    worker.beat(60, record("worker"))
    assert not raw.exists(run_key(launcher, "peers"))


def test_a_taken_mark_is_kept_once_and_shown_to_later_markers(
    launcher: RedisStore, peer: OpenStore, raw: redis.Redis
) -> None:
    a, b = peer("worker-a"), peer("worker-b")
    assert a.mark_taken([]) == []
    assert a.mark_taken([(b"1:0", b"by a"), (b"2:0", b"by a"), (b"1:0", b"a again")]) == [
        None,
        None,
        b"by a",
    ]
    assert b.mark_taken([(b"2:0", b"by b"), (b"2:1", b"by b")]) == [b"by a", None]
    assert b.drop_mark(b"2:0", b"by b") is False
    assert b.drop_mark(b"2:0", b"by a") is True
    assert b.mark_taken([(b"2:0", b"by b")]) == [None]
    assert 0 < raw.ttl(run_key(launcher, "taken")) <= 86400


def test_one_hunger_mark_brings_one_hand_over(peer: OpenStore, raw: redis.Redis) -> None:
    hungry, busy = peer("hungry"), peer("busy")
    assert busy.anyone_hungry() is False
    hungry.mark_hungry(60)
    assert busy.anyone_hungry() is True
    assert busy.anyone_hungry() is False
    hungry.mark_hungry(0.05)
    poll(lambda: not raw.exists(run_key(hungry, "hungry")))
    assert busy.anyone_hungry() is False


def test_constants_are_defined_once_and_round_trip(launcher: RedisStore, peer: OpenStore) -> None:
    large = bytes(range(256)) * 20_000  # 5 MB
    assert launcher.constants() == {}
    assert launcher.set_const("pi", b"3.14159") is True
    assert launcher.set_const("pi", b"3") is False
    assert launcher.set_const("array", large) is True
    worker = peer("worker")
    assert worker.constants() == {"pi": b"3.14159", "array": large}
    assert worker.drop_consts({"pi": b"3"}) == 0
    assert worker.drop_consts({"pi": b"3.14159"}) == 1
    assert launcher.constants() == {"array": large}
    assert launcher.set_const("pi", b"3") is True


def test_the_run_description_is_written_once(launcher: RedisStore, peer: OpenStore) -> None:
    assert launcher.get_info() is None
    assert launcher.put_info(b"the run") is True
    assert launcher.put_info(b"another run") is False
    assert peer("worker").get_info() == b"the run"


def test_a_peer_is_alive_until_its_beat_expires(launcher: RedisStore, peer: OpenStore) -> None:
    worker = peer("worker")
    assert launcher.alive("worker") is False
    worker.beat(60)
    assert launcher.alive("worker") is True
    worker.beat(0.05)
    poll(lambda: not launcher.alive("worker"))


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
        launcher.register("launcher", record("launcher", worker=False))
        worker.new_index()
        worker.register("worker", record("worker"))
        launcher.put_info(b"info")
        launcher.set_const("c", b"1")
        launcher.commit(add=[task(1), task(2)], mail=[("worker", [b"hi"])])
        worker.take(1, 0)
        worker.mark_taken([(b"1:0", b"mark")])
        worker.beat(60, record("worker"))
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
    raw.set(f"look:{run_id}:info", b"another run")
    try:
        busy = transport.open_store(run_id=run_id, identity="launcher")
        assert busy.put_info(b"mine") is False
        busy.close()
        joiner = transport.open_store(run_id=run_id, identity="joiner")
        assert joiner.get_info() == b"another run"
        joiner.close()
        nowhere = transport.open_store(run_id=run_id + "-none", identity="joiner")
        assert nowhere.get_info() is None
        nowhere.close()
        assert list(raw.scan_iter(match="look:*")) == [f"look:{run_id}:info".encode()]
    finally:
        raw.delete(f"look:{run_id}:info")


def test_a_started_run_serves_a_worker_that_takes_before_registering(
    redis_url: str, run_id: str
) -> None:
    transport = RedisTransport({"url": redis_url, "prefix": "early"})
    launcher = transport.open_store(run_id=run_id, identity="launcher")
    try:
        assert launcher.put_info(b"info") is True
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
        worker.register("worker", record("worker"))
        assert launcher.peers() == {"worker": record("worker")}
    for call in (
        lambda: launcher.peers(),
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
        launcher.peers()
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
