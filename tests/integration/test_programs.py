"""Programs as people write them, careless ones included, through the real
launcher: names defined only in the root's ``__main__`` block, a syntax
error, and keyword arguments that the original SCOOP accepted and ignored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


def results(proc: subprocess.CompletedProcess[str]) -> list:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


MAIN_BLOCK = """
import json
import scoop
from scoop import futures

STATE = "imported"


def where():
    # Sent by reference: reads the worker's own module, not the root's.
    return STATE


def rebound():
    return "top level"


if scoop.IS_ORIGIN:
    def origin_only(x):
        return x - 1


if __name__ == "__main__":
    STATE = "root"

    def inner(x):
        return x * 10

    class Box:
        def __init__(self, value):
            self.value = value

        def doubled(self):
            return self.value * 2

    def rebound():
        return "main block"

    def unbox(box):
        return box.doubled()

    out = {
        "inner": list(futures.map(inner, [1, 2, 3])),
        "boxes": list(futures.map(unbox, [Box(1), Box(2)])),
        "submit": futures.submit(inner, 7).result(),
        "rebound": futures.submit(rebound).result(),
        "origin_only": list(futures.map(origin_only, [1, 2])),
        "where": futures.submit(where).result(),
    }
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.both_transports
def test_names_defined_only_in_the_root_reach_the_workers(scoop_run, write_program):
    (out,) = results(scoop_run(write_program(MAIN_BLOCK)))
    assert out == {
        "inner": [10, 20, 30],
        "boxes": [2, 4],
        "submit": 70,
        # The root's own definition, not the one a worker's import made.
        "rebound": "main block",
        "origin_only": [0, 1],
        # A top-level function still goes by reference, as in SCOOP.
        "where": "imported",
    }


SYNTAX_ERROR = """
from scoop import futures


def double(x):
    return x *


if __name__ == "__main__":
    print(list(futures.map(double, range(4))))
"""

PROLOG = """
touch "$PWD/worker-started.$$"
"""


@pytest.mark.both_transports
def test_a_syntax_error_is_reported_once_and_starts_no_worker(
    scoop_run, write_program, tmp_path: Path
):
    prolog = write_program(PROLOG, "prolog.sh")
    proc = scoop_run(write_program(SYNTAX_ERROR), flags=("-n", "2", "--prolog", str(prolog)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("SyntaxError") == 1, proc.stderr
    assert 'prog.py", line 6' in proc.stderr
    assert "return x *" in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.glob("worker-started.*")) == []

    # The same prolog does mark started workers: the check above can fail.
    fixed = write_program(SYNTAX_ERROR.replace("x *", "x * 2"), "fixed.py")
    proc = scoop_run(fixed, flags=("-n", "2", "--prolog", str(prolog)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 2, 4, 6]"
    assert len(list(tmp_path.glob("worker-started.*"))) == 2


SCOOP_KEYWORDS = """
import json
import operator
from scoop import futures


def tree(depth):
    if depth == 0:
        return 1
    # As the original SCOOP's tree_traversal example calls it.
    return sum(futures.map(tree, [depth - 1] * 2, parallelLevel=2))


if __name__ == "__main__":
    out = {
        "map": list(futures.map(abs, [-1, -2], parallelLevel=2)),
        "again": list(futures.map(abs, [-3], parallelLevel=3)),
        "tree": futures.submit(tree, 3).result(),
        "unordered": sorted(futures.map_as_completed(abs, [-1, -2], chunksize=4)),
        "reduce": futures.mapReduce(abs, operator.add, [-1, -2], parallelLevel=1),
        "scan": futures.mapScan(abs, operator.add, [-1, -2], parallelLevel=1),
        "options": list(futures.options(max_losses=2).map(abs, [-5], parallelLevel=1)),
    }
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.both_transports
def test_keyword_arguments_scoop_ignored_are_ignored_with_one_warning(scoop_run, write_program):
    proc = scoop_run(write_program(SCOOP_KEYWORDS))
    (out,) = results(proc)
    assert out == {
        "map": [1, 2],
        "again": [3],
        "tree": 8,
        "unordered": [1, 2],
        "reduce": 3,
        "scan": [1, 3],
        "options": [5],
    }
    warnings = [line for line in proc.stderr.splitlines() if "ignores the keyword argument" in line]
    # One per function and name in each process: the root's map, map_as_completed,
    # mapReduce and mapScan, and at most one from each worker's nested maps.
    root = [line for line in warnings if " root " in line]
    assert len(root) == 4, proc.stderr
    assert any("futures.map() ignores the keyword argument parallelLevel=2" in w for w in root)
    assert any("futures.map_as_completed()" in w and "chunksize=4" in w for w in root)
    assert 1 <= len(warnings) - len(root) <= 2, proc.stderr
    assert "TypeError" not in proc.stderr


RAISES_ON_WORKERS = """
import scoop
from scoop import futures

if not scoop.IS_ORIGIN:
    raise RuntimeError("this program cannot be imported by a worker")

if __name__ == "__main__":
    print(list(futures.map(abs, [-1, -2])))
"""


@pytest.mark.both_transports
def test_workers_that_cannot_import_the_program_are_not_replaced(scoop_run, write_program):
    # A replacement would fail the same way: no crash loop of restarts.
    proc = scoop_run(write_program(RAISES_ON_WORKERS), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("RuntimeError: this program cannot be imported by a worker") == 2
    assert proc.stderr.count("not replaced: it could not import the program") == 2
    assert "replaces it" not in proc.stderr
    assert "every worker has exited" in proc.stderr
