"""The two test suites: the default run, and the cluster suite it leaves out.

Most tests need Python and a ``redis-server`` (the Redis tests start their
own). The *cluster suite* needs what a fresh machine lacks: daemons started for
real by its fixtures (sshd servers for the ssh launcher and ``--hosts``
runs, a SLURM cluster, a Grid Engine) and Chromium, which renders the page
of ``scoop report`` headless. So that the README's test command
passes on a fresh machine, a plain ``python -m pytest`` deselects the
cluster suite (its fixtures never run, so none of their "not installed"
failures either) and its last lines say how many tests that left out and
the command that runs them:

- ``python -m pytest --cluster`` runs the cluster suite alone. Run as root,
  it first installs the packages the suite needs that are missing, with
  ``.ci/install-packages cluster`` (the script ``.ci/run`` uses too).
  Selected, a test whose daemon or browser is missing fails, never skips.
- ``-m`` with an expression naming ``cluster`` (``-m cluster``,
  ``-m "cluster or not cluster"``) leaves the choice to that expression.

A test belongs to the cluster suite if it uses a fixture in
:data:`CLUSTER_FIXTURES` (directly or through another fixture) or carries
``@pytest.mark.cluster``; it gets the ``cluster`` marker here.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Generator
from contextlib import nullcontext
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INSTALL = TESTS.parent / ".ci" / "install-packages"

CLUSTER_FIXTURES = {
    # where the fixture is defined (relative to tests/): its name
    "plugins/launcher_ssh/conftest.py": "cluster",  # sshd servers on the test hosts
    "integration/test_ssh_runs.py": "machines",  # the same hosts for --hosts runs
    "plugins/launcher_slurm/test_real_slurm.py": "cluster",  # munged, slurmctld, slurmd
    "plugins/launcher_sge/test_real_sge.py": "cluster",  # sge_qmaster, sge_execd
    "integration/test_report.py": "chromium",  # headless Chromium renders a report
}
"""The fixtures that start sshd, SLURM or Grid Engine daemons, or find Chromium."""

_CLUSTER_FIXTURES = {(TESTS / where, name) for where, name in CLUSTER_FIXTURES.items()}

NEEDS = "sshd, SLURM and Grid Engine daemons, or Chromium"

_LEFT_OUT = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        help=(
            f"run the cluster suite (tests that need {NEEDS}) instead of the "
            "default one; as root, first install the packages it lacks "
            "(.ci/install-packages cluster)"
        ),
    )


def _markexpr_names_cluster(config: pytest.Config) -> bool:
    return re.search(r"\bcluster\b", config.getoption("markexpr") or "") is not None


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session: pytest.Session) -> Generator[None]:
    """With --cluster, as root: install what the cluster suite lacks, after
    the session's header and before its modules are collected (they look at
    what is installed then)."""
    yield
    if session.config.getoption("cluster"):
        _install(session.config)


def _install(config: pytest.Config) -> None:
    missing = subprocess.run(
        [str(INSTALL), "--missing", "cluster"], capture_output=True, text=True, check=True
    ).stdout.split()
    if not missing:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    install = f"{shlex.quote(str(INSTALL))} cluster"
    if os.geteuid() != 0:
        # The tests then fail, each naming what it lacks.
        if reporter is not None:
            reporter.write_line(
                f"the cluster suite needs packages that are not installed "
                f"({' '.join(missing)}): install them as root with {install}",
                yellow=True,
            )
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        reporter.write_line(f"installing what the cluster suite needs: {install}", bold=True)
    # apt-get's progress straight to the terminal.
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        sys.stdout.flush()
        done = subprocess.run([str(INSTALL), "cluster"], check=False)
    if done.returncode != 0:
        raise pytest.UsageError(f"{install} failed (exit {done.returncode}): see its output above")


def _in_cluster_suite(item: pytest.Item) -> bool:
    if item.get_closest_marker("cluster") is not None:
        return True
    # The fixtures this test uses, directly or through others, by the file
    # that defines each (so a fixture imported into another module counts).
    used = getattr(item, "_fixtureinfo", None)
    for name, definitions in getattr(used, "name2fixturedefs", {}).items():
        code = getattr(inspect.unwrap(definitions[-1].func), "__code__", None)
        if code is not None and (Path(code.co_filename).resolve(), name) in _CLUSTER_FIXTURES:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cluster = [item for item in items if _in_cluster_suite(item)]
    for item in cluster:
        item.add_marker(pytest.mark.cluster)
    if _markexpr_names_cluster(config):
        return
    wanted = config.getoption("cluster")
    chosen = set(map(id, cluster))
    keep = [item for item in items if (id(item) in chosen) == wanted]
    if len(keep) == len(items):
        return
    deselected = [item for item in items if (id(item) in chosen) != wanted]
    config.hook.pytest_deselected(items=deselected)
    items[:] = keep
    if not wanted:
        config.stash[_LEFT_OUT] = len(deselected)


def _run_them(config: pytest.Config) -> str:
    """The command that runs the cluster tests this run left out."""
    argv = ["python", "-m", "pytest", "--cluster"]
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        argv += config.invocation_params.args
    return shlex.join(argv)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> Generator[None]:
    # Around the terminal reporter's own summaries: after them, this is the
    # line just above the final counts.
    yield
    left_out = config.stash.get(_LEFT_OUT, 0)
    if left_out:
        tests = "test" if left_out == 1 else "tests"
        terminalreporter.write_line(
            f"{left_out} cluster {tests} not selected (they need {NEEDS}): "
            f"run them with: {_run_them(config)}",
            yellow=True,
        )
