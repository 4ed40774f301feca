"""The records plugins register: frozen, named, and checked once at registration.

Every registration hook in :mod:`scoop_core.plugins.hookspec` returns an
iterable of these. Names are normalised once here (lower case, stripped), so
``--transport ZMQ`` and ``transport = "zmq"`` pick the same plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scoop_core.interfaces import Launcher, Serializer, Transport


def normalize_name(name: str) -> str:
    """The one spelling of a plugin name used for lookups."""
    return name.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class Setting:
    """One configuration key a plugin (or the core) accepts.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool`` or ``list``
    (a list of strings). ``default`` must be of that type (or ``None``).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class PluginSettings:
    """The settings of one plugin, under the config table ``[scoop.<section>]``.

    ``section`` is dotted, for example ``"transport.zmq"``: its keys live in
    ``[scoop.transport.zmq]`` in ``scoop.toml`` and in environment variables
    ``SCOOP_TRANSPORT_ZMQ_<KEY>``.
    """

    section: str
    settings: tuple[Setting, ...]


# Goes *under* @dataclass: dataclass only makes __init__ call __post_init__
# if the class already has one when the dataclass is built.
def _named(cls: type) -> type:
    orig_post_init = getattr(cls, "__post_init__", None)

    def __post_init__(self: Any) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"{cls.__name__} needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "name", normalize_name(self.name))
        if orig_post_init is not None:
            orig_post_init(self)

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return cls


@dataclass(frozen=True)
@_named
class TransportPlugin:
    """A transport: ``factory(settings)`` returns a :class:`~scoop_core.interfaces.Transport`.

    ``settings`` is the mapping of this transport's own settings (declared
    through ``scoop_settings`` under ``transport.<name>``), already validated."""

    name: str
    factory: Callable[[Mapping[str, Any]], Transport]
    description: str = ""


@dataclass(frozen=True)
@_named
class SerializerPlugin:
    """A serializer: ``factory()`` returns a :class:`~scoop_core.interfaces.Serializer`."""

    name: str
    factory: Callable[[], Serializer]
    description: str = ""


@dataclass(frozen=True)
@_named
class LauncherPlugin:
    """A launcher: ``factory(settings)`` returns a :class:`~scoop_core.interfaces.Launcher`.

    ``detect()`` (optional) returns True when this launcher should be used
    without being asked, for example inside a scheduler allocation."""

    name: str
    factory: Callable[[Mapping[str, Any]], Launcher]
    description: str = ""
    detect: Callable[[], bool] | None = field(default=None)
