"""Sphinx extension: the API reference, one section per public module of a package.

``book/api.md`` holds a single directive::

    ```{klbook-api} klbook
    klbook.divergence
    klbook.evidence
    ```

It documents the package itself (its docstring and a table of the names it re-exports, each
linking to where it is defined) and then every public submodule (``klbook/<name>.py`` whose
name does not start with ``_``), each in its own section through ``sphinx.ext.autodoc``
(docstrings in Google style via ``sphinx.ext.napoleon``; their ``.. math::`` rendered by MathJax).
The directive's content only sets the *order*: modules it names come first, in that order
(names of modules not written yet are skipped), and every other public module follows
alphabetically. A module added to ``klbook/`` therefore appears on the page with no edit here.

Three fixes make the generated text right (they change what is rendered, not which warnings
are shown):

* ``klbook.kl`` and the other names the package re-exports resolve to their definitions
  (``klbook.divergence.kl``), so docstrings may cite either spelling.
* The first line of an attribute's docstring is prose here (types come from annotations);
  napoleon would otherwise read ``"Scalar to minimise: ..."`` as a type named "Scalar to
  minimise". And a Google ``Args:`` line ``*args, **kwargs: ...`` is escaped properly
  (napoleon escapes only the first name of such a line).
* NamedTuple fields are documented once, from the class's ``Attributes:`` section, instead of
  again as members whose only text is Python's "Alias for field number N".
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


def public_modules(package: str, order: list[str] | None = None) -> list[str]:
    """Dotted names of the public submodules of ``package``, ``order`` first, then the rest."""
    pkg = importlib.import_module(package)
    found = sorted(
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if not info.name.startswith("_")
    )
    first = [name for name in (order or []) if name in found]
    return first + [name for name in found if name not in first]


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _reexport_table(package: str) -> list[str]:
    """reST lines: a table of the names ``package`` re-exports, linked to their definitions."""
    pkg = importlib.import_module(package)
    rows = []
    for name in getattr(pkg, "__all__", []):
        obj = getattr(pkg, name)
        module = getattr(obj, "__module__", None)
        if module is None or not (inspect.isclass(obj) or callable(obj)):
            continue  # constants and __version__ are documented in their own modules
        role = "class" if inspect.isclass(obj) else "func"
        rows.append((f":py:{role}:`{package}.{name} <{module}.{obj.__qualname__}>`", _summary(obj)))
    if not rows:
        return []
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "",
             "   * - name", "     - what it is"]
    for link, summary in rows:
        lines += [f"   * - {link}", f"     - {summary}"]
    return lines


class KlbookApi(SphinxDirective):
    """``{klbook-api} PACKAGE``: a section per public module of ``PACKAGE`` (see module doc)."""

    required_arguments = 1
    has_content = True

    def _rst(self, lines: list[str], parent: nodes.Element) -> None:
        """Parse reST ``lines`` into ``parent`` whatever the page's own markup (MyST or reST)."""
        from docutils.parsers.rst import Parser
        from docutils.utils import new_document

        doc = new_document(self.env.docname, self.state.document.settings)
        doc.reporter = self.state.document.reporter
        doc["source"] = self.state.document["source"]
        Parser().parse("\n".join(lines), doc)
        for node in doc.children:
            if node.get("names"):
                self.state.document.note_explicit_target(node, node)
        parent.extend(doc.children)

    def _section(self, module: str, body: list[str]) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(f"api-{module}")], names=[module])
        section += nodes.title("", "", nodes.literal(module, module))
        self.state.document.note_implicit_target(section, section)
        self._rst(body, section)
        return section

    def run(self) -> list[nodes.Node]:
        package = self.arguments[0]
        order = [line.strip() for line in self.content if line.strip()]
        self.env.note_dependency(importlib.import_module(package).__file__)
        out = [self._section(package, [
            f".. automodule:: {package}", "   :no-members:", "",
            f"Importing ``{package}`` gives these names directly:", "",
            *_reexport_table(package),
        ])]
        for module in public_modules(package, order):
            try:
                self.env.note_dependency(importlib.import_module(module).__file__)
            except Exception as err:  # a broken module must not hide the others
                logger.warning(f"klbook-api: cannot import {module}: {err!r}",
                               location=self.get_location())
                continue
            out.append(self._section(module, [f".. automodule:: {module}", "   :members:"]))
        return out


_STAR_ARGS = re.compile(r"^(\s+)\*(\w+), \*\*(\w+)(\s*(\([^)]*\))?\s*:)")


_PROSE_ATTRIBUTES: dict[int, list[str]] = {}


def _prepare_docstring(app, what, name, obj, options, lines) -> None:
    """Runs before napoleon: see the module docstring."""
    if what in ("attribute", "data", "property") and lines and ":" in lines[0]:
        _PROSE_ATTRIBUTES[id(lines)] = list(lines)  # napoleon would take "X: ..." as type X
    for i, line in enumerate(lines):
        lines[i] = _STAR_ARGS.sub(r"\1\\*\2, \\*\\*\3\4", line)


def _restore_prose_attribute(app, what, name, obj, options, lines) -> None:
    """Runs after napoleon: an attribute's docstring stays the prose it was written as."""
    original = _PROSE_ATTRIBUTES.pop(id(lines), None)
    if original is not None:
        lines[:] = original


def _skip_namedtuple_alias(app, what, name, obj, skip, options):
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def _resolve_reexport(app, env, node, contnode):
    """``klbook.kl`` -> ``klbook.divergence.kl`` for the names ``klbook`` re-exports."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    package, _, name = target.rpartition(".")
    if not package or package not in app.config.klbook_api_packages:
        return None
    obj = getattr(importlib.import_module(package), name, None)
    module = getattr(obj, "__module__", None)
    if obj is None or module is None or module == package:
        return None
    canonical = f"{module}.{getattr(obj, '__qualname__', name)}"
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node.get("reftype"),
                               canonical, node, contnode)


def setup(app):
    app.add_directive("klbook-api", KlbookApi)
    app.add_config_value("klbook_api_packages", ["klbook"], "env")
    app.connect("autodoc-process-docstring", _prepare_docstring, priority=400)
    app.connect("autodoc-process-docstring", _restore_prose_attribute, priority=600)
    app.connect("autodoc-skip-member", _skip_namedtuple_alias, priority=400)
    app.connect("missing-reference", _resolve_reexport)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
