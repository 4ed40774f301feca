"""Fixtures for running real programs through the real launcher.

``scoop_run`` writes a program into a fresh directory, runs it with
``python -m scoop`` and returns the finished process; afterwards it checks
that no process of that run is left (found by the program path that every
process of the run carries in its command line or environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

RunResult = subprocess.CompletedProcess[str]


def processes_of(marker: str) -> list[int]:
    """Pids whose command line or environment mentions ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(int(entry))
                        break
            except OSError:
                break
    return found


def wait_gone(marker: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process mentions ``marker``; return those still there."""
    deadline = time.monotonic() + timeout
    left = processes_of(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_of(marker)
    return left


@pytest.fixture
def write_program(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(source: str, name: str = "prog.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def scoop_run(tmp_path: Path) -> Iterator[Callable[..., RunResult]]:
    markers: list[str] = []

    def run(
        program: Path | str,
        *args: str,
        flags: Sequence[str] = ("-n", "2"),
        timeout: float = 120,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> RunResult:
        markers.append(str(program))
        cmd = [*(command or [sys.executable, "-m", "scoop"]), *flags, str(program), *args]
        return subprocess.run(
            cmd,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    yield run
    for marker in markers:
        assert wait_gone(marker) == [], f"processes of {marker} were left running"
