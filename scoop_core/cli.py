"""The command line: ``python -m scoop [flags] prog.py args`` and ``scoop ...``.

``python -m scoop`` takes the seed's flags and runs a program;
``scoop [--transport T] [--config F] [-v] run [flags] prog.py args`` does the
same, and ``scoop plugins`` lists what is installed. Errors in what the user
typed are one line on stderr and exit status 2; a run exits with the root
program's own status (130 after Ctrl-C, 143 after SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from scoop_core import __version__, fork_server
from scoop_core import log as scoop_log
from scoop_core.errors import ConfigError, LaunchError, PluginError, TransportClosed, UsageError
from scoop_core.fork_server import LocalProcess

# The rest of the core is imported where a command needs it: a run's
# launcher starts its fork server first, and the server's import of the
# core then overlaps this process's.
if TYPE_CHECKING:
    from scoop_core.config import Config
    from scoop_core.hosts import Host
    from scoop_core.interfaces import Launcher, WorkerGroup
    from scoop_core.plugins.manager import PluginManager
    from scoop_core.run import Run
    from scoop_core.run_activity import RunSnapshot
    from scoop_core.worker_jobs import WorkerJobs

log = logging.getLogger("scoop.launcher")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, status 2, and
    knows where a ``--hosts`` list ends (see :meth:`group_host_lists`)."""

    commands: dict[str, _Parser]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def group_host_lists(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with each ``--hosts a b`` written ``--hosts=a --hosts=b``.

        argparse would let ``--hosts`` swallow the program and its arguments
        (the seed's ``--host a a b b prog.py``). A host list ends at the first
        argument that starts with ``-`` (another flag, or ``--``), is an
        existing file or ends in ``.py``: that is the program. Only the
        launcher's own flags are looked at: from the program on, every
        argument is left as it is."""
        out: list[str] = []
        i = 0
        while i < len(argv):
            token = argv[i]
            if token == "--":
                return out + list(argv[i:])
            if token.startswith("-") and token != "-":
                action = self._long_action(token) if token.startswith("--") else None
                i += 1
                if action is not None and action.dest == "hosts" and "=" not in token:
                    hosts = []
                    while i < len(argv) and not _ends_host_list(argv[i]):
                        hosts.append(argv[i])
                        i += 1
                    if not hosts:
                        self.error(
                            f"argument {token}: expected at least one host before the program"
                        )
                    if i == len(argv):
                        self.error(
                            f"argument {token}: no program after the hosts {' '.join(hosts)}; "
                            "the program is the first existing file or name ending in .py "
                            "(or put -- before it)"
                        )
                    out += [f"--hosts={host}" for host in hosts]
                    continue
                out.append(token)
                if self._takes_next(token) and i < len(argv):
                    out.append(argv[i])
                    i += 1
                continue
            command = self.commands.get(token)
            if command is not None:
                return [*out, token, *command.group_host_lists(argv[i + 1 :])]
            return out + list(argv[i:])
        return out

    def _long_action(self, option: str) -> argparse.Action | None:
        """The action of ``--option[=value]``, abbreviations included."""
        option = option.split("=", 1)[0]
        actions = self._option_string_actions
        if option in actions:
            return actions[option]
        if not self.allow_abbrev:
            return None
        matches = {action for name, action in actions.items() if name.startswith(option)}
        return matches.pop() if len(matches) == 1 else None

    def _takes_next(self, option: str) -> bool:
        """Whether ``option`` (``--path``, ``-n``, ``-vn``, ``-n3``) takes the next argument."""
        if option.startswith("--"):
            action = self._long_action(option)
            return "=" not in option and action is not None and action.nargs != 0
        for i, char in enumerate(option[1:], 2):
            action = self._option_string_actions.get("-" + char)
            if action is None:
                return False
            if action.nargs != 0:
                return i == len(option)
        return False


def _ends_host_list(argument: str) -> bool:
    return argument.startswith("-") or argument.endswith(".py") or os.path.isfile(argument)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _size(text: str) -> int:
    from scoop_core.worker_jobs import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> int:
    from scoop_core.worker_jobs import parse_walltime

    try:
        return parse_walltime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Flags accepted both before and after ``run`` (and by ``python -m scoop``)."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--transport",
        "--backend",
        dest="transport",
        metavar="NAME",
        default=default,
        help="transport plugin (default zmq; --backend is SCOOP's name for it)",
    )
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="read settings from this TOML file"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more output (-vv: debug)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="errors only",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        dest="workers",
        type=_positive,
        metavar="N",
        help="number of workers (default: one per core)",
    )
    parser.add_argument(
        "--serializer", metavar="NAME", help="serializer plugin (default cloudpickle)"
    )
    parser.add_argument(
        "--hosts",
        "--host",
        action="extend",
        nargs="+",
        metavar="HOST",
        help="hosts to run workers on, [user@]host[:port], one entry per worker; the list "
        "ends at the program: the first argument that is an existing file, ends in .py or "
        "starts with '-' (end it with -- if a host name is also a file name)",
    )
    parser.add_argument(
        "--hostfile",
        metavar="FILE",
        help="file of 'host [workers]' lines (also 'host workers=N' and SGE's "
        "'host N queue processors'); no number: one worker per core",
    )
    parser.add_argument(
        "-b",
        dest="brokers",
        type=_positive,
        metavar="N",
        help="number of brokers (one serves any run)",
    )
    parser.add_argument("--path", "-p", metavar="DIR", help="working directory of the workers")
    parser.add_argument("--nice", type=int, metavar="N", help="niceness of the workers")
    parser.add_argument(
        "--tunnel", "-e", action="store_true", help="reach remote workers through SSH tunnels"
    )
    parser.add_argument(
        "--external-hostname", metavar="HOST", help="this machine's name as remote workers see it"
    )
    parser.add_argument(
        "--ssh-executable",
        metavar="PATH",
        help="start remote workers with this ssh program instead of the built-in client",
    )
    parser.add_argument(
        "--rsh", action="store_true", help="start remote workers with rsh instead of ssh"
    )
    parser.add_argument(
        "--broker-hostname", metavar="HOST", help="address remote workers dial to reach the broker"
    )
    parser.add_argument("--python-interpreter", metavar="PATH", help="Python that runs the workers")
    parser.add_argument(
        "--pythonpath", metavar="PATHS", help="prepended to the workers' PYTHONPATH"
    )
    parser.add_argument(
        "--upload",
        action="store_true",
        default=None,
        help="copy the program to remote hosts that cannot see it (no shared file system), "
        "into their temporary directory",
    )
    parser.add_argument(
        "--upload-file",
        action="append",
        metavar="FILE",
        help="copy FILE too (a module or data the program needs), beside the program; "
        "repeat for more; implies --upload",
    )
    parser.add_argument(
        "--prolog", metavar="FILE", help="shell script sourced before each worker starts"
    )
    parser.add_argument("--profile", action="store_true", help="write a cProfile file per worker")
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="write the run's trace to FILE (Chrome Trace Event JSON: open it in Perfetto, "
        "or make a page of it with scoop report FILE)",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show a live line of the run's progress on this terminal",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and scoop.DEBUG = True")
    parser.add_argument(
        "--log", metavar="FILE", help="write the launcher's log records to FILE too"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print where the workers would go (host, workers, launcher), the transport, "
        "serializer and broker, and start nothing; with --jobs, the job script and the "
        "submit commands too",
    )
    parser.add_argument(
        "--run-id",
        metavar="ID",
        help="the run's id (default: a new random one); workers join it with scoop worker --run ID",
    )
    jobs = parser.add_argument_group(
        "workers in batch jobs (submitted from a login node; see docs/scheduler-jobs.md)"
    )
    jobs.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="submit N jobs of workers to the --scheduler; the program starts at once and "
        "their workers join as the jobs start; every job is cancelled when the run ends",
    )
    jobs.add_argument(
        "--scheduler", metavar="NAME", help="the batch scheduler: slurm, sge or torque"
    )
    jobs.add_argument(
        "--cores-per-job",
        type=_positive,
        metavar="N",
        help="cores each job asks for, one worker on each (default 1)",
    )
    jobs.add_argument(
        "--memory", type=_size, metavar="SIZE", help="memory each job asks for: 16G, 512M"
    )
    jobs.add_argument(
        "--walltime",
        type=_duration,
        metavar="TIME",
        help="time limit of each job: H:MM:SS, D-H:MM:SS, or 90m, 1h30m",
    )
    jobs.add_argument("--queue", metavar="QUEUE", help="the queue (SLURM: partition) of the jobs")
    jobs.add_argument(
        "--job-extra",
        action="append",
        metavar="OPTIONS",
        help="one more line of the job script's header, after the directive "
        "(--job-extra=--account=abc); repeat for more",
    )
    parser.add_argument("program", metavar="prog.py", help="the program to run")
    program_args = parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="the program's arguments"
    )
    program_args.required = False  # a missing program is the error, not missing arguments


def module_parser() -> _Parser:
    parser = _Parser(
        prog="python -m scoop",
        description="Run a SCOOP program on a pool of workers.",
    )
    parser.add_argument("--version", action="version", version=f"scoop-core {__version__}")
    _add_common(parser, suppress=False)
    _add_run_flags(parser)
    return parser


def command_parser() -> _Parser:
    parser = _Parser(prog="scoop", description="scoop-core: distributed futures for Python.")
    parser.add_argument("--version", action="version", version=f"scoop-core {__version__}")
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser("run", help="run a program on a pool of workers")
    _add_common(run, suppress=True)
    _add_run_flags(run)
    plugins = sub.add_parser("plugins", help="list installed plugins")
    _add_common(plugins, suppress=True)
    worker = sub.add_parser(
        "worker",
        help="start workers that join a running run (through a transport with a server)",
        description="Start N workers on this machine for a run that is already going: they "
        "find it by its id in the transport's server (Redis), take futures until the run ends, "
        "and hand back what they hold on Ctrl-C. The run's key comes from $SCOOP_RUN_KEY, "
        "--key-file, or the key file scoop run wrote in ~/.scoop/runs/.",
    )
    _add_common(worker, suppress=True)
    worker.add_argument(
        "--url", metavar="URL", help="the transport's server, e.g. redis://host:6379/0"
    )
    worker.add_argument("--run", dest="run_id", required=True, metavar="ID", help="the run to join")
    worker.add_argument(
        "-n",
        dest="workers",
        type=_positive,
        metavar="N",
        help="workers to start (default: one per core)",
    )
    worker.add_argument("--key-file", metavar="FILE", help="file holding the run's key (hex)")
    worker.add_argument("--path", "-p", metavar="DIR", help="working directory of the workers")
    worker.add_argument("--python-interpreter", metavar="PATH", help="Python that runs the workers")
    status = sub.add_parser(
        "status",
        help="show the workers and futures of a running run",
        description="Print the workers of a running run (host, pid, futures run, busy or "
        "idle, last heard from) and its futures queued, running and done. With no RUN_ID, "
        "list your running runs. A ZeroMQ run answers on the machine that started it; a "
        "Redis run answers wherever its server and key are reachable.",
    )
    _add_common(status, suppress=True)
    status.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to show")
    status.add_argument(
        "--url", metavar="URL", help="the transport's server, e.g. redis://host:6379/0"
    )
    status.add_argument("--key-file", metavar="FILE", help="file holding the run's key (hex)")
    status.add_argument(
        "--json", action="store_true", help="print the run (or the list of runs) as JSON"
    )
    config = sub.add_parser(
        "config",
        help="show every setting in force and where it came from",
        description="Print every setting a run started here would use (the core's and each "
        "loaded plugin's), its value and where it came from: default, a file and line, an "
        "environment variable, or the command line. Passwords and other secrets show as ***.",
    )
    _add_common(config, suppress=True)
    config.add_argument("--json", action="store_true", help="print the settings as JSON")
    report = sub.add_parser(
        "report",
        help="turn a --trace file into one self-contained HTML page",
        description="Read a trace written by --trace FILE and write an HTML page with a "
        "timeline of every worker, utilisation and queue length over time, the functions "
        "that took the most time, futures lost and run again, and the run's settings. The "
        "page needs no network to be viewed.",
    )
    _add_common(report, suppress=True)
    report.add_argument("trace", metavar="TRACE.json", help="a file written by --trace")
    report.add_argument(
        "-o", "--output", metavar="FILE", help="the page to write (default: TRACE.html)"
    )
    parser.commands = {
        "run": run,
        "plugins": plugins,
        "worker": worker,
        "status": status,
        "report": report,
        "config": config,
    }
    return parser


# -- from flags to a run ------------------------------------------------------


def _log_level(options: argparse.Namespace) -> str | None:
    if getattr(options, "quiet", False):
        return "ERROR"
    verbose = getattr(options, "verbose", 0) or 0
    if options.__dict__.get("debug") or verbose >= 2:
        return "DEBUG"
    if verbose == 1:
        return "INFO"
    return None


def _configure(options: argparse.Namespace, cli: dict[str, Any]) -> tuple[Config, PluginManager]:
    from scoop_core.config import load_config
    from scoop_core.plugins.manager import get_plugin_manager

    config_file = getattr(options, "config", None)
    # The first pass only finds the plugins to load; the second reports every mistake.
    first = load_config(cli=cli, config_file=config_file, strict=False)
    plugins = get_plugin_manager(first["disable_plugins"])
    config = load_config(plugin_settings=plugins.settings(), cli=cli, config_file=config_file)
    return config, plugins


def _launcher_flags(options: argparse.Namespace, transport: str | None) -> dict[str, Any]:
    """The seed's remote-start flags, as the settings of the plugins they concern."""
    flags: dict[str, Any] = {}
    if options.tunnel:
        flags["launcher.ssh.tunnel"] = True
    if options.upload or options.upload_file:
        flags["launcher.ssh.upload"] = True
    if options.upload_file:
        flags["launcher.ssh.upload_files"] = [os.path.abspath(f) for f in options.upload_file]
    if options.ssh_executable or options.rsh:
        flags["launcher.ssh.ssh_executable"] = options.ssh_executable or "rsh"
    hostname = options.broker_hostname or options.external_hostname
    if hostname and (transport or "zmq") == "zmq":
        flags["transport.zmq.broker_hostname"] = hostname
    return flags


def _warn_remote_only(options: argparse.Namespace, remote: bool) -> None:
    if not remote:
        for flag, given in (
            ("--tunnel", options.tunnel),
            ("--external-hostname", options.external_hostname),
            ("--broker-hostname", options.broker_hostname),
            ("--ssh-executable", options.ssh_executable),
            ("--rsh", options.rsh),
        ):
            if given:
                log.warning(
                    "%s only matters with remote hosts; this run is on this machine only", flag
                )
    if options.brokers and options.brokers > 1:
        log.warning("-b %d: one broker serves a whole run here, so one is started", options.brokers)


def _compiles(program: str) -> bool:
    """Compile the program here first: a syntax error is then reported once,
    as Python reports it, and no worker starts (each would print it again)."""
    try:
        with open(program, "rb") as fh:
            compile(fh.read(), program, "exec")
    except (SyntaxError, ValueError) as exc:
        import traceback

        # ValueError: source with null bytes.
        print("".join(traceback.format_exception_only(exc)), end="", file=sys.stderr)
        return False
    except OSError as exc:
        raise UsageError(f"cannot read the program {program!r}: {exc.strerror}") from None
    return True


def run_program(options: argparse.Namespace) -> int:
    """Start the run and the program as its root, stop everything; the root's status."""
    program = options.program
    if not os.path.isfile(program):
        raise UsageError(f"program file {program!r} not found")
    if not options.dry_run and not _compiles(program):
        return 1
    try:
        return _run_program(options, program)
    finally:
        fork_server.stop()


def _run_program(options: argparse.Namespace, program: str) -> int:
    from scoop_core.placement import read_hosts

    hosts = read_hosts(options.hostfile, options.hosts)
    cli = {
        "workers": options.workers,
        "transport": getattr(options, "transport", None),
        "serializer": options.serializer,
        "log_level": _log_level(options),
        "nice": options.nice,
        "python_interpreter": options.python_interpreter,
        "pythonpath": options.pythonpath.split(os.pathsep) if options.pythonpath else None,
        "run_id": options.run_id,
        "trace": os.path.abspath(options.trace) if options.trace else None,
        "progress": options.progress,
    }
    cli.update(_launcher_flags(options, cli["transport"]))
    config, plugins = _configure(options, {k: v for k, v in cli.items() if v is not None})
    scoop_log.configure(config["log_level"])
    if options.dry_run:
        return _dry_run(options, program, config, plugins, hosts)
    watch = _Watch(config)
    # The progress line takes the terminal before any process of the run
    # starts: they all write through it (see scoop_core.progress).
    with _progress_line(config, watch):
        return _start_run(options, program, config, plugins, hosts, watch)


def _dry_run(
    options: argparse.Namespace,
    program: str,
    config: Config,
    plugins: PluginManager,
    hosts: list[Host],
) -> int:
    """``--dry-run``: print where the workers would go; start nothing (see
    :mod:`scoop_core.dry_run`)."""
    from scoop_core import dry_run
    from scoop_core.placement import choose, is_remote

    jobs = _worker_jobs(options, config, plugins, hosts)
    if jobs is not None:
        _warn_remote_only(options, True)
        text = dry_run.describe_jobs(
            config,
            plugins,
            jobs,
            plugins.launcher(options.scheduler).name,
            config["run_id"] or secrets.token_hex(6),
            program,
        )
    else:
        choice = choose(config, plugins, hosts)
        _warn_remote_only(options, is_remote(choice.hosts))
        text = dry_run.describe_placement(config, plugins, choice, program)
    print(text, end="", flush=True)
    return 0


def _progress_line(config: Config, watch: _Watch) -> contextlib.AbstractContextManager[Any]:
    if not config["progress"]:
        return contextlib.nullcontext()
    from scoop_core.progress import ProgressLine

    return ProgressLine(watch.snapshot)


def _start_run(
    options: argparse.Namespace,
    program: str,
    config: Config,
    plugins: PluginManager,
    hosts: list[Host],
    watch: _Watch,
) -> int:
    from scoop_core.placement import is_remote, place
    from scoop_core.run import Run, WorkerOptions, worker_count

    jobs = _worker_jobs(options, config, plugins, hosts)
    _start_fork_server(config, plugins)
    if jobs is not None:
        launcher: Launcher = jobs
        placed = None
        remote = True  # the jobs' nodes are not known beforehand
    else:
        launcher, placed = place(config, plugins, hosts)
        remote = is_remote(placed)
    _warn_remote_only(options, remote)
    worker_options = WorkerOptions(
        python=config["python_interpreter"] or sys.executable,
        pythonpath=config["pythonpath"],
        nice=config["nice"],
        path=options.path,
        prolog=os.path.abspath(options.prolog) if options.prolog else None,
        profile=options.profile,
        debug=bool(options.debug),
        # Workers and the root append their records to --log FILE too.
        extra_env={"_SCOOP_LOG_FILE": os.path.abspath(options.log)} if options.log else {},
    )
    run = Run(
        config=config,
        plugins=plugins,
        workers=jobs.options.workers
        if jobs is not None
        else sum(h.count or 0 for h in placed)
        if placed
        else worker_count(config),
        program=program,
        program_args=list(options.args),
        options=worker_options,
        launcher=launcher,
        hosts=placed,
        # Jobs' workers dial in from nodes chosen by the scheduler, when it starts them.
        public=True if jobs is not None else None,
        workers_from_jobs=jobs is not None,
    )
    watch.run = run
    return _supervise(run, program, list(options.args), watch)


_JOB_FLAGS = (
    ("--scheduler", "scheduler"),
    ("--cores-per-job", "cores_per_job"),
    ("--memory", "memory"),
    ("--walltime", "walltime"),
    ("--queue", "queue"),
    ("--job-extra", "job_extra"),
)


def _worker_jobs(
    options: argparse.Namespace, config: Config, plugins: PluginManager, hosts: list[Host]
) -> WorkerJobs | None:
    """The launcher that submits ``--jobs N`` to ``--scheduler``, or None without ``--jobs``.

    :class:`UsageError` for job flags without ``--jobs``, and for ``--jobs``
    with anything that places workers otherwise."""
    if not options.jobs:
        given = [flag for flag, dest in _JOB_FLAGS if getattr(options, dest)]
        if given:
            raise UsageError(
                f"{', '.join(given)} only with --jobs N (workers in N batch jobs of "
                "--scheduler NAME)"
            )
        return None
    from scoop_core.worker_jobs import JobOptions, WorkerJobs

    schedulers = sorted(n for n, r in plugins.launchers().items() if r.job_queue is not None)
    if not options.scheduler:
        raise UsageError(f"--jobs needs --scheduler: one of {', '.join(schedulers)}")
    clashes = [
        flag
        for flag, given in (
            ("-n", options.workers),
            ("--hosts", options.hosts),
            ("--hostfile", options.hostfile),
        )
        if given
    ]
    if clashes:
        raise UsageError(
            f"--jobs and {', '.join(clashes)}: with --jobs the workers are the jobs' "
            "(--jobs N --cores-per-job C runs N x C workers, one per core)"
        )
    record = plugins.launcher(options.scheduler)
    if record.job_queue is None:
        raise UsageError(
            f"the {record.name} launcher cannot submit jobs; --scheduler takes one of: "
            f"{', '.join(schedulers)}"
        )
    settings = config.section(record.section)
    return WorkerJobs(
        record.job_queue(settings),
        JobOptions(
            jobs=options.jobs,
            cores=options.cores_per_job or 1,
            memory=options.memory,
            walltime=options.walltime,
            queue=options.queue,
            extra=tuple(options.job_extra or ()),
        ),
        settings=settings,
        python=config["python_interpreter"] or sys.executable,
        cwd=options.path,
    )


class _Watch:
    """What the launcher shows of a run while it goes on and when it ends:
    the progress line's numbers, the summary of ``-v``, the ``--trace`` file.

    With any of them wanted, a thread brings the run's activity up to date
    about twice a second (a store's reports are read from the store; a
    broker's come by themselves) and samples it for the trace."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.run: Run | None = None
        self.summary = logging.getLogger("scoop").isEnabledFor(logging.INFO)
        self.wanted = bool(config["progress"] or config["trace"] or self.summary)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> RunSnapshot | None:
        return self.run.backend.activity.snapshot() if self.run is not None else None

    def start(self) -> None:
        if self.wanted and self.run is not None:
            self._thread = threading.Thread(target=self._loop, name="scoop-watch", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        assert self.run is not None
        backend = self.run.backend
        while not self._stop.wait(0.5):
            backend.poll()
            backend.activity.sample()

    def finish(self, status: int | None) -> None:
        """The run is over (its backend closed): say what it did."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        run = self.run
        if run is None:
            return
        activity = run.backend.activity
        snapshot = activity.sample()
        if self.summary:
            from scoop_core import run_tables

            print(run_tables.summary(snapshot), file=sys.stderr, flush=True)
        path = self.config["trace"]
        if path:
            from scoop_core import trace_file

            info = {**run.describe(), "exit_status": status}
            try:
                trace = trace_file.build(activity, snapshot, info)
                trace_file.write(path, trace)
            except OSError as exc:
                log.error("could not write the trace to %s: %s", path, exc)
                return
            print(
                f"scoop: wrote the trace ({len(trace['traceEvents']):,} events) to {path}: "
                f"open it in https://ui.perfetto.dev, or make a page of it with: "
                f"scoop report {shlex.quote(path)}",
                file=sys.stderr,
                flush=True,
            )


def _start_fork_server(config: Config, plugins: PluginManager) -> None:
    """Fork the run's fork server (:mod:`scoop_core.fork_server`) once this
    process has imported what the run's processes share with it, the core,
    the transport and the serializer: they inherit all that instead of
    importing it a second time, which on a machine with few busy cores
    cost the run's start as much as running both imports side by side
    saved. The server imports the rest of theirs while this process starts
    the broker."""
    from scoop_core.run import needed_plugins

    for record in (
        plugins.transport(config["transport"]),
        plugins.serializer(config["serializer"]),
    ):
        resolve = getattr(record.factory, "resolve", None)
        if resolve is not None:
            resolve()
    server = fork_server.start()
    if server is not None:
        server.preload(
            {
                "_SCOOP_TRANSPORT": config["transport"],
                "_SCOOP_SERIALIZER": config["serializer"],
                "_SCOOP_PLUGINS": needed_plugins(config, plugins),
                "_SCOOP_DISABLE_PLUGINS": ",".join(config["disable_plugins"]),
            }
        )


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


class _Root:
    """The root program's process: on this machine, or on the first host of
    the run when that is another one (as in SCOOP), through the launcher."""

    def __init__(self, run: Run, program: str, args: list[str]) -> None:
        from scoop_core.hosts import is_local
        from scoop_core.interfaces import WorkerSpec
        from scoop_core.run import BOOTSTRAP

        argv = [run.options.python, "-m", BOOTSTRAP, "root", program, *args]
        first = run.hosts[0] if run.hosts else None
        self.proc: LocalProcess | None = None
        self.group: WorkerGroup | None = None
        if first is None or is_local(first.name) or run.launcher is None:
            self.proc = _start_root(argv, run.env("root"))
        else:
            argv[4] = os.path.abspath(program)
            spec = WorkerSpec("root", first.address, tuple(argv), run.env("root"), run.options.path)
            log.info("the program runs on %s, the run's first host", first.address)
            self.group = run.launcher.start([spec])

    def wait(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or None after ``timeout``."""
        if self.proc is not None:
            return fork_server.wait_exit(self.proc, timeout)
        assert self.group is not None
        deadline = time.monotonic() + timeout
        while True:
            status = self.group.poll().get("root")
            if status is not None or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)  # polling the remote root's report

    def stop(self, grace: float) -> None:
        if self.group is not None:
            self.group.stop(grace)
            return
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_root(argv: list[str], env: dict[str, str]) -> LocalProcess:
    """The root's process on this machine: a fork of the fork server if it can make it."""
    server = fork_server.current()
    if server is not None and server.can_start(argv, env):
        try:
            return server.start(argv, env)
        except OSError as exc:
            log.info("the root starts as a fresh interpreter: %s", exc)
    return subprocess.Popen(argv, env={**os.environ, **env})


def _root_could_not_start(run: Run, status: int) -> None:
    """The root ended before it reached the run: its interpreter, not the program."""
    python = run.options.python
    ended = f"status {status}" if status >= 0 else f"signal {-status}"
    log.error(
        "the root process (%s) exited with %s before it reached the run, before the program "
        "started: check that %s runs and has scoop-core installed (--python-interpreter), "
        "and what it printed above",
        python,
        ended,
        python,
    )


def _supervise(run: Run, program: str, args: list[str], watch: _Watch) -> int:
    """Run the root next to the workers; stop everything however it ends."""
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    root: _Root | None = None
    grace = 3.0
    status: int | None = None
    try:
        run.start()
        watch.start()
        root = _Root(run, program, args)
        # Everything is started: a worker that replaces one is a fresh interpreter.
        fork_server.stop()
        while True:
            status = root.wait(0.25)
            if status is not None:
                if status != 0 and not run.reached("root"):
                    _root_could_not_start(run, status)
                break
            ended = run.exited_workers()
            if len(ended) == run.size:
                log.error("every worker has exited; stopping the run")
                root.stop(grace)
                status = 1
                break
        status = status if status >= 0 else 128 - status
        return status
    except _Stop as stop:
        log.info("stopping on signal %d", stop.signum)
        grace = 1.0  # the user asked to stop: busy workers are not waited for long
        status = 128 + stop.signum
        return status
    finally:
        # Signals from here on would only interrupt the clean-up.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        if root is not None:
            root.stop(grace)
        run.stop(grace=grace)
        # What reached the launcher, however the run ended.
        watch.finish(status)
        for s, handler in previous.items():
            signal.signal(s, handler)


def join_run(options: argparse.Namespace) -> int:
    """``scoop worker``: more workers for a running run."""
    # Imported here: a run started from this command line does not need it.
    from scoop_core.join import join

    cli: dict[str, Any] = {
        "transport": getattr(options, "transport", None),
        "log_level": _log_level(options),
        "python_interpreter": options.python_interpreter,
    }
    if options.url:
        first, _ = _configure(options, {k: v for k, v in cli.items() if v is not None})
        cli[f"transport.{first['transport']}.url"] = options.url
    config, plugins = _configure(options, {k: v for k, v in cli.items() if v is not None})
    scoop_log.configure(config["log_level"])
    return join(
        config,
        plugins,
        run_id=options.run_id,
        count=options.workers or os.cpu_count() or 1,
        key_path=options.key_file,
        cwd=options.path,
    )


def show_config(options: argparse.Namespace) -> int:
    """``scoop config``: the settings in force, their values and sources."""
    from scoop_core import config_command

    cli = {"transport": getattr(options, "transport", None), "log_level": _log_level(options)}
    config, _ = _configure(options, {k: v for k, v in cli.items() if v is not None})
    if options.json:
        print(config_command.format_json(config))
    else:
        print(config_command.format_table(config))
    return 0


def list_plugins(options: argparse.Namespace) -> int:
    from scoop_core.plugins.manager import format_plugin_table

    _, plugins = _configure(options, {})
    print(format_plugin_table(plugins.plugins()))
    return 0


@contextlib.contextmanager
def _log_file(path: str | None) -> Iterator[None]:
    """``--log FILE``: the ``scoop`` logger's records go to FILE too (appended)."""
    if not path:
        yield
        return
    try:
        handler = scoop_log.add_file(path)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path!r}: {exc.strerror}") from None
    try:
        yield
    finally:
        scoop_log.logger.removeHandler(handler)
        handler.close()


def _warn_if_original_scoop() -> None:
    """Say so when the original SCOOP distribution is installed here too.

    Both install a package named ``scoop``: whichever came second overwrote
    the other's files, and pip does not warn, so programs may get SCOOP's
    ``scoop.futures`` under our launcher (or lose files on ``pip uninstall``)."""
    from importlib import metadata

    try:
        original = metadata.distribution("scoop")
    except metadata.PackageNotFoundError:
        return
    scoop_log.logger.warning(
        "the original SCOOP distribution (scoop %s) is installed in this environment too: it "
        "and scoop-core both install the 'scoop' package and overwrite each other's files. "
        "Keep SCOOP in a virtualenv of its own: pip uninstall scoop here, then reinstall "
        "scoop-core (pip install --force-reinstall)",
        original.version,
    )


def _main(parser: _Parser, argv: Sequence[str] | None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    options = parser.parse_args(parser.group_host_lists(args))
    # The launcher owns the console: its records show from the start.
    scoop_log.configure(_log_level(options) or "WARNING")
    _warn_if_original_scoop()
    try:
        with _log_file(getattr(options, "log", None)):
            command = getattr(options, "command", "run")
            if command == "plugins":
                return list_plugins(options)
            if command == "config":
                return show_config(options)
            if command == "worker":
                return join_run(options)
            if command == "status":
                from scoop_core import status

                return status.main(options)
            if command == "report":
                from scoop_core import report

                return report.main(options)
            return run_program(options)
    except (UsageError, ConfigError, PluginError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (LaunchError, TransportClosed) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the run started: nothing to stop
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader of our output left (scoop config | head): not an error of ours.
        # Python would complain again when it flushes stdout at exit; nothing more goes there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """``scoop`` console script."""
    return _main(command_parser(), argv)


def main_module(argv: Sequence[str] | None = None) -> int:
    """``python -m scoop``."""
    return _main(module_parser(), argv)
