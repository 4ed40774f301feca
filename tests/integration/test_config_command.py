"""``scoop config`` as users run it, in real subprocesses: every setting in
force, its value and where it came from (default, a file and line, an
environment variable, the command line), secrets masked, and ``--json``
for scripts. Each test runs in a fresh directory with a fresh home and no
``SCOOP_*`` variable but its own, so what is shown comes from the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import environ_without_scoop, run_command
from test_cli import one_line_error, scoop_command


def scoop_config(tmp_path: Path, *flags: str, before: tuple[str, ...] = (), **env: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {
        k: v for k, v in environ_without_scoop().items() if k not in ("XDG_CONFIG_HOME", "HOME")
    }
    return run_command(
        [*scoop_command(), *before, "config", *flags],
        cwd=tmp_path,
        env={**environ, "HOME": str(home), **env},
    )


def table(proc) -> dict[str, tuple[str, str]]:
    """``{setting: (value, source)}`` read back from the printed table."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["setting", "value", "source"]
    rows = {}
    for line in lines[1:]:
        key, value, source = re.split(r"\s{2,}", line)
        rows[key] = (value, source)
    return rows


def settings_json(proc) -> dict[str, dict[str, object]]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_defaults_are_shown_as_defaults(tmp_path):
    rows = table(scoop_config(tmp_path))
    assert rows["transport"] == ('"zmq"', "default")
    assert rows["workers"] == ("(not set)", "default")
    assert rows["heartbeat_interval"] == ("5.0", "default")
    # Every plugin's section is there too.
    assert rows["transport.zmq.port"] == ("0", "default")
    assert rows["launcher.ssh.tunnel"] == ("false", "default")


def test_each_value_says_where_it_came_from(tmp_path):
    (tmp_path / "scoop.toml").write_text(
        '[scoop]\nworkers = 3\nserializer = "pickle"\n\n[scoop.transport.zmq]\nport = 5555\n'
    )
    rows = table(
        scoop_config(
            tmp_path,
            "--transport",
            "redis",
            SCOOP_SERIALIZER="cloudpickle",
            SCOOP_LAUNCHER_SSH_CONNECTIONS="4",
        )
    )
    assert rows["workers"][0] == "3" and rows["workers"][1].endswith("scoop.toml:2")
    assert rows["transport.zmq.port"][0] == "5555"
    assert rows["transport.zmq.port"][1].endswith("scoop.toml:6")
    assert rows["serializer"] == ('"cloudpickle"', "env SCOOP_SERIALIZER")  # over the file
    assert rows["launcher.ssh.connections"] == ("4", "env SCOOP_LAUNCHER_SSH_CONNECTIONS")
    assert rows["transport"] == ('"redis"', "command line")


def test_flags_before_the_command_count_too(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text("[scoop]\nprefetch = 7\n")
    rows = table(scoop_config(tmp_path, before=("--transport", "redis", "--config", str(config))))
    assert rows["transport"] == ('"redis"', "command line")
    assert rows["prefetch"][0] == "7"
    assert rows["prefetch"][1].endswith("elsewhere.toml:2")


def test_json_gives_every_value_and_source(tmp_path):
    settings = settings_json(scoop_config(tmp_path, "--json", SCOOP_WORKERS="6"))
    assert settings["workers"] == {"value": 6, "source": "env SCOOP_WORKERS"}
    assert settings["disable_plugins"] == {"value": [], "source": "default"}
    assert settings["transport.redis.url"]["value"] == "redis://127.0.0.1:6379/0"
    assert set(table(scoop_config(tmp_path))) == set(settings)


@pytest.mark.parametrize("as_json", [False, True])
def test_secrets_are_masked(tmp_path, as_json):
    secret = "pw-never-shown-9031"
    (tmp_path / "scoop.toml").write_text(
        f'[scoop.transport.redis]\nurl = "redis://alice:{secret}@db.example:6379/0"\n'
    )
    proc = scoop_config(
        tmp_path,
        *(["--json"] if as_json else []),
        SCOOP_TRANSPORT_REDIS_PASSWORD=secret,
        SCOOP_LAUNCHER_SSH_UPLOAD_FILES=f"https://bob:{secret}@files.example/a?password={secret}",
    )
    assert secret not in proc.stdout + proc.stderr
    if as_json:
        settings = settings_json(proc)
        password = settings["transport.redis.password"]
        assert password == {"value": "***", "source": "env SCOOP_TRANSPORT_REDIS_PASSWORD"}
        assert settings["transport.redis.url"]["value"] == "redis://alice:***@db.example:6379/0"
    else:
        rows = table(proc)
        assert rows["transport.redis.password"][0] == '"***"'
        assert rows["transport.redis.url"][0] == '"redis://alice:***@db.example:6379/0"'
        assert "bob:***@files.example" in rows["launcher.ssh.upload_files"][0]


def test_an_unset_secret_shows_as_unset(tmp_path):
    assert table(scoop_config(tmp_path))["transport.redis.password"] == ('""', "default")


def test_a_bad_setting_is_the_error_a_run_gives(tmp_path):
    (tmp_path / "scoop.toml").write_text('[scoop]\nworkers = "many"\n')
    message = one_line_error(scoop_config(tmp_path))
    assert "scoop.toml:2" in message and "workers" in message
