"""``--dry-run``: where a run's workers would go, printed instead of starting the run.

The same decision as a real run (:func:`scoop_core.placement.choose`), the
same checks of the settings (the launcher, transport and serializer are
built, which checks theirs), and nothing else: no process is started, no
host is dialled, no run file is written. So what a run would learn only by
going somewhere is said, not found out:

- a host with no worker count on another machine gets one worker per core,
  counted over ssh when the run starts: shown as ``per core``;
- the broker's address is shown when the settings give it (a server's URL,
  password masked; a fixed host and port); a port chosen when the broker
  starts is said to be so;
- inside a scheduler's allocation, a node runs its workers through the
  scheduler's command (``srun``...) if that is on ``PATH``, else through
  ssh, as a run would warn.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence

from scoop_core.config import Config
from scoop_core.config_command import mask_value
from scoop_core.errors import LaunchError
from scoop_core.hosts import Host, assign_workers, ip_version, is_local
from scoop_core.placement import Choice, with_counts
from scoop_core.plugins.manager import PluginManager
from scoop_core.run_tables import table
from scoop_core.scheduler_launcher import SchedulerLauncher
from scoop_core.worker_jobs import WorkerJobs

__all__ = ["describe_jobs", "describe_placement"]

PER_CORE = "per core"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _head(config: Config, workers: str) -> str:
    return f"run: transport {config['transport']}, serializer {config['serializer']}, {workers}"


def _check_plugins(config: Config, plugins: PluginManager) -> None:
    """Build the transport and serializer as the run would: their settings' errors show now."""
    transport = config["transport"]
    plugins.transport(transport).factory(config.section(f"transport.{transport}"))
    plugins.serializer(config["serializer"]).factory()


def broker_line(config: Config, remote: bool) -> str:
    """Where the workers would reach the broker, as far as the settings say."""
    transport = config["transport"]
    settings = config.section(f"transport.{transport}")
    url = settings.get("url")
    if url:
        return f"broker: workers dial {mask_value(f'transport.{transport}.url', url)}"
    if not remote:
        return "broker: on this machine, its address chosen when the run starts"
    if config.get("launcher.ssh.tunnel"):
        return "broker: on this machine; remote workers reach it through SSH tunnels"
    host = settings.get("broker_hostname") or socket.getfqdn()
    port = settings.get("port")
    if port:
        return f"broker: workers dial {host}:{port}"
    return f"broker: workers dial {host}, on a port chosen when the run starts"


def _launcher_of(choice: Choice, host: Host) -> str:
    """The launcher that would start ``host``'s workers: a scheduler's for
    the nodes of its allocation (by name or short name; this machine for a
    local name), else ``local`` or ``ssh`` (see SchedulerLauncher.start)."""
    launcher = choice.launcher
    if isinstance(launcher, SchedulerLauncher):
        nodes = [h.name for h in launcher.allocation() or []]
        shorts = [n.split(".")[0] for n in nodes]
        if (
            host.name in nodes
            or (ip_version(host.name) is None and shorts.count(host.name.split(".")[0]) == 1)
            or (is_local(host.name) and launcher.this_node(nodes) is not None)
        ):
            return choice.name
    return "local" if is_local(host.name) else "ssh"


def _scheduler_note(choice: Choice, rows: Sequence[tuple[str, str, str]]) -> list[str]:
    launcher = choice.launcher
    if not isinstance(launcher, SchedulerLauncher) or not any(r[2] == choice.name for r in rows):
        return []
    path = launcher.environ.get("PATH", os.defpath)
    if any(shutil.which(tool, path=path) for tool in launcher.tools):
        return []
    return [
        f"note: no {' or '.join(launcher.tools)} on PATH here: the run would start the "
        f"{choice.name} nodes' workers through ssh, outside the job's limits"
    ]


def describe_placement(config: Config, plugins: PluginManager, choice: Choice, program: str) -> str:
    """What ``--dry-run`` prints for a run placed by ``choice``."""
    _check_plugins(config, plugins)
    name = os.path.basename(program)
    if choice.hosts is None:
        launcher = choice.launcher
        if isinstance(launcher, SchedulerLauncher):
            # As the run would fail when it starts the workers.
            raise LaunchError(
                f"the {launcher.plugin} launcher starts workers inside a {launcher.scheduler} "
                f"job, and this process is not in one ({launcher.outside_job_hint}); run the "
                "program from a job script (see examples/submit_files/) or choose another "
                "launcher"
            )
        count = int(config["workers"] or os.cpu_count() or 1)
        here = socket.gethostname()
        lines = [
            _head(config, f"{_plural(count, 'worker')} on this machine"),
            broker_line(config, remote=False),
            table(
                ("host", "workers", "launcher"),
                [(here, str(count), _launcher_of(choice, Host(None, here)))],
                right={1},
            ),
            f"the root ({name}) runs on this machine",
        ]
        return "\n".join(lines) + "\n"
    hosts = choice.hosts
    if isinstance(choice.launcher, SchedulerLauncher):
        # Reads the allocation again, from the environment: no host is asked.
        uncounted = [h for h in hosts if h.count is None and not is_local(h.name)]
        hosts = with_counts(hosts, choice.launcher.count_cores(uncounted))
    else:
        hosts = with_counts(hosts, None)
    workers = config["workers"]
    unknown = [h for h in hosts if h.count is None]
    notes = []
    if unknown:
        total = f"{workers} workers" if workers else "workers"
        notes.append(
            f"{PER_CORE}: one worker per core of the host, counted when the run starts "
            "(nothing is asked now)"
        )
        if workers:
            notes.append(
                f"the {workers} workers are spread over these hosts once their cores are counted"
            )
    else:
        hosts = assign_workers(hosts, workers, 1)
        total = _plural(sum(h.count or 0 for h in hosts), "worker")
    rows = [
        (h.address, PER_CORE if h.count is None else str(h.count), _launcher_of(choice, h))
        for h in hosts
    ]
    remote = not all(is_local(h.name) for h in hosts)
    first = hosts[0]
    root = "this machine" if is_local(first.name) else first.address
    lines = [
        _head(config, f"{total} on {_plural(len(hosts), 'host')}"),
        broker_line(config, remote=remote),
        table(("host", "workers", "launcher"), rows, right={1}),
        *notes,
        *_scheduler_note(choice, rows),
        f"the root ({name}) runs on {root}",
    ]
    return "\n".join(lines) + "\n"


def describe_jobs(
    config: Config,
    plugins: PluginManager,
    jobs: WorkerJobs,
    scheduler: str,
    run_id: str,
    program: str,
) -> str:
    """What ``--dry-run --jobs N`` prints: the summary, then the job script and submit commands."""
    _check_plugins(config, plugins)
    options = jobs.options
    lines = [
        _head(
            config,
            f"{_plural(options.workers, 'worker')}: {_plural(options.jobs, 'job')} x "
            f"{options.cores} via scheduler {scheduler}",
        ),
        broker_line(config, remote=True),
        f"the root ({os.path.basename(program)}) runs on this machine; the jobs' workers "
        "join as the scheduler starts them",
    ]
    return "\n".join(lines) + "\n" + jobs.dry_run(run_id)
