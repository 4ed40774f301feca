"""Fixtures for running real programs through the real launcher.

``scoop_run`` writes a program into a fresh directory, runs it with
``python -m scoop`` and returns the finished process; afterwards it checks
that no process of that run is left (found by the program path that every
process of the run carries in its command line or environment).
``program`` writes such a program from the test module's ``PRELUDE`` and
its own text, and ``program_results`` reads back the values it printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environ_without_scoop() -> dict[str, str]:
    """This process's environment with no ``SCOOP_`` setting in it, and the
    machine's site and user configuration files turned off: what a run is
    told then comes from the test alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOOP_", "_SCOOP_"))}
    return {**env, "SCOOP_SITE_CONFIG": os.devnull, "SCOOP_USER_CONFIG": os.devnull}


def redis_run_env(url: str, home: Path, prefix: str) -> dict[str, str]:
    """A run over the redis-server at ``url`` under ``prefix``, with a run key
    that workers joining later share, and its key files kept in ``home``."""
    return {
        **environ_without_scoop(),
        "HOME": str(home),
        "SCOOP_TRANSPORT": "redis",
        "SCOOP_TRANSPORT_REDIS_URL": url,
        "SCOOP_TRANSPORT_REDIS_PREFIX": prefix,
        "SCOOP_RUN_KEY": secrets.token_hex(32),
    }


def kill_run(marker: str, launcher: subprocess.Popen[Any] | None = None) -> None:
    """A test's last word: ``launcher``, if it still runs, and every process
    whose command line or environment mentions ``marker``, killed."""
    if launcher is not None and launcher.poll() is None:
        launcher.kill()
        launcher.wait()
    for pid in processes_of(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll an outside condition (a file, a key, a line of output) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({timeout} s)"
        time.sleep(0.02)  # polling a condition with a deadline


PROGRAM_HELPERS = """
def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def wait_until(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.005)
"""
"""Program text: ``out(value)`` prints a ``RESULT`` line of JSON, and
``wait_until(condition, what)`` waits for the program's own condition or
gives up naming it (the program needs ``json`` and ``time``)."""


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


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> RunResult:
    """``argv`` run to its end (``timeout`` seconds at most), its output kept as text."""
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_go_ahead_run(
    tmp_path: Path, source: str, flags: Sequence[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path, Path]:
    """``python -m scoop FLAGS prog.py GO`` started in ``tmp_path``, with
    ``source`` (a :func:`go_ahead_program`) as prog.py and its output piped:
    the launcher, the program's path and the go-ahead file's."""
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent(source))
    go = tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoop", *flags, str(program), str(go)],
        cwd=tmp_path,
        env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, program, go


def _read_lines(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


def read_output(
    proc: subprocess.Popen[str],
) -> tuple[list[str], list[str], list[threading.Thread]]:
    """The lines ``proc`` writes to stdout and to stderr, each list filled as
    they come by a thread of its own (returned too, to be joined)."""
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_read_lines, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    return out, err, readers


@pytest.fixture
def write_program(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(source: str, name: str = "prog.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def program(
    request: pytest.FixtureRequest, write_program: Callable[[str, str], Path]
) -> Callable[[str], Path]:
    """Writes ``prog.py``: the test module's ``PRELUDE`` (the imports and
    functions that all its programs share), then ``text``, the program's own
    functions and its ``__main__`` part."""
    prelude = getattr(request.module, "PRELUDE", "")

    def write(text: str) -> Path:
        return write_program(prelude + text, "prog.py")

    return write


def program_results(proc: RunResult) -> list[Any]:
    """The values a program printed as ``RESULT <json>`` lines, in order,
    once it ended with status 0 (its output is the message otherwise)."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def stopped_early(
    run: Callable[..., RunResult], *args: Any, **kwargs: Any
) -> tuple[RunResult, float]:
    """``run(*args, **kwargs)`` (a ``scoop_run``), which must end with
    status 1 before its program's last line, the one that prints ``not
    reached``: the finished run and the seconds it took."""
    start = time.monotonic()
    proc = run(*args, **kwargs)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "not reached" not in proc.stdout
    return proc, took


def drain(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """What ``proc`` printed (stdout, and stderr if piped) once it ended;
    killed if it has not ended within ``timeout`` seconds, which fails the
    test (``subprocess.TimeoutExpired``) without leaving it running."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


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
