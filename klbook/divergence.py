r"""The KL divergence I[p;q], its Monte Carlo estimate, entropy and cross-entropy.

Chapters 1 and 2. The KL divergence from ``p`` to ``q`` is the expected log ratio under ``p``:

.. math:: I[p;q] = \left\langle \log \frac{p(x)}{q(x)} \right\rangle_{p(x)} \geq 0,

in nats. The argument order is the math: we *sample from* ``p`` (the world as it is) and
score under both. Where ``p`` puts mass on an outcome that ``q`` rules out, the divergence is
``+inf`` (never NaN): a single such outcome is infinite evidence against ``q``.

:func:`kl` dispatches on the two NumPyro distribution types to a closed form (each cites its
source); :func:`mc_kl` estimates the same quantity by sampling and reports a standard error.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import betaln, digamma, gammaln, xlogy

from klbook._checks import (
    broadcast_batch,
    check_finite,
    check_positive,
    check_probability,
    check_simplex,
    is_concrete,
)

__all__ = ["kl", "mc_kl", "entropy", "cross_entropy", "log_prob", "register_kl", "MCEstimate", "check_key"]

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}


def register_kl(type_p: type, type_q: type) -> Callable:
    """Register a closed form ``fn(p, q) -> array`` for the pair ``(type_p, type_q)``.

    The most specific registered pair along both classes' MROs wins. Use this to teach
    :func:`kl` a pair the book does not cover.
    """

    def decorator(fn: Callable) -> Callable:
        _KL_REGISTRY[(type_p, type_q)] = fn
        return fn

    return decorator


def _lookup(p, q) -> Callable | None:
    for tp in type(p).__mro__:
        for tq in type(q).__mro__:
            fn = _KL_REGISTRY.get((tp, tq))
            if fn is not None:
                return fn
    return None


def _check_distribution(d, name: str) -> None:
    if not isinstance(d, dist.Distribution):
        raise TypeError(f"{name} must be a numpyro Distribution; got {type(d).__name__}")


def kl(p: dist.Distribution, q: dist.Distribution) -> jnp.ndarray:
    r"""Closed-form KL divergence :math:`I[p;q] = \langle \log p/q \rangle_p` in nats.

    Batched: the result has the broadcast batch shape of ``p`` and ``q`` (event dimensions are
    summed). ``+inf`` where ``p`` puts mass where ``q`` has none; never NaN.

    Supported pairs: Bernoulli, Categorical, Binomial (equal ``total_count``), Poisson,
    Normal, MultivariateNormal (full), Independent(Normal) ("diagonal"; also against a full
    MultivariateNormal), Beta, Gamma, Exponential, Dirichlet, Uniform, and any
    ``Independent``/``expand`` wrapping of these.

    Example:
        >>> import numpyro.distributions as dist
        >>> float(kl(dist.Bernoulli(probs=1.0), dist.Bernoulli(probs=0.5)))  # ln 2
        0.693...

    Args:
        p: the distribution we average under (the world as it is).
        q: the distribution we compare against (the world as we wish it were).

    Returns:
        Array of shape ``broadcast(p.batch_shape, q.batch_shape)``.

    Raises:
        TypeError: if either argument is not a NumPyro distribution, or the pair has no closed
            form here (the message names both types and points at :func:`mc_kl`).
        ValueError: if batch shapes do not broadcast, event shapes differ, or a parameter is
            invalid (probabilities outside [0, 1], non-finite values, non-positive scales).
    """
    _check_distribution(p, "p")
    _check_distribution(q, "q")
    batch = broadcast_batch(p.batch_shape, q.batch_shape)
    if tuple(p.event_shape) != tuple(q.event_shape):
        raise ValueError(
            f"event shapes of p {tuple(p.event_shape)} and q {tuple(q.event_shape)} differ: "
            "the two distributions must be over the same random variable"
        )
    fn = _lookup(p, q)
    if fn is None:
        raise TypeError(
            f"klbook.kl has no closed form for I[{type(p).__name__}; {type(q).__name__}]; "
            "estimate it by sampling with klbook.mc_kl(key, p, q, num_samples)"
        )
    return jnp.broadcast_to(fn(p, q), batch)


# --------------------------------------------------------------------------------------------
# Discrete distributions: a sum over outcomes with 0 log 0 = 0 and a log(a/0) = +inf.


def _safe_log(prob):
    """log of probabilities with log 0 handled: (safe finite log, is_zero mask)."""
    zero = prob <= 0
    return jnp.log(jnp.where(zero, 1.0, prob)), zero


def _from_logs(log_prob):
    zero = jnp.isneginf(log_prob)
    return jnp.where(zero, 0.0, log_prob), zero


def _outcome_kl(prob_p, log_p, zero_p, log_q, zero_q, axis=-1):
    r"""Sum over outcomes of :math:`p_k (\log p_k - \log q_k)` with the boundary conventions.

    ``log_p``/``log_q`` are finite stand-ins (0 where the probability is zero) so that the
    gradient never meets ``log 0``; the masks put in the exact boundary values.
    """
    live = ~zero_p
    term = jnp.where(live, prob_p * (log_p - log_q), 0.0)
    term = jnp.where(live & zero_q, jnp.inf, term)
    return jnp.sum(term, axis=axis)


def _bernoulli_outcomes(d):
    """Probabilities and safe logs of the outcomes (0, 1) stacked on a new last axis."""
    if isinstance(d, dist.BernoulliLogits):
        check_finite(jnp.where(jnp.isinf(d.logits), 0.0, d.logits), "Bernoulli logits")
        logs = jnp.stack([jax.nn.log_sigmoid(-d.logits), jax.nn.log_sigmoid(d.logits)], -1)
        safe, zero = _from_logs(logs)
        return jnp.exp(logs), safe, zero
    check_probability(d.probs, "Bernoulli probs")
    probs = jnp.stack([1.0 - d.probs, d.probs], -1)
    safe, zero = _safe_log(probs)
    return probs, safe, zero


def _categorical_outcomes(d):
    if isinstance(d, dist.CategoricalLogits):
        check_finite(jnp.where(jnp.isneginf(d.logits), 0.0, d.logits), "Categorical logits")
        logs = jax.nn.log_softmax(d.logits, -1)
        safe, zero = _from_logs(logs)
        return jnp.exp(logs), safe, zero
    check_simplex(d.probs, "Categorical probs")
    safe, zero = _safe_log(d.probs)
    return d.probs, safe, zero


def _kl_bernoulli(p, q):
    # Cover & Thomas (2006), Elements of Information Theory, eq. 2.26, two outcomes.
    pp, lp, zp = _bernoulli_outcomes(p)
    _, lq, zq = _bernoulli_outcomes(q)
    return _outcome_kl(*jnp.broadcast_arrays(pp, lp, zp, lq, zq))


for _tp in (dist.BernoulliProbs, dist.BernoulliLogits):
    for _tq in (dist.BernoulliProbs, dist.BernoulliLogits):
        register_kl(_tp, _tq)(_kl_bernoulli)


def _kl_categorical(p, q):
    # Cover & Thomas (2006), eq. 2.26: sum_k p_k log(p_k / q_k).
    pp, lp, zp = _categorical_outcomes(p)
    _, lq, zq = _categorical_outcomes(q)
    if pp.shape[-1] != lq.shape[-1]:
        raise ValueError(
            f"p has {pp.shape[-1]} categories but q has {lq.shape[-1]}: "
            "the two distributions must be over the same outcomes"
        )
    pp, lp, zp, lq, zq = jnp.broadcast_arrays(pp, lp, zp, lq, zq)
    return _outcome_kl(pp, lp, zp, lq, zq)


for _tp in (dist.CategoricalProbs, dist.CategoricalLogits):
    for _tq in (dist.CategoricalProbs, dist.CategoricalLogits):
        register_kl(_tp, _tq)(_kl_categorical)


def _kl_binomial(p, q):
    # n independent Bernoulli trials: I = n I[Bern(p); Bern(q)] (chain rule, chapter 2).
    n_p, n_q = p.total_count, q.total_count
    check_finite(n_p, "Binomial total_count of p")
    check_finite(n_q, "Binomial total_count of q")
    if is_concrete(n_p) and is_concrete(n_q) and not np.all(np.asarray(n_p) == np.asarray(n_q)):
        raise ValueError(
            "klbook.kl needs Binomials with equal total_count; got "
            f"{np.asarray(n_p).tolist()} and {np.asarray(n_q).tolist()} (use klbook.mc_kl)"
        )
    bern = lambda d: (  # noqa: E731
        dist.BernoulliLogits(d.logits) if isinstance(d, dist.BinomialLogits) else dist.BernoulliProbs(d.probs)
    )
    return n_p * _kl_bernoulli(bern(p), bern(q))


for _tp in (dist.BinomialProbs, dist.BinomialLogits):
    for _tq in (dist.BinomialProbs, dist.BinomialLogits):
        register_kl(_tp, _tq)(_kl_binomial)


@register_kl(dist.Poisson, dist.Poisson)
def _kl_poisson(p, q):
    # sum_k Pois(k; a) log[Pois(k; a)/Pois(k; b)] = a log(a/b) - a + b.
    a, b = p.rate, q.rate
    check_finite(a, "Poisson rate of p")
    check_finite(b, "Poisson rate of q")
    la, za = _safe_log(a)
    lb, zb = _safe_log(b)
    out = jnp.where(za, 0.0, a * (la - lb)) - a + b
    return jnp.where(~za & zb, jnp.inf, out)


# --------------------------------------------------------------------------------------------
# Continuous distributions.


@register_kl(dist.Normal, dist.Normal)
def _kl_normal(p, q):
    # Kullback (1959); e.g. Kingma & Welling (2014), appendix B, for one dimension.
    for d, name in ((p, "p"), (q, "q")):
        check_finite(d.loc, f"Normal loc of {name}")
        check_positive(d.scale, f"Normal scale of {name}")
    ratio = p.scale / q.scale
    return 0.5 * (ratio**2 + ((p.loc - q.loc) / q.scale) ** 2 - 1.0) - jnp.log(ratio)


def _mvn_parts(d, name):
    if isinstance(d, dist.MultivariateNormal):
        check_finite(d.loc, f"MultivariateNormal loc of {name}")
        check_finite(d.scale_tril, f"MultivariateNormal scale_tril of {name}")
        return d.loc, d.scale_tril
    # Independent(Normal, 1): a diagonal covariance.
    base = d.base_dist
    check_finite(base.loc, f"Normal loc of {name}")
    check_positive(base.scale, f"Normal scale of {name}")
    loc, scale = jnp.broadcast_arrays(base.loc, base.scale)
    return loc, scale[..., :, None] * jnp.eye(scale.shape[-1], dtype=scale.dtype)


def _kl_mvn(p, q):
    # Closed form for two Gaussians, e.g. Rasmussen & Williams (2006), eq. A.23, via Cholesky
    # factors: 1/2 [tr(Sq^-1 Sp) + (mq-mp)^T Sq^-1 (mq-mp) - k + log|Sq| - log|Sp|].
    mp, lp = _mvn_parts(p, "p")
    mq, lq = _mvn_parts(q, "q")
    k = mp.shape[-1]
    batch = jnp.broadcast_shapes(mp.shape[:-1], lp.shape[:-2], mq.shape[:-1], lq.shape[:-2])
    mp, mq = (jnp.broadcast_to(m, batch + (k,)) for m in (mp, mq))
    lp, lq = (jnp.broadcast_to(m, batch + (k, k)) for m in (lp, lq))
    m = solve_triangular(lq, lp, lower=True)  # Lq^-1 Lp   [..., k, k]
    trace = jnp.sum(m**2, axis=(-2, -1))
    z = solve_triangular(lq, (mq - mp)[..., None], lower=True)[..., 0]  # [..., k]
    maha = jnp.sum(z**2, -1)
    diag_p = jnp.diagonal(lp, axis1=-2, axis2=-1)
    diag_q = jnp.diagonal(lq, axis1=-2, axis2=-1)
    log_det = 2.0 * (jnp.sum(jnp.log(jnp.abs(diag_q)), -1) - jnp.sum(jnp.log(jnp.abs(diag_p)), -1))
    return 0.5 * (trace + maha - k + log_det)


register_kl(dist.MultivariateNormal, dist.MultivariateNormal)(_kl_mvn)


@register_kl(dist.Independent, dist.Independent)
def _kl_independent(p, q):
    # Independent coordinates: the joint KL is the sum of the per-coordinate KLs (chapter 2).
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise ValueError(
            "Independent distributions reinterpret different numbers of batch dims: "
            f"{p.reinterpreted_batch_ndims} and {q.reinterpreted_batch_ndims}"
        )
    inner = kl(p.base_dist, q.base_dist)
    return jnp.sum(inner, axis=tuple(range(-p.reinterpreted_batch_ndims, 0)))


def _kl_diag_vs_full(p, q):
    for d in (p, q):
        if isinstance(d, dist.Independent) and not (
            isinstance(d.base_dist, dist.Normal) and d.reinterpreted_batch_ndims == 1
        ):
            raise TypeError(
                f"klbook.kl has no closed form for I[{type(p).__name__}; {type(q).__name__}] "
                "unless the Independent wraps a Normal over one dimension; use klbook.mc_kl"
            )
    return _kl_mvn(p, q)


register_kl(dist.Independent, dist.MultivariateNormal)(_kl_diag_vs_full)
register_kl(dist.MultivariateNormal, dist.Independent)(_kl_diag_vs_full)


@register_kl(dist.ExpandedDistribution, dist.Distribution)
def _kl_expanded_p(p, q):
    return kl(p.base_dist, q)


@register_kl(dist.Distribution, dist.ExpandedDistribution)
def _kl_expanded_q(p, q):
    return kl(p, q.base_dist)


@register_kl(dist.ExpandedDistribution, dist.ExpandedDistribution)
def _kl_expanded_both(p, q):
    return kl(p.base_dist, q.base_dist)


@register_kl(dist.Beta, dist.Beta)
def _kl_beta(p, q):
    # Penny (2001), "KL-divergences of Normal, Gamma, Dirichlet and Wishart densities".
    a1, b1, a2, b2 = p.concentration1, p.concentration0, q.concentration1, q.concentration0
    for v, what in ((a1, "p"), (b1, "p"), (a2, "q"), (b2, "q")):
        check_positive(v, f"Beta concentration of {what}")
    return (
        betaln(a2, b2)
        - betaln(a1, b1)
        + (a1 - a2) * digamma(a1)
        + (b1 - b2) * digamma(b1)
        + (a2 - a1 + b2 - b1) * digamma(a1 + b1)
    )


@register_kl(dist.Gamma, dist.Gamma)
def _kl_gamma(p, q):
    # Penny (2001), shape/rate parameterisation.
    a1, r1, a2, r2 = p.concentration, p.rate, q.concentration, q.rate
    for v, what in ((a1, "p concentration"), (r1, "p rate"), (a2, "q concentration"), (r2, "q rate")):
        check_positive(v, f"Gamma {what}")
    return (
        (a1 - a2) * digamma(a1)
        - gammaln(a1)
        + gammaln(a2)
        + a2 * (jnp.log(r1) - jnp.log(r2))
        + a1 * (r2 - r1) / r1
    )


@register_kl(dist.Exponential, dist.Exponential)
def _kl_exponential(p, q):
    # Gamma(1, r) special case: log(r_p / r_q) + r_q / r_p - 1.
    check_positive(p.rate, "Exponential rate of p")
    check_positive(q.rate, "Exponential rate of q")
    ratio = q.rate / p.rate
    return ratio - jnp.log(ratio) - 1.0


@register_kl(dist.Dirichlet, dist.Dirichlet)
def _kl_dirichlet(p, q):
    # Penny (2001), Dirichlet section.
    a, b = p.concentration, q.concentration
    check_positive(a, "Dirichlet concentration of p")
    check_positive(b, "Dirichlet concentration of q")
    a0 = jnp.sum(a, -1)
    return (
        gammaln(a0)
        - jnp.sum(gammaln(a), -1)
        - gammaln(jnp.sum(b, -1))
        + jnp.sum(gammaln(b), -1)
        + jnp.sum((a - b) * (digamma(a) - digamma(a0)[..., None]), -1)
    )


@register_kl(dist.Uniform, dist.Uniform)
def _kl_uniform(p, q):
    # log of the ratio of widths when [a_p, b_p] lies inside [a_q, b_q]; +inf otherwise.
    for d, name in ((p, "p"), (q, "q")):
        check_finite(d.low, f"Uniform low of {name}")
        check_finite(d.high, f"Uniform high of {name}")
    inside = (q.low <= p.low) & (p.high <= q.high)
    out = jnp.log(q.high - q.low) - jnp.log(p.high - p.low)
    return jnp.where(inside, out, jnp.inf)


# --------------------------------------------------------------------------------------------
# Entropy, cross-entropy and the Monte Carlo estimate.


def entropy(p: dist.Distribution) -> jnp.ndarray:
    r"""Entropy :math:`H[p] = -\langle \log p \rangle_p` in nats (differential for densities).

    For discrete ``p`` with zero-probability outcomes, :math:`0 \log 0 = 0` (no NaN).
    A differential entropy depends on the units of ``x`` (appendix A); a KL does not.

    Raises:
        TypeError: if ``p`` is not a NumPyro distribution or has no closed-form entropy.
    """
    _check_distribution(p, "p")
    if isinstance(p, (dist.BernoulliProbs, dist.BernoulliLogits)):
        probs, log, zero = _bernoulli_outcomes(p)
    elif isinstance(p, (dist.CategoricalProbs, dist.CategoricalLogits)):
        probs, log, zero = _categorical_outcomes(p)
    else:
        try:
            return p.entropy()
        except NotImplementedError:
            raise TypeError(
                f"klbook.entropy has no closed form for {type(p).__name__}; "
                "estimate it by sampling: -p.log_prob(p.sample(key, (n,))).mean(0)"
            ) from None
    return 0.0 - jnp.sum(jnp.where(zero, 0.0, probs * log), -1)  # 0.0 - : no "-0.0"


def cross_entropy(p: dist.Distribution, q: dist.Distribution) -> jnp.ndarray:
    r"""Cross-entropy :math:`H[p, q] = -\langle \log q \rangle_p = H[p] + I[p;q]` in nats.

    Computed through the decomposition the book teaches, so it is ``+inf`` exactly when the
    KL is. Raises as :func:`kl` and :func:`entropy` do.
    """
    return entropy(p) + kl(p, q)


class MCEstimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (both in nats, same shape)."""

    value: jnp.ndarray
    stderr: jnp.ndarray


def check_key(key) -> None:
    """Raise ``TypeError`` unless ``key`` is a JAX PRNG key (typed, or a raw uint32 pair)."""
    if isinstance(key, jax.Array) or isinstance(key, jax.core.Tracer):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return
        if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
            return
    raise TypeError(
        f"key must be a JAX PRNG key such as jax.random.key(0); got {type(key).__name__}"
        + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else "")
    )


def log_prob(d: dist.Distribution, x) -> jnp.ndarray:
    r"""Exact :math:`\log d(x)`: ``-inf`` outside the support and at zero-probability outcomes.

    NumPyro clamps Bernoulli/Binomial probabilities away from 0 and 1 and does not mask a
    density outside its support, which is right for training but wrong for evidence: a tail
    from a double-headed coin must score ``-inf``, not ``-15``. Used by :func:`mc_kl` and
    :mod:`klbook.evidence`.
    """
    _check_distribution(d, "d")
    x = jnp.asarray(x)
    # NumPyro's own densities broadcast by rank promotion; allow it for them (klbook's own
    # arithmetic is tested with rank promotion raised).
    with jax.numpy_rank_promotion("allow"):
        return _log_prob(d, x)


def _log_prob(d, x):
    if isinstance(d, dist.BernoulliProbs):
        lp = xlogy(x, d.probs) + xlogy(1.0 - x, 1.0 - d.probs)
    elif isinstance(d, dist.BinomialProbs):
        n = d.total_count
        log_choose = gammaln(n + 1.0) - gammaln(x + 1.0) - gammaln(n - x + 1.0)
        lp = log_choose + xlogy(x, d.probs) + xlogy(n - x, 1.0 - d.probs)
    elif isinstance(d, dist.CategoricalProbs):
        safe = jnp.clip(x, 0, d.probs.shape[-1] - 1).astype(jnp.int32)
        probs = jnp.broadcast_to(d.probs, safe.shape + d.probs.shape[-1:])
        lp = jnp.log(jnp.take_along_axis(probs, safe[..., None], -1)[..., 0])
    else:
        lp = d.log_prob(x)
    inside = d.support(x)
    extra = inside.ndim - lp.ndim
    if extra > 0:
        inside = jnp.all(inside, axis=tuple(range(-extra, 0)))
    return jnp.where(inside, lp, -jnp.inf)


def mc_kl(key, p: dist.Distribution, q: dist.Distribution, num_samples: int) -> MCEstimate:
    r"""Monte Carlo estimate of :math:`I[p;q]` with its standard error.

    .. math:: \hat I = \frac1N \sum_{n=1}^N \log\frac{p(x_n)}{q(x_n)},\quad x_n \sim p,
              \qquad \text{s.e.} = \frac{\mathrm{sd}_n[\log p(x_n)/q(x_n)]}{\sqrt N}.

    Samples are reparameterised when ``p`` allows it, so the estimate is differentiable in
    ``p``'s parameters. A sample outside ``q``'s support makes the estimate ``+inf`` (with
    standard error 0: one such sample proves the divergence is infinite).

    Args:
        key: a JAX PRNG key.
        p, q: NumPyro distributions with the same event shape and broadcastable batch shapes.
        num_samples: ``N >= 2``.

    Returns:
        :class:`MCEstimate` ``(value, stderr)``, each of shape ``broadcast(p.batch_shape,
        q.batch_shape)``.
    """
    check_key(key)
    _check_distribution(p, "p")
    _check_distribution(q, "q")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    batch = broadcast_batch(p.batch_shape, q.batch_shape)
    if tuple(p.event_shape) != tuple(q.event_shape):
        raise ValueError(
            f"event shapes of p {tuple(p.event_shape)} and q {tuple(q.event_shape)} differ"
        )
    shape = (int(num_samples),) + tuple(batch)[: len(batch) - len(p.batch_shape)]
    with jax.numpy_rank_promotion("allow"):  # inside NumPyro's samplers and densities
        x = p.rsample(key, shape) if p.has_rsample else p.sample(key, shape)
        log_ratio = p.log_prob(x) - log_prob(q, x)
    log_ratio = jnp.broadcast_to(log_ratio, (int(num_samples),) + tuple(batch))
    infinite = jnp.any(jnp.isposinf(log_ratio), axis=0)
    finite_ratio = jnp.where(jnp.isposinf(log_ratio), 0.0, log_ratio)
    value = jnp.where(infinite, jnp.inf, jnp.mean(finite_ratio, axis=0))
    stderr = jnp.std(finite_ratio, axis=0, ddof=1) / jnp.sqrt(num_samples)
    return MCEstimate(value, jnp.where(infinite, 0.0, stderr))
