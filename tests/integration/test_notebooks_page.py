"""The notebook cell of docs/notebooks.md runs in a real kernel and prints what its comments say.

The generic page runner (``test_doc_pages.py``) runs the page's programs
but cannot run a notebook cell, so the page hands that block to this test
with a comment before it. Here it runs in a real ipykernel through
nbclient, as a user's notebook would run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import environ_without_scoop

PAGE = Path(__file__).resolve().parents[2] / "docs" / "notebooks.md"
HANDED_OVER = re.compile(
    r"<!-- example run by tests/integration/test_notebooks_page\.py -->\n```python\n(.*?)```", re.S
)


def test_the_notebook_cell_runs_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = HANDED_OVER.findall(PAGE.read_text())
    assert len(cells) == 1, "docs/notebooks.md hands one notebook cell to this test"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cells[0])]
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=environ_without_scoop())
    outputs = client.nb.cells[0].outputs
    assert [o for o in outputs if o.get("output_type") == "error"] == []
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    expected = re.findall(r"print\(.*\)  # (.+)$", cells[0], re.M)
    assert expected == ["[0, 3, 6, 9, 12]", "5"]
    assert text.splitlines() == expected
