"""scoop_core.worker_jobs: sizes and walltimes as users write them, the job
script, the private plan each job reads once, and the job's own process.

Real runs through real schedulers are in tests/plugins/launcher_slurm,
launcher_sge (cluster suite) and launcher_torque (stand-ins).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoop_core.errors import LaunchError, UsageError
from scoop_core.interfaces import JobQueue, JobRequest, WorkerSpec
from scoop_core.worker_jobs import (
    JobOptions,
    WorkerJobs,
    format_walltime,
    job_script,
    megabytes,
    parse_memory,
    parse_walltime,
)

# -- sizes and walltimes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16G", 16 << 30),
        ("16GB", 16 << 30),
        ("16gib", 16 << 30),
        ("512M", 512 << 20),
        ("1.5G", 3 << 29),
        ("100k", 102400),
        ("2T", 2 << 40),
        (" 8 G ", 8 << 30),
    ],
)
def test_memory_counts_in_powers_of_1024_as_schedulers_do(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["16", "G", "16X", "-1G", "16 GBs", "", "0.0000000001K"])
def test_memory_without_a_unit_or_a_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)


@given(st.integers(1, 1 << 50))
def test_megabytes_never_give_less_than_asked(size: int) -> None:
    assert megabytes(size) << 20 >= size > (megabytes(size) - 1) << 20


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1:00:00", 3600),
        ("0:10:00", 600),
        ("36:00:00", 36 * 3600),
        ("2-12:30:05", 2 * 86400 + 12 * 3600 + 30 * 60 + 5),
        ("1-0", 86400),
        ("1-2:30", 86400 + 2 * 3600 + 1800),
        ("90m", 5400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("45s", 45),
        ("1d2h3m4s", 93784),
    ],
)
def test_walltimes_as_slurm_writes_them_or_with_units(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["90", "1:30", "1:60:00", "1h1h", "soon", "0:00:00", ""])
def test_ambiguous_or_malformed_walltimes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(text)


@given(st.integers(1, 400 * 86400), st.booleans())
def test_a_written_walltime_reads_back_the_same(seconds: int, days: bool) -> None:
    written = format_walltime(seconds, days=days)
    assert parse_walltime(written) == seconds
    assert ("-" in written) == (days and seconds >= 86400)


def test_the_flags_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("")
    for flags, message in [
        (["--memory", "16"], "memory '16' is not a size with a unit"),
        (["--walltime", "90"], "walltime '90' is not H:MM:SS"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "scoop", "--jobs", "1", "--scheduler", "slurm", *flags]
            + ["prog.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr


# -- the job script, the plans ---------------------------------------------------------


class ShellQueue(JobQueue):
    """A scheduler made of shell commands: submitting prints an id, the list is a file."""

    scheduler = "Shell"
    directive = "#SHELL"

    def __init__(self, listing: Path) -> None:
        super().__init__()
        self.listing = listing
        self.submitted = 0

    def header(self, job: JobRequest) -> list[str]:
        if job.cores > 64:
            raise ValueError("no node has 65 cores")
        return [f"#SHELL name={job.name} cores={job.cores} out={job.output}", *job.extra]

    def submit_command(self, script: str) -> list[str]:
        self.submitted += 1
        return ["sh", "-c", f"echo 10{self.submitted}"]

    def job_id(self, output: str) -> str:
        return output.strip()

    def list_command(self) -> list[str]:
        return ["cat", str(self.listing)]

    def states(self, output: str, ids: Sequence[str]) -> dict[str, str]:
        pairs = (line.split() for line in output.splitlines())
        return {p[0]: p[1] for p in pairs if p[0] in ids}

    def phase(self, state: str) -> str:
        return {"Q": self.PENDING, "R": self.RUNNING}.get(state, self.ENDED)

    def cancel_command(self, ids: Sequence[str]) -> list[str]:
        return ["sh", "-c", f": > {self.listing}"]


def test_a_job_script_is_the_header_then_the_command_in_the_working_directory() -> None:
    request = JobRequest("scoop-r-1", 2, "/o/j.out", "/o/j.err", extra=("#SHELL x=1",))
    script = job_script(ShellQueue(Path("/l")), request, ["py", "-m", "m", "a b"], "/my dir")
    assert script == (
        "#!/bin/sh\n"
        "#SHELL name=scoop-r-1 cores=2 out=/o/j.out\n"
        "#SHELL x=1\n"
        "# The run's key is not here: the job reads it from its plan, a file only you\n"
        "# can read, and deletes it (see scoop_core.worker_jobs).\n"
        "cd '/my dir' || exit 1\n"
        "exec py -m m 'a b'\n"
    )


def launcher(tmp_path: Path, jobs: int = 2, cores: int = 2) -> WorkerJobs:
    return WorkerJobs(
        ShellQueue(tmp_path / "listing"),
        JobOptions(jobs=jobs, cores=cores),
        settings={"job_directory": str(tmp_path / "out"), "poll_interval": 0.1},
        python="/opt/py",
        cwd=str(tmp_path),
    )


def test_a_dry_run_shows_the_script_and_commands_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = launcher(tmp_path, jobs=3).dry_run("r1")
    assert "#SHELL name=scoop-r1-1 cores=2" in text
    assert f"exec /opt/py -m scoop_core.worker_jobs {tmp_path}/home/.scoop/jobs/r1/job-1.plan" in (
        text
    )
    assert text.count("sh -c 'echo 10") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_request_the_scheduler_cannot_take_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Shell job: no node has 65 cores"):
        launcher(tmp_path, jobs=1, cores=65).dry_run("r1")


def specs(count: int, key: str) -> list[WorkerSpec]:
    env = {"_SCOOP_RUN_ID": "r2", "_SCOOP_KEY": key}
    return [
        WorkerSpec(f"worker-{i}", "127.0.0.1", ("true",), {**env, "_SCOOP_NAME": f"worker-{i}"})
        for i in range(1, count + 1)
    ]


def test_plans_hold_the_key_privately_and_are_removed_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key = "ab" * 32
    jobs = launcher(tmp_path)
    (tmp_path / "listing").write_text("101 R\n102 Q\n")
    group = jobs.start(specs(4, key))
    try:
        plans = tmp_path / "home" / ".scoop" / "jobs" / "r2"
        assert stat.S_IMODE(plans.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "home" / ".scoop").stat().st_mode) == 0o700
        for index, names in ((1, ["worker-1", "worker-2"]), (2, ["worker-3", "worker-4"])):
            plan = plans / f"job-{index}.plan"
            assert stat.S_IMODE(plan.stat().st_mode) == 0o600
            workers = json.loads(plan.read_text())["workers"]
            assert [w["name"] for w in workers] == names
            assert all(w["env"]["_SCOOP_KEY"] == key for w in workers)
        for path in (tmp_path / "out" / "r2").iterdir():
            assert key not in path.read_text()
        assert group.poll() == dict.fromkeys(["worker-1", "worker-2", "worker-3", "worker-4"])
    finally:
        group.stop(0.0)
    assert not plans.exists()
    assert set(group.poll().values()) == {-15}  # cancelled while running or queued
    assert (tmp_path / "listing").read_text() == ""


def test_a_submission_that_fails_cancels_those_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    jobs = launcher(tmp_path)
    queue = jobs.queue
    assert isinstance(queue, ShellQueue)
    (tmp_path / "listing").write_text("101 Q\n")
    failing = queue.submit_command

    def second_fails(script: str) -> list[str]:
        argv = failing(script)
        return argv if queue.submitted == 1 else ["sh", "-c", "echo 'queue full' >&2; exit 3"]

    monkeypatch.setattr(queue, "submit_command", second_fails)
    with pytest.raises(LaunchError, match=r"Shell: sh -c .* failed \(exit 3\): queue full"):
        jobs.start(specs(4, "cd" * 32))
    assert (tmp_path / "listing").read_text() == ""  # job 101 was cancelled
    assert not (tmp_path / "home" / ".scoop" / "jobs" / "r2").exists()


# -- in the job -------------------------------------------------------------------------


def job_main(plan: Path, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoop_core.worker_jobs", str(plan), str(report)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_plan(path: Path, workers: list[dict[str, object]], mode: int = 0o600) -> Path:
    path.write_text(json.dumps({"workers": workers}))
    path.chmod(mode)
    return path


def test_a_job_runs_its_workers_reports_their_exits_and_uses_its_plan_once(
    tmp_path: Path,
) -> None:
    code = (
        "import os, sys\n"
        "name, x = os.environ['_SCOOP_NAME'], os.environ['X']\n"
        "os.write(1, f'{name} {x}\\n'.encode())  # one write: the workers share stdout\n"
        "sys.exit(int(sys.argv[1]))"
    )
    workers = [
        {
            "name": f"worker-{i}",
            "argv": [sys.executable, "-c", code, str(status)],
            "env": {"X": "y", "_SCOOP_NAME": f"worker-{i}"},
        }
        for i, status in ((1, 0), (2, 3))
    ]
    plan = write_plan(tmp_path / "job-1.plan", workers)
    report = tmp_path / "job-1.report"
    done = job_main(plan, report)
    assert done.returncode == 1  # a worker failed
    assert sorted(done.stdout.split("\n")[:-1]) == ["worker-1 y", "worker-2 y"]
    lines = report.read_text().splitlines()
    assert lines[0].startswith("host ") and lines[-1] == "end 1"
    assert sorted(lines[1:-1]) == ["exit worker-1 0", "exit worker-2 3"]
    assert not plan.exists()
    again = job_main(plan, report)
    assert again.returncode == 2 and "the run may be over already" in again.stderr


def test_a_plan_others_can_read_is_refused_and_deleted(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "job-1.plan", [], mode=0o644)
    done = job_main(plan, tmp_path / "report")
    assert done.returncode == 2 and "open to other users" in done.stderr
    assert not plan.exists()
    link = tmp_path / "job-2.plan"
    os.symlink(write_plan(tmp_path / "real", []), link)
    done = job_main(link, tmp_path / "report")
    assert done.returncode == 2 and "symbolic link" in done.stderr
