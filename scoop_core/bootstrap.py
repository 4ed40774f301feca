"""The entry point of every process a pool starts: ``python -m scoop_core.bootstrap``.

``worker`` connects to the broker, imports the user's program under another
name than ``__main__`` and serves futures until the run ends. ``root PROGRAM
ARGS...`` runs the program as ``__main__`` with ``sys.argv`` set to its
arguments, connected to the pool, and exits with the program's status.
Everything else comes from ``_SCOOP_*`` environment variables set by
:class:`scoop_core.run.Run`; the run's backend (:mod:`scoop_core.run_backend`)
makes this process's connection and says what it must watch.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import types
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from scoop_core import context, runtime
from scoop_core import log as scoop_log
from scoop_core.errors import LaunchError, PluginError, ScoopError, TransportClosed
from scoop_core.interfaces import Serializer
from scoop_core.plugins.manager import get_plugin_manager
from scoop_core.plugins.types import SerializerPlugin, TransportPlugin
from scoop_core.run_backend import Connection, RunSettings, backend_for
from scoop_core.run_keys import KEY_ENV

if TYPE_CHECKING:
    from scoop_core.worker import WorkerRuntime

log = logging.getLogger("scoop.bootstrap")


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ScoopError(f"{name} is not set: this process must be started by the scoop launcher")
    return value


SECRETS = ("_SCOOP_KEY", "_SCOOP_TRANSPORT_SETTINGS", KEY_ENV)
"""Variables that can hold a secret: the run's key (ours, or the one the user
gave the launcher) and the transport's settings (a Redis password, say).
Each is taken out of this process's environment as soon as it is read, so
the user's own subprocesses (a future running ``subprocess.run``) never
inherit it. No process we start from here needs them: a host's supervisor
gets its workers' variables in its plan, on stdin."""


def _user_secret(name: str, value: str) -> bool:
    """A ``SCOOP_*`` setting of the user's that holds a secret (docs/redis.md
    suggests ``SCOOP_TRANSPORT_REDIS_PASSWORD``; a URL may carry one). Our
    processes have their settings from ``_SCOOP_TRANSPORT_SETTINGS``, so the
    user's own subprocesses need not inherit these either."""
    if not name.startswith("SCOOP_"):
        return False
    if "PASSWORD" in name:
        return True
    return name.endswith("_URL") and bool(urllib.parse.urlsplit(value).password)


def _take_secrets() -> dict[str, str | None]:
    """The :data:`SECRETS`, removed from the environment, and the user's
    secret ``SCOOP_*`` settings dropped from it."""
    for name, value in list(os.environ.items()):
        if _user_secret(name, value):
            del os.environ[name]
    return {name: os.environ.pop(name, None) for name in SECRETS}


def _limits() -> dict[str, Any]:
    """Heartbeats and the message size limit, as the pool set them."""
    interval, timeout = (float(x) for x in _env("_SCOOP_HEARTBEAT", "5,30").split(","))
    size = os.environ.get("_SCOOP_MAX_MESSAGE_SIZE")
    return {
        "heartbeat_interval": interval,
        "heartbeat_timeout": timeout,
        "max_message_size": int(size) if size else None,
    }


def _setup(name: str) -> tuple[Connection, bytes, Serializer, int]:
    """Context, logging, serializer and connection from the environment."""
    context.IS_RUNNING = True
    context.worker = name
    context.BROKER = _env("_SCOOP_ADDRESS")
    context.DEBUG = bool(os.environ.get("_SCOOP_DEBUG"))
    context.SIZE = int(_env("_SCOOP_WORKERS", "1"))
    scoop_log.configure(_env("_SCOOP_LOG_LEVEL", "WARNING"))
    if os.environ.get("_SCOOP_LOG_FILE"):
        scoop_log.add_file(os.environ["_SCOOP_LOG_FILE"])
    secret = _take_secrets()
    key = bytes.fromhex(secret["_SCOOP_KEY"] or _env("_SCOOP_KEY"))
    settings: dict[str, Any] = json.loads(secret["_SCOOP_TRANSPORT_SETTINGS"] or "{}")
    transport_record, serializer_record = run_plugins()
    transport = transport_record.factory(settings)
    serializer = serializer_record.factory()
    run = RunSettings(
        run_id=_env("_SCOOP_RUN_ID", ""),
        key=key,
        transport=_env("_SCOOP_TRANSPORT"),
        root=_env("_SCOOP_ROOT", "root"),
        workers=context.SIZE,
        max_losses=int(_env("_SCOOP_MAX_LOSSES", "3")),
        workers_from_jobs=bool(os.environ.get("_SCOOP_WORKERS_FROM_JOBS")),
        **_limits(),
    )
    backend = backend_for(
        transport,
        run,
        address=context.BROKER,
        key_path=os.environ.get("_SCOOP_KEY_FILE", ""),
    )
    connection = backend.connect(name, launcher_alive=_launcher_alive())
    if connection.over is None:
        _watch_parent(name)
    else:
        # The run lives on without its launcher, and ends when its program does.
        _watch_orphaned(name, connection.over)
    return connection, key, serializer, context.SIZE


def run_plugins() -> tuple[TransportPlugin, SerializerPlugin]:
    """The run's transport and serializer, from the plugins the launcher
    found them in (``_SCOOP_PLUGINS``): the others are not even imported.
    A process on another host, where they may be installed under other
    plugin names, looks through all its plugins when those do not hold them."""
    disabled = [p for p in _env("_SCOOP_DISABLE_PLUGINS", "").split(",") if p]
    wanted = os.environ.get("_SCOOP_PLUGINS")
    transport, serializer = _env("_SCOOP_TRANSPORT"), _env("_SCOOP_SERIALIZER", "cloudpickle")
    if wanted:
        plugins = get_plugin_manager(disabled, only=wanted.split(","))
        with contextlib.suppress(PluginError):
            return plugins.transport(transport), plugins.serializer(serializer)
    plugins = get_plugin_manager(disabled)
    return plugins.transport(transport), plugins.serializer(serializer)


def _parent_pid() -> int | None:
    """The pid of the process that started us, as it told us (it may have
    died before we got this far: compare with this, not with our parent at
    this moment); None if it did not say."""
    expected = os.environ.get("_SCOOP_PARENT_PID")
    return int(expected) if expected else None


def _launcher_alive() -> Callable[[], bool] | None:
    """Whether the process that started us still runs (None: not known here)."""
    parent = _parent_pid()
    return None if parent is None else lambda: os.getppid() == parent


def _leave_on_sigterm(connection: Connection, rt: WorkerRuntime) -> None:
    """A worker asked to stop (the launcher stops it, ``scoop worker`` on
    Ctrl-C) hands back the futures it holds before it exits, without a loss,
    so they run elsewhere at once: through its connection where that plays
    the broker (a store), else by saying goodbye to the broker."""
    hand_back = connection.leave or rt.leave

    def leave(signum: int, frame: object) -> None:
        handed = hand_back(5.0)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0 if handed else 128 + signum)

    signal.signal(signal.SIGTERM, leave)


def _watch_parent(name: str) -> None:
    """Exit if the process that started us dies, so no process of ours outlives it."""
    parent = _parent_pid()
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("%s: the process that started it is gone; exiting", name)
        os._exit(1)

    threading.Thread(target=watch, name="scoop-parent-watch", daemon=True).start()


def _watch_orphaned(name: str, over: threading.Event) -> None:
    """A process of a run kept in a store outlives its launcher, but not
    its own part in the run: once the launcher is gone and this process has
    been told the run is over (or lost the store), it gets a few seconds to
    exit on its own, then exits anyway, even from inside a user function
    that never returns."""
    parent = _parent_pid() or os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        over.wait()
        time.sleep(_ORPHAN_GRACE)
        log.warning("%s: its run is over and its launcher gone; exiting", name)
        os._exit(1)

    threading.Thread(target=watch, name="scoop-orphan-watch", daemon=True).start()


_ORPHAN_GRACE = 5.0
"""Seconds an orphaned process whose run is over gets to exit on its own."""


def _whole_lines() -> None:
    """Write output a whole line at a time, as soon as the line ends: the
    root and the workers share the terminal, and a line written in pieces
    (as ``print`` does when unbuffered, e.g. under PYTHONUNBUFFERED) would
    interleave with other processes' lines."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True, write_through=False)  # type: ignore[union-attr]


def run_worker() -> int:
    from scoop_core.worker import WorkerRuntime, set_worker_name

    # Ctrl-C in the terminal reaches the whole process group; the launcher
    # decides when workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _whole_lines()
    name = _env("_SCOOP_NAME")
    set_worker_name(name)
    nice = os.environ.get("_SCOOP_NICE")
    if nice:
        os.nice(int(nice))
    connection, key, serializer, size = _setup(name)
    rt = WorkerRuntime(
        connection.endpoint,
        key=key,
        serializer=serializer,
        name=name,
        workers=size,
        prefetch=int(_env("_SCOOP_PREFETCH", "2")),
        # An Executor's max_tasks_per_child and initializer (see scoop_core.worker).
        max_tasks=int(os.environ.get("_SCOOP_MAX_TASKS") or 0) or None,
        initializer=bool(os.environ.get("_SCOOP_INITIALIZER")),
        **_limits(),
    )
    # A worker that has not reached the broker yet holds nothing to hand back:
    # SIGTERM ends it as it is (a handler here would wait on the handshake's socket).
    rt.start(rt.heartbeat_timeout)
    _leave_on_sigterm(connection, rt)
    runtime.set_current(rt)
    program = os.environ.get("_SCOOP_PROGRAM")
    if program:
        sys.path.insert(0, os.path.dirname(program))
        sys.argv = json.loads(os.environ.get("_SCOOP_ARGV", "[]")) or [program]
    if os.environ.get("_SCOOP_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(rt.serve, program)
        path = os.path.abspath(f"scoop-profile-{name}.prof")
        profiler.dump_stats(path)
        log.info("%s wrote its profile to %s", name, path)
    else:
        rt.serve(program)
    # Nonzero for a worker that retired (max_tasks_per_child: its launcher
    # replaces it) or whose initializer failed (see scoop_core.errors).
    return rt.exit_status


def run_root(program: str, args: list[str]) -> int:
    name = _env("_SCOOP_NAME", "root")
    _whole_lines()
    connection, key, serializer, size = _setup(name)
    context.IS_ORIGIN = True
    rt = runtime.RootRuntime(
        connection.endpoint,
        key=key,
        serializer=serializer,
        name=name,
        workers=size,
        run_here=_env("_SCOOP_ROOT_RUNS_FUTURES", "1") == "1",
        **_limits(),
    )
    rt.start()
    runtime.set_current(rt)
    sys.argv = [program, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    code = 0
    try:
        _run_as_main(program)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        rt.close()
    return code


def _run_as_main(program: str) -> None:
    """Run the program as ``__main__``, as ``python prog.py`` would. Results
    pickled by workers name the program's module ``__scoop_main__``: here
    that is this same module."""
    with open(program, "rb") as fh:
        code = compile(fh.read(), program, "exec")
    module = types.ModuleType("__main__")
    module.__file__ = program
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    sys.modules["__scoop_main__"] = module
    exec(code, module.__dict__)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return run_worker()
    if argv[:1] == ["root"] and len(argv) >= 2:
        return run_root(argv[1], argv[2:])
    print("usage: python -m scoop_core.bootstrap worker | root PROGRAM [ARGS...]", file=sys.stderr)
    return 2


def run(argv: list[str]) -> NoReturn:
    """Run :func:`main`, then end this process as the interpreter ends
    ``python prog.py`` (see :func:`scoop_core.fork_server.finish`), with
    main's status, or that of an exception main let through, reported as
    the interpreter reports it."""
    from scoop_core.fork_server import finish

    try:
        code = main(argv)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except (LaunchError, TransportClosed) as exc:
        # Our own account (no broker's answer, Redis gone): it names the
        # process and the fix, where a traceback would hide it.
        print(f"scoop: error: {exc}", file=sys.stderr)
        code = 1
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 128 + signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    finish(code)


if __name__ == "__main__":
    run(sys.argv[1:])
