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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.host_supervisor import HostGroup, RemoteHost
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
"""The first line a supervisor writes: it runs, and its Python found scoop_core."""

# The supervisor's last thread may still be reading stdin when it returns; leaving
# with os._exit spares Python's shutdown a fight over that stream's lock.
_BOOT = (
    "import os, sys; from scoop_core import host_supervisor; "
    f'print("{READY}", flush=True); code = host_supervisor.supervise(); '
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


def remote_command(specs: Sequence[WorkerSpec]) -> str:
    """The shell command line run on a host: no secret, only where and which Python."""
    spec = specs[0]
    words = supervisor_argv(spec)
    if spec.env.get("PYTHONPATH"):
        words = ["env", f"PYTHONPATH={spec.env['PYTHONPATH']}", *words]
    command = "exec " + shlex.join(words)
    if spec.cwd:
        command = f"cd {shlex.quote(spec.cwd)} && {command}"
    return command


@dataclasses.dataclass
class _Ready:
    """A host whose supervisor runs and waits for its plan."""

    specs: list[WorkerSpec]
    session: Session
    chatter: list[bytes]
    """Lines the host printed before the supervisor's (a login script's)."""


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
        local: list[WorkerSpec] = []
        remote: list[tuple[str, Callable[[Attempt], _Ready]]] = []
        for label, specs in by_host.items():
            host = _host(label)
            if is_local(host.name):
                local += specs
            else:
                remote.append((label, functools.partial(self._start_host, host, specs)))
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
                        stdout=_lines(ready.chatter, session.stdout),
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

    def _start_host(self, host: Host, specs: list[WorkerSpec], attempt: Attempt) -> _Ready:
        connection = self.client.open(host, attempt)
        attempt.reached = True
        brokers = _brokers(specs, attempt.label) if self.tunnel else {}
        for target in dict.fromkeys((b.host, b.port) for b in brokers.values()):
            attempt.stage = "asking for a forwarded port (--tunnel)"
            connection.forward(*target)
        command = remote_command(specs)
        attempt.stage = f"starting the scoop supervisor ({supervisor_argv(specs[0])[-3]})"
        session = connection.execute(command)
        chatter: list[bytes] = []
        for raw in session.stdout:
            if raw.rstrip(b"\r\n") == READY.encode():
                break
            chatter.append(raw)
            del chatter[:-20]  # a login script's banner is not the cause we look for
        else:
            if attempt.aborted:
                raise LaunchError(f"{attempt.label}: aborted while {attempt.stage}")
            raise LaunchError(self._start_failure(attempt.label, specs, session, chatter))
        if brokers:
            attempt.stage = "learning the forwarded port (--tunnel)"
            specs = _through_tunnel(specs, brokers, connection.forwarded(session))
        return _Ready(specs, session, chatter)

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
        cwd = specs[0].cwd
        if cwd and "cd" in said and cwd in said:
            hint = f"; does the directory {cwd} (--path) exist there?"
        elif status == 127 or "not found" in said or "No such file" in said:
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
            session = connection.execute(command)
            session.stdin.close()
            out = session.stdout.read().decode(errors="replace").strip()
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


def _lines(first: list[bytes], rest: Any) -> Iterator[bytes]:
    return itertools.chain(first, rest)


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
