"""The user's running runs: a file per run in ``~/.scoop/runs/``, for ``scoop status``.

A run's launcher (or an embedding program's :class:`~scoop_core.Executor`)
writes ``RUN.json`` when its backend has started and removes it when the
run stops (:func:`register`, :func:`unregister`). ``scoop status`` lists
these files, and finds in one the address of a ZeroMQ run's broker and the
run's key, which nothing else keeps: a Redis run's key is in ``RUN.key``
beside it (see :mod:`scoop_core.run_keys`), and is not written twice.

A file holds the run's key and the transport's settings, so it is made as a
key file is (:func:`~scoop_core.run_keys.private_dir`: 0700 directories;
``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600) and read only through
:func:`~scoop_core.run_keys.read_private_file`, never through a link.

A launcher killed with SIGKILL leaves its file behind. Each file names the
launcher's pid with that process's start time and the kernel's boot id, so
a pid used again by another process is not taken for the launcher: a file
whose launcher is gone is stale, and :func:`running_runs` removes it. On a
home directory shared between machines, only the machine that wrote a file
can tell whether its launcher runs; the others list it as it is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoop_core import run_keys
from scoop_core.activity import boot_id
from scoop_core.errors import LaunchError

if TYPE_CHECKING:
    from scoop_core.run import Run

log = logging.getLogger("scoop.launcher")

SUFFIX = ".json"


@dataclass(frozen=True)
class RunEntry:
    """One running run, as its launcher registered it."""

    run_id: str
    transport: str
    """The transport plugin's name."""
    address: str
    """Where the run's processes reach it: the broker's hub, or the store."""
    host: str
    """The launcher's machine."""
    pid: int
    """The launcher's process."""
    pid_started: int | None
    """The launcher's start time in clock ticks since boot (Linux), with :attr:`boot`:
    together with the pid, the launcher and no other process."""
    boot: str
    program: str
    workers: int
    started: float
    """When the run started (seconds since the epoch)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The transport's settings the run was started with (a Redis password, TLS files)."""
    key: str = ""
    """The run's key (hex), unless a key file holds it (a Redis run's ``RUN.key``)."""

    @property
    def here(self) -> bool:
        """Whether the launcher runs on this machine (only then can we tell if it is alive)."""
        return self.host == socket.gethostname() and self.boot == boot_id()

    def alive(self) -> bool:
        """Whether the launcher still runs (True for one on another machine: we cannot tell)."""
        if not self.here:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # another user's process: the pid was used again
        return self.pid_started is None or process_started(self.pid) == self.pid_started


def process_started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None where
    there is no ``/proc`` to tell (or no such process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields
    # are counted from the last ')'; starttime is field 22.
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def registry_dir() -> Path:
    """``~/.scoop/runs`` (not created)."""
    return run_keys.scoop_home() / "runs"


def entry_file(run_id: str) -> Path:
    return registry_dir() / f"{run_id}{SUFFIX}"


def register(run: Run) -> Path | None:
    """Register ``run``, whose backend has started; the file written, or
    None if it could not be (a warning says why: the run goes on, only
    ``scoop status`` will not find it)."""
    key_path = getattr(run.backend, "key_path", "")
    entry = RunEntry(
        run_id=run.run_id,
        transport=run.transport_name,
        address=run.address,
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_started=process_started(os.getpid()),
        boot=boot_id(),
        program=os.path.abspath(run.program) if run.program else "",
        workers=run.size,
        started=time.time(),
        settings=dict(run.transport_settings),
        key="" if key_path else run.key.hex(),
    )
    try:
        return _write(entry)
    except (LaunchError, OSError, TypeError, ValueError) as exc:
        log.warning("scoop status will not list run %s: %s", run.run_id, exc)
        return None


def _write(entry: RunEntry) -> Path | None:
    path = entry_file(entry.run_id)
    run_keys.private_dir(path.parent, run_keys.scoop_home())
    text = json.dumps(asdict(entry), sort_keys=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        other = _read(path)
        if other is not None and other.alive():
            log.warning(
                "scoop status will not list run %s: another running run (launcher pid %d on "
                "%s) has that id; give each run its own --run-id",
                entry.run_id,
                other.pid,
                other.host,
            )
            return None
        _remove_left(path)
        fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return path


def _remove_left(path: Path) -> None:
    """Remove a file a dead launcher of ours left at ``path``; refuse anything else."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise LaunchError(
            f"{path} is in the way of the run's registration and was not written by scoop "
            f"for you (a {'link' if stat.S_ISLNK(info.st_mode) else 'file'} of uid "
            f"{info.st_uid}); remove it after checking who made it"
        )
    path.unlink()


def unregister(path: Path | None) -> None:
    """Remove the file :func:`register` wrote (nothing if it wrote none)."""
    if path is None:
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


def _read(path: Path) -> RunEntry | None:
    """The run registered in ``path``; None (with a warning) if it is not a
    registration scoop wrote for this user."""
    try:
        fields = json.loads(run_keys.read_private_file(path, "a run's registration", follow=False))
        entry = RunEntry(**fields)
    except (ValueError, TypeError) as exc:
        log.warning("ignored %s: %s", path, exc)
        return None
    if entry_file(entry.run_id) != path:
        log.warning("ignored %s: it registers run %r", path, entry.run_id)
        return None
    return entry


def running_runs() -> list[RunEntry]:
    """This user's running runs, oldest first; the files of runs whose
    launcher is gone are removed."""
    try:
        paths = sorted(registry_dir().glob(f"*{SUFFIX}"))
    except OSError:
        return []
    runs = []
    for path in paths:
        entry = _read(path)
        if entry is None:
            continue
        if entry.alive():
            runs.append(entry)
        else:
            forget(entry)
    return sorted(runs, key=lambda e: e.started)


def find(run_id: str) -> RunEntry | None:
    """Run ``run_id`` of this user's, if registered, whether its launcher
    is alive or not (see :func:`forget`)."""
    if not run_id or os.sep in run_id or run_id.startswith("."):
        return None
    path = entry_file(run_id)
    return _read(path) if path.exists() else None


def forget(entry: RunEntry) -> None:
    """Remove the file of a run whose launcher is gone."""
    log.info(
        "removed the registration of run %s: its launcher (pid %d) is gone", entry.run_id, entry.pid
    )
    unregister(entry_file(entry.run_id))
