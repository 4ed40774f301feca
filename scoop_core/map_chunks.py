"""How a map travels: its items cut into chunks whose size adapts to the
work, a bounded number of chunks in flight, and their results read back in
order or as they complete.

Shared by :mod:`scoop_core.futures` (``map``, ``map_as_completed``,
``mapReduce``, ``mapScan``) and :class:`scoop_core.Executor`'s ``map``.
Chunks aim to take ``TARGET_SECONDS`` on a worker, so tiny items travel by
the thousand and slow ones one at a time; a bounded window keeps an endless
iterable from being read whole into memory.
"""

from __future__ import annotations

import itertools
import operator
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from scoop_core import runtime
from scoop_core.calls import Chunk, ChunkResult
from scoop_core.errors import TimeoutError
from scoop_core.future import FIRST_COMPLETED, Future, wait_futures

# Chunk sizing: aim for chunks that take this long on a worker, within bounds.
TARGET_SECONDS = 0.02
TARGET_BYTES = 4 << 20
MAX_CHUNK = 65536
CHUNKS_PER_WORKER = 4  # chunks in flight per worker, so none waits for work


class Chunker:
    """Cuts the zipped iterables into chunks and keeps a bounded number in flight."""

    def __init__(
        self,
        rt: runtime.Runtime,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        fold: str = "",
        reducer: Callable[[Any, Any], Any] | None = None,
        *,
        max_losses: int = 0,
    ) -> None:
        self.rt = rt
        self.max_losses = max_losses
        self.fn = fn
        self.fold = fold
        self.reducer = reducer
        # One iterable: its items are the arguments, as they are.
        self.spread = len(iterables) != 1
        self.items = zip(*iterables, strict=False) if self.spread else iter(iterables[0])
        hints = [operator.length_hint(it, -1) for it in iterables]
        self.remaining = min(hints) if hints and min(hints) >= 0 else -1
        self.exhausted = False
        self.inflight: deque[tuple[Future, int]] = deque()
        self.max_inflight = max(2, self.rt.workers * CHUNKS_PER_WORKER)
        self.size = 1  # grows once chunks report how long an item takes
        self.item_bytes = 0.0
        # A function this process has sent before is sized from the start.
        self.item_seconds = rt.costs.item_seconds(fn)
        if self.item_seconds >= 0:
            self._resize()

    def _learn(self, fut: Future, count: int) -> None:
        if count <= 0:
            return
        per_item = fut.elapsed / count
        self.item_seconds = (
            per_item if self.item_seconds < 0 else 0.5 * (self.item_seconds + per_item)
        )
        self._resize()

    def _resize(self) -> None:
        size = MAX_CHUNK if self.item_seconds <= 0 else int(TARGET_SECONDS / self.item_seconds)
        if self.item_bytes > 0:
            size = min(size, int(TARGET_BYTES / self.item_bytes))
        self.size = max(1, min(MAX_CHUNK, size))

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
        # One size for the chunks of one fill: a short map is cut evenly, in
        # as few chunks as keep every worker busy.
        size = self._next_size()
        while not self.exhausted and len(self.inflight) + len(batch) < self.max_inflight:
            items = list(itertools.islice(self.items, size))
            if not items:
                self.exhausted = True
                break
            if self.remaining > 0:
                self.remaining = max(0, self.remaining - len(items))
            batch.append(Chunk(self.fn, items, self.fold, self.reducer, self.spread))
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


def time_left(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (0 once passed: a result that is
    already there is still returned; only a missing one times out)."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def chunk_values(result: ChunkResult) -> list[Any]:
    if result.error is not None:
        raise result.error.rebuild()
    return result.values


def ordered_chunks(chunker: Chunker, deadline: float | None) -> Iterator[ChunkResult]:
    try:
        chunker.fill()
        while chunker.inflight:
            fut, count = chunker.inflight[0]
            try:
                fut.result(time_left(deadline))
            except TimeoutError:
                if fut.done():
                    raise
                raise _late(chunker) from None
            chunker.inflight.popleft()
            result = chunker.done(fut, count)
            chunker.fill()
            yield result
    finally:
        chunker.abandon()


def _late(chunker: Chunker) -> TimeoutError:
    left = sum(count for _, count in chunker.inflight)
    more = "" if chunker.exhausted else " (and those not sent yet)"
    items = "1 item" if left == 1 else f"{left} items"
    return TimeoutError(f"{items} of the map{more} not done within its timeout")


def _raising(result: ChunkResult) -> Iterator[Any]:
    """An iterator that raises the error of ``result`` when it is advanced."""
    assert result.error is not None
    raise result.error.rebuild()
    yield  # a generator: the error is raised where the items are read


class Values(Iterator[Any]):
    """The results of a map, read as a generator's (``next``, ``for``,
    ``close()``). The items of each chunk are handed on by
    ``itertools.chain``, in C: ``list(...)`` and ``for`` loops iterate that
    directly, since a generator of ours would cost as much per item as a
    tiny call does."""

    __slots__ = ("_items", "_lists")

    def __init__(self, lists: Generator[Iterable[Any], None, None]) -> None:
        self._lists = lists
        self._items = itertools.chain.from_iterable(lists)

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        """Stop the map: what is still running is cancelled."""
        self._lists.close()


def ordered_values(chunker: Chunker, deadline: float | None) -> Iterator[Any]:
    return Values(_ordered_lists(chunker, deadline))


def _ordered_lists(
    chunker: Chunker, deadline: float | None
) -> Generator[Iterable[Any], None, None]:
    for result in ordered_chunks(chunker, deadline):
        yield result.values
        if result.error is not None:
            yield _raising(result)


def values_as_completed(chunker: Chunker, deadline: float | None) -> Iterator[Any]:
    return Values(_lists_as_completed(chunker, deadline))


def _lists_as_completed(
    chunker: Chunker, deadline: float | None
) -> Generator[Iterable[Any], None, None]:
    try:
        chunker.fill()
        while chunker.inflight:
            wait_futures([f for f, _ in chunker.inflight], time_left(deadline), FIRST_COMPLETED)
            finished = [(f, n) for f, n in chunker.inflight if f.done()]
            if not finished and deadline is not None and time.monotonic() >= deadline:
                raise _late(chunker)
            for pair in finished:
                chunker.inflight.remove(pair)
            results = [chunker.done(f, n) for f, n in finished]
            chunker.fill()
            for result in results:
                yield result.values if result.error is None else _raising(result)
    finally:
        chunker.abandon()
