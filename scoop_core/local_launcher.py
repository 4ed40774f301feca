"""The built-in ``local`` launcher: worker processes on this machine.

Workers inherit the launcher's process group (so a Ctrl-C typed in the
terminal reaches them, and they ignore it: the launcher decides when they
stop) and its stdout. :meth:`LocalWorkers.stop` terminates, waits, then
kills, so nothing is left behind. Under ``python -m scoop`` they are forks
of the run's fork server (:mod:`scoop_core.fork_server`) where it can start
them, fresh interpreters otherwise.

A fresh interpreter's stderr is a pipe that the launcher reads (see
:class:`ForwardedLines`): what runs before Python (a ``--prolog``, a shell
saying a command is not found) writes there unbuffered, in pieces, and
would otherwise cut the launcher's log records and the other workers'
lines in the middle; and a worker that could not start is reported with
its last lines.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import IO, Any

from scoop_core import fork_server
from scoop_core.errors import LaunchError
from scoop_core.fork_server import LocalProcess, wait_exit
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import LauncherPlugin

log = logging.getLogger("scoop.launcher")

TAIL_LINES = 5
"""How many of a worker's last lines on stderr are kept, for the report of
a worker that could not start."""

DRAIN_SECONDS = 1.0
"""How long, once a worker has exited, its last lines may take to be read
(longer only if a process it left behind holds its stderr open)."""


def to_stderr(line: str) -> None:
    """Write ``line`` (with its end) to this process's stderr in one write."""
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no terminal any more: the lines are still kept


class ForwardedLines:
    """Forwards a stream of lines with ``write`` (to this process's stderr
    by default), each whole line at once, and keeps the last
    :data:`TAIL_LINES` of them.

    The launcher's log records go to the same stderr, each in one write as
    well, so nothing is ever written in the middle of another's line. A
    line is written as soon as it ends; an unfinished last line when the
    stream closes is written with its end added."""

    def __init__(self, stream: IO[bytes], write: Callable[[str], None] = to_stderr) -> None:
        self.write = write
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._thread = threading.Thread(
            target=self._forward, args=(stream,), name="scoop-stderr", daemon=True
        )
        self._thread.start()

    def _forward(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                text = raw.decode(errors="replace").rstrip("\r\n")
                self.tail.append(text)
                self.write(f"{text}\n")

    def last_lines(self, timeout: float = DRAIN_SECONDS) -> list[str]:
        """The last lines, once the stream has closed (or ``timeout`` seconds)."""
        self._thread.join(timeout)
        return list(self.tail)


class LocalWorkers(WorkerGroup):
    def __init__(
        self, processes: dict[str, LocalProcess], stderr: dict[str, ForwardedLines] | None = None
    ) -> None:
        self.processes = processes
        # Of the workers whose stderr this launcher reads (not the fork server's forks).
        self.stderr = stderr if stderr is not None else {}

    def poll(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.processes.items()}

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Start ``spec`` on this machine in place of the worker ``dead``."""
        self.processes[spec.name] = _start(spec, self.stderr)

    def last_lines(self, name: str) -> list[str] | None:
        """The last lines worker ``name`` wrote on stderr, once it has exited;
        None for a fork of the fork server, whose stderr is the terminal's."""
        lines = self.stderr.get(name)
        return lines.last_lines() if lines is not None else None

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
        stderr: dict[str, ForwardedLines] = {}
        try:
            for spec in workers:
                processes[spec.name] = _start(spec, stderr)
        except LaunchError:
            LocalWorkers(processes, stderr).stop(2.0)
            raise
        return LocalWorkers(processes, stderr)


def _start(spec: WorkerSpec, stderr: dict[str, ForwardedLines]) -> LocalProcess:
    """Start ``spec``; a fresh interpreter's stderr is read into ``stderr[spec.name]``."""
    server = fork_server.current()
    if server is not None and server.can_start(spec.argv, spec.env):
        try:
            return server.start(spec.argv, spec.env, spec.cwd)
        except OSError as exc:
            log.info("%s starts as a fresh interpreter: %s", spec.name, exc)
    try:
        process = subprocess.Popen(
            list(spec.argv), env={**os.environ, **spec.env}, cwd=spec.cwd, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise LaunchError(f"cannot start worker {spec.argv[0]!r} on this machine: {exc}") from exc
    assert process.stderr is not None
    stderr[spec.name] = ForwardedLines(process.stderr)
    return process


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LauncherPlugin("local", LocalLauncher, "worker processes on this machine"),)
