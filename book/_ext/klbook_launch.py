"""Sphinx extension: a chapter's Colab and Binder buttons open its Colab edition.

Colab and Jupyter render no MyST, so a chapter opened from ``book/`` shows raw roles
("{glue}`...`") where its numbers should be. ``scripts/make_colab.py`` writes a plain-Markdown
edition of every chapter to ``colab/<same name>.ipynb``; this points the launch buttons at it.

sphinx-book-theme (``header_buttons/launch.py``) builds each button's URL from the page's path in
the repository, ``book/<name>.ipynb``, in its ``html-page-context`` handler (priority 501), and
stores the buttons in ``context["header_buttons"]`` as a group labelled ``launch-buttons``. This
handler runs after it and replaces that path with ``colab/<name>.ipynb`` in the Colab URL and in
Binder's ``urlpath``. If the theme ever builds the URLs differently, the build stops rather than
silently sending learners to the MyST notebook.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from sphinx.errors import ExtensionError

COLAB_DIR = "colab"
REWRITTEN = ("Colab", "Binder")


def colab_path(pagename: str) -> str:
    """The Colab edition of a page, relative to the repository root."""
    return f"{COLAB_DIR}/{PurePosixPath(pagename).name}.ipynb"


def _point_at_colab(app, pagename, templatename, context, doctree) -> None:
    for group in context.get("header_buttons") or []:
        if group.get("label") != "launch-buttons":
            continue
        book_path = f"{pagename}.ipynb"
        for button in group.get("buttons", []):
            if button.get("text") not in REWRITTEN:
                continue
            url = button.get("url", "")
            suffix = "/" + book_path
            if not url.endswith(suffix):
                raise ExtensionError(
                    f"klbook_launch: the {button['text']} button of {pagename} is {url!r}, which "
                    f"does not end in {suffix!r}; sphinx-book-theme changed how it builds launch "
                    "URLs, so book/_ext/klbook_launch.py must change with it")
            button["url"] = url[: -len(book_path)] + colab_path(pagename)


def setup(app):
    app.connect("html-page-context", _point_at_colab, priority=600)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
