"""Sphinx extension: HTML pages without the console errors the toolchain itself causes.

Jupyter Book 1 on Sphinx 7 registers some extensions' inline scripts twice (sphinx-thebe's
``const THEBE_JS_URL = ...`` among them; once with the file name ``None`` and once with ``""``,
so Sphinx's own de-duplication misses them), and the second copy of a ``const`` is a
JavaScript ``SyntaxError`` on every page. This removes exact duplicates of a page's scripts, keeping the
first, so the browser test (tests/test_site.py) can insist on a clean console.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    filename = str(getattr(script, "filename", script) or "")  # None and "" both mean inline
    attributes = tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items()
                              if k != "priority"))
    return filename, attributes


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
