r"""Variational autoencoders: the ELBO as distortion plus rate (chapter 6).

The real world augments the data with an encoder, :math:`P = p(x)\,p(z\mid x)`; the dream world
generates both, :math:`Q = q(z)\,q(x\mid z)`. The recipe's KL between them splits into

.. math:: I[P;Q] = \underbrace{-\langle \log q(x\mid z)\rangle_P}_{D\ \text{distortion}}
          + \underbrace{\left\langle \log\frac{p(z\mid x)}{q(z)}\right\rangle_P}_{R\ \text{rate}} - H,
          \qquad D + R \;\ge\; L = -\langle\log q(x)\rangle_{p(x)} \;\ge\; H,

with :math:`H` the data's entropy and :math:`-(D + R)` the ELBO (monotonicity gives the first
inequality, non-negativity the second). :func:`real_world` and :func:`dream_world` are the two
NumPyro models (use them with :func:`klbook.recipe.kl_objective` and ``NAMES``);
:func:`terms` gives :class:`VAETerms` per example, :func:`rate` the closed form,
:func:`iwae` the importance-weighted estimate of :math:`\log q(x)` (Burda et al., 2016),
:func:`measure` all of them at once and :func:`fit_betas` trains one β-VAE per β together,
vmapped, in one compiled loop.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from klbook._checks import check_finite
from klbook.divergence import check_key, kl
from klbook.nn import bernoulli_head, binomial_head, gaussian_head, mlp
from klbook.recipe import data, kl_objective
from klbook.train import fit_stacked, member

__all__ = ["VAE", "VAETerms", "Chain", "NAMES", "binomial_vae", "bernoulli_vae", "linear_gaussian_vae",
           "real_world", "dream_world", "terms", "rate", "iwae", "measure", "objective", "fit_betas",
           "model_at", "reconstruct", "generate", "linear_gaussian_marginal", "linear_gaussian_optimum"]

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
    return VAE(mlp(k1, data_dim, 2 * latent_dim, width=width, depth=depth),
               mlp(k2, latent_dim, data_dim, width=width, depth=depth), head, data_dim, latent_dim, input_scale)


def binomial_vae(key, data_dim: int, latent_dim: int, total_count: int, *, width: int = 64, depth: int = 2) -> VAE:
    """MLP encoder and decoder; pixels are counts out of ``total_count`` (digits: 16), Binomial."""
    return _mlp_vae(key, data_dim, latent_dim, _BinomialHead(int(total_count)), float(total_count), width, depth)


def bernoulli_vae(key, data_dim: int, latent_dim: int, *, width: int = 64, depth: int = 2) -> VAE:
    """MLP encoder and decoder for binarised data (pixels 0 or 1): a Bernoulli likelihood."""
    return _mlp_vae(key, data_dim, latent_dim, bernoulli_head, 1.0, width, depth)


class _LinearGaussianDecoder(eqx.Module):
    linear: eqx.nn.Linear
    raw_scale: jax.Array  # [data_dim], softplus -> noise scale, shared by every z

    def __call__(self, z):
        return jnp.concatenate([self.linear(z), self.raw_scale])


def linear_gaussian_vae(key, data_dim: int, latent_dim: int, *, weight=None, bias=None, noise=None) -> VAE:
    r"""Linear encoder and :math:`q(x\mid z) = \mathcal{N}(Wz + b, \mathrm{diag}\,\sigma^2)`.

    Its marginal :math:`q(x)` is Gaussian (:func:`linear_gaussian_marginal`), so :math:`L` and, as
    the data's own world, :math:`H` are exact. ``weight [data_dim, latent_dim]``, ``bias``
    and ``noise`` (σ, positive) set the decoder; otherwise it is initialised at random.
    """
    k1, k2 = jax.random.split(key)
    linear = eqx.nn.Linear(latent_dim, data_dim, key=k2)
    f32 = lambda v, shape: jnp.broadcast_to(jnp.asarray(v, jnp.float32), shape)  # noqa: E731
    w = linear.weight if weight is None else f32(weight, (data_dim, latent_dim))
    b = linear.bias if bias is None else f32(bias, (data_dim,))
    linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear, (w, b))
    # sigma = softplus(raw) + 1e-4 (gaussian_head's floor), inverted for a given noise
    raw = jnp.zeros(data_dim) if noise is None else f32(jnp.log(jnp.expm1(jnp.asarray(noise) - 1e-4)), (data_dim,))
    return VAE(eqx.nn.Linear(data_dim, 2 * latent_dim, key=k1), _LinearGaussianDecoder(linear, raw),
               gaussian_head, data_dim, latent_dim)


def linear_gaussian_marginal(vae: VAE) -> dist.MultivariateNormal:
    r"""Exact :math:`q(x) = \mathcal{N}(b, WW^\top + \mathrm{diag}\,\sigma^2)` of a :func:`linear_gaussian_vae`."""
    if not isinstance(vae.decoder, _LinearGaussianDecoder):
        raise TypeError("linear_gaussian_marginal needs a VAE made by linear_gaussian_vae")
    w, b = vae.decoder.linear.weight, vae.decoder.linear.bias
    sigma = vae.decode(jnp.zeros((1, vae.latent_dim))).base_dist.scale[0]  # [data_dim]
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
    r = kl(enc, vae.prior(x.shape[0])) if closed_form_rate else enc.log_prob(z) - vae.prior(x.shape[0]).log_prob(z)
    return VAETerms(-vae.decode(z).log_prob(x), r)


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
        return prior.log_prob(z) + vae.decode(z).log_prob(x) - enc.log_prob(z)

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
    """

    distortion: jax.Array
    rate: jax.Array
    rate_sampled: jax.Array
    neg_log_marginal: jax.Array

    def mean(self) -> Chain:
        """Means over examples (the last axis)."""
        return Chain(*(jnp.mean(v, axis=-1) for v in self))

    def stderr(self) -> Chain:
        """Standard errors of those means."""
        return Chain(*(jnp.std(v, axis=-1, ddof=1) / math.sqrt(v.shape[-1]) for v in self))

    @property
    def gap(self) -> jax.Array:
        """:math:`D + R - L` per example: the ELBO's slack, non-negative on average."""
        return self.distortion + self.rate - self.neg_log_marginal


def measure(key, vae: VAE, x, num_samples: int = 1000) -> Chain:
    """:class:`Chain` for every example of ``x``: ``D``, ``R`` (both ways) and ``L`` by :func:`iwae`."""
    k1, k2 = jax.random.split(key)
    t = terms(k1, vae, x)
    return Chain(t.distortion, rate(vae, x), t.rate, -iwae(k2, vae, x, num_samples))


def objective(vae: VAE, key, x, beta=1.0) -> tuple[jax.Array, dict]:
    """The β-VAE loss ``D + β R`` from the recipe (one particle), and its terms ``rate``, ``distortion``."""
    obj = kl_objective(key, real_world, dream_world, vae, x, names=NAMES, weights={"rate": beta})
    return obj.loss, obj.terms


def fit_betas(key, make: Callable[[jax.Array], VAE], betas: Sequence[float], x, *, num_steps: int,
              batch_size: int = 128, optimizer: optax.GradientTransformation | None = None,
              progress: bool = True) -> tuple[VAE, dict[str, np.ndarray]]:
    r"""Train one β-VAE per β, all at once: parameters stacked, one vmapped, compiled loop.

    Model :math:`m` minimises :math:`D + \beta_m R` (:func:`objective`) on the same batches;
    the losses are summed, which leaves each model's gradient (and Adam's per-parameter step)
    its own (:func:`klbook.train.fit_stacked`). Returns the stacked models (leading axis
    ``len(betas)``; see :func:`model_at`) and the history ``name -> [num_steps]`` with ``rate/i``
    and ``distortion/i`` per model.
    """
    check_key(key)
    betas = jnp.asarray(betas, jnp.float32)
    if betas.ndim != 1 or betas.size == 0 or not bool(jnp.all(betas > 0)):
        raise ValueError(f"betas must be a non-empty list of positive numbers; got {betas}")
    return fit_stacked(key, make, lambda m, k, batch, b: objective(m, k, batch, b), betas, jnp.asarray(x),
                       num_steps=num_steps, batch_size=batch_size, optimizer=optimizer, progress=progress,
                       desc=f"{betas.size} beta-VAEs")


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


def _linear_gaussian_expected(params, cov, latent_dim: int):
    """Population ``(D, R)`` of a linear VAE on data ``N(0, cov)`` (exact expectations, no sampling)."""
    d = cov.shape[0]
    a = params[: latent_dim * d].reshape(latent_dim, d)  # encoder mean A x
    log_s = params[latent_dim * d: latent_dim * (d + 1)]  # encoder scales (diagonal)
    w = params[latent_dim * (d + 1): latent_dim * (2 * d + 1)].reshape(d, latent_dim)  # decoder W z
    log_sigma = params[latent_dim * (2 * d + 1):]  # decoder noise (diagonal)
    s2 = jnp.exp(2 * log_s)
    m = jnp.eye(d) - w @ a
    resid = m @ cov @ m.T + (w * s2[None, :]) @ w.T  # covariance of x - W z, z ~ p(z|x)
    distortion = 0.5 * jnp.sum(jnp.log(2 * jnp.pi) + 2 * log_sigma + jnp.diag(resid) * jnp.exp(-2 * log_sigma))
    rate = 0.5 * (jnp.trace(a @ cov @ a.T) + jnp.sum(s2) - latent_dim - 2 * jnp.sum(log_s))
    return distortion, rate


def linear_gaussian_optimum(weight, betas: Sequence[float], *, noise: float = 1.0, restarts: int = 3,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""Population-optimal β-VAEs of the linear family for data :math:`x \sim \mathcal{N}(0, WW^\top + \sigma^2 I)`.

    The family of :func:`linear_gaussian_vae` (encoder :math:`\mathcal{N}(Ax, \mathrm{diag}\,s^2)`, decoder
    :math:`\mathcal{N}(Wz, \mathrm{diag}\,\sigma^2)`, zero biases, which are optimal for centred data) has
    :math:`D` and :math:`R` in closed form as expectations over the whole population, so minimising
    :math:`D + \beta R` needs no sampling: L-BFGS from ``restarts`` random starts (``seed`` picks them;
    the best is kept). Returns ``(D, R)`` in nats, arrays ``[len(betas)]``. Chapter 6 (exercises).
    """
    from scipy.optimize import minimize  # scipy comes with scikit-learn

    w_true = np.asarray(weight, np.float64)
    if w_true.ndim != 2:
        raise ValueError(f"weight must be [data_dim, latent_dim]; got shape {w_true.shape}")
    d, k = w_true.shape
    cov = jnp.asarray(w_true @ w_true.T + noise**2 * np.eye(d), jnp.float32)
    size = k * (2 * d + 1) + d

    @jax.jit
    def value_and_grad(p, beta):
        return jax.value_and_grad(lambda q: (lambda dd, rr: dd + beta * rr)(*_linear_gaussian_expected(q, cov, k)))(p)

    rng = np.random.default_rng(seed)
    out = []
    for beta in betas:
        best = None
        for _ in range(restarts):
            f = lambda p: tuple(np.asarray(v, np.float64) for v in value_and_grad(jnp.asarray(p, jnp.float32), beta))  # noqa: E731
            res = minimize(f, 0.3 * rng.standard_normal(size), jac=True, method="L-BFGS-B",
                           options={"maxiter": 5000})
            best = res if best is None or res.fun < best.fun else best
        out.append([float(v) for v in _linear_gaussian_expected(jnp.asarray(best.x, jnp.float32), cov, k)])
    dr = np.asarray(out)
    return dr[:, 0], dr[:, 1]
