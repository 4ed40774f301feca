"""``--dry-run`` as users run it: ``python -m scoop`` and ``scoop run`` in real
subprocesses, for every way of placing workers (this machine, ``--hosts``,
``--hostfile``, a SLURM / Grid Engine / Torque allocation, ``--jobs``).

Each test checks what is printed (hosts, workers, launcher, transport,
broker) and that nothing was started: the program did not run, no run
file appeared under the (temporary) home, no process of the run is left,
and fake ``ssh``/``srun``/``sbatch`` commands that leave a trace were never
called. A scheduler's allocation is given the way the scheduler gives it,
through its environment variables and host files: a dry run starts
nothing, so nothing else of the scheduler is needed."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest
from conftest import environ_without_scoop, processes_of, run_command
from test_cli import one_line_error, scoop_command

# Runs for real, it would leave this file behind.
PROGRAM = """
import pathlib, sys
pathlib.Path(sys.argv[1]).write_text("ran")
"""

SCHEDULER_VARIABLES = ("SLURM_", "PE_HOSTFILE", "NSLOTS", "PBS_", "JOB_ID")

_ROW = re.compile(r"(\S+)\s+(\d+|per core)\s+(\S+)\Z")


def hosts_table(stdout: str) -> list[tuple[str, str, str]]:
    """The (host, workers, launcher) rows under the ``host workers launcher`` header."""
    lines = stdout.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split() == ["host", "workers", "launcher"]
    )
    rows = []
    for line in lines[start + 1 :]:
        match = _ROW.match(line)
        if not match:
            break
        rows.append((match[1], match[2], match[3]))
    return rows


class DryRun:
    """A directory with the program, a home and a bin directory of fake commands."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.called = tmp_path / "called"
        self.ran = tmp_path / "ran"
        self.program = tmp_path / "prog.py"
        self.program.write_text(PROGRAM)
        for tool in ("ssh", "srun", "qrsh", "pbsdsh", "sbatch", "qsub"):
            self.fake(tool)

    def fake(self, tool: str) -> Path:
        """A command on PATH that says it was called, and fails."""
        path = self.bin / tool
        path.write_text(f"#!/bin/sh\necho {tool} >> {self.called}\nexit 1\n")
        path.chmod(0o755)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            k: v
            for k, v in environ_without_scoop().items()
            if not k.startswith(SCHEDULER_VARIABLES)
        }
        return {
            **base,
            "HOME": str(self.home),
            "PATH": f"{self.bin}{os.pathsep}{base['PATH']}",
            **extra,
        }

    def run(self, *flags: str, command: list[str] | None = None, **extra: str):
        argv = [*(command or [sys.executable, "-m", "scoop"]), *flags, "--dry-run"]
        proc = run_command(
            [*argv, str(self.program), str(self.ran)], cwd=self.dir, env=self.env(**extra)
        )
        self.check_nothing_started()
        return proc

    def check_nothing_started(self) -> None:
        assert not self.ran.exists(), "the program ran"
        assert not self.called.exists(), f"called: {self.called.read_text()}"
        assert not (self.home / ".scoop").exists(), "a run file was written"
        assert processes_of(str(self.program)) == []


@pytest.fixture
def dry(tmp_path: Path) -> DryRun:
    return DryRun(tmp_path)


def ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_workers_on_this_machine(dry):
    out = ok(dry.run("-n", "4"))
    assert (
        out.splitlines()[0]
        == "run: transport zmq, serializer cloudpickle, 4 workers on this machine"
    )
    assert hosts_table(out) == [(socket.gethostname(), "4", "local")]
    assert "broker: on this machine" in out
    assert "the root (prog.py) runs on this machine" in out


def test_scoop_run_takes_dry_run_too(dry):
    out = ok(dry.run("--serializer", "pickle", "-n", "2", command=[*scoop_command(), "run"]))
    assert "transport zmq, serializer pickle, 2 workers on this machine" in out


def test_hosts_are_shown_without_dialling_them(dry):
    ssh = dry.fake("my-ssh")
    bad = "node-that-does-not-exist.invalid"
    out = ok(dry.run("--ssh-executable", str(ssh), "--hosts", "a", "a", "alice@b:2222", bad))
    assert "4 workers on 3 hosts" in out.splitlines()[0]
    assert hosts_table(out) == [("a", "2", "ssh"), ("alice@b:2222", "1", "ssh"), (bad, "1", "ssh")]
    assert "the root (prog.py) runs on a" in out
    assert "broker: workers dial" in out


def test_a_hostfile_host_without_a_count_is_counted_at_start(dry):
    hostfile = dry.dir / "hosts"
    hostfile.write_text("nodeA 3\nnodeB\nlocalhost 1\n")
    ssh = dry.fake("my-ssh")  # cores would be counted through it
    out = ok(dry.run("--ssh-executable", str(ssh), "--hostfile", str(hostfile)))
    assert hosts_table(out) == [
        ("nodeA", "3", "ssh"),
        ("nodeB", "per core", "ssh"),
        ("localhost", "1", "local"),
    ]
    assert "one worker per core of the host, counted when the run starts" in out
    out = ok(dry.run("--ssh-executable", str(ssh), "--hostfile", str(hostfile), "-n", "5"))
    assert "5 workers on 3 hosts" in out.splitlines()[0]
    assert "the 5 workers are spread over these hosts once their cores are counted" in out


def test_n_spreads_workers_over_counted_hosts_as_a_run_does(dry):
    hostfile = dry.dir / "hosts"
    hostfile.write_text("nodeA 2\nnodeB 2\nnodeC 2\n")
    out = ok(dry.run("--hostfile", str(hostfile), "-n", "3"))
    assert "3 workers on 2 hosts" in out.splitlines()[0]
    assert hosts_table(out) == [("nodeA", "2", "ssh"), ("nodeB", "1", "ssh")]


def _pe_hostfile(dry: DryRun) -> dict[str, str]:
    path = dry.dir / "pe_hostfile"
    path.write_text("n1 4 all.q@n1 UNDEFINED\nn2 2 all.q@n2 UNDEFINED\n")
    return {"PE_HOSTFILE": str(path), "NSLOTS": "6", "JOB_ID": "7"}


def _pbs_nodefile(dry: DryRun) -> dict[str, str]:
    path = dry.dir / "nodefile"
    path.write_text("n1\nn1\nn1\nn1\nn2\nn2\n")
    return {"PBS_NODEFILE": str(path), "PBS_JOBID": "7.server", "PBS_NP": "6"}


@pytest.mark.parametrize(
    ("scheduler", "allocation", "tool"),
    [
        (
            "slurm",
            lambda dry: {
                "SLURM_JOB_ID": "7",
                "SLURM_JOB_NODELIST": "n[1-2]",
                "SLURM_TASKS_PER_NODE": "4,2",
            },
            "srun",
        ),
        ("sge", _pe_hostfile, "qrsh"),
        ("torque", _pbs_nodefile, "pbsdsh"),
    ],
)
def test_inside_a_scheduler_allocation(dry, scheduler, allocation, tool):
    out = ok(dry.run(**allocation(dry)))
    assert "6 workers on 2 hosts" in out.splitlines()[0]
    assert hosts_table(out) == [("n1", "4", scheduler), ("n2", "2", scheduler)]
    assert "the root (prog.py) runs on n1" in out
    assert "note:" not in out  # the fake command is on PATH
    (dry.bin / tool).unlink()
    # Only the fakes on PATH: a real one (the cluster suite installs them) is left out too.
    out = ok(dry.run(**allocation(dry), PATH=str(dry.bin)))
    note = next(line for line in out.splitlines() if line.startswith("note: "))
    assert note.startswith(f"note: no {tool}")
    assert f"the {scheduler} nodes' workers through ssh" in note


def test_jobs_print_the_summary_the_script_and_the_submit_commands(dry):
    out = ok(dry.run("--jobs", "3", "--scheduler", "slurm", "--cores-per-job", "4"))
    lines = out.splitlines()
    assert lines[0] == (
        "run: transport zmq, serializer cloudpickle, 12 workers: 3 jobs x 4 via scheduler slurm"
    )
    assert "#SBATCH --cpus-per-task=4" in lines
    assert sum(line.startswith("sbatch --parsable ") for line in lines) == 3
    assert sorted(p.name for p in dry.dir.iterdir()) == ["bin", "home", "prog.py"]


def test_the_broker_url_is_shown_without_its_password(dry):
    secret = "pw-never-shown-4815"
    out = ok(
        dry.run(
            "--transport",
            "redis",
            "-n",
            "2",
            SCOOP_TRANSPORT_REDIS_URL=f"redis://:{secret}@redis-that-does-not-exist.invalid:6379/0",
        )
    )
    assert "broker: workers dial redis://:***@redis-that-does-not-exist.invalid:6379/0" in out
    assert "transport redis" in out


def test_a_password_never_appears_in_the_output(dry):
    secret = "pw-never-shown-1623"
    proc = dry.run(
        "--transport",
        "redis",
        "-n",
        "1",
        SCOOP_TRANSPORT_REDIS_URL=f"redis://u:{secret}@h/0?password={secret}",
    )
    assert ok(proc)
    assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hostfile", "no-such-file"], "cannot read the hostfile 'no-such-file'"),
        (["-n", "0"], "expected a number of at least 1, got 0"),
        (["--hosts", "bad host!"], "--hosts bad host!:"),
        (["--serializer", "nope"], "nope"),
        (["--queue", "q"], "--queue only with --jobs N"),
    ],
)
def test_bad_input_is_the_error_a_run_gives(dry, flags, message):
    assert message in one_line_error(dry.run(*flags))


def test_the_program_must_exist(dry):
    dry.program.unlink()
    assert "program file" in one_line_error(dry.run("-n", "1"))


def test_a_scheduler_launcher_outside_its_job_is_the_error_a_run_gives(dry):
    proc = dry.run("-n", "2", SCOOP_LAUNCHER="slurm")
    assert proc.returncode == 1
    assert "the slurm launcher starts workers inside a SLURM job" in proc.stderr
    assert proc.stdout == ""
