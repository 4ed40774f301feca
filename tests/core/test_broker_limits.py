"""A broker lifts its process's open-file limit: one connection per worker is one descriptor."""

from __future__ import annotations

import resource
import subprocess
import sys

PROGRAM = """
import resource
from scoop_core.broker import Broker
from scoop_core.testing.memory import MemoryTransport

broker = Broker(MemoryTransport(), key=b"k" * 32, run_id="limits")
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_a_broker_started_under_a_low_soft_limit_raises_it_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, ceiling))

    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_soft_limit,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == ceiling
