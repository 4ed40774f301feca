"""The broker's policy on a store (``BrokerPolicy(shared_queue=True)``), driven directly.

On a store-backed run every peer holds a policy of its own, whose one local
peer is its runtime. Here a root's policy and workers' policies are wired
together through :class:`Store`, a stand-in for the store made of plain
lists and dicts (queue entries with ids, mailboxes, a table of constants),
which carries out the policies' store operations as the store driver does
and answers withdrawals as a store would. No I/O: the stories read like
those of ``test_broker_policy.py``, with mail between peers in between.
A Hypothesis state machine then shuffles submissions, credit, cancels,
hand-backs and deaths of workers over the same stand-in, and checks that
every future comes back to its owner exactly once.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from policy_peers import FakePeers

from scoop_core import broker_policy
from scoop_core import messages as m
from scoop_core.broker_policy import BrokerPolicy, lost_reason
from scoop_core.errors import ConstantError
from scoop_core.states import RUNNING
from scoop_core.worker_book import WorkerBook

ROOT, W1, W2 = b"root", b"w1", b"w2"
LAUNCHER = b"launcher"  # who reports a dead worker's entries (report_lost)
TIMEOUT = 30.0  # the policies' heartbeat_timeout


@dataclass
class Entry:
    """A queue entry: what the store driver signs into it, and who took it."""

    task: m.Task
    owner: bytes
    attempt: int
    losses: int
    lost_on: tuple[str, ...]
    holder: bytes = b""


@dataclass
class Commit:
    """One turn of one peer: the mail it sent to other peers and its store operations."""

    peer: bytes
    mail: list[tuple[bytes, m.Message]]
    ops: list[broker_policy.StoreOp]


class Store(FakePeers):
    """A run on a store: a policy per peer, the queue, the mailboxes, the constants.

    The runtimes are fake: what a policy sends its runtime waits in
    ``inbox`` for the story to read, and the story speaks for the runtime
    with :meth:`send`."""

    def __init__(self, **options: float) -> None:
        self.options = options
        self.policies: dict[bytes, BrokerPolicy] = {}
        self.queue: dict[bytes, Entry] = {}  # oldest first
        self.mail: dict[bytes, list[tuple[bytes, m.Message]]] = defaultdict(list)
        self.constants: dict[str, tuple[bytes, ...]] = {}
        self.inbox: dict[bytes, list[m.Message]] = defaultdict(list)
        self.commits: list[Commit] = []
        self.index: dict[bytes, int] = {}
        self.seq: dict[bytes, int] = defaultdict(int)
        self._ids = itertools.count(1)
        self._indexes = itertools.count(1)

    # -- peers ------------------------------------------------------------------

    def join(self, peer: bytes, slots: int = 0) -> m.Welcome:
        """``peer``'s runtime opens the store and says hello to its own policy."""
        policy = BrokerPolicy(shared_queue=True, heartbeat_timeout=TIMEOUT, **self.options, now=0.0)
        policy.next_index = next(self._indexes)  # the store's new_index
        policy.constants.update(self.constants)
        self.policies[peer] = policy
        self.count_workers()
        return super().join(peer, slots)

    def count_workers(self) -> None:
        """What each driver's heartbeat counts: the live workers elsewhere."""
        for peer, policy in self.policies.items():
            policy.remote_workers = sum(
                1
                for other, p in self.policies.items()
                if other != peer and any(r.is_worker for r in p.peers.values())
            )

    def gone(self, peer: bytes) -> None:
        """``peer``'s process is over: its policy and its mailbox go."""
        del self.policies[peer]
        self.mail.pop(peer, None)
        self.inbox.pop(peer, None)
        self.count_workers()

    def kill(self, peer: bytes) -> None:
        """``peer`` dies: the launcher claims the entries it held and tells
        their owners, in the commit that removes them (report_lost)."""
        self.gone(peer)
        back: dict[bytes, list[Entry]] = defaultdict(list)
        for entry_id, entry in list(self.queue.items()):
            if entry.holder == peer:
                del self.queue[entry_id]
                back[entry.owner].append(entry)
        for owner, entries in back.items():
            fids = [e.task.fid for e in entries]
            attempts = [e.attempt for e in entries]
            self.mail[owner].append((LAUNCHER, m.Returned(fids, attempts, peer.decode())))

    # -- a policy's turn, carried out --------------------------------------------

    def send(self, peer: bytes, msg: m.Message) -> None:
        """``peer``'s runtime sends ``msg`` to its policy."""
        self.policies[peer].handle(peer, msg)
        self.turn(peer)

    def turn(self, peer: bytes) -> None:
        """Dispatch, and carry out what ``peer``'s policy decided, until it
        decides nothing more (as StoreEndpoint._turn)."""
        policy = self.policies[peer]
        while True:
            policy.dispatch()
            outbox, ops = policy.take_outbox(), policy.take_store_ops()
            if not outbox and not ops:
                return
            mail = [(to, msg) for to, msg in outbox if to != peer]
            self.commits.append(Commit(peer, mail, ops))
            for to, msg in outbox:
                if to == peer:
                    self.inbox[peer].append(msg)
                elif to in self.policies:
                    self.mail[to].append((peer, msg))
            for op in ops:
                if isinstance(op, broker_policy.Enqueue):
                    entry_id = b"%d-0" % next(self._ids)
                    fut = op.fut
                    self.queue[entry_id] = Entry(
                        fut.task, peer, fut.attempt, fut.losses, tuple(fut.lost_on)
                    )
                    policy.enqueued(fut.fid, entry_id)
                elif isinstance(op, broker_policy.Ack):
                    self.queue.pop(op.entry, None)
                elif isinstance(op, broker_policy.Broadcast):
                    for other in self.policies:
                        if other != peer:
                            self.mail[other].append((peer, op.msg))
            for op in ops:
                if isinstance(op, broker_policy.Withdraw):
                    policy.withdrawn(op.fid, self._withdraw(op.entry))
            for op in ops:
                if isinstance(op, broker_policy.DefineConst):
                    defined = op.name not in self.constants
                    if defined:
                        self.constants[op.name] = tuple(bytes(f) for f in op.frames)
                    policy.const_defined(op.name, op.frames, op.asker, defined)

    def _withdraw(self, entry_id: bytes) -> str | None:
        entry = self.queue.get(entry_id)
        if entry is None:
            return ""
        if entry.holder:
            return entry.holder.decode()
        del self.queue[entry_id]
        return None

    def fetch(self, peer: bytes, want: int | None = None) -> None:
        """``peer``'s driver takes what its policy wants from the queue, and its mail."""
        policy = self.policies[peer]
        if want is None:
            want = policy.wants()
        arrivals = []
        for entry_id, entry in self.queue.items():
            if len(arrivals) >= want:
                break
            if not entry.holder:
                entry.holder = peer
                arrivals.append(
                    broker_policy.Arrival(
                        entry.task,
                        entry.owner,
                        entry_id,
                        entry.attempt,
                        entry.losses,
                        entry.lost_on,
                    )
                )
        if arrivals:
            policy.arrived(arrivals)
        for sender, msg in self.mail.pop(peer, []):
            policy.handle_mail(sender, msg)
        self.turn(peer)

    def deliver(self, peer: bytes) -> None:
        """``peer``'s driver reads its mail only."""
        self.fetch(peer, want=0)

    def tick(self, peer: bytes, now: float) -> None:
        self.policies[peer].tick(now)
        self.turn(peer)

    # -- the runtimes' side ------------------------------------------------------

    def take(self, peer: bytes) -> list[m.Message]:
        """What ``peer``'s runtime got since the last look (heartbeats aside)."""
        msgs = self.inbox.pop(peer, [])
        return [msg for msg in msgs if not isinstance(msg, m.Heartbeat)]

    def taken_by(self, worker: bytes) -> int:
        """A root future that ``worker``, asking for one, took from the queue."""
        self.send(worker, m.Ready(1))
        (fid,) = self.submit(ROOT)
        self.fetch(worker)
        return fid

    # -- what the store holds ------------------------------------------------------

    def entry_of(self, fid: int) -> tuple[bytes, Entry]:
        (found,) = [(i, e) for i, e in self.queue.items() if e.task.fid == fid]
        return found

    def queued(self) -> list[int]:
        """Ids of the futures in the store's queue that nobody took."""
        return [e.task.fid for e in self.queue.values() if not e.holder]


def outcomes(msgs: list[m.Message]) -> list[tuple[int, int]]:
    return [(o.fid, o.status) for msg in msgs if isinstance(msg, m.Results) for o in msg.outcomes]


def reasons(msgs: list[m.Message]) -> dict[int, str]:
    """The text of every LOST outcome in ``msgs``."""
    return {
        o.fid: bytes(o.frames[0]).decode()
        for msg in msgs
        if isinstance(msg, m.Results)
        for o in msg.outcomes
        if o.status == m.LOST
    }


@pytest.fixture
def store() -> Store:
    store = Store()
    store.join(ROOT)
    store.join(W1, slots=1)
    store.join(W2, slots=1)
    return store


def no_futures_left(store: Store) -> bool:
    return all(not p.futures for p in store.policies.values())


# -- a future's way through the store ---------------------------------------------


def test_a_future_is_queued_in_the_store_runs_elsewhere_and_its_result_comes_back_once(
    store: Store,
) -> None:
    (fid,) = store.submit(ROOT)
    assert isinstance(store.commits[-1].ops[0], broker_policy.Enqueue)
    assert store.queued() == [fid]
    assert store.take(ROOT) == []

    store.send(W1, m.Ready(1))
    store.fetch(W1)
    assert store.tasks_for(W1) == [fid]
    store.fetch(W2)
    assert store.tasks_for(W2) == []  # asked for nothing, takes nothing

    store.send(W1, m.Started([fid]))
    store.deliver(ROOT)
    assert store.take(ROOT) == [m.Started([fid])]

    entry_id, _ = store.entry_of(fid)
    outcome = m.Outcome(fid, m.OK, 0.5, (b"42",))
    store.send(W1, m.Results((outcome,)))
    # The result is mailed in the very commit that removes the entry.
    assert store.commits[-1] == Commit(
        W1, [(ROOT, m.Results((outcome,)))], [broker_policy.Ack(entry_id)]
    )
    assert store.queue == {}
    store.deliver(ROOT)
    assert store.take(ROOT) == [m.Results((outcome,))]
    assert no_futures_left(store)

    # The same answer again reaches nobody.
    store.send(W1, m.Results((outcome,)))
    store.deliver(ROOT)
    assert store.take(ROOT) == []


def test_a_worker_takes_from_the_store_only_what_its_runtime_asked_for(store: Store) -> None:
    fids = store.submit(ROOT, 5)
    store.send(W1, m.Ready(2))
    assert store.policies[W1].wants() == 2
    store.fetch(W1)
    assert store.tasks_for(W1) == fids[:2]
    assert store.policies[W1].wants() == 0
    store.send(W2, m.Ready(1))
    store.fetch(W2)
    assert store.tasks_for(W2) == fids[2:3]
    assert store.queued() == fids[3:]


# -- cancelling --------------------------------------------------------------------


def test_cancel_of_a_future_still_in_the_queue_takes_it_out_and_it_never_runs(
    store: Store,
) -> None:
    (fid,) = store.submit(ROOT)
    entry_id, _ = store.entry_of(fid)
    store.send(ROOT, m.Cancel(fid))
    assert broker_policy.Withdraw(fid, entry_id) in store.commits[-2].ops
    assert store.take(ROOT) == [m.CancelReply(fid, True)]
    assert store.queue == {}
    store.send(W1, m.Ready(1))
    store.fetch(W1)
    assert store.tasks_for(W1) == []
    assert no_futures_left(store)


def test_cancel_of_a_future_held_unstarted_elsewhere_asks_its_holder(store: Store) -> None:
    store.send(W1, m.Ready(2))
    running, waiting = store.submit(ROOT, 2)
    store.fetch(W1)
    assert store.tasks_for(W1) == [running, waiting]
    store.send(W1, m.Started([running]))

    store.send(ROOT, m.Cancel(waiting))
    # The store says W1 took it: only W1's runtime knows whether it started.
    assert store.mail[W1] == [(ROOT, m.Cancel(waiting))]
    assert store.take(ROOT) == []
    store.deliver(W1)
    assert store.take(W1) == [m.Cancel(waiting)]
    entry_id, _ = store.entry_of(waiting)
    store.send(W1, m.CancelReply(waiting, True))
    assert store.commits[-1] == Commit(
        W1, [(ROOT, m.CancelReply(waiting, True))], [broker_policy.Ack(entry_id)]
    )
    store.deliver(ROOT)
    assert m.CancelReply(waiting, True) in store.take(ROOT)
    assert store.policies[ROOT].futures.keys() == {running}

    store.answer(W1, [running])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(running, m.OK)]
    assert store.queue == {} and no_futures_left(store)


def test_cancel_of_a_future_started_elsewhere_is_refused_and_it_finishes(store: Store) -> None:
    fid = store.taken_by(W1)
    assert store.tasks_for(W1) == [fid]
    store.send(W1, m.Started([fid]))
    # The owner has not read the Started mail: it asks the store, then W1.
    store.send(ROOT, m.Cancel(fid))
    store.deliver(W1)
    assert store.take(W1) == []  # W1's policy knows it started: its runtime is not asked
    store.deliver(ROOT)
    msgs = store.take(ROOT)
    assert m.CancelReply(fid, False) in msgs and m.Started([fid]) in msgs
    store.answer(W1, [fid])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(fid, m.OK)]
    assert no_futures_left(store)


def test_a_cancel_that_crosses_the_result_of_a_holder_that_then_dies_is_still_answered(
    store: Store,
) -> None:
    fid = store.taken_by(W1)
    assert store.tasks_for(W1) == [fid]
    store.send(ROOT, m.Cancel(fid))  # W1 holds it: the Cancel is mailed to W1
    store.answer(W1, [fid])  # W1 finishes it before it reads its mail...
    store.kill(W1)  # ...and dies
    store.deliver(ROOT)
    msgs = store.take(ROOT)
    assert outcomes(msgs) == [(fid, m.OK)]
    assert m.CancelReply(fid, False) in msgs


# -- futures back to their owner: Returned -------------------------------------------


def test_a_future_lost_with_its_worker_is_queued_again_by_its_owner_with_a_loss(
    store: Store,
) -> None:
    fid = store.taken_by(W1)
    store.send(W1, m.Started([fid]))
    store.kill(W1)
    assert store.mail[ROOT][-1] == (LAUNCHER, m.Returned([fid], [0], "w1"))
    store.deliver(ROOT)
    _, entry = store.entry_of(fid)
    assert (entry.attempt, entry.losses, entry.lost_on, entry.holder) == (1, 1, ("w1",), b"")

    store.send(W2, m.Ready(1))
    store.fetch(W2)
    assert store.tasks_for(W2) == [fid]  # W2 holds nothing else: the suspect runs there
    store.answer(W2, [fid])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(fid, m.OK)]
    assert store.queue == {} and no_futures_left(store)


def test_a_future_lost_max_losses_times_fails_saying_where() -> None:
    store = Store(max_losses=2)
    store.join(ROOT)
    (fid,) = store.submit(ROOT)
    for worker in (b"w1", b"w2"):
        store.join(worker, slots=1)
        store.send(worker, m.Ready(1))
        store.fetch(worker)
        assert store.tasks_for(worker) == [fid]
        store.kill(worker)
        store.deliver(ROOT)
    msgs = store.take(ROOT)
    assert outcomes(msgs) == [(fid, m.LOST)]
    assert reasons(msgs)[fid] == lost_reason(fid, 2, ["w1", "w2"])
    assert store.queue == {} and no_futures_left(store)


def test_a_lost_future_whose_cancel_was_pending_is_cancelled_not_run_again(
    store: Store,
) -> None:
    fid = store.taken_by(W1)
    store.send(ROOT, m.Cancel(fid))
    assert store.mail[W1] == [(ROOT, m.Cancel(fid))]
    store.kill(W1)  # before it read the Cancel
    store.deliver(ROOT)
    assert store.take(ROOT) == [m.CancelReply(fid, True)]
    assert store.queue == {} and no_futures_left(store)


def test_a_future_handed_back_is_queued_again_without_a_loss(store: Store) -> None:
    fid = store.taken_by(W1)
    assert store.tasks_for(W1) == [fid]
    store.send(W1, m.Bye("leaving"))
    assert store.mail[ROOT] == [(W1, m.Returned([fid], [0], ""))]
    store.gone(W1)
    store.deliver(ROOT)
    _, entry = store.entry_of(fid)
    assert (entry.attempt, entry.losses, entry.holder) == (1, 0, b"")
    # Not a suspect: it goes to W2 with other work, as any future.
    store.send(W2, m.Ready(2))
    (other,) = store.submit(ROOT)
    store.fetch(W2)
    assert store.tasks_for(W2) == [fid, other]
    store.answer(W2, [fid, other])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(fid, m.OK), (other, m.OK)]


def test_word_of_an_older_attempt_changes_nothing(store: Store) -> None:
    fid = store.taken_by(W1)
    store.kill(W1)
    store.deliver(ROOT)
    _, before = store.entry_of(fid)
    assert before.attempt == 1
    # A second report of attempt 0 (someone claimed the same entry too).
    store.mail[ROOT].append((LAUNCHER, m.Returned([fid], [0], "w1")))
    store.deliver(ROOT)
    _, after = store.entry_of(fid)
    assert after == before and len(store.queue) == 1
    assert store.take(ROOT) == []
    assert store.policies[ROOT].futures[fid].losses == 1


# -- suspects -----------------------------------------------------------------------


def suspect_at_a_busy_worker(store: Store) -> tuple[int, int, int]:
    """W1 holds two futures of the root's, started one; a future lost once
    (with W2) arrives there. Returns (started, unstarted, suspect)."""
    store.send(W1, m.Ready(2))
    started, unstarted = store.submit(ROOT, 2)
    store.fetch(W1)
    assert store.tasks_for(W1) == [started, unstarted]
    store.send(W1, m.Started([started]))
    store.send(W2, m.Ready(1))
    (suspect,) = store.submit(ROOT)
    store.fetch(W2)
    store.kill(W2)
    store.deliver(ROOT)
    store.send(W1, m.Ready(1))
    store.fetch(W1)
    assert store.entry_of(suspect)[1].holder == W1
    return started, unstarted, suspect


def test_a_suspect_at_a_worker_holding_others_futures_waits_until_it_is_free(
    store: Store,
) -> None:
    started, unstarted, suspect = suspect_at_a_busy_worker(store)
    # It waits; the future W1 has not started is asked back; W1 takes nothing more.
    assert store.take(W1) == [m.Recall(unstarted)]
    assert store.policies[W1].wants() == 0
    store.submit(ROOT, 2)
    store.fetch(W1)
    assert store.tasks_for(W1) == []

    store.send(W1, m.RecallReply(unstarted, True))
    assert store.mail[ROOT] == [(W1, m.Returned([unstarted], [0], ""))]
    store.deliver(ROOT)
    _, entry = store.entry_of(unstarted)
    assert (entry.attempt, entry.losses, entry.holder) == (1, 0, b"")

    store.answer(W1, [started])
    # Free now: the suspect runs there, alone.
    assert store.tasks_for(W1) == [suspect]
    store.answer(W1, [suspect])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(started, m.OK), (suspect, m.OK)]


def test_a_suspect_goes_back_to_the_queue_if_its_worker_is_never_free(store: Store) -> None:
    started, unstarted, suspect = suspect_at_a_busy_worker(store)
    assert store.take(W1) == [m.Recall(unstarted)]
    store.send(W1, m.RecallReply(unstarted, False))  # it started after all
    store.deliver(ROOT)
    assert store.take(ROOT) == [m.Started([started]), m.Started([unstarted])]
    store.tick(W1, TIMEOUT / 2)
    assert store.mail[ROOT] == [] and store.policies[W1].wants() == 0
    store.tick(W1, TIMEOUT + 1)
    assert store.mail[ROOT] == [(W1, m.Returned([suspect], [1], ""))]
    assert store.policies[W1].wants() == 1  # W1 takes futures again
    store.deliver(ROOT)
    _, entry = store.entry_of(suspect)
    assert (entry.attempt, entry.losses, entry.holder) == (2, 1, b"")
    assert store.take(W1) == []


# -- departures and the end of workers ---------------------------------------------


def test_a_departed_owners_futures_are_taken_out_of_the_queue_and_cancelled_at_holders(
    store: Store,
) -> None:
    store.send(W1, m.Ready(1))
    held, queued = store.submit(ROOT, 2)
    store.fetch(W1)
    assert store.tasks_for(W1) == [held]
    store.send(ROOT, m.Bye("done"))
    assert store.queued() == []  # the queued one was withdrawn
    assert store.mail[W1] == [(ROOT, m.Cancel(held))]
    store.gone(ROOT)
    store.deliver(W1)
    assert store.take(W1) == [m.Cancel(held)]
    store.send(W1, m.CancelReply(held, True))
    assert store.queue == {} and no_futures_left(store)


def test_with_no_worker_for_heartbeat_timeout_queued_futures_fail() -> None:
    store = Store()
    store.join(ROOT)
    fids = store.submit(ROOT, 2)
    store.tick(ROOT, TIMEOUT / 2)
    assert store.take(ROOT) == [] and store.queued() == fids
    store.tick(ROOT, TIMEOUT + 1)
    msgs = store.take(ROOT)
    assert outcomes(msgs) == [(f, m.LOST) for f in fids]
    assert all("no worker has been connected for 31 s" in r for r in reasons(msgs).values())
    assert store.queue == {} and no_futures_left(store)


def test_a_future_a_worker_took_is_not_failed_when_no_worker_is_seen() -> None:
    store = Store()
    store.join(ROOT)
    store.join(W1, slots=1)
    store.send(W1, m.Ready(1))
    held, queued = store.submit(ROOT, 2)
    store.fetch(W1)
    store.policies[ROOT].remote_workers = 0  # W1's alive flag lapsed
    store.tick(ROOT, TIMEOUT + 1)
    assert outcomes(store.take(ROOT)) == [(queued, m.LOST)]
    store.answer(W1, [held])
    store.deliver(ROOT)
    assert outcomes(store.take(ROOT)) == [(held, m.OK)]
    assert store.queue == {} and no_futures_left(store)


# -- constants --------------------------------------------------------------------------


def test_a_constant_is_defined_once_in_the_store_and_reaches_every_peer(store: Store) -> None:
    store.send(ROOT, m.SetConst("size", (b"10",)))
    assert broker_policy.DefineConst("size", (b"10",), ROOT) in store.commits[-2].ops
    assert store.take(ROOT) == [m.ConstReply("size", "")]
    assert broker_policy.Broadcast(m.Const("size", (b"10",))) in store.commits[-1].ops
    for worker in (W1, W2):
        store.deliver(worker)
        assert store.take(worker) == [m.Const("size", (b"10",))]

    store.send(W1, m.SetConst("size", (b"11",)))
    assert store.take(W1) == [m.ConstReply("size", ConstantError.defined_twice("size"))]
    store.deliver(ROOT)
    assert store.take(ROOT) == []
    assert store.constants == {"size": (b"10",)}

    # A peer that joins later learns it in its welcome.
    welcome = store.join(b"w3", slots=1)
    assert welcome.constants == (m.Constant("size", (b"10",)),)


# -- hungry workers elsewhere -------------------------------------------------------


def test_a_hungry_worker_elsewhere_gets_half_the_spare_futures(store: Store) -> None:
    store.send(W1, m.Spare(6))
    assert store.policies[W1].could_give()
    store.policies[W1].someone_hungry()
    store.turn(W1)
    assert store.take(W1) == [m.Steal(3)]
    # W1 hands three of its own over: they go to the store's queue, for anyone.
    given = tuple(store.task(W1, depth=1) for _ in range(3))
    store.send(W1, m.Submit(given))
    store.send(W1, m.Spare(3))
    assert store.queued() == [t.fid for t in given]
    store.send(W2, m.Ready(3))
    store.fetch(W2)
    assert store.tasks_for(W2) == [t.fid for t in given]
    store.answer(W2, [t.fid for t in given])
    store.deliver(W1)
    assert sorted(outcomes(store.take(W1))) == [(t.fid, m.OK) for t in given]


def test_a_hungry_worker_elsewhere_gets_the_newest_half_of_what_is_not_started(
    store: Store,
) -> None:
    store.send(W1, m.Ready(5))
    fids = store.submit(ROOT, 5)
    store.fetch(W1)
    assert store.tasks_for(W1) == fids
    store.send(W1, m.Started(fids[:1]))
    store.policies[W1].someone_hungry()
    store.turn(W1)
    assert store.take(W1) == [m.Recall(fids[4]), m.Recall(fids[3])]
    store.send(W1, m.RecallReply(fids[4], True))
    store.send(W1, m.RecallReply(fids[3], True))
    store.deliver(ROOT)
    assert store.queued() == [fids[4], fids[3]]
    store.send(W2, m.Ready(2))
    store.fetch(W2)
    assert store.tasks_for(W2) == [fids[4], fids[3]]


# -- every future comes back exactly once --------------------------------------------

SLOTS = ("w1", "w2", "w3")


class FakeWorker:
    """A worker process: one incarnation (one peer name) at a time."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.incarnation = 0
        self.peer = b""
        self.prefetch = 1
        self.book: WorkerBook | None = None  # None while it is away
        self.running: deque[int] = deque()


class StoreExactlyOnce(RuleBasedStateMachine):
    """A root and three workers over the store; workers take futures, run
    them, hand them back, die and come back under new names; the root
    cancels some. Every future comes back to the root exactly once: as a
    result, a failure, or a granted cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.store = Store(max_losses=3)
        self.store.join(ROOT)
        self.workers = {slot: FakeWorker(slot) for slot in SLOTS}
        self.submitted: set[int] = set()
        self.answers: dict[int, list[str]] = defaultdict(list)
        self.now = 0.0

    def serve(self) -> None:
        """Every runtime reads what its policy sent it, and answers."""
        progress = True
        while progress:
            progress = False
            for msg in self.store.take(ROOT):
                if isinstance(msg, m.Results):
                    for out in msg.outcomes:
                        self.answers[out.fid].append(f"result {out.status}")
                elif isinstance(msg, m.CancelReply) and msg.cancelled:
                    self.answers[msg.fid].append("cancelled")
            for worker in self.workers.values():
                if worker.book is None:
                    continue
                replies: list[m.Message] = []
                for msg in self.store.take(worker.peer):
                    if isinstance(msg, m.Tasks):
                        worker.book.receive(msg.tasks)  # raises if it got too many
                    elif isinstance(msg, m.Recall):
                        replies.append(m.RecallReply(msg.fid, worker.book.recall(msg.fid)))
                    elif isinstance(msg, m.Cancel):
                        replies.append(m.CancelReply(msg.fid, worker.book.cancel(msg.fid)))
                    else:
                        assert isinstance(msg, m.Welcome | m.Const), msg
                for reply in replies:
                    self.store.send(worker.peer, reply)
                    progress = True

    def live(self, slot: str) -> FakeWorker | None:
        worker = self.workers[slot]
        return worker if worker.book is not None else None

    @rule(slot=st.sampled_from(SLOTS), prefetch=st.integers(1, 3))
    def join(self, slot: str, prefetch: int) -> None:
        worker = self.workers[slot]
        if worker.book is not None:
            return
        worker.incarnation += 1
        worker.peer = f"{slot}.{worker.incarnation}".encode()
        worker.prefetch = prefetch
        worker.book = WorkerBook(prefetch=prefetch)
        worker.running.clear()
        self.store.join(worker.peer, slots=1)
        self.serve()

    @rule(count=st.integers(1, 4), depth=st.integers(0, 2))
    def submit(self, count: int, depth: int) -> None:
        tasks = tuple(self.store.task(ROOT, depth) for _ in range(count))
        self.submitted |= {t.fid for t in tasks}
        self.store.send(ROOT, m.Submit(tasks))
        self.serve()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        waiting = sorted(self.submitted - set(self.answers))
        if waiting:
            self.store.send(ROOT, m.Cancel(data.draw(st.sampled_from(waiting))))
            self.serve()

    @rule(slot=st.sampled_from(SLOTS))
    def ask(self, slot: str) -> None:
        worker = self.live(slot)
        if worker is not None and worker.book is not None and (want := worker.book.wanted(0)):
            self.store.send(worker.peer, m.Ready(want))
            self.serve()

    @rule(slot=st.sampled_from(SLOTS))
    def fetch(self, slot: str) -> None:
        worker = self.live(slot)
        if worker is not None:
            self.store.fetch(worker.peer)
            self.serve()

    @rule()
    def root_reads_its_mail(self) -> None:
        self.store.deliver(ROOT)
        self.serve()

    @rule(slot=st.sampled_from(SLOTS))
    def start(self, slot: str) -> None:
        worker = self.live(slot)
        job = worker.book.next_job() if worker is not None and worker.book else None
        if worker is not None and job is not None:
            worker.running.append(job.task.fid)
            self.store.send(worker.peer, m.Started([job.task.fid]))
            self.serve()

    @rule(slot=st.sampled_from(SLOTS), ok=st.booleans())
    def finish(self, slot: str, ok: bool) -> None:
        worker = self.live(slot)
        if worker is not None and worker.book is not None and worker.running:
            fid = worker.running.popleft()
            worker.book.finish(fid, ok)
            self.store.answer(worker.peer, [fid], m.OK if ok else m.RAISED)
            self.serve()

    @rule(slot=st.sampled_from(SLOTS))
    def hungry_elsewhere(self, slot: str) -> None:
        worker = self.live(slot)
        if worker is not None:
            self.store.policies[worker.peer].someone_hungry()
            self.store.turn(worker.peer)
            self.serve()

    @rule(slot=st.sampled_from(SLOTS), bye=st.booleans())
    def leave(self, slot: str, bye: bool) -> None:
        worker = self.live(slot)
        if worker is None:
            return
        if bye:
            self.store.send(worker.peer, m.Bye("leaving"))
            self.store.gone(worker.peer)
        else:
            self.store.kill(worker.peer)
        worker.book = None
        self.serve()

    @rule()
    def time_passes(self) -> None:
        self.now += TIMEOUT + 1
        for peer in list(self.store.policies):
            self.store.tick(peer, self.now)
        self.serve()

    @invariant()
    def every_future_comes_back_at_most_once(self) -> None:
        assert {fid: got for fid, got in self.answers.items() if len(got) != 1} == {}
        assert set(self.answers) <= self.submitted

    @invariant()
    def a_suspect_is_the_only_future_its_worker_holds(self) -> None:
        for policy in self.store.policies.values():
            for rec in policy.workers:
                held = [policy.futures[fid] for fid in rec.holding]
                if any(f.losses for f in held):
                    assert len(held) == 1, held

    def teardown(self) -> None:
        # From now on every worker stays and does everything it is given.
        for slot in SLOTS:
            self.join(slot, 1)
        for _ in range(10 * len(self.submitted) + 10):
            if set(self.answers) == self.submitted:
                break
            self.root_reads_its_mail()
            for slot, worker in self.workers.items():
                self.ask(slot)
                self.fetch(slot)
                assert worker.book is not None
                while worker.book.next_job() is not None:
                    pass
                worker.running = deque(
                    fid for fid, job in worker.book.jobs.items() if job.state is RUNNING
                )
                while worker.running:
                    self.finish(slot, ok=True)
        self.root_reads_its_mail()
        assert set(self.answers) == self.submitted
        assert all(len(got) == 1 for got in self.answers.values())
        assert self.store.queue == {}
        assert no_futures_left(self.store)


StoreExactlyOnce.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestStoreExactlyOnce = StoreExactlyOnce.TestCase


def test_a_cancel_that_crosses_a_hand_back_cancels_the_future(store: Store) -> None:
    fid = store.taken_by(W1)
    assert store.tasks_for(W1) == [fid]
    store.send(W1, m.Bye("leaving"))  # handed back: its entry is gone...
    store.gone(W1)
    store.send(ROOT, m.Cancel(fid))  # ...before the owner read the Returned mail
    assert store.take(ROOT) == []
    store.deliver(ROOT)
    assert store.take(ROOT) == [m.CancelReply(fid, True)]
    assert store.queue == {} and no_futures_left(store)
