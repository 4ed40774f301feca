"""Configuration: defaults, TOML files, ``SCOOP_*`` environment variables and the command line.

There is one precedence, each layer overriding the one before, key by key::

    defaults < site file < user file < project file < SCOOP_* variables < command line

The site file is ``/etc/scoop/scoop.toml``, where an administrator sets what
fits the cluster; the user file is ``$XDG_CONFIG_HOME/scoop/scoop.toml``
(``~/.config/scoop/scoop.toml`` when that variable is unset, empty or not an
absolute path, as the XDG base directory specification says). Both are
optional and use the ``[scoop]`` table. The project file is the first of: the
``config_file`` given (``--config``), the file named by ``SCOOP_CONFIG``,
``scoop.toml`` in the working directory (table ``[scoop]``), or the
``[tool.scoop]`` table of ``pyproject.toml`` there. Like git's and pip's
configuration files, the layers merge per key: ``--config`` replaces only the
project file, so the site and user files still apply beneath it, and a user
file setting ``workers`` leaves the site's ``[scoop.transport.redis] url``
alone. ``SCOOP_SITE_CONFIG`` and ``SCOOP_USER_CONFIG`` name other site and
user files; set to ``/dev/null`` (pip's convention for PIP_CONFIG_FILE), a
variable turns its layer off, and so does ``--config /dev/null``. An empty
variable counts as unset, the shell's habit. Workers never read these files:
they get the launcher's settings from it, so what the launcher decided holds
on every host.

Transport and launcher plugins declare their own keys on their records
(``settings``, a tuple of :class:`~scoop_core.plugins.types.Setting`); they
live in the section named after the record's kind and name, that is in
sub-tables such as ``[scoop.transport.zmq]`` and in variables such as
``SCOOP_TRANSPORT_ZMQ_PORT``.

Loading happens in two passes because the launcher needs ``disable_plugins``
before it can load plugins and learn their settings: ``load_config()`` with
``plugin_settings=None`` checks the core keys only and leaves plugin tables
alone; the second call, with every plugin's settings, checks everything. Given
``strict=False``, the first call raises nothing, so the second reports every
mistake, core and plugin keys together.

Every mistake is reported, not only the first: all of them, from every file
and layer, go into one :class:`~scoop_core.errors.ConfigError`, one line each,
naming the key, where it came from (``scoop.toml:7``, ``SCOOP_WORKERS``,
``command line``) and what was expected, so that one round of fixes is enough.
A name that is not a setting gets a "did you mean" only when a setting's name
is close to it (:func:`_closest`); otherwise the message lists the valid names.
tomllib reports no line numbers for values, so a small scanner
(:func:`_scan_toml`) finds the line of each key in the file's text.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from scoop_core.errors import ConfigError
from scoop_core.plugins.types import SETTING_TYPES, Setting, normalize_name

__all__ = ["CORE_SETTINGS", "PLUGIN_KINDS", "Config", "load_config"]

logger = logging.getLogger("scoop.config")

CORE_SETTINGS: tuple[Setting, ...] = (
    Setting("transport", str, "zmq", "The transport plugin that carries messages."),
    Setting("serializer", str, "cloudpickle", "The serializer plugin for futures and results."),
    Setting("launcher", str, "local", "The launcher plugin that starts workers."),
    Setting("workers", int, None, "Number of workers; unset means one per core."),
    Setting(
        "log_level",
        str,
        "WARNING",
        "Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
    ),
    Setting("disable_plugins", list, [], "Plugins not to load, by name."),
    Setting(
        "python_interpreter", str, None, "Python executable for workers; unset means the root's."
    ),
    Setting("pythonpath", list, [], "Directories prepended to the workers' sys.path."),
    Setting("nice", int, None, "Niceness of the worker processes; unset leaves it alone."),
    Setting("heartbeat_interval", float, 5.0, "Seconds between heartbeats."),
    Setting(
        "heartbeat_timeout",
        float,
        30.0,
        "Seconds without a heartbeat after which a peer counts as lost.",
    ),
    Setting(
        "max_message_size",
        int,
        256 << 20,
        "Largest message accepted, in bytes (256 MiB: room for one future's large arrays; "
        "the broker refuses a bigger frame before buffering it).",
    ),
    Setting(
        "shared_memory",
        bool,
        True,
        "Large arrays and buffers (1 MiB or more) between processes of one host go through "
        "shared memory (Linux memfds) instead of sockets; false sends their bytes.",
    ),
    Setting(
        "progress",
        bool,
        False,
        "Show a live line of the run's progress (futures done and submitted, failures, "
        "rate, ETA) on the launcher's terminal; never in a pipe or a file.",
    ),
    Setting(
        "trace",
        str,
        "",
        "Write the run's trace to this file (Chrome Trace Event JSON, for Perfetto, "
        "chrome://tracing or scoop report); empty writes none.",
    ),
    Setting(
        "max_losses",
        int,
        3,
        "Times a future may be lost with its worker before it fails with WorkerLostError.",
    ),
    Setting(
        "max_restarts",
        int,
        10,
        "Dead workers the launcher replaces per host in a run; 0 turns replacing off.",
    ),
    Setting("prefetch", int, 2, "Futures a worker holds beyond the ones it runs."),
    Setting(
        "root_runs_futures",
        bool,
        None,
        "The root runs a future itself while it waits for it, if the future is not sent yet "
        "and its function has run well on workers and the future takes under 5 ms; false keeps "
        "every future on the workers. Unset: a program run with scoop does, as SCOOP's root "
        "does; a program that embeds a pool (scoop_core.Executor) does not.",
    ),
    Setting(
        "run_id",
        str,
        "",
        "The run's id (letters, digits, '.', '_', '-'); empty means a new random one.",
    ),
)

PLUGIN_KINDS: tuple[str, ...] = ("transport", "serializer", "launcher")
"""Core keys that select a plugin; their value may also be a table with ``name``."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_ENV_PREFIX = "SCOOP_"
_CLI_SOURCE = "command line"
_DEFAULT_SOURCE = "default"
_EXPECTED = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean (true or false)",
    list: "a list of strings",
}
_EXPECTED_TEXT = {
    **_EXPECTED,
    bool: "a boolean (1/0, true/false, yes/no, on/off)",
    list: "a comma-separated list",
}
_BOOL_WORDS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


@dataclass(frozen=True)
class Config:
    """The settings in force, after every layer has been applied.

    ``values`` maps each dotted key (``"workers"``, ``"transport"``,
    ``"transport.zmq.port"``) to its value; every declared key is present,
    defaults filled in. ``sources`` says, per key, which layer won:
    ``"default"``, a file and line (``"/etc/scoop/scoop.toml:3"``,
    ``"/home/ada/.config/scoop/scoop.toml:2"``, ``"scoop.toml:3"``: the site
    and user files by their full path, the project file as given or relative
    to the working directory), ``"SCOOP_WORKERS"`` or ``"command line"``.
    Values are plain ``str``/``int``/``float``/``bool``/``None``/``list`` of
    ``str``, so a Config pickles and JSON-encodes as is.
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise KeyError(f"no setting {key!r}{_did_you_mean(key, self.values)}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def section(self, section: str) -> dict[str, Any]:
        """The keys of one plugin section, without the prefix.

        ``config.section("transport.zmq")`` returns ``{"port": 0, ...}``.
        A section nobody declared has no keys, so it gives ``{}``: a plugin
        without settings can still ask for its section.
        """
        prefix = section + "."
        return {
            key[len(prefix) :]: value
            for key, value in self.values.items()
            if key.startswith(prefix) and "." not in key[len(prefix) :]
        }


_current: Config | None = None


def current() -> Config | None:
    """The configuration of the run this process launches (None before one
    is configured): for a plugin that needs another plugin's settings as the
    user gave them, for example a launcher falling back to ``ssh``."""
    return _current


def set_current(config: Config | None) -> None:
    global _current
    _current = config


def load_config(
    *,
    plugin_settings: Mapping[str, Sequence[Setting]] | None = None,
    cli: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    strict: bool = True,
) -> Config:
    """Read, check and merge every configuration layer.

    ``plugin_settings=None`` is the first pass: only core keys are checked,
    plugin tables, dotted command-line keys and unknown ``SCOOP_*`` variables
    are left alone (they may belong to a plugin not loaded yet). With every
    plugin's settings by section (``{"transport.zmq": (Setting(...), ...)}``,
    as :meth:`~scoop_core.plugins.manager.PluginManager.settings` gives them),
    plugin tables are checked too, and every declared plugin key gets a value.

    ``cli`` maps dotted keys to values the user gave on the command line;
    ``None`` values count as not given (argparse's default). ``config_file``
    is the project file, read instead of ``SCOOP_CONFIG`` or ``scoop.toml`` /
    ``pyproject.toml`` in ``cwd`` (default: the current directory); the site
    and user files still apply beneath it. ``environ`` defaults to
    ``os.environ``; the user file is found through its ``XDG_CONFIG_HOME`` or
    ``HOME`` (an ``environ`` given without either has no user file).

    Raises one :class:`ConfigError` listing every mistake found, each naming
    the key, its source and the expected type. ``strict=False`` raises none
    and leaves a wrong value out (a lower layer's value, or the default, stands):
    for the first pass, so that the second reports every mistake at once,
    those of plugin tables with those of core keys, instead of stopping at the
    core keys' mistakes.
    """
    schema = _Schema(plugin_settings)
    base = Path(os.getcwd() if cwd is None else cwd)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, setting in schema.settings.items():
        values[key] = (
            list(setting.default) if isinstance(setting.default, list) else setting.default
        )
        sources[key] = _DEFAULT_SOURCE
    problems: list[str] = []
    layers: list[_Layer] = []
    for file in _config_files(base, config_file, env, own_environ=environ is None):
        if isinstance(file, str):
            problems.append(file)
            continue
        path, display = file
        found: list[_Problem] = []
        source = _read_file(path, display, found)
        if source is not None:
            layers.append(_file_layer(source, schema, found))
        problems += [p.message for p in sorted(found, key=lambda p: p.line)]
    layers.append(_env_layer(env, schema, problems))
    layers.append(_cli_layer(cli or {}, schema, problems))
    if problems and strict:
        raise ConfigError(_report(problems))
    for layer in layers:
        for key, (value, where) in layer.items():
            values[key] = value
            sources[key] = where
    return Config(values=values, sources=sources)


def _report(problems: Sequence[str]) -> str:
    """One message for every problem: a single one as it is, several one per line."""
    if len(problems) == 1:
        return problems[0]
    lines = [f"{len(problems)} mistakes in the configuration; fix each of them:"]
    for problem in problems:
        lines.append("  " + problem.replace("\n", "\n    "))
    return "\n".join(lines)


# --- the schema: which keys exist, their types and their variable names ---


class _Schema:
    """Every key known in this pass, keyed by dotted name."""

    def __init__(self, plugin_settings: Mapping[str, Sequence[Setting]] | None) -> None:
        self.settings: dict[str, Setting] = {s.name: s for s in CORE_SETTINGS}
        # None in the first pass: plugin tables cannot be checked yet.
        self.sections: set[str] | None = None
        if plugin_settings is not None:
            self.sections = set()
            for section, declared in plugin_settings.items():
                self._add_section(section, declared)
            for section in self.sections:
                if section in self.settings:
                    raise ConfigError(
                        f"plugin settings section {section!r} is also a key of another section"
                    )
        self.env: dict[str, str] = {}
        for key in self.settings:
            var = _env_name(key)
            if var in self.env:
                raise ConfigError(
                    f"settings {self.env[var]!r} and {key!r} would share the environment "
                    f"variable {var}; one of the plugins declaring them must rename it"
                )
            self.env[var] = key

    @property
    def plugins(self) -> bool:
        return self.sections is not None

    def _add_section(self, section: str, declared: Sequence[Setting]) -> None:
        assert self.sections is not None
        parts = section.split(".")
        if not all(parts) or (parts[0] in self.settings and parts[0] not in PLUGIN_KINDS):
            raise ConfigError(f"plugin settings section {section!r} is not a valid section name")
        if section in PLUGIN_KINDS or (
            len(parts) == 2 and parts[0] in PLUGIN_KINDS and parts[1] == "name"
        ):
            raise ConfigError(
                f"plugin settings section {section!r} clashes with the plugin selection key"
            )
        self.sections.add(section)
        for setting in declared:
            if not setting.name or "." in setting.name or setting.type not in SETTING_TYPES:
                raise ConfigError(
                    f"setting {setting.name!r} of section {section!r} needs a name without "
                    f"dots and a type among str, int, float, bool, list"
                )
            key = f"{section}.{setting.name}"
            known = self.settings.get(key)
            if known is not None and known != setting:
                raise ConfigError(f"setting {key!r} is declared twice, differently")
            self.settings[key] = setting

    def children(self, path: tuple[str, ...]) -> list[str]:
        """The names that may appear in the table at ``path`` (for suggestions)."""
        depth = len(path)
        names: set[str] = set()
        dotted = list(self.settings) + list(self.sections or ())
        for key in dotted:
            parts = tuple(key.split("."))
            if len(parts) > depth and parts[:depth] == path:
                names.add(parts[depth])
        if depth == 1 and path[0] in PLUGIN_KINDS:
            names.add("name")
        return sorted(names)

    def is_table(self, path: tuple[str, ...]) -> bool:
        """Whether ``path`` is a declared section or lies on the way to one."""
        return any(
            tuple(section.split("."))[: len(path)] == path for section in self.sections or ()
        )


def _env_name(key: str) -> str:
    return _ENV_PREFIX + re.sub(r"[.\-]", "_", key).upper()


# --- values: one conversion, used by every layer ---


class _BadValue(Exception):
    """A value of the wrong type or out of range; the caller adds where it came from."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _at_least(minimum: int | float, *, strict: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not (value > minimum if strict else value >= minimum):
            raise _BadValue(f"{'greater than' if strict else 'at least'} {minimum}")
        return value

    return check


def _plugin_name(value: str) -> str:
    name = normalize_name(value)
    if not name:
        raise _BadValue("a plugin name")
    return name


def _run_id(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise _BadValue("1 to 64 letters, digits, '.', '_' or '-'")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise _BadValue("one of " + ", ".join(LOG_LEVELS))
    return value.upper()


# Checks beyond the type, for core keys only: a zero worker count or a
# negative heartbeat would otherwise fail far from the config that caused it.
_CORE_CHECKS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(PLUGIN_KINDS, _plugin_name),
    "log_level": _log_level,
    "run_id": _run_id,
    "workers": _at_least(1),
    "prefetch": _at_least(0),
    "max_message_size": _at_least(1),
    "max_losses": _at_least(1),
    "max_restarts": _at_least(0),
    "heartbeat_interval": _at_least(0, strict=True),
    "heartbeat_timeout": _at_least(0, strict=True),
}


def _convert(key: str, setting: Setting, value: Any, *, text: bool) -> Any:
    """Check ``value`` against ``setting``; ``text`` means it may still be a string to parse."""
    kind = setting.type
    if text and isinstance(value, str) and kind is not str:
        value = _parse_text(kind, value)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is list:
        ok = isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
        value = list(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise _BadValue(_EXPECTED[kind])
    check = _CORE_CHECKS.get(key)
    return check(value) if check is not None else value


def _parse_text(kind: type, raw: str) -> Any:
    """A string from the environment or the command line, read as ``kind``."""
    try:
        if kind is bool:
            return _BOOL_WORDS[raw.strip().lower()]
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except (KeyError, ValueError):
        raise _BadValue(_EXPECTED_TEXT[kind]) from None
    # A list: "a, b" is ["a", "b"], and an empty string is the empty list.
    return [item.strip() for item in raw.split(",") if item.strip()]


_SEPARATORS = "._-"


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` looks like a misspelling of, or None if none is close.

    A misspelling is a few letters typed wrong, left out, added or swapped: at
    most one edit per three letters (and one for shorter names), counted on the
    part where the names differ. The longest common prefix that ends with a
    separator (``.``, ``_``, ``-``) and the longest common suffix that starts
    with one are left out, so ``transport.zmq.prot`` is close to
    ``transport.zmq.port`` and ``SCOOP_TRASNPORT`` to ``SCOOP_TRANSPORT``, but
    ``transport.zmq.foo`` is close to nothing, and neither is ``port`` to
    ``transport`` nor ``cores`` to ``workers``: a far name gets no suggestion,
    and the caller lists the valid names instead.
    """
    best: str | None = None
    best_distance = 0
    for candidate in candidates:
        a, b = _differing_parts(name.lower(), candidate.lower())
        distance = _edit_distance(a, b)
        if distance <= max(1, max(len(a), len(b)) // 3) and (
            best is None or distance < best_distance
        ):
            best, best_distance = candidate, distance
    return best


def _edit_distance(a: str, b: str) -> int:
    """Letters to change, insert or delete, or neighbours to swap, to turn ``a`` into ``b``."""
    previous: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        before, previous, row = previous, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], before[j - 2] + 1)
    return row[len(b)]


def _differing_parts(a: str, b: str) -> tuple[str, str]:
    """``a`` and ``b`` without the separator-bounded prefix and suffix they share."""
    shortest = min(len(a), len(b))
    start = 0
    i = 0
    while i < shortest and a[i] == b[i]:
        if a[i] in _SEPARATORS:
            start = i + 1
        i += 1
    end = 0
    j = 0
    while j < shortest - start and a[-1 - j] == b[-1 - j]:
        if a[-1 - j] in _SEPARATORS:
            end = j + 1
        j += 1
    return a[start : len(a) - end], b[start : len(b) - end]


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = _closest(name, candidates)
    return f" (did you mean {close!r}?)" if close is not None else ""


# --- the TOML files ---

SITE_CONFIG = "/etc/scoop/scoop.toml"
"""The site file, unless ``SCOOP_SITE_CONFIG`` names another."""

_SWITCHES = ("SCOOP_CONFIG", "SCOOP_SITE_CONFIG", "SCOOP_USER_CONFIG")
"""Variables that choose files rather than set a key."""


class _Problem(NamedTuple):
    line: int  # in its file, to list a file's problems in order; 0 outside files
    message: str


@dataclass(frozen=True)
class _TomlFile:
    """The scoop table of one TOML file, with what is needed to point at its lines."""

    display: str  # the path as the user knows it: as given, or relative to cwd
    root: tuple[str, ...]  # ("scoop",) or ("tool", "scoop")
    table: dict[str, Any]
    lines: dict[tuple[str, ...], int]

    def line(self, keys: tuple[str, ...]) -> int:
        """The line of ``keys`` under the root, or of its nearest table; 0 if none."""
        path = self.root + keys
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0

    def where(self, keys: tuple[str, ...]) -> str:
        """``"scoop.toml:7"`` for the line of ``keys`` under the root, or its nearest table."""
        line = self.line(keys)
        return f"{self.display}:{line}" if line else self.display

    def label(self, keys: tuple[str, ...]) -> str:
        return ".".join(self.root + keys)


def _config_files(
    base: Path,
    config_file: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    *,
    own_environ: bool,
) -> list[tuple[Path, str] | str]:
    """The files to read, lowest priority first, each with the name to show for it.

    A site or user file that is not there is skipped; a file named by
    ``config_file`` or a variable must be there: in its place, the message
    saying it is not.
    """
    files: list[tuple[Path, str] | str | None] = []
    if env.get("SCOOP_SITE_CONFIG"):
        files.append(_named_file(base, env["SCOOP_SITE_CONFIG"], "SCOOP_SITE_CONFIG"))
    elif Path(SITE_CONFIG).is_file():
        files.append((Path(SITE_CONFIG), SITE_CONFIG))
    if env.get("SCOOP_USER_CONFIG"):
        files.append(_named_file(base, env["SCOOP_USER_CONFIG"], "SCOOP_USER_CONFIG"))
    else:
        user = _user_file(env, own_environ)
        if user is not None and user.is_file():
            files.append((user, str(user)))
    if config_file is not None:
        files.append(_named_file(base, config_file, None))
    elif env.get("SCOOP_CONFIG"):
        files.append(_named_file(base, env["SCOOP_CONFIG"], "SCOOP_CONFIG"))
    elif (base / "scoop.toml").is_file():
        logger.debug("configuration from %s (pyproject.toml not read)", base / "scoop.toml")
        files.append((base / "scoop.toml", "scoop.toml"))
    elif (base / "pyproject.toml").is_file():
        logger.debug("configuration from [tool.scoop] of %s", base / "pyproject.toml")
        files.append((base / "pyproject.toml", "pyproject.toml"))
    return [f for f in files if f is not None]


def _named_file(
    base: Path, given: str | os.PathLike[str], variable: str | None
) -> tuple[Path, str] | str | None:
    """The file the user named (with ``--config`` if ``variable`` is None), the
    message saying it is not there, or None for /dev/null: no file."""
    display = os.fspath(given)
    if display == os.devnull:
        return None
    path = base / given
    if path.is_file():
        return path, display
    if variable is None:
        return (
            f"{display}: config file not found (looked for {path}); give the path of an "
            f"existing file, or {os.devnull} to read no project file"
        )
    return (
        f"{variable}={display}: config file not found (looked for {path}); point "
        f"{variable} at an existing file, set it to {os.devnull} to read none, or unset it"
    )


def _user_file(env: Mapping[str, str], own_environ: bool) -> Path | None:
    """``$XDG_CONFIG_HOME/scoop/scoop.toml``, or ``~/.config/scoop/scoop.toml``.

    The XDG base directory specification says to ignore an XDG_CONFIG_HOME that
    is empty or relative. Without HOME, this process's home directory is asked
    for only when ``env`` is this process's environment: an environment given
    without HOME has no user file.
    """
    xdg = env.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg, "scoop", "scoop.toml")
    home = env.get("HOME", "")
    if not home and own_environ:
        home = os.path.expanduser("~")
    if not os.path.isabs(home):
        return None
    return Path(home, ".config", "scoop", "scoop.toml")


def _read_file(path: Path, display: str, problems: list[_Problem]) -> _TomlFile | None:
    """The scoop table of the file at ``path``, or None if it has none to read."""
    root = ("tool", "scoop") if path.name == "pyproject.toml" else ("scoop",)
    try:
        # utf-8-sig: editors on Windows write a byte-order mark tomllib rejects.
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(_Problem(0, f"{display}: cannot read config file: {exc}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_Problem(0, _decode_error(text, display, root, exc)))
        return None
    outside = _TomlFile(display, (), {}, _key_lines(text))
    table: Any = data
    for part in root:
        table = table.get(part, {}) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        message = f"{'.'.join(root)} must be a table ([{'.'.join(root)}])"
        problems.append(_Problem(outside.line(root), f"{outside.where(root)}: {message}"))
        return None
    if root == ("scoop",):
        # The whole file is ours: a key outside [scoop] is a mistake, not someone else's.
        for key in data:
            if key != "scoop":
                problems.append(
                    _Problem(
                        outside.line((key,)),
                        f"{outside.where((key,))}: unknown top-level key {key!r}; "
                        "settings live in the [scoop] table",
                    )
                )
    return _TomlFile(display, root, table, outside.lines)


def _decode_error(text: str, display: str, root: tuple[str, ...], exc: Exception) -> str:
    """The message for a file tomllib cannot parse, with the line tomllib found."""
    match = re.search(r"at line (\d+)", str(exc))
    line = int(match.group(1)) if match else None
    generic = f"{display}{f':{line}' if line else ''}: invalid TOML: {exc}"
    entries = _scan_toml(text)
    for kind in PLUGIN_KINDS:
        # `transport = "redis"` beside `[scoop.transport.redis]`: TOML cannot make
        # `transport` both a string and a table, and tomllib only says "Cannot
        # overwrite a value", so say what to write instead.
        path = (*root, kind)
        assigned = next((e for e in entries if e.path == path and not e.is_table), None)
        nested = next(
            (
                e
                for e in entries
                if e is not assigned
                and e.path[: len(path)] == path
                and (e.is_table or len(e.path) > len(path))
            ),
            None,
        )
        if assigned is None or nested is None or line != max(assigned.line, nested.line):
            continue
        name = _assigned_name(text, assigned.line) or "<name>"
        table = ".".join(path)
        shown = f"[{'.'.join(nested.path)}]" if nested.is_table else ".".join(nested.path)
        return (
            f"{display}:{line}: {kind!r} is set as a value on line {assigned.line} and used "
            f"as a table ({shown}) on line {nested.line}; TOML cannot have both. "
            f"To select the plugin and configure it, put the name inside the table:\n"
            f'    [{table}]\n    name = "{name}"\n\n    [{table}.{name}]\n    ...'
        )
    return generic


def _assigned_name(text: str, line: int) -> str | None:
    """The plugin name in ``transport = "redis"`` on ``line``, if that line is that simple."""
    statement = text.splitlines()[line - 1]
    try:
        value = tomllib.loads("v =" + statement.split("=", 1)[1]).get("v")
    except (IndexError, tomllib.TOMLDecodeError):
        return None
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) else None


# --- locating keys in TOML text ---


class _Entry(NamedTuple):
    path: tuple[str, ...]
    line: int
    is_table: bool  # a [header] (or the implicit table of a dotted key), not a key = value


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table and key path in TOML ``text`` to the (1-based) line defining it.

    ``[scoop]`` / ``workers = 4`` on lines 1-2 gives ``{("scoop",): 1,
    ("scoop", "workers"): 2}``. The first definition wins; keys inside inline
    tables are not listed (callers fall back to the enclosing key's line).
    """
    lines: dict[tuple[str, ...], int] = {}
    for entry in _scan_toml(text):
        lines.setdefault(entry.path, entry.line)
    return lines


def _scan_toml(text: str) -> list[_Entry]:
    """The tables and keys of ``text`` in order, with their lines.

    Good enough for valid TOML, which is all it is used on (besides naming a
    conflict after tomllib failed): it reads headers and keys exactly (bare,
    quoted, dotted) and skips values, including multi-line strings and arrays,
    without interpreting them, so ``x = 1`` inside a string is not a key.
    """
    entries: list[_Entry] = []
    table: tuple[str, ...] = ()
    i, n, line = 0, len(text), 1
    while i < n:
        char = text[i]
        if char in " \t\r":
            i += 1
        elif char == "\n":
            line += 1
            i += 1
        elif char == "#":
            i = _end_of_line(text, i)
        elif char == "[":
            i += 2 if text.startswith("[[", i) else 1
            keys, i = _read_key(text, i)
            if keys:
                table = tuple(keys)
                entries.append(_Entry(table, line, True))
            i = _end_of_line(text, i)
        else:
            keys, i = _read_key(text, i)
            while i < n and text[i] in " \t":
                i += 1
            if not keys or i >= n or text[i] != "=":
                i = _end_of_line(text, i)
                continue
            for depth in range(1, len(keys)):
                entries.append(_Entry(table + tuple(keys[:depth]), line, True))
            entries.append(_Entry(table + tuple(keys), line, False))
            i, line = _skip_value(text, i + 1, line)
    return entries


def _end_of_line(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _read_key(text: str, i: int) -> tuple[list[str], int]:
    """Read a (dotted) key at ``i``; return its parts and the index after it."""
    parts: list[str] = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return parts, i
        if text[i] in "\"'":
            quote = text[i]
            j = i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if quote == '"' and text[j] == "\\" else 1
            # tomllib decodes the escapes, so "caf\u00e9" and "café" are one key.
            try:
                parts.append(tomllib.loads("k = " + text[i : j + 1])["k"])
            except tomllib.TOMLDecodeError:
                return parts, j
            i = j + 1
        else:
            match = _BARE_KEY.match(text, i)
            if match is None:
                return parts, i
            parts.append(match.group())
            i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != ".":
            return parts, i
        i += 1


def _skip_value(text: str, i: int, line: int) -> tuple[int, int]:
    """Skip the value starting at ``i``; return the index of the newline ending it, and the line."""
    depth = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\n":
            if depth == 0:
                return i, line
            line += 1
            i += 1
        elif char == "#":
            i = _end_of_line(text, i)
        elif text.startswith('"""', i) or text.startswith("'''", i):
            end = _multiline_end(text, i)
            line += text.count("\n", i, end)
            i = end
        elif char in "\"'":
            j = i + 1
            while j < n and text[j] != char and text[j] != "\n":
                j += 2 if char == '"' and text[j] == "\\" else 1
            i = j + 1 if j < n and text[j] == char else j
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            i += 1
    return i, line


def _multiline_end(text: str, i: int) -> int:
    """The index after the multi-line string opening at ``i``."""
    delimiter = text[i : i + 3]
    j = i + 3
    n = len(text)
    while j < n:
        if delimiter == '"""' and text[j] == "\\":
            j += 2
        elif text.startswith(delimiter, j):
            # Up to two quotes may end the content just before the delimiter: """a""""".
            end = j + 3
            while end < n and end < j + 5 and text[end] == delimiter[0]:
                end += 1
            return end
        else:
            j += 1
    return n


# --- the layers: each gives {dotted key: (value, source)} ---

_Layer = dict[str, tuple[Any, str]]


def _file_layer(source: _TomlFile, schema: _Schema, problems: list[_Problem]) -> _Layer:
    layer: _Layer = {}

    def set_value(keys: tuple[str, ...], key: str, value: Any) -> None:
        try:
            layer[key] = (
                _convert(key, schema.settings[key], value, text=False),
                source.where(keys),
            )
        except _BadValue as exc:
            problems.append(
                _Problem(
                    source.line(keys),
                    f"{source.where(keys)}: {source.label(keys)} must be {exc.expected}, "
                    f"got {value!r} ({type(value).__name__})",
                )
            )

    def walk(table: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for name, value in table.items():
            keys = (*path, name)
            key = ".".join(keys)
            if not path and name in PLUGIN_KINDS and isinstance(value, dict):
                # [scoop.transport] with `name = "redis"` beside [scoop.transport.redis].
                if "name" in value:
                    set_value((*keys, "name"), key, value["name"])
                walk({k: v for k, v in value.items() if k != "name"}, keys)
            elif key in schema.settings:
                set_value(keys, key, value)
            elif isinstance(value, dict) and (not schema.plugins or schema.is_table(keys)):
                # In the first pass any table may belong to a plugin not loaded yet.
                if schema.plugins:
                    walk(value, keys)
            else:
                problems.append(
                    _Problem(source.line(keys), _unknown(source, path, name, value, schema))
                )

    walk(source.table, ())
    return layer


def _unknown(
    source: _TomlFile, path: tuple[str, ...], name: str, value: Any, schema: _Schema
) -> str:
    where = source.where((*path, name))
    table = f"[{source.label(path)}]"
    valid = schema.children(path)
    # A table is suggested for a table and a key for a key, but `transport` is both.
    tables = [c for c in valid if schema.is_table((*path, c)) or (c in PLUGIN_KINDS and not path)]
    if isinstance(value, dict):
        sections = sorted(f"[{source.label(tuple(s.split('.')))}]" for s in schema.sections or ())
        return (
            f"{where}: unknown section [{source.label((*path, name))}]"
            f"{_did_you_mean(name, tables)}: no loaded plugin declares settings there "
            f"(is the plugin installed and not disabled?); known sections: "
            f"{', '.join(sections) or 'none'}"
        )
    return (
        f"{where}: unknown key {name!r} in {table}"
        f"{_did_you_mean(name, [c for c in valid if c not in tables or c in PLUGIN_KINDS])}; "
        f"valid keys: {', '.join(valid) or 'none'}"
    )


NOT_SETTINGS = frozenset({"SCOOP_RUN_KEY", *_SWITCHES})
"""``SCOOP_`` variables that are not settings: the run's key, kept out of
every configuration layer so that it is never shown with them, and the
variables that name configuration files."""

_DOCS = "docs/configuration.md"


def _env_layer(environ: Mapping[str, str], schema: _Schema, problems: list[str]) -> _Layer:
    layer: _Layer = {}
    # Variables starting with _SCOOP_ (internal, for workers) never get here.
    for var in sorted(v for v in environ if v.startswith(_ENV_PREFIX)):
        if var in NOT_SETTINGS:
            continue
        key = schema.env.get(var)
        if key is None:
            # In the first pass the variable may belong to a plugin not loaded yet.
            if schema.plugins:
                close = _closest(var, schema.env)
                logger.warning(
                    "ignoring environment variable %s: it matches no setting (%s)",
                    var,
                    f"did you mean {close}?"
                    if close is not None
                    else f"the variables are listed in {_DOCS}",
                )
            continue
        raw = environ[var]
        try:
            layer[key] = (_convert(key, schema.settings[key], raw, text=True), var)
        except _BadValue as exc:
            problems.append(
                f"environment variable {var}: {key} must be {exc.expected}, got {raw!r}"
            )
    return layer


def _cli_layer(cli: Mapping[str, Any], schema: _Schema, problems: list[str]) -> _Layer:
    layer: _Layer = {}
    for key, value in cli.items():
        if value is None:
            continue
        setting = schema.settings.get(key)
        if setting is None:
            if not schema.plugins and "." in key:
                continue
            close = _closest(key, schema.settings)
            hint = (
                f" (did you mean {close!r}?)"
                if close is not None
                else f"; the settings are listed in {_DOCS}"
            )
            problems.append(f"{_CLI_SOURCE}: unknown setting {key!r}{hint}")
            continue
        try:
            layer[key] = (_convert(key, setting, value, text=True), _CLI_SOURCE)
        except _BadValue as exc:
            problems.append(
                f"{_CLI_SOURCE}: {key} must be {exc.expected}, "
                f"got {value!r} ({type(value).__name__})"
            )
    return layer
