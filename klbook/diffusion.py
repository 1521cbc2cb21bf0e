r"""Variational diffusion models: the recipe's deepest VAE (chapter 9).

The real world takes a datum :math:`x` and buries it in noise, step by step, by a fixed forward
process with a variance-preserving Gaussian marginal

.. math:: q(z_t\mid x) = \mathcal{N}(\alpha_t x, \sigma_t^2 I),\qquad
   \alpha_t^2 = \mathrm{sigmoid}(-\gamma(t)),\quad \sigma_t^2 = \mathrm{sigmoid}(\gamma(t)),
   \quad \mathrm{SNR}(t) = \alpha_t^2/\sigma_t^2 = e^{-\gamma(t)},

with :math:`\gamma(t) = -\log\mathrm{SNR}(t)` increasing on :math:`[0, 1]` (Kingma et al., 2021).
The dream world runs it backwards: :math:`z_1 \sim \mathcal{N}(0, I)`, a learned reverse step
:math:`p(z_s\mid z_t) = q(z_s\mid z_t, x = \hat x(z_t; t))` from each time :math:`t = i/T` to
:math:`s = (i-1)/T`, and a decoder :math:`p(x\mid z_0)`. The recipe's KL between the two chains
(:func:`real_world`, :func:`dream_world`, ``names=names(T)``) is a ledger of three terms,

.. math:: I[P;Q] + H = \underbrace{\langle I[q(z_1\mid x); p(z_1)]\rangle}_{\text{prior}}
   + \underbrace{\sum_{i=1}^T \tfrac12\big\langle(\mathrm{SNR}(s_i)-\mathrm{SNR}(t_i))\,
     \|x-\hat x(z_{t_i}; t_i)\|^2\big\rangle}_{\text{diffusion},\ \mathcal{L}_T}
   + \underbrace{\langle -\log p(x\mid z_0)\rangle}_{\text{reconstruction}},

and as :math:`T\to\infty` the diffusion term tends to
:math:`\mathcal{L}_\infty = -\tfrac12\langle\int_0^1 \mathrm{SNR}'(t)\,\|x - \hat x(z_t; t)\|^2\,dt\rangle`,
which is positive because SNR falls. The denoiser reads :math:`\gamma(t)`, not :math:`t`, so
:math:`\mathcal{L}_\infty` depends on the schedule only through its endpoints; the schedule's
interior only changes the variance of the Monte Carlo estimate over :math:`t`
(:class:`MonotoneSchedule`, :func:`continuous_terms`).

References: Sohl-Dickstein et al. (2015); Ho et al. (2020); Kingma, Salimans, Poole and Ho (2021),
whose google-research/vdm code this module follows in its numerically careful forms
(``expm1`` in the reverse step, :math:`\gamma'` by ``jax.jvp``).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr
from numpyro.distributions import constraints

from klbook._checks import check_finite
from klbook.divergence import check_key
from klbook.nn import mlp
from klbook.recipe import data, kl_objective

__all__ = ["LinearSchedule", "CosineSchedule", "MonotoneSchedule", "DiscretisedNormal", "Diffusion",
           "Terms", "diffusion_model", "alpha_sigma", "snr", "gamma_prime", "posterior", "discretise",
           "names", "real_world", "dream_world", "objective", "continuous_terms", "discrete_terms",
           "ancestral_path", "sample", "gaussian_denoiser", "gaussian_continuous_term",
           "gaussian_discrete_term", "mixture_bin_log_prob"]


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

    :math:`\tilde\gamma(t) = a t + b + \sum_k c_k\,\mathrm{sigmoid}(u_k t + v_k)` with
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


def gamma_prime(schedule: Callable, t) -> tuple[jax.Array, jax.Array]:
    """``(γ(t), γ'(t))`` elementwise, the derivative by forward-mode autodiff (``jax.jvp``)."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def alpha_sigma(gamma) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\alpha, \sigma) = (\sqrt{\mathrm{sigmoid}(-\gamma)}, \sqrt{\mathrm{sigmoid}(\gamma)})`: variance preserving, :math:`\alpha^2 + \sigma^2 = 1`."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def snr(gamma):
    r""":math:`\mathrm{SNR} = \alpha^2/\sigma^2 = e^{-\gamma}`."""
    return jnp.exp(-gamma)


def posterior(z_t, x, gamma_s, gamma_t) -> dist.Normal:
    r"""The forward process's reverse step :math:`q(z_s\mid z_t, x)`, :math:`s < t` (elementwise Normal).

    .. math:: \mu = \frac{\alpha_s}{\alpha_t} e^{\gamma_s - \gamma_t} z_t
       + \alpha_s\big(-\mathrm{expm1}(\gamma_s - \gamma_t)\big) x,\qquad
       \mathrm{var} = \sigma_s^2\big(-\mathrm{expm1}(\gamma_s - \gamma_t)\big)

    (Kingma et al., 2021, appendix A). With :math:`x = \hat x(z_t; t)` it is the dream world's
    reverse step :math:`p(z_s\mid z_t)`. ``z_t``, ``x`` ``[..., D]``; ``gamma_s``, ``gamma_t``
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
    support = constraints.real
    reparametrized_params = []

    def __init__(self, loc, scale, bin_width: float, low: float = -math.inf, high: float = math.inf,
                 *, validate_args=None):
        self.loc, self.scale = jnp.broadcast_arrays(jnp.asarray(loc), jnp.asarray(scale))
        self.bin_width, self.low, self.high = float(bin_width), float(low), float(high)
        super().__init__(batch_shape=jnp.shape(self.loc), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws on the grid: a Normal draw rounded to the nearest bin centre, clipped to ``[low, high]``."""
        shape = sample_shape + self.batch_shape
        x = self.loc + self.scale * jax.random.normal(key, shape)
        return jnp.clip(jnp.round(x / self.bin_width) * self.bin_width, self.low, self.high)

    def log_prob(self, value):
        """Log probability of the bin centred on ``value`` (a grid point), computed in the tail that keeps it accurate."""
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
    The decoder is :math:`p(x\mid z_0) =` :class:`DiscretisedNormal` ``(z_0/α_0, σ_0/α_0)`` on the
    data's grid (``bin_width``, ``low``, ``high``).
    """

    net: Callable
    schedule: Callable
    data_dim: int = eqx.field(static=True)
    bin_width: float = eqx.field(static=True)
    low: float = eqx.field(static=True, default=-math.inf)
    high: float = eqx.field(static=True, default=math.inf)

    def check(self, x) -> jax.Array:
        """``x [N, data_dim]``, finite, floating, on the grid; else a ``ValueError`` saying which."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [N, {self.data_dim}] with N >= 1; got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating point (see klbook.diffusion.discretise); got {x.dtype}")
        check_finite(x, "x")
        if not isinstance(x, jax.core.Tracer):
            off = np.abs(np.asarray(x) / self.bin_width - np.round(np.asarray(x) / self.bin_width))
            if off.max() > 1e-3 or np.asarray(x).min() < self.low - 1e-6 or np.asarray(x).max() > self.high + 1e-6:
                raise ValueError(f"x must lie on the grid k * {self.bin_width} within [{self.low}, {self.high}] "
                                 "(use klbook.diffusion.discretise): the decoder scores bins")
        return x

    def denoise(self, z, gamma) -> jax.Array:
        r""":math:`\hat x(z_t; t)` for ``z [N, D]`` and ``gamma`` (scalar or ``[N]``): ``[N, D]``."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, z.dtype), z.shape[:1])
        alpha, sigma = alpha_sigma(gamma[:, None])
        inp = jnp.concatenate([z, gamma[:, None] / 10.0], axis=-1)  # [N, D + 1]
        eps = jax.vmap(self.net)(inp)
        return (z - sigma * eps) / alpha

    def decoder(self, z0) -> dist.Distribution:
        r""":math:`p(x\mid z_0)`: batch ``(N,)``, event ``(data_dim,)``."""
        g0 = self.schedule(0.0)
        alpha, sigma = alpha_sigma(g0)
        return DiscretisedNormal(z0 / alpha, sigma / alpha * jnp.ones_like(z0), self.bin_width,
                                 self.low, self.high).to_event(1)


def diffusion_model(key, data_dim: int, schedule: Callable, bin_width: float, low: float = -math.inf,
                    high: float = math.inf, *, width: int = 128, depth: int = 2) -> Diffusion:
    """A :class:`Diffusion` with an MLP noise predictor (``depth`` layers of ``width``, SiLU)."""
    check_key(key)
    net = mlp(key, data_dim + 1, data_dim, width=width, depth=depth, activation=jax.nn.silu)
    return Diffusion(net, schedule, data_dim, float(bin_width), float(low), float(high))


# ---- the two worlds, for the recipe ---------------------------------------------------------------


def _grid(model: Diffusion, num_steps: int) -> jax.Array:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    return model.schedule(jnp.linspace(0.0, 1.0, int(num_steps) + 1))  # [T + 1]: gamma(i / T)


def names(num_steps: int) -> dict[str, str]:
    """The ledger's names for the sites of :func:`real_world` with ``T = num_steps`` (chapter 9):
    ``z{T}`` (that is :math:`z_1`) is the ``prior`` term, ``z0 .. z{T-1}`` the ``diffusion`` term and the
    data site ``x`` the ``reconstruction`` term."""
    out = {f"z{num_steps}": "prior", "x": "reconstruction"}
    out.update({f"z{i}": "diffusion" for i in range(num_steps)})
    return out


def real_world(model: Diffusion, x, num_steps: int) -> None:
    r"""P: the data ``x [N, D]`` and the forward process, drawn top down: :math:`z_1\sim q(z_1\mid x)`,
    then :math:`z_{(i-1)/T}\sim q(z_{(i-1)/T}\mid z_{i/T}, x)`. Site ``z{i}`` is :math:`z_{i/T}`, ``[N, D]``.

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
    r"""Q: :math:`z_1\sim\mathcal{N}(0, I)`, the reverse steps :math:`p(z_s\mid z_t) = q(z_s\mid z_t, \hat x(z_t; t))`
    and the decoder :math:`p(x\mid z_0)`. ``x`` only sets the shape. Raises as :func:`real_world`."""
    x = model.check(x)
    gam = _grid(model, num_steps)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample(f"z{num_steps}", dist.Normal(jnp.zeros_like(x), 1.0).to_event(1))
        for i in range(num_steps, 0, -1):
            x_hat = model.denoise(z, gam[i])
            z = numpyro.sample(f"z{i - 1}", posterior(z, x_hat, gam[i - 1], gam[i]).to_event(1))
        numpyro.sample("x", model.decoder(z))


def objective(model: Diffusion, key, x, num_steps: int) -> tuple[jax.Array, dict]:
    r"""The recipe's loss for the ``T``-step worlds, nats per example, and its named terms (chapter 9).

    ``kl_objective(key, real_world, dream_world, model, x, T, names=names(T))``: one draw of the whole
    chain per example, every site's log-ratio sampled, so its expectation is the ledger
    :math:`\text{prior} + \mathcal{L}_T + \text{reconstruction}`, an upper bound on
    :math:`-\log p(x)` (up to the dropped data entropy). Returns ``(loss, terms)`` as
    :func:`klbook.train.fit` wants them.
    """
    obj = kl_objective(key, real_world, dream_world, model, x, num_steps, names=names(num_steps))
    return obj.loss, obj.terms


# ---- low-variance estimators: analytic KLs, one random time per example -----------------------------


class Terms(NamedTuple):
    """Per-example ledger ``[N]`` in nats: prior, diffusion and reconstruction terms."""

    prior: jax.Array
    diffusion: jax.Array
    reconstruction: jax.Array

    @property
    def total(self) -> jax.Array:
        """The bound on :math:`-\\log p(x)` per example."""
        return self.prior + self.diffusion + self.reconstruction


def _prior_and_reconstruction(key, model: Diffusion, x) -> tuple[jax.Array, jax.Array]:
    g1, g0 = model.schedule(1.0), model.schedule(0.0)
    a1, s1 = alpha_sigma(g1)
    prior = 0.5 * jnp.sum(a1**2 * x**2 + s1**2 - 1.0 - jnp.log(s1**2), axis=-1)  # KL(N(a x, s^2) || N(0, 1))
    a0, s0 = alpha_sigma(g0)
    z0 = a0 * x + s0 * jax.random.normal(key, x.shape)
    return prior, -model.decoder(z0).log_prob(x)


def continuous_terms(key, model: Diffusion, x, *, times=None, denoise: Callable | None = None,
                     schedule: Callable | None = None) -> Terms:
    r"""The continuous-time ledger, one draw of :math:`t \sim U(0, 1)` and of the noise per example.

    .. math:: \mathcal{L}_\infty \approx -\tfrac12\,\mathrm{SNR}'(t)\,\|x - \hat x(z_t; t)\|^2
       = \tfrac12\,\gamma'(t)\,e^{-\gamma(t)}\,\|x - \hat x(z_t; t)\|^2,\quad z_t = \alpha_t x + \sigma_t\epsilon .

    ``times [N]`` fixes the times; ``denoise(z, gamma)`` and ``schedule`` override the model's (the
    Gaussian checks use :func:`gaussian_denoiser`). Returns :class:`Terms` ``[N]`` each.
    """
    check_key(key)
    x = model.check(x) if isinstance(model, Diffusion) else jnp.asarray(x)
    schedule = model.schedule if schedule is None else schedule
    denoise = model.denoise if denoise is None else denoise
    k_t, k_eps, k_0 = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, x.shape[:1]) if times is None else jnp.asarray(times)
    gamma, dgamma = gamma_prime(schedule, t)  # [N]
    alpha, sigma = alpha_sigma(gamma[:, None])
    z = alpha * x + sigma * jax.random.normal(k_eps, x.shape)
    err = jnp.sum((x - denoise(z, gamma)) ** 2, axis=-1)
    diffusion = 0.5 * dgamma * snr(gamma) * err
    if not isinstance(model, Diffusion):
        return Terms(jnp.zeros_like(diffusion), diffusion, jnp.zeros_like(diffusion))
    prior, recon = _prior_and_reconstruction(k_0, model, x)
    return Terms(prior, diffusion, recon)


def discrete_terms(key, model: Diffusion, x, num_steps: int, *, denoise: Callable | None = None,
                   schedule: Callable | None = None) -> Terms:
    r"""The ``T``-step ledger, one random step :math:`i \sim U\{1..T\}` per example (analytic KL):

    .. math:: \mathcal{L}_T \approx \tfrac{T}{2}\,(\mathrm{SNR}(s_i) - \mathrm{SNR}(t_i))\,\|x - \hat x(z_{t_i}; t_i)\|^2 .

    The same expectation as the recipe's diffusion term for :func:`real_world`, lower variance.
    """
    check_key(key)
    x = model.check(x) if isinstance(model, Diffusion) else jnp.asarray(x)
    schedule = model.schedule if schedule is None else schedule
    denoise = model.denoise if denoise is None else denoise
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    k_i, k_eps, k_0 = jax.random.split(key, 3)
    i = jax.random.randint(k_i, x.shape[:1], 1, num_steps + 1)
    g_t, g_s = schedule(i / num_steps), schedule((i - 1) / num_steps)
    alpha, sigma = alpha_sigma(g_t[:, None])
    z = alpha * x + sigma * jax.random.normal(k_eps, x.shape)
    err = jnp.sum((x - denoise(z, g_t)) ** 2, axis=-1)
    diffusion = 0.5 * num_steps * (snr(g_s) - snr(g_t)) * err
    if not isinstance(model, Diffusion):
        return Terms(jnp.zeros_like(diffusion), diffusion, jnp.zeros_like(diffusion))
    prior, recon = _prior_and_reconstruction(k_0, model, x)
    return Terms(prior, diffusion, recon)


# ---- sampling ------------------------------------------------------------------------------------------


def ancestral_path(key, schedule: Callable, denoise: Callable, z1, num_steps: int) -> jax.Array:
    r"""Ancestral sampling from :math:`z_1`: :math:`z_s \sim q(z_s\mid z_t, \hat x(z_t; t))` for
    :math:`t = 1, \tfrac{T-1}{T}, \dots, \tfrac1T`. Returns the path ``[T + 1, N, D]``, ``path[i]``
    being :math:`z_{i/T}` (``path[T] = z1``)."""
    check_key(key)
    gam = schedule(jnp.linspace(0.0, 1.0, num_steps + 1))

    def step(z, inp):
        k, g_s, g_t = inp
        return posterior(z, denoise(z, g_t), g_s, g_t).sample(k), z

    keys = jax.random.split(key, num_steps)
    z0, zs = jax.lax.scan(step, jnp.asarray(z1), (keys, gam[:-1][::-1], gam[1:][::-1]))
    return jnp.concatenate([z0[None], zs[::-1]], axis=0)


def sample(key, model: Diffusion, n: int, num_steps) -> jax.Array:
    r"""``n`` draws from the dream world with ``T = num_steps`` reverse steps: ``x [n, data_dim]`` on the grid.

    :math:`z_1\sim\mathcal{N}(0, I)`, then :math:`z_s\sim p(z_s\mid z_t)` for :math:`t = 1, \dots, 1/T`,
    then :math:`x\sim p(x\mid z_0)`. ``num_steps`` may be a traced integer (a ``fori_loop``), so one
    compiled sampler serves every ``T``; step ``i``'s key is ``fold_in(key, i)``.
    """
    check_key(key)
    if isinstance(num_steps, (int, np.integer)) and (isinstance(num_steps, bool) or num_steps < 1):
        raise ValueError(f"num_steps must be a positive integer T; got {num_steps!r}")
    k1, k2, k3 = jax.random.split(key, 3)
    z1 = jax.random.normal(k1, (int(n), model.data_dim))

    def step(j, z):  # j = 0 .. T-1: from t = (T - j) / T to s = (T - j - 1) / T
        g_t, g_s = model.schedule((num_steps - j) / num_steps), model.schedule((num_steps - j - 1) / num_steps)
        return posterior(z, model.denoise(z, g_t), g_s, g_t).sample(jax.random.fold_in(k2, j))

    z0 = jax.lax.fori_loop(0, num_steps, step, z1)
    return model.decoder(z0).sample(k3)


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
    base = mixture.component_distribution.base_dist  # loc, scale [C, d]
    x = jnp.asarray(x)[:, None, :]  # [N, 1, d]
    loc, scale = base.loc[None], base.scale[None]  # [1, C, d]
    a, b = (x - bin_width / 2 - loc) / scale, (x + bin_width / 2 - loc) / scale
    flip = a > 0  # upper tail: P = Phi(-a) - Phi(-b), accurate where Phi(b) - Phi(a) would round to 0
    hi, lo = log_ndtr(jnp.where(flip, -a, b)), log_ndtr(jnp.where(flip, -b, a))
    log_cell = jnp.sum(hi + jnp.log(-jnp.expm1(jnp.minimum(lo - hi, -1e-30))), axis=-1)  # [N, C]
    log_w = jax.nn.log_softmax(mixture.mixing_distribution.logits)[None, :]  # [1, C]
    return jax.nn.logsumexp(log_w + log_cell, axis=-1)
