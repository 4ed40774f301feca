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

A record's ``factory`` is usually :func:`lazy`: the entry-point spelling
``"module:attr"`` of the class to build, imported on first use. Listing
plugins, or running on another transport, then never imports a plugin's
heavy code (pyzmq, redis-py, paramiko), and the record stays plain data.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scoop_core.errors import PluginError
from scoop_core.interfaces import JobQueue, Launcher, Serializer, StoreTransport, Transport

SETTING_TYPES: tuple[type, ...] = (str, int, float, bool, list)
"""The types a :class:`Setting` may have; a ``list`` is a list of strings."""


def normalize_name(name: str) -> str:
    """The one spelling of a plugin name used for lookups."""
    return name.strip().lower().replace("_", "-")


# A dotted module path, a colon, a dotted attribute path: what entry points accept.
_LAZY_SPELLING = re.compile(r"^\w+(\.\w+)*:\w+(\.\w+)*$")


class LazyFactory:
    """A factory named ``"module:attr"``, imported on first call; made by :func:`lazy`.

    Calling it imports ``module``, looks ``attr`` up (once: later calls reuse
    it) and calls that with the same arguments. A record made with it names
    itself here, so that an import that fails says which plugin it was for.
    """

    __slots__ = ("_target", "owner", "spec")

    def __init__(self, spec: str, owner: str = "") -> None:
        if not isinstance(spec, str) or not _LAZY_SPELLING.match(spec):
            raise ValueError(
                f"lazy factory {spec!r} is not spelt 'module:attr', "
                "e.g. 'mypkg.transport:TcpTransport'"
            )
        self.spec = spec
        self.owner = owner
        self._target: Callable[..., Any] | None = None

    def for_record(self, owner: str) -> LazyFactory:
        """The same factory, naming ``owner`` (``"transport 'zmq'"``) in its errors."""
        return LazyFactory(self.spec, owner)

    def resolve(self) -> Callable[..., Any]:
        """What ``spec`` names, imported now; :class:`PluginError` if it cannot be."""
        if self._target is None:
            # Two threads may both get here; both import the same module and
            # find the same object, so the race is harmless.
            module_name, _, attr = self.spec.partition(":")
            try:
                target: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    target = getattr(target, part)
            except (ImportError, AttributeError) as exc:
                raise self._error(f"{type(exc).__name__}: {exc}") from exc
            if not callable(target):
                raise self._error(f"it is a {type(target).__name__}, not callable")
            self._target = target
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.spec!r})"

    # Records compare as data: two records naming the same code are equal.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LazyFactory):
            return NotImplemented
        return (self.spec, self.owner) == (other.spec, other.owner)

    def __hash__(self) -> int:
        return hash((self.spec, self.owner))

    def _error(self, cause: str) -> PluginError:
        owner = f"{self.owner}: " if self.owner else ""
        return PluginError(
            f"{owner}cannot load the factory {self.spec!r} ({cause}); the plugin's package may "
            "be installed incompletely: reinstall it"
        )


def lazy(spec: str) -> LazyFactory:
    """A factory that imports ``spec``, spelt ``"module:attr"`` as in an entry
    point, only when first called, then calls it with the same arguments.

    ``lazy("mypkg.transport:TcpTransport")`` as a record's ``factory`` builds
    a ``TcpTransport(settings)`` without importing ``mypkg.transport`` until
    the transport is chosen. A bad spelling raises ``ValueError`` here; a
    module or attribute that cannot be found raises
    :class:`~scoop_core.errors.PluginError` on the first call, naming the
    plugin, ``spec`` and the cause.
    """
    return LazyFactory(spec)


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
        owner = f"{self.kind} {self.name!r}"
        for field_name in ("factory", "job_queue"):
            value = getattr(self, field_name, None)
            if isinstance(value, LazyFactory):
                object.__setattr__(self, field_name, value.for_record(owner))
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
    (its server is the broker). ``factory`` is any callable, usually :func:`lazy`.

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
    survive a JSON round trip (checked here).

    ``job_queue`` (optional) is for a batch scheduler: ``job_queue(settings)``,
    given the same settings, returns a :class:`~scoop_core.interfaces.JobQueue`
    through which ``scoop run --jobs N --scheduler NAME`` submits jobs of
    workers from outside the scheduler (see :mod:`scoop_core.worker_jobs`)."""

    kind: ClassVar[str] = "launcher"

    name: str
    factory: Callable[[Mapping[str, Any]], Launcher]
    description: str = ""
    detect: Callable[[], bool] | None = field(default=None)
    settings: tuple[Setting, ...] = ()
    job_queue: Callable[[Mapping[str, Any]], JobQueue] | None = None

    @property
    def section(self) -> str:
        """Where this launcher's settings live: ``"launcher.<name>"``."""
        return f"{self.kind}.{self.name}"
