"""A third-party transport plugin, installed the way pip would, used by real runs.

The plugin ``scoop-loopback`` (entry point ``loopback`` in group ``scoop``)
registers the transport ``loopback-zmq``: the built-in ZeroMQ transport
wrapped so that every process that binds or connects through it leaves a
marker file ``<pid>-<role>`` in the directory named by its own setting
``transport.loopback-zmq.marker_dir``. Next to it sits ``scoop-broken``,
whose module fails to import. Both are fake distributions (a module and a
``.dist-info`` with ``entry_points.txt``) in a directory on ``PYTHONPATH``,
which is all ``importlib.metadata`` needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import run_command, wait_gone

LOOPBACK_SOURCE = '''
"""The ZeroMQ transport, recording which processes use it."""

import os

from scoop_core.interfaces import Transport
from scoop_core.plugins import Setting, TransportPlugin, hookimpl
from scoop_transport_zmq import make_transport


class LoopbackZmq(Transport):
    def __init__(self, settings):
        self.marker_dir = settings.get("marker_dir", "")
        self.inner = make_transport({})

    def _mark(self, role):
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, f"{os.getpid()}-{role}"), "w"):
                pass

    def bind(self, *, run_id, public=False):
        self._mark("hub")
        return self.inner.bind(run_id=run_id, public=public)

    def connect(self, address, *, identity):
        self._mark(identity.decode())
        return self.inner.connect(address, identity=identity)


@hookimpl
def scoop_transports():
    return [
        TransportPlugin(
            "loopback-zmq",
            LoopbackZmq,
            "ZeroMQ, recording who uses it",
            settings=(Setting("marker_dir", str, "", "where each process leaves <pid>-<role>"),),
        )
    ]
'''

BROKEN_SOURCE = """
import scoop_broken_missing_dependency  # not installed anywhere
"""

PROGRAM = """
import json, os, time
from scoop import futures

def sq(x):
    return x * x

def pid(_):
    time.sleep(0.01)
    return os.getpid()

if __name__ == "__main__":
    result = {
        "squares": list(futures.map(sq, range(200))),
        "one": futures.submit(sq, 12).result(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "workers": sorted(set(futures.map(pid, range(40)))),
    }
    print("RESULT " + json.dumps(result), flush=True)
"""


def scoop_command() -> list[str]:
    """The ``scoop`` console script of this Python (the one next to it, if there)."""
    beside = Path(sys.executable).with_name("scoop")
    found = str(beside) if beside.exists() else shutil.which("scoop")
    assert found, "the scoop console script is not installed"
    return [found]


def install(
    site: Path, dist: str, version: str, module: str, entry_point: str, source: str
) -> None:
    """Leave in ``site`` what ``pip install`` of a one-module plugin would leave."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[scoop]\n{entry_point} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site")
    install(path, "scoop-loopback", "1.2.3", "scoop_loopback", "loopback", LOOPBACK_SOURCE)
    install(path, "scoop-broken", "0.1", "scoop_broken", "broken", BROKEN_SOURCE)
    return path


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def plugin_env(site: Path, markers: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a process with both plugins installed."""
    monkeypatch.delenv("SCOOP_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("SCOOP_TRANSPORT", raising=False)
    current = os.environ.get("PYTHONPATH")
    return {
        "PYTHONPATH": os.pathsep.join([str(site), *([current] if current else [])]),
        "SCOOP_TRANSPORT_LOOPBACK_ZMQ_MARKER_DIR": str(markers),
    }


def roles(markers: Path) -> dict[str, int]:
    """Marker files as ``{role: pid}``."""
    found = {}
    for marker in markers.iterdir():
        pid, _, role = marker.name.partition("-")
        assert role not in found, f"two processes connected as {role}"
        found[role] = int(pid)
    return found


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    loaded: dict[str, Any] = json.loads(line[7:])
    return loaded


@pytest.mark.parametrize("how", ["python -m scoop", "scoop run"])
def test_a_run_uses_the_third_party_transport_in_every_process(
    how, write_program, scoop_run, plugin_env, markers
):
    prog = write_program(PROGRAM)
    # Every future must cross the transport: the root would run cheap ones itself.
    plugin_env = {**plugin_env, "SCOOP_ROOT_RUNS_FUTURES": "false"}
    if how == "python -m scoop":
        proc = scoop_run(prog, flags=("--transport", "loopback-zmq", "-n", "2"), env=plugin_env)
    else:
        proc = scoop_run(
            prog,
            command=[*scoop_command(), "--transport", "loopback-zmq", "run"],
            flags=("-n", "2"),
            env=plugin_env,
        )
    got = result(proc)
    assert got["squares"] == [x * x for x in range(200)]
    assert got["one"] == 144

    used = roles(markers)
    assert sorted(used) == ["hub", "root", "worker-1", "worker-2"]
    assert used["root"] == got["pid"]
    # The broker runs in the launcher, the root's parent.
    assert used["hub"] == got["ppid"]
    workers = {used["worker-1"], used["worker-2"]}
    assert len(workers | {used["hub"], used["root"]}) == 4
    assert set(got["workers"]) <= workers

    # The broken plugin next to it was skipped, and said so.
    assert "scoop-broken" in proc.stderr
    assert "scoop_broken_missing_dependency" in proc.stderr


def test_an_executor_uses_the_third_party_transport(write_program, plugin_env, markers, tmp_path):
    prog = write_program(
        """
        import json, os
        import scoop_core

        def sq(x):
            return x * x

        if __name__ == "__main__":
            with scoop_core.Executor(workers=2, transport="loopback-zmq") as pool:
                out = {"squares": list(pool.map(sq, range(50))), "pid": os.getpid()}
            print("RESULT " + json.dumps(out), flush=True)
        """
    )
    proc = run_command([sys.executable, str(prog)], cwd=tmp_path, env={**os.environ, **plugin_env})
    got = result(proc)
    assert wait_gone(str(prog)) == []
    assert got["squares"] == [x * x for x in range(50)]

    used = roles(markers)
    pid = got["pid"]
    assert sorted(used) == [f"client-{pid}", "hub", "worker-1", "worker-2"]
    assert used["hub"] == used[f"client-{pid}"] == pid
    assert pid not in {used["worker-1"], used["worker-2"]}


def table(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """``scoop plugins`` output as ``{(PLUGIN, NAME): row}``."""
    header, *lines = text.splitlines()
    columns = header.split()
    rows = [dict(zip(columns, line.split(None, len(columns) - 1), strict=True)) for line in lines]
    return {(row["PLUGIN"], row["NAME"]): row for row in rows}


def test_scoop_plugins_lists_the_plugin_and_the_broken_one(plugin_env):
    proc = run_command([*scoop_command(), "plugins"], env={**os.environ, **plugin_env})
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)

    assert rows[("loopback", "loopback-zmq")] == {
        "NAME": "loopback-zmq",
        "KIND": "transport",
        "PLUGIN": "loopback",
        "DISTRIBUTION": "scoop-loopback",
        "VERSION": "1.2.3",
        "STATUS": "enabled",
    }
    assert rows[("zmq", "zmq")]["STATUS"] == "enabled"
    broken = rows[("broken", "-")]
    assert (broken["DISTRIBUTION"], broken["VERSION"]) == ("scoop-broken", "0.1")
    assert broken["STATUS"].startswith("error: cannot import scoop_broken")
    assert "scoop_broken_missing_dependency" in broken["STATUS"]


@pytest.mark.parametrize("disabled", ["loopback-zmq", "loopback"])
def test_a_disabled_plugin_cannot_be_selected(
    disabled, write_program, scoop_run, plugin_env, markers
):
    prog = write_program(PROGRAM)
    env = {**plugin_env, "SCOOP_DISABLE_PLUGINS": disabled}
    proc = scoop_run(prog, flags=("--transport", "loopback-zmq", "-n", "2"), env=env)

    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line.startswith("python -m scoop: error: ")
    assert "'loopback-zmq'" in line
    if disabled == "loopback-zmq":
        assert "disabled" in line
    assert list(markers.iterdir()) == []

    listing = run_command([*scoop_command(), "plugins"], env={**os.environ, **env})
    rows = table(listing.stdout)
    # By record name the transport is off; by plugin name the whole plugin is.
    row = rows[("loopback", "loopback-zmq" if disabled == "loopback-zmq" else "-")]
    assert row["STATUS"] == "disabled"
