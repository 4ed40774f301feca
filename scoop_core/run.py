"""A running pool: one broker, its workers, and what they need to find each other.

Both ways of running share it: the launcher (``python -m scoop prog.py``),
which adds a root process, and :class:`scoop_core.Executor`, whose own
process is the root. A pool makes the run's secret key and id, binds the
broker, starts the workers through a launcher plugin, and stops everything
it started, and replaces a worker that dies while the run goes on.

Workers learn what they need from environment variables starting with
``_SCOOP_`` (never from the command line, which ``ps`` shows to everyone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scoop_core import messages as m
from scoop_core import run_keys, runtime
from scoop_core import store_records as records
from scoop_core.broker import Broker, supported
from scoop_core.config import Config, set_current
from scoop_core.errors import PROGRAM_IMPORT_FAILED, LaunchError, TransportClosed
from scoop_core.host_supervisor import Replaceable
from scoop_core.hosts import Host, is_local
from scoop_core.interfaces import (
    BrokerStore,
    Endpoint,
    Launcher,
    StoreTransport,
    Transport,
    WorkerGroup,
    WorkerSpec,
)
from scoop_core.plugins.manager import PluginManager
from scoop_core.store_driver import StoreEndpoint, report_lost, tell_everyone

log = logging.getLogger("scoop.launcher")

BOOTSTRAP = "scoop_core.bootstrap"


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


class Pool:
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
    ) -> None:
        if workers < 1:
            raise LaunchError(f"a pool needs at least one worker, got {workers}")
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
        # Where the workers go, in order, with their number on each (None: this machine).
        self.hosts = list(hosts) if hosts else None
        if self.hosts and sum(h.count or 0 for h in self.hosts) != workers:
            raise LaunchError(f"{workers} workers for hosts that take another number: {self.hosts}")
        self.key = _run_key()
        self.run_id = config["run_id"] or secrets.token_hex(6)
        self.transport_name = config["transport"]
        self.transport_settings = config.section(f"transport.{self.transport_name}")
        self.transport = plugins.transport(self.transport_name).factory(self.transport_settings)
        self.serializer = plugins.serializer(config["serializer"]).factory()
        self.broker: Broker | None = None
        # A transport whose server is the broker (Redis): no broker thread here.
        self.store: BrokerStore | None = None
        self._store_lock = threading.Lock()
        self._beating = threading.Event()
        self.key_path: str | None = None
        self.group: WorkerGroup | None = None
        self._reported: set[str] = set()
        # Replacing workers that die (max_restarts per host).
        self._places: dict[str, str] = {}  # worker name -> the host it runs on
        self._restarts: dict[str, int] = {}  # host -> workers replaced there
        self._replaced: set[str] = set()  # dead workers a replacement stands in for
        self._next_worker = workers + 1
        self._stopping = False

    # -- starting -------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.store is not None:
            return self.store.address
        assert self.broker is not None
        return self.broker.address

    def start(self) -> Pool:
        if isinstance(self.transport, StoreTransport):
            self.store = self.transport.open_store(run_id=self.run_id, identity=records.LAUNCHER)
            self._start_store(self.store)
        else:
            self._start_broker(self.transport)
        launcher = self.launcher
        if launcher is None:
            name = self.config["launcher"]
            launcher = self.plugins.launcher(name).factory(self.config.section(f"launcher.{name}"))
        try:
            self.group = launcher.start(self.worker_specs())
        except BaseException:
            self._end("the workers could not start")
            raise
        log.info("run %s: broker at %s, %d worker(s)", self.run_id, self.address, self.size)
        return self

    def _start_store(self, store: BrokerStore) -> None:
        """The transport's server is the broker: describe the run there, and
        keep saying the launcher lives (a program that outlives its launcher
        then ends the run itself)."""
        info = self.describe()
        with self._store_lock:
            [there] = store.put_records(records.RUN, [("info", records.sign_info(info, self.key))])
        fresh = there is None
        if not fresh:
            # Another run's keys: never ours to delete.
            self.store = None
            store.close()
            raise LaunchError(
                f"run id {self.run_id} is already in use at {store.address}; "
                "choose another --run-id (or none, for a new random one)"
            )
        self._codec = m.Codec(self.key, records.LAUNCHER.encode())
        if not os.environ.get(run_keys.KEY_ENV):
            self.key_path = str(run_keys.write_key_file(self.run_id, self.key))
        log.info(
            "run %s: more workers can join with: scoop worker --transport %s --run %s "
            "(the run's key is in %s)",
            self.run_id,
            self.transport_name,
            self.run_id,
            self.key_path or f"${run_keys.KEY_ENV}",
        )
        self._beat()
        threading.Thread(target=self._keep_beating, name="scoop-launcher-beat", daemon=True).start()

    def describe(self) -> dict[str, object]:
        """What a process needs to know of the run besides where and the key;
        kept in the store for workers that join later (see :func:`run_env`)."""
        return {
            "program": os.path.abspath(self.program) if self.program else "",
            # Workers see the program's sys.argv too: module-level code often reads it.
            "argv": [self.program, *self.program_args] if self.program else [],
            "root": self.root_name,
            "workers": self.size,
            "serializer": self.config["serializer"],
            "prefetch": self.config["prefetch"],
            "max_losses": self.config["max_losses"],
            "heartbeat": [self.config["heartbeat_interval"], self.config["heartbeat_timeout"]],
            "max_message_size": self.config["max_message_size"],
        }

    def _beat(self) -> None:
        assert self.store is not None
        try:
            with self._store_lock:
                self.store.flag(
                    records.alive_flag(records.LAUNCHER), self.config["heartbeat_timeout"]
                )
        except TransportClosed as exc:
            log.error("%s", exc)

    def _keep_beating(self) -> None:
        while not self._beating.wait(self.config["heartbeat_interval"]):
            self._beat()

    def _start_broker(self, transport: Transport) -> None:
        self.broker = Broker(
            transport,
            key=self.key,
            run_id=self.run_id,
            # Remote workers dial in, unless they come through SSH tunnels
            # from this machine: then loopback is enough, and safer.
            public=self.remote and not self.config.get("launcher.ssh.tunnel", False),
            # Every process on this machine, as this user: a socket nobody else can open.
            local=not self.remote and not any(h.user for h in self.hosts or ()),
            expected_workers=self.size,
            max_losses=self.config["max_losses"],
            heartbeat_interval=self.config["heartbeat_interval"],
            heartbeat_timeout=self.config["heartbeat_timeout"],
            max_message_size=self.config["max_message_size"],
        )
        self.broker.start()

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
                "_SCOOP_PARENT_PID": str(os.getpid()),
                "_SCOOP_DEBUG": "1" if opts.debug else "",
                **opts.extra_env,
            }
        )
        if self.key_path:
            env["_SCOOP_KEY_FILE"] = self.key_path
        if opts.nice is not None:
            env["_SCOOP_NICE"] = str(opts.nice)
        if opts.profile:
            env["_SCOOP_PROFILE"] = "1"
        if opts.pythonpath:
            current = os.environ.get("PYTHONPATH", "")
            env["PYTHONPATH"] = os.pathsep.join([*opts.pythonpath, *([current] if current else [])])
        return env

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

    def connect(self, name: str) -> runtime.RootRuntime:
        """A root runtime for this process, connected to the broker."""
        endpoint = connect_endpoint(
            self.transport,
            self.address,
            name,
            key=self.key,
            root=self.root_name,
            workers=self.size,
            max_losses=self.config["max_losses"],
            heartbeat_interval=self.config["heartbeat_interval"],
            heartbeat_timeout=self.config["heartbeat_timeout"],
            max_message_size=self.config["max_message_size"],
            launcher_alive=lambda: True,  # this very process
        )
        rt = runtime.RootRuntime(
            endpoint,
            key=self.key,
            serializer=self.serializer,
            name=name,
            workers=self.size,
            heartbeat_interval=self.config["heartbeat_interval"],
            heartbeat_timeout=self.config["heartbeat_timeout"],
            max_message_size=self.config["max_message_size"],
        )
        rt.start()
        return rt

    # -- watching and stopping ----------------------------------------------------

    def exited_workers(self) -> dict[str, int]:
        """Workers whose process has ended and whom no replacement stands in
        for, with their status: the run has no worker left when there are
        :attr:`size` of them. Each exit is reported to the broker once, so
        the futures it held run elsewhere, and the worker is replaced if it
        died (:meth:`_replace`)."""
        if self.group is None:
            return {}
        ended = {n: s for n, s in self.group.poll().items() if s is not None}
        for name, status in ended.items():
            if name not in self._reported:
                self._reported.add(name)
                if self.broker is not None:
                    self.broker.peer_lost(name.encode())
                if self.store is not None:
                    self._recover(name)
                if status != 0:
                    self._replace(name, status)
        return {n: s for n, s in ended.items() if n not in self._replaced}

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
        if self._stopping:
            log.warning("%s", died)
            return
        if status == PROGRAM_IMPORT_FAILED:
            log.warning("%s; not replaced: it could not import the program", died)
            return
        done, limit = self._restarts.get(host, 0), self.config["max_restarts"]
        if limit == 0:
            log.warning("%s; not replaced (max_restarts = 0)", died)
            return
        if not isinstance(group, Replaceable):
            log.warning("%s; not replaced: its launcher cannot start workers later", died)
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
        self._restarts[host] = done + 1
        try:
            group.replace(dead, self.worker_spec(name, host))
        except LaunchError as exc:
            log.error("%s and could not be replaced: %s", died, exc)
            return
        self._replaced.add(dead)
        log.warning(
            "%s; %s replaces it (restart %d of max_restarts = %d on %s)",
            died,
            name,
            done + 1,
            limit,
            where,
        )

    def _recover(self, name: str) -> None:
        """A worker of ours died: what it held runs again elsewhere, now."""
        assert self.store is not None
        try:
            with self._store_lock:
                report_lost(
                    self.store,
                    self.store.claim_from(name),
                    key=self.key,
                    codec=self._codec,
                    lost_by=name,
                    max_size=self.config["max_message_size"],
                )
        except TransportClosed as exc:
            log.error("could not hand on the futures of %s: %s", name, exc)

    def stop(self, grace: float = 5.0) -> None:
        """Tell the workers the run is over, give them ``grace`` seconds to
        exit on their own, then make sure they are gone."""
        self._stopping = True  # workers exiting from here on are not replaced
        joined = self._end()
        if self.group is not None:
            # A worker that never reached the broker did not hear the
            # shutdown and holds nothing: no reason to wait for it.
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(
                s is None and n in joined for n, s in self.group.poll().items()
            ):
                time.sleep(0.02)  # polling child processes, not synchronising a test
            self.group.stop(1.0)
        if self.store is not None:
            with self._store_lock:
                self.store.close(end_run=True)
            if self.key_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.key_path)

    def _end(self, reason: str = "the run is over") -> set[str]:
        """Tell every peer the run is over; the names of those that will hear it."""
        if self.broker is not None:
            self.broker.shutdown(reason)
            # A worker counted as lost (frozen, say) will not answer either.
            return self.broker.book.joined - self.broker.lost
        if self.store is None:
            return set()
        self._beating.set()
        try:
            with self._store_lock:
                return tell_everyone(self.store, self._codec, reason, 5.0)
        except TransportClosed as exc:
            log.error("could not tell the workers the run is over: %s", exc)
            return set()


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
    (:meth:`Pool.describe`): for the launcher's own processes and for workers
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
        "_SCOOP_MAX_LOSSES": str(info["max_losses"]),
        "_SCOOP_MAX_MESSAGE_SIZE": str(info["max_message_size"]),
        "_SCOOP_HEARTBEAT": f"{interval},{timeout}",
        "_SCOOP_LOG_LEVEL": logging.getLevelName(logging.getLogger("scoop").getEffectiveLevel()),
        "_SCOOP_DISABLE_PLUGINS": ",".join(disabled_plugins),
    }
    if info.get("program"):
        env["_SCOOP_PROGRAM"] = str(info["program"])
        env["_SCOOP_ARGV"] = json.dumps(info.get("argv") or [info["program"]])
    return env


def _run_key() -> bytes:
    """The run's secret: ``$SCOOP_RUN_KEY`` if set (to share it with workers
    that join from elsewhere), else a new random one."""
    given = os.environ.get(run_keys.KEY_ENV)
    if not given:
        return secrets.token_bytes(32)
    try:
        return run_keys.parse_key(given, f"${run_keys.KEY_ENV}")
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def worker_count(config: Config) -> int:
    return int(config["workers"] or os.cpu_count() or 1)


def connect_endpoint(
    transport: Transport | StoreTransport,
    address: str,
    name: str,
    *,
    key: bytes,
    root: str,
    workers: int,
    max_losses: int,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    max_message_size: int | None,
    launcher_alive: Callable[[], bool] | None = None,
    key_path: str = "",
) -> Endpoint:
    """This process's way to the broker: the transport's endpoint to the
    broker's hub, or, where the transport's server is the broker, an endpoint
    that plays the broker against that server."""
    if not isinstance(transport, StoreTransport):
        return transport.connect(
            address, identity=name.encode(), **supported(transport.connect, key=key)
        )
    return StoreEndpoint(
        transport.open_store(address=address, identity=name),
        key=key,
        name=name,
        root=root,
        max_losses=max_losses,
        expected_workers=workers if name == root else 0,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        max_message_size=max_message_size,
        launcher_alive=launcher_alive,
        key_path=key_path,
    )
