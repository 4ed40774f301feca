"""The registry of running runs: what a launcher that died leaves, and what
``scoop status`` then lists. Each test has its own ``HOME``; the launchers
that "died" are real processes that ran and exited, so their pids are
real dead pids."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from scoop_core import run_registry
from scoop_core.activity import boot_id


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def entry(run_id: str, pid: int, **changes: object) -> run_registry.RunEntry:
    fields: dict[str, object] = dict(
        run_id=run_id,
        transport="zmq",
        address="ipc:///nowhere",
        host=socket.gethostname(),
        pid=pid,
        pid_started=run_registry.process_started(pid),
        boot=boot_id(),
        program="/somewhere/prog.py",
        workers=2,
        started=time.time(),
        key="00" * 32,
    )
    fields.update(changes)
    return run_registry.RunEntry(**fields)  # type: ignore[arg-type]


def left_behind(registered: run_registry.RunEntry) -> Path:
    """``registered`` as its launcher wrote it, and left it."""
    path = run_registry.entry_file(registered.run_id)
    run_registry.run_keys.private_dir(path.parent, run_registry.run_keys.scoop_home())
    path.write_text(json.dumps(dataclasses.asdict(registered)))
    path.chmod(0o600)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_whose_launcher_died_is_not_listed_and_its_file_is_removed() -> None:
    stale = left_behind(entry("dead", dead_pid()))
    alive = left_behind(entry("alive", os.getpid()))
    assert [e.run_id for e in run_registry.running_runs()] == ["alive"]
    assert not stale.exists() and alive.exists()


def test_a_pid_used_again_by_another_process_is_not_the_launcher() -> None:
    started = run_registry.process_started(os.getpid())
    assert started is not None
    left_behind(entry("reused", os.getpid(), pid_started=started + 1))
    assert run_registry.running_runs() == []
    assert run_registry.find("reused") is None


def test_a_run_registered_on_another_machine_is_listed_as_it_is() -> None:
    # Only its own machine can tell whether its launcher runs.
    path = left_behind(entry("there", dead_pid(), host="elsewhere.example"))
    assert [e.run_id for e in run_registry.running_runs()] == ["there"]
    assert path.exists()


def test_a_registration_others_can_read_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    path = left_behind(entry("open", os.getpid()))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "scoop.launcher"):
        assert run_registry.running_runs() == []
    assert "chmod 600" in caplog.text


def _run(run_id: str) -> SimpleNamespace:
    # What register() reads of a scoop_core.run.Run whose backend started.
    return SimpleNamespace(
        run_id=run_id,
        transport_name="zmq",
        address="ipc:///nowhere",
        program="prog.py",
        size=3,
        transport_settings={"curve": True},
        key=b"k" * 32,
        backend=SimpleNamespace(),
    )


def test_register_writes_a_private_file_and_unregister_removes_it(home: Path) -> None:
    path = run_registry.register(_run("mine"))  # type: ignore[arg-type]
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    [found] = run_registry.running_runs()
    assert (found.run_id, found.workers, found.pid) == ("mine", 3, os.getpid())
    assert bytes.fromhex(found.key) == b"k" * 32
    run_registry.unregister(path)
    assert run_registry.running_runs() == []


def test_register_never_writes_through_a_link(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = home / "elsewhere.txt"
    target.write_text("theirs")
    link = run_registry.entry_file("linked")
    run_registry.run_keys.private_dir(link.parent, run_registry.run_keys.scoop_home())
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, "scoop.launcher"):
        assert run_registry.register(_run("linked")) is None  # type: ignore[arg-type]
    assert target.read_text() == "theirs"
    assert "scoop status will not list run linked" in caplog.text


def test_a_second_run_with_the_id_of_a_running_one_is_not_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = left_behind(entry("same", os.getpid(), program="/first.py"))
    with caplog.at_level(logging.WARNING, "scoop.launcher"):
        assert run_registry.register(_run("same")) is None  # type: ignore[arg-type]
    assert "another running run" in caplog.text
    assert json.loads(first.read_text())["program"] == "/first.py"
