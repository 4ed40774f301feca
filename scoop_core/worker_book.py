"""The worker's book: the futures one worker holds, in the order it runs them.

Nothing here does I/O: :mod:`scoop_core.worker` feeds it what the broker
sends and what its greenlets do, and asks it what to run next and how many
more futures to ask for. Its futures follow the same transition table as
the broker's (:data:`scoop_core.states.FUTURE_TRANSITIONS`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from scoop_core import messages as m
from scoop_core.errors import ProtocolError
from scoop_core.states import ASSIGNED, FUTURE_TRANSITIONS, Event, State, transition


@dataclass(eq=False)
class Job:
    """A future held by a worker.

    A *local* job was submitted by a future running on this same worker: it
    keeps its call as an object (``payload``) and is pickled only if another
    worker steals it."""

    task: m.Task
    state: State = ASSIGNED
    local: bool = False
    payload: Any = None
    stealable: bool = True  # False once its payload proved unpicklable

    def fire(self, event: Event) -> None:
        self.state = transition(FUTURE_TRANSITIONS, self.state, event)


class WorkerBook:
    """The futures one worker holds, and how many more it should ask for.

    A worker asks for work while fewer than ``prefetch`` futures are ready
    to run here; futures blocked on children do not count, so a worker whose
    futures all wait on others asks for more and runs those: that is why
    nested futures never deadlock, even with one worker.

    Futures submitted by futures running here stay here (``adopt``) and run
    deepest first, as a recursive program would; the broker only learns how
    many are waiting (``spare``), and an idle worker elsewhere may take the
    oldest, shallowest ones (``steal``): the biggest pieces of the tree.
    """

    def __init__(self, *, prefetch: int = 2) -> None:
        self.prefetch = max(1, prefetch)
        self.jobs: dict[int, Job] = {}
        self._queue: list[tuple[int, int, Job]] = []
        self._seq = 0
        self.unstarted = 0  # jobs in the queue that have not started
        self.spare = 0  # of those, the local ones
        self.asked = 0  # credit granted to the broker and not yet used

    def _push(self, job: Job) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (-job.task.depth, self._seq, job))
        self.unstarted += 1
        if job.local:
            self.spare += 1

    def _left_queue(self, job: Job) -> None:
        self.unstarted -= 1
        if job.local:
            self.spare -= 1

    def receive(self, tasks: tuple[m.Task, ...]) -> None:
        """Futures from the broker (which we asked for)."""
        if len(tasks) > self.asked:
            raise ProtocolError(
                f"the broker sent {len(tasks)} futures, more futures than were asked for ({self.asked})"
            )
        fids = {t.fid for t in tasks}
        if len(fids) != len(tasks) or not fids.isdisjoint(self.jobs):
            raise ProtocolError("a future was received twice")
        for t in tasks:
            job = Job(t)
            self.jobs[t.fid] = job
            self._push(job)
        self.asked -= len(tasks)

    def adopt(self, task: m.Task, payload: Any, *, stealable: bool = True) -> Job:
        """A future submitted here, to run here unless stolen."""
        if task.fid in self.jobs:
            raise ProtocolError(f"future {task.fid:#x} adopted twice")
        job = Job(task, local=True, payload=payload, stealable=stealable)
        self.jobs[task.fid] = job
        self._push(job)
        return job

    def next_job(self) -> Job | None:
        queue = self._queue
        while queue:
            job = heapq.heappop(queue)[2]
            if job.state is ASSIGNED:
                self._left_queue(job)
                job.fire(Event.START)
                return job
        return None

    def steal(self, count: int) -> list[Job]:
        """Give up to ``count`` unstarted local jobs, shallowest and oldest first."""
        candidates = sorted(
            (e for e in self._queue if e[2].local and e[2].stealable and e[2].state is ASSIGNED),
            key=lambda e: (-e[0], e[1]),
        )[: max(0, count)]
        jobs = []
        for _, _, job in candidates:
            job.fire(Event.RECALL)
            self._left_queue(job)
            del self.jobs[job.task.fid]
            jobs.append(job)
        return jobs

    def block(self, fid: int) -> None:
        self._job(fid).fire(Event.BLOCK)

    def resume(self, fid: int) -> None:
        self._job(fid).fire(Event.RESUME)

    def _job(self, fid: int) -> Job:
        try:
            return self.jobs[fid]
        except KeyError:
            raise ProtocolError(f"future {fid:#x} is not held here") from None

    def finish(self, fid: int, ok: bool) -> None:
        self._job(fid).fire(Event.FINISH if ok else Event.RAISE)
        del self.jobs[fid]

    def cancel(self, fid: int) -> bool:
        """Cancel a future that has not started (its owner asked); False if
        it has (or is unknown)."""
        return self._give_up(fid, Event.CANCEL)

    def recall(self, fid: int) -> bool:
        """Hand back a future that has not started (the broker asked, for
        another worker); False if it has (or is unknown)."""
        return self._give_up(fid, Event.RECALL)

    def _give_up(self, fid: int, event: Event) -> bool:
        job = self.jobs.get(fid)
        if job is None or job.state is not ASSIGNED:
            return False
        job.fire(event)
        self._left_queue(job)
        del self.jobs[fid]
        return True

    def wanted(self, runnable: int) -> int:
        """How many more futures to ask for, given ``runnable`` ready greenlets.

        Asked for in batches of a quarter of ``prefetch`` (or one at a time
        while it is under 8): each ask is a message the broker reads, and a
        worker with three quarters of its window still queued or coming has
        work until the answer arrives."""
        want = self.prefetch - self.unstarted - runnable - self.asked
        if want >= max(1, self.prefetch // 4):
            self.asked += want
            return want
        return 0
