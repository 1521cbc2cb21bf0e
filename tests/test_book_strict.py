"""The strict build really is strict: tiny books with one flaw each must fail to build.

Each case is a two-page book in a temporary directory, built exactly as ``make book`` builds the
real one: the project's ``_config.yml`` (only its paths made absolute), its ``book/_ext``
extensions and bibliography, and ``jupyter-book build --warningiserror --nitpick --keep-going``.
The good book must build; each flawed one must exit non-zero and say why:

* a notebook that stored an error output,
* a notebook whose code changed after its outputs were stamped,
* a notebook with a code cell that was never executed,
* a page with a cross-reference to a label that does not exist.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from klbook_strict import METADATA_KEY, code_digest, install_cell_source  # noqa: E402

pytestmark = pytest.mark.slow

INTRO = "# A tiny book\n\nIt has one chapter, {doc}`chapter`.\n"


def _notebook(flaw: str | None) -> nbformat.NotebookNode:
    """A stamped one-chapter notebook, with ``flaw`` put in after (or instead of) the stamp."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter\n\nTwo and two make {glue}`four`."),
        nbformat.v4.new_code_cell(install_cell_source(config["repository"]["url"]), execution_count=1),
        nbformat.v4.new_code_cell(
            "print(2 + 2)", execution_count=2, outputs=[nbformat.v4.new_output("stream", name="stdout", text="4\n")]
        ),
        nbformat.v4.new_code_cell(
            "from klbook.book import glue\nglue('four', 4)",
            execution_count=3,
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={"application/papermill.record/text/plain": "4"},
                    metadata={"scrapbook": {"name": "four", "mime_prefix": "application/papermill.record/"}},
                )
            ],
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if flaw == "error output":
        nb.cells[2].outputs = [
            nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])
        ]
    if flaw == "never executed":
        nb.cells[2].execution_count = None
        nb.cells[2].outputs = []
    nb.metadata[METADATA_KEY] = {
        "source_sha256": code_digest(nb),
        "seconds": 0.1,
        "scale": "quick",
        "device": "cpu: cpu",
        "machine": "test",
        "executed": "2026-01-01",
    }
    if flaw == "code changed after stamping":
        nb.cells[2].source = "print(2 + 3)"
    return nb


def _make_book(directory: Path, flaw: str | None) -> Path:
    assets = ROOT / "_build" / "site-assets" / "static"
    if not assets.is_dir():
        if os.environ.get("KLBOOK_STRICT_TESTS"):
            pytest.fail(f"no {assets}: run `make site-assets` first")
        pytest.skip(f"no {assets}: run `make site-assets` first")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["sphinx"]["config"]["html_static_path"] = [str(assets)]
    config["logo"] = config["html"]["favicon"] = ""
    (directory / "book").mkdir(parents=True)
    shutil.copytree(ROOT / "book" / "_ext", directory / "book" / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "book" / "references.bib", directory / "book" / "references.bib")
    (directory / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "_toc.yml").write_text(
        yaml.safe_dump(
            {
                "format": "jb-book",
                "root": "book/intro",
                "parts": [{"caption": "Chapters", "numbered": True, "chapters": [{"file": "book/chapter"}]}],
            },
            sort_keys=False,
        )
    )
    intro = INTRO + ("\nSee {ref}`a-label-nobody-defined`.\n" if flaw == "broken cross-reference" else "")
    (directory / "book" / "intro.md").write_text(intro)
    nbformat.write(_notebook(flaw), directory / "book" / "chapter.ipynb")
    return directory


def _build(directory: Path) -> subprocess.CompletedProcess:
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    return subprocess.run(
        [str(jupyter_book), "build", str(directory), "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=directory,
    )


CASES = {
    None: None,
    "error output": "stored an error (ZeroDivisionError: division by zero)",
    "code changed after stamping": "its code changed after its outputs were stored",
    "never executed": "cell 2 was never executed",
    "broken cross-reference": "a-label-nobody-defined",
}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Build every case, two at a time (the builds are single-threaded)."""
    books = {flaw: _make_book(tmp_path_factory.mktemp("book"), flaw) for flaw in CASES}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {flaw: pool.submit(_build, book) for flaw, book in books.items()}
        return {flaw: (books[flaw], f.result()) for flaw, f in futures.items()}


def test_a_good_book_builds(builds):
    book, result = builds[None]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = (book / "_build" / "html" / "book" / "chapter.html").read_text()
    assert "A chapter" in html and ">4<" in html.replace(" ", "")


@pytest.mark.parametrize("flaw", [f for f in CASES if f is not None])
def test_a_flawed_book_fails_to_build(builds, flaw):
    _, result = builds[flaw]
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the book built despite: {flaw}\n{output[-3000:]}"
    assert CASES[flaw] in output, f"the failure does not say why ({CASES[flaw]!r}):\n{output[-3000:]}"
