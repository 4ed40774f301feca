"""Torque's (and PBS's) queue seen from a login node: ``qsub`` job scripts, ``qstat``, ``qdel``.

:class:`TorqueJobs` is the ``torque`` plugin's
:class:`~scoop_core.interfaces.JobQueue`, through which ``scoop run --jobs N
--scheduler torque`` submits jobs of workers (:mod:`scoop_core.worker_jobs`
does the rest). A job asks for ``nodes=1:ppn=CORES``, ``mem`` for the job
in MiB (``mb``, rounded up) and a ``walltime`` (``H:MM:SS``); ``-S
/bin/sh`` runs the script under the shell it is written for.

``qsub`` prints the new job's id (``123.server``). ``qstat`` lists jobs
with their state letter: ``Q`` queued, ``H`` held, ``W`` waiting for its
start time, ``T`` being moved, ``R`` running, ``E`` exiting (its processes
are being ended), ``S`` suspended, and ``C`` completed (listed for a while
after, if the server keeps completed jobs). Torque shortens long ids in the
listing (``123.long-server-na*``), so a job is found by the number before
the first dot.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoop_core.interfaces import JobQueue, JobRequest
from scoop_core.worker_jobs import format_walltime, megabytes

__all__ = ["TorqueJobs"]


class TorqueJobs(JobQueue):
    """Jobs submitted with Torque's ``qsub`` (settings: the ``torque`` plugin's)."""

    scheduler = "Torque"
    directive = "#PBS"

    def header(self, job: JobRequest) -> list[str]:
        return self.directives(
            job,
            [
                f"-N {job.name}",
                "-S /bin/sh",
                f"-o {job.output}",
                f"-e {job.error}",
                f"-l nodes=1:ppn={job.cores}",
                f"-l mem={megabytes(job.memory)}mb" if job.memory else None,
                f"-l walltime={format_walltime(job.walltime)}" if job.walltime else None,
                f"-q {job.queue}" if job.queue else None,
            ],
        )

    def submit_command(self, script: str) -> list[str]:
        return ["qsub", script]

    def job_id(self, output: str) -> str:
        first = output.strip().splitlines()[0].strip() if output.strip() else ""
        if not first.split(".")[0].isdigit():
            raise ValueError(f"qsub printed {output.strip()!r}, not a job id")
        return first

    def list_command(self) -> list[str]:
        return ["qstat"]

    def states(self, output: str, ids: Sequence[str]) -> dict[str, str]:
        # Job ID, Name, User, Time Use, S, Queue: the state is the fifth column.
        by_number = {job.split(".")[0]: job for job in ids}
        found = {}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0].split(".")[0] in by_number:
                found[by_number[parts[0].split(".")[0]]] = parts[4]
        return found

    def phase(self, state: str) -> str:
        if state in ("Q", "H", "W", "T"):
            return self.PENDING
        if state == "C":
            return self.ENDED
        return self.RUNNING

    def cancel_command(self, ids: Sequence[str]) -> list[str]:
        return ["qdel", *ids]
