"""``scoop_core.Executor``: a pool inside an ordinary Python program.

A real ``concurrent.futures.Executor``, and a stand-in for
``ProcessPoolExecutor``: the same arguments (``max_workers``,
``mp_context``, ``initializer``, ``initargs``, ``max_tasks_per_child``)
mean the same things. It starts the run's backend in this process (a
broker thread, or a Redis store) and the workers where the launcher would
put them (:mod:`scoop_core.placement`: hosts given, else a scheduler's
allocation it detects, else this machine), and this process becomes the
pool's root. No launcher is needed, and ``asyncio``'s
``loop.run_in_executor`` and ``asyncio.wrap_future`` work with it. Inside
it, ``scoop.futures`` calls (nested ones included) use this pool.

Where it differs from ``ProcessPoolExecutor``, it is on purpose (see
docs/executor.md): a worker killed mid-future (``os._exit``, a crash) is
replaced and the future runs again, up to ``max_losses`` times, instead of
breaking the whole pool; ``chunksize`` is a hint (chunks adapt to how long
calls take); workers are always fresh interpreters, so a ``fork`` context
is refused rather than silently not honoured.

Like ``multiprocessing``'s spawn method, workers import the program's main
module (when it is a file) under another name, so its functions are found
there; keep the pool's creation under ``if __name__ == '__main__':``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from scoop_core import context, runtime
from scoop_core.calls import Call
from scoop_core.config import load_config
from scoop_core.errors import INITIALIZER_FAILED, BrokenPool, LaunchError, SerializationError
from scoop_core.future import Future, wait_futures
from scoop_core.map_chunks import Chunker, ordered_values
from scoop_core.notebook import watch_cells
from scoop_core.placement import place, read_hosts
from scoop_core.plugins.manager import get_plugin_manager
from scoop_core.run import Run, worker_count
from scoop_core.run_backend import StoreBackend

log = logging.getLogger("scoop.executor")

WATCH_SECONDS = 0.1
"""How often the pool looks at its workers' processes: a dead one's futures
run elsewhere, and a dead or retired one is replaced, within about this."""

REASON_SECONDS = 2.0
"""How long the pool waits for the reason a worker's initializer failed,
once the worker has exited, before it says to look in the worker's log."""

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
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path if path and os.path.isfile(path) else None


def _positive(name: str, value: object) -> int | None:
    """``value``, checked as ProcessPoolExecutor checks its counts."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def _refuse_fork(mp_context: object) -> None:
    get_method = getattr(mp_context, "get_start_method", None)
    if mp_context is not None and get_method is not None and get_method() == "fork":
        raise ValueError(
            "scoop_core.Executor starts its workers as fresh interpreters (as the 'spawn' "
            "method does), so a 'fork' context's promise, workers that inherit this "
            "process's memory, cannot be kept; pass mp_context=None (or a 'spawn' or "
            "'forkserver' context), and give workers what they need through initializer="
        )


def _raise_when_read(error: BaseException) -> Iterator[Any]:
    raise error
    yield  # a generator: the error comes at the first next()


class Executor(cf.Executor):
    """A pool of worker processes, used as a ``ProcessPoolExecutor``.

    ``max_workers`` (or its alias ``workers``): how many workers (default:
    one per core, or the hosts' counts); ValueError if not above 0.
    ``mp_context`` is accepted for compatibility and otherwise ignored:
    workers are always fresh interpreters, as with 'spawn'; a 'fork'
    context is refused with ValueError. ``initializer(*initargs)`` runs
    once in every worker before its first future, replacements and
    workers that join later included; if it raises, the pool is broken
    (:class:`~scoop_core.errors.BrokenPool`, a
    ``concurrent.futures.BrokenExecutor``). ``max_tasks_per_child``: a
    worker that ran that many futures hands back those it holds unstarted,
    finishes the others and is replaced by a fresh one.

    ``hosts`` (``--hosts`` words, e.g. ``["node1", "node1", "node2 4"]``)
    and ``hostfile`` put the workers on those machines (remote ones through
    the ssh launcher); without them a scheduler's allocation the launcher
    plugins detect (SLURM, SGE, Torque) is used, else this machine.
    ``launcher`` names a launcher plugin, ``transport`` and ``serializer``
    name plugins (default: from the configuration, else ``zmq`` and
    ``cloudpickle``); ``config`` names a TOML file as ``--config`` does.
    With ``transport="redis"``, ``scoop worker --run <run_id>`` adds
    workers from elsewhere (see :attr:`run_id` and :attr:`key_file`)."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        workers: int | None = None,
        hosts: Sequence[str] | None = None,
        hostfile: str | os.PathLike[str] | None = None,
        launcher: str | None = None,
        transport: str | None = None,
        serializer: str | None = None,
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_workers is not None and workers is not None and max_workers != workers:
            raise TypeError(
                f"max_workers={max_workers} and workers={workers}: workers is another name "
                "for max_workers; give one of them"
            )
        count = _positive("max_workers", max_workers if max_workers is not None else workers)
        _refuse_fork(mp_context)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, got {initializer!r}")
        max_tasks = _positive("max_tasks_per_child", max_tasks_per_child)
        if os.environ.get("_SCOOP_NAME", "").startswith("worker"):
            raise LaunchError(
                "a scoop_core.Executor cannot be created in a worker process: the program's "
                "module-level code runs in every worker, so create the pool under "
                "`if __name__ == '__main__':`"
            )
        cli: dict[str, Any] = {
            "workers": count,
            "transport": transport,
            "serializer": serializer,
            "launcher": launcher,
        }
        cli = {k: v for k, v in cli.items() if v is not None}
        # The first pass only finds the plugins to load; the second reports every mistake.
        first = load_config(cli=cli, config_file=config, strict=False)
        plugins = get_plugin_manager(first["disable_plugins"])
        cfg = load_config(plugin_settings=plugins.settings(), cli=cli, config_file=config)
        # Where the workers go: the launcher's own decision (scoop_core.placement).
        chosen, placed = place(
            cfg, plugins, read_hosts(os.fspath(hostfile) if hostfile else None, hosts)
        )
        name = f"client-{os.getpid()}"
        program = _main_program()
        self._run = Run(
            config=cfg,
            plugins=plugins,
            workers=sum(h.count or 0 for h in placed) if placed else worker_count(cfg),
            program=program,
            # Workers import the program with its sys.argv, as 'spawn' children do:
            # module-level code often reads it.
            program_args=sys.argv[1:] if program else (),
            root_name=name,
            launcher=chosen,
            hosts=placed,
            max_tasks_per_child=max_tasks,
            initializer=initializer is not None,
        )
        self._run.start()
        try:
            self._rt = self._run.connect(name)
            if initializer is not None:
                # A constant of the run: every worker, whenever it comes, reads it.
                # Pickled frames, unpickled by a worker only once it has imported
                # the program, where an initializer of the program's is found.
                frames = self._rt.dumps_payload(Call(initializer, tuple(initargs), {}))
                self._rt.set_const(runtime.INITIALIZER, [bytes(f) for f in frames])
        except BaseException:
            if getattr(self, "_rt", None) is not None:
                self._rt.close()
            self._run.stop()
            raise
        self._previous = runtime.current()
        runtime.set_current(self._rt)
        self._previous_size = context.SIZE
        context.SIZE = self._run.size
        self._shutdown = False
        self._broken: BrokenPool | None = None
        self._finisher: threading.Thread | None = None
        # The watcher and shutdown share the run (its worker group, its backend).
        self._run_lock = threading.Lock()
        self._run_stopped = False
        self._watching = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, name="scoop-executor-watch", daemon=True
        )
        self._watcher.start()
        # In IPython and Jupyter, an interrupted cell cancels what it submitted.
        self._cells = watch_cells(self._rt)
        _open_pools.add(self)

    @property
    def workers(self) -> int:
        """How many workers the pool started with (and keeps)."""
        return self._run.size

    @property
    def run_id(self) -> str:
        """The run's id: ``scoop worker --run RUN_ID`` adds workers to a Redis run."""
        return self._run.run_id

    @property
    def key_file(self) -> str | None:
        """The file holding the run's key that ``scoop worker`` reads (a Redis
        run whose key is not in ``$SCOOP_RUN_KEY``), or None. Removed when
        the pool shuts down."""
        backend = self._run.backend
        return backend.key_path or None if isinstance(backend, StoreBackend) else None

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenPool(str(self._broken))
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; its :class:`~concurrent.futures.Future`.

        A call that cannot be pickled gives a future that fails with
        :class:`~scoop_core.errors.SerializationError`, as
        ``ProcessPoolExecutor`` does; a shut down or broken pool raises."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, got {fn!r}")
        self._check_open()
        try:
            return self._rt.submit([Call(fn, args, kwargs)])[0]
        except SerializationError as exc:
            # As ProcessPoolExecutor does: a call that cannot be sent fails its future.
            failed = Future()
            failed.set_exception(exc)
            return failed

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Results in input order; the work starts at once. ``chunksize``
        must be at least 1, as for ProcessPoolExecutor; beyond that it is
        a hint: chunk sizes adapt to how long the calls take."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        chunker = Chunker(self._rt, fn, iterables)
        try:
            chunker.fill()
        except SerializationError as exc:
            # Raised by iteration, as ProcessPoolExecutor raises a call's pickling error.
            return _raise_when_read(exc)
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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """As ``concurrent.futures``: shut down and wait. After Ctrl-C, the
        futures not started yet are cancelled first: waiting for all of
        them is not what the user who pressed it asked for."""
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)

    # -- watching the workers ------------------------------------------------------

    def _watch(self) -> None:
        """Look at the workers' processes: the run hands on a dead worker's
        futures and replaces dead and retired workers; an initializer that
        failed, or no worker left, breaks the pool."""
        failed_marker = runtime.INITIALIZER_FAILED
        failed_since = 0.0  # when a worker was first seen exiting for its initializer
        while not self._watching.wait(WATCH_SECONDS):
            with self._run_lock:
                if self._run_stopped:
                    return
                ended = self._run.exited_workers()
            why = {
                n[len(failed_marker) :]: str(self._rt.constants.get(n))
                for n in list(self._rt.constants)
                if n.startswith(failed_marker)
            }
            failed = [
                n
                for n, s in ended.items()
                if s == INITIALIZER_FAILED and n in self._run.exit_reasons
            ]
            if failed and not why:
                # Its reason, a constant, may still be on its way here.
                failed_since = failed_since or time.monotonic()
                if time.monotonic() - failed_since < REASON_SECONDS:
                    continue
                why = {n: f"see the log of {n}" for n in failed}
            if why:
                worker, reason = sorted(why.items())[0]
                self._break(
                    f"the initializer of this pool raised in {worker} ({reason}); the pool is "
                    "not usable any more: fix the initializer and start a new one"
                )
                return
            if len(ended) == self._run.size and not isinstance(self._run.backend, StoreBackend):
                statuses = ", ".join(f"{n}: {s}" for n, s in sorted(ended.items()))
                self._break(
                    f"every worker of this pool has exited and none replaces them ({statuses}; "
                    "see max_restarts in docs/configuration.md); the pool is not usable any more"
                )
                return

    def _break(self, message: str) -> None:
        """Fail the pool's pending futures with BrokenPool, and later submits too."""
        self._broken = BrokenPool(message)
        log.error("%s", message)
        self._rt.cancel_nowait(f.fid for f in self._rt.owned())
        self._rt.fail_owned(self._broken)

    # -- stopping -------------------------------------------------------------

    def _finish(self) -> None:
        """Wait for this pool's futures, then stop its runtime and workers."""
        if self._finisher is not None and self._finisher is not threading.current_thread():
            self._finisher.join()
            return
        wait_futures(list(self._rt.owned()))
        self._watching.set()
        if self._watcher is not threading.current_thread():
            self._watcher.join()
        self._rt.close()
        with self._run_lock:
            if not self._run_stopped:
                self._run_stopped = True
                self._run.stop()
        _open_pools.discard(self)
        if self._cells is not None:
            self._cells.unregister()
        if runtime.current() is self._rt:
            runtime.set_current(self._previous)
            context.SIZE = self._previous_size

    def __del__(self) -> None:
        if not getattr(self, "_shutdown", True) and not sys.is_finalizing():
            self.shutdown(wait=False, cancel_futures=True)
