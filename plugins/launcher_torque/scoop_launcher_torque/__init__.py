"""The ``torque`` launcher plugin: workers on the nodes of a Torque/PBS job, started with ``pbsdsh`` or ``pbs_tmrsh``.

Inside a job (``$PBS_NODEFILE`` is set) ``python -m scoop prog.py`` picks
this launcher without being asked: the nodes and their slots come from
``$PBS_NODEFILE`` (a node once per slot), and each node's workers are
started by one Task Manager task. Since ``pbsdsh`` and ``pbs_tmrsh`` pass
no stdin, that task is a relay that connects back to the launcher (see
:mod:`scoop_launcher_torque.launcher`): the run's key is never on a
command line. Explicit ``--hosts``/``--hostfile`` win over the allocation.

Settings, the table ``[scoop.launcher.torque]`` (environment
``SCOOP_LAUNCHER_TORQUE_<KEY>``):

- ``python`` -- the interpreter that runs each node's relay and supervisor;
  empty (the default) means the launcher's own, so the nodes must share its
  file system.
- ``start_timeout`` -- seconds to wait for every node to connect back (60).
- ``remote_start`` -- ``auto`` (``pbsdsh``, else ``pbs_tmrsh``), ``pbsdsh``
  or ``pbs_tmrsh``.
- ``ticket_dir`` -- where the one-time tickets go: a directory the nodes
  share; empty means ``~/.scoop/tickets``. It is made (or kept) 0700 and
  must be the user's; a ticket is used only if no other user can read it.
- ``connect_host`` -- the name or address the nodes reach this machine by;
  empty means its host name.
- ``pending_timeout``, ``poll_interval``, ``job_directory`` -- for jobs
  submitted from a login node (``scoop run --jobs N --scheduler torque``,
  see :mod:`scoop_core.worker_jobs` and :mod:`scoop_launcher_torque.jobs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from scoop_core.plugins import LauncherPlugin, Setting, hookimpl, lazy
from scoop_core.scheduler_launcher import COMMON_SETTINGS
from scoop_core.worker_jobs import JOB_SETTINGS

__all__ = ["LAUNCHER", "in_allocation", "scoop_launchers"]


def in_allocation(environ: Mapping[str, str] | None = None) -> bool:
    """``detect()``: ``environ`` (default: this process's) is inside a Torque/PBS job."""
    env = os.environ if environ is None else environ
    return bool(env.get("PBS_NODEFILE"))


LAUNCHER = LauncherPlugin(
    name="torque",
    factory=lazy("scoop_launcher_torque.launcher:TorqueLauncher"),
    description="workers on the nodes of a Torque/PBS job, started with pbsdsh or pbs_tmrsh",
    detect=in_allocation,
    settings=(
        *COMMON_SETTINGS,
        Setting(
            "remote_start",
            str,
            "auto",
            "how tasks start on the nodes: auto (pbsdsh, else pbs_tmrsh), pbsdsh or pbs_tmrsh",
        ),
        Setting(
            "ticket_dir",
            str,
            "",
            "a directory the nodes share, for one-time connection tickets; empty: ~/.scoop/tickets",
        ),
        Setting(
            "connect_host",
            str,
            "",
            "the name or address the nodes reach this machine by; empty: its host name",
        ),
        *JOB_SETTINGS,
    ),
    job_queue=lazy("scoop_launcher_torque.jobs:TorqueJobs"),
)


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LAUNCHER,)
