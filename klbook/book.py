"""Helpers the chapters share: the scale a chapter runs at, and gluing numbers into the prose.

Every chapter runs at the ``quick`` scale (about a minute on a 2-core CPU) unless it finds a
GPU, where it runs at ``full`` (bigger data, longer training). ``KLBOOK_SCALE`` overrides both.
Numbers the prose quotes are *glued* from execution with :func:`glue`, rounded to the
precision the text needs, so the published text and the stored outputs that CI re-checks
are the same numbers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

__all__ = ["scale", "is_full", "glue", "glue_text", "round_sig"]

SCALES = ("quick", "full")


def scale() -> str:
    """The scale this chapter runs at: ``KLBOOK_SCALE`` if set, else ``full`` on a GPU.

    Raises:
        ValueError: if ``KLBOOK_SCALE`` is set to anything but ``quick`` or ``full``.
    """
    env = os.environ.get("KLBOOK_SCALE", "").strip().lower()
    if env:
        if env not in SCALES:
            raise ValueError(f"KLBOOK_SCALE must be one of {SCALES}; got {env!r}")
        return env
    return "full" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "quick"


def is_full() -> bool:
    """``True`` when the chapter runs at the ``full`` scale."""
    return scale() == "full"


def round_sig(value: Any, digits: int = 3) -> Any:
    """Round a number to ``digits`` significant figures (ints, inf and bools pass through)."""
    if isinstance(value, (bool, int, str)):
        return value
    x = float(value)
    if not math.isfinite(x) or x == 0.0:
        return x
    return float(f"{x:.{digits}g}")


def glue_text(value: Any) -> str:
    """The text the prose shows for a glued value: a whole number without a trailing ``.0``
    (``525.0`` reads as more precise than the 3 significant figures it has), else its repr."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def glue(name: str, value: Any, digits: int = 3) -> Any:
    """Glue a number into the book's prose (myst-nb ``{glue}`` role), rounded to ``digits``.

    Writes the same output as ``myst_nb.glue(name, value, display=False)`` without needing
    myst-nb installed (it is a book-building dependency, absent on Colab). The stored output is
    the rounded number's text, so nbval re-checks exactly what the prose shows.

    Returns:
        The rounded value, so a cell can ``assert`` on what it glued.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name must be an identifier-like string; got {name!r}")
    rounded = round_sig(value, digits)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: nothing to glue into
        return rounded
    if get_ipython() is None:
        return rounded
    prefix = "application/papermill.record/"
    display(
        {prefix + "text/plain": glue_text(rounded)},
        raw=True,
        metadata={"scrapbook": {"name": name, "mime_prefix": prefix}},
    )
    return rounded
