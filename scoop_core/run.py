"""A run: its backend (where its processes meet), its workers, and what they need to find each other.

Both ways of running share it: the launcher (``python -m scoop prog.py``),
which adds a root process, and :class:`scoop_core.Executor`, whose own
process is the root. A run makes its secret key and id, starts its backend
(:mod:`scoop_core.run_backend`: a broker thread, or a store), starts the
workers through a launcher plugin, replaces a worker that dies while the
run goes on, and stops everything it started.

How a worker's exit is taken is decided here, in :meth:`Run.exited_workers`,
whatever launcher started it and whatever the transport:

- a worker that exits before it reached the run (said hello to the broker,
  or joined the store), on a host where no worker has, could not start: a
  failing ``--prolog``, a broken ``--python-interpreter``, a host that
  cannot reach the broker. It is reported once per host, with its status
  and its last lines on stderr, and not replaced: a new one would fail the
  same way, ``max_restarts`` times, before the user learnt why;
- once a worker of its host has reached the run, a worker that dies is
  replaced, up to ``max_restarts`` per host (:meth:`Run._replace`), unless
  its status and its last word say that a replacement would fail too
  (:data:`~scoop_core.errors.EXIT_REASONS`).

Workers learn what they need from environment variables starting with
``_SCOOP_`` (never from the command line, which ``ps`` shows to everyone).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoop_core import run_keys, run_registry
from scoop_core.config import Config, set_current
from scoop_core.errors import (
    EXIT_REASONS,
    INITIALIZER_FAILED,
    PROGRAM_IMPORT_FAILED,
    WORKER_RETIRED,
    LaunchError,
)
from scoop_core.hosts import Host, is_local
from scoop_core.interfaces import Launcher, WorkerGroup, WorkerSpec
from scoop_core.local_launcher import LocalWorkers
from scoop_core.plugins.manager import PluginManager
from scoop_core.run_backend import BrokerBackend, RunSettings, StoreBackend, backend_for

if TYPE_CHECKING:
    from pathlib import Path

    from scoop_core.runtime import RootRuntime

log = logging.getLogger("scoop.launcher")

BOOTSTRAP = "scoop_core.bootstrap"

WORD_GRACE = 2.0
"""Seconds the run waits, after a worker exits with one of the statuses of
:data:`~scoop_core.errors.EXIT_REASONS`, for its last report to say so
(it was sent before the exit, but may still be on its way); without it,
the exit is a death like any other (a future may end its worker with any
status)."""

START_FAILURE = "before it reached the broker"
"""What the error about a worker that could not start says of it."""

RETIRED_GRACE = 2.0
"""Seconds after a retired worker's exit before the run counts it gone (see
:meth:`Run.exited_workers`): its goodbye, sent before it exited, is read by
then, and what it handed back runs again without a loss."""


@dataclass
class WorkerOptions:
    """How worker processes are started (the seed's launcher flags)."""

    python: str = sys.executable
    pythonpath: Sequence[str] = ()
    nice: int | None = None
    path: str | None = None
    prolog: str | None = None
    profile: bool = False
    debug: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)


class Run:
    """One run: its backend and its worker processes, from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        *,
        config: Config,
        plugins: PluginManager,
        workers: int,
        program: str | None = None,
        program_args: Sequence[str] = (),
        options: WorkerOptions | None = None,
        root_name: str = "root",
        launcher: Launcher | None = None,
        hosts: Sequence[Host] | None = None,
        public: bool | None = None,
        workers_from_jobs: bool = False,
        max_tasks_per_child: int | None = None,
        initializer: bool = False,
    ) -> None:
        if workers < 1:
            raise LaunchError(f"a run needs at least one worker, got {workers}")
        self.config = config
        set_current(config)  # launchers that start others read their settings here
        self.plugins = plugins
        self.size = workers
        self.program = program
        self.program_args = list(program_args)
        self.options = options or WorkerOptions(
            python=config["python_interpreter"] or sys.executable,
            pythonpath=config["pythonpath"],
            nice=config["nice"],
        )
        self.root_name = root_name
        self.launcher = launcher
        # A worker retires after this many futures, and is replaced (an Executor's setting).
        self.max_tasks_per_child = max_tasks_per_child
        # Whether workers run an Executor's initializer (a constant of the run) first.
        self.initializer = initializer
        # Where the workers go, in order, with their number on each (None: this machine).
        self.hosts = list(hosts) if hosts else None
        if self.hosts and sum(h.count or 0 for h in self.hosts) != workers:
            raise LaunchError(f"{workers} workers for hosts that take another number: {self.hosts}")
        self.key = run_keys.launcher_key()
        self.run_id = config["run_id"] or secrets.token_hex(6)
        self.workers_from_jobs = workers_from_jobs
        self.transport_name = config["transport"]
        self.transport_settings = config.section(f"transport.{self.transport_name}")
        transport = plugins.transport(self.transport_name).factory(self.transport_settings)
        self.serializer = plugins.serializer(config["serializer"]).factory()
        self.backend = backend_for(
            transport,
            RunSettings(
                run_id=self.run_id,
                key=self.key,
                transport=self.transport_name,
                root=root_name,
                workers=workers,
                max_losses=config["max_losses"],
                heartbeat_interval=config["heartbeat_interval"],
                heartbeat_timeout=config["heartbeat_timeout"],
                max_message_size=config["max_message_size"],
                trace=bool(config["trace"]),
                workers_from_jobs=workers_from_jobs,
            ),
            # Remote workers dial in, unless they come through SSH tunnels
            # from this machine: then loopback is enough, and safer.
            # None: as the hosts say; True for workers whose hosts are not
            # known beforehand (jobs of a scheduler's queue).
            public=(self.remote and not config.get("launcher.ssh.tunnel", False))
            if public is None
            else public,
            # Every process on this machine, as this user: a socket nobody else can open.
            local=not self.remote and not any(h.user for h in self.hosts or ()),
        )
        self.group: WorkerGroup | None = None
        self._reported: set[str] = set()
        # Replacing workers that die (max_restarts per host).
        self._places: dict[str, str] = {}  # worker name -> the host it runs on
        self._restarts: dict[str, int] = {}  # host -> workers replaced there
        self._replaced: set[str] = set()  # dead workers a replacement stands in for
        self._next_worker = workers + 1
        self._retired: dict[str, float] = {}  # retired workers -> when to count them gone
        self._awaiting_word: dict[str, float] = {}  # see WORD_GRACE: worker -> until when
        self._hosts_reached: set[str] = set()  # hosts where a worker has reached the run
        # Hosts whose workers could not start -> the error that said so (see exited_workers).
        self.start_failures: dict[str, str] = {}
        # Why workers left, in their own words, when that backs up their status.
        self.exit_reasons: dict[str, str] = {}
        self._stopping = False
        self._registration: Path | None = None  # for scoop status (scoop_core.run_registry)

    # -- starting -------------------------------------------------------------

    @property
    def address(self) -> str:
        """Where the run's processes reach its backend (once started)."""
        return self.backend.address

    def start(self) -> Run:
        self.backend.start(self.describe())
        self._registration = run_registry.register(self)
        launcher = self.launcher
        if launcher is None:
            name = self.config["launcher"]
            launcher = self.plugins.launcher(name).factory(self.config.section(f"launcher.{name}"))
        try:
            self.group = launcher.start(self.worker_specs())
        except BaseException:
            run_registry.unregister(self._registration)
            self.backend.end("the workers could not start")
            self.backend.close()
            raise
        log.info("run %s: broker at %s, %d worker(s)", self.run_id, self.address, self.size)
        return self

    def describe(self) -> dict[str, object]:
        """What a process needs to know of the run besides where and the key;
        kept by a store-backed run for workers that join later (see :func:`run_env`)."""
        return {
            "program": os.path.abspath(self.program) if self.program else "",
            # Workers see the program's sys.argv too: module-level code often reads it.
            "argv": [self.program, *self.program_args] if self.program else [],
            "root": self.root_name,
            "workers": self.size,
            "serializer": self.config["serializer"],
            "prefetch": self.config["prefetch"],
            "root_runs_futures": self.config["root_runs_futures"],
            "shared_memory": self.config["shared_memory"],
            "max_losses": self.config["max_losses"],
            "heartbeat": [self.config["heartbeat_interval"], self.config["heartbeat_timeout"]],
            "max_message_size": self.config["max_message_size"],
            "trace": bool(self.config["trace"]),
            "workers_from_jobs": self.workers_from_jobs,
            "max_tasks_per_child": self.max_tasks_per_child,
            "initializer": self.initializer,
        }

    def env(self, name: str) -> dict[str, str]:
        """The environment a process of this run needs (besides the caller's)."""
        opts = self.options
        env = run_env(
            address=self.address,
            key=self.key,
            run_id=self.run_id,
            transport=self.transport_name,
            transport_settings=self.transport_settings,
            info=self.describe(),
            disabled_plugins=self.config["disable_plugins"],
        )
        env.update(
            {
                "_SCOOP_NAME": name,
                "_SCOOP_PLUGINS": self.needed_plugins,
                "_SCOOP_PARENT_PID": str(os.getpid()),
                "_SCOOP_DEBUG": "1" if opts.debug else "",
                **self.backend.env(),
                **opts.extra_env,
            }
        )
        if opts.nice is not None:
            env["_SCOOP_NICE"] = str(opts.nice)
        if opts.profile:
            env["_SCOOP_PROFILE"] = "1"
        if opts.pythonpath:
            current = os.environ.get("PYTHONPATH", "")
            env["PYTHONPATH"] = os.pathsep.join([*opts.pythonpath, *([current] if current else [])])
        return env

    @property
    def needed_plugins(self) -> str:
        """See :func:`needed_plugins`."""
        return needed_plugins(self.config, self.plugins)

    @property
    def remote(self) -> bool:
        """Whether some workers run on other machines (the broker must be reachable)."""
        return bool(self.hosts) and not all(is_local(h.name) for h in self.hosts or ())

    def worker_specs(self) -> list[WorkerSpec]:
        """worker-1, worker-2... in host order (this machine's, with no hosts)."""
        places = [h.address for h in self.hosts or () for _ in range(h.count or 0)]
        places = places or ["127.0.0.1"] * self.size
        return [self.worker_spec(f"worker-{i}", host) for i, host in enumerate(places, 1)]

    def worker_spec(self, name: str, host: str = "127.0.0.1") -> WorkerSpec:
        opts = self.options
        argv: tuple[str, ...] = (opts.python, "-m", BOOTSTRAP, "worker")
        if opts.prolog:
            # Source the prolog in a shell, then become the worker.
            argv = ("/bin/sh", "-c", '. "$1" || exit 1; shift; exec "$@"', "sh", opts.prolog, *argv)
        env = self.env(name)
        self._places[name] = host
        return WorkerSpec(name=name, host=host, argv=argv, env=env, cwd=opts.path)

    def connect(self, name: str) -> RootRuntime:
        """A root runtime for this process, connected to the run."""
        # Imported here: the launcher of ``python -m scoop`` runs no futures itself.
        from scoop_core.runtime import RootRuntime

        # This very process is the launcher: it is alive while it asks.
        endpoint = self.backend.connect(name, launcher_alive=lambda: True).endpoint
        rt = RootRuntime(
            endpoint,
            key=self.key,
            serializer=self.serializer,
            name=name,
            workers=self.size,
            heartbeat_interval=self.config["heartbeat_interval"],
            heartbeat_timeout=self.config["heartbeat_timeout"],
            max_message_size=self.config["max_message_size"],
            run_here=bool(self.config["root_runs_futures"]),  # unset: not in an embedding program
        )
        rt.start()
        return rt

    # -- watching and stopping ----------------------------------------------------

    def exited_workers(self) -> dict[str, int]:
        """Workers whose process has ended and whom no replacement stands in
        for, with their status: the run has no worker left when there are
        :attr:`size` of them. Each exit is reported to the backend once, so
        the futures it held run elsewhere, and the worker is replaced if it
        died (:meth:`_replace`)."""
        if self.group is None:
            return {}
        ended = {n: s for n, s in self.group.poll().items() if s is not None}
        now = time.monotonic()
        for name, status in ended.items():
            if name not in self._reported:
                host = self._places.get(name, "127.0.0.1")
                if not self._stopping and not self._host_reached(host):
                    # It holds nothing, and said nothing: no word to wait for.
                    self._reported.add(name)
                    self.backend.peer_lost(name)
                    self._start_failed(name, status, host)
                    continue
                if not self._believed(name, status, now):
                    continue  # its word may be on its way: looked at again next time
                self._reported.add(name)
                if status == WORKER_RETIRED and name in self.exit_reasons:
                    # It said goodbye, handing back what it held; its last
                    # messages may still be on their way to a broker thread.
                    self._retired[name] = now + RETIRED_GRACE
                    self._replace_retired(name)
                    continue
                self.backend.peer_lost(name)
                if status != 0:
                    self.backend.activity.lost(name)
                    self._replace(name, status)
        for name, due in list(self._retired.items()):
            if due <= now:
                # Only if its goodbye never came: then what it held runs again.
                del self._retired[name]
                self.backend.peer_lost(name)
        return {n: s for n, s in ended.items() if n not in self._replaced}

    def _believed(self, name: str, status: int, now: float) -> bool:
        """Whether the exit of worker ``name`` can be acted on now. A status
        that claims a reason (:data:`~scoop_core.errors.EXIT_REASONS`) is
        believed if the worker's last report says the same (then it is in
        :attr:`exit_reasons`); without that word within :data:`WORD_GRACE`,
        the exit is acted on as a death."""
        claimed = EXIT_REASONS.get(status)
        if claimed is None:
            return True
        self.backend.poll()  # a store's reports are read, not sent
        if self.backend.activity.reports().get(name, {}).get("leaving") == claimed:
            self._awaiting_word.pop(name, None)
            self.exit_reasons[name] = claimed
            return True
        until = self._awaiting_word.setdefault(name, now + WORD_GRACE)
        if now < until:
            return False
        del self._awaiting_word[name]
        return True

    def _host_reached(self, host: str) -> bool:
        """Whether a worker on ``host`` has ever reached the run: it said
        hello to the broker or joined the store (what the broker's book or
        the store's peer records say at once), or the run has a report of it."""
        if host in self._hosts_reached:
            return True
        names = {n for n, h in self._places.items() if h == host}
        self.backend.poll()  # a store's reports are read, not sent
        reported = self.backend.activity.reports()
        if any(n in reported for n in names) or self._joined(names):
            self._hosts_reached.add(host)
            return True
        return False

    def reached(self, name: str) -> bool:
        """Whether the process ``name`` (``"root"``, a worker) ever reached the run."""
        return name in self.backend.activity.reports() or self._joined({name})

    def _joined(self, names: set[str]) -> bool:
        """Whether one of ``names`` said hello to the run's broker (the
        broker's book), or joined its store (its peer record, which stays
        until the launcher reports the worker gone)."""
        backend = self.backend
        if isinstance(backend, BrokerBackend) and backend.broker is not None:
            joined = backend.broker.book.joined  # membership tests only: the broker's thread adds
            return any(n in joined for n in names)
        if isinstance(backend, StoreBackend) and backend.store is not None:
            from scoop_core.store_records import Peers

            with backend._lock:  # the store is shared with the launcher's beat thread
                return not names.isdisjoint(Peers(backend.store, self.key).names())
        return False

    def _where(self, host: str) -> str:
        if self.workers_from_jobs:
            return "its batch job's host"
        return f"host {host}" if self.hosts else "this machine"

    def _start_failed(self, name: str, status: int, host: str) -> None:
        """Worker ``name`` exited before it reached the run, and no worker on
        ``host`` has: it is not replaced, and the first such exit of a host
        is reported as an error naming what the worker printed and the fix."""
        where = self._where(host)
        ended = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        self.backend.activity.launcher.instant(
            "start failure", f"{name} could not start", worker=name, status=status
        )
        if host in self.start_failures:
            log.info("%s on %s %s %s", name, where, ended, START_FAILURE)
            return
        message = (
            f"{name} on {where} {ended} {START_FAILURE} ({self._said(name)}); no worker there "
            "has, so none is replaced: a new one would fail the same way. Check --prolog, "
            f"--python-interpreter and that the program imports on {where}"
        )
        self.start_failures[host] = message
        log.error("%s", message)

    def _said(self, name: str) -> str:
        """What worker ``name`` last wrote on stderr, in a few words for an
        error, where its launcher kept it (a group's optional ``last_lines``)."""
        tail = getattr(self.group, "last_lines", None)
        lines = tail(name) if tail is not None else None
        if lines is None:
            return "see what it printed"
        lines = [line for line in lines if line.strip()]
        if not lines:
            return "it printed nothing on stderr"
        return "its last lines on stderr: " + " | ".join(lines)

    def _replace(self, dead: str, status: int) -> None:
        """Start a new worker where ``dead`` ran, as Dask's nanny does.

        Only for a worker that died (a nonzero status: killed, crashed,
        ``os._exit``) while the run goes on; one that exits with 0 left on
        purpose. Bounded per host by ``max_restarts``, so that something
        which kills every worker there (a future that crashes its worker
        each time it runs, a broken environment) ends instead of looping;
        such a future fails with WorkerLostError after ``max_losses``."""
        died = f"{dead} exited with status {status}"
        host = self._places.get(dead, "127.0.0.1")
        where = f"host {host}" if self.hosts else "this machine"
        group = self.group
        if self._stopping or group is None:
            log.warning("%s", died)
            return
        said = self.exit_reasons.get(dead)
        if said is not None and status == PROGRAM_IMPORT_FAILED:
            log.warning("%s; not replaced: it could not import the program", died)
            return
        if said is not None and status == INITIALIZER_FAILED:
            log.error("%s; not replaced: the Executor's initializer raised there", died)
            return
        done, limit = self._restarts.get(host, 0), self.config["max_restarts"]
        if limit == 0:
            log.warning("%s; not replaced (max_restarts = 0)", died)
            return
        if done >= limit:
            log.error(
                "%s and is not replaced: %d worker(s) on %s were replaced already "
                "(max_restarts = %d). Something there kills every worker: a future that "
                "crashes its worker whenever it runs, or a broken environment; fix it, "
                "or raise max_restarts",
                died,
                done,
                where,
                limit,
            )
            return
        name = f"worker-{self._next_worker}"
        self._next_worker += 1
        try:
            group.replace(dead, self.worker_spec(name, host))
        except NotImplementedError:
            log.warning("%s; not replaced: its launcher cannot start workers later", died)
            return
        except LaunchError as exc:
            # Counted all the same: a host that cannot start workers is not retried for ever.
            self._restarts[host] = done + 1
            log.error("%s and could not be replaced: %s", died, exc)
            return
        self._restarts[host] = done + 1
        self._replaced.add(dead)
        self.backend.activity.launcher.instant(
            "restart", f"{name} replaces {dead}", worker=dead, status=status, by=name
        )
        log.warning(
            "%s; %s replaces it (restart %d of max_restarts = %d on %s)",
            died,
            name,
            done + 1,
            limit,
            where,
        )

    def _replace_retired(self, retired: str) -> None:
        """Start a new worker where ``retired`` ran: it ran its
        ``max_tasks_per_child`` futures and left, having handed back those
        it held. Neither a loss nor a restart: not counted against
        ``max_restarts``."""
        group = self.group
        if self._stopping or group is None:
            return
        host = self._places.get(retired, "127.0.0.1")
        name = f"worker-{self._next_worker}"
        self._next_worker += 1
        try:
            group.replace(retired, self.worker_spec(name, host))
        except NotImplementedError:
            log.warning(
                "%s retired; not replaced: its launcher cannot start workers later", retired
            )
            return
        except LaunchError as exc:
            log.error("%s retired and could not be replaced: %s", retired, exc)
            return
        self._replaced.add(retired)
        self.backend.activity.launcher.instant(
            "retire", f"{name} replaces {retired}", worker=retired, by=name
        )
        log.info("%s ran its max_tasks_per_child futures; %s replaces it", retired, name)

    def stop(self, grace: float = 5.0) -> None:
        """Tell the workers the run is over, give them ``grace`` seconds to
        exit on their own, then make sure they are gone."""
        self._stopping = True  # workers exiting from here on are not replaced
        run_registry.unregister(self._registration)
        joined = self.backend.end("the run is over")
        if self.group is not None:
            # A worker that never reached the run did not hear the
            # shutdown and holds nothing: no reason to wait for it.
            if isinstance(self.group, LocalWorkers):
                # Their exits are seen the moment they happen, not at the next poll.
                self.group.wait(joined, grace)
            else:
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and any(
                    s is None and n in joined for n, s in self.group.poll().items()
                ):
                    time.sleep(0.02)  # polling child processes, not synchronising a test
            self.group.stop(1.0)
        self.backend.poll()  # the last reports, before a store forgets the run
        self.backend.close()


def run_env(
    *,
    address: str,
    key: bytes,
    run_id: str,
    transport: str,
    transport_settings: Mapping[str, Any],
    info: Mapping[str, Any],
    disabled_plugins: Sequence[str],
) -> dict[str, str]:
    """The ``_SCOOP_*`` variables of a process of the run ``info`` describes
    (:meth:`Run.describe`): for the launcher's own processes and for workers
    that join later (:mod:`scoop_core.join`) alike."""
    interval, timeout = info["heartbeat"]
    env = {
        "_SCOOP_ADDRESS": address,
        "_SCOOP_KEY": key.hex(),
        "_SCOOP_RUN_ID": run_id,
        "_SCOOP_ROOT": str(info["root"]),
        "_SCOOP_TRANSPORT": transport,
        "_SCOOP_TRANSPORT_SETTINGS": json.dumps(dict(transport_settings)),
        "_SCOOP_SERIALIZER": str(info["serializer"]),
        "_SCOOP_WORKERS": str(info["workers"]),
        "_SCOOP_PREFETCH": str(info["prefetch"]),
        "_SCOOP_ROOT_RUNS_FUTURES": "0" if info.get("root_runs_futures") is False else "1",
        # Peers that say no shared frames where they are get none (a
        # codec sends a peer handles only if its place is theirs).
        "_SCOOP_SHARED_MEMORY": "0" if info.get("shared_memory") is False else "1",
        "_SCOOP_MAX_LOSSES": str(info["max_losses"]),
        "_SCOOP_MAX_MESSAGE_SIZE": str(info["max_message_size"]),
        "_SCOOP_HEARTBEAT": f"{interval},{timeout}",
        "_SCOOP_LOG_LEVEL": logging.getLevelName(logging.getLogger("scoop").getEffectiveLevel()),
        "_SCOOP_DISABLE_PLUGINS": ",".join(disabled_plugins),
        "_SCOOP_TRACE": "1" if info.get("trace") else "",
        # The root does not wait for workers that a scheduler's queue will start.
        "_SCOOP_WORKERS_FROM_JOBS": "1" if info.get("workers_from_jobs") else "",
        # An Executor's settings for its workers (see scoop_core.worker).
        "_SCOOP_MAX_TASKS": str(info.get("max_tasks_per_child") or ""),
        "_SCOOP_INITIALIZER": "1" if info.get("initializer") else "",
    }
    if info.get("program"):
        env["_SCOOP_PROGRAM"] = str(info["program"])
        env["_SCOOP_ARGV"] = json.dumps(info.get("argv") or [info["program"]])
    return env


def needed_plugins(config: Config, plugins: PluginManager) -> str:
    """The names of the plugins holding the transport and serializer that
    ``config`` chooses, comma-separated: all that a process of the run
    loads (see :func:`scoop_core.bootstrap.run_plugins`)."""
    names = {
        plugins.plugin_of("transport", config["transport"]),
        plugins.plugin_of("serializer", config["serializer"]),
    }
    return ",".join(sorted(names))


def worker_count(config: Config) -> int:
    return int(config["workers"] or os.cpu_count() or 1)
