"""Every program in examples/ runs through the real launcher and prints the right results.

Each example is run the way its docstring says (``python -m scoop -n 2
examples/NAME.py [args]``) in a fresh directory; the test reads back the
result lines it prints and checks the values, its exit status, and that no
process of the run is left behind. ``map_abs.py`` is also run through the
``scoop run`` console script.
"""

from __future__ import annotations

import ast
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import environ_without_scoop, run_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 120

Run = subprocess.CompletedProcess[str]


def run_example(tmp_path: Path, command: Sequence[str], name: str, *args: str) -> Run:
    """Run ``command examples/name args`` in ``tmp_path``; check nothing is left running."""
    env = environ_without_scoop()
    proc = run_command(
        [*command, str(EXAMPLES / name), *args], cwd=tmp_path, env=env, timeout=TIMEOUT
    )
    left = processes_in(tmp_path)
    assert left == [], f"{name}: processes still running in {tmp_path}: {left}"
    return proc


def processes_in(directory: Path) -> list[int]:
    """Pids of live processes whose working directory is ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def described(proc: Run) -> str:
    return f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def match(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.M)
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return found


def seeded_data(seed: int) -> list[int]:
    """The data map_abs.py and map_reduce.py draw, from the same seed."""
    rng = random.Random(seed)
    return [rng.randint(-1000, 1000) for _ in range(1000)]


# -- what each example must print ---------------------------------------------


def check_map_abs(out: str, err: str) -> None:
    found = match(r"^map: (\d+) values, sum of abs = (\d+)", out)
    assert int(found[1]) == 1000
    assert int(found[2]) == sum(abs(x) for x in seeded_data(42))


def check_map_reduce(out: str, err: str) -> None:
    assert int(match(r"^mapReduce sum = (\d+)", out)[1]) == sum(abs(x) for x in seeded_data(7))
    assert match(r"^mapReduce concat = (\d+)$", out)[1] == "".join(map(str, range(30)))


def check_joblib_gridsearch(out: str, err: str) -> None:
    match(r"^best parameters: \{.+\}, score [\d.]+$", out)
    assert "the same as the serial search" in out


def check_shared_constants(out: str, err: str) -> None:
    assert ast.literal_eval(match(r"^with offset: (.*)$", out)[1]) == list(range(5, 15))
    assert ast.literal_eval(match(r"^with default scale: (.*)$", out)[1]) == list(range(10))
    match(r"^getConst\('scale'\) without a default: ConstantNotFound$", out)


def check_full_tree(depth: int, branching: int) -> Callable[[str, str], None]:
    def check(out: str, err: str) -> None:
        found = match(r"^tree depth=(\d+) branching=(\d+) leaves=(\d+) total=(\d+)$", out)
        leaves = branching**depth
        assert [int(v) for v in found.groups()] == [
            depth,
            branching,
            leaves,
            sum(i * i for i in range(leaves)),
        ]

    return check


def check_map_as_completed(out: str, err: str) -> None:
    received = ast.literal_eval(match(r"^map_as_completed: 20 results, .*?: (.*)$", out)[1])
    assert sorted(received) == [x * x for x in range(20)]
    assert int(match(r"^as_completed: 20 futures, sum = (\d+)$", out)[1]) == sum(
        x * x for x in range(20)
    )


def check_fibonacci(n: int, value: int) -> Callable[[str, str], None]:
    def check(out: str, err: str) -> None:
        assert match(r"^fib\((\d+)\) = (\d+)$", out).groups() == (str(n), str(value))

    return check


def check_logging(out: str, err: str) -> None:
    tasks, workers = match(r"^logged from root and (\d+) tasks on (\d+) worker\(s\)$", out).groups()
    assert tasks == "4" and 1 <= int(workers) <= 2
    # scoop.logger's layout: [time] process module LEVEL message
    match(r"^\[[^]]+\] root +logging_example +WARNING +root starting, IS_ORIGIN=True$", err)
    logged = re.findall(
        r"^\[[^]]+\] (worker-\d+) +logging_example +WARNING +task (\d) running on (\S+)$", err, re.M
    )
    assert sorted(task for _, task, _ in logged) == ["0", "1", "2", "3"], err
    assert all(column == named for column, _, named in logged), err


def check_exit_status(status: int) -> Callable[[str, str], None]:
    def check(out: str, err: str) -> None:
        found = match(r"^map gave (\[.*\]); exiting with status (\d+)$", out)
        assert ast.literal_eval(found[1]) == [0, 2, 4, 6, 8]
        assert int(found[2]) == status

    return check


def check_embedded_executor(out: str, err: str) -> None:
    squares = [v * v for v in range(10)]
    assert ast.literal_eval(match(r"^executor\.map: (.*)$", out)[1]) == squares
    assert ast.literal_eval(match(r"^run_in_executor: (.*)$", out)[1]) == squares


@dataclass(frozen=True)
class Case:
    name: str
    check: Callable[[str, str], None]
    args: tuple[str, ...] = ()
    status: int = 0

    @property
    def id(self) -> str:
        return " ".join((self.name, *self.args))


CASES = [
    Case("map_abs.py", check_map_abs),
    Case("map_reduce.py", check_map_reduce),
    Case("shared_constants.py", check_shared_constants),
    Case("full_tree.py", check_full_tree(4, 3)),
    Case("full_tree.py", check_full_tree(3, 4), args=("3", "4")),
    Case("map_as_completed.py", check_map_as_completed),
    Case("fibonacci.py", check_fibonacci(15, 610)),
    Case("fibonacci.py", check_fibonacci(10, 55), args=("10",)),
    Case("logging_example.py", check_logging),
    Case("exit_status.py", check_exit_status(7), args=("7",), status=7),
    Case("exit_status.py", check_exit_status(0), args=("0",), status=0),
    Case("embedded_executor.py", check_embedded_executor),
    Case("joblib_gridsearch.py", check_joblib_gridsearch),
]


def test_every_example_has_a_case() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {case.name for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_example_runs_under_the_launcher(case: Case, tmp_path: Path) -> None:
    proc = run_example(tmp_path, [sys.executable, "-m", "scoop", "-n", "2"], case.name, *case.args)
    assert proc.returncode == case.status, described(proc)
    case.check(proc.stdout, proc.stderr)


def test_embedded_executor_runs_without_the_launcher(tmp_path: Path) -> None:
    proc = run_example(tmp_path, [sys.executable], "embedded_executor.py")
    assert proc.returncode == 0, described(proc)
    check_embedded_executor(proc.stdout, proc.stderr)


def scoop_script() -> str:
    # The console script installed next to this interpreter, not another one on PATH.
    found = shutil.which("scoop", path=os.path.dirname(sys.executable)) or shutil.which("scoop")
    assert found, "the `scoop` console script is not installed: pip install -e ."
    return found


@pytest.mark.parametrize(
    "before_run", [(), ("--transport", "zmq")], ids=["scoop run", "scoop --transport zmq run"]
)
def test_map_abs_runs_through_the_console_script(
    before_run: tuple[str, ...], tmp_path: Path
) -> None:
    command = [scoop_script(), *before_run, "run", "-n", "2"]
    proc = run_example(tmp_path, command, "map_abs.py")
    assert proc.returncode == 0, described(proc)
    check_map_abs(proc.stdout, proc.stderr)
