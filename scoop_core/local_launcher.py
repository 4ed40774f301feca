"""The built-in ``local`` launcher: worker processes on this machine.

Workers inherit the launcher's terminal (their output reaches it directly)
and its process group (so a Ctrl-C typed in the terminal reaches them, and
they ignore it: the launcher decides when they stop). :meth:`LocalWorkers.stop`
terminates, waits, then kills, so nothing is left behind. Under ``python -m
scoop`` they are forks of the run's fork server (:mod:`scoop_core.fork_server`)
where it can start them, fresh interpreters otherwise.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from scoop_core import fork_server
from scoop_core.errors import LaunchError
from scoop_core.fork_server import LocalProcess, wait_exit
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import LauncherPlugin

log = logging.getLogger("scoop.launcher")


class LocalWorkers(WorkerGroup):
    def __init__(self, processes: dict[str, LocalProcess]) -> None:
        self.processes = processes

    def poll(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.processes.items()}

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Start ``spec`` on this machine in place of the worker ``dead``."""
        self.processes[spec.name] = _start(spec)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def wait(self, names: Collection[str], timeout: float) -> None:
        """Return once the workers ``names`` have all exited, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for name in names:
            process = self.processes.get(name)
            if process is not None:
                wait_exit(process, max(0.0, deadline - time.monotonic()))

    def stop(self, grace: float) -> None:
        alive = [p for p in self.processes.values() if p.poll() is None]
        for p in stop_processes(alive, grace):
            log.warning("worker pid %d did not stop within %.1f s; killed it", p.pid, grace)


def stop_processes(processes: Sequence[LocalProcess], grace: float) -> list[LocalProcess]:
    """Terminate ``processes``, give them ``grace`` seconds in all, then kill
    the ones still running; return those that had to be killed.

    The supervisor of a remote host stops its workers the same way.
    """
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + grace
    killed = []
    for p in processes:
        if wait_exit(p, max(0.0, deadline - time.monotonic())) is None:
            p.kill()
            p.wait()
            killed.append(p)
    return killed


class LocalLauncher(Launcher):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def start(self, workers: Sequence[WorkerSpec]) -> LocalWorkers:
        processes: dict[str, LocalProcess] = {}
        try:
            for spec in workers:
                processes[spec.name] = _start(spec)
        except LaunchError:
            LocalWorkers(processes).stop(2.0)
            raise
        return LocalWorkers(processes)


def _start(spec: WorkerSpec) -> LocalProcess:
    server = fork_server.current()
    if server is not None and server.can_start(spec.argv, spec.env):
        try:
            return server.start(spec.argv, spec.env, spec.cwd)
        except OSError as exc:
            log.info("%s starts as a fresh interpreter: %s", spec.name, exc)
    try:
        return subprocess.Popen(list(spec.argv), env={**os.environ, **spec.env}, cwd=spec.cwd)
    except OSError as exc:
        raise LaunchError(f"cannot start worker {spec.argv[0]!r} on this machine: {exc}") from exc


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LauncherPlugin("local", LocalLauncher, "worker processes on this machine"),)
