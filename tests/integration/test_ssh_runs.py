"""Programs run across several machines over SSH: docs/cluster.md's ``--hosts`` runs, for real.

The machines are the ssh launcher tests' cluster (``tests/plugins/launcher_ssh/ssh_hosts.py``,
loaded by path): network namespaces on a bridge, each with its own sshd, or
sshd servers on 127.0.0.2, 127.0.0.3, ... where namespaces cannot be made.
Runs are ``python -m scoop --hosts h1 h2 h3 ...`` with the test's own
ssh_config and known_hosts given as settings. Every process a host runs for
a login carries that host's marker (sshd's ``SetEnv``), so a worker can say
where it ran, and the test can check that nothing is left on any host.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import environ_without_scoop, run_command

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The plugins' scheduler_checks, which ssh_hosts imports by name as the plugin tests do.
checks = sys.modules.get("scheduler_checks") or _load(
    HERE.parent / "plugins" / "scheduler_checks.py", "scheduler_checks"
)
ssh_hosts = _load(HERE.parent / "plugins" / "launcher_ssh" / "ssh_hosts.py", "_scoop_ssh_hosts")

PROGRAM = """
import json, os, sys, time
from scoop import futures
import scoop

def where(i):
    time.sleep(0.05)
    if i == 0:
        print("hello from a worker", flush=True)
    return [i * i, os.environ.get("SCOOP_TEST_HOST", "launcher"), scoop.worker]

if __name__ == "__main__":
    out = list(futures.map(where, range(60)))
    print("RESULT " + json.dumps({
        "squares": [o[0] for o in out],
        "hosts": sorted({o[1] for o in out}),
        "workers": sorted({o[2] for o in out}),
        "root": os.environ.get("SCOOP_TEST_HOST", "launcher"),
    }), flush=True)
"""


class Machines:
    def __init__(self, cluster: Any, directory: Path) -> None:
        self.cluster = cluster
        config = directory / "ssh_config"
        config.write_text(cluster.ssh_config())
        known = directory / "known_hosts"
        known.write_text(cluster.known_hosts())
        address = cluster["h1"].address
        # The launcher's own address as the hosts see it: the bridge's.
        self.here = address.rsplit(".", 1)[0] + ".1" if cluster.in_namespaces else "127.0.0.1"
        self.env = {
            **environ_without_scoop(),
            "SCOOP_LAUNCHER_SSH_SSH_CONFIG": str(config),
            "SCOOP_LAUNCHER_SSH_KNOWN_HOSTS": str(known),
            "SCOOP_LAUNCHER_SSH_CONNECT_TIMEOUT": "5",
        }

    def marker(self, alias: str) -> str:
        return str(self.cluster[alias].marker)

    def leftovers(self) -> dict[str, list[int]]:
        deadline = time.monotonic() + 5
        while (left := self.cluster.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)  # sshd's session processes end just after the connection
        return dict(left)


def start_machines(views: dict[str, Any] | None = None) -> Iterator[Machines]:
    """The test hosts h1, h2, h3 and hbad (which refuses the login), and
    more with a :class:`ssh_hosts.View` of their own for ``views``."""
    if shutil.which("ssh-keygen") is None or not os.path.exists(ssh_hosts.SSHD):
        pytest.fail("these tests need openssh-server and openssh-client (.ci/run installs them)")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="scoop-ssh-runs-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        aliases = ["h1", "h2", "h3", "hbad", *(views or {})]
        cluster = ssh_hosts.start_cluster(directory, aliases, stack, views=views)
        yield Machines(cluster, directory)


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    yield from start_machines()


def run_scoop(
    machines: Machines,
    prog: Path,
    *flags: str,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_command(
        [sys.executable, "-m", "scoop", "--broker-hostname", machines.here, *flags, str(prog)],
        cwd=prog.parent,
        env={**machines.env, **(env or {})},
        timeout=timeout,
    )


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return dict(json.loads(line[7:]))


def test_a_program_runs_across_three_hosts(machines, write_program):
    prog = write_program(PROGRAM)
    proc = run_scoop(machines, prog, "--hosts", "h1", "h1", "h2", "h2", "h3", "h3")
    got = result_of(proc)
    assert got["squares"] == [i * i for i in range(60)]
    assert got["hosts"] == sorted(machines.marker(a) for a in ("h1", "h2", "h3"))
    assert len(got["workers"]) == 6
    # As in SCOOP, the first host runs the program itself.
    assert got["root"] == machines.marker("h1")
    # A worker's output reaches this terminal, prefixed with its host.
    assert any(
        line.startswith("[h") and line.endswith("hello from a worker")
        for line in proc.stdout.splitlines()
    ), proc.stdout
    assert machines.leftovers() == {}


def test_a_killed_remote_worker_is_recovered(machines, write_program, tmp_path):
    prog = write_program(
        PROGRAM.replace(
            "    time.sleep(0.05)\n",
            "    time.sleep(0.05)\n"
            "    flag = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'killed')\n"
            "    if scoop.worker == 'worker-3' and not os.path.exists(flag):\n"
            "        open(flag, 'w').close()\n"
            "        os.kill(os.getpid(), 9)\n",
        )
    )
    proc = run_scoop(machines, prog, "--hosts", "localhost", "h2", "h3", "-n", "3")
    got = result_of(proc)
    assert (tmp_path / "killed").exists()
    assert got["squares"] == [i * i for i in range(60)]
    assert "worker-3" in proc.stderr and "-9" in proc.stderr
    assert machines.leftovers() == {}


def test_a_host_that_refuses_the_login_is_named_and_nothing_is_left(machines, write_program):
    prog = write_program(PROGRAM)
    start = time.monotonic()
    proc = run_scoop(machines, prog, "--hosts", "h1", "hbad", "h2", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "hbad" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30
    assert machines.leftovers() == {}


NAPPING = """
import time
from scoop import futures

def nap(i):
    time.sleep(60)

if __name__ == "__main__":
    fs = [futures.submit(nap, i) for i in range(4)]
    print("READY", flush=True)
    [f.result() for f in fs]
"""
"""A program whose futures take a minute: it says READY once they are submitted."""


def test_ctrl_c_stops_every_host(machines, write_program, tmp_path):
    prog = write_program(NAPPING)
    argv = [sys.executable, "-m", "scoop", "--broker-hostname", machines.here]
    run = checks.start_piped(
        [*argv, "--hosts", "localhost", "h2", "h3", str(prog)], machines.env, cwd=prog.parent
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline().strip() == "READY"
        assert machines.cluster["h2"].processes() and machines.cluster["h3"].processes()
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 128 + signal.SIGINT
    finally:
        if run.poll() is None:
            run.kill()
    assert machines.leftovers() == {}


def test_tunnel_reaches_a_broker_that_listens_on_loopback_only(machines, write_program):
    prog = write_program(PROGRAM)
    proc = run_command(
        [sys.executable, "-m", "scoop", "--tunnel", "--hosts", "h2", "h2", "h3", "-v", str(prog)],
        cwd=prog.parent,
        env=machines.env,
        timeout=180,
    )
    got = result_of(proc)
    assert got["squares"] == [i * i for i in range(60)]
    assert got["hosts"] == sorted(machines.marker(a) for a in ("h2", "h3"))
    # The broker never listened beyond this machine: the hosts came in through SSH.
    assert "broker at tcp://127.0.0.1:" in proc.stderr, proc.stderr
    assert machines.leftovers() == {}


def test_worker_flags_apply_on_remote_hosts(machines, write_program, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_mod.py").write_text("VALUE = 'from pythonpath'\n")
    (tmp_path / "prolog.sh").write_text("export FROM_PROLOG=yes\n")
    (tmp_path / "work").mkdir()
    prog = write_program(
        """
import json, os
from scoop import futures

def probe(_):
    import helper_mod
    return [helper_mod.VALUE, os.environ.get("FROM_PROLOG"), os.nice(0),
            os.path.basename(os.getcwd()), os.environ.get("SCOOP_TEST_HOST")]

if __name__ == "__main__":
    print("RESULT " + json.dumps(list(futures.map(probe, range(4)))), flush=True)
"""
    )
    proc = run_scoop(
        machines,
        prog,
        "--hosts",
        "h2",
        "h3",
        "--pythonpath",
        str(tmp_path / "lib"),
        "--prolog",
        str(tmp_path / "prolog.sh"),
        "--nice",
        "5",
        "--path",
        str(tmp_path / "work"),
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    rows = json.loads(line[7:])
    assert {tuple(r[:4]) for r in rows} == {("from pythonpath", "yes", 5, "work")}
    assert {r[4] for r in rows} <= {machines.marker("h2"), machines.marker("h3")}
    assert machines.leftovers() == {}
