"""The configuration layers in real runs: ``python -m scoop`` with a site
file and a user file (under a temporary XDG_CONFIG_HOME), checking what the
program and its workers see, and what a user reads when the files are wrong."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

PROGRAM = """
import json
import scoop
from scoop import futures


def marker(_):
    import marker  # found on the workers' path only: the pythonpath setting
    return marker.VALUE


if __name__ == "__main__":
    values = sorted(set(futures.map(marker, range(8))))
    print("RESULT " + json.dumps({"size": scoop.SIZE, "values": values}), flush=True)
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


class Files:
    """The site file, the user file and the project directory of a run."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = tmp_path
        self.site = tmp_path / "etc" / "scoop.toml"
        self.xdg = tmp_path / "xdg"
        self.user = self.xdg / "scoop" / "scoop.toml"

    def write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def settings(self, path: Path, *, workers: int | None = None, marker: str = "") -> None:
        """Write a ``[scoop]`` table at ``path``: ``workers``, and if ``marker``
        is given, a ``pythonpath`` to a directory whose ``marker.py`` says it."""
        lines = ["[scoop]"]
        if workers is not None:
            lines.append(f"workers = {workers}")
        if marker:
            directory = self.project / f"from_{marker}"
            self.write(directory / "marker.py", f"VALUE = {marker!r}\n")
            lines.append(f"pythonpath = [{str(directory)!r}]")
        self.write(path, "\n".join(lines) + "\n")

    @property
    def env(self) -> dict[str, str]:
        return {
            "XDG_CONFIG_HOME": str(self.xdg),
            "SCOOP_SITE_CONFIG": str(self.site) if self.site.exists() else os.devnull,
        }


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return dict(json.loads(line[len("RESULT ") :]))


def test_the_user_file_sets_the_run_and_the_project_file_wins_over_it(
    files: Files, write_program: Callable[[str], Path], scoop_run: Run
) -> None:
    prog = write_program(PROGRAM)
    files.settings(files.user, workers=3, marker="user")
    # The user file alone: its worker count, and its path on the workers.
    assert result(scoop_run(prog, flags=(), env=files.env)) == {"size": 3, "values": ["user"]}
    # A project file beneath the command line: its keys win, the others stay the user's.
    files.settings(files.project / "scoop.toml", marker="project")
    assert result(scoop_run(prog, flags=(), env=files.env)) == {"size": 3, "values": ["project"]}
    assert result(scoop_run(prog, flags=("-n", "2"), env=files.env))["size"] == 2
    # Turned off, the user file sets nothing.
    env = {**files.env, "SCOOP_USER_CONFIG": os.devnull}
    assert result(scoop_run(prog, flags=("-n", "1"), env=env)) == {"size": 1, "values": ["project"]}


def test_config_flag_replaces_the_project_file_only_and_workers_follow_the_launcher(
    files: Files, write_program: Callable[[str], Path], scoop_run: Run
) -> None:
    prog = write_program(PROGRAM)
    files.settings(files.user, workers=3, marker="user")
    files.settings(files.project / "scoop.toml", workers=1)
    files.settings(files.project / "run.toml", marker="flag")
    # scoop.toml is not read; the user file still gives the worker count. Every
    # worker imports the --config file's module although the user file, which
    # a worker would find if it read the configuration itself, names another.
    proc = scoop_run(prog, flags=("--config", "run.toml"), env=files.env)
    assert result(proc) == {"size": 3, "values": ["flag"]}


def test_the_site_file_chooses_the_transport_and_the_user_file_the_workers(
    files: Files,
    write_program: Callable[[str], Path],
    scoop_run: Run,
    redis_server_url: str,
) -> None:
    prog = write_program(PROGRAM)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    files.write(
        files.site,
        f'[scoop.transport]\nname = "redis"\n\n'
        f"[scoop.transport.redis]\nurl = {redis_server_url!r}\nprefix = {prefix!r}\n",
    )
    files.settings(files.user, workers=2, marker="user")
    assert result(scoop_run(prog, flags=(), env=files.env)) == {"size": 2, "values": ["user"]}


def test_every_mistake_in_every_file_is_printed_before_anything_starts(
    files: Files, write_program: Callable[[str], Path], scoop_run: Run
) -> None:
    prog = write_program(PROGRAM)
    files.write(files.user, "[scoop]\nworkers = 'three'\nwrokers = 3\n")
    files.write(files.project / "scoop.toml", "[scoop]\nprefetch = -1\n")
    proc = scoop_run(prog, flags=(), env=files.env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "python -m scoop: error: 3 mistakes in the configuration; fix each of them:",
        f"  {files.user}:2: scoop.workers must be an integer, got 'three' (str)",
        f"  {files.user}:3: unknown key 'wrokers' in [scoop] (did you mean 'workers'?); "
        "valid keys: " + proc.stderr.split("valid keys: ", 1)[1].splitlines()[0],
        "  scoop.toml:2: scoop.prefetch must be at least 0, got -1 (int)",
    ]


def test_mistakes_in_the_core_and_in_a_plugins_table_are_printed_together(
    files: Files, write_program: Callable[[str], Path], scoop_run: Run
) -> None:
    prog = write_program(PROGRAM)
    files.write(
        files.project / "scoop.toml", "[scoop]\nworkers = 'x'\n[scoop.transport.zmq]\nprot = 5\n"
    )
    proc = scoop_run(prog, flags=(), env=files.env)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0] == "python -m scoop: error: 2 mistakes in the configuration; fix each of them:"
    assert lines[1] == "  scoop.toml:2: scoop.workers must be an integer, got 'x' (str)"
    assert lines[2].startswith(
        "  scoop.toml:4: unknown key 'prot' in [scoop.transport.zmq] (did you mean 'port'?)"
    )
