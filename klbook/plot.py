"""One look for every figure in the book.

Figures label their axes with units (nats or bits) and their captions say what to see.
:func:`style` is applied once at the top of a chapter; :func:`figure` makes a figure in it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klbook import _require_chapters_extra

try:  # the book's extra: pip install "klbook[chapters]"
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    from matplotlib.rcsetup import cycler  # what matplotlib exports as mpl.cycler
except ModuleNotFoundError as err:
    _require_chapters_extra("klbook.plot", err)

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = ["style", "figure", "COLORS", "REAL", "DREAM"]

#: Colour of the real world P (the world as it is) in every figure.
REAL = "#1f5fa8"
#: Colour of the dream world Q (the world as we wish it were) in every figure.
DREAM = "#c2452d"
COLORS = (REAL, DREAM, "#3a8f3a", "#8a5cb8", "#d08a1c", "#555555")

_RC: dict[RcKeyType, Any] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.prop_cycle": cycler(color=COLORS),
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


def evidence_fan(ax, log_odds, expected_slope=None, num_lines: int = 25, color: str = REAL, label: str | None = None):
    r"""Draw belief trajectories (chapter 1): a few runs, their mean and the expected line, in bits.

    The log-odds start at 0 (even prior odds) and move by each observation's weight of evidence;
    on average by the KL divergence per observation, :math:`\langle \ell_n \rangle = n\,I[p_1;p_2]`.
    A run whose log-odds become infinite (a decisive observation) ends in an arrow head at the
    edge of the axes.

    Args:
        ax: matplotlib axes to draw into.
        log_odds: log-odds in nats after observations ``1..n``, shape ``[n, runs]``.
        expected_slope: expected weight of evidence per observation in nats (drawn when finite).
        num_lines: how many individual runs to draw.
        color: colour of the runs and of their mean.
        label: legend label of the mean over runs.
    """
    import numpy as np

    from klbook.units import to_bits

    bits = np.asarray(to_bits(log_odds), dtype=float)
    if bits.ndim != 2 or bits.shape[0] < 1:
        raise ValueError(f"log_odds must have shape [n, runs] with n >= 1; got {bits.shape}")
    full = np.vstack([np.zeros((1, bits.shape[1])), bits])  # [n + 1, runs], from the prior
    steps = np.arange(full.shape[0])
    finite = np.isfinite(full)
    top = 1.15 * max(1.0, float(np.max(np.abs(np.where(finite, full, 0.0)))))
    for run in range(min(num_lines, full.shape[1])):
        path, ok = full[:, run], finite[:, run]
        end = len(path) if ok.all() else int(np.argmax(~ok))
        ax.plot(steps[:end], path[:end], color=color, lw=0.6, alpha=0.4)
        if end < len(path):
            edge = np.sign(path[end]) * top
            ax.plot([end - 1, end], [path[end - 1], edge], color=color, lw=0.6, alpha=0.4)
            ax.plot([end], [edge], marker="^" if edge > 0 else "v", color=color, ms=5, clip_on=False)
    mean = full.mean(axis=1)
    if np.all(np.isfinite(mean)):
        ax.plot(steps, mean, color=color, lw=2.2, label=label or "mean over runs")
    if expected_slope is not None and np.isfinite(float(expected_slope)):
        ax.plot(steps, steps * float(to_bits(expected_slope)), "--", color="0.1", lw=1.2, label="$n$ × KL")
    if not finite.all():
        ax.set_ylim(top=top)
    ax.set(xlabel="observations $n$", ylabel="log-odds (bits)")


def gaussian_ellipses(ax, loc, cov, color: str, label: str | None = None, radii=(1.0, 2.0)):
    r"""Draw contours of a 2-D Gaussian :math:`\mathcal N(\mu, \Sigma)` at Mahalanobis radii (chapter 2).

    Args:
        ax: matplotlib axes.
        loc: mean, shape ``[2]``.
        cov: covariance, shape ``[2, 2]``, symmetric positive definite.
        color: line colour (:data:`REAL` for the real world, :data:`DREAM` for the dream world).
        label: legend label, attached to the innermost contour.
        radii: Mahalanobis radii of the contours drawn.
    """
    import numpy as np

    loc, cov = np.asarray(loc, dtype=float), np.asarray(cov, dtype=float)
    if loc.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"loc must have shape [2] and cov [2, 2]; got {loc.shape} and {cov.shape}")
    chol = np.linalg.cholesky(cov)  # raises LinAlgError unless positive definite
    angle = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)])  # [2, 200]
    for i, r in enumerate(radii):
        x, y = loc[:, None] + r * chol @ circle
        ax.plot(x, y, color=color, lw=1.6 if i == 0 else 0.9, label=label if i == 0 else None)
    ax.plot(*loc, "+", color=color, ms=8)
