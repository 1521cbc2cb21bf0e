r"""Bayes by Backprop: variational Bayes over the weights of a neural network (chapter 11).

The worlds are chapter 10's (:func:`klbook.bayes.real_world`, :func:`klbook.bayes.dream_world`)
with a network's weights as the global code :math:`\theta` and a conditional likelihood
:math:`q(y\mid x, \theta)` read off the network's output by a head. The real world augments the
data with one draw :math:`\theta\sim p(\theta\mid\mathcal D)`, a mean-field Gaussian; the dream world is a
prior :math:`q(\theta)` times :math:`\prod_i q(y_i\mid x_i,\theta)`. Per example of the data set,

.. math:: \frac1N I[P;Q] ={}& \underbrace{\frac1N\sum_i\langle -\log q(y_i\mid x_i,\theta)
      \rangle_{p(\theta\mid\mathcal D)}}_{\text{distortion}} \\
   &+ \frac1N \underbrace{\left\langle\log\frac{p(\theta\mid\mathcal D)}{q(\theta)}
      \right\rangle_{p(\theta\mid\mathcal D)}}_{\text{rate}}
   + \text{const},

minimised on minibatches with the rate divided by the *full* N (Blundell et al. 2015, "Bayes
by Backprop"; the recipe's ``data_size=``). :func:`objective` is that ledger through
:func:`klbook.recipe.kl_objective`. :func:`objective_lrt` estimates the same expected distortion
with the *local reparameterisation trick* (Kingma, Salimans and Welling 2015): instead of one
weight draw shared by the batch, each example gets its own draw of every pre-activation,
:math:`h_j = \sum_i a_i W_{ij} \sim \mathcal N\big(\sum_i a_i\mu_{ij},\ \sum_i a_i^2\sigma_{ij}^2\big)`,
which is exact for each example and makes the examples' noises independent (TensorFlow
Probability calls such layers ``DenseLocalReparameterization``).

**The rate.** Both objectives estimate the rate the same way, chosen by ``analytic_rate``: in
closed form (``True``, the default) wherever :func:`klbook.kl` has one for the posterior and the
prior (a Gaussian prior), as NumPyro's ``TraceMeanField_ELBO`` does, else by one sampled log
ratio; or always sampled (``False``), from the same weight draw as the distortion in
:func:`objective` (the recipe's estimator, Blundell et al.'s). Comparing the two objectives with
the same ``analytic_rate`` compares only their distortions.

**Global latent.** A network's weights are shared by every example, so ``data_size=N`` (the
number of examples in the whole data set) is required, a positive integer: the rate is then
KL/N at every batch size. Inputs ``x [B, in_size]`` must have the network's ``in_size``
features; ``y`` must be ``[B]``. Both are checked on shapes, so eagerly and under ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree

from klbook import bayes, vib
from klbook._checks import check_finite, check_positive
from klbook.divergence import NoClosedFormError, check_key, kl
from klbook.nn import mlp
from klbook.recipe import KLObjective
from klbook.train import Devices, FitResult, fit

__all__ = [
    "Network",
    "network",
    "Likelihood",
    "regression",
    "classifier",
    "init_posterior",
    "gaussian_prior",
    "scale_mixture_prior",
    "objective",
    "objective_lrt",
    "fit_posterior",
    "fit_point",
    "outputs",
    "outputs_lrt",
    "predictive_probs",
    "Reliability",
    "reliability",
    "entropy",
    "rotate_digits",
    "gradient_draws",
]


class Network(eqx.Module):
    r"""An MLP whose weights are one flat vector :math:`\theta` ``[num_weights]``.

    ``net(theta, x)`` maps ``x [B, in_size]`` to ``[B, out_size]``; ``net.unravel(theta)`` is the
    ``eqx.nn.MLP`` with those weights. Built by :func:`network` from :func:`klbook.nn.mlp`.
    """

    template: eqx.nn.MLP
    unravel_fn: Callable = eqx.field(static=True)
    num_weights: int = eqx.field(static=True)

    def unravel(self, theta) -> eqx.nn.MLP:
        """The ``eqx.nn.MLP`` whose weights are ``theta [num_weights]``."""
        arrays, static = eqx.partition(self.template, eqx.is_array)
        return eqx.combine(self.unravel_fn(theta), static)

    def init_weights(self) -> jax.Array:
        """The template's initial weights (Equinox's default initialisation), flat ``[num_weights]``."""
        return ravel_pytree(eqx.filter(self.template, eqx.is_array))[0]

    def __call__(self, theta, x) -> jax.Array:
        """Outputs ``[B, out_size]`` of the network with weights ``theta [num_weights]`` on ``x [B, in_size]``."""
        return jax.vmap(self.unravel(theta))(x)


def network(
    key: jax.Array, in_size: int, out_size: int, *, width: int = 16, depth: int = 1, activation: Callable = jnp.tanh
) -> Network:
    """A :class:`Network` over :func:`klbook.nn.mlp` ``(key, in_size, out_size, width, depth)``.

    ``activation`` must act elementwise (``jnp.tanh``, ``jax.nn.relu``): :func:`outputs_lrt`
    applies it to pre-activations of any shape. Chapter 11 uses one hidden layer of ReLUs.

    Raises:
        ValueError: a size or depth that is not a positive integer (from :func:`klbook.nn.mlp`).
    """
    template = mlp(key, in_size, out_size, width=width, depth=depth, activation=activation)
    flat, unravel = ravel_pytree(eqx.filter(template, eqx.is_array))
    return Network(template, unravel, int(flat.shape[0]))


class Likelihood(NamedTuple):
    r""":math:`q(y\mid x, \theta)`: ``head(network(theta, x))``, a NumPyro distribution, one event per example."""

    network: Network
    head: Callable[[jax.Array], dist.Distribution]

    def __call__(self, theta, x) -> dist.Distribution:
        return self.head(self.network(theta, x))


def regression(net: Network, noise: float) -> Likelihood:
    r"""Regression with known noise: :math:`y\sim\mathcal N(f_\theta(x), \sigma^2)`, ``out_size`` 1."""
    check_positive(noise, "noise")
    return Likelihood(net, lambda out: dist.Normal(out[..., 0], noise))


def classifier(net: Network) -> Likelihood:
    r"""Classification: :math:`y\sim\mathrm{Categorical}(\mathrm{softmax}\, f_\theta(x))`."""
    return Likelihood(net, lambda out: dist.CategoricalLogits(out))


def init_posterior(net: Network, scale: float = 1e-2) -> dict:
    """Mean-field parameters for :func:`klbook.bayes.gaussian`: means at the network's initial
    weights (symmetry broken), standard deviations ``scale`` (small, as Blundell et al. start)."""
    check_positive(scale, "scale")
    raw = float(np.log(np.expm1(scale)))
    return {"loc": net.init_weights(), "raw_scale": jnp.full(net.num_weights, raw)}


def gaussian_prior(num_weights: int, scale: float = 1.0) -> dist.Distribution:
    r""":math:`q(\theta) = \mathcal N(0, s^2 I)` over ``num_weights`` weights (event shape ``[num_weights]``)."""
    check_positive(scale, "scale")
    return dist.Normal(jnp.zeros(num_weights), scale).to_event(1)


def scale_mixture_prior(
    num_weights: int, pi: float = 0.5, scale1: float = 1.0, scale2: float = float(np.exp(-6.0))
) -> dist.Distribution:
    r"""Blundell et al. (2015, eq. 7): each weight
    :math:`\sim \pi\,\mathcal N(0, s_1^2) + (1-\pi)\,\mathcal N(0, s_2^2)`.

    With :math:`s_2 \ll s_1` most weights are pulled hard towards 0 while a few may be large.
    Event shape ``[num_weights]``; the rate has no closed form against it (the recipe samples it).
    """
    if not 0.0 < pi < 1.0:
        raise ValueError(f"pi must be in (0, 1); got {pi}")
    check_positive(scale1, "scale1")
    check_positive(scale2, "scale2")
    mixing = dist.Categorical(probs=jnp.broadcast_to(jnp.array([pi, 1 - pi]), (num_weights, 2)))
    parts = dist.Normal(jnp.zeros((num_weights, 2)), jnp.broadcast_to(jnp.array([scale1, scale2]), (num_weights, 2)))
    return dist.MixtureSameFamily(mixing, parts).to_event(1)


def _check_xy(likelihood: Likelihood, x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be [N, in_size] and y [N]; got {x.shape} and {y.shape}")
    if x.shape[1] != likelihood.network.template.in_size:
        raise ValueError(f"x has {x.shape[1]} features but the network takes {likelihood.network.template.in_size}")
    check_finite(x, "x")
    if jnp.issubdtype(y.dtype, jnp.floating):
        check_finite(y, "y")
    return x, y


def _check_data_size(data_size) -> int:
    """``data_size`` as a Python int, or an error naming it (a BNN's weights are a global latent)."""
    if isinstance(data_size, bool) or not isinstance(data_size, (int, np.integer)):
        raise TypeError(
            "data_size must be a positive integer, the number of examples N in the whole "
            "data set (the weights are a global latent, so the rate is KL/N at every batch "
            f"size; dividing by the batch size is the mistake data_size prevents); got {data_size!r}"
        )
    if data_size <= 0:
        raise ValueError(
            f"data_size must be a positive integer (the number of examples N in the whole data set); got {data_size!r}"
        )
    return int(data_size)


def _check_batch(likelihood: Likelihood, x, y) -> None:
    """Shapes only, so the check runs eagerly and under ``jax.jit`` (shapes are static there)."""
    xs, ys = jnp.shape(x), jnp.shape(y)
    expected = likelihood.network.template.in_size
    if len(xs) != 2:
        raise ValueError(f"x must be [B, in_size] = [B, {expected}] for this network; got shape {xs}")
    if xs[1] != expected:
        raise ValueError(f"x has {xs[1]} features (shape {xs}) but the network's input size is {expected}")
    if ys != xs[:1]:
        raise ValueError(f"y must be [B] with B = {xs[0]}, the rows of x {xs}; got shape {ys}")


def objective(
    key,
    params: dict,
    prior,
    likelihood: Likelihood,
    x,
    y,
    *,
    data_size: int,
    beta: float = 1.0,
    num_particles: int = 1,
    analytic_rate: bool = True,
) -> KLObjective:
    r"""Bayes by Backprop's ledger through the recipe: ``distortion`` and ``rate`` (KL/N), nats per example.

    One weight draw :math:`\theta\sim p(\theta\mid\mathcal D)` = ``bayes.gaussian(params)`` per particle,
    shared by the batch ``x [B, in]``, ``y [B]``. ``data_size=N`` (required, a positive integer:
    the size of the whole data set) makes the rate KL/N at every B. ``loss`` is
    :math:`\beta D + R/N` with the total rate :math:`R` (:func:`klbook.bayes.objective`). With
    ``analytic_rate`` (default) the rate is the closed-form KL/N where :func:`klbook.kl` has one
    (its standard errors 0), else the recipe's sampled log ratio; ``analytic_rate=False`` always
    samples it.

    Raises:
        TypeError, ValueError: ``data_size`` not a positive integer; ``x`` not ``[B, in_size]``
            with the network's ``in_size``, or ``y`` not ``[B]`` (eagerly and under ``jax.jit``).
    """
    n = _check_data_size(data_size)
    _check_batch(likelihood, x, y)
    out = bayes.objective(
        key, bayes.gaussian(params), prior, likelihood, x, y, beta=beta, num_particles=num_particles, data_size=n
    )
    closed = _closed_rate(params, prior) if analytic_rate else None
    if closed is None:
        return out
    rate = closed / n
    others = [v for k, v in out.terms.items() if k != "rate"]
    terms = {**out.terms, "rate": rate}
    zero = jnp.zeros(())
    stderr = {**out.stderr, "rate": zero, "total": out.stderr["distortion"]}
    mc_stderr = {**out.mc_stderr, "rate": zero, "total": out.mc_stderr["distortion"]}
    return KLObjective(out.loss - out.terms["rate"] + rate, sum(others) + rate, terms, stderr, mc_stderr, out.dropped)


def outputs_lrt(key, params: dict, net: Network, x) -> jax.Array:
    r"""Network outputs ``[B, out]`` under the local reparameterisation trick.

    Layer by layer, for activations ``a [B, in]``: pre-activations
    :math:`h \sim \mathcal N(a\mu_W^\top + \mu_b,\ a^2 (\sigma_W^2)^\top + \sigma_b^2)`, drawn
    independently for every example (Kingma, Salimans and Welling 2015, eq. 6). Each example's
    outputs have the same distribution as with its own weight draw. Layers without a bias and
    the MLP's ``final_activation`` are handled (both elementwise after the draw). TensorFlow
    Probability's ``DenseLocalReparameterization`` is the same layer.
    """
    means = net.unravel(params["loc"])
    sds = net.unravel(jax.nn.softplus(params["raw_scale"]))
    a = x
    last = len(means.layers) - 1
    for i, (m, s) in enumerate(zip(means.layers, sds.layers, strict=True)):
        mu = a @ m.weight.T  # [B, out_i]
        var = (a * a) @ (s.weight * s.weight).T  # [B, out_i]
        if m.bias is not None:
            assert s.bias is not None  # the scales share the means' structure (one unravel)
            mu, var = mu + m.bias[None, :], var + (s.bias * s.bias)[None, :]
        h = mu + jnp.sqrt(var) * jax.random.normal(jax.random.fold_in(key, i), mu.shape)
        a = means.final_activation(h) if i == last else means.activation(h)
    return a


def outputs(key, params: dict, net: Network, x, num_samples: int) -> jax.Array:
    """Outputs ``[S, B, out]`` for ``num_samples`` weight draws from ``bayes.gaussian(params)``."""
    thetas = jax.vmap(lambda k: bayes.gaussian(params).sample(k))(jax.random.split(key, num_samples))  # [S, W]
    return jax.vmap(lambda t: net(t, x))(thetas)


def _closed_rate(params, prior) -> jax.Array | None:
    """KL(p(θ|𝒟) ‖ q(θ)) in closed form where :func:`klbook.kl` has one, else ``None``."""
    try:
        return kl(bayes.gaussian(params), prior)
    except NoClosedFormError:
        return None


def _rate(key, params, prior, analytic: bool) -> jax.Array:
    """The closed-form KL (``analytic`` and one exists), else one sampled log ratio."""
    closed = _closed_rate(params, prior) if analytic else None
    if closed is not None:
        return closed
    posterior = bayes.gaussian(params)
    theta = posterior.sample(key)
    return posterior.log_prob(theta) - prior.log_prob(theta)


def objective_lrt(
    key,
    params: dict,
    prior,
    likelihood: Likelihood,
    x,
    y,
    *,
    data_size: int,
    beta: float = 1.0,
    analytic_rate: bool = True,
) -> KLObjective:
    r"""The same ledger with the distortion by the local reparameterisation trick (:func:`outputs_lrt`).

    ``distortion`` = :math:`\frac1B\sum_i -\log q(y_i\mid f_i)` with per-example pre-activation
    draws; ``rate`` = KL/N (``data_size=N`` required, a positive integer), estimated as in
    :func:`objective`: closed form where there is one and ``analytic_rate`` (default), else one
    sampled log ratio (a weight draw of its own). Its expectation equals :func:`objective`'s;
    only the variance differs. ``stderr``/``mc_stderr`` are the distortion's spread between
    examples over :math:`\sqrt B` (and, with a sampled rate, nothing for the rate's own noise).

    Raises:
        TypeError, ValueError: as :func:`objective` (``data_size``, the shapes of ``x`` and ``y``).
    """
    n = _check_data_size(data_size)
    _check_batch(likelihood, x, y)
    k_out, k_rate = jax.random.split(key)
    out = outputs_lrt(k_out, params, likelihood.network, x)
    nll = -jnp.asarray(likelihood.head(out).log_prob(y))  # [B]
    distortion, rate = jnp.mean(nll), _rate(k_rate, params, prior, analytic_rate) / n
    se = jnp.std(nll, ddof=1) / jnp.sqrt(nll.shape[0])
    terms = {"distortion": distortion, "rate": rate}
    errors = {"distortion": se, "rate": jnp.zeros(()), "total": se}
    return KLObjective(beta * distortion + rate, distortion + rate, terms, errors, errors, ("y",))


def fit_posterior(
    key,
    params: dict,
    prior,
    likelihood: Likelihood,
    x,
    y,
    *,
    local_reparam: bool = False,
    analytic_rate: bool = True,
    betas=(1.0,),
    num_steps: int = 2000,
    batch_size: int | None = 128,
    learning_rate: float = 1e-2,
    progress: bool = True,
    desc: str | None = None,
    devices: Devices = None,
) -> FitResult:
    """Train mean-field posteriors, one per β in ``betas``, on minibatches (compiled once).

    ``params`` carries a leading ``[len(betas)]`` axis (as :func:`klbook.bayes.fit_posterior`,
    whose loop this is). Each step draws ``batch_size`` rows and passes ``data_size=N``, so the
    rate is KL/N whatever the batch. Each step's loss is :func:`objective` (one weight draw per
    batch: Bayes by Backprop) or, with ``local_reparam``, :func:`objective_lrt`; both estimate
    the rate as ``analytic_rate`` says, so the two differ only in the distortion's estimator.
    Adam, cosine-decayed learning rate; the minibatches depend on ``key`` only (see
    :func:`klbook.train.fit`), so two fits with the same key and batch size see the same batches.
    ``history`` has ``loss`` and ``total, beta=...`` per step. ``x [N, in_size]``, ``y [N]``
    (floats for regression, integer labels for classification).
    ``devices`` splits each batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device); the batch size (``N`` when
    ``batch_size`` is None) must divide by their number, or a ``ValueError`` naming both is
    raised before anything compiles.

    Raises:
        ValueError: ``x`` and ``y`` of mismatched or wrong shapes, a feature count the network
            does not take, or non-finite data; ``params`` without the leading ``[len(betas)]``
            axis (eagerly, before compiling).
    """
    check_key(key)
    x, y = _check_xy(likelihood, x, y)
    n = int(y.shape[0])
    betas = bayes._check_stacked(bayes.gaussian, params, prior, betas)  # the leading beta axis, named
    one = objective_lrt if local_reparam else objective

    def loss(p, k, batch):
        xb, yb = batch

        def single(pi, beta, ki):
            out = one(ki, pi, prior, likelihood, xb, yb, data_size=n, beta=beta, analytic_rate=analytic_rate)
            return out.loss, out.total

        losses, totals = jax.vmap(single)(p, betas, jax.random.split(k, betas.shape[0]))
        return jnp.sum(losses), {f"total, beta={float(b):g}": t for b, t in zip(np.asarray(betas), totals, strict=True)}

    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01)
    return fit(
        key,
        loss,
        params,
        num_steps=num_steps,
        optimizer=optax.adam(schedule),
        data=(x, y),
        batch_size=batch_size,
        desc=desc,
        progress=progress,
        devices=devices,
    )


def fit_point(
    key,
    theta,
    likelihood: Likelihood,
    x,
    y,
    *,
    prior=None,
    num_steps: int = 2000,
    batch_size: int | None = 128,
    learning_rate: float = 1e-2,
    progress: bool = True,
    desc: str | None = None,
    devices: Devices = None,
) -> FitResult:
    r"""A deterministic network of the same size: maximum likelihood, or MAP with ``prior``.

    Minimises :math:`-\frac1B\sum_{i\in\text{batch}}\log q(y_i\mid x_i,\theta)`, plus
    :math:`-\frac1N\log q(\theta)` when a ``prior`` is given (MAP: the same per-example scaling
    as the rate, so a :math:`\mathcal N(0, s^2)` prior is weight decay :math:`\|\theta\|^2/(2Ns^2)`).
    ``theta [num_weights]`` (e.g. ``net.init_weights()``); Adam with a cosine-decayed learning
    rate, as :func:`fit_posterior`: with the same ``key`` and ``batch_size`` both see the same
    minibatches. Chapter 11's deterministic baselines. Raises ``ValueError`` on bad data, as
    :func:`fit_posterior`. ``history`` has ``loss`` and ``distortion`` (the batch's mean
    negative log-likelihood). ``devices`` as in :func:`fit_posterior`.
    """
    check_key(key)
    x, y = _check_xy(likelihood, x, y)
    n = int(y.shape[0])

    def loss(t, k, batch):
        xb, yb = batch
        nll = -jnp.mean(likelihood(t, xb).log_prob(yb))
        penalty = 0.0 if prior is None else -prior.log_prob(t) / n
        return nll + penalty, {"distortion": nll}

    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01)
    return fit(
        key,
        loss,
        theta,
        num_steps=num_steps,
        optimizer=optax.adam(schedule),
        data=(x, y),
        batch_size=batch_size,
        desc=desc,
        progress=progress,
        devices=devices,
    )


def predictive_probs(key, params: dict, net: Network, x, num_samples: int = 64) -> jax.Array:
    r"""Posterior predictive class probabilities, ``[B, C]``:
    :math:`\frac1S\sum_s \mathrm{softmax}\, f_{\theta_s}(x)`."""
    return jnp.mean(jax.nn.softmax(outputs(key, params, net, x, num_samples), axis=-1), axis=0)


def entropy(probs) -> jax.Array:
    r"""Predictive entropy :math:`-\sum_c p_c\log p_c` in nats, per row of ``probs [B, C]``."""
    probs = jnp.asarray(probs)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


class Reliability(NamedTuple):
    """A reliability diagram's bins: mean ``confidence``, ``accuracy`` and ``count`` per bin ``[num_bins]``."""

    confidence: jax.Array
    accuracy: jax.Array
    count: jax.Array


def reliability(probs, y, num_bins: int = 10) -> Reliability:
    r"""Equal-width bins of the top-class probability; empty bins hold ``nan``.

    The expected calibration error (:func:`klbook.vib.expected_calibration_error`, chapter 7) is
    :math:`\sum_b \frac{n_b}{N}|\mathrm{acc}_b - \mathrm{conf}_b|` over these bins.
    """
    conf, correct, count = vib.calibration_bins(probs, y, num_bins)
    safe = jnp.where(count > 0, count, jnp.nan)
    return Reliability(conf / safe, correct / safe, count)


def rotate_digits(x, quarter_turns: int = 1) -> jax.Array:
    """8×8 digits ``[N, 64]`` rotated by ``quarter_turns`` × 90°: inputs unlike the training data.

    Raises:
        ValueError: if ``x`` is not ``[N, 64]``.
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != 64:
        raise ValueError(f"x must be [N, 64] (flattened 8x8 digits); got {x.shape}")
    return jnp.rot90(x.reshape(-1, 8, 8), k=quarter_turns, axes=(1, 2)).reshape(-1, 64)


def gradient_draws(
    key, params: dict, prior, likelihood: Likelihood, x, y, *, batch_size: int, num_draws: int, local_reparam: bool
) -> jax.Array:
    r"""``num_draws`` independent draws ``[R, 2 * num_weights]`` of the distortion's gradient.

    Each draw takes a fresh minibatch of ``batch_size`` rows (with replacement) and fresh noise,
    and differentiates the minibatch distortion with respect to the posterior's ``loc`` and
    ``raw_scale`` (concatenated): the stochastic gradient training follows, by :func:`objective`
    (one weight draw per batch) or :func:`objective_lrt`. The trace of their covariance is the
    estimator's variance (section on the local reparameterisation trick).
    """
    check_key(key)
    x, y = _check_xy(likelihood, x, y)
    n = int(y.shape[0])
    one = objective_lrt if local_reparam else objective

    def draw(k):
        k_batch, k_noise = jax.random.split(k)
        idx = jax.random.randint(k_batch, (batch_size,), 0, n)
        g = jax.grad(lambda p: one(k_noise, p, prior, likelihood, x[idx], y[idx], data_size=n).terms["distortion"])(
            params
        )
        return jnp.concatenate([g["loc"], g["raw_scale"]])

    return jax.lax.map(draw, jax.random.split(key, num_draws))
