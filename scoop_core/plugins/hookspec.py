"""The hooks a scoop-core plugin may implement.

Every hook is a *registration* hook: it takes no arguments, is called once
per process when the plugin manager loads, and returns records
(:mod:`scoop_core.plugins.types`) that the core then uses directly. No hook
is ever called on a hot path, so a hook may be slow-ish but must not be
expensive: import heavy dependencies inside the record's ``factory``, not in
the hook or at the top of the plugin module.

Every docstring below has the same parts, in the same order: what the hook
registers, when it is called, how results from several plugins combine,
what it returns, and a complete example. ``docs/plugins.md`` repeats them,
and ``tests/core/test_docs.py`` checks that it does.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from scoop_core.plugins.types import (
    LauncherPlugin,
    PluginSettings,
    SerializerPlugin,
    TransportPlugin,
)

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
    ``factory`` with the validated settings of section ``transport.NAME``.

    **When:** called once per process, when the plugin manager loads, in the
    root, the broker and every worker alike.

    **Results:** collected from every plugin (not first-result). A name
    claimed by two plugins is reported when it is selected, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.TransportPlugin`.

    **Example:**

    .. code-block:: python

        from collections.abc import Iterable, Mapping
        from typing import Any

        from scoop_core.interfaces import Transport
        from scoop_core.plugins import TransportPlugin, hookimpl


        def make_transport(settings: Mapping[str, Any]) -> Transport:
            # Imported here so that listing plugins never imports the client.
            from mypkg.transport import MyTransport

            return MyTransport(url=settings["url"])


        @hookimpl
        def scoop_transports() -> Iterable[TransportPlugin]:
            return [
                TransportPlugin(
                    name="mytransport",
                    factory=make_transport,
                    description="messages over my message bus",
                )
            ]
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

        from scoop_core.interfaces import Serializer
        from scoop_core.plugins import SerializerPlugin, hookimpl


        def make_serializer() -> Serializer:
            # Imported here so that listing plugins never imports dill.
            from mypkg.dill_serializer import DillSerializer

            return DillSerializer()


        @hookimpl
        def scoop_serializers() -> Iterator[SerializerPlugin]:
            yield SerializerPlugin(
                name="dill",
                factory=make_serializer,
                description="dill, pickle protocol 5, out-of-band buffers",
            )
    """


@hookspec
def scoop_launchers() -> Iterable[LauncherPlugin]:  # type: ignore[empty-body]
    """Register launchers: how worker processes are started on remote hosts.

    A launcher is chosen by name (the ``launcher`` key of the configuration),
    or picked without being asked when its ``detect()`` returns True (for
    example inside a scheduler allocation). Its ``factory`` is called with the
    validated settings of section ``launcher.NAME``.

    **When:** called once per process, when the plugin manager loads; only
    the root ever calls a launcher's ``factory`` or ``detect``.

    **Results:** collected from every plugin (not first-result). A name
    claimed by two plugins is reported when it is selected, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.LauncherPlugin`.

    **Example:**

    .. code-block:: python

        import os
        from collections.abc import Iterable, Mapping
        from typing import Any

        from scoop_core.interfaces import Launcher
        from scoop_core.plugins import LauncherPlugin, hookimpl


        def in_allocation() -> bool:
            # Cheap and import-free: it runs on every launch.
            return "MYSCHED_JOB_ID" in os.environ


        def make_launcher(settings: Mapping[str, Any]) -> Launcher:
            from mypkg.launcher import MySchedLauncher

            return MySchedLauncher(partition=settings["partition"])


        @hookimpl
        def scoop_launchers() -> Iterable[LauncherPlugin]:
            return [
                LauncherPlugin(
                    name="mysched",
                    factory=make_launcher,
                    description="workers on the nodes of a MySched allocation",
                    detect=in_allocation,
                )
            ]
    """


@hookspec
def scoop_settings() -> Iterable[PluginSettings]:  # type: ignore[empty-body]
    """Declare a plugin's configuration keys, so the config layer accepts and checks them.

    Each :class:`~scoop_core.plugins.types.PluginSettings` names a section
    (``"transport.mytransport"`` is the table ``[scoop.transport.mytransport]``
    in ``scoop.toml`` and the variables ``SCOOP_TRANSPORT_MYTRANSPORT_<KEY>``)
    and the :class:`~scoop_core.plugins.types.Setting` records it holds. A
    transport or launcher named ``NAME`` receives the validated values of
    section ``transport.NAME`` or ``launcher.NAME`` in its ``factory``.

    **When:** called once per process, when the plugin manager loads, before
    any configuration is read.

    **Results:** collected from every plugin (not first-result). A section
    declared by two plugins is reported as a conflict, naming both
    distributions.

    **Returns:** an iterable of :class:`~scoop_core.plugins.types.PluginSettings`.

    **Example:**

    .. code-block:: python

        from collections.abc import Iterable

        from scoop_core.plugins import PluginSettings, Setting, hookimpl


        @hookimpl
        def scoop_settings() -> Iterable[PluginSettings]:
            return [
                PluginSettings(
                    section="transport.mytransport",
                    settings=(
                        Setting("url", str, "tcp://127.0.0.1:7000", help="where the bus listens"),
                        Setting("timeout", float, 5.0, help="seconds to wait for the bus"),
                    ),
                )
            ]
    """
