"""The slurm launcher in a real SLURM job: two logical nodes on this machine (see slurm_cluster.py).

A driver program runs inside ``salloc -N2 -n4``, reads the allocation and
starts two workers on each node through real ``srun`` steps; the tests
check what the driver saw and that nothing is left once it stops, or once
``scancel`` cancels a step. A plain Python program in a job does the same
with ``scoop_core.Executor()`` and ``scoop_core.run()``, no launcher.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import executor_in_jobs as in_jobs
import pytest
import scheduler_checks as checks
import slurm_cluster

_scheduler_installed = checks.fail_unless_installed(slurm_cluster.missing())


REPO = Path(__file__).resolve().parents[3]

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.stdout.reconfigure(line_buffering=True, write_through=False)  # whole lines
    name, node = os.environ["_SCOOP_NAME"], os.environ["SLURMD_NODENAME"]
    print(f"{name} runs on {node} in step {os.environ['SLURM_STEP_ID']}", flush=True)
    Path(sys.argv[1], name).write_text(f"{os.getpid()} {node}")
    time.sleep(600)
    """
)

DRIVER = checks.DRIVER_TOOLS + textwrap.dedent(
    """
    from scoop_launcher_slurm.launcher import SlurmLauncher

    out, mode = Path(sys.argv[1]), sys.argv[2]

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    allocation, group, names = start_workers(
        SlurmLauncher({}),
        out,
        (sys.executable, str(out / "worker.py"), str(out)),
        {"SCOOP_TEST_SECRET": os.environ["SECRET"]},
    )
    workers = {n: (out / n).read_text().split() for n in names}
    report = {
        "allocation": [[h.name, h.count] for h in allocation],
        "nodes": {n: node for n, (pid, node) in workers.items()},
        "running": group.poll(),
    }
    if mode == "kill":
        os.kill(int(workers["worker-1"][0]), signal.SIGKILL)
        wait(lambda: group.poll()["worker-1"] is not None, "worker-1's death")
        report["after_kill"] = group.poll()
    elif mode == "scancel":
        print("STEPS-READY", os.environ["SLURM_JOB_ID"], flush=True)
        on_n2 = [n for n, node in report["nodes"].items() if node == "n2"]
        wait(lambda: all(group.poll()[n] is not None for n in on_n2), "n2's workers to go")
        report["after_scancel"] = group.poll()
    group.stop(2.0)
    report["after_stop"] = group.poll()
    report["alive"] = [n for n, (pid, node) in workers.items() if alive(int(pid))]
    print("REPORT", json.dumps(report), flush=True)
    """
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurm_cluster.Cluster]:
    with slurm_cluster.slurm_cluster() as running:
        yield running


def run_driver(
    cluster: slurm_cluster.Cluster, tmp_path: Path, mode: str
) -> tuple[dict[str, Any], str, str]:
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "driver.py").write_text(DRIVER)
    mark, secret = uuid.uuid4().hex, uuid.uuid4().hex
    env = {**cluster.env, checks.MARK_VAR: mark, "SECRET": secret}
    argv = ["salloc", "-N2", "-n4", sys.executable, str(tmp_path / "driver.py"), str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("STEPS-READY"):
                cancel_step_on(cluster, line.split()[1], "n2")
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
        proc.wait()
    stdout = "".join(lines)
    reports = [line for line in lines if line.startswith("REPORT ")]
    assert reports, f"the driver reported nothing\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert checks.kill_marked(mark) == []
    assert checks.command_lines_containing(secret) == []
    return json.loads(reports[0][len("REPORT ") :]), stdout, stderr


def cancel_step_on(cluster: slurm_cluster.Cluster, job: str, node: str) -> None:
    steps = cluster.run("squeue", "-h", "-s", "-j", job, "-o", "%i %N").stdout.split("\n")
    step = next(s.split()[0] for s in steps if s.split()[1:] == [node])
    assert cluster.run("scancel", step).returncode == 0


def test_workers_start_on_both_nodes_through_srun_and_stop(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    report, stdout, _ = run_driver(cluster, tmp_path, "kill")
    assert report["allocation"] == [["n1", 2], ["n2", 2]]
    assert report["nodes"] == {
        "worker-1": "n1",
        "worker-2": "n1",
        "worker-3": "n2",
        "worker-4": "n2",
    }
    assert set(report["running"].values()) == {None}
    # Each node's workers share one step, and their lines carry its name.
    steps = dict(re.findall(r"^\[n\d\] (worker-\d) runs on n\d in step (\d+)$", stdout, re.M))
    assert sorted(steps) == ["worker-1", "worker-2", "worker-3", "worker-4"], stdout
    assert steps["worker-1"] == steps["worker-2"] != steps["worker-3"] == steps["worker-4"]
    assert "[n1] worker-1 runs on n1" in stdout and "[n2] worker-4 runs on n2" in stdout
    assert report["after_kill"]["worker-1"] == -9
    assert None not in report["after_stop"].values()
    assert report["alive"] == []


def test_scancel_of_a_step_ends_its_workers_and_the_launcher_sees_it(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    report, _, _ = run_driver(cluster, tmp_path, "scancel")
    on_n2 = [name for name, node in report["nodes"].items() if node == "n2"]
    assert on_n2 == ["worker-3", "worker-4"]
    assert all(report["after_scancel"][name] is not None for name in on_n2)
    assert report["after_scancel"]["worker-1"] is None
    assert report["alive"] == []


def in_salloc(
    cluster: slurm_cluster.Cluster, mark: str, cwd: Path, *argv: str
) -> subprocess.CompletedProcess[str]:
    """``salloc -N2 -n4 ARGV`` run in ``cwd``, its processes marked with ``mark``."""
    return subprocess.run(
        ["salloc", "-N2", "-n4", *argv],
        cwd=cwd,
        env={**cluster.env, checks.MARK_VAR: mark},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_scoop_program_in_a_job_uses_its_nodes(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex
    result = in_salloc(
        cluster, mark, REPO, sys.executable, "-m", "scoop", "-v", "examples/map_abs.py"
    )
    assert result.returncode == 0, result.stderr
    assert "map: 1000 values" in result.stdout
    assert "slurm" in result.stderr
    assert checks.kill_marked(mark) == []


def test_the_example_batch_script_runs(cluster: slurm_cluster.Cluster, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    output = tmp_path / "job.out"
    # The script's `python` is the submitter's: this one, as from a virtualenv.
    bin_dir = checks.submitters_python(tmp_path / "bin").parent
    env = {**cluster.env, checks.MARK_VAR: mark, "PATH": f"{bin_dir}:{cluster.env['PATH']}"}
    script = REPO / "examples" / "submit_files" / "slurm.sbatch"
    _, text = run_batch_job(cluster, env, output, f"--chdir={REPO}", str(script))
    assert checks.SUBMITTERS_PYTHON in text, text
    assert "map: 1000 values" in text
    assert "running inside a slurm allocation" in text
    assert checks.kill_marked(mark) == []


def run_batch_job(
    cluster: slurm_cluster.Cluster, env: dict[str, str], output: Path, *args: str
) -> tuple[str, str]:
    """``sbatch ARGS`` in ``env``, its output to ``output``, waited for until it
    has COMPLETED: its id and output."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={output}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    # sbatch --wait polls every ~10 s; scontrol answers at once.
    state = checks.wait_for(
        lambda: finished_state(cluster, job), f"job {job} to finish", timeout=120
    )
    text = output.read_text()
    assert state == "COMPLETED", f"{state}\n{text}"
    return job, text


def finished_state(cluster: slurm_cluster.Cluster, job: str) -> str | None:
    shown = cluster.run("scontrol", "show", "job", job, "-o").stdout
    state = next((f.split("=", 1)[1] for f in shown.split() if f.startswith("JobState=")), None)
    return state if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"} else None


# -- a plain Python program's Executor inside a job (executor_in_jobs.py) -----------------

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_STEP_ID")
STEPS = "squeue -h -s -j $SLURM_JOB_ID -o '%i %N'"


def test_an_executor_in_a_job_runs_its_workers_on_the_nodes_through_srun(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    program = in_jobs.write_program(tmp_path)
    mark = uuid.uuid4().hex
    try:
        argv = in_jobs.program_argv(program, "executor", SLURM_VARIABLES, STEPS)
        result = in_salloc(cluster, mark, tmp_path, *argv)
        assert result.returncode == 0, result.stderr
        report = in_jobs.read_report(result.stdout)
    finally:
        assert checks.kill_marked(mark) == []
    # Executor() with no argument: the allocation's four tasks, two a node.
    assert report["size"] == 4
    nodes = sorted(env["SLURMD_NODENAME"] for _, env in report["workers"])
    assert nodes == ["n1", "n1", "n2", "n2"]
    # Started by srun: one step a node, each node's workers in its step.
    step_of = {env["SLURMD_NODENAME"]: env["SLURM_STEP_ID"] for _, env in report["workers"]}
    assert None not in step_of.values() and step_of["n1"] != step_of["n2"]
    job = report["root"]["SLURM_JOB_ID"]
    assert {env["SLURM_JOB_ID"] for _, env in report["workers"]} == {job}
    assert sorted(report["listed"]) == sorted(f"{job}.{step_of[n]} {n}" for n in ("n1", "n2"))
    # Shut down while the job still ran: its steps had ended.
    assert report["listed_after"] == []
    wait_for_no_job(cluster)
    assert finished_state(cluster, job) == "COMPLETED"


def test_an_executor_of_fewer_workers_than_the_job_fills_its_nodes_in_order(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    program = in_jobs.write_program(tmp_path)
    script = tmp_path / "job.sh"
    argv = in_jobs.program_argv(program, "2", SLURM_VARIABLES, STEPS)
    script.write_text(f"#!/bin/sh\nexec {shlex.join(argv)}\n")
    mark = uuid.uuid4().hex
    try:
        env = {**cluster.env, checks.MARK_VAR: mark}
        job, text = run_batch_job(cluster, env, tmp_path / "job.out", "-N2", "-n4", str(script))
        report = in_jobs.read_report(text)
    finally:
        assert checks.kill_marked(mark) == []
    # run(workers=2) in a job of n1:2 and n2:2 takes the first node's two tasks, as -n 2 does.
    assert report["size"] == 2
    assert [env["SLURMD_NODENAME"] for _, env in report["workers"]] == ["n1", "n1"]
    assert {env["SLURM_JOB_ID"] for _, env in report["workers"]} == {job}
    (step,) = {env["SLURM_STEP_ID"] for _, env in report["workers"]}
    assert sorted(report["listed"]) == [f"{job}.{step} n1", f"{job}.batch n1"]
    assert report["listed_after"] == [f"{job}.batch n1"]
    wait_for_no_job(cluster)


STEP_CANCELLED = textwrap.dedent(
    """
    import json, os, subprocess, time
    import scoop_core

    def where(x):
        time.sleep(0.1)
        return [x * x, os.environ["SLURMD_NODENAME"]]

    def steps():
        argv = ["squeue", "-h", "-s", "-j", os.environ["SLURM_JOB_ID"], "-o", "%i %N"]
        listed = subprocess.run(argv, capture_output=True, text=True).stdout
        return [line.split() for line in listed.splitlines()]

    if __name__ == "__main__":
        with scoop_core.Executor() as pool:
            (step,) = [step for step, node in steps() if node == "n2"]
            futures = [pool.submit(where, x) for x in range(40)]
            subprocess.run(["scancel", step], check=True)
            results = [f.result() for f in futures]
            later = list(pool.map(where, range(20)))
        right = [r[0] for r in results + later] == [x * x for x in [*range(40), *range(20)]]
        print("REPORT", json.dumps({"right": right, "later": sorted({n for _, n in later}),
              "steps_after": steps()}), flush=True)
    """
)
"""An Executor whose n2 step is cancelled while its futures run."""


def test_scancel_of_a_step_under_an_executor_leaves_its_futures_to_the_other_node(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(STEP_CANCELLED)
    mark = uuid.uuid4().hex
    try:
        result = in_salloc(cluster, mark, tmp_path, sys.executable, str(program))
        assert result.returncode == 0, result.stderr
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith("REPORT ")), "")
        assert line, f"{result.stdout}\n{result.stderr}"
    finally:
        assert checks.kill_marked(mark) == []
    report = json.loads(line[len("REPORT ") :])
    assert report["right"]  # n2's futures ran again on n1
    assert report["later"] == ["n1"]
    assert "n2: its connection closed; counting its 2 worker(s) as gone" in result.stderr
    assert report["steps_after"] == []
    wait_for_no_job(cluster)


# -- jobs of workers submitted from outside (scoop run --jobs N --scheduler slurm) ------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with checks.redis_server() as url:
        yield url


def jobs_env(
    cluster: slurm_cluster.Cluster, request: pytest.FixtureRequest, tmp_path: Path, transport: str
) -> dict[str, str]:
    url = request.getfixturevalue("redis_url") if transport == "redis" else ""
    return checks.job_run_env(cluster.env, tmp_path / "home", transport, url)


def squeue(cluster: slurm_cluster.Cluster) -> list[str]:
    """The jobs plain ``squeue`` shows (queued, running, being killed)."""
    return cluster.run("squeue", "--noheader", "--format=%i %T %j").stdout.split("\n")[:-1]


def wait_for_no_job(cluster: slurm_cluster.Cluster) -> None:
    """Wait until ``squeue`` lists no job: one that has just ended may be COMPLETING a moment."""
    checks.wait_for(
        lambda: squeue(cluster) == [],
        "squeue to list no job",
        context=lambda: "\n".join(squeue(cluster)),
    )


@pytest.mark.parametrize("transport", ["zmq", "redis"])
def test_jobs_submitted_from_outside_run_the_workers(
    cluster: slurm_cluster.Cluster, request: pytest.FixtureRequest, tmp_path: Path, transport: str
) -> None:
    flags = ["--jobs", "2", "--scheduler", "slurm", "--cores-per-job", "2", "--walltime", "10m"]
    _, run_dir = checks.check_jobs_run(
        tmp_path, jobs_env(cluster, request, tmp_path, transport), flags, "SLURM_JOB_ID", 2
    )
    assert squeue(cluster) == []
    assert "#SBATCH --time=0:10:00" in (run_dir / "job-1.sh").read_text()


def test_ctrl_c_of_the_launcher_cancels_queued_and_running_jobs(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    env = checks.job_run_env(cluster.env, tmp_path / "home", "zmq", "")
    env["SCOOP_LAUNCHER_SLURM_PENDING_TIMEOUT"] = "1"

    def states() -> list[str]:
        return sorted(line.split()[1] for line in squeue(cluster))

    # Two nodes of two CPUs: two jobs of two cores run, the third waits for one.
    stderr = checks.check_ctrl_c(
        tmp_path,
        env,
        ["--jobs", "3", "--scheduler", "slurm", "--cores-per-job", "2"],
        lambda: states() == ["PENDING", "RUNNING", "RUNNING"],
        "two jobs running and one queued",
        context=lambda: "\n".join(squeue(cluster)),
    )
    assert squeue(cluster) == []
    assert re.search(r"SLURM job \d+ \(job-3: worker-5, worker-6\) is still queued", stderr)
    assert "job-3.out" in stderr


DYING_JOB = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from scoop import futures

    flag = sys.argv[1]

    def work(x):
        if x == 0:
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:  # the first time only: this future's job is cancelled under it
                subprocess.run(["scancel", os.environ["SLURM_JOB_ID"]])
                time.sleep(60)
        time.sleep(0.05)
        return x * x

    if __name__ == "__main__":
        print("RESULT", sum(futures.map(work, range(100))), flush=True)
    """
)


def test_a_job_that_dies_is_reported_and_the_run_goes_on(
    cluster: slurm_cluster.Cluster, tmp_path: Path
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(DYING_JOB)
    env = checks.job_run_env(cluster.env, tmp_path / "home", "zmq", "")
    result = subprocess.run(
        [sys.executable, "-m", "scoop", "--jobs", "2", "--scheduler", "slurm"]
        + ["--cores-per-job", "2", str(program), str(tmp_path / "flag")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert f"RESULT {sum(x * x for x in range(100))}" in result.stdout
        assert re.search(r"SLURM job \d+ \(job-\d: [^)]*\) failed \(CANCELLED", result.stderr), (
            result.stderr
        )
        assert squeue(cluster) == []
    finally:
        assert checks.kill_mentioning(str(program)) == []


def test_the_docs_example_runs(cluster: slurm_cluster.Cluster, tmp_path: Path) -> None:
    """docs/scheduler-jobs.md's program and command, as written there."""
    doc = (REPO / "docs" / "scheduler-jobs.md").read_text()
    source = re.search(r"```python\n# jobs_example.py\n(.*?)```", doc, re.S)
    command = re.search(r"```console\n\$ (scoop run [^\n]*)\n```", doc)
    assert source and command
    (tmp_path / "jobs_example.py").write_text(source.group(1))
    env = checks.job_run_env(cluster.env, tmp_path / "home", "zmq", "")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's scoop
    result = subprocess.run(
        command.group(1).split(),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert "sum of squares: 328350" in result.stdout
        places = re.search(r"ran in: (.*)", result.stdout)
        assert places and any(where.isdigit() for where in places.group(1).split(", "))
        assert "submitted 2 SLURM job(s) of 2 worker(s)" in result.stderr
        assert squeue(cluster) == []
    finally:
        assert checks.kill_mentioning(str(tmp_path / "jobs_example.py")) == []
