"""Sphinx extension: show readers the install cell and pip command for the configured repository.

``{klbook-install-cell}`` renders, as Python, the exact first code cell every chapter starts
with (``install_cell_source`` in ``klbook_strict.py``); ``{klbook-install-cell}`` with the
``:pip:`` flag renders the equivalent ``pip install`` command. Both take the repository from
``_config.yml`` (``repository.url``), the one place it is written, so the guide can never
disagree with the notebooks.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

from klbook_strict import install_cell_source


def repository_url(config) -> str:
    """``repository.url`` from ``_config.yml`` (Jupyter Book passes it to the theme)."""
    url = (config.html_theme_options or {}).get("repository_url", "")
    if not url:
        raise ExtensionError("_config.yml must set repository.url (the install cell uses it)")
    return url.rstrip("/")


class InstallCell(SphinxDirective):
    """``{klbook-install-cell}``: the chapters' first code cell (``:pip:`` for the shell line)."""

    option_spec = {"pip": directives.flag}

    def run(self) -> list[nodes.Node]:
        url = repository_url(self.config)
        if "pip" in self.options:
            text, language = f'pip install "klbook @ git+{url}"', "bash"
        else:
            text, language = install_cell_source(url), "python"
        block = nodes.literal_block(text, text, language=language)
        return [block]


def setup(app):
    app.add_directive("klbook-install-cell", InstallCell)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
