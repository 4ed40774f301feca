"""The Future users hold, and waiting on futures without blocking a worker.

:class:`Future` is a ``concurrent.futures.Future`` (so ``asyncio.wrap_future``,
``concurrent.futures.wait`` and executors' callers accept it) whose waiting
methods know where they run:

- in a root program or an embedding program, they block the calling thread
  like any ``concurrent.futures.Future``: another thread delivers results;
- inside a future running on a worker, they switch to the worker's
  scheduler instead (a greenlet switch), so the worker runs other futures
  meanwhile and nested futures never deadlock.

The waiting primitive is an *event* chosen by :func:`new_event`; ``wait`` and
``as_completed`` hook into ``concurrent.futures``' waiter list (``_waiters``),
which ``set_result`` and ``set_exception`` notify under the future's lock.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Protocol

from scoop_core.errors import TimeoutError

log = logging.getLogger("scoop.futures")

waits: Callable[[int, float], None] | None = None
"""Where a traced root records its waits for a result: called with the
future's id and when the wait began (``time.perf_counter()``)."""

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED


class Event(Protocol):
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


# Set by a worker process: returns a greenlet-aware event when called from a
# future running on that worker, or None when the caller is not such a future.
greenlet_event: Callable[[], Event | None] = lambda: None  # noqa: E731


def new_event() -> Event:
    """An event the current caller can wait on without blocking its worker."""
    return greenlet_event() or threading.Event()


class _Condition(threading.Condition):
    """``threading.Condition()`` (over an RLock) without the five bound
    methods and the dict its ``__init__`` makes for every instance: a
    program holds one per future, thousands at a time, and the garbage
    collector walks all of them. Its methods are the standard ones, which
    find the lock's through these."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self) -> None:  # no super().__init__: that is what it spares
        self._lock = threading.RLock()
        self._waiters: collections.deque[Any] = collections.deque()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]


class Future(cf.Future[Any]):
    """The result of a call that runs, or will run, on a worker.

    ``cancel()`` asks the broker (and the worker holding the future) and
    returns True only if the call will never run.
    """

    def __init__(self, fid: int = 0, canceller: Callable[[int], bool] | None = None) -> None:
        # What cf.Future.__init__ sets, with a lighter condition.
        self._condition = _Condition()
        self._state = "PENDING"
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list[Callable[[cf.Future[Any]], object]] = []
        self.fid = fid
        self._canceller = canceller
        self.elapsed = 0.0  # seconds the worker spent on it, for chunk sizing
        self.nbytes = 0  # size of its pickled call, when it was pickled
        # The function it calls and how many times (a chunk's items), to learn its cost.
        self.call: tuple[Callable[..., Any], int] | None = None
        # Runs it in the calling thread if it was not sent yet, True if it
        # did; with help_out=True, runs other futures until it is done.
        self.run_here: Callable[..., bool] | None = None

    def __repr__(self) -> str:
        return f"<scoop Future {self.fid:#x} state={self._state.lower()}>"

    def _wait_here(self, timeout: float | None) -> None:
        # On a worker, wait by switching to its scheduler; elsewhere the base
        # class blocks the thread on its condition.
        if self.done():
            return
        if self.run_here is not None and self.run_here(self, help_out=True):
            return
        event = greenlet_event()
        if event is None:
            return
        # One future: listen on it directly (what wait_futures does for many).
        waiter = _OneWaiter(event)
        with self._condition:
            if _finished(self):
                return
            self._waiters.append(waiter)  # type: ignore[arg-type]
        try:
            event.wait(timeout)
        finally:
            with self._condition:
                self._waiters.remove(waiter)  # type: ignore[arg-type]
        if not self.done():
            raise TimeoutError(f"not done within {timeout:g} s")

    def result(self, timeout: float | None = None) -> Any:
        if waits is None or self._state == "FINISHED":
            self._wait_here(timeout)
            return self._result_within(timeout)
        start = time.perf_counter()
        try:
            self._wait_here(timeout)
            return self._result_within(timeout)
        finally:
            waits(self.fid, start)

    def _result_within(self, timeout: float | None) -> Any:
        try:
            return super().result(timeout)
        except TimeoutError:
            if self.done():  # the function's own TimeoutError: its outcome, as it is
                raise
            raise TimeoutError(f"no result within {timeout:g} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_here(timeout)
        try:
            return super().exception(timeout)
        except TimeoutError:
            raise TimeoutError(f"not done within {timeout:g} s") from None

    def cancel(self) -> bool:
        with self._condition:
            if self._state in ("CANCELLED", "CANCELLED_AND_NOTIFIED"):
                return True
            if self._state != "PENDING":
                return False
        # The owner's runtime marks the future cancelled when the broker agrees.
        return self._canceller is not None and self._canceller(self.fid)

    def mark_cancelled(self) -> None:
        """Record a cancellation the broker confirmed, and wake waiters."""
        if cf.Future.cancel(self) and self._state == "CANCELLED":
            self.set_running_or_notify_cancel()

    def add_done_callback(self, fn: Callable[[cf.Future[Any]], object]) -> None:
        with self._condition:
            if self._state not in ("CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"):
                self._done_callbacks.append(fn)
                return
        _call_back(fn, self)

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            _call_back(callback, self)


def _call_back(fn: Callable[[cf.Future[Any]], object], future: Future) -> None:
    try:
        fn(future)
    except Exception:
        log.exception("done callback %r of %r raised", fn, future)


class _OneWaiter:
    """Listens on one future's ``_waiters`` list: sets ``event`` when it ends."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def add_result(self, future: cf.Future[Any]) -> None:
        self.event.set()

    add_exception = add_cancelled = add_result


class DoneAndNotDoneFutures(NamedTuple):
    done: set[cf.Future[Any]]
    not_done: set[cf.Future[Any]]


class _Waiter(cf._base._Waiter):
    """Listens on futures' ``_waiters`` lists; sets ``event`` when the
    condition of ``return_when`` holds."""

    def __init__(self, event: Event, return_when: str, pending: int) -> None:
        super().__init__()
        self.event = event  # type: ignore[assignment]
        self.return_when = return_when
        self.pending = pending
        self.finished: list[cf.Future[Any]] = []
        self.lock = threading.Lock()

    def _add(self, future: cf.Future[Any], failed: bool) -> None:
        with self.lock:
            self.finished.append(future)
            self.pending -= 1
            fire = (
                self.return_when == FIRST_COMPLETED
                or (self.return_when == FIRST_EXCEPTION and failed)
                or self.pending <= 0
            )
        if fire:
            self.event.set()

    def add_result(self, future: cf.Future[Any]) -> None:
        self._add(future, False)

    def add_exception(self, future: cf.Future[Any]) -> None:
        self._add(future, True)

    def add_cancelled(self, future: cf.Future[Any]) -> None:
        self._add(future, False)


def _finished(f: cf.Future[Any]) -> bool:
    return f._state in ("CANCELLED_AND_NOTIFIED", "FINISHED")


def _failed(f: cf.Future[Any]) -> bool:
    return f._state == "FINISHED" and f._exception is not None


def _run_here(fs: Iterable[cf.Future[Any]], return_when: str) -> None:
    """Run here those of ``fs`` their owner has not sent yet and lets run
    here, until ``return_when`` holds."""
    for f in fs:
        runner = getattr(f, "run_here", None)
        if runner is None or _finished(f) or not runner(f):
            continue
        if return_when == FIRST_COMPLETED or (return_when == FIRST_EXCEPTION and _failed(f)):
            return


def wait_futures(
    fs: Iterable[cf.Future[Any]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
    *,
    _event: Event | None = None,
) -> DoneAndNotDoneFutures:
    """``concurrent.futures.wait`` that does not block a worker."""
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(
            f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED, got {return_when!r}"
        )
    fs = set(fs)
    _run_here(fs, return_when)
    done = {f for f in fs if _finished(f)}
    not_done = fs - done
    if not not_done:
        return DoneAndNotDoneFutures(done, not_done)
    if return_when == FIRST_COMPLETED and done:
        return DoneAndNotDoneFutures(done, not_done)
    if return_when == FIRST_EXCEPTION and any(_failed(f) for f in done):
        return DoneAndNotDoneFutures(done, not_done)
    waiter = _Waiter(_event or new_event(), return_when, len(not_done))
    registered = []
    for f in not_done:
        with f._condition:
            if _finished(f):
                waiter._add(f, _failed(f))
            else:
                f._waiters.append(waiter)
                registered.append(f)
    try:
        waiter.event.wait(timeout)
    finally:
        for f in registered:
            with f._condition:
                f._waiters.remove(waiter)
    done = {f for f in fs if _finished(f)}
    return DoneAndNotDoneFutures(done, fs - done)


def as_completed(
    fs: Iterable[cf.Future[Any]],
    timeout: float | None = None,
) -> Iterator[cf.Future[Any]]:
    """Yield futures as they finish; ``TimeoutError`` if ``timeout`` seconds
    pass, counted from the call, before all of them have."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(fs)
    total = len(pending)

    def _gen() -> Iterator[cf.Future[Any]]:
        while pending:
            ready = [f for f in pending if _finished(f)]
            if not ready:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(pending)} (of {total}) futures unfinished")
                wait_futures(pending, left, FIRST_COMPLETED)
                continue
            for f in ready:
                pending.discard(f)
                yield f

    return _gen()
