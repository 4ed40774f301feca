"""The ``slurm`` launcher: one ``srun`` job step per node, running that node's supervisor.

Each node's workers are started by one supervisor (:mod:`scoop_core.host_supervisor`)
that ``srun`` runs as a one-task step on that node, so they stay inside the
job's cgroups and limits, are accounted to the job, and die with it
(``scancel``). The step is started with:

``--nodes=1 --ntasks=1 --nodelist=NODE``
    exactly one task, on the node the workers are meant for;
``--overlap``
    share the node's CPUs with the other steps, the batch step running the
    root included: without it a second step waits until the first ends;
``--mem=0``
    use the job's memory on the node without reserving any of it away from
    the other steps;
``--cpu-bind=none``
    the task holds every worker of the node: binding it to one CPU would
    starve them;
``--kill-on-bad-exit=1``
    a supervisor that fails ends its step at once.

``srun`` forwards its stdin to the task, so the plan (and the run's key)
travels there, never on a command line. Node names are SLURM's (``n1``),
which need not be network names, so every node is reached through ``srun``,
this one included.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoop_core.errors import LaunchError
from scoop_core.hosts import Host
from scoop_core.scheduler_launcher import SchedulerLauncher
from scoop_launcher_slurm.nodelist import allocation_from_env

__all__ = ["SRUN_OPTIONS", "SlurmLauncher"]

SRUN_OPTIONS: tuple[str, ...] = (
    "--nodes=1",
    "--ntasks=1",
    "--overlap",
    "--mem=0",
    "--cpu-bind=none",
    "--kill-on-bad-exit=1",
)
"""The options of every step, besides ``--nodelist`` and the job name (see the module docstring)."""


class SlurmLauncher(SchedulerLauncher):
    """Workers on the nodes of the SLURM job this process runs in.

    Settings (section ``launcher.slurm``): ``python``, ``start_timeout`` and
    ``srun_args``, extra options for every ``srun`` (``["--mpi=none"]``)."""

    scheduler = "SLURM"
    plugin = "slurm"
    tools = ("srun",)
    outside_job_hint = "SLURM_JOB_ID and SLURM_JOB_NODELIST are not set"

    def read_allocation(self) -> list[Host] | None:
        try:
            return allocation_from_env(self.environ)
        except ValueError as exc:
            raise LaunchError(f"cannot read the SLURM job's nodes: {exc}") from None

    def this_node(self, nodes: Sequence[str]) -> str | None:
        # Several SLURM nodes may share one machine (and its host name): slurmd knows which.
        name = self.environ.get("SLURMD_NODENAME")
        if name in nodes:
            return name
        return super().this_node(nodes)

    def remote_argv(self, tool: str, node: str, command: Sequence[str]) -> list[str]:
        return [
            tool,
            *SRUN_OPTIONS,
            f"--nodelist={node}",
            f"--job-name=scoop-{node}",
            *self.list_setting("srun_args"),
            *command,
        ]
