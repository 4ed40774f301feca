"""Where a run's workers go: the launcher, and the hosts with their number of workers each.

One decision, used by every way of starting a run: the launcher
(``python -m scoop``, ``scoop run``) and :class:`scoop_core.Executor`.

Hosts given by ``--hosts``/``--hostfile`` (``hosts=`` for the Executor)
win; else, with the default launcher, a launcher whose ``detect()``
recognises its surroundings (a scheduler's allocation) brings its own.
Remote hosts with the local launcher mean the ssh launcher. Hosts without a
count get their number of cores, and the number of workers asked for then
follows the seed's rules (:func:`~scoop_core.hosts.assign_workers`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

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


def place(
    config: Config, plugins: PluginManager, hosts: Sequence[Host]
) -> tuple[Launcher, list[Host] | None]:
    """The launcher, and the hosts with their number of workers each (None:
    this machine only, ``config["workers"]`` of them, or one per core)."""
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
        if not hosts:
            return launcher, None
    uncounted = [h for h in hosts if h.count is None and not is_local(h.name)]
    cores = launcher.count_cores(uncounted) if uncounted else {}
    counted = [
        dataclasses.replace(
            h,
            count=h.count
            or ((os.cpu_count() or 1) if is_local(h.name) else cores.get(h.address, 1)),
        )
        for h in hosts
    ]
    return launcher, assign_workers(counted, config["workers"], 1)


def is_remote(placed: Sequence[Host] | None) -> bool:
    """Whether some of the placed hosts are other machines."""
    return placed is not None and not all(is_local(h.name) for h in placed)
