"""Generate the Colab edition: ``colab/<name>.ipynb`` for every notebook in ``_toc.yml``.

    python scripts/make_colab.py            # (re)write colab/ from book/ (``make colab``)
    python scripts/make_colab.py --check    # exit 1 if any colab/ file is stale

Colab and plain Jupyter render no MyST, so each chapter is rewritten from the notebook in
``book/`` and its *stored* outputs (the published run) into plain Markdown:

* ``{glue}`name``` (and ``glue:text``, ``glue:md``): the glued value's stored text, the
  ``application/papermill.record/text/plain`` display output whose ``scrapbook.name`` is ``name``;
* ``{eq}`label```: "(C.n)", numbered as the built book numbers it (Sphinx's rule: chapter C of a
  numbered part, n counting labelled equations; unnumbered parts such as the appendices share
  one running counter); the equation ``$$ ... $$ (label)`` gets ``\\tag{C.n}``;
* ``{cite}``/``{cite:p}``: "(Kingma and Welling, 2014)", ``{cite:t}``: "Kingma and Welling
  (2014)", each name linking to ``bibliography.html#cite-<key>`` of the published book;
* ``{ref}``, ``{numref}``, ``{doc}``: the target's title or number, linking to the published page;
* ``{term}`x```: x; ``{math}`x```: ``$x$``;
* admonitions (``` and ::: fences): a blockquote with the title in bold; ``:class: dropdown``:
  ``<details><summary>title</summary> ... </details>``; ``{figure}``/``{image}``: a Markdown
  image; ``{code-block}``/``{code-cell}`` fences: a plain code fence; ``(label)=`` targets: removed.

Anything else that looks like MyST makes the script fail, naming the file and the syntax: an
unconverted role would reach the learner as raw text. Code cells and their outputs are copied;
cells tagged ``hide-input``/``remove-input``/``remove-cell`` keep their code (it must still run)
but open collapsed. The first cell says this is the Colab edition and links to the book page.

The published site's address is ``html.baseurl`` in ``_config.yml``; while that is unset it is
the GitHub Pages address of ``repository.url`` (the README publishes with ``ghp-import``).
Generation is deterministic (no dates of its own), so ``tests/test_colab.py`` can regenerate
in memory and compare with the committed files.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = "colab"
GLUE_MIME = "application/papermill.record/text/plain"

# MyST syntax that must never reach the Colab edition (also used by tests/test_colab.py).
ROLE_RE = re.compile(r"\{([A-Za-z][\w:.+-]*)\}`([^`]*)`")
# A role, or an inline code span (copied as it is: a role written inside one is an example).
INLINE_RE = re.compile(
    r"\{(?P<role>[A-Za-z][\w:.+-]*)\}`(?P<content>[^`]*)`"
    r"|(?P<code>(?P<tick>`+)[^`].*?(?<!`)(?P=tick)(?!`))",
    re.S,
)
PLAIN_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})(?![ \t]*\{)")
FENCE_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})[ \t]*\{(?P<name>[^}]*)\}[ \t]*(?P<arg>.*)$")
TARGET_RE = re.compile(r"^[ \t]*\(([^()\s]+)\)=[ \t]*$", re.M)
LABELLED_MATH_RE = re.compile(r"\$\$(?P<body>.*?)\$\$[ \t]*\((?P<label>[^()\s]+)\)", re.S)
MYST_LEFTOVERS = {
    "role": ROLE_RE,
    "directive fence": re.compile(r"^[ \t]*(`{3,}|:{3,})[ \t]*\{", re.M),
    "colon fence": re.compile(r"^[ \t]*:{3,}", re.M),
    "target": TARGET_RE,
    "labelled equation": re.compile(r"\$\$[ \t]*\([^()\s]+\)"),
}

ADMONITIONS = {
    "admonition",
    "note",
    "tip",
    "hint",
    "important",
    "warning",
    "caution",
    "attention",
    "danger",
    "error",
    "seealso",
}
HIDDEN_INPUT_TAGS = {"hide-input", "remove-input", "hide-cell", "remove-cell"}
HIDDEN_OUTPUT_TAGS = {"hide-output", "remove-output", "hide-cell", "remove-cell"}
NUMFIG_FORMAT = {"figure": "Fig. %s", "section": "Section %s", "displaymath": "(%s)"}


class ColabError(Exception):
    """MyST the Colab edition cannot express; the message names the file and the syntax."""


# --- the book: table of contents, numbering, titles, labels, bibliography --------------------


@dataclass
class Target:
    docname: str
    kind: str  # "displaymath", "section", "figure"
    number: str | None  # "6.1", "4", None when unnumbered
    title: str = ""


@dataclass
class Book:
    root: Path
    base_url: str
    repo_url: str
    branch: str
    docs: list[str]  # every docname in _toc.yml, in reading order
    notebooks: list[str]  # those that are notebooks
    titles: dict[str, str] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    citations: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # key: (short, full, year)

    def page_url(self, docname: str, anchor: str = "") -> str:
        return f"{self.base_url}/{docname}.html" + (f"#{anchor}" if anchor else "")

    def raw_url(self, path: str) -> str:
        owner_repo = urllib.parse.urlsplit(self.repo_url).path.strip("/")
        return f"https://raw.githubusercontent.com/{owner_repo}/{self.branch}/{path}"


def _source_path(root: Path, docname: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (root / f"{docname}{suffix}").exists():
            return root / f"{docname}{suffix}"
    raise ColabError(f"_toc.yml names {docname}, which is neither a .ipynb nor a .md file")


def _markdown_sources(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return [_text(c.get("source", "")) for c in nb["cells"] if c["cell_type"] == "markdown"]
    return [path.read_text(encoding="utf-8")]


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _toc_walk(toc: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(docname, section number) in reading order, as Sphinx numbers a numbered toctree."""
    order = [(toc["root"], ())]

    def walk(entries, numbered: bool, prefix: tuple[int, ...]):
        for i, entry in enumerate(entries, start=1):
            number = (*prefix, i) if numbered else ()
            if "file" in entry:
                order.append((entry["file"], number))
            walk(entry.get("sections", []), numbered, number)

    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        # Each numbered part is its own numbered toctree: Sphinx starts it at 1.
        walk(part.get("chapters", []), bool(part.get("numbered")), ())
    return order


def _parse_bibliography(path: Path) -> dict[str, tuple[str, str, str]]:
    from pybtex.database import parse_file
    from pybtex.richtext import Text

    def plain(latex: str) -> str:
        return Text.from_latex(latex).render_as("text")

    citations = {}
    for key, entry in parse_file(str(path)).entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [plain(" ".join(p.prelast_names + p.last_names)) for p in people]
        if not names:
            raise ColabError(f"{path.name}: {key} has no author or editor")
        if len(names) == 1:
            short = full = names[0]
        else:
            full = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 2 else " and ".join(names)
            short = names[0] + " et al." if len(names) > 2 else full
        citations[key] = (short, full, plain(entry.fields.get("year", "n.d.")))
    return citations


def _heading_title(markdown: str) -> str | None:
    match = re.search(r"^#[ \t]+(.+?)[ \t]*$", markdown, re.M)
    return match.group(1) if match else None


def load_book(root: Path = ROOT) -> Book:
    """Everything the conversion needs to know about the whole book."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    repo = config["repository"]
    repo_url = repo["url"].rstrip("/")
    base_url = ((config.get("html") or {}).get("baseurl") or "").rstrip("/")
    if not base_url:
        owner, name = urllib.parse.urlsplit(repo_url).path.strip("/").split("/")[:2]
        base_url = f"https://{owner}.github.io/{name}"
    order = _toc_walk(toc)
    book = Book(
        root=root,
        base_url=base_url,
        repo_url=repo_url,
        branch=repo.get("branch", "main"),
        docs=[d for d, _ in order],
        notebooks=[d for d, _ in order if _source_path(root, d).suffix == ".ipynb"],
    )
    for bib in config.get("bibtex_bibfiles", []):
        book.citations.update(_parse_bibliography(root / bib))

    counters: dict[tuple[str, tuple[int, ...]], int] = {}

    def next_number(kind: str, secnum: tuple[int, ...]) -> str:
        key = (kind, secnum[:1])  # numfig_secnum_depth: 1
        counters[key] = counters.get(key, 0) + 1
        return ".".join(str(n) for n in (*secnum[:1], counters[key]))

    for docname, secnum in order:
        sources = _markdown_sources(_source_path(root, docname))
        book.titles[docname] = next(filter(None, map(_heading_title, sources)), docname)
        sections = 0
        for markdown in sources:
            lines = markdown.splitlines()
            for i, line in enumerate(lines):
                target = TARGET_RE.match(line)
                if target:  # a label on the heading (or figure) below it
                    below = next((s for s in lines[i + 1 :] if s.strip()), "")
                    heading = re.match(r"^(#+)[ \t]+(.*)$", below)
                    title = heading.group(2).strip() if heading else target.group(1)
                    number = None
                    if heading and secnum and len(heading.group(1)) == 2:
                        number = ".".join(map(str, (*secnum, sections + 1)))
                    book.targets[target.group(1)] = Target(docname, "section", number, title)
                if re.match(r"^##[ \t]", line):
                    sections += 1
            for match in LABELLED_MATH_RE.finditer(markdown):
                book.targets[match.group("label")] = Target(docname, "displaymath", next_number("displaymath", secnum))
            for match in re.finditer(
                r"^[ \t]*(?:`{3,}|:{3,})[ \t]*\{(figure|math)\}.*?\n((?:[ \t]*:.*\n)*)", markdown, re.M
            ):
                name = re.search(r":(?:name|label):[ \t]*(\S+)", match.group(2))
                if name:
                    kind = "figure" if match.group(1) == "figure" else "displaymath"
                    book.targets[name.group(1)] = Target(docname, kind, next_number(kind, secnum))
    return book


# --- one Markdown cell -------------------------------------------------------------------------


class Converter:
    """Converts one notebook's Markdown to plain Markdown (``where`` names it in errors)."""

    def __init__(self, book: Book, docname: str, glued: dict[str, str]):
        self.book, self.docname, self.glued = book, docname, glued
        self.where = f"{docname}.ipynb"

    def fail(self, what: str) -> None:
        """Unknown MyST: the learner would read it raw."""
        raise ColabError(f"{self.where}: {what} has no Colab form; convert it in scripts/make_colab.py or avoid it")

    def broken(self, what: str) -> None:
        """Known MyST whose target is missing (the book build would fail on it too)."""
        raise ColabError(f"{self.where}: {what}")

    # roles ---------------------------------------------------------------------------------

    def _split_title(self, content: str) -> tuple[str | None, str]:
        match = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content, re.S)
        return (match.group(1), match.group(2)) if match else (None, content)

    def _target(self, label: str, role: str) -> Target:
        if label not in self.book.targets:
            self.broken(f"{{{role}}}`{label}`: no such label in the book")
        return self.book.targets[label]

    def _link(self, text: str, docname: str, anchor: str = "") -> str:
        return f"[{text}]({self.book.page_url(docname, anchor)})"

    def _cite(self, role: str, keys: str) -> str:
        parts = []
        for key in [k.strip() for k in keys.split(",") if k.strip()]:
            if key not in self.book.citations:
                self.broken(f"{{{role}}}`{key}`: no such key in the bibliography")
            short, full, year = self.book.citations[key]
            names = full if role.endswith("s") else short
            url = self.book.page_url("book/bibliography", f"cite-{key}")
            parts.append((names, year, url))
        if role in ("cite", "cite:p", "cite:ps"):
            return "(" + "; ".join(f"[{n}, {y}]({u})" for n, y, u in parts) + ")"
        return "; ".join(f"[{n} ({y})]({u})" for n, y, u in parts)

    def role(self, match: re.Match) -> str:
        role, content = match.group("role"), match.group("content")
        if role in ("glue", "glue:text", "glue:md", "glue:any"):
            name, _, spec = content.partition(":") if role == "glue:text" else (content, "", "")
            if name not in self.glued:
                self.broken(
                    f"{{{role}}}`{content}`: no stored output glues {name!r} "
                    "(run make refresh on this notebook, then make colab)"
                )
            value = self.glued[name]
            if spec:
                try:
                    value = format(float(value), spec)
                except ValueError:
                    self.broken(f"{{{role}}}`{content}`: cannot format {value!r}")
            return value
        if role == "eq":
            target = self._target(content, role)
            if target.kind != "displaymath" or target.number is None:
                self.broken(f"{{eq}}`{content}`: not a numbered equation")
            text = f"({target.number})"
            if target.docname == self.docname:
                return text
            return self._link(text, target.docname, f"equation-{content}")
        if role in ("cite", "cite:p", "cite:t", "cite:ps", "cite:ts"):
            return self._cite(role, content)
        if role in ("ref", "numref"):
            title, label = self._split_title(content)
            target = self._target(label, role)
            if role == "numref":
                if target.number is None:
                    self.broken(f"{{numref}}`{content}`: the target has no number")
                text = (title or NUMFIG_FORMAT[target.kind]).replace("%s", target.number)
                text = text.replace("{number}", target.number).replace("{name}", target.title)
            else:
                text = title or target.title or label
            anchor = f"equation-{label}" if target.kind == "displaymath" else label
            return self._link(text, target.docname, anchor)
        if role == "doc":
            title, path = self._split_title(content)
            base = Path(self.docname).parent
            docname = path.lstrip("/") if path.startswith("/") else (base / path).as_posix()
            docname = re.sub(r"\.(md|ipynb)$", "", docname)
            if docname not in self.book.titles:
                self.broken(f"{{doc}}`{content}`: no such page in _toc.yml")
            return self._link(title or self.book.titles[docname], docname)
        if role == "term":
            title, term = self._split_title(content)
            return title or term
        if role == "math":
            return f"${content}$"
        self.fail(f"the role {{{role}}}`{content}`")

    def inline(self, text: str) -> str:
        def one(match: re.Match) -> str:
            if match.group("code"):
                return match.group("code")
            return self.role(match)

        return INLINE_RE.sub(one, text)

    # blocks --------------------------------------------------------------------------------

    def equations(self, text: str) -> str:
        def tag(match: re.Match) -> str:
            label = match.group("label")
            target = self._target(label, "eq")
            body = match.group("body").rstrip()
            return f"$${body} \\tag{{{target.number}}}\n$$" if "\n" in body else f"$${body} \\tag{{{target.number}}}$$"

        return LABELLED_MATH_RE.sub(tag, text)

    def _options(self, body: list[str]) -> tuple[dict[str, str], list[str]]:
        options: dict[str, str] = {}
        if body and body[0].strip() == "---":
            end = next((i for i, s in enumerate(body[1:], 1) if s.strip() == "---"), None)
            if end is None:
                self.fail("a directive's unterminated '---' option block")
            options = {k: str(v) for k, v in (yaml.safe_load("\n".join(body[1:end])) or {}).items()}
            return options, body[end + 1 :]
        while body and re.match(r"^\s*:[\w-]+:", body[0]):
            key, _, value = body.pop(0).strip()[1:].partition(":")
            options[key] = value.strip()
        return options, body

    def directive(self, name: str, arg: str, body: list[str]) -> str:
        name = name.strip()
        options, body = self._options(list(body))
        known = {
            "class",
            "name",
            "label",
            "open",
            "alt",
            "width",
            "height",
            "align",
            "scale",
            "figwidth",
            "caption",
            "linenos",
            "emphasize-lines",
            "tags",
        }
        unknown = set(options) - known
        if unknown:
            self.fail(f"the option(s) {sorted(unknown)} of the directive {{{name}}}")
        inner = self.block("\n".join(body)).strip("\n")
        if name in ADMONITIONS:
            title = arg.strip() or name.capitalize().replace("Seealso", "See also")
            title = self.inline(title)
            if "dropdown" in options.get("class", "").split():
                return f"<details>\n<summary>{title}</summary>\n\n{inner}\n\n</details>"
            quoted = "\n".join(f"> {s}" if s.strip() else ">" for s in inner.splitlines())
            return f"> **{title}**\n>\n{quoted}"
        if name in ("figure", "image"):
            if arg.startswith(("http://", "https://")):
                url = arg.strip()
            else:
                url = self.book.raw_url((Path(self.docname).parent / arg.strip()).as_posix())
            alt = options.get("alt", "")
            image = f"![{alt}]({url})"
            return f"{image}\n\n{inner}" if name == "figure" and inner else image
        if name in ("code-block", "code", "code-cell", "sourcecode"):
            return f"```{arg.strip()}\n" + "\n".join(body) + "\n```"
        if name == "math":
            label = options.get("label")
            number = self.book.targets[label].number if label in self.book.targets else None
            tag = f" \\tag{{{number}}}" if number else ""
            return f"$$\n{chr(10).join(body).strip()}{tag}\n$$"
        self.fail(f"the directive {{{name}}}")

    def block(self, text: str) -> str:
        """Directives, targets and labelled equations in ``text``, then the inline roles."""
        lines = text.split("\n")
        out: list[str] = []
        prose: list[str] = []

        def flush():
            if prose:
                out.append(self.inline(self.equations("\n".join(prose))))
                prose.clear()

        i = 0
        while i < len(lines):
            line = lines[i]
            fence = FENCE_RE.match(line)
            plain_fence = PLAIN_FENCE_RE.match(line)
            if fence:
                flush()
                marker = fence.group("fence")
                closing = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
                end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
                if end is None:
                    self.fail(f"the unclosed fence {line.strip()!r}")
                out.append(self.directive(fence.group("name"), fence.group("arg"), lines[i + 1 : end]))
                i = end + 1
                continue
            if plain_fence:  # an ordinary code block: copied verbatim
                flush()
                marker = plain_fence.group(1)
                closing = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
                end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines) - 1)
                out.append("\n".join(lines[i : end + 1]))
                i = end + 1
                continue
            if TARGET_RE.match(line):
                i += 1
                # drop the blank line the target leaves behind, if the next line is blank
                continue
            if re.match(r"^[ \t]*:{3,}", line):
                self.fail(f"the colon fence {line.strip()!r}")
            if re.match(r"^: ", line):
                self.fail(f"the definition list item {line.strip()[:40]!r}")
            if re.match(r"^%", line):
                self.fail(f"the MyST comment {line.strip()[:40]!r}")
            prose.append(line)
            i += 1
        flush()
        return "\n".join(out)

    def markdown(self, text: str) -> str:
        converted = self.block(text)
        converted = re.sub(r"\n{3,}", "\n\n", converted).strip("\n")
        check_plain(converted, self.where)
        return converted


def check_plain(markdown: str, where: str) -> None:
    """Fail if ``markdown`` (outside code blocks and code spans) still holds MyST syntax."""
    for what, snippet in myst_leftovers(markdown):
        raise ColabError(f"{where}: MyST {what} {snippet!r} is left after conversion")


def myst_leftovers(markdown: str) -> list[tuple[str, str]]:
    """The MyST syntax left in ``markdown``: (kind, snippet) pairs; code blocks and spans excluded."""
    kept, stack = [], []  # open fences: (char, length, holds code)
    for line in markdown.split("\n"):
        fence = re.match(r"^[ \t]*(`{3,}|~{3,}|:{3,})[ \t]*(.*)$", line)
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
    text = "\n".join(kept)
    found = [("role", m.group(0)) for m in INLINE_RE.finditer(text) if m.group("role")]
    text = INLINE_RE.sub(lambda m: "" if m.group("code") else m.group(0), text)
    for what, pattern in MYST_LEFTOVERS.items():
        if what != "role":
            found += [(what, m.group(0)) for m in pattern.finditer(text)]
    return found


# --- one notebook ------------------------------------------------------------------------------


def glued_values(nb: dict) -> dict[str, str]:
    """Each glued name's stored text (``application/papermill.record/text/plain``)."""
    values = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None and GLUE_MIME in output.get("data", {}):
                values[name] = _text(output["data"][GLUE_MIME])
    return values


def _header(book: Book, docname: str, nb: dict) -> str:
    stamp = nb.get("metadata", {}).get("klbook", {})
    title = book.titles.get(docname, docname)
    run = []
    if stamp.get("scale"):
        run.append(f"`{stamp['scale']}` scale")
    device = str(stamp.get("device", ""))
    if device:
        kind = "CPU" if device.lower().startswith("cpu") else device.partition(": ")[2] or device
        run.append(kind + (f" ({stamp['machine']})" if stamp.get("machine") else ""))
    if stamp.get("executed"):
        run.append(f"executed {stamp['executed']}")
    run_text = (" (" + ", ".join(run) + ")") if run else ""
    return (
        f"> **Colab edition** of [{title}]({book.page_url(docname)}), a chapter of the book "
        f"[*KL is all you need*]({book.page_url(book.docs[0])}).\n>\n"
        f"> It is generated from the book's notebook by `scripts/make_colab.py`: the text is the "
        f"book's, with its cross-references, citations and notes in plain Markdown, and the "
        f"numbers in the text and the outputs below are those of the published run{run_text}. "
        f"Run it top to bottom: the first code cell installs `klbook` if it is missing. On a GPU "
        f"the chapter picks the `full` scale (set `KLBOOK_SCALE=quick` to match the published "
        f"run); trained and Monte Carlo numbers can differ in their last digits, and every "
        f"`assert` still holds."
    )


def convert(book: Book, docname: str, nb: dict) -> dict:
    """The Colab edition of the notebook ``nb`` (the notebook ``docname`` of ``book``)."""
    converter = Converter(book, docname, glued_values(nb))
    cells = [{"cell_type": "markdown", "id": "colab-edition", "metadata": {}, "source": _header(book, docname, nb)}]
    for cell in nb["cells"]:
        cell = copy.deepcopy(cell)
        metadata = cell.setdefault("metadata", {})
        metadata.pop("execution", None)
        if cell["cell_type"] == "markdown":
            if cell.get("attachments"):
                converter.fail("a Markdown cell with attachments")
            cell["source"] = converter.markdown(_text(cell["source"]))
        elif cell["cell_type"] == "code":
            tags = set(metadata.get("tags", []))
            if tags & HIDDEN_INPUT_TAGS:
                metadata.setdefault("jupyter", {})["source_hidden"] = True
            if tags & HIDDEN_OUTPUT_TAGS:
                metadata.setdefault("jupyter", {})["outputs_hidden"] = True
            cell["source"] = _text(cell["source"])
            for output in cell.get("outputs", []):
                if "text" in output:
                    output["text"] = _text(output["text"])
        else:
            cell["source"] = _text(cell["source"])
        cells.append(cell)
    metadata = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info", "klbook")}
    metadata["accelerator"] = "GPU"
    metadata["colab"] = {"provenance": [], "gpuType": "T4", "toc_visible": True}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def dumps(nb: dict) -> str:
    """The file text (nbformat's own layout: sorted keys, one-space indent)."""
    import nbformat

    node = nbformat.from_dict(nb)
    nbformat.validate(node)
    return nbformat.writes(node) + "\n"


def generate_one(book: Book, docname: str) -> tuple[Path, str]:
    """The Colab edition of the notebook ``docname``: its path and its file text."""
    source = book.root / f"{docname}.ipynb"
    nb = json.loads(source.read_text(encoding="utf-8"))
    return book.root / OUT_DIR / source.name, dumps(convert(book, docname, nb))


def generate(book: Book | None = None) -> dict[Path, str]:
    """``{colab path: file text}`` for every notebook in the table of contents."""
    book = book or load_book()
    return dict(generate_one(book, docname) for docname in book.notebooks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    try:
        book = load_book()
    except ColabError as error:
        print(f"make_colab: {error}", file=sys.stderr)
        return 1
    files, failures = {}, []
    for docname in book.notebooks:  # one broken chapter does not stop the others
        try:
            path, text = generate_one(book, docname)
            files[path] = text
        except ColabError as error:
            failures.append(str(error))
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run make colab)", file=sys.stderr)
    else:
        (ROOT / OUT_DIR).mkdir(exist_ok=True)
        for path in stale:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(files[path], encoding="utf-8")
            tmp.replace(path)
        print(f"colab/: {len(files)} notebooks up to date, {len(stale)} of them rewritten")
    for failure in failures:
        print(f"make_colab: {failure}", file=sys.stderr)
    return 1 if failures or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
