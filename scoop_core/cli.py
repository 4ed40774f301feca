"""The command line: ``python -m scoop [flags] prog.py args`` and ``scoop ...``.

``python -m scoop`` takes the seed's flags and runs a program;
``scoop [--transport T] [--config F] [-v] run [flags] prog.py args`` does the
same, and ``scoop plugins`` lists what is installed. Errors in what the user
typed are one line on stderr and exit status 2; a run exits with the root
program's own status (130 after Ctrl-C, 143 after SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from scoop_core import __version__
from scoop_core import log as scoop_log
from scoop_core.config import Config, load_config
from scoop_core.errors import ConfigError, LaunchError, PluginError, UsageError
from scoop_core.plugins.manager import PluginManager, format_plugin_table, get_plugin_manager
from scoop_core.pool import BOOTSTRAP, Pool, WorkerOptions, worker_count

log = logging.getLogger("scoop.launcher")

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "localhost.localdomain"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


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
        nargs="+",
        metavar="HOST",
        help="hosts to run workers on, one entry per worker",
    )
    parser.add_argument("--hostfile", metavar="FILE", help="file of 'host [workers]' lines")
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
        "--broker-hostname", metavar="HOST", help="address remote workers dial to reach the broker"
    )
    parser.add_argument("--python-interpreter", metavar="PATH", help="Python that runs the workers")
    parser.add_argument(
        "--pythonpath", metavar="PATHS", help="prepended to the workers' PYTHONPATH"
    )
    parser.add_argument(
        "--prolog", metavar="FILE", help="shell script sourced before each worker starts"
    )
    parser.add_argument("--profile", action="store_true", help="write a cProfile file per worker")
    parser.add_argument("--debug", action="store_true", help="debug logging and scoop.DEBUG = True")
    parser.add_argument("program", metavar="prog.py", help="the program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")


def module_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m scoop",
        description="Run a SCOOP program on a pool of workers.",
    )
    parser.add_argument("--version", action="version", version=f"scoop-core {__version__}")
    _add_common(parser, suppress=False)
    _add_run_flags(parser)
    return parser


def command_parser() -> argparse.ArgumentParser:
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
    return parser


# -- from flags to a run ------------------------------------------------------


def _is_local(host: str) -> bool:
    host = host.rsplit("@", 1)[-1].split(":", 1)[0]
    return (
        host in _LOCAL_NAMES
        or host.startswith("127.")
        or host in {socket.gethostname(), socket.getfqdn()}
    )


def _read_hostfile(path: str) -> list[tuple[str, int | None]]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise UsageError(f"cannot read the hostfile {path!r}: {exc.strerror}") from None
    hosts: list[tuple[str, int | None]] = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        count: int | None = None
        if len(fields) > 1:
            try:
                count = int(fields[1])
            except ValueError:
                raise UsageError(
                    f"{path}:{number}: expected 'host [number of workers]', got {line.strip()!r}"
                ) from None
        hosts.append((fields[0], count))
    return hosts


def _local_workers(options: argparse.Namespace) -> int | None:
    """Workers asked for by --hosts/--hostfile, all of which must be this machine."""
    hosts: list[tuple[str, int | None]] = []
    if options.hostfile:
        hosts += _read_hostfile(options.hostfile)
    if options.hosts:
        hosts += [(h, 1) for h in options.hosts]
    if not hosts:
        return None
    remote = sorted({h for h, _ in hosts if not _is_local(h)})
    if remote:
        raise UsageError(
            f"remote hosts ({', '.join(remote)}) need the ssh launcher, which this version does not have "
            "yet; run on this machine by leaving out --hosts/--hostfile or listing only localhost"
        )
    return sum(count if count is not None else (os.cpu_count() or 1) for _, count in hosts)


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
    config_file = getattr(options, "config", None)
    first = load_config(cli=cli, config_file=config_file)
    plugins = get_plugin_manager(first["disable_plugins"])
    config = load_config(plugin_settings=plugins.settings(), cli=cli, config_file=config_file)
    return config, plugins


def _warn_remote_only(options: argparse.Namespace) -> None:
    for flag, given in (
        ("--tunnel", options.tunnel),
        ("--external-hostname", options.external_hostname),
        ("--broker-hostname", options.broker_hostname),
    ):
        if given:
            log.warning("%s only matters with remote hosts; this run is on this machine only", flag)
    if options.brokers and options.brokers > 1:
        log.warning("-b %d: one broker serves a whole run here, so one is started", options.brokers)


def run_program(options: argparse.Namespace) -> int:
    """Start the pool, run the program as root, stop everything; the root's status."""
    program = options.program
    if not os.path.isfile(program):
        raise UsageError(f"program file {program!r} not found")
    workers = options.workers or _local_workers(options)
    cli = {
        "workers": workers,
        "transport": getattr(options, "transport", None),
        "serializer": options.serializer,
        "log_level": _log_level(options),
        "nice": options.nice,
        "python_interpreter": options.python_interpreter,
        "pythonpath": options.pythonpath.split(os.pathsep) if options.pythonpath else None,
    }
    config, plugins = _configure(options, {k: v for k, v in cli.items() if v is not None})
    scoop_log.configure(config["log_level"])
    _warn_remote_only(options)
    worker_options = WorkerOptions(
        python=config["python_interpreter"] or sys.executable,
        pythonpath=config["pythonpath"],
        nice=config["nice"],
        path=options.path,
        prolog=options.prolog,
        profile=options.profile,
        debug=bool(options.debug),
    )
    pool = Pool(
        config=config,
        plugins=plugins,
        workers=worker_count(config),
        program=program,
        options=worker_options,
    )
    return _supervise(pool, program, list(options.args))


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _supervise(pool: Pool, program: str, args: list[str]) -> int:
    """Run the root next to the workers; stop everything however it ends."""
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    root: subprocess.Popen[bytes] | None = None
    try:
        pool.start()
        argv = [pool.options.python, "-m", BOOTSTRAP, "root", program, *args]
        root = subprocess.Popen(argv, env={**os.environ, **pool.env("root")})
        while True:
            try:
                status = root.wait(0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            ended = pool.exited_workers()
            if len(ended) == pool.size:
                log.error("every worker has exited; stopping the run")
                root.terminate()
                root.wait()
                status = 1
                break
        return status if status >= 0 else 128 - status
    except _Stop as stop:
        log.info("stopping on signal %d", stop.signum)
        return 128 + stop.signum
    finally:
        # Signals from here on would only interrupt the clean-up.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        if root is not None and root.poll() is None:
            root.terminate()
            try:
                root.wait(3)
            except subprocess.TimeoutExpired:
                root.kill()
                root.wait()
        pool.stop(grace=3.0)
        for s, handler in previous.items():
            signal.signal(s, handler)


def list_plugins(options: argparse.Namespace) -> int:
    _, plugins = _configure(options, {})
    print(format_plugin_table(plugins.plugins()))
    return 0


def _main(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    options = parser.parse_args(argv)
    level = _log_level(options)
    if level:
        scoop_log.configure(level)
    try:
        if getattr(options, "command", "run") == "plugins":
            return list_plugins(options)
        return run_program(options)
    except (UsageError, ConfigError, PluginError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``scoop`` console script."""
    return _main(command_parser(), argv)


def main_module(argv: Sequence[str] | None = None) -> int:
    """``python -m scoop``."""
    return _main(module_parser(), argv)
