"""A conformance suite for broker stores: call it from a store transport's tests.

Usage, in the test module of a store transport plugin::

    from scoop_core.testing import check_store

    def test_conformance():
        transport = MyTransport({})

        def make_store(identity, address):
            if address is None:
                return transport.open_store(run_id=new_run_id(), identity=identity)
            return transport.open_store(address=address, identity=identity)

        check_store(make_store)

``make_store(identity, address)`` opens a store object taking as
``identity``: for a new run when ``address`` is None, else on the run at
``address`` (a store's :attr:`~scoop_core.interfaces.BrokerStore.address`),
so a check can play several peers of one run. Each check is also a public
function in :data:`STORE_CHECKS`, so a test can be parametrized over them
and report each one by name.

Every check opens its own run, closes every store it opened (ending the
run), pass or fail. Checks fail, and wait (for a lease or a flag to run
out), as those of the transport suite do: see
:mod:`scoop_core.testing.conformance`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from scoop_core.errors import TransportClosed
from scoop_core.interfaces import BrokerStore, Entry, Frame
from scoop_core.testing.conformance import WAIT, BackgroundCall, as_bytes, expect, run_checks

__all__ = [
    "STORE_CHECKS",
    "check_address_and_identity",
    "check_claim_expired",
    "check_claim_from",
    "check_close",
    "check_commit_atomic",
    "check_commit_ordered",
    "check_end_run",
    "check_flags",
    "check_flag_expires",
    "check_leased_entry_not_handed_twice",
    "check_mail_order",
    "check_new_index_unique",
    "check_put_records_once",
    "check_put_records_replace",
    "check_queued",
    "check_records_exact_bytes",
    "check_drop_records",
    "check_renew_keeps_lease",
    "check_store",
    "check_take_timeout",
    "check_wakeup_across_threads",
    "check_wakeup_not_lost",
    "check_withdraw",
]

# WAIT, and the helpers imported with it, are the transport suite's: a store
# is checked with the same patience and the same messages.
MakeStore = Callable[[str, "str | None"], BrokerStore]

QUICK = 5.0
"""Seconds within which a call that must not block (for long) has to return."""

LEASE = 1.0
"""Seconds of the leases and flags the timing checks let run out."""

POLL = 0.01
"""Seconds between two looks while a check waits for a lease or a flag to run out."""

TABLE = "check-table_1"
"""A table name with every kind of character the contract allows."""

ODD = b"\xff\xfe\x00not utf-8\x80"
"""A record that is not UTF-8 text, with a NUL in it."""


def _frames(entry_or_frames: Entry | Sequence[Frame]) -> list[bytes]:
    frames = entry_or_frames.frames if isinstance(entry_or_frames, Entry) else entry_or_frames
    return [as_bytes(f) for f in frames]


@contextmanager
def _run(make_store: MakeStore, *identities: str) -> Iterator[list[BrokerStore]]:
    """One store per identity, all of one new run; all closed (the run ended) on the way out."""
    with ExitStack() as stack:
        first = make_store(identities[0], None)
        stack.callback(first.close, end_run=True)
        stores = [first]
        for identity in identities[1:]:
            store = make_store(identity, first.address)
            stack.callback(store.close)
            stores.append(store)
        yield stores


def _take(store: BrokerStore, count: int, want: int, what: str) -> list[Entry]:
    """Take until ``want`` entries came (each take waits), within :data:`WAIT` seconds."""
    got: list[Entry] = []
    deadline = time.monotonic() + WAIT
    while len(got) < want:
        remaining = deadline - time.monotonic()
        expect(remaining > 0, f"{what}: took {len(got)} of {want} entries within {WAIT} s")
        entries, _ = store.take(count - len(got), min(remaining, 1.0))
        got += entries
    return got


def _mail(store: BrokerStore, want: int, what: str) -> list[list[bytes]]:
    """Read mail until ``want`` messages came, within :data:`WAIT` seconds."""
    got: list[list[bytes]] = []
    deadline = time.monotonic() + WAIT
    while len(got) < want:
        remaining = deadline - time.monotonic()
        expect(remaining > 0, f"{what}: read {len(got)} of {want} messages within {WAIT} s")
        _, mail = store.take(0, min(remaining, 1.0))
        got += [_frames(m) for m in mail]
    return got


def _until(condition: Callable[[], Any], what: str) -> Any:
    """Look at ``condition`` until it holds (a lease or flag running out), within :data:`WAIT` s."""
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        expect(time.monotonic() < deadline, f"{what}: not within {WAIT} s")
        time.sleep(POLL)  # polling the store's clock, not synchronising threads
    return value


def _add(store: BrokerStore, *payloads: bytes) -> list[bytes]:
    return store.commit(add=[Entry((b"entry", p)) for p in payloads])


def check_address_and_identity(make_store: MakeStore) -> None:
    """``address`` is a non-empty string other stores open the run by; ``identity`` is as given."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        expect(
            isinstance(a.address, str) and a.address,
            f"BrokerStore.address must be a non-empty str, got {a.address!r}",
        )
        expect(b.address == a.address, f"a store opened at {a.address!r} says {b.address!r}")
        expect(
            (a.identity, b.identity) == ("check-a", "check-b"),
            f"BrokerStore.identity must be the identity given, got {a.identity!r}, {b.identity!r}",
        )


def check_commit_ordered(make_store: MakeStore) -> None:
    """commit returns distinct ids in order; take hands entries oldest first, frames exact."""
    with _run(make_store, "check-owner", "check-taker") as (owner, taker):
        ids = _add(owner, b"0", b"1") + _add(owner, b"2") + _add(owner)
        expect(len(ids) == 3, f"commit must return one id per added entry, got {ids!r}")
        expect(
            all(isinstance(i, bytes) and i for i in ids) and len(set(ids)) == 3,
            f"entry ids must be distinct, non-empty bytes, got {ids!r}",
        )
        got = _take(taker, 10, 3, "entries added by three commits")
        expect(
            [e.id for e in got] == ids,
            f"take must hand entries oldest first with commit's ids: expected {ids!r}, "
            f"got {[e.id for e in got]!r}",
        )
        expect(
            [_frames(e) for e in got] == [[b"entry", p] for p in (b"0", b"1", b"2")],
            f"entries must come back exactly as added, got {[_frames(e) for e in got]!r}",
        )


def check_commit_atomic(make_store: MakeStore) -> None:
    """A commit adds, mails and removes together; one that fails changes nothing."""
    with _run(make_store, "check-owner", "check-taker") as (owner, taker):
        [first] = _add(owner, b"first")
        [held] = _take(taker, 1, 1, "the first entry")
        [second] = taker.commit(
            add=[Entry((b"entry", b"second"))], mail=[("check-owner", [b"result"])], done=[held.id]
        )
        expect(
            owner.withdraw([first]) == [""],
            "commit(done=[id]) must remove the entry: withdraw should say the queue has none",
        )
        expect(_mail(owner, 1, "the mail of a commit") == [[b"result"]], "mail must arrive whole")
        try:
            owner.commit(add=[Entry((b"entry", b"third"))], mail=[("check-taker", [])])
        except ValueError:
            pass
        else:
            raise AssertionError("a commit with an empty message must raise ValueError")
        queued = [_frames(e) for e in owner.queued()]
        expect(
            queued == [[b"entry", b"second"]],
            f"a commit that raised must change nothing; the queue holds {queued!r}",
        )
        expect(taker.take(0, 0) == ([], []), "a commit that raised must deliver no mail")
        expect(second, "commit must return the id of the entry it added")


def check_leased_entry_not_handed_twice(make_store: MakeStore) -> None:
    """An entry taken is leased to its taker: no other taker gets it, take(0) takes none."""
    with _run(make_store, "check-owner", "check-a", "check-b") as (owner, a, b):
        [entry_id] = _add(owner, b"only")
        expect(owner.take(0, 0)[0] == [], "take(0, ...) must take no entries (it reads mail only)")
        [got] = _take(a, 5, 1, "the only entry")
        expect(got.id == entry_id, f"took {got.id!r}, expected {entry_id!r}")
        entries, _ = b.take(5, 0.2)
        expect(entries == [], f"a leased entry was handed to a second taker: {entries!r}")
        expect(
            owner.withdraw([entry_id]) == ["check-a"],
            "withdraw must name the holder of a taken entry and leave it be",
        )


def check_renew_keeps_lease(make_store: MakeStore) -> None:
    """An entry whose lease is renewed is not claimed; one whose lease ran out is."""
    with _run(make_store, "check-owner", "check-slow", "check-claimer") as (owner, slow, claimer):
        kept, lapsed = _add(owner, b"kept", b"lapsed")
        _take(slow, 2, 2, "both entries")
        expect(claimer.claim_expired(60) == [], "claim_expired must wait for the whole lease")

        def claim() -> list[Entry]:
            slow.renew([kept])
            return claimer.claim_expired(LEASE)

        claimed = _until(claim, "an entry whose lease was not renewed to be claimed")
        expect(
            [e.id for e in claimed] == [lapsed],
            f"claim_expired must take only the entry not renewed ({lapsed!r}), "
            f"got {[e.id for e in claimed]!r}",
        )
        expect(
            owner.withdraw([kept, lapsed]) == ["check-slow", "check-claimer"],
            "a renewed lease stays its holder's; a claimed entry is the claimer's",
        )


def check_claim_expired(make_store: MakeStore) -> None:
    """claim_expired names the previous holder and leases the entry to the claimer."""
    with _run(make_store, "check-owner", "check-lost", "check-claimer") as (owner, lost, claimer):
        [entry_id] = _add(owner, b"held")
        _take(lost, 1, 1, "the entry")
        expect(
            claimer.claim_expired(60) == [], "claim_expired must not take an entry before its lease"
        )
        [claimed] = _until(lambda: claimer.claim_expired(LEASE), "an expired lease to be claimed")
        expect(
            claimed.id == entry_id and claimed.holder == "check-lost",
            f"a claimed entry must keep its id and name its previous holder, got {claimed!r}",
        )
        expect(_frames(claimed) == [b"entry", b"held"], "a claimed entry must keep its frames")
        expect(
            claimer.claim_expired(0) == [],
            "claim_expired must not return the claimer's own entries",
        )
        expect(
            lost.claim_expired(60) == [] and owner.withdraw([entry_id]) == ["check-claimer"],
            "a claimed entry is leased to the claimer for a new lease",
        )
        claimer.commit(done=[entry_id])
        expect(owner.withdraw([entry_id]) == [""], "the claimer's commit(done=...) removes it")


def check_claim_from(make_store: MakeStore) -> None:
    """claim_from takes every entry of a holder, whatever its lease."""
    with _run(make_store, "check-owner", "check-dead", "check-heir") as (owner, dead, heir):
        ids = _add(owner, b"a", b"b", b"c")
        _take(dead, 2, 2, "two entries")
        claimed = heir.claim_from("check-dead")
        expect(
            sorted(e.id for e in claimed) == sorted(ids[:2])
            and all(e.holder == "check-dead" for e in claimed),
            f"claim_from must take both entries of check-dead naming it, got {claimed!r}",
        )
        expect(heir.claim_from("check-dead") == [], "check-dead holds nothing any more")
        expect(
            owner.withdraw(ids[:2]) == ["check-heir", "check-heir"],
            "entries claimed are the claimer's",
        )
        try:
            heir.claim_from("check-heir")
        except ValueError:
            pass
        else:
            raise AssertionError("claim_from of the store's own identity must raise ValueError")


def check_withdraw(make_store: MakeStore) -> None:
    """withdraw answers None (removed), the holder's name, or "" (no such entry), in order."""
    with _run(make_store, "check-owner", "check-taker") as (owner, taker):
        first, second, third = _add(owner, b"1", b"2", b"3")
        [taken] = _take(taker, 1, 1, "the oldest entry")
        answers = owner.withdraw([third, taken.id, b"0-1", third])
        expect(
            answers == [None, "check-taker", "", ""],
            "withdraw([unheld, held, never there, just withdrawn]) must answer "
            f"[None, 'check-taker', '', ''], got {answers!r}",
        )
        entries, _ = taker.take(5, 0.2)
        expect(
            [e.id for e in entries] == [second],
            f"a withdrawn entry must never be taken; took {[e.id for e in entries]!r}",
        )
        expect(owner.withdraw([]) == [], "withdraw([]) must answer []")


def check_queued(make_store: MakeStore) -> None:
    """queued lists every entry nobody holds, oldest first, with its frames."""
    with _run(make_store, "check-owner", "check-taker") as (owner, taker):
        expect(owner.queued() == [], "a new run's queue is empty")
        ids = _add(owner, b"1", b"2", b"3")
        _take(taker, 1, 1, "the oldest entry")
        queued = owner.queued()
        expect(
            [e.id for e in queued] == ids[1:],
            f"queued must list the entries nobody holds, oldest first: expected {ids[1:]!r}, "
            f"got {[e.id for e in queued]!r}",
        )
        expect(
            [_frames(e) for e in queued] == [[b"entry", b"2"], [b"entry", b"3"]],
            "queued must return each entry's frames exactly",
        )


def check_mail_order(make_store: MakeStore) -> None:
    """Mail to one mailbox arrives in commit order, once, to its peer only, even if sent early."""
    with _run(make_store, "check-sender", "check-other") as (sender, other):
        for n in range(5):
            sender.commit(mail=[("check-late", [b"m%d" % n, b"x" * n])])
        sender.commit(mail=[("check-late", [b"m5"]), ("check-other", [b"hi"])])
        late = make_store("check-late", sender.address)
        try:
            got = _mail(late, 6, "mail sent before its peer opened the store")
            expected = [[b"m%d" % n, b"x" * n] for n in range(5)] + [[b"m5"]]
            expect(got == expected, f"mail must arrive in commit order: got {got!r}")
            expect(late.take(0, 0.1) == ([], []), "mail returned once must be gone")
            expect(_mail(other, 1, "other's mail") == [[b"hi"]], "each peer reads its own mail")
        finally:
            late.close()


def check_put_records_once(make_store: MakeStore) -> None:
    """put_records(replace=False) stores a name once and answers with the record already there."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        expect(a.records(TABLE) == {}, "a table nobody wrote is empty")
        answers = a.put_records(TABLE, [("x", b"1"), ("y", b"2"), ("x", b"3")])
        expect(
            answers == [None, None, b"1"],
            f"put_records must answer None where stored, else the record there: got {answers!r}",
        )
        expect(
            b.put_records(TABLE, [("y", b"other"), ("z", b"3")]) == [b"2", None],
            "a second store must see the first one's records",
        )
        expect(
            b.records(TABLE) == {"x": b"1", "y": b"2", "z": b"3"},
            f"records must hold what was stored once, got {b.records(TABLE)!r}",
        )
        expect(a.records("check-other") == {}, "tables are separate")
        expect(a.put_records(TABLE, []) == [], "put_records of nothing answers []")


def check_put_records_replace(make_store: MakeStore) -> None:
    """put_records(replace=True) overwrites, but never creates a table."""
    with _run(make_store, "check-a") as (a,):
        answers = a.put_records(TABLE, [("x", b"1")], replace=True)
        expect(answers == [None], f"put_records(replace=True) answers None each, got {answers!r}")
        expect(
            a.records(TABLE) == {},
            "put_records(replace=True) must not create a table (a run that ended stays ended)",
        )
        a.put_records(TABLE, [("x", b"1")])
        a.put_records(TABLE, [("x", b"2"), ("y", b"3")], replace=True)
        expect(
            a.records(TABLE) == {"x": b"2", "y": b"3"},
            f"put_records(replace=True) must store over any record, got {a.records(TABLE)!r}",
        )


def check_records_exact_bytes(make_store: MakeStore) -> None:
    """Records come back exactly: non-UTF-8 bytes, the empty record, a large one, any name."""
    large = bytes(range(256)) * 4096
    stored = {"odd": ODD, "empty": b"", "large": large, "naïve name: ∂": b"text"}
    with _run(make_store, "check-a", "check-b") as (a, b):
        expect(
            a.put_records(TABLE, list(stored.items())) == [None] * 4,
            "every record is new",
        )
        got = b.records(TABLE)
        expect(set(got) == set(stored), f"expected names {sorted(stored)}, got {sorted(got)}")
        for name, record in stored.items():
            expect(
                got[name] == record and isinstance(got[name], bytes),
                f"record {name!r} must come back as exactly the bytes stored",
            )
        [there] = b.put_records(TABLE, [("empty", b"not empty")])
        expect(there == b"", f"an empty record is a record: expected b'', got {there!r}")


def check_drop_records(make_store: MakeStore) -> None:
    """drop_records deletes a record only if it is still exactly that one."""
    with _run(make_store, "check-a") as (a,):
        a.put_records(TABLE, [("x", b"1"), ("y", ODD), ("z", b"")])
        expect(a.drop_records(TABLE, {}) == 0, "dropping nothing deletes nothing")
        dropped = a.drop_records(TABLE, {"x": b"other", "y": ODD, "z": b"", "w": b"1"})
        expect(dropped == 2, f"drop_records must delete only exact matches: 2, got {dropped}")
        expect(a.records(TABLE) == {"x": b"1"}, f"left {a.records(TABLE)!r}, expected x only")
        expect(
            a.put_records(TABLE, [("y", b"new")]) == [None], "a dropped name can be stored again"
        )


def check_new_index_unique(make_store: MakeStore) -> None:
    """new_index gives numbers >= 1, unique across the run's stores."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        got = [store.new_index() for _ in range(10) for store in (a, b)]
        expect(
            all(isinstance(i, int) and i >= 1 for i in got) and len(set(got)) == len(got),
            f"new_index must give distinct numbers >= 1, got {got!r}",
        )


def check_flags(make_store: MakeStore) -> None:
    """A flag raised by one store is up for every store of the run; ttl <= 0 lowers it."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        expect(not b.flagged("alive:check-a"), "a flag nobody raised is down")
        a.flag("alive:check-a", 60)
        expect(b.flagged("alive:check-a"), "a raised flag must be up for other stores")
        expect(not b.flagged("alive:check-b"), "flags are separate")
        b.flag("alive:check-a", 0)
        expect(not a.flagged("alive:check-a"), "flag(name, 0) must lower it at once")
        a.flag("hungry", 60)
        a.flag("hungry", -1)
        expect(not b.flagged("hungry"), "flag(name, ttl < 0) must lower it at once")


def check_flag_expires(make_store: MakeStore) -> None:
    """A flag goes down by itself after its ttl; raising it again restarts the clock."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        a.flag("short", LEASE)
        expect(b.flagged("short"), "a flag is up within its ttl")
        _until(lambda: not b.flagged("short"), f"a flag raised for {LEASE} s to go down")
        a.flag("again", LEASE)
        a.flag("again", 60)
        start = time.monotonic()
        while time.monotonic() - start < 2 * LEASE:
            expect(b.flagged("again"), "a flag raised again for 60 s went down with its old ttl")
            time.sleep(POLL * 10)  # watching the flag stay up across its first ttl


def check_take_timeout(make_store: MakeStore) -> None:
    """take waits about ``timeout`` for nothing, and returns at once when there is something."""
    with _run(make_store, "check-a") as (a,):
        running = BackgroundCall(lambda: a.take(5, 0.2))
        expect(running.done_within(QUICK), f"take(5, 0.2) still blocked after {QUICK} s")
        expect(running.value() == ([], []), "take of an empty run must return nothing")
        expect(a.take(5, 0) == ([], []), "take(5, 0) polls")
        _add(a, b"x")
        running = BackgroundCall(lambda: a.take(5, WAIT))
        expect(running.done_within(QUICK), "take with an entry queued must return at once")
        entries, _ = running.value()
        expect(len(entries) == 1, f"take must return the queued entry, got {entries!r}")


def check_wakeup_across_threads(make_store: MakeStore) -> None:
    """wakeup from another thread makes a waiting take return soon."""
    with _run(make_store, "check-a") as (a,):
        for _ in range(3):
            waiting = BackgroundCall(lambda: a.take(5, WAIT))
            expect(not waiting.done_within(0.2), "take(5, WAIT) returned at once with nothing")
            threading.Thread(target=a.wakeup, name="scoop-store-check-wakeup").start()
            expect(waiting.done_within(QUICK), f"take still waiting {QUICK} s after wakeup()")
            expect(waiting.value() == ([], []), "a woken take returns what there is: nothing")


def check_wakeup_not_lost(make_store: MakeStore) -> None:
    """A wakeup with no take waiting makes the next take return at once."""
    with _run(make_store, "check-a") as (a,):
        a.wakeup()
        a.wakeup()
        running = BackgroundCall(lambda: a.take(5, WAIT))
        expect(running.done_within(QUICK), "a wakeup before take was lost")
        _add(a, b"x")
        expect(len(_take(a, 5, 1, "an entry after a wake-up")) == 1, "take works after wakeups")


def check_close(make_store: MakeStore) -> None:
    """close ends a waiting take, is idempotent, and a closed store raises TransportClosed."""
    with _run(make_store, "check-a", "check-b") as (a, b):
        waiting = BackgroundCall(lambda: b.take(5, WAIT))
        expect(not waiting.done_within(0.2), "take(5, WAIT) returned at once with nothing")
        BackgroundCall(b.close)
        expect(waiting.done_within(QUICK), f"take still waiting {QUICK} s after close()")
        b.close()
        b.wakeup()
        try:
            b.put_records(TABLE, [("x", b"1")])
        except TransportClosed:
            pass
        else:
            raise AssertionError("a closed store must raise TransportClosed")
        expect(a.records(TABLE) == {}, "a closed store must write nothing")
        _add(a, b"still")
        expect(len(_take(a, 1, 1, "an entry after another store closed")) == 1, "a works on")


def check_end_run(make_store: MakeStore) -> None:
    """close(end_run=True) deletes everything of the run; it stays ended."""
    with ExitStack() as stack:
        a = make_store("check-a", None)
        stack.callback(a.close)
        b = make_store("check-b", a.address)
        stack.callback(b.close)
        _add(a, b"x")
        a.commit(mail=[("check-b", [b"letter"])])
        a.put_records(TABLE, [("x", b"1")])
        a.flag("alive:check-a", 60)
        a.new_index()
        a.close(end_run=True)
        a.close(end_run=True)
        expect(b.records(TABLE) == {}, "end_run must delete the run's tables")
        expect(b.queued() == [], "end_run must delete the run's queue")
        expect(not b.flagged("alive:check-a"), "end_run must delete the run's flags")
        expect(b.take(5, 0) == ([], []), "end_run must delete the run's mailboxes")
        b.put_records(TABLE, [("x", b"2")], replace=True)
        expect(b.records(TABLE) == {}, "a replacing write must not bring an ended run back")


STORE_CHECKS: tuple[Callable[[MakeStore], None], ...] = (
    check_address_and_identity,
    check_commit_ordered,
    check_commit_atomic,
    check_leased_entry_not_handed_twice,
    check_renew_keeps_lease,
    check_claim_expired,
    check_claim_from,
    check_withdraw,
    check_queued,
    check_mail_order,
    check_put_records_once,
    check_put_records_replace,
    check_records_exact_bytes,
    check_drop_records,
    check_new_index_unique,
    check_flags,
    check_flag_expires,
    check_take_timeout,
    check_wakeup_across_threads,
    check_wakeup_not_lost,
    check_close,
    check_end_run,
)
"""Every check :func:`check_store` runs, in order; each takes ``make_store``."""


def check_store(make_store: MakeStore) -> None:
    """Check that the stores ``make_store`` opens keep the BrokerStore contract.

    Runs every check in :data:`STORE_CHECKS` and raises
    :class:`AssertionError` naming the first one that fails.
    """
    run_checks(STORE_CHECKS, make_store)
