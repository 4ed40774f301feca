"""Writing a scoop-core plugin: transports, serializers, launchers and their settings.

scoop-core finds its transports, serializers and launchers through
`pluggy <https://pluggy.readthedocs.io/>`_. The built-in ones (``zmq``,
``cloudpickle``, ``pickle``, ``local``...) are ordinary plugins; a
third-party plugin is a module in an installed distribution that the core
finds through an entry point. This docstring is the plugin author's guide;
``docs/plugins.md`` says the same at more length, with every hook.

**1. A plugin module.** Write functions named after the hooks in
:mod:`scoop_core.plugins.hookspec`, mark them with :data:`hookimpl`, and
return records from them. Each hook's docstring there ends with a complete
plugin module, which the tests load as a real plugin:
:func:`~scoop_core.plugins.hookspec.scoop_transports` registers a transport
``mytcp`` with two settings, whose factory imports its code only when the
transport is chosen. Records are plain data: declare them at the top of the
module and return them from the hooks.

A module may implement any subset of the three hooks (``scoop_transports``,
``scoop_serializers``, ``scoop_launchers``). None takes arguments; each is
called once per process when the plugin manager loads, never on a hot path.

**2. An entry point.** Declare the module in your distribution's
``pyproject.toml``, in the entry-point group ``scoop``; the entry point's
name is the *plugin name*:

.. code-block:: toml

    [project.entry-points.scoop]
    myname = "mypkg.plugin"

After ``pip install``, ``scoop plugins`` lists each record your plugin
registers, with your distribution's name and version and its status.

**3. Records.** Hooks return the frozen records re-exported here:
:class:`TransportPlugin`, :class:`SerializerPlugin` and
:class:`LauncherPlugin` (a name, a ``factory`` and a description).
A ``factory`` is usually :func:`lazy`: ``lazy("mypkg.transport:TcpTransport")``
names the class as an entry point would, imports it on first call and calls
it with the settings; a misspelt name raises ``ValueError`` at once, and an
import that fails raises :class:`~scoop_core.errors.PluginError` naming the
record. Any other callable works too.
Names are normalised (``My_Transport`` is ``my-transport``); users select
records by name, and a name claimed by two plugins is an error that names
both distributions when it is selected.

**4. Settings.** A transport or launcher declares its configuration keys on
its record, ``settings=(Setting(...), ...)``; they live in the section
named after its kind and name (``transport.mytcp``: the table
``[scoop.transport.mytcp]``, the variables ``SCOOP_TRANSPORT_MYTCP_<KEY>``),
and ``factory`` receives their validated values. Settings reach worker
processes as JSON, so every default must survive a JSON round trip
(``json.loads(json.dumps(value)) == value``, same type): a record declaring
one that does not is refused when it is made, naming the plugin and the
setting.

**5. Heavy imports wait for the factory.** Listing plugins, or running on
another transport, must not import your client library: name your code with
:func:`lazy`, or import it inside a factory function (and keep ``detect``
cheap), never at the top of the plugin module.

**6. Failures.** A plugin that fails to import, whose hook raises, or whose
hook returns anything but its records, is skipped with a warning on the
``scoop.plugins`` logger and listed by ``scoop plugins`` with status
``error: ...``; it never stops other plugins. Users turn a plugin off with
``SCOOP_DISABLE_PLUGINS=myname`` or ``disable_plugins = ["myname"]`` in the
configuration (a record name, such as ``mytcp``, turns off that record
only).

**7. Conformance.** Test a transport with the suite every built-in passes,
:func:`scoop_core.testing.check_transport`, given a function that builds a
fresh transport:

.. code-block:: python

    from scoop_core.testing import check_transport

    from mypkg.transport import TcpTransport


    def test_my_transport_keeps_the_contract():
        check_transport(lambda: TcpTransport({"interface": "0.0.0.0", "port": 0}))
"""

from __future__ import annotations

from scoop_core.plugins.hookspec import hookimpl
from scoop_core.plugins.types import (
    LauncherPlugin,
    SerializerPlugin,
    Setting,
    TransportPlugin,
    lazy,
    normalize_name,
)

__all__ = [
    "LauncherPlugin",
    "SerializerPlugin",
    "Setting",
    "TransportPlugin",
    "hookimpl",
    "lazy",
    "normalize_name",
]
