"""The sge plugin's job queue: the ``#$`` header and how qsub and qstat are read.

Real submissions to a real Grid Engine are in test_real_sge.py (cluster suite).
"""

from __future__ import annotations

import pytest
from scoop_launcher_sge.jobs import SgeJobs

from scoop_core.interfaces import JobQueue, JobRequest

REQUEST = JobRequest(
    name="scoop-r1-1",
    cores=4,
    output="/w/job-1.out",
    error="/w/job-1.err",
    memory=10 << 30,
    walltime=36 * 3600,
    queue="all.q",
)


def test_the_header_asks_for_slots_of_the_pe_and_memory_per_slot() -> None:
    assert SgeJobs({"pe": "smp"}).header(REQUEST) == [
        "#$ -N scoop-r1-1",
        "#$ -S /bin/sh",
        "#$ -o /w/job-1.out",
        "#$ -e /w/job-1.err",
        "#$ -pe smp 4",
        "#$ -l h_vmem=2560M",  # 10 GiB over 4 slots
        "#$ -l h_rt=36:00:00",
        "#$ -q all.q",
    ]


def test_several_cores_need_a_pe_from_the_settings_or_the_extra_directives() -> None:
    with pytest.raises(ValueError, match="needs a parallel environment: set the pe setting"):
        SgeJobs().header(REQUEST)
    request = JobRequest("n", 4, "o", "e", extra=("-pe threaded 4",))
    assert SgeJobs().header(request)[-1] == "#$ -pe threaded 4"
    assert not any("-pe" in line for line in SgeJobs().header(JobRequest("n", 1, "o", "e")))


def test_qsub_and_qstat_output_as_grid_engine_prints_it() -> None:
    queue = SgeJobs()
    assert queue.job_id("318\n") == "318"
    with pytest.raises(ValueError, match="not a job id"):
        queue.job_id('Unable to run job: Job was rejected because queue "nosuch" does not exist.')
    listing = (
        "job-ID  prior   name       user         state submit/start at     queue"
        "                          slots ja-task-ID\n"
        "-" * 100 + "\n"
        "    318 0.55500 scoop-r1-1 alice        r     12/05/2026 07:01:02 all.q@node1"
        "                        4\n"
        "    319 0.00000 scoop-r1-2 alice        qw    12/05/2026 07:01:00"
        "                                    4\n"
        "    320 0.00000 scoop-r1-3 alice        Eqw   12/05/2026 07:01:00"
        "                                    4\n"
    )
    assert queue.states(listing, ["318", "319", "320", "321"]) == {
        "318": "r",
        "319": "qw",
        "320": "Eqw",
    }
    assert {s: queue.phase(s) for s in ("qw", "hqw", "r", "t", "dr", "Eqw", "Rr")} == {
        "qw": JobQueue.PENDING,
        "hqw": JobQueue.PENDING,
        "r": JobQueue.RUNNING,
        "t": JobQueue.RUNNING,
        "dr": JobQueue.RUNNING,  # being deleted: its processes are still being killed
        "Eqw": JobQueue.FAILED,  # will never run by itself: deleted at once
        "Rr": JobQueue.RUNNING,
    }
    assert queue.submit_command("/w/job-1.sh") == ["qsub", "-terse", "/w/job-1.sh"]
    assert queue.cancel_command(["318"]) == ["qdel", "318"]
