"""Tests of the configuration layers (site, user and project files), of the
report that lists every mistake, and of the "did you mean" hint: real files
in a temporary directory, explicit environments, through load_config."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scoop_core.config import CORE_SETTINGS, Config, load_config
from scoop_core.errors import ConfigError
from scoop_core.plugins.types import Setting

PLUGINS = {
    "transport.zmq": (Setting("port", int, 0), Setting("interface", str, "*")),
    "transport.redis": (Setting("url", str, "redis://127.0.0.1:6379/0"), Setting("expire", int, 0)),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


class Machine:
    """A site file, a home directory and a project directory under tmp_path,
    and the environment that points scoop at them."""

    def __init__(self, tmp_path: Path) -> None:
        self.site = tmp_path / "etc" / "scoop.toml"
        self.home = tmp_path / "home"
        self.user = self.home / ".config" / "scoop" / "scoop.toml"
        self.project = tmp_path / "project"
        self.project.mkdir()

    @property
    def environ(self) -> dict[str, str]:
        # Not /etc/scoop/scoop.toml: the test's own site file, if it wrote one.
        site = str(self.site) if self.site.exists() else os.devnull
        return {"HOME": str(self.home), "SCOOP_SITE_CONFIG": site}

    def load(self, **kwargs: Any) -> Config:
        environ = {**self.environ, **kwargs.pop("environ", {})}
        return load_config(cwd=self.project, environ=environ, **kwargs)

    def error(self, **kwargs: Any) -> str:
        with pytest.raises(ConfigError) as info:
            self.load(**kwargs)
        return str(info.value)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def setting(config: Config, key: str) -> tuple[Any, str]:
    return config[key], config.sources[key]


# --- precedence: site < user < project < SCOOP_* < command line ---


def test_each_layer_overrides_the_one_before(machine: Machine) -> None:
    write(machine.site, "[scoop]\nworkers = 1\nnice = 1\nprefetch = 1\nmax_losses = 1\n")
    write(machine.user, "[scoop]\n\nworkers = 2\nnice = 2\nprefetch = 2\n")
    write(machine.project / "scoop.toml", "[scoop]\nworkers = 3\nnice = 3\n")
    config = machine.load(environ={"SCOOP_WORKERS": "4"}, cli={"workers": None})
    assert setting(config, "max_losses") == (1, f"{machine.site}:5")
    assert setting(config, "prefetch") == (2, f"{machine.user}:5")
    assert setting(config, "nice") == (3, "scoop.toml:3")
    assert setting(config, "workers") == (4, "SCOOP_WORKERS")
    config = machine.load(environ={"SCOOP_WORKERS": "4"}, cli={"workers": 5})
    assert setting(config, "workers") == (5, "command line")


def test_layers_merge_key_by_key_inside_plugin_tables(machine: Machine) -> None:
    write(
        machine.site,
        """
        [scoop.transport]
        name = "redis"

        [scoop.transport.redis]
        url = "redis://head-node:6379/0"
        expire = 3600
        """,
    )
    write(machine.user, "[scoop]\nworkers = 8\n\n[scoop.transport.redis]\nexpire = 60\n")
    config = machine.load(plugin_settings=PLUGINS)
    assert setting(config, "transport") == ("redis", f"{machine.site}:2")
    assert setting(config, "transport.redis.url") == (
        "redis://head-node:6379/0",
        f"{machine.site}:5",
    )
    assert setting(config, "transport.redis.expire") == (60, f"{machine.user}:5")
    assert setting(config, "workers") == (8, f"{machine.user}:2")


def test_config_file_replaces_only_the_project_file(machine: Machine) -> None:
    write(machine.site, "[scoop]\nmax_losses = 5\n")
    write(machine.user, "[scoop]\nprefetch = 7\n")
    write(machine.project / "scoop.toml", "[scoop]\nnice = 3\n")
    write(machine.project / "cluster.toml", "[scoop]\nworkers = 64\n")
    config = machine.load(config_file="cluster.toml")
    assert setting(config, "workers") == (64, "cluster.toml:2")
    assert config["nice"] is None  # scoop.toml is not read
    assert setting(config, "max_losses") == (5, f"{machine.site}:2")
    assert setting(config, "prefetch") == (7, f"{machine.user}:2")


def test_scoop_config_names_the_project_file(machine: Machine) -> None:
    write(machine.user, "[scoop]\nprefetch = 7\n")
    write(machine.project / "scoop.toml", "[scoop]\nworkers = 3\n")
    write(machine.project / "conf" / "big.toml", "[scoop]\nworkers = 32\n")
    write(machine.project / "conf" / "pyproject.toml", "[tool.scoop]\nworkers = 16\n")
    config = machine.load(environ={"SCOOP_CONFIG": "conf/big.toml"})
    assert setting(config, "workers") == (32, "conf/big.toml:2")
    assert setting(config, "prefetch") == (7, f"{machine.user}:2")
    # A pyproject.toml keeps its settings in [tool.scoop], wherever it is.
    config = machine.load(environ={"SCOOP_CONFIG": "conf/pyproject.toml"})
    assert setting(config, "workers") == (16, "conf/pyproject.toml:2")
    # --config wins over SCOOP_CONFIG; an empty SCOOP_CONFIG counts as unset.
    config = machine.load(environ={"SCOOP_CONFIG": "conf/big.toml"}, config_file="scoop.toml")
    assert setting(config, "workers") == (3, "scoop.toml:2")
    assert setting(machine.load(environ={"SCOOP_CONFIG": ""}), "workers") == (3, "scoop.toml:2")


@pytest.mark.parametrize(
    "xdg, where",
    [
        (None, "home/.config"),
        ("", "home/.config"),
        ("relative/dir", "home/.config"),
        ("ABSOLUTE", "xdg"),
    ],
)
def test_the_user_file_follows_xdg_config_home(
    machine: Machine, tmp_path: Path, xdg: str | None, where: str
) -> None:
    write(tmp_path / "home" / ".config" / "scoop" / "scoop.toml", "[scoop]\nworkers = 2\n")
    write(tmp_path / "xdg" / "scoop" / "scoop.toml", "[scoop]\n\nworkers = 3\n")
    environ = (
        {} if xdg is None else {"XDG_CONFIG_HOME": xdg.replace("ABSOLUTE", str(tmp_path / "xdg"))}
    )
    config = machine.load(environ=environ)
    path = tmp_path / where / "scoop" / "scoop.toml"
    assert config.sources["workers"] == f"{path}:{2 if where.startswith('home') else 3}"


def test_missing_site_and_user_files_are_fine(machine: Machine) -> None:
    config = machine.load(plugin_settings=PLUGINS)
    assert set(config.sources.values()) == {"default"}


def test_dev_null_turns_a_layer_off(machine: Machine) -> None:
    write(machine.site, "[scoop]\nworkers = 1\n")
    write(machine.user, "[scoop]\nworkers = 2\n")
    write(machine.project / "scoop.toml", "[scoop]\nworkers = 3\n")
    off = os.devnull
    assert machine.load()["workers"] == 3
    assert machine.load(config_file=off)["workers"] == 2
    assert machine.load(environ={"SCOOP_CONFIG": off})["workers"] == 2
    assert machine.load(config_file=off, environ={"SCOOP_USER_CONFIG": off})["workers"] == 1
    environ = {"SCOOP_USER_CONFIG": off, "SCOOP_SITE_CONFIG": off}
    assert machine.load(config_file=off, environ=environ)["workers"] is None


def test_scoop_user_config_names_another_user_file(machine: Machine, tmp_path: Path) -> None:
    write(machine.user, "[scoop]\nworkers = 2\n")
    other = write(tmp_path / "elsewhere.toml", "[scoop]\nnice = 4\n")
    config = machine.load(environ={"SCOOP_USER_CONFIG": str(other)})
    assert setting(config, "nice") == (4, f"{other}:2")
    assert config["workers"] is None


@pytest.mark.parametrize("variable", ["SCOOP_CONFIG", "SCOOP_USER_CONFIG", "SCOOP_SITE_CONFIG"])
def test_a_named_file_that_is_missing_is_an_error_naming_the_variable(
    machine: Machine, variable: str
) -> None:
    message = machine.error(environ={variable: "nowhere.toml"})
    assert message == (
        f"{variable}=nowhere.toml: config file not found (looked for "
        f"{machine.project / 'nowhere.toml'}); point {variable} at an existing file, "
        f"set it to {os.devnull} to read none, or unset it"
    )


def test_file_switches_are_not_taken_for_misspelt_settings(
    machine: Machine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoop.config")
    write(machine.user, "[scoop]\nworkers = 2\n")
    machine.load(plugin_settings=PLUGINS, environ={"SCOOP_CONFIG": os.devnull})
    assert not caplog.records


# --- every mistake reported, not only the first ---


def test_every_mistake_in_a_file_is_reported_with_its_line_and_fix(machine: Machine) -> None:
    write(
        machine.project / "scoop.toml",
        """
        [scoop]
        wrokers = 4
        log_level = "info"
        nice = 1
        prefetch = "two"

        [scoop.transport.zmq]
        port = 5555
        [scoop.transport.redsi]
        url = "redis://x"
        """,
    )
    lines = machine.error(plugin_settings=PLUGINS).splitlines()
    assert lines[0] == "3 mistakes in the configuration; fix each of them:"
    assert lines[1].startswith(
        "  scoop.toml:2: unknown key 'wrokers' in [scoop] (did you mean 'workers'?); valid keys: "
    )
    assert lines[2] == "  scoop.toml:5: scoop.prefetch must be an integer, got 'two' (str)"
    assert lines[3].startswith(
        "  scoop.toml:9: unknown section [scoop.transport.redsi] (did you mean 'redis'?): "
    )
    assert len(lines) == 4


def test_mistakes_in_every_layer_are_reported_together(machine: Machine) -> None:
    write(machine.site, "[scoop]\nnice = 'low'\n")
    write(machine.user, "[scoop]\nworkers = 0\n")
    write(machine.project / "scoop.toml", "[scoop]\nprefetch = 1\nnice = 1 2\n")
    lines = machine.error(environ={"SCOOP_MAX_LOSSES": "many"}, cli={"heartbeat_timeout": "x"})
    assert lines.splitlines() == [
        "5 mistakes in the configuration; fix each of them:",
        f"  {machine.site}:2: scoop.nice must be an integer, got 'low' (str)",
        f"  {machine.user}:2: scoop.workers must be at least 1, got 0 (int)",
        "  scoop.toml:3: invalid TOML: Expected newline or end of document after a statement "
        "(at line 3, column 10)",
        "  environment variable SCOOP_MAX_LOSSES: max_losses must be an integer, got 'many'",
        "  command line: heartbeat_timeout must be a number, got 'x' (str)",
    ]


def test_a_single_mistake_keeps_its_one_line(machine: Machine) -> None:
    write(machine.user, "[scoop]\nworkers = 'four'\n")
    assert (
        machine.error() == f"{machine.user}:2: scoop.workers must be an integer, got 'four' (str)"
    )


def test_a_missing_config_file_is_reported_with_the_other_mistakes(machine: Machine) -> None:
    write(machine.user, "[scoop]\nworkers = 'four'\n")
    message = machine.error(config_file="nowhere.toml")
    assert message.splitlines()[1:] == [
        f"  {machine.user}:2: scoop.workers must be an integer, got 'four' (str)",
        f"  nowhere.toml: config file not found (looked for {machine.project / 'nowhere.toml'}); "
        f"give the path of an existing file, or {os.devnull} to read no project file",
    ]


def test_keys_outside_the_scoop_table_are_reported_with_the_rest(machine: Machine) -> None:
    write(machine.user, "workers = 2\n[scoop]\nnice = 'x'\n[other]\n")
    lines = machine.error().splitlines()
    assert [line.split(": ", 1)[0] for line in lines[1:]] == [
        f"  {machine.user}:1",
        f"  {machine.user}:3",
        f"  {machine.user}:4",
    ]


def test_a_lenient_first_pass_lets_the_second_report_core_and_plugin_mistakes(
    machine: Machine,
) -> None:
    write(
        machine.project / "scoop.toml",
        '[scoop]\nworkers = "4"\ndisable_plugins = ["x"]\n\n[scoop.transport.zmq]\nport = "1"\n',
    )
    first = machine.load(strict=False)
    assert first["disable_plugins"] == ["x"]
    assert first.sources["workers"] == "default"
    assert machine.error(plugin_settings=PLUGINS).splitlines()[1:] == [
        "  scoop.toml:2: scoop.workers must be an integer, got '4' (str)",
        "  scoop.toml:6: scoop.transport.zmq.port must be an integer, got '1' (str)",
    ]


# --- "did you mean": only for a close name ---


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("wrokers", "workers"),
        ("Workers", "workers"),
        ("prefech", "prefetch"),
        ("heartbeat_timout", "heartbeat_timeout"),
        ("heartbeat-interval", "heartbeat_interval"),
        ("serialiser", "serializer"),
        ("max_loss", "max_losses"),
        ("port", None),
        ("cores", None),
        ("someplugin", None),
        ("timeout", None),
        ("log", None),
        ("debug", None),
    ],
)
def test_an_unknown_key_gets_a_suggestion_only_if_one_is_close(
    machine: Machine, key: str, suggestion: str | None
) -> None:
    write(machine.project / "scoop.toml", f"[scoop]\n{key} = 1\n")
    message = machine.error()
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert f"(did you mean {suggestion!r}?)" in message
    valid = message.split("valid keys: ", 1)[1].split(", ")
    assert set(valid) == {s.name for s in CORE_SETTINGS}


def test_a_far_section_gets_no_suggestion(machine: Machine) -> None:
    write(machine.project / "scoop.toml", "[scoop.someplugin]\nx = 1\n[scoop.transport.foo]\n")
    message = machine.error(plugin_settings=PLUGINS)
    assert "did you mean" not in message
    assert message.count("known sections: [scoop.transport.redis], [scoop.transport.zmq]") == 2


def test_a_far_command_line_key_points_to_the_documentation(machine: Machine) -> None:
    message = machine.error(plugin_settings=PLUGINS, cli={"transport.zmq.foo": 1})
    assert message == (
        "command line: unknown setting 'transport.zmq.foo'; "
        "the settings are listed in docs/configuration.md"
    )
    message = machine.error(plugin_settings=PLUGINS, cli={"transport.zqm.port": 1})
    assert (
        message
        == "command line: unknown setting 'transport.zqm.port' (did you mean 'transport.zmq.port'?)"
    )


@pytest.mark.parametrize(
    "variable, hint",
    [
        ("SCOOP_WROKERS", "did you mean SCOOP_WORKERS?"),
        ("SCOOP_TRANSPORT_ZMQ_PROT", "did you mean SCOOP_TRANSPORT_ZMQ_PORT?"),
        ("SCOOP_TRANSPORT_ZMQ_FOO", "the variables are listed in docs/configuration.md"),
        ("SCOOP_HOSTS", "the variables are listed in docs/configuration.md"),
    ],
)
def test_an_unknown_variable_is_named_with_a_close_one_or_the_documentation(
    machine: Machine, caplog: pytest.LogCaptureFixture, variable: str, hint: str
) -> None:
    caplog.set_level(logging.WARNING, logger="scoop.config")
    machine.load(plugin_settings=PLUGINS, environ={variable: "1"})
    [record] = caplog.records
    assert record.getMessage() == (
        f"ignoring environment variable {variable}: it matches no setting ({hint})"
    )


KEYS = sorted(s.name for s in CORE_SETTINGS)


@st.composite
def misspelt(draw: st.DrawFn) -> tuple[str, str]:
    """A core key with one letter of a word of five or more letters typed
    wrong, left out, doubled or swapped with the next: a typo."""
    key = draw(st.sampled_from(KEYS))
    words = [(i, w) for i, w in enumerate(key.split("_")) if len(w) >= 5]
    assume(words)
    index, word = draw(st.sampled_from(words))
    at = draw(st.integers(0, len(word) - 2))
    letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
    typo = draw(
        st.sampled_from(
            [
                word[:at] + letter + word[at + 1 :],
                word[:at] + word[at + 1 :],
                word[:at] + word[at] + word[at:],
                word[:at] + word[at + 1] + word[at] + word[at + 2 :],
            ]
        )
    )
    parts = key.split("_")
    parts[index] = typo
    name = "_".join(parts)
    assume(name not in KEYS)
    return key, name


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=misspelt())
def test_a_typo_in_a_key_is_suggested_the_key(machine: Machine, case: tuple[str, str]) -> None:
    key, name = case
    write(machine.project / "scoop.toml", f"[scoop]\n{name} = 1\n")
    assert f"unknown key {name!r} in [scoop] (did you mean {key!r}?)" in machine.error()
