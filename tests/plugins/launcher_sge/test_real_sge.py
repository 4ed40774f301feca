"""The sge launcher in a real Grid Engine job on this machine (see sge_cluster.py).

A driver program runs inside ``qsub -pe scooptest 2``, reads the
allocation and starts its workers through a real ``qrsh -inherit``; the
example job script runs a SCOOP program the same way, and so does a plain
Python program's ``scoop_core.Executor()``, with no launcher.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import executor_in_jobs as in_jobs
import pytest
import scheduler_checks as checks
import sge_cluster

_scheduler_installed = checks.fail_unless_installed(sge_cluster.missing())


REPO = Path(__file__).resolve().parents[3]

DRIVER = checks.DRIVER_TOOLS + textwrap.dedent(
    """
    from scoop_launcher_sge.launcher import SgeLauncher

    out = Path(sys.argv[1])
    worker = out / "worker.py"
    worker.write_text(
        "import os, sys, time\\n"
        "sys.stdout.reconfigure(line_buffering=True, write_through=False)\\n"
        "name = os.environ['_SCOOP_NAME']\\n"
        "print(name, 'runs in job', os.environ['JOB_ID'], 'with', os.environ['SECRET'])\\n"
        "Path = __import__('pathlib').Path\\n"
        "Path(sys.argv[1], name).write_text(str(os.getpid()))\\n"
        "time.sleep(600)\\n"
    )

    allocation, group, names = start_workers(
        SgeLauncher({}),
        out,
        (sys.executable, str(worker), str(out)),
        {"SECRET": os.environ["SECRET"]},
    )
    pids = {n: int((out / n).read_text()) for n in names}
    report = {"allocation": [[h.name, h.count] for h in allocation], "running": group.poll()}
    os.kill(pids["worker-1"], signal.SIGKILL)
    wait(lambda: group.poll()["worker-1"] is not None, "worker-1's death")
    report["after_kill"] = group.poll()
    group.stop(2.0)
    report["after_stop"] = group.poll()
    report["alive"] = [n for n, pid in pids.items() if os.path.exists(f"/proc/{pid}/cmdline")
                       and open(f"/proc/{pid}/cmdline").read()]
    print("REPORT", json.dumps(report), flush=True)
    """
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[sge_cluster.Cluster]:
    with sge_cluster.sge_cluster() as running:
        yield running


def qsub(cluster: sge_cluster.Cluster, mark: str, *args: str, **extra: str) -> str:
    """Submit with -sync y (in a timeout: a job in error state waits for ever); its output.

    The submitter's ``python`` (first on PATH) is this interpreter, as from
    a virtualenv, and says so on stderr when a job runs it."""
    output = Path(extra.pop("output"))
    bin_dir = checks.submitters_python(output.parent / "bin").parent
    env = {
        **cluster.env,
        checks.MARK_VAR: mark,
        "PATH": f"{bin_dir}:{cluster.env['PATH']}",
        **extra,
    }
    done = checks.subprocess.run(
        ["qsub", "-sync", "y", "-V", "-j", "y", "-o", str(output), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    text = output.read_text() if output.exists() else ""
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{text}"
    return text


def test_workers_start_through_qrsh_inherit_and_stop(
    cluster: sge_cluster.Cluster, tmp_path: Path
) -> None:
    (tmp_path / "driver.py").write_text(DRIVER)
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'driver.py'} {tmp_path}\n")
    job.chmod(0o755)
    mark, secret = uuid.uuid4().hex, uuid.uuid4().hex
    text = qsub(
        cluster, mark, "-pe", cluster.pe, "2", str(job), output=str(tmp_path / "out"), SECRET=secret
    )
    report = json.loads(next(ln for ln in text.splitlines() if ln.startswith("REPORT "))[7:])
    assert report["allocation"] == [[cluster.host, 2]]
    assert set(report["running"].values()) == {None}
    for name in ("worker-1", "worker-2"):
        assert f"[{cluster.host}] {name} runs in job" in text and secret in text
    assert report["after_kill"] == {"worker-1": -9, "worker-2": None}
    assert report["after_stop"]["worker-2"] is not None
    assert report["alive"] == []
    assert checks.kill_marked(mark) == []


def test_the_example_job_script_runs(cluster: sge_cluster.Cluster, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    script = REPO / "examples" / "submit_files" / "sge.qsub"
    # The script asks for the PE "smp"; here it is called scooptest.
    text = qsub(cluster, mark, "-pe", cluster.pe, "2", str(script), output=str(tmp_path / "out"))
    # Grid Engine's login shell reset PATH; the script put the submitter's back.
    assert checks.SUBMITTERS_PYTHON in text, text
    assert "map: 1000 values" in text
    assert "running inside a sge allocation" in text
    assert checks.kill_marked(mark) == []


# -- a plain Python program's Executor inside a job (executor_in_jobs.py) -----------------

# A task that qrsh -inherit started inside the job is named "petask", its script "QRSH".
SGE_VARIABLES = ("JOB_ID", "JOB_NAME", "JOB_SCRIPT")


def run_executor_job(
    cluster: sge_cluster.Cluster, tmp_path: Path, how: str, slots: int
) -> dict[str, Any]:
    """The Executor program (``how``: "executor", or N workers) in a job of
    ``slots`` slots; its report, once no process of it is left."""
    argv = in_jobs.program_argv(in_jobs.write_program(tmp_path), how, SGE_VARIABLES)
    job = tmp_path / "job.sh"
    job.write_text(f"#!/bin/sh\nexec {shlex.join(argv)}\n")
    job.chmod(0o755)
    mark = uuid.uuid4().hex
    try:
        text = qsub(
            cluster, mark, "-pe", cluster.pe, str(slots), str(job), output=str(tmp_path / "out")
        )
        report = in_jobs.read_report(text)
    finally:
        assert checks.kill_marked(mark) == []
    # qsub -sync y has returned: the job is over, and leaves qstat's list.
    checks.wait_for(
        lambda: qstat(cluster) == [],
        "qstat to list no job",
        context=lambda: "\n".join(qstat(cluster)),
    )
    return report


def test_an_executor_in_a_job_starts_its_workers_through_qrsh_inherit(
    cluster: sge_cluster.Cluster, tmp_path: Path
) -> None:
    report = run_executor_job(cluster, tmp_path, "executor", 2)
    # Executor() with no argument: one worker a slot of the job, on its host.
    assert report["size"] == 2
    assert [host for host, _ in report["workers"]] == [cluster.host] * 2
    assert {env["JOB_ID"] for _, env in report["workers"]} == {report["root"]["JOB_ID"]}
    assert all(
        env["JOB_NAME"] == "petask" and env["JOB_SCRIPT"] == "QRSH" for _, env in report["workers"]
    )


def test_an_executor_of_fewer_workers_than_the_job_has_slots(
    cluster: sge_cluster.Cluster, tmp_path: Path
) -> None:
    report = run_executor_job(cluster, tmp_path, "3", 4)
    # run(workers=3) in a job of four slots: three workers, as -n 3 gives.
    assert report["size"] == 3
    assert [host for host, _ in report["workers"]] == [cluster.host] * 3
    assert {env["JOB_ID"] for _, env in report["workers"]} == {report["root"]["JOB_ID"]}
    assert all(env["JOB_SCRIPT"] == "QRSH" for _, env in report["workers"])


# -- jobs of workers submitted from outside (scoop run --jobs N --scheduler sge) --------


def qstat(cluster: sge_cluster.Cluster) -> list[str]:
    """Every user's jobs Grid Engine lists (queued, running, being deleted)."""
    lines = cluster.run("qstat", "-u", "*").stdout.splitlines()
    return [line for line in lines[2:] if line.strip()]


def jobs_env(cluster: sge_cluster.Cluster, tmp_path: Path) -> dict[str, str]:
    env = checks.job_run_env(cluster.env, tmp_path / "home", "zmq", "")
    env["SCOOP_LAUNCHER_SGE_PE"] = cluster.pe
    return env


def test_jobs_submitted_from_outside_run_the_workers(
    cluster: sge_cluster.Cluster, tmp_path: Path
) -> None:
    flags = ["--jobs", "2", "--scheduler", "sge", "--cores-per-job", "2", "--walltime", "10m"]
    _, run_dir = checks.check_jobs_run(tmp_path, jobs_env(cluster, tmp_path), flags, "JOB_ID", 2)
    assert qstat(cluster) == []
    script = (run_dir / "job-1.sh").read_text()
    assert f"#$ -pe {cluster.pe} 2\n" in script and "#$ -l h_rt=0:10:00\n" in script


def test_ctrl_c_of_the_launcher_deletes_queued_and_running_jobs(
    cluster: sge_cluster.Cluster, tmp_path: Path
) -> None:
    def states() -> list[str]:
        return sorted(line.split()[4] for line in qstat(cluster))

    # The queue has 4 slots: two jobs of two run, the third waits.
    checks.check_ctrl_c(
        tmp_path,
        jobs_env(cluster, tmp_path),
        ["--jobs", "3", "--scheduler", "sge", "--cores-per-job", "2"],
        lambda: states() == ["qw", "r", "r"],
        "two jobs running and one queued",
        context=lambda: "\n".join(qstat(cluster)),
    )
    assert qstat(cluster) == []
