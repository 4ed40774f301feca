"""Workers on another host: one supervisor process per host, and its handle here.

Every launcher that starts workers elsewhere (ssh, and the schedulers' own
remote start: ``srun``, ``qrsh -inherit``, ``pbsdsh``) runs the same thing
on each host, once: ``python -m scoop_core.host_supervisor``. That supervisor

- reads one JSON line from stdin: the workers to start (name, argv,
  environment, working directory). The run's key is in the environments,
  so it travels through the launcher's channel, never on a command line;
- before that plan, may be sent files (a line ``files {...}`` naming them
  and their sizes, then their bytes): the program and the files it needs,
  for a host that does not see them where they are on the launcher's
  machine. It puts them in a new private directory in the host's
  temporary directory (mode 0700, a unique name), says where on a line
  ``@@scoop-files DIRECTORY``, points its workers there (see
  :meth:`_Files.relocate`), and removes the directory when it exits,
  however it exits (SIGKILL aside);
- makes itself a process group leader, so the host's workers form one
  group, and starts them (their ``_SCOOP_PARENT_PID`` is the supervisor:
  they exit if it dies; on Linux the kernel kills them too, see
  :func:`_die_with_supervisor`);
- passes their output on to its own stdout and stderr a whole line at a
  time (what a ``--prolog`` writes in pieces, before Python, included),
  which the launcher forwards to the user's terminal, each line prefixed
  by the host;
- writes a line ``@@scoop-exit NAME STATUS`` when a worker exits, so the
  launcher knows at once (a lost worker's futures run elsewhere at once),
  after a line ``@@scoop-stderr NAME ["LINE", ...]``: its last lines on
  stderr, which the launcher shows if the worker could not start;
- on the line ``start WORKER`` (one worker of the plan's form, as JSON)
  starts that worker too: the launcher's replacement for one that died;
- on the line ``stop GRACE`` terminates them (SIGTERM, then SIGKILL after
  GRACE seconds); when stdin closes (the launcher or its connection is
  gone), when its stdout breaks (the same: the launcher reads it), or on
  SIGTERM/SIGHUP/SIGINT, kills them at once. It exits once it
  is stopping and its last worker has exited, so nothing of the run
  outlives it on the host; until then it stays, even with no worker left,
  for the launcher may send replacements.

:class:`RemoteHost` is the launcher's side of one such supervisor, over any
byte streams (an SSH channel, a subprocess's pipes).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from scoop_core.errors import LaunchError
from scoop_core.interfaces import WorkerGroup, WorkerSpec
from scoop_core.local_launcher import ForwardedLines, stop_processes

log = logging.getLogger("scoop.launcher")

EXIT_MARK = "@@scoop-exit "
"""Starts a supervisor's line that reports a worker's exit status."""

TAIL_MARK = "@@scoop-stderr "
"""Starts a supervisor's line that gives a worker's last lines on stderr (JSON), before its exit."""

FILES_MARK = "@@scoop-files "
"""Starts the line a supervisor writes once it holds the files it was sent: their directory."""

UPLOAD_PREFIX = "scoop-upload-"
"""The name of a supervisor's directory of sent files starts with this."""

MODULE = "scoop_core.host_supervisor"


def _worker(spec: WorkerSpec) -> dict[str, Any]:
    return {"name": spec.name, "argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd}


def plan(specs: Sequence[WorkerSpec]) -> bytes:
    """The line a supervisor reads first: the workers it starts."""
    return json.dumps({"workers": [_worker(s) for s in specs]}).encode() + b"\n"


def command(python: str = "python3") -> list[str]:
    """The command that starts a supervisor on a host."""
    return [python, "-m", MODULE]


def sha256(path: str) -> str:
    """The SHA-256 of a file's content, in hex: how a launcher and a host
    tell whether they hold the same file at a path."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# -- on the host ----------------------------------------------------------------


def look(request: str) -> str:
    """What this host sees of the paths a launcher asks about, before it
    starts anything: ``request`` is a JSON list of ``{"path": ...}`` (a
    directory) or ``{"path": ..., "size": ..., "sha256": ...}`` (a file as
    the launcher has it); the answer is a JSON list saying for each
    ``"same"`` (readable here, and for a file with the same content),
    ``"missing"`` (absent or unreadable) or ``"differs"`` (another content:
    a stale copy). The content is read only when the sizes agree."""
    return json.dumps([_seen(wanted) for wanted in json.loads(request or "[]")])


def _seen(wanted: dict[str, Any]) -> str:
    path = str(wanted["path"])
    if "sha256" not in wanted:
        return "same" if os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK) else "missing"
    try:
        if not os.path.isfile(path):
            return "missing"
        if os.path.getsize(path) != wanted["size"]:
            return "differs"
        return "same" if sha256(path) == wanted["sha256"] else "differs"
    except OSError:
        return "missing"


class _Files:
    """The files a launcher sent, in their private directory, and where they stood there."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.moved: dict[str, str] = {}
        """Each file's path on the launcher's machine -> its path here."""
        self.places: set[str] = set()
        """The directories the files came from, on the launcher's machine."""

    def receive(self, header: bytes, stream: IO[bytes]) -> None:
        """Take the files that ``header`` (a ``files`` line's JSON) announces from ``stream``."""
        wanted = json.loads(header)["files"]
        self.directory = tempfile.mkdtemp(prefix=UPLOAD_PREFIX)
        for f in wanted:
            origin = str(f["path"])
            target = os.path.join(self.directory, os.path.basename(origin))
            left = int(f["size"])
            with open(target, "wb") as out:
                while left:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        raise EOFError(f"the launcher's channel closed while sending {origin}")
                    out.write(chunk)
                    left -= len(chunk)
            os.chmod(target, int(f.get("mode", 0o600)) & 0o700)
            self.moved[origin] = target
            self.places.add(os.path.dirname(origin))

    def relocate(self, w: dict[str, Any]) -> dict[str, Any]:
        """A worker of the plan, pointed at the files sent here: its program
        (``_SCOOP_PROGRAM``, ``sys.argv[0]``, and any argument that names a
        sent file), its directory when it had none or had the directory of a
        sent file, and ``PYTHONPATH``, which starts with the files' directory
        so that modules sent beside the program import."""
        if self.directory is None:
            return w
        env = dict(w["env"])
        program = env.get("_SCOOP_PROGRAM", "")
        if program in self.moved:
            env["_SCOOP_PROGRAM"] = self.moved[program]
            argv = json.loads(env.get("_SCOOP_ARGV") or "[]")
            env["_SCOOP_ARGV"] = json.dumps([self.moved[program], *argv[1:]])
        path = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join([self.directory, *([path] if path else [])])
        cwd = w.get("cwd") or ""
        return {
            **w,
            "argv": [self.moved.get(a, a) for a in w["argv"]],
            "env": env,
            "cwd": self.directory if not cwd or cwd in self.places else cwd,
        }

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_supervisor() -> Callable[[], None] | None:
    """On Linux, what a worker runs between fork and exec so that the kernel
    kills it (SIGKILL) when the supervisor's thread that started it ends;
    None elsewhere.

    The supervisor kills its workers itself when it stops, but only while
    it runs Python: one that dies on an error, on SIGKILL, or while the
    interpreter shuts its threads down would leave them running. Workers
    are started by the main thread (which lives as long as the process) or
    by the thread reading stdin (which ends only after stdin's end has
    killed every worker), so "the thread ends" means "the supervisor ends"."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here, in the supervisor: the child, forked from a process
    # with threads, runs nothing that might take a lock another thread held.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The supervisor may have died between fork and prctl: then nothing
        # would send the signal, and the child has been reparented.
        if os.getppid() != parent:
            os._exit(255)

    return in_child


class _Supervisor:
    def __init__(self, workers: list[dict[str, Any]], files: _Files) -> None:
        self.workers = workers
        self.files = files
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # Each worker's stdout and stderr, as they are passed on.
        self.output_of: dict[str, tuple[ForwardedLines, ForwardedLines]] = {}
        # Every line written to our stdout and stderr is written whole under it.
        self.output = threading.Lock()
        # Reentrant: the signal handler stops the workers from the main
        # thread, which may hold it (in watch) at that moment.
        self.lock = threading.RLock()
        self.stopping = False
        self.before_exec = _die_with_supervisor()

    def start(self) -> None:
        for w in self.workers:
            self.add(w)

    def add(self, w: dict[str, Any]) -> None:
        """Start one worker (unless stopping: then it is reported as never run)."""
        w = self.files.relocate(w)
        env = {**os.environ, **w["env"], "_SCOOP_PARENT_PID": str(os.getpid())}
        with self.lock:
            if not self.stopping:
                try:
                    p = subprocess.Popen(
                        w["argv"],
                        env=env,
                        cwd=w.get("cwd") or None,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        preexec_fn=self.before_exec,
                    )
                    assert p.stdout is not None and p.stderr is not None
                    self.output_of[w["name"]] = (
                        ForwardedLines(p.stdout, self.write_out),
                        ForwardedLines(p.stderr, self.write_err),
                    )
                    self.procs[w["name"]] = p
                    return
                except OSError as exc:
                    why = f"cannot start {w['name']} ({w['argv'][0]}): {exc}"
                    self.write_err(f"{why}\n")
                    self.report(w["name"], 127, [why])
                    return
        self.report(w["name"], 127)

    def _write(self, fd: int, text: str) -> None:
        data = text.encode(errors="replace")
        with self.output:
            while data:
                data = data[os.write(fd, data) :]

    def write_out(self, text: str) -> None:
        """Write whole lines to stdout, which only the launcher reads."""
        try:
            self._write(1, text)
        except OSError:
            # The launcher is gone, even if stdin's end has not been read
            # yet. An error here must not end the supervisor before it has
            # killed the workers.
            self.stop(0.0)

    def write_err(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self._write(2, text)

    def report(self, name: str, status: int, lines: list[str] | None = None) -> None:
        """Say that worker ``name`` exited with ``status``, after its last
        lines on stderr (``lines``, or those read from it). Its output
        is passed on first, to its last line."""
        if name in self.output_of:
            stdout, stderr = self.output_of[name]
            stdout.last_lines()
            lines = stderr.last_lines() if lines is None else lines
        tail = f"{TAIL_MARK}{name} {json.dumps(lines)}\n" if lines else ""
        self.write_out(f"{tail}{EXIT_MARK}{name} {status}\n")

    def stop(self, grace: float) -> None:
        with self.lock:
            self.stopping = True
            alive = [p for p in self.procs.values() if p.poll() is None]
        stop_processes(alive, grace)

    def watch(self) -> None:
        """Report each exit; return once stopping and every worker has exited."""
        reported: set[str] = set()
        while True:
            with self.lock:
                procs = list(self.procs.items())
                over = self.stopping
            running = False
            for name, p in procs:
                if name in reported:
                    continue
                status = p.poll()
                if status is None:
                    running = True
                else:
                    reported.add(name)
                    self.report(name, status)
            if over and not running:
                return
            time.sleep(0.05)  # polling our own children


def _listen(sup: _Supervisor) -> None:
    """Commands from the launcher; EOF means it is gone."""
    for raw in sys.stdin.buffer:
        command, _, rest = raw.decode(errors="replace").strip().partition(" ")
        if command == "stop":
            grace = float(rest) if rest else 3.0
            threading.Thread(target=sup.stop, args=(grace,), daemon=True).start()
        elif command == "start":
            sup.add(json.loads(rest))
    sup.stop(0.0)


def supervise() -> int:
    """``python -m scoop_core.host_supervisor``: run this host's workers (see the module docstring)."""
    os.environ.pop("_SCOOP_KEY", None)
    with contextlib.suppress(OSError):  # already a group leader (started with setsid)
        os.setsid()
    files = _Files()
    sup: _Supervisor | None = None

    def on_signal(signum: int, frame: object) -> None:
        if sup is not None:
            sup.stop(0.0)
        files.remove()
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    stdin = sys.stdin.buffer
    try:
        line = stdin.readline()
        if line.startswith(b"files "):
            try:
                files.receive(line[len(b"files ") :], stdin)
            except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
                print(
                    f"{MODULE}: cannot keep the files sent for this run in "
                    f"{tempfile.gettempdir()}: {exc}",
                    file=sys.stderr,
                )
                return 2
            os.write(1, f"{FILES_MARK}{files.directory}\n".encode())
            line = stdin.readline()
        try:
            workers = json.loads(line)["workers"]
        except (ValueError, KeyError, TypeError):
            print(
                f"{MODULE}: stdin did not start with the launcher's JSON plan; this command is "
                "run by scoop launchers, not by hand",
                file=sys.stderr,
            )
            return 2
        sup = _Supervisor(workers, files)
        try:
            sup.start()
            threading.Thread(target=_listen, args=(sup,), daemon=True).start()
            sup.watch()
        finally:
            # Whatever ends the supervisor, none of its workers outlives it (after
            # a normal end, they have all exited already).
            sup.stop(0.0)
        return 0
    finally:
        files.remove()


# -- on the launcher's side --------------------------------------------------------------


class RemoteHost:
    """One host's supervisor, seen from the launcher.

    ``stdin`` is written to (the plan, then commands) and closed to kill;
    ``stdout`` and ``stderr`` are read by two threads that forward every
    line to this process's own, prefixed ``[label] ``, and pick out the exit
    reports. ``kill`` ends the connection itself (the SSH channel, the
    ``srun`` process) if the supervisor does not go on its own."""

    def __init__(
        self,
        label: str,
        specs: Sequence[WorkerSpec],
        stdin: IO[bytes],
        stdout: Iterable[bytes],
        stderr: Iterable[bytes] | None,
        kill: Callable[[], None],
    ) -> None:
        self.label = label
        # A host that runs only the run's root program: its output is the
        # program's own, and passes through as it is.
        self.prefix = "" if [s.name for s in specs] == ["root"] else f"[{label}] "
        self.names = [s.name for s in specs]
        self.statuses: dict[str, int | None] = dict.fromkeys(self.names)
        self.tails: dict[str, list[str]] = {}  # each worker's last lines on stderr, as reported
        self._stdin = stdin
        self._kill = kill
        self._ended = threading.Event()
        self._threads = [
            threading.Thread(target=self._forward, args=(stdout, sys.stdout, True), daemon=True)
        ]
        if stderr is not None:
            self._threads.append(
                threading.Thread(
                    target=self._forward, args=(stderr, sys.stderr, False), daemon=True
                )
            )
        for t in self._threads:
            t.start()
        try:
            stdin.write(plan(specs))
            stdin.flush()
        except OSError as exc:
            self.lost(f"could not send the workers' plan: {exc}")

    def _forward(self, lines: Iterable[bytes], out: IO[str], reports: bool) -> None:
        try:
            for raw in lines:
                text = raw.decode(errors="replace").rstrip("\n")
                if reports and text.startswith(TAIL_MARK):
                    name, _, said = text[len(TAIL_MARK) :].partition(" ")
                    with contextlib.suppress(ValueError, TypeError):
                        self.tails[name] = [str(line) for line in json.loads(said)]
                    continue
                if reports and text.startswith(EXIT_MARK):
                    name, _, status = text[len(EXIT_MARK) :].rpartition(" ")
                    if name in self.statuses:
                        self.statuses[name] = int(status) if status.lstrip("-").isdigit() else 1
                    continue
                out.write(f"{self.prefix}{text}\n")
                out.flush()
        except (OSError, ValueError):
            pass
        finally:
            if reports:
                self.lost("its connection closed")

    def lost(self, why: str) -> None:
        """The supervisor is gone: every worker not reported yet counts as dead."""
        if self._ended.is_set():
            return
        self._ended.set()
        missing = [n for n, s in self.statuses.items() if s is None]
        for name in missing:
            self.statuses[name] = 255
        if missing:
            log.warning("%s: %s; counting its %d worker(s) as gone", self.label, why, len(missing))

    def poll(self) -> dict[str, int | None]:
        return dict(self.statuses)

    def last_lines(self, name: str) -> list[str]:
        """The last lines worker ``name`` wrote on stderr, as its supervisor
        reported them with its exit."""
        return list(self.tails.get(name, ()))

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Have the supervisor start ``spec`` in place of the worker ``dead``."""
        self.statuses[spec.name] = None
        # Checked once the name is in: lost() sets _ended before it marks the
        # missing workers, so either it marks this one or this sees it ended.
        if self._ended.is_set():
            del self.statuses[spec.name]
            raise LaunchError(
                f"{self.label}: cannot start {spec.name}: the host's supervisor is gone"
            )
        try:
            self._stdin.write(f"start {json.dumps(_worker(spec))}\n".encode())
            self._stdin.flush()
        except (OSError, ValueError) as exc:
            del self.statuses[spec.name]
            raise LaunchError(f"{self.label}: cannot start {spec.name}: {exc}") from exc

    def stop(self, grace: float) -> None:
        """Terminate the workers, wait ``grace`` seconds, then cut the connection."""
        if not self._ended.is_set():
            try:
                self._stdin.write(f"stop {grace}\n".encode())
                self._stdin.flush()
            except (OSError, ValueError):
                pass
            deadline = time.monotonic() + grace + 2.0
            while time.monotonic() < deadline and not self._ended.is_set():
                if all(s is not None for s in self.statuses.values()):
                    break
                time.sleep(0.02)  # waiting for the supervisor's reports
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        self._kill()
        for t in self._threads:
            t.join(2.0)


class HostGroup(WorkerGroup):
    """The workers of several hosts (and maybe this one's) as one group."""

    def __init__(self, parts: Sequence[RemoteHost | WorkerGroup]) -> None:
        self.parts = list(parts)

    def poll(self) -> dict[str, int | None]:
        statuses: dict[str, int | None] = {}
        for part in self.parts:
            statuses.update(part.poll())
        return statuses

    def replace(self, dead: str, spec: WorkerSpec) -> None:
        """Start ``spec`` on the host where the worker ``dead`` ran
        (NotImplementedError if what started it there cannot start workers later)."""
        part = next((p for p in self.parts if dead in p.poll()), None)
        if part is None:
            raise LaunchError(f"cannot start {spec.name}: no host of this run ran {dead}")
        part.replace(dead, spec)

    def last_lines(self, name: str) -> list[str] | None:
        """The last lines worker ``name`` wrote on stderr, where its host
        keeps them (None where they are not kept)."""
        for part in self.parts:
            if name in part.poll():
                tail = getattr(part, "last_lines", None)
                return tail(name) if tail is not None else None
        return None

    def stop(self, grace: float) -> None:
        threads = [threading.Thread(target=p.stop, args=(grace,)) for p in self.parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


if __name__ == "__main__":
    status = supervise()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the thread reading stdin may hold its lock, and the
    # interpreter's shutdown would abort on it.
    os._exit(status)
