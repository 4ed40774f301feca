"""The worker's book (``scoop_core.worker_book``), driven directly: no I/O.

What a worker asks the broker for, what it refuses, what it runs next and
what it gives up to an idle worker, told through the book's own calls.
"""

from __future__ import annotations

import pytest

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


def _tasks(*fids: int) -> list[m.Task]:
    return [m.Task(fid, 0, 0, (b"call",)) for fid in fids]


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
