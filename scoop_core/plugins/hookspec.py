"""The hooks a scoop-core plugin may implement.

Every hook is a *registration* hook: it takes no arguments, is called once
per process when the plugin manager loads, and returns records
(:mod:`scoop_core.plugins.types`) that the core then uses directly. No hook
is ever called on a hot path, so a hook may be slow-ish but must not be
expensive: name the record's ``factory`` with :func:`~scoop_core.plugins.types.lazy`
(``"module:attr"``, imported when first called), or import heavy dependencies
inside a factory function, never in the hook or at the top of the plugin
module.

Every docstring below has the same parts, in the same order: what the hook
registers, when it is called, how results from several plugins combine,
what it returns, and a complete example. ``docs/plugins.md`` repeats them,
and ``tests/core/test_docs.py`` checks that it does.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from scoop_core.plugins.types import LauncherPlugin, SerializerPlugin, TransportPlugin

PROJECT_NAME = "scoop"
"""The pluggy project name, and the entry-point group plugins are found in."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function in a plugin module as the implementation of a hook."""


@hookspec
def scoop_transports() -> Iterable[TransportPlugin]:  # type: ignore[empty-body]
    """Register transports: the ways messages travel between root, broker and workers.

    A transport is chosen by name (``scoop --transport NAME`` or the
    ``transport`` key of the configuration), then built by calling its
    ``factory`` with the validated values of the ``settings`` its record
    declares: the section ``transport.NAME`` (the table
    ``[scoop.transport.NAME]``, the variables ``SCOOP_TRANSPORT_NAME_<KEY>``).
    Workers receive those values as JSON, so every default must survive a
    JSON round trip; a record whose default does not is refused when it is
    made, naming the plugin and the setting.

    **When:** called once per process, when the plugin manager loads, in the
    root, the broker and every worker alike.

    **Results:** collected from every plugin (not first-result). A name
    claimed by two plugins is reported when it is selected, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.TransportPlugin`.

    **Example:**

    .. code-block:: python

        from collections.abc import Iterable

        from scoop_core.plugins import Setting, TransportPlugin, hookimpl, lazy

        MYTCP = TransportPlugin(
            name="mytcp",
            factory=lazy("mypkg.transport:TcpTransport"),  # imported only when chosen
            description="length-prefixed frames over plain TCP",
            settings=(
                Setting("interface", str, "0.0.0.0", help="where a public hub listens"),
                Setting("port", int, 0, help="the hub's port; 0 picks a free one"),
            ),
        )


        @hookimpl
        def scoop_transports() -> Iterable[TransportPlugin]:
            return [MYTCP]
    """


@hookspec
def scoop_serializers() -> Iterable[SerializerPlugin]:  # type: ignore[empty-body]
    """Register serializers: how futures, arguments and results become frames.

    A serializer is chosen by name (the ``serializer`` key of the
    configuration); its ``factory`` takes no arguments, and the root and every
    worker must build the same serializer from it.

    **When:** called once per process, when the plugin manager loads, in the
    root, the broker and every worker alike.

    **Results:** collected from every plugin (not first-result). A name
    claimed by two plugins is reported when it is selected, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.SerializerPlugin`.

    **Example:**

    .. code-block:: python

        from collections.abc import Iterator

        from scoop_core.plugins import SerializerPlugin, hookimpl, lazy


        @hookimpl
        def scoop_serializers() -> Iterator[SerializerPlugin]:
            # Imported when first built, so that listing plugins never imports dill.
            yield SerializerPlugin(
                name="dill",
                factory=lazy("mypkg.dill_serializer:DillSerializer"),
                description="dill, pickle protocol 5, out-of-band buffers",
            )
    """


@hookspec
def scoop_launchers() -> Iterable[LauncherPlugin]:  # type: ignore[empty-body]
    """Register launchers: how worker processes are started on remote hosts.

    A launcher is chosen by name (the ``launcher`` key of the configuration),
    or picked without being asked when its ``detect()`` returns True (for
    example inside a scheduler allocation). Its ``factory`` is called with the
    validated values of the ``settings`` its record declares, the section
    ``launcher.NAME``. A launcher that starts workers through a scheduler's
    own command subclasses :class:`~scoop_core.scheduler_launcher.SchedulerLauncher`.

    **When:** called once per process, when the plugin manager loads; only
    the root ever calls a launcher's ``factory`` or ``detect``.

    **Results:** collected from every plugin (not first-result). A name
    claimed by two plugins is reported when it is selected, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.LauncherPlugin`.

    **Example:**

    .. code-block:: python

        import os
        from collections.abc import Iterable

        from scoop_core.plugins import LauncherPlugin, Setting, hookimpl, lazy
        from scoop_core.scheduler_launcher import COMMON_SETTINGS


        def in_allocation() -> bool:
            # Cheap and import-free: it runs on every launch.
            return "MYSCHED_JOB_ID" in os.environ


        @hookimpl
        def scoop_launchers() -> Iterable[LauncherPlugin]:
            return [
                LauncherPlugin(
                    name="mysched",
                    factory=lazy("mypkg.launcher:MySchedLauncher"),
                    description="workers on the nodes of a MySched allocation",
                    detect=in_allocation,
                    settings=(
                        *COMMON_SETTINGS,
                        Setting("run_args", list, [], help="extra options for every mysched-run"),
                    ),
                )
            ]
    """
