"""A SLURM job on this machine: SLURM's job variables and a stand-in ``srun`` first on PATH.

The stand-in has ``srun``'s command line inside a job (``srun [--opt=value
...] command args``): ``--nodelist`` must name a node of
``$SLURM_JOB_NODELIST``, the task gets ``SLURMD_NODENAME`` and the step's
variables, and stdin, stdout and stderr pass through as ``srun``'s do for a
one-task step. It refuses a node named in ``$STANDIN_DOWN_NODES``. It really
runs the command, here. ``test_real_slurm.py`` runs a real SLURM instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_checks() -> ModuleType:
    path = Path(__file__).parent / "scheduler_checks.py"
    spec = importlib.util.spec_from_file_location("scheduler_checks", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("scheduler_checks") or importlib.util.module_from_spec(spec)
    if "scheduler_checks" not in sys.modules:
        sys.modules["scheduler_checks"] = module
        spec.loader.exec_module(module)
    return module


checks = _load_checks()

SRUN = '''
    """Stand-in for srun inside a job (see tests/plugins/launcher_slurm/conftest.py)."""
    import os, sys

    from scoop_launcher_slurm.nodelist import expand_nodelist

    args = sys.argv[1:]
    options = {}
    while args and args[0].startswith("-"):
        key, _, value = args.pop(0).partition("=")
        options[key] = value
    if not args:
        sys.exit("srun: fatal: No command given to execute.")
    job = os.environ["SLURM_JOB_ID"]
    nodes = expand_nodelist(os.environ["SLURM_JOB_NODELIST"])
    node = options.get("--nodelist", nodes[0])
    if node not in nodes:
        sys.exit(
            f"srun: error: Unable to create step for job {job}: "
            "Requested node configuration is not available"
        )
    if node in os.environ.get("STANDIN_DOWN_NODES", "").split():
        sys.exit(
            f"srun: error: Task launch for StepId={job}.0 failed on node {node}: "
            "Communication connection failure"
        )
    os.environ.update(
        SLURMD_NODENAME=node,
        SLURM_STEP_ID="0",
        SLURM_NODEID=str(nodes.index(node)),
        SLURM_PROCID="0",
        SLURM_TASKS_PER_NODE="1",
        SLURM_NTASKS="1",
    )
    os.execvp(args[0], args)
'''


class SlurmJob:
    """A job on nodes ``n1`` (2 tasks) and ``n2`` (1 task), srun on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        checks.write_script(self.bin / "srun", SRUN)
        self.env = checks.job_environment(
            self.bin,
            {
                "SLURM_JOB_ID": "42",
                "SLURM_JOB_NODELIST": "n[1-2]",
                "SLURM_TASKS_PER_NODE": "2,1",
                "SLURM_NTASKS": "3",
                "SLURM_JOB_CPUS_PER_NODE": "2(x2)",
                "SLURMD_NODENAME": "n1",
            },
        )
        self.mark = self.env[checks.MARK_VAR]
