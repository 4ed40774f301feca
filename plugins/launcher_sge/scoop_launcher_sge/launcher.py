"""The ``sge`` launcher: one ``qrsh -inherit`` per host, running that host's supervisor.

Grid Engine gives a parallel job (``qsub -pe PE N``) its hosts in
``$PE_HOSTFILE``, one line per host and queue::

    node1.cluster 4 all.q@node1.cluster UNDEFINED
    node2.cluster 2 all.q@node2.cluster UNDEFINED

(:func:`scoop_core.hosts.parse_hostfile` reads these lines; a host listed
for several queues gets the sum of its slots) and the total in ``$NSLOTS``.
Inside the job, ``qrsh -inherit HOST command`` starts a task on one of
those hosts under the job's control (the PE needs ``control_slaves TRUE``),
so the workers are accounted to the job, obey its limits and die with it.

``qrsh -inherit`` forwards stdin, so each host's plan (and the run's key)
travels there. It runs the command through a shell on the host, so every
word of the supervisor's command is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from scoop_core.hosts import Host
from scoop_core.scheduler_launcher import (
    SchedulerLauncher,
    check_slot_count,
    read_host_file,
    slots_per_host,
)

__all__ = ["SgeLauncher", "allocation_from_env", "parse_pe_hostfile"]


def parse_pe_hostfile(text: str, path: str) -> list[Host]:
    """The hosts of a ``$PE_HOSTFILE``'s ``text``, in first-seen order, with
    the slots of a host listed more than once (once per queue) added up.

    Raises :class:`~scoop_core.errors.LaunchError` naming ``path:line`` for
    a malformed line, or if no host is listed."""
    return slots_per_host(text, path, "PE_HOSTFILE")


def allocation_from_env(environ: Mapping[str, str]) -> list[Host] | None:
    """The hosts of the Grid Engine parallel job described by ``environ``, or
    None outside one (no ``PE_HOSTFILE``).

    Raises :class:`~scoop_core.errors.LaunchError` if the file cannot be
    read or holds no host. ``NSLOTS`` should be the sum of the slots: if it
    is not, a warning says so and the host file wins."""
    path = environ.get("PE_HOSTFILE")
    if not path:
        return None
    hosts = parse_pe_hostfile(read_host_file(path, "PE_HOSTFILE"), path)
    check_slot_count(hosts, path, "PE_HOSTFILE", "NSLOTS", environ.get("NSLOTS", "").strip())
    return hosts


class SgeLauncher(SchedulerLauncher):
    """Workers on the hosts of the Grid Engine parallel job this process runs in.

    Settings (section ``launcher.sge``): ``python``, ``start_timeout`` and
    ``qrsh_args``, extra options for every ``qrsh -inherit``."""

    scheduler = "Grid Engine"
    plugin = "sge"
    tools = ("qrsh",)
    outside_job_hint = "PE_HOSTFILE is not set: submit with qsub -pe <pe> <slots>"

    def read_allocation(self) -> list[Host] | None:
        return allocation_from_env(self.environ)

    def remote_argv(self, tool: str, node: str, command: Sequence[str]) -> list[str]:
        qrsh_args = self.list_setting("qrsh_args")
        return [tool, "-inherit", *qrsh_args, node, *(shlex.quote(w) for w in command)]
