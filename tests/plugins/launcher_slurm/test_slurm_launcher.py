"""The slurm launcher: one srun step per node, each running that node's supervisor.

The remote start here is a stand-in srun (see ../scheduler_jobs.py) that really runs
the step's command on this machine; ``test_real_slurm.py`` uses a real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import scheduler_checks as checks
from scheduler_jobs import SchedulerJob
from scoop_launcher_slurm.launcher import SRUN_OPTIONS, SlurmLauncher

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.hosts import Host

PLACEMENT = [("worker-1", "n1"), ("worker-2", "n1"), ("worker-3", "n2")]


def test_the_allocation_is_the_jobs_nodes_and_tasks(job: SchedulerJob) -> None:
    launcher = SlurmLauncher({}, environ=job.env)
    assert launcher.allocation() == [Host(None, "n1", None, 2), Host(None, "n2", None, 1)]
    assert launcher.count_cores([Host(None, "n2"), Host(None, "elsewhere")]) == {"n2": 1}


def test_a_malformed_nodelist_is_a_launch_error(job: SchedulerJob) -> None:
    job.env["SLURM_JOB_NODELIST"] = "n[1-"
    with pytest.raises(LaunchError, match=r"SLURM job's nodes: \$SLURM_JOB_NODELIST"):
        SlurmLauncher({}, environ=job.env).allocation()


def test_each_step_is_one_task_on_its_node_sharing_the_jobs_resources() -> None:
    launcher = SlurmLauncher({"srun_args": ["--mpi=none"]}, environ={})
    argv = launcher.remote_argv("/usr/bin/srun", "n2", ["python3", "-m", "x"])
    assert argv[0] == "/usr/bin/srun" and argv[-3:] == ["python3", "-m", "x"]
    assert {*SRUN_OPTIONS, "--nodelist=n2", "--mpi=none"} <= set(argv)
    assert {"--overlap", "--ntasks=1", "--nodes=1", "--cpu-bind=none"} <= set(SRUN_OPTIONS)


def test_workers_through_srun(job: SchedulerJob, monkeypatch: pytest.MonkeyPatch) -> None:
    job.check_lifecycle(SlurmLauncher({}, environ=job.env), PLACEMENT, monkeypatch)


def test_local_names_go_through_srun_to_this_machines_node(
    job: SchedulerJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SLURM node names need not be network names (n1 is this machine): a
    # worker for "localhost" runs in a step on SLURMD_NODENAME's node.
    placement = [("worker-1", "localhost"), ("worker-2", "n1"), ("worker-3", "n2")]
    job.check_lifecycle(
        SlurmLauncher({}, environ=job.env),
        placement,
        monkeypatch,
        labels={"localhost": "n1"},
    )


def test_a_node_srun_cannot_reach_is_named_with_sruns_error(job: SchedulerJob) -> None:
    job.env["STANDIN_DOWN_NODES"] = "n2"
    message = job.start_error(SlurmLauncher({}, environ=job.env), PLACEMENT)
    assert message.startswith("SLURM: cannot start workers on n2: srun exited with status 1")
    assert "Communication connection failure" in message


def test_a_supervisor_that_cannot_start_is_reported(job: SchedulerJob, tmp_path: Path) -> None:
    # A node whose python cannot import scoop: the step ends before the ready mark.
    (tmp_path / "w.py").write_text(checks.WORKER)
    specs = checks.specs_for(tmp_path / "w.py", PLACEMENT[:1], "s3cret", tmp_path)
    launcher = SlurmLauncher({"python": "/bin/false"}, environ=job.env)
    with pytest.raises(LaunchError, match="n1: srun exited with status 1 .*printed nothing"):
        launcher.start(specs)


def test_a_step_that_never_starts_times_out(job: SchedulerJob, tmp_path: Path) -> None:
    sleepy = checks.write_script(tmp_path / "sleepy", "import time; time.sleep(600)\n")
    (tmp_path / "w.py").write_text(checks.WORKER)
    specs = checks.specs_for(tmp_path / "w.py", PLACEMENT[:1], "s3cret", tmp_path)
    launcher = SlurmLauncher({"python": str(sleepy), "start_timeout": 0.5}, environ=job.env)
    with pytest.raises(
        LaunchError, match=r"n1: srun did not start the worker supervisor within 0.5 s"
    ):
        launcher.start(specs)
    assert checks.kill_marked(job.mark) == []


def test_without_srun_it_warns_and_goes_through_ssh(
    job: SchedulerJob, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The ssh launcher cannot reach n1 and n2, which are only SLURM's names.
    warning = checks.warning_with_an_empty_path(SlurmLauncher, job.env, PLACEMENT, tmp_path, caplog)
    assert "found no srun" in warning and "ssh launcher" in warning


def test_outside_a_job_start_says_so(tmp_path: Path) -> None:
    specs = checks.specs_for(tmp_path / "w.py", PLACEMENT, "s3cret", tmp_path)
    with pytest.raises(LaunchError, match="inside a SLURM job, and this process is not in one"):
        SlurmLauncher({}, environ={}).start(specs)


def test_no_workers_start_nothing(job: SchedulerJob) -> None:
    group = SlurmLauncher({}, environ=job.env).start([])
    assert group.poll() == {}
    group.stop(1.0)


def test_a_killed_launcher_takes_its_workers_along(job: SchedulerJob, tmp_path: Path) -> None:
    checks.check_launcher_death(
        "from scoop_launcher_slurm.launcher import SlurmLauncher\nlauncher = SlurmLauncher({})",
        PLACEMENT,
        job.env,
        job.mark,
        tmp_path,
    )


def test_hosts_outside_the_job_go_to_ssh_with_the_runs_own_settings() -> None:
    # The run's configuration (its --config file, its command line) reaches
    # the ssh launcher a scheduler launcher hands outside hosts to: here an
    # ssh program of the user's choosing, which the error then names.
    from scoop_core import config as config_module
    from scoop_core.interfaces import WorkerSpec
    from scoop_core.plugins.manager import get_plugin_manager

    plugins = get_plugin_manager()
    program = "/nonexistent/scoop-test-ssh"
    run_config = config_module.load_config(
        plugin_settings=plugins.settings(), cli={"launcher.ssh.ssh_executable": program}
    )
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "1"}
    spec = WorkerSpec("worker-1", "otherhost.invalid", ("python3", "-c", "pass"), {})
    config_module.set_current(run_config)
    try:
        with pytest.raises(ConfigError) as caught:
            SlurmLauncher({}, environ=env).start([spec])
    finally:
        config_module.set_current(None)
    assert "ssh_executable" in str(caught.value) and program in str(caught.value)
