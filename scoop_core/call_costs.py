"""What a process has learned about the functions it sends to workers.

Workers report how long each future ran (``Outcome.elapsed``). The owner
keeps, per function, an average of the seconds one item takes, so that:

- a ``map`` of a function already seen cuts its items into chunks of the
  right size from its first call, instead of sending single items to learn
  (:mod:`scoop_core.map_chunks`);
- a root that waits for a future it has not sent yet may run it itself, if
  its function is known to be cheap: a round trip through the broker and a
  worker costs about a millisecond of CPU, and the root would only wait
  (:class:`~scoop_core.runtime.RootRuntime`). SCOOP's root runs futures
  too; here only functions that have run well on workers a few times
  qualify, and never one whose future was lost with its worker or failed
  in the root, so a function that kills its process is met on a worker
  first.

The table is bounded: functions made afresh for every call (lambdas in a
loop) push out the oldest entries and are never learned.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

RUN_HERE_SECONDS = 0.005
"""A future (one call, or a chunk of a map) that should take at most this
long may run in the root while the root waits for it. Longer ones run on
the workers, in parallel; up to this, the root would spend about as long
waiting for the answer, and sending the future costs CPU the workers need."""

TINY_SECONDS = 0.0005
"""A future expected to take at most this long is *tiny*: sending it costs
the run more CPU (pickling, three processes, two hops) than running it.
A root keeps only so many tiny futures on the workers at once, and runs
the rest itself while it waits (:class:`~scoop_core.runtime.RootRuntime`)."""

RUNS_BEFORE_HERE = 3
"""Successful runs on workers a function needs before the root runs it."""

KEPT = 256
"""Functions remembered at most."""


@dataclass
class Cost:
    """What is known of one function."""

    item_seconds: float = -1.0  # average seconds per item; -1 until learned
    runs: int = 0  # outcomes that came back with a value
    # A future of it was lost with its worker, or failed in the root: it
    # runs on workers only.
    on_workers_only: bool = False


class CallCosts:
    """Seconds per item of each function seen, learned from outcomes."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._costs: OrderedDict[Hashable, Cost] = OrderedDict()

    def _key(self, fn: Callable[..., Any]) -> Hashable | None:
        try:
            hash(fn)
        except TypeError:
            return None  # an unhashable callable object: not learned
        return fn

    def item_seconds(self, fn: Callable[..., Any]) -> float:
        """Average seconds one item of ``fn`` took on a worker; -1 if unknown."""
        key = self._key(fn)
        cost = self._costs.get(key) if key is not None else None
        return cost.item_seconds if cost is not None else -1.0

    def learn(self, fn: Callable[..., Any], item_seconds: float) -> None:
        """A future of ``fn`` came back with a value: an item took ``item_seconds``."""
        cost = self._entry(fn)
        if cost is None:
            return
        if cost.item_seconds < 0:
            cost.item_seconds = item_seconds
        else:
            cost.item_seconds = 0.5 * (cost.item_seconds + item_seconds)
        cost.runs += 1

    def keep_on_workers(self, fn: Callable[..., Any]) -> None:
        """Never run ``fn`` in the root again (a future of it was lost with
        its worker, or failed in the root)."""
        cost = self._entry(fn)
        if cost is not None:
            cost.on_workers_only = True

    def runs_here(self, fn: Callable[..., Any], items: int) -> bool:
        """Whether a future of ``items`` calls of ``fn`` is cheap and safe
        enough to run in the root that waits for it."""
        key = self._key(fn)
        cost = self._costs.get(key) if key is not None else None
        return (
            cost is not None
            and not cost.on_workers_only
            and cost.runs >= RUNS_BEFORE_HERE
            and cost.item_seconds * items <= RUN_HERE_SECONDS
        )

    def is_tiny(self, fn: Callable[..., Any], items: int) -> bool:
        """Whether a future of ``items`` calls of ``fn`` (one that
        :meth:`runs_here`) is expected to take :data:`TINY_SECONDS` at most."""
        return 0 <= self.item_seconds(fn) * items <= TINY_SECONDS

    def _entry(self, fn: Callable[..., Any]) -> Cost | None:
        key = self._key(fn)
        if key is None:
            return None
        cost = self._costs.get(key)
        if cost is None:
            cost = self._costs[key] = Cost()
            if len(self._costs) > self.kept:
                self._costs.popitem(last=False)
        else:
            self._costs.move_to_end(key)
        return cost
