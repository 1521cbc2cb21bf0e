r"""Finite samples: the empirical distribution, histograms, and the train/held-out gap (appendix B).

We never hold the real world :math:`p`, only :math:`N` samples from it. Their empirical
distribution :math:`\hat p = \frac1N\sum_i \delta_{x_i}` is what training actually sees, and
the average negative log-likelihood is a KL from it plus a constant:

.. math:: -\frac1N\sum_{i=1}^N \log q(x_i) = -\langle \log q\rangle_{\hat p}
          = I[\hat p; q] + H[\hat p].

So maximum likelihood is minimum :math:`I[\hat p; q]`, and the trained model is judged on the
KL it was *not* trained on, :math:`I[p; q]`. For a histogram density on ``num_bins`` equal
bins of ``[low, high]`` with bin probabilities :math:`\pi_k`, both losses are exact sums over
bins: the training loss weights :math:`-\log(\pi_k K / (b - a))` by the empirical bin
frequencies, the held-out (expected over fresh data) loss by the true bin masses. Additive
smoothing :math:`\pi_k = (n_k + \alpha)/(N + K\alpha)`, the posterior mean under a symmetric
Dirichlet(:math:`\alpha`) prior, is the regulariser; :math:`\alpha = 0` is maximum likelihood.
:func:`histogram_gaps` measures both losses over a grid of sample sizes and smoothings, for
many independent samples at once (one ``vmap``).

:func:`fit_categorical` trains a categorical model by stochastic gradient descent on the average
negative log-likelihood, either on fresh draws at every step (an unbiased estimate of the
gradient of :math:`I[p; q]`) or on minibatches of one fixed sample reused for many epochs (an
estimate of the gradient of :math:`I[\hat p; q]`), and records the exact held-out KL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from klbook._checks import check_finite, check_simplex, is_concrete

__all__ = [
    "empirical",
    "bin_counts",
    "additive_smoothing",
    "bin_masses",
    "histogram_loss",
    "Gaps",
    "histogram_gaps",
    "categorical_nll",
    "categorical_kl",
    "SGDRuns",
    "fit_categorical",
]


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def _interval(low: float, high: float) -> None:
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high; got low={low}, high={high}")


def empirical(x, num_categories: int) -> jax.Array:
    r"""The empirical distribution :math:`\hat p_k = \frac1N \#\{i: x_i = k\}` of categorical data.

    Args:
        x: integer labels ``[N]`` in ``0..num_categories-1``.
        num_categories: ``K``.

    Returns:
        probabilities ``[K]`` (float32), summing to one.
    """
    k = _positive_int(num_categories, "num_categories")
    x = jnp.asarray(x)
    if x.ndim != 1 or x.shape[0] == 0 or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"x must be a non-empty 1-D integer array of labels; got shape {x.shape}, dtype {x.dtype}")
    if is_concrete(x):  # numpy, not jnp: under a trace even a concrete array's min is staged
        low, high = int(np.min(np.asarray(x))), int(np.max(np.asarray(x)))
        if low < 0 or high >= k:
            raise ValueError(f"labels must lie in 0..{k - 1}; got values from {low} to {high}")
    return jnp.bincount(x, length=k).astype(jnp.float32) / x.shape[0]


def bin_counts(x, num_bins: int, low: float, high: float, num_used=None) -> jax.Array:
    """How many of the first ``num_used`` samples (all by default) fall in each of ``num_bins`` bins.

    Bins split ``[low, high]`` equally; values outside are clipped into the end bins. With
    ``num_used`` a traced integer, many sample sizes share one array (``vmap`` over it).

    Args:
        x: samples ``[N]``.
        num_bins: ``K``.
        low, high: the interval the histogram covers.
        num_used: use ``x[:num_used]`` only (``1 <= num_used <= N``).

    Returns:
        counts ``[K]`` (float32).
    """
    k = _positive_int(num_bins, "num_bins")
    _interval(low, high)
    x = jnp.asarray(x)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 1-D array of samples; got shape {x.shape}")
    check_finite(x, "x")
    used = jnp.arange(x.shape[0]) < (x.shape[0] if num_used is None else num_used)
    index = jnp.clip(jnp.floor((x - low) / (high - low) * k).astype(jnp.int32), 0, k - 1)
    return jnp.zeros(k, jnp.float32).at[index].add(used.astype(jnp.float32))


def additive_smoothing(counts, alpha) -> jax.Array:
    r"""Bin probabilities :math:`\pi_k = (n_k + \alpha) / (N + K\alpha)`.

    The posterior mean of :math:`\pi` under a symmetric Dirichlet(:math:`\alpha`) prior
    (Laplace's rule of succession for :math:`\alpha = 1`); :math:`\alpha = 0` is maximum
    likelihood, :math:`\hat p` itself, and :math:`\alpha \to \infty` the uniform histogram.

    Args:
        counts: ``[K]`` non-negative counts, not all zero.
        alpha: non-negative pseudo-count (a scalar).
    """
    counts = jnp.asarray(counts, jnp.float32)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D, one count per bin; got shape {counts.shape}")
    if is_concrete(counts) and (np.any(np.asarray(counts) < 0) or float(np.sum(np.asarray(counts))) <= 0):
        raise ValueError("counts must be non-negative and not all zero")
    if jnp.ndim(alpha) != 0:
        raise ValueError(f"alpha must be a scalar; got shape {jnp.shape(alpha)}")
    if is_concrete(alpha) and not (np.isfinite(np.asarray(alpha)) and np.asarray(alpha) >= 0):
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha!r}")
    return (counts + alpha) / (jnp.sum(counts) + counts.shape[0] * alpha)


def bin_masses(cdf: Callable[[jax.Array], jax.Array], num_bins: int, low: float, high: float) -> jax.Array:
    """The true probability of each bin, :math:`P_k = F(e_{k+1}) - F(e_k)`, from a CDF ``F``.

    Mass outside ``[low, high]`` goes to the end bins (as :func:`bin_counts` clips samples).

    Returns:
        ``[K]`` probabilities summing to one.
    """
    k = _positive_int(num_bins, "num_bins")
    _interval(low, high)
    edges = jnp.linspace(low, high, k + 1)
    upper = jnp.asarray(cdf(edges)).at[0].set(0.0).at[-1].set(1.0)
    return jnp.diff(upper)


def histogram_loss(probs, weights, low: float, high: float) -> jax.Array:
    r"""Cross-entropy of the histogram density: :math:`-\sum_k w_k \log\frac{K\pi_k}{b - a}` nats.

    With ``weights`` the empirical bin frequencies this is the training loss (the average
    negative log-likelihood of the samples); with the true bin masses it is the expected loss
    on fresh data. Terms with :math:`w_k = 0` are zero; :math:`w_k > 0 = \pi_k` gives ``inf``.

    Args:
        probs: the histogram's bin probabilities ``[K]``.
        weights: bin weights ``[K]`` summing to one.
        low, high: the interval the histogram covers (its density is :math:`K\pi_k/(b - a)`).
    """
    _interval(low, high)
    probs, weights = jnp.asarray(probs), jnp.asarray(weights)
    if probs.ndim != 1 or probs.shape != weights.shape:
        raise ValueError(f"probs and weights must be 1-D of one length; got {probs.shape} and {weights.shape}")
    check_simplex(probs, "probs")
    check_simplex(weights, "weights")
    log_density = jnp.log(probs) + jnp.log(probs.shape[0] / (high - low))
    return -jnp.sum(jnp.where(weights > 0, weights * log_density, 0.0))


class Gaps(NamedTuple):
    """Training and held-out losses of smoothed histograms, nats, ``[repeats, sizes, alphas]``."""

    train: np.ndarray
    heldout: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        """Held-out minus training loss: how much the training loss flatters the model."""
        return self.heldout - self.train


def histogram_gaps(
    samples,
    cdf: Callable[[jax.Array], jax.Array],
    sizes: Sequence[int],
    num_bins: int,
    alphas: Sequence[float],
    low: float = 0.0,
    high: float = 1.0,
) -> Gaps:
    """Fit a histogram to each row of ``samples``, for every sample size and smoothing.

    Row ``r`` holds independent draws from the real world; the fit for size ``N`` uses its
    first ``N`` values (so the sizes share their draws, which steadies comparisons between
    them). The held-out loss is exact, against the true bin masses from ``cdf``. One compiled
    ``vmap`` over rows, sizes and smoothings.

    Args:
        samples: ``[R, N_max]`` draws, ``R`` independent samples of size ``N_max >= max(sizes)``.
        cdf: the real world's cumulative distribution function.
        sizes: sample sizes ``N`` to fit at.
        num_bins: ``K``.
        alphas: additive smoothings (0 is maximum likelihood).
        low, high: the interval the histogram covers.

    Returns:
        :class:`Gaps` with ``train`` and ``heldout`` ``[R, len(sizes), len(alphas)]``.
    """
    k = _positive_int(num_bins, "num_bins")
    samples = jnp.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be [R, N_max] with R >= 1; got shape {samples.shape}")
    check_finite(samples, "samples")
    sizes_ = [_positive_int(n, "each size") for n in sizes]
    alphas_ = np.asarray(alphas, np.float32)
    if not sizes_ or alphas_.ndim != 1 or alphas_.shape[0] == 0:
        raise ValueError("sizes and alphas must be non-empty sequences")
    if max(sizes_) > samples.shape[1]:
        raise ValueError(f"a size of {max(sizes_)} needs at least that many draws per row; got {samples.shape[1]}")
    if np.any(~np.isfinite(alphas_)) or np.any(alphas_ < 0):
        raise ValueError(f"alphas must be finite and >= 0; got {list(alphas)}")
    masses = bin_masses(cdf, k, low, high)  # [K]

    def one(x, n, alpha):  # x [N_max], n and alpha scalars
        counts = bin_counts(x, k, low, high, num_used=n)
        probs = additive_smoothing(counts, alpha)
        return histogram_loss(probs, counts / n, low, high), histogram_loss(probs, masses, low, high)

    grid = jax.vmap(jax.vmap(jax.vmap(one, (None, None, 0)), (None, 0, None)), (0, None, None))
    train, heldout = jax.jit(grid)(samples, jnp.asarray(sizes_), jnp.asarray(alphas_))
    return Gaps(np.asarray(train), np.asarray(heldout))


def categorical_nll(logits, x) -> jax.Array:
    r"""Average negative log-likelihood :math:`-\frac1B\sum_i \log \mathrm{softmax}(\theta)_{x_i}`, nats.

    Averaged over fresh draws :math:`x_i \sim p`, it (and its gradient in ``logits``) is an
    unbiased estimate of :math:`I[p; q_\theta] + H[p]` (and of the gradient of :math:`I[p; q_\theta]`).

    Args:
        logits: ``[K]``.
        x: integer draws ``[B]`` in ``0..K-1``.
    """
    return -jnp.mean(jax.nn.log_softmax(jnp.asarray(logits))[jnp.asarray(x)])


def categorical_kl(probs, logits) -> jax.Array:
    r""":math:`I[p; q_\theta] = \sum_k p_k \log(p_k / \mathrm{softmax}(\theta)_k)`, nats (0 log 0 = 0).

    Args:
        probs: the real world's probabilities ``[K]``.
        logits: the model's logits ``[..., K]`` (batched over leading axes).
    """
    log_q = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)  # [..., K]
    probs = jnp.broadcast_to(jnp.asarray(probs), log_q.shape)  # [..., K]
    log_p = jnp.log(jnp.where(probs > 0, probs, 1.0))
    return jnp.sum(jnp.where(probs > 0, probs * (log_p - log_q), 0.0), axis=-1)


class SGDRuns(NamedTuple):
    """Independent training runs of :func:`fit_categorical`.

    Attributes:
        heldout_kl: exact :math:`I[p; q_\theta]` after every step, nats, ``[runs, steps]``.
        logits: the final logits, ``[runs, K]``.
        samples: the fixed sample each run reused, ``[runs, sample_size]``, or ``None`` (fresh draws).
    """

    heldout_kl: np.ndarray
    logits: np.ndarray
    samples: np.ndarray | None


def fit_categorical(
    key: jax.Array,
    probs,
    *,
    num_steps: int,
    batch_size: int,
    sample_size: int | None = None,
    learning_rate: float = 0.05,
    num_runs: int = 1,
) -> SGDRuns:
    """Fit softmax logits to draws from ``probs`` by Adam on minibatch negative log-likelihoods.

    Every run takes ``num_steps`` steps on minibatches of ``batch_size`` draws, with a learning
    rate that decays linearly from ``learning_rate`` to zero, starting from the uniform model.
    With ``sample_size=None`` each minibatch is fresh (``num_steps * batch_size`` draws in one
    pass); otherwise each run draws one sample of ``sample_size`` draws and cycles through it
    epoch after epoch (a new shuffle each epoch), the same step budget spent reusing draws.
    Runs are independent (``vmap`` over keys) and compiled together.

    Returns:
        :class:`SGDRuns`.
    """
    steps = _positive_int(num_steps, "num_steps")
    batch = _positive_int(batch_size, "batch_size")
    runs = _positive_int(num_runs, "num_runs")
    probs = jnp.asarray(probs)
    if probs.ndim != 1:
        raise ValueError(f"probs must be 1-D, one probability per category; got shape {probs.shape}")
    check_simplex(probs, "probs")
    if sample_size is not None:
        n = _positive_int(sample_size, "sample_size")
        if n % batch:
            raise ValueError(f"sample_size must be a multiple of batch_size; got {n} and {batch}")
    lr = float(learning_rate)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a positive number; got {learning_rate!r}")
    k = probs.shape[0]
    log_p = jnp.log(probs)
    optimizer = optax.adam(optax.linear_schedule(lr, 0.0, steps))

    def one(run_key):
        k_sample, k_steps = jax.random.split(run_key)
        fixed = None if sample_size is None else jax.random.categorical(k_sample, log_p, shape=(sample_size,))

        def step(carry, t):
            theta, state = carry
            if fixed is None:  # fresh draws: a new minibatch from p
                x = jax.random.categorical(jax.random.fold_in(k_steps, t), log_p, shape=(batch,))
            else:  # reuse: minibatch i of epoch e, one shuffle of the fixed sample per epoch
                assert sample_size is not None  # fixed was drawn with sample_size rows
                per_epoch = sample_size // batch
                order = jax.random.permutation(jax.random.fold_in(k_steps, t // per_epoch), sample_size)
                x = fixed[jax.lax.dynamic_slice(order, ((t % per_epoch) * batch,), (batch,))]
            grad = jax.grad(categorical_nll)(theta, x)
            updates, state = optimizer.update(grad, state, theta)
            theta = optax.apply_updates(theta, updates)
            return (theta, state), categorical_kl(probs, theta)

        theta0 = jnp.zeros(k)
        (theta, _), curve = jax.lax.scan(step, (theta0, optimizer.init(theta0)), jnp.arange(steps))
        return curve, theta, (jnp.zeros(0, jnp.int32) if fixed is None else fixed)

    curve, theta, fixed = jax.jit(jax.vmap(one))(jax.random.split(key, runs))
    return SGDRuns(np.asarray(curve), np.asarray(theta), None if sample_size is None else np.asarray(fixed))
