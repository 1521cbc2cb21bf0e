r"""TherML: one pair of worlds that holds the book's earlier objectives as special cases (chapter 12).

Alemi & Fischer (2018), *TherML: Thermodynamics of Machine Learning*, and the post's section on
it. The real world holds a data set :math:`\mathcal D = \{(x_i, y_i)\}_{i=1}^N` and augments it
with a learning algorithm, a distribution over the weights :math:`\theta \sim p(\theta\mid\mathcal D)`,
and a stochastic representation :math:`z_i \sim p(z\mid x_i, \theta)` per example. The dream world
draws the weights from :math:`q(\theta)` and the code from :math:`q(z)`, then the image
:math:`q(x\mid z)` and the label :math:`q(y\mid z)` from the code alone:

.. math::
   P &= p(\mathcal D)\; p(\theta\mid\mathcal D) \prod_i p(z_i\mid x_i, \theta), \\
   Q &= q(\theta) \prod_i q(z_i)\, q(x_i\mid z_i)\, q(y_i\mid z_i), \\
   I[P;Q] &= S + R + D + C - H \quad\text{(per example of the data set)},

with four terms, each a site of the recipe (:mod:`klbook.recipe`), in nats per example:

* ``"classification"`` :math:`C = \langle -\log q(y\mid z)\rangle_P` (the label's site ``y``);
* ``"distortion"`` :math:`D = \langle -\log q(x\mid z)\rangle_P` (the image's site ``x``; when the
  model has no decoder, ``x`` is data in both worlds and its term, named ``"inputs"``, is 0);
* ``"rate"`` :math:`R = \langle \log p(z\mid x,\theta)/q(z)\rangle_P` (the code's site ``z``);
* ``"weights_rate"`` :math:`S = \langle \log p(\theta\mid\mathcal D)/q(\theta)\rangle_P / N` (the
  weights' site ``theta``, a global site, so the recipe divides its KL by :math:`N`). The letter
  is thermodynamics' symbol for entropy, and its multiplier :math:`\sigma` below acts as a
  temperature; the book keeps "rate" in its name because it is the same kind of KL as
  :math:`R`, paid once for the whole data set instead of per example.

:math:`H` is the data's own entropy, which nothing here trains (the recipe drops it). The book's
letter :math:`\mathcal D` for the data set is not the distortion :math:`D` (the post prints the
same letter for both). The post also prints :math:`q(\theta)` under :math:`R`; the paper's
:math:`R` has :math:`q(z)`, as here: :math:`\theta` is paid for in :math:`S`.

**The multipliers.** The four terms trade off against each other; call the least :math:`R`
a family of models reaches at given :math:`D, C, S` its optimal frontier. Minimising

.. math:: \mathcal L = R + \delta D + \gamma C + \sigma S , \qquad \delta, \gamma, \sigma \ge 0,

(:math:`\delta` weights the distortion, :math:`\gamma` the classification term and :math:`\sigma`
the weights' term, each against one nat of rate) finds the points where a plane with these slopes
touches the frontier from below, so the minimisers trace its lower convex hull. Where the frontier
is smooth, the multipliers are its slopes, :math:`\delta = -\partial R/\partial D`, :math:`\gamma =
-\partial R/\partial C`, :math:`\sigma = -\partial R/\partial S`, i.e. :math:`dR = -\delta\, dD -
\gamma\, dC - \sigma\, dS` along it (a first-law-like relation), and the best
:math:`p(\theta\mid\mathcal D)` for fixed heads is the Gibbs distribution :math:`\propto
q(\theta)\exp[-N(R_\theta + \delta D_\theta + \gamma C_\theta)/\sigma]`, so :math:`\sigma` plays the
part of a temperature (the thermodynamic reading is TherML's; these derivations are chapter 12's).
:func:`objective` returns the recipe's :class:`~klbook.recipe.KLObjective` whose ``loss`` is
:math:`\mathcal L` and whose ``total`` is the unweighted :math:`S + R + D + C`.

**Special cases** (:data:`SPECIAL_CASES`, :func:`special_case`). With the pieces of an earlier
chapter's model (:func:`from_vae`, :func:`from_vib`, :func:`from_semisup`, :func:`from_bayes`)
and one setting of the multipliers each, :func:`objective` gives that chapter's loss on the same
batch and key, to float32 rounding (``tests/test_therml.py``):

=============================  ==========================  ===============================
chapter's loss                 multipliers                 chapter's loss / TherML's
=============================  ==========================  ===============================
6, β-VAE :math:`D + \beta R`   δ = 1/β, γ = 0, σ = 0       β
7, VIB :math:`C + \beta R`     δ = 0, γ = 1/β, σ = 0       β
8, post's semi-supervised      δ = β, γ = γ, σ = 0         1
10, VB :math:`\beta C + S`     δ = 0, γ = β, σ = 1         1
=============================  ==========================  ===============================

Chapter 10 has no code :math:`z`: its likelihood reads the input through the weights,
:math:`q(y\mid x, \theta)`, and it calls its term the distortion and :math:`S` the rate (chapter
11's networks are the same case when :func:`klbook.bnn.objective` samples its KL,
``analytic_rate=False``; its default closed-form KL equals :math:`S` only in expectation). In TherML's
terms the representation has collapsed onto the network's output; a *deterministic* code would
make :math:`R` infinite, so the module does not model it as a code with a point-mass encoder but
as no code at all (``encoder=None``: no site ``z``, no :math:`R`, and the label head is called as
``classifier(theta, x)``). A plain trained weight (no ``posterior``) is a point mass: :math:`S`
is then undefined and not a term.

**Trainable pieces.** :class:`MeanField` is a mean-field Gaussian :math:`p(\theta\mid\mathcal D)`
over a flat weight vector and :class:`WeightEncoder` an MLP encoder whose weights *are* that
θ, so that :func:`klbook.train.fit` trains the learning algorithm's distribution (pass
``data_size=N``: :math:`S` is then KL/N at every batch size). :func:`weight_model` assembles
chapter 12's model from them, with :class:`StandardNormal` priors (no trained array) and
:class:`LinearHead` heads; :func:`optimizer` trains it with the posterior's scales on their own
learning rate.

**Refused configurations** (``ValueError`` naming the term and why, raised while the worlds are
traced, so eagerly and the same under ``jax.jit``): an encoder that returns a point mass
(``dist.Delta``: :math:`R` infinite), a point-mass or absent weight posterior with
:math:`\sigma \ne 0` (:math:`S` undefined), a multiplier that is negative or not finite, a term
with a non-zero multiplier whose head is missing (no decoder with :math:`\delta \ne 0`, labels
and no classifier with :math:`\gamma \ne 0`), a decoder without a code, and inputs of the wrong
shape. A traced multiplier (a sweep vmapped over it) is checked when the program runs
(``eqx.error_if``) with the same message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from klbook._checks import is_concrete
from klbook.divergence import check_key
from klbook.nn import bernoulli_head, binomial_head, categorical_head, gaussian_head
from klbook.recipe import KLObjective, data, kl_objective

__all__ = [
    "NAMES",
    "MULTIPLIERS",
    "SPECIAL_CASES",
    "TherML",
    "MeanField",
    "mean_field",
    "WeightEncoder",
    "StandardNormal",
    "LinearHead",
    "weight_model",
    "optimizer",
    "real_world",
    "dream_world",
    "objective",
    "semisupervised_objective",
    "special_case",
    "from_vae",
    "from_vib",
    "from_semisup",
    "from_bayes",
]

#: Site -> term: the weights' S, the code's R, the image's D (``"inputs"`` when undecoded), the label's C.
NAMES = {"theta": "weights_rate", "z": "rate", "x": "distortion", "y": "classification"}

#: The multiplier of each term in :math:`\mathcal L = R + \delta D + \gamma C + \sigma S` (R's is 1).
MULTIPLIERS = {"delta": "distortion", "gamma": "classification", "sigma": "weights_rate"}

#: Earlier chapters' losses: name -> (chapter, the loss in the book's letters, multipliers as a
#: function of that chapter's weights, the chapter's loss divided by TherML's).
SPECIAL_CASES: dict[str, tuple[str, str, Callable[..., dict[str, float]], Callable[..., float]]] = {
    "beta_vae": ("6", "D + beta R", lambda beta: {"delta": 1 / beta, "gamma": 0.0, "sigma": 0.0}, lambda beta: beta),
    "vib": ("7", "C + beta R", lambda beta: {"delta": 0.0, "gamma": 1 / beta, "sigma": 0.0}, lambda beta: beta),
    "semisupervised": (
        "8",
        "beta D + gamma C + R",
        lambda beta, gamma: {"delta": beta, "gamma": gamma, "sigma": 0.0},
        lambda beta, gamma: 1.0,
    ),
    "variational_bayes": (
        "10",
        "beta C + S",
        lambda beta: {"delta": 0.0, "gamma": beta, "sigma": 1.0},
        lambda beta: 1.0,
    ),
}


class TherML(eqx.Module):
    r"""The six pieces of TherML's two worlds; any may be ``None`` where the model lacks it.

    * ``encoder(theta, x)`` -> :math:`p(z\mid x,\theta)`, batch ``(N,)``, event ``(K,)`` (``theta``
      is ``None`` without a ``posterior``); ``None``: no code (chapters 10-11).
    * ``prior(n)`` -> :math:`q(z)`, batch ``(n,)``, event ``(K,)``.
    * ``decoder(z)`` -> :math:`q(x\mid z)` for ``z [N, K]``, batch ``(N,)``, event ``(d,)``.
    * ``classifier(z)`` -> :math:`q(y\mid z)`, batch ``(N,)``; without an encoder it is called
      ``classifier(theta, x)``, the likelihood :math:`q(y\mid x,\theta)` of :mod:`klbook.bayes`.
    * ``posterior``: :math:`p(\theta\mid\mathcal D)`, a NumPyro distribution or a module that
      returns one when called (:class:`MeanField`, whose parameters train); ``None`` or
      ``dist.Delta`` for a point estimate (no :math:`S`).
    * ``weight_prior``: :math:`q(\theta)`, likewise, with the posterior's shape.

    The callables may be Equinox modules (their arrays are then trained parameters).
    """

    encoder: Callable | None = None
    prior: Callable | None = None
    decoder: Callable | None = None
    classifier: Callable | None = None
    posterior: Any = None
    weight_prior: Any = None


class _Method(eqx.Module):
    """Calls ``module.<method>``; with ``drop_theta`` the first argument (θ) is not passed on."""

    module: Any
    method: str = eqx.field(static=True)
    drop_theta: bool = eqx.field(static=True, default=False)

    def __call__(self, *args):
        return getattr(self.module, self.method)(*(args[1:] if self.drop_theta else args))


class MeanField(eqx.Module):
    r"""A trainable mean-field Gaussian over the weights, :math:`\mathcal N(\mu, \mathrm{diag}\,s^2)`, s a softplus.

    Called with no arguments it returns the distribution (event ``(num_weights,)``); every value of
    its parameters is valid, so an optimiser may move them freely.
    """

    loc: jax.Array
    raw_scale: jax.Array

    def __call__(self) -> dist.Distribution:
        return dist.Normal(self.loc, jax.nn.softplus(self.raw_scale)).to_event(1)


def mean_field(loc, scale: float = 1e-2) -> MeanField:
    """:class:`MeanField` centred at ``loc [num_weights]`` with every standard deviation ``scale``."""
    loc = jnp.asarray(loc, jnp.float32)
    if loc.ndim != 1 or not scale > 0:
        raise ValueError(f"loc must be a vector of weights and scale > 0; got shape {loc.shape}, scale {scale!r}")
    return MeanField(loc, jnp.full(loc.shape, float(np.log(np.expm1(scale))), jnp.float32))


class WeightEncoder(eqx.Module):
    r"""An MLP encoder whose weights are θ: :math:`p(z\mid x, \theta)`, a diagonal Gaussian.

    ``sizes`` are the layer widths from the input to ``2 K`` (mean and raw scale, as
    :func:`klbook.nn.gaussian_head` reads them); θ is the flat vector of every layer's weight
    matrix and bias, ``num_weights`` long; hidden layers use ``tanh``. The inputs are divided by
    ``input_scale`` (16 for the 8×8 digits' counts). Holds no trained array itself: the weights
    live in the posterior over θ.
    """

    sizes: tuple[int, ...] = eqx.field(static=True)
    input_scale: float = eqx.field(static=True, default=1.0)

    @property
    def num_weights(self) -> int:
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=False))

    def __call__(self, theta, x) -> dist.Distribution:
        theta, h = jnp.asarray(theta), jnp.asarray(x).astype(jnp.float32) / self.input_scale
        if theta.shape != (self.num_weights,):
            raise ValueError(
                f"theta must have shape ({self.num_weights},) for layer sizes {self.sizes}; got {theta.shape}"
            )
        if h.ndim != 2 or h.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape [N, {self.sizes[0]}]; got {h.shape}")
        start, last = 0, len(self.sizes) - 2
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=False)):
            w = theta[start : start + a * b].reshape(a, b)
            bias = theta[start + a * b : start + (a + 1) * b]
            start += (a + 1) * b
            h = h @ w + bias[None, :]
            if i < last:
                h = jnp.tanh(h)
        return gaussian_head(h)


class StandardNormal(eqx.Module):
    r"""A fixed :math:`\mathcal N(0, I)` over ``size`` numbers, holding no array (so nothing of it trains).

    Called with no argument it is a weight prior :math:`q(\theta)` (event ``(size,)``); called with
    ``n`` it is a code prior :math:`q(z)` for ``n`` examples (batch ``(n,)``, event ``(size,)``).
    """

    size: int = eqx.field(static=True)

    def __call__(self, n: int | None = None) -> dist.Distribution:
        shape = (self.size,) if n is None else (n, self.size)
        return dist.Normal(jnp.zeros(shape), 1.0).to_event(1)


class LinearHead(eqx.Module):
    r"""A linear map of the code, ``z [N, K] -> [N, out]``, read as a distribution.

    ``kind``: ``"categorical"`` (a label, :func:`klbook.nn.categorical_head`), ``"bernoulli"``
    (binarised pixels) or ``"binomial"`` (pixel counts out of ``total_count``).
    """

    linear: eqx.nn.Linear
    kind: str = eqx.field(static=True, default="categorical")
    total_count: int = eqx.field(static=True, default=16)

    def __call__(self, z) -> dist.Distribution:
        out = jax.vmap(self.linear)(jnp.asarray(z))
        if self.kind == "categorical":
            return categorical_head(out)
        if self.kind == "bernoulli":
            return bernoulli_head(out)
        return binomial_head(out, self.total_count)


def weight_model(
    key,
    data_dim: int,
    latent_dim: int,
    num_classes: int | None,
    *,
    width: int = 32,
    decoder: str | None = None,
    input_scale: float = 16.0,
    posterior_scale: float = 0.05,
) -> TherML:
    r"""A TherML model whose encoder's weights θ have a trained mean-field posterior (chapter 12).

    Encoder: :class:`WeightEncoder` with one ``tanh`` hidden layer of ``width``, θ ~
    :class:`MeanField` centred at a scaled normal initialisation with every standard deviation
    ``posterior_scale``; :math:`q(\theta) = q(z) = \mathcal N(0, I)` (:class:`StandardNormal`);
    a linear classifier over ``num_classes`` (``None``: no label head) and, if ``decoder`` is
    ``"binomial"`` or ``"bernoulli"``, a linear decoder of the ``data_dim`` pixels.
    """
    check_key(key)
    if decoder not in (None, "binomial", "bernoulli"):
        raise ValueError(f"decoder must be None, 'binomial' or 'bernoulli'; got {decoder!r}")
    k_enc, k_cls, k_dec = jax.random.split(key, 3)
    encoder = WeightEncoder((data_dim, width, 2 * latent_dim), input_scale=input_scale)
    keys = jax.random.split(k_enc, len(encoder.sizes) - 1)
    loc = []
    for k, (a, b) in zip(keys, zip(encoder.sizes[:-1], encoder.sizes[1:], strict=False), strict=True):
        loc += [jax.random.normal(k, (a * b,)) / np.sqrt(a), jnp.zeros(b)]
    classifier = None if num_classes is None else LinearHead(eqx.nn.Linear(latent_dim, num_classes, key=k_cls))
    dec = None if decoder is None else LinearHead(eqx.nn.Linear(latent_dim, data_dim, key=k_dec), decoder)
    return TherML(
        encoder,
        StandardNormal(latent_dim),
        dec,
        classifier,
        mean_field(jnp.concatenate(loc), posterior_scale),
        StandardNormal(encoder.num_weights),
    )


def optimizer(
    num_steps: int, *, learning_rate: float = 1e-3, scale_learning_rate: float = 1e-2, decay: bool = True
) -> optax.GradientTransformation:
    r"""Adam for a model that holds :class:`MeanField` posteriors, with the posteriors' scales on their own rate.

    Every :class:`MeanField`'s ``raw_scale`` steps at ``scale_learning_rate``, every other trained
    array at ``learning_rate``, both decayed to 1% over ``num_steps`` by a cosine schedule. Adam
    moves a parameter by about its learning rate per step, so with one rate for all a scale that
    starts far from its optimum cannot reach it in a short run (from 0.05, 1500 steps at 1e-3 reach
    at most 0.21): the budget, not the objective, would set :math:`S`. Works on one model or on
    models stacked by :func:`klbook.train.fit_stacked`. With ``decay=False`` both rates stay
    constant (chapter 12 continues a trained model that way, to check that it has converged: a
    decayed rate stops a model moving whether or not it has reached its optimum).

    Raises:
        ValueError: ``num_steps`` not a positive integer, a learning rate not positive and finite,
            or ``decay`` not a bool.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    for name, lr in (("learning_rate", learning_rate), ("scale_learning_rate", scale_learning_rate)):
        if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {lr!r}")
    if not isinstance(decay, bool):
        raise ValueError(f"decay must be True (cosine decay to 1%) or False (constant rates); got {decay!r}")

    def labels(params):
        def label(node):
            if isinstance(node, MeanField):
                fields = tuple(None if v is None else w for v, w in ((node.loc, "rest"), (node.raw_scale, "scale")))
                # a tree of optax labels in MeanField's shape, not arrays
                return MeanField(*fields)  # pyright: ignore[reportArgumentType]
            return "rest"

        return jax.tree_util.tree_map(label, params, is_leaf=lambda n: isinstance(n, MeanField))

    def schedule(lr):
        return optax.cosine_decay_schedule(float(lr), int(num_steps), alpha=0.01) if decay else float(lr)

    return optax.multi_transform(
        {"rest": optax.adam(schedule(learning_rate)), "scale": optax.adam(schedule(scale_learning_rate))}, labels
    )


def from_vae(vae) -> TherML:
    """Chapter 6's VAE (:mod:`klbook.vae`) as TherML: encoder, prior and decoder, no label, no weight posterior."""
    return TherML(_Method(vae, "encode", True), _Method(vae, "prior"), _Method(vae, "decode"))


def from_vib(model) -> TherML:
    """Chapter 7's VIB (:mod:`klbook.vib`) as TherML: encoder, prior and classifier, no decoder."""
    return TherML(_Method(model, "encode", True), _Method(model, "prior"), None, _Method(model, "classify"))


def from_semisup(model) -> TherML:
    """Chapter 8's post model (:class:`klbook.semisup.CodeModel` or a tied one): every head, no weight posterior."""
    return TherML(
        _Method(model, "encode", True), _Method(model, "prior"), _Method(model, "decode"), _Method(model, "classify")
    )


def from_bayes(posterior, prior, likelihood: Callable) -> TherML:
    """Chapters 10-11's variational Bayes: weights only, no code; ``likelihood(theta, x)`` is the label head."""
    return TherML(None, None, None, likelihood, posterior, prior)


def _is_point_mass(d) -> bool:
    while isinstance(d, dist.Independent):
        d = d.base_dist
    return isinstance(d, dist.Delta)


def _distribution(d):
    """A distribution field: a NumPyro distribution, or a module that returns one when called (:class:`MeanField`)."""
    return d if d is None or isinstance(d, dist.Distribution) else d()


def _weights(model: TherML):
    """θ's distribution in the real world, or None when θ is a point estimate."""
    post = _distribution(model.posterior)
    return None if post is None or _is_point_mass(post) else post


def _theta_value(model: TherML):
    """θ for a point estimate: the Delta's value, or None without a posterior."""
    d = _distribution(model.posterior)
    if d is None:
        return None
    while isinstance(d, dist.Independent):
        d = d.base_dist
    return getattr(d, "v")  # noqa: B009 (pyright: Distribution has no v)


def _encode(model: TherML, theta, x):
    assert model.encoder is not None
    p = model.encoder(theta, x)
    if _is_point_mass(p):
        raise ValueError(
            "the rate R = <log p(z|x,theta)/q(z)> is infinite: the encoder returned a point mass (dist.Delta), "
            "which has no density against q(z). Give the code noise, or use encoder=None (no code, no R)"
        )
    return p


def real_world(model: TherML, x, y=None) -> None:
    r"""P: data ``x [N, d]``, ``y [N]`` or None, θ ~ :math:`p(\theta\mid\mathcal D)`, z ~ :math:`p(z\mid x,\theta)`

    Both worlds take ``(model, x, y)``; call them through :func:`objective`, which checks the model first.
    """
    post = _weights(model)
    theta = numpyro.sample("theta", post) if post is not None else _theta_value(model)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        if y is not None:
            data("y", y)
        if model.encoder is not None:
            numpyro.sample("z", _encode(model, theta, x))


def dream_world(model: TherML, x, y=None) -> None:
    r"""Q: θ ~ :math:`q(\theta)`, z ~ :math:`q(z)`, x ~ :math:`q(x\mid z)`, y ~ :math:`q(y\mid z)`.

    ``x`` and ``y`` only set the shapes (the recipe substitutes the real world's values). Without an
    encoder the label head is the likelihood :math:`q(y\mid x, \theta)` and ``x`` is data here too.
    """
    prior = _distribution(model.weight_prior)
    theta = numpyro.sample("theta", prior) if _weights(model) is not None and prior is not None else _theta_value(model)
    n = x.shape[0]
    with numpyro.plate("data", n):
        if model.encoder is None:
            data("x", x, event_dim=1)
            if y is not None:
                assert model.classifier is not None
                numpyro.sample("y", model.classifier(theta, x))
            return
        assert model.prior is not None
        z = numpyro.sample("z", model.prior(n))
        if model.decoder is not None:
            numpyro.sample("x", model.decoder(z))
        else:
            data("x", x, event_dim=1)
        if y is not None:
            assert model.classifier is not None
            numpyro.sample("y", model.classifier(z))


def _multiplier(value, name: str):
    message = f"the multiplier {name} (of the {MULTIPLIERS[name]} term) must be a finite number >= 0"
    if is_concrete(value):
        if np.ndim(value) != 0 or not np.isfinite(value) or value < 0:
            raise ValueError(f"{message}; got {value!r}")
        return value
    if jnp.ndim(value) != 0:
        raise ValueError(f"{message}; got an array of shape {jnp.shape(value)}")
    return eqx.error_if(value, ~jnp.isfinite(value) | (value < 0), message)


def _must_be_zero(value, name: str, why: str):
    """A multiplier whose term cannot exist: refused if non-zero (eagerly, or when a traced value runs)."""
    message = f"the {MULTIPLIERS[name]} term has multiplier {name} but {why}; set {name}=0"
    if is_concrete(value):
        if value != 0:
            raise ValueError(f"{message} (got {name}={value!r})")
        return value
    return eqx.error_if(value, value != 0, message)


def _check(model: TherML, x, y, delta, gamma, sigma):
    if not isinstance(model, TherML):
        raise TypeError(
            f"model must be a klbook.therml.TherML (see from_vae, from_vib, ...); got {type(model).__name__}"
        )
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [N, d] with N >= 1; got {x.shape}")
    if y is not None:
        y = jnp.asarray(y)
        if y.shape != x.shape[:1]:
            raise ValueError(f"y must have shape ({x.shape[0]},), one label per row of x; got {y.shape}")
    delta, gamma, sigma = (_multiplier(v, n) for v, n in ((delta, "delta"), (gamma, "gamma"), (sigma, "sigma")))
    if model.encoder is None:
        if model.decoder is not None:
            raise ValueError("the distortion D = <-log q(x|z)> needs a code z: a decoder was given without an encoder")
        if model.classifier is None:
            raise ValueError("a model without a code must have a classifier (the likelihood q(y|x, theta))")
    elif model.prior is None:
        raise ValueError("the rate R = <log p(z|x,theta)/q(z)> needs the code's prior q(z): prior is None")
    if model.decoder is None:
        delta = _must_be_zero(delta, "delta", "the model has no decoder q(x|z)")
    if model.classifier is None:
        if y is not None:
            gamma = _must_be_zero(gamma, "gamma", "the model has no classifier q(y|z)")
        y = None  # no head: the labels are not a site of either world
    if _weights(model) is None:
        what = "a point mass" if model.posterior is not None else "absent (a point estimate)"
        sigma = _must_be_zero(
            sigma, "sigma", f"the weight posterior p(theta|D) is {what}, so S = <log p(theta|D)/q(theta)> is undefined"
        )
    elif model.weight_prior is None:
        raise ValueError("the weights' term S = <log p(theta|D)/q(theta)> needs the weight prior q(theta): it is None")
    return x, y, delta, gamma, sigma


def objective(
    key, model: TherML, x, y=None, *, delta, gamma, sigma, num_particles: int = 1, data_size: int | None = None
) -> KLObjective:
    r"""TherML's ledger from the recipe: ``loss`` is :math:`R + \delta D + \gamma C + \sigma S`, nats per example.

    ``x [N, d]`` (or a batch of ``N`` rows of the data set; pass ``data_size`` for the whole set's
    size, so that :math:`S` is KL/N at every batch size), ``y [N]`` labels or ``None`` (unlabelled:
    no :math:`C`). The multipliers are keyword-only and required: ``delta`` weights the distortion,
    ``gamma`` the classification term, ``sigma`` the weights' term. Returns the recipe's
    :class:`~klbook.recipe.KLObjective` with the terms present among ``weights_rate``, ``rate``,
    ``distortion`` (or ``inputs``, 0) and ``classification``; ``total`` is their unweighted sum.

    Raises:
        ValueError, TypeError: see the module's *Refused configurations* (eagerly and under ``jax.jit``).
    """
    check_key(key)
    x, y, delta, gamma, sigma = _check(model, x, y, delta, gamma, sigma)
    names = dict(NAMES)
    if model.decoder is None:
        names["x"] = "inputs"
    present = {"x"} | ({"y"} if y is not None else set()) | ({"z"} if model.encoder is not None else set())
    present |= {"theta"} if _weights(model) is not None else set()
    names = {s: t for s, t in names.items() if s in present}
    weights = {"rate": 1.0, "distortion": delta, "classification": gamma, "weights_rate": sigma}
    weights = {t: w for t, w in weights.items() if t in names.values()}
    out = kl_objective(
        key,
        real_world,
        dream_world,
        model,
        x,
        y,
        names=names,
        weights=weights,
        num_particles=num_particles,
        data_size=data_size,
    )
    traced = [m for m in (delta, gamma, sigma) if not is_concrete(m)]
    if traced:  # keep the run-time checks of traced multipliers whose term is absent (adds exactly 0)
        out = dataclasses.replace(out, loss=out.loss + 0.0 * sum(traced))
    return out


def semisupervised_objective(
    key, model: TherML, x_l, y_l, x_u, n_unlabelled: int, *, delta, gamma, sigma=0.0
) -> KLObjective:
    r"""Chapter 8's mixture of two TherML ledgers: labelled images (with :math:`C`) and a batch of unlabelled ones.

    .. math:: \frac{N_l}{N}\,\mathcal L(x_l, y_l) + \frac{N_u}{N}\,\mathcal L(x_u),\qquad N = N_l + N_u,

    each :math:`\mathcal L` from :func:`objective` with independent keys (split from ``key`` as
    :func:`klbook.semisup.post_objective` splits it); terms and ``total`` are mixed the same way,
    standard errors in quadrature (disjoint images, independent draws). A weight posterior is
    refused: the two ledgers would draw θ separately.
    """
    check_key(key)
    if _weights(model) is not None:
        raise ValueError("semisupervised_objective takes no weight posterior: the two ledgers would each draw theta")
    if isinstance(n_unlabelled, bool) or not isinstance(n_unlabelled, (int, np.integer)) or n_unlabelled < 1:
        raise ValueError(
            f"n_unlabelled (the size of the whole unlabelled set) must be a positive integer; got {n_unlabelled!r}"
        )
    n_l = jnp.shape(x_l)[0]
    f_l, f_u = n_l / (n_l + int(n_unlabelled)), int(n_unlabelled) / (n_l + int(n_unlabelled))
    k_l, k_u = jax.random.split(key)
    kw = {"delta": delta, "gamma": gamma, "sigma": sigma}
    lab, unl = objective(k_l, model, x_l, y_l, **kw), objective(k_u, model, x_u, None, **kw)
    zero = jnp.zeros(())
    names = list(dict.fromkeys([*lab.terms, *unl.terms]))
    terms = {n: f_l * lab.terms.get(n, zero) + f_u * unl.terms.get(n, zero) for n in names}
    se = {n: jnp.hypot(f_l * lab.stderr.get(n, zero), f_u * unl.stderr.get(n, zero)) for n in [*names, "total"]}
    mc = {n: jnp.hypot(f_l * lab.mc_stderr.get(n, zero), f_u * unl.mc_stderr.get(n, zero)) for n in [*names, "total"]}
    return KLObjective(
        f_l * lab.loss + f_u * unl.loss,
        f_l * lab.total + f_u * unl.total,
        terms,
        se,
        mc,
        tuple(dict.fromkeys([*lab.dropped, *unl.dropped])),
    )


def special_case(name: str, **weights: float) -> tuple[dict[str, Any], float]:
    """The multipliers that turn TherML into an earlier chapter's loss, and that loss's ratio to TherML's.

    ``special_case("beta_vae", beta=0.5)`` -> ``({"delta": 2.0, "gamma": 0.0, "sigma": 0.0}, 0.5)``:
    :func:`klbook.vae.objective`'s loss is ``0.5`` times :func:`objective`'s with those
    multipliers. Names: see :data:`SPECIAL_CASES`; the chapter's own weights are keyword
    arguments (``beta``; also ``gamma`` for ``"semisupervised"``). β must be positive where it
    becomes ``1/β``.
    """
    if name not in SPECIAL_CASES:
        raise ValueError(f"unknown special case {name!r}; known: {sorted(SPECIAL_CASES)}")
    _, _, multipliers, factor = SPECIAL_CASES[name]
    if name in ("beta_vae", "vib") and not weights.get("beta", 0) > 0:
        raise ValueError(f"{name} needs beta > 0 (its multiplier is 1/beta); got {weights.get('beta')!r}")
    return multipliers(**weights), factor(**weights)
