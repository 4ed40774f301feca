"""The built-in ``local`` launcher: worker processes on this machine.

Workers inherit the launcher's terminal (their output reaches it directly)
and its process group (so a Ctrl-C typed in the terminal reaches them, and
they ignore it: the launcher decides when they stop). :meth:`LocalWorkers.stop`
terminates, waits, then kills, so nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scoop_core.errors import LaunchError
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import LauncherPlugin

log = logging.getLogger("scoop.launcher")


class LocalWorkers(WorkerGroup):
    def __init__(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        self.processes = processes

    def poll(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.processes.items()}

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Start ``spec`` on this machine in place of the worker ``dead``."""
        self.processes[spec.name] = _start(spec)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def stop(self, grace: float) -> None:
        alive = [p for p in self.processes.values() if p.poll() is None]
        for p in stop_processes(alive, grace):
            log.warning("worker pid %d did not stop within %.1f s; killed it", p.pid, grace)


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], grace: float
) -> list[subprocess.Popen[bytes]]:
    """Terminate ``processes``, give them ``grace`` seconds in all, then kill
    the ones still running; return those that had to be killed.

    The supervisor of a remote host stops its workers the same way.
    """
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + grace
    killed = []
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(p)
    return killed


class LocalLauncher(Launcher):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def start(self, workers: Sequence[WorkerSpec]) -> LocalWorkers:
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for spec in workers:
                processes[spec.name] = _start(spec)
        except LaunchError:
            LocalWorkers(processes).stop(2.0)
            raise
        return LocalWorkers(processes)


def _start(spec: WorkerSpec) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(list(spec.argv), env={**os.environ, **spec.env}, cwd=spec.cwd)
    except OSError as exc:
        raise LaunchError(f"cannot start worker {spec.argv[0]!r} on this machine: {exc}") from exc


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LauncherPlugin("local", LocalLauncher, "worker processes on this machine"),)
