"""A worker process: runs futures in greenlets so that none ever blocks it.

Each future runs in its own greenlet. When it waits (``result()``, ``map``,
``wait``, ``getConst``...) on something not yet there, it switches back to
the scheduler, the main greenlet here, which reads messages, delivers
results, resumes greenlets whose wait is over, and starts other futures.
The worker asks the broker for futures while fewer than ``prefetch`` are
ready to run here (see :class:`scoop_core.worker_book.WorkerBook`), so futures
blocked on their children never hold a worker's capacity hostage.

Everything happens in one thread: greenlets switch only where a future
waits, so the scheduler's state needs no locks.
"""

from __future__ import annotations

import heapq
import importlib.util
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import greenlet

from scoop_core import activity, calls, future
from scoop_core import messages as m
from scoop_core.calls import (
    Call,
    Chunk,
    ChunkResult,
    RemoteException,
    capture,
    from_wire,
    portable,
    to_wire,
)
from scoop_core.errors import (
    EXIT_REASONS,
    INITIALIZER_FAILED,
    PROGRAM_IMPORT_FAILED,
    WORKER_RETIRED,
    SerializationError,
)
from scoop_core.future import Future
from scoop_core.interfaces import Endpoint
from scoop_core.runtime import (
    INITIALIZER,
    ChunkCut,
    ThreadedRuntime,
    items_of,
    short_repr,
)
from scoop_core.runtime import INITIALIZER_FAILED as FAILED_CONSTANT
from scoop_core.worker_book import Job, WorkerBook

log = logging.getLogger("scoop.worker")

PROGRAM_MODULE = "__scoop_main__"

# A submitted future that runs longer than this is announced as started
# (running() becomes True); quicker ones never cost that message.
_STARTED_AFTER = 0.005
_FLUSH_AFTER = 0.005
_QUEUED_SECONDS = 0.01
_MAX_PREFETCH = 128


class TaskGreenlet(greenlet.greenlet):
    """The greenlet of one future (``job``), or of the program's import (``job`` None)."""

    job: Job | None = None


class GreenletEvent:
    """An event a future's greenlet waits on by switching to the scheduler."""

    __slots__ = ("flag", "waiter", "worker")

    def __init__(self, worker: WorkerRuntime) -> None:
        self.flag = False
        self.waiter: TaskGreenlet | None = None
        self.worker = worker

    def set(self) -> None:
        self.flag = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            self.worker.ready.append(waiter)

    def wait(self, timeout: float | None = None) -> bool:
        if self.flag:
            return True
        me = greenlet.getcurrent()
        worker = self.worker
        self.waiter = me
        if timeout is not None:
            worker.add_timer(time.monotonic() + max(0.0, timeout), self)
        job = me.job
        if job is not None:
            with worker._lock:
                worker.book.block(job.task.fid)
            worker.note_started(job)
        try:
            worker.hub.switch()
        finally:
            self.waiter = None
            if job is not None:
                with worker._lock:
                    worker.book.resume(job.task.fid)
        return self.flag


class WorkerRuntime(ThreadedRuntime):
    """A worker: the main thread runs futures in greenlets; the I/O thread
    keeps the worker reachable while user code runs, taking in new futures
    and answering cancels (and recalls) of futures that have not started."""

    role = m.WORKER

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        prefetch: int = 2,
        max_tasks: int | None = None,
        initializer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(endpoint, **kwargs)
        # An Executor's max_tasks_per_child: once it has started that many
        # futures of the broker's, the worker retires (see serve) and is replaced.
        self.max_tasks = max_tasks
        self._taken = 0  # futures of the broker's started here
        self.retiring = False
        # An Executor's initializer runs before the first future (see _initialize).
        self._initialized = not initializer
        self._wants_initializer = initializer
        self.initializer_failed = False
        self.book = WorkerBook(prefetch=prefetch)
        self._base_prefetch = self.book.prefetch
        self.ready: deque[TaskGreenlet] = deque()
        self.hub: Any = None
        self._timers: list[tuple[float, int, GreenletEvent]] = []
        self._timer_seq = 0
        self._results: list[m.Outcome] = []
        self._results_size = 0  # the sum of their m.item_size
        # Results are sent by the main thread between futures, or by the I/O
        # thread when the main thread runs a future for long (see io_tick).
        self._results_lock = threading.Lock()
        self._busy_since = 0.0  # when the future the main thread runs began (0: none)
        self._started: list[Job] = []
        self._announced: set[int] = set()
        self._running = True
        self._inbox: deque[m.Message] = deque()
        self._wake = threading.Event()
        # The book is shared with the I/O thread, which adds futures and
        # cancels unstarted ones while the main thread runs others.
        self._lock = threading.Lock()
        self._reported_spare = 0
        self._spare_time = 0.0
        self._current: Job | None = None
        self._current_since = 0.0
        self._flushed = 0.0
        self._job_seconds = -1.0
        self._io_waiting = False

    @property
    def slots(self) -> int:
        return 1

    # -- hooks for the rest of the core ----------------------------------------

    def on_io_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Tasks):
            with self._lock:
                self.book.receive(msg.tasks)
        elif isinstance(msg, m.Cancel):
            with self._lock:
                cancelled = self.book.cancel(msg.fid)
            self._send(m.CancelReply(msg.fid, cancelled))
            return
        elif isinstance(msg, m.Recall):
            with self._lock:
                recalled = self.book.recall(msg.fid)
            if recalled:
                self._handed([msg.fid])
            self._send(m.RecallReply(msg.fid, recalled))
            return
        elif isinstance(msg, m.Steal):
            self._give(msg.count)
            return
        else:
            self._inbox.append(msg)
        self._wake.set()

    def current_parent(self) -> tuple[int, int]:
        job = getattr(greenlet.getcurrent(), "job", None)
        if job is None:
            return 0, 0
        return job.task.fid, job.task.depth

    def submit_lane(self) -> int:
        # The lane of the future that submits (see _job_began).
        return self.activity.lane_of(self.current_parent()[0])

    def event(self) -> GreenletEvent | None:
        if isinstance(greenlet.getcurrent(), TaskGreenlet):
            return GreenletEvent(self)
        return None

    def add_timer(self, deadline: float, event: GreenletEvent) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, event))

    def note_started(self, job: Job) -> None:
        if not job.local and job.task.fid not in self._announced:
            self._announced.add(job.task.fid)
            self._started.append(job)

    # -- futures submitted here -----------------------------------------------------

    def submit(self, payloads: Sequence[Call | Chunk], *, max_losses: int = 0) -> list[Future]:
        """Futures submitted on a worker stay on it (no pickling, no round
        trip through the broker) unless an idle worker steals them."""
        if self.closed:
            return super().submit(payloads, max_losses=max_losses)
        parent, depth = self.current_parent()
        futures = []
        count = 0
        with self._lock:
            for payload in payloads:
                fut = Future(self._next_fid(), self._canceller)
                items = len(payload.items) if isinstance(payload, Chunk) else 1
                fut.call = payload.fn, items
                count += items
                self._owned[fut.fid] = fut
                self.book.adopt(m.Task(fut.fid, parent, depth + 1, (), max_losses), payload)
                futures.append(fut)
        self.activity.submitted += count
        if self.activity.events is not None:
            self._trace_submits([fut.fid for fut in futures])
        self._wake.set()  # in case a thread of the user's submitted while we idle
        return futures

    def cancel(self, fid: int) -> bool:
        with self._lock:
            job = self.book.jobs.get(fid)
            if job is None or not job.local:
                job = None
            elif not self.book.cancel(fid):
                return False
        if job is None:
            return super().cancel(fid)  # it was stolen: ask the broker
        fut = self._forget(fid)
        if fut is not None:
            self.activity.cancelled += items_of(fut)
            fut.mark_cancelled()
        return True

    def _adapt_prefetch(self, elapsed: float) -> None:
        """Hold about _QUEUED_SECONDS of work: many quick futures (so the
        round trip to the broker is hidden), few slow ones (so an idle
        worker can have them)."""
        avg = self._job_seconds
        avg = elapsed if avg < 0 else 0.8 * avg + 0.2 * elapsed
        self._job_seconds = avg
        ahead = int(_QUEUED_SECONDS / avg) if avg > 0 else _MAX_PREFETCH
        self.book.prefetch = max(self._base_prefetch, min(_MAX_PREFETCH, ahead))

    def on_broker_lost(self, silent: float) -> None:
        # A worker without its broker has nobody to work for: exit, even if a
        # future is running (its result could not be delivered anyway).
        log.warning("%s: no word from the broker for %.0f s; exiting", self.name, silent)
        logging.shutdown()
        os._exit(1)

    def on_io_failed(self) -> None:
        # Deaf and mute, it would hold its futures for ever, and never hear
        # that the run is over: exit, so that they run elsewhere.
        log.error("%s: its I/O thread failed; exiting", self.name)
        logging.shutdown()
        os._exit(1)

    def io_tick(self) -> float:
        """Say that the running future started once it has run a few ms, and
        send the results of those before it: they would wait for it else."""
        wait = self._results_due()
        return min(wait, self._announce())

    def _results_due(self) -> float:
        busy = self._busy_since
        if not busy or not self._results:
            return 1.0
        left = busy + _FLUSH_AFTER - time.monotonic()
        if left > 0:
            return left
        self._send_results()
        return 1.0

    def _announce(self) -> float:
        job = self._current
        if job is None or job.task.fid in self._announced:
            self._io_waiting = True
            return 1.0
        self._io_waiting = False
        left = self._current_since + _STARTED_AFTER - time.monotonic()
        if left > 0:
            return left
        self._announced.add(job.task.fid)
        self._send(m.Started([job.task.fid]))
        return 0.0

    def _give(self, count: int) -> None:
        """Hand spare futures to the broker for idle workers (in the I/O thread)."""
        with self._lock:
            jobs = self.book.steal(count)
        tasks, kept = [], []
        limit = m.payload_limit(self.codec.max_size)
        for job in jobs:
            try:
                frames = self.serializer.dumps(to_wire(job.payload))
            except Exception:
                kept.append(job)
                continue
            if limit is not None and sum(memoryview(f).nbytes for f in frames) > limit:
                kept.append(job)  # too big to travel: it runs here
                continue
            t = job.task
            tasks.append(m.Task(t.fid, t.parent, t.depth, tuple(frames), t.max_losses))
            if isinstance(job.payload, Chunk) and not job.payload.fold:
                self._chunks[t.fid] = (job.payload, t.max_losses)  # may come back cut
        with self._lock:
            for job in kept:
                self.book.adopt(job.task, job.payload, stealable=False)
            spare = self.book.spare
        if tasks:
            self._handed([t.fid for t in tasks])
            self._send_tasks(tasks)
        self._send(m.Spare(spare))
        self._reported_spare = spare

    def _handed(self, fids: list[int]) -> None:
        """These futures leave this worker unstarted, for others to run."""
        act = self.activity
        act.handed += len(fids)
        if act.events is not None:
            now = time.perf_counter()
            events = act.events
            for fid in fids:
                events.extend((activity.HANDED, now, fid))

    def _report_spare(self) -> None:
        spare = self.book.spare
        last = self._reported_spare
        if spare != last:
            now = time.monotonic()
            # Say at once when we start or stop having spare futures; in
            # between, a few reports a second are enough to steal well.
            if (spare == 0) != (last == 0) or now - self._spare_time > 0.01:
                self._reported_spare, self._spare_time = spare, now
                self._send(m.Spare(spare))

    # -- running futures ----------------------------------------------------------

    def _job_began(self, fid: int) -> None:
        """Future ``fid`` starts running here."""
        act = self.activity
        act.running += 1
        if act.events is not None:
            act.take_lane(fid)

    def _job_ended(
        self, task: m.Task, payload: Any, start: float, elapsed: float, status: int, size: int
    ) -> None:
        """Future ``task`` ran here from ``start`` for ``elapsed`` seconds;
        ``size``: the bytes of its outcome."""
        act = self.activity
        act.running -= 1
        items = len(payload.items) if isinstance(payload, Chunk) else 1
        act.ran += items
        if act.events is not None:
            fid = task.fid
            fn = act.name_id(payload.fn if payload is not None else None)
            args = m.frames_nbytes(task.frames)
            lane = act.free_lane(fid)
            act.events.extend(
                (
                    activity.RUN,
                    start,
                    elapsed,
                    fid,
                    task.parent,
                    fn,
                    items,
                    args,
                    size,
                    status,
                    lane,
                )
            )

    def _run_local(self, job: Job) -> None:
        fid = job.task.fid
        fut = self._owned.get(fid)
        if fut is not None and fut._state == "PENDING":
            fut.set_running_or_notify_cancel()
        self._job_began(fid)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            value = job.payload.run()
        except BaseException as exc:
            if isinstance(exc, greenlet.GreenletExit):
                raise
            error = exc
        elapsed = time.perf_counter() - start
        self._job_ended(
            job.task, job.payload, start, elapsed, m.OK if error is None else m.RAISED, 0
        )
        with self._lock:
            self.book.finish(fid, error is None)
        fut = self._forget(fid)
        if fut is None:
            return
        fut.elapsed = elapsed
        if error is None:
            fut.set_result(value)
        else:
            self.activity.failed += items_of(fut)
            fut.set_exception(error)

    def _run_job(self, job: Job) -> None:
        if job.local:
            self._run_local(job)
            return
        fid = job.task.fid
        self._job_began(fid)
        self._busy_since = time.monotonic()
        if self._results and self._io_waiting:
            self.endpoint.wakeup()  # to send them if this future runs long
        start = time.perf_counter()
        status = m.OK
        payload: Any = None
        try:
            payload = from_wire(self.serializer.loads(job.task.frames))
            if not isinstance(payload, Chunk):
                # Its owner may ask running(): if it runs for more than a
                # moment, the I/O thread says it started (see io_tick).
                # Chunks of a map are never seen by the user.
                self._current, self._current_since = job, time.monotonic()
                if self._io_waiting:
                    self.endpoint.wakeup()
            value: Any = payload.run()
        except BaseException as exc:
            if isinstance(exc, greenlet.GreenletExit):
                raise
            status, value = m.RAISED, portable(capture(exc), self.serializer.dumps)
        self._current = None
        self._busy_since = 0.0
        elapsed = time.perf_counter() - start
        self._adapt_prefetch(elapsed)
        frames = self._dump_outcome(value)
        size = -1
        if frames is None:
            status, frames = m.RAISED, self._dump_unsendable(value)
        else:
            size = m.frames_nbytes(frames)
            instead = self._too_big(frames, size, payload, value, status == m.OK)
            if instead is not None:
                status, frames = instead
                size = -1
        if size < 0:
            size = m.frames_nbytes(frames)
        self._job_ended(job.task, payload, start, elapsed, status, size)
        self._announced.discard(fid)
        with self._lock:
            self.book.finish(fid, status == m.OK)
        with self._results_lock:
            self._results.append(m.Outcome(fid, status, elapsed, tuple(frames)))
            self._results_size += m.ITEM_ALLOWANCE + size  # its item_size

    def _dump_outcome(self, value: Any) -> list[Any] | None:
        try:
            return self.serializer.dumps(value)
        except Exception:
            if isinstance(value, ChunkResult):
                return self.serializer.dumps(self._trim_chunk(value))
            return None

    def _trim_chunk(self, result: ChunkResult) -> ChunkResult:
        # Keep the values before the first one that cannot be sent; that one
        # becomes the chunk's error, raised where the caller reaches it.
        for n, value in enumerate(result.values):
            try:
                self.serializer.dumps(value)
            except Exception as exc:
                error = SerializationError(
                    f"the result {short_repr(value)} cannot be sent back from the worker "
                    f"({type(exc).__name__}: {exc})"
                )
                return ChunkResult(result.values[:n], capture(error))
        return ChunkResult(
            result.values, portable(result.error, self.serializer.dumps) if result.error else None
        )

    def _too_big(
        self, frames: list[Any], size: int, payload: Any, value: Any, ok: bool
    ) -> tuple[int, list[Any]] | None:
        """None if a result's ``frames`` (``size`` bytes) fit one message;
        else the status and frames to send instead: a map chunk's first
        values that fit (see ChunkCut), or the SerializationError its owner gets."""
        limit = m.payload_limit(self.codec.max_size)
        if limit is None or size <= limit:
            return None
        if (
            ok
            and isinstance(payload, Chunk)
            and not payload.fold
            and isinstance(value, ChunkResult)
        ):
            cut = self._cut_chunk(value, payload, limit)
            if cut is not None:
                return m.OK, cut  # a chunk's result, whose error says where it stopped
        return m.RAISED, self._error_frames(self._size_error(size, payload))

    def _size_error(self, size: int, payload: Any, *, one_item: bool = False) -> SerializationError:
        fn = getattr(payload, "fn", None)
        name = getattr(fn, "__qualname__", None) or short_repr(fn)
        what = f"the result of {name}" if fn is not None else "a result"
        if isinstance(payload, Chunk) and not one_item:
            what += f" (a chunk of {len(payload.items)} item(s) of a map)"
        assert self.codec.max_size is not None
        return SerializationError(
            f"{what} cannot be sent back from {self.name}: it is "
            f"{m.too_big_for_one_message(size, self.codec.max_size)}; return less, or raise the limit"
        )

    def _cut_chunk(self, result: ChunkResult, payload: Chunk, limit: int) -> list[Any] | None:
        """The frames of the first values of a map chunk's ``result`` that fit
        one message, marked ChunkCut so that the owner runs the other items
        again. If the first alone does not fit, the chunk fails there."""
        room, count, first = limit - 1024, 0, 0  # 1 KiB for the ChunkResult around the values
        for value in result.values:
            size = sum(memoryview(f).nbytes for f in self.serializer.dumps(value))
            first = first or size
            room -= size
            if room < 0:
                break
            count += 1
        if count == 0 and first:
            error = self._size_error(first, payload, one_item=True)
            failed = ChunkResult([], RemoteException(error, "", f"Raised by {self.name}\n"))
            return self.serializer.dumps(failed)
        while count > 0:
            cut = ChunkCut(
                f"only {count} of {len(payload.items)} results of a chunk fit one message", count
            )
            frames = self.serializer.dumps(
                ChunkResult(result.values[:count], RemoteException(cut, "", ""))
            )
            if sum(memoryview(f).nbytes for f in frames) <= limit:
                return frames
            count -= 1
        return None

    def _error_frames(self, error: Exception) -> list[Any]:
        return self.serializer.dumps(RemoteException(error, "", f"Raised by {self.name}\n"))

    def unsendable(self, msg: m.Message, exc: Exception, encoded: list[list[Any]]) -> None:
        """A Results message too big after all (a size estimate was off):
        each outcome goes alone, and one that still cannot go becomes its
        future's SerializationError."""
        if not isinstance(msg, m.Results):
            super().unsendable(msg, exc, encoded)
            return
        for out in msg.outcomes:
            try:
                encoded.append(self.codec.encode(m.Results((out,))))
            except Exception as alone:
                log.error("%s could not send the result of %#x: %s", self.name, out.fid, alone)
                error = SerializationError(
                    f"cannot send the result of future {out.fid:#x}: {alone}"
                )
                failed = m.Outcome(out.fid, m.RAISED, out.elapsed, tuple(self._error_frames(error)))
                self._encode(m.Results((failed,)), encoded)

    def _dump_unsendable(self, value: Any) -> list[Any]:
        try:
            self.serializer.dumps(value)
            reason = "unknown reason"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        error = SerializationError(
            f"the result {short_repr(value)} cannot be sent back from the worker ({reason}); "
            "return plain data instead"
        )
        return self._error_frames(error)

    # -- the loop -------------------------------------------------------------

    def serve(self, program: str | None = None) -> None:
        """Run futures until the broker says the run is over, or, with
        ``max_tasks``, until this worker retires: once it has started that
        many futures of the broker's it asks for no more, gives up those it
        holds unstarted, finishes the others (and their children), and says
        goodbye; the broker queues again what it gave up, without a loss."""
        self.hub = greenlet.getcurrent()
        future.greenlet_event = self.event
        if program:
            importer = TaskGreenlet(lambda: self._import_program(program))
            self.ready.append(importer)
        if self._wants_initializer:
            self.ready.append(TaskGreenlet(self._initialize))
        book, ready = self.book, self.ready
        act = self.activity
        clock = time.perf_counter
        while self._running:
            progressed = False
            if ready:
                began = clock()
                ready.popleft().switch()
                act.busy += clock() - began
                progressed = True
            elif self._initialized:
                if self.retiring:
                    self._give_back_unstarted()
                with self._lock:
                    job = book.next_job()
                if job is not None:
                    if not job.local:
                        self._count_taken()
                    g = TaskGreenlet(self._run_job)
                    g.job = job
                    began = clock()
                    g.switch(job)
                    act.busy += clock() - began
                    progressed = True
            self._fire_timers()
            now = time.monotonic()
            # Results of quick futures go out in batches; nothing waits
            # longer than _FLUSH_AFTER, and all goes out before we idle.
            if (
                self._started
                or len(self._results) >= 64
                or not (ready or book.unstarted)
                or now - self._flushed > _FLUSH_AFTER
            ):
                self._flush()
                self._flushed = now
            want = self._wanted(len(ready))
            if want:
                self._send(m.Ready(want))
            if self.retiring and not ready and not book.jobs:
                break  # what ran here is done; what was not started is handed back
            self._take_messages(0.0 if (progressed or ready) else self._idle_timeout())
        if self.shutdown_reason:
            # Let the broker know we heard it, so it closes without waiting for us.
            self._results = []
            self._results_size = 0
            self._report(final=True)
            self._send(m.Bye("shutdown"))
        elif self.retiring or self.initializer_failed:
            # Goodbye, as a worker asked to leave says it: the broker queues
            # again, without a loss, whatever this worker still held.
            self._flush()
            status = self.exit_status
            self.activity.leaving = EXIT_REASONS[status]  # what backs up the status
            self.leave(10.0, "retired" if self.retiring else "its initializer failed")
            return
        else:
            self._flush()
            self._report(final=True)
        self.stop_io()

    @property
    def exit_status(self) -> int:
        """The status this worker's process ends with, once :meth:`serve` returned."""
        if self.shutdown_reason:
            return 0
        if self.initializer_failed:
            return INITIALIZER_FAILED
        return WORKER_RETIRED if self.retiring else 0

    # -- an Executor's initializer and max_tasks_per_child ------------------------

    def _initialize(self) -> None:
        """Run the Executor's initializer (a constant of the run, which may
        reach this worker after its first futures do) before any future. If
        it raises, the worker says why in a constant the Executor reads,
        hands back what it holds, and exits with INITIALIZER_FAILED."""
        try:
            call = from_wire(self.serializer.loads(self.get_const(INITIALIZER, None)))
            call.run()
        except BaseException as exc:
            if isinstance(exc, greenlet.GreenletExit):
                raise
            log.exception("%s: the Executor's initializer raised", self.name)
            self.initializer_failed = True  # no future starts, none is asked for
            try:
                self.set_const(f"{FAILED_CONSTANT}{self.name}", f"{type(exc).__name__}: {exc}")
            except Exception:
                log.debug("%s could not say why its initializer failed", self.name, exc_info=True)
            self._running = False
            return
        self._initialized = True

    def _count_taken(self) -> None:
        self._taken += 1
        if self.max_tasks is not None and self._taken >= self.max_tasks:
            self.retiring = True

    def _wanted(self, runnable: int) -> int:
        """How many futures to ask the broker for: never more than this
        worker will run before it retires (it would only hand them back)."""
        if self.retiring or self.initializer_failed:
            return 0
        book = self.book
        with self._lock:
            if self.max_tasks is None:
                return book.wanted(runnable)
            room = self.max_tasks - self._taken - (book.unstarted - book.spare) - book.asked
            if room <= 0:
                return 0
            want = book.wanted(runnable)
            if want > room:
                book.asked -= want - room
                want = room
            return want

    def _give_back_unstarted(self) -> None:
        """Retiring: futures of the broker's held here and not started are
        given up (the broker queues them again when this worker says goodbye)."""
        with self._lock:
            given = [
                fid
                for fid, job in list(self.book.jobs.items())
                if not job.local and self.book.recall(fid)
            ]
        if given:
            self._handed(given)

    def leave(self, timeout: float, reason: str = "asked to leave") -> bool:
        """From a signal handler: say goodbye to the broker, which queues
        again, without a loss, every future this worker holds; send it and
        stop the I/O thread. True if that was done within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._report(final=True)
        self._send(m.Bye(reason))
        self.stop_io()
        return time.monotonic() < deadline

    def _idle_timeout(self) -> float:
        if self._timers:
            return max(0.0, min(1.0, self._timers[0][0] - time.monotonic()))
        return 1.0

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, event = heapq.heappop(timers)
            waiter, event.waiter = event.waiter, None
            if waiter is not None:
                self.ready.append(waiter)

    def _flush(self) -> None:
        self._report_spare()
        if self._started:
            started = [j.task.fid for j in self._started if j.task.fid in self.book.jobs]
            self._started = []
            limit = self.codec.max_size
            for fids in m.split_by_size(started, limit, total=m.item_size(0) * len(started)):
                self._send(m.Started(fids))
        if self._results:
            self._send_results()

    def _send_results(self) -> None:
        """Send the results not sent yet (from either thread)."""
        with self._results_lock:
            results, size = self._results, self._results_size
            self._results, self._results_size = [], 0
        # Several results that fit one by one may not fit together.
        for batch in m.split_by_size(results, self.codec.max_size, total=size):
            self._send(m.Results(tuple(batch)))

    def _take_messages(self, timeout: float) -> None:
        """Apply what the I/O thread received, waiting up to ``timeout`` for some."""
        inbox = self._inbox
        if not inbox and timeout > 0:
            self._wake.clear()
            if not inbox:  # it may have arrived between the test and the clear
                self._wake.wait(timeout)
        while inbox:
            msg = inbox.popleft()
            if isinstance(msg, m.Shutdown):
                self._running = False
                self._on_shutdown(msg.reason)
            else:
                self.handle(msg)

    def _import_program(self, program: str) -> None:
        """Import the user's program under another name than ``__main__``, so
        its module-level code runs here and its ``if __name__ == '__main__'``
        block does not; then let pickled references to ``__main__`` resolve to it."""
        spec = importlib.util.spec_from_file_location(PROGRAM_MODULE, program)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import the program {program!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[PROGRAM_MODULE] = module
        sys.modules["__main__"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            log.exception("%s could not import the program %s", self.name, program)
            self._running = False
            # Say so, and goodbye: the launcher believes the status with these words.
            self.activity.leaving = EXIT_REASONS[PROGRAM_IMPORT_FAILED]
            self._flush()
            self.leave(5.0, "it could not import the program")
            raise SystemExit(PROGRAM_IMPORT_FAILED) from None


def set_worker_name(name: str) -> None:
    calls.WORKER_NAME = name
