r"""Variational prediction: learn the posterior predictive itself (chapter 13).

Alemi & Poole (2023), *Variational Prediction*. Bayesian prediction averages the likelihood of a
new point over the posterior, :math:`q(\tilde y\mid\tilde x, \mathcal D) = \int d\theta\, q(\theta\mid \mathcal D)
\, q(\tilde y\mid \tilde x, \theta)`, an integral paid again at every prediction. Variational
prediction trains a distribution over the new point directly, with the help of an *augmented
posterior* over the weights given the data *and* the new point.

Notation (the post's, as in chapter 10: p is the world we sample from and train, q the model; the
paper writes the model as p and the learned distributions as q and r). With the data set
:math:`\mathcal D = \{(x_i, y_i)\}_{i=1}^N` and a query input :math:`\tilde x` (``x_new``):

* real world P: the data (density unknown), the learned predictive :math:`\tilde y \sim
  p(\tilde y\mid\tilde x, \mathcal D)` (``predictive``, the paper's :math:`q(x\mid \mathcal D)`), then weights from
  the augmented posterior :math:`\theta\sim p(\theta\mid \tilde x, \tilde y, \mathcal D)` (``augmented``,
  the paper's :math:`r(\theta\mid x, \mathcal D)`);
* dream world Q: the Bayesian model, :math:`\theta\sim q(\theta)`, :math:`y_i\sim q(y_i\mid
  x_i,\theta)` and the new point :math:`\tilde y \sim q(\tilde y\mid\tilde x, \theta)`.

The inputs are data in both worlds and cancel, so they are not sites. The recipe's KL is

.. math:: \begin{aligned}
   I[P;Q] ={}& \underbrace{\langle -\log q(\mathcal D\mid\theta)\rangle}_{\text{distortion}}
   + \underbrace{\left\langle\log\frac{p(\theta\mid\tilde x,\tilde y, \mathcal D)}{q(\theta)}\right\rangle}
     _{\text{rate}} \\
   &+ \underbrace{\left\langle\log\frac{p(\tilde y\mid\tilde x, \mathcal D)}{q(\tilde y\mid\tilde x,\theta)}
     \right\rangle}_{\text{prediction}} - H(\mathcal D).
   \end{aligned}

Forgetting :math:`\theta` can only lower a KL (monotonicity, chapter 2), and what remains is a KL
between :math:`p(\mathcal D)\,p(\tilde y\mid\tilde x, \mathcal D)` and
:math:`q(\mathcal D)\,q(\tilde y\mid\tilde x, \mathcal D)`;
the chain rule makes the difference exact (in chapter 10's letters: :math:`N` times the distortion
:math:`D` per example, the weights' rate :math:`R` and the new point's prediction term :math:`P`):

.. math:: \begin{aligned}
   ND + R + P ={}& -\log q(\mathcal D)
   + \big\langle \mathrm{KL}[p(\tilde y\mid\tilde x, \mathcal D)\,\Vert\, q(\tilde y\mid\tilde x, \mathcal D)]
     \big\rangle_{\tilde x} \\
   &+ \big\langle \mathrm{KL}[p(\theta\mid\tilde x,\tilde y, \mathcal D)\,\Vert\,
     q(\theta\mid\tilde x,\tilde y, \mathcal D)]\big\rangle_{\tilde x,\tilde y}.
   \end{aligned}

So the objective bounds the negative log evidence from above, as the ELBO of chapter 10 does, and
its excess bounds the KL *from the learned predictive to the exact one* (expectation under the
learned predictive). Both KLs vanish, and the bound is tight with zero variance, exactly when the
predictive is the exact posterior predictive and the augmented posterior is the exact posterior
given :math:`\mathcal D \cup \{(\tilde x, \tilde y)\}`. The ledger reports nats per example of :math:`\mathcal D`
(the totals over :math:`N`, as :mod:`klbook.bayes` does): ``distortion``, ``rate`` and
``prediction``, averaged over the query inputs.

The augmented posterior has to be a density we can sample and score. :func:`one_step` is the
paper's implicit choice: draw from an approximate posterior :math:`s(\theta)` and take one
(preconditioned) gradient step on the new point's log likelihood,
:math:`\theta = \theta_0 + \epsilon\odot\nabla_{\theta_0}\log q(\tilde y\mid\tilde x,\theta_0)`;
its density follows by the change of variables, which needs the step to be one-to-one
(:func:`one_step` caps it so, a safeguard of this book's that the paper does not have; :class:`OneStep`
flags what it can see). :func:`unconditional` is
the paper's baseline that ignores the new point (its optimal predictive is a normalised geometric
mean of the likelihoods, narrower than the exact predictive). At test time the learned predictive
costs one evaluation of a small density per prediction, against S likelihood evaluations for an
S-sample posterior average.

Closed forms for Bayesian linear regression with known noise (float64):
:func:`regression_predictive` and :func:`regression_augmented`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from klbook import bayes
from klbook._checks import check_finite, check_positive
from klbook.recipe import KLObjective, data, kl_objective

__all__ = [
    "NAMES",
    "real_world",
    "dream_world",
    "objective",
    "OneStep",
    "one_step",
    "step_ratio",
    "STEP_MARGIN",
    "unconditional",
    "linear_predictive",
    "init_linear_predictive",
    "logistic_predictive",
    "sampled_held_out",
    "regression_predictive",
    "regression_augmented",
    "held_out",
]

#: The recipe's names: weights -> rate, the data's responses -> distortion, the new point -> prediction.
NAMES = {"theta": "rate", "y": "distortion", "y_new": "prediction"}

Predictive = Callable[[jax.Array | None], dist.Distribution]
Augmented = Callable[[jax.Array | None, jax.Array], dist.Distribution]


def _new_point(fn: dist.Distribution, what: str) -> dist.Distribution:
    """A distribution over one new response, batch shape ``(1,)`` (a scalar one is expanded)."""
    if fn.event_shape != () or fn.batch_shape not in ((), (1,)):
        raise ValueError(
            f"{what} must be a distribution over one scalar response per query (batch shape () or "
            f"(1,), event shape ()); got batch shape {fn.batch_shape} and event shape {fn.event_shape}"
        )
    return fn.expand((1,)) if fn.batch_shape == () else fn


def real_world(predictive: Predictive, augmented: Augmented, prior, likelihood, x, y, x_new) -> None:
    """P for one query: the data ``y [N]`` (inputs ``x [N, d]`` or ``None``), the new response
    ``y_new [1]`` from ``predictive(x_new)`` (``x_new [1, d]`` or ``None``), then θ from
    ``augmented(x_new, y_new)``. ``prior`` and ``likelihood`` are unused (both worlds take the same arguments)."""
    y_new = numpyro.sample("y_new", _new_point(predictive(x_new), "predictive(x_new)"))
    numpyro.sample("theta", augmented(x_new, jnp.asarray(y_new)))
    with numpyro.plate("data", jnp.shape(y)[0]):
        data("y", y)


def dream_world(predictive: Predictive, augmented: Augmented, prior, likelihood, x, y, x_new) -> None:
    r"""Q for one query: θ ~ ``prior``, :math:`y_i \sim q(y\mid x_i,\theta)`,
    :math:`\tilde y\sim q(\tilde y\mid\tilde x,\theta)`."""
    theta = numpyro.sample("theta", prior)
    with numpyro.plate("data", jnp.shape(y)[0]):
        numpyro.sample("y", likelihood(theta, x))
    numpyro.sample("y_new", _new_point(likelihood(theta, x_new), "likelihood(theta, x_new)"))


def _check_data(x, y, x_new):
    """``x [N, d]`` or None, ``y [N]``, ``x_new [M, d]`` or None as JAX arrays, shapes (and concrete values) checked."""
    y = jnp.asarray(y)
    if y.ndim != 1 or y.shape[0] < 1:
        raise ValueError(f"y must be a vector of N >= 1 responses [N]; got shape {y.shape}")
    check_finite(y, "y")
    if (x is None) != (x_new is None):
        raise ValueError(
            "x and x_new go together: a model with inputs needs query inputs x_new [M, d], a model "
            f"without (x=None) takes x_new=None; got x {'None' if x is None else 'an array'} and "
            f"x_new {'None' if x_new is None else 'an array'}"
        )
    if x is None:
        return None, y, None
    x, x_new = jnp.asarray(x), jnp.asarray(x_new)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be [N, d] with N = len(y) = {y.shape[0]}; got shape {x.shape}")
    if x_new.ndim != 2 or x_new.shape[1] != x.shape[1] or x_new.shape[0] < 1:
        raise ValueError(f"x_new must be [M, d] query inputs with d = {x.shape[1]} (as x); got shape {x_new.shape}")
    check_finite(x, "x")
    check_finite(x_new, "x_new")
    return x, y, x_new


def objective(
    key,
    predictive: Predictive,
    augmented: Augmented,
    prior,
    likelihood,
    x,
    y,
    x_new=None,
    *,
    num_queries: int | None = None,
    num_particles: int = 1,
) -> KLObjective:
    r"""The variational prediction bound, nats per example of the data set, averaged over the query inputs.

    .. math:: \frac1N\Big\langle \log\frac{p(\tilde y\mid\tilde x, \mathcal D)\,p(\theta\mid\tilde x,
       \tilde y, \mathcal D)}{q(\theta)\,q(\mathcal D\mid\theta)\,q(\tilde y\mid\tilde x,\theta)}\Big\rangle
       \;\ge\; -\frac{\log q(\mathcal D)}{N}

    (the module's derivation; ``total`` exceeds :math:`-\log q(\mathcal D)/N` by the predictive's KL to the
    exact predictive plus the augmented posterior's, both over N).

    Args:
        key: JAX PRNG key (one per query, split inside).
        predictive: ``x_new -> distribution`` over the new response; called with one query row
            ``[1, d]`` (or ``None``), it must return batch shape ``(1,)`` or ``()``.
        augmented: ``(x_new, y_new) -> distribution`` over θ, e.g. :func:`one_step`.
        prior: the dream world's prior over θ (a NumPyro distribution).
        likelihood: ``likelihood(theta, x)``, a distribution over ``y`` (as :mod:`klbook.bayes`).
        x: inputs ``[N, d]``, or ``None`` for a model without inputs (passed explicitly).
        y: responses ``[N]``.
        x_new: query inputs ``[M, d]`` (draws from the inputs one wants to predict at), or
            ``None`` when ``x`` is.
        num_queries: M for a model without inputs (default 1); not allowed with ``x_new``.
        num_particles: draws per query (the recipe's ``K``).

    Returns:
        :class:`~klbook.recipe.KLObjective` with terms ``distortion``, ``rate``, ``prediction``:
        each the mean over queries of the recipe's ledger for that query. ``stderr`` is the spread
        of the per-query totals over :math:`\sqrt M` (queries random; ``nan`` for M = 1 unless a
        single query's own is available); ``mc_stderr`` the particles' spread with the queries fixed.

    Raises:
        ValueError: ``y`` not ``[N]``; ``x`` not ``[N, d]``; ``x_new`` not ``[M, d]`` with the
            same d; one of ``x``, ``x_new`` given without the other; ``num_queries`` given with
            ``x_new`` or not a positive integer; non-finite data (checked when concrete, i.e.
            eagerly: under ``jax.jit`` the values are tracers); a predictive that is not over one
            scalar response per query; anything the recipe refuses (sites, shapes).
        TypeError: ``key`` is not a PRNG key.

    Shape errors are raised while tracing, so the same eagerly and under ``jax.jit``.
    """
    x, y, x_new = _check_data(x, y, x_new)
    if x_new is not None:
        if num_queries is not None:
            raise ValueError("num_queries is for models without inputs; with x_new the queries are its rows")
        m = int(x_new.shape[0])
    else:
        if num_queries is None:
            num_queries = 1
        if isinstance(num_queries, bool) or not isinstance(num_queries, (int, np.integer)) or num_queries < 1:
            raise ValueError(f"num_queries must be a positive integer; got {num_queries!r}")
        m = int(num_queries)
    from klbook.divergence import check_key

    check_key(key)
    keys = jax.random.split(key, m)

    def one(k, xx, yy, xq):
        return kl_objective(
            k,
            real_world,
            dream_world,
            predictive,
            augmented,
            prior,
            likelihood,
            xx,
            yy,
            xq,
            names=NAMES,
            num_particles=num_particles,
        )

    # Compiled as one program even when called eagerly: op-by-op dispatch of the vmapped recipe
    # is two orders of magnitude slower. Shape errors still surface here, while tracing.
    rows = None if x_new is None else x_new[:, None, :]  # one query row [1, d] per query
    outs = jax.jit(jax.vmap(one, in_axes=(0, None, None, None if rows is None else 0)))(keys, x, y, rows)

    def mean(a):
        return jnp.mean(a, axis=0)

    terms = {k: mean(v) for k, v in outs.terms.items()}

    def spread(v, own):  # per-query values [M]
        return jnp.std(v, ddof=1) / jnp.sqrt(m) if m > 1 else own[0]

    per_term = {**outs.terms, "total": outs.total}
    stderr = {k: spread(v, outs.stderr[k]) for k, v in per_term.items()}
    mc = {k: jnp.sqrt(jnp.sum(jnp.square(v))) / m for k, v in outs.mc_stderr.items()}
    return KLObjective(mean(outs.loss), mean(outs.total), terms, stderr, mc, outs.dropped)


# --------------------------------------------------------------------- augmented posteriors


class OneStep(dist.Distribution):
    r"""The paper's implicit augmented posterior: one gradient step from an approximate posterior.

    .. math:: \begin{aligned}
       \theta &= T(\theta_0) = \theta_0 + \epsilon\odot\nabla\ell(\theta_0),\quad \theta_0\sim s, \\
       \log r(\theta) &= \log s(\theta_0) - \log\left|\det\big(I + \mathrm{diag}(\epsilon)\,
       \nabla^2\ell(\theta_0)\big)\right|,
       \end{aligned}

    with :math:`\ell(\theta) = \log q(\tilde y\mid\tilde x,\theta)` the new point's log likelihood.
    Sampling is reparameterised through ``base``; scoring a value inverts :math:`T` by Newton's
    method (``newton_steps`` iterations without gradient, then one with, so the derivatives are
    those of the exact inverse). Cost per draw: a Hessian of :math:`\ell` and a d x d determinant;
    per score, ``newton_steps + 1`` more of each.

    The change of variables is right only if :math:`T` is one-to-one; otherwise a value has several
    preimages, Newton's method finds one, and the density it returns is too small, so the
    variational prediction objective can fall below its floor. :func:`one_step` takes a
    ``curvature`` bound and caps the step so that :math:`T` is a bijection (a proof there). This
    class cannot certify a general likelihood, but it *flags* what it can see: ``log_prob`` is NaN where
    :math:`\det J \le 0` at the recovered :math:`\theta_0` (the step folds space there) or Newton's
    method did not invert the step (residual above ``1e-3 (1 + max|θ|)``). These checks are
    necessary, not sufficient (a step that folds space often still inverts to a preimage with
    :math:`\det J > 0`, and the density is then silently too small). :func:`klbook.train.fit`
    stops with an error at a NaN loss.

    Args:
        base: the approximate posterior :math:`s(\theta)`, reparameterisable, event shape ``(d,)``,
            batch shape ``()``.
        log_lik: :math:`\theta \mapsto \ell(\theta)`, a scalar.
        step: the step sizes :math:`\epsilon`, ``[d]`` (positive; checked when concrete).
        newton_steps: Newton iterations without gradient before the differentiable one.
    """

    arg_constraints = {}
    support = constraints.real_vector  # pyright: ignore[reportAssignmentType]  # as NumPyro's own classes do

    def __init__(self, base: dist.Distribution, log_lik: Callable, step, newton_steps: int = 8):
        if not isinstance(base, dist.Distribution):
            raise TypeError(f"base must be a NumPyro distribution over θ; got {type(base).__name__}")
        if len(base.event_shape) != 1 or base.batch_shape != ():
            raise ValueError(
                "base must be one distribution over a vector θ (batch shape (), event shape (d,)); got "
                f"batch shape {base.batch_shape} and event shape {base.event_shape}"
            )
        if not base.has_rsample:
            raise ValueError(
                f"base must be reparameterisable (a Normal, MultivariateNormal, ...); got {type(base).__name__}"
            )
        step = jnp.asarray(step)
        if step.shape != base.event_shape:
            raise ValueError(f"step must have θ's shape {base.event_shape}; got {step.shape}")
        check_positive(step, "step")
        self.base, self.log_lik, self.step, self.newton_steps = base, log_lik, step, int(newton_steps)
        super().__init__(batch_shape=(), event_shape=base.event_shape)

    def _forward(self, theta0):
        return theta0 + self.step * jax.grad(self.log_lik)(theta0)

    def _jacobian(self, theta0):
        return jnp.eye(theta0.shape[-1]) + self.step[:, None] * jax.hessian(self.log_lik)(theta0)

    def _newton(self, theta0, theta):
        return theta0 - jnp.linalg.solve(self._jacobian(theta0), self._forward(theta0) - theta)

    def sample(self, key, sample_shape=()):
        theta0 = jnp.asarray(self.base.sample(key, sample_shape))
        flat = theta0.reshape((-1, theta0.shape[-1]))
        return jax.vmap(self._forward)(flat).reshape(theta0.shape)

    def _log_prob_one(self, theta):
        guess = jax.lax.stop_gradient(theta - self.step * jax.grad(self.log_lik)(theta))

        def body(_, t0):
            return jax.lax.stop_gradient(self._newton(t0, theta))

        theta0 = jax.lax.fori_loop(0, self.newton_steps, body, guess)
        theta0 = self._newton(theta0, theta)  # one differentiable step: the inverse's derivatives
        sign, logdet = jnp.linalg.slogdet(self._jacobian(theta0))
        residual = jnp.max(jnp.abs(jax.lax.stop_gradient(self._forward(theta0) - theta)))
        folded = (sign <= 0) | ~(residual <= 1e-3 * (1 + jnp.max(jnp.abs(jax.lax.stop_gradient(theta)))))
        return jnp.where(folded, jnp.nan, self.base.log_prob(theta0) - logdet)

    def log_prob(self, value):
        """The one-step density at ``value [..., d]``, by change of variables (the step inverted by Newton's method)."""
        value = jnp.asarray(value)
        flat = value.reshape((-1, value.shape[-1]))
        return jax.vmap(self._log_prob_one)(flat).reshape(value.shape[:-1])


#: The largest step :func:`one_step` allows, as a fraction of the invertibility limit: :math:`\rho` below.
STEP_MARGIN = 0.9


def step_ratio(step, x_new, curvature: float) -> jax.Array:
    r"""The invertibility certificate of :func:`one_step`, one value per row of ``x_new [M, d]``:
    :math:`a = L\,\tilde x^\top \mathrm{diag}(\epsilon)\,\tilde x`. Below 1 the step is a bijection
    (see :func:`one_step`, which caps it at :data:`STEP_MARGIN`)."""
    step, x_new = jnp.asarray(step), jnp.asarray(x_new)
    if x_new.ndim != 2 or x_new.shape[-1:] != step.shape:
        raise ValueError(f"x_new must be [M, d] with d = step's length {step.shape}; got shape {x_new.shape}")
    return curvature * (jnp.square(x_new) @ step)


def one_step(base: dist.Distribution, likelihood, step, *, curvature: float, newton_steps: int = 8) -> Augmented:
    r"""The paper's implicit augmented posterior, ``(x_new, y_new) -> OneStep(base, log q(y_new|x_new, ·), step)``,
    with the step capped so that it is invertible (the cap and its certificate are this book's addition).

    ``curvature`` is a bound :math:`L` on the likelihood's curvature in its linear predictor: the
    likelihood depends on θ only through :math:`u_k = \tilde x_k^\top\theta` (one per row of
    ``x_new``) with :math:`0 \le -\partial^2_u \log q \le L` (a generalised linear model:
    :math:`L = 1/\sigma^2` for ``bayes.linear(sigma)``, :math:`1/4` for ``bayes.logistic``). Each
    query then steps by :math:`\epsilon\min(1, \rho/a)` with
    :math:`a = L\sum_k\tilde x_k^\top\mathrm{diag}(\epsilon)\tilde x_k` (:func:`step_ratio`) and
    :math:`\rho` = :data:`STEP_MARGIN`. *Why this is a bijection:* in the coordinates
    :math:`\phi = \mathrm{diag}(\epsilon)^{-1/2}\theta` the step is :math:`\phi_0 +
    \nabla\tilde\ell(\phi_0)` with :math:`\tilde\ell` concave and
    :math:`\Vert\nabla^2\tilde\ell\Vert \le \mathrm{tr}(-\nabla^2\tilde\ell) \le a \le \rho < 1`:
    the identity plus a contraction, so one-to-one and onto, with :math:`\det J \ge (1-\rho)^d > 0`.
    A step already below the cap is used as given.

    The bound is required: without it nothing certifies the density. For a likelihood of another
    form, build :class:`OneStep` directly, with a step you have shown to be one-to-one; it flags
    only the failures it can see.

    Raises:
        ValueError: ``curvature`` not a positive number; ``step`` not positive (when concrete);
            ``x_new`` None (the bound is on a linear predictor).
    """
    if (
        isinstance(curvature, bool)
        or not isinstance(curvature, (int, float, np.floating, np.integer))
        or not (math.isfinite(curvature) and curvature > 0)
    ):
        raise ValueError(
            "curvature must be a positive number bounding -d^2 log q / du^2 in the linear predictor "
            f"(1/sigma^2 for a Gaussian, 1/4 for a logistic likelihood); got {curvature!r}"
        )
    step = jnp.asarray(step)
    if isinstance(base, dist.Distribution) and len(base.event_shape) == 1 and step.shape != base.event_shape:
        raise ValueError(f"step must have θ's shape {base.event_shape}; got {step.shape}")
    check_positive(step, "step")

    def augmented(x_new, y_new):
        if x_new is None:
            raise ValueError("one_step needs the query inputs x_new: its curvature bound is on a linear predictor")
        a = jnp.sum(step_ratio(step, x_new, float(curvature)))
        eps = step * (STEP_MARGIN / jnp.maximum(a, STEP_MARGIN))
        return OneStep(base, lambda t: jnp.sum(likelihood(t, x_new).log_prob(y_new)), eps, newton_steps)

    return augmented


def unconditional(base: dist.Distribution) -> Augmented:
    r"""The paper's baseline: the augmented posterior ignores the new point,
    :math:`r(\theta\mid\tilde x,\tilde y, D) = s(\theta)`.

    The bound then charges :math:`\langle -\log q(\tilde y\mid\tilde x,\theta)\rangle_s` for the new
    point, so the best predictive is :math:`\propto \exp\langle\log q(\tilde y\mid\tilde x,\theta)
    \rangle_s`, a geometric mean: for a Gaussian likelihood the plug-in's width, missing the
    posterior's spread.
    """
    return lambda x_new, y_new: base


# ------------------------------------------------------------------------- predictive family


def linear_predictive(params: dict) -> Predictive:
    r"""Gaussian predictive for linear models: :math:`\mathcal N(\tilde x^\top\mu,\ \sigma^2 + \|L^\top\tilde x\|^2)`.

    ``params``: ``loc [d]``, ``tril [d, d]`` (lower triangle of L, diagonal through softplus),
    ``raw_noise`` (σ = softplus). It contains Bayesian linear regression's exact predictive
    (:func:`regression_predictive`: L the posterior covariance's Cholesky factor). Called with
    ``x_new [M, d]`` it returns batch shape ``(M,)``.
    """

    def predictive(x_new):
        if x_new is None:
            raise ValueError(
                "linear_predictive needs query inputs x_new [M, d]; for a constant mean use a column of ones"
            )
        raw = params["tril"]
        tril = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diag(raw)))
        var = jax.nn.softplus(params["raw_noise"]) ** 2 + jnp.sum(jnp.square(x_new @ tril), axis=-1)
        return dist.Normal(x_new @ params["loc"], jnp.sqrt(var))

    return predictive


def init_linear_predictive(dim: int, noise: float = 1.0, scale: float = 0.1) -> dict:
    """Initial :func:`linear_predictive` parameters: mean 0, σ = ``noise``, L = ``scale`` I."""

    def inv(s):
        return float(np.log(np.expm1(s)))

    return {"loc": jnp.zeros(dim), "tril": jnp.eye(dim) * inv(scale), "raw_noise": jnp.asarray(inv(noise))}


def logistic_predictive(params: dict) -> Predictive:
    r"""Bernoulli predictive for logistic regression, with the probit-style widening (MacKay 1992):
    :math:`p(\tilde y = 1\mid\tilde x) = \sigma\big(\tilde x^\top\mu / \sqrt{1 + \pi\|L^\top\tilde x\|^2/8}\big)`.

    ``params``: ``loc [d]`` and ``tril [d, d]`` (as :func:`linear_predictive`; ``raw_noise`` is
    ignored). It is the usual approximation of the exact predictive under a Gaussian posterior
    :math:`\mathcal N(\mu, LL^\top)`, not the exact predictive itself. ``x_new [M, d]`` gives batch ``(M,)``.
    """

    def predictive(x_new):
        if x_new is None:
            raise ValueError("logistic_predictive needs query inputs x_new [M, d]")
        raw = params["tril"]
        tril = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diag(raw)))
        spread = jnp.sum(jnp.square(x_new @ tril), axis=-1)
        return dist.Bernoulli(logits=(x_new @ params["loc"]) / jnp.sqrt(1 + jnp.pi * spread / 8))

    return predictive


# -------------------------------------------------------------------------- closed forms


def regression_predictive(x, y, noise: float, prior_scale: float, x_new) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact predictive of Bayesian linear regression: mean :math:`\tilde x^\top\mu`, variance
    :math:`\sigma^2 + \tilde x^\top S^{-1}\tilde x` (Bishop 2006, eq. 3.58-3.59), float64, ``[M]`` each."""
    post = bayes.regression_posterior(x, y, noise, prior_scale)
    xn = np.asarray(x_new, np.float64)
    return xn @ post.mean, noise**2 + np.einsum("md,de,me->m", xn, post.cov, xn)


def regression_augmented(x, y, noise: float, prior_scale: float) -> Augmented:
    r"""Exact augmented posterior of Bayesian linear regression: the posterior given
    :math:`D\cup\{(\tilde x,\tilde y)\}`, precision :math:`S + \tilde x^\top\tilde x/\sigma^2`.

    With it the bound's only gap is the predictive's own KL (and with the exact predictive too,
    every draw of the objective is :math:`-\log q(D)/N`).
    """
    post = bayes.regression_posterior(x, y, noise, prior_scale)
    s = jnp.asarray(post.precision, jnp.float32)
    sm = jnp.asarray(post.precision @ post.mean, jnp.float32)

    def augmented(x_new, y_new):
        prec = s + x_new.T @ x_new / noise**2
        return dist.MultivariateNormal(jnp.linalg.solve(prec, sm + x_new.T @ y_new / noise**2), precision_matrix=prec)

    return augmented


def held_out(predictive: Predictive, x_new, y_new) -> tuple[jax.Array, jax.Array]:
    r"""Held-out log likelihood per example, :math:`\frac1M\sum_j\log p(\tilde y_j\mid\tilde x_j, D)`, and its
    standard error ``std / sqrt(M)`` (``x_new [M, d]`` or ``None``, ``y_new [M]``)."""
    if jnp.ndim(y_new) != 1:
        raise ValueError(f"y_new must be [M]; got shape {jnp.shape(y_new)}")
    lp = jnp.asarray(predictive(x_new).log_prob(jnp.asarray(y_new)))
    return jnp.mean(lp), jnp.std(lp, ddof=1) / jnp.sqrt(lp.shape[0])


def sampled_held_out(likelihood, thetas, x_new, y_new) -> tuple[jax.Array, jax.Array]:
    r"""Held-out log likelihood of the Monte Carlo predictive :math:`\frac1S\sum_s q(\tilde y\mid\tilde x,\theta_s)`
    (posterior draws ``thetas [S, ...]`` from MCMC or a fitted family), per example, and its standard error.

    Costs S likelihood evaluations per prediction (:func:`held_out` costs one density).
    """
    y_new = jnp.asarray(y_new)
    if y_new.ndim != 1:
        raise ValueError(f"y_new must be [M]; got shape {y_new.shape}")
    lp = jnp.asarray(jax.vmap(lambda t: likelihood(t, x_new).log_prob(y_new))(thetas))  # [S, M]
    per = jax.scipy.special.logsumexp(lp, axis=0) - jnp.log(lp.shape[0])  # [M]
    return jnp.mean(per), jnp.std(per, ddof=1) / jnp.sqrt(per.shape[0])
