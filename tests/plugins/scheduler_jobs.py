"""A scheduler's job on this machine, for the scheduler launchers' tests.

Each scheduler launcher (slurm, sge, torque) runs inside a job: it reads
the job's variables and files and starts workers with the scheduler's
remote-start command. :class:`SchedulerJob` sets that scene in a test's
temporary directory from a :class:`Scheduler` record, whose fields are all
that differs between schedulers: the stand-ins put first on ``PATH``, the
job's files and its variables. The ``job`` fixture (``conftest.py``) picks
the record by the plugin directory of the test.

Every stand-in has the real command's command line and stdin/stdout
behaviour and really runs the command, here; it refuses a node the job
does not have, or one named in ``$STANDIN_DOWN_NODES``
(``$STANDIN_DOWN_HOSTS`` for Grid Engine), as when the node's daemon does
not answer. ``test_real_slurm.py`` and ``test_real_sge.py`` run the real
schedulers instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import scheduler_checks as checks

from scoop_core.errors import LaunchError
from scoop_core.interfaces import Launcher

# srun inside a job (``srun [--opt=value ...] command args``): ``--nodelist``
# must name a node of ``$SLURM_JOB_NODELIST``, the task gets
# ``SLURMD_NODENAME`` and the step's variables, and stdin, stdout and stderr
# pass through as srun's do for a one-task step.
SRUN = '''
    """Stand-in for srun inside a job (see tests/plugins/scheduler_jobs.py)."""
    import os, sys

    from scoop_launcher_slurm.nodelist import expand_nodelist

    args = sys.argv[1:]
    options = {}
    while args and args[0].startswith("-"):
        key, _, value = args.pop(0).partition("=")
        options[key] = value
    if not args:
        sys.exit("srun: fatal: No command given to execute.")
    job = os.environ["SLURM_JOB_ID"]
    nodes = expand_nodelist(os.environ["SLURM_JOB_NODELIST"])
    node = options.get("--nodelist", nodes[0])
    if node not in nodes:
        sys.exit(
            f"srun: error: Unable to create step for job {job}: "
            "Requested node configuration is not available"
        )
    if node in os.environ.get("STANDIN_DOWN_NODES", "").split():
        sys.exit(
            f"srun: error: Task launch for StepId={job}.0 failed on node {node}: "
            "Communication connection failure"
        )
    os.environ.update(
        SLURMD_NODENAME=node,
        SLURM_STEP_ID="0",
        SLURM_NODEID=str(nodes.index(node)),
        SLURM_PROCID="0",
        SLURM_TASKS_PER_NODE="1",
        SLURM_NTASKS="1",
    )
    os.execvp(args[0], args)
'''

# qrsh -inherit (``qrsh -inherit [opts] host command...``): the host must be
# one of the job's, the command words are joined and run through a shell
# again (as sge_shepherd does, so they must be quoted), and stdin, stdout
# and stderr pass through.
QRSH = '''
    """Stand-in for Grid Engine's qrsh -inherit (see tests/plugins/scheduler_jobs.py)."""
    import os, sys

    args = sys.argv[1:]
    if args[:1] != ["-inherit"]:
        sys.exit("qrsh stand-in: only qrsh -inherit is emulated")
    args = args[1:]
    while args and args[0].startswith("-"):
        args = args[1:]  # -nostdin, -verbose...: accepted, ignored
    if len(args) < 2:
        sys.exit("usage: qrsh -inherit [options] host command [args]")
    host, command = args[0], args[1:]
    if "JOB_ID" not in os.environ:
        sys.exit("error: JOB_ID is not set")
    with open(os.environ["PE_HOSTFILE"]) as fh:
        hosts = [line.split()[0] for line in fh if line.strip()]
    if host not in hosts:
        sys.exit(f"error: host {host} is not a member of job {os.environ['JOB_ID']}'s PE")
    if host in os.environ.get("STANDIN_DOWN_HOSTS", "").split():
        sys.exit(
            f"error: executing task of job {os.environ['JOB_ID']} failed: "
            f"execution daemon on host \\"{host}\\" didn't accept task"
        )
    os.environ["HOSTNAME"] = host
    os.execvp("sh", ["sh", "-c", " ".join(command)])
'''

# Torque is not packaged in Debian: pbsdsh (``pbsdsh [-c N] [-n N] [-h node]
# [-o] [-s] [-u] [-v] program args``) with the Task Manager's I/O: no stdin,
# the task's stdout to the job's output file unless ``-o``, its stderr to
# the job's error file.
PBSDSH = '''
    """Stand-in for Torque's pbsdsh (see tests/plugins/scheduler_jobs.py)."""
    import getopt, os, subprocess, sys

    try:
        opts, args = getopt.getopt(sys.argv[1:], "c:n:h:osuv")
    except getopt.GetoptError as exc:
        sys.exit(f"pbsdsh: {exc}")
    options = dict(opts)
    if not args:
        sys.exit("usage: pbsdsh [-c copies][-o][-s][-u][-v] program [args]...")
    if "PBS_NODEFILE" not in os.environ:
        sys.exit("pbsdsh: not running under PBS")
    with open(os.environ["PBS_NODEFILE"]) as fh:
        nodes = [line.split()[0] for line in fh if line.strip()]
    host = options.get("-h", nodes[0])
    if host not in nodes:
        sys.exit(f"pbsdsh: host {host} is not a node of job {os.environ.get('PBS_JOBID')}")
    if host in os.environ.get("STANDIN_DOWN_NODES", "").split():
        sys.exit(f'pbsdsh: tm_spawn: host "{host}" err TM_ENOTFOUND')
    job_out = open(os.environ["STANDIN_JOB_OUTPUT"], "ab")
    job_err = open(os.environ["STANDIN_JOB_ERROR"], "ab")
    task = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=None if "-o" in options else job_out,
        stderr=job_err,
        env={**os.environ, "PBS_TASKNUM": "1", "PBS_NODENUM": str(nodes.index(host))},
    )
    sys.exit(task.wait())
'''

PBS_TMRSH = '''
    """Stand-in for PBS Pro's pbs_tmrsh: host, then the command; TM I/O as pbsdsh's."""
    import os, subprocess, sys

    args = [a for a in sys.argv[1:] if a != "-n"]
    host, command = args[0], args[1:]
    with open(os.environ["PBS_NODEFILE"]) as fh:
        nodes = [line.split()[0] for line in fh if line.strip()]
    if host not in nodes:
        sys.exit(f'pbs_tmrsh: host "{host}" is not a node in job <{os.environ["PBS_JOBID"]}>')
    job_out = open(os.environ["STANDIN_JOB_OUTPUT"], "ab")
    job_err = open(os.environ["STANDIN_JOB_ERROR"], "ab")
    sys.exit(subprocess.call(command, stdin=subprocess.DEVNULL, stdout=job_out, stderr=job_err))
'''


# Torque's qsub, qstat and qdel seen from a login node (one script, by the name
# it is called by), with a job directory in $STANDIN_TORQUE_DIR. qsub prints
# ``N.standin`` and really runs the script in the background, in a session of
# its own, its output and error to the files its ``#PBS -o``/``-e`` name;
# qstat lists each job as R while a process of its session lives, then C;
# qdel sends its session SIGTERM, then SIGKILL two seconds later, as Torque's
# kill_delay does. With $STANDIN_QSUB_SLOW, every submission but the first
# takes that many seconds, and writes the job id it will have to
# $STANDIN_TORQUE_DIR.slow first. With $STANDIN_JOB_QUEUED, each job stays
# queued (Q) that many seconds before its script starts.
TORQUE_QUEUE = '''
    """Stand-in for Torque's qsub, qstat and qdel (see tests/plugins/scheduler_jobs.py)."""
    import os, signal, subprocess, sys, time
    from pathlib import Path

    jobs = Path(os.environ["STANDIN_TORQUE_DIR"])
    jobs.mkdir(exist_ok=True)
    command, args = os.path.basename(sys.argv[0]), sys.argv[1:]

    def alive(job):
        # A live (not zombie: nobody may reap them here) process in the job's group.
        group = (jobs / job).read_text()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == group and fields[0] != "Z":
                return True
        return False

    queued = Path(f"{jobs}.queued")  # a job's file there: it waits in the queue

    if args[:1] == ["--run"]:  # the job itself, in a session of its own
        job, script = args[1], args[2]
        if (queued / job).exists():
            time.sleep(float(os.environ["STANDIN_JOB_QUEUED"]))
            (queued / job).unlink()
        lines = Path(script).read_text().splitlines()
        paths = dict(line.split()[1:3] for line in lines if line.startswith("#PBS -o ")
                     or line.startswith("#PBS -e "))
        with open(paths["-o"], "ab") as out, open(paths["-e"], "ab") as err:
            env = {**os.environ, "PBS_JOBID": job, "PBS_ENVIRONMENT": "PBS_BATCH"}
            sys.exit(subprocess.call(["/bin/sh", script], stdout=out, stderr=err, env=env))
    elif command == "qsub":
        if len(args) != 1 or not os.path.isfile(args[0]):
            sys.exit("qsub: script file cannot be loaded - No such file or directory")
        for line in Path(args[0]).read_text().splitlines():
            if line.startswith("#PBS -q ") and line.split()[2] != "batch":
                sys.exit("qsub: submit error (Unknown queue MSG=requested queue not found)")
        job = f"{len(list(jobs.iterdir())) + 1}.standin"
        if job != "1.standin" and os.environ.get("STANDIN_QSUB_SLOW"):
            # A busy server: every submission but the first takes its time.
            Path(f"{jobs}.slow").write_text(job)
            time.sleep(float(os.environ["STANDIN_QSUB_SLOW"]))
        if os.environ.get("STANDIN_JOB_QUEUED"):
            queued.mkdir(exist_ok=True)
            (queued / job).touch()
        runner = subprocess.Popen(
            [sys.executable, sys.argv[0], "--run", job, os.path.abspath(args[0])],
            start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        (jobs / job).write_text(str(runner.pid))
        print(job)
    elif command == "qstat":
        print("Job ID                    Name             User            Time Use S Queue")
        print("------------------------- ---------------- --------------- -------- - -----")
        for path in sorted(jobs.iterdir()):
            state = "Q" if (queued / path.name).exists() else "R" if alive(path.name) else "C"
            print(f"{path.name:<25} scoop            {os.environ.get('USER', 'me'):<15} 00:00:00 {state} batch")
    elif command == "qdel":
        for job in args:
            if not (jobs / job).exists():
                print(f"qdel: Unknown Job Id {job}", file=sys.stderr)
                continue
            with __import__("contextlib").suppress(OSError):
                os.killpg(int((jobs / job).read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 2
        while any(alive(job) for job in args) and time.monotonic() < deadline:
            time.sleep(0.05)
        for job in args:
            with __import__("contextlib").suppress(OSError, ValueError):
                os.killpg(int((jobs / job).read_text()), signal.SIGKILL)
'''


@dataclass(frozen=True)
class Scheduler:
    """What a job of one scheduler looks like from inside.

    ``{dir}`` in a file's text or a variable's value is the job's directory."""

    name: str
    standins: Mapping[str, str]  # command name: the stand-in's Python source
    files: Mapping[str, str]  # file name in the job's directory: its text
    variables: Mapping[str, str]
    about: str = field(default="")


SLURM = Scheduler(
    name="slurm",
    about="a job on nodes n1 (2 tasks) and n2 (1 task), srun on PATH",
    standins={"srun": SRUN},
    files={},
    variables={
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_TASKS_PER_NODE": "2,1",
        "SLURM_NTASKS": "3",
        "SLURM_JOB_CPUS_PER_NODE": "2(x2)",
        "SLURMD_NODENAME": "n1",
    },
)

SGE = Scheduler(
    name="sge",
    about="a parallel job on hosts node1 (2 slots) and node2 (1 slot), qrsh on PATH",
    standins={"qrsh": QRSH},
    files={"pe_hostfile": "node1 2 all.q@node1 UNDEFINED\nnode2 1 all.q@node2 UNDEFINED\n"},
    variables={"JOB_ID": "17", "PE_HOSTFILE": "{dir}/pe_hostfile", "NSLOTS": "3", "PE": "scoop"},
)

TORQUE = Scheduler(
    name="torque",
    about="a job on nodes node1 (2 slots) and node2 (1 slot), pbsdsh and pbs_tmrsh on PATH",
    standins={"pbsdsh": PBSDSH, "pbs_tmrsh": PBS_TMRSH},
    files={"nodefile": "node1\nnode1\nnode2\n"},
    variables={
        "PBS_JOBID": "42.server",
        "PBS_NODEFILE": "{dir}/nodefile",
        "PBS_NP": "3",
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "HOME": "{dir}/home",
        "STANDIN_JOB_OUTPUT": "{dir}/job.OU",
        "STANDIN_JOB_ERROR": "{dir}/job.ER",
    },
)

SCHEDULERS = {"launcher_slurm": SLURM, "launcher_sge": SGE, "launcher_torque": TORQUE}
"""The scheduler of each plugin's test directory."""


class SchedulerJob:
    """A job of ``scheduler`` in ``directory``: its stand-ins in ``bin`` (first
    on ``PATH`` in :attr:`env`), its files, and :attr:`mark`, the variable
    value every process started in it inherits."""

    def __init__(self, scheduler: Scheduler, directory: Path) -> None:
        self.scheduler = scheduler
        self.directory = directory
        self.bin = directory / "bin"
        self.bin.mkdir()
        for command, source in scheduler.standins.items():
            checks.write_script(self.bin / command, source)
        for name, text in scheduler.files.items():
            (directory / name).write_text(text.format(dir=directory))
        self.env = checks.job_environment(
            self.bin, {k: v.format(dir=directory) for k, v in scheduler.variables.items()}
        )
        self.mark = self.env[checks.MARK_VAR]
        # Where the torque launcher keeps its tickets (in the job's $HOME).
        self.tickets = directory / "home" / ".scoop" / "tickets"

    def check_lifecycle(
        self,
        launcher: Launcher,
        placement: Sequence[tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """:func:`scheduler_checks.check_lifecycle` for workers started in this job."""
        checks.check_lifecycle(launcher, placement, self.mark, self.directory, monkeypatch, labels)

    def start_error(self, launcher: Launcher, placement: Sequence[tuple[str, str]]) -> str:
        """The message of the LaunchError that starting workers so placed raises;
        the workers that had started are stopped with it."""
        script = self.directory / "w.py"
        script.write_text(checks.WORKER)
        specs = checks.specs_for(script, placement, "s3cret", self.directory)
        with pytest.raises(LaunchError) as caught:
            launcher.start(specs)
        assert checks.kill_marked(self.mark) == []
        return str(caught.value)
