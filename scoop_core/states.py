"""The lifecycles of futures and workers: named states, events, and the
tables of legal transitions.

Rules (after h11's ``_state.py``): states are named sentinels and events an
:class:`Event`; the tables ``FUTURE_TRANSITIONS`` and ``WORKER_TRANSITIONS``
are the only legal edges, and nothing changes a state except through them
(``fire``). An event that is illegal in the current state raises
:class:`~scoop_core.errors.ProtocolError` and leaves the state unchanged.
The broker's policy (:mod:`scoop_core.broker_policy`) and the worker's book
(:mod:`scoop_core.worker_book`) both follow these tables; nothing here does I/O.
"""

from __future__ import annotations

import enum

from scoop_core.errors import ProtocolError


class Event(enum.Enum):
    """What happens to a future or a worker: the columns of the transition tables."""

    ASSIGN = "assign"
    BLOCK = "block"
    CANCEL = "cancel"
    FAIL = "fail"
    FINISH = "finish"
    FREE = "free"
    LEAVE = "leave"
    LOSE = "lose"
    RAISE = "raise"
    RECALL = "recall"
    REQUEUE = "requeue"
    RESUME = "resume"
    START = "start"
    SUBMIT = "submit"
    WELCOME = "welcome"

    # Members are singletons, each equal to itself alone, so hashing by
    # identity agrees with equality; Enum's own __hash__ is Python code, and
    # every transition of every future hashes an event.
    __hash__ = object.__hash__


class State:
    """A named sentinel; identity is what matters."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Future lifecycle.
PENDING = State("PENDING")  # created by its owner, not yet at the broker
QUEUED = State("QUEUED")  # in the broker's queue
ASSIGNED = State("ASSIGNED")  # handed to a worker, not started yet
RUNNING = State("RUNNING")  # a worker is running it
WAITING = State("WAITING")  # running, but blocked on futures of its own
DONE = State("DONE")
FAILED = State("FAILED")
CANCELLED = State("CANCELLED")
LOST = State("LOST")  # its worker went away; about to be queued again or failed

FUTURE_TRANSITIONS: dict[tuple[State, Event], State] = {
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

# Worker lifecycle, as the broker sees it.
CONNECTING = State("CONNECTING")
IDLE = State("IDLE")
BUSY = State("BUSY")
GONE = State("GONE")

WORKER_TRANSITIONS: dict[tuple[State, Event], State] = {
    (CONNECTING, Event.WELCOME): IDLE,
    (IDLE, Event.ASSIGN): BUSY,
    (BUSY, Event.ASSIGN): BUSY,
    (BUSY, Event.FREE): IDLE,
    (CONNECTING, Event.LEAVE): GONE,
    (IDLE, Event.LEAVE): GONE,
    (BUSY, Event.LEAVE): GONE,
}


def transition(table: dict[tuple[State, Event], State], state: State, event: Event) -> State:
    """The state after ``event``; ProtocolError if the table has no such edge."""
    try:
        return table[state, event]
    except KeyError:
        raise ProtocolError(f"event {event.value!r} is illegal in state {state!r}") from None
