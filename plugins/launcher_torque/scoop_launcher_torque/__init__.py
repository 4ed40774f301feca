"""The ``torque``launcher plugin: workers on the nodes of a Torque/PBS job, started with pbsdsh or pbs_tmrsh.

Work in progress: registered so that the name is reserved; starting workers
is not implemented yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scoop_core.errors import LaunchError
from scoop_core.interfaces import Launcher
from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import LauncherPlugin


def make_launcher(settings: Mapping[str, Any]) -> Launcher:
    raise LaunchError("the torque launcher is not implemented yet")


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LauncherPlugin(name="torque", factory=make_launcher, description="workers on the nodes of a Torque/PBS job, started with pbsdsh or pbs_tmrsh"),)
