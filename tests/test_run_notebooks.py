"""scripts/run_notebooks.py names the failing cell and why: an exception, a dead kernel, a cell past its time limit."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import run_notebooks  # noqa: E402


def _notebook(tmp_path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a title")] + [nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_failing_assert_is_reported_with_its_cell_and_message(tmp_path):
    result = run_notebooks.run_one(_notebook(tmp_path, "x = 1", "assert x == 2, 'x is not two'", "y = 3"), timeout=60)
    assert result["passed"] is False
    assert result["failing_cell"] == 2  # the index in the notebook's cells, markdown included
    assert result["error"] == "AssertionError: x is not two"  # the name and message, no traceback colours


def test_keep_writes_the_executed_notebook_with_its_outputs_up_to_the_failure(tmp_path):
    keep = tmp_path / "executed"
    result = run_notebooks.run_one(_notebook(tmp_path, "print(6 * 7)", "assert False", "print('never')"), 60, keep)
    assert result["passed"] is False
    cells = nbformat.read(keep / "nb.ipynb", as_version=4).cells
    assert cells[1].outputs[0]["text"] == "42\n"  # the executed copy, not the input
    assert cells[2].outputs[0]["ename"] == "AssertionError" and cells[3].outputs == []
    assert nbformat.read(tmp_path / "nb.ipynb", as_version=4).cells[1].outputs == []  # the input is left as it was


def test_a_kernel_that_dies_fails_its_notebook_with_a_plain_message(tmp_path):
    result = run_notebooks.run_one(_notebook(tmp_path, "x = 1", "import os; os._exit(1)", "y = 3"), timeout=60)
    assert result["passed"] is False
    assert result["failing_cell"] == 2
    assert result["error"].startswith("the kernel died")


def test_a_cell_past_the_time_limit_is_named_as_a_timeout(tmp_path):
    result = run_notebooks.run_one(_notebook(tmp_path, "x = 1", "import time; time.sleep(30)", "y = 3"), timeout=5)
    assert result["passed"] is False
    assert result["failing_cell"] == 2
    assert result["error"] == "timed out: the cell ran past 5 s"
