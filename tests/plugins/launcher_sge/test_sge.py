"""The sge launcher: $PE_HOSTFILE and $NSLOTS, and workers started through qrsh -inherit.

The remote start is a stand-in (see ../scheduler_jobs.py) that really runs the
command here, through a shell as Grid Engine does.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import scheduler_checks as checks
from scheduler_jobs import SchedulerJob
from scoop_launcher_sge import in_allocation
from scoop_launcher_sge.launcher import SgeLauncher, allocation_from_env, parse_pe_hostfile

from scoop_core.errors import LaunchError
from scoop_core.hosts import Host


def pe_hostfile(text: str) -> list[Host]:
    return parse_pe_hostfile(
        textwrap.dedent(text), "/opt/sge/default/spool/node1/active_jobs/17.1/pe_hostfile"
    )


def test_pe_hostfile_lines_give_hosts_and_slots() -> None:
    assert pe_hostfile(
        """
        node1.cluster.org 4 all.q@node1.cluster.org UNDEFINED
        node2.cluster.org 2 all.q@node2.cluster.org 0,1:0,2
        """
    ) == [Host(None, "node1.cluster.org", None, 4), Host(None, "node2.cluster.org", None, 2)]


def test_a_host_in_several_queues_gets_the_sum_of_its_slots() -> None:
    assert pe_hostfile(
        """
        node1 2 all.q@node1 UNDEFINED
        node2 1 all.q@node2 UNDEFINED
        node1 1 long.q@node1 UNDEFINED
        """
    ) == [Host(None, "node1", None, 3), Host(None, "node2", None, 1)]


def test_a_malformed_line_names_the_file_and_line() -> None:
    with pytest.raises(
        LaunchError, match=r"PE_HOSTFILE: pe:2: .*'node2 two all.q@node2 UNDEFINED'"
    ):
        parse_pe_hostfile("node1 1 all.q@node1 UNDEFINED\nnode2 two all.q@node2 UNDEFINED\n", "pe")


def test_allocation_reads_the_file_and_checks_nslots(
    job: SchedulerJob, caplog: pytest.LogCaptureFixture
) -> None:
    assert allocation_from_env(job.env) == [
        Host(None, "node1", None, 2),
        Host(None, "node2", None, 1),
    ]
    with caplog.at_level(logging.WARNING, logger="scoop.launcher"):
        assert allocation_from_env({**job.env, "NSLOTS": "5"}) == allocation_from_env(job.env)
    assert "NSLOTS is 5" in caplog.text
    assert allocation_from_env({"NSLOTS": "4", "JOB_ID": "3"}) is None


def test_an_unreadable_pe_hostfile_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"\$PE_HOSTFILE=.*gone: No such file"):
        allocation_from_env({"PE_HOSTFILE": str(tmp_path / "gone")})


def test_detect_says_yes_inside_a_parallel_job_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pe_hostfile = "/opt/sge/default/spool/n1/active_jobs/17.1/pe_hostfile"
    checks.check_detect("sge", "PE_HOSTFILE", pe_hostfile, monkeypatch)
    # A serial job has JOB_ID and NSLOTS but no PE: nothing to spread over.
    assert not in_allocation({"JOB_ID": "3", "NSLOTS": "1"})


def test_qrsh_gets_every_word_quoted_for_its_shell() -> None:
    launcher = SgeLauncher({"qrsh_args": ["-nostdin"]}, environ={})
    assert launcher.remote_argv(
        "/usr/bin/qrsh", "node1", ["/opt/my python/bin/python3", "-m", "x"]
    ) == [
        "/usr/bin/qrsh",
        "-inherit",
        "-nostdin",
        "node1",
        "'/opt/my python/bin/python3'",
        "-m",
        "x",
    ]


PLACEMENT = [("worker-1", "node1"), ("worker-2", "node1"), ("worker-3", "node2")]


def test_workers_through_qrsh_inherit(job: SchedulerJob, monkeypatch: pytest.MonkeyPatch) -> None:
    job.check_lifecycle(SgeLauncher({}, environ=job.env), PLACEMENT, monkeypatch)


def test_a_python_path_with_spaces_survives_qrshs_shell(
    job: SchedulerJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = tmp_path / "my python"
    spaced.mkdir()
    (spaced / "python3").symlink_to(Path(checks.sys.executable))
    launcher = SgeLauncher({"python": str(spaced / "python3")}, environ=job.env)
    job.check_lifecycle(launcher, PLACEMENT[:1], monkeypatch)


def test_a_host_qrsh_refuses_is_named_with_qrshs_error(job: SchedulerJob) -> None:
    job.env["STANDIN_DOWN_HOSTS"] = "node2"
    message = job.start_error(SgeLauncher({}, environ=job.env), PLACEMENT)
    assert "node2" in message and "didn't accept task" in message and "qrsh" in message
    assert "node1" not in message


def test_a_killed_launcher_takes_its_workers_along(job: SchedulerJob, tmp_path: Path) -> None:
    checks.check_launcher_death(
        "from scoop_launcher_sge.launcher import SgeLauncher\nlauncher = SgeLauncher({})",
        PLACEMENT,
        job.env,
        job.mark,
        tmp_path,
    )
