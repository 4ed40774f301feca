"""The test cluster behind conftest.py's fixtures: sshd servers, and what runs for them.

Kept out of conftest.py so that test modules can import it by a name no
other directory uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import scheduler_checks as checks

SSHD = "/usr/sbin/sshd"
READY_WITHIN = 10.0


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class SshdHost:
    """One sshd of the cluster: ``alias`` is its name in the test ssh_config."""

    alias: str
    address: str
    port: int
    marker: str
    directory: Path
    netns: str | None = None
    host_key: str = ""
    server: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def known_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        return f"{self.known_name} {self.host_key}\n"

    def processes(self) -> list[int]:
        """What still runs for this host's logins: every process whose
        environment carries its marker, and any process in its namespace
        but the listening sshd."""
        mark = f"SCOOP_TEST_HOST={self.marker}".encode()
        inode = os.stat(f"/run/netns/{self.netns}").st_ino if self.netns else None
        server = self.server.pid if self.server else -1
        found = []
        for pid in all_pids():
            if pid in (server, os.getpid()):
                continue
            if inode is not None and _netns_inode(pid) == inode:
                found.append(pid)
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0"):
                found.append(pid)
        return found

    def kill_all(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    hosts: dict[str, SshdHost]
    client_key: Path
    in_namespaces: bool
    unreachable: str
    directory: Path

    def __getitem__(self, alias: str) -> SshdHost:
        return self.hosts[alias]

    def ssh_config(self, extra: str = "") -> str:
        lines = [extra]
        for h in self.hosts.values():
            lines += [f"Host {h.alias}", f"  HostName {h.address}"]
            if h.port != 22:
                lines.append(f"  Port {h.port}")
            if h.alias == "hidden":
                lines.append("  ProxyJump h1")
        lines += ["Host nowhere", f"  HostName {self.unreachable}"]
        lines += [
            "Host *",
            "  User root",
            f"  IdentityFile {self.client_key}",
            "  IdentitiesOnly yes",
        ]
        return "\n".join(lines) + "\n"

    def known_hosts(self, *, leave_out: tuple[str, ...] = ()) -> str:
        return "".join(
            h.known_hosts_line() for h in self.hosts.values() if h.alias not in leave_out
        )

    def leftovers(self) -> dict[str, list[int]]:
        return {a: h.processes() for a, h in self.hosts.items() if h.processes()}


def keygen(path: Path) -> str:
    """Make a key pair at ``path``; return its public half as ``type base64``."""
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scoop-test", "-f", str(path))
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    start = os.getpid() % 200 + 20
    for n in range(start, start + 230):
        k = n % 250 + 1
        if f"10.77.{k}." not in used:
            return k
    raise RuntimeError("no free 10.77.N.0/24 subnet")


def start_sshd(host: SshdHost, authorized: str, stack: contextlib.ExitStack) -> None:
    d = host.directory
    d.mkdir(parents=True)
    host.host_key = keygen(d / "host_ed25519")
    (d / "authorized_keys").write_text(authorized)
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}",
                f"Port {host.port}",
                f"HostKey {d / 'host_ed25519'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",
                "PermitRootLogin yes",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "AllowTcpForwarding yes",
                "PrintMotd no",
                "MaxStartups 100:30:200",
                f"SetEnv SCOOP_TEST_HOST={host.marker}",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    argv = [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]
    if host.netns:
        argv = ["ip", "netns", "exec", host.netns, *argv]
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    host.server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        assert host.server is not None
        host.server.terminate()
        try:
            host.server.wait(5)
        except subprocess.TimeoutExpired:
            host.server.kill()
            host.server.wait()
        host.kill_all()

    stack.callback(stop)
    pidfile = d / "sshd.pid"

    def ready() -> bool:
        if host.server is not None and host.server.poll() is not None:
            pytest.fail(f"sshd of {host.alias} exited: {(d / 'sshd.log').read_text()}")
        return pidfile.exists()

    checks.wait_for(ready, f"sshd of {host.alias} ready", READY_WITHIN)


def namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"scoop-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    with contextlib.suppress(subprocess.CalledProcessError):
        _run("ip", "netns", "del", name)
    return True


def make_namespaces(
    aliases: list[str], stack: contextlib.ExitStack
) -> tuple[dict[str, tuple[str, str]], str]:
    """A bridge with one namespace per alias, and ``hidden`` behind ``h1``:
    alias -> (namespace, address); plus an address nobody answers on."""
    tag = os.getpid() % 100000
    k = _free_subnet()
    bridge = f"scb{tag}"
    _run("ip", "link", "add", bridge, "type", "bridge")
    stack.callback(lambda: subprocess.run(["ip", "link", "del", bridge], capture_output=True))
    _run("ip", "addr", "add", f"10.77.{k}.1/24", "dev", bridge)
    _run("ip", "link", "set", bridge, "up")
    placed: dict[str, tuple[str, str]] = {}
    for i, alias in enumerate(aliases, 2):
        ns = f"scoop-{tag}-{alias}"
        _run("ip", "netns", "add", ns)
        stack.callback(
            lambda ns=ns: subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        )
        outside, inside = f"sc{tag}v{i}", f"sc{tag}p{i}"
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        stack.callback(
            lambda o=outside: subprocess.run(["ip", "link", "del", o], capture_output=True)
        )
        _run("ip", "link", "set", inside, "netns", ns)
        _run("ip", "link", "set", outside, "master", bridge, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"10.77.{k}.{i}/24", "dev", inside)
        _run("ip", "-n", ns, "link", "set", inside, "up")
        placed[alias] = (ns, f"10.77.{k}.{i}")
    # hidden: a link from h1's namespace only, on a subnet nothing else routes.
    ns = f"scoop-{tag}-hidden"
    _run("ip", "netns", "add", ns)
    stack.callback(lambda: subprocess.run(["ip", "netns", "del", ns], capture_output=True))
    h1 = placed["h1"][0]
    _run("ip", "-n", h1, "link", "add", "tohidden", "type", "veth", "peer", "name", "fromh1")
    _run("ip", "-n", h1, "link", "set", "fromh1", "netns", ns)
    _run("ip", "-n", h1, "addr", "add", "10.78.0.1/24", "dev", "tohidden")
    _run("ip", "-n", h1, "link", "set", "tohidden", "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run("ip", "-n", ns, "addr", "add", "10.78.0.2/24", "dev", "fromh1")
    _run("ip", "-n", ns, "link", "set", "fromh1", "up")
    placed["hidden"] = (ns, "10.78.0.2")
    return placed, f"10.77.{k}.250"


def free_port(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
