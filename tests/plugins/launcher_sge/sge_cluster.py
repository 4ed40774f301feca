"""A real Grid Engine on this machine: a qmaster, an execd, a PE and a queue for the tests.

Built the way /work/shared/clusters/README.md found to work with Debian's
``gridengine-*`` (8.1.9). Grid Engine keeps its state in the package's cell
(``/var/lib/gridengine/default``, spooled in ``/var/spool/gridengine``), so
:func:`sge_cluster` runs the daemons of that cell on free ports
(``SGE_QMASTER_PORT``, ``SGE_EXECD_PORT``), adds what the tests need -- this
host as an execution and submit host, the PE ``scooptest`` (``control_slaves
TRUE``) and the queue ``scooptest.q`` -- and, afterwards, removes all of it,
puts back the settings it changed (``min_uid``, ``min_gid``, the scheduling
interval) and stops both daemons by their PID. qmaster takes several
seconds to shut down: the fixture waits for it.

Needs root and the packages ``gridengine-master gridengine-exec
gridengine-client``, configured (debconf ``shared/gridengineconfig true``);
:func:`missing` says what is lacking.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import scheduler_checks as checks

SGE_ROOT = Path("/var/lib/gridengine")
CELL = "default"
SPOOL = Path("/var/spool/gridengine")
PE = "scooptest"
QUEUE = "scooptest.q"
SLOTS = 4
READY_WITHIN = 30.0
STOP_WITHIN = 30.0

INSTALL = (
    "echo 'gridengine-common shared/gridengineconfig boolean true' | debconf-set-selections "
    "(and shared/gridenginemaster string $(hostname), shared/gridenginecell string default); "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y gridengine-master gridengine-exec "
    "gridengine-client"
)


def missing() -> str | None:
    """Why a Grid Engine cannot start here, or None."""
    needed = ["qconf", "qsub", "qrsh", "qstat", "qdel"]
    absent = [p for p in needed if shutil.which(p) is None]
    absent += [p for p in ("sge_qmaster", "sge_execd") if not Path("/usr/sbin", p).exists()]
    if absent or not (SGE_ROOT / CELL / "common" / "bootstrap").exists():
        return f"Grid Engine is not installed and configured ({', '.join(absent)}): {INSTALL}"
    if os.geteuid() != 0:
        return "running Grid Engine's daemons needs root"
    if _alive(_pid(SPOOL / "qmaster" / "qmaster.pid")):
        return "a Grid Engine qmaster already runs on this machine; the tests start their own"
    return None


@dataclass
class Cluster:
    """A running Grid Engine: ``env`` has what its commands need; ``host`` is the exec host."""

    env: dict[str, str]
    host: str
    pe: str = PE

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def qconf(self, *args: str) -> str:
        done = self.run("qconf", *args)
        if done.returncode != 0:
            raise RuntimeError(f"qconf {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout


@contextlib.contextmanager
def sge_cluster() -> Iterator[Cluster]:
    """Start qmaster and execd, configure them for the tests; undo it all afterwards."""
    host = socket.gethostname()
    env = dict(os.environ)
    env.update(
        SGE_ROOT=str(SGE_ROOT),
        SGE_CELL=CELL,
        SGE_QMASTER_PORT=str(checks.free_port()),
        SGE_EXECD_PORT=str(checks.free_port()),
    )
    cluster = Cluster(env, host)
    aliases = SGE_ROOT / CELL / "common" / "host_aliases"
    wrote_aliases = not aliases.exists()
    undo: list[tuple[str, ...]] = []
    restore: dict[str, dict[str, str]] = {}
    work = Path(tempfile.mkdtemp(prefix="scoop-sge-"))
    try:
        if wrote_aliases:
            aliases.write_text(f"{host} localhost\n")
        Path("/var/run/gridengine").mkdir(exist_ok=True)
        shutil.chown("/var/run/gridengine", "sgeadmin", "sgeadmin")
        subprocess.run(["/usr/sbin/sge_qmaster"], env=env, check=True, timeout=60)
        _wait(lambda: cluster.run("qstat", "-f").returncode == 0, "qmaster to answer")
        restore = _configure(cluster, work, undo)
        subprocess.run(["/usr/sbin/sge_execd"], env=env, check=True, timeout=60)
        _wait(lambda: _queue_ready(cluster), f"{QUEUE}@{host} to take jobs")
        yield cluster
    finally:
        cluster.run("qdel", "-f", "-u", "*")
        _retry(lambda: not cluster.run("qstat", "-u", "*").stdout.strip())
        _stop(cluster, SPOOL / "execd" / "localhost" / "execd.pid", ("qconf", "-ke", host))
        for command in reversed(undo):
            # A queue whose jobs are still being cleaned up cannot go yet.
            _retry(lambda command=command: cluster.run(*command).returncode == 0)
        for name, values in restore.items():
            with contextlib.suppress(RuntimeError):
                _modify(cluster, work, name, values)
        _stop(cluster, SPOOL / "qmaster" / "qmaster.pid", ("qconf", "-km"))
        if wrote_aliases:
            aliases.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _configure(
    cluster: Cluster, work: Path, undo: list[tuple[str, ...]]
) -> dict[str, dict[str, str]]:
    """Set up host, PE and queue; return the settings to put back afterwards."""
    restore = {
        "conf": _modify(cluster, work, "conf", {"min_uid": "0", "min_gid": "0"}),
        "sconf": _modify(cluster, work, "sconf", {"schedule_interval": "0:0:1"}),
    }
    host = cluster.host
    if host not in cluster.run("qconf", "-sel").stdout.split():
        exec_host = (
            f"hostname {host}\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\n"
            "xuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\n"
            "report_variables NONE\n"
        )
        _add(cluster, work, undo, "e", host, exec_host)
    if host not in cluster.run("qconf", "-ss").stdout.split():
        cluster.qconf("-as", host)
        undo.append(("qconf", "-ds", host))
    pe = (
        f"pe_name {PE}\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\n"
        "stop_proc_args NONE\nallocation_rule $round_robin\ncontrol_slaves TRUE\n"
        "job_is_first_task FALSE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n"
    )
    _add(cluster, work, undo, "p", PE, pe)
    # No load threshold: a machine busy with other work would put the queue in
    # alarm state, and it would take no job.
    queue = _set(
        cluster.qconf("-sq"),
        {
            "qname": QUEUE,
            "hostlist": host,
            "slots": str(SLOTS),
            "pe_list": PE,
            "load_thresholds": "NONE",
        },
    )
    _add(cluster, work, undo, "q", QUEUE, queue)
    return restore


def _add(
    cluster: Cluster, work: Path, undo: list[tuple[str, ...]], kind: str, name: str, text: str
) -> None:
    """Add the Grid Engine object ``name`` of ``kind`` (``e`` exec host,
    ``p`` PE, ``q`` queue) described by ``text``; its removal goes on ``undo``."""
    path = work / f"add_{kind}"
    path.write_text(text)
    cluster.qconf(f"-A{kind}", str(path))
    undo.append(("qconf", f"-d{kind}", name))


def _modify(cluster: Cluster, work: Path, what: str, values: dict[str, str]) -> dict[str, str]:
    """Change keys of the global (``conf``) or scheduler (``sconf``)
    configuration; return their former values."""
    current = cluster.qconf(f"-s{what}", *(["global"] if what == "conf" else []))
    before = {
        key: match.group(1)
        for key in values
        if (match := re.search(rf"^{key}\s+(\S+)", current, re.M)) is not None
    }
    # -Mconf reads the configuration named like its file: "global".
    path = work / ("global" if what == "conf" else "sched_conf")
    path.write_text(_set(current, values))
    cluster.qconf(f"-M{what}", str(path))
    return before


def _set(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = re.sub(rf"^{key}\s+.*$", f"{key} {value}", text, flags=re.M)
    return text


def _retry(attempt: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while not attempt():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # Grid Engine finishes its bookkeeping on its own
    return True


def _queue_ready(cluster: Cluster) -> bool:
    shown = cluster.run("qstat", "-f", "-q", QUEUE).stdout
    line = next((ln for ln in shown.splitlines() if ln.startswith(f"{QUEUE}@")), None)
    return line is not None and len(line.split()) == 5  # no state column: not (a)larm, (u)nknown


def _wait(predicate: Callable[[], bool], what: str) -> None:
    if not _retry(predicate, READY_WITHIN):
        raise RuntimeError(f"Grid Engine: timed out waiting for {what}")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop(cluster: Cluster, pid_file: Path, ask: tuple[str, ...]) -> None:
    """Ask a daemon to shut down, wait for it, and kill it if it would not."""
    pid = _pid(pid_file)
    if not _alive(pid):
        return
    cluster.run(*ask)
    deadline = time.monotonic() + STOP_WITHIN
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
