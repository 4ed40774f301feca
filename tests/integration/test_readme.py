"""The README's examples of the ways in without the launcher run as the README says.

The notebook cell runs in a real ipykernel through nbclient; the Executor
and joblib programs run as ``python prog.py``. Each prints what the README's
comments say it prints.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from conftest import environ_without_scoop, run_command

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def block(containing: str) -> str:
    found = [b for b in BLOCKS if containing in b]
    assert len(found) == 1, f"one README example holds {containing!r}"
    return found[0]


def test_the_notebook_cell_runs_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(block("in a notebook cell"))]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=environ_without_scoop())
    text = "".join(o.get("text", "") for o in client.nb.cells[0].outputs)
    assert text.splitlines() == ["[0, 3, 6, 9, 12]", "5"]


@pytest.mark.parametrize(
    ("containing", "expected"),
    [
        ("run_in_executor", ["144", "[0, 1, 4, 9, 16]", "[0, 1, 4, 9, 16]"]),
        ("load_iris", ["{'C': 10}"]),
    ],
)
def test_the_programs_print_what_the_readme_says(tmp_path, containing, expected):
    prog = tmp_path / "prog.py"
    prog.write_text(block(containing))
    proc = run_command([sys.executable, str(prog)], cwd=tmp_path, env=environ_without_scoop())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected
    assert os.listdir(tmp_path) == ["prog.py"]
