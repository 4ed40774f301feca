"""The built package installs as Python users expect, and runs from the install.

The wheel and the sdist are built from this tree as a release would be
(``python -m build``), pass ``twine check --strict`` (their metadata, and
the README as PyPI would render it), and hold what they should: the
licence files, ``py.typed`` in every package, every plugin's entry point.
The wheel is then installed into a fresh virtualenv (its dependencies from
pip's cache or the package index, as a user's install gets them), and an
example runs from a directory outside this tree, with the installed
package, not this source tree, doing the work.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import environ_without_scoop, run_command

import scoop_core

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "scoop_core",
    "scoop",
    "scoop_transport_zmq",
    "scoop_transport_redis",
    "scoop_launcher_ssh",
    "scoop_launcher_slurm",
    "scoop_launcher_sge",
    "scoop_launcher_torque",
)
PLUGINS = ("cloudpickle", "pickle", "local", "zmq", "redis", "ssh", "slurm", "sge", "torque")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of the tree (a build writes nothing here)."""
    out = tmp_path_factory.mktemp("dist")
    proc = run_command(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        env=environ_without_scoop(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_passes(dist: dict[str, Path]) -> None:
    proc = run_command(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_wheel_holds_the_licences_types_and_entry_points(dist: dict[str, Path]) -> None:
    version = scoop_core.__version__
    assert dist["wheel"].name == f"scoop_core-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"scoop_core-{version}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/COPYING"} <= names
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "plugins/"))]
    assert "scoop = scoop_core.cli:main" in entry_points
    assert "License-Expression: LGPL-3.0-or-later" in metadata
    assert f"Version: {version}" in metadata


def test_the_sdist_holds_what_a_rebuild_and_its_tests_need(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = {
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "COPYING",
        "docs/conf.py",
        "docs/index.md",
        "examples/map_abs.py",
        "tests/conftest.py",
    }
    assert needed <= names, sorted(needed - names)


def test_the_wheel_installed_in_a_fresh_virtualenv_runs_an_example(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    proc = run_command([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    env = environ_without_scoop()
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = run_command(
        [str(python), "-m", "pip", "install", "-q", str(dist["wheel"])], env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "examples" / "map_abs.py", elsewhere / "map_abs.py")
    where = run_command(
        [str(python), "-c", "import scoop, scoop_core; print(scoop_core.__file__, scoop.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout

    run = run_command(
        [str(python), "-m", "scoop", "-n", "2", "map_abs.py"], cwd=elsewhere, env=env, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "map: 1000 values" in run.stdout and "(same as serial)" in run.stdout

    plugins = run_command([str(venv / "bin" / "scoop"), "plugins"], cwd=elsewhere, env=env)
    assert plugins.returncode == 0, plugins.stderr
    listed = {line.split()[0]: line.split()[-1] for line in plugins.stdout.splitlines()[1:]}
    assert {name: listed.get(name) for name in PLUGINS} == dict.fromkeys(PLUGINS, "enabled")
