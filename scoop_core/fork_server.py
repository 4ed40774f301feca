"""A process that has imported the core once and forks the run's first local processes from it.

Each process of a run (the root, every worker) would otherwise be a fresh
interpreter importing the core, its transport and its serializer: about a
tenth of a second of CPU each, and on a machine with few cores a run of
``-n 2`` spends more time starting than doing a small program's work. The
launcher of ``python -m scoop`` forks one fork server once it has
configured the run and imported the core, the transport and the
serializer, which the server and its forks inherit; the server imports the
rest of what the run's processes need while the launcher starts the
broker, and the root and the workers are then forks of it, ready at once.
The server is a fork rather than a new interpreter, which would import
all that a second time: a few tens of milliseconds of CPU that a run on a
busy machine waits for.

Rules:

- The server is forked before the launcher has a thread, a socket but its
  line to the server, or anything of the user's imported, and it drops
  the launcher's log handlers (a ``--log`` file), so a fork of it is a
  clean process. It never returns into the launcher's code: it and its
  forks end by exiting. Its command line is the launcher's, which names
  the program. A forked process resets Ctrl-C to raise
  KeyboardInterrupt, takes the environment and the working directory it
  was asked for, and runs :func:`scoop_core.bootstrap.run` at the top of
  its own stack, which ends it as an interpreter ends (non-daemon threads
  waited for, atexit handlers run, output flushed) but for the freeing of
  every module, which only costs time (:func:`finish`).
- Every process it makes is the launcher's child, as if the launcher had
  started it: the launcher is a child subreaper (Linux
  ``PR_SET_CHILD_SUBREAPER``) and the server forks twice, so the process
  is handed to the launcher at once. The launcher waits for it, signals
  it and sees it end as it does for any child; the process watches the
  launcher as any process of the run does (:mod:`scoop_core.bootstrap`),
  so it dies with it.
- The server lives only while the run starts: the launcher closes the line
  once the root and the workers are started, and the server exits (as it
  does if the launcher is killed). The processes it forked wait for that
  before they start, so a run never has one process more than it would
  have without a server, and none is ever a child of the server. A worker
  started later to replace one
  that died is a fresh interpreter, as is a process that needs one:
  another Python, a prolog, or ``PYTHON*`` variables that only matter at
  an interpreter's start (``--pythonpath``). So is everything where the
  server cannot run (not Linux; a program that runs the command line in
  a process with threads) or failed.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Protocol

from scoop_core import log as scoop_log

log = logging.getLogger("scoop.launcher")

BOOTSTRAP = "scoop_core.bootstrap"

_ANSWER_TIMEOUT = 30.0
"""Seconds the launcher waits for the server to answer a request to start a process."""

_PR_SET_CHILD_SUBREAPER = 36


class LocalProcess(Protocol):
    """What launchers use of a process on this machine: a
    :class:`subprocess.Popen` or a :class:`ForkedProcess`."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ForkServer:
    """The launcher's end of a fork server."""

    def __init__(self) -> None:
        """Fork the server from this process, which has no thread yet."""
        ours, theirs = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the server's forks would write it again
        # Ctrl-C in the terminal reaches the whole process group; the
        # launcher decides when the run stops, so the server ignores it
        # from its first instant.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pid = os.fork()
        except OSError:
            signal.signal(signal.SIGINT, interrupt)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            _serve(theirs)
        signal.signal(signal.SIGINT, interrupt)
        theirs.close()
        self.proc = ForkedProcess(pid)
        ours.settimeout(_ANSWER_TIMEOUT)
        self._sock = ours
        self._answers = ours.makefile("rb")
        self._lock = threading.Lock()
        self._closed = False

    def preload(self, variables: Mapping[str, str]) -> None:
        """Have the server import the transport and serializer that
        ``variables`` (``_SCOOP_TRANSPORT``, ``_SCOOP_SERIALIZER``,
        ``_SCOOP_PLUGINS``...) name, before it forks anything."""
        with self._lock:
            self._send({"preload": dict(variables)})

    def can_start(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether ``argv`` (with ``env`` added to this process's environment)
        is a process of the run this server can fork instead."""
        return (
            not self._closed
            and len(argv) >= 4
            and tuple(argv[:3]) == (sys.executable, "-m", BOOTSTRAP)
            and not any(name.startswith("PYTHON") for name in env)
        )

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None
    ) -> ForkedProcess:
        """Fork ``python -m scoop_core.bootstrap ARGS`` from the server, with
        this process's environment plus ``env``, in ``cwd``. Raises OSError
        if the server cannot start it (the caller then starts it itself)."""
        request = {"args": list(argv[3:]), "env": {**os.environ, **env}, "cwd": cwd}
        with self._lock:
            if self._closed:
                raise OSError("the fork server is closed")
            try:
                self._send(request)
                answer = self._answers.readline()
            except OSError:
                answer = b""
            if not answer:
                self._closed = True
                raise OSError("the fork server did not answer")
        reply = json.loads(answer)
        if "pid" not in reply:
            raise OSError(f"the fork server could not start the process: {reply.get('error')}")
        return ForkedProcess(int(reply["pid"]))

    def close(self) -> None:
        """Close the line; the server exits."""
        with self._lock:
            self._closed = True
            self._answers.close()
            self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        if self.proc.poll() is None:
            # Stuck, in a plugin's import say: it holds nothing of the run's.
            self.proc.kill()
            self.proc.wait()

    def _send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")


class ForkedProcess:
    """A child of this process that a :class:`ForkServer` forked, with the
    part of :class:`subprocess.Popen` that launchers use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        status = wait_exit(self, timeout)
        if status is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
        return status

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        # Never once it has been waited for: the pid may be another process's by then.
        if self.poll() is None:
            os.kill(self.pid, signum)


def wait_exit(process: LocalProcess, timeout: float | None) -> int | None:
    """``process``'s exit status, or None after ``timeout`` seconds, known
    the moment it exits: ``Popen.wait`` polls, up to 50 ms late, and the
    end of a run waits for the launcher to notice that its processes ended."""
    status = process.poll()
    if status is not None:
        return status
    try:
        # Readable once the process has ended.
        ended = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3 or later
        if not isinstance(process, subprocess.Popen):
            raise
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout)
        return None
    try:
        exited, _, _ = select.select([ended], [], [], timeout)
    finally:
        os.close(ended)
    if not exited:
        return None
    # It has exited, and its status follows at once, except under a
    # tracer (strace), which sees the exit first: wait for that instant.
    if isinstance(process, ForkedProcess):
        return process._reap(0)
    return process.wait()


_current: ForkServer | None = None


def start() -> ForkServer | None:
    """Start this process's fork server (see :class:`ForkServer`); None
    where processes cannot be forked from one, or this process has a
    thread already (a program that runs the command line itself), whose
    locks a fork could copy held."""
    global _current
    if not (
        hasattr(os, "fork")
        and hasattr(os, "pidfd_open")
        and threading.active_count() == 1
        and _become_subreaper()
    ):
        return None
    try:
        _current = ForkServer()
    except OSError as exc:
        log.info("no fork server (%s): local processes start as fresh interpreters", exc)
        _current = None
    return _current


def current() -> ForkServer | None:
    """This process's fork server, if :func:`start` started one and it was not stopped."""
    return _current


def stop() -> None:
    """Stop this process's fork server, if any: processes start by exec from now on."""
    global _current
    server, _current = _current, None
    if server is not None:
        server.close()


def _become_subreaper() -> bool:
    """Make this process the parent of the processes its server forks
    (orphaned descendants come to it instead of to init)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def finish(code: int) -> NoReturn:
    """Exit with ``code`` once what the interpreter does at exit that anyone
    can see is done: non-daemon threads waited for, ``atexit`` handlers run
    (logging's flush among them), the standard streams flushed. The rest of
    an interpreter's exit, freeing every object of every module one by one,
    is skipped: it takes a process of a run tens of milliseconds of CPU,
    more than its start as a fork, and the run's end waits for it. Every
    message of the run is out by then: closing a runtime or a broker
    flushes its connection."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# -- the server ----------------------------------------------------------------


def _preload(variables: Mapping[str, str]) -> None:
    """Import the transport and serializer the run's processes use, so that
    every fork has them."""
    from scoop_core import bootstrap

    os.environ.update(variables)
    # A broken plugin is left for each process to meet and report as always.
    with contextlib.suppress(Exception):
        for record in bootstrap.run_plugins():
            resolve = getattr(record.factory, "resolve", None)
            if resolve is not None:
                resolve()
    for name in variables:
        os.environ.pop(name, None)


def serve(line: socket.socket) -> tuple[dict[str, Any], int] | None:
    """Answer the requests on ``line`` until it closes (then return None).
    In a process forked for a request, return that request and a pidfd of
    the server."""
    # Inherited by every fork: readable once the server has exited.
    server = os.pidfd_open(os.getpid())
    stream = line.makefile("rwb")
    for raw in stream:
        request = json.loads(raw)
        if "preload" in request:
            _preload(request["preload"])
            continue
        try:
            pid = _fork_twice()
        except OSError as exc:
            stream.write(json.dumps({"error": str(exc)}).encode() + b"\n")
            stream.flush()
            continue
        if pid == 0:
            stream.close()
            line.close()
            return dict(request), server
        stream.write(json.dumps({"pid": pid}).encode() + b"\n")
        stream.flush()
    return None


def _fork_twice() -> int:
    """Fork a process whose parent is the launcher, not the server: its pid
    here, 0 in it. The intermediate process exits at once, which hands its
    child to the launcher, the nearest subreaper."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        child = os.fork()
        if child == 0:
            os.close(write_end)
            return 0
        os.write(write_end, str(child).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(middle, 0)
    if not data:
        raise OSError("the forked process could not fork")
    return int(data)


def _serve(line: socket.socket) -> NoReturn:
    """The server's life, in the fork the launcher made; it never returns."""
    try:
        scoop_log.reset()
        # The rest of what every process of a run imports, imported once,
        # while the launcher starts the broker.
        from scoop_core import bootstrap, worker  # noqa: F401

        # All that is imported lives as long as the processes forked from
        # here: frozen, the garbage collector never walks it again (each
        # full collection in a root holding thousands of futures did), and
        # the forks' pages of it stay shared.
        gc.freeze()
        forked = serve(line)
        if forked is not None:
            _run_child(*forked)
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        os._exit(1)
    # Nothing to flush or clean up, and every fork waits for this exit.
    os._exit(0)


def _run_child(request: Mapping[str, Any], server: int) -> NoReturn:
    """In a fresh fork: wait for the server to exit (``server`` is its
    pidfd), then become the process the launcher asked for, and exit as
    it does (:func:`scoop_core.bootstrap.run`)."""
    from scoop_core import bootstrap

    select.select([server], [], [])
    os.close(server)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # as ``python -m`` started there would have it
    args = list(request["args"])
    sys.argv = [bootstrap.__file__, *args]
    bootstrap.run(args)
