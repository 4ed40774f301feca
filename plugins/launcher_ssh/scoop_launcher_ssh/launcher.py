"""The ``ssh`` launcher: one supervisor per host, started over SSH, in parallel.

For each remote host it logs in (at most ``connections`` hosts at a time,
each within ``connect_timeout``), runs the :mod:`scoop_core.host_supervisor`
supervisor there, waits until that supervisor says it runs, and only then,
once every host is ready, hands each its plan: the workers' argv,
environment and directory, through the SSH channel. So a run either starts
on every host or on none: a host that cannot be reached, refuses the login
or cannot start the supervisor is reported by name and cause, and the
supervisors already waiting elsewhere see their stdin close and exit having
started nothing. Workers on this machine start through the ``local``
launcher.

The supervisor's Python is the workers' (``--python-interpreter``), after
the workers' ``--prolog`` and in their ``--path``, with their
``PYTHONPATH``, so that it finds ``scoop_core`` wherever they would.

Hosts need not share this machine's file system. The first line a
supervisor writes says what its host sees of the program and the workers'
``--path`` directory: each file there with the same content (SHA-256) as
here, or missing, or different (a stale copy). A host that lacks one fails
the start, named with the path and the fix, before any worker starts
anywhere; with ``upload`` (``--upload``, ``--upload-file``) the program and
the ``upload_files`` are sent instead, through the same channel, to a
private directory the supervisor makes in the host's temporary directory,
points its workers at, and removes when it exits.

Login scripts that print (a ``.bashrc`` with an ``echo``, binary junk, no
final newline) break nothing: the supervisor's ready mark is looked for
anywhere in a line, on stdout and on stderr, and what came before it is the
login's, logged at debug level and kept out of the program's output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from scoop_core.errors import ConfigError, LaunchError, UsageError
from scoop_core.host_supervisor import FILES_MARK, HostGroup, RemoteHost, sha256
from scoop_core.hosts import Host, is_local, parse_host
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.local_launcher import LocalLauncher
from scoop_launcher_ssh.address import BrokerAddress, parse_address
from scoop_launcher_ssh.parallel import Attempt, close_all, run_all
from scoop_launcher_ssh.session import Client, Session

log = logging.getLogger("scoop.launcher.ssh")

__all__ = ["ADDRESS_VARIABLE", "READY", "SshLauncher", "remote_command", "supervisor_argv"]

ADDRESS_VARIABLE = "_SCOOP_ADDRESS"
"""The worker's environment variable holding the broker's address (rewritten by --tunnel)."""

READY = "@@scoop-ssh-ready"
"""The first line a supervisor writes on stdout (followed by what its host
sees of the paths asked about) and on stderr: it runs, and its Python found
scoop_core. Whatever a login script printed comes before it."""

CORES = "@@scoop-cores"
"""Printed before ``nproc``'s answer, which follows whatever a login script printed."""

CHUNK = 1 << 20
"""Bytes sent at a time to a host (--upload): each restarts its time limit."""

# The supervisor's last thread may still be reading stdin when it returns; leaving
# with os._exit spares Python's shutdown a fight over that stream's lock.
_BOOT = (
    "import os, sys; from scoop_core import host_supervisor; "
    f'print("{READY}", host_supervisor.look(sys.argv[1]), flush=True); '
    f'print("{READY}", file=sys.stderr, flush=True); code = host_supervisor.supervise(); '
    "sys.stdout.flush(); sys.stderr.flush(); os._exit(code)"
)

SECTION = "[scoop.launcher.ssh]"

DEFAULTS: Mapping[str, Any] = {
    "connect_timeout": 10.0,
    "host_key_policy": "reject",
    "known_hosts": "",
    "ssh_config": "",
    "ssh_executable": "",
    "tunnel": False,
    "connections": 32,
    "upload": False,
    "upload_files": [],
}


def supervisor_argv(spec: WorkerSpec) -> list[str]:
    """The argv that starts a host's supervisor, made from one of its workers' argv.

    A worker runs ``[prolog wrapper...] python -m scoop_core.bootstrap worker``;
    the supervisor runs the same up to the Python, then its own code."""
    argv = list(spec.argv)
    if "-m" in argv[1:]:
        prefix = argv[: argv.index("-m", 1)]
    elif argv and os.path.basename(argv[0]).startswith("python"):
        prefix = argv[:1]
    else:
        prefix = ["python3"]
    return [*prefix, "-c", _BOOT]


def remote_command(specs: Sequence[WorkerSpec], paths: Sequence[Wanted] = ()) -> str:
    """The shell command line run on a host: no secret, only where, which
    Python, and the ``paths`` whose view from there the supervisor reports."""
    spec = specs[0]
    words = [*supervisor_argv(spec), json.dumps([p.request() for p in paths])]
    if spec.env.get("PYTHONPATH"):
        words = ["env", f"PYTHONPATH={spec.env['PYTHONPATH']}", *words]
    command = "exec " + shlex.join(words)
    if spec.cwd:
        # A directory the host lacks is reported by the supervisor, with the way out.
        command = f"cd {shlex.quote(spec.cwd)} 2>/dev/null; {command}"
    return command


@dataclasses.dataclass(frozen=True)
class Wanted:
    """A path the workers need to see on their host, as this machine has it."""

    path: str
    size: int | None = None
    """None for a directory."""
    sha256: str = ""
    mode: int = 0

    @classmethod
    def file(cls, path: str) -> Wanted:
        info = os.stat(path)
        return cls(path, info.st_size, sha256(path), info.st_mode & 0o777)

    def request(self) -> dict[str, Any]:
        if self.size is None:
            return {"path": self.path}
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclasses.dataclass
class _Ready:
    """A host whose supervisor runs and waits for its plan."""

    specs: list[WorkerSpec]
    session: Session


class SshLauncher(Launcher):
    """Starts each remote host's workers through one SSH connection (see the module docstring)."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        from scoop_launcher_ssh import HOST_KEY_POLICIES

        s = {**DEFAULTS, **(settings or {})}
        self.timeout = float(s["connect_timeout"])
        if not self.timeout > 0:
            raise ConfigError(
                f"{SECTION} connect_timeout must be above 0 seconds, not {self.timeout}"
            )
        policy = str(s["host_key_policy"]).strip().lower()
        if policy not in HOST_KEY_POLICIES:
            raise ConfigError(
                f"{SECTION} host_key_policy {s['host_key_policy']!r} is not known; "
                f"choose one of: {', '.join(HOST_KEY_POLICIES)}"
            )
        self.connections = int(s["connections"])
        if self.connections < 1:
            raise ConfigError(f"{SECTION} connections must be at least 1, not {self.connections}")
        self.tunnel = bool(s["tunnel"])
        self.upload_files = [os.path.abspath(os.path.expanduser(str(f))) for f in s["upload_files"]]
        self.upload = bool(s["upload"]) or bool(self.upload_files)
        for path in self.upload_files:
            if not os.path.isfile(path):
                raise UsageError(
                    f"--upload-file {path}: {'a directory' if os.path.isdir(path) else 'no such file'}"
                    f" here; name files on this machine to send beside the program "
                    f"({SECTION} upload_files)"
                )
        known_hosts, ssh_config = str(s["known_hosts"]), str(s["ssh_config"])
        self.client: Client
        if s["ssh_executable"]:
            from scoop_launcher_ssh.program_client import ProgramClient

            self.client = ProgramClient(
                executable=str(s["ssh_executable"]),
                timeout=self.timeout,
                policy=policy,
                known_hosts=known_hosts,
                ssh_config=ssh_config,
            )
        else:
            from scoop_launcher_ssh.paramiko_client import ParamikoClient

            self.client = ParamikoClient(
                timeout=self.timeout, policy=policy, known_hosts=known_hosts, ssh_config=ssh_config
            )

    # -- starting ---------------------------------------------------------------

    def start(self, workers: Sequence[WorkerSpec]) -> WorkerGroup:
        by_host: dict[str, list[WorkerSpec]] = {}
        for spec in workers:
            by_host.setdefault(spec.host, []).append(spec)
        hosts = {label: _host(label) for label in by_host}
        local = [
            s for label, specs in by_host.items() if is_local(hosts[label].name) for s in specs
        ]
        elsewhere = [label for label in by_host if not is_local(hosts[label].name)]
        # The files the workers need are read here before any host is reached.
        files = self._files([s for label in elsewhere for s in by_host[label]]) if elsewhere else []
        remote: list[tuple[str, Callable[[Attempt], _Ready]]] = []
        for label in elsewhere:
            specs = by_host[label]
            wanted = files + [Wanted(d) for d in dict.fromkeys(s.cwd for s in specs if s.cwd)]
            remote.append((label, functools.partial(self._start_host, hosts[label], specs, wanted)))
        attempts = run_all(
            remote,
            timeout=self.timeout,
            limit=self.connections,
        )
        failures = [self._failure(a) for a in attempts if a.timed_out or a.error is not None]
        if failures:
            close_all(attempts)
            raise LaunchError(_summary(failures))
        parts: list[RemoteHost | WorkerGroup] = []
        try:
            for attempt in attempts:
                ready: _Ready = attempt.result
                session = ready.session
                parts.append(
                    RemoteHost(
                        label=attempt.label,
                        specs=ready.specs,
                        stdin=session.stdin,
                        stdout=session.stdout,
                        stderr=session.stderr,
                        kill=functools.partial(_finish, session, attempt),
                    )
                )
            if local:
                parts.append(LocalLauncher().start(local))
        except BaseException:
            HostGroup(parts).stop(0.0)
            close_all(attempts)
            raise
        log.debug("workers started on %d host(s)", len(parts))
        return HostGroup(parts)

    def _files(self, specs: Sequence[WorkerSpec]) -> list[Wanted]:
        """The files the workers need to see on their host: the program
        (and with upload, the upload files)."""
        paths = [s.env.get("_SCOOP_PROGRAM", "") for s in specs]
        if self.upload:
            paths += self.upload_files
        files = [p for p in dict.fromkeys(paths) if p]
        names: dict[str, str] = {}
        for path in files:
            other = names.setdefault(os.path.basename(path), path)
            if other != path:
                raise UsageError(
                    f"{other} and {path} would be sent to the hosts under one name; "
                    "rename one (files sent with --upload-file go beside the program)"
                )
        try:
            return [Wanted.file(p) for p in files]
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename} here: {exc.strerror}") from exc

    def _start_host(
        self, host: Host, specs: list[WorkerSpec], wanted: list[Wanted], attempt: Attempt
    ) -> _Ready:
        connection = self.client.open(host, attempt)
        attempt.reached = True
        brokers = _brokers(specs, attempt.label) if self.tunnel else {}
        for target in dict.fromkeys((b.host, b.port) for b in brokers.values()):
            attempt.stage = "asking for a forwarded port (--tunnel)"
            connection.forward(*target)
        command = remote_command(specs, wanted)
        attempt.stage = f"starting the scoop supervisor ({supervisor_argv(specs[0])[-3]})"
        session = connection.execute(command)
        chatter, answer = _until_ready(session.stdout)
        if answer is None:
            if attempt.aborted:
                raise LaunchError(f"{attempt.label}: aborted while {attempt.stage}")
            raise LaunchError(self._start_failure(attempt.label, specs, session, chatter))
        if brokers:
            attempt.stage = "learning the forwarded port (--tunnel)"
            specs = _through_tunnel(specs, brokers, connection.forwarded(session))
        attempt.stage = "reading what the login printed on stderr"
        said, _ = _until_ready(session.stderr or ())
        if chatter or said:
            log.debug(
                "%s: its login printed %r on stdout and %r on stderr (not shown)",
                attempt.label,
                b"".join(chatter)[-500:],
                b"".join(said)[-500:],
            )
        self._see_or_send(attempt, session, wanted, _seen(answer, wanted, attempt.label))
        return _Ready(specs, session)

    def _see_or_send(
        self, attempt: Attempt, session: Session, wanted: list[Wanted], seen: list[str]
    ) -> None:
        """Fail if the host lacks a path the workers need, unless upload
        is on: then send it the files (all of them, to keep them together)."""
        lacking = [(w, status) for w, status in zip(wanted, seen, strict=True) if status != "same"]
        files = [w for w in wanted if w.size is not None]
        if self.upload and any(w.size is not None for w, _ in lacking):
            places = {os.path.dirname(w.path) for w in files}
            # The workers of a host sent the files start in the files' directory
            # instead of the one the files came from.
            lacking = [
                (w, status) for w, status in lacking if w.size is None and w.path not in places
            ]
            if not lacking:
                directory = self._send(attempt, session, files)
                log.info(
                    "%s: the host does not see the files as they are here; sent %d to %s",
                    attempt.label,
                    len(files),
                    directory,
                )
                return
        if lacking:
            raise LaunchError(_unseen(attempt.label, lacking))

    def _send(self, attempt: Attempt, session: Session, files: list[Wanted]) -> str:
        """Send ``files`` to the host's supervisor; return the directory it put them in."""
        label = attempt.label
        total = sum(f.size or 0 for f in files)
        attempt.stage = f"sending {len(files)} file(s), {total:,} bytes (--upload)"
        header = {"files": [{"path": f.path, "size": f.size, "mode": f.mode} for f in files]}
        broken = "its connection closed"
        try:
            session.stdin.write(b"files " + json.dumps(header).encode() + b"\n")
            for f in files:
                with open(f.path, "rb") as fh:
                    left = f.size or 0
                    while left:
                        chunk = fh.read(min(left, CHUNK))
                        if not chunk:
                            raise LaunchError(f"{f.path} changed here while it was sent to {label}")
                        session.stdin.write(chunk)
                        left -= len(chunk)
                        attempt.progressed()
            session.stdin.flush()
            attempt.stage = "waiting for the host to keep the files sent (--upload)"
            for raw in session.stdout:
                if raw.startswith(FILES_MARK.encode()):
                    return raw[len(FILES_MARK) :].decode(errors="replace").strip()
        except (OSError, ValueError, EOFError) as exc:
            # The supervisor stopped reading: what it said on stderr tells why.
            broken = str(exc)
        if attempt.aborted:
            raise LaunchError(f"{label}: aborted while {attempt.stage}")
        session.wait(min(self.timeout, 5.0))
        said = session.error_output().strip() or broken
        raise LaunchError(
            f"{label}: the host could not keep the files sent (--upload): {said}; "
            "is its temporary directory full? TMPDIR there chooses another"
        )

    def _start_failure(
        self, label: str, specs: list[WorkerSpec], session: Session, chatter: list[bytes]
    ) -> str:
        status = session.wait(min(self.timeout, 5.0))
        said = session.error_output().strip() or b"".join(chatter).decode(errors="replace").strip()
        lines = [line for line in said.splitlines() if line.strip()]
        cause = " / ".join(lines[-3:]) if lines else f"it exited with status {status}"
        python = supervisor_argv(specs[0])[-3]
        program = self.client.program
        if program and status == 255:
            hint = ""
            if "Host key verification failed" in said:
                hint = (
                    f"; the host key is unknown or changed: check it, add it with ssh-keyscan, or "
                    f'set host_key_policy = "accept-new" in {SECTION}'
                )
            return f"{label}: {program} failed: {cause}{hint}"
        if status == 127 or "not found" in said or "No such file" in said:
            hint = f"; is {python} there? choose another with --python-interpreter"
        elif "No module named" in said:
            hint = f"; is scoop-core installed for {python} there (or give --pythonpath)?"
        else:
            hint = ""
        return f"cannot start the scoop supervisor on {label}: {cause}{hint}"

    def _failure(self, attempt: Attempt) -> str:
        if attempt.timed_out:
            what = "cannot start workers on" if attempt.reached else "cannot reach"
            return (
                f"{what} {attempt.label}: no answer within {self.timeout:g} s "
                f"while {attempt.stage} ({SECTION} connect_timeout)"
            )
        if isinstance(attempt.error, LaunchError | ConfigError):
            return str(attempt.error)
        return f"cannot start workers on {attempt.label}: {type(attempt.error).__name__}: {attempt.error}"

    # -- counting cores -------------------------------------------------------------

    def count_cores(self, hosts: Sequence[Host]) -> dict[str, int]:
        cores: dict[str, int] = {}
        remote = []
        for host in hosts:
            if is_local(host.name):
                cores[host.address] = _local_cores()
            else:
                remote.append(host)
        attempts = run_all(
            [(h.address, functools.partial(self._count, h)) for h in remote],
            timeout=self.timeout,
            limit=self.connections,
        )
        close_all(attempts)
        failures = [self._failure(a) for a in attempts if a.timed_out or a.error is not None]
        if failures:
            raise LaunchError(_summary(failures))
        cores.update({a.label: a.result for a in attempts if a.result})
        return cores

    def _count(self, host: Host, attempt: Attempt) -> int | None:
        connection = self.client.open(host, attempt)
        for command in ("nproc", "getconf _NPROCESSORS_ONLN"):
            attempt.stage = f"running {command}"
            session = connection.execute(f"echo {CORES}; {command}")
            session.stdin.close()
            out = session.stdout.read().decode(errors="replace").rpartition(CORES)[2].strip()
            if session.wait(self.timeout) == 0 and out.isdigit() and int(out) > 0:
                return int(out)
        log.warning("%s: cannot count its cores; it gets one worker", attempt.label)
        return None


def _host(label: str) -> Host:
    try:
        return parse_host(label)
    except ValueError as exc:
        raise LaunchError(f"worker host {label!r}: {exc}") from None


def _brokers(specs: list[WorkerSpec], label: str) -> dict[str, BrokerAddress]:
    """Each broker address the workers dial, parsed, for --tunnel."""
    brokers = {}
    for spec in specs:
        address = spec.env.get(ADDRESS_VARIABLE)
        if address is not None and address not in brokers:
            try:
                brokers[address] = parse_address(address)
            except ValueError as exc:
                raise LaunchError(
                    f"{label}: --tunnel cannot carry the broker's address: {exc}"
                ) from None
    return brokers


def _through_tunnel(
    specs: list[WorkerSpec],
    brokers: Mapping[str, BrokerAddress],
    ports: Mapping[tuple[str, int], int],
) -> list[WorkerSpec]:
    """The specs with each broker's address replaced by the port forwarded to it."""
    out = []
    for spec in specs:
        broker = brokers.get(spec.env.get(ADDRESS_VARIABLE, ""))
        if broker is not None:
            address = broker.with_endpoint("127.0.0.1", ports[(broker.host, broker.port)])
            spec = dataclasses.replace(spec, env={**spec.env, ADDRESS_VARIABLE: address})
        out.append(spec)
    return out


def _until_ready(lines: Iterable[bytes]) -> tuple[list[bytes], str | None]:
    """Read ``lines`` up to the supervisor's ready mark, which may follow a
    login script's output on the same line; return what came before it (its
    last lines) and what follows the mark (None: the lines ended first)."""
    mark = READY.encode()
    before: list[bytes] = []
    for raw in lines:
        at = raw.find(mark)
        if at >= 0:
            if raw[:at]:
                before.append(raw[:at])
            return before, raw[at + len(mark) :].decode(errors="replace").strip()
        before.append(raw)
        del before[:-20]  # a login script's banner is not the cause we look for
    return before, None


def _seen(answer: str, wanted: list[Wanted], label: str) -> list[str]:
    """The supervisor's report of what its host sees of ``wanted``."""
    try:
        seen = json.loads(answer)
    except ValueError:
        seen = None
    if not isinstance(seen, list) or len(seen) != len(wanted):
        raise LaunchError(
            f"{label}: its scoop supervisor did not say what the host sees ({answer[:200]!r}); "
            "is scoop-core there the same version as here?"
        )
    return [str(s) for s in seen]


def _unseen(label: str, lacking: list[tuple[Wanted, str]]) -> str:
    """The sentence a user reads when a host lacks what its workers need."""
    said = []
    for w, status in lacking:
        if w.size is None:
            said.append(f"the host does not see the directory {w.path} (--path)")
        elif status == "differs":
            said.append(f"{w.path} there is not the same as here (a stale copy?)")
        else:
            said.append(f"the host does not see {w.path}")
    if all(w.size is None for w, _ in lacking):
        fix = "use a shared file system, or make it there"
    else:
        fix = "use a shared file system, copy it there, or run with --upload [--upload-file FILE]"
    return f"{label}: {'; '.join(said)}: {fix}"


def _finish(session: Session, attempt: Attempt) -> None:
    """End a host's connection once its supervisor has had the chance to exit."""
    with contextlib.suppress(OSError, ValueError, EOFError):
        session.stdin.close()
    session.wait(3.0)
    attempt.abort()


def _local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _summary(failures: list[str]) -> str:
    if len(failures) == 1:
        return failures[0]
    return f"cannot start the workers on {len(failures)} hosts:\n" + "\n".join(
        f"  - {f}" for f in failures
    )
