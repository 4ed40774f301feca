"""Workers in Torque jobs submitted from a login node: ``scoop run --jobs N --scheduler torque``.

Torque is not packaged for Debian: ``qsub``, ``qstat`` and ``qdel`` are
stand-ins (``TORQUE_QUEUE`` in ../scheduler_jobs.py) with Torque's command
lines and output that really run each job script in the background, so the
runs here are real runs whose workers start from the job scripts the
launcher wrote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import scheduler_checks as checks
from scheduler_jobs import TORQUE_QUEUE
from scoop_launcher_torque.jobs import TorqueJobs

from scoop_core.interfaces import JobQueue, JobRequest

REQUEST = JobRequest(
    name="scoop-r1-1",
    cores=4,
    output="/j/job-1.out",
    error="/j/job-1.err",
    memory=(16 << 30) + 1,
    walltime=90061,
    queue="batch",
    extra=("-A project7",),
)


def test_the_header_asks_torque_for_one_node_of_cores_memory_and_time() -> None:
    assert TorqueJobs().header(REQUEST) == [
        "#PBS -N scoop-r1-1",
        "#PBS -S /bin/sh",
        "#PBS -o /j/job-1.out",
        "#PBS -e /j/job-1.err",
        "#PBS -l nodes=1:ppn=4",
        "#PBS -l mem=16385mb",  # rounded up: a job never gets less than asked
        "#PBS -l walltime=25:01:01",
        "#PBS -q batch",
        "#PBS -A project7",
    ]


def test_commands_and_the_listing_as_torque_prints_them() -> None:
    queue = TorqueJobs()
    assert queue.submit_command("/j/job-1.sh") == ["qsub", "/j/job-1.sh"]
    assert queue.job_id("1234.head.cluster.example.org\n") == "1234.head.cluster.example.org"
    assert queue.cancel_command(["1.s", "2.s"]) == ["qdel", "1.s", "2.s"]
    listing = (
        "Job ID                    Name             User            Time Use S Queue\n"
        "------------------------- ---------------- --------------- -------- - -----\n"
        "1234.head.cluster.exa*    scoop-r1-1       alice           00:01:02 R batch\n"
        "1235.head.cluster.exa*    scoop-r1-2       alice                  0 Q batch\n"
        "1236.head.cluster.exa*    scoop-r1-3       alice           00:00:00 C batch\n"
        "99.head.cluster.exa*      other            bob                    0 R batch\n"
    )
    ids = [f"{n}.head.cluster.example.org" for n in (1234, 1235, 1236, 1237)]
    assert queue.states(listing, ids) == {ids[0]: "R", ids[1]: "Q", ids[2]: "C"}
    phases = {s: queue.phase(s) for s in "QHWTRESC"}
    assert phases == {
        "Q": JobQueue.PENDING,
        "H": JobQueue.PENDING,
        "W": JobQueue.PENDING,
        "T": JobQueue.PENDING,
        "R": JobQueue.RUNNING,
        "E": JobQueue.RUNNING,  # exiting: its processes are still being ended
        "S": JobQueue.RUNNING,
        "C": JobQueue.ENDED,
    }
    with pytest.raises(ValueError, match="not a job id"):
        queue.job_id("qsub: submit error (Unknown queue)\n")


# -- real runs through the stand-ins --------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with checks.redis_server() as url:
        yield url


@pytest.fixture
def queue(tmp_path: Path) -> dict[str, str]:
    """The stand-ins first on PATH, their jobs in tmp_path/torque: the environment of a login node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("qsub", "qstat", "qdel"):
        checks.write_script(bin_dir / command, TORQUE_QUEUE)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_TORQUE_DIR": str(tmp_path / "torque"),
    }


def qstat(env: dict[str, str]) -> list[str]:
    """The state letter of each job the (stand-in) qstat lists."""
    lines = subprocess.run(["qstat"], env=env, capture_output=True, text=True).stdout
    return [line.split()[4] for line in lines.splitlines()[2:]]


def run_env(tmp_path: Path, queue: dict[str, str], transport: str, url: str) -> dict[str, str]:
    return {**checks.job_run_env(os.environ, tmp_path / "home", transport, url), **queue}


@pytest.mark.parametrize("transport", ["zmq", "redis"])
def test_jobs_run_the_workers_and_are_gone_at_the_end(
    tmp_path: Path, queue: dict[str, str], request: pytest.FixtureRequest, transport: str
) -> None:
    url = request.getfixturevalue("redis_url") if transport == "redis" else ""
    env = run_env(tmp_path, queue, transport, url)
    flags = ["--jobs", "2", "--scheduler", "torque", "--cores-per-job", "2", "--memory", "1G"]
    _, run_dir = checks.check_jobs_run(tmp_path, env, flags, "PBS_JOBID", 2)
    assert qstat(env) == ["C", "C"]
    assert "#PBS -l nodes=1:ppn=2\n#PBS -l mem=1024mb\n" in (run_dir / "job-2.sh").read_text()
    assert (run_dir / "job-1.report").read_text().splitlines()[-1] == "end 0"


@pytest.mark.parametrize("transport", ["zmq", "redis"])
def test_futures_wait_for_jobs_that_stay_queued_longer_than_heartbeat_timeout(
    tmp_path: Path, queue: dict[str, str], request: pytest.FixtureRequest, transport: str
) -> None:
    """A busy queue: the jobs start 15 s after submission, far past the
    run's heartbeat_timeout and the 10 s a run waits for its workers; the
    program started at once, and its futures waited for the jobs' workers."""
    url = request.getfixturevalue("redis_url") if transport == "redis" else ""
    env = {
        **run_env(tmp_path, queue, transport, url),
        "STANDIN_JOB_QUEUED": "15",
        "SCOOP_HEARTBEAT_INTERVAL": "0.5",
        "SCOOP_HEARTBEAT_TIMEOUT": "2",
    }
    flags = ["--jobs", "1", "--scheduler", "torque", "--cores-per-job", "2"]
    result, _ = checks.check_jobs_run(tmp_path, env, flags, "PBS_JOBID", 1)
    assert "still queued" not in result.stderr  # (pending_timeout is 300 s)
    assert qstat(env) == ["C"]


def workers_running(env: dict[str, str], tmp_path: Path) -> bool:
    """Both jobs run, and a worker of each has started."""
    workers = 0
    for pid in checks.processes_mentioning(str(tmp_path / "prog.py")):
        with contextlib.suppress(OSError):  # gone meanwhile
            workers += b"_SCOOP_NAME=worker-" in Path(f"/proc/{pid}/environ").read_bytes()
    return workers >= 2 and qstat(env) == ["R", "R"]


def test_ctrl_c_of_the_launcher_deletes_every_job(tmp_path: Path, queue: dict[str, str]) -> None:
    env = run_env(tmp_path, queue, "zmq", "")
    flags = ["--jobs", "2", "--scheduler", "torque"]
    checks.check_ctrl_c(
        tmp_path, env, flags, lambda: workers_running(env, tmp_path), "both jobs' workers"
    )
    assert qstat(env) == ["C", "C"]


def test_a_job_deleted_from_outside_is_reported_and_the_run_goes_on(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(
        "import sys, time\nfrom scoop import futures\n\n"
        "def slow(x):\n    time.sleep(0.05)\n    return x\n\n"
        "if __name__ == '__main__':\n"
        "    while not __import__('os').path.exists(sys.argv[1]):\n"
        "        time.sleep(0.05)  # until the test has deleted a job\n"
        "    print('RESULT', sum(futures.map(slow, range(50))), flush=True)\n"
    )
    go = tmp_path / "go"
    env = run_env(tmp_path, queue, "zmq", "")
    proc = checks.start_piped(
        [sys.executable, "-m", "scoop", "--jobs", "2", "--scheduler", "torque"]
        + [str(program), str(go)],
        env,
        cwd=tmp_path,
    )
    try:
        checks.wait_for(lambda: qstat(env) == ["R", "R"], "both jobs running")
        subprocess.run(["qdel", "1.standin"], env=env, check=True)
        go.touch()
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"RESULT {sum(range(50))}" in stdout
        assert "Torque job 1.standin (job-1: worker-1) ended (C) " in stderr, stderr
        assert "job-1.err" in stderr
    finally:
        proc.kill()
        proc.wait()
        assert checks.kill_mentioning(str(program)) == []


def test_a_submission_the_queue_refuses_stops_the_run_with_its_error(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(checks.BLOCKING_PROGRAM)
    env = run_env(tmp_path, queue, "zmq", "")
    result = subprocess.run(
        [sys.executable, "-m", "scoop", "--jobs", "2", "--scheduler", "torque"]
        + ["--queue", "nosuch", str(program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "qsub /" in result.stderr and "Unknown queue" in result.stderr, result.stderr
    assert "STARTED" not in result.stdout
    assert checks.kill_mentioning(str(program)) == []


def test_the_jobs_of_a_killed_launcher_end_once_their_workers_lose_the_run(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(checks.BLOCKING_PROGRAM)
    env = {**run_env(tmp_path, queue, "zmq", ""), "SCOOP_HEARTBEAT_TIMEOUT": "3"}
    proc = checks.start_piped(
        [sys.executable, "-m", "scoop", "--jobs", "2", "--scheduler", "torque", str(program)],
        env,
        cwd=tmp_path,
    )
    try:
        checks.wait_for(
            lambda: (
                len(checks.processes_mentioning("_SCOOP_NAME=worker-")) >= 2
                and qstat(env) == ["R", "R"]
            ),
            "both jobs' workers",
        )
        proc.kill()  # SIGKILL: nothing of the launcher's own clean-up runs
        proc.wait()
        checks.wait_for(lambda: qstat(env) == ["C", "C"], "the jobs to end", timeout=60)
    finally:
        proc.kill()
        proc.wait()
        assert checks.kill_mentioning(str(program)) == []


def test_ctrl_c_while_a_job_is_being_submitted_deletes_it_and_those_before(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    env = {**run_env(tmp_path, queue, "zmq", ""), "STANDIN_QSUB_SLOW": "3"}
    stderr = checks.check_ctrl_c(
        tmp_path,
        env,
        ["--jobs", "3", "--scheduler", "torque"],
        lambda: Path(f"{env['STANDIN_TORQUE_DIR']}.slow").exists(),
        "the second submission",
    )
    # The second submission was let finish, so that its job could be deleted too.
    assert qstat(env) == ["C", "C"], stderr
    assert "submitted 3" not in stderr  # the run never started


def test_a_second_ctrl_c_does_not_wait_for_a_submission_and_names_its_job(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(checks.BLOCKING_PROGRAM)
    env = {**run_env(tmp_path, queue, "zmq", ""), "STANDIN_QSUB_SLOW": "300"}
    proc = checks.start_piped(
        [sys.executable, "-m", "scoop", "--jobs", "2", "--scheduler", "torque", str(program)],
        env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        checks.wait_for(
            lambda: Path(f"{env['STANDIN_TORQUE_DIR']}.slow").exists(), "the second submission"
        )
        proc.send_signal(signal.SIGINT)
        lines = []
        for line in proc.stderr:  # until the launcher says it waits for the submission
            lines.append(line)
            if "signal again to stop now" in line:
                break
        proc.send_signal(signal.SIGINT)
        stderr = "".join(lines) + proc.communicate(timeout=60)[1]
        assert proc.returncode == 130, stderr
        assert "interrupted while submitting" in stderr and "job-2.sh" in stderr, stderr
        assert "scoop-" in stderr.split("cancel the job named ")[1]
        assert qstat(env) == ["C"]
    finally:
        proc.kill()
        proc.wait()
        assert checks.kill_mentioning(str(program)) == []
