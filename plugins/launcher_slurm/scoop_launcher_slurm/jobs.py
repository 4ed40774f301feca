"""SLURM's queue seen from a login node: ``sbatch`` job scripts, ``squeue``, ``scancel``.

:class:`SlurmJobs` is the ``slurm`` plugin's
:class:`~scoop_core.interfaces.JobQueue`, through which ``scoop run --jobs N
--scheduler slurm`` submits jobs of workers (:mod:`scoop_core.worker_jobs`
does the rest). A job asks for one node, one task and ``cores`` CPUs for
it (``--cpus-per-task``: the job's workers share its one task), memory for
the node in MiB (``--mem``, rounded up) and a walltime (``--time``,
``D-HH:MM:SS`` from a day on). ``sbatch --parsable`` prints the job id
alone (``ID`` or ``ID;CLUSTER``). The listing is ``squeue --me
--states=all``: finished jobs stay listed a while (``MinJobAge``) with their
final state, which tells a failure (``FAILED``, ``TIMEOUT``,
``OUT_OF_MEMORY``...) from a job that ran to its end. A job being killed is
``COMPLETING``: still running, until its processes are gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoop_core.interfaces import JobQueue, JobRequest
from scoop_core.worker_jobs import format_walltime, megabytes

__all__ = ["SlurmJobs"]

_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
_ENDED = {"COMPLETED"}


class SlurmJobs(JobQueue):
    """Jobs submitted with ``sbatch`` (settings: the ``slurm`` plugin's)."""

    scheduler = "SLURM"
    directive = "#SBATCH"

    def header(self, job: JobRequest) -> list[str]:
        return self.directives(
            job,
            [
                f"--job-name={job.name}",
                f"--output={job.output}",
                f"--error={job.error}",
                "--nodes=1",
                "--ntasks=1",
                f"--cpus-per-task={job.cores}",
                f"--mem={megabytes(job.memory)}M" if job.memory else None,
                f"--time={format_walltime(job.walltime, days=True)}" if job.walltime else None,
                f"--partition={job.queue}" if job.queue else None,
            ],
        )

    def submit_command(self, script: str) -> list[str]:
        return ["sbatch", "--parsable", script]

    def job_id(self, output: str) -> str:
        first = output.strip().split(";")[0].strip()
        if not first.isdigit():
            raise ValueError(f"sbatch --parsable printed {output.strip()!r}, not a job id")
        return first

    def list_command(self) -> list[str]:
        return ["squeue", "--me", "--states=all", "--noheader", "--format=%i %T %r"]

    def states(self, output: str, ids: Sequence[str]) -> dict[str, str]:
        wanted = set(ids)
        found = {}
        for line in output.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0] in wanted:
                reason = parts[2].strip() if len(parts) > 2 else ""
                found[parts[0]] = (
                    f"{parts[1]} ({reason})" if reason and reason != "None" else parts[1]
                )
        return found

    def phase(self, state: str) -> str:
        word = state.split()[0] if state.split() else ""
        if word in _PENDING:
            return self.PENDING
        if word in _RUNNING:
            return self.RUNNING
        if word in _ENDED:
            return self.ENDED
        return self.FAILED

    def cancel_command(self, ids: Sequence[str]) -> list[str]:
        return ["scancel", *ids]
