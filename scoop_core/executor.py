"""``scoop_core.Executor``: a pool inside an ordinary Python program.

A real ``concurrent.futures.Executor``: it starts a broker in a thread of
this process and worker processes on this machine, and this process becomes
the pool's root. No launcher is needed, and ``asyncio``'s
``loop.run_in_executor`` and ``asyncio.wrap_future`` work with it. Inside
it, ``scoop.futures`` calls (nested ones included) use this pool.

Like ``multiprocessing``'s spawn method, workers import the program's main
module (when it is a file) under another name, so its functions are found
there; keep the pool's creation under ``if __name__ == '__main__':``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scoop_core import context, runtime
from scoop_core.calls import Call
from scoop_core.config import load_config
from scoop_core.errors import LaunchError
from scoop_core.future import Future, wait_futures
from scoop_core.map_chunks import Chunker, ordered_values
from scoop_core.plugins.manager import get_plugin_manager
from scoop_core.run import Run, worker_count

# Pools still open when the program ends are shut down while threads still
# run (as concurrent.futures does for its own pools): at interpreter
# finalisation the I/O threads are frozen and a clean stop is impossible.
_open_pools: weakref.WeakSet[Executor] = weakref.WeakSet()


def _shutdown_open_pools() -> None:
    for pool in list(_open_pools):
        pool.shutdown(wait=False, cancel_futures=True)
        pool._finish()


threading._register_atexit(_shutdown_open_pools)  # type: ignore[attr-defined]


def _main_program() -> str | None:
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path if path and os.path.isfile(path) else None


class Executor(cf.Executor):
    """A pool of ``workers`` local worker processes (default: one per core).

    ``transport`` and ``serializer`` name plugins (default: from the
    configuration, else ``zmq`` and ``cloudpickle``); ``config`` names a
    TOML file as ``--config`` does."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        transport: str | None = None,
        serializer: str | None = None,
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        if os.environ.get("_SCOOP_NAME", "").startswith("worker"):
            raise LaunchError(
                "a scoop_core.Executor cannot be created in a worker process: the program's "
                "module-level code runs in every worker, so create the pool under "
                "`if __name__ == '__main__':`"
            )
        cli: dict[str, Any] = {"workers": workers, "transport": transport, "serializer": serializer}
        first = load_config(cli=cli, config_file=config)
        plugins = get_plugin_manager(first["disable_plugins"])
        cfg = load_config(plugin_settings=plugins.settings(), cli=cli, config_file=config)
        name = f"client-{os.getpid()}"
        self._run = Run(
            config=cfg,
            plugins=plugins,
            workers=worker_count(cfg),
            program=_main_program(),
            root_name=name,
        )
        self._run.start()
        try:
            self._rt = self._run.connect(name)
        except BaseException:
            self._run.stop()
            raise
        self._previous = runtime.current()
        runtime.set_current(self._rt)
        self._previous_size = context.SIZE
        context.SIZE = self._run.size
        self._shutdown = False
        self._finisher: threading.Thread | None = None
        _open_pools.add(self)

    @property
    def workers(self) -> int:
        return self._run.size

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, got {fn!r}")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._rt.submit([Call(fn, args, kwargs)])[0]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Results in input order; the work starts at once. ``chunksize`` is
        accepted for compatibility: chunk sizes adapt on their own."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        chunker = Chunker(self._rt, fn, iterables)
        chunker.fill()
        return ordered_values(chunker, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking futures; with ``wait``, return when they are all done
        and the workers are gone. Without it, return at once: the futures
        still finish, then the pool stops in the background."""
        if self._shutdown:
            if wait:
                self._finish()
            return
        self._shutdown = True
        if cancel_futures:
            self._rt.cancel_nowait(f.fid for f in list(self._rt.owned()))
        if wait:
            self._finish()
        else:
            self._finisher = threading.Thread(
                target=self._finish, name="scoop-executor-shutdown", daemon=True
            )
            self._finisher.start()

    def _finish(self) -> None:
        """Wait for this pool's futures, then stop its runtime and workers."""
        if self._finisher is not None and self._finisher is not threading.current_thread():
            self._finisher.join()
            return
        wait_futures(list(self._rt.owned()))
        self._rt.close()
        self._run.stop()
        _open_pools.discard(self)
        if runtime.current() is self._rt:
            runtime.set_current(self._previous)
            context.SIZE = self._previous_size

    def __del__(self) -> None:
        if not getattr(self, "_shutdown", True) and not sys.is_finalizing():
            self.shutdown(wait=False, cancel_futures=True)
