"""An external ``ssh`` or ``rsh`` program as the client (``ssh_executable``).

For sites whose logins need what only their own client does (Kerberos,
smart cards, a site-wide ``ssh`` wrapper). Each host's command runs as a
local subprocess, ``ssh -T -o BatchMode=yes ... host 'command'``, whose
pipes carry the supervisor's streams; killing it ends the remote command
(its stdin closes). A program whose name does not contain ``ssh`` is taken
for an rsh: it gets only ``-l user``, no options and no port.

The program starts in its own session, so a Ctrl-C typed in the terminal
reaches the launcher alone, which then stops the hosts' workers in order.

``--tunnel`` asks ssh for ``-R 0:broker-host:port``: the host picks a free
port, and ssh says which on its stderr ("Allocated port N for remote forward
to ..."), before the remote command starts; that line is read and not shown.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.hosts import Host
from scoop_launcher_ssh.parallel import Attempt
from scoop_launcher_ssh.session import Client, Connection, Session

ALLOCATED = re.compile(
    rb"Allocated port (?P<remote>\d+) for remote forward to (?P<host>.+):(?P<port>\d+)"
)
"""What ssh writes on stderr when the host picked the port of a ``-R 0:...`` forward."""

STRICT = {"accept-new": "accept-new", "warn": "no"}
"""``host_key_policy`` as OpenSSH's ``StrictHostKeyChecking``."""


class ProgramClient(Client):
    def __init__(
        self, *, executable: str, timeout: float, policy: str, known_hosts: str, ssh_config: str
    ) -> None:
        words = shlex.split(executable)
        found = shutil.which(words[0]) if words else None
        if found is None:
            raise ConfigError(
                f"[scoop.launcher.ssh] ssh_executable: {executable!r} is not an executable "
                "program on PATH; give its full path, or leave it empty to use the built-in client"
            )
        self.command = [found, *words[1:]]
        self.program = os.path.basename(found)
        self.is_ssh = "ssh" in self.program
        self.options: list[str] = []
        if self.is_ssh:
            self.options = ["-T", "-x", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=30"]
            self.options += ["-o", f"ConnectTimeout={max(1, math.ceil(timeout))}"]
            if policy != "reject":  # else ssh's own: the config's, or no in batch mode
                self.options += ["-o", f"StrictHostKeyChecking={STRICT[policy]}"]
            if ssh_config:
                self.options += ["-F", os.path.expanduser(ssh_config)]
            if known_hosts:
                self.options += ["-o", f"UserKnownHostsFile={os.path.expanduser(known_hosts)}"]

    def open(self, host: Host, attempt: Attempt) -> Connection:
        argv = [*self.command, *self.options]
        if host.port is not None:
            if not self.is_ssh:
                raise LaunchError(
                    f"{attempt.label}: {self.program} cannot log in on another port than its own; "
                    "drop the port, or use ssh"
                )
            argv += ["-p", str(host.port)]
        if host.user:
            argv += ["-l", host.user]
        destination = ["--", host.name] if self.is_ssh else [host.name]
        return ProgramConnection(argv, destination, attempt.label, self.program, attempt)


class ProgramSession(Session):
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr_file = process.stderr
        self.stderr: Iterable[bytes] | None = process.stderr

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def error_output(self) -> str:
        if self.stderr_file is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(self.stderr_file.fileno(), False)
            return (self.stderr_file.read() or b"").decode(errors="replace")
        return ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.stdin, self.stdout, self.stderr_file):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


@dataclass(eq=False)
class ProgramConnection(Connection):
    """A host reached by running ``argv`` (the ssh or rsh program and its
    options) with ``destination`` and a command, once per session."""

    argv: list[str]
    destination: list[str]
    label: str
    program: str
    attempt: Attempt
    forwards: list[tuple[str, int]] = field(default_factory=list)

    def forward(self, host: str, port: int) -> None:
        if "ssh" not in self.program:
            raise LaunchError(
                f"{self.label}: --tunnel needs ssh, not {self.program}; leave ssh_executable "
                "empty in [scoop.launcher.ssh] to use the built-in client, or let the hosts "
                "reach the broker directly"
            )
        self.forwards.append((host, port))

    def forwarded(self, session: Session) -> dict[tuple[str, int], int]:
        """ssh says which port the host gave each forward on its stderr, before
        the command starts: read that far, and leave the rest for the user."""
        assert isinstance(session, ProgramSession)
        ports: dict[tuple[str, int], int] = {}
        kept: list[bytes] = []
        if self.forwards and session.stderr_file is not None:
            for raw in session.stderr_file:
                allocated = ALLOCATED.search(raw)
                if allocated is None:
                    kept.append(raw)
                    continue
                target = (allocated["host"].decode().strip("[]"), int(allocated["port"]))
                ports[target] = int(allocated["remote"])
                if len(ports) == len(set(self.forwards)):
                    break
            session.stderr = itertools.chain(kept, session.stderr_file)
        missing = [t for t in self.forwards if t not in ports]
        if missing:
            raise LaunchError(
                f"{self.label}: {self.program} did not say which port the host forwards to "
                f"{missing[0][0]}:{missing[0][1]} (--tunnel)"
            )
        return ports

    def execute(self, command: str) -> Session:
        self.attempt.stage = f"logging in with {self.program} and {self.attempt.stage}"
        tunnel = []
        if self.forwards:
            # Port 0: the host picks a free port, and ssh says which (at LogLevel INFO).
            tunnel = ["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=INFO"]
            for host, port in dict.fromkeys(self.forwards):
                tunnel += ["-R", f"0:{f'[{host}]' if ':' in host else host}:{port}"]
        try:
            process = subprocess.Popen(
                [*self.argv, *tunnel, *self.destination, command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"{self.label}: cannot run {self.program}: {exc}") from exc
        session = ProgramSession(process)
        self.attempt.on_abort(session.kill)
        return session
