"""A Torque job on this machine: a ``$PBS_NODEFILE`` and a stand-in ``pbsdsh`` first on PATH.

Torque is not packaged in Debian, so the remote start is a stand-in with
``pbsdsh``'s command line (``pbsdsh [-c N] [-n N] [-h node] [-o] [-s] [-u]
[-v] program args``) and the Task Manager's I/O: it passes no stdin, sends
the task's stdout to the job's output file unless ``-o``, and its stderr to
the job's error file. It refuses a node the job does not have, or one named
in ``$STANDIN_DOWN_NODES`` (as ``tm_spawn`` fails for a node that is down).
It really starts the task, here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_checks() -> ModuleType:
    path = Path(__file__).parents[1] / "launcher_slurm" / "scheduler_checks.py"
    spec = importlib.util.spec_from_file_location("scheduler_checks", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("scheduler_checks") or importlib.util.module_from_spec(spec)
    if "scheduler_checks" not in sys.modules:
        sys.modules["scheduler_checks"] = module
        spec.loader.exec_module(module)
    return module


checks = _load_checks()

PBSDSH = '''
    """Stand-in for Torque's pbsdsh (see tests/plugins/launcher_torque/conftest.py)."""
    import getopt, os, subprocess, sys

    try:
        opts, args = getopt.getopt(sys.argv[1:], "c:n:h:osuv")
    except getopt.GetoptError as exc:
        sys.exit(f"pbsdsh: {exc}")
    options = dict(opts)
    if not args:
        sys.exit("usage: pbsdsh [-c copies][-o][-s][-u][-v] program [args]...")
    if "PBS_NODEFILE" not in os.environ:
        sys.exit("pbsdsh: not running under PBS")
    with open(os.environ["PBS_NODEFILE"]) as fh:
        nodes = [line.split()[0] for line in fh if line.strip()]
    host = options.get("-h", nodes[0])
    if host not in nodes:
        sys.exit(f"pbsdsh: host {host} is not a node of job {os.environ.get('PBS_JOBID')}")
    if host in os.environ.get("STANDIN_DOWN_NODES", "").split():
        sys.exit(f'pbsdsh: tm_spawn: host "{host}" err TM_ENOTFOUND')
    job_out = open(os.environ["STANDIN_JOB_OUTPUT"], "ab")
    job_err = open(os.environ["STANDIN_JOB_ERROR"], "ab")
    task = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=None if "-o" in options else job_out,
        stderr=job_err,
        env={**os.environ, "PBS_TASKNUM": "1", "PBS_NODENUM": str(nodes.index(host))},
    )
    sys.exit(task.wait())
'''

PBS_TMRSH = '''
    """Stand-in for PBS Pro's pbs_tmrsh: host, then the command; TM I/O as pbsdsh's."""
    import os, subprocess, sys

    args = [a for a in sys.argv[1:] if a != "-n"]
    host, command = args[0], args[1:]
    with open(os.environ["PBS_NODEFILE"]) as fh:
        nodes = [line.split()[0] for line in fh if line.strip()]
    if host not in nodes:
        sys.exit(f'pbs_tmrsh: host "{host}" is not a node in job <{os.environ["PBS_JOBID"]}>')
    job_out = open(os.environ["STANDIN_JOB_OUTPUT"], "ab")
    job_err = open(os.environ["STANDIN_JOB_ERROR"], "ab")
    sys.exit(subprocess.call(command, stdin=subprocess.DEVNULL, stdout=job_out, stderr=job_err))
'''


class TorqueJob:
    """A job on nodes ``node1`` (2 slots) and ``node2`` (1 slot), with stand-ins on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        checks.write_script(self.bin / "pbsdsh", PBSDSH)
        checks.write_script(self.bin / "pbs_tmrsh", PBS_TMRSH)
        self.nodefile = tmp_path / "nodefile"
        self.nodefile.write_text("node1\nnode1\nnode2\n")
        self.tickets = tmp_path / "home" / ".scoop" / "tickets"
        self.env = checks.job_environment(
            self.bin,
            {
                "PBS_JOBID": "42.server",
                "PBS_NODEFILE": str(self.nodefile),
                "PBS_NP": "3",
                "PBS_ENVIRONMENT": "PBS_BATCH",
                "HOME": str(tmp_path / "home"),
                "STANDIN_JOB_OUTPUT": str(tmp_path / "job.OU"),
                "STANDIN_JOB_ERROR": str(tmp_path / "job.ER"),
            },
        )
        self.mark = self.env[checks.MARK_VAR]
