r"""Density estimation: the recipe with nothing added, and maximum likelihood as minimum KL (chapter 4).

The real world is the data alone, :math:`P = p(x)`; the dream world is a density we can score,
:math:`Q = q_\theta(x)`. The recipe's one term is

.. math:: I[p;q_\theta] = \big\langle -\log q_\theta(x) \big\rangle_p - H[p],
          \qquad H[p] = \big\langle -\log p(x) \big\rangle_p,

the cross-entropy minus the data's entropy. With the data's density unknown the recipe drops
:math:`H[p]` and minimises the cross-entropy, which over the empirical distribution of a sample is
the average negative log-likelihood: minimum KL *is* maximum likelihood. When the true density is
known (generated data, :func:`klbook.data.mixture_2d`) it is passed as the base measure and the
term is the KL itself (appendix A).

The dream worlds here are mixtures of :math:`K` full-covariance Gaussians (:math:`K = 1` is one
Gaussian), with parameters ``{"logits": [K], "loc": [K, D], "tril": [K, D, D]}``; ``tril``'s
strict lower triangle is the Cholesky factor's and its diagonal holds the log of the factor's
diagonal, so every value is a valid covariance.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.scipy.linalg import solve_triangular
from numpyro.distributions import constraints

from klbook import _require_chapters_extra

try:  # the book's extra: pip install "klbook[chapters]"
    from sklearn.cluster import KMeans
except ModuleNotFoundError as err:
    _require_chapters_extra("klbook.density", err)

from klbook._checks import check_finite
from klbook.divergence import MCEstimate, check_key, gaussian_kl
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import Devices, FitResult, fit

__all__ = [
    "GaussianMixture",
    "real_world",
    "dream_world",
    "density",
    "init_mixture",
    "objective",
    "loss_fn",
    "fit_density",
    "fit_density_restarts",
    "MixtureFit",
    "em_steps",
    "entropy_mc",
]


def _check_data(x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be data of shape [N, D] with N, D >= 1; got shape {x.shape}")
    check_finite(x, "x")
    return x


def _check_params(params: dict) -> int:
    missing = sorted({"logits", "loc", "tril"} - set(params))
    if missing:
        raise ValueError(f"params must hold 'logits', 'loc' and 'tril'; missing {missing}")
    k, d = params["loc"].shape
    if params["logits"].shape != (k,) or params["tril"].shape != (k, d, d):
        raise ValueError(
            f"params shapes disagree: logits {params['logits'].shape}, loc {params['loc'].shape}, "
            f"tril {params['tril'].shape}; expected [K], [K, D], [K, D, D]"
        )
    return k


class GaussianMixture(dist.Distribution):
    r"""A mixture of full-covariance Gaussians, :math:`\sum_k \pi_k \mathcal{N}(x;\, \mu_k, L_k L_k^\top)`.

    The same density as ``MixtureSameFamily(Categorical(logits), MultivariateNormal(loc,
    scale_tril=scale_tril))``, scored by whitening: each :math:`L_k^{-1}` is computed once and
    applied with one matrix product, :math:`\log \mathcal{N}_k = -\tfrac12\lVert L_k^{-1}(x-\mu_k)
    \rVert^2 - \sum_i \log L_{k,ii} - \tfrac D2 \log 2\pi`. (NumPyro's multivariate normal solves a
    triangular system per example and component, which on a CPU makes training a few hundred
    times slower here.) Unbatched: ``logits [K]``, ``loc [K, D]``, ``scale_tril [K, D, D]``.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real_matrix,
        "scale_tril": constraints.lower_cholesky,
    }
    support = constraints.real_vector  # pyright: ignore[reportAssignmentType]  # as NumPyro's own classes do

    def __init__(self, logits, loc, scale_tril, *, validate_args=None):
        self.logits, self.loc, self.scale_tril = logits, loc, scale_tril
        super().__init__(batch_shape=(), event_shape=loc.shape[-1:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        r"""Draw a component :math:`k \sim \pi`, then :math:`x = \mu_k + L_k \epsilon`
        with :math:`\epsilon \sim \mathcal{N}(0, I)`."""
        if key is None:
            raise ValueError("sample needs a PRNG key (jax.random.key); got None")
        k_component, k_noise = jax.random.split(key)
        which = jax.random.categorical(k_component, self.logits, shape=tuple(sample_shape))  # [*S]
        eps = jax.random.normal(k_noise, tuple(sample_shape) + self.loc.shape[-1:])  # [*S, D]
        return self.loc[which] + jnp.einsum("...ij,...j->...i", self.scale_tril[which], eps)

    def log_prob(self, value):
        r"""Exact :math:`\log \sum_k \pi_k \mathcal{N}(x;\, \mu_k, L_k L_k^\top)` for ``value [..., D]``,
        returning ``[...]``."""
        d = self.loc.shape[-1]
        lead = (1,) * (jnp.ndim(value) - 1)  # broadcast the components over value's batch dims explicitly
        whiten = jax.vmap(lambda tril: solve_triangular(tril, jnp.eye(d), lower=True))(self.scale_tril)  # [K, D, D]
        centred = value[..., None, :] - self.loc.reshape(lead + self.loc.shape)  # [..., K, D]
        # HIGHEST: a GPU may otherwise run float32 matrix products in TF32 (10-bit mantissa)
        z = jnp.einsum("kij,...kj->...ki", whiten, centred, precision=jax.lax.Precision.HIGHEST)  # [..., K, D]
        log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)), -1)  # [K]
        log_weight = jax.nn.log_softmax(self.logits) - log_det - 0.5 * d * jnp.log(2 * jnp.pi)  # [K]
        return jax.nn.logsumexp(-0.5 * jnp.sum(z**2, -1) + log_weight.reshape(lead + log_weight.shape), -1)

    @property
    def mean(self):
        return jax.nn.softmax(self.logits) @ self.loc

    @property
    def covariance_matrix(self):
        """The law of total variance: within-component covariance plus the spread of the means."""
        w = jax.nn.softmax(self.logits)
        within = jnp.einsum("k,kij,klj->il", w, self.scale_tril, self.scale_tril)
        centred = self.loc - self.mean[None]  # [K, D]
        return within + jnp.einsum("k,ki,kj->ij", w, centred, centred)


def density(params: dict) -> GaussianMixture:
    r"""The dream world's density :math:`q_\theta(x) = \sum_k \pi_k \mathcal{N}(x;\, \mu_k, L_k L_k^\top)`.

    Args:
        params: ``{"logits": [K], "loc": [K, D], "tril": [K, D, D]}`` (see the module docstring).

    Returns:
        A :class:`GaussianMixture` with event shape ``[D]`` (one Gaussian when :math:`K = 1`).
    """
    _check_params(params)
    raw = params["tril"]
    scale_tril = jnp.tril(raw, -1) + jax.vmap(jnp.diag)(jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1)))
    return GaussianMixture(params["logits"], params["loc"], scale_tril)


def real_world(x, params=None):
    """The world as it is: the data ``x [N, D]`` and nothing else (``params`` is unused)."""
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)


def dream_world(x, params):
    r"""The world as we wish it were: each :math:`x_n` drawn from :func:`density` ``(params)``."""
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", density(params), obs=x)


def init_mixture(key, x, num_components: int) -> dict:
    """Starting parameters: each component fitted to its own k-means cluster.

    The means are the cluster centres of k-means (scikit-learn's ``KMeans``, k-means++ seeding,
    the best of 4 starts), and each component starts with its cluster's share of the points as
    its weight and its cluster's own covariance (dividing by the cluster's size, plus a jitter
    of :math:`10^{-6}` times the data's average per-dimension variance on the diagonal), which is
    the start scikit-learn's own ``GaussianMixture`` uses. A cluster with fewer than ``D + 1``
    points, too few for a full covariance, starts isotropic with the data's average
    per-dimension variance instead.

    Why not simpler starts. Starting the means from data points instead stalled chapter 4's
    eight-component fit at a worse optimum, with two true components under one mean. Starting
    every component as wide as the whole data, with the means at the right centres, let Adam's
    first steps (about the learning rate each, whatever the gradient) carry a mean onto a
    neighbouring bump before the components narrowed: at learning rate 0.1 the same fit ended
    with one bump under two components and two under one at some seeds. Same key, same start.
    """
    check_key(key)
    x = _check_data(x)
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive integer; got {num_components!r}")
    if num_components > x.shape[0]:
        raise ValueError(f"num_components ({num_components}) exceeds the number of data points ({x.shape[0]})")
    points = np.asarray(x, np.float64)  # a few small steps: plain numpy, nothing to compile
    seed = int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))
    # scikit-learn's stubs type n_init as str only; it takes an int or "auto"
    kmeans = KMeans(num_components, n_init=4, random_state=seed)  # pyright: ignore[reportArgumentType]
    kmeans.fit(points)
    centres, labels = kmeans.cluster_centers_, np.asarray(kmeans.labels_, np.int64)  # [K, D], [N]
    n, d = points.shape
    spread = float(np.mean(np.var(points, axis=0)))  # the data's average per-dimension variance
    jitter = 1e-6 * spread if spread > 0 else 1e-6
    counts = np.bincount(labels, minlength=num_components)  # [K]
    trils = np.empty((num_components, d, d))
    for k in range(num_components):
        members = points[labels == k]
        if counts[k] >= d + 1:
            cov = np.cov(members.T, bias=True).reshape(d, d) + jitter * np.eye(d)
        else:  # too few points for a full covariance
            cov = (spread if spread > 0 else 1.0) * np.eye(d)
        chol = np.linalg.cholesky(cov)
        trils[k] = np.tril(chol, -1) + np.diag(np.log(np.diag(chol)))
    shares = np.maximum(counts, 1) / np.maximum(counts, 1).sum()  # an empty cluster keeps a little weight
    return {
        "logits": jnp.asarray(np.log(shares), jnp.float32),
        "loc": jnp.asarray(centres, jnp.float32),
        "tril": jnp.asarray(trils, jnp.float32),
    }


def objective(key, params: dict, x, truth: dist.Distribution | None = None) -> KLObjective:
    r"""The recipe for density estimation on data ``x [N, D]``, in nats per example.

    Without ``truth`` the single term, named ``"cross_entropy"``, is
    :math:`-\frac1N\sum_n \log q_\theta(x_n)` and ``dropped == ("x",)``; with the true density as
    base measure it is named ``"kl"`` and is :math:`\frac1N\sum_n \log p(x_n)/q_\theta(x_n)`, the
    Monte Carlo estimate of :math:`I[p;q_\theta]`. Deterministic given ``x`` (no latent variables).
    """
    x = _check_data(x)
    _check_params(params)
    return _objective(key, params, x, truth)


def _log_density(d: dist.Distribution, x):
    with jax.numpy_rank_promotion("allow"):  # NumPyro's own densities broadcast by rank
        return d.log_prob(x)


@jax.jit
def _objective(key, params: dict, x, truth) -> KLObjective:
    name = "cross_entropy" if truth is None else "kl"
    base = None if truth is None else {"x": functools.partial(_log_density, truth)}
    return kl_objective(key, real_world, dream_world, x, params, names={"x": name}, base_measure=base)


def loss_fn(truth: dist.Distribution | None = None):
    r"""A :func:`klbook.train.fit` loss: minimise the recipe, record ``cross_entropy`` (and ``kl``).

    With ``truth`` the loss is the KL and both terms are recorded, so the history shows
    :math:`\text{cross-entropy} - \text{KL} = -\frac1B\sum_b \log p(x_b)` at every step.
    """

    def loss(params, key, batch):
        ce = objective(key, params, batch)
        if truth is None:
            return ce.loss, dict(ce.terms)
        kl = objective(key, params, batch, truth)
        return kl.loss, {"kl": kl.terms["kl"], "cross_entropy": ce.terms["cross_entropy"]}

    return loss


def fit_density(
    key,
    x,
    num_components: int,
    *,
    truth: dist.Distribution | None = None,
    num_steps: int = 1000,
    learning_rate: float = 0.05,
    batch_size: int | None = None,
    progress: bool = False,
    devices: Devices = None,
) -> FitResult:
    """Fit a mixture of ``num_components`` Gaussians to ``x [N, D]`` through the recipe.

    Adam with a cosine-decayed learning rate from ``learning_rate``; the full data every step
    unless ``batch_size`` is given. Returns :class:`klbook.train.FitResult` (params, history
    of ``loss``, ``cross_entropy`` and, with ``truth``, ``kl``).
    ``devices`` splits each batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device); the batch size (``N`` when
    ``batch_size`` is None) must divide by their number, or a ``ValueError`` naming both is
    raised before anything compiles.
    """
    check_key(key)
    x = _check_data(x)
    k_init, k_fit = jax.random.split(key)
    params = init_mixture(k_init, x, num_components)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    return fit(
        k_fit,
        loss_fn(truth),
        params,
        num_steps=num_steps,
        optimizer=optimizer,
        data=x,
        batch_size=batch_size,
        progress=progress,
        devices=devices,
    )


class MixtureFit(NamedTuple):
    """The best of several trainings of one mixture (:func:`fit_density_restarts`).

    Attributes:
        params: the parameters of the run with the lowest final training cross-entropy.
        history: that run's ``cross_entropy`` (and, with ``truth``, ``kl``) at every step.
        final_cross_entropy: ``[num_inits]`` each run's training cross-entropy at its final
            parameters (nats per example), in the order of the initialisations.
        best: the index of the run kept.
    """

    params: dict
    history: dict
    final_cross_entropy: np.ndarray
    best: int


def fit_density_restarts(
    key,
    x,
    num_components: int,
    num_inits: int = 3,
    *,
    truth: dist.Distribution | None = None,
    num_steps: int = 1000,
    learning_rate: float = 0.05,
    devices: Devices = None,
) -> MixtureFit:
    """Fit ``num_inits`` mixtures from different starts at once and keep the best by training likelihood.

    Mixtures have local optima, so one start can end at a worse fit than the family allows. Each
    run starts from :func:`init_mixture` with its own key (k-means with its own seeds) and trains
    as :func:`fit_density` does, full data every step; the runs are stacked and trained in one
    compiled, vmapped loop (their losses summed, so each keeps its own gradient and Adam state).
    The run with the lowest training cross-entropy at its final parameters is returned. The
    runs share no randomness with :func:`fit_density` (same key, different starts).
    ``devices`` splits the rows of ``x`` over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device; ``N`` must divide by their number).

    Raises:
        ValueError: if ``num_inits`` is not a positive integer (and as :func:`init_mixture`).
    """
    check_key(key)
    x = _check_data(x)
    if isinstance(num_inits, bool) or not isinstance(num_inits, int) or num_inits < 1:
        raise ValueError(f"num_inits must be a positive integer; got {num_inits!r}")
    k_init, k_fit = jax.random.split(key)
    starts = [init_mixture(jax.random.fold_in(k_init, i), x, num_components) for i in range(num_inits)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *starts)
    one = loss_fn(truth)

    def loss(params, k, batch):
        losses, terms = jax.vmap(one, (0, None, None))(params, k, batch)
        return jnp.sum(losses), {f"{name}/{i}": v[i] for name, v in terms.items() for i in range(num_inits)}

    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    result = fit(
        k_fit, loss, stacked, num_steps=num_steps, optimizer=optimizer, data=x, progress=False, devices=devices
    )
    final = np.asarray(_final_cross_entropy(result.params, x), np.float64)  # [num_inits]
    best = int(np.argmin(final))
    params = jax.tree.map(lambda a: a[best], result.params)
    names = ("cross_entropy",) if truth is None else ("kl", "cross_entropy")
    history = {name: result.history[f"{name}/{best}"] for name in names}
    return MixtureFit(params, history, final, best)


@jax.jit
def _final_cross_entropy(stacked: dict, x) -> jax.Array:
    return jax.vmap(lambda th: -jnp.mean(density(th).log_prob(x)))(stacked)


def em_steps(params: dict, x, num_steps: int) -> tuple[dict, np.ndarray]:
    r"""Run expectation-maximisation on a Gaussian mixture from ``params``, in float64 (NumPy).

    Each step sets the responsibilities :math:`r_{nk} \propto \pi_k \mathcal N(x_n; \mu_k, \Sigma_k)`
    (the E step, which makes the augmented real world's :math:`p(c\mid x)` the dream world's
    posterior) and refits weights, means and covariances to them in closed form (the M step).
    Neither step can lower the average log-likelihood (Dempster, Laird & Rubin 1977), so EM run
    from a trained mixture measures how far its training could still go uphill: a fit at a
    maximum gains nothing.

    Args:
        params: mixture parameters (see the module docstring).
        x: data ``[N, D]``.
        num_steps: EM steps (a non-negative integer).

    Returns:
        ``(params, log_likelihood)``: the parameters after the steps (float32, same format) and
        the average log-likelihood of ``x`` in nats, float64, ``[num_steps + 1]``: before any
        step, then after each.
    """
    _check_params(params)
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != np.shape(params["loc"])[1] or not np.all(np.isfinite(x)):
        raise ValueError(
            f"x must be finite data of shape [N, D] with D = {np.shape(params['loc'])[1]}; got shape {x.shape}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer; got {num_steps!r}")
    # plain NumPy throughout: a few small steps, nothing worth compiling
    logits = np.asarray(params["logits"], np.float64)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    loc = np.asarray(params["loc"], np.float64)
    raw = np.asarray(params["tril"], np.float64)
    diag = np.exp(np.diagonal(raw, axis1=-2, axis2=-1))  # [K, D]
    chol = np.tril(raw, -1) + diag[:, :, None] * np.eye(raw.shape[-1])
    cov = chol @ np.swapaxes(chol, -1, -2)
    n, d = x.shape

    def log_joint(weights, loc, cov):  # [N, K]: log pi_k + log N(x_n; mu_k, Sigma_k)
        chol = np.linalg.cholesky(cov)  # [K, D, D]
        whiten = np.linalg.inv(chol)  # [K, D, D], small
        z = np.einsum("kij,nkj->nki", whiten, x[:, None, :] - loc[None])  # [N, K, D]
        log_det = np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), -1)  # [K]
        return np.log(weights) - log_det - 0.5 * d * np.log(2 * np.pi) - 0.5 * np.sum(z**2, -1)

    def average(lj):
        top = lj.max(1, keepdims=True)
        return float(np.mean(top[:, 0] + np.log(np.exp(lj - top).sum(1))))

    lj = log_joint(weights, loc, cov)
    history = [average(lj)]
    for _ in range(num_steps):
        resp = np.exp(lj - lj.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)  # [N, K]
        mass = resp.sum(0)  # [K]
        weights = mass / n
        loc = resp.T @ x / mass[:, None]
        centred = x[:, None, :] - loc[None]
        cov = np.einsum("nk,nki,nkj->kij", resp, centred, centred) / mass[:, None, None]
        lj = log_joint(weights, loc, cov)
        history.append(average(lj))
    chol = np.linalg.cholesky(cov)
    tril = np.tril(chol, -1) + np.log(np.diagonal(chol, axis1=-2, axis2=-1))[:, :, None] * np.eye(d)
    out = {
        "logits": jnp.asarray(np.log(weights), jnp.float32),
        "loc": jnp.asarray(loc, jnp.float32),
        "tril": jnp.asarray(tril, jnp.float32),
    }
    return out, np.asarray(history)


def entropy_mc(key, p: dist.Distribution, num_samples: int) -> MCEstimate:
    r"""Monte Carlo entropy :math:`H[p] \approx -\frac1S\sum_s \log p(x_s)`, :math:`x_s \sim p`, with its s.e.

    For densities without a closed-form entropy, such as Gaussian mixtures.
    """
    check_key(key)
    if not isinstance(p, dist.Distribution):
        raise TypeError(f"p must be a NumPyro distribution; got {type(p).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    return _entropy_mc(key, p, num_samples)


@functools.partial(jax.jit, static_argnums=2)
def _entropy_mc(key, p: dist.Distribution, num_samples: int) -> MCEstimate:
    with jax.numpy_rank_promotion("allow"):  # inside NumPyro's samplers and densities
        neg_log_p = -jnp.asarray(p.log_prob(p.sample(key, (num_samples,))))  # [S, *batch]
    return MCEstimate(jnp.mean(neg_log_p, 0), jnp.std(neg_log_p, 0, ddof=1) / jnp.sqrt(num_samples))


def gaussian_mle_kl(key, mean, cov, num_points: int, num_repeats: int) -> np.ndarray:
    r"""KL from a Gaussian truth to its maximum-likelihood fit, for ``num_repeats`` independent samples.

    Each repetition draws ``num_points`` points from :math:`p = \mathcal{N}(m, \Sigma)`, fits
    :math:`\hat q = \mathcal{N}(\bar x, S)` (sample mean, covariance dividing by ``N``: maximum
    likelihood in closed form) and returns :math:`I[p; \hat q]` (:func:`klbook.divergence.gaussian_kl`), so chapter 4
    can average many fits: Akaike's :math:`k/(2N)` with :math:`k = D + D(D+1)/2`, and exactly
    :func:`expected_gaussian_mle_kl`. Draws are float32 (JAX), the fit and KL float64.

    Returns:
        ``[num_repeats]`` float64 array of KLs in nats.
    """
    check_key(key)
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    chol = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)

    def one(k):  # sufficient statistics of one sample, accumulated in float32 about the true mean
        eps = jax.random.normal(k, (num_points, mean.shape[0])) @ chol.T  # [N, D]
        return jnp.mean(eps, 0), eps.T @ eps / num_points  # [D], [D, D]

    sums, squares = jax.lax.map(one, jax.random.split(key, num_repeats))
    sums, squares = np.asarray(sums, np.float64), np.asarray(squares, np.float64)
    out = np.empty(num_repeats)
    for r in range(num_repeats):
        s_hat = squares[r] - np.outer(sums[r], sums[r])  # S = mean of e e^T - e_bar e_bar^T
        out[r] = gaussian_kl(mean, cov, mean + sums[r], s_hat)
    return out


def expected_gaussian_mle_kl(dim: int, num_points: int) -> float:
    r"""Exact :math:`\langle I[p; \hat q] \rangle` over samples of size :math:`N` for a :math:`D`-dim Gaussian.

    With :math:`NS \sim \text{Wishart}(\Sigma, N-1)` independent of :math:`\bar x`,
    :math:`\langle S^{-1}\rangle = N\Sigma^{-1}/(N-D-2)` and
    :math:`\langle\log\det S\rangle = \log\det\Sigma + \sum_{i=1}^D \psi\big(\tfrac{N-i}{2}\big) + D\log\tfrac2N`,
    so

    .. math:: \tfrac12\Big[\frac{D(N+1)}{N-D-2} - D + \sum_{i=1}^D \psi\big(\tfrac{N-i}{2}\big) + D\log\frac2N\Big]
              = \frac{k}{2N} + O(N^{-2}), \quad k = D + \tfrac{D(D+1)}{2}.

    Needs ``num_points > dim + 2``.
    """
    from scipy.special import digamma

    d, n = int(dim), int(num_points)
    if n <= d + 2:
        raise ValueError(f"num_points must exceed dim + 2; got {n} for dim {d}")
    psi = sum(digamma((n - i) / 2.0) for i in range(1, d + 1))
    return float(0.5 * (d * (n + 1) / (n - d - 2) - d + psi + d * np.log(2.0 / n)))
