"""klbook: KL is all you need, as code.

Almost every objective in modern machine learning is the KL divergence I[P;Q] from the world as
it is (P) to the world as we wish it were (Q). This package makes each chapter's objective a few
lines: ``kl`` and ``mc_kl`` for divergences, and one module per chapter.

Every public submodule is reachable after ``import klbook`` (``klbook.recipe``, ``klbook.train``,
``klbook.vae``, ...): each is imported on first use, so ``import klbook`` itself stays fast. The
modules that draw figures or widgets (``plot``, ``widgets``, ``vae_explorer``) or use the bundled
datasets need the book's extra, ``pip install "klbook[chapters]"``; without it they raise an
``ImportError`` that says so.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

from klbook.divergence import MCEstimate, cross_entropy, entropy, kl, mc_kl, register_kl
from klbook.units import NATS_PER_BIT, bits_per_dim, to_bits, to_nats

try:
    __version__ = importlib.metadata.version("klbook")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "kl",
    "mc_kl",
    "entropy",
    "cross_entropy",
    "register_kl",
    "MCEstimate",
    "to_bits",
    "to_nats",
    "bits_per_dim",
    "NATS_PER_BIT",
    "__version__",
]


# The book's extra, by import name: what the chapter modules need beyond the core install.
_CHAPTERS_EXTRA = {"matplotlib": "matplotlib", "ipywidgets": "ipywidgets", "sklearn": "scikit-learn"}
_CHAPTERS_INSTALL = 'pip install "klbook[chapters]"'


def _require_chapters_extra(module: str, err: ModuleNotFoundError):
    """Re-raise ``err``, raised while ``module`` imports, as the missing extra it means.

    A chapter module (figures, widgets, bundled datasets) calls this from ``except
    ModuleNotFoundError`` around its imports: a missing package of the ``chapters`` extra becomes
    an ``ImportError`` that names the install command; any other missing module is re-raised as is.
    """
    package = (err.name or "").partition(".")[0]
    if package not in _CHAPTERS_EXTRA:
        raise err
    raise ImportError(
        f"{module} needs {_CHAPTERS_EXTRA[package]}, which comes with the book's extra: {_CHAPTERS_INSTALL}"
    ) from err


def _submodules() -> list[str]:
    """The public submodules: every module in this package whose name does not start with ``_``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str):
    """Import a public submodule on first access (``klbook.recipe`` after ``import klbook``)."""
    if not name.startswith("_") and name in _submodules():
        return importlib.import_module(f"{__name__}.{name}")  # also sets it as an attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and every public submodule (what tab completion offers)."""
    return sorted(set(__all__) | set(_submodules()))
