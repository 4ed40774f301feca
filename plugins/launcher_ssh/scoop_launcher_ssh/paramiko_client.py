"""The built-in SSH client (paramiko), reading the user's OpenSSH configuration.

What it takes from ``ssh_config`` for a host: ``HostName``, ``User``,
``Port``, ``IdentityFile``, ``IdentitiesOnly``, ``UserKnownHostsFile``, ``ProxyJump`` (hops
separated by commas, each hop reached through the one before, and the first
with its own configuration) and ``ProxyCommand``. What the user wrote wins
over the file: ``alice@node3:2222`` logs in as alice on port 2222.

It never prompts: keys come from ``IdentityFile``, ``~/.ssh/id_*`` and the
ssh-agent, and a login that needs more fails with a message saying so.
Unknown host keys follow ``host_key_policy``, or the host's own
``StrictHostKeyChecking`` in ssh_config; a changed key is always refused.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import paramiko

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.hosts import Host, parse_host
from scoop_launcher_ssh.parallel import Attempt
from scoop_launcher_ssh.session import Client, Connection, Session

log = logging.getLogger("scoop.launcher.ssh")

# paramiko logs a failed connection (a banner that never came, a reset) with
# its traceback, which Python's last-resort handler would print on the
# terminal; the LaunchError we raise says it in one line, naming the host.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

MAX_HOPS = 8
"""More ProxyJump hops than this is taken for a loop in the configuration."""

SETTINGS = "[scoop.launcher.ssh]"

STRICT_HOST_KEY_CHECKING = {
    "yes": "reject",
    "ask": "reject",
    "accept-new": "accept-new",
    "no": "warn",
    "off": "warn",
}
"""A host's ``StrictHostKeyChecking`` in ssh_config, as a ``host_key_policy``
(which it overrides for that host: it is the more specific of the two)."""

KEEPALIVE = 30
"""Seconds between keepalive messages on an idle connection."""


class _UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class _Policy(paramiko.MissingHostKeyPolicy):
    """What to do with a host whose key is not known (``host_key_policy``)."""

    def __init__(self, policy: str, known_hosts: str, lock: threading.Lock) -> None:
        self.policy = policy
        self.known_hosts = known_hosts
        self.lock = lock

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if self.policy == "reject":
            raise _UnknownHostKey(hostname, key)
        if self.policy == "warn":
            log.warning(
                "trusting the unknown host key of %s (%s %s) for this run only",
                hostname,
                key.get_name(),
                key.fingerprint,
            )
            return
        # accept-new: append, never rewrite, so that parallel logins keep every addition.
        with self.lock:
            os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning(
            "added the host key of %s (%s %s) to %s",
            hostname,
            key.get_name(),
            key.fingerprint,
            self.known_hosts,
        )


class ParamikoClient(Client):
    def __init__(self, *, timeout: float, policy: str, known_hosts: str, ssh_config: str) -> None:
        self.timeout = timeout
        self.policy = policy
        self.known_hosts = os.path.expanduser(known_hosts) if known_hosts else ""
        self._known_hosts_lock = threading.Lock()
        path = os.path.expanduser(ssh_config or "~/.ssh/config")
        self.config = paramiko.SSHConfig()
        if ssh_config or os.path.exists(path):
            try:
                self.config = paramiko.SSHConfig.from_path(path)
            except (OSError, ValueError, paramiko.ConfigParseError) as exc:
                raise ConfigError(f"{SETTINGS} ssh_config: cannot read {path}: {exc}") from exc

    def open(self, host: Host, attempt: Attempt) -> Connection:
        client = self._dial(
            attempt.label, host.name, host.user, host.port, attempt, via=None, depth=0
        )
        return ParamikoConnection(client, attempt.label, attempt, self.timeout)

    def lookup(self, alias: str) -> Mapping[str, Any]:
        try:
            return self.config.lookup(alias)
        except Exception as exc:  # paramiko raises several kinds for bad values
            raise LaunchError(f"{alias}: its ssh_config entry cannot be used: {exc}") from exc

    def _dial(
        self,
        label: str,
        alias: str,
        user: str | None,
        port: int | None,
        attempt: Attempt,
        via: paramiko.Transport | None,
        depth: int,
    ) -> paramiko.SSHClient:
        if depth > MAX_HOPS:
            raise LaunchError(
                f"{label}: more than {MAX_HOPS} ProxyJump hops; is there a loop in ssh_config?"
            )
        cfg = self.lookup(alias)
        hostname = cfg.get("hostname", alias)
        port = port or int(cfg.get("port", 22))
        user = user or cfg.get("user") or getpass.getuser()
        where = f"{hostname}:{port}"
        shown = label if depth == 0 else f"{alias} (the jump host of {label})"
        sock: Any = None
        jump = cfg.get("proxyjump", "")
        proxy = cfg.get("proxycommand", "")
        if via is not None:
            attempt.stage = f"opening a channel to {where} through the jump host"
            sock = self._channel(via, hostname, port, shown)
            attempt.on_abort(sock.close)
        elif jump and jump.lower() != "none":
            hop_transport: paramiko.Transport | None = None
            for hop_text in jump.split(","):
                hop = _parse_hop(hop_text, label)
                hop_client = self._dial(
                    label, hop.name, hop.user, hop.port, attempt, hop_transport, depth + 1
                )
                hop_transport = hop_client.get_transport()
            assert hop_transport is not None
            attempt.stage = f"opening a channel to {where} through ProxyJump {jump}"
            sock = self._channel(hop_transport, hostname, port, shown)
            attempt.on_abort(sock.close)
        elif proxy and proxy.lower() != "none":
            attempt.stage = f"starting ProxyCommand {proxy}"
            try:
                sock = paramiko.ProxyCommand(proxy)
            except Exception as exc:
                raise LaunchError(
                    f"cannot reach {shown}: ProxyCommand {proxy!r} failed: {exc}"
                ) from exc
            attempt.on_abort(sock.close)

        client = paramiko.SSHClient()
        attempt.on_abort(client.close)
        known_hosts = self._known_hosts(cfg)
        if not self.known_hosts and os.path.exists("/etc/ssh/ssh_known_hosts"):
            with contextlib.suppress(OSError):
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
        if os.path.exists(known_hosts):
            try:
                client.load_host_keys(known_hosts)
            except OSError as exc:
                raise LaunchError(f"cannot read the known hosts file {known_hosts}: {exc}") from exc
        policy = STRICT_HOST_KEY_CHECKING.get(
            str(cfg.get("stricthostkeychecking", "")).lower(), self.policy
        )
        client.set_missing_host_key_policy(_Policy(policy, known_hosts, self._known_hosts_lock))
        identities = [os.path.expanduser(k) for k in cfg.get("identityfile", [])]
        keys = [k for k in identities if os.path.exists(k)] or None
        only_listed = keys is not None and str(cfg.get("identitiesonly", "")).lower() == "yes"
        attempt.stage = f"connecting to {where}" + (
            " through the proxy" if sock is not None else ""
        )
        try:
            client.connect(
                hostname,
                port,
                username=user,
                key_filename=keys,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                channel_timeout=self.timeout,
                sock=sock,
                allow_agent=not only_listed,
                look_for_keys=not only_listed,
            )
        except Exception as exc:
            if attempt.aborted:
                raise LaunchError(f"{shown}: aborted while {attempt.stage}") from exc
            raise LaunchError(
                _explain(
                    exc,
                    shown,
                    user,
                    hostname,
                    port,
                    keys,
                    known_hosts,
                    behind=sock is not None,
                    timeout=self.timeout,
                )
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            # Idle runs cross NATs and firewalls that forget quiet connections.
            transport.set_keepalive(KEEPALIVE)
        return client

    def _channel(
        self, transport: paramiko.Transport, hostname: str, port: int, shown: str
    ) -> paramiko.Channel:
        try:
            return transport.open_channel(
                "direct-tcpip", (hostname, port), ("127.0.0.1", 0), timeout=self.timeout
            )
        except (paramiko.SSHException, OSError) as exc:
            raise LaunchError(
                f"cannot reach {shown} ({hostname}:{port}) through its jump host: {exc}"
            ) from exc

    def _known_hosts(self, cfg: Mapping[str, Any]) -> str:
        if self.known_hosts:
            return self.known_hosts
        configured = str(cfg.get("userknownhostsfile", "")).split()
        return os.path.expanduser(configured[0] if configured else "~/.ssh/known_hosts")


def _parse_hop(text: str, label: str) -> Host:
    text = text.strip()
    text = text.removeprefix("ssh://")
    try:
        return parse_host(text)
    except ValueError as exc:
        raise LaunchError(f"{label}: bad ProxyJump host {text!r} in ssh_config: {exc}") from exc


def _explain(
    exc: BaseException,
    shown: str,
    user: str,
    hostname: str,
    port: int,
    keys: list[str] | None,
    known_hosts: str,
    behind: bool,
    timeout: float,
) -> str:
    """The sentence a user reads when logging in to a host failed."""
    where = f"{hostname}:{port}"
    if isinstance(exc, _UnknownHostKey):
        keyscan = f"ssh-keyscan{'' if port == 22 else f' -p {port}'} {hostname} >> {known_hosts}"
        how = (
            f"check its fingerprint, then add it with `{keyscan}`"
            if not behind
            else (f"check its fingerprint, then add it to {known_hosts} (log in once with ssh)")
        )
        return (
            f"the host key of {shown} is unknown ({exc.key.get_name()} {exc.key.fingerprint}): {how}, "
            f'or set host_key_policy = "accept-new" in {SETTINGS}'
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"the host key of {shown} has CHANGED ({exc.key.get_name()} {exc.key.fingerprint}, "
            f"expected {exc.expected_key.fingerprint}); the host was reinstalled, or someone is "
            f"in between. If the change is expected, remove the old key with "
            f"`ssh-keygen -f {known_hosts} -R {_known_name(hostname, port)}`"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return (
            f"login to {user}@{shown} failed: a key needs its passphrase ({exc}); "
            "nothing is ever prompted for: load the key into ssh-agent (ssh-add)"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        tried = ", ".join(keys) if keys else "the keys in ~/.ssh and the ssh-agent"
        return (
            f"login to {user}@{shown} failed: {str(exc).rstrip('.')} (tried {tried}); nothing is ever prompted "
            "for: give the key with IdentityFile in ssh_config, or load it into ssh-agent"
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {os.strerror(e.errno) if e.errno else str(e) for e in exc.errors.values()}
        return f"cannot reach {shown} ({where}): {', '.join(sorted(causes)).lower()}"
    if isinstance(exc, socket.gaierror):
        return f"cannot reach {shown}: unknown host name {hostname!r} ({exc.strerror})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"cannot reach {shown} ({where}): no answer within {timeout:g} s ({SETTINGS} connect_timeout)"
    if isinstance(exc, OSError):
        return f"cannot reach {shown} ({where}): {(exc.strerror or str(exc)).lower()}"
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
        return (
            f"login to {user}@{shown} failed: no key to offer (none in ~/.ssh, in IdentityFile "
            "or in the ssh-agent); nothing is ever prompted for: create one (ssh-keygen) and "
            "install it on the host (ssh-copy-id), or give it with IdentityFile in ssh_config"
        )
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc):
        return (
            f"SSH with {shown} ({where}) failed: {exc}: the host closed the connection before "
            "SSH began; is an SSH server listening at that port, and does it let you in "
            "(a firewall, its MaxStartups)?"
        )
    if isinstance(exc, paramiko.SSHException):
        return f"SSH with {shown} ({where}) failed: {exc}"
    return f"cannot log in to {shown} ({where}): {type(exc).__name__}: {exc}"


def _known_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"'[{hostname}]:{port}'"


class ParamikoSession(Session):
    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.stdin = channel.makefile_stdin("wb")
        self.stdout = channel.makefile("rb")
        self.stderr = channel.makefile_stderr("rb")

    def wait(self, timeout: float) -> int | None:
        if self.channel.status_event.wait(timeout):
            return int(self.channel.exit_status)
        return None

    def error_output(self) -> str:
        data = b""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while self.channel.recv_stderr_ready():
                chunk = self.channel.recv_stderr(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode(errors="replace")


class ParamikoConnection(Connection):
    def __init__(
        self, client: paramiko.SSHClient, label: str, attempt: Attempt, timeout: float
    ) -> None:
        self.client = client
        self.label = label
        self.attempt = attempt
        self.timeout = timeout
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self._targets: dict[int, tuple[str, int]] = {}

    def execute(self, command: str) -> Session:
        try:
            channel = self.transport.open_session(timeout=self.timeout)
            self.attempt.on_abort(channel.close)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError) as exc:
            raise LaunchError(f"{self.label}: cannot run a command there: {exc}") from exc
        return ParamikoSession(channel)

    def forward(self, host: str, port: int) -> None:
        try:
            remote_port = int(self.transport.request_port_forward("127.0.0.1", 0, self._incoming))
        except (paramiko.SSHException, OSError) as exc:
            raise LaunchError(
                f"{self.label}: its sshd refused to forward a port for --tunnel ({exc}); "
                "it needs AllowTcpForwarding yes (or remote)"
            ) from exc
        self._targets[remote_port] = (host, port)
        log.debug(
            "%s: port 127.0.0.1:%d there leads to %s:%d here", self.label, remote_port, host, port
        )

    def forwarded(self, session: Session) -> dict[tuple[str, int], int]:
        return {target: remote_port for remote_port, target in self._targets.items()}

    def _incoming(
        self, channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]
    ) -> None:
        # Called in paramiko's transport thread: hand over at once.
        target = self._targets.get(server[1])
        if target is None:
            channel.close()
            return
        self.attempt.on_abort(channel.close)
        threading.Thread(target=_splice, args=(channel, target, self.label), daemon=True).start()


def _splice(channel: paramiko.Channel, target: tuple[str, int], label: str) -> None:
    """Copy bytes both ways between a forwarded channel and a new connection to ``target``."""
    try:
        sock = socket.create_connection(target, timeout=10.0)
    except OSError as exc:
        log.warning("%s: a worker's tunnel to %s:%d failed: %s", label, *target, exc)
        channel.close()
        return
    sock.settimeout(None)

    def close_both() -> None:
        channel.close()
        sock.close()

    both = threading.Barrier(2, action=close_both)

    def pump(recv: Any, send: Any, eof: Any) -> None:
        try:
            while data := recv(65536):
                send(data)
            eof()
        except (OSError, EOFError, paramiko.SSHException):
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                both.wait()

    threading.Thread(
        target=pump, args=(sock.recv, channel.sendall, channel.shutdown_write), daemon=True
    ).start()
    pump(channel.recv, sock.sendall, lambda: sock.shutdown(socket.SHUT_WR))
