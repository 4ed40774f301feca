"""The test cluster behind conftest.py's fixtures: sshd servers, and what runs for them.

Kept out of conftest.py so that test modules can import it by a name no
other directory uses.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import warnings
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


NOISY_BASHRC = r"""
echo "Welcome to a noisy login"
echo "a login warning on stderr" >&2
printf '\000\377\376\033[31mbinary junk without a newline'
printf '\377\000binary junk on stderr' >&2
"""
"""A login script that prints, as users' do: lines, and binary junk with no
final newline, on stdout and on stderr. Bash runs ``~/.bashrc`` for the
commands sshd gives it, not only for interactive shells."""


@dataclass(frozen=True)
class View:
    """What a host sees of this machine's files, when not all of it.

    ``hides``: directories it does not see (an empty tmpfs over each, in
    the sshd's own mount namespace), as a host without the shared file
    system would; ``bashrc``: the login user's (root's) ``~/.bashrc``
    there, a file of its own mounted over root's; ``tmp_bytes``: the size
    of its temporary directory (``TMPDIR``, a tmpfs of its own), as on a
    node whose ``/tmp`` is all but full."""

    hides: tuple[Path, ...] = ()
    bashrc: str | None = None
    tmp_bytes: int | None = None


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
    view: View = field(default_factory=View)

    @property
    def temporary(self) -> Path:
        """The host's temporary directory, as it sees it."""
        return self.directory / "tmp" if self.view.tmp_bytes else Path(tempfile.gettempdir())

    def own(self, path: Path | str) -> Path:
        """``path`` as this host sees it (through its sshd's root: another
        mount namespace when it has a :class:`View`)."""
        assert self.server is not None
        return Path(f"/proc/{self.server.pid}/root") / Path(path).relative_to("/")

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
                f"SetEnv SCOOP_TEST_HOST={host.marker}"
                + (f" TMPDIR={host.temporary}" if host.view.tmp_bytes else ""),
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    argv = [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]
    if host.view != View():
        argv = _in_own_mounts(host, argv)
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


def _in_own_mounts(host: SshdHost, argv: list[str]) -> list[str]:
    """``argv`` run in a mount namespace of its own, where the host's
    :class:`View` holds: what it hides covered, its login script its own."""
    script = ["set -e"]
    for hidden in host.view.hides:
        script.append(f"mount -t tmpfs -o mode=0755 scoop-hidden {shlex.quote(str(hidden))}")
    if host.view.bashrc is not None:
        # Over the file alone: the rest of the home stays (a Python installed there, say).
        bashrc = Path(pwd.getpwnam("root").pw_dir) / ".bashrc"
        if not bashrc.is_file():
            pytest.fail(f"{bashrc} is missing: the noisy login is a file mounted over it")
        noisy = host.directory / "bashrc"
        noisy.write_text(host.view.bashrc)
        script.append(f"mount --bind {shlex.quote(str(noisy))} {shlex.quote(str(bashrc))}")
    if host.view.tmp_bytes:
        host.temporary.mkdir()
        script.append(
            f"mount -t tmpfs -o size={host.view.tmp_bytes} scoop-tmp {shlex.quote(str(host.temporary))}"
        )
    script.append('exec "$@"')
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "\n".join(script),
        "sh",
        *argv,
    ]


def start_cluster(
    directory: Path,
    aliases: list[str],
    stack: contextlib.ExitStack,
    *,
    views: dict[str, View] | None = None,
    ports: dict[str, int] | None = None,
    hidden: bool = False,
    refused: tuple[str, ...] = ("hbad",),
) -> Cluster:
    """sshd servers for ``aliases`` (``h1`` among them), each in a network
    namespace of its own, on port 22 or the one ``ports`` gives it; with
    ``hidden``, one more host, ``hidden``, that only ``h1`` reaches. Where
    namespaces cannot be made (or with ``SCOOP_TEST_SSH_LOOPBACK=1``), sshd
    servers on 127.0.0.2, 127.0.0.3, ... instead, and ``hidden`` is not
    hidden. The hosts in ``refused`` do not take the client's key; those in
    ``views`` see this machine as their :class:`View` says."""
    authorized = keygen(directory / "client_ed25519") + "\n"
    stranger = keygen(directory / "stranger_ed25519") + "\n"
    names = [*aliases, *(["hidden"] if hidden else [])]
    in_namespaces = not os.environ.get("SCOOP_TEST_SSH_LOOPBACK") and namespaces_work()
    if in_namespaces:
        placed, unreachable = make_namespaces(aliases, stack)
        places = [(alias, *placed[alias], (ports or {}).get(alias, 22)) for alias in names]
    else:
        warnings.warn(
            "ssh launcher tests: no network namespaces here; the test hosts are sshd "
            "servers on 127.0.0.2, 127.0.0.3, ... instead, and ProxyJump's target is "
            "reachable without the jump",
            stacklevel=1,
        )
        unreachable = "10.255.255.1"  # nothing there speaks SSH
        places = []
        for i, alias in enumerate(names, 2):
            address = f"127.0.0.{i}"
            places.append((alias, None, address, free_port(address)))
    hosts = {}
    for alias, ns, address, port in places:
        hosts[alias] = SshdHost(
            alias,
            address,
            port,
            f"{alias}-{os.getpid()}",
            directory / alias,
            ns,
            view=(views or {}).get(alias, View()),
        )
        start_sshd(hosts[alias], stranger if alias in refused else authorized, stack)
    return Cluster(hosts, directory / "client_ed25519", in_namespaces, unreachable, directory)


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
