"""Sphinx extension: the book refuses to build from notebooks whose stored outputs lie.

The book is built from the outputs stored in each notebook (``execute_notebooks: off``), and
``make test`` proves with nbval that re-executing the code reproduces them. This extension
closes the remaining gaps, failing the build (whatever ``-W`` says) when a notebook in the
table of contents

* stores an error output (a cell raised when the outputs were produced),
* has a code cell that was never executed, or
* has code that changed since its outputs were stored (``make refresh`` stamps a digest of the
  code cells into the notebook's metadata; a mismatch means the outputs are stale).

It also holds the two things the tests and ``scripts/refresh_outputs.py`` share with it: the
digest of a notebook's code and the Colab install cell every chapter starts with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

METADATA_KEY = "klbook"

INSTALL_MARKER = "# klbook set-up: install klbook only if it is missing"


def install_cell_source(repo_url: str) -> str:
    """The first code cell of every chapter, for the repository ``repo_url``.

    On Colab (or any environment without klbook) it installs klbook with the ``chapters`` extra
    (figures, widgets, bundled datasets) from the repository, pinning the JAX already installed
    so pip can never replace Colab's GPU build. Where klbook is importable it does nothing.
    """
    return (
        f"{INSTALL_MARKER} (Colab, a fresh environment);\n"
        "# the JAX already installed is pinned so that pip never replaces it.\n"
        "import importlib.metadata, importlib.util, subprocess, sys\n"
        "\n"
        'if importlib.util.find_spec("klbook") is None:\n'
        '    pins = [f"{name}=={importlib.metadata.version(name)}"\n'
        '            for name in ("jax", "jaxlib") if importlib.util.find_spec(name)]\n'
        '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                           "klbook[chapters] @ git+{repo_url}", *pins])'
    )


def code_digest(nb: dict) -> str:
    """sha256 of a notebook's code cells (their sources, in order)."""
    sources = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            sources.append("".join(src) if isinstance(src, list) else src)
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def notebook_problems(nb: dict) -> list[str]:
    """Why the stored outputs of ``nb`` cannot be published (empty when they can)."""
    problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(
                    f"cell {index} stored an error ({out.get('ename')}: {out.get('evalue')})"
                )
        if src.strip() and cell.get("execution_count") is None:
            problems.append(f"cell {index} was never executed")
    stamped = nb.get("metadata", {}).get(METADATA_KEY, {}).get("source_sha256")
    if stamped is None:
        problems.append("its outputs were never stamped by `make refresh`")
    elif stamped != code_digest(nb):
        problems.append("its code changed after its outputs were stored (run `make refresh`)")
    return problems


def _check_source(app, docname: str, source: list) -> None:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    nb = json.loads(path.read_text(encoding="utf-8"))
    for problem in notebook_problems(nb):
        app.env.klbook_problems.append(f"{path.name}: {problem}")
        logger.warning(f"klbook: {problem}", location=docname)


def _init(app) -> None:
    app.env.klbook_problems = []


def _fail_if_problems(app, env) -> None:
    problems = getattr(env, "klbook_problems", [])
    if problems:
        raise ExtensionError(
            "the book cannot be published from these notebooks:\n  " + "\n  ".join(problems)
        )


def setup(app):
    app.connect("builder-inited", _init)
    app.connect("source-read", _check_source)
    app.connect("env-updated", _fail_if_problems)
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True}
