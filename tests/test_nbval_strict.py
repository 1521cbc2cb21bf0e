"""The notebook layer really compares outputs: tiny notebooks run through nbval as ``make test`` runs it.

Each case is a one-cell notebook in a temporary directory, checked with the same command line as
the ``test-notebooks`` layer of the Makefile (``--nbval --nbval-current-env``, the project's
``tests/nbval_sanitize.cfg`` and the reproducibility contract ``tests/nbval_contract.py``):

* a notebook whose stored output is what the code prints passes;
* one whose stored number was edited fails, naming the mismatch;
* one whose cell raises fails, naming the exception;
* one whose only difference is volatile text (a tqdm bar, a timing) passes: the sanitiser
  hides that and nothing else;
* the contract: an *exact* number edited in its last digit fails; a *measured* number (a cell
  with a ``# measured:`` declaration, or a glued number with a tolerance) passes when the stored
  value is within the declared tolerance and fails, naming the number and the tolerance, when it
  is outside; the text around measured numbers must still be equal;
* under another seed (``KLBOOK_SEED``) exact outputs are not compared (they follow the seed)
  but measured ones still are, and a failing assert still fails.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"

pytestmark = pytest.mark.slow


GLUE = "application/papermill.record/text/plain"


def _notebook(source: str, stored) -> nbformat.NotebookNode:
    """A one-cell notebook; ``stored`` is its stdout text, or ``("glue", name, text, tolerance)``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if isinstance(stored, tuple):
        _, name, text, tolerance = stored
        meta = {"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}}
        if tolerance:
            meta["klbook"] = {"tolerance": tolerance}
        outputs = [nbformat.v4.new_output("display_data", data={GLUE: text}, metadata=meta)]
    else:
        outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    nb.cells = [nbformat.v4.new_code_cell(source, execution_count=1, outputs=outputs)]
    return nb


MEASURED = "# measured: rel=0.05 abs=0.01  (a trained number)\n"
GLUE_CODE = "from klbook import book\n_ = book.glue('x', 1.234, 4{})"


CASES = {
    # name: (code, stored stdout, should pass, what the failure report must mention)
    "faithful": ("print(round(2 ** 0.5, 4))", "1.4142\n", True, None),
    "edited number": ("print(round(2 ** 0.5, 4))", "1.4143\n", False, "1.4143"),
    "cell raises": ("print(1 / 0)", "inf\n", False, "ZeroDivisionError"),
    "volatile text only": (
        "print('100%|##########| 50/50 [00:03<00:00, 15.2it/s]')\nprint('took: 3.1 s')",
        "100%|##########| 50/50 [00:01<00:00, 41.0it/s]\ntook: 1.2 s\n",
        True,
        None,
    ),
    # the reproducibility contract
    "exact number, last digit edited": (
        "print(f'{2 ** 0.5:.6f}')",
        "1.414214\n".replace("4\n", "5\n"),
        False,
        "1.414215",
    ),
    "measured, within tolerance": (MEASURED + "print('loss', 1.0)", "loss 1.04\n", True, None),
    "measured, outside tolerance": (
        MEASURED + "print('loss', 1.0)",
        "loss 1.07\n",
        False,
        "outside the declared tolerance",
    ),
    "measured, other words": (MEASURED + "print('loss', 1.0)", "gain 1.0\n", False, "gain"),
    "glued measured, within": (GLUE_CODE.format(", tol=0.01"), ("glue", "x", "1.24", {"abs": 0.01}), True, None),
    "glued measured, outside": (GLUE_CODE.format(", tol=0.01"), ("glue", "x", "1.3", {"abs": 0.01}), False, "glued x"),
    "glued exact, edited": (GLUE_CODE.format(""), ("glue", "x", "1.235", None), False, "1.235"),
    # another seed: exact outputs follow the seed, measured ones are held to their tolerance
    "seed: exact output differs": ("print(12)", "13\n", True, None, "1"),
    "seed: measured outside": (MEASURED + "print(1.0)", "1.5\n", False, "outside the declared tolerance", "1"),
    "seed: failing assert": ("assert 1 == 2, 'claim broken'", "", False, "claim broken", "1"),
}


def _nbval(directory: Path, name: str) -> subprocess.CompletedProcess:
    code, stored = CASES[name][:2]
    seed = CASES[name][4] if len(CASES[name]) > 4 else "0"
    path = directory / "case.ipynb"
    nbformat.write(_notebook(code, stored), path)
    env = dict(
        os.environ,
        KLBOOK_SEED=seed,
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "nbval_contract",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(SANITIZE),
            "-p",
            "no:cacheprovider",
            "-q",
            path.name,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=directory,
        env=env,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_nbval, tmp_path_factory.mktemp("nb"), name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_nbval_verdict(runs, name):
    should_pass, must_mention = CASES[name][2:4]
    result = runs[name]
    log = result.stdout[-3000:] + result.stderr[-3000:]
    if should_pass:
        assert result.returncode == 0, f"{name}: nbval failed\n{log}"
    else:
        assert result.returncode != 0, f"{name}: nbval passed a notebook it must reject\n{log}"
        assert must_mention in result.stdout, f"{name}: the report does not mention {must_mention!r}\n{log}"
