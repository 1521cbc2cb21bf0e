"""Sphinx extension: the execution-status page, generated at build time.

``book/execution.md`` holds a ``{klbook-execution}`` directive. It becomes a table with one
row per notebook in the table of contents, in book order, read from two records:

* the ``klbook`` metadata that ``scripts/refresh_outputs.py`` stamps into a notebook when it
  stores the outputs the book publishes: seconds, scale, device, machine, date; and
* ``_build/nbval-timings.json``, written by the repository's ``conftest.py`` when ``make test``
  re-executed every notebook with nbval: seconds and whether the outputs were reproduced.

It also shows every record under ``book/runs/`` that ``scripts/run_notebooks.py`` wrote
(``make gpu-check`` on a GPU, ``make full-check`` at the full scale on a CPU): per notebook,
seconds and pass/fail (with the failing cell), and for the run the device, versions and date.

The page is re-read on every build (the records change without its source changing), so the
table can never be stale or typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

METADATA_KEY = "klbook"
TIMINGS = "nbval-timings.json"
COLUMNS = ("notebook", "stored outputs: seconds", "scale", "ran on", "executed",
           "last nbval check")


def toc_notebooks(env) -> list[str]:
    """Docnames of the notebooks in the table of contents, in reading order."""
    site_map = getattr(env, "external_site_map", None)
    if site_map is None:
        names = sorted(env.found_docs)
    else:
        names, stack = [], [site_map.root.docname]
        while stack:
            name = stack.pop(0)
            if name in names:
                continue
            names.append(name)
            doc = site_map[name] if name in site_map else None
            stack[0:0] = doc.child_files() if doc is not None else []
    return [n for n in names if Path(env.doc2path(n)).suffix == ".ipynb"
            and Path(env.doc2path(n)).exists()]


def read_timings(path: Path) -> dict:
    """The nbval timing record, or ``{}`` where ``make test`` has not written one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning(f"klbook: cannot read {path}: {err}")
        return {}


def _cell(content) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(content, nodes.Node):
        entry += nodes.paragraph("", "", content)
    else:
        entry += nodes.paragraph(text=str(content))
    return entry


def _table(rows: list[list], columns=COLUMNS) -> nodes.table:
    table = nodes.table(classes=["klbook-execution"])
    group = nodes.tgroup(cols=len(columns))
    table += group
    group += [nodes.colspec(colwidth=1) for _ in columns]
    head = nodes.thead()
    head += nodes.row("", *[_cell(c) for c in columns])
    body = nodes.tbody()
    body += [nodes.row("", *[_cell(c) for c in row]) for row in rows]
    group += [head, body]
    return table


class KlbookExecution(SphinxDirective):
    """``{klbook-execution}``: what each notebook cost to run and where it ran."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.klbook_execution_docs = getattr(self.env, "klbook_execution_docs", set())
        self.env.klbook_execution_docs.add(self.env.docname)
        timings_path = Path(self.env.app.outdir).parent / TIMINGS
        timings = read_timings(timings_path)
        checked = timings.get("notebooks", {})
        srcdir = Path(self.env.srcdir)
        rows, stored_total, checked_total = [], 0.0, 0.0
        for docname in toc_notebooks(self.env):
            path = Path(self.env.doc2path(docname))
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
            stamp = meta.get(METADATA_KEY, {})
            link = addnodes.pending_xref("", refdomain="std", reftype="doc",
                                         reftarget="/" + docname, refexplicit=False)
            link += nodes.inline(docname, docname)
            record = checked.get(path.relative_to(srcdir).as_posix())
            if record is None:
                check = "not run"
            else:
                check = f"{record['seconds']:.1f} s, " + (
                    "reproduced" if record.get("passed") else "FAILED")
                checked_total += record["seconds"]
            seconds = stamp.get("seconds")
            stored_total += seconds or 0.0
            rows.append([
                link,
                f"{seconds:.1f}" if seconds is not None else "not stamped",
                stamp.get("scale", "?"),
                f"{stamp.get('device', '?')} ({stamp.get('machine', '?')})",
                stamp.get("executed", "?"),
                check,
            ])
        out = []
        if not rows:
            out.append(nodes.paragraph(text="No notebook is in the table of contents yet."))
            return out
        rows.append([nodes.strong(text="total"), f"{stored_total:.1f}", "", "", "",
                     f"{checked_total:.1f} s" if checked else ""])
        out.append(_table(rows))
        if timings:
            note = (f"The last nbval check ran on {timings.get('machine', '?')} at the "
                    f"{timings.get('scale', '?')} scale.")
        else:
            note = ("No nbval check has been recorded in this build directory "
                    f"({TIMINGS} is written by `make test`).")
        out.append(nodes.paragraph(text=note))
        out.extend(self._runs(srcdir))
        return out

    def _runs(self, srcdir: Path) -> list[nodes.Node]:
        """One table per record of ``scripts/run_notebooks.py`` under ``book/runs/``."""
        out = []
        runs = sorted((srcdir / "book" / "runs").glob("*.json"))
        if not any(p.stem == "gpu-check" for p in runs):
            out.append(nodes.paragraph(text=(
                "No GPU run is recorded: `make gpu-check` has not been run on a GPU for this "
                "version of the book, so no claim is made that it runs on one.")))
        for path in runs:
            self.env.note_dependency(str(path))
            try:
                run = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                logger.warning(f"klbook: cannot read {path}: {err}")
                continue
            versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())
            section = nodes.rubric(text=f"Run {path.stem}: {run.get('label', '?')}")
            para = nodes.paragraph(text=(
                f"Device {run.get('device', '?')} on {run.get('machine', '?')}; scale "
                f"{run.get('scale', '?')}, seed {run.get('seed', 0)}; Python {run.get('python', '?')}; "
                f"{versions}; {run.get('date', '?')}."))
            rows = []
            for name, r in run.get("notebooks", {}).items():
                result = "passed" if r.get("passed") else (
                    f"FAILED at cell {r.get('failing_cell')}: {r.get('error', '')}")
                rows.append([name, f"{r.get('seconds', 0):.1f}", result])
            total = sum(r.get("seconds", 0) for r in run.get("notebooks", {}).values())
            rows.append(["total", f"{total:.1f}", ""])
            out += [section, para, _table(rows, ("notebook", "seconds", "result"))]
        return out


def _always_reread(app, env, added, changed, removed):
    """The records behind the table change without the page changing: re-read it."""
    return [d for d in getattr(env, "klbook_execution_docs", set()) if d in env.found_docs]


def _purge(app, env, docname):
    getattr(env, "klbook_execution_docs", set()).discard(docname)


def setup(app):
    app.add_directive("klbook-execution", KlbookExecution)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge)
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True}
