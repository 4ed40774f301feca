"""A real ``redis-server`` for the Redis transport's tests, on a free loopback port.

:func:`start_redis` is also imported by path from the integration tests
(``tests/integration/test_redis_runs.py``), which cannot share fixtures
with this directory.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

READY_WITHIN = 10.0
"""Seconds a fresh redis-server gets to answer PING."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, password: str | None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def start_redis(password: str | None = None) -> Iterator[str]:
    """Run a throw-away redis-server on a free loopback port; yield its URL (with the password)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis transport's tests need it: "
            "apt-get install redis-server (.ci/run installs it)"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="scoop-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", workdir, "--loglevel", "warning"]
    if password:
        argv += ["--requirepass", password]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_WITHIN
        while not _ping(port, password):
            if server.poll() is not None:
                output = server.stdout.read().decode(errors="replace") if server.stdout else ""
                pytest.fail(f"redis-server exited with status {server.returncode}:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"redis-server on port {port} did not answer PING within {READY_WITHIN} s"
                )
            time.sleep(0.02)
        auth = f":{password}@" if password else ""
        yield f"redis://{auth}127.0.0.1:{port}/0"
    finally:
        with socket.socket() as sock:
            try:
                sock.settimeout(2.0)
                sock.connect(("127.0.0.1", port))
                if password:
                    sock.sendall(f"AUTH {password}\r\n".encode())
                sock.sendall(b"SHUTDOWN NOSAVE\r\n")
                sock.recv(64)
            except OSError:
                pass
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if server.stdout:
            server.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server started for this test session (never the one on 6379)."""
    with start_redis() as url:
        yield url


@pytest.fixture(scope="session")
def redis_server() -> Callable[..., AbstractContextManager[str]]:
    """:func:`start_redis`, for tests that need a server of their own (with a password, say)."""
    return start_redis
