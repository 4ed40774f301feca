"""The ``slurm`` launcher plugin: workers on the nodes of a SLURM job, started with ``srun``.

Inside a job (``sbatch``/``salloc``: ``SLURM_JOB_ID`` and
``SLURM_JOB_NODELIST`` are set) ``python -m scoop prog.py`` picks this
launcher without being asked: the hosts are the job's nodes and the workers
per node its tasks per node (``SLURM_TASKS_PER_NODE``; see
:func:`~scoop_launcher_slurm.nodelist.allocation_from_env`). Explicit
``--hosts``/``--hostfile`` win over the allocation.

Settings, the table ``[scoop.launcher.slurm]`` (environment
``SCOOP_LAUNCHER_SLURM_<KEY>``):

- ``python`` -- the interpreter that runs each node's supervisor; empty (the
  default) means the launcher's own, so the nodes must share its file system.
- ``start_timeout`` -- seconds to wait for every node's supervisor (60).
- ``srun_args`` -- extra ``srun`` options for every step (``["--mpi=none"]``).
- ``pending_timeout``, ``poll_interval``, ``job_directory`` -- for jobs
  submitted from a login node (``scoop run --jobs N --scheduler slurm``,
  see :mod:`scoop_core.worker_jobs` and :mod:`scoop_launcher_slurm.jobs`).

Pure helpers: :func:`expand_nodelist` (``node[01-04,07]`` → names, no
``scontrol`` needed) and :func:`expand_tasks_per_node` (``2(x3),1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from scoop_core.plugins import LauncherPlugin, Setting, hookimpl, lazy
from scoop_core.scheduler_launcher import COMMON_SETTINGS
from scoop_core.worker_jobs import JOB_SETTINGS
from scoop_launcher_slurm.nodelist import (
    allocation_from_env,
    expand_nodelist,
    expand_tasks_per_node,
)

__all__ = [
    "LAUNCHER",
    "allocation_from_env",
    "expand_nodelist",
    "expand_tasks_per_node",
    "in_allocation",
    "scoop_launchers",
]


def in_allocation(environ: Mapping[str, str] | None = None) -> bool:
    """``detect()``: ``environ`` (default: this process's) is inside a SLURM job."""
    env = os.environ if environ is None else environ
    return bool(
        (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"))
        and (env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"))
    )


LAUNCHER = LauncherPlugin(
    name="slurm",
    factory=lazy("scoop_launcher_slurm.launcher:SlurmLauncher"),
    description="workers on the nodes of a SLURM job, started with srun",
    detect=in_allocation,
    settings=(
        *COMMON_SETTINGS,
        Setting("srun_args", list, [], "extra srun options for every job step"),
        *JOB_SETTINGS,
    ),
    job_queue=lazy("scoop_launcher_slurm.jobs:SlurmJobs"),
)


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LAUNCHER,)
