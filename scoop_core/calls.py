"""What a future carries to its worker, how the worker runs it, and how an
exception raised there is brought back.

A future runs either one ``Call`` (``submit``) or a ``Chunk`` of calls of
one function (``map`` and friends send their items in chunks, so one
message and one pickled function serve many items). A chunk may fold its
values on the worker (``reduce`` for mapReduce, ``scan`` for mapScan), so
only one value per chunk travels back.
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from scoop_core.errors import RemoteError


@dataclass(frozen=True)
class Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def run(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


@dataclass(frozen=True)
class Chunk:
    fn: Callable[..., Any]
    items: Sequence[Any]
    fold: str = ""  # "", "reduce" or "scan"
    reducer: Callable[[Any, Any], Any] | None = None
    # Each item is a tuple of arguments (a map over several iterables);
    # False: each item is the one argument (a map over one iterable, whose
    # items then travel as they are, not each in a tuple).
    spread: bool = True

    def args(self, item: Any) -> tuple[Any, ...]:
        """The arguments of ``fn`` for ``item``."""
        return tuple(item) if self.spread else (item,)

    def _values(self) -> Iterator[Any]:
        # The builtins' iterators, not a loop of ours: a chunk of tiny items
        # spends its time here.
        if self.spread:
            return itertools.starmap(self.fn, self.items)
        return map(self.fn, self.items)

    def run(self) -> ChunkResult:
        values: list[Any] = []
        reducer = self.reducer
        try:
            if self.fold == "":
                values.extend(self._values())  # keeps the values before an item that raised
            else:
                assert reducer is not None
                calls = self._values()
                acc = next(calls)
                if self.fold == "scan":
                    values.append(acc)
                for value in calls:
                    acc = reducer(acc, value)
                    if self.fold == "scan":
                        values.append(acc)
                if self.fold == "reduce":
                    values.append(acc)
        except Exception as exc:
            return ChunkResult(values, capture(exc))
        return ChunkResult(values, None)


def to_wire(payload: Call | Chunk) -> Any:
    """What is pickled for a future: a Call as a plain tuple, a Chunk as it
    is. Unpickling an instance of a class looks the class up (an import)
    every time; a tuple costs none of that, and single calls are what a
    loop of ``submit`` sends by the thousand."""
    if type(payload) is Call:
        return (payload.fn, payload.args, payload.kwargs)
    return payload


def from_wire(obj: Any) -> Call | Chunk:
    """The Call or Chunk that :func:`to_wire` made ``obj`` from."""
    if type(obj) is tuple and len(obj) == 3:
        return Call(*obj)
    if isinstance(obj, Call | Chunk):
        return obj
    raise TypeError(f"a future's payload is a call or a chunk, not {type(obj).__name__}")


@dataclass
class ChunkResult:
    """Values of a chunk in order; ``error`` is set if item ``len(values)``
    raised (the items after it were not run)."""

    values: list[Any]
    error: RemoteException | None = None


class RemoteTraceback(Exception):
    """The traceback text of an exception raised on a worker.

    Attached as ``__cause__`` of the re-raised exception, so Python prints it
    above the local traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass
class RemoteException:
    """An exception raised on a worker, with its traceback text."""

    exc: BaseException
    traceback: str
    where: str = field(default="")

    def rebuild(self) -> BaseException:
        exc = self.exc
        exc.__cause__ = RemoteTraceback(f'\n"""\n{self.where}{self.traceback}"""')
        return exc


WORKER_NAME = "worker"


def capture(exc: BaseException) -> RemoteException:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RemoteException(exc, text, f"Traceback from {WORKER_NAME}:\n")


def portable(info: RemoteException, dumps: Callable[[Any], Any]) -> RemoteException:
    """``info`` with its exception replaced by a RemoteError if it cannot be pickled."""
    try:
        dumps(info.exc)
        return info
    except Exception:
        stand_in = RemoteError(
            f"{type(info.exc).__module__}.{type(info.exc).__qualname__}: {info.exc}"
        )
        return RemoteException(stand_in, info.traceback, info.where)
