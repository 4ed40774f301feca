"""``scoop worker``: more workers for a run that is already going.

Only a transport whose server is the broker (Redis) can take workers that
were not started by the run's launcher: they find the run in that server by
its id, check its description with the run's key (both as the launcher's
store backend left them: :func:`scoop_core.run_backend.find_run`), and take
futures like the others. The key comes from ``$SCOOP_RUN_KEY``, ``--key-file`` or the key
file ``scoop run`` wrote (see :func:`scoop_core.run_keys.find_run_key`, which
reads a key file only if it is a regular file of this user's that nobody
else can read); it reaches the workers through their environment, never
their command line.

A worker that retires (an Executor's ``max_tasks_per_child``) is replaced
by a new one here, as the Executor replaces its own.

On Ctrl-C (or SIGTERM) the workers hand back the futures they hold, which
other workers run at once, then exit; the command exits 130 (143). When the
run ends, its workers exit and so does the command, with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from scoop_core.config import Config
from scoop_core.errors import WORKER_RETIRED, LaunchError, UsageError
from scoop_core.interfaces import StoreTransport, WorkerSpec
from scoop_core.local_launcher import LocalLauncher
from scoop_core.plugins.manager import PluginManager
from scoop_core.run import BOOTSTRAP, run_env
from scoop_core.run_backend import find_run

log = logging.getLogger("scoop.launcher")


RUN_LOOK_SECONDS = 2.0
"""How often ``scoop worker`` looks whether its run still goes on, once it
has replaced a retired worker."""


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _run_info(
    config: Config, plugins: PluginManager, run_id: str, key_path: str | None
) -> tuple[str, bytes, dict[str, object]]:
    """The run's store address, key and description; LaunchError if there is no such run."""
    name = config["transport"]
    transport = plugins.transport(name).factory(config.section(f"transport.{name}"))
    if not isinstance(transport, StoreTransport):
        raise UsageError(
            f"the {name} transport has no server that keeps a run, so workers cannot join one "
            "from elsewhere; use --transport redis"
        )
    return find_run(transport, run_id, key_path)


def _still_on(config: Config, plugins: PluginManager, run_id: str, key_path: str | None) -> bool:
    """Whether run ``run_id`` still goes on (its description is in the store)."""
    try:
        _run_info(config, plugins, run_id, key_path)
    except LaunchError:
        return False
    return True


def worker_specs(
    config: Config,
    *,
    count: int,
    address: str,
    key: bytes,
    run_id: str,
    info: dict[str, object],
    cwd: str | None = None,
    first: int = 1,
) -> list[WorkerSpec]:
    """How to start ``count`` workers of the run described by ``info``,
    numbered from ``first``."""
    program = str(info.get("program") or "")
    if program and not os.path.isfile(program):
        raise LaunchError(
            f"run {run_id} runs {program}, which is not on this machine: workers import the "
            "program, so it must be at the same path here (a shared file system, or a copy)"
        )
    name = config["transport"]
    base = run_env(
        address=address,
        key=key,
        run_id=run_id,
        transport=name,
        transport_settings=config.section(f"transport.{name}"),
        info=info,
        disabled_plugins=config["disable_plugins"],
    )
    host = socket.gethostname()
    python = config["python_interpreter"] or sys.executable
    argv = (python, "-m", BOOTSTRAP, "worker")
    specs = []
    for i in range(first, first + count):
        worker = f"{host}-{os.getpid()}-{i}"
        specs.append(WorkerSpec(worker, host, argv, {**base, "_SCOOP_NAME": worker}, cwd))
    return specs


def join(
    config: Config,
    plugins: PluginManager,
    *,
    run_id: str,
    count: int,
    key_path: str | None = None,
    cwd: str | None = None,
) -> int:
    """Start ``count`` workers for run ``run_id`` and wait for them; the exit status."""
    address, key, info = _run_info(config, plugins, run_id, key_path)

    def specs_from(first: int, number: int) -> list[WorkerSpec]:
        return worker_specs(
            config,
            count=number,
            address=address,
            key=key,
            run_id=run_id,
            info=info,
            cwd=cwd,
            first=first,
        )

    specs = specs_from(1, count)
    retired: set[str] = set()
    next_look = 0.0
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    group = None
    try:
        group = LocalLauncher().start(specs)
        log.warning("joined run %s at %s with %d worker(s)", run_id, address, count)
        while True:
            statuses = group.poll()
            for name, status in list(statuses.items()):
                if status == WORKER_RETIRED and name not in retired:
                    retired.add(name)
                    if not _still_on(config, plugins, run_id, key_path):
                        continue  # the run ended meanwhile: nobody to work for
                    [new] = specs_from(count + len(retired), 1)
                    group.replace(name, new)
                    log.info("%s retired (max_tasks_per_child); %s replaces it", name, new.name)
                    statuses[new.name] = None
            if all(status is not None for status in statuses.values()):
                break
            if retired and time.monotonic() >= next_look:
                # A replacement that started as the run ended would wait for
                # it for ever: once the run is gone, its workers here stop.
                next_look = time.monotonic() + RUN_LOOK_SECONDS
                if not _still_on(config, plugins, run_id, key_path):
                    log.info("run %s is over; stopping its workers here", run_id)
                    return 0
            time.sleep(0.25)  # polling child processes, not synchronising a test
        failed = {n: s for n, s in group.poll().items() if s and n not in retired}
        for worker, status in failed.items():
            log.warning("%s exited with status %s", worker, status)
        return 1 if failed else 0
    except _Stop as stop:
        log.warning("leaving run %s: the workers hand back what they hold", run_id)
        return 128 + stop.signum
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        if group is not None:
            # SIGTERM: each worker hands back its futures, then exits.
            group.stop(8.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
