"""The ``sge`` launcher plugin: workers on the hosts of a Grid Engine parallel job, started with ``qrsh -inherit``.

Inside a parallel job (``qsub -pe PE N``: ``$PE_HOSTFILE`` is set)
``python -m scoop prog.py`` picks this launcher without being asked: the
hosts and their slots come from ``$PE_HOSTFILE`` (checked against
``$NSLOTS``), and each host's workers are started by one ``qrsh -inherit``
(the PE needs ``control_slaves TRUE``). Explicit ``--hosts``/``--hostfile``
win over the allocation.

Settings, the table ``[scoop.launcher.sge]`` (environment
``SCOOP_LAUNCHER_SGE_<KEY>``):

- ``python`` -- the interpreter that runs each host's supervisor; empty (the
  default) means the launcher's own, so the hosts must share its file system.
- ``start_timeout`` -- seconds to wait for every host's supervisor (60).
- ``qrsh_args`` -- extra options for every ``qrsh -inherit``.
- ``pe``, ``pending_timeout``, ``poll_interval``, ``job_directory`` -- for
  jobs submitted from a login node (``scoop run --jobs N --scheduler sge``,
  see :mod:`scoop_core.worker_jobs` and :mod:`scoop_launcher_sge.jobs`):
  ``pe`` is the parallel environment a job of several cores asks for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from scoop_core.plugins import LauncherPlugin, Setting, hookimpl, lazy
from scoop_core.scheduler_launcher import COMMON_SETTINGS
from scoop_core.worker_jobs import JOB_SETTINGS

__all__ = ["LAUNCHER", "in_allocation", "scoop_launchers"]


def in_allocation(environ: Mapping[str, str] | None = None) -> bool:
    """``detect()``: ``environ`` (default: this process's) is inside a Grid Engine parallel job."""
    env = os.environ if environ is None else environ
    return bool(env.get("PE_HOSTFILE"))


LAUNCHER = LauncherPlugin(
    name="sge",
    factory=lazy("scoop_launcher_sge.launcher:SgeLauncher"),
    description="workers on the hosts of a Grid Engine parallel job, started with qrsh -inherit",
    detect=in_allocation,
    settings=(
        *COMMON_SETTINGS,
        Setting("qrsh_args", list, [], "extra options for every qrsh -inherit"),
        Setting(
            "pe",
            str,
            "",
            "the parallel environment of submitted jobs of more than one core (qconf -spl)",
        ),
        *JOB_SETTINGS,
    ),
    job_queue=lazy("scoop_launcher_sge.jobs:SgeJobs"),
)


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LAUNCHER,)
