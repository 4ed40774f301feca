"""The torque launcher: $PBS_NODEFILE in real formats, and workers started through pbsdsh / pbs_tmrsh.

The remote start is a stand-in (see ../scheduler_jobs.py) that really starts the
relay here, with the Task Manager's I/O: no stdin, output to the job's file.
"""

from __future__ import annotations

import logging
import os
import pwd
import random
import stat
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import scheduler_checks as checks
from hypothesis import given
from hypothesis import strategies as st
from scheduler_jobs import SchedulerJob
from scoop_launcher_torque import in_allocation
from scoop_launcher_torque.launcher import (
    RelayStart,
    TorqueLauncher,
    allocation_from_env,
    parse_nodefile,
)

from scoop_core.errors import ConfigError, LaunchError
from scoop_core.hosts import Host


def nodefile(text: str) -> list[Host]:
    return parse_nodefile(textwrap.dedent(text), "/var/spool/torque/aux/42.server")


# -- $PBS_NODEFILE ---------------------------------------------------------------


def test_torque_lists_a_node_once_per_slot_in_first_seen_order() -> None:
    # What Torque writes for -l nodes=node02:ppn=2+node01:ppn=3 (nodes in allocation order).
    assert nodefile("node02\nnode02\nnode01\nnode01\nnode01\n") == [
        Host(None, "node02", None, 2),
        Host(None, "node01", None, 3),
    ]


def test_repeats_need_not_be_adjacent_and_fqdns_stay_whole() -> None:
    # PBS Pro with -l place=scatter and vnodes: a node may come back later in the file.
    assert nodefile(
        """
        cn001.cluster.example.org
        cn002.cluster.example.org
        cn001.cluster.example.org
        """
    ) == [
        Host(None, "cn001.cluster.example.org", None, 2),
        Host(None, "cn002.cluster.example.org", None, 1),
    ]


def test_scoops_hostfile_forms_count_as_that_many_lines() -> None:
    assert nodefile(
        """
        # written by hand, SCOOP-style
        node1 4
        node2 workers=2
        node1
        node3 2 all.q@node3 UNDEFINED
        """
    ) == [Host(None, "node1", None, 5), Host(None, "node2", None, 2), Host(None, "node3", None, 2)]


def test_a_malformed_line_names_the_file_and_line() -> None:
    with pytest.raises(LaunchError, match=r"PBS_NODEFILE: /tmp/nf:2: .*'node2 two'"):
        parse_nodefile("node1\nnode2 two\n", "/tmp/nf")


def test_an_empty_nodefile_is_an_error() -> None:
    with pytest.raises(LaunchError, match="lists no host"):
        parse_nodefile("\n# nothing\n", "/tmp/nf")


node_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{1,5})?", fullmatch=True)


@given(st.lists(st.tuples(node_names, st.integers(1, 6)), min_size=1, max_size=8), st.randoms())
def test_counting_lines_gives_back_the_slots(
    slots: list[tuple[str, int]], rnd: random.Random
) -> None:
    expected: dict[str, int] = {}
    for name, count in slots:
        expected[name] = expected.get(name, 0) + count
    lines = [name for name, count in slots for _ in range(count)]
    first = lines[0]
    rest = lines[1:]
    rnd.shuffle(rest)
    lines = [first, *rest]
    order = list(dict.fromkeys(lines))
    assert parse_nodefile("\n".join(lines) + "\n", "nf") == [
        Host(None, name, None, expected[name]) for name in order
    ]


# -- the allocation and detect() ----------------------------------------------------


def test_allocation_comes_from_the_nodefile(job: SchedulerJob) -> None:
    assert allocation_from_env(job.env) == [
        Host(None, "node1", None, 2),
        Host(None, "node2", None, 1),
    ]
    assert TorqueLauncher({}, environ=job.env).allocation() == allocation_from_env(job.env)


def test_pbs_np_disagreeing_with_the_file_is_a_warning(
    job: SchedulerJob, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scoop.launcher"):
        hosts = allocation_from_env({**job.env, "PBS_NP": "8"})
    assert sum(h.count or 0 for h in hosts or []) == 3
    assert "PBS_NP is 8" in caplog.text


def test_without_a_nodefile_pbs_np_slots_run_here() -> None:
    import socket

    env = {"PBS_JOBID": "7.server", "PBS_NP": "4"}
    assert allocation_from_env(env) == [Host(None, socket.gethostname(), None, 4)]
    assert allocation_from_env({}) is None
    assert allocation_from_env({"PBS_NP": "4"}) is None


def test_an_unreadable_nodefile_names_the_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(LaunchError, match=rf"\$PBS_NODEFILE={missing}: No such file"):
        allocation_from_env({"PBS_NODEFILE": str(missing)})


def test_detect_says_yes_inside_a_job_only(monkeypatch: pytest.MonkeyPatch) -> None:
    checks.check_detect("torque", "PBS_NODEFILE", "/var/spool/torque/aux/42.server", monkeypatch)
    assert in_allocation({"PBS_NODEFILE": "/x"}) and not in_allocation({"PBS_JOBID": "1"})


def test_count_cores_answers_for_the_jobs_nodes(job: SchedulerJob) -> None:
    launcher = TorqueLauncher({}, environ=job.env)
    hosts = [Host(None, "node1"), Host("bob", "node2", 22), Host(None, "elsewhere")]
    assert launcher.count_cores(hosts) == {"node1": 2, "bob@node2:22": 1}


def test_an_unknown_remote_start_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="auto, pbsdsh, pbs_tmrsh"):
        TorqueLauncher({"remote_start": "rsh"}, environ={})


# -- starting workers ---------------------------------------------------------------


PLACEMENT = [("worker-1", "node1"), ("worker-2", "node1"), ("worker-3", "node2")]


def relay_start(
    job: SchedulerJob,
    tmp_path: Path,
    name: str,
    wrap: Callable[[list[str]], list[str]],
    python: str = "python3",
    environ: dict[str, str] | None = None,
) -> RelayStart:
    """Worker-1's start on node1 through ``wrap`` (the way into the node,
    called ``name``), with the job's tickets and environment."""
    return RelayStart(
        "node1",
        name,
        wrap,
        checks.specs_for(tmp_path / "w.py", PLACEMENT[:1], "s3cret", tmp_path),
        python=python,
        ticket_dir=str(job.tickets),
        connect_host="127.0.0.1",
        environ=job.env if environ is None else environ,
    )


def why_it_did_not_start(start: RelayStart, caplog: pytest.LogCaptureFixture) -> str | None:
    """What ``start`` says went wrong (None: it started), the launcher's warnings captured."""
    try:
        with caplog.at_level(logging.WARNING, logger="scoop.launcher"):
            return start.wait_started(time.monotonic() + 30, 30)
    finally:
        start.abort()


TICKET_READER = """
import json, socket, sys, time
ticket = json.load(open(sys.argv[-1]))
with socket.create_connection((ticket["host"], ticket["port"])) as conn:
"""


# Ways of talking on the relay's port, for start_a_ticket_reader.
INTRUDER = """
    conn.sendall(b"0123456789abcdef0123456789abcdef stdio\\n")
    dropped = conn.recv(1) == b""
print("intruder dropped" if dropped else "intruder got in", flush=True)
"""
SILENT = """
    begun = time.monotonic()
    conn.settimeout(60)
    dropped = conn.recv(1) == b""
print(f"silent dropped={dropped} after {time.monotonic() - begun:.1f} s", flush=True)
"""


def start_a_ticket_reader(
    job: SchedulerJob,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    talk: str,
) -> tuple[RelayStart, str | None]:
    """Worker-1's start through ``name`` in place of pbsdsh: a process that
    read the ticket's path on its command line and connected to the port, on
    which it runs ``talk`` (Python, indented under ``with ... as conn:``), then
    exits with status 3. The start, and :func:`why_it_did_not_start`."""
    script = checks.write_script(tmp_path / name, TICKET_READER + talk + "sys.exit(3)\n")
    start = relay_start(job, tmp_path, name, lambda command: [str(script), *command])
    return start, why_it_did_not_start(start, caplog)


def test_workers_through_pbsdsh(job: SchedulerJob, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = TorqueLauncher({}, environ=job.env)
    job.check_lifecycle(launcher, PLACEMENT, monkeypatch)
    # The tickets were used once and removed; their directory is the user's alone.
    assert list(job.tickets.iterdir()) == []
    assert stat.S_IMODE(job.tickets.stat().st_mode) == 0o700
    assert stat.S_IMODE(job.tickets.parent.stat().st_mode) == 0o700  # ~/.scoop too


def test_workers_through_pbs_tmrsh(job: SchedulerJob, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = TorqueLauncher({"remote_start": "pbs_tmrsh"}, environ=job.env)
    job.check_lifecycle(launcher, PLACEMENT, monkeypatch)


def test_a_node_that_cannot_start_is_named_with_pbsdshs_error(job: SchedulerJob) -> None:
    job.env["STANDIN_DOWN_NODES"] = "node2"
    message = job.start_error(TorqueLauncher({}, environ=job.env), PLACEMENT)
    assert "node2" in message and "TM_ENOTFOUND" in message and "pbsdsh" in message
    assert "node1" not in message
    assert list(job.tickets.iterdir()) == []


def test_a_connection_without_the_ticket_is_dropped(
    job: SchedulerJob, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It tries the port without the token.
    start, why = start_a_ticket_reader(job, tmp_path, caplog, "intruder", INTRUDER)
    assert why is not None
    assert "intruder exited with status 3" in why and "intruder dropped" in why
    assert "did not present the ticket" in caplog.text
    assert start.remote is None
    assert list(job.tickets.iterdir()) == []


def test_without_pbsdsh_or_pbs_tmrsh_it_warns_and_goes_through_ssh(
    job: SchedulerJob, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The ssh launcher cannot reach node1 and node2, which exist only in the nodefile.
    warning = checks.warning_with_an_empty_path(
        TorqueLauncher, job.env, PLACEMENT, tmp_path, caplog
    )
    assert "pbsdsh or pbs_tmrsh" in warning and "ssh" in warning
    assert checks.kill_marked(job.mark) == []


def test_outside_a_job_start_says_what_is_missing(tmp_path: Path) -> None:
    launcher = TorqueLauncher({}, environ={"PATH": os.defpath})
    specs = checks.specs_for(tmp_path / "w.py", PLACEMENT, "s3cret", tmp_path)
    with pytest.raises(LaunchError, match="not in one .PBS_NODEFILE is not set"):
        launcher.start(specs)


def test_a_killed_launcher_takes_its_workers_along(job: SchedulerJob, tmp_path: Path) -> None:
    checks.check_launcher_death(
        "from scoop_launcher_torque.launcher import TorqueLauncher\nlauncher = TorqueLauncher({})",
        PLACEMENT,
        job.env,
        job.mark,
        tmp_path,
    )


def test_a_task_started_without_stdin_stdout_or_stderr_still_connects(
    job: SchedulerJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Task Manager's tasks may start with none of fds 0-2 open.
    (tmp_path / "w.py").write_text(checks.WORKER)
    out = checks.Output()
    monkeypatch.setattr(sys, "stdout", out)
    start = relay_start(
        job,
        tmp_path,
        "sh",
        lambda command: ["sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh", *command],
        python=sys.executable,
    )
    try:
        assert start.wait_started(time.monotonic() + 30, 30) is None
        checks.wait_for(lambda: "[node1] worker-1 pid=" in out.text, "worker-1's output")
        assert start.remote is not None and start.remote.poll() == {"worker-1": None}
    finally:
        start.abort()
    assert checks.kill_marked(job.mark) == []


# -- tickets and the relay's listener --------------------------------------------------

TAMPER = """
import os, shutil, sys
ticket = sys.argv[-1]
how = os.environ["TAMPER"]
if how == "0644":  # readable by every user of the node
    os.chmod(ticket, 0o644)
elif how == "nobody":  # another user's file where the ticket should be
    os.chown(ticket, NOBODY, NOBODY)
elif how == "symlink":  # a link to a file with the same content
    shutil.copy(ticket, ticket + ".real")
    os.chmod(ticket + ".real", 0o600)
    os.replace(ticket, ticket + ".old")
    os.symlink(ticket + ".real", ticket)
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the ticket to nobody needs root")
@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("0644", "is open to other users (mode 0644)"),
        ("nobody", f"belongs to uid {pwd.getpwnam('nobody').pw_uid}, not to you (uid 0)"),
        ("symlink", "is a symbolic link"),
    ],
)
def test_a_ticket_others_can_read_or_that_is_not_the_users_is_refused(
    job: SchedulerJob, tmp_path: Path, how: str, why: str
) -> None:
    # Between the launcher and the relay, the ticket is changed: the relay
    # must not connect wherever such a file says, nor hand it the plan.
    tamper = checks.write_script(
        tmp_path / "tamper", TAMPER.replace("NOBODY", str(pwd.getpwnam("nobody").pw_uid))
    )
    start = relay_start(
        job,
        tmp_path,
        "tamper",
        lambda command: [str(tamper), *command],
        python=sys.executable,
        environ={**job.env, "TAMPER": how},
    )
    try:
        message = start.wait_started(time.monotonic() + 30, 30)
    finally:
        start.abort()
    assert message is not None
    assert "tamper exited with status 2" in message, message
    assert f"refused the launcher's ticket: {start.ticket} {why}" in message, message
    assert start.remote is None
    assert [p.name for p in job.tickets.iterdir() if p.suffix == ".ticket"] == []
    assert checks.kill_marked(job.mark) == []


def test_a_connection_that_sends_nothing_is_dropped_at_the_hello_deadline(
    job: SchedulerJob, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It connects to the port and says nothing.
    _, why = start_a_ticket_reader(job, tmp_path, caplog, "silent", SILENT)
    assert why is not None and "silent dropped=True after" in why, why
    after = float(why.split("silent dropped=True after ")[1].split()[0])
    assert 4.0 <= after <= 7.0, why  # the 5 s deadline, not the start's 30 s
    assert "dropped a connection that sent no ticket within 5 s" in caplog.text


IDLER = """
import json, os, socket, subprocess, sys
ticket = json.load(open(sys.argv[-1]))
# A local user's process: the port is in /proc/net/tcp for all to see.
idler = subprocess.Popen(
    [sys.executable, "-c", '''
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
begun = time.monotonic()
conn.settimeout(60)
dropped = conn.recv(1) == b""
with open(sys.argv[3], "w") as fh:
    fh.write(f"{dropped} {time.monotonic() - begun:.1f}")
''', ticket["host"], str(ticket["port"]), os.environ["IDLER_REPORT"]],
    stdout=subprocess.PIPE,
)
assert idler.stdout.readline() == b"connected\\n"
os.execv(os.environ["REAL_PBSDSH"], [os.environ["REAL_PBSDSH"], *sys.argv[1:]])
"""


def test_an_idle_connection_to_the_relays_port_does_not_delay_the_start(
    job: SchedulerJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w.py").write_text(checks.WORKER)
    specs = checks.specs_for(tmp_path / "w.py", PLACEMENT[:1], "s3cret", tmp_path)
    monkeypatch.setattr(sys, "stdout", checks.Output())

    def start_time(environ: dict[str, str]) -> float:
        began = time.monotonic()
        group = TorqueLauncher({}, environ=environ).start(specs)
        took = time.monotonic() - began
        group.stop(2.0)
        return took

    plain = start_time(job.env)
    # pbsdsh, with another process connecting to the launcher's port first
    # and sending nothing.
    idle_bin = tmp_path / "idle-bin"
    idle_bin.mkdir()
    checks.write_script(idle_bin / "pbsdsh", IDLER)
    report = tmp_path / "idler"
    idled = start_time(
        {
            **job.env,
            "PATH": f"{idle_bin}{os.pathsep}{job.env['PATH']}",
            "REAL_PBSDSH": str(job.bin / "pbsdsh"),
            "IDLER_REPORT": str(report),
        }
    )
    assert idled < plain + 3.0, f"{idled:.1f} s with an idle connection, {plain:.1f} s without"
    # The idle connection was dropped, at the latest after the hello deadline.
    text = checks.wait_for(lambda: report.exists() and report.read_text(), "the idler's report")
    dropped, after = text.split()
    assert dropped == "True" and float(after) <= 6.0, text
    assert checks.kill_marked(job.mark) == []
