"""The future and worker lifecycles of ``scoop_core.states``, driven directly.

Written after h11's ``test_state.py``: every legal edge is fired, every
illegal one raises ProtocolError and leaves the state as it was, on the
bare tables and on the records that follow them (the broker's future and
peer records, the worker's jobs).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scoop_core import messages as m
from scoop_core.broker_policy import FutureRecord, PeerRecord
from scoop_core.errors import ProtocolError
from scoop_core.states import (
    ASSIGNED,
    BUSY,
    CANCELLED,
    CONNECTING,
    DONE,
    FAILED,
    FUTURE_TRANSITIONS,
    GONE,
    IDLE,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    WAITING,
    WORKER_TRANSITIONS,
    Event,
    State,
    transition,
)
from scoop_core.worker_book import Job

# -- the transition tables ---------------------------------------------------------

# The lifecycles as DESIGN.md tells them, written out here so that a change to
# the tables in states.py has to be a deliberate change to this list too.
EXPECTED_FUTURE_EDGES = {
    (PENDING, Event.SUBMIT): QUEUED,
    (PENDING, Event.CANCEL): CANCELLED,
    (QUEUED, Event.ASSIGN): ASSIGNED,
    (QUEUED, Event.CANCEL): CANCELLED,
    (QUEUED, Event.FAIL): FAILED,  # no worker is left to run it
    (ASSIGNED, Event.START): RUNNING,
    (ASSIGNED, Event.CANCEL): CANCELLED,
    (ASSIGNED, Event.FINISH): DONE,
    (ASSIGNED, Event.RAISE): FAILED,
    (ASSIGNED, Event.LOSE): LOST,
    (ASSIGNED, Event.RECALL): QUEUED,
    (RUNNING, Event.BLOCK): WAITING,
    (RUNNING, Event.FINISH): DONE,
    (RUNNING, Event.RAISE): FAILED,
    (RUNNING, Event.LOSE): LOST,
    (WAITING, Event.RESUME): RUNNING,
    (WAITING, Event.LOSE): LOST,
    (LOST, Event.REQUEUE): QUEUED,
    (LOST, Event.FAIL): FAILED,
    (LOST, Event.CANCEL): CANCELLED,
}
EXPECTED_WORKER_EDGES = {
    (CONNECTING, Event.WELCOME): IDLE,
    (IDLE, Event.ASSIGN): BUSY,
    (BUSY, Event.ASSIGN): BUSY,
    (BUSY, Event.FREE): IDLE,
    (CONNECTING, Event.LEAVE): GONE,
    (IDLE, Event.LEAVE): GONE,
    (BUSY, Event.LEAVE): GONE,
}
FUTURE_STATES = (PENDING, QUEUED, ASSIGNED, RUNNING, WAITING, DONE, FAILED, CANCELLED, LOST)
EVENTS = list(Event)
WORKER_STATES = (CONNECTING, IDLE, BUSY, GONE)


def _edge_id(edge: tuple[tuple[State, Event], State]) -> str:
    (state, event), after = edge
    return f"{state!r}-{event.value}->{after!r}"


def _pair_id(pair: tuple[State, Event]) -> str:
    state, event = pair
    return f"{state!r}-{event.value}"


def _future(state: State = PENDING) -> FutureRecord:
    return FutureRecord(fid=1 << 32 | 1, owner=b"root", parent=0, depth=0, frames=(), state=state)


def _peer(state: State = CONNECTING) -> PeerRecord:
    return PeerRecord(peer=b"w", index=2, role=m.WORKER, name="w", slots=1, state=state)


def _job(state: State = ASSIGNED) -> Job:
    return Job(m.Task(1 << 32 | 1, 0, 0, ()), state=state)


def test_the_tables_are_the_documented_lifecycles() -> None:
    assert FUTURE_TRANSITIONS == EXPECTED_FUTURE_EDGES
    assert WORKER_TRANSITIONS == EXPECTED_WORKER_EDGES


def _assert_legal(
    table: dict[tuple[State, Event], State],
    edge: tuple[tuple[State, Event], State],
    *records: Callable[[State], FutureRecord | PeerRecord | Job],
) -> None:
    """``edge`` is in ``table``, and each record made in its first state follows it."""
    (before, event), after = edge
    assert transition(table, before, event) is after
    for make in records:
        record = make(before)
        record.fire(event)
        assert record.state is after


@pytest.mark.parametrize("edge", EXPECTED_FUTURE_EDGES.items(), ids=_edge_id)
def test_every_legal_future_transition(edge: tuple[tuple[State, Event], State]) -> None:
    # The broker's record and the worker's job both follow the same table.
    _assert_legal(FUTURE_TRANSITIONS, edge, _future, _job)


@pytest.mark.parametrize("edge", EXPECTED_WORKER_EDGES.items(), ids=_edge_id)
def test_every_legal_worker_transition(edge: tuple[tuple[State, Event], State]) -> None:
    _assert_legal(WORKER_TRANSITIONS, edge, _peer)


ILLEGAL_FUTURE_PAIRS = [
    (state, event)
    for state in FUTURE_STATES
    for event in EVENTS
    if (state, event) not in EXPECTED_FUTURE_EDGES
]
ILLEGAL_WORKER_PAIRS = [
    (state, event)
    for state in WORKER_STATES
    for event in EVENTS
    if (state, event) not in EXPECTED_WORKER_EDGES
]


@pytest.mark.parametrize("pair", ILLEGAL_FUTURE_PAIRS, ids=_pair_id)
def test_illegal_future_events_raise_and_change_nothing(pair: tuple[State, Event]) -> None:
    state, event = pair
    with pytest.raises(ProtocolError, match=rf"{event.value!r} is illegal in state {state!r}"):
        transition(FUTURE_TRANSITIONS, state, event)
    fut = _future(state)
    with pytest.raises(ProtocolError):
        fut.fire(event)
    assert fut.state is state
    job = _job(state)
    with pytest.raises(ProtocolError):
        job.fire(event)
    assert job.state is state


@pytest.mark.parametrize("pair", ILLEGAL_WORKER_PAIRS, ids=_pair_id)
def test_illegal_worker_events_raise_and_change_nothing(pair: tuple[State, Event]) -> None:
    state, event = pair
    peer = _peer(state)
    with pytest.raises(ProtocolError, match=rf"{event.value!r} is illegal in state {state!r}"):
        peer.fire(event)
    assert peer.state is state


@pytest.mark.parametrize("state", [DONE, FAILED, CANCELLED])
def test_a_finished_future_can_never_be_revived(state: State) -> None:
    assert not [event for (s, event) in FUTURE_TRANSITIONS if s is state]


def test_a_departed_worker_can_never_come_back_as_the_same_record() -> None:
    assert not [event for (s, event) in WORKER_TRANSITIONS if s is GONE]


def test_a_lost_future_is_never_left_lost() -> None:
    # LOST is a way station: the broker queues it again, fails it, or cancels it.
    assert {FUTURE_TRANSITIONS[LOST, e] for (s, e) in FUTURE_TRANSITIONS if s is LOST} == {
        QUEUED,
        FAILED,
        CANCELLED,
    }


def test_a_future_lifecycle_from_submission_to_done() -> None:
    fut = _future()
    for event, state in [
        (Event.SUBMIT, QUEUED),
        (Event.ASSIGN, ASSIGNED),
        (Event.START, RUNNING),
        (Event.BLOCK, WAITING),
        (Event.RESUME, RUNNING),
        (Event.BLOCK, WAITING),
        (Event.RESUME, RUNNING),
        (Event.FINISH, DONE),
    ]:
        fut.fire(event)
        assert fut.state is state


def test_a_lost_future_runs_again() -> None:
    fut = _future(RUNNING)
    for event, state in [(Event.LOSE, LOST), (Event.REQUEUE, QUEUED), (Event.ASSIGN, ASSIGNED)]:
        fut.fire(event)
        assert fut.state is state
