"""Run a benchmark program on a standard process pool instead of SCOOP.

    python bench/peers.py --with pool|executor|loky -n 2 prog.py [args...]

plays the part of ``python -m scoop -n 2 prog.py [args...]`` for the
programs of bench/programs: before running ``prog.py`` as ``__main__`` it
installs a module ``scoop.futures`` that offers the part of SCOOP's API
those programs use (``submit(f, *args)`` returning something with
``.result()``, and ``map(f, *iterables)``) on top of one pool of ``-n``
worker processes:

- ``pool``: ``multiprocessing.Pool``: ``apply_async`` and ``map``;
- ``executor``: ``concurrent.futures.ProcessPoolExecutor``;
- ``loky``: ``loky.get_reusable_executor`` (``pip install loky``).

Unlike SCOOP's root, the process running the program runs no task: the
``-n`` workers do. The pool is made once the program's functions exist, so
that workers forked from it know them: at the first ``submit`` or ``map``,
or at ``warm_up()``, which bench/programs/harness.py calls before it starts
a clock (SCOOP's workers are running before the program starts, so the
pools' should be too). It is shut down when the program ends. ``map`` cuts its items
into chunks as ``multiprocessing.Pool.map`` does (about four per worker),
for all three pools: without it ``ProcessPoolExecutor.map`` sends one
item per message, which nobody would do with many small items.

A task cannot submit and wait for other tasks on these pools (a worker
waiting on the pool's own queue would deadlock it), so a ``submit`` or
``map`` made inside a worker raises ``RuntimeError``: the programs with
nested futures do not run here.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

KINDS = ("pool", "executor", "loky")


class Futures:
    """The ``scoop.futures`` a program sees: ``submit`` and ``map`` on one pool."""

    def __init__(self, kind: str, workers: int) -> None:
        self.kind = kind
        self.workers = workers
        self.pool: Any = None
        self.owner = os.getpid()

    def _pool(self) -> Any:
        if os.getpid() != self.owner:
            raise RuntimeError(f"{self.kind}: a task cannot submit tasks (no nested futures)")
        if self.pool is None:
            if self.kind == "pool":
                import multiprocessing

                self.pool = multiprocessing.Pool(self.workers)
            elif self.kind == "executor":
                from concurrent.futures import ProcessPoolExecutor

                self.pool = ProcessPoolExecutor(self.workers)
            else:
                from loky import get_reusable_executor

                self.pool = get_reusable_executor(max_workers=self.workers)
        return self.pool

    def warm_up(self) -> None:
        """Start every worker now, outside whatever the program times (once)."""
        if self.pool is not None:
            return
        pending = [self.submit(os.getpid) for _ in range(2 * self.workers)]
        for future in pending:
            future.result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        pool = self._pool()
        if self.kind == "pool":
            return PoolFuture(pool.apply_async(fn, args, kwargs))
        return pool.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        pool = self._pool()
        columns = [list(it) for it in iterables]
        size = min(len(c) for c in columns)
        chunksize = max(1, math.ceil(size / (4 * self.workers)))
        if self.kind == "pool":
            if len(columns) == 1:
                return iter(pool.map(fn, columns[0], chunksize))
            return iter(pool.starmap(fn, zip(*columns, strict=False), chunksize))
        return pool.map(fn, *columns, chunksize=chunksize)

    def shutdown(self) -> None:
        if self.pool is None:
            return
        if self.kind == "pool":
            self.pool.close()
            self.pool.join()
        else:
            self.pool.shutdown(wait=True)
        if self.kind == "loky":
            # loky's resource tracker otherwise exits only once it sees this
            # process gone, and is then found still running after the program.
            from loky.backend import resource_tracker

            stop = getattr(resource_tracker._resource_tracker, "_stop", None)
            if stop is not None:
                stop()


class PoolFuture:
    """``multiprocessing``'s ``AsyncResult`` with the ``result()`` of a future."""

    def __init__(self, async_result: Any) -> None:
        self.async_result = async_result

    def result(self, timeout: float | None = None) -> Any:
        return self.async_result.get(timeout)


def install(futures: Futures) -> None:
    """Make ``from scoop import futures`` find ``futures``."""
    package = types.ModuleType("scoop")
    module = types.ModuleType("scoop.futures")
    module.submit = futures.submit  # type: ignore[attr-defined]
    module.map = futures.map  # type: ignore[attr-defined]
    module.warm_up = futures.warm_up  # type: ignore[attr-defined]
    package.futures = module  # type: ignore[attr-defined]
    package.__path__ = []  # a package, so that `import scoop.futures` works too
    sys.modules["scoop"] = package
    sys.modules["scoop.futures"] = module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--with", dest="kind", choices=KINDS, required=True)
    p.add_argument("-n", "--workers", type=int, default=2)
    p.add_argument("program", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    futures = Futures(args.kind, args.workers)
    install(futures)
    program = args.program.resolve()
    # As `python prog.py` would: the program's directory first on the path.
    sys.path.insert(0, str(program.parent))
    sys.argv = [str(program), *args.args]
    try:
        runpy.run_path(str(program), run_name="__main__")
    finally:
        futures.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
