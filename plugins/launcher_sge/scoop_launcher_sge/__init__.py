"""The ``sge``launcher plugin: workers on the hosts of a Grid Engine parallel job, started with qrsh -inherit.

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
    raise LaunchError("the sge launcher is not implemented yet")


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LauncherPlugin(name="sge", factory=make_launcher, description="workers on the hosts of a Grid Engine parallel job, started with qrsh -inherit"),)
