"""scripts/lowest_versions.py, the lowest-versions layer's driver: its constraints are the declared
lower bounds, and its notebook runner fails on a raising cell, runs notebooks side by side, and
starts a kernel again only when the kernel never came up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lowest_versions.py"
sys.path.insert(0, str(ROOT / "scripts"))

import lowest_versions  # noqa: E402


def test_constraints_pin_every_runtime_requirement_at_its_lower_bound():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "constraints"], capture_output=True, text=True, check=True
    ).stdout.split()
    pins = dict(line.split("==") for line in out)
    names = {r.name for r in lowest_versions.runtime_requirements()}
    assert set(pins) == names and {"jax", "numpyro", "equinox", "optax"} <= names
    # every extra with lower bounds is in: chapters, site (the book build) and test (the tools)
    assert {"matplotlib", "jupyter-book", "ipykernel", "pytest", "nbval", "selenium", "build", "uv"} <= names
    assert "klbook" not in names and "ruff" not in names  # the self-reference and the exact lint pins
    assert pins["jax"] == lowest_versions.lower_bound(
        next(r for r in lowest_versions.runtime_requirements() if r.name == "jax")
    )


def _notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_notebooks_side_by_side_and_a_raising_cell_fails_the_run(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", "x = 1 + 1\nassert x == 2")
    bad = _notebook(tmp_path / "bad.ipynb", "assert 1 + 1 == 3, 'arithmetic broke'")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "notebooks", "--jobs", "2", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0, run.stdout
    assert "good.ipynb: passed" in run.stdout and "bad.ipynb: FAILED" in run.stdout, run.stdout
    assert "arithmetic broke" in run.stderr
    assert "failed at the lowest versions: bad.ipynb" in run.stderr


class _Client:
    """A stand-in for nbclient's NotebookClient whose first ``failures`` executions raise."""

    calls = 0

    def __init__(self, error: Exception, failures: int):
        self.error, self.failures = error, failures

    def __call__(self, *args, **kwargs):  # NotebookClient(nb, ...) returns this stand-in
        return self

    def execute(self):
        type(self).calls += 1
        if type(self).calls <= self.failures:
            raise self.error


@pytest.mark.parametrize("failures, ok", [(0, True), (2, True), (3, False)])
def test_a_kernel_that_does_not_start_is_started_again_at_most_three_times(tmp_path, monkeypatch, failures, ok):
    import nbclient

    client = _Client(RuntimeError("Kernel died before replying to kernel_info"), failures)
    _Client.calls = 0
    monkeypatch.setattr(nbclient, "NotebookClient", client)
    path = _notebook(tmp_path / "one.ipynb", "pass")
    if ok:
        seconds, error = lowest_versions.run_notebook(path)
        assert error is None and seconds >= 0
    else:
        with pytest.raises(RuntimeError, match="kernel_info"):
            lowest_versions.run_notebook(path)
    assert _Client.calls == min(failures + 1, lowest_versions.KERNEL_START_ATTEMPTS)


def test_a_kernel_lost_while_running_cells_is_not_started_again(tmp_path, monkeypatch):
    import nbclient
    from nbclient.exceptions import DeadKernelError

    _Client.calls = 0
    monkeypatch.setattr(nbclient, "NotebookClient", _Client(DeadKernelError("kernel died"), 1))
    with pytest.raises(DeadKernelError):
        lowest_versions.run_notebook(_notebook(tmp_path / "one.ipynb", "pass"))
    assert _Client.calls == 1
