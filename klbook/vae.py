r"""Variational autoencoders: the ELBO as distortion plus rate (chapter 6).

The real world augments the data with an encoder, :math:`P = p(x)\,p(z\mid x)`; the dream world
generates both, :math:`Q = q(z)\,q(x\mid z)`. The recipe's KL between them splits into

.. math:: I[P;Q] &= \underbrace{-\langle \log q(x\mid z)\rangle_P}_{D\ \text{distortion}}
          + \underbrace{\left\langle \log\frac{p(z\mid x)}{q(z)}\right\rangle_P}_{R\ \text{rate}} - H, \\
          D + R &\;\ge\; L = -\langle\log q(x)\rangle_{p(x)} \;\ge\; H,

with :math:`H` the data's entropy and :math:`-(D + R)` the ELBO (monotonicity gives the first
inequality, non-negativity the second). :func:`real_world` and :func:`dream_world` are the two
NumPyro models (use them with :func:`klbook.recipe.kl_objective` and ``NAMES``);
:func:`terms` gives :class:`VAETerms` per example, :func:`rate` the closed form,
:func:`iwae` the importance-weighted estimate of :math:`\log q(x)` (Burda et al., 2016),
:func:`measure` all of them at once and :func:`fit_betas` trains one β-VAE per β together,
vmapped, in one compiled loop. For the linear-Gaussian family with the decoder's σ fixed,
:func:`linear_gaussian_optimum` gives the best β-VAE of the population in closed form,
:func:`linear_gaussian_fit` the exact minimiser on a sample (maximum likelihood at β = 1),
:func:`linear_gaussian_terms` a model's ``D`` and ``R`` with the code integrated out, and
:func:`linear_gaussian_population` the exact population ``(D, R)`` of any linear VAE.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from klbook._checks import check_finite, is_concrete
from klbook.divergence import check_key, kl
from klbook.nn import bernoulli_head, binomial_head, diagonal_normal, gaussian_head, mlp
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import Devices, fit_stacked, member

__all__ = [
    "VAE",
    "VAETerms",
    "Chain",
    "NAMES",
    "binomial_vae",
    "bernoulli_vae",
    "linear_gaussian_vae",
    "real_world",
    "dream_world",
    "terms",
    "rate",
    "iwae",
    "measure",
    "objective",
    "fit_betas",
    "model_at",
    "reconstruct",
    "generate",
    "linear_gaussian_marginal",
    "linear_gaussian_optimum",
    "linear_gaussian_fit",
    "linear_gaussian_terms",
    "linear_gaussian_population",
]

#: The recipe's names for the two sites: the latent's term is the rate, the data's the distortion.
NAMES = {"z": "rate", "x": "distortion"}


class VAE(eqx.Module):
    """Encoder network, decoder network and the head that makes the decoder a likelihood.

    ``encoder``: ``x / input_scale [data_dim] -> [2 latent_dim]`` (mean, raw scale of
    :math:`p(z\\mid x)`); ``decoder``: ``z [latent_dim] -> outputs``; ``head(outputs [*B, ...])``:
    the distribution :math:`q(x\\mid z)` with one event per example. Both networks unbatched.
    """

    encoder: Callable
    decoder: Callable
    head: Callable = eqx.field(static=True)
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    input_scale: float = eqx.field(static=True, default=1.0)

    def check(self, x) -> jax.Array:
        """``x`` as an array ``[N, data_dim]``, or a ``ValueError`` naming what is wrong."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.data_dim or x.shape[0] == 0:
            raise ValueError(f"x must have shape [N, {self.data_dim}] with N >= 1; got {x.shape}")
        check_finite(x, "x")
        return x

    def encode(self, x) -> dist.Distribution:
        """The encoder :math:`p(z\\mid x)`: batch ``(N,)``, event ``(latent_dim,)``."""
        x = self.check(x)
        return gaussian_head(jax.vmap(self.encoder)(x.astype(jnp.float32) / self.input_scale))

    def decode(self, z) -> dist.Distribution:
        """The decoder :math:`q(x\\mid z)` for ``z [*B, latent_dim]``: batch ``*B``, event ``(data_dim,)``."""
        z = jnp.asarray(z)
        if z.ndim < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [..., {self.latent_dim}]; got {z.shape}")
        out = jax.vmap(self.decoder)(z.reshape(-1, self.latent_dim))
        return self.head(out.reshape(*z.shape[:-1], *out.shape[1:]))

    def prior(self, n: int) -> dist.Distribution:
        """The prior :math:`q(z) = \\mathcal{N}(0, I)`, batch ``(n,)``, event ``(latent_dim,)``."""
        return dist.Normal(jnp.zeros((n, self.latent_dim)), 1.0).to_event(1)


@dataclasses.dataclass(frozen=True)
class _BinomialHead:  # equal by value, so models made separately share one static structure
    total_count: int

    def __call__(self, logits):
        return binomial_head(logits, self.total_count)


def _mlp_vae(key, data_dim, latent_dim, head, input_scale, width, depth) -> VAE:
    k1, k2 = jax.random.split(key)
    return VAE(
        mlp(k1, data_dim, 2 * latent_dim, width=width, depth=depth),
        mlp(k2, latent_dim, data_dim, width=width, depth=depth),
        head,
        data_dim,
        latent_dim,
        input_scale,
    )


def binomial_vae(key, data_dim: int, latent_dim: int, total_count: int, *, width: int = 64, depth: int = 2) -> VAE:
    """MLP encoder and decoder; pixels are counts out of ``total_count`` (digits: 16), Binomial."""
    return _mlp_vae(key, data_dim, latent_dim, _BinomialHead(int(total_count)), float(total_count), width, depth)


def bernoulli_vae(key, data_dim: int, latent_dim: int, *, width: int = 64, depth: int = 2) -> VAE:
    """MLP encoder and decoder for binarised data (pixels 0 or 1): a Bernoulli likelihood."""
    return _mlp_vae(key, data_dim, latent_dim, bernoulli_head, 1.0, width, depth)


class _LinearGaussianDecoder(eqx.Module):
    linear: eqx.nn.Linear
    raw_scale: jax.Array  # [data_dim], softplus -> noise scale, shared by every z
    learn_noise: bool = eqx.field(static=True, default=True)

    def __call__(self, z):
        raw = self.raw_scale if self.learn_noise else jax.lax.stop_gradient(self.raw_scale)
        return jnp.concatenate([self.linear(z), raw])


def linear_gaussian_vae(
    key, data_dim: int, latent_dim: int, *, weight=None, bias=None, noise=None, learn_noise: bool = True
) -> VAE:
    r"""Linear encoder and :math:`q(x\mid z) = \mathcal{N}(Wz + b, \mathrm{diag}\,\sigma^2)`.

    Its marginal :math:`q(x)` is Gaussian (:func:`linear_gaussian_marginal`), so :math:`L` and, as
    the data's own world, :math:`H` are exact. ``weight [data_dim, latent_dim]``, ``bias``
    and ``noise`` (σ, above the scale floor 1e-4) set the decoder; otherwise it is initialised at
    random (σ = 0.69). With ``learn_noise=False`` the decoder's σ stays where ``noise`` put it (no
    gradient reaches it): the well-posed family of chapter 6, whose β-VAE optimum is
    :func:`linear_gaussian_optimum`. With a learned σ, :math:`D + \beta R` has no minimum for
    β < 1: a code that copies one pixel ever more precisely lowers that pixel's density-valued
    distortion without bound (:func:`linear_gaussian_population` computes the path).
    """
    if noise is None and not learn_noise:
        raise ValueError("learn_noise=False needs a noise to fix the decoder's sigma at")
    if noise is not None and is_concrete(noise):
        sig = np.asarray(noise, np.float64)
        if not np.all(np.isfinite(sig) & (sig > 1e-4)):
            raise ValueError(f"noise must be finite and above 1e-4 (the scale floor); got {noise}")
    k1, k2 = jax.random.split(key)
    linear = eqx.nn.Linear(latent_dim, data_dim, key=k2)
    f32 = lambda v, shape: jnp.broadcast_to(jnp.asarray(v, jnp.float32), shape)  # noqa: E731
    w = linear.weight if weight is None else f32(weight, (data_dim, latent_dim))
    b = linear.bias if bias is None else f32(bias, (data_dim,))
    linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear, (w, b))
    # sigma = softplus(raw) + 1e-4 (gaussian_head's floor), inverted for a given noise
    raw = jnp.zeros(data_dim) if noise is None else f32(jnp.log(jnp.expm1(jnp.asarray(noise) - 1e-4)), (data_dim,))
    decoder = _LinearGaussianDecoder(linear, raw, bool(learn_noise))
    return VAE(eqx.nn.Linear(data_dim, 2 * latent_dim, key=k1), decoder, gaussian_head, data_dim, latent_dim)


def linear_gaussian_marginal(vae: VAE) -> dist.MultivariateNormal:
    r"""Exact :math:`q(x) = \mathcal{N}(b, WW^\top + \mathrm{diag}\,\sigma^2)` of a :func:`linear_gaussian_vae`."""
    if not isinstance(vae.decoder, _LinearGaussianDecoder):
        raise TypeError("linear_gaussian_marginal needs a VAE made by linear_gaussian_vae")
    w, b = vae.decoder.linear.weight, vae.decoder.linear.bias
    sigma = jnp.asarray(diagonal_normal(vae.decode(jnp.zeros((1, vae.latent_dim)))).scale)[0]  # [data_dim]
    return dist.MultivariateNormal(b, covariance_matrix=w @ w.T + jnp.diag(sigma**2))


def real_world(vae: VAE, x) -> None:
    """P: the data ``x [N, data_dim]`` (density unknown) and the encoder :math:`p(z\\mid x)`."""
    x = vae.check(x)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        numpyro.sample("z", vae.encode(x))


def dream_world(vae: VAE, x) -> None:
    """Q: the prior :math:`q(z)` and the decoder :math:`q(x\\mid z)`; ``x`` only sets ``N``."""
    x = vae.check(x)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", vae.prior(x.shape[0]))
        numpyro.sample("x", vae.decode(z))


class VAETerms(NamedTuple):
    """Per-example distortion :math:`D = -\\log q(x\\mid z)` and rate :math:`R`, nats, ``[N]``."""

    distortion: jax.Array
    rate: jax.Array

    @property
    def elbo(self) -> jax.Array:
        """The evidence lower bound, :math:`-(D + R)`, per example."""
        return -(self.distortion + self.rate)


def rate(vae: VAE, x) -> jax.Array:
    r"""Closed-form rate :math:`R(x) = I[p(z\mid x); q(z)]` per example, ``[N]`` nats."""
    x = vae.check(x)
    return kl(vae.encode(x), vae.prior(x.shape[0]))


def terms(key, vae: VAE, x, *, z=None, closed_form_rate: bool = False) -> VAETerms:
    r"""One draw :math:`z \sim p(z\mid x)` per example scored as the recipe scores it.

    ``rate = log p(z|x) - log q(z)`` at that draw (or :func:`rate` with ``closed_form_rate``);
    ``distortion = -log q(x|z)``. Pass ``z [N, latent_dim]`` to score a given draw.
    """
    check_key(key)
    x = vae.check(x)
    enc = vae.encode(x)
    z = enc.rsample(key) if z is None else z
    if closed_form_rate:
        r = kl(enc, vae.prior(x.shape[0]))
    else:
        r = jnp.asarray(enc.log_prob(z)) - jnp.asarray(vae.prior(x.shape[0]).log_prob(z))
    return VAETerms(-jnp.asarray(vae.decode(z).log_prob(x)), r)


def iwae(key, vae: VAE, x, num_samples: int, *, chunk: int = 64) -> jax.Array:
    r"""Importance-weighted estimate of :math:`\log q(x)` per example, ``[N]`` nats.

    .. math:: \log \hat q_K(x) = \log \frac1K \sum_{k=1}^K \frac{q(z_k)\,q(x\mid z_k)}{p(z_k\mid x)},
              \quad z_k \sim p(z\mid x).

    Its mean is a lower bound on :math:`\log q(x)` that rises with :math:`K` (Burda et al.,
    2016); :math:`K = 1` is the ELBO. Samples are drawn ``chunk`` at a time (memory
    ``chunk x N x data_dim``) with a running log-sum-exp.
    """
    check_key(key)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    x = vae.check(x)
    enc, prior = vae.encode(x), vae.prior(x.shape[0])
    chunk = min(int(chunk), int(num_samples))
    steps = math.ceil(num_samples / chunk)

    def one(k):  # log q(z) q(x|z) / p(z|x) at one draw z ~ p(z|x) per example, [N]
        z = enc.rsample(k)
        return jnp.asarray(prior.log_prob(z)) + jnp.asarray(vae.decode(z).log_prob(x)) - jnp.asarray(enc.log_prob(z))

    def body(acc, i):
        log_w = jax.vmap(one)(jax.random.split(jax.random.fold_in(key, i), chunk))  # [chunk, N]
        log_w = jnp.where((i * chunk + jnp.arange(chunk) < num_samples)[:, None], log_w, -jnp.inf)
        return jnp.logaddexp(acc, jax.nn.logsumexp(log_w, axis=0)), None

    total, _ = jax.lax.scan(body, jnp.full(x.shape[0], -jnp.inf), jnp.arange(steps))
    return total - math.log(num_samples)


class Chain(NamedTuple):
    """Per-example terms of the chain :math:`D + R \\ge L \\ge H` (arrays ``[..., N]``, nats).

    ``rate`` is the closed form, ``rate_sampled`` its one-draw estimate at the same ``z`` as
    ``distortion``; ``neg_log_marginal`` is :math:`-\\log \\hat q_K(x)` (so its mean estimates ``L``).
    JAX arrays from :func:`measure`; NumPy arrays in a :class:`klbook.vae_explorer.BetaSweep`.
    """

    distortion: jax.Array | np.ndarray
    rate: jax.Array | np.ndarray
    rate_sampled: jax.Array | np.ndarray
    neg_log_marginal: jax.Array | np.ndarray

    def mean(self) -> Chain:
        """Means over examples (the last axis)."""
        return Chain(*(jnp.mean(v, axis=-1) for v in self))

    def stderr(self) -> Chain:
        """Standard errors of those means."""
        return Chain(*(jnp.std(v, axis=-1, ddof=1) / math.sqrt(v.shape[-1]) for v in self))

    @property
    def gap(self) -> jax.Array | np.ndarray:
        """:math:`D + R - L` per example: the ELBO's slack, non-negative on average."""
        return self.distortion + self.rate - self.neg_log_marginal


def measure(key, vae: VAE, x, num_samples: int = 1000) -> Chain:
    """:class:`Chain` for every example of ``x``: ``D``, ``R`` (both ways) and ``L`` by :func:`iwae`."""
    k1, k2 = jax.random.split(key)
    t = terms(k1, vae, x)
    return Chain(t.distortion, rate(vae, x), t.rate, -iwae(k2, vae, x, num_samples))


def objective(key, vae: VAE, x, *, beta=1.0) -> KLObjective:
    """The β-VAE's ledger from the recipe (one particle): ``loss`` is ``D + β R``, ``total`` the -ELBO ``D + R``.

    :class:`klbook.recipe.KLObjective` with the terms ``rate`` and ``distortion``, nats per example;
    ``dropped`` lists ``x`` (the data's own ``<log p(x)>``, which nothing trained changes). For
    :func:`klbook.train.fit`: ``lambda m, k, x: vae.objective(k, m, x, beta=b)``.
    """
    return kl_objective(key, real_world, dream_world, vae, x, names=NAMES, weights={"rate": beta})


def fit_betas(
    key,
    make: Callable[[jax.Array], VAE],
    betas: Sequence[float] | np.ndarray | jax.Array,
    x,
    *,
    num_steps: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    devices: Devices = None,
) -> tuple[VAE, dict[str, np.ndarray]]:
    r"""Train one β-VAE per β, all at once: parameters stacked, one vmapped, compiled loop.

    Model :math:`m` minimises :math:`D + \beta_m R` (:func:`objective`) on the same batches;
    the losses are summed, which leaves each model's gradient (and Adam's per-parameter step)
    its own (:func:`klbook.train.fit_stacked`). Returns the stacked models (leading axis
    ``len(betas)``; see :func:`model_at`) and the history ``name -> [num_steps]`` with ``rate/i``
    and ``distortion/i`` per model.

    ``devices`` splits each shared batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device; ``batch_size`` must divide by their number,
    or a ``ValueError`` naming both is raised before anything compiles).
    """
    check_key(key)
    grid = jnp.asarray(betas, jnp.float32)
    if grid.ndim != 1 or grid.size == 0 or not bool(jnp.all(grid > 0)):
        raise ValueError(f"betas must be a non-empty list of positive numbers; got {grid}")
    return fit_stacked(
        key,
        make,
        lambda m, k, batch, b: objective(k, m, batch, beta=b),
        grid,
        jnp.asarray(x),
        num_steps=num_steps,
        batch_size=batch_size,
        optimizer=optimizer,
        progress=progress,
        desc=f"{grid.size} beta-VAEs",
        devices=devices,
    )


def model_at(models: VAE, i: int) -> VAE:
    """Model ``i`` of models stacked by :func:`fit_betas` (:func:`klbook.train.member`)."""
    return member(models, i)


def reconstruct(key, vae: VAE, x) -> jax.Array:
    """Decoder mean at one draw :math:`z \\sim p(z\\mid x)` per example (what the code lets through), ``[N, d]``."""
    check_key(key)
    return vae.decode(vae.encode(x).sample(key)).mean


def generate(key, vae: VAE, n: int) -> jax.Array:
    """Decoder means at ``n`` draws from the prior: what the dream world imagines, ``[n, data_dim]``."""
    check_key(key)
    return vae.decode(vae.prior(n).sample(key)).mean


def linear_gaussian_terms(vae: VAE, x) -> VAETerms:
    r"""Per-example :math:`D` and :math:`R` of a :func:`linear_gaussian_vae` with the code integrated out exactly.

    With :math:`p(z\mid x) = \mathcal{N}(\mu, \mathrm{diag}\,s^2)` and :math:`q(x\mid z) = \mathcal{N}(Vz + b,
    \mathrm{diag}\,\sigma^2)`, :math:`\langle -\log q(x\mid z)\rangle = \sum_i \big(\tfrac12\log 2\pi\sigma_i^2
    + [(x - V\mu - b)_i^2 + \sum_j V_{ij}^2 s_j^2] / 2\sigma_i^2\big)`; the rate is :func:`rate`. No
    sampling, so the mean of ``distortion + beta * rate`` over a training sample is the β-VAE's
    objective itself, to compare with :func:`linear_gaussian_fit`'s minimum. Arrays ``[N]``, nats.
    """
    if not isinstance(vae.decoder, _LinearGaussianDecoder):
        raise TypeError("linear_gaussian_terms needs a VAE made by linear_gaussian_vae")
    x = vae.check(x)
    enc = vae.encode(x)
    normal = diagonal_normal(enc)
    mu, s = jnp.asarray(normal.loc), jnp.asarray(normal.scale)  # [N, k]
    w, b = vae.decoder.linear.weight, vae.decoder.linear.bias  # [d, k], [d]
    if b is None:  # linear_gaussian_vae always builds the decoder with a bias
        raise TypeError("linear_gaussian_terms needs the decoder's bias (linear_gaussian_vae makes one)")
    sigma = jnp.asarray(diagonal_normal(vae.decode(jnp.zeros((1, vae.latent_dim)))).scale)[0]  # [d]
    sq = (x - mu @ w.T - b[None, :]) ** 2 + (s**2) @ (w**2).T  # [N, d]: E (x - V z - b)^2
    distortion = jnp.sum(0.5 * jnp.log(2 * jnp.pi * sigma**2)[None, :] + sq / (2 * sigma**2)[None, :], axis=-1)
    return VAETerms(distortion, kl(enc, vae.prior(x.shape[0])))


def _float64(value, name: str, fn: str) -> np.ndarray:
    """``value`` as a float64 NumPy array, or a clear error (these closed forms run outside ``jax.jit``)."""
    if not all(is_concrete(leaf) for leaf in jax.tree.leaves(value)):
        raise TypeError(
            f"{fn} is a float64 NumPy closed form: call it with concrete numbers, outside "
            f"jax.jit/grad/vmap ({name} is a tracer)"
        )
    out = np.asarray(value, np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite; got {value}")
    return out


def _positive_betas(betas, fn: str) -> np.ndarray:
    b = _float64(betas, "betas", fn)
    if b.ndim != 1 or b.size == 0 or not np.all(b > 0):
        raise ValueError(f"betas must be a non-empty list of positive numbers; got {betas}")
    return b


def _positive_scalar(value, name: str, fn: str) -> float:
    v = _float64(value, name, fn)
    if v.ndim != 0 or not v > 0:
        raise ValueError(f"{name} must be one positive number; got {value}")
    return float(v)


def linear_gaussian_population(cov, encoder_weight, encoder_scale, decoder_weight, noise) -> tuple[float, float]:
    r"""Population :math:`(D, R)` in nats of a linear VAE on data :math:`x \sim \mathcal{N}(0, \Sigma)`, float64.

    Encoder :math:`p(z\mid x) = \mathcal{N}(Ax, \mathrm{diag}\,s^2)`, prior :math:`\mathcal{N}(0, I)`,
    decoder :math:`q(x\mid z) = \mathcal{N}(Vz, \mathrm{diag}\,\sigma^2)` (zero biases, optimal for centred
    data). With :math:`M = I - VA`, the residual :math:`x - Vz` has covariance
    :math:`\Delta = M\Sigma M^\top + V\,\mathrm{diag}(s^2)\,V^\top`, and

    .. math:: D &= \tfrac12\sum_i\Big(\log 2\pi\sigma_i^2 + \frac{\Delta_{ii}}{\sigma_i^2}\Big), \\
              R &= \tfrac12\big(\mathrm{tr}\,A\Sigma A^\top + \textstyle\sum_j s_j^2 - m - \sum_j \log s_j^2\big),

    exact expectations, no sampling. ``cov [d, d]`` (symmetric positive definite),
    ``encoder_weight`` :math:`A` ``[m, d]``, ``encoder_scale`` :math:`s` ``[m]``, ``decoder_weight``
    :math:`V` ``[d, m]``, ``noise`` :math:`\sigma` (a number or ``[d]``), all positive where scales.
    Chapter 6 uses it to show the learned-σ runaway and the tests to check :func:`linear_gaussian_optimum`.
    """
    fn = "linear_gaussian_population"
    cov = _float64(cov, "cov", fn)
    a, s = _float64(encoder_weight, "encoder_weight", fn), _float64(encoder_scale, "encoder_scale", fn)
    v, sigma = _float64(decoder_weight, "decoder_weight", fn), _float64(noise, "noise", fn)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not np.allclose(cov, cov.T):
        raise ValueError(f"cov must be a symmetric [d, d] matrix; got shape {cov.shape}")
    d = cov.shape[0]
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError("cov must be positive definite")
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"encoder_weight must be [m, {d}]; got shape {a.shape}")
    m = a.shape[0]
    if s.shape != (m,) or not np.all(s > 0):
        raise ValueError(f"encoder_scale must be [{m}] positive numbers; got {s}")
    if v.shape != (d, m):
        raise ValueError(f"decoder_weight must be [{d}, {m}]; got shape {v.shape}")
    sigma = np.broadcast_to(sigma, (d,)) if sigma.ndim == 0 else sigma
    if sigma.shape != (d,) or not np.all(sigma > 0):
        raise ValueError(f"noise must be a positive number or [{d}] positive numbers; got {noise}")
    resid = (np.eye(d) - v @ a) @ cov @ (np.eye(d) - v @ a).T + (v * s**2) @ v.T
    distortion = 0.5 * np.sum(np.log(2 * np.pi * sigma**2) + np.diag(resid) / sigma**2)
    rate = 0.5 * (np.trace(a @ cov @ a.T) + np.sum(s**2) - m - np.sum(np.log(s**2)))
    return float(distortion), float(rate)


def linear_gaussian_optimum(weight, betas: Sequence[float], *, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Population-optimal :math:`(D, R)` of the β-VAE with the decoder's σ fixed at the truth's, closed form.

    The world is :math:`x \sim \mathcal{N}(0, \Sigma)`, :math:`\Sigma = WW^\top + \sigma^2 I` (``weight``
    :math:`W` ``[d, m]``, ``noise`` σ); the family is :func:`linear_gaussian_vae` with
    ``learn_noise=False`` at σ (encoder :math:`\mathcal{N}(Ax + c, \mathrm{diag}\,s^2)`, decoder
    :math:`\mathcal{N}(Vz + b, \sigma^2 I)`). Since :math:`D = \|x - Vz\|^2/2\sigma^2 + \text{const}`,
    :math:`D + \beta R` is β times the negative ELBO of the same model with noise variance
    :math:`\tau^2 = \beta\sigma^2`, whose best value is its maximum likelihood: the encoder matches
    the posterior (diagonal once the code is rotated) and :math:`VV^\top = U(\Lambda - \tau^2)_+U^\top`
    over the top :math:`m` eigenpairs :math:`(\lambda_i, u_i)` of :math:`\Sigma` (Tipping and Bishop, 1999).
    Along each kept direction the residual variance is then :math:`\tau^2`, so

    .. math:: R(\beta) &= \sum_{i \le m} \tfrac12 \log\Big(\frac{\lambda_i}{\beta\sigma^2}\Big)_+, \\
              D(\beta) &= \tfrac d2 \log 2\pi\sigma^2 + \frac{1}{2\sigma^2}\Big(\sum_{i \in A}\beta\sigma^2
              + \sum_{i \notin A} \lambda_i\Big),

    with :math:`A` the kept directions (:math:`\lambda_i > \beta\sigma^2`, :math:`i \le m`). Every β > 0
    has this one minimum (the objective is bounded below); a direction collapses for
    :math:`\beta \ge \lambda_i/\sigma^2`, and :math:`D + R - H = \tfrac{|A|}2(\beta - 1 - \log\beta)` while no
    direction has collapsed. Returns ``(D, R)``, float64 arrays ``[len(betas)]``. Chapter 6.
    """
    fn = "linear_gaussian_optimum"
    w = _float64(weight, "weight", fn)
    if w.ndim != 2 or w.shape[1] > w.shape[0]:
        raise ValueError(f"weight must be [data_dim, latent_dim] with latent_dim <= data_dim; got shape {w.shape}")
    b, sigma2 = _positive_betas(betas, fn), _positive_scalar(noise, "noise", fn) ** 2
    d, m = w.shape
    lam = np.sort(np.linalg.eigvalsh(w @ w.T + sigma2 * np.eye(d)))[::-1]
    top, rest = lam[:m], lam[m:].sum()
    tau2 = b[:, None] * sigma2  # [B, 1]
    keep = top[None, :] > tau2  # [B, m]
    rate = 0.5 * np.sum(np.where(keep, np.log(np.where(keep, top / tau2, 1.0)), 0.0), axis=1)
    resid = np.sum(np.where(keep, tau2, top[None, :]), axis=1) + rest
    distortion = 0.5 * d * np.log(2 * np.pi * sigma2) + resid / (2 * sigma2)
    return distortion, rate


def linear_gaussian_fit(x, latent_dim: int, *, beta: float = 1.0, noise: float = 1.0) -> VAE:
    r"""The exact minimiser of the β-VAE's :math:`D + \beta R` on the sample ``x [N, d]``, σ fixed at ``noise``.

    The same argument as :func:`linear_gaussian_optimum` with the sample's moments in place of the
    population's: :math:`b = \bar x`, :math:`V = U_m\,\mathrm{diag}\big((l_i - \beta\sigma^2)_+\big)^{1/2}`
    with :math:`(l_i, u_i)` the top ``latent_dim`` eigenpairs of the sample covariance (divisor
    :math:`N`), and the encoder at the posterior of the model with noise :math:`\beta\sigma^2`:
    gain :math:`v_i / l_i` and scale :math:`\sigma\sqrt{\beta / l_i}` along each kept direction, the
    prior elsewhere. At β = 1 it is the maximum-likelihood fit of :math:`\mathcal{N}(b, VV^\top +
    \sigma^2 I)` to ``x``, where the ELBO is tight: the best model the trained β = 1 VAE can reach.
    Computed in float64, returned as a float32 :func:`linear_gaussian_vae` (``learn_noise=False``).
    """
    fn = "linear_gaussian_fit"
    xs = _float64(x, "x", fn)
    if xs.ndim != 2 or xs.shape[0] < 2:
        raise ValueError(f"x must have shape [N, d] with N >= 2; got {xs.shape}")
    n, d = xs.shape
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) or not 1 <= latent_dim <= d:
        raise ValueError(f"latent_dim must be an integer in 1..{d}; got {latent_dim!r}")
    beta, sigma = _positive_scalar(beta, "beta", fn), _positive_scalar(noise, "noise", fn)
    if not sigma > 1e-4:
        raise ValueError(f"noise must be above 1e-4 (the scale floor); got {noise}")
    mean = xs.mean(0)
    lam, u = np.linalg.eigh((xs - mean).T @ (xs - mean) / n)
    lam, u = lam[::-1][:latent_dim], u[:, ::-1][:, :latent_dim]
    tau2 = beta * sigma**2
    keep = lam > tau2
    v = u * np.sqrt(np.where(keep, lam - tau2, 0.0))  # [d, m]
    gain = np.where(keep, np.sqrt(np.where(keep, lam - tau2, 0.0)) / lam, 0.0)[:, None] * u.T  # [m, d]
    scale = np.where(keep, np.sqrt(tau2 / lam), 1.0)
    raw = np.log(np.expm1(scale - 1e-4))  # gaussian_head: softplus(raw) + 1e-4
    model = linear_gaussian_vae(jax.random.key(0), d, latent_dim, weight=v, bias=mean, noise=sigma, learn_noise=False)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    weight = np.concatenate([gain, np.zeros((latent_dim, d))])
    bias = np.concatenate([-gain @ mean, raw])
    return eqx.tree_at(lambda mdl: (mdl.encoder.weight, mdl.encoder.bias), model, (f32(weight), f32(bias)))
