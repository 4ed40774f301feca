"""A run started from a Jupyter notebook: a real ``.ipynb`` executed by nbclient on a real ipykernel.

The notebook starts a run with ``scoop_core.run()`` (no launcher), defines
functions, a lambda and a class in its cells (they reach the workers by
value: a kernel's ``__main__`` is no file the workers could import), and
uses the seed's whole API on them. One cell is interrupted while a long map
runs, as the notebook's stop button does: what that cell submitted is
cancelled and the run goes on. The kernel's exit, and a restart that kills
it, leave no process behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import processes_of, wait_gone

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

LONG_MAP_ITEMS = 200

CELLS = [
    # 0: the run, as a notebook user starts it
    """
import json, os, time
from pathlib import Path
import scoop_core
from scoop import futures, shared

run = scoop_core.run(workers=2)
def out(value):
    print("RESULT " + json.dumps(value))
out(run.workers)
""",
    # 1: functions, a lambda and a class of the notebook's own
    """
def square(x):
    return x * x

class Scaled:
    def __init__(self, factor):
        self.factor = factor
    def __call__(self, x):
        return self.factor * x

def nested(n):
    # a future that submits and waits on futures
    return sum(futures.map(square, range(n)))

def worker_pid(_=None):
    return os.getpid()

out(list(futures.map(square, range(10))))
out(futures.submit(lambda a, b: a * b, 6, 7).result())
out(list(futures.map(Scaled(3), [1, 2, 3])))
out(futures.mapReduce(square, lambda a, b: a + b, range(5)))
out(list(futures.map(nested, [3, 4])))
shared.setConst(offset=100)
out(list(futures.map(lambda x: x + shared.getConst("offset"), [1, 2])))
before = sorted(set(futures.map(worker_pid, range(20))))
out(os.getpid() not in before)
""",
    # 2: interrupted after it started (the test's per-cell timeout does it)
    f"""
marks = Path(os.environ["NOTEBOOK_MARKS"])
def nap(i):
    (marks / str(i)).touch()
    time.sleep(0.5)
    return i
print("long map starts", flush=True)
total = sum(futures.map(nap, range({LONG_MAP_ITEMS})))
""",
    # 3: interrupted too, waiting on futures it submitted one by one
    f"""
submitted = [futures.submit(nap, {LONG_MAP_ITEMS} + i) for i in range({LONG_MAP_ITEMS})]
print("submitted", flush=True)
futures.wait(submitted)
""",
    # 4: the run goes on, with the same workers
    """
futures.wait(submitted)  # quick: they are cancelled, or ran before the interrupt
out(sum(f.cancelled() for f in submitted))
out(list(futures.map(square, range(5))))
out(len(list(marks.iterdir())))
after = sorted(set(futures.map(worker_pid, range(20))))
out(after == before)
""",
    # 5: the run ends; nothing the interrupted cell submitted ran after it
    """
run.shutdown()
out(len(list(marks.iterdir())))
""",
]

INTERRUPTED = (2, 3)


def notebook() -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.strip()) for src in CELLS]
    for i in INTERRUPTED:
        nb.cells[i].metadata["tags"] = ["raises-exception"]
    return nb


def results(cell: Any) -> list[Any]:
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]


def execute(nb: Any, tmp_path: Path, marker: str, timeout: Callable[[Any], int]) -> None:
    path = tmp_path / "scoop.ipynb"
    nbformat.write(nb, path)
    client = nbclient.NotebookClient(
        nbformat.read(path, as_version=4),
        timeout_func=timeout,
        interrupt_on_timeout=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {**os.environ, "NOTEBOOK_MARKS": str(tmp_path / "marks"), "NOTEBOOK_MARKER": marker}
    client.execute(env=env)
    nb.cells = client.nb.cells


def test_a_notebook_maps_its_own_functions_and_survives_an_interrupted_cell(tmp_path):
    marker = f"notebook-{uuid.uuid4().hex}"
    (tmp_path / "marks").mkdir()
    nb = notebook()

    def timeout(cell: Any) -> int:
        # A long map takes 50 s; the stop button comes after 4.
        return 4 if "raises-exception" in cell.metadata.get("tags", []) else 30

    try:
        execute(nb, tmp_path, marker, timeout)
    finally:
        left = wait_gone(marker, 20)
    assert left == [], f"processes left after the kernel ended: {left}"

    start, own, interrupted_map, interrupted_wait, goes_on, end = nb.cells
    assert results(start) == [2]
    assert results(own) == [
        [x * x for x in range(10)],
        42,
        [3, 6, 9],
        30,
        [5, 14],
        [101, 102],
        True,
    ]
    for cell in (interrupted_map, interrupted_wait):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert [e.ename for e in errors] == ["KeyboardInterrupt"]
    cancelled, squares, ran_by_then, same_workers = results(goes_on)
    assert squares == [0, 1, 4, 9, 16]
    assert same_workers is True
    # Two workers ran naps of 0.5 s for 4 s in each interrupted cell (about
    # 16 each) before the interrupt; the rest were cancelled, not run after.
    assert cancelled > LONG_MAP_ITEMS // 2
    assert ran_by_then < LONG_MAP_ITEMS // 2
    assert ran_by_then + cancelled <= 2 * LONG_MAP_ITEMS
    # Shutting down waits for every future: none of the cancelled ones ran.
    assert results(end) == [ran_by_then]


def test_a_kernel_restarted_while_its_run_works_leaves_no_process(tmp_path):
    marker = f"notebook-{uuid.uuid4().hex}"
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "NOTEBOOK_MARKER": marker}, cwd=str(tmp_path))
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(
            "import scoop_core, time\n"
            "from scoop import futures\n"
            "run = scoop_core.run(workers=2)\n"
            "pending = [futures.submit(time.sleep, 60) for _ in range(4)]\n",
            timeout=60,
        )
        assert reply["content"]["status"] == "ok"
        assert len(processes_of(marker)) >= 3  # the kernel and its two workers
        kc.stop_channels()
        km.restart_kernel(now=True)  # kills the kernel, starts a new one
    finally:
        km.shutdown_kernel(now=True)
    assert wait_gone(marker, 20) == []
