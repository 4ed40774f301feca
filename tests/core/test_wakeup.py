"""WakeUp's promises, checked with a receive that waits on an event its poke sets.

The conformance suites check wake-ups through each transport; these tests
check the helper itself, across threads, with deadlines rather than sleeps.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scoop_core.wakeup import WakeUp

DEADLINE = 10.0
"""Seconds a receive that should end soon may take at most (a busy machine is slow)."""


class Receiver:
    """A receive with nothing ever to receive, ended only by a wake-up, close or its timeout.

    Its poke sets an event, as a real transport's poke writes a byte; the
    event stands for the resource the poke writes to, and may be closed."""

    def __init__(self) -> None:
        self.poked = threading.Event()
        self.waiting = threading.Event()  # set each time recv is about to wait
        self.pokes = 0
        self.resource_closed = False
        self.poked_closed = False  # a poke touched the resource after it was closed
        self.wake = WakeUp(self._poke)

    def _poke(self) -> None:
        self.pokes += 1
        self.poked_closed |= self.resource_closed
        self.poked.set()

    def recv(self, timeout: float) -> bool:
        """True if woken (a wake-up or close), False if the timeout passed."""
        deadline = time.monotonic() + timeout
        with self.wake.receiving():
            while True:
                self.poked.clear()
                if self.wake.take():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.waiting.set()
                self.poked.wait(remaining)

    def close(self) -> bool:
        opened = self.wake.close()
        if opened:
            self.resource_closed = True
        return opened


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


def blocked_recv(receiver: Receiver, pool: ThreadPoolExecutor):
    """A recv of ``receiver`` running in another thread, once it waits."""
    receiver.waiting.clear()
    running = pool.submit(receiver.recv, 60.0)
    assert receiver.waiting.wait(DEADLINE), "the receive never started waiting"
    return running


def test_a_wakeup_before_the_receive_is_not_lost() -> None:
    receiver = Receiver()
    receiver.wake.wakeup()
    assert receiver.wake.due
    assert receiver.recv(DEADLINE) is True
    # Taken: the next receive waits its whole timeout again.
    assert receiver.recv(0.05) is False


def test_a_wakeup_ends_a_receive_blocked_in_another_thread(pool: ThreadPoolExecutor) -> None:
    receiver = Receiver()
    running = blocked_recv(receiver, pool)
    pool.submit(receiver.wake.wakeup).result(DEADLINE)
    assert running.result(DEADLINE) is True


def test_many_wakeups_from_many_threads_end_one_receive(pool: ThreadPoolExecutor) -> None:
    receiver = Receiver()
    start = threading.Barrier(8)

    def burst() -> None:
        start.wait(DEADLINE)
        for _ in range(1000):
            receiver.wake.wakeup()

    for done in [pool.submit(burst) for _ in range(8)]:
        done.result(DEADLINE)
    assert receiver.recv(DEADLINE) is True
    assert receiver.recv(0.05) is False, "a burst of wake-ups must end one receive, not two"
    assert receiver.pokes == 1, "a burst nobody has taken yet pokes once"


def test_a_burst_during_a_blocked_receive_ends_it(pool: ThreadPoolExecutor) -> None:
    receiver = Receiver()
    running = blocked_recv(receiver, pool)
    bursts = [pool.submit(lambda: [receiver.wake.wakeup() for _ in range(1000)]) for _ in range(8)]
    for done in bursts:
        done.result(DEADLINE)
    assert running.result(DEADLINE) is True


def test_close_from_another_thread_ends_a_blocked_receive(pool: ThreadPoolExecutor) -> None:
    receiver = Receiver()
    running = blocked_recv(receiver, pool)
    assert pool.submit(receiver.close).result(DEADLINE) is True
    assert running.result(DEADLINE) is True
    assert receiver.close() is False, "a second close says it was closed already"
    assert receiver.recv(DEADLINE) is True, "a receive after close returns at once"


def test_close_with_no_receive_under_way_does_not_poke() -> None:
    receiver = Receiver()
    assert receiver.close() is True
    assert receiver.pokes == 0


def test_no_poke_after_close() -> None:
    receiver = Receiver()
    receiver.close()
    for _ in range(3):
        receiver.wake.wakeup()
    assert receiver.pokes == 0
    assert receiver.wake.take() is True


def test_a_wakeup_racing_close_never_pokes_a_closed_resource(pool: ThreadPoolExecutor) -> None:
    for _ in range(50):
        receiver = Receiver()
        start = threading.Barrier(5)

        def wake_and_take(receiver: Receiver = receiver, start: threading.Barrier = start) -> None:
            start.wait(DEADLINE)
            for _ in range(200):
                receiver.wake.wakeup()
                receiver.wake.take()

        racers = [pool.submit(wake_and_take) for _ in range(4)]
        start.wait(DEADLINE)
        receiver.close()
        for done in racers:
            done.result(DEADLINE)
        assert not receiver.poked_closed, "a wake-up poked the resource after close"


def test_drain_runs_with_each_wakeup_taken_and_never_after_close() -> None:
    drained: list[bool] = []
    wake = WakeUp(lambda: None, drain=lambda: drained.append(wake.closed))
    wake.wakeup()
    assert wake.take() is True
    assert drained == [False]
    assert wake.take() is False
    wake.wakeup()
    wake.close()
    assert wake.take() is True
    assert drained == [False], "nothing is drained once closed"
