"""Where a run's workers go: the launcher, and the hosts with their number of workers each.

One decision, used by every way of starting a run: the launcher
(``python -m scoop``, ``scoop run``) and :class:`scoop_core.Executor`.

Hosts given by ``--hosts``/``--hostfile`` (``hosts=`` for the Executor)
win; else, with the default launcher, a launcher whose ``detect()``
recognises its surroundings (a scheduler's allocation) brings its own.
Remote hosts with the local launcher mean the ssh launcher. Hosts without a
count get their number of cores, and the number of workers asked for then
follows the seed's rules (:func:`~scoop_core.hosts.assign_workers`).

:func:`choose` is the decision without counting cores, which asks remote
hosts over ssh: ``--dry-run`` prints it and starts nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

from scoop_core.config import Config
from scoop_core.errors import UsageError
from scoop_core.hosts import Host, assign_workers, hosts_from_list, is_local, parse_hostfile
from scoop_core.interfaces import Launcher
from scoop_core.plugins.manager import PluginManager

log = logging.getLogger("scoop.launcher")


def read_hosts(hostfile: str | None = None, hosts: Sequence[str] | None = None) -> list[Host]:
    """The hosts of a hostfile, then of a host list (``--hosts`` words), as given."""
    found: list[Host] = []
    if hostfile:
        try:
            with open(hostfile, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read the hostfile {hostfile!r}: {reason}") from None
        found += parse_hostfile(text, hostfile)
    if hosts:
        found += hosts_from_list(list(hosts))
    return found


@dataclasses.dataclass(frozen=True)
class Choice:
    """Where a run's workers go, before any host is asked its number of cores.

    ``name`` is the launcher plugin's name, ``launcher`` the launcher it
    made; ``hosts`` are the hosts given or the allocation's (None: this
    machine only), a host's ``count`` None where nobody gave one."""

    name: str
    launcher: Launcher
    hosts: list[Host] | None


def choose(config: Config, plugins: PluginManager, hosts: Sequence[Host]) -> Choice:
    """The launcher and the hosts, without counting anybody's cores: reads
    the environment and a scheduler's host file, starts and dials nothing
    (``--dry-run`` shows this)."""
    name = config["launcher"]
    if not hosts and name == "local":
        for record in plugins.launchers().values():
            if record.detect is not None and record.detect():
                log.info("running inside a %s allocation: workers go to its hosts", record.name)
                name = record.name
                break
    if hosts and name == "local" and not all(is_local(h.name) for h in hosts):
        name = "ssh"
    launcher = plugins.launcher(name).factory(config.section(f"launcher.{name}"))
    if not hosts:
        hosts = list(launcher.allocation() or [])
    return Choice(name, launcher, list(hosts) or None)


def with_counts(hosts: Sequence[Host], cores: Mapping[str, int] | None) -> list[Host]:
    """``hosts`` with a count each: this machine's number of cores, else
    ``cores`` by address (1 if missing); with ``cores`` None, hosts that
    are other machines and have no count keep None."""
    return [dataclasses.replace(h, count=_count(h, cores)) for h in hosts]


def _count(host: Host, cores: Mapping[str, int] | None) -> int | None:
    if host.count:
        return host.count
    if is_local(host.name):
        return os.cpu_count() or 1
    return None if cores is None else cores.get(host.address, 1)


def place(
    config: Config, plugins: PluginManager, hosts: Sequence[Host]
) -> tuple[Launcher, list[Host] | None]:
    """The launcher, and the hosts with their number of workers each (None:
    this machine only, ``config["workers"]`` of them, or one per core)."""
    choice = choose(config, plugins, hosts)
    if choice.hosts is None:
        return choice.launcher, None
    uncounted = [h for h in choice.hosts if h.count is None and not is_local(h.name)]
    cores = choice.launcher.count_cores(uncounted) if uncounted else {}
    return choice.launcher, assign_workers(with_counts(choice.hosts, cores), config["workers"], 1)


def is_remote(placed: Sequence[Host] | None) -> bool:
    """Whether some of the placed hosts are other machines."""
    return placed is not None and not all(is_local(h.name) for h in placed)
