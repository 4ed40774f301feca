"""Grid Engine's queue seen from a login node: ``qsub`` job scripts, ``qstat``, ``qdel``.

:class:`SgeJobs` is the ``sge`` plugin's
:class:`~scoop_core.interfaces.JobQueue`, through which ``scoop run --jobs N
--scheduler sge`` submits jobs of workers (:mod:`scoop_core.worker_jobs`
does the rest). Grid Engine gives a job several slots on one host only
through a parallel environment: a job of more than one core asks for
``-pe PE cores``, PE being the ``pe`` setting (sites name theirs: ``smp``,
``threaded``...), unless a ``--job-extra`` directive names one itself.
Memory is asked for as ``h_vmem``, which Grid Engine counts per slot: the
job's memory divided by its cores, in MiB, rounded up. The walltime is
``h_rt``. The script runs under ``/bin/sh`` (``-S``): a queue's default
shell may be csh.

``qsub -terse`` prints the job id alone. ``qstat -u USER`` lists the user's
jobs while they are queued or running, each with its state letters: ``qw``
(queued), ``hqw`` (held), ``r``/``t`` (running, being transferred), ``dr``
(being deleted: its processes are still being killed), and ``E`` in any of
them for an error state the job will not leave by itself (``Eqw``): such a
job counts as failed and is deleted at once. A finished job is no longer
listed.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from typing import Any

from scoop_core.interfaces import JobQueue, JobRequest
from scoop_core.worker_jobs import format_walltime, megabytes

__all__ = ["SgeJobs"]


class SgeJobs(JobQueue):
    """Jobs submitted with ``qsub`` (settings: the ``sge`` plugin's, ``pe`` among them)."""

    scheduler = "Grid Engine"
    directive = "#$"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.pe = str(self.settings.get("pe") or "")

    def header(self, job: JobRequest) -> list[str]:
        names_pe = any(extra.split()[:1] == ["-pe"] for extra in job.extra)
        if job.cores > 1 and not names_pe and not self.pe:
            raise ValueError(
                f"a job of {job.cores} cores needs a parallel environment: set the pe "
                'setting (pe = "smp" in [scoop.launcher.sge], or '
                "SCOOP_LAUNCHER_SGE_PE=smp), or pass --job-extra='-pe smp "
                f"{job.cores}'; qconf -spl lists the PEs"
            )
        per_slot = megabytes(-(-job.memory // job.cores)) if job.memory else None
        return self.directives(
            job,
            [
                f"-N {job.name}",
                "-S /bin/sh",
                f"-o {job.output}",
                f"-e {job.error}",
                f"-pe {self.pe} {job.cores}" if job.cores > 1 and not names_pe else None,
                f"-l h_vmem={per_slot}M" if per_slot else None,
                f"-l h_rt={format_walltime(job.walltime)}" if job.walltime else None,
                f"-q {job.queue}" if job.queue else None,
            ],
        )

    def submit_command(self, script: str) -> list[str]:
        return ["qsub", "-terse", script]

    def job_id(self, output: str) -> str:
        first = output.strip().split(".")[0]
        if not first.isdigit():
            raise ValueError(f"qsub -terse printed {output.strip()!r}, not a job id")
        return first

    def list_command(self) -> list[str]:
        return ["qstat", "-u", getpass.getuser()]

    def states(self, output: str, ids: Sequence[str]) -> dict[str, str]:
        # job-ID prior name user state submit/start-at ...: the state is the fifth column.
        wanted = set(ids)
        return {
            parts[0]: parts[4]
            for parts in (line.split() for line in output.splitlines())
            if len(parts) >= 5 and parts[0] in wanted
        }

    def phase(self, state: str) -> str:
        if "E" in state:
            return self.FAILED
        if "q" in state:  # qw, hqw, dqw: waiting in the queue (or leaving it)
            return self.PENDING
        return self.RUNNING

    def cancel_command(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]
