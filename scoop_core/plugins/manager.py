"""Loads every plugin once and answers "which transport / serializer / launcher is NAME?".

:class:`PluginManager` is the one typed facade over :class:`pluggy.PluginManager`:
nothing else in the core touches pluggy. At construction it registers the
built-in plugins (:data:`BUILTIN_PLUGINS`, in order), then the third-party
plugins of the entry-point group ``scoop``, calls each registration hook once
per plugin, checks what came back, and keeps the records in plain dicts. Hot
paths look records up there (or keep the record they were given) and call
its factory directly; pluggy is never on them.

Rules, in the words of ``docs/plugins.md``:

- Loading is tolerant for third-party plugins: one that fails to import,
  fails pluggy's validation, or whose hook raises or returns anything but
  its records is logged at WARNING on ``scoop.plugins``, contributes nothing,
  and is listed with status ``error: <reason>``. A failing built-in raises
  :class:`~scoop_core.errors.PluginError`, since that is a broken install.
- Selection is loud: an unknown name lists the available ones; a name
  claimed by two plugins names both distributions and how to disable one.
- Disabling: each name in ``disabled`` (and in ``SCOOP_DISABLE_PLUGINS``) is
  a *plugin* name if some plugin is registered under it, which turns the
  whole plugin off without importing it; otherwise it is a *record* name,
  which turns off just those records. Plugin names win so that a built-in
  and a third-party plugin claiming the same record name can always be
  told apart.
- Settings come with their records: :meth:`PluginManager.settings` gives
  the section of every transport and launcher that loaded, disabled ones
  included (a configuration may keep a table for a transport it does not
  use today), but not those claimed by two plugins, whose sections would
  be ambiguous.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import reprlib
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeVar

import pluggy

from scoop_core import __version__
from scoop_core.errors import PluginError
from scoop_core.plugins import hookspec
from scoop_core.plugins.types import (
    LauncherPlugin,
    SerializerPlugin,
    Setting,
    TransportPlugin,
    normalize_name,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "format_plugin_table",
    "get_plugin_manager",
]

log = logging.getLogger("scoop.plugins")

BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("serializers", "scoop_core.serialization"),
    ("local", "scoop_core.local_launcher"),
    ("zmq", "scoop_transport_zmq"),
    ("redis", "scoop_transport_redis"),
    ("ssh", "scoop_launcher_ssh"),
    ("slurm", "scoop_launcher_slurm"),
    ("sge", "scoop_launcher_sge"),
    ("torque", "scoop_launcher_torque"),
)
"""``(plugin name, module)`` of every built-in plugin, registered first and in this order."""

ENTRY_POINT_GROUP = hookspec.PROJECT_NAME
DISABLE_ENV_VAR = "SCOOP_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "scoop-core"

Kind = Literal["transport", "serializer", "launcher", "?"]
"""What a :class:`PluginInfo` row registers; ``"?"`` for a plugin whose hooks were not called."""

Record = TransportPlugin | SerializerPlugin | LauncherPlugin
_R = TypeVar("_R", TransportPlugin, SerializerPlugin, LauncherPlugin)

# (kind, hook name, record type): one line per hook in hookspec.py.
_HOOKS: tuple[tuple[Kind, str, type], ...] = (
    ("transport", "scoop_transports", TransportPlugin),
    ("serializer", "scoop_serializers", SerializerPlugin),
    ("launcher", "scoop_launchers", LauncherPlugin),
)


@dataclass(frozen=True)
class PluginInfo:
    """One row of ``scoop plugins``: a record some plugin registers, and its status.

    ``name`` is the plugin's name (the entry point's name, or the built-in's
    name in :data:`BUILTIN_PLUGINS`); ``registers`` is the record's name. A
    plugin that is disabled or
    failed before its hooks were called has one row, with kind ``"?"`` and
    registers ``"-"``. ``status`` is ``"enabled"``, ``"disabled"`` or
    ``"error: <one-line reason>"``.
    """

    name: str
    kind: Kind
    registers: str
    module: str
    distribution: str
    version: str
    status: str


@dataclass(frozen=True)
class _Source:
    """Where a plugin comes from, known before it is imported."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    load: Callable[[], object]

    def label(self) -> str:
        return f"plugin {self.name!r} ({self.distribution} {self.version})"

    def info(self, kind: Kind, registers: str, status: str) -> PluginInfo:
        return PluginInfo(
            self.name, kind, registers, self.module, self.distribution, self.version, status
        )


class _BadPlugin(Exception):
    """A plugin that cannot be used; the message is the one-line reason shown to users."""


class PluginManager:
    """Every plugin of this process, loaded once; see the module docstring for the rules.

    ``disabled`` names plugins or records to turn off (``SCOOP_DISABLE_PLUGINS``
    is added to it). ``entry_points=False`` loads the built-ins only.
    ``builtins`` replaces :data:`BUILTIN_PLUGINS`, for tests and embedding.
    ``only`` names the plugins to load, leaving the others unimported and
    unlisted: a worker needs just the plugins of its run's transport and
    serializer, and when both are built-in the installed distributions are
    not even scanned for entry points (which costs every process of a run
    milliseconds of start-up).
    """

    def __init__(
        self,
        *,
        disabled: Iterable[str] = (),
        entry_points: bool = True,
        builtins: Sequence[tuple[str, str]] = BUILTIN_PLUGINS,
        only: Collection[str] | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspec.PROJECT_NAME)
        self._pm.add_hookspecs(hookspec)
        self._rows: list[PluginInfo] = []
        self._records: dict[Kind, dict[str, Record]] = {kind: {} for kind, _, _ in _HOOKS}
        # Why a name cannot be selected: disabled, or claimed by several plugins.
        self._unavailable: dict[Kind, dict[str, str]] = {kind: {} for kind, _, _ in _HOOKS}
        # Plugins that contribute nothing, with the reason, for selection hints.
        self._missing_plugins: dict[str, str] = {}
        self._settings: dict[str, tuple[Setting, ...]] = {}
        # The plugin each selectable record comes from, by kind and record name.
        self._owners: dict[tuple[Kind, str], str] = {}

        wanted = None if only is None else {normalize_name(name) for name in only}
        sources = [
            _builtin_source(name, module)
            for name, module in builtins
            if wanted is None or normalize_name(name) in wanted
        ]
        if entry_points and (wanted is None or wanted - {source.name for source in sources}):
            sources += [
                source
                for source in _entry_point_sources({module for _, module in builtins})
                if wanted is None or source.name in wanted
            ]
        plugin_names = {source.name for source in sources}
        blocked = _disabled_names(disabled)
        self._load(sources, blocked & plugin_names, blocked - plugin_names)

    # -- selection -------------------------------------------------------

    def transports(self) -> dict[str, TransportPlugin]:
        """Every selectable transport, by name."""
        return _typed(self._records["transport"], TransportPlugin)

    def serializers(self) -> dict[str, SerializerPlugin]:
        """Every selectable serializer, by name."""
        return _typed(self._records["serializer"], SerializerPlugin)

    def launchers(self) -> dict[str, LauncherPlugin]:
        """Every selectable launcher, by name."""
        return _typed(self._records["launcher"], LauncherPlugin)

    def settings(self) -> dict[str, tuple[Setting, ...]]:
        """Each transport's and launcher's settings by section (``"transport.zmq"``), in load order.

        What :func:`scoop_core.config.load_config` takes as ``plugin_settings``.
        """
        return dict(self._settings)

    def transport(self, name: str) -> TransportPlugin:
        """The transport called ``name``; :class:`PluginError` says why if there is none."""
        record = self._select("transport", name)
        assert isinstance(record, TransportPlugin)
        return record

    def serializer(self, name: str) -> SerializerPlugin:
        """The serializer called ``name``; :class:`PluginError` says why if there is none."""
        record = self._select("serializer", name)
        assert isinstance(record, SerializerPlugin)
        return record

    def launcher(self, name: str) -> LauncherPlugin:
        """The launcher called ``name``; :class:`PluginError` says why if there is none."""
        record = self._select("launcher", name)
        assert isinstance(record, LauncherPlugin)
        return record

    def plugin_of(self, kind: Kind, name: str) -> str:
        """The name of the plugin that registers the selectable ``kind`` called
        ``name`` (what ``only`` takes); :class:`PluginError` if there is none."""
        record = self._select(kind, name)
        return self._owners[(kind, record.name)]

    def plugins(self) -> list[PluginInfo]:
        """One row per registered record (or per plugin that registered none), for ``scoop plugins``."""
        return list(self._rows)

    def _select(self, kind: Kind, name: str) -> Record:
        key = normalize_name(name)
        records = self._records[kind]
        if key in records:
            return records[key]
        if key in self._unavailable[kind]:
            raise PluginError(self._unavailable[kind][key])
        if records:
            message = f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(records))}"
        else:
            message = f"unknown {kind} {name!r}; no {kind} plugin is installed and enabled"
        if key in self._missing_plugins:
            message += f" (note: {self._missing_plugins[key]})"
        elif self._missing_plugins:
            # It may come from a plugin that is off or broken: say which are.
            message += f" (not loaded: {'; '.join(self._missing_plugins.values())})"
        raise PluginError(message)

    # -- loading ---------------------------------------------------------

    def _load(self, sources: list[_Source], off_plugins: set[str], off_records: set[str]) -> None:
        found: list[tuple[_Source, Kind, Record]] = []
        for source in sources:
            if source.name in off_plugins:
                self._rows.append(source.info("?", "-", "disabled"))
                self._missing_plugins[source.name] = f"plugin {source.name!r} is disabled"
                continue
            try:
                found += [(source, kind, record) for kind, record in self._register(source)]
            except _BadPlugin as exc:
                reason = _one_line(str(exc))
                if source.builtin:
                    raise PluginError(
                        f"built-in {source.label()} from module {source.module} cannot be "
                        f"loaded: {reason}; reinstall scoop-core, or turn the plugin off "
                        f"with {DISABLE_ENV_VAR}={source.name}"
                    ) from exc.__cause__
                log.warning("skipping %s: %s", source.label(), reason)
                self._rows.append(source.info("?", "-", f"error: {reason}"))
                self._missing_plugins[source.name] = f"{source.label()} failed: {reason}"

        claims: dict[tuple[Kind, str], list[_Source]] = {}
        for source, kind, record in found:
            claims.setdefault((kind, record.name), []).append(source)
        for source, kind, record in found:
            name = record.name
            owners = claims[(kind, name)]
            if name in off_records:
                status = "disabled"
                self._unavailable[kind][name] = (
                    f"{kind} {name!r} is disabled (by {DISABLE_ENV_VAR} or disable_plugins "
                    f"in the configuration)"
                )
            elif len(owners) > 1:
                message = _conflict_message(kind, name, owners)
                others = ", ".join(o.label() for o in owners if o is not source)
                status = f"error: {kind} {name!r} is also registered by {others}"
                if name not in self._unavailable[kind]:
                    log.warning("%s", message)
                self._unavailable[kind][name] = message
            else:
                status = "enabled"
                self._records[kind][name] = record
                self._owners[(kind, name)] = source.name
            if len(owners) == 1 and isinstance(record, TransportPlugin | LauncherPlugin):
                self._settings[record.section] = record.settings
            self._rows.append(source.info(kind, name, status))
        unused = off_records - {record.name for _, _, record in found}
        if unused:
            log.info("disabled names match no plugin or record: %s", ", ".join(sorted(unused)))

    def _register(self, source: _Source) -> list[tuple[Kind, Record]]:
        """Import, register and validate one plugin, and call its hooks.

        Raises :class:`_BadPlugin` (with the cause chained) and leaves pluggy
        as it was if anything is wrong.
        """
        try:
            plugin = source.load()
        except Exception as exc:
            raise _BadPlugin(f"cannot import {source.module}: {_describe(exc)}") from exc
        try:
            self._pm.register(plugin, name=source.name)
        except Exception as exc:
            raise _BadPlugin(f"cannot register {source.module}: {_describe(exc)}") from exc
        try:
            # Checked per plugin, right after registering it, so that a hook
            # with a misspelt name is blamed on the plugin that has it.
            self._pm.check_pending()
            return self._call_hooks(plugin)
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(plugin)
            raise _BadPlugin(_describe(exc)) from exc
        except _BadPlugin:
            self._pm.unregister(plugin)
            raise

    def _call_hooks(self, plugin: object) -> list[tuple[Kind, Record]]:
        # Each implementation is called on its own rather than through
        # pm.hook.<name>(): one plugin's exception must not hide the others'
        # results, and every record must be traced to the plugin it came from.
        out: list[tuple[Kind, Record]] = []
        for kind, hook_name, record_type in _HOOKS:
            caller: pluggy.HookCaller = getattr(self._pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if impl.hookwrapper or impl.wrapper:
                    raise _BadPlugin(f"{hook_name} must return records, not wrap other plugins")
                out += [(kind, record) for record in _call_one(impl, hook_name, record_type)]
        return out


def _call_one(impl: pluggy.HookImpl, hook_name: str, record_type: type) -> list[Record]:
    try:
        result: Any = impl.function()
        if result is None or isinstance(result, str | bytes) or not _is_iterable(result):
            raise _BadPlugin(
                f"{hook_name}() returned {_short_repr(result)}, "
                f"not an iterable of {record_type.__name__}"
            )
        records = list(result)
    except _BadPlugin:
        raise
    except Exception as exc:
        raise _BadPlugin(f"{hook_name}() raised {_describe(exc)}") from exc
    for record in records:
        if not isinstance(record, record_type):
            raise _BadPlugin(
                f"{hook_name}() returned {_short_repr(record)}, not a {record_type.__name__}"
            )
    return records


_repr = reprlib.Repr()
# Long enough for a qualified class name, short enough for a table cell.
_repr.maxother = 100
_repr.maxstring = 60


def _short_repr(value: object) -> str:
    return _repr.repr(value)


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _typed(records: dict[str, Record], record_type: type[_R]) -> dict[str, _R]:
    return {name: r for name, r in records.items() if isinstance(r, record_type)}


def _conflict_message(kind: Kind, name: str, owners: list[_Source]) -> str:
    labels = [source.label() for source in owners]
    claimed_by = ", ".join(labels[:-1]) + " and " + labels[-1]
    example = next((s for s in owners if not s.builtin), owners[-1]).name
    how_many = "two" if len(owners) == 2 else str(len(owners))
    return (
        f"{kind} {name!r} is registered by {how_many} plugins: {claimed_by}; turn one off by "
        f"its plugin name, e.g. {DISABLE_ENV_VAR}={example} in the environment or "
        f'disable_plugins = ["{example}"] in the configuration'
    )


def _describe(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}")


def _one_line(text: str, limit: int = 300) -> str:
    # pluggy's validation errors span several lines, all of them useful.
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _disabled_names(disabled: Iterable[str]) -> set[str]:
    """The normalised names in ``disabled`` and in ``SCOOP_DISABLE_PLUGINS``."""
    from_env = re.split(r"[,\s]+", os.environ.get(DISABLE_ENV_VAR, ""))
    if isinstance(disabled, str):
        # A bare string is one name, not a sequence of letters to disable.
        disabled = [disabled]
    return {normalize_name(name) for name in [*disabled, *from_env] if name.strip()}


def _builtin_source(name: str, module: str) -> _Source:
    def load() -> ModuleType:
        return importlib.import_module(module)

    return _Source(
        # The version of the code that runs, read without importlib.metadata,
        # whose import alone costs every process of a run milliseconds.
        normalize_name(name),
        module,
        BUILTIN_DISTRIBUTION,
        __version__,
        True,
        load,
    )


def _entry_point_sources(builtin_modules: set[str]) -> list[_Source]:
    if not _may_declare_plugins():
        return []
    import importlib.metadata

    sources = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module in builtin_modules:
            # scoop-core itself may advertise its built-ins; they are already in.
            continue
        dist = ep.dist
        sources.append(
            _Source(
                normalize_name(ep.name),
                ep.value,
                dist.name if dist is not None else "unknown",
                dist.version if dist is not None else "unknown",
                False,
                ep.load,
            )
        )
    return sources


_SECTION = re.compile(rb"^\[\s*" + re.escape(ENTRY_POINT_GROUP.encode()) + rb"\s*\]\s*$", re.M)


def _may_declare_plugins() -> bool:
    """Whether an installed distribution may declare a plugin: one has an
    ``entry_points.txt`` with a section for our group, or this cannot be
    told without importlib.metadata (a zip on ``sys.path``, a finder of
    distributions other than the standard one). What importlib.metadata
    would read anyway, without importing it (email, zipfile, csv...) or
    parsing every distribution's metadata: tens of milliseconds in every
    launcher, for a scan that finds no third-party plugin in most installs."""
    from importlib.machinery import PathFinder

    if any(
        hasattr(finder, "find_distributions") and finder is not PathFinder
        for finder in sys.meta_path
    ):
        return True
    for entry in sys.path:
        root = entry or "."
        try:
            children = os.listdir(root)
        except NotADirectoryError:
            return True  # a zip, which may hold distributions
        except OSError:
            continue
        infos = [c for c in children if c.lower().endswith((".dist-info", ".egg-info"))]
        if root.lower().endswith(".egg"):
            infos.append("EGG-INFO")
        for info in infos:
            try:
                with open(os.path.join(root, info, "entry_points.txt"), "rb") as fh:
                    if _SECTION.search(fh.read()):
                        return True
            except OSError:
                continue
    return False


def format_plugin_table(infos: Iterable[PluginInfo]) -> str:
    """``infos`` as an aligned text table, header first, as ``scoop plugins`` prints it.

    Columns: NAME (the record's name, what users select), KIND, PLUGIN (the
    plugin's name, what users disable), DISTRIBUTION, VERSION, STATUS.
    """
    header = ("NAME", "KIND", "PLUGIN", "DISTRIBUTION", "VERSION", "STATUS")
    rows = [header] + [
        (i.registers, i.kind, i.name, i.distribution, i.version, i.status) for i in infos
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def get_plugin_manager(
    disabled: Iterable[str] = (), only: Collection[str] | None = None
) -> PluginManager:
    """This process's plugin manager for ``disabled`` (plus ``SCOOP_DISABLE_PLUGINS``),
    loading only the plugins named in ``only`` if given (see :class:`PluginManager`).

    Built once per distinct set of disabled and wanted names and then
    reused, so hooks run once per process.
    """
    wanted = None if only is None else frozenset(only)
    return _cached_manager(frozenset(_disabled_names(disabled)), wanted)


@functools.cache
def _cached_manager(disabled: frozenset[str], only: frozenset[str] | None) -> PluginManager:
    return PluginManager(disabled=disabled, only=only)
