"""A real SLURM cluster on this machine: two logical nodes, n1 and n2, for the tests.

Built the way /work/shared/clusters/README.md found to work with Debian's
``slurm-wlm`` (22.05): a private ``munged`` (its own key and socket), a
``slurmctld`` and one ``slurmd`` per node, all on free ports, their
configuration, state and logs in one temporary directory that
``SLURM_CONF`` points at. Every daemon is stopped by its PID afterwards,
and the directory removed: nothing of it outlives :func:`slurm_cluster`.

Needs root (slurmd starts jobs as any user) and the packages ``slurm-wlm``
and ``munge``; :func:`missing` says what is lacking.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import scheduler_checks as checks

NODES = ("n1", "n2")
CPUS_PER_NODE = 2
READY_WITHIN = 30.0
STOP_WITHIN = 15.0

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "salloc", "srun", "scancel")


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    absent = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if absent:
        return (
            f"{', '.join(absent)} not installed: "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "a SLURM cluster needs root (slurmd runs jobs as their user)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Cluster:
    """A running cluster: ``env`` has ``SLURM_CONF`` (and PATH) for its commands."""

    dir: Path
    env: dict[str, str]

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    """Start munged, slurmctld and a slurmd for n1 and n2; stop them all afterwards."""
    base = Path(tempfile.mkdtemp(prefix="scoop-slurm-"))
    base.chmod(0o755)
    pid_files: list[Path] = []
    try:
        env = _configure(base)
        munge_pid = base / "munged.pid"
        pid_files.append(munge_pid)
        subprocess.run(
            [
                _program("munged"),
                "--force",
                f"--socket={base / 'munge' / 'munge.socket'}",
                f"--key-file={base / 'munge' / 'munge.key'}",
                f"--pid-file={munge_pid}",
                f"--log-file={base / 'munged.log'}",
                f"--seed-file={base / 'munge' / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        pid_files.append(base / "slurmctld.pid")
        subprocess.run([_program("slurmctld"), "-i"], env=env, check=True, timeout=30)
        for node in NODES:
            pid_files.append(base / f"slurmd-{node}.pid")
            subprocess.run([_program("slurmd"), "-N", node], env=env, check=True, timeout=30)
        cluster = Cluster(base, env)
        _wait_idle(cluster)
        yield cluster
    finally:
        for pid_file in reversed(pid_files):
            _stop(pid_file)
        shutil.rmtree(base, ignore_errors=True)


def _configure(base: Path) -> dict[str, str]:
    munge = base / "munge"
    munge.mkdir(mode=0o700)
    subprocess.run(
        [_program("mungekey"), "--create", f"--keyfile={munge / 'munge.key'}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    (base / "state").mkdir()
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(
        f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={checks.free_port()} "
        f"CPUs={CPUS_PER_NODE} RealMemory=1000 State=UNKNOWN"
        for node in NODES
    )
    (base / "slurm.conf").write_text(
        f"""\
ClusterName=scooptest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={checks.free_port()}
AuthType=auth/munge
AuthInfo=socket={munge / "munge.socket"}
CredType=cred/munge
StateSaveLocation={base / "state"}
SlurmdSpoolDir={base / "state"}/slurmd-%n
SlurmctldPidFile={base / "slurmctld.pid"}
SlurmdPidFile={base}/slurmd-%n.pid
SlurmctldLogFile={base / "slurmctld.log"}
SlurmdLogFile={base}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=2
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = dict(os.environ)
    env["SLURM_CONF"] = str(base / "slurm.conf")
    env["PATH"] = f"{env.get('PATH', os.defpath)}{os.pathsep}/usr/sbin"
    return env


def _wait_idle(cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_WITHIN
    states = ""
    while time.monotonic() < deadline:
        states = cluster.run("sinfo", "-h", "-o", "%T", timeout=10).stdout.split()
        if states and all(state == "idle" for state in states):
            return
        time.sleep(0.1)  # the daemons register with slurmctld on their own
    raise RuntimeError(
        f"the SLURM nodes are not idle after {READY_WITHIN:g} s (sinfo: {states}); "
        f"slurmctld.log:\n{cluster.log('slurmctld')[-2000:]}"
    )


def _stop(pid_file: Path) -> None:
    """Stop the daemon whose PID is in ``pid_file``: SIGTERM, then SIGKILL."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
