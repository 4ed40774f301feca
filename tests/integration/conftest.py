"""Fixtures for running real programs through the real launcher.

``scoop_run`` writes a program into a fresh directory, runs it with
``python -m scoop`` and returns the finished process; afterwards it checks
that no process of that run is left (found by the program path that every
process of the run carries in its command line or environment).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

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


def go_ahead_program(first: int, second: int) -> str:
    """A program that maps ``square`` over ``range(first)``, prints READY,
    waits (with a deadline) until the file named by its first argument
    exists, maps over ``range(second)`` and prints ``RESULT <sum> <sum>``:
    for tests that attack a run between its two maps."""
    return f"""
import os, sys, time
from scoop import futures


def square(x):
    return x * x


if __name__ == "__main__":
    first = sum(futures.map(square, range({first})))
    print("READY", flush=True)
    deadline = time.monotonic() + 90
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the test's go-ahead, with a deadline
    second = sum(futures.map(square, range({second})))
    print("RESULT", first, second, flush=True)
"""


def read_lines(stream: IO[str], into: list[str]) -> None:
    """Append every line of ``stream`` to ``into`` (run in a thread)."""
    for line in stream:
        into.append(line)


@pytest.fixture
def write_program(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(source: str, name: str = "prog.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


def _start_redis() -> Any:
    """The throw-away redis-server starter of the Redis transport's tests."""
    path = Path(__file__).parents[1] / "plugins" / "transport_redis" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_scoop_redis_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_redis


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked both_transports run once per built-in transport.
    marked = metafunc.definition.get_closest_marker("both_transports")
    if marked and "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", ["zmq", "redis"], indirect=True)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    with _start_redis()() as url:
        yield url


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "zmq"))


@pytest.fixture
def transport_env(request: pytest.FixtureRequest, transport: str) -> dict[str, str]:
    """Environment that makes a run use ``transport`` (the default: nothing)."""
    if transport != "redis":
        return {}
    return {
        "SCOOP_TRANSPORT": "redis",
        "SCOOP_TRANSPORT_REDIS_URL": request.getfixturevalue("redis_server_url"),
        "SCOOP_TRANSPORT_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
def scoop_run(tmp_path: Path, transport_env: dict[str, str]) -> Iterator[Callable[..., RunResult]]:
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
            env={**os.environ, **transport_env, **(env or {})},
        )

    yield run
    for marker in markers:
        assert wait_gone(marker) == [], f"processes of {marker} were left running"
