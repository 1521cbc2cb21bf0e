r"""Variational Bayes is the recipe with a global code (chapter 10).

The real world holds a data set :math:`\mathcal D = \{(x_i, y_i)\}_{i=1}^N` from a process outside
our control and augments it with *one* draw of the parameters, :math:`\theta \sim p(\theta\mid\mathcal D)`,
a distribution we choose and train (the post's notation: this :math:`p(\theta\mid\mathcal D)` is the
*variational* posterior, which most texts call :math:`q`). The dream world is exchangeable data,
a prior and an i.i.d. likelihood, :math:`q(\theta)\prod_i p(x_i)\, q(y_i\mid x_i, \theta)`.
With :math:`D` the distortion per example and the rate :math:`R` and :math:`H` *totals* over the
whole data set (nats), as in chapter 10,

.. math:: I[P;Q] = \underbrace{\left\langle -\log q(\mathcal D\mid\theta)\right\rangle_{p(\theta\mid\mathcal D)}}
      _{\text{distortion } ND}
   + \underbrace{\left\langle \log\frac{p(\theta\mid\mathcal D)}{q(\theta)}\right\rangle_{p(\theta\mid\mathcal D)}}
      _{\text{rate } R}
   + \underbrace{\langle\log p(\mathcal D)\rangle}_{-H} ,

so :math:`I = ND + R - H`: the negative ELBO, :math:`ND + R`, plus the data's own log density,
:math:`\langle\log p(\mathcal D)\rangle = -H`, which nothing here trains and which is dropped. The
ledger reports every term **per example** of the full data set (nats divided by N):
``distortion`` :math:`= D`, ``rate`` :math:`= R/N`, and ``total`` their sum, the negative ELBO
per example. The inputs :math:`x_i` are data in both worlds, with the same unknown density
:math:`p(x_i)`, so their terms cancel (the ``inputs`` term is 0): with inputs, read
:math:`q(\mathcal D\mid\theta)` as :math:`\prod_i q(y_i\mid x_i,\theta)`, :math:`p(\mathcal D)` as
:math:`p(y_{1:N}\mid x_{1:N})` and :math:`H` as the responses' entropy given the inputs. The minimum of
:math:`D + R/N` over all :math:`p(\theta\mid\mathcal D)` is :math:`-\log q(\mathcal D)/N`, the
negative log evidence per example, reached at the exact posterior
:math:`q(\theta\mid\mathcal D) \propto q(\theta)\, q(\mathcal D\mid\theta)`. A weight :math:`\beta`
on the distortion, as the post writes it (``loss`` :math:`= \beta D + R/N`), moves the minimiser
to the *tempered* posterior :math:`\propto q(\theta)\, q(\mathcal D\mid\theta)^\beta`.

Arguments come in the book's order: the key first where there is randomness, then inputs ``x``
(``None`` for a model without inputs, such as :func:`coin`, passed explicitly) and responses
``y``; a likelihood is called as ``likelihood(theta, x)``.

:func:`real_world` and :func:`dream_world` are the two NumPyro models; :func:`objective` is the
ledger (``rate`` is scaled by 1/N at every batch size, through NumPyro's subsampling idiom or
``data_size``); :func:`fit_posterior` trains a :func:`gaussian` family; the conjugate closed
forms are the Beta–Bernoulli coin (:func:`coin_posterior`, :func:`coin_log_evidence`), Bayesian
linear regression with known noise (:func:`regression_posterior`,
:func:`regression_log_evidence`) and the mean-field gap (:func:`mean_field_gap`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from scipy.special import betaln

from klbook._checks import is_concrete
from klbook.divergence import gaussian_kl as _gaussian_kl
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import Devices, FitResult, fit

__all__ = [
    "NAMES",
    "real_world",
    "dream_world",
    "joint_model",
    "objective",
    "gaussian",
    "init_gaussian",
    "fit_posterior",
    "evaluate",
    "coin",
    "linear",
    "logistic",
    "Gaussian",
    "coin_posterior",
    "coin_log_evidence",
    "regression_posterior",
    "regression_log_evidence",
    "mean_field_gap",
    "gaussian_kl",
    "predictive_log_lik",
]

#: The recipe's names: the parameters' term is the rate, the responses' term the distortion.
NAMES = {"theta": "rate", "x": "inputs", "y": "distortion"}

Likelihood = Callable[[jax.Array, jax.Array | None], dist.Distribution]


def _arrays(x, y):
    """``x`` and ``y`` as JAX arrays: NumPy arrays cannot be indexed by NumPyro's traced subsample."""
    return (None if x is None else jnp.asarray(x)), jnp.asarray(y)


def _rows(y, subsample_size):
    """The data plate over the rows of ``y``: all of them, or NumPyro's random subsample."""
    return numpyro.plate("data", jnp.shape(y)[0], subsample_size=subsample_size)


def real_world(posterior, prior, likelihood: Likelihood, x, y, subsample_size=None) -> None:
    """P: the inputs ``x [N, d]`` (``None`` where there are none) and responses ``y [N]``, density
    unknown, and one global θ ~ ``posterior``.

    ``prior`` and ``likelihood`` are unused here (both worlds take the same arguments).
    """
    x, y = _arrays(x, y)
    numpyro.sample("theta", posterior)
    plate = _rows(y, subsample_size)
    with plate as idx:
        if x is not None:
            data("x", x[idx], event_dim=1)
        data("y", y[idx])


def dream_world(posterior, prior, likelihood: Likelihood, x, y, subsample_size=None) -> None:
    r"""Q: θ ~ ``prior``, then exchangeable responses :math:`y_i \sim q(y\mid x_i, \theta)`.

    The inputs ``x`` (or ``None``) are data in both worlds; ``y`` is not read (the recipe scores the real world's).
    """
    x, y = _arrays(x, y)
    theta = numpyro.sample("theta", prior)
    plate = _rows(y, subsample_size)
    with plate as idx:
        xb = None
        if x is not None:
            xb = x[idx]
            data("x", xb, event_dim=1)
        numpyro.sample("y", likelihood(jnp.asarray(theta), xb))


def joint_model(prior, likelihood: Likelihood, x, y) -> None:
    """The dream world conditioned on the data ``x`` (or ``None``), ``y``, for MCMC (``numpyro.infer.NUTS``)."""
    x, y = _arrays(x, y)
    theta = numpyro.sample("theta", prior)
    with numpyro.plate("data", jnp.shape(y)[0]):
        numpyro.sample("y", likelihood(jnp.asarray(theta), x), obs=y)


def objective(
    key,
    posterior,
    prior,
    likelihood: Likelihood,
    x,
    y,
    *,
    beta: float = 1.0,
    num_particles: int = 1,
    data_size: int | None = None,
    subsample_size: int | None = None,
) -> KLObjective:
    r"""The ledger, nats per example of the full data set: ``distortion`` (:math:`D`),
    ``rate`` (KL/N, :math:`R/N`), ``inputs`` (0).

    ``loss`` is ``beta * distortion + rate``, :math:`\beta D + R/N` with the module's total rate :math:`R`.
    Pass ``data_size=N`` when ``y`` is a batch drawn outside
    the model, or ``subsample_size=B`` to let NumPyro draw the batch from the full ``y``.
    ``x [N, d]`` (``None`` for a model without inputs, such as :func:`coin`: pass it explicitly) and
    ``y [N]`` may be NumPy arrays (converted on entry, so a traced subsample can index them).
    """
    x, y = _arrays(x, y)
    names = {k: v for k, v in NAMES.items() if x is not None or k != "x"}
    return kl_objective(
        key,
        real_world,
        dream_world,
        posterior,
        prior,
        likelihood,
        x,
        y,
        subsample_size,
        names=names,
        weights={"distortion": beta},
        num_particles=num_particles,
        data_size=data_size,
    )


def coin(theta, x=None) -> dist.Distribution:
    """Chapter 1's coin: each flip is heads with probability θ."""
    return dist.Bernoulli(probs=theta)


def linear(noise: float) -> Likelihood:
    """Linear regression with known noise: :math:`y \\sim \\mathcal N(x^\\top\\theta, \\sigma^2)`."""

    def likelihood(theta, x) -> dist.Distribution:
        if x is None:
            raise ValueError("linear regression needs inputs x [N, d]; got None")
        return dist.Normal(x @ theta, noise)

    return likelihood


def logistic(theta, x) -> dist.Distribution:
    """Logistic regression: :math:`y \\sim \\mathrm{Bernoulli}(\\sigma(x^\\top\\theta))`."""
    return dist.Bernoulli(logits=x @ theta)


def gaussian(params: dict) -> dist.Distribution:
    """A Gaussian family: full-rank if ``params`` has ``"tril"`` ``[d, d]``, mean-field otherwise.

    The diagonal is ``softplus`` of the raw parameters, so every value of ``params`` is valid.
    """
    if "tril" in params:
        raw = params["tril"]
        tril = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diag(raw)))
        return dist.MultivariateNormal(params["loc"], scale_tril=tril)
    return dist.Normal(params["loc"], jax.nn.softplus(params["raw_scale"])).to_event(1)


def init_gaussian(dim: int, full_rank: bool, scale: float = 0.1) -> dict:
    """Initial parameters of :func:`gaussian`: mean 0, standard deviations ``scale``."""
    raw = float(np.log(np.expm1(scale)))
    if full_rank:
        return {"loc": jnp.zeros(dim), "tril": jnp.eye(dim) * raw}
    return {"loc": jnp.zeros(dim), "raw_scale": jnp.full(dim, raw)}


def _check_stacked(family: Callable, params, prior, betas) -> jax.Array:
    """``betas [B]`` checked, and ``params`` checked to carry one parameter set per β on a leading axis.

    Eager, before anything is traced: each leaf must have a leading axis of size ``B``, and
    ``family(params[0])`` must be one draw of the prior's shape. Without this, unstacked parameters
    reach ``jax.vmap`` and fail with a message about mapped axes or ``reinterpreted_batch_ndims``.
    """
    betas = jnp.asarray(betas, jnp.float32)
    if betas.ndim != 1 or betas.size == 0 or not bool(jnp.all(jnp.isfinite(betas))):
        raise ValueError(f"betas must be a non-empty vector of finite numbers, one per fit; got {betas}")
    count = int(betas.shape[0])
    hint = (
        f"params must carry a leading axis of len(betas) = {count}, one parameter set per beta "
        f"(e.g. jax.tree.map(lambda a: jnp.stack([a] * {count}), params))"
    )
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params holds no arrays")
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] != count:
            raise ValueError(f"{hint}; got a leaf of shape {shape}")
    member = jax.tree.map(lambda a: jnp.asarray(a)[0], params)
    try:
        shape = tuple(family(member).shape())
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{hint}; family(params[0]) fails: {err}") from err
    if shape != tuple(prior.shape()):
        raise ValueError(
            f"{hint}: family(params[0]) has shape {shape}, the prior {tuple(prior.shape())} "
            "(a set of parameters missing its beta axis?)"
        )
    return betas


def fit_posterior(
    key,
    family: Callable,
    params,
    prior,
    likelihood: Likelihood,
    x,
    y,
    *,
    betas=(1.0,),
    num_steps: int = 2000,
    batch_size: int | None = None,
    num_particles: int = 8,
    learning_rate: float = 0.01,
    desc: str | None = None,
    progress: bool = True,
    devices: Devices = None,
) -> FitResult:
    """Minimise :func:`objective` over ``params`` of ``family(params)``, one fit per β in ``betas``.

    ``params`` has a leading axis of ``len(betas)`` (one parameter set per β); the fits are
    independent (the summed loss has a separate gradient for each set, and Adam scales each
    parameter by itself) but compile once. Adam with a cosine-decayed learning rate, which anneals
    the gradient noise. Batches of ``batch_size`` rows are drawn by :func:`klbook.train.fit` (all
    rows when ``None``) and ``data_size=N`` is passed, so the rate is KL/N at every batch size.
    Parameters without the leading β axis are refused by name before anything is compiled.
    ``devices`` splits each batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device); the batch size (``N`` when
    ``batch_size`` is None) must divide by their number, or a ``ValueError`` naming both is
    raised before anything compiles.
    """
    n = int(jnp.shape(y)[0])
    rows = (y,) if x is None else (x, y)
    betas = _check_stacked(family, params, prior, betas)

    def loss(p, k, batch):
        def one(pi, beta, ki):
            xb, yb = (None, batch[0]) if x is None else batch
            out = objective(
                ki, family(pi), prior, likelihood, xb, yb, beta=beta, num_particles=num_particles, data_size=n
            )
            return out.loss, out.total

        losses, totals = jax.vmap(one)(p, betas, jax.random.split(k, betas.shape[0]))
        return jnp.sum(losses), {f"total, beta={float(b):g}": t for b, t in zip(np.asarray(betas), totals, strict=True)}

    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01)
    return fit(
        key,
        loss,
        params,
        num_steps=num_steps,
        optimizer=optax.adam(schedule),
        data=rows,
        batch_size=batch_size,
        desc=desc,
        progress=progress,
        devices=devices,
    )


def evaluate(
    key, family: Callable, params, prior, likelihood: Likelihood, x, y, *, num_particles: int = 4096
) -> KLObjective:
    """:func:`objective` (β = 1) for each parameter set along the leading axis of ``params``, compiled once."""

    @jax.jit
    def run(k, p):
        return jax.vmap(lambda pi: objective(k, family(pi), prior, likelihood, x, y, num_particles=num_particles))(p)

    return run(key, params)


# ----------------------------------------------------------------- closed forms (float64, numpy)


def coin_posterior(heads: int, tails: int, a: float = 1.0, b: float = 1.0, beta: float = 1.0) -> tuple[float, float]:
    r"""Beta(a, b) prior, Bernoulli flips: the (tempered) posterior :math:`\mathrm{Beta}(a + \beta h, b + \beta t)`."""
    return a + beta * heads, b + beta * tails


def coin_log_evidence(heads: int, tails: int, a: float = 1.0, b: float = 1.0) -> float:
    r""":math:`\log q(\mathcal D) = \log B(a + h, b + t) - \log B(a, b)` for one ordered sequence of flips."""
    return float(betaln(a + heads, b + tails) - betaln(a, b))


class Gaussian(NamedTuple):
    """A Gaussian by its mean ``[d]`` and precision ``[d, d]`` (float64)."""

    mean: np.ndarray
    precision: np.ndarray

    @property
    def cov(self) -> np.ndarray:
        return np.linalg.inv(self.precision)


def regression_posterior(x, y, noise: float, prior_scale: float, beta: float = 1.0) -> Gaussian:
    r"""Prior :math:`\mathcal N(0, \tau^2 I)`, likelihood :math:`\mathcal N(X\theta, \sigma^2 I)`.

    The (tempered) posterior has precision :math:`S = I/\tau^2 + \beta X^\top X/\sigma^2` and mean
    :math:`S^{-1}\beta X^\top y/\sigma^2` (Bishop 2006, section 3.3).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    s = np.eye(x.shape[1]) / prior_scale**2 + beta * x.T @ x / noise**2
    return Gaussian(np.linalg.solve(s, beta * x.T @ y / noise**2), s)


def regression_log_evidence(x, y, noise: float, prior_scale: float) -> float:
    r""":math:`\log q(\mathcal D) = \log\mathcal N(y; 0, \sigma^2 I + \tau^2 X X^\top)` (Bishop 2006, eq. 3.86)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c = noise**2 * np.eye(len(y)) + prior_scale**2 * x @ x.T
    _, logdet = np.linalg.slogdet(c)
    return float(-0.5 * (y @ np.linalg.solve(c, y) + logdet + len(y) * np.log(2 * np.pi)))


def mean_field_gap(*, precision) -> float:
    r"""KL from the best mean-field Gaussian to :math:`\mathcal N(\mu, S^{-1})`:
    :math:`\tfrac12\sum_i\log S_{ii} - \tfrac12\log\det S`.

    The best member (KL with the expectation under the mean-field member, the direction the
    recipe minimises) has mean :math:`\mu` and variances :math:`1/S_{ii}` (Bishop 2006, 10.1.2).

    ``precision`` is keyword-only because the same expression written with the *covariance*
    :math:`C` is a different quantity, the gap of the forward (moment-matching) KL,
    :math:`\tfrac12\sum_i\log C_{ii} - \tfrac12\log\det C`: name the matrix you pass. It
    must be a concrete, finite, symmetric, positive-definite ``[d, d]`` matrix (checked; a
    float64 NumPy closed form, so call it outside ``jax.jit``: a traced matrix is refused with a
    ``TypeError`` that says so).

    Raises:
        TypeError: ``precision`` is a JAX tracer (inside ``jax.jit``/``vmap``/``grad``).
        ValueError: not square, not finite, not symmetric or not positive definite.
    """
    if not is_concrete(precision):
        raise TypeError(
            "mean_field_gap is a float64 NumPy closed form and needs a concrete precision matrix; "
            "it was given a traced value (inside jax.jit, vmap or grad): call it outside the transform"
        )
    s = np.asarray(precision, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"mean_field_gap: precision must be a square [d, d] matrix; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("mean_field_gap: precision has non-finite entries")
    if not np.allclose(s, s.T, rtol=1e-6, atol=1e-12 * np.max(np.abs(s))):
        raise ValueError(
            "mean_field_gap: precision must be symmetric; got a matrix with "
            f"max |S - S^T| = {np.max(np.abs(s - s.T)):.3g}"
        )
    try:
        chol = np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        eig = np.linalg.eigvalsh(0.5 * (s + s.T))
        raise ValueError(
            f"mean_field_gap: precision must be positive definite; its smallest eigenvalue is {eig.min():.3g}"
        ) from None
    return float(0.5 * np.sum(np.log(np.diag(s))) - np.sum(np.log(np.diag(chol))))


def gaussian_kl(mean0, cov0, target: Gaussian) -> float:
    r""":math:`I[\mathcal N(m_0, \Sigma_0); \mathcal N(\mu, S^{-1})]` in float64 (expectation under the first).

    The target is given by its precision :math:`S`, as the conjugate posteriors here are;
    :func:`klbook.divergence.gaussian_kl` does the arithmetic.
    """
    return _gaussian_kl(mean0, cov0, target.mean, precision_q=target.precision)


def predictive_log_lik(likelihood: Likelihood, thetas, x, y) -> jax.Array:
    r"""Held-out log predictive per example, :math:`\frac1M\sum_j \log \frac1S\sum_s q(y_j\mid x_j, \theta_s)`.

    ``thetas [S, ...]`` are posterior draws (from MCMC or a fitted family); ``x [M, d]`` (or ``None``), ``y [M]``.
    """
    lp = jnp.asarray(jax.vmap(lambda t: likelihood(t, x).log_prob(y))(thetas))  # [S, M]
    return jnp.mean(jax.scipy.special.logsumexp(lp, axis=0) - jnp.log(lp.shape[0]))
