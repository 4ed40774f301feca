"""A host whose SSH port hangs up before the SSH banner (a firewall, a
sshd refusing connections) is one error naming it, with no traceback of the
SSH library's on the terminal. Needs no sshd: the "host" is a socket that
accepts and closes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def hangs_up() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts every connection and closes it at once."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        server.close()
        thread.join(5)


def test_a_host_that_hangs_up_before_the_banner_is_one_error(hangs_up: int, tmp_path: Path) -> None:
    # A name that is not this machine's, so the launcher logs in to it.
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text(f"Host hangs-up\n  HostName 127.0.0.1\n  Port {hangs_up}\n")
    prog = tmp_path / "prog.py"
    prog.write_text("print('ran')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOOP_", "_SCOOP_"))}
    env.update(HOME=str(tmp_path), SCOOP_LAUNCHER_SSH_CONNECT_TIMEOUT="5")

    proc = subprocess.run(
        [sys.executable, "-m", "scoop", "--hosts", "hangs-up", str(prog)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("python -m scoop: error: SSH with hangs-up (127.0.0.1:"), line
    assert "SSH protocol banner" in line and "is an SSH server listening at that port" in line
