"""The futures API of SCOOP: submit, map, map_as_completed, mapReduce, mapScan,
wait, as_completed, shutdown.

The names and behaviour follow SCOOP's usage guide, with PEP 3148 semantics
where SCOOP is vague (timeouts count from the call; ``wait`` returns as soon
as its condition holds). ``map`` and its relatives send items in chunks
whose size adapts to how long an item takes (so tiny items travel by the
thousand and slow ones one at a time), keep a bounded number of chunks in
flight (so an endless iterable works and nobody holds it whole in memory),
and may be used inside futures, to any depth.

Outside a launched program ``map`` and friends run serially with one
warning, as SCOOP does; ``submit`` raises, naming how to launch.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scoop_core import _runtime
from scoop_core._calls import Call, Chunk, ChunkResult
from scoop_core._future import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    DoneAndNotDoneFutures,
    Future,
    as_completed,
    wait_futures,
)
from scoop_core.errors import CancelledError, TimeoutError

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Future",
    "TimeoutError",
    "as_completed",
    "map",
    "mapReduce",
    "mapScan",
    "map_as_completed",
    "options",
    "shutdown",
    "submit",
    "wait",
]

log = logging.getLogger("scoop.futures")

# Chunk sizing: aim for chunks that take this long on a worker, within bounds.
_TARGET_SECONDS = 0.02
_TARGET_BYTES = 4 << 20
_MAX_CHUNK = 8192
_CHUNKS_PER_WORKER = 4  # chunks in flight per worker, so none waits for work

_warned_serial = False


def _check_callable(fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"{what} needs a callable as its first argument, got {fn!r} ({type(fn).__name__})"
        )


def _serial(what: str) -> bool:
    """True (after one warning) when there is no pool and ``what`` runs serially."""
    global _warned_serial
    rt = _runtime.current()
    if rt is not None and not rt.closed:
        return False
    if not _warned_serial:
        _warned_serial = True
        logging.getLogger("scoop").warning(
            "SCOOP is not running, so %s runs serially in this process; %s",
            what,
            _runtime.LAUNCH_HINT,
        )
    return True


_warned_ignored: set[tuple[str, str]] = set()


def _ignore_extra(what: str, extra: dict[str, Any]) -> None:
    """SCOOP's ``map(func, *iterables, **kwargs)`` and its relatives accepted
    keyword arguments they did not know (``parallelLevel=2`` in its own
    examples) and ignored them; programs written for it pass them. Accept
    them too, with one warning per name and function in a process."""
    new = sorted(name for name in extra if (what, name) not in _warned_ignored)
    if not new:
        return
    _warned_ignored.update((what, name) for name in new)
    log.warning(
        "%s ignores the keyword argument%s %s, as the original SCOOP did: "
        "it knows only timeout; remove %s to silence this warning",
        what,
        "s" if len(new) > 1 else "",
        ", ".join(f"{name}={extra[name]!r}" for name in new),
        "them" if len(new) > 1 else "it",
    )


# Per-call options (see :class:`options`): read when futures are submitted.
_max_losses: contextvars.ContextVar[int] = contextvars.ContextVar("max_losses", default=0)


class options:
    """Per-call options for the functions of this module.

    ``futures.options(max_losses=5).submit(f, x)`` lets that future be lost
    with its worker up to 5 times before it fails with ``WorkerLostError``
    (the run's ``max_losses`` setting otherwise). The object has ``submit``,
    ``map``, ``map_as_completed``, ``mapReduce`` and ``mapScan``, and is also
    a context manager: ``with futures.options(max_losses=5): ...`` applies
    to every future submitted in the block."""

    def __init__(self, *, max_losses: int) -> None:
        if not isinstance(max_losses, int) or isinstance(max_losses, bool) or max_losses < 1:
            raise ValueError(f"max_losses must be a whole number of at least 1, got {max_losses!r}")
        self.max_losses = max_losses
        self._tokens: list[contextvars.Token[int]] = []

    def __enter__(self) -> options:
        self._tokens.append(_max_losses.set(self.max_losses))
        return self

    def __exit__(self, *exc: object) -> None:
        _max_losses.reset(self._tokens.pop())

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self:
            return fn(*args, **kwargs)

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        return self._call(submit, func, *args, **kwargs)

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        **ignored: Any,
    ) -> Iterator[Any]:
        return self._call(map, func, *iterables, timeout=timeout, **ignored)

    def map_as_completed(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        **ignored: Any,
    ) -> Iterator[Any]:
        return self._call(map_as_completed, func, *iterables, timeout=timeout, **ignored)

    def mapReduce(
        self,
        mapFunc: Callable[..., Any],
        reductionFunc: Callable[[Any, Any], Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        **ignored: Any,
    ) -> Any:
        return self._call(mapReduce, mapFunc, reductionFunc, *iterables, timeout=timeout, **ignored)

    def mapScan(
        self,
        mapFunc: Callable[..., Any],
        reductionFunc: Callable[[Any, Any], Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        **ignored: Any,
    ) -> list[Any]:
        return self._call(mapScan, mapFunc, reductionFunc, *iterables, timeout=timeout, **ignored)


def submit(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``func(*args, **kwargs)`` on a worker; return its :class:`Future`."""
    _check_callable(func, "submit()")
    rt = _runtime.require("futures.submit()")
    return rt.submit([Call(func, args, kwargs)], max_losses=_max_losses.get())[0]


class _Chunker:
    """Cuts the zipped iterables into chunks and keeps a bounded number in flight."""

    def __init__(
        self,
        rt: _runtime.Runtime,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        fold: str = "",
        reducer: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.rt = rt
        self.max_losses = _max_losses.get()
        self.fn = fn
        self.fold = fold
        self.reducer = reducer
        self.items = zip(*iterables, strict=False)
        hints = [operator.length_hint(it, -1) for it in iterables]
        self.remaining = min(hints) if hints and min(hints) >= 0 else -1
        self.exhausted = False
        self.inflight: deque[tuple[Future, int]] = deque()
        self.max_inflight = max(2, self.rt.workers * _CHUNKS_PER_WORKER)
        self.size = 1  # grows once chunks report how long an item takes
        self.item_seconds = -1.0
        self.item_bytes = 0.0

    def _learn(self, fut: Future, count: int) -> None:
        if count <= 0:
            return
        per_item = fut.elapsed / count
        self.item_seconds = (
            per_item if self.item_seconds < 0 else 0.5 * (self.item_seconds + per_item)
        )
        size = _MAX_CHUNK if self.item_seconds <= 0 else int(_TARGET_SECONDS / self.item_seconds)
        if self.item_bytes > 0:
            size = min(size, int(_TARGET_BYTES / self.item_bytes))
        self.size = max(1, min(_MAX_CHUNK, size))

    def _next_size(self) -> int:
        size = self.size
        if self.remaining > 0:
            # Leave enough chunks for every worker near the end.
            size = min(size, max(1, -(-self.remaining // (2 * self.rt.workers))))
        return size

    def fill(self) -> None:
        """Submit chunks until the window is full or the items run out."""
        batch: list[Chunk] = []
        counts: list[int] = []
        while not self.exhausted and len(self.inflight) + len(batch) < self.max_inflight:
            items = list(itertools.islice(self.items, self._next_size()))
            if not items:
                self.exhausted = True
                break
            if self.remaining > 0:
                self.remaining = max(0, self.remaining - len(items))
            batch.append(Chunk(self.fn, items, self.fold, self.reducer))
            counts.append(len(items))
            if self.item_seconds < 0 and len(self.inflight) + len(batch) >= 2 * self.rt.workers:
                break  # wait to learn item cost before sending more single items
        if batch:
            futures = self.rt.submit(batch, max_losses=self.max_losses)
            for fut, count in zip(futures, counts, strict=True):
                self.inflight.append((fut, count))
            # The call was pickled once to be sent: its size bounds chunk sizes.
            # (Futures that stay on this worker are not pickled: no bound.)
            if self.item_bytes == 0 and futures[0].nbytes:
                self.item_bytes = max(1.0, futures[0].nbytes / counts[0])

    def done(self, fut: Future, count: int) -> ChunkResult:
        self._learn(fut, count)
        result: ChunkResult = fut.result(0)
        return result

    def abandon(self) -> None:
        self.rt.cancel_nowait(f.fid for f, _ in self.inflight if not f.done())
        self.inflight.clear()


def _left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (0 once passed: a result that is
    already there is still returned; only a missing one times out)."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _values(result: ChunkResult) -> list[Any]:
    if result.error is not None:
        raise result.error.rebuild()
    return result.values


def _ordered_chunks(chunker: _Chunker, deadline: float | None) -> Iterator[ChunkResult]:
    try:
        chunker.fill()
        while chunker.inflight:
            fut, count = chunker.inflight[0]
            fut.result(_left(deadline))
            chunker.inflight.popleft()
            result = chunker.done(fut, count)
            chunker.fill()
            yield result
    finally:
        chunker.abandon()


def _map_gen(chunker: _Chunker, deadline: float | None) -> Iterator[Any]:
    for result in _ordered_chunks(chunker, deadline):
        yield from result.values
        if result.error is not None:
            raise result.error.rebuild()


def map(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    **ignored: Any,
) -> Iterator[Any]:
    """Like the built-in ``map``, in parallel: results in the order of the inputs.

    Several iterables are zipped. The work starts when the generator is first
    advanced; iterating raises the exception of a call that failed, at its
    place in the order, and ``TimeoutError`` if a result is not there
    ``timeout`` seconds after the call to ``map``. Other keyword arguments
    are ignored with a warning, as the original SCOOP ignored them."""
    _check_callable(func, "map()")
    _ignore_extra("futures.map()", ignored)
    if _serial("futures.map()"):
        return builtins.map(func, *iterables)
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = _Chunker(_runtime.require("futures.map()"), func, iterables)
    chunker.fill()  # the work starts now, as in SCOOP, not at the first next()
    return _map_gen(chunker, deadline)


def _unordered_gen(chunker: _Chunker, deadline: float | None) -> Iterator[Any]:
    try:
        chunker.fill()
        while chunker.inflight:
            wait_futures([f for f, _ in chunker.inflight], _left(deadline), FIRST_COMPLETED)
            finished = [(f, n) for f, n in chunker.inflight if f.done()]
            if not finished and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()
            for pair in finished:
                chunker.inflight.remove(pair)
            results = [chunker.done(f, n) for f, n in finished]
            chunker.fill()
            for result in results:
                yield from _values(result)
    finally:
        chunker.abandon()


def map_as_completed(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    **ignored: Any,
) -> Iterator[Any]:
    """Like :func:`map`, but yields each result as soon as it is there."""
    _check_callable(func, "map_as_completed()")
    _ignore_extra("futures.map_as_completed()", ignored)
    if _serial("futures.map_as_completed()"):
        return builtins.map(func, *iterables)
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = _Chunker(_runtime.require("futures.map_as_completed()"), func, iterables)
    chunker.fill()
    return _unordered_gen(chunker, deadline)


def mapReduce(
    mapFunc: Callable[..., Any],
    reductionFunc: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    **ignored: Any,
) -> Any:
    """``functools.reduce(reductionFunc, map(mapFunc, *iterables))``, in parallel.

    Each chunk is mapped and reduced on its worker; the chunks' values are
    then reduced pairwise, a binary tree of futures, keeping their order.
    ``reductionFunc`` must be associative (as for any parallel reduction)."""
    _check_callable(mapFunc, "mapReduce()")
    _check_callable(reductionFunc, "mapReduce()")
    _ignore_extra("futures.mapReduce()", ignored)
    if _serial("futures.mapReduce()"):
        return functools.reduce(reductionFunc, builtins.map(mapFunc, *iterables))
    rt = _runtime.require("futures.mapReduce()")
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = _Chunker(rt, mapFunc, iterables, "reduce", reductionFunc)
    level = [_values(r)[0] for r in _ordered_chunks(chunker, deadline)]
    if not level:
        raise TypeError("mapReduce() of empty iterables: there is nothing to reduce")
    while len(level) > 1:
        pairs = [
            Call(reductionFunc, (level[i], level[i + 1]), {}) for i in range(0, len(level) - 1, 2)
        ]
        futures = rt.submit(pairs, max_losses=chunker.max_losses)
        odd = [level[-1]] if len(level) % 2 else []
        level = [f.result(_left(deadline)) for f in futures] + odd
    return level[0]


def mapScan(
    mapFunc: Callable[..., Any],
    reductionFunc: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    **ignored: Any,
) -> list[Any]:
    """``list(itertools.accumulate(map(mapFunc, *iterables), reductionFunc))``.

    The map runs in parallel; the scan runs in order here, so the values are
    exactly those of ``itertools.accumulate`` for any ``reductionFunc``
    (the original SCOOP returned wrong values here)."""
    _check_callable(mapFunc, "mapScan()")
    _check_callable(reductionFunc, "mapScan()")
    _ignore_extra("futures.mapScan()", ignored)
    return list(itertools.accumulate(map(mapFunc, *iterables, timeout=timeout), reductionFunc))


def wait(
    fs: Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> DoneAndNotDoneFutures:
    """Wait until ``return_when`` holds for the futures ``fs`` (PEP 3148).

    Returns ``(done, not_done)`` as soon as the condition holds; inside a
    future, the worker runs other futures meanwhile."""
    return wait_futures(fs, timeout, return_when)


def shutdown(wait: bool = True, cancel_futures: bool = False) -> None:
    """Cancel this process's queued futures (``cancel_futures``), then wait for
    the rest (``wait``). The pool itself stops when the program ends."""
    rt = _runtime.current()
    if rt is None:
        return
    owned = list(rt._owned.values())
    if cancel_futures:
        for fut in owned:
            fut.cancel()
    if wait:
        wait_futures(owned)
