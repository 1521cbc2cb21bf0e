"""The Colab edition (colab/, written by scripts/make_colab.py) is current and free of MyST.

Colab renders no MyST: a role left in a chapter reaches the learner as raw text. The committed
files must equal what the generator makes from the notebooks in book/ now (regenerated in
memory), and a scan independent of the generator's own must find no role, directive fence,
target or labelled equation in any Markdown cell. The generator itself is tested on small
synthetic notebooks: each role and directive it knows, and failures for those it does not.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_colab", ROOT / "scripts" / "make_colab.py")
make_colab = importlib.util.module_from_spec(_spec)
sys.modules["make_colab"] = make_colab  # dataclasses look their module up by name
_spec.loader.exec_module(make_colab)

BOOK = make_colab.load_book(ROOT)


# --- the committed edition ---------------------------------------------------------------------


def test_every_chapter_and_appendix_has_a_colab_edition_and_nothing_else():
    wanted = {f"{Path(d).name}.ipynb" for d in BOOK.notebooks}
    present = {p.name for p in (ROOT / "colab").glob("*.ipynb")}
    assert wanted, "no notebook in _toc.yml"
    assert present == wanted, (
        f"colab/ lacks {sorted(wanted - present)} and has extra {sorted(present - wanted)}: "
        "run make colab (and delete editions of chapters no longer in _toc.yml)"
    )


@pytest.mark.parametrize("docname", BOOK.notebooks)
def test_colab_edition_is_current(docname):
    path, text = make_colab.generate_one(BOOK, docname)  # in memory; raises on unknown MyST
    assert path.exists(), f"no {path.relative_to(ROOT)}: run make colab"
    assert path.read_text(encoding="utf-8") == text, (
        f"{path.relative_to(ROOT)} is stale (its notebook, the bibliography or _config.yml changed "
        "since it was generated): run make colab"
    )


# An independent scan: MyST syntax in Markdown, outside fenced code blocks.
MYST = {
    "role": re.compile(r"\{[A-Za-z][\w:.+-]*\}`"),
    "directive fence": re.compile(r"^\s*(`{3,}|~{3,})\s*\{", re.M),
    "colon fence": re.compile(r"^\s*:{3,}", re.M),
    "target": re.compile(r"^\s*\([^()\s]+\)=\s*$", re.M),
    "labelled equation": re.compile(r"\$\$\s*\([^()\s]+\)"),
}


def _outside_code_blocks(markdown: str) -> str:
    """``markdown`` without the lines of ordinary code blocks (directive bodies are kept)."""
    kept, stack = [], []  # open fences: (char, length, is_code)
    for line in markdown.split("\n"):
        fence = re.match(r"^\s*(`{3,}|~{3,}|:{3,})\s*(.*)$", line)
        in_code = bool(stack) and stack[-1][2]
        if fence:
            char, length, info = fence.group(1)[0], len(fence.group(1)), fence.group(2).strip()
            if stack and not info and char == stack[-1][0] and length >= stack[-1][1]:
                stack.pop()
                continue
            if not in_code:
                stack.append((char, length, char != ":" and not info.startswith("{")))
        if not in_code:
            kept.append(line)
    return "\n".join(kept)


def _myst_in(markdown: str) -> list[str]:
    text = _outside_code_blocks(markdown)
    return [f"{what}: {m.group(0)!r}" for what, rx in MYST.items() for m in rx.finditer(text)]


def test_the_scan_finds_what_it_looks_for():
    flawed = (
        "A {glue}`x` and {cite:t}`k`.\n\n```{note}\nhi\n```\n\n:::{tip}\nhi\n:::\n\n"
        "(sec-x)=\n## X\n\n$$\na\n$$ (eq-a)\n\n```python\n{glue}`inside code` is fine\n```\n"
    )
    found = _myst_in(flawed)
    kinds = {f.split(":")[0] for f in found}
    assert kinds == set(MYST), found
    assert not any("inside code" in f for f in found)


@pytest.mark.parametrize("docname", BOOK.notebooks)
def test_colab_edition_has_no_myst_syntax(docname):
    path = ROOT / "colab" / f"{Path(docname).name}.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = [
        f"cell {i}: {p}"
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "markdown"
        for p in _myst_in("".join(cell["source"]))
    ]
    assert not problems, f"{path.relative_to(ROOT)} still holds MyST (run make colab): {problems}"


@pytest.mark.parametrize("docname", BOOK.notebooks)
def test_colab_edition_says_what_it_is_and_keeps_the_code(docname):
    book_nb = json.loads((ROOT / f"{docname}.ipynb").read_text(encoding="utf-8"))
    nb = json.loads((ROOT / "colab" / f"{Path(docname).name}.ipynb").read_text(encoding="utf-8"))
    header = "".join(nb["cells"][0]["source"])
    assert "Colab edition" in header and BOOK.page_url(docname) in header
    assert "published run" in header
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    book_code = [c for c in book_nb["cells"] if c["cell_type"] == "code"]
    assert ["".join(c["source"]) for c in code] == ["".join(c["source"]) for c in book_code]

    def kinds(cells):
        return [[o["output_type"] for o in c.get("outputs", [])] for c in cells]

    assert kinds(code) == kinds(book_code)


def test_equations_are_numbered_as_the_built_book_numbers_them():
    # Chapters of the numbered part: (C.n). The appendices are an unnumbered part, and Sphinx
    # numbers the labelled equations of unnumbered pages with one running counter: (1), (2), ...
    by_doc: dict[str, list[str]] = {}
    for target in BOOK.targets.values():
        if target.kind == "displaymath":
            by_doc.setdefault(target.docname, []).append(target.number)
    chapters = [d for d in BOOK.notebooks if Path(d).name.startswith("ch")]
    for c, docname in enumerate(chapters, start=1):
        numbers = by_doc.get(docname, [])
        assert numbers == [f"{c}.{n}" for n in range(1, len(numbers) + 1)], (docname, numbers)
    unnumbered = [n for d in BOOK.docs if not Path(d).name.startswith("ch") for n in by_doc.get(d, [])]
    assert unnumbered == [str(n) for n in range(1, len(unnumbered) + 1)]


# --- the generator on synthetic input ----------------------------------------------------------


def _book(**targets) -> make_colab.Book:
    book = make_colab.Book(
        root=ROOT,
        base_url="https://example.org/kl",
        repo_url="https://github.com/o/r",
        branch="main",
        docs=["book/intro", "book/ch01", "book/ch02", "book/bibliography"],
        notebooks=["book/ch01", "book/ch02"],
        titles={"book/intro": "Preface", "book/ch01": "One", "book/ch02": "Two", "book/bibliography": "Bibliography"},
        citations={
            "kw": ("Kingma and Welling", "Kingma and Welling", "2014"),
            "a3": ("Alemi et al.", "Alemi, Poole and Fischer", "2018"),
        },
    )
    book.targets.update(
        {
            "ch02-eq": make_colab.Target("book/ch02", "displaymath", "2.1"),
            "ch02-eq2": make_colab.Target("book/ch02", "displaymath", "2.2"),
            "ch01-eq": make_colab.Target("book/ch01", "displaymath", "1.4"),
            "sec-odds": make_colab.Target("book/ch01", "section", "1.2", "Bayes' rule, in odds"),
            **targets,
        }
    )
    return book


def _glue_output(name: str, text: str) -> dict:
    return {
        "output_type": "display_data",
        "data": {make_colab.GLUE_MIME: text},
        "metadata": {"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}},
    }


def _nb(*markdown: str, tags=()) -> dict:
    code = {
        "cell_type": "code",
        "execution_count": 1,
        "id": "c1",
        "metadata": {"tags": list(tags)} if tags else {},
        "source": "book.glue('x', 0.125)",
        "outputs": [_glue_output("ch02_x", "0.125"), _glue_output("ch02_s", "42")],
    }
    cells = [code] + [
        {"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": m} for i, m in enumerate(markdown)
    ]
    return {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "klbook": {"scale": "quick", "device": "cpu: cpu", "executed": "2026-01-02", "machine": "test box"},
        },
    }


def _convert(*markdown: str, book=None, tags=()) -> dict:
    return make_colab.convert(book or _book(), "book/ch02", _nb(*markdown, tags=tags))


def _md(*markdown: str, book=None) -> list[str]:
    nb = _convert(*markdown, book=book)
    return ["".join(c["source"]) for c in nb["cells"][1:] if c["cell_type"] == "markdown"]


def test_glue_becomes_the_stored_text():
    assert _md("A {glue}`ch02_x` nat and {glue:text}`ch02_s` and {glue:md}`ch02_x`.") == [
        "A 0.125 nat and 42 and 0.125."
    ]
    assert _md("{glue:text}`ch02_x:.1f`") == ["0.1"]


def test_eq_is_numbered_and_the_equation_tagged():
    [md] = _md("$$\na = b\n$$ (ch02-eq)\n\nBy {eq}`ch02-eq` and {eq}`ch01-eq`.")
    assert "a = b \\tag{2.1}\n$$" in md and "(ch02-eq)" not in md
    assert "By (2.1) and [(1.4)](https://example.org/kl/book/ch01.html#equation-ch01-eq)." in md


def test_citations_parenthetical_and_textual_link_to_the_bibliography():
    [md] = _md("{cite}`kw` {cite:p}`kw,a3` {cite:t}`a3`")
    url = "https://example.org/kl/book/bibliography.html#cite-"
    assert md == (
        f"([Kingma and Welling, 2014]({url}kw)) "
        f"([Kingma and Welling, 2014]({url}kw); [Alemi et al., 2018]({url}a3)) "
        f"[Alemi et al. (2018)]({url}a3)"
    )


def test_the_bibliography_gives_author_year_names():
    short, full, year = BOOK.citations["kingma2014vae"]
    assert (short, year) == ("Kingma and Welling", "2014")
    assert BOOK.citations["alemi2018fixing"][0] == "Alemi et al."
    assert BOOK.citations["alemi2024kl"][:1] == ("Alemi",)


def test_ref_numref_doc_term_math():
    [md] = _md(
        "{ref}`sec-odds`, {ref}`odds <sec-odds>`, {numref}`sec-odds`, "
        "{numref}`Part %s <sec-odds>`, {doc}`intro`, {doc}`the preface <intro>`, "
        "{term}`ELBO`, {term}`bounds <ELBO>`, {math}`x^2`"
    )
    page = "https://example.org/kl/book/ch01.html#sec-odds"
    assert md == (
        f"[Bayes' rule, in odds]({page}), [odds]({page}), [Section 1.2]({page}), "
        f"[Part 1.2]({page}), [Preface](https://example.org/kl/book/intro.html), "
        "[the preface](https://example.org/kl/book/intro.html), ELBO, bounds, $x^2$"
    )


def test_admonitions_become_blockquotes_and_dropdowns_details():
    [md] = _md(
        "```{note}\nSee {eq}`ch02-eq`.\n```\n\n:::{admonition} Exercise 1\nProve it.\n:::\n\n"
        "````{admonition} Solution\n:class: dropdown\n\nIt is {glue}`ch02_x`.\n\n"
        "```python\nprint(1)\n```\n````\n\n::::{warning}\n:::{tip}\nnested\n:::\n::::"
    )
    assert "> **Note**\n>\n> See (2.1)." in md
    assert "> **Exercise 1**\n>\n> Prove it." in md
    assert ("<details>\n<summary>Solution</summary>\n\nIt is 0.125.\n\n```python\nprint(1)\n```\n\n</details>") in md
    assert "> **Warning**\n>\n> > **Tip**\n> >\n> > nested" in md
    assert not _myst_in(md)


def test_targets_are_removed_and_figures_become_images():
    [md] = _md(
        "(sec-new)=\n## New\n\n```{figure} fig/a.png\n:name: fig-a\n:alt: A plot\n\nThe caption.\n```",
        book=_book(**{"sec-new": make_colab.Target("book/ch02", "section", "2.1", "New")}),
    )
    assert md.startswith("## New") and "(sec-new)=" not in md
    assert "![A plot](https://raw.githubusercontent.com/o/r/main/book/fig/a.png)\n\nThe caption." in md


def test_roles_in_code_are_left_alone():
    [md] = _md("Write `{glue}`name`` in a chapter.\n\n```md\n{eq}`label`\n```")
    assert md == "Write `{glue}`name`` in a chapter.\n\n```md\n{eq}`label`\n```"


@pytest.mark.parametrize(
    "markdown, named",
    [
        ("An {abbr}`MLE (maximum likelihood)`.", "{abbr}`MLE (maximum likelihood)`"),
        ("```{margin}\nx\n```", "{margin}"),
        ("```{note}\n:unknown-option: 1\nx\n```", "unknown-option"),
        ("{glue}`nobody_glued_this`", "nobody_glued_this"),
        ("{cite}`nosuchkey2020`", "nosuchkey2020"),
        ("{eq}`no-such-label`", "no-such-label"),
        ("{doc}`no_such_page`", "no_such_page"),
        ("Term\n: a definition list", "definition list"),
        (":::\nbare colon fence\n:::", "colon fence"),
        ("```{note}\nnever closed", "unclosed fence"),
    ],
)
def test_unknown_myst_fails_naming_the_file_and_the_syntax(markdown, named):
    with pytest.raises(make_colab.ColabError) as info:
        _convert(markdown)
    assert "book/ch02.ipynb" in str(info.value) and named in str(info.value)


def test_code_cells_are_copied_and_hidden_inputs_collapsed():
    nb = _convert("text", tags=["remove-input"])
    header, code, _ = nb["cells"]
    assert "Colab edition" in header["source"] and "https://example.org/kl/book/ch02.html" in header["source"]
    assert "`quick` scale" in header["source"] and "2026-01-02" in header["source"]
    assert code["source"] == "book.glue('x', 0.125)" and len(code["outputs"]) == 2
    assert code["metadata"]["jupyter"] == {"source_hidden": True}
    assert "jupyter" not in _convert("text")["cells"][1]["metadata"]
    assert _convert("t", tags=["hide-input"])["cells"][1]["metadata"]["jupyter"]["source_hidden"]
    assert _convert("t", tags=["remove-output"])["cells"][1]["metadata"]["jupyter"]["outputs_hidden"]


def test_generation_is_deterministic():
    nb = _nb("A {glue}`ch02_x`.")
    first = make_colab.dumps(make_colab.convert(_book(), "book/ch02", nb))
    assert first == make_colab.dumps(make_colab.convert(_book(), "book/ch02", nb))
    assert json.loads(first)["cells"][0]["id"] == "colab-edition"
