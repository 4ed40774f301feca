"""Tests of scoop_core.config: real files in a temporary directory, explicit environments."""

from __future__ import annotations

import json
import logging
import pickle
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoop_core.config import CORE_SETTINGS, Config, _key_lines, load_config
from scoop_core.errors import ConfigError
from scoop_core.plugins.types import Setting

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

PLUGINS = {
    "transport.zmq": (
        Setting("interface", str, "*", "Interface to bind."),
        Setting("port", int, 0, "Port to bind; 0 picks a free one."),
        Setting("ipv6", bool, False),
    ),
    "transport.redis": (
        Setting("url", str, "redis://localhost:6379/0"),
        Setting("block_ms", float, 100.0),
        Setting("hosts", list, []),
    ),
}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, **kwargs: Any) -> Config:
    """load_config in tmp_path with an empty environment unless one is given."""
    kwargs.setdefault("environ", {})
    return load_config(cwd=tmp_path, **kwargs)


def config_error(tmp_path: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **kwargs)
    return str(info.value)


# --- defaults and precedence ---


def test_defaults_when_nothing_is_given(tmp_path: Path) -> None:
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert config["transport"] == "zmq"
    assert config["serializer"] == "cloudpickle"
    assert config["launcher"] == "local"
    assert config["workers"] is None
    assert config["log_level"] == "WARNING"
    assert config["disable_plugins"] == []
    assert config["heartbeat_interval"] == 5.0
    assert config["max_message_size"] == 256 << 20
    assert config["prefetch"] == 2
    assert config.section("transport.zmq") == {"interface": "*", "port": 0, "ipv6": False}
    assert set(config.values) == set(config.sources)
    assert set(config.sources.values()) == {"default"}
    assert {s.name for s in CORE_SETTINGS} | {
        "transport.zmq.interface",
        "transport.zmq.port",
        "transport.zmq.ipv6",
        "transport.redis.url",
        "transport.redis.block_ms",
        "transport.redis.hosts",
    } == set(config.values)


def test_each_layer_overrides_the_one_before_for_a_core_key(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\n\nworkers = 2\n")
    config = load(tmp_path)
    assert (config["workers"], config.sources["workers"]) == (2, "scoop.toml:3")

    config = load(tmp_path, environ={"SCOOP_WORKERS": "3"})
    assert (config["workers"], config.sources["workers"]) == (3, "SCOOP_WORKERS")

    config = load(tmp_path, environ={"SCOOP_WORKERS": "3"}, cli={"workers": 4})
    assert (config["workers"], config.sources["workers"]) == (4, "command line")


def test_each_layer_overrides_the_one_before_for_a_plugin_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        "scoop.toml",
        """
        [scoop]
        workers = 2

        [scoop.transport.zmq]
        port = 5000
        """,
    )
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert config["transport.zmq.port"] == 5000
    assert config.sources["transport.zmq.port"] == "scoop.toml:5"

    environ = {"SCOOP_TRANSPORT_ZMQ_PORT": "5001"}
    config = load(tmp_path, plugin_settings=PLUGINS, environ=environ)
    assert config["transport.zmq.port"] == 5001
    assert config.sources["transport.zmq.port"] == "SCOOP_TRANSPORT_ZMQ_PORT"

    config = load(
        tmp_path, plugin_settings=PLUGINS, environ=environ, cli={"transport.zmq.port": 5002}
    )
    assert config["transport.zmq.port"] == 5002
    assert config.sources["transport.zmq.port"] == "command line"
    assert config.section("transport.zmq")["port"] == 5002


def test_command_line_none_means_the_flag_was_not_given(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nworkers = 2\n")
    config = load(tmp_path, cli={"workers": None, "nice": 5})
    assert config["workers"] == 2
    assert config["nice"] == 5


def test_environment_and_command_line_strings_are_read_as_the_key_type(tmp_path: Path) -> None:
    environ = {
        "SCOOP_DISABLE_PLUGINS": "a, b,",
        "SCOOP_TRANSPORT": "Redis",
        "SCOOP_HEARTBEAT_INTERVAL": "2",
        "SCOOP_TRANSPORT_ZMQ_IPV6": "Yes",
        "SCOOP_TRANSPORT_REDIS_HOSTS": "",
    }
    config = load(tmp_path, plugin_settings=PLUGINS, environ=environ, cli={"pythonpath": "/x,/y"})
    assert config["disable_plugins"] == ["a", "b"]
    assert config["transport"] == "redis"
    assert config["heartbeat_interval"] == 2.0
    assert config["transport.zmq.ipv6"] is True
    assert config["transport.redis.hosts"] == []
    assert config["pythonpath"] == ["/x", "/y"]


@pytest.mark.parametrize("word", ["1", "true", "YES", "on"])
def test_environment_booleans_true(tmp_path: Path, word: str) -> None:
    environ = {"SCOOP_TRANSPORT_ZMQ_IPV6": word}
    assert load(tmp_path, plugin_settings=PLUGINS, environ=environ)["transport.zmq.ipv6"] is True


@pytest.mark.parametrize("word", ["0", "false", "No", "off"])
def test_environment_booleans_false(tmp_path: Path, word: str) -> None:
    write(tmp_path, "scoop.toml", "[scoop.transport.zmq]\nipv6 = true\n")
    environ = {"SCOOP_TRANSPORT_ZMQ_IPV6": word}
    assert load(tmp_path, plugin_settings=PLUGINS, environ=environ)["transport.zmq.ipv6"] is False


# --- which file ---


def test_pyproject_tool_scoop_is_read_when_there_is_no_scoop_toml(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pyproject.toml",
        """
        [project]
        name = "mine"

        [tool.scoop]
        workers = 6
        """,
    )
    config = load(tmp_path)
    assert (config["workers"], config.sources["workers"]) == (6, "pyproject.toml:5")


def test_pyproject_without_tool_scoop_gives_defaults(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "mine"\n[tool.ruff]\nline-length = 9\n')
    assert load(tmp_path, plugin_settings=PLUGINS).sources["workers"] == "default"


def test_scoop_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nworkers = 2\n")
    write(tmp_path, "pyproject.toml", "[tool.scoop]\nworkers = 6\nnice = 3\n")
    config = load(tmp_path)
    assert (config["workers"], config.sources["workers"]) == (2, "scoop.toml:2")
    # pyproject.toml is not merged in: scoop.toml replaces it entirely.
    assert config["nice"] is None


def test_config_file_is_used_exclusively(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nworkers = 2\nnice = 1\n")
    write(tmp_path, "pyproject.toml", "[tool.scoop]\nworkers = 6\n")
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "cluster.toml", "[scoop]\nworkers = 64\n")
    config = load(tmp_path, config_file="conf/cluster.toml")
    assert (config["workers"], config.sources["workers"]) == (64, "conf/cluster.toml:2")
    assert config["nice"] is None


def test_config_file_named_pyproject_uses_tool_scoop(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    path = write(tmp_path / "other", "pyproject.toml", "[tool.scoop]\nworkers = 7\n")
    config = load(tmp_path, config_file=path)
    assert (config["workers"], config.sources["workers"]) == (7, f"{path}:2")


def test_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nworkers = 2\n")
    message = config_error(tmp_path, config_file="nowhere.toml")
    assert "nowhere.toml" in message
    assert "not found" in message


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nworkers = 2\nnice 3\n")
    message = config_error(tmp_path)
    assert message.startswith("scoop.toml:3: invalid TOML")
    assert "line 3" in message


def test_key_outside_the_scoop_table_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "workers = 2\n[scoop]\nnice = 1\n")
    message = config_error(tmp_path)
    assert message.startswith("scoop.toml:1: ")
    assert "'workers'" in message and "[scoop]" in message


# --- selecting a plugin: a string, or a table with `name` ---


def test_plugin_selected_by_string(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", '[scoop]\nworkers = 2\ntransport = "redis"\n')
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert (config["transport"], config.sources["transport"]) == ("redis", "scoop.toml:3")


def test_plugin_selected_by_table_with_name_beside_its_settings(tmp_path: Path) -> None:
    write(
        tmp_path,
        "scoop.toml",
        """
        [scoop]
        workers = 2

        [scoop.transport]
        name = "Redis"

        [scoop.transport.redis]
        url = "redis://db:6379/1"
        """,
    )
    for plugin_settings in (None, PLUGINS):
        config = load(tmp_path, plugin_settings=plugin_settings)
        assert (config["transport"], config.sources["transport"]) == ("redis", "scoop.toml:5")
    assert config.section("transport.redis")["url"] == "redis://db:6379/1"
    assert config.sources["transport.redis.url"] == "scoop.toml:8"


def test_plugin_selected_by_inline_table(tmp_path: Path) -> None:
    write(
        tmp_path, "scoop.toml", '[scoop]\ntransport = { name = "redis", redis = { url = "u" } }\n'
    )
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert config["transport"] == "redis"
    assert config["transport.redis.url"] == "u"
    assert config.sources["transport"] == "scoop.toml:2"


def test_plugin_configured_without_being_selected_keeps_the_default(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop.transport.zmq]\nport = 5555\n")
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert (config["transport"], config.sources["transport"]) == ("zmq", "default")
    assert config["transport.zmq.port"] == 5555


@pytest.mark.parametrize(
    "text, line",
    [
        ('[scoop]\ntransport = "redis"\n\n[scoop.transport.redis]\nurl = "u"\n', 4),
        ('[scoop.transport.redis]\nurl = "u"\n[scoop]\ntransport = "redis"\n', 4),
        ('[scoop]\ntransport = "redis"\ntransport.redis.url = "u"\n', 3),
        ('[scoop]\ntransport = "redis"\n[scoop.transport]\nname = "redis"\n', 3),
    ],
)
def test_selection_both_as_string_and_table_is_a_clear_error(
    tmp_path: Path, text: str, line: int
) -> None:
    write(tmp_path, "scoop.toml", text)
    message = config_error(tmp_path, plugin_settings=PLUGINS)
    assert message.startswith(f"scoop.toml:{line}: 'transport' is set as a value")
    assert '[scoop.transport]\n    name = "redis"' in message


def test_first_pass_ignores_plugin_tables_and_keys(tmp_path: Path) -> None:
    write(
        tmp_path,
        "scoop.toml",
        """
        [scoop]
        disable_plugins = ["redis"]

        [scoop.transport.unheard-of]
        anything = 1

        [scoop.someplugin]
        x = 2
        """,
    )
    config = load(
        tmp_path,
        environ={"SCOOP_TRANSPORT_UNHEARD_OF_ANYTHING": "3"},
        cli={"transport.unheard-of.anything": 4},
    )
    assert config["disable_plugins"] == ["redis"]
    assert set(config.values) == {s.name for s in CORE_SETTINGS}
    # The second pass, knowing the plugins, rejects the tables nobody declared.
    message = config_error(tmp_path, plugin_settings=PLUGINS)
    assert message.splitlines()[1:] == [
        "  scoop.toml:4: unknown section [scoop.transport.unheard-of]: no loaded plugin "
        "declares settings there (is the plugin installed and not disabled?); "
        "known sections: [scoop.transport.redis], [scoop.transport.zmq]",
        "  scoop.toml:7: unknown section [scoop.someplugin]: no loaded plugin declares "
        "settings there (is the plugin installed and not disabled?); "
        "known sections: [scoop.transport.redis], [scoop.transport.zmq]",
    ]


# --- error messages: key, file:line, expected type, value found ---


@pytest.mark.parametrize(
    "name, text, expected",
    [
        (
            "scoop.toml",
            '[scoop]\n# workers\n\nworkers = "four"\n',
            "scoop.toml:4: scoop.workers must be an integer, got 'four' (str)",
        ),
        (
            "scoop.toml",
            "[scoop]\nworkers = true\n",
            "scoop.toml:2: scoop.workers must be an integer, got True (bool)",
        ),
        (
            "scoop.toml",
            "[scoop]\nworkers = 0\n",
            "scoop.toml:2: scoop.workers must be at least 1, got 0 (int)",
        ),
        (
            "scoop.toml",
            '[scoop]\nheartbeat_interval = "5s"\n',
            "scoop.toml:2: scoop.heartbeat_interval must be a number, got '5s' (str)",
        ),
        (
            "scoop.toml",
            "[scoop]\ndisable_plugins = [1, 2]\n",
            "scoop.toml:2: scoop.disable_plugins must be a list of strings, got [1, 2] (list)",
        ),
        (
            "scoop.toml",
            '[scoop]\nlog_level = "loud"\n',
            "scoop.toml:2: scoop.log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud' (str)",
        ),
        (
            "scoop.toml",
            "[scoop.transport]\nname = 3\n",
            "scoop.toml:2: scoop.transport.name must be a string, got 3 (int)",
        ),
        (
            "scoop.toml",
            '[scoop]\nnice = 1\n[scoop.transport.zmq]\ninterface = "lo"\nport = "high"\n',
            "scoop.toml:5: scoop.transport.zmq.port must be an integer, got 'high' (str)",
        ),
        (
            "pyproject.toml",
            '[project]\nname = "x"\n[tool.scoop]\nprefetch = 1.5\n',
            "pyproject.toml:4: tool.scoop.prefetch must be an integer, got 1.5 (float)",
        ),
    ],
)
def test_wrong_type_names_key_file_line_expected_and_found(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    write(tmp_path, name, text)
    assert config_error(tmp_path, plugin_settings=PLUGINS) == expected


def test_types_are_strict_but_ints_are_numbers_and_log_level_any_case(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", '[scoop]\nheartbeat_timeout = 60\nlog_level = "debug"\n')
    config = load(tmp_path)
    assert config["heartbeat_timeout"] == 60.0
    assert isinstance(config["heartbeat_timeout"], float)
    assert config["log_level"] == "DEBUG"


@pytest.mark.parametrize(
    "name, text, start, suggestion",
    [
        (
            "scoop.toml",
            "[scoop]\nworkers = 2\n\nwrokers = 4\n",
            "scoop.toml:4: unknown key 'wrokers' in [scoop]",
            "workers",
        ),
        (
            "scoop.toml",
            "[scoop.transport.zmq]\nprot = 1\n",
            "scoop.toml:2: unknown key 'prot' in [scoop.transport.zmq]",
            "port",
        ),
        (
            "scoop.toml",
            '[scoop.transport]\nnmae = "zmq"\n',
            "scoop.toml:2: unknown key 'nmae' in [scoop.transport]",
            "name",
        ),
        (
            "pyproject.toml",
            "[tool.scoop]\nprefech = 1\n",
            "pyproject.toml:2: unknown key 'prefech' in [tool.scoop]",
            "prefetch",
        ),
        (
            "scoop.toml",
            "[scoop]\nnice = 1\n\n[scoop.transport.zqm]\nport = 1\n",
            "scoop.toml:4: unknown section [scoop.transport.zqm]",
            "zmq",
        ),
    ],
)
def test_unknown_key_names_key_file_line_and_the_closest(
    tmp_path: Path, name: str, text: str, start: str, suggestion: str
) -> None:
    write(tmp_path, name, text)
    message = config_error(tmp_path, plugin_settings=PLUGINS)
    assert message.startswith(start)
    assert f"did you mean {suggestion!r}?" in message


def test_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", "[scoop]\nwrokers = 4\n")
    message = config_error(tmp_path)
    valid = message.split("valid keys: ", 1)[1].split(", ")
    assert set(valid) == {s.name for s in CORE_SETTINGS}


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("SCOOP_WORKERS", "four", "an integer"),
        ("SCOOP_HEARTBEAT_TIMEOUT", "soon", "a number"),
        ("SCOOP_TRANSPORT_ZMQ_IPV6", "maybe", "a boolean (1/0, true/false, yes/no, on/off)"),
        ("SCOOP_TRANSPORT_ZMQ_PORT", "", "an integer"),
        ("SCOOP_LOG_LEVEL", "chatty", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_environment_type_error_names_variable_and_expected_type(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    message = config_error(tmp_path, plugin_settings=PLUGINS, environ={variable: value})
    assert message.startswith(f"environment variable {variable}: ")
    assert f"must be {expected}, got {value!r}" in message


def test_command_line_errors(tmp_path: Path) -> None:
    message = config_error(tmp_path, cli={"workers": "many"})
    assert message == "command line: workers must be an integer, got 'many' (str)"
    message = config_error(tmp_path, plugin_settings=PLUGINS, cli={"transport.zmq.prot": 1})
    assert message.startswith("command line: unknown setting 'transport.zmq.prot'")
    assert "did you mean 'transport.zmq.port'?" in message


def test_unknown_scoop_variable_warns_with_the_closest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoop.config")
    config = load(tmp_path, plugin_settings=PLUGINS, environ={"SCOOP_WROKERS": "4"})
    assert config["workers"] is None
    [record] = caplog.records
    assert record.name == "scoop.config"
    assert record.levelno == logging.WARNING
    assert "SCOOP_WROKERS" in record.getMessage()
    assert "SCOOP_WORKERS" in record.getMessage()


def test_internal_and_foreign_variables_are_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="scoop.config")
    environ = {"_SCOOP_RUN_KEY": "secret", "_SCOOP_WORKERS": "x", "PATH": "/bin", "SCOOPY": "1"}
    config = load(tmp_path, plugin_settings=PLUGINS, environ=environ)
    assert config["workers"] is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_first_pass_does_not_warn_about_plugin_variables(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoop.config")
    load(tmp_path, environ={"SCOOP_TRANSPORT_ZMQ_PORT": "5555"})
    assert not caplog.records


def test_plugin_declarations_that_cannot_be_told_apart_are_refused(tmp_path: Path) -> None:
    clash = {
        "transport.zmq": (Setting("tls_cert", str),),
        "transport.zmq.tls": (Setting("cert", str),),
    }
    assert "SCOOP_TRANSPORT_ZMQ_TLS_CERT" in config_error(tmp_path, plugin_settings=clash)
    assert "'workers'" in config_error(tmp_path, plugin_settings={"workers": (Setting("x", int),)})


# --- the Config object ---


def test_config_pickles_and_is_json_friendly(tmp_path: Path) -> None:
    write(tmp_path, "scoop.toml", '[scoop]\ndisable_plugins = ["a"]\n')
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert pickle.loads(pickle.dumps(config)) == config
    decoded = json.loads(json.dumps({"values": config.values, "sources": config.sources}))
    assert decoded == {"values": dict(config.values), "sources": dict(config.sources)}


def test_config_access(tmp_path: Path) -> None:
    config = load(tmp_path, plugin_settings=PLUGINS)
    assert config.get("transport.zmq.port") == 0
    assert config.get("nope", "fallback") == "fallback"
    assert config.section("transport.redis") == {
        "url": "redis://localhost:6379/0",
        "block_ms": 100.0,
        "hosts": [],
    }
    assert config.section("launcher.none") == {}
    with pytest.raises(KeyError, match="did you mean 'workers'"):
        config["worker"]


def test_defaults_are_not_shared_between_configs(tmp_path: Path) -> None:
    first = load(tmp_path)
    first["disable_plugins"].append("x")
    assert load(tmp_path)["disable_plugins"] == []


# --- the line-locating helper ---


def test_key_lines_on_a_tricky_document() -> None:
    text = textwrap.dedent(
        '''
        # [scoop] in a comment
        [ scoop ]   # a header with spaces
        banner = """
        workers = 99
        [scoop.fake]
        """
        hosts = [
          "a",  # workers = 1
          "b",
        ]
        "quoted key" = 'x # y'
        transport.name = "zmq"
        workers = 4

        [[scoop.list]]
        item = 1
        '''
    ).lstrip("\n")
    lines = _key_lines(text)
    assert lines[("scoop",)] == 2
    assert lines[("scoop", "banner")] == 3
    assert lines[("scoop", "hosts")] == 7
    assert lines[("scoop", "quoted key")] == 11
    assert lines[("scoop", "transport")] == 12
    assert lines[("scoop", "transport", "name")] == 12
    assert lines[("scoop", "workers")] == 13
    assert lines[("scoop", "list", "item")] == 16
    assert ("scoop", "fake") not in lines


KEY_CHARS = st.sampled_from(list("abcXYZ019_-") + [" ", ".", "=", "#", "[", "'", '"', "é", "\\"])
KEYS = st.text(KEY_CHARS, min_size=1, max_size=8)
SAFE_TEXT = st.text(st.sampled_from(list("ab =#[]{}.,'\"\\é\t")), max_size=12)


def render_key(key: str, literal: bool) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    if literal and "'" not in key:
        return f"'{key}'"
    return json.dumps(key, ensure_ascii=False)


@st.composite
def values(draw: st.DrawFn) -> tuple[list[str], Any]:
    """A TOML value as its rendered lines (it may span several) and its Python value."""
    kind = draw(st.sampled_from(["int", "str", "literal", "multiline", "array", "inline"]))
    if kind == "int":
        number = draw(st.integers(-(10**6), 10**6))
        return [str(number)], number
    if kind == "str":
        string = draw(SAFE_TEXT)
        return [json.dumps(string, ensure_ascii=False)], string
    if kind == "literal":
        string = draw(SAFE_TEXT.filter(lambda s: "'" not in s))
        return [f"'{string}'"], string
    if kind == "multiline":
        # Lines that look like keys and headers, inside a string: not keys.
        body = draw(
            st.lists(st.sampled_from(["x = 1", "[scoop]", "  y.z = 'q'", "", "#"]), max_size=3)
        )
        return ['"""', *body, '"""'], "\n".join(body) + ("\n" if body else "")
    if kind == "array":
        items = draw(st.lists(SAFE_TEXT, max_size=3))
        rendered = [f"  {json.dumps(i, ensure_ascii=False)},  # k = v" for i in items]
        return ["[", *rendered, "]"], items
    inner = draw(st.dictionaries(KEYS, st.integers(0, 9), max_size=2))
    pairs = ", ".join(f"{render_key(k, False)} = {v}" for k, v in inner.items())
    return ["{ " + pairs + " }"], inner


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str, ...], int], dict[str, Any]]:
    """A TOML document, the line of each table and key in it, and what tomllib should read."""
    out: list[str] = []
    expected: dict[tuple[str, ...], int] = {}
    data: dict[str, Any] = {}
    table_names = draw(st.lists(KEYS, min_size=1, max_size=3, unique=True))
    for table_name in table_names:
        path = ("scoop", table_name)
        out.append(draw(st.sampled_from(["", "# a comment", "   "])))
        spaced = draw(st.booleans())
        header = f"[{'scoop' if not spaced else ' scoop '}.{render_key(table_name, draw(st.booleans()))}]"
        out.append(header + draw(st.sampled_from(["", "  # [x]"])))
        expected[path] = len(out)
        table = data.setdefault("scoop", {}).setdefault(table_name, {})
        for key in draw(st.lists(KEYS, max_size=4, unique=True)):
            lines, value = draw(values())
            out.append(f"{render_key(key, draw(st.booleans()))} = {lines[0]}")
            expected[(*path, key)] = len(out)
            out.extend(lines[1:])
            table[key] = value
    return "\n".join(out) + "\n", expected, data


@settings(max_examples=200, deadline=None)
@given(documents())
def test_key_lines_finds_the_line_of_every_key(
    document: tuple[str, dict[tuple[str, ...], int], dict[str, Any]],
) -> None:
    text, expected, data = document
    assert tomllib.loads(text) == data  # the generator writes what it means
    lines = _key_lines(text)
    for path, line in expected.items():
        assert lines[path] == line, (path, text)


# --- the documentation ---


def test_every_core_key_is_documented_with_its_type() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    core = docs.split("## Core settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([a-z ]+) \|", core, flags=re.MULTILINE))
    type_words = {str: "string", int: "integer", float: "number", bool: "boolean"}
    type_words[list] = "list of strings"
    assert rows == {s.name: type_words[s.type] for s in CORE_SETTINGS}
