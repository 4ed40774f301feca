"""Real sshd servers for the ssh launcher's tests: a small cluster on this machine.

Preferred: each host is a network namespace with its own address on a
bridge (``10.77.N.0/24``), running its own ``/usr/sbin/sshd`` on port 22
with a host key, ``authorized_keys`` and config made for this test session.
One more host, ``hidden``, sits on a link reachable only from inside ``h1``,
so that only ProxyJump can reach it; ``hnoisy`` logs in through a
``.bashrc`` that prints (``ssh_hosts.NOISY_BASHRC``). Without the rights to make namespaces,
the hosts are sshd servers on 127.0.0.2, 127.0.0.3, ... instead (said on
stdout), and ``hidden`` is not hidden; ``SCOOP_TEST_SSH_LOOPBACK=1`` asks
for that way even where namespaces work.

Every session an sshd starts has ``SCOOP_TEST_HOST=<marker>`` in its
environment (sshd's ``SetEnv``), inherited by the supervisor and its
workers: :meth:`SshdHost.processes` finds what a host still runs by that,
and in a namespace by the namespace too. The tests never read or write
``~/.ssh``: the launcher gets a per-test ``ssh_config`` and ``known_hosts``.

Everything made is undone at the end, even after a failure: the servers are
stopped, anything still running in a namespace is killed, and the
namespaces, links and bridge are deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ssh_hosts import NOISY_BASHRC, SSHD, Cluster, View, cmdline, start_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if shutil.which("ssh-keygen") is None or not os.path.exists(SSHD):
        pytest.fail(
            "the ssh launcher's tests need OpenSSH's server and client: "
            "apt-get install openssh-server openssh-client (.ci/run installs them)"
        )
    # sshd refuses to start without its privilege-separation directory.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="scoop-ssh-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        yield start_cluster(
            directory,
            ["h1", "h2", "h3", "hbad", "hnoisy"],
            stack,
            views={"hnoisy": View(bashrc=NOISY_BASHRC)},
            ports={"h3": 2222},
            hidden=True,
        )


@pytest.fixture
def ssh_settings(cluster: Cluster, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Settings for an ``SshLauncher`` pointed at the cluster through a
    per-test ssh_config and known_hosts; keywords override them."""

    def make(
        *, leave_out: tuple[str, ...] = (), config_extra: str = "", **overrides: Any
    ) -> dict[str, Any]:
        config = tmp_path / "ssh_config"
        config.write_text(cluster.ssh_config(config_extra))
        known = tmp_path / "known_hosts"
        known.write_text(cluster.known_hosts(leave_out=leave_out))
        settings: dict[str, Any] = {
            "ssh_config": str(config),
            "known_hosts": str(known),
            "connect_timeout": 5.0,
        }
        settings.update(overrides)
        return settings

    return make


@pytest.fixture(autouse=True)
def _nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the cluster, no host runs anything of it
    (else kill it, and fail)."""
    yield
    if "cluster" not in request.fixturenames:
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    deadline = time.monotonic() + 3.0
    while (left := cluster.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.05)  # sshd's session processes exit just after the connection closes
    if left:
        described = {
            a: [cmdline(p).replace(b"\0", b" ")[:120] for p in pids] for a, pids in left.items()
        }
        for host in cluster.hosts.values():
            host.kill_all()
        pytest.fail(f"processes left on the test hosts: {described}")
