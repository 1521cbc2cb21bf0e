"""Sphinx extension: the site's JavaScript comes from local copies, and the build says so if not.

The book must read (and CI must test it) with no network, so ``_config.yml`` points MathJax
(``mathjax_path``) and the Jupyter-widgets scripts (``nb_ipywidgets_js``: RequireJS and the
widgets' HTML manager, which draw a chapter's stored widget state) at files under
``html_static_path`` that ``make site-assets`` unpacks from the npm registry. Without this check
a missing copy would show only as unrendered equations or widgets; here the build stops and says
how to fix it. An address on another host is refused for the same reason.

The widgets' HTML manager finds its own files (icon fonts) relative to the RequireJS module id
it defines, ``@jupyter-widgets/html-manager/dist/...``, which RequireJS resolves against the
page: on a page with widgets a one-line RequireJS configuration, placed before ``require.js``,
maps that id to the local copy.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.errors import ExtensionError

FIX = "run `make site-assets` (it needs npm)"


def local_scripts(config) -> list[str]:
    """The script paths (relative to ``_static``) that the configuration asks pages to load."""
    scripts = [config.mathjax_path]
    scripts += list((getattr(config, "nb_ipywidgets_js", None) or {}).keys())
    return scripts


def _check_local_assets(app) -> None:
    if app.builder.format != "html":
        return
    roots = [Path(app.confdir) / p for p in app.config.html_static_path]
    for path in local_scripts(app.config):
        if "://" in path or path.startswith("//"):
            raise ExtensionError(
                f"{path!r} would load from the network; the book serves its scripts from local "
                f"copies (see _config.yml): {FIX}"
            )
        if not any((root / path).is_file() for root in roots):
            raise ExtensionError(
                f"{path} is in none of html_static_path {[str(r) for r in roots]}: {FIX}"
            )


HTML_MANAGER_ID = "@jupyter-widgets/html-manager/dist"


def _configure_requirejs(app, pagename, templatename, context, doctree) -> None:
    """Map the HTML manager's module id to its local copy, before require.js loads."""
    scripts = context.get("script_files") or []
    local = [p for p in (getattr(app.config, "nb_ipywidgets_js", None) or {})
             if "html-manager" in p]
    for index, script in enumerate(scripts):
        if str(getattr(script, "filename", "") or "").endswith("require.js") and local:
            directory = local[0].rsplit("/", 1)[0]
            body = (f'var require = {{paths: {{"{HTML_MANAGER_ID}": '
                    f'document.documentElement.dataset.content_root + "_static/{directory}"}}}};')
            scripts.insert(index, type(script)(None, body=body))
            return


def setup(app):
    app.connect("builder-inited", _check_local_assets)
    app.connect("html-page-context", _configure_requirejs, priority=800)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
