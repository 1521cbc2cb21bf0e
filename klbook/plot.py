"""One look for every figure in the book.

Figures label their axes with units (nats or bits) and their captions say what to see.
:func:`style` is applied once at the top of a chapter; :func:`figure` makes a figure in it.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = ["style", "figure", "COLORS", "REAL", "DREAM"]

#: Colour of the real world P (the world as it is) in every figure.
REAL = "#1f5fa8"
#: Colour of the dream world Q (the world as we wish it were) in every figure.
DREAM = "#c2452d"
COLORS = (REAL, DREAM, "#3a8f3a", "#8a5cb8", "#d08a1c", "#555555")

_RC = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
}


def style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    mpl.rcParams.update(_RC)


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float | None = None, **kwargs):
    """``plt.subplots`` in the book's style; returns ``(fig, axes)``."""
    style()
    if height is None:
        height = 3.2 * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)
