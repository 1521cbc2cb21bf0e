r"""The β sweep on the rate–distortion plane: its numbers, its pictures and a slider (chapter 6).

A β-VAE minimises :math:`D + \beta R`, so β is the price of a nat of rate: each β picks a point
on the plane of rate :math:`R` (horizontal) and distortion :math:`D` (vertical). Every point
satisfies :math:`D + R \ge L \ge H`, so the region below the line :math:`D + R = H` is out of
reach (Alemi et al., 2018); a likelihood family whose best fit to a known :math:`x` still
spreads mass (a Binomial) adds a floor :math:`D \ge D_{\min}` (:func:`binomial_floor`).
:func:`summarise` measures a sweep trained by :func:`klbook.vae.fit_betas` (means and
standard errors of the :class:`klbook.vae.Chain`, reconstructions, samples),
:func:`draw_plane`, :func:`draw_beta` and :func:`draw_sweep` draw it, and
:func:`beta_explorer` puts a slider over the precomputed sweep in a live notebook.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from klbook import _require_chapters_extra

try:  # the book's extra: pip install "klbook[chapters]"
    import ipywidgets as w
    import matplotlib.figure
except ModuleNotFoundError as err:
    _require_chapters_extra("klbook.vae_explorer", err)

from klbook import vae as V
from klbook.divergence import check_key
from klbook.plot import COLORS, DREAM, REAL, style
from klbook.train import stack_size

__all__ = [
    "BetaSweep",
    "summarise",
    "empirical_entropy",
    "binomial_floor",
    "identified",
    "identification_bound",
    "SweepChecks",
    "check_sweep",
    "draw_plane",
    "draw_beta",
    "draw_sweep",
    "beta_explorer",
    "BetaExplorer",
]


class BetaSweep(NamedTuple):
    r"""A measured β sweep (NumPy arrays; ``M`` models, ``n`` images shown; nats per example).

    ``mean``/``stderr``: :class:`klbook.vae.Chain` of ``[M]``; ``gap``/``gap_stderr``: mean and
    s.e. of :math:`D + R - \hat L_K` ``[M]``; ``iwae_gap``/``iwae_gap_stderr``: of
    :math:`\hat L_K - L` where the marginal is exact (or ``None``); ``entropy``: the data's :math:`H` (or ``None``);
    ``floor``: the likelihood's :math:`D_{\min}` (or ``None``); ``identified [M]``: fraction of
    reconstructions nearest their own original; images ``[n, h, w]`` and ``[M, n, h, w]``.
    """

    betas: np.ndarray
    mean: V.Chain
    stderr: V.Chain
    gap: np.ndarray
    gap_stderr: np.ndarray
    entropy: float | None
    floor: float | None
    identified: np.ndarray | None = None
    iwae_gap: np.ndarray | None = None
    iwae_gap_stderr: np.ndarray | None = None
    originals: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    samples: np.ndarray | None = None
    max_value: float = 1.0


def empirical_entropy(x) -> float:
    r"""Entropy of the empirical distribution of the rows of ``x [N, d]``: :math:`-\sum_j \hat p_j \log \hat p_j`.

    :math:`\log N` when every row is distinct; the :math:`H` of a training set seen as the real world.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [N, d] with N >= 1; got {x.shape}")
    _, counts = np.unique(x, axis=0, return_counts=True)
    p = counts / x.shape[0]
    return float(-np.sum(p * np.log(p)))


def binomial_floor(x, total_count: int) -> float:
    r"""Smallest mean distortion any independent-Binomial decoder can reach, even knowing ``x``.

    .. math:: D_{\min} = -\Big\langle \sum_i \log \mathrm{Binomial}(x_i;\, n,\, x_i / n)\Big\rangle_x.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or bool(jnp.any((x < 0) | (x > total_count))):
        raise ValueError(f"x must be [N, d] counts in 0..{total_count}; got shape {x.shape}")
    d = dist.Binomial(total_count=total_count, probs=jnp.clip(x / total_count, 0.0, 1.0)).to_event(1)
    return float(-jnp.mean(d.log_prob(x)))


def identified(x_hat, x) -> jax.Array:
    """Fraction of rows of ``x_hat [..., N, d]`` whose nearest (Euclidean) row of ``x [N, d]`` is their own."""
    x_hat, x = jnp.asarray(x_hat, jnp.float32), jnp.asarray(x, jnp.float32)
    if x_hat.shape[-2:] != x.shape or x.ndim != 2:
        raise ValueError(f"x_hat must end in the shape of x {x.shape}; got {x_hat.shape}")
    norms = jnp.sum(x**2, -1).reshape((1,) * (x_hat.ndim - 1) + (x.shape[0],))
    d2 = norms - 2 * x_hat @ x.T  # [..., N, N] squared distances, up to a per-row constant
    own = jnp.arange(x.shape[0]).reshape((1,) * (x_hat.ndim - 2) + (x.shape[0],))
    return jnp.mean(jnp.argmin(d2, axis=-1) == own, axis=-1)


def identification_bound(rate, n: int):
    r"""Fano's ceiling on :func:`identified` for a code of ``rate`` nats among ``n`` equally likely images.

    .. math:: \Pr[\text{correct}] \le 1 - \frac{\log n - R - \log 2}{\log(n - 1)},

    since the mutual information between the image and its code is at most the rate.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an integer of at least 3; got {n!r}")
    rate = np.asarray(rate, float)
    if np.any(rate < 0) or not np.all(np.isfinite(rate)):
        raise ValueError(f"rate must be finite and non-negative; got {rate}")
    return np.clip(1.0 - (np.log(n) - rate - np.log(2.0)) / np.log(n - 1.0), 0.0, 1.0)


def summarise(
    key,
    models: V.VAE,
    betas: Sequence[float] | np.ndarray,
    x,
    *,
    num_samples: int = 1000,
    entropy=None,
    floor=None,
    image_shape: tuple[int, int] | None = None,
    num_show: int = 8,
    log_marginal=None,
) -> BetaSweep:
    r"""Measure stacked models (from :func:`klbook.vae.fit_betas`) on ``x [N, d]``, one compiled pass.

    With ``image_shape``, also the first ``num_show`` originals, their reconstructions, ``num_show``
    samples from each dream world (decoder means) and the identification rate on ``x``. With
    ``log_marginal(model, x) -> [N]``, the exact :math:`\log q(x)`, also the IWAE's remaining gap.
    """
    check_key(key)
    grid = np.asarray(betas, float)
    if grid.ndim != 1:
        raise ValueError(f"betas must be one-dimensional, one per stacked model; got shape {grid.shape}")
    count = stack_size(models, "models")
    if count != grid.size:
        raise ValueError(f"models holds {count} stacked models but betas has {grid.size} values; they must match")
    x = jnp.asarray(x)
    show = image_shape is not None

    @eqx.filter_jit
    def run(models, key):
        def one(m, k):
            k1, k2, k3 = jax.random.split(k, 3)
            c = V.measure(k1, m, x, num_samples)
            mean_se = lambda v: (jnp.mean(v), jnp.std(v, ddof=1) / np.sqrt(v.size))  # noqa: E731
            out = (c.mean(), c.stderr(), *mean_se(c.gap))
            out += mean_se(c.neg_log_marginal + log_marginal(m, x)) if log_marginal is not None else (None, None)
            if show:
                rec = V.reconstruct(k2, m, x)
                out += (identified(rec, x), rec[:num_show], V.generate(k3, m, num_show))
            return out

        return eqx.filter_vmap(one)(models, jax.random.split(key, grid.size))

    out = jax.tree.map(np.asarray, run(models, key))
    images = (None,) * 4
    if image_shape is not None:
        shape = lambda a: a.reshape(*a.shape[:-1], *image_shape)  # noqa: E731
        images = (out[6], shape(np.asarray(x[:num_show])), shape(out[7]), shape(out[8]))
    return BetaSweep(
        grid,
        V.Chain(*out[0]),
        V.Chain(*out[1]),
        out[2],
        out[3],
        None if entropy is None else float(entropy),
        None if floor is None else float(floor),
        images[0],
        out[4],
        out[5],
        *images[1:],
        max_value=float(jnp.max(x)) if show else 1.0,
    )


def draw_plane(ax, sweep: BetaSweep, highlight: int | None = None, annotate: bool = True):
    """The rate–distortion plane: the sweep's points, the line :math:`D + R = H` and what is out of reach."""
    r, d = sweep.mean.rate, sweep.mean.distortion
    top = 1.08 * max(d.max(), (sweep.entropy or 0.0))
    right = 1.08 * max(r.max(), (sweep.entropy or 0.0))
    grid = np.linspace(0, right, 200)
    if sweep.entropy is not None:
        h = sweep.entropy
        ax.plot(grid, h - grid, color="0.2", lw=1.2, label=f"D + R = H ({h:.3g} nats)")
        low = np.maximum(h - grid, sweep.floor if sweep.floor is not None else -np.inf)
        ax.fill_between(grid, np.minimum(low, top), min(0.0, d.min()) - 1, color="0.85", label="out of reach")
    if sweep.floor is not None:
        ax.axhline(sweep.floor, color="0.4", lw=1, ls=":", label=f"likelihood floor ({sweep.floor:.3g} nats)")
    best = int(np.argmin(r + d))
    ax.plot(grid, r[best] + d[best] - grid, color=COLORS[2], lw=1, ls="--", label="equal ELBO (best)")
    ax.plot(r, d, "-o", color=DREAM, ms=4, label="β-VAEs")
    if annotate:  # one label per group of points that (nearly) coincide
        groups: list[list[int]] = []
        for i in range(r.size):
            near = groups and abs(r[i] - r[groups[-1][0]]) < 0.02 * right and abs(d[i] - d[groups[-1][0]]) < 0.02 * top
            groups[-1].append(i) if near else groups.append([i])
        for g in groups:
            label = "β=" + ", ".join(f"{sweep.betas[i]:g}" for i in g)
            ax.annotate(label, (r[g[0]], d[g[0]]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if highlight is not None:
        ax.plot(r[highlight], d[highlight], "o", ms=11, mfc="none", mec=REAL, mew=2)
    ax.set(xlim=(0, right), ylim=(min(0.0, d.min() - 1), top), xlabel="rate R (nats)", ylabel="distortion D (nats)")
    ax.legend(fontsize=7, loc="upper right")
    return ax


def _strip(images: np.ndarray) -> np.ndarray:
    """``[n, h, w]`` side by side with a one-pixel gap: ``[h, n (w + 1) - 1]``."""
    n, h, wd = images.shape
    pad = np.concatenate([images, np.full((n, h, 1), np.nan)], axis=2)
    return pad.transpose(1, 0, 2).reshape(h, n * (wd + 1))[:, :-1]


def _show(ax, images, vmax, title):
    ax.imshow(_strip(images), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9, loc="left")
    ax.axis("off")


def _check_images(sweep: BetaSweep) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sweep's ``(originals, reconstructions, samples, identified)``, which summarise fills together."""
    images = (sweep.originals, sweep.reconstructions, sweep.samples, sweep.identified)
    if images[0] is None or images[1] is None or images[2] is None or images[3] is None:
        raise ValueError("this sweep has no images; summarise it with image_shape=(h, w)")
    return images[0], images[1], images[2], images[3]


def draw_beta(sweep: BetaSweep, i: int, fig=None):
    """One β of the sweep: originals, reconstructions, samples and its place on the plane."""
    originals, reconstructions, samples, _ = _check_images(sweep)
    if not 0 <= i < sweep.betas.size:
        raise ValueError(f"i must be in 0..{sweep.betas.size - 1}; got {i}")
    style()
    fig = fig or matplotlib.figure.Figure(figsize=(9.0, 3.4), layout="constrained")
    # matplotlib's stubs type subfigures(1, 2) as one SubFigure; at runtime it is an array of two
    left, right = fig.subfigures(1, 2, width_ratios=[1.3, 1])  # pyright: ignore[reportGeneralTypeIssues]
    axes = left.subplots(3, 1)
    m, s = sweep.mean, sweep.stderr
    _show(axes[0], originals, sweep.max_value, "data x")
    _show(axes[1], reconstructions[i], sweep.max_value, "reconstructions (decoder mean at z ~ encoder)")
    _show(axes[2], samples[i], sweep.max_value, "samples (decoder mean at z ~ prior)")
    left.suptitle(
        f"β = {sweep.betas[i]:g}:  D = {m.distortion[i]:.3g},  R = {m.rate[i]:.3g} ± {s.rate[i]:.2g},  "
        f"L ≤ {m.neg_log_marginal[i]:.3g} nats",
        fontsize=9,
    )
    draw_plane(right.subplots(), sweep, highlight=i, annotate=False)
    return fig


def draw_sweep(sweep: BetaSweep):
    """Every β at once (the book's static explorer): images per β beside the plane."""
    originals, reconstructions, samples, _ = _check_images(sweep)
    style()
    m = sweep.betas.size
    fig = matplotlib.figure.Figure(figsize=(9.5, 0.75 * (m + 1) + 0.6), layout="constrained")
    # matplotlib's stubs type subfigures(1, 2) as one SubFigure; at runtime it is an array of two
    left, right = fig.subfigures(1, 2, width_ratios=[1.5, 1])  # pyright: ignore[reportGeneralTypeIssues]
    axes = left.subplots(m + 1, 2)
    _show(axes[0, 0], originals, sweep.max_value, "data x")
    axes[0, 1].axis("off")
    for i, b in enumerate(sweep.betas):
        _show(axes[i + 1, 0], reconstructions[i], sweep.max_value, f"β={b:g}: reconstructions")
        _show(axes[i + 1, 1], samples[i], sweep.max_value, "samples")
    draw_plane(right.subplots(), sweep)
    return fig


class BetaExplorer(w.VBox):
    """A slider over the sweep's β values and the :func:`draw_beta` picture of the chosen one."""

    def __init__(self, sweep: BetaSweep, dpi: int = 80):
        _check_images(sweep)
        self.sweep, self.dpi = sweep, dpi
        self.slider = w.SelectionSlider(
            options=[(f"{b:g}", i) for i, b in enumerate(sweep.betas)],
            value=int(np.argmin(np.abs(np.log(sweep.betas)))),
            description="β",
            continuous_update=False,
        )
        self.image = w.Image(format="png")
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        super().__init__([self.slider, self.image])
        self.show(self.slider.value)

    def show(self, i: int) -> None:
        """Draw β number ``i``."""
        buf = io.BytesIO()
        draw_beta(self.sweep, i).savefig(buf, format="png", dpi=self.dpi)
        self.image.value = buf.getvalue()

    def __repr__(self) -> str:  # deterministic text/plain for stored notebook outputs
        return f"BetaExplorer(betas={[float(f'{b:.3g}') for b in self.sweep.betas]})"


def beta_explorer(sweep: BetaSweep) -> BetaExplorer:
    """An interactive slider over a precomputed :class:`BetaSweep` (display it in a live notebook)."""
    if not isinstance(sweep, BetaSweep):
        raise TypeError(f"sweep must be a BetaSweep (from summarise); got {type(sweep).__name__}")
    return BetaExplorer(sweep)


class SweepChecks(NamedTuple):
    """What :func:`check_sweep` verified, for the text to quote (NumPy values; ``M`` models)."""

    collapsed: np.ndarray  # [M] bool: rate within 4 s.e. of a sampled estimate of zero
    best: int  # index of the lowest L̂_K
    spread: np.ndarray  # [M] largest pixel standard deviation across the shown images
    from_average: np.ndarray  # [M] largest distance of a shown image from the average training image
    orig_spread: float  # largest pixel standard deviation across the shown originals
    fano: np.ndarray  # [M] Fano's ceiling on the identified share


def _claim(ok, message: str) -> None:
    if not bool(np.all(ok)):
        raise AssertionError(message)


def check_sweep(sweep: BetaSweep, x_train, total_count: int, num_images: int) -> SweepChecks:
    r"""Check the claims chapter 6 makes about a measured digit sweep; raise ``AssertionError`` if one fails.

    Tolerances are four standard errors of the sweep's Monte Carlo and image averages, and float32
    rounding for the binomial floor:

    * the chain: :math:`D + R \ge \hat L_K` within 4 s.e.;
    * the floor :math:`D \ge D_{\min}` (:func:`binomial_floor`), which holds for every image and draw,
      up to float32 rounding of sums of ``data_dim`` terms of size up to :math:`\log n!`;
    * collapse: from some β on (and for all above) the rate is within 4 s.e. of zero, and the
      collapsed models show one image near the average training image (pixel spread under a
      twentieth of the originals', every pixel within :math:`n/10` of the average);
    * the rate falls by more than 4 s.e. from each β to the next until it has collapsed;
    * at the lowest β at least 95% of reconstructions identify their original, and no model
      identifies more than Fano's inequality allows for its rate (within 4 binomial s.e.);
    * the model with the lowest :math:`\hat L_K` beats both ends of the sweep by more than 4 s.e.

    ``x_train [N, d]``: the training counts (for the average image); ``num_images``: the ``M``
    images the sweep was measured on. Chapter 6.
    """
    originals, reconstructions, samples, identified = _check_images(sweep)
    if sweep.floor is None:
        raise ValueError("check_sweep needs the sweep's floor: summarise(..., floor=binomial_floor(x, n))")
    floor = sweep.floor
    m, s = sweep.mean, sweep.stderr
    m = V.Chain(*(np.asarray(v, float) for v in m))
    s = V.Chain(*(np.asarray(v, float) for v in s))
    _claim(sweep.gap > -4 * sweep.gap_stderr, f"D + R < L̂_K by more than 4 s.e.: {sweep.gap} ± {sweep.gap_stderr}")
    x_train = np.asarray(x_train, float)
    eps = float(np.finfo(np.float32).eps)
    log_n_factorial = float(jax.scipy.special.gammaln(total_count + 1.0))
    rounding = 8 * eps * (x_train.shape[1] * log_n_factorial + m.distortion + floor)
    _claim(m.distortion >= floor - rounding, f"D below the binomial floor {floor}: {m.distortion}")
    collapsed = m.rate < 4 * s.rate_sampled
    _claim(
        collapsed[-1] and np.all(np.diff(collapsed.astype(int)) >= 0),
        f"collapse must start at some β and hold above it: {collapsed}",
    )
    falls = np.diff(m.rate) < -4 * np.hypot(s.rate[1:], s.rate[:-1])
    _claim(falls | collapsed[1:], f"rate must fall with β until collapse: {m.rate}")
    _claim(identified[0] >= 0.95, f"lowest β identifies only {identified[0]}")
    fano = identification_bound(np.maximum(m.rate, 0.0), num_images)
    id_se = np.sqrt(np.maximum(identified * (1 - identified), 1.0 / num_images) / num_images)
    _claim(identified <= fano + 4 * id_se, f"identified {identified} above Fano's ceiling {fano}")
    best = int(np.argmin(m.neg_log_marginal))
    for end in (0, len(sweep.betas) - 1):
        margin = 4 * np.hypot(s.neg_log_marginal[best], s.neg_log_marginal[end])
        _claim(
            m.neg_log_marginal[best] + margin < m.neg_log_marginal[end],
            f"the best L̂_K (β = {sweep.betas[best]:g}) does not beat β = {sweep.betas[end]:g}",
        )
    average = x_train.mean(0).reshape(originals.shape[1:])
    shown = [np.concatenate([reconstructions[i], samples[i]]) for i in range(len(sweep.betas))]
    spread = np.array([im.std(0).max() for im in shown])
    from_average = np.array([np.abs(im - average).max() for im in shown])
    orig_spread = float(originals.std(0).max())
    _claim(
        np.all(spread[collapsed] < orig_spread / 20) and np.all(from_average[collapsed] < total_count / 10),
        f"collapsed models should show the average image: spread {spread}, distance {from_average}",
    )
    return SweepChecks(np.asarray(collapsed), best, spread, from_average, orig_spread, fano)
