"""The broker's sans-IO policy (``scoop_core.broker_policy``), driven directly.

The broker's bookkeeping is told as stories of fake peers (plain ``bytes``
ids) exchanging the real wire messages. A Hypothesis state machine then
shuffles submissions, credit, dispatch, answers and departures, and checks
the one promise users care about most: every future comes back exactly once.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from policy_peers import FakePeers

from scoop_core import messages as m
from scoop_core.broker_policy import BrokerPolicy
from scoop_core.errors import ProtocolError
from scoop_core.states import (
    ASSIGNED,
    BUSY,
    IDLE,
    QUEUED,
    RUNNING,
)
from scoop_core.worker_book import WorkerBook

# -- the broker's bookkeeping, as stories ------------------------------------------

ROOT = b"root"
W1, W2, W3 = b"w1", b"w2", b"w3"


class Run(FakePeers):
    """A broker book and the mailboxes of the fake peers around it."""

    def __init__(self, **book_options: Any) -> None:
        self.book = BrokerPolicy(**book_options)
        self.inbox: dict[bytes, list[m.Message]] = defaultdict(list)
        self.index: dict[bytes, int] = {}
        self.seq: dict[bytes, int] = defaultdict(int)

    def send(self, peer: bytes, msg: m.Message) -> None:
        self.book.handle(peer, msg)
        self.flush()

    def flush(self) -> None:
        self.book.dispatch()
        for peer, msg in self.book.take_outbox():
            self.inbox[peer].append(msg)

    def take(self, peer: bytes) -> list[m.Message]:
        return self.inbox.pop(peer, [])

    def handed_to_w1(self, count: int = 1) -> list[int]:
        """W1 and W2 joined with a slot each, and ``count`` root futures handed to W1."""
        self.join(W1, slots=1)
        self.join(W2, slots=1)
        fids = self.submit(ROOT, count)
        self.send(W1, m.Ready(count))
        return fids

    def cancel_forwarded_to_w1(self) -> int:
        """A root future that W1 took, and the root's cancel of it, forwarded to W1."""
        self.join(W1, slots=1)
        (fid,) = self.submit(ROOT)
        self.send(W1, m.Ready(1))
        self.take(W1)
        self.send(ROOT, m.Cancel(fid))
        assert self.take(W1) == [m.Cancel(fid)]
        return fid

    def recalled_from_w1(self) -> tuple[int, int]:
        """Two root futures, slow and fast, that W1 took; W2 joins hungry and the
        broker recalls fast, which W1 has not started."""
        self.join(W1, slots=1)
        self.send(W1, m.Ready(2))
        slow, fast = self.submit(ROOT, 2)
        assert self.tasks_for(W1) == [slow, fast]
        self.join(W2, slots=1)
        self.send(W2, m.Ready(2))
        assert self.take(W1) == [m.Recall(fast)]
        return slow, fast

    def suspect(self, holder: bytes = W1) -> int:
        """A root future that ``holder`` joined, took and died holding: a suspect."""
        self.join(holder, slots=1)
        (suspect,) = self.submit(ROOT)
        self.send(holder, m.Ready(1))
        assert self.tasks_for(holder) == [suspect]
        self.book.leave(holder)
        return suspect


def outcomes(msgs: list[m.Message]) -> list[tuple[int, int]]:
    """(fid, status) of every outcome in ``msgs``."""
    return [(o.fid, o.status) for msg in msgs if isinstance(msg, m.Results) for o in msg.outcomes]


@pytest.fixture
def run() -> Run:
    run = Run()
    run.join(ROOT)
    return run


def test_a_future_runs_once_and_leaves_no_trace(run: Run) -> None:
    run.join(W1, slots=1)
    task = run.task(ROOT)
    run.send(ROOT, m.Submit((task,)))
    assert run.take(W1) == []  # the worker asked for nothing yet
    assert run.book.queued == 1

    run.send(W1, m.Ready(1))
    assert run.take(W1) == [m.Tasks((task,))]
    assert run.book.peers[W1].state is BUSY

    run.send(W1, m.Started([task.fid]))
    assert run.take(ROOT) == [m.Started([task.fid])]

    outcome = m.Outcome(task.fid, m.OK, 0.5, (b"42",))
    run.send(W1, m.Results((outcome,)))
    assert run.take(ROOT) == [m.Results((outcome,))]
    assert len(run.book.futures) == 0
    assert run.book.peers[W1].state is IDLE

    # The same answer again (a retransmission, a confused worker) reaches nobody.
    run.send(W1, m.Results((outcome,)))
    assert run.take(ROOT) == []


def test_a_failed_future_is_forwarded_and_forgotten_too(run: Run) -> None:
    run.join(W1, slots=1)
    (fid,) = run.submit(ROOT)
    run.send(W1, m.Ready(1))
    assert run.tasks_for(W1) == [fid]
    run.answer(W1, [fid], status=m.RAISED)
    assert outcomes(run.take(ROOT)) == [(fid, m.RAISED)]
    assert run.book.futures == {}


def test_a_worker_gets_exactly_the_futures_it_asked_for(run: Run) -> None:
    run.join(W1, slots=1)
    fids = run.submit(ROOT, 10)
    run.send(W1, m.Ready(3))
    assert run.tasks_for(W1) == fids[:3]
    run.flush()
    assert run.tasks_for(W1) == []  # its credit is spent
    # Credit adds up until it is used.
    run.book.handle(W1, m.Ready(1))
    run.book.handle(W1, m.Ready(2))
    run.flush()
    assert run.tasks_for(W1) == fids[3:6]
    run.send(W1, m.Ready(0))
    assert run.tasks_for(W1) == []
    assert run.book.queued == 4


def test_credit_waits_for_work(run: Run) -> None:
    run.join(W1, slots=1)
    run.send(W1, m.Ready(2))
    assert run.tasks_for(W1) == []
    fids = run.submit(ROOT, 3)
    assert run.tasks_for(W1) == fids[:2]


def test_dispatch_goes_round_robin_across_workers(run: Run) -> None:
    for w in (W1, W2, W3):
        run.join(w, slots=1)
        run.book.handle(w, m.Ready(3))
    fids = run.submit(ROOT, 3)
    # Three futures, three workers with room: one each, not three for the first.
    assert [run.tasks_for(w) for w in (W1, W2, W3)] == [[fids[0]], [fids[1]], [fids[2]]]

    fids = run.submit(ROOT, 5)
    got = {w: run.tasks_for(w) for w in (W1, W2, W3)}
    assert sorted(len(v) for v in got.values()) == [1, 2, 2]
    assert sorted(f for v in got.values() for f in v) == fids


def test_uneven_credit_is_respected(run: Run) -> None:
    run.join(W1, slots=1)
    run.join(W2, slots=1)
    run.book.handle(W1, m.Ready(3))
    run.book.handle(W2, m.Ready(1))
    fids = run.submit(ROOT, 6)
    w1, w2 = run.tasks_for(W1), run.tasks_for(W2)
    assert (len(w1), len(w2)) == (3, 1)
    assert sorted(w1 + w2) == fids[:4]
    assert run.book.queued == 2


def test_deepest_futures_go_first_and_equal_depths_in_order(run: Run) -> None:
    run.join(W1, slots=1)
    tasks = [run.task(ROOT, depth) for depth in (0, 0, 2, 1, 2, 0, 1)]
    run.send(ROOT, m.Submit(tuple(tasks)))
    run.send(W1, m.Ready(len(tasks)))
    by_depth = sorted(tasks, key=lambda t: -t.depth)  # stable: submission order kept
    assert run.tasks_for(W1) == [t.fid for t in by_depth]


def test_a_nested_child_overtakes_waiting_top_level_work(run: Run) -> None:
    run.join(W1, slots=1)
    top = run.submit(ROOT, 3)
    run.send(W1, m.Ready(1))
    (parent,) = run.tasks_for(W1)
    assert parent == top[0]
    # The worker's future submits a child (an id in the worker's own range) and waits on it.
    child = run.task(W1, depth=1, parent=parent)
    run.send(W1, m.Submit((child,)))
    run.send(W1, m.Ready(1))
    assert run.tasks_for(W1) == [child.fid]
    # The child's result goes to the worker that owns it, not to the root.
    run.answer(W1, [child.fid])
    assert outcomes(run.take(W1)) == [(child.fid, m.OK)]
    assert run.take(ROOT) == []


def test_a_departed_worker_futures_run_elsewhere_exactly_once(run: Run) -> None:
    fids = run.handed_to_w1(2)
    assert run.tasks_for(W1) == fids
    run.send(W1, m.Started([fids[0]]))
    run.take(ROOT)

    assert run.book.leave(W1) == fids
    run.flush()
    assert W1 not in run.book.peers
    assert run.book.queued == 2

    # Lost once, they are suspects: W2 gets them one at a time.
    run.send(W2, m.Ready(2))
    assert run.tasks_for(W2) == fids[:1]
    # A late answer from the departed worker is refused and reaches nobody.
    with pytest.raises(ProtocolError, match="unknown peer"):
        run.book.handle(W1, m.Results((m.Outcome(fids[0], m.OK, 0.0, (b"stale",)),)))
    run.flush()
    assert run.take(ROOT) == []
    assert run.book.futures[fids[0]].holder == W2

    run.answer(W2, fids[:1])
    assert run.tasks_for(W2) == fids[1:]
    run.answer(W2, fids[1:])
    assert outcomes(run.take(ROOT)) == [(fids[0], m.OK), (fids[1], m.OK)]
    assert run.book.futures == {}


def test_bye_hands_back_what_the_worker_holds(run: Run) -> None:
    fids = run.handed_to_w1()
    run.send(W1, m.Bye("done"))
    run.send(W2, m.Ready(1))
    assert run.tasks_for(W2) == fids


def test_a_late_answer_from_the_old_holder_is_dropped_after_it_rejoins(run: Run) -> None:
    (fid,) = run.handed_to_w1()
    assert run.tasks_for(W1) == [fid]
    run.book.leave(W1)
    run.send(W2, m.Ready(1))
    assert run.tasks_for(W2) == [fid]

    # The same process comes back (a new record, a new index) and answers for
    # the future it held before: the future is W2's now, so the answer is dropped.
    old_index = run.index[W1]
    assert run.join(W1, slots=1).index != old_index
    run.answer(W1, [fid])
    assert run.take(ROOT) == []
    run.send(W1, m.Started([fid]))
    assert run.take(ROOT) == []
    assert run.book.futures[fid].state is ASSIGNED

    run.answer(W2, [fid])
    assert outcomes(run.take(ROOT)) == [(fid, m.OK)]


@pytest.mark.parametrize("max_losses", [1, 2, 3])
def test_a_future_lost_max_losses_times_comes_back_lost(max_losses: int) -> None:
    run = Run(max_losses=max_losses)
    run.join(ROOT)
    (fid,) = run.submit(ROOT)
    for n in range(max_losses):
        worker = b"w%d" % n
        run.join(worker, slots=1)
        run.send(worker, m.Ready(1))
        assert run.tasks_for(worker) == [fid]
        assert run.take(ROOT) == []
        requeued = run.book.leave(worker)
        run.flush()
        assert requeued == ([fid] if n + 1 < max_losses else [])
    assert outcomes(run.take(ROOT)) == [(fid, m.LOST)]
    assert run.book.futures == {}
    assert run.book.queued == 0


def test_a_queued_future_fails_when_no_worker_is_left_to_run_it() -> None:
    # The story of issue 9, item 6: a worker dies holding futures, they are
    # queued again, and no worker comes; the broker fails them (and lives).
    run = Run(max_losses=3)
    run.join(ROOT)
    run.join(W1, slots=1)
    fids = run.submit(ROOT, 3)
    run.send(W1, m.Ready(2))
    assert run.tasks_for(W1) == fids[:2]
    assert run.book.leave(W1) == fids[:2]  # lost once: queued again
    assert run.book.queued == 3

    assert run.book.fail_queued("no worker has been connected for 30 s") == 3
    run.flush()
    got = [o for msg in run.take(ROOT) if isinstance(msg, m.Results) for o in msg.outcomes]
    assert sorted((o.fid, o.status) for o in got) == [(f, m.LOST) for f in fids]
    for out in got:
        reason = bytes(out.frames[0]).decode()
        assert f"{out.fid:#x}" in reason and "no worker has been connected for 30 s" in reason
    assert run.book.futures == {} and run.book.queued == 0

    # Nothing is left to fail twice, and a worker that joins later gets none of them.
    assert run.book.fail_queued("again") == 0
    run.join(W2, slots=1)
    run.send(W2, m.Ready(3))
    assert run.tasks_for(W2) == []
    # The book goes on: new work runs.
    (fid,) = run.submit(ROOT)
    run.flush()
    assert run.tasks_for(W2) == [fid]


# -- suspects: a future lost before runs alone ------------------------------------


def alive_at(run: Run, peer: bytes, now: float) -> None:
    """``peer`` is heard at ``now`` (as its heartbeat would be)."""
    run.book.now = now
    run.send(peer, m.Heartbeat(0))


def test_queued_futures_fail_when_no_worker_comes_for_heartbeat_timeout() -> None:
    run = Run(heartbeat_timeout=30)
    run.join(ROOT)  # expected_workers=0: welcomed at once
    fids = run.submit(ROOT, 2)
    alive_at(run, ROOT, 31.0)
    run.book.tick(31.0)
    run.flush()
    assert sorted(outcomes(run.take(ROOT))) == [(f, m.LOST) for f in fids]


def test_futures_wait_however_long_for_workers_from_a_schedulers_queue() -> None:
    # Worker jobs (scoop run --jobs) start when the scheduler says: the
    # program is welcomed at once and its futures wait; the launcher, which
    # knows the jobs, ends the run if none is left to bring a worker.
    run = Run(heartbeat_timeout=30, wait_for_workers=True)
    run.join(ROOT)
    fids = run.submit(ROOT, 2)
    for hour in range(1, 4):
        alive_at(run, ROOT, hour * 3600.0)
        run.book.tick(hour * 3600.0)
    run.flush()
    assert [msg for msg in run.take(ROOT) if isinstance(msg, m.Results)] == []
    assert run.book.queued == 2
    run.join(W1, slots=2)
    run.send(W1, m.Ready(2))
    assert run.tasks_for(W1) == fids


def _held(run: Run, peer: bytes) -> list[int]:
    return list(run.book.peers[peer].holding)


def test_a_worker_that_dies_holding_21_futures_charges_each_once_and_then_each_runs_alone() -> None:
    # The story of a killer among quick squares: the worker ran some of them
    # (their results still in its send buffer), had not started others, and
    # died running the killer. All 21 are charged once; then each runs on a
    # worker that holds nothing else, so only the killer is charged again.
    run = Run(max_losses=3)
    run.join(ROOT)
    run.join(W1, slots=1)
    fids = run.submit(ROOT, 21)
    killer = fids[10]
    run.send(W1, m.Ready(21))
    assert run.tasks_for(W1) == fids
    run.send(W1, m.Started(fids[:11]))
    assert run.book.leave(W1) == fids
    assert all(run.book.futures[f].losses == 1 for f in fids)

    workers = [b"w%d" % n for n in range(2, 10)]
    live: list[bytes] = []
    for peer in workers[:2]:
        run.join(peer, slots=1)
        live.append(peer)
        run.send(peer, m.Ready(8))  # as a worker with a long prefetch asks
    done: list[int] = []
    deaths = 0
    while run.book.futures:
        for peer in list(live):
            for msg in run.take(peer):
                assert isinstance(msg, m.Tasks) and len(msg.tasks) == 1, msg
            held = _held(run, peer)
            if not held:
                continue
            (fid,) = held  # a suspect, and nothing else
            if fid == killer:
                lost_before = {f: run.book.futures[f].losses for f in run.book.futures}
                run.book.leave(peer)
                run.flush()
                deaths += 1
                # Only the killer was charged.
                for f, losses in lost_before.items():
                    if f in run.book.futures:
                        assert run.book.futures[f].losses == losses + (f == killer)
                live.remove(peer)
                new = workers[len(live) + deaths]
                run.join(new, slots=1)
                live.append(new)
                run.send(new, m.Ready(8))
            else:
                assert run.book.futures[fid].losses == 1  # an innocent: never 2
                run.answer(peer, [fid])
                done.append(fid)
    assert deaths == 2  # its 2nd and 3rd losses
    assert sorted(done) == sorted(f for f in fids if f != killer)
    got = dict(outcomes(run.take(ROOT)))
    assert got == {f: (m.LOST if f == killer else m.OK) for f in fids}


def test_a_worker_holding_a_suspect_is_given_nothing_else_until_it_is_done(run: Run) -> None:
    suspect = run.suspect()
    run.join(W2, slots=1)
    run.send(W2, m.Ready(3))
    assert run.tasks_for(W2) == [suspect]
    first_time = run.submit(ROOT, 2)
    assert run.tasks_for(W2) == []  # its credit waits
    run.join(W3, slots=1)
    run.send(W3, m.Ready(1))
    assert run.tasks_for(W3) == first_time[:1]
    run.answer(W2, [suspect])
    assert run.tasks_for(W2) == first_time[1:]  # the rest of its credit
    assert outcomes(run.take(ROOT)) == [(suspect, m.OK)]


def test_a_suspect_waits_for_a_worker_that_holds_nothing_and_that_worker_is_kept_for_it(
    run: Run,
) -> None:
    run.join(W2, slots=1)
    run.send(W2, m.Ready(2))
    busy = run.submit(ROOT, 2)
    assert run.tasks_for(W2) == busy
    suspect = run.suspect()
    # W2 holds two futures and asks for more: the suspect is not for it,
    # and while the suspect waits W2 gets no new work either, and is asked
    # back the future it has not started, so it drains.
    later = run.submit(ROOT, 3)
    run.send(W2, m.Ready(4))
    assert run.take(W2) == [m.Recall(busy[1])]
    run.send(W2, m.RecallReply(busy[1], False))  # it had started after all
    run.answer(W2, busy[:1])
    assert run.tasks_for(W2) == []
    run.answer(W2, busy[1:])
    assert run.tasks_for(W2) == [suspect]  # alone...
    run.answer(W2, [suspect])
    assert run.tasks_for(W2) == later  # ...then the others
    assert outcomes(run.take(ROOT)) == [(f, m.OK) for f in [*busy, suspect]]


def test_a_worker_kept_for_a_suspect_hands_back_what_it_has_not_started(run: Run) -> None:
    run.join(W2, slots=1)
    run.send(W2, m.Ready(2))
    running, waiting = run.submit(ROOT, 2)
    assert run.tasks_for(W2) == [running, waiting]
    suspect = run.suspect()
    run.send(W2, m.Ready(1))
    assert run.take(W2) == [m.Recall(waiting)]
    run.send(W2, m.RecallReply(waiting, True))
    run.answer(W2, [running])
    # Free at last: the suspect goes to W2 alone; what it handed back waits.
    assert run.tasks_for(W2) == [suspect]
    assert run.book.futures[waiting].state is QUEUED
    run.answer(W2, [suspect])
    run.send(W2, m.Ready(1))
    assert run.tasks_for(W2) == [waiting]


def test_a_suspect_recalled_from_a_worker_goes_alone_to_an_idle_one(run: Run) -> None:
    suspect = run.suspect()
    # W2 runs a child of its own, then takes the suspect behind it (it
    # holds nothing of anyone else).
    run.join(W2, slots=1)
    own = run.task(W2, depth=1)
    run.send(W2, m.Submit((own,)))
    run.send(W2, m.Ready(2))
    assert run.tasks_for(W2) == [own.fid, suspect]
    # An idle worker: the suspect, not started, is asked back for it, and
    # goes to it alone; a first-time future waits.
    run.join(W3, slots=1)
    run.send(W3, m.Ready(2))
    assert run.take(W2) == [m.Recall(suspect)]
    run.send(W2, m.RecallReply(suspect, True))
    assert run.tasks_for(W3) == [suspect]
    (first_time,) = run.submit(ROOT)
    assert run.tasks_for(W3) == []
    assert run.book.futures[first_time].state is QUEUED
    run.answer(W3, [suspect])
    assert run.tasks_for(W3) == [first_time]


def test_a_worker_holding_a_suspect_still_takes_its_own_futures(run: Run) -> None:
    # The suspect runs on W2 and waits for children W2 gave up for others
    # to steal; W2 is the only worker with credit, so they must come back to it.
    suspect = run.suspect()
    run.join(W2, slots=1)
    run.send(W2, m.Ready(4))
    assert run.tasks_for(W2) == [suspect]
    (root_future,) = run.submit(ROOT)
    children = (run.task(W2, depth=1), run.task(W2, depth=1))
    run.send(W2, m.Submit(children))
    assert run.tasks_for(W2) == [t.fid for t in children]
    assert run.book.futures[root_future].state is QUEUED
    # It dies: the suspect is charged; its own children die with it, unread.
    assert run.book.leave(W2) == [suspect]
    run.flush()
    assert run.book.futures[suspect].losses == 2
    assert set(run.book.futures) == {suspect, root_future}


def test_a_worker_holding_a_suspect_is_not_hungry_for_others_spare_futures(run: Run) -> None:
    suspect = run.suspect()
    run.join(W2, slots=1)
    run.join(W3, slots=1)
    run.send(W3, m.Spare(6))
    run.send(W2, m.Ready(3))
    assert run.tasks_for(W2) == [suspect]
    # W2's credit is left, but it could take none of W3's futures: no steal.
    assert run.take(W3) == []
    run.answer(W2, [suspect])
    assert run.take(W3) == [m.Steal(2)]  # for the 2 it still asks for


def test_fail_queued_leaves_futures_held_by_workers_alone(run: Run) -> None:
    run.join(W1, slots=1)
    held, queued = run.submit(ROOT, 2)
    run.send(W1, m.Ready(1))
    assert run.tasks_for(W1) == [held]
    assert run.book.fail_queued("test") == 1
    run.flush()
    assert outcomes(run.take(ROOT)) == [(queued, m.LOST)]
    run.answer(W1, [held])
    assert outcomes(run.take(ROOT)) == [(held, m.OK)]
    assert run.book.futures == {}


def test_a_cancelled_queued_future_is_not_failed_again(run: Run) -> None:
    a, b = run.submit(ROOT, 2)
    run.send(ROOT, m.Cancel(a))
    assert run.take(ROOT) == [m.CancelReply(a, True)]
    assert run.book.fail_queued("test") == 1
    run.flush()
    assert outcomes(run.take(ROOT)) == [(b, m.LOST)]


# -- batches that fit max_message_size ---------------------------------------------

LIMIT = 10_000


def _sizes(msgs: list[m.Message]) -> list[int]:
    codec = m.Codec(b"k" * 32, m.BROKER_IDENTITY, max_size=LIMIT)
    return [sum(memoryview(f).nbytes for f in codec.encode(msg, to=b"r" * 255)) for msg in msgs]


def test_results_for_one_owner_are_sent_in_messages_that_fit() -> None:
    # Three results that fit one by one, not together: the 3 x 4 MB.
    run = Run(max_message_size=LIMIT)
    run.join(ROOT)
    for w in (W1, W2, W3):
        run.join(w, slots=1)
    fids = run.submit(ROOT, 3)
    for w in (W1, W2, W3):
        run.book.handle(w, m.Ready(1))
    run.flush()
    held = {w: run.tasks_for(w) for w in (W1, W2, W3)}
    for w, (fid,) in held.items():
        big = m.Outcome(fid, m.OK, 0.1, (bytes(4000),))
        run.book.handle(w, m.Started([fid]))
        run.book.handle(w, m.Results((big,)))
    run.flush()  # one turn: all three are coalesced for the root
    msgs = run.take(ROOT)
    assert sorted(fid for fid, _ in outcomes(msgs)) == sorted(fids)
    assert len([msg for msg in msgs if isinstance(msg, m.Results)]) >= 2
    assert max(_sizes(msgs)) <= LIMIT


def test_many_started_ids_and_many_tasks_are_cut_to_fit() -> None:
    run = Run(max_message_size=LIMIT)
    run.join(ROOT)
    run.join(W1, slots=1)
    tasks = tuple(m.Task(run.index[ROOT] << 32 | n, 0, 0, (bytes(700),)) for n in range(1, 41))
    run.send(ROOT, m.Submit(tasks[:10]))
    run.send(ROOT, m.Submit(tasks[10:20]))
    run.send(ROOT, m.Submit(tasks[20:30]))
    run.send(ROOT, m.Submit(tasks[30:]))
    run.send(W1, m.Ready(40))
    to_worker = run.take(W1)
    assert [t for msg in to_worker if isinstance(msg, m.Tasks) for t in msg.tasks] == list(tasks)
    assert len(to_worker) > 1 and max(_sizes(to_worker)) <= LIMIT
    # A worker may hand over its own futures: many ids started at once.
    fids = [t.fid for t in tasks]
    run.send(W1, m.Started(fids))
    to_root = run.take(ROOT)
    assert [f for msg in to_root if isinstance(msg, m.Started) for f in msg.fids] == fids


def test_a_result_too_big_for_any_message_fails_its_future_saying_why() -> None:
    # A worker with another limit let it through; the broker cannot pass it on.
    run = Run(max_message_size=LIMIT)
    run.join(ROOT)
    run.join(W1, slots=1)
    small, huge = run.submit(ROOT, 2)
    run.send(W1, m.Ready(2))
    assert run.tasks_for(W1) == [small, huge]
    run.answer(W1, [small])
    run.send(W1, m.Results((m.Outcome(huge, m.OK, 0.0, (bytes(LIMIT),)),)))
    msgs = run.take(ROOT)
    assert outcomes(msgs) == [(small, m.OK), (huge, m.LOST)]
    (lost,) = [
        o for msg in msgs if isinstance(msg, m.Results) for o in msg.outcomes if o.fid == huge
    ]
    reason = bytes(lost.frames[0]).decode()
    assert str(LIMIT) in reason and "max_message_size" in reason and f"{huge:#x}" in reason
    assert run.book.futures == {}


def test_a_departed_owner_queued_futures_are_dropped(run: Run) -> None:
    run.join(W1, slots=1)
    run.submit(ROOT, 2)
    run.book.leave(ROOT)
    run.send(W1, m.Ready(2))
    assert run.tasks_for(W1) == []
    assert run.book.futures == {}


def test_cancel_of_a_queued_future_is_granted_and_it_never_runs(run: Run) -> None:
    run.join(W1, slots=1)
    keep, drop = run.submit(ROOT, 2)
    run.send(ROOT, m.Cancel(drop))
    assert run.take(ROOT) == [m.CancelReply(drop, True)]
    assert drop not in run.book.futures
    run.send(W1, m.Ready(5))
    assert run.tasks_for(W1) == [keep]
    # Asked again, it is no longer there to cancel.
    run.send(ROOT, m.Cancel(drop))
    assert run.take(ROOT) == [m.CancelReply(drop, False)]


def test_cancel_of_an_assigned_future_asks_its_holder(run: Run) -> None:
    fid = run.cancel_forwarded_to_w1()
    assert run.take(ROOT) == []  # only the holder knows whether it has started

    run.send(W1, m.CancelReply(fid, True))
    assert run.take(ROOT) == [m.CancelReply(fid, True)]
    assert run.book.futures == {}
    assert run.book.peers[W1].state is IDLE
    # It was cancelled: an answer for it now reaches nobody.
    run.answer(W1, [fid])
    assert run.take(ROOT) == []


def test_a_refused_cancel_is_relayed_and_the_future_still_finishes(run: Run) -> None:
    fid = run.cancel_forwarded_to_w1()
    run.send(W1, m.CancelReply(fid, False))
    assert run.take(ROOT) == [m.CancelReply(fid, False)]
    run.answer(W1, [fid])
    assert outcomes(run.take(ROOT)) == [(fid, m.OK)]


def test_cancel_of_a_running_future_is_refused_at_once(run: Run) -> None:
    run.join(W1, slots=1)
    (fid,) = run.submit(ROOT)
    run.send(W1, m.Ready(1))
    run.take(W1)
    run.send(W1, m.Started([fid]))
    run.take(ROOT)
    run.send(ROOT, m.Cancel(fid))
    assert run.take(ROOT) == [m.CancelReply(fid, False)]
    assert run.take(W1) == []


def test_only_the_owner_may_cancel(run: Run) -> None:
    run.join(W1, slots=1)
    (fid,) = run.submit(ROOT)
    run.send(W1, m.Cancel(fid))
    assert run.take(W1) == [m.CancelReply(fid, False)]
    assert run.book.futures[fid].state is QUEUED
    run.send(ROOT, m.Cancel(12345))
    assert run.take(ROOT) == [m.CancelReply(12345, False)]


def _cancel_replies(msgs: list[m.Message], fid: int) -> list[bool]:
    return [msg.cancelled for msg in msgs if isinstance(msg, m.CancelReply) and msg.fid == fid]


def test_a_cancel_that_crosses_the_result_is_still_answered(run: Run) -> None:
    # The worker finished the future while the broker was forwarding the cancel.
    fid = run.cancel_forwarded_to_w1()
    run.answer(W1, [fid])
    run.send(W1, m.CancelReply(fid, False))
    to_root = run.take(ROOT)
    assert outcomes(to_root) == [(fid, m.OK)]
    # The owner blocks in Future.cancel() until this answer comes.
    assert _cancel_replies(to_root, fid) == [False]


def test_a_cancel_forwarded_to_a_worker_that_leaves_is_still_answered(run: Run) -> None:
    (fid,) = run.handed_to_w1()
    run.take(W1)
    run.send(ROOT, m.Cancel(fid))
    assert run.take(W1) == [m.Cancel(fid)]
    run.book.leave(W1)
    run.send(W2, m.Ready(1))
    for msg in run.take(W2):
        if isinstance(msg, m.Cancel):
            run.send(W2, m.CancelReply(msg.fid, True))
        elif isinstance(msg, m.Tasks):
            run.answer(W2, [t.fid for t in msg.tasks])
    to_root = run.take(ROOT)
    replies = _cancel_replies(to_root, fid)
    assert len(replies) == 1
    # Either the cancel took (and no result comes) or it did not (and one does).
    assert outcomes(to_root) == ([] if replies[0] else [(fid, m.OK)])


def test_a_constant_is_defined_once_and_reaches_every_peer(run: Run) -> None:
    run.join(W1, slots=1)
    run.join(W2, slots=1)
    run.send(ROOT, m.SetConst("table", (b"v1", b"buf")))
    assert run.take(ROOT) == [m.ConstReply("table", "")]
    for w in (W1, W2):
        assert run.take(w) == [m.Const("table", (b"v1", b"buf"))]

    run.send(W1, m.SetConst("table", (b"v2",)))
    (reply,) = run.take(W1)
    assert isinstance(reply, m.ConstReply) and reply.name == "table"
    assert "table" in reply.error and "already defined" in reply.error
    assert run.take(ROOT) == run.take(W2) == []

    # A peer joining later finds it in its welcome, with the first value.
    welcome = run.join(W3, slots=1)
    assert welcome.constants == (m.Constant("table", (b"v1", b"buf")),)


def test_a_peer_may_only_submit_futures_in_its_own_range(run: Run) -> None:
    run.join(W1, slots=1)
    foreign = m.Task(run.index[W1] << 32 | 1, 0, 0, (b"call",))
    with pytest.raises(ProtocolError, match="does not own"):
        run.book.handle(ROOT, m.Submit((foreign,)))
    assert run.book.futures == {}
    assert run.book.queued == 0
    run.send(W1, m.Ready(1))
    assert run.tasks_for(W1) == []


def test_a_future_id_cannot_be_submitted_twice(run: Run) -> None:
    task = run.task(ROOT)
    run.send(ROOT, m.Submit((task,)))
    with pytest.raises(ProtocolError, match="twice"):
        run.book.handle(ROOT, m.Submit((task,)))
    assert list(run.book.futures) == [task.fid]
    assert run.book.queued == 1


def test_a_refused_batch_changes_nothing(run: Run) -> None:
    run.join(W1, slots=1)
    good = run.task(ROOT)
    foreign = m.Task(run.index[W1] << 32 | 1, 0, 0, (b"call",))
    with pytest.raises(ProtocolError):
        run.book.handle(ROOT, m.Submit((good, foreign)))
    assert run.book.futures == {}


def test_started_goes_to_the_owner_only_from_the_holder(run: Run) -> None:
    fids = run.handed_to_w1(2)
    run.take(W1)
    run.send(W2, m.Started(fids))  # W2 holds neither
    assert run.take(ROOT) == []
    run.send(W1, m.Started(fids))
    assert run.take(ROOT) == [m.Started(fids)]
    assert {run.book.futures[f].state for f in fids} == {RUNNING}


@pytest.mark.parametrize(
    "msg",
    [
        m.Welcome(3),
        m.Tasks(()),
        m.ConstReply("x", ""),
        m.Const("x", ()),
        m.Shutdown("no"),
        m.Refused("no"),
    ],
    ids=lambda msg: type(msg).__name__,
)
def test_a_peer_may_not_send_broker_messages(run: Run, msg: m.Message) -> None:
    with pytest.raises(ProtocolError, match="may not send"):
        run.book.handle(ROOT, msg)


def test_messages_from_a_stranger_are_refused(run: Run) -> None:
    with pytest.raises(ProtocolError, match="unknown peer"):
        run.book.handle(b"stranger", m.Submit(()))
    assert b"stranger" not in run.book.peers


def test_hello_twice_is_refused(run: Run) -> None:
    index = run.index[ROOT]
    with pytest.raises(ProtocolError, match="hello twice"):
        run.book.handle(ROOT, m.Hello(m.ROOT, "root", 1, "h", 0))
    assert run.book.peers[ROOT].index == index
    assert run.book.take_outbox() == []


def test_credit_only_from_workers_and_never_negative(run: Run) -> None:
    with pytest.raises(ProtocolError):
        run.book.handle(ROOT, m.Ready(1))
    run.join(W1, slots=1)
    with pytest.raises(ProtocolError):
        run.book.handle(W1, m.Ready(-1))
    assert run.book.peers[W1].credit == 0


@pytest.mark.parametrize("in_process", [True, False])
def test_only_a_program_in_the_brokers_own_process_outlives_its_silence(in_process: bool) -> None:
    # An embedding program's pool: its root shares the broker's process, and
    # a loaded machine can keep its thread quiet past heartbeat_timeout, but
    # it lives as long as the broker does. Any other silent peer is lost.
    run = Run(heartbeat_timeout=1)
    pid = os.getpid() if in_process else os.getpid() + 1
    run.send(ROOT, m.Hello(m.ROOT, "root", pid, "localhost", 0))
    run.join(W1, slots=1)
    run.book.tick(5.0)
    assert (ROOT in run.book.peers) is in_process
    assert W1 not in run.book.peers


def test_heartbeats_change_nothing(run: Run) -> None:
    run.send(ROOT, m.Heartbeat(0))
    assert run.take(ROOT) == []


# -- exactly once, under any interleaving ------------------------------------------

WORKER_PEERS = (W1, W2, W3)


class FakeWorker:
    """A worker process as the broker sees it: one incarnation at a time."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer
        self.prefetch = 1
        self.book: WorkerBook | None = None  # None while it is away
        self.running: deque[int] = deque()
        self.stale: list[int] = []  # futures it held in earlier incarnations
        self.index = 0
        self.owned: set[int] = set()  # futures it submitted (children given up to steal)


class ExactlyOnce(RuleBasedStateMachine):
    """1 root and 3 workers; workers come and go and submit futures of their
    own; every future comes back once (but those of a departed worker, which
    nobody is left to read: at most once)."""

    def __init__(self) -> None:
        super().__init__()
        self.book = BrokerPolicy(max_losses=3)
        self.workers = {peer: FakeWorker(peer) for peer in WORKER_PEERS}
        self.submitted: set[int] = set()
        self.orphaned: set[int] = set()  # submitted by a worker that left since
        self.answers: dict[int, list[int]] = defaultdict(list)
        self.root_index = 0
        self.seq = 0
        self.book.handle(ROOT, m.Hello(m.ROOT, "root", 1, "localhost", 0))
        self.deliver()
        assert self.root_index

    def deliver(self) -> None:
        replies: list[tuple[bytes, m.Message]] = []
        for peer, msg in self.book.take_outbox():
            if peer == ROOT:
                if isinstance(msg, m.Welcome):
                    self.root_index = msg.index
                elif isinstance(msg, m.Results):
                    for out in msg.outcomes:
                        self.answers[out.fid].append(out.status)
                else:
                    assert isinstance(msg, m.Started), msg
                continue
            worker = self.workers[peer]
            if isinstance(msg, m.Results | m.Started | m.CancelReply) and worker.book is None:
                continue  # answers for a departed owner: the broker drops them too
            assert worker.book is not None, f"{msg} sent to {peer!r}, which left"
            if isinstance(msg, m.Results):
                for out in msg.outcomes:
                    self.answers[out.fid].append(out.status)
            elif isinstance(msg, m.Started | m.CancelReply):
                pass
            elif isinstance(msg, m.Tasks):
                worker.book.receive(msg.tasks)  # raises if the broker sent too many
            elif isinstance(msg, m.Recall):
                # The broker asks back an unstarted future for an idle worker.
                replies.append((peer, m.RecallReply(msg.fid, worker.book.recall(msg.fid))))
            elif isinstance(msg, m.Cancel):
                # The owner left: its unstarted futures are cancelled.
                replies.append((peer, m.CancelReply(msg.fid, worker.book.cancel(msg.fid))))
            else:
                assert isinstance(msg, m.Welcome), msg
                worker.index = msg.index
        for peer, reply in replies:
            self.book.handle(peer, reply)
        if replies:
            self.deliver()

    def join(self, worker: FakeWorker) -> None:
        self.book.handle(worker.peer, m.Hello(m.WORKER, "w", 2, "localhost", 1))
        worker.book = WorkerBook(prefetch=worker.prefetch)
        worker.running.clear()
        self.deliver()

    @initialize(prefetches=st.lists(st.integers(1, 3), min_size=3, max_size=3))
    def start_workers(self, prefetches: list[int]) -> None:
        for worker, prefetch in zip(self.workers.values(), prefetches, strict=True):
            worker.prefetch = prefetch
            self.join(worker)

    @rule(count=st.integers(1, 4), depth=st.integers(0, 3))
    def submit(self, count: int, depth: int) -> None:
        tasks = []
        for _ in range(count):
            self.seq += 1
            fid = self.root_index << 32 | self.seq
            tasks.append(m.Task(fid, 0, depth, (fid.to_bytes(8, "big"),)))
            self.submitted.add(fid)
        self.book.handle(ROOT, m.Submit(tuple(tasks)))
        self.deliver()

    @rule(peer=st.sampled_from(WORKER_PEERS), count=st.integers(1, 3))
    def give(self, peer: bytes, count: int) -> None:
        # A worker hands futures of its own to the broker (a steal).
        worker = self.workers[peer]
        if worker.book is None:
            return
        tasks = []
        for _ in range(count):
            self.seq += 1
            fid = worker.index << 32 | self.seq
            tasks.append(m.Task(fid, 0, 1, (fid.to_bytes(8, "big"),)))
            self.submitted.add(fid)
            worker.owned.add(fid)
        self.book.handle(peer, m.Submit(tuple(tasks)))
        self.deliver()

    @rule(peer=st.sampled_from(WORKER_PEERS))
    def ask(self, peer: bytes) -> None:
        worker = self.workers[peer]
        if worker.book is not None and (want := worker.book.wanted(0)):
            self.book.handle(peer, m.Ready(want))
            self.deliver()

    @rule()
    def dispatch(self) -> None:
        self.book.dispatch()
        self.deliver()

    @rule(peer=st.sampled_from(WORKER_PEERS))
    def start(self, peer: bytes) -> None:
        worker = self.workers[peer]
        job = worker.book.next_job() if worker.book is not None else None
        if job is not None:
            worker.running.append(job.task.fid)
            self.book.handle(peer, m.Started([job.task.fid]))
            self.deliver()

    @rule(peer=st.sampled_from(WORKER_PEERS), ok=st.booleans())
    def finish(self, peer: bytes, ok: bool) -> None:
        worker = self.workers[peer]
        if worker.book is not None and worker.running:
            fid = worker.running.popleft()
            worker.book.finish(fid, ok)
            status = m.OK if ok else m.RAISED
            self.book.handle(peer, m.Results((m.Outcome(fid, status, 0.0, (b"r",)),)))
            self.deliver()

    @rule(peer=st.sampled_from(WORKER_PEERS), bye=st.booleans())
    def leave(self, peer: bytes, bye: bool) -> None:
        worker = self.workers[peer]
        if worker.book is None:
            return
        worker.stale.extend(worker.book.jobs)
        self.orphaned |= worker.owned
        worker.owned = set()
        if bye:
            self.book.handle(peer, m.Bye("leaving"))
        else:
            self.book.leave(peer)
        worker.book = None
        self.deliver()

    @rule()
    def no_worker_left(self) -> None:
        # The broker's heartbeat check found no worker for too long.
        queued = {fid for fid, f in self.book.futures.items() if f.state is QUEUED}
        assert self.book.fail_queued("no worker left") == len(queued)
        self.deliver()
        assert all(self.answers[fid] == [m.LOST] for fid in queued - self.orphaned)

    @rule(peer=st.sampled_from(WORKER_PEERS))
    def rejoin(self, peer: bytes) -> None:
        worker = self.workers[peer]
        if worker.book is None:
            self.join(worker)

    @rule(peer=st.sampled_from(WORKER_PEERS), data=st.data())
    def late_answer(self, peer: bytes, data: st.DataObject) -> None:
        worker = self.workers[peer]
        if not worker.stale:
            return
        fid = data.draw(st.sampled_from(worker.stale))
        late = m.Results((m.Outcome(fid, m.OK, 0.0, (b"stale",)),))
        if worker.book is None:
            in_flight = dict(self.book.futures)
            with pytest.raises(ProtocolError):
                self.book.handle(peer, late)
            assert self.book.futures == in_flight
        else:
            # Back under the same id: dropped, unless this peer holds the
            # future again, in which case it is as good as the real answer.
            self.book.handle(peer, late)
        self.deliver()

    @invariant()
    def every_future_is_in_flight_or_answered_once(self) -> None:
        duplicates = {fid: got for fid, got in self.answers.items() if len(got) != 1}
        assert not duplicates
        assert set(self.answers) <= self.submitted
        in_flight = set(self.book.futures)
        assert in_flight - self.orphaned == self.submitted - self.orphaned - set(self.answers)
        assert not in_flight & set(self.answers)

    @invariant()
    def a_suspect_is_the_only_future_of_anyone_else_its_worker_holds(self) -> None:
        for rec in self.book.workers:
            held = [self.book.futures[fid] for fid in rec.holding]
            others = [f for f in held if f.owner != rec.peer]
            if any(f.losses for f in others):
                assert len(others) == 1, held
            assert rec.suspects == sum(1 for f in held if f.losses)

    @invariant()
    def no_worker_holds_more_than_it_asked_for(self) -> None:
        for worker in self.workers.values():
            if worker.book is not None:
                waiting = sum(1 for j in worker.book.jobs.values() if j.state is ASSIGNED)
                assert waiting + worker.book.asked <= worker.prefetch

    def teardown(self) -> None:
        # From now on every worker stays and answers everything it gets.
        for worker in self.workers.values():
            if worker.book is None:
                self.join(worker)
        for _ in range(10 * len(self.submitted) + 10):
            if not self.book.futures:
                break
            for peer in WORKER_PEERS:
                self.ask(peer)
            self.dispatch()
            for peer, worker in self.workers.items():
                while worker.book is not None and worker.book.next_job() is not None:
                    pass
                assert worker.book is not None
                worker.running = deque(
                    fid for fid, job in worker.book.jobs.items() if job.state is RUNNING
                )
                while worker.running:
                    self.finish(peer, ok=True)
        assert self.book.futures == {}
        assert self.submitted - self.orphaned <= set(self.answers) <= self.submitted
        assert all(len(got) == 1 for got in self.answers.values())
        assert all(set(got) <= {m.OK, m.RAISED, m.LOST} for got in self.answers.values())
        assert all(not p.holding for p in self.book.peers.values())


ExactlyOnce.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestExactlyOnce = ExactlyOnce.TestCase


# -- spare futures: an idle worker takes some of a busy worker's own


def test_the_broker_asks_a_worker_with_spare_futures_to_give_half_to_a_hungry_one(run: Run) -> None:
    run.join(W1, slots=1)
    run.join(W2, slots=1)
    run.send(W1, m.Spare(6))
    assert run.take(W1) == []  # nobody is hungry yet
    run.send(W2, m.Ready(2))
    assert run.take(W1) == [m.Steal(2)]
    run.send(W2, m.Ready(1))
    assert run.take(W1) == []  # one steal at a time
    # W1 hands two of its own futures over; they go to W2, results come back to W1.
    given = (run.task(W1, depth=1), run.task(W1, depth=1))
    run.send(W1, m.Submit(given))
    run.send(W1, m.Spare(4))
    assert sorted(run.tasks_for(W2)) == sorted(t.fid for t in given)
    run.answer(W2, [t.fid for t in given])
    assert sorted(fid for fid, _ in outcomes(run.take(W1))) == sorted(t.fid for t in given)
    assert run.book.futures == {}


def test_an_idle_worker_gets_back_a_future_queued_behind_a_long_one(run: Run) -> None:
    slow, fast = run.recalled_from_w1()
    run.send(W1, m.RecallReply(fast, True))
    assert run.tasks_for(W2) == [fast]
    assert run.take(ROOT) == []  # the owner sees nothing of it
    run.answer(W2, [fast])
    assert outcomes(run.take(ROOT)) == [(fast, m.OK)]


def test_started_futures_and_results_reach_the_owner_in_one_turn(run: Run) -> None:
    run.join(W1, slots=1)
    run.send(W1, m.Ready(2))
    a, b = run.submit(ROOT, 2)
    run.take(W1)
    run.book.handle(W1, m.Started([b]))
    run.send(W1, m.Results((m.Outcome(a, m.OK, 0.0, (b"v",)),)))
    msgs = run.take(ROOT)
    assert m.Started([b]) in msgs and outcomes(msgs) == [(a, m.OK)]
    assert run.book.futures[b].state is RUNNING


def test_a_departed_owners_unstarted_futures_are_cancelled_at_their_holders(run: Run) -> None:
    run.join(W1, slots=1)
    run.join(W2, slots=1)
    run.send(W2, m.Ready(1))
    (queued_at_w2,) = run.submit(W1, 1, depth=1)  # W1's child, handed to W2
    assert run.tasks_for(W2) == [queued_at_w2]
    (still_queued,) = run.submit(W1, 1, depth=1)
    run.send(W1, m.Bye("gone"))
    assert run.take(W2) == [m.Cancel(queued_at_w2)]
    assert still_queued not in run.book.futures  # never dispatched: dropped at once
    run.send(W2, m.CancelReply(queued_at_w2, True))
    assert run.book.futures == {}


def test_a_cancel_crossed_by_the_result_is_answered_even_if_the_holder_then_dies(run: Run) -> None:
    run.join(W1, slots=1)
    run.send(W1, m.Ready(1))
    (fid,) = run.submit(ROOT)
    assert run.tasks_for(W1) == [fid]
    run.send(ROOT, m.Cancel(fid))
    assert run.take(W1) == [m.Cancel(fid)]
    run.answer(W1, [fid])  # it finished before reading the cancel...
    run.book.leave(W1)  # ...and died before answering it
    run.flush()
    msgs = run.take(ROOT)
    assert outcomes(msgs) == [(fid, m.OK)]
    assert m.CancelReply(fid, False) in msgs


def test_a_cancel_that_crosses_a_recall_cancels_the_future(run: Run) -> None:
    slow, fast = run.recalled_from_w1()
    run.send(ROOT, m.Cancel(fast))
    assert run.take(W1) == [m.Cancel(fast)]
    run.send(W1, m.RecallReply(fast, True))  # handed back before it read the cancel
    assert run.take(ROOT) == [m.CancelReply(fast, True)]
    run.send(W1, m.CancelReply(fast, False))  # the cancel finds nothing to cancel
    assert run.take(ROOT) == []
    assert run.tasks_for(W2) == []  # it never runs
    assert set(run.book.futures) == {slow}
