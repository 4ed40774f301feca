"""Launchers that start workers through a scheduler's own remote start: srun, qrsh -inherit, pbsdsh.

Shared by the ``slurm``, ``sge`` and ``torque`` plugins, and by any
third-party scheduler launcher. A :class:`SchedulerLauncher` subclass says how
to read its allocation and how to run a command on one node; this module
does the rest, the same way for every scheduler:

1. **Route** every :class:`~scoop_core.interfaces.WorkerSpec` to a node of
   the allocation: by its name, or its short name (``node1`` for
   ``node1.cluster``); a local name (``localhost``, this machine's) goes to
   this machine's node. Hosts outside the allocation, which only an
   explicit ``--hosts``/``--hostfile`` can name, go to the ``local``
   launcher (this machine) or the ``ssh`` launcher (any other).
2. **Start** one supervisor (:mod:`scoop_core.host_supervisor`) per node, through the
   scheduler's command, so the workers live inside the job's limits and are
   killed with it. Each node's plan, with the run's key, goes to the
   supervisor's stdin (:class:`~scoop_core.host_supervisor.RemoteHost`), never on a
   command line: down the command's own stdin (``srun``, ``qrsh``), or over
   a connection the node opens back where the command passes none (the
   torque plugin's relay). Node names are the scheduler's, not network
   names, so a node is reached through the scheduler even when it is this
   machine.
3. **Wait** until each supervisor prints :data:`READY_MARK` (``python -m
   scoop_core.scheduler_launcher`` does, on stdout and stderr, once scoop
   is importable there and before it reads its plan), or its command exits,
   or ``start_timeout`` passes. Error output before the mark is the
   scheduler command's own: it is logged (INFO), not shown as the node's.
   A failure stops every other node and raises
   :class:`~scoop_core.errors.LaunchError` naming the node and the
   scheduler command's own error output.

If the scheduler's command is not on ``PATH``, a WARNING says so and the
``ssh`` launcher starts the workers instead (outside the job's limits).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from scoop_core.errors import ConfigError, LaunchError, UsageError
from scoop_core.host_supervisor import HostGroup, RemoteHost, supervise
from scoop_core.hosts import Host, is_local, parse_host, parse_hostfile
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.plugins.types import Setting

__all__ = [
    "COMMON_SETTINGS",
    "HostStart",
    "PipeStart",
    "READY_MARK",
    "SchedulerLauncher",
    "end_process",
    "read_host_file",
    "slots_per_host",
    "supervisor_command",
]

log = logging.getLogger("scoop.launcher")

READY_MARK = "@@scoop-ready"
"""The first line a supervisor started by a scheduler prints, on stdout and
on stderr: it runs, and reads its plan next."""

MODULE = "scoop_core.scheduler_launcher"

COMMON_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "python",
        str,
        "",
        "the Python interpreter that runs each node's supervisor; empty: the launcher's own "
        "(the nodes must share its file system)",
    ),
    Setting(
        "start_timeout",
        float,
        60.0,
        "seconds to wait for every node's supervisor to start before giving up",
    ),
)
"""Settings every scheduler launcher has, in its own section (``launcher.slurm``...)."""

# Error output kept per node for the LaunchError: the last few lines say why.
_TAIL_LINES = 20


def slots_per_host(text: str, path: str, variable: str) -> list[Host]:
    """The hosts of a scheduler's host file (``$PE_HOSTFILE``, ``$PBS_NODEFILE``),
    in first-seen order, each with its slots added up: a line with a count
    (``node1 4``, SGE's ``node1 4 all.q@node1 UNDEFINED``, SCOOP's
    ``node1 workers=4``) adds that many, a bare name (PBS lists a node once
    per slot) one.

    Raises :class:`LaunchError` naming ``$variable``, the file and line for a
    malformed line, or if no host is listed."""
    try:
        hosts = parse_hostfile(text, path)
    except UsageError as exc:
        raise LaunchError(f"${variable}: {exc}") from None
    slots: dict[str, int] = {}
    for host in hosts:
        slots[host.name] = slots.get(host.name, 0) + (host.count or 1)
    if not slots:
        raise LaunchError(f"the host file ${variable}={path} lists no host")
    return [Host(user=None, name=name, count=count) for name, count in slots.items()]


def check_slot_count(
    hosts: Sequence[Host], path: str, variable: str, count_variable: str, count: str
) -> None:
    """Warn if the job's slot count ``count`` (the text of ``$count_variable``)
    is not the sum of the slots the host file ``$variable`` lists: the host
    file wins, since it says where each slot is."""
    total = sum(h.count or 0 for h in hosts)
    if count.isdigit() and int(count) != total:
        log.warning(
            "$%s=%s lists %d slots but $%s is %s; following the host file",
            variable,
            path,
            total,
            count_variable,
            count,
        )


def read_host_file(path: str, variable: str) -> str:
    """The text of the host file ``$variable`` names; :class:`LaunchError` if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise LaunchError(f"cannot read the host file ${variable}={path}: {reason}") from None


def supervisor_command(python: str) -> list[str]:
    """The command a scheduler runs on a node: a supervisor that says when it is ready."""
    return [python, "-m", MODULE]


class HostStart(abc.ABC):
    """One node's supervisor while it starts, then its :class:`RemoteHost`."""

    node: str
    remote: RemoteHost | None = None

    @abc.abstractmethod
    def wait_started(self, deadline: float, timeout: float) -> str | None:
        """Wait until the supervisor runs (None) or cannot (the reason, with
        the scheduler command's error output); ``deadline`` is a
        :func:`time.monotonic` time, ``timeout`` its length, for messages."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop this node's workers and the scheduler command at once."""


class PipeStart(HostStart):
    """A supervisor run by a command that forwards stdin, stdout and stderr
    (``srun``, ``qrsh -inherit``): the plan goes down its stdin.

    The command runs in a session of its own, so a Ctrl-C typed at the
    terminal does not reach it: the launcher decides when workers stop."""

    def __init__(
        self,
        node: str,
        tool: str,
        argv: Sequence[str],
        specs: Sequence[WorkerSpec],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.tool = tool
        self.ready = threading.Event()
        # Set once the outcome is known: ready, or stdout closed (the command ended).
        self.settled = threading.Event()
        self.stderr_done = threading.Event()
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(environ) if environ is not None else None,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.remote = RemoteHost(
            node,
            specs,
            self.proc.stdin,
            self._stdout(self.proc.stdout),
            self._stderr(self.proc.stderr),
            self._kill,
        )

    def _stdout(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        """The supervisor's stdout. The ready mark settles the start; anything
        before it (a login shell's chatter) is the command's, as on stderr."""
        try:
            for raw in stream:
                if self.ready.is_set():
                    yield raw
                elif raw.strip() == READY_MARK.encode():
                    self.ready.set()
                    self.settled.set()
                else:
                    self._note(raw)
        finally:
            self.settled.set()

    def _stderr(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        """Error output. Until the supervisor's mark, it is the scheduler
        command's own (srun's notes and errors): logged, and kept for the
        LaunchError of a start that fails; from the mark on, it is the
        supervisor's and its workers', passed on."""
        try:
            marked = False
            for raw in stream:
                if marked:
                    yield raw
                elif raw.strip() == READY_MARK.encode():
                    marked = True
                else:
                    self._note(raw)
        finally:
            self.stderr_done.set()

    def _note(self, raw: bytes) -> None:
        """A line of the scheduler command's own: logged, and kept for errors."""
        line = raw.decode(errors="replace").rstrip()
        self.tail.append(line)
        log.info("%s: %s: %s", self.node, self.tool, line)

    def wait_started(self, deadline: float, timeout: float) -> str | None:
        self.settled.wait(max(0.0, deadline - time.monotonic()))
        if self.ready.is_set():
            return None
        if not self.settled.is_set():
            why = f"{self.tool} did not start the worker supervisor within {timeout:g} s"
        else:
            # The command ended: let its last error lines arrive.
            self.stderr_done.wait(5.0)
            try:
                status: int | None = self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                status = None
            ended = "ended" if status is None else f"exited with status {status}"
            why = f"{self.tool} {ended} before the worker supervisor started"
        output = " | ".join(line for line in self.tail if line.strip())
        return f"{why}; its output: {output}" if output else f"{why} (it printed nothing)"

    def abort(self) -> None:
        if self.ready.is_set():
            assert self.remote is not None
            self.remote.stop(0.0)
            return
        # Never started (or just now): nothing to stop gracefully.
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        end_process(self.proc, wait=0.0)

    def _kill(self) -> None:
        """End the scheduler command; it normally ends on its own once the
        supervisor has (its stdin is closed before this is called)."""
        end_process(self.proc)


def end_process(proc: subprocess.Popen[bytes], wait: float = 5.0) -> None:
    """Let ``proc`` end on its own for ``wait`` seconds, then terminate it, then kill it."""
    try:
        proc.wait(wait)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SchedulerLauncher(Launcher):
    """A launcher that runs one supervisor per node through a scheduler's command.

    Subclasses set :attr:`scheduler` and :attr:`tools` and implement
    :meth:`read_allocation` and :meth:`remote_argv`; one whose command does
    not forward stdin overrides :meth:`start_host` too (see the torque plugin).
    ``environ`` (default: this process's) is where the allocation is read
    and the command looked up, and the command's environment.
    """

    scheduler: str = ""
    """The scheduler's name for messages: ``"SLURM"``."""

    plugin: str = ""
    """The launcher plugin's name: ``"slurm"``."""

    tools: tuple[str, ...] = ()
    """Commands that start a process on a node, the first on ``PATH`` wins."""

    outside_job_hint: str = ""
    """What tells this scheduler's jobs apart, for the error raised outside one."""

    def __init__(
        self, settings: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = dict(settings or {})
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.python = self.settings.get("python") or sys.executable
        timeout = self.settings.get("start_timeout")
        self.start_timeout = float(timeout) if timeout is not None else 60.0

    def list_setting(self, name: str) -> list[str]:
        """The list setting ``name`` (extra options such as ``srun_args``) as strings; empty if unset."""
        return [str(item) for item in self.settings.get(name) or ()]

    # -- what subclasses provide --------------------------------------------------

    @abc.abstractmethod
    def read_allocation(self) -> list[Host] | None:
        """The job's hosts with their worker counts, or None outside a job.

        Raises :class:`LaunchError` if the job's description cannot be read."""

    @abc.abstractmethod
    def remote_argv(self, tool: str, node: str, command: Sequence[str]) -> list[str]:
        """The command line that runs ``command`` on ``node`` with ``tool``
        (the path of one of :attr:`tools`)."""

    def this_node(self, nodes: Sequence[str]) -> str | None:
        """Which of the allocation's ``nodes`` this machine is, if any."""
        mine = {socket.gethostname(), socket.getfqdn()}
        for node in nodes:
            if node in mine or is_local(node):
                return node
        shorts = {name.split(".")[0] for name in mine}
        return next((node for node in nodes if node.split(".")[0] in shorts), None)

    def start_host(self, tool: str, node: str, specs: Sequence[WorkerSpec]) -> HostStart:
        """Start ``node``'s supervisor; the default sends the plan down the command's stdin."""
        argv = self.remote_argv(tool, node, supervisor_command(self.python))
        return PipeStart(node, os.path.basename(tool), argv, specs, self.environ)

    # -- the Launcher interface --------------------------------------------------------

    def allocation(self) -> list[Host] | None:
        return self.read_allocation()

    def count_cores(self, hosts: Sequence[Host]) -> dict[str, int]:
        """Slots the job has on each of ``hosts`` that are in the allocation."""
        allocated = self.read_allocation() or []
        counts = {h.name: h.count for h in allocated if h.count}
        nodes = _NodeNames([h.name for h in allocated])
        answer: dict[str, int] = {}
        for host in hosts:
            node = nodes.find(host.name)
            if node is not None and node in counts:
                answer[host.address] = counts[node]
        return answer

    def start(self, workers: Sequence[WorkerSpec]) -> WorkerGroup:
        if not workers:
            return HostGroup([])
        allocated = self.read_allocation()
        if allocated is None:
            raise LaunchError(
                f"the {self.plugin} launcher starts workers inside a {self.scheduler} job, and "
                f"this process is not in one ({self.outside_job_hint}); run the program from a "
                "job script (see examples/submit_files/) or choose another launcher"
            )
        nodes = _NodeNames([h.name for h in allocated])
        here = self.this_node(nodes.names)
        on_nodes: dict[str, list[WorkerSpec]] = {}
        elsewhere: dict[str, list[WorkerSpec]] = {}
        for spec in workers:
            name = _host_name(spec.host)
            node = nodes.find(name)
            if node is None and is_local(name):
                node = here
            if node is not None:
                on_nodes.setdefault(node, []).append(spec)
            else:
                elsewhere.setdefault("local" if is_local(name) else "ssh", []).append(spec)
        if elsewhere:
            log.info(
                "%s: host(s) %s are not in the job's allocation (%s); starting their workers "
                "with the %s launcher",
                self.scheduler,
                ", ".join(sorted({s.host for specs in elsewhere.values() for s in specs})),
                ", ".join(nodes.names),
                " and ".join(sorted(elsewhere)),
            )
        tool = self._find_tool() if on_nodes else None
        if on_nodes and tool is None:
            log.warning(
                "%s: found no %s on PATH; starting the workers on %s through the ssh "
                "launcher instead, outside the job's resource limits",
                self.scheduler,
                " or ".join(self.tools),
                ", ".join(on_nodes),
            )
            elsewhere.setdefault("ssh", [])
            elsewhere["ssh"] += [s for specs in on_nodes.values() for s in specs]
            on_nodes = {}
        return self._start_all(tool, on_nodes, elsewhere)

    # -- helpers -------------------------------------------------------------------

    def _find_tool(self) -> str | None:
        path = self.environ.get("PATH", os.defpath)
        for name in self.tools:
            found = shutil.which(name, path=path)
            if found:
                return found
        return None

    def _start_all(
        self,
        tool: str | None,
        on_nodes: Mapping[str, Sequence[WorkerSpec]],
        elsewhere: Mapping[str, Sequence[WorkerSpec]],
    ) -> WorkerGroup:
        starts: list[HostStart] = []
        others: list[WorkerGroup] = []
        try:
            failures: list[str] = []
            for node, specs in on_nodes.items():
                assert tool is not None
                try:
                    starts.append(self.start_host(tool, node, specs))
                except OSError as exc:
                    failures.append(f"{node}: cannot run {tool}: {exc}")
            deadline = time.monotonic() + self.start_timeout
            for start in starts:
                why = start.wait_started(deadline, self.start_timeout)
                if why is not None:
                    failures.append(f"{start.node}: {why}")
            if failures:
                raise LaunchError(self._failure_message(tool, failures))
            for kind, specs in elsewhere.items():
                others.append(_delegate(kind, specs))
        except BaseException:
            stops: list[Callable[[], None]] = [s.abort for s in starts]
            stops += [functools.partial(g.stop, 1.0) for g in others]
            _in_parallel(stops)
            raise
        parts: list[RemoteHost | WorkerGroup] = [s.remote for s in starts if s.remote is not None]
        parts += others
        return HostGroup(parts)

    def _failure_message(self, tool: str | None, failures: Sequence[str]) -> str:
        name = os.path.basename(tool or self.tools[0])
        if len(failures) == 1:
            return f"{self.scheduler}: cannot start workers on {failures[0]}"
        return (
            f"{self.scheduler}: cannot start workers with {name} on {len(failures)} nodes: "
            + "; ".join(failures)
        )


class _NodeNames:
    """The allocation's node names, found by full or (if unambiguous) short name."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(dict.fromkeys(names))
        self._short: dict[str, list[str]] = {}
        for name in self.names:
            if not _is_ip(name):
                self._short.setdefault(name.split(".")[0], []).append(name)

    def find(self, name: str) -> str | None:
        if name in self.names:
            return name
        if _is_ip(name):
            return None
        matches = self._short.get(name.split(".")[0], [])
        return matches[0] if len(matches) == 1 else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(host: str) -> str:
    """The machine of a WorkerSpec's ``[user@]name[:port]``."""
    try:
        return parse_host(host).name
    except ValueError:
        return host


def _delegate(kind: str, specs: Sequence[WorkerSpec]) -> WorkerGroup:
    """Start ``specs`` with the launcher plugin ``kind`` (``local`` or ``ssh``)."""
    from scoop_core.config import current, load_config
    from scoop_core.plugins.manager import get_plugin_manager

    plugins = get_plugin_manager()
    config = current()  # the run's own: --config FILE and the command line included
    if config is None:
        try:
            config = load_config(plugin_settings=plugins.settings())
        except ConfigError as exc:
            log.warning("launcher.%s settings: %s; using the defaults", kind, exc)
    settings = config.section(f"launcher.{kind}") if config is not None else {}
    return plugins.launcher(kind).factory(settings).start(specs)


def _in_parallel(calls: Sequence[Callable[[], None]]) -> None:
    """Run the no-argument ``calls`` at once and wait for all: stopping many
    hosts takes as long as the slowest, not the sum."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _ready_and_supervise() -> int:
    """``python -m scoop_core.scheduler_launcher``: say so on stdout and on
    stderr (which tells the supervisor's error output from the scheduler
    command's), then supervise."""
    for out in (sys.stdout, sys.stderr):
        out.write(READY_MARK + "\n")
        out.flush()
    return supervise()


if __name__ == "__main__":
    sys.exit(_ready_and_supervise())
