r"""Variational diffusion models: the recipe's deepest VAE (chapter 9).

Letters as in the rest of the book: :math:`p` is the real world (the data and the fixed noising
chain), :math:`q` the dream world (the prior, the learned reverse chain and the decoder). The VDM
paper (Kingma et al., 2021) uses the opposite letters: its :math:`q` is our :math:`p`.

The real world takes a datum :math:`x` and buries it in noise, step by step, by a fixed forward
process with a variance-preserving Gaussian marginal

.. math:: p(z_t\mid x) &= \mathcal{N}(\alpha_t x, \sigma_t^2 I), \\
   \alpha_t^2 &= \mathrm{sigmoid}(-\gamma(t)),\quad \sigma_t^2 = \mathrm{sigmoid}(\gamma(t)), \\
   \mathrm{SNR}(t) &= \alpha_t^2/\sigma_t^2 = e^{-\gamma(t)},

with :math:`\gamma(t) = -\log\mathrm{SNR}(t)` increasing on :math:`[0, 1]` (a decreasing one, e.g.
a log-SNR passed where :math:`-\log\mathrm{SNR}` is meant, is refused: :func:`check_schedule`).
The dream world runs it backwards: :math:`z_1 \sim q(z_1) = \mathcal{N}(0, I)`, a learned reverse
step :math:`q(z_s\mid z_t) = p(z_s\mid z_t, x = \hat x(z_t; t))` from each time :math:`t = i/T` to
:math:`s = (i-1)/T`, and a decoder :math:`q(x\mid z_0)`. The recipe's KL between the two chains
(:func:`real_world`, :func:`dream_world`, ``names=names(T)``) is a ledger of three terms,

.. math:: I[P;Q] + H ={}& \underbrace{\langle I[p(z_1\mid x); q(z_1)]\rangle}_{\text{prior}}
   + \underbrace{\langle -\log q(x\mid z_0)\rangle}_{\text{reconstruction}} \\
   &+ \underbrace{\sum_{i=1}^T \tfrac12\big\langle(\mathrm{SNR}(s_i)-\mathrm{SNR}(t_i))\,
     \|x-\hat x(z_{t_i}; t_i)\|^2\big\rangle}_{\text{diffusion},\ \mathcal{L}_T},

an upper bound on :math:`\langle -\log q(x)\rangle`, and as :math:`T\to\infty` the diffusion term tends to
:math:`\mathcal{L}_\infty = -\tfrac12\langle\int_0^1 \mathrm{SNR}'(t)\,\|x - \hat x(z_t; t)\|^2\,dt\rangle
= \tfrac12\langle\int_0^1 \gamma'(t)\,\|\epsilon - \hat\epsilon(z_t; t)\|^2\,dt\rangle`,
which is positive because SNR falls (the second form, VDM's, is what :func:`continuous_terms`
computes for a model). The denoiser reads :math:`\gamma(t)`, not :math:`t`, so
:math:`\mathcal{L}_\infty` depends on the schedule only through its endpoints; the schedule's
interior only changes the variance of the Monte Carlo estimate over :math:`t`
(:class:`MonotoneSchedule`, :func:`continuous_terms`).

References: Sohl-Dickstein et al. (2015); Ho et al. (2020); Kingma, Salimans, Poole and Ho (2021),
whose google-research/vdm code this module follows in its numerically careful forms
(``expm1`` in the reverse step, :math:`\gamma'` by ``jax.jvp``, the loss in terms of the noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr
from numpyro.distributions import constraints

from klbook._checks import check_finite, is_concrete
from klbook.divergence import check_key
from klbook.nn import mlp
from klbook.recipe import KLObjective, data, kl_objective

__all__ = [
    "LinearSchedule",
    "CosineSchedule",
    "MonotoneSchedule",
    "DiscretisedNormal",
    "Diffusion",
    "Terms",
    "diffusion_model",
    "alpha_sigma",
    "snr",
    "gamma_prime",
    "check_schedule",
    "posterior",
    "discretise",
    "names",
    "real_world",
    "dream_world",
    "objective",
    "continuous_terms",
    "discrete_terms",
    "all_steps_terms",
    "ancestral_path",
    "sample",
    "gaussian_denoiser",
    "gaussian_continuous_term",
    "gaussian_discrete_term",
    "mixture_bin_log_prob",
]


# ---- schedules: gamma(t) = -log SNR(t), increasing, fixed endpoints --------------------------------


def _check_endpoints(gamma_min, gamma_max):
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise ValueError(f"need finite gamma_min < gamma_max; got {gamma_min}, {gamma_max}")


class LinearSchedule(eqx.Module):
    r""":math:`\gamma(t) = \gamma_{\min} + (\gamma_{\max} - \gamma_{\min})\,t` (log-SNR linear in time)."""

    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __check_init__(self):
        _check_endpoints(self.gamma_min, self.gamma_max)

    def __call__(self, t):
        """``t`` in [0, 1], any shape -> γ(t), same shape (float64 for a NumPy array, for exact checks)."""
        t = t if isinstance(t, np.ndarray) else jnp.asarray(t)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class CosineSchedule(eqx.Module):
    r"""The cosine schedule (Nichol and Dhariwal, 2021) stretched to the given endpoints.

    :math:`\gamma(t) = 2\log\tan\theta(t)` with :math:`\theta` linear in :math:`t` from
    :math:`\arctan e^{\gamma_{\min}/2}` to :math:`\arctan e^{\gamma_{\max}/2}`: the same endpoints as
    :class:`LinearSchedule`, a very different interior.
    """

    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __check_init__(self):
        _check_endpoints(self.gamma_min, self.gamma_max)

    def __call__(self, t):
        """``t`` in [0, 1], any shape -> γ(t), same shape (float64 for a NumPy array, for exact checks)."""
        xp = np if isinstance(t, np.ndarray) else jnp
        lo, hi = math.atan(math.exp(self.gamma_min / 2)), math.atan(math.exp(self.gamma_max / 2))
        theta = lo + (hi - lo) * xp.asarray(t)
        return 2.0 * xp.log(xp.tan(theta))


class MonotoneSchedule(eqx.Module):
    r"""A learned monotone :math:`\gamma(t)` with fixed endpoints (VDM's noise network).

    :math:`\tilde\gamma(t) = a t + \sum_k c_k\,\mathrm{sigmoid}(u_k t + v_k)` with
    :math:`a, c_k, u_k > 0` (softplus of free parameters), so :math:`\tilde\gamma` is increasing;
    then :math:`\gamma(t) = \gamma_{\min} + (\gamma_{\max}-\gamma_{\min})
    \frac{\tilde\gamma(t) - \tilde\gamma(0)}{\tilde\gamma(1) - \tilde\gamma(0)}` pins the endpoints.
    """

    raw_a: jax.Array
    raw_c: jax.Array  # [H]
    raw_u: jax.Array  # [H]
    v: jax.Array  # [H]
    gamma_min: float = eqx.field(static=True)
    gamma_max: float = eqx.field(static=True)

    def __init__(self, key, gamma_min: float, gamma_max: float, width: int = 16):
        check_key(key)
        _check_endpoints(gamma_min, gamma_max)
        k1, k2 = jax.random.split(key)
        self.raw_a = jnp.asarray(1.0)
        self.raw_c = 0.1 * jax.random.normal(k1, (width,)) - 2.0
        self.raw_u = jnp.full((width,), 2.0)
        self.v = jax.random.uniform(k2, (width,), minval=-6.0, maxval=2.0)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    def _raw(self, t):
        t = jnp.asarray(t)[..., None]  # [..., 1]
        a, c, u = (jax.nn.softplus(p) for p in (self.raw_a, self.raw_c, self.raw_u))
        c, u, v = (jnp.reshape(p, (1,) * (t.ndim - 1) + p.shape) for p in (c, u, self.v))  # [..., H]
        return a * t[..., 0] + jnp.sum(c * jax.nn.sigmoid(u * t + v), axis=-1)

    def __call__(self, t):
        g0, g1 = self._raw(0.0), self._raw(1.0)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * (self._raw(t) - g0) / (g1 - g0)


_CHECK_TIMES = np.linspace(0.0, 1.0, 33)


def _concrete(fn: Callable, t: np.ndarray) -> np.ndarray | None:
    """``fn(t)`` (``t`` float32) as float64 NumPy where its value is known at trace time (not traced), else ``None``."""
    with jax.ensure_compile_time_eval():
        out = fn(jnp.asarray(t, jnp.float32))  # the array made inside the context, or jit would trace it
    return None if not is_concrete(out) else np.asarray(out, np.float64)


def check_schedule(schedule: Callable, what: str = "schedule") -> Callable:
    r"""Refuse a schedule that is not finite and increasing on :math:`[0, 1]` (checked on a grid of 33 times).

    :math:`\gamma(t) = -\log\mathrm{SNR}(t)` must rise: a decreasing one (a log-SNR passed where
    :math:`-\log\mathrm{SNR}` is meant) makes every step's "KL" negative. The check runs whenever the
    schedule's values are known when the function is called or traced (eagerly, or under ``jax.jit``
    for a schedule that is not itself a traced argument); a schedule with traced parameters is not
    checked (:class:`MonotoneSchedule` is increasing by construction). Returns ``schedule``.

    Raises:
        ValueError: naming ``what``, with :math:`\gamma(0)` and :math:`\gamma(1)`.
    """
    if not callable(schedule):
        raise TypeError(f"{what} must be a callable t -> gamma(t); got {type(schedule).__name__}")
    g = _concrete(schedule, _CHECK_TIMES)
    if g is None:
        return schedule
    if g.shape != _CHECK_TIMES.shape:
        raise ValueError(f"{what} must map times t [n] to gamma(t) [n]; got shape {g.shape} for [{_CHECK_TIMES.size}]")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{what} must be finite on [0, 1]; got gamma(0) = {g[0]:.4g}, gamma(1) = {g[-1]:.4g}")
    if not np.all(np.diff(g) > 0):
        hint = " It decreases: was log SNR passed where gamma = -log SNR is meant?" if g[-1] < g[0] else ""
        raise ValueError(
            f"{what} must be increasing: gamma(t) = -log SNR(t) rises from gamma(0) to gamma(1), "
            f"so that the SNR falls and every step's KL is >= 0; got gamma(0) = {g[0]:.4g}, "
            f"gamma(1) = {g[-1]:.4g}.{hint}"
        )
    return schedule


def _endpoints(schedule: Callable) -> tuple[float, float] | None:
    """``(gamma(0), gamma(1))`` from static fields or trace-time values; ``None`` when unknown."""
    lo, hi = getattr(schedule, "gamma_min", None), getattr(schedule, "gamma_max", None)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return float(lo), float(hi)
    g = _concrete(schedule, np.array([0.0, 1.0]))
    return None if g is None else (float(g[0]), float(g[1]))


def _check_same_endpoints(model, schedule: Callable) -> None:
    mine, theirs = _endpoints(model.schedule), _endpoints(schedule)
    if mine is not None and theirs is not None and not np.allclose(mine, theirs, rtol=1e-5, atol=1e-4):
        raise ValueError(
            f"schedule's endpoints (gamma(0), gamma(1)) = ({theirs[0]:.4g}, {theirs[1]:.4g}) differ from the "
            f"model's ({mine[0]:.4g}, {mine[1]:.4g}): the prior and reconstruction terms belong to the model's "
            "endpoints, so the total would bound nothing. A schedule passed here may change only the interior "
            f"(e.g. MonotoneSchedule(key, {mine[0]:.4g}, {mine[1]:.4g})); to change the endpoints, change the "
            "model's schedule (eqx.tree_at)"
        )


def gamma_prime(schedule: Callable, t) -> tuple[jax.Array, jax.Array]:
    """``(γ(t), γ'(t))`` elementwise, the derivative by forward-mode autodiff (``jax.jvp``)."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def alpha_sigma(gamma) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\alpha, \sigma) = (\sqrt{\mathrm{sigmoid}(-\gamma)}, \sqrt{\mathrm{sigmoid}(\gamma)})`: variance
    preserving, :math:`\alpha^2 + \sigma^2 = 1`."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def snr(gamma):
    r""":math:`\mathrm{SNR} = \alpha^2/\sigma^2 = e^{-\gamma}`."""
    return jnp.exp(-gamma)


def posterior(z_t, x, gamma_s, gamma_t) -> dist.Normal:
    r"""The forward process's reverse step :math:`p(z_s\mid z_t, x)`, :math:`s < t` (elementwise Normal).

    .. math:: \mu &= \frac{\alpha_s}{\alpha_t} e^{\gamma_s - \gamma_t} z_t
       + \alpha_s\big(-\mathrm{expm1}(\gamma_s - \gamma_t)\big) x, \\
       \mathrm{var} &= \sigma_s^2\big(-\mathrm{expm1}(\gamma_s - \gamma_t)\big)

    (Kingma et al., 2021, appendix A, where it is called :math:`q`). With :math:`x = \hat x(z_t; t)`
    it is the dream world's reverse step :math:`q(z_s\mid z_t)`. ``z_t``, ``x`` ``[..., D]``; ``gamma_s``, ``gamma_t``
    broadcast against ``[..., 1]``.
    """
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    alpha_t, _ = alpha_sigma(gamma_t)
    c = -jnp.expm1(gamma_s - gamma_t)
    loc = alpha_s / alpha_t * jnp.exp(gamma_s - gamma_t) * z_t + alpha_s * c * x
    return dist.Normal(loc, sigma_s * jnp.sqrt(c))


# ---- the decoder: a Gaussian integrated over the data's bins --------------------------------------


def discretise(x, bin_width: float, low: float | None = None, high: float | None = None) -> jax.Array:
    """Round ``x`` to the grid ``k * bin_width`` (clipped to ``[low, high]`` where given)."""
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be positive and finite; got {bin_width}")
    x = jnp.round(jnp.asarray(x) / bin_width) * bin_width
    return jnp.clip(x, low, high)


class DiscretisedNormal(dist.Distribution):
    r"""A Normal integrated over bins of width :math:`\Delta` centred on the grid :math:`k\Delta`.

    :math:`P(x) = \Phi\big(\tfrac{x + \Delta/2 - \mu}{s}\big) - \Phi\big(\tfrac{x - \Delta/2 - \mu}{s}\big)`;
    the bins of the grid's end points ``low`` and ``high`` (when given) extend to :math:`\mp\infty`,
    so the probabilities sum to one over the grid. A proper probability: ``-log_prob`` is a code
    length in nats. Elementwise (batch shape of ``loc``); use ``.to_event(1)`` for one image.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real  # pyright: ignore[reportAssignmentType]  # as NumPyro's own classes do
    reparametrized_params = []

    def __init__(
        self, loc, scale, bin_width: float, low: float = -math.inf, high: float = math.inf, *, validate_args=None
    ):
        self.loc, self.scale = jnp.broadcast_arrays(jnp.asarray(loc), jnp.asarray(scale))
        self.bin_width, self.low, self.high = float(bin_width), float(low), float(high)
        super().__init__(batch_shape=jnp.shape(self.loc), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws on the grid: a Normal draw rounded to the nearest bin centre, clipped to ``[low, high]``."""
        if key is None:
            raise ValueError("sample needs a PRNG key (jax.random.key); got None")
        shape = sample_shape + self.batch_shape
        x = self.loc + self.scale * jax.random.normal(key, shape)
        return jnp.clip(jnp.round(x / self.bin_width) * self.bin_width, self.low, self.high)

    def log_prob(self, value):
        """Log probability of the bin centred on ``value`` (a grid point), computed in the tail that keeps it
        accurate."""
        half = 0.5 * self.bin_width
        at_low, at_high = value <= self.low + half / 2, value >= self.high - half / 2
        a = (value - half - self.loc) / self.scale
        b = (value + half - self.loc) / self.scale
        flip = a > 0  # both ends in the upper tail: use the symmetric lower-tail form
        lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)  # P = Phi(hi) - Phi(lo), lo < hi
        log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
        interior = log_hi + jnp.log(-jnp.expm1(jnp.minimum(log_lo - log_hi, -1e-30)))
        edge_low, edge_high = log_ndtr(b), log_ndtr(-a)
        return jnp.where(at_low, edge_low, jnp.where(at_high, edge_high, interior))


# ---- the model ---------------------------------------------------------------------------------------


class Diffusion(eqx.Module):
    r"""A variational diffusion model: schedule, noise-predicting network and discretised decoder.

    ``net``: ``[data_dim + 1] -> [data_dim]`` reads :math:`(z_t, \gamma(t))` and predicts the noise
    :math:`\hat\epsilon`; the denoiser is :math:`\hat x = (z_t - \sigma_t\hat\epsilon)/\alpha_t`.
    The decoder is :math:`q(x\mid z_0) =` :class:`DiscretisedNormal` ``(z_0/α_0, σ_0/α_0)`` on the
    data's grid (``bin_width``, ``low``, ``high``). ``schedule`` must be increasing
    (:func:`check_schedule`, at construction).
    """

    net: Callable
    schedule: Callable
    data_dim: int = eqx.field(static=True)
    bin_width: float = eqx.field(static=True)
    low: float = eqx.field(static=True, default=-math.inf)
    high: float = eqx.field(static=True, default=math.inf)

    def __check_init__(self):
        check_schedule(self.schedule, "the model's schedule")

    def check(self, x) -> jax.Array:
        """``x [N, data_dim]``, finite, floating, on the grid; else a ``ValueError`` saying which."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [N, {self.data_dim}] with N >= 1; got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating point (see klbook.diffusion.discretise); got {x.dtype}")
        check_finite(x, "x")
        if is_concrete(x):
            off = np.abs(np.asarray(x) / self.bin_width - np.round(np.asarray(x) / self.bin_width))
            if off.max() > 1e-3 or np.asarray(x).min() < self.low - 1e-6 or np.asarray(x).max() > self.high + 1e-6:
                raise ValueError(
                    f"x must lie on the grid k * {self.bin_width} within [{self.low}, {self.high}] "
                    "(use klbook.diffusion.discretise): the decoder scores bins"
                )
        return x

    def noise(self, z, gamma) -> jax.Array:
        r""":math:`\hat\epsilon(z_t; t)` for ``z [N, D]`` and ``gamma`` (scalar or ``[N]``): ``[N, D]``."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, z.dtype), z.shape[:1])
        inp = jnp.concatenate([z, gamma[:, None] / 10.0], axis=-1)  # [N, D + 1]
        return jax.vmap(self.net)(inp)

    def denoise(self, z, gamma) -> jax.Array:
        r""":math:`\hat x(z_t; t) = (z_t - \sigma_t\hat\epsilon)/\alpha_t` for ``z [N, D]`` and ``gamma``
        (scalar or ``[N]``): ``[N, D]``."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, z.dtype), z.shape[:1])
        alpha, sigma = alpha_sigma(gamma[:, None])
        return (z - sigma * self.noise(z, gamma)) / alpha

    def decoder(self, z0, gamma0=None) -> dist.Distribution:
        r""":math:`q(x\mid z_0)`: batch ``(N,)``, event ``(data_dim,)``; ``gamma0`` defaults to the schedule's
        :math:`\gamma(0)`."""
        g0 = self.schedule(0.0) if gamma0 is None else gamma0
        alpha, sigma = alpha_sigma(g0)
        return DiscretisedNormal(
            z0 / alpha, sigma / alpha * jnp.ones_like(z0), self.bin_width, self.low, self.high
        ).to_event(1)


def diffusion_model(
    key,
    data_dim: int,
    schedule: Callable,
    bin_width: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    width: int = 128,
    depth: int = 2,
) -> Diffusion:
    """A :class:`Diffusion` with an MLP noise predictor (``depth`` layers of ``width``, SiLU)."""
    check_key(key)
    net = mlp(key, data_dim + 1, data_dim, width=width, depth=depth, activation=jax.nn.silu)
    return Diffusion(net, schedule, data_dim, float(bin_width), float(low), float(high))


# ---- the two worlds, for the recipe ---------------------------------------------------------------


def _grid(model: Diffusion, num_steps: int) -> jax.Array:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    check_schedule(model.schedule, "the model's schedule")  # also after eqx.tree_at, which skips __check_init__
    return model.schedule(jnp.linspace(0.0, 1.0, int(num_steps) + 1))  # [T + 1]: gamma(i / T)


def names(num_steps: int) -> dict[str, str]:
    """The ledger's names for the sites of :func:`real_world` with ``T = num_steps`` (chapter 9):
    ``z{T}`` (that is :math:`z_1`) is the ``prior`` term, ``z0 .. z{T-1}`` the ``diffusion`` term and the
    data site ``x`` the ``reconstruction`` term."""
    out = {f"z{num_steps}": "prior", "x": "reconstruction"}
    out.update({f"z{i}": "diffusion" for i in range(num_steps)})
    return out


def real_world(model: Diffusion, x, num_steps: int) -> None:
    r"""P: the data ``x [N, D]`` and the forward process, drawn top down: :math:`z_1\sim p(z_1\mid x)`,
    then :math:`z_{(i-1)/T}\sim p(z_{(i-1)/T}\mid z_{i/T}, x)`. Site ``z{i}`` is :math:`z_{i/T}`, ``[N, D]``.

    Raises:
        ValueError: if ``x`` is not ``[N, D]``, finite and on the model's grid, or ``num_steps`` is
            not a positive integer (eagerly, while the model is traced).
    """
    x = model.check(x)
    gam = _grid(model, num_steps)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        alpha, sigma = alpha_sigma(gam[-1])
        z = numpyro.sample(f"z{num_steps}", dist.Normal(alpha * x, sigma).to_event(1))
        for i in range(num_steps, 0, -1):
            z = numpyro.sample(f"z{i - 1}", posterior(z, x, gam[i - 1], gam[i]).to_event(1))


def dream_world(model: Diffusion, x, num_steps: int) -> None:
    r"""Q: :math:`z_1\sim q(z_1) = \mathcal{N}(0, I)`, the reverse steps
    :math:`q(z_s\mid z_t) = p(z_s\mid z_t, \hat x(z_t; t))`
    and the decoder :math:`q(x\mid z_0)`. ``x`` only sets the shape. Raises as :func:`real_world`."""
    x = model.check(x)
    gam = _grid(model, num_steps)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample(f"z{num_steps}", dist.Normal(jnp.zeros_like(x), 1.0).to_event(1))
        for i in range(num_steps, 0, -1):
            x_hat = model.denoise(z, gam[i])
            z = numpyro.sample(f"z{i - 1}", posterior(z, x_hat, gam[i - 1], gam[i]).to_event(1))
        numpyro.sample("x", model.decoder(z))


def objective(key, model: Diffusion, x, num_steps: int) -> KLObjective:
    r"""The recipe's objective for the ``T``-step worlds, nats per example, with its named terms (chapter 9).

    ``kl_objective(key, real_world, dream_world, model, x, T, names=names(T))``: one draw of the whole
    chain per example, every site's log-ratio sampled, so its expectation is the ledger
    :math:`\text{prior} + \mathcal{L}_T + \text{reconstruction}`, an upper bound on the dream
    world's code length :math:`\langle-\log q(x)\rangle` (the dropped term is the data's own
    :math:`\langle\log p(x)\rangle`). Key first, as every klbook function that draws randomness;
    returns the recipe's :class:`~klbook.recipe.KLObjective` (``loss``, ``terms`` named ``prior``,
    ``diffusion``, ``reconstruction``, their standard errors), which :func:`klbook.train.fit` accepts:
    ``fit(key, lambda m, k, b: objective(k, m, b, T), model, ...)``.

    Raises:
        ValueError: as :func:`real_world` (``x`` off the grid or of the wrong shape, ``num_steps`` not a
            positive integer, a schedule that is not increasing), eagerly and under ``jax.jit``.
    """
    check_key(key)
    return kl_objective(key, real_world, dream_world, model, x, num_steps, names=names(num_steps))


# ---- estimators with analytic KLs: one random time or step per example, or every step ----------------


class Terms(NamedTuple):
    """Per-example ledger ``[N]`` in nats: prior, diffusion and reconstruction terms."""

    prior: jax.Array
    diffusion: jax.Array
    reconstruction: jax.Array

    @property
    def total(self) -> jax.Array:
        """The bound on :math:`-\\log q(x)` per example."""
        return self.prior + self.diffusion + self.reconstruction


def _prior_and_reconstruction(key, model: Diffusion, x, schedule: Callable) -> tuple[jax.Array, jax.Array]:
    g1, g0 = schedule(1.0), schedule(0.0)
    a1, s1 = alpha_sigma(g1)
    prior = 0.5 * jnp.sum(a1**2 * x**2 + s1**2 - 1.0 - jnp.log(s1**2), axis=-1)  # KL(N(a x, s^2) || N(0, 1))
    a0, s0 = alpha_sigma(g0)
    z0 = a0 * x + s0 * jax.random.normal(key, x.shape)
    return prior, -jnp.asarray(model.decoder(z0, g0).log_prob(x))


def _setup(key, model, x, denoise, schedule):
    """Checked ``(x, schedule, denoise, noise)``; ``noise`` is the model's ε-predictor or ``None``."""
    check_key(key)
    x = model.check(x) if isinstance(model, Diffusion) else jnp.asarray(x)
    if schedule is None:
        if not isinstance(model, Diffusion):
            raise ValueError("without a Diffusion model, pass schedule= (and denoise=)")
        schedule = model.schedule
    else:
        check_schedule(schedule)
        if isinstance(model, Diffusion):
            _check_same_endpoints(model, schedule)
    if denoise is None and not isinstance(model, Diffusion):
        raise ValueError("without a Diffusion model, pass denoise=")
    noise = model.noise if denoise is None else None
    denoise = model.denoise if denoise is None else denoise
    return x, schedule, denoise, noise


def _step_error(x, eps, z, gamma, denoise, noise):
    r"""``(‖ε - ε̂‖², True)`` with the model's noise predictor (VDM's form), else ``(‖x - x̂‖², False)``."""
    if noise is not None:
        return jnp.sum((eps - noise(z, gamma)) ** 2, axis=-1), True
    return jnp.sum((x - denoise(z, gamma)) ** 2, axis=-1), False


def _finish(k_0, model, x, schedule, diffusion) -> Terms:
    if not isinstance(model, Diffusion):
        return Terms(jnp.zeros_like(diffusion), diffusion, jnp.zeros_like(diffusion))
    prior, recon = _prior_and_reconstruction(k_0, model, x, schedule)
    return Terms(prior, diffusion, recon)


def continuous_terms(
    key, model: Diffusion | None, x, *, times=None, denoise: Callable | None = None, schedule: Callable | None = None
) -> Terms:
    r"""The continuous-time ledger, one draw of :math:`t \sim U(0, 1)` and of the noise per example.

    .. math:: \mathcal{L}_\infty &\approx -\tfrac12\,\mathrm{SNR}'(t)\,\|x - \hat x(z_t; t)\|^2
       = \tfrac12\,\gamma'(t)\,\|\epsilon - \hat\epsilon(z_t; t)\|^2, \\
       z_t &= \alpha_t x + \sigma_t\epsilon,

    since :math:`x - \hat x = (\sigma_t/\alpha_t)(\hat\epsilon - \epsilon)` and
    :math:`\sigma_t^2/\alpha_t^2 = e^{\gamma(t)}`. The model's own denoiser is scored in the second
    (noise) form, which avoids the cancellation in :math:`x - \hat x` at very negative :math:`\gamma`;
    ``denoise(z, gamma)`` (the Gaussian checks use :func:`gaussian_denoiser`) in the first.

    ``times [N]`` fixes the times. ``schedule`` replaces the model's for sampling the times; it must
    be increasing (:func:`check_schedule`) and, with a model, share its endpoints
    :math:`\gamma(0), \gamma(1)` (checked whenever they are known at trace time: static fields as in
    :class:`LinearSchedule` or :class:`MonotoneSchedule`, or constant values), because the
    prior and reconstruction terms belong to them; the expected total does not depend on the
    interior. With ``model=None`` pass both ``denoise`` and ``schedule``; the prior and
    reconstruction terms are then zeros. Returns :class:`Terms` ``[N]`` each.
    """
    x, schedule, denoise, noise = _setup(key, model, x, denoise, schedule)
    k_t, k_eps, k_0 = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, x.shape[:1]) if times is None else jnp.asarray(times)
    gamma, dgamma = gamma_prime(schedule, t)  # [N]
    alpha, sigma = alpha_sigma(gamma[:, None])
    eps = jax.random.normal(k_eps, x.shape)
    err, eps_form = _step_error(x, eps, alpha * x + sigma * eps, gamma, denoise, noise)
    diffusion = 0.5 * dgamma * (err if eps_form else snr(gamma) * err)
    return _finish(k_0, model, x, schedule, diffusion)


def _check_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    return int(num_steps)


def _step_kl(x, eps, g_s, g_t, denoise, noise):
    r"""Closed-form KL of step :math:`t \to s` at :math:`z_t = \alpha_t x + \sigma_t\epsilon`, ``[N]``:
    :math:`\tfrac12(\mathrm{SNR}(s) - \mathrm{SNR}(t))\|x - \hat x\|^2
    = \tfrac12\,\mathrm{expm1}(\gamma_t - \gamma_s)\,\|\epsilon - \hat\epsilon\|^2`."""
    alpha, sigma = alpha_sigma(g_t[:, None])
    err, eps_form = _step_error(x, eps, alpha * x + sigma * eps, g_t, denoise, noise)
    return 0.5 * (jnp.expm1(g_t - g_s) if eps_form else snr(g_s) - snr(g_t)) * err


def discrete_terms(
    key,
    model: Diffusion | None,
    x,
    num_steps: int,
    *,
    denoise: Callable | None = None,
    schedule: Callable | None = None,
) -> Terms:
    r"""The ``T``-step ledger, one random step :math:`i \sim U\{1..T\}` per example (its KL in closed form):

    .. math:: \mathcal{L}_T \approx \tfrac{T}{2}(\mathrm{SNR}(s_i) - \mathrm{SNR}(t_i))\|x - \hat x(z_{t_i}; t_i)\|^2 .

    The same expectation as the recipe's diffusion term for :func:`real_world`, for one network
    call instead of ``T``; but *not* lower variance: sampling which step to charge, and multiplying
    by ``T``, usually adds more variance than the closed-form KL removes (chapter 9 measures it).
    :func:`all_steps_terms` charges every step instead (``T`` calls, no sampled step). ``denoise``,
    ``schedule`` and ``model=None`` as in :func:`continuous_terms`.
    """
    num_steps = _check_steps(num_steps)
    x, schedule, denoise, noise = _setup(key, model, x, denoise, schedule)
    k_i, k_eps, k_0 = jax.random.split(key, 3)
    i = jax.random.randint(k_i, x.shape[:1], 1, num_steps + 1)
    g_t, g_s = schedule(i / num_steps), schedule((i - 1) / num_steps)
    diffusion = num_steps * _step_kl(x, jax.random.normal(k_eps, x.shape), g_s, g_t, denoise, noise)
    return _finish(k_0, model, x, schedule, diffusion)


def all_steps_terms(
    key,
    model: Diffusion | None,
    x,
    num_steps: int,
    *,
    denoise: Callable | None = None,
    schedule: Callable | None = None,
) -> Terms:
    r"""The ``T``-step ledger with every step's KL in closed form, each at its own draw of :math:`z_{t_i}`:

    .. math:: \mathcal{L}_T &\approx \sum_{i=1}^T \tfrac12\,(\mathrm{SNR}(s_i) - \mathrm{SNR}(t_i))\,
       \|x - \hat x(z_{t_i}; t_i)\|^2, \\
       z_{t_i} &= \alpha_{t_i} x + \sigma_{t_i}\epsilon_i,\ \epsilon_i\ \text{independent}.

    The same expectation as :func:`discrete_terms` and the recipe, ``T`` network calls (vmapped).
    No step is sampled, so it avoids the large variance :func:`discrete_terms` pays for choosing one
    step and multiplying by ``T``; the noise :math:`\epsilon_i` is still sampled. Whether it is also
    quieter than the recipe's sampled chain (:func:`objective`) depends on the model and the data: on
    chapter 9's 2-d model the two are close, and the chapter measures their ordering over seeds rather
    than assuming it. Arguments as :func:`discrete_terms`.
    """
    num_steps = _check_steps(num_steps)
    x, schedule, denoise, noise = _setup(key, model, x, denoise, schedule)
    k_eps, k_0 = jax.random.split(key)
    gam = schedule(jnp.linspace(0.0, 1.0, num_steps + 1))  # [T + 1]

    def step(k, g_s, g_t):  # [N]
        n = x.shape[0]
        return _step_kl(x, jax.random.normal(k, x.shape), jnp.full((n,), g_s), jnp.full((n,), g_t), denoise, noise)

    diffusion = jnp.sum(jax.vmap(step)(jax.random.split(k_eps, num_steps), gam[:-1], gam[1:]), axis=0)
    return _finish(k_0, model, x, schedule, diffusion)


# ---- sampling ------------------------------------------------------------------------------------------


def ancestral_path(key, schedule: Callable, denoise: Callable, z1, num_steps: int) -> jax.Array:
    r"""Ancestral sampling from :math:`z_1`: :math:`z_s \sim p(z_s\mid z_t, \hat x(z_t; t))` for
    :math:`t = 1, \tfrac{T-1}{T}, \dots, \tfrac1T`. Returns the path ``[T + 1, N, D]``, ``path[i]``
    being :math:`z_{i/T}` (``path[T] = z1``)."""
    check_key(key)
    check_schedule(schedule)
    gam = schedule(jnp.linspace(0.0, 1.0, num_steps + 1))

    def step(z, inp):
        k, g_s, g_t = inp
        return posterior(z, denoise(z, g_t), g_s, g_t).sample(k), z

    keys = jax.random.split(key, num_steps)
    z0, zs = jax.lax.scan(step, jnp.asarray(z1), (keys, gam[:-1][::-1], gam[1:][::-1]))
    return jnp.concatenate([z0[None], zs[::-1]], axis=0)


def sample(key, model: Diffusion, n: int, num_steps) -> jax.Array:
    r"""``n`` draws from the dream world with ``T = num_steps`` reverse steps: ``x [n, data_dim]`` on the grid.

    :math:`z_1\sim\mathcal{N}(0, I)`, then :math:`z_s\sim q(z_s\mid z_t)` for :math:`t = 1, \dots, 1/T`,
    then :math:`x\sim q(x\mid z_0)`. ``num_steps`` may be a traced integer (a ``fori_loop``), so one
    compiled sampler serves every ``T``; step ``i``'s key is ``fold_in(key, i)``. A traced
    ``num_steps`` below 1 cannot be refused and runs no step (it decodes :math:`z_1`, pure noise).
    """
    check_key(key)
    check_schedule(model.schedule, "the model's schedule")
    if isinstance(num_steps, (int, np.integer)) and (isinstance(num_steps, bool) or num_steps < 1):
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    k1, k2, k3 = jax.random.split(key, 3)
    z1 = jax.random.normal(k1, (int(n), model.data_dim))

    def step(j, z):  # j = 0 .. T-1: from t = (T - j) / T to s = (T - j - 1) / T
        g_t, g_s = model.schedule((num_steps - j) / num_steps), model.schedule((num_steps - j - 1) / num_steps)
        return posterior(z, model.denoise(z, g_t), g_s, g_t).sample(jax.random.fold_in(k2, j))

    z0 = jax.lax.fori_loop(0, num_steps, step, z1)
    return jnp.asarray(model.decoder(z0).sample(k3))


# ---- exact results for Gaussian data ---------------------------------------------------------------------


def gaussian_denoiser(variances) -> Callable:
    r"""The optimal denoiser for data :math:`\mathcal{N}(0, \mathrm{diag}\,v)`:
    :math:`\hat x = E[x\mid z_t] = \frac{\alpha v}{\alpha^2 v + \sigma^2} z_t` (linear in :math:`z_t`)."""
    v = jnp.asarray(variances)

    def denoise(z, gamma):
        alpha, sigma = alpha_sigma(jnp.asarray(gamma)[..., None])  # [..., 1]
        vv = jnp.reshape(v, (1,) * (z.ndim - 1) + v.shape)  # [1.., D]
        return alpha * vv / (alpha**2 * vv + sigma**2) * z

    return denoise


def gaussian_continuous_term(variances, gamma_min: float, gamma_max: float) -> float:
    r"""Exact :math:`\mathcal{L}_\infty` for data :math:`\mathcal{N}(0, \mathrm{diag}\,v)` and the optimal denoiser.

    The error at signal-to-noise :math:`u` is :math:`\sum_j v_j/(1 + v_j u)`, so
    :math:`\mathcal{L}_\infty = \tfrac12\int_{\mathrm{SNR}_{\min}}^{\mathrm{SNR}_{\max}}\sum_j\frac{v_j}{1+v_j u}du
    = \tfrac12\sum_j\log\frac{1 + v_j\,\mathrm{SNR}_{\max}}{1 + v_j\,\mathrm{SNR}_{\min}}`: the schedule
    enters only through its endpoints. Float64 (NumPy).
    """
    v = np.asarray(variances, np.float64)
    return float(0.5 * np.sum(np.log1p(v * np.exp(-gamma_min)) - np.log1p(v * np.exp(-gamma_max))))


def gaussian_discrete_term(variances, gammas) -> float:
    r"""Exact :math:`\mathcal{L}_T` for the same data and denoiser, ``gammas`` = :math:`\gamma(i/T)`, ``[T + 1]``:
    :math:`\tfrac12\sum_i (\mathrm{SNR}(s_i) - \mathrm{SNR}(t_i))\sum_j \frac{v_j}{1 + v_j\mathrm{SNR}(t_i)}`,
    a Riemann sum of the integral above at each interval's low-SNR end, so
    :math:`\mathcal{L}_T \ge \mathcal{L}_\infty`, falling as the grid is refined. Float64."""
    v = np.asarray(variances, np.float64)
    u = np.exp(-np.asarray(gammas, np.float64))  # SNR(i / T), decreasing
    return float(0.5 * np.sum((u[:-1] - u[1:]) * np.sum(v / (1 + v * u[1:, None]), axis=-1)))


def mixture_bin_log_prob(mixture: dist.MixtureSameFamily, x, bin_width: float) -> jax.Array:
    r"""Exact :math:`\log P(\text{bin of } x)` under a mixture of diagonal Gaussians (``klbook.data``'s 2-D
    mixtures), bins of width :math:`\Delta` centred on ``x [N, d]``: the data's own discrete law."""
    components = mixture.component_distribution
    base = components.base_dist if isinstance(components, dist.Independent) else None
    if not isinstance(base, dist.Normal):
        raise TypeError(
            f"the mixture's components must be diagonal Gaussians, Normal(...).to_event(1); got {components}"
        )
    # loc, scale [C, d]
    x = jnp.asarray(x)[:, None, :]  # [N, 1, d]
    loc, scale = jnp.asarray(base.loc)[None], jnp.asarray(base.scale)[None]  # [1, C, d]
    a, b = (x - bin_width / 2 - loc) / scale, (x + bin_width / 2 - loc) / scale
    flip = a > 0  # upper tail: P = Phi(-a) - Phi(-b), accurate where Phi(b) - Phi(a) would round to 0
    hi, lo = log_ndtr(jnp.where(flip, -a, b)), log_ndtr(jnp.where(flip, -b, a))
    log_cell = jnp.sum(hi + jnp.log(-jnp.expm1(jnp.minimum(lo - hi, -1e-30))), axis=-1)  # [N, C]
    log_w = jax.nn.log_softmax(jnp.asarray(mixture.mixing_distribution.logits))[None, :]  # [1, C]
    return jax.nn.logsumexp(log_w + log_cell, axis=-1)
