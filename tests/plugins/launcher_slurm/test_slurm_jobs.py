"""The slurm plugin's job queue: the ``#SBATCH`` header and how sbatch and squeue are read.

Real submissions to a real SLURM are in test_real_slurm.py (cluster suite).
"""

from __future__ import annotations

import pytest
from scoop_launcher_slurm.jobs import SlurmJobs

from scoop_core.interfaces import JobQueue, JobRequest
from scoop_core.plugins.manager import get_plugin_manager


def test_the_header_asks_for_one_task_of_all_the_jobs_cores() -> None:
    request = JobRequest(
        name="scoop-r1-2",
        cores=8,
        output="/w/scoop-jobs/r1/job-2.out",
        error="/w/scoop-jobs/r1/job-2.err",
        memory=(16 << 30) + 1,
        walltime=2 * 86400 + 3661,
        queue="short",
        extra=("--account=abc", "--constraint=avx2"),
    )
    assert SlurmJobs().header(request) == [
        "#SBATCH --job-name=scoop-r1-2",
        "#SBATCH --output=/w/scoop-jobs/r1/job-2.out",
        "#SBATCH --error=/w/scoop-jobs/r1/job-2.err",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=16385M",
        "#SBATCH --time=2-01:01:01",
        "#SBATCH --partition=short",
        "#SBATCH --account=abc",
        "#SBATCH --constraint=avx2",
    ]
    bare = SlurmJobs().header(JobRequest("n", 1, "o", "e"))
    assert not any(("--mem" in line or "--time" in line) for line in bare)


def test_sbatch_and_squeue_output_as_slurm_prints_it() -> None:
    queue = SlurmJobs()
    assert queue.job_id("4242\n") == "4242"
    assert queue.job_id("4242;cluster2\n") == "4242"
    with pytest.raises(ValueError, match="not a job id"):
        queue.job_id("sbatch: error: invalid partition specified: nosuch\n")
    listing = "7 RUNNING None\n8 PENDING Resources\n9 COMPLETED None\n10 TIMEOUT TimeLimit\n"
    assert queue.states(listing, ["7", "8", "9", "10", "11"]) == {
        "7": "RUNNING",
        "8": "PENDING (Resources)",
        "9": "COMPLETED",
        "10": "TIMEOUT (TimeLimit)",
    }
    phases = {
        state: queue.phase(state)
        for state in ("PENDING (Priority)", "RUNNING", "COMPLETING", "COMPLETED", "FAILED")
        + ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
    }
    assert phases == {
        "PENDING (Priority)": JobQueue.PENDING,
        "RUNNING": JobQueue.RUNNING,
        "COMPLETING": JobQueue.RUNNING,  # its processes are still being killed
        "COMPLETED": JobQueue.ENDED,
        "FAILED": JobQueue.FAILED,
        "CANCELLED": JobQueue.FAILED,
        "TIMEOUT": JobQueue.FAILED,
        "OUT_OF_MEMORY": JobQueue.FAILED,
        "NODE_FAIL": JobQueue.FAILED,
    }
    assert queue.submit_command("/w/job-1.sh") == ["sbatch", "--parsable", "/w/job-1.sh"]
    assert queue.cancel_command(["7", "8"]) == ["scancel", "7", "8"]


def test_the_plugin_offers_its_queue_and_the_job_settings() -> None:
    record = get_plugin_manager().launcher("slurm")
    assert record.job_queue is not None
    assert isinstance(record.job_queue({}), SlurmJobs)
    names = {setting.name for setting in record.settings}
    assert {"pending_timeout", "poll_interval", "job_directory"} <= names
