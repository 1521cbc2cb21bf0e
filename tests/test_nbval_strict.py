"""The notebook layer really compares outputs: tiny notebooks run through nbval as ``make test`` runs it.

Each case is a one-cell notebook in a temporary directory, checked with the same command line as
the ``test-notebooks`` layer of the Makefile (``--nbval --nbval-current-env`` and the project's
``tests/nbval_sanitize.cfg``):

* a notebook whose stored output is what the code prints passes;
* one whose stored number was edited fails, naming the mismatch;
* one whose cell raises fails, naming the exception;
* one whose only difference is volatile text (a tqdm bar, a timing) passes: the sanitiser
  hides that and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"

pytestmark = pytest.mark.slow


def _notebook(source: str, stored: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source, execution_count=1, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=stored)])]
    return nb


CASES = {
    # name: (code, stored stdout, should pass, what the failure report must mention)
    "faithful": ("print(round(2 ** 0.5, 4))", "1.4142\n", True, None),
    "edited number": ("print(round(2 ** 0.5, 4))", "1.4143\n", False, "1.4143"),
    "cell raises": ("print(1 / 0)", "inf\n", False, "ZeroDivisionError"),
    "volatile text only": (
        "print('100%|##########| 50/50 [00:03<00:00, 15.2it/s]')\nprint('took: 3.1 s')",
        "100%|##########| 50/50 [00:01<00:00, 41.0it/s]\ntook: 1.2 s\n", True, None),
}


def _nbval(directory: Path, name: str) -> subprocess.CompletedProcess:
    code, stored, _, _ = CASES[name]
    path = directory / "case.ipynb"
    nbformat.write(_notebook(code, stored), path)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
         "--nbval-sanitize-with", str(SANITIZE), "-p", "no:cacheprovider", "-q", path.name],
        capture_output=True, text=True, timeout=300, cwd=directory,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_nbval, tmp_path_factory.mktemp("nb"), name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_nbval_verdict(runs, name):
    _, _, should_pass, must_mention = CASES[name]
    result = runs[name]
    log = result.stdout[-3000:] + result.stderr[-3000:]
    if should_pass:
        assert result.returncode == 0, f"{name}: nbval failed\n{log}"
    else:
        assert result.returncode != 0, f"{name}: nbval passed a notebook it must reject\n{log}"
        assert must_mention in result.stdout, f"{name}: the report does not mention {must_mention!r}\n{log}"
