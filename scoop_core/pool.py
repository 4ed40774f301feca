"""A running pool: one broker, its workers, and what they need to find each other.

Both ways of running share it: the launcher (``python -m scoop prog.py``),
which adds a root process, and :class:`scoop_core.Executor`, whose own
process is the root. A pool makes the run's secret key and id, binds the
broker, starts the workers through a launcher plugin, and stops everything
it started.

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

from scoop_core import _runtime
from scoop_core.broker import Broker
from scoop_core.config import Config
from scoop_core.errors import LaunchError
from scoop_core.interfaces import WorkerGroup, WorkerSpec
from scoop_core.plugins.manager import PluginManager

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
    ) -> None:
        if workers < 1:
            raise LaunchError(f"a pool needs at least one worker, got {workers}")
        self.config = config
        self.plugins = plugins
        self.size = workers
        self.program = program
        self.program_args = list(program_args)
        self.options = options or WorkerOptions(
            python=config["python_interpreter"] or sys.executable,
            pythonpath=config["pythonpath"],
            nice=config["nice"],
        )
        self.key = secrets.token_bytes(32)
        self.run_id = secrets.token_hex(6)
        self.transport_name = config["transport"]
        self.transport_settings = config.section(f"transport.{self.transport_name}")
        self.transport = plugins.transport(self.transport_name).factory(self.transport_settings)
        self.serializer = plugins.serializer(config["serializer"]).factory()
        self.broker: Broker | None = None
        self.group: WorkerGroup | None = None
        self._reported: set[str] = set()

    # -- starting -------------------------------------------------------------

    def start(self) -> Pool:
        self.broker = Broker(
            self.transport,
            key=self.key,
            run_id=self.run_id,
            expected_workers=self.size,
            max_losses=self.config["max_losses"],
            heartbeat_interval=self.config["heartbeat_interval"],
            heartbeat_timeout=self.config["heartbeat_timeout"],
            max_message_size=self.config["max_message_size"],
        )
        self.broker.start()
        launcher_name = self.config["launcher"]
        launcher = self.plugins.launcher(launcher_name).factory(
            self.config.section(f"launcher.{launcher_name}")
        )
        specs = [self.worker_spec(f"worker-{i}") for i in range(1, self.size + 1)]
        try:
            self.group = launcher.start(specs)
        except BaseException:
            self.broker.shutdown("the workers could not start")
            raise
        log.info("run %s: broker at %s, %d worker(s)", self.run_id, self.broker.address, self.size)
        return self

    def env(self, name: str) -> dict[str, str]:
        """The environment a process of this run needs (besides the caller's)."""
        assert self.broker is not None
        opts = self.options
        env = {
            "_SCOOP_NAME": name,
            "_SCOOP_ADDRESS": self.broker.address,
            "_SCOOP_KEY": self.key.hex(),
            "_SCOOP_RUN_ID": self.run_id,
            "_SCOOP_TRANSPORT": self.transport_name,
            "_SCOOP_TRANSPORT_SETTINGS": json.dumps(self.transport_settings),
            "_SCOOP_SERIALIZER": self.config["serializer"],
            "_SCOOP_WORKERS": str(self.size),
            "_SCOOP_PREFETCH": str(self.config["prefetch"]),
            "_SCOOP_LOG_LEVEL": logging.getLevelName(
                logging.getLogger("scoop").getEffectiveLevel()
            ),
            "_SCOOP_DISABLE_PLUGINS": ",".join(self.config["disable_plugins"]),
            "_SCOOP_PARENT_PID": str(os.getpid()),
            "_SCOOP_MAX_MESSAGE_SIZE": str(self.config["max_message_size"]),
            "_SCOOP_HEARTBEAT": f"{self.config['heartbeat_interval']},{self.config['heartbeat_timeout']}",
            "_SCOOP_DEBUG": "1" if opts.debug else "",
            **opts.extra_env,
        }
        if self.program:
            env["_SCOOP_PROGRAM"] = os.path.abspath(self.program)
            # Workers see the program's sys.argv too: module-level code often reads it.
            env["_SCOOP_ARGV"] = json.dumps([self.program, *self.program_args])
        if opts.nice is not None:
            env["_SCOOP_NICE"] = str(opts.nice)
        if opts.profile:
            env["_SCOOP_PROFILE"] = "1"
        if opts.pythonpath:
            current = os.environ.get("PYTHONPATH", "")
            env["PYTHONPATH"] = os.pathsep.join([*opts.pythonpath, *([current] if current else [])])
        return env

    def worker_spec(self, name: str) -> WorkerSpec:
        opts = self.options
        argv: tuple[str, ...] = (opts.python, "-m", BOOTSTRAP, "worker")
        if opts.prolog:
            # Source the prolog in a shell, then become the worker.
            argv = ("/bin/sh", "-c", '. "$1" || exit 1; shift; exec "$@"', "sh", opts.prolog, *argv)
        env = self.env(name)
        return WorkerSpec(name=name, host="127.0.0.1", argv=argv, env=env, cwd=opts.path)

    def connect(self, name: str) -> _runtime.RootRuntime:
        """A root runtime for this process, connected to the broker."""
        assert self.broker is not None
        endpoint = self.transport.connect(self.broker.address, identity=name.encode())
        rt = _runtime.RootRuntime(
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
        """Workers whose process has ended, with their status. Each is reported
        to the broker once, so the futures it held run elsewhere."""
        if self.group is None:
            return {}
        ended = {n: s for n, s in self.group.poll().items() if s is not None}
        for name, status in ended.items():
            if name not in self._reported:
                self._reported.add(name)
                if status != 0:
                    log.warning("%s exited with status %s", name, status)
                if self.broker is not None:
                    self.broker.peer_lost(name.encode())
        return ended

    def stop(self, grace: float = 5.0) -> None:
        """Tell the workers the run is over, give them ``grace`` seconds to
        exit on their own, then make sure they are gone."""
        joined: set[str] = set()
        if self.broker is not None:
            self.broker.shutdown()
            # A worker counted as lost (frozen, say) will not answer either.
            joined = self.broker.book.joined - self.broker.lost
        if self.group is not None:
            # A worker that never reached the broker did not hear the
            # shutdown and holds nothing: no reason to wait for it.
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(
                s is None and n in joined for n, s in self.group.poll().items()
            ):
                time.sleep(0.02)  # polling child processes, not synchronising a test
            self.group.stop(1.0)


def worker_count(config: Config) -> int:
    return int(config["workers"] or os.cpu_count() or 1)
