"""The records plugins register: frozen, named, and checked once at registration.

Every registration hook in :mod:`scoop_core.plugins.hookspec` returns an
iterable of these. Names are normalised once here (lower case, ``_`` as
``-``, stripped), so ``--transport ZMQ`` and ``transport = "zmq"`` pick the
same plugin. A transport or launcher declares its configuration keys on its
own record (``settings``); their section is derived from the record's kind
and name (``transport.zmq``), so it can never disagree with the name users
select. The settings' defaults are checked here, when the record is made,
so a plugin that declares a value workers cannot receive fails at
registration, naming itself and the setting, rather than in a worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scoop_core.interfaces import Launcher, Serializer, StoreTransport, Transport

SETTING_TYPES: tuple[type, ...] = (str, int, float, bool, list)
"""The types a :class:`Setting` may have; a ``list`` is a list of strings."""


def normalize_name(name: str) -> str:
    """The one spelling of a plugin name used for lookups."""
    return name.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class Setting:
    """One configuration key a plugin (or the core) accepts.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool`` or ``list``
    (a list of strings). ``default`` must be of that type (or ``None``), and
    must survive a JSON round trip unchanged (``json.loads(json.dumps(v)) ==
    v``): settings reach worker processes as JSON, so a tuple would come
    back a list and ``nan`` not at all. Values users give are converted to
    ``type`` by the configuration layer, so they always do.
    """

    name: str
    type: type
    default: Any = None
    help: str = ""


def _survives_json(value: Any) -> bool:
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return False
    return type(back) is type(value) and bool(back == value)


def _setting_problem(setting: Setting) -> str | None:
    """Why ``setting`` cannot be declared, or None."""
    if not isinstance(setting, Setting):
        return f"{setting!r} is not a Setting"
    if not isinstance(setting.name, str) or not setting.name or "." in setting.name:
        return f"setting {setting.name!r} needs a non-empty name without dots"
    if setting.type not in SETTING_TYPES:
        return (
            f"setting {setting.name!r} has type {setting.type!r}; "
            "choose one of str, int, float, bool, list"
        )
    default = setting.default
    if default is None:
        return None
    if setting.type is list:
        fits = isinstance(default, list) and all(isinstance(item, str) for item in default)
    elif setting.type is float:
        fits = isinstance(default, float)
    else:
        fits = type(default) is setting.type
    if not fits:
        expected = "a list of str" if setting.type is list else setting.type.__name__
        return (
            f"setting {setting.name!r} has default {default!r} ({type(default).__name__}), "
            f"not {expected} or None"
        )
    if not _survives_json(default):
        return (
            f"setting {setting.name!r} has default {default!r}, which does not survive a JSON "
            "round trip (settings reach worker processes as JSON)"
        )
    return None


# Goes *under* @dataclass: dataclass only makes __init__ call __post_init__
# if the class already has one when the dataclass is built.
def _named(cls: type) -> type:
    def __post_init__(self: Any) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"{cls.__name__} needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "name", normalize_name(self.name))
        if hasattr(self, "settings"):
            _check_settings(self)

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return cls


def _check_settings(record: Any) -> None:
    settings = tuple(record.settings)
    object.__setattr__(record, "settings", settings)
    seen: set[str] = set()
    for setting in settings:
        problem = _setting_problem(setting)
        if problem is None and setting.name in seen:
            problem = f"setting {setting.name!r} is declared twice"
        if problem is not None:
            raise ValueError(f"{record.kind} {record.name!r}: {problem}")
        seen.add(setting.name)


@dataclass(frozen=True)
@_named
class TransportPlugin:
    """A transport: ``factory(settings)`` returns a :class:`~scoop_core.interfaces.Transport`
    (hub-based: the core runs a broker) or a :class:`~scoop_core.interfaces.StoreTransport`
    (its server is the broker).

    ``settings`` declares the transport's configuration keys, in section
    :attr:`section` (``transport.<name>``: the table
    ``[scoop.transport.<name>]``, the variables
    ``SCOOP_TRANSPORT_<NAME>_<KEY>``); ``factory`` receives their values,
    validated, as a mapping. Those values are passed to worker processes as
    JSON, so each default must survive a JSON round trip (checked here)."""

    kind: ClassVar[str] = "transport"

    name: str
    factory: Callable[[Mapping[str, Any]], Transport | StoreTransport]
    description: str = ""
    settings: tuple[Setting, ...] = ()

    @property
    def section(self) -> str:
        """Where this transport's settings live: ``"transport.<name>"``."""
        return f"{self.kind}.{self.name}"


@dataclass(frozen=True)
@_named
class SerializerPlugin:
    """A serializer: ``factory()`` returns a :class:`~scoop_core.interfaces.Serializer`.

    A serializer has no settings: the root and every worker build it from
    its name alone, so they always agree on it."""

    kind: ClassVar[str] = "serializer"

    name: str
    factory: Callable[[], Serializer]
    description: str = ""


@dataclass(frozen=True)
@_named
class LauncherPlugin:
    """A launcher: ``factory(settings)`` returns a :class:`~scoop_core.interfaces.Launcher`.

    ``detect()`` (optional) returns True when this launcher should be used
    without being asked, for example inside a scheduler allocation.
    ``settings`` declares the launcher's configuration keys, in section
    :attr:`section` (``launcher.<name>``), as for :class:`TransportPlugin`:
    ``factory`` receives their validated values, and each default must
    survive a JSON round trip (checked here)."""

    kind: ClassVar[str] = "launcher"

    name: str
    factory: Callable[[Mapping[str, Any]], Launcher]
    description: str = ""
    detect: Callable[[], bool] | None = field(default=None)
    settings: tuple[Setting, ...] = ()

    @property
    def section(self) -> str:
        """Where this launcher's settings live: ``"launcher.<name>"``."""
        return f"{self.kind}.{self.name}"
