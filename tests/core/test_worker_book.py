"""The worker's book (``scoop_core.worker_book``), driven directly: no I/O.

What a worker asks the broker for, what it refuses, what it runs next and
what it gives up to an idle worker, told through the book's own calls.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoop_core import messages as m
from scoop_core.errors import ProtocolError
from scoop_core.states import (
    ASSIGNED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
)
from scoop_core.worker_book import WorkerBook

# -- credit: what a worker asks for, and what it refuses ----------------------------


def _tasks(*fids: int) -> tuple[m.Task, ...]:
    return tuple(m.Task(fid, 0, 0, (b"call",)) for fid in fids)


def _started(wb: WorkerBook, count: int) -> list[int]:
    """Start ``count`` futures, as the scheduler would; their ids."""
    fids = []
    for _ in range(count):
        job = wb.next_job()
        assert job is not None
        fids.append(job.task.fid)
    return fids


def test_a_worker_asks_for_prefetch_futures_and_no_more() -> None:
    wb = WorkerBook(prefetch=2)
    assert wb.wanted(0) == 2
    assert wb.wanted(0) == 0  # already asked, not yet come
    wb.receive(_tasks(1))
    assert wb.wanted(0) == 0
    wb.receive(_tasks(2))
    assert wb.wanted(0) == 0  # two ready to run here: enough
    job = wb.next_job()
    assert job is not None and job.task.fid == 1 and job.state is RUNNING
    assert wb.wanted(0) == 1  # the one running no longer counts as waiting to run
    assert wb.wanted(1) == 0


def test_runnable_greenlets_count_as_ready_work() -> None:
    wb = WorkerBook(prefetch=3)
    assert wb.wanted(2) == 1
    assert wb.wanted(5) == 0


def test_a_worker_refuses_more_futures_than_it_asked_for() -> None:
    wb = WorkerBook(prefetch=1)
    assert wb.wanted(0) == 1
    with pytest.raises(ProtocolError, match="more futures than were asked"):
        wb.receive(_tasks(1, 2))


def test_a_worker_refuses_a_future_it_already_holds() -> None:
    wb = WorkerBook(prefetch=2)
    wb.wanted(0)
    wb.receive(_tasks(1))
    with pytest.raises(ProtocolError, match="twice"):
        wb.receive(_tasks(1))


def test_an_over_delivery_changes_nothing() -> None:
    wb = WorkerBook(prefetch=1)
    wb.wanted(0)
    with pytest.raises(ProtocolError):
        wb.receive(_tasks(1, 2))
    assert wb.jobs == {}
    # The one future asked for is still owed: asking again would go past prefetch.
    assert wb.asked == 1
    assert wb.wanted(0) == 0


def test_blocked_futures_do_not_count_as_ready() -> None:
    # One worker, prefetch 1, a future waiting on its child: it must ask for
    # the child, or nested futures deadlock.
    wb = WorkerBook(prefetch=1)
    assert wb.wanted(0) == 1
    wb.receive(_tasks(1))
    parent = wb.next_job()
    assert parent is not None
    wb.block(1)
    assert wb.jobs[1].state is WAITING
    assert wb.wanted(0) == 1
    wb.receive(_tasks(2))
    child = wb.next_job()
    assert child is not None and child.task.fid == 2
    wb.finish(2, ok=True)
    assert child.state is DONE
    wb.resume(1)
    assert wb.jobs[1].state is RUNNING
    wb.finish(1, ok=False)
    assert parent.state is FAILED
    assert wb.jobs == {}


def test_futures_all_waiting_on_children_make_room_for_as_many_new_ones() -> None:
    wb = WorkerBook(prefetch=2)
    assert wb.wanted(0) == 2
    wb.receive(_tasks(1, 2))
    for fid in _started(wb, 2):
        wb.block(fid)
    assert wb.wanted(0) == 2  # nothing here can run: ask for two more
    wb.receive(_tasks(3, 4))
    assert wb.wanted(0) == 0
    for fid in _started(wb, 2):
        wb.block(fid)
    assert wb.wanted(0) == 2  # four futures held, none ready: still room for two
    wb.resume(1)
    wb.resume(3)
    # Their greenlets are ready again and the two asked for are still owed: enough.
    assert wb.wanted(2) == 0
    assert set(wb.jobs) == {1, 2, 3, 4}


def test_credit_not_yet_used_counts_until_the_futures_come() -> None:
    wb = WorkerBook(prefetch=3)
    assert wb.wanted(0) == 3
    wb.receive(_tasks(1))
    assert wb.asked == 2
    assert wb.wanted(0) == 0  # one here, two on their way
    wb.receive(_tasks(2, 3))
    assert wb.asked == 0
    with pytest.raises(ProtocolError, match="more futures than were asked"):
        wb.receive(_tasks(4))  # the three asked for all came
    assert set(wb.jobs) == {1, 2, 3}


def test_a_batch_with_one_future_twice_is_refused_whole() -> None:
    wb = WorkerBook(prefetch=3)
    wb.wanted(0)
    with pytest.raises(ProtocolError, match="twice"):
        wb.receive(_tasks(1, 2, 1))
    assert wb.jobs == {}
    assert wb.asked == 3
    assert wb.next_job() is None


def test_a_future_from_the_broker_with_the_id_of_a_local_one_is_refused() -> None:
    wb = WorkerBook(prefetch=2)
    local = wb.adopt(m.Task(7, 0, 1, ()), payload="here")
    assert wb.wanted(0) == 1
    with pytest.raises(ProtocolError, match="twice"):
        wb.receive(_tasks(7))
    assert wb.jobs == {7: local}
    assert wb.next_job() is local


def test_a_future_adopted_twice_is_refused() -> None:
    wb = WorkerBook()
    first = wb.adopt(m.Task(1, 0, 1, ()), payload="first")
    with pytest.raises(ProtocolError, match="adopted twice"):
        wb.adopt(m.Task(1, 0, 1, ()), payload="again")
    assert wb.jobs == {1: first}
    assert wb.spare == 1


def test_cancel_only_before_the_future_starts() -> None:
    wb = WorkerBook(prefetch=3)
    wb.wanted(0)
    wb.receive(_tasks(1, 2, 3))
    assert wb.cancel(2) is True
    assert wb.cancel(2) is False  # already gone
    job = wb.next_job()
    assert job is not None and job.task.fid == 1
    assert wb.cancel(1) is False  # running: too late
    nxt = wb.next_job()
    assert nxt is not None and nxt.task.fid == 3  # the cancelled one is skipped
    assert wb.next_job() is None
    assert wb.cancel(99) is False
    assert set(wb.jobs) == {1, 3}


def test_a_future_waiting_on_children_or_finished_cannot_be_cancelled() -> None:
    wb = WorkerBook(prefetch=2)
    wb.wanted(0)
    wb.receive(_tasks(1, 2))
    waiting, done = _started(wb, 2)
    wb.block(waiting)
    wb.finish(done, ok=True)
    assert wb.cancel(waiting) is False
    assert wb.jobs[waiting].state is WAITING
    assert wb.cancel(done) is False
    assert set(wb.jobs) == {waiting}


def test_a_cancelled_local_future_is_neither_run_nor_stolen() -> None:
    wb = WorkerBook()
    kept = wb.adopt(m.Task(1, 0, 1, ()), payload="kept")
    wb.adopt(m.Task(2, 0, 1, ()), payload="cancelled")
    assert wb.cancel(2) is True
    assert wb.spare == 1
    assert wb.steal(2) == [kept]
    assert wb.next_job() is None


def test_a_cancelled_future_frees_its_place() -> None:
    wb = WorkerBook(prefetch=2)
    wb.wanted(0)
    wb.receive(_tasks(1, 2))
    assert wb.wanted(0) == 0
    wb.cancel(1)
    assert wb.wanted(0) == 1


def test_illegal_worker_job_events_raise_and_change_nothing() -> None:
    wb = WorkerBook(prefetch=1)
    wb.wanted(0)
    wb.receive(_tasks(1))
    with pytest.raises(ProtocolError):
        wb.block(1)  # not started
    assert wb.jobs[1].state is ASSIGNED
    wb.next_job()
    with pytest.raises(ProtocolError):
        wb.resume(1)  # not blocked
    assert wb.jobs[1].state is RUNNING


def test_an_illegal_finish_keeps_the_job() -> None:
    wb = WorkerBook(prefetch=1)
    wb.wanted(0)
    wb.receive(_tasks(1))
    wb.next_job()
    wb.block(1)
    with pytest.raises(ProtocolError):
        wb.finish(1, ok=True)
    assert 1 in wb.jobs
    assert wb.jobs[1].state is WAITING


def test_prefetch_is_at_least_one() -> None:
    assert WorkerBook(prefetch=0).wanted(0) == 1


# -- futures submitted on a worker stay there, unless an idle worker steals them


def test_local_futures_run_deepest_first_and_the_oldest_shallowest_are_stolen() -> None:
    wb = WorkerBook(prefetch=2)
    shallow = wb.adopt(m.Task(1, 0, 1, ()), payload="a")
    deep = wb.adopt(m.Task(2, 1, 3, ()), payload="b")
    middle = wb.adopt(m.Task(3, 1, 2, ()), payload="c")
    later_shallow = wb.adopt(m.Task(4, 0, 1, ()), payload="d")
    assert wb.spare == 4
    assert wb.wanted(0) == 0  # it has work of its own: it asks the broker for none
    assert wb.next_job() is deep
    stolen = wb.steal(2)
    assert stolen == [shallow, later_shallow]
    assert all(j.state is QUEUED and j.task.fid not in wb.jobs for j in stolen)
    assert wb.spare == 1
    assert wb.next_job() is middle
    assert wb.next_job() is None
    assert wb.steal(5) == []


def test_a_started_or_unstealable_local_future_is_not_stolen() -> None:
    wb = WorkerBook()
    wb.adopt(m.Task(1, 0, 1, ()), payload="runs")
    wb.adopt(m.Task(2, 0, 1, ()), payload="kept", stealable=False)
    assert wb.next_job() is not None
    assert wb.steal(2) == []
    assert wb.cancel(2)
    assert wb.spare == 0


def test_futures_from_the_broker_are_never_stolen() -> None:
    wb = WorkerBook(prefetch=1)
    wb.wanted(0)
    wb.receive((m.Task(1, 0, 1, (b"call",)),))
    local = wb.adopt(m.Task(2, 0, 1, ()), payload="here")
    assert wb.spare == 1  # only the local one is offered
    assert wb.steal(2) == [local]
    job = wb.next_job()
    assert job is not None and job.task.fid == 1


def test_the_shallowest_is_stolen_first_even_if_it_came_last() -> None:
    wb = WorkerBook()
    wb.adopt(m.Task(1, 0, 3, ()), payload="deep, oldest")
    wb.adopt(m.Task(2, 0, 2, ()), payload="middle")
    shallow = wb.adopt(m.Task(3, 0, 1, ()), payload="shallow, newest")
    assert wb.steal(1) == [shallow]
    assert [j.payload for j in wb.steal(5)] == ["middle", "deep, oldest"]
    assert wb.spare == 0
    assert wb.next_job() is None


@pytest.mark.parametrize("count", [0, -1])
def test_stealing_nothing_gives_nothing(count: int) -> None:
    wb = WorkerBook()
    job = wb.adopt(m.Task(1, 0, 1, ()), payload="kept")
    assert wb.steal(count) == []
    assert wb.spare == 1
    assert wb.next_job() is job


def test_a_stolen_future_is_no_longer_held_here() -> None:
    wb = WorkerBook(prefetch=1)
    wb.adopt(m.Task(1, 0, 1, ()), payload="given away")
    assert wb.wanted(0) == 0
    (stolen,) = wb.steal(1)
    assert wb.cancel(1) is False  # its new holder answers for it now
    assert wb.next_job() is None
    assert wb.wanted(0) == 1  # its place is free again
    assert stolen.state is QUEUED


# -- what runs next -----------------------------------------------------------------


def test_the_deepest_future_runs_first_whoever_submitted_it() -> None:
    wb = WorkerBook(prefetch=3)
    wb.wanted(0)
    wb.receive((m.Task(10, 0, 1, ()), m.Task(11, 0, 4, ()), m.Task(12, 0, 2, ())))
    wb.adopt(m.Task(20, 0, 3, ()), payload="local")
    wb.adopt(m.Task(21, 0, 4, ()), payload="local, as deep as 11 but later")
    assert _started(wb, 5) == [11, 21, 20, 12, 10]
    assert wb.next_job() is None


@given(st.lists(st.integers(min_value=0, max_value=5), max_size=30))
def test_futures_run_deepest_first_and_in_arrival_order_among_equals(depths: list[int]) -> None:
    wb = WorkerBook(prefetch=len(depths))
    wb.wanted(0)
    tasks = [m.Task(fid, 0, depth, ()) for fid, depth in enumerate(depths, 1)]
    wb.receive(tuple(tasks))
    order = sorted(tasks, key=lambda t: -t.depth)  # sorted() is stable: arrival order kept
    assert _started(wb, len(tasks)) == [t.fid for t in order]
    assert wb.next_job() is None
