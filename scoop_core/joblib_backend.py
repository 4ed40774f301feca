"""joblib's backend ``"scoop"``: ``joblib.Parallel``, and scikit-learn through it, on SCOOP workers.

Importing this module registers the backend with joblib::

    import scoop_core.joblib_backend  # noqa: F401  (registers backend "scoop")

    with joblib.parallel_config(backend="scoop"):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(x) for x in data)

joblib stays optional: nothing else in scoop-core imports it, and importing
this module without joblib installed raises ``ImportError`` saying so.

Where the work runs
    Inside a run (a program started by ``python -m scoop``, or with a
    ``scoop_core.Executor`` open), each batch joblib makes is one future of
    that run. Outside any run, the first ``Parallel`` call (or
    ``joblib.effective_n_jobs``) starts a local pool, a ``scoop_core.Executor``
    with one worker per core, logged at INFO under ``scoop.joblib``; later calls
    reuse it and it stops when the program exits, as loky's reusable executor
    does. It is private to joblib: ``scoop.futures`` calls of the program do
    not use it. As with any Executor, workers import the program's main file,
    so keep the work under ``if __name__ == "__main__":``.

``n_jobs``
    ``-1`` means all the run's workers (``-2`` all but one, as in joblib);
    ``k`` lets at most ``k`` batches be on the workers at a time (the others
    wait in this process), so ``k`` workers at most are busy. The default,
    when neither ``Parallel`` nor ``parallel_config`` names one, is ``-1``, as
    for joblib's dask backend. A value of 1 (or a run of one worker) makes
    joblib run the calls in the calling process, as it does with one core.

Results and errors
    Batches come back through done-callbacks in the root's I/O thread, which
    also hands joblib's next batches to the run: results are in order,
    ``return_as="generator"`` and ``"generator_unordered"`` work, and
    ``Parallel(timeout=...)`` is honoured. An exception raised by a call is
    raised by ``Parallel`` with its own type, the worker's traceback attached
    as its ``__cause__``; joblib then aborts, and this backend cancels the
    batches not started yet. A batch already running on a worker runs to its
    end (a started future cannot be stopped) and its result is dropped.

Nested ``Parallel``
    A ``Parallel`` called inside a task that runs on a worker does not submit
    futures: joblib waits for its results by polling (``time.sleep`` in the
    calling thread), which would hold the worker's scheduler, so nested
    futures queued on that worker would run only if another worker stole
    them, and with every worker inside such a loop, never. Nor could the
    tasks of a worker take turns while they wait: they are greenlets of one
    thread, and joblib keeps its ``parallel_config`` per thread, so one
    task's configuration would leak into another's. It falls back the
    way joblib expects of a process backend (:meth:`ScoopBackend.get_nested_backend`):
    threads of the worker (:class:`NestedThreadingBackend`) at the first
    level, at most the cores of the machine divided by the run's workers
    (``n_jobs=-1`` means that many; with one core each, it runs sequentially),
    and sequentially below that. ``backend="scoop"`` named explicitly inside
    a task falls back the same way. For parallel work inside a task, submit
    nested futures with ``scoop.futures``: those never block a worker.

Since joblib keeps each backend's state on the instance (the ``Parallel``
call in progress, batch-size statistics), one instance serves one
``Parallel`` call at a time, as with joblib's own backends.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        ThreadingBackend,
    )
except ImportError as exc:
    raise ImportError(
        "scoop_core.joblib_backend needs joblib, which is not installed here: "
        "install it with `pip install joblib` (1.3 or later)"
    ) from exc

from scoop_core import context, runtime
from scoop_core import messages as m
from scoop_core.calls import Call
from scoop_core.errors import SerializationError
from scoop_core.future import Future

if TYPE_CHECKING:
    from scoop_core.executor import Executor

__all__ = ["BACKEND_NAME", "NestedThreadingBackend", "ScoopBackend"]

log = logging.getLogger("scoop.joblib")

BACKEND_NAME = "scoop"
"""The name to give ``joblib.parallel_config(backend=...)`` or ``Parallel(backend=...)``."""


def _run_batch(batch: Callable[[], list[Any]]) -> list[Any]:
    """What a future of this backend runs on a worker: one joblib batch.

    One module-level function for every batch, so the run learns its cost
    and traces it under one name, and never keeps a batch (with its
    arguments) as a key of its tables."""
    return batch()


def _naming_the_call(batch: Any, rt: runtime.Runtime, exc: Exception) -> Exception:
    """``exc``, raised sending ``batch``; if it says the batch cannot be
    pickled, the error that names the call of the user's that cannot."""
    if not isinstance(exc, SerializationError):
        return exc
    for fn, args, kwargs in getattr(batch, "items", ()):
        try:
            rt.serializer.dumps((fn, args, kwargs))
        except Exception as inner:
            return runtime.describe_unpicklable(
                Call(fn, tuple(args), dict(kwargs)), rt.serializer, inner
            )
    return exc


def _in_worker() -> bool:
    """True in a worker process of a run (a task's code runs there)."""
    rt = runtime.current()
    return rt is not None and rt.role == m.WORKER


def _cores_per_worker() -> int:
    """This machine's cores shared among the run's workers (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, context.SIZE))


class NestedThreadingBackend(ThreadingBackend):
    """joblib's threads, for a ``Parallel`` inside a task on a worker.

    Every worker already has a core, so threads beyond the worker's share of
    the machine would only oversubscribe it: ``n_jobs`` (``-1`` included) is
    capped at the cores divided by the run's workers, and a cap of one runs
    sequentially. Deeper levels are sequential (joblib's own rule)."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return min(int(super().effective_n_jobs(n_jobs)), _cores_per_worker())


# -- the local pool, for programs outside any run ------------------------------

_local_lock = threading.Lock()
_local_pool: Executor | None = None  # held, so that it lives on
_local_runtime: runtime.Runtime | None = None


def _pool_runtime() -> runtime.Runtime:
    """The runtime batches go to: the run this process belongs to, else the
    local pool, started on first use."""
    rt = runtime.current()
    if rt is not None and not rt.closed:
        return rt
    global _local_pool, _local_runtime
    with _local_lock:
        if _local_runtime is not None and not _local_runtime.closed:
            return _local_runtime
        from scoop_core.executor import Executor  # the broker and plugins: only now

        previous, size = runtime.current(), context.SIZE
        pool = Executor()
        # The Executor makes itself the process's pool; this one serves
        # joblib only, so the program's scoop.futures calls behave as before.
        pool_rt = runtime.current()
        runtime.set_current(previous)
        context.SIZE = size
        assert pool_rt is not None
        _local_pool, _local_runtime = pool, pool_rt
        log.info(
            "joblib backend %r: no SCOOP run in this process, so it started a local pool "
            "of %d workers; later Parallel calls reuse it, and it stops when the program exits",
            BACKEND_NAME,
            pool.workers,
        )
        return pool_rt


# -- the backend -------------------------------------------------------------------


@dataclass(eq=False)
class _Batch:
    """One batch joblib submitted: what to run, whom to tell, its future once sent."""

    func: Callable[[], list[Any]]
    callback: Callable[[Any], object] | None
    future: Future | None = None


class ScoopBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` over the futures of a SCOOP run.

    See the module's docstring for where batches run, what ``n_jobs`` means
    and how nested ``Parallel`` calls fall back."""

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: None = None):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._lock = threading.Lock()
        self._rt: runtime.Runtime | None = None
        self._limit = 1  # batches on the workers at a time
        self._in_flight = 0
        self._queued: collections.deque[_Batch] = collections.deque()
        self._sent: set[_Batch] = set()

    def __reduce__(self) -> tuple[Any, ...]:
        # Its lock and futures stay here: a copy starts afresh.
        return type(self), (self.nesting_level,)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 1:
            return 1
        if _in_worker():
            return int(NestedThreadingBackend().effective_n_jobs(n_jobs))
        if n_jobs < 0:
            return max(_pool_runtime().workers + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **_: Any,
    ) -> int:
        if _in_worker():
            # A task's own Parallel: the threads (or sequence) it would have
            # had without naming this backend.
            level = self.nesting_level or 0
            if level > 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=level))
            raise FallbackToBackend(NestedThreadingBackend(nesting_level=max(level, 1)))
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._rt = rt = _pool_runtime()
        # A root may run a cheap future itself when a thread waits for it,
        # and holds such futures back a moment for that; joblib's thread
        # never waits on a future (it polls its own records), so batches
        # always go straight to the workers.
        rt.costs.keep_on_workers(_run_batch)
        self._limit = n_jobs
        return n_jobs

    def submit(
        self, func: Callable[[], list[Any]], callback: Callable[[Any], object] | None = None
    ) -> _Batch:
        """Send ``func`` (a joblib batch) as a future, or keep it until fewer
        than ``n_jobs`` batches are out; ``callback`` gets the future when it ends."""
        batch = _Batch(func, callback)
        with self._lock:
            if self._in_flight >= self._limit:
                self._queued.append(batch)
                return batch
            self._in_flight += 1
        self._send(batch)
        return batch

    # What joblib releases before the rename to ``submit`` call (the test
    # extras allow joblib 1.3).
    apply_async = submit

    def _send(self, batch: _Batch) -> None:
        """Send ``batch``, which holds a slot. A batch that cannot be sent
        fails at once, and its slot goes to the next one waiting: in a loop,
        so a pool that is gone fails thousands of them without recursion."""
        rt = self._rt
        assert rt is not None, "joblib configures a backend before it submits"
        following: _Batch | None = batch
        while following is not None:
            batch = following
            try:
                fut = rt.submit([Call(_run_batch, (batch.func,), {})])[0]
            except Exception as exc:
                # An unpicklable argument, a pool that is gone: joblib raises
                # it where it reads results (raised here, in the done-callback
                # of another batch, it would reach nobody).
                batch.future = Future()
                batch.future.set_exception(_naming_the_call(batch.func, rt, exc))
                following = self._ended(batch)
                continue
            batch.future = fut
            with self._lock:
                self._sent.add(batch)
            fut.add_done_callback(functools.partial(self._on_done, batch))
            return

    def _on_done(self, batch: _Batch, _: Any) -> None:
        following = self._ended(batch)
        if following is not None:
            self._send(following)

    def _ended(self, batch: _Batch) -> _Batch | None:
        """``batch`` ended: tell joblib, and return the batch waiting that
        takes its slot (None if none waits: the slot is free)."""
        with self._lock:
            self._sent.discard(batch)
            following = self._queued.popleft() if self._queued else None
            if following is None:
                self._in_flight -= 1
        if batch.callback is not None:
            batch.callback(batch.future)
        return following

    def retrieve_result_callback(self, out: Future) -> list[Any]:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Drop the batches waiting here and cancel those not started on a
        worker; the backend stays usable (joblib ignores late results)."""
        with self._lock:
            self._queued.clear()
            fids = [b.future.fid for b in self._sent if b.future is not None and b.future.fid]
        if fids and self._rt is not None:
            self._rt.cancel_nowait(fids)

    def terminate(self) -> None:
        # The pool outlives the Parallel call; only the batch statistics go,
        # as with loky.
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Threads of the worker at the first nested level, sequential below
        (see :class:`NestedThreadingBackend` and the module's docstring)."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return NestedThreadingBackend(nesting_level=level), None


joblib.register_parallel_backend(BACKEND_NAME, ScoopBackend)
