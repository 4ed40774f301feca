"""The ``torque`` launcher: each node's supervisor started with ``pbsdsh`` (or ``pbs_tmrsh``).

Torque and PBS give a job its nodes in ``$PBS_NODEFILE``, one line per slot
(a node with 4 slots is listed 4 times), and the total in ``$PBS_NP``.
``pbsdsh -h NODE cmd`` (Torque, PBS Pro) and ``pbs_tmrsh NODE cmd`` (PBS
Pro) start a task on a node through the Task Manager, so it is accounted to
the job, obeys its limits and dies with it.

Neither passes stdin to the task, and the task's output goes to the job's
output file, so the plan cannot travel down a pipe as it does through
``srun``. Instead (see :mod:`scoop_launcher_torque.relay`), for each node:

1. the launcher listens on a fresh port (every interface) and writes a
   *ticket* -- its host name, that port and a one-time token -- to a file
   created with mode 0600 in ``ticket_dir`` (default ``~/.scoop/tickets``,
   which the nodes share, as they share the home directory), a directory
   of the user's with mode 0700, as is ``~/.scoop``;
2. ``pbsdsh -h NODE -o python -m scoop_launcher_torque.relay TICKET`` starts
   the relay: only the ticket's *path* is on a command line;
3. the relay reads and deletes the ticket (only a private file of the
   user's: see the relay), connects back twice presenting the token, and
   becomes the node's supervisor with those connections as its stdin/stdout
   and stderr. The launcher serves every connection to its port at once: one
   that does not present the token within a few seconds is dropped, and an
   idle one never holds up the relay's;
4. the launcher sends the plan (with the run's key) over the connection.
   Closing it, or the launcher dying, ends the supervisor's stdin: it kills
   its workers, as over ``srun``.

Like ``srun``'s I/O, the connection is not encrypted: the plan crosses the
cluster's network in clear, as the run's messages do.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import os
import secrets
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from scoop_core.errors import ConfigError
from scoop_core.host_supervisor import RemoteHost
from scoop_core.hosts import Host
from scoop_core.interfaces import WorkerSpec
from scoop_core.run_keys import private_dir
from scoop_core.scheduler_launcher import (
    HostStart,
    SchedulerLauncher,
    check_slot_count,
    end_process,
    read_host_file,
    slots_per_host,
)
from scoop_launcher_torque.relay import STREAMS

__all__ = [
    "REMOTE_STARTS",
    "RelayStart",
    "TorqueLauncher",
    "allocation_from_env",
    "parse_nodefile",
]

log = logging.getLogger("scoop.launcher")

RELAY = "scoop_launcher_torque.relay"

REMOTE_STARTS: dict[str, tuple[str, ...]] = {
    "auto": ("pbsdsh", "pbs_tmrsh"),
    "pbsdsh": ("pbsdsh",),
    "pbs_tmrsh": ("pbs_tmrsh",),
}
"""The values of the ``remote_start`` setting, and the commands each tries in turn."""

_HELLO_TIMEOUT = 5.0
"""Seconds a connection to the launcher's port has to present the ticket's token."""
_HELLO_MAX = 256
"""Bytes of a hello line (token, space, stream name, newline) at most."""
_MAX_PENDING = 64
"""Connections waiting to say hello at once; past that, the oldest is dropped."""
_TAIL_LINES = 20


def parse_nodefile(text: str, path: str) -> list[Host]:
    """The nodes of a ``$PBS_NODEFILE``'s ``text`` with their slots: a node
    listed once per slot gets the number of its lines; first-seen order.

    SCOOP's hostfile forms (``node 4``, ``node workers=4``) count as that
    many lines. Raises :class:`~scoop_core.errors.LaunchError` naming
    ``path:line`` for a malformed line, or if no node is listed."""
    return slots_per_host(text, path, "PBS_NODEFILE")


def allocation_from_env(environ: Mapping[str, str]) -> list[Host] | None:
    """The nodes of the Torque/PBS job described by ``environ``, or None outside one.

    ``$PBS_NODEFILE`` gives them; without it, a job (``$PBS_JOBID``) with
    ``$PBS_NP`` slots runs them all on this machine. ``PBS_NP`` should be the
    sum of the file's slots: if not, a warning says so and the file wins."""
    path = environ.get("PBS_NODEFILE")
    np_text = environ.get("PBS_NP", "").strip()
    if not path:
        if environ.get("PBS_JOBID") and np_text.isdigit() and int(np_text) > 0:
            return [Host(user=None, name=socket.gethostname(), count=int(np_text))]
        return None
    hosts = parse_nodefile(read_host_file(path, "PBS_NODEFILE"), path)
    check_slot_count(hosts, path, "PBS_NODEFILE", "PBS_NP", np_text)
    return hosts


class TorqueLauncher(SchedulerLauncher):
    """Workers on the nodes of the Torque/PBS job this process runs in.

    Settings (section ``launcher.torque``): ``python``, ``start_timeout``,
    ``remote_start`` (``auto``, ``pbsdsh`` or ``pbs_tmrsh``), ``ticket_dir``
    and ``connect_host`` (see :mod:`scoop_launcher_torque`)."""

    scheduler = "Torque/PBS"
    plugin = "torque"
    outside_job_hint = "PBS_NODEFILE is not set"

    def __init__(
        self, settings: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings, environ)
        choice = str(self.settings.get("remote_start") or "auto")
        if choice not in REMOTE_STARTS:
            raise ConfigError(
                f"launcher.torque.remote_start: {choice!r} is not one of {', '.join(REMOTE_STARTS)}"
            )
        self.tools = REMOTE_STARTS[choice]
        home = self.environ.get("HOME") or os.path.expanduser("~")
        given = self.settings.get("ticket_dir")
        self.ticket_dir = str(given or os.path.join(home, ".scoop", "tickets"))
        # ~/.scoop too is the user's alone; a directory of their choosing, from itself down.
        self._private_from = self.ticket_dir if given else os.path.join(home, ".scoop")
        self.connect_host = str(self.settings.get("connect_host") or socket.gethostname())

    def read_allocation(self) -> list[Host] | None:
        return allocation_from_env(self.environ)

    def remote_argv(self, tool: str, node: str, command: Sequence[str]) -> list[str]:
        if os.path.basename(tool) == "pbs_tmrsh":
            return [tool, node, *command]
        # -o: the task's stdout comes back to pbsdsh, so the relay's errors reach us.
        return [tool, "-h", node, "-o", *command]

    def start_host(self, tool: str, node: str, specs: Sequence[WorkerSpec]) -> HostStart:
        private_dir(Path(self.ticket_dir), Path(self._private_from))
        return RelayStart(
            node,
            os.path.basename(tool),
            lambda command: self.remote_argv(tool, node, command),
            specs,
            python=self.python,
            ticket_dir=self.ticket_dir,
            connect_host=self.connect_host,
            environ=self.environ,
        )


class RelayStart(HostStart):
    """One node's supervisor reached through a relay that connects back (see the module docstring)."""

    def __init__(
        self,
        node: str,
        tool: str,
        make_argv: Callable[[list[str]], list[str]],
        specs: Sequence[WorkerSpec],
        *,
        python: str,
        ticket_dir: str,
        connect_host: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.tool = tool
        self.specs = list(specs)
        self.ready = threading.Event()
        self.settled = threading.Event()  # ready, or the command failed
        self.closing = threading.Event()
        self.closed = threading.Event()  # the supervisor's stdout reached its end
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.status: int | None = None
        self._token = secrets.token_hex(16)
        self._conns: dict[str, socket.socket] = {}
        self.listener = _listen()
        self.address = f"{connect_host}:{self.listener.getsockname()[1]}"
        try:
            self.ticket = _write_ticket(
                ticket_dir,
                {
                    "host": connect_host,
                    "port": self.listener.getsockname()[1],
                    "token": self._token,
                },
            )
        except BaseException:
            self.listener.close()
            raise
        try:
            self.proc = subprocess.Popen(
                make_argv([python, "-m", RELAY, self.ticket]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(environ) if environ is not None else None,
                start_new_session=True,
            )
        except OSError:
            self.listener.close()
            self._remove_ticket()
            raise
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._drains = [
            threading.Thread(target=self._drain, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for t in [
            *self._drains,
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]:
            t.start()

    # -- threads ------------------------------------------------------------------

    def _drain(self, stream: Iterable[bytes]) -> None:
        """The command's own output: kept for errors until the node connects, then logged."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if self.ready.is_set():
                log.debug("%s: %s: %s", self.node, self.tool, line)
            else:
                self.tail.append(line)

    def _watch(self) -> None:
        self.status = self.proc.wait()
        # pbsdsh may return once the task is spawned: only a failure settles the start.
        if self.status != 0:
            self.settled.set()

    def _accept(self) -> None:
        """Take the relay's two connections. Every connection is served at
        once (one selector for them all): one that sends nothing, or not the
        ticket's token, within :data:`_HELLO_TIMEOUT` is dropped, and never
        holds up the others -- anyone on the network can connect here."""
        pending: dict[socket.socket, _Hello] = {}
        with selectors.DefaultSelector() as selector:
            try:
                self.listener.setblocking(False)
                selector.register(self.listener, selectors.EVENT_READ)
                while not (self.settled.is_set() or self.closing.is_set()):
                    now = time.monotonic()
                    for conn, hello in list(pending.items()):
                        if now >= hello.deadline:
                            log.warning(
                                "%s: dropped a connection that sent no ticket within %g s",
                                self.node,
                                _HELLO_TIMEOUT,
                            )
                            self._drop(selector, pending, conn)
                    wait = min([0.2, *(h.deadline - now for h in pending.values())])
                    for key, _ in selector.select(max(wait, 0.0)):
                        if key.fileobj is self.listener:
                            self._take(selector, pending)
                        else:
                            self._read_hello(selector, pending, cast(socket.socket, key.fileobj))
            except OSError:
                pass  # the listener was closed: the start was aborted
            finally:
                for conn in list(pending):
                    self._drop(selector, pending, conn)
                self.listener.close()

    def _take(self, selector: selectors.BaseSelector, pending: dict[socket.socket, _Hello]) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):  # gone before we took it
            return
        if len(pending) >= _MAX_PENDING:
            # Connections held open to crowd the relay out: the oldest goes first.
            self._drop(selector, pending, next(iter(pending)))
        conn.setblocking(False)
        pending[conn] = _Hello(time.monotonic() + _HELLO_TIMEOUT)
        selector.register(conn, selectors.EVENT_READ)

    def _read_hello(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Hello],
        conn: socket.socket,
    ) -> None:
        """Read what ``conn`` sent of its hello line; once whole, keep the
        connection as the stream it names if it knows the token."""
        hello = pending[conn]
        try:
            # Up to the line's end and no further: what follows is the supervisor's.
            seen = conn.recv(_HELLO_MAX - len(hello.line), socket.MSG_PEEK)
            end = seen.find(b"\n")
            chunk = conn.recv(end + 1 if end >= 0 else len(seen))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(selector, pending, conn)
            return
        hello.line += chunk
        if not hello.line.endswith(b"\n") and len(hello.line) < _HELLO_MAX:
            return
        selector.unregister(conn)
        del pending[conn]
        stream = self._hello(bytes(hello.line))
        if stream is None or stream in self._conns:
            conn.close()
            return
        conn.setblocking(True)
        self._conns[stream] = conn
        if len(self._conns) == len(STREAMS):
            self._connected()

    @staticmethod
    def _drop(
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Hello],
        conn: socket.socket,
    ) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    def _hello(self, line: bytes) -> str | None:
        """The stream a hello ``line`` announces, if it knows the token."""
        token, _, stream = line.decode(errors="replace").strip().partition(" ")
        if not hmac.compare_digest(token.encode(), self._token.encode()) or stream not in STREAMS:
            log.warning("%s: dropped a connection that did not present the ticket", self.node)
            return None
        return stream

    def _connected(self) -> None:
        stdio, errors = (self._conns[s] for s in STREAMS)
        self.remote = RemoteHost(
            self.node,
            self.specs,
            cast(IO[bytes], _SendSide(stdio)),
            self._until_closed(stdio.makefile("rb")),
            errors.makefile("rb"),
            self._kill,
        )
        self._remove_ticket()
        self.ready.set()
        self.settled.set()

    def _until_closed(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from stream
        finally:
            self.closed.set()

    # -- HostStart -------------------------------------------------------------------

    def wait_started(self, deadline: float, timeout: float) -> str | None:
        self.settled.wait(max(0.0, deadline - time.monotonic()))
        if self.ready.is_set():
            return None
        if self.status is None or self.status == 0:
            why = (
                f"the node did not connect back to {self.address} within {timeout:g} s "
                f"(is {self.address} reachable from {self.node}, and {os.path.dirname(self.ticket)} "
                "shared with it?)"
            )
        else:
            for t in self._drains:
                t.join(5.0)
            why = f"{self.tool} exited with status {self.status} before the node connected back"
        output = " | ".join(line for line in self.tail if line.strip())
        why = f"{why}; its output: {output}" if output else f"{why} (it printed nothing)"
        return f"{why}; the node's own errors, if any, are in the job's error file"

    def abort(self) -> None:
        self.closing.set()
        if self.remote is not None:
            self.remote.stop(0.0)
            return
        with contextlib.suppress(OSError):
            self.listener.close()
        self._kill()

    def _kill(self) -> None:
        """The supervisor ends once its stdin has; then the connections and the
        command go. Anything still there after a few seconds is cut off."""
        started = self.remote is not None
        self.closed.wait(5.0 if started else 0.0)
        for conn in list(self._conns.values()):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        end_process(self.proc, wait=5.0 if started else 0.0)
        self._remove_ticket()

    def _remove_ticket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ticket)


@dataclass
class _Hello:
    """A connection's hello line as far as it has arrived, and when it must be whole."""

    deadline: float
    line: bytearray = field(default_factory=bytearray)


class _SendSide:
    """The writing half of a connection, as a file: closing it ends the
    supervisor's stdin (the connection stays open for its output)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> int:
        self.conn.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)


def _listen() -> socket.socket:
    """A listening socket on every interface (the nodes connect from elsewhere), any free port."""
    if socket.has_dualstack_ipv6():
        with contextlib.suppress(OSError):
            return socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", 0))


def _write_ticket(directory: str, ticket: Mapping[str, object]) -> str:
    """Write ``ticket`` to a new file only this user can read, in a directory
    only this user can use (:func:`~scoop_core.run_keys.private_dir`); its path."""
    private_dir(Path(directory))
    path = os.path.join(directory, f"scoop-{secrets.token_hex(8)}.ticket")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(ticket, fh)
    return path
