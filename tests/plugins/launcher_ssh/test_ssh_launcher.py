"""The ssh launcher against real sshd servers (see conftest.py for the hosts).

The workers here are small Python programs standing in for scoop's: they
print their name and what they were given, then sleep until stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import scheduler_checks as checks
from scoop_launcher_ssh.launcher import SshLauncher
from ssh_hosts import Cluster, all_pids, cmdline

from scoop_core.errors import ConfigError, LaunchError, UsageError
from scoop_core.hosts import parse_host
from scoop_core.interfaces import WorkerGroup, WorkerSpec
from scoop_core.plugins.manager import get_plugin_manager

WORKER = """
import os, signal, socket, sys, time
name = os.environ["_SCOOP_NAME"]
mode = sys.argv[1] if len(sys.argv) > 1 else ""
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "tunnel":
    address = os.environ["_SCOOP_ADDRESS"]
    host, port = address.split("://")[1].split("#")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(name.encode() + b"\\n")
        reply = s.makefile().readline().strip()
    print(f"{name} dialled {address} and heard {reply}", flush=True)
print(f"{name} says {os.environ.get('TEST_SECRET', '-')} pid {os.getpid()}", flush=True)
print(f"{name} on stderr", file=sys.stderr, flush=True)
time.sleep(600)
"""


def spec(name: str, host: str, *args: str, **env: str) -> WorkerSpec:
    return WorkerSpec(
        name=name,
        host=host,
        argv=(sys.executable, "-c", WORKER, *args),
        env={"_SCOOP_NAME": name, **env},
    )


class Output:
    """Everything the launcher forwarded to this process's stdout and stderr so far."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def _read(self) -> None:
        got = self.capsys.readouterr()
        self.out += got.out
        self.err += got.err

    def wait_for(self, *texts: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            self._read()
            return all(t in self.out + self.err for t in texts)

        checks.wait_for(seen, f"output {texts} (got {self.out!r} {self.err!r})", timeout)

    def pid(self, name: str) -> int:
        for line in self.out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[1] == name and "pid" in words:
                return int(words[words.index("pid") + 1])
        raise AssertionError(f"{name} printed no pid in {self.out!r}")


@pytest.fixture(params=["", "ssh"], ids=["paramiko", "ssh"])
def client_settings(
    request: pytest.FixtureRequest, ssh_settings: Callable[..., dict[str, Any]]
) -> Callable[..., dict[str, Any]]:
    """:func:`ssh_settings` for either SSH client: a test that takes them runs
    once with paramiko, in this process, and once with the ``ssh`` program."""

    def make(**overrides: Any) -> dict[str, Any]:
        return ssh_settings(ssh_executable=request.param, **overrides)

    return make


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> Output:
    return Output(capsys)


@pytest.fixture
def started() -> Iterator[Callable[[SshLauncher, list[WorkerSpec]], WorkerGroup]]:
    """Start workers through a launcher; whatever a test leaves running is stopped."""
    groups: list[WorkerGroup] = []

    def start(launcher: SshLauncher, specs: list[WorkerSpec]) -> WorkerGroup:
        group = launcher.start(specs)
        groups.append(group)
        return group

    yield start
    for group in groups:
        group.stop(0.5)


def ssh_banner(address: str, port: int) -> bytes:
    """What an sshd at ``address:port`` says first, as seen from here (b"": nothing)."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(64)
    except OSError:
        return b""


def nothing_left(cluster: Cluster, *aliases: str) -> None:
    checks.wait_for(
        lambda: not any(cluster[a].processes() for a in aliases),
        f"no process left on {aliases} (left: {cluster.leftovers()})",
        5.0,
    )


def test_workers_on_three_hosts_print_through_the_launcher_prefixed_by_host(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    launcher = SshLauncher(ssh_settings())
    group = started(
        launcher, [spec("w1", "h1"), spec("w2", "h2"), spec("w3", "h3"), spec("w4", "h3")]
    )

    output.wait_for("[h1] w1 says", "[h2] w2 says", "[h3] w3 says", "[h3] w4 says")
    output.wait_for("[h1] w1 on stderr", "[h2] w2 on stderr")
    assert "[h1] w1 on stderr" in output.err
    assert group.poll() == {"w1": None, "w2": None, "w3": None, "w4": None}


def test_the_environment_reaches_workers_but_no_command_line(
    cluster: Cluster, client_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    secret = secrets.token_hex(16)
    key = secrets.token_hex(32)
    specs = [
        spec(f"w{i}", h, TEST_SECRET=secret, _SCOOP_KEY=key)
        for i, h in enumerate(["h1", "h2", "h3"])
    ]
    started(SshLauncher(client_settings()), specs)

    output.wait_for(*(f"w{i} says {secret}" for i in range(3)))
    for pid in all_pids():
        line = cmdline(pid)
        assert secret.encode() not in line and key.encode() not in line, line


def test_a_worker_killed_on_its_host_is_reported_with_its_signal_at_once(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    group = started(SshLauncher(ssh_settings()), [spec("w1", "h1"), spec("w2", "h2")])
    output.wait_for("w1 says", "w2 says")

    os.kill(output.pid("w1"), signal.SIGKILL)

    checks.wait_for(lambda: group.poll()["w1"] is not None, "w1's death reported", 2.0)
    assert group.poll() == {"w1": -signal.SIGKILL, "w2": None}


def test_workers_that_end_on_their_own_are_reported_with_their_status(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    ending = WorkerSpec(
        name="w1", host="h1", argv=(sys.executable, "-c", "print('bye', flush=True); exit(3)")
    )
    group = started(SshLauncher(ssh_settings()), [ending, spec("w2", "h2")])

    checks.wait_for(lambda: group.poll()["w1"] is not None, "w1's exit reported", 10.0)
    output.wait_for("[h1] bye", "w2 says")
    assert group.poll() == {"w1": 3, "w2": None}
    assert not [p for p in cluster["h1"].processes() if b"exit(3)" in cmdline(p)]
    # h1's supervisor stays while the run lasts, to start a replacement
    # there, and goes with the run.
    group.stop(1.0)
    checks.wait_for(
        lambda: not [p for p in cluster["h1"].processes() if b"scoop_core" in cmdline(p)],
        "h1's supervisor gone",
        5.0,
    )
    output.wait_for()
    assert "Fatal" not in output.err and "Traceback" not in output.err


def test_stop_leaves_no_process_on_any_host_even_workers_that_ignore_sigterm(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], output: Output
) -> None:
    specs = [spec(f"w{i}{h}", h, "stubborn") for h in ("h1", "h2", "h3") for i in range(2)]
    specs.append(spec("local", "localhost"))
    group = SshLauncher(ssh_settings()).start(specs)
    output.wait_for(*(f"w{i}{h} says" for h in ("h1", "h2", "h3") for i in range(2)))
    assert cluster["h1"].processes()

    began = time.monotonic()
    group.stop(0.5)

    assert time.monotonic() - began < 5.0
    assert all(status is not None for status in group.poll().values())
    nothing_left(cluster, "h1", "h2", "h3")


def test_an_unknown_host_key_is_refused_with_how_to_accept_it(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]]
) -> None:
    launcher = SshLauncher(ssh_settings(leave_out=("h2",)))

    with pytest.raises(LaunchError) as caught:
        launcher.start([spec("w1", "h1"), spec("w2", "h2"), spec("w3", "h3")])

    message = str(caught.value)
    assert message.startswith("the host key of h2 is unknown (ssh-ed25519 SHA256:")
    h2 = cluster["h2"]
    port = "" if h2.port == 22 else f" -p {h2.port}"
    assert f"ssh-keyscan{port} {h2.address} >> " in message
    assert 'host_key_policy = "accept-new"' in message
    nothing_left(cluster, "h1", "h3")


def test_accept_new_trusts_an_unknown_host_and_remembers_it(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    settings = ssh_settings(leave_out=("h1",), host_key_policy="accept-new")
    started(SshLauncher(settings), [spec("w1", "h1")])

    output.wait_for("[h1] w1 says")
    assert cluster["h1"].known_hosts_line() in Path(settings["known_hosts"]).read_text()


def test_a_hosts_strict_host_key_checking_in_ssh_config_wins(
    cluster: Cluster, client_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    settings = client_settings(
        leave_out=("h2",), config_extra="Host h2\n  StrictHostKeyChecking accept-new\n"
    )

    started(SshLauncher(settings), [spec("w1", "h1"), spec("w2", "h2")])

    output.wait_for("[h2] w2 says")
    assert cluster["h2"].address in Path(settings["known_hosts"]).read_text()


def test_a_refused_login_is_named_within_the_timeout_and_the_other_hosts_are_cleared(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]]
) -> None:
    launcher = SshLauncher(ssh_settings(connect_timeout=5.0))
    began = time.monotonic()

    with pytest.raises(LaunchError) as caught:
        launcher.start([spec("w1", "h1"), spec("w2", "h2"), spec("w3", "hbad")])

    assert time.monotonic() - began < 5.0
    assert str(caught.value).startswith("login to root@hbad failed: Authentication failed")
    assert "nothing is ever prompted" in str(caught.value)
    nothing_left(cluster, "h1", "h2", "hbad")


def test_a_login_with_no_key_to_offer_says_how_to_make_one(
    cluster: Cluster,
    ssh_settings: Callable[..., dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ssh_settings(connect_timeout=5.0)
    config = Path(settings["ssh_config"])
    config.write_text(
        config.read_text().replace(str(cluster.client_key), str(tmp_path / "no-such-key"))
    )
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* either

    with pytest.raises(LaunchError) as caught:
        SshLauncher(settings).start([spec("w1", "h1")])

    message = str(caught.value)
    assert message.startswith("login to root@h1 failed: no key to offer"), message
    assert "ssh-keygen" in message and "IdentityFile" in message
    nothing_left(cluster, "h1")


@pytest.mark.parametrize(
    ("host", "cause"),
    [
        ("nowhere", "no answer within 1.5 s"),
        ("h1:2200", "connection refused"),
    ],
)
def test_an_unreachable_host_is_named_within_the_timeout(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], host: str, cause: str
) -> None:
    launcher = SshLauncher(ssh_settings(connect_timeout=1.5))
    began = time.monotonic()

    with pytest.raises(LaunchError) as caught:
        launcher.start([spec("w1", "h2"), spec("w2", host)])

    assert time.monotonic() - began < 1.5 + 1.0
    message = str(caught.value)
    assert host in message
    if cluster.in_namespaces or host != "nowhere":
        assert message.startswith(f"cannot reach {host}") and cause in message
    nothing_left(cluster, "h2")


def test_ssh_config_aliases_user_port_and_identity_file_are_honoured(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    # h3 listens on port 2222 only: its alias, port and key all come from ssh_config.
    h1 = cluster["h1"]
    extra = f"Host asbob\n  HostName {h1.address}\n  Port {h1.port}\n  User bob\n"
    launcher = SshLauncher(ssh_settings(config_extra=extra))

    started(launcher, [spec("w1", "h3"), spec("w2", "root@asbob")])
    output.wait_for("[h3] w1 says", "[root@asbob] w2 says")

    with pytest.raises(LaunchError, match=r"^login to bob@asbob failed"):
        launcher.start([spec("w3", "asbob")])


def test_proxyjump_reaches_a_host_only_the_jump_host_can_reach(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    if cluster.in_namespaces:
        assert ssh_banner(cluster["h1"].address, 22).startswith(b"SSH-")
        assert not ssh_banner(cluster["hidden"].address, 22).startswith(b"SSH-")

    started(SshLauncher(ssh_settings()), [spec("w1", "hidden"), spec("w2", "h2")])

    output.wait_for("[hidden] w1 says", "[h2] w2 says")


def test_an_external_ssh_program_starts_and_stops_workers_too(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], output: Output
) -> None:
    launcher = SshLauncher(ssh_settings(ssh_executable="ssh"))
    group = launcher.start([spec("w1", "h1", "stubborn"), spec("w2", "h3", TEST_SECRET="s")])
    output.wait_for("[h1] w1 says", "[h3] w2 says s", "[h3] w2 on stderr")

    group.stop(0.5)

    nothing_left(cluster, "h1", "h3")


def test_an_external_ssh_program_names_the_host_it_cannot_log_in_to(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]]
) -> None:
    launcher = SshLauncher(ssh_settings(ssh_executable="ssh", leave_out=("h2",)))

    with pytest.raises(LaunchError) as caught:
        launcher.start([spec("w1", "h1"), spec("w2", "h2")])

    assert str(caught.value).startswith("h2: ssh failed: ")
    assert "Host key verification failed" in str(caught.value)
    nothing_left(cluster, "h1", "h2")


def test_an_rsh_program_gets_the_user_but_no_port_and_no_options(
    cluster: Cluster,
    ssh_settings: Callable[..., dict[str, Any]],
    started: Any,
    output: Output,
    tmp_path: Path,
) -> None:
    # This "rsh" is ssh in disguise, taking rsh's arguments: [-l user] host command.
    settings = ssh_settings()
    rsh = tmp_path / "rsh"
    rsh.write_text(
        f"#!/bin/sh\nexec ssh -F {settings['ssh_config']} "
        f'-o UserKnownHostsFile={settings["known_hosts"]} -o BatchMode=yes "$@"\n'
    )
    rsh.chmod(0o755)
    launcher = SshLauncher({**settings, "ssh_executable": str(rsh)})

    started(launcher, [spec("w1", "root@h1"), spec("w2", "h2")])
    output.wait_for("[root@h1] w1 says", "[h2] w2 says")

    with pytest.raises(LaunchError, match="rsh cannot log in on another port"):
        launcher.start([spec("w3", "h3:2222")])


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"echo:" + self.rfile.readline())


@pytest.fixture
def broker_stand_in() -> Iterator[int]:
    """A TCP server on this machine's loopback, which the test hosts cannot dial."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_tunnel_carries_workers_to_a_broker_they_cannot_reach(
    cluster: Cluster,
    client_settings: Callable[..., dict[str, Any]],
    started: Any,
    output: Output,
    broker_stand_in: int,
) -> None:
    address = f"tcp://127.0.0.1:{broker_stand_in}#curve=00ff"
    specs = [spec(f"w{i}", h, "tunnel", _SCOOP_ADDRESS=address) for i, h in enumerate(["h1", "h2"])]
    specs.append(spec("w2", "h2", "tunnel", _SCOOP_ADDRESS=address))

    started(SshLauncher(client_settings(tunnel=True)), specs)

    output.wait_for(*(f"w{i} dialled" for i in range(3)), *(f"heard echo:w{i}" for i in range(3)))
    for line in output.out.splitlines():
        if "dialled" in line:
            dialled = line.split()[3]
            assert dialled.startswith("tcp://127.0.0.1:") and dialled.endswith("#curve=00ff")
            assert dialled != address
    assert "Allocated port" not in output.err


def test_tunnel_needs_ssh_not_rsh(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    rsh = tmp_path / "rsh"
    rsh.write_text("#!/bin/sh\nexit 1\n")
    rsh.chmod(0o755)
    launcher = SshLauncher(ssh_settings(tunnel=True, ssh_executable=str(rsh)))

    with pytest.raises(LaunchError, match="--tunnel needs ssh, not rsh"):
        launcher.start([spec("w1", "h1", _SCOOP_ADDRESS="tcp://127.0.0.1:5555")])


def test_path_prolog_and_pythonpath_apply_on_the_host(
    ssh_settings: Callable[..., dict[str, Any]], started: Any, output: Output, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "extra.py").write_text("WORD = 'from-pythonpath'\n")
    (tmp_path / "probe.py").write_text(
        "import os, time, extra\n"
        "print('cwd', os.getcwd(), os.environ['FROM_PROLOG'], extra.WORD, flush=True)\n"
        "time.sleep(600)\n"
    )
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export FROM_PROLOG=from-prolog\n")
    wrapper = ("/bin/sh", "-c", '. "$1" || exit 1; shift; exec "$@"', "sh", str(prolog))
    worker = WorkerSpec(
        name="w1",
        host="h2",
        argv=(*wrapper, sys.executable, "-m", "probe"),
        env={"PYTHONPATH": str(tmp_path / "lib")},
        cwd=str(tmp_path),
    )

    started(SshLauncher(ssh_settings()), [worker])

    output.wait_for(f"[h2] cwd {tmp_path} from-prolog from-pythonpath")


def test_a_supervisor_that_cannot_start_is_reported_with_its_cause(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]]
) -> None:
    worker = WorkerSpec(
        name="w1", host="h1", argv=("/nonexistent/python3", "-m", "scoop_core.bootstrap")
    )

    with pytest.raises(LaunchError) as caught:
        SshLauncher(ssh_settings()).start([worker, spec("w2", "h2")])

    message = str(caught.value)
    assert message.startswith("cannot start the scoop supervisor on h1: ")
    assert "/nonexistent/python3" in message and "--python-interpreter" in message
    nothing_left(cluster, "h1", "h2")


def test_count_cores_asks_each_host(
    cluster: Cluster, client_settings: Callable[..., dict[str, Any]]
) -> None:
    here = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    hosts = [parse_host(h) for h in ("h1", "root@h3", "hnoisy", "localhost")]

    cores = SshLauncher(client_settings()).count_cores(hosts)

    local = len(os.sched_getaffinity(0))
    assert cores == {"h1": here, "root@h3": here, "hnoisy": here, "localhost": local}
    nothing_left(cluster, "h1", "h3", "hnoisy")


def test_a_login_that_prints_neither_breaks_the_start_nor_reaches_the_output(
    cluster: Cluster, client_settings: Callable[..., dict[str, Any]], started: Any, output: Output
) -> None:
    group = started(
        SshLauncher(client_settings()), [spec("w1", "hnoisy", TEST_SECRET="s"), spec("w2", "h1")]
    )

    output.wait_for("[hnoisy] w1 says s", "[hnoisy] w1 on stderr", "[h1] w2 says")
    assert group.poll() == {"w1": None, "w2": None}
    for text in ("noisy login", "login warning", "binary junk"):
        assert text not in output.out + output.err


def test_a_path_directory_a_host_lacks_fails_the_start_on_every_host(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    lacking = WorkerSpec("w1", "h2", spec("w1", "h2").argv, cwd=str(tmp_path / "only-here"), env={})

    with pytest.raises(LaunchError) as caught:
        SshLauncher(ssh_settings()).start([spec("w0", "h1"), lacking])

    assert str(caught.value) == (
        f"h2: the host does not see the directory {tmp_path / 'only-here'} (--path): "
        "use a shared file system, or make it there"
    )
    nothing_left(cluster, "h1", "h2")


def test_the_plugin_builds_the_launcher_and_checks_its_settings(tmp_path: Path) -> None:
    plugin = get_plugin_manager().launcher("ssh")
    assert {s.name for s in plugin.settings} >= {
        "connect_timeout",
        "host_key_policy",
        "known_hosts",
        "ssh_config",
        "ssh_executable",
        "tunnel",
    }
    empty = tmp_path / "config"
    empty.write_text("")
    assert isinstance(plugin.factory({"ssh_config": str(empty)}), SshLauncher)
    with pytest.raises(ConfigError, match="choose one of: reject, accept-new, warn"):
        plugin.factory({"host_key_policy": "trust-me", "ssh_config": str(empty)})
    with pytest.raises(ConfigError, match="not an executable program"):
        plugin.factory({"ssh_executable": "/nonexistent/ssh"})
    with pytest.raises(
        UsageError, match=r"^--upload-file /nonexistent/data\.csv: no such file here"
    ):
        plugin.factory({"upload_files": ["/nonexistent/data.csv"], "ssh_config": str(empty)})
    with pytest.raises(UsageError, match=f"^--upload-file {tmp_path}: a directory here"):
        plugin.factory({"upload_files": [str(tmp_path)], "ssh_config": str(empty)})


LAUNCHER = """
import json, sys, time
from scoop_core.interfaces import WorkerSpec
from scoop_launcher_ssh.launcher import SshLauncher
settings, specs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
SshLauncher(settings).start([WorkerSpec(**{**s, "argv": tuple(s["argv"])}) for s in specs])
time.sleep(600)
"""


@pytest.mark.parametrize("client", ["paramiko", "ssh"])
def test_a_launcher_killed_outright_leaves_nothing_on_the_hosts(
    cluster: Cluster, ssh_settings: Callable[..., dict[str, Any]], client: str
) -> None:
    settings = ssh_settings(ssh_executable="" if client == "paramiko" else "ssh")
    specs = [spec("w1", "h1", "stubborn"), spec("w2", "h2")]
    plain = [{"name": s.name, "host": s.host, "argv": s.argv, "env": dict(s.env)} for s in specs]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(settings), json.dumps(plain)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []

        def read() -> None:
            for line in launcher.stdout or ():
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        checks.wait_for(
            lambda: sum("says" in line for line in lines) == 2, f"both workers up ({lines})", 15.0
        )
    finally:
        launcher.kill()
        launcher.wait()

    nothing_left(cluster, "h1", "h2")
    checks.wait_for(
        lambda: not any(settings["ssh_config"].encode() in cmdline(p) for p in all_pids()),
        "no ssh client left here",
        5.0,
    )
