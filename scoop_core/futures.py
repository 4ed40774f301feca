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

``map`` and ``map_as_completed`` take ``progress=True``: a tqdm bar on the
root's stderr advances as the results come to the program (none in a
future on a worker, whose stderr is the launcher's too and whose bars
would fight the root's). The run counts the futures of a map whose
iterables all have a ``len()`` as expected (:func:`scoop_core.activity.expect`):
that gives ``--progress`` its bar and ETA.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from scoop_core import activity, context, runtime
from scoop_core.calls import Call
from scoop_core.errors import CancelledError, TimeoutError
from scoop_core.future import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    DoneAndNotDoneFutures,
    Future,
    as_completed,
    wait_futures,
)
from scoop_core.map_chunks import (
    Chunker,
    chunk_values,
    ordered_chunks,
    ordered_values,
    time_left,
    values_as_completed,
)

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

_P = ParamSpec("_P")
_R = TypeVar("_R")

_warned_serial = False


def _check_callable(fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"{what} needs a callable as its first argument, got {fn!r} ({type(fn).__name__})"
        )


def _serial(what: str) -> bool:
    """True (after one warning) when there is no pool and ``what`` runs serially."""
    global _warned_serial
    rt = runtime.current()
    if rt is not None and not rt.closed:
        return False
    if not _warned_serial:
        _warned_serial = True
        logging.getLogger("scoop").warning(
            "SCOOP is not running, so %s runs serially in this process; %s",
            what,
            runtime.LAUNCH_HINT,
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


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items a map over ``iterables`` has: the shortest's ``len()``,
    or None if one of them has none (a generator, a file)."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no len(), or no iterable at all
        return None


def _expect(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """Tell the run how many futures a map that starts now makes, when that
    is known; return it."""
    count = _known_length(iterables)
    if count is not None:
        activity.expect(count)
    return count


def _with_bar(results: Iterator[Any], total: int | None, progress: bool) -> Iterator[Any]:
    """``results``, advancing a tqdm bar on stderr as they are taken, when
    ``progress`` is asked for in the root program (or outside a run)."""
    if not progress or (context.IS_RUNNING and not context.IS_ORIGIN):
        return results
    from tqdm import tqdm  # only programs that ask for a bar pay its import

    return iter(tqdm(results, total=total, unit="future", dynamic_ncols=True))


# Per-call options (see :class:`options`): read when futures are submitted.
_max_losses: contextvars.ContextVar[int] = contextvars.ContextVar("max_losses", default=0)


def submit(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``func(*args, **kwargs)`` on a worker; return its :class:`Future`."""
    _check_callable(func, "submit()")
    rt = runtime.require("futures.submit()")
    return rt.submit([Call(func, args, kwargs)], max_losses=_max_losses.get())[0]


def map(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    progress: bool = False,
    **ignored: Any,
) -> Iterator[Any]:
    """Like the built-in ``map``, in parallel: results in the order of the inputs.

    Several iterables are zipped. The work starts when the generator is first
    advanced; iterating raises the exception of a call that failed, at its
    place in the order, and ``TimeoutError`` if a result is not there
    ``timeout`` seconds after the call to ``map``. ``progress=True`` shows
    a tqdm bar of the results taken so far. Other keyword arguments are
    ignored with a warning, as the original SCOOP ignored them."""
    _check_callable(func, "map()")
    _ignore_extra("futures.map()", ignored)
    if _serial("futures.map()"):
        return _with_bar(builtins.map(func, *iterables), _known_length(iterables), progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = Chunker(
        runtime.require("futures.map()"), func, iterables, max_losses=_max_losses.get()
    )
    total = _expect(iterables)
    chunker.fill()  # the work starts now, as in SCOOP, not at the first next()
    return _with_bar(ordered_values(chunker, deadline), total, progress)


def map_as_completed(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    progress: bool = False,
    **ignored: Any,
) -> Iterator[Any]:
    """Like :func:`map`, but yields each result as soon as it is there."""
    _check_callable(func, "map_as_completed()")
    _ignore_extra("futures.map_as_completed()", ignored)
    if _serial("futures.map_as_completed()"):
        return _with_bar(builtins.map(func, *iterables), _known_length(iterables), progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = Chunker(
        runtime.require("futures.map_as_completed()"), func, iterables, max_losses=_max_losses.get()
    )
    total = _expect(iterables)
    chunker.fill()
    return _with_bar(values_as_completed(chunker, deadline), total, progress)


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
    rt = runtime.require("futures.mapReduce()")
    deadline = None if timeout is None else time.monotonic() + timeout
    chunker = Chunker(rt, mapFunc, iterables, "reduce", reductionFunc, max_losses=_max_losses.get())
    _expect(iterables)
    level = [chunk_values(r)[0] for r in ordered_chunks(chunker, deadline)]
    if not level:
        raise TypeError("mapReduce() of empty iterables: there is nothing to reduce")
    while len(level) > 1:
        pairs = [
            Call(reductionFunc, (level[i], level[i + 1]), {}) for i in range(0, len(level) - 1, 2)
        ]
        futures = rt.submit(pairs, max_losses=chunker.max_losses)
        odd = [level[-1]] if len(level) % 2 else []
        level = [f.result(time_left(deadline)) for f in futures] + odd
    return level[0]


def mapScan(
    mapFunc: Callable[..., Any],
    reductionFunc: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    progress: bool = False,
    **ignored: Any,
) -> list[Any]:
    """``list(itertools.accumulate(map(mapFunc, *iterables), reductionFunc))``.

    The map runs in parallel; the scan runs in order here, so the values are
    exactly those of ``itertools.accumulate`` for any ``reductionFunc``
    (the original SCOOP returned wrong values here). ``progress=True``
    shows the map's bar."""
    _check_callable(mapFunc, "mapScan()")
    _check_callable(reductionFunc, "mapScan()")
    _ignore_extra("futures.mapScan()", ignored)
    mapped = map(mapFunc, *iterables, timeout=timeout, progress=progress)
    return list(itertools.accumulate(mapped, reductionFunc))


def _with_options(fn: Callable[_P, _R]) -> Callable[Concatenate[options, _P], _R]:
    """``fn`` as a method of :class:`options`: called with the options in force."""

    @functools.wraps(fn)
    def method(self: options, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self:
            return fn(*args, **kwargs)

    return method


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

    # The module's functions, as they are (the names resolve to them here).
    submit = _with_options(submit)
    map = _with_options(map)
    map_as_completed = _with_options(map_as_completed)
    mapReduce = _with_options(mapReduce)
    mapScan = _with_options(mapScan)


def wait(
    fs: Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> DoneAndNotDoneFutures:
    """Wait until ``return_when`` holds for the futures ``fs`` (PEP 3148).

    Returns ``(done, not_done)`` as soon as the condition holds; inside a
    future, the worker runs other futures meanwhile. ``timeout=None`` waits
    without a limit, and so does a negative one: SCOOP's default was
    ``timeout=-1``, meaning no limit, and SCOOP's programs pass it."""
    if timeout is not None and timeout < 0:
        timeout = None
    return wait_futures(fs, timeout, return_when)


def shutdown(wait: bool = True, cancel_futures: bool = False) -> None:
    """Cancel this process's queued futures (``cancel_futures``), then wait for
    the rest (``wait``). The pool itself stops when the program ends."""
    rt = runtime.current()
    if rt is None:
        return
    owned = list(rt.owned())
    if cancel_futures:
        for fut in owned:
            fut.cancel()
    if wait:
        wait_futures(owned)
