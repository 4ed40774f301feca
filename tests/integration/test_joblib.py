"""joblib's backend "scoop" (``scoop_core.joblib_backend``), with joblib and scikit-learn as users run them.

Each test writes a real program and runs it the three ways a program meets
a pool: under the launcher (``python -m scoop -n 2 prog.py``), as a plain
``python prog.py`` (the backend starts its own local pool), and inside an
explicit ``scoop_core.Executor``. The program prints ``RESULT <json>``
lines that the test reads back; afterwards no process of the program may
be left (its workers carry the program's path in their environment).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PROGRAM_HELPERS,
    drain,
    environ_without_scoop,
    kill_run,
    program_results,
    run_command,
    wait_for,
    wait_gone,
)

ROOT = Path(__file__).resolve().parents[2]

WAYS = ["launcher", "plain", "executor"]
"""How a program is run: ``python -m scoop -n 2``, ``python`` with the
backend's local pool, ``python`` with a ``scoop_core.Executor(workers=2)``."""

PRELUDE = (
    """
import json, os, sys, threading, time
import joblib
from joblib import Parallel, delayed, parallel_config
import scoop_core
import scoop_core.errors
import scoop_core.joblib_backend
"""
    + PROGRAM_HELPERS
    + """
def sq(x):
    return x * x

def sq_pid(x):
    return x * x, os.getpid()

def in_pool(main):
    # The way in named by the test: the launcher's run, the backend's own
    # local pool, or an explicit Executor.
    if sys.argv[1] == "executor":
        with scoop_core.Executor(workers=2):
            main()
    else:
        main()
"""
)


@pytest.fixture
def run_way(
    tmp_path: Path, transport_env: dict[str, str]
) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run ``program`` the way named (see :data:`WAYS`) to its end, on the
    test's transport; then check that none of its processes is left."""
    programs: list[Path] = []

    def run(
        program: Path, way: str, *args: str, flags: tuple[str, ...] = ("-n", "2")
    ) -> subprocess.CompletedProcess[str]:
        programs.append(program)
        # The local pool has one worker per core: two here, whatever the machine.
        env = {**environ_without_scoop(), **transport_env, "SCOOP_WORKERS": "2"}
        launcher = (
            [sys.executable, "-m", "scoop", *flags] if way == "launcher" else [sys.executable]
        )
        return run_command([*launcher, str(program), way, *args], cwd=tmp_path, env=env)

    yield run
    for program in programs:
        assert wait_gone(str(program)) == [], f"processes of {program} were left running"


def results(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The program's ``RESULT`` values, each a ``[name, value]`` pair, as a dict."""
    return dict(program_results(proc))


@pytest.mark.parametrize("way", WAYS)
def test_parallel_runs_on_the_workers_as_joblib_promises(program, run_way, way):
    prog = program("""
def fails_at_three(x):
    if x == 3:
        raise KeyError("three is not allowed")
    return x

def with_nested(i):
    nested = Parallel(n_jobs=2)
    total = sum(nested(delayed(sq)(j) for j in range(i)))
    named = Parallel(n_jobs=2, backend="scoop")
    again = sum(named(delayed(sq)(j) for j in range(i)))
    return total, again, type(nested._backend).__name__, type(named._backend).__name__

def main():
    with parallel_config(backend="scoop"):
        pairs = Parallel(n_jobs=-1)(delayed(sq_pid)(i) for i in range(200))
        out(["values", [v for v, _ in pairs]])
        out(["pids", sorted({p for _, p in pairs})])
        out(["root", os.getpid()])
        out(["n_jobs", [joblib.effective_n_jobs(n) for n in (-1, -2, 1, 5)]])
        try:
            Parallel(n_jobs=-1)(delayed(fails_at_three)(i) for i in range(20))
        except KeyError as exc:
            out(["raised", [type(exc).__name__, str(exc), str(exc.__cause__)]])
        try:
            Parallel(n_jobs=-1)(delayed(sq)(x) for x in [1, threading.Lock()])
        except scoop_core.errors.SerializationError as exc:
            out(["unpicklable", str(exc)])
        ordered = Parallel(n_jobs=-1, return_as="generator")(delayed(sq)(i) for i in range(30))
        out(["generator", [type(ordered).__name__, list(ordered)]])
        unordered = Parallel(n_jobs=-1, return_as="generator_unordered")(
            delayed(sq)(i) for i in range(30)
        )
        out(["unordered", list(unordered)])
        out(["nested", Parallel(n_jobs=-1)(delayed(with_nested)(i) for i in range(6))])
        out(["many", Parallel(n_jobs=-1)(delayed(sq)(i) for i in range(10_000))])

if __name__ == "__main__":
    in_pool(main)
""")
    got = results(run_way(prog, way))
    assert got["values"] == [i * i for i in range(200)]
    assert got["pids"] and got["root"] not in got["pids"]
    assert got["n_jobs"] == [2, 1, 1, 5]  # -1: the two workers
    name, message, cause = got["raised"]
    assert (name, message) == ("KeyError", "'three is not allowed'")
    assert "Traceback from worker-" in cause and "fails_at_three" in cause
    assert got["unpicklable"].startswith("cannot send argument 1 of sq() to a worker: <unlocked")
    assert got["generator"] == ["generator", [i * i for i in range(30)]]
    assert sorted(got["unordered"]) == [i * i for i in range(30)]
    # Threads of the worker, up to its share of the cores (of two workers'),
    # else one after another: never futures of the run.
    share = (os.cpu_count() or 1) // 2
    expected = "NestedThreadingBackend" if share >= 2 else "SequentialBackend"
    for i, (total, again, nested, named) in enumerate(got["nested"]):
        assert total == again == sum(j * j for j in range(i))
        assert nested == named == expected
    assert got["many"] == [i * i for i in range(10_000)]


SEARCH = """
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

PIDS = {pids!r}

def scored_where(estimator, X, y):
    # Leaves this process's pid behind: who computed the scores.
    open(os.path.join(PIDS, str(os.getpid())), "w").close()
    return estimator.score(X, y)

GRID = {{"C": [0.1, 1, 10, 100], "kernel": ["linear", "rbf"], "gamma": ["scale", 0.1]}}

def main():
    X, y = load_iris(return_X_y=True)
    serial = GridSearchCV(SVC(), GRID).fit(X, y)
    with parallel_config(backend="scoop"):
        spread = GridSearchCV(SVC(), GRID, scoring=scored_where, n_jobs=-1).fit(X, y)
    out(["serial", [serial.best_params_, serial.best_score_]])
    out(["scoop", [spread.best_params_, spread.best_score_]])
    out(["root", os.getpid()])

if __name__ == "__main__":
    in_pool(main)
"""


@pytest.mark.both_transports
@pytest.mark.parametrize("way", WAYS)
def test_grid_search_finds_the_serial_best_on_the_workers(program, run_way, tmp_path, way):
    pids = tmp_path / "pids"
    pids.mkdir()
    got = results(run_way(program(SEARCH.format(pids=str(pids))), way))
    assert got["scoop"] == got["serial"]
    scored_in = {int(name) for name in os.listdir(pids)}
    assert scored_in and got["root"] not in scored_in


def test_the_runs_summary_counts_the_search_on_its_workers(program, run_way, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = run_way(program(SEARCH.format(pids=str(pids))), "launcher", flags=("-n", "2", "-v"))
    got = results(proc)
    assert got["scoop"] == got["serial"]
    # 16 candidates x 5 folds, in batches: the root ran none of them.
    root = re.search(r"^root +\S+ +(\d+) ", proc.stderr, re.M)
    workers = re.search(r"^all workers +(\d+) ", proc.stderr, re.M)
    assert root and workers, proc.stderr
    assert int(root[1]) == 0 and int(workers[1]) > 0


@pytest.mark.parametrize("way", ["launcher", "plain"])
def test_the_first_error_cancels_the_batches_still_waiting(program, run_way, tmp_path, way):
    ran = tmp_path / "ran"
    ran.mkdir()
    prog = program(f"""
RAN = {str(ran)!r}

def slow_unless_first(i):
    if i == 0:
        raise ValueError("the first one fails")
    time.sleep(0.2)
    open(os.path.join(RAN, str(i)), "w").close()
    return i

def main():
    with parallel_config(backend="scoop"):
        try:
            # Every batch handed to the backend at once: only its abort stops them.
            Parallel(n_jobs=8, pre_dispatch="all", batch_size=1)(
                delayed(slow_unless_first)(i) for i in range(40)
            )
        except ValueError as exc:
            out(["raised", str(exc)])
        # The same backend again: its batches would wait behind any left
        # over from the aborted call.
        out(["after", Parallel(n_jobs=8)(delayed(sq)(i) for i in range(8))])

if __name__ == "__main__":
    in_pool(main)
""")
    got = results(run_way(prog, way))
    assert got["raised"] == "the first one fails"
    assert got["after"] == [i * i for i in range(8)]
    # Not aborted, all 39 would have run before the second call's batches.
    assert len(os.listdir(ran)) < 20


def test_a_timeout_stops_the_call(program, run_way):
    prog = program("""
def nap(seconds):
    time.sleep(seconds)
    return seconds

def main():
    with parallel_config(backend="scoop"):
        try:
            Parallel(n_jobs=2, timeout=0.5)(delayed(nap)(s) for s in [3, 0, 0])
        except Exception as exc:
            out(["raised", type(exc).__name__])
        out(["after", Parallel(n_jobs=2)(delayed(nap)(0) for _ in range(4))])

if __name__ == "__main__":
    in_pool(main)
""")
    got = results(run_way(prog, "launcher"))
    assert got == {"raised": "TimeoutError", "after": [0, 0, 0, 0]}


def test_n_jobs_caps_the_batches_running_at_once(program, run_way, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    prog = program(f"""
BUSY = {str(busy)!r}

def crowd(i):
    # How many calls run at this moment, this one included (each stays
    # 0.2 s, so any that overlaps it is still there).
    mine = os.path.join(BUSY, str(i))
    open(mine, "w").close()
    seen = len(os.listdir(BUSY))
    time.sleep(0.2)
    os.remove(mine)
    return seen

def main():
    with parallel_config(backend="scoop"):
        out(["two", max(Parallel(n_jobs=2, batch_size=1)(delayed(crowd)(i) for i in range(12)))])

if __name__ == "__main__":
    in_pool(main)
""")
    got = results(run_way(prog, "launcher", flags=("-n", "4")))
    assert 1 <= got["two"] <= 2


def test_the_local_pool_is_started_once_logged_and_private(program, run_way):
    prog = program("""
import logging
from scoop import futures

def main():
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    with parallel_config(backend="scoop"):
        first = {p for _, p in Parallel()(delayed(sq_pid)(i) for i in range(40))}
        second = {p for _, p in Parallel()(delayed(sq_pid)(i) for i in range(40))}
    out(["workers", sorted(first | second)])
    # The program's own scoop.futures calls do not go to joblib's pool: map
    # runs serially here, and submit says there is no pool.
    out(["futures.map", sorted(set(futures.map(sq_pid, range(3))))])
    out(["root", os.getpid()])
    try:
        futures.submit(sq, 2)
    except scoop_core.errors.NotLaunchedError:
        out(["submit", "NotLaunchedError"])

if __name__ == "__main__":
    in_pool(main)
""")
    proc = run_way(prog, "plain")
    got = results(proc)
    # One pool of two workers served both calls.
    assert 1 <= len(got["workers"]) <= 2 and got["root"] not in got["workers"]
    assert got["submit"] == "NotLaunchedError"
    assert {pid for _, pid in got["futures.map"]} == {got["root"]}
    started = re.findall(
        r"^scoop\.joblib INFO .*started a local pool of 2 workers", proc.stderr, re.M
    )
    assert len(started) == 1, proc.stderr


def test_ctrl_c_stops_the_call_and_the_local_pool(program, tmp_path):
    started = tmp_path / "started"
    prog = program(f"""
def nap(i):
    open({str(started)!r}, "w").close()
    time.sleep(1)
    return i

if __name__ == "__main__":
    with parallel_config(backend="scoop"):
        Parallel()(delayed(nap)(i) for i in range(100))
    print("not reached")
""")
    env = {**environ_without_scoop(), "SCOOP_WORKERS": "2"}
    proc = subprocess.Popen(
        [sys.executable, str(prog)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(started.exists, "a call running on a worker")
        proc.send_signal(signal.SIGINT)
        out, err = drain(proc, 60)
        left = wait_gone(str(prog))
    finally:
        kill_run(str(prog), proc)  # what a failure left behind, for the next tests
    assert proc.returncode != 0 and "not reached" not in out
    assert "KeyboardInterrupt" in err
    assert left == [], "the local pool's workers were left running"


def test_importing_scoop_core_leaves_joblib_alone() -> None:
    code = (
        "import sys, scoop, scoop_core, scoop_core.futures, scoop_core.executor; "
        "print('joblib' in sys.modules)"
    )
    proc = run_command([sys.executable, "-c", code], env=environ_without_scoop())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]


def test_without_joblib_the_import_says_what_to_install() -> None:
    # joblib made unimportable, as if it were not installed.
    code = (
        "import sys; sys.modules['joblib'] = None\n"
        "try:\n"
        "    import scoop_core.joblib_backend\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = run_command([sys.executable, "-c", code], env=environ_without_scoop())
    assert proc.returncode == 0, proc.stderr
    assert "needs joblib" in proc.stdout and "pip install joblib" in proc.stdout


# -- the docs page and the example ------------------------------------------------

DOC = ROOT / "docs" / "joblib.md"
RUN_WITH = re.compile(r"# (\w+\.py) -- run with: (python(?: -m scoop(?: -n \d+)?)?) \1\n")


def doc_programs() -> list[tuple[str, str, str]]:
    """Each Python block of docs/joblib.md: (file name, command, text)."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    found = []
    for block in blocks:
        head = RUN_WITH.match(block)
        assert head, f"a block of docs/joblib.md does not say how to run it:\n{block}"
        found.append((head[1], head[2], block))
    return found


@pytest.mark.parametrize("name, command, text", doc_programs(), ids=lambda v: str(v)[:40])
def test_docs_examples_run(tmp_path, name, command, text):
    path = tmp_path / name
    path.write_text(text)
    proc = run_command(
        [*command.replace("python", sys.executable, 1).split(), str(path)],
        cwd=tmp_path,
        env=environ_without_scoop(),
    )
    try:
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.stdout.strip(), "the example printed nothing"
    finally:
        assert wait_gone(str(path)) == [], f"processes of {name} were left running"


def test_the_grid_search_example(tmp_path):
    example = ROOT / "examples" / "joblib_gridsearch.py"
    proc = run_command(
        [sys.executable, "-m", "scoop", "-n", "2", str(example)],
        cwd=tmp_path,
        env=environ_without_scoop(),
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert re.search(r"^best parameters: \{.+\}, score [\d.]+$", proc.stdout, re.M), proc.stdout
    assert "the same as the serial search" in proc.stdout
    assert wait_gone(str(example)) == []
