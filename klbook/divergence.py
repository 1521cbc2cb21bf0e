r"""The KL divergence I[p;q], its Monte Carlo estimate, entropy and cross-entropy.

Chapters 1 and 2. The KL divergence from ``p`` to ``q`` is the expected log ratio under ``p``:

.. math:: I[p;q] = \left\langle \log \frac{p(x)}{q(x)} \right\rangle_{p(x)} \geq 0,

in nats. The argument order is the math: we *sample from* ``p`` (the world as it is) and
score under both. Where ``p`` puts mass on an outcome that ``q`` rules out, the divergence is
``+inf`` (never NaN): a single such outcome is infinite evidence against ``q``.

:func:`kl` dispatches on the two NumPyro distribution types to a closed form (each cites its
source), then to NumPyro's own registry; :func:`mc_kl` estimates the same quantity by
sampling and reports a standard error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import numpyro.distributions.kl as numpyro_kl
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import betaln, digamma, gammaln, xlogy

from klbook._checks import (
    broadcast_batch,
    check_count,
    check_finite,
    check_nonnegative,
    check_positive,
    check_probability,
    check_simplex,
    count_ok,
    finite_ok,
    is_concrete,
    nonnegative_ok,
    positive_ok,
    probability_ok,
    simplex_ok,
)

__all__ = [
    "kl",
    "mc_kl",
    "entropy",
    "cross_entropy",
    "gaussian_kl",
    "log_prob",
    "register_kl",
    "MCEstimate",
    "NoClosedFormError",
    "check_key",
]

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}


class NoClosedFormError(NotImplementedError, TypeError):
    """No closed form for the pair: raised by :func:`kl`; estimate with :func:`mc_kl`.

    A ``NotImplementedError``, as NumPyro and TFP raise, so fallback code written for them
    catches it. It is also a ``TypeError``, which earlier versions of klbook raised.
    """


class _NoClosedForm(Exception):
    """Internal: this level of the dispatch has no closed form (see :func:`_kl`)."""


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
    summed). ``+inf`` where ``p`` puts mass where ``q`` has none; never NaN for valid
    parameters.

    Supported pairs: Bernoulli, Categorical, Binomial (equal ``total_count``), Poisson,
    Normal, MultivariateNormal (full), Independent(Normal) ("diagonal", also
    ``Normal(...).expand([D]).to_event(1)``; against a full MultivariateNormal either way
    round), Beta, Gamma, Exponential, Dirichlet, Uniform, and any ``Independent``/``expand``
    wrapping of these (klbook's own closed forms, which handle the boundary cases). Any other
    pair registered in NumPyro's ``numpyro.distributions.kl.kl_divergence`` (for example
    Weibull–Gamma, Kumaraswamy–Beta, Delta–anything) is computed by NumPyro, as NumPyro
    computes it (its Kumaraswamy–Beta is a truncated series: 0.0383 nats for
    Kumaraswamy(2, 3) against Beta(1.5, 2), where quadrature gives 0.0450).

    **What is checked where.** Types, event shapes, batch shapes and numbers of categories are
    static and raise the same errors eagerly and inside ``jax.jit``/``grad``/``vmap``.
    Parameter *values* can only be read when they are concrete:

    * eagerly (concrete parameters, whatever NumPyro's ``validate_args``), an invalid parameter
      raises ``ValueError`` naming it: a probability outside [0, 1] or a probability vector
      whose sum is not 1, beyond float rounding (``4 eps`` per probability, ``4 n eps`` for a
      vector of ``n``; see ``klbook._checks``); a non-finite location, logit (``-inf``
      logits are certain-never outcomes and allowed, and so are ``±inf`` Bernoulli logits)
      or scale-tril entry; a scale, rate or concentration that is not positive; a negative
      Poisson rate; a Binomial ``total_count`` that is not a non-negative whole number, or
      two different counts; a Uniform with ``low >= high``; a MultivariateNormal whose
      ``scale_tril`` has a zero on its diagonal.
    * traced (inside ``jit``, ``grad``, ``vmap``, and so inside training loops), the same
      conditions make the result **NaN** in the batch entries they affect, never a finite
      wrong number.

    Pairs computed by NumPyro's registry get only the static checks (and NumPyro's own
    ``validate_args`` where enabled).

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
        TypeError: if either argument is not a NumPyro distribution.
        NoClosedFormError: (a ``NotImplementedError``) if neither klbook nor NumPyro has a
            closed form for the pair; the message names both types and points at
            :func:`mc_kl`.
        ValueError: if batch shapes do not broadcast, event shapes differ, or (eagerly) a
            parameter is invalid as listed above.
    """
    _check_distribution(p, "p")
    _check_distribution(q, "q")
    try:
        return _kl(p, q)
    except _NoClosedForm:
        raise NoClosedFormError(
            f"klbook.kl has no closed form for I[{_describe(p)}; {_describe(q)}] "
            "(nor does NumPyro's kl_divergence registry); "
            "estimate it by sampling with klbook.mc_kl(key, p, q, num_samples)"
        ) from None


def _describe(d) -> str:
    """The type of ``d``, with what an Independent or expand wraps: ``Independent(Laplace)``."""
    if isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        return f"{type(d).__name__}({_describe(d.base_dist)})"
    return type(d).__name__


def _kl(p, q):
    """:func:`kl` without the type checks; raises :class:`_NoClosedForm` where it has none."""
    batch = broadcast_batch(p.batch_shape, q.batch_shape)
    if tuple(p.event_shape) != tuple(q.event_shape):
        raise ValueError(
            f"event shapes of p {tuple(p.event_shape)} and q {tuple(q.event_shape)} differ: "
            "the two distributions must be over the same random variable"
        )
    fn = _lookup(p, q)
    if fn is not None:
        try:
            return jnp.broadcast_to(fn(p, q), batch)
        except _NoClosedForm:
            pass
    try:
        # NumPyro's densities broadcast by rank promotion; allow it inside its closed forms.
        with jax.numpy_rank_promotion("allow"):
            value = numpyro_kl.kl_divergence(p, q)
    except NotImplementedError:
        raise _NoClosedForm from None
    return jnp.broadcast_to(value, batch)


def _ok(check: Callable, *params):
    """Validity mask ``check(*params)`` for tracing; ``True`` when every parameter is concrete.

    Concrete parameters have already passed the eager ``check_*`` calls (which raise), so
    computing the mask would only cost time.
    """
    if all(is_concrete(x) for x in params):
        return True
    return check(*params)


def _nan_unless(value, *oks):
    """``value`` where every mask in ``oks`` holds, NaN elsewhere (explicit broadcasting)."""
    oks = [ok for ok in oks if ok is not True]
    if not oks:
        return value
    shape = jnp.broadcast_shapes(jnp.shape(value), *(jnp.shape(ok) for ok in oks))
    ok = jnp.ones(shape, dtype=bool)
    for mask in oks:
        ok = ok & jnp.broadcast_to(mask, shape)
    return jnp.where(ok, jnp.broadcast_to(value, shape), jnp.nan)


# --------------------------------------------------------------------------------------------
# Discrete distributions: a sum over outcomes with 0 log 0 = 0 and a log(a/0) = +inf.


def _safe_log(prob):
    """log of probabilities with log 0 handled: (safe finite log, is_zero mask).

    An entry a rounding error below 0 counts as 0 (the input checks allow it).
    """
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
    """Probabilities, safe logs and zero masks of the outcomes (0, 1) on a new last axis,
    and the validity mask of the parameter (batch shape)."""
    if isinstance(d, dist.BernoulliLogits):
        logits = jnp.asarray(d.logits)  # NumPyro keeps the parameter as given
        check_finite(jnp.where(jnp.isinf(logits), 0.0, logits), "Bernoulli logits")
        logs = jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)
        safe, zero = _from_logs(logs)
        return jnp.exp(logs), safe, zero, _ok(lambda t: ~jnp.isnan(t), logits)
    check_probability(d.probs, "Bernoulli probs")
    probs = jnp.stack([1.0 - jnp.asarray(d.probs), d.probs], -1)
    safe, zero = _safe_log(probs)
    return probs, safe, zero, _ok(probability_ok, d.probs)


def _categorical_outcomes(d):
    if isinstance(d, dist.CategoricalLogits):
        check_finite(jnp.where(jnp.isneginf(d.logits), 0.0, d.logits), "Categorical logits")
        logs = jax.nn.log_softmax(d.logits, -1)
        safe, zero = _from_logs(logs)
        ok = _ok(lambda t: jnp.all(~jnp.isnan(t) & ~jnp.isposinf(t), -1), d.logits)
        return jnp.exp(logs), safe, zero, ok
    check_simplex(d.probs, "Categorical probs")
    safe, zero = _safe_log(d.probs)
    return d.probs, safe, zero, _ok(simplex_ok, d.probs)


def _kl_bernoulli(p, q):
    # Cover & Thomas (2006), Elements of Information Theory, eq. 2.26, two outcomes.
    pp, lp, zp, ok_p = _bernoulli_outcomes(p)
    _, lq, zq, ok_q = _bernoulli_outcomes(q)
    pp, lp, zp, lq, zq = jnp.broadcast_arrays(pp, lp, zp, lq, zq)
    return _nan_unless(_outcome_kl(pp, lp, zp, lq, zq), ok_p, ok_q)


for _tp in (dist.BernoulliProbs, dist.BernoulliLogits):
    for _tq in (dist.BernoulliProbs, dist.BernoulliLogits):
        register_kl(_tp, _tq)(_kl_bernoulli)


def _kl_categorical(p, q):
    # Cover & Thomas (2006), eq. 2.26: sum_k p_k log(p_k / q_k).
    pp, lp, zp, ok_p = _categorical_outcomes(p)
    _, lq, zq, ok_q = _categorical_outcomes(q)
    if pp.shape[-1] != lq.shape[-1]:
        raise ValueError(
            f"p has {pp.shape[-1]} categories but q has {lq.shape[-1]}: "
            "the two distributions must be over the same outcomes"
        )
    pp, lp, zp, lq, zq = jnp.broadcast_arrays(pp, lp, zp, lq, zq)
    return _nan_unless(_outcome_kl(pp, lp, zp, lq, zq), ok_p, ok_q)


for _tp in (dist.CategoricalProbs, dist.CategoricalLogits):
    for _tq in (dist.CategoricalProbs, dist.CategoricalLogits):
        register_kl(_tp, _tq)(_kl_categorical)


def _kl_binomial(p, q):
    # n independent Bernoulli trials: I = n I[Bern(p); Bern(q)] (chain rule, chapter 2).
    n_p, n_q = p.total_count, q.total_count
    check_count(n_p, "Binomial total_count of p")
    check_count(n_q, "Binomial total_count of q")
    if is_concrete(n_p) and is_concrete(n_q) and not np.all(np.asarray(n_p) == np.asarray(n_q)):
        raise ValueError(
            "klbook.kl needs Binomials with equal total_count; got "
            f"{np.asarray(n_p).tolist()} and {np.asarray(n_q).tolist()} (use klbook.mc_kl)"
        )
    bern = lambda d: (  # noqa: E731
        dist.BernoulliLogits(d.logits) if isinstance(d, dist.BinomialLogits) else dist.BernoulliProbs(d.probs)
    )
    counts_ok = lambda a, b: count_ok(a) & count_ok(b) & (a == b)  # noqa: E731
    return _nan_unless(n_p * _kl_bernoulli(bern(p), bern(q)), _ok(counts_ok, *jnp.broadcast_arrays(n_p, n_q)))


for _tp in (dist.BinomialProbs, dist.BinomialLogits):
    for _tq in (dist.BinomialProbs, dist.BinomialLogits):
        register_kl(_tp, _tq)(_kl_binomial)


@register_kl(dist.Poisson, dist.Poisson)
def _kl_poisson(p, q):
    # sum_k Pois(k; a) log[Pois(k; a)/Pois(k; b)] = a log(a/b) - a + b.
    a, b = p.rate, q.rate
    check_nonnegative(a, "Poisson rate of p")
    check_nonnegative(b, "Poisson rate of q")
    la, za = _safe_log(a)
    lb, zb = _safe_log(b)
    out = jnp.where(za, 0.0, a * (la - lb)) - a + b
    return _nan_unless(jnp.where(~za & zb, jnp.inf, out), _ok(nonnegative_ok, a), _ok(nonnegative_ok, b))


# --------------------------------------------------------------------------------------------
# Continuous distributions.


@register_kl(dist.Normal, dist.Normal)
def _kl_normal(p, q):
    # Kullback (1959); e.g. Kingma & Welling (2014), appendix B, for one dimension.
    for d, name in ((p, "p"), (q, "q")):
        check_finite(d.loc, f"Normal loc of {name}")
        check_positive(d.scale, f"Normal scale of {name}")
    ratio = p.scale / q.scale
    out = 0.5 * (ratio**2 + ((p.loc - q.loc) / q.scale) ** 2 - 1.0) - jnp.log(ratio)
    checks = ((p.loc, finite_ok), (q.loc, finite_ok), (p.scale, positive_ok), (q.scale, positive_ok))
    oks = [_ok(f, v) for v, f in checks]
    return _nan_unless(out, *oks)


def _diagonal_normal(d) -> tuple[jax.Array, jax.Array] | None:
    """``(loc, scale)`` of an Independent(Normal) over one dimension, expanded or not, else None.

    Covers ``Normal(loc, scale).to_event(1)`` and ``Normal(...).expand([D]).to_event(1)``;
    both arrays have the full shape ``batch_shape + (D,)``.
    """
    if not isinstance(d, dist.Independent) or d.reinterpreted_batch_ndims != 1:
        return None
    shape = tuple(d.base_dist.batch_shape)
    base = d.base_dist
    while isinstance(base, dist.ExpandedDistribution):
        base = base.base_dist
    if type(base) is not dist.Normal:
        return None
    return jnp.broadcast_to(jnp.asarray(base.loc), shape), jnp.broadcast_to(jnp.asarray(base.scale), shape)


def _mvn_parts(d, name):
    """``(loc, scale_tril, oks)`` of a full or diagonal Gaussian; ``oks``: validity masks."""
    if isinstance(d, dist.MultivariateNormal):
        loc, tril = jnp.asarray(d.loc), jnp.asarray(d.scale_tril)  # NumPyro's attributes are loosely typed
        check_finite(loc, f"MultivariateNormal loc of {name}")
        check_finite(tril, f"MultivariateNormal scale_tril of {name}")
        diag = jnp.diagonal(tril, axis1=-2, axis2=-1)
        if is_concrete(diag) and np.any(np.asarray(diag) == 0):
            raise ValueError(
                f"MultivariateNormal scale_tril of {name} must have a non-zero diagonal "
                "(a positive-definite covariance); got a zero"
            )
        ok_loc = _ok(lambda m: jnp.all(finite_ok(m), -1), loc)
        tril_ok = lambda t: jnp.all(finite_ok(t), (-2, -1)) & jnp.all(jnp.diagonal(t, 0, -2, -1) != 0, -1)  # noqa: E731
        ok_tril = _ok(tril_ok, tril)
        return loc, tril, (ok_loc, ok_tril)
    parts = _diagonal_normal(d)
    if parts is None:
        raise _NoClosedForm
    loc, scale = parts
    check_finite(loc, f"Normal loc of {name}")
    check_positive(scale, f"Normal scale of {name}")
    ok = _ok(lambda m, s: jnp.all(finite_ok(m) & positive_ok(s), -1), loc, scale)
    eye = jnp.broadcast_to(jnp.eye(scale.shape[-1], dtype=scale.dtype), scale.shape + scale.shape[-1:])
    return loc, scale[..., :, None] * eye, (ok,)  # scale_tril = diag(scale)   [..., D, D]


def _kl_mvn(p, q):
    # Closed form for two Gaussians, e.g. Rasmussen & Williams (2006), eq. A.23, via Cholesky
    # factors: 1/2 [tr(Sq^-1 Sp) + (mq-mp)^T Sq^-1 (mq-mp) - k + log|Sq| - log|Sp|].
    mp, lp, ok_p = _mvn_parts(p, "p")
    mq, lq, ok_q = _mvn_parts(q, "q")
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
    return _nan_unless(0.5 * (trace + maha - k + log_det), *ok_p, *ok_q)


register_kl(dist.MultivariateNormal, dist.MultivariateNormal)(_kl_mvn)


@register_kl(dist.Independent, dist.Independent)
def _kl_independent(p, q):
    # Independent coordinates: the joint KL is the sum of the per-coordinate KLs (chapter 2).
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise ValueError(
            "Independent distributions reinterpret different numbers of batch dims: "
            f"{p.reinterpreted_batch_ndims} and {q.reinterpreted_batch_ndims}"
        )
    inner = _kl(p.base_dist, q.base_dist)
    return jnp.sum(inner, axis=tuple(range(-p.reinterpreted_batch_ndims, 0)))


def _kl_diag_vs_full(p, q):
    # A diagonal Gaussian is a MultivariateNormal with scale_tril diag(scale): Rasmussen &
    # Williams (2006), eq. A.23, as in _kl_mvn. Other Independent wrappings: _NoClosedForm.
    return _kl_mvn(p, q)


register_kl(dist.Independent, dist.MultivariateNormal)(_kl_diag_vs_full)
register_kl(dist.MultivariateNormal, dist.Independent)(_kl_diag_vs_full)


@register_kl(dist.ExpandedDistribution, dist.Distribution)
def _kl_expanded_p(p, q):
    return _kl(p.base_dist, q)


@register_kl(dist.Distribution, dist.ExpandedDistribution)
def _kl_expanded_q(p, q):
    return _kl(p, q.base_dist)


@register_kl(dist.ExpandedDistribution, dist.ExpandedDistribution)
def _kl_expanded_both(p, q):
    return _kl(p.base_dist, q.base_dist)


@register_kl(dist.Beta, dist.Beta)
def _kl_beta(p, q):
    # Penny (2001), "KL-divergences of Normal, Gamma, Dirichlet and Wishart densities".
    a1, b1, a2, b2 = p.concentration1, p.concentration0, q.concentration1, q.concentration0
    for v, what in ((a1, "p"), (b1, "p"), (a2, "q"), (b2, "q")):
        check_positive(v, f"Beta concentration of {what}")
    out = (
        betaln(a2, b2)
        - betaln(a1, b1)
        + (a1 - a2) * digamma(a1)
        + (b1 - b2) * digamma(b1)
        + (a2 - a1 + b2 - b1) * digamma(a1 + b1)
    )
    return _nan_unless(out, *(_ok(positive_ok, v) for v in (a1, b1, a2, b2)))


@register_kl(dist.Gamma, dist.Gamma)
def _kl_gamma(p, q):
    # Penny (2001), shape/rate parameterisation.
    a1, r1, a2, r2 = p.concentration, p.rate, q.concentration, q.rate
    for v, what in ((a1, "p concentration"), (r1, "p rate"), (a2, "q concentration"), (r2, "q rate")):
        check_positive(v, f"Gamma {what}")
    out = (a1 - a2) * digamma(a1) - gammaln(a1) + gammaln(a2) + a2 * (jnp.log(r1) - jnp.log(r2)) + a1 * (r2 - r1) / r1
    return _nan_unless(out, *(_ok(positive_ok, v) for v in (a1, r1, a2, r2)))


@register_kl(dist.Exponential, dist.Exponential)
def _kl_exponential(p, q):
    # Gamma(1, r) special case: log(r_p / r_q) + r_q / r_p - 1.
    check_positive(p.rate, "Exponential rate of p")
    check_positive(q.rate, "Exponential rate of q")
    ratio = q.rate / p.rate
    return _nan_unless(ratio - jnp.log(ratio) - 1.0, _ok(positive_ok, p.rate), _ok(positive_ok, q.rate))


@register_kl(dist.Dirichlet, dist.Dirichlet)
def _kl_dirichlet(p, q):
    # Penny (2001), Dirichlet section.
    a, b = p.concentration, q.concentration
    check_positive(a, "Dirichlet concentration of p")
    check_positive(b, "Dirichlet concentration of q")
    a0 = jnp.sum(a, -1)
    out = (
        gammaln(a0)
        - jnp.sum(gammaln(a), -1)
        - gammaln(jnp.sum(b, -1))
        + jnp.sum(gammaln(b), -1)
        + jnp.sum((a - b) * (digamma(a) - digamma(a0)[..., None]), -1)
    )
    all_positive = lambda c: jnp.all(positive_ok(c), -1)  # noqa: E731
    return _nan_unless(out, _ok(all_positive, a), _ok(all_positive, b))


@register_kl(dist.Uniform, dist.Uniform)
def _kl_uniform(p, q):
    # log of the ratio of widths when [a_p, b_p] lies inside [a_q, b_q]; +inf otherwise.
    oks = []
    for d, name in ((p, "p"), (q, "q")):
        check_finite(d.low, f"Uniform low of {name}")
        check_finite(d.high, f"Uniform high of {name}")
        check_positive(d.high - d.low, f"Uniform width high - low of {name}")
        oks.append(_ok(lambda lo, hi: positive_ok(hi - lo), d.low, d.high))
    inside = (q.low <= p.low) & (p.high <= q.high)
    out = jnp.log(q.high - q.low) - jnp.log(p.high - p.low)
    return _nan_unless(jnp.where(inside, out, jnp.inf), *oks)


# --------------------------------------------------------------------------------------------
# The Gaussian closed form in float64, for checks where exactness is the claim.


def gaussian_kl(mean_p, cov_p, mean_q, cov_q=None, *, precision_q=None) -> float:
    r"""Closed-form :math:`I[\mathcal{N}(m_p, \Sigma_p); \mathcal{N}(m_q, \Sigma_q)]` in nats, in float64 NumPy.

    .. math:: \tfrac12\Big[\operatorname{tr}(\Sigma_q^{-1}\Sigma_p) + (m_q - m_p)^\top \Sigma_q^{-1} (m_q - m_p)
              - D + \log\frac{\det \Sigma_q}{\det \Sigma_p}\Big]

    (the standard Gaussian KL, e.g. Bishop 2006, exercise 2.15). :func:`kl` computes the same
    divergence in JAX at the distributions' precision (float32 by default); this one converts to
    float64 first, for the chapters' checks where exactness is the claim (chapter 4's excess
    log-loss, chapter 10's gap between a fitted family and the exact posterior). The second
    Gaussian is given by its covariance ``cov_q`` or, where that is what the math produces (a
    posterior's precision), by ``precision_q`` :math:`= \Sigma_q^{-1}`; exactly one of the two.

    Shapes: means ``[D]``, covariances and precision ``[D, D]``.

    Raises:
        ValueError: shapes that do not agree, non-finite entries, neither or both of ``cov_q`` and
            ``precision_q``, or a matrix that is not symmetric positive definite.
    """
    if (cov_q is None) == (precision_q is None):
        raise ValueError(
            "gaussian_kl: give the second Gaussian's covariance cov_q or its precision "
            "precision_q, exactly one of the two"
        )
    mp, mq = np.asarray(mean_p, np.float64), np.asarray(mean_q, np.float64)
    sp = np.asarray(cov_p, np.float64)
    mat_q = np.asarray(cov_q if precision_q is None else precision_q, np.float64)
    name_q = "cov_q" if precision_q is None else "precision_q"
    if mp.ndim != 1 or mq.shape != mp.shape:
        raise ValueError(
            f"gaussian_kl: means must be vectors of one length [D]; got mean_p {mp.shape} and mean_q {mq.shape}"
        )
    d = mp.shape[0]
    for what, m in (("cov_p", sp), (name_q, mat_q)):
        if m.shape != (d, d):
            raise ValueError(f"gaussian_kl: {what} must be [{d}, {d}] to match the means; got {m.shape}")
    for what, x in (("mean_p", mp), ("mean_q", mq), ("cov_p", sp), (name_q, mat_q)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"gaussian_kl: {what} has non-finite entries")
    logdets = []
    for what, m in (("cov_p", sp), (name_q, mat_q)):
        # A matrix computed in float32 (a sample covariance X^T X / N) is symmetric only up to its
        # rounding, about sqrt(N) float32 eps of its largest entry: allow 1e-4 of it, refuse more.
        if np.abs(m - m.T).max() > 1e-4 * np.abs(m).max():
            raise ValueError(f"gaussian_kl: {what} is not symmetric")
        sign, logdet = np.linalg.slogdet(m)
        if sign <= 0 or np.linalg.eigvalsh(m).min() <= 0:
            raise ValueError(f"gaussian_kl: {what} is not positive definite")
        logdets.append(logdet)
    sp, mat_q = 0.5 * (sp + sp.T), 0.5 * (mat_q + mat_q.T)
    diff = mq - mp
    if precision_q is None:  # log det Sigma_q - log det Sigma_p
        trace, quad, log_ratio = (
            np.trace(np.linalg.solve(mat_q, sp)),
            diff @ np.linalg.solve(mat_q, diff),
            logdets[1] - logdets[0],
        )
    else:  # with P = Sigma_q^{-1}: log det Sigma_q = -log det P
        trace, quad, log_ratio = np.trace(mat_q @ sp), diff @ mat_q @ diff, -logdets[1] - logdets[0]
    return float(0.5 * (trace + quad - d + log_ratio))


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
        probs, log, zero, ok = _bernoulli_outcomes(p)
    elif isinstance(p, (dist.CategoricalProbs, dist.CategoricalLogits)):
        probs, log, zero, ok = _categorical_outcomes(p)
    else:
        try:
            return p.entropy()
        except NotImplementedError:
            raise TypeError(
                f"klbook.entropy has no closed form for {type(p).__name__}; "
                "estimate it by sampling: -p.log_prob(p.sample(key, (n,))).mean(0)"
            ) from None
    return _nan_unless(0.0 - jnp.sum(jnp.where(zero, 0.0, probs * log), -1), ok)  # 0.0 - : no "-0.0"


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
    if isinstance(key, jax.Array) or not is_concrete(key):
        # jax.dtypes re-exports issubdtype without "as", which pyright takes for a private import
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # pyright: ignore[reportPrivateImportUsage]
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


def _log_prob(d: dist.Distribution, x: jax.Array) -> jax.Array:
    if isinstance(d, (dist.BernoulliProbs, dist.BinomialProbs)):
        # Counts as floats: xlogy's gradient cannot take an integer x that is being traced.
        x = x.astype(jnp.result_type(d.probs, float))
    if isinstance(d, dist.BernoulliProbs):
        p = jnp.asarray(d.probs)
        lp = xlogy(x, p) + xlogy(1.0 - x, 1.0 - p)
    elif isinstance(d, dist.BinomialProbs):
        n, p = jnp.asarray(d.total_count), jnp.asarray(d.probs)
        log_choose = gammaln(n + 1.0) - gammaln(x + 1.0) - gammaln(n - x + 1.0)
        lp = log_choose + xlogy(x, p) + xlogy(n - x, 1.0 - p)
    elif isinstance(d, dist.CategoricalProbs):
        probs = jnp.asarray(d.probs)
        safe = jnp.clip(x, 0, probs.shape[-1] - 1).astype(jnp.int32)
        probs = jnp.broadcast_to(probs, safe.shape + probs.shape[-1:])
        lp = jnp.log(jnp.take_along_axis(probs, safe[..., None], -1)[..., 0])
    else:
        lp = jnp.asarray(d.log_prob(x))
    if d.support is None:
        raise TypeError(f"{type(d).__name__} declares no support, so log_prob cannot tell which values it gives zero")
    inside = jnp.asarray(d.support(x))
    extra = inside.ndim - lp.ndim
    if extra > 0:
        inside = jnp.all(inside, axis=tuple(range(-extra, 0)))
    return jnp.where(inside, lp, -jnp.inf)


def mc_kl(key, p: dist.Distribution, q: dist.Distribution, num_samples: int) -> MCEstimate:
    r"""Monte Carlo estimate of :math:`I[p;q]` with its standard error; differentiable.

    .. math:: \hat I = \frac1N \sum_{n=1}^N f(x_n),\quad f(x) = \log\frac{p(x)}{q(x)},
              \quad x_n \sim p, \qquad \text{s.e.} = \frac{\mathrm{sd}_n[f(x_n)]}{\sqrt N}.

    **Gradients.** When ``p`` is reparameterisable (``p.has_rsample``: Normal, MVN, Gamma,
    ...), samples are drawn by ``rsample`` and the gradient flows through them (pathwise).
    When it is not (Bernoulli, Categorical, Binomial, Poisson, ...), the samples carry no
    gradient, so a score-function (REINFORCE) term is added for ``p``'s parameters:

    .. math:: \nabla_\theta I = \Big\langle \big(f(x) - b\big)\,\nabla_\theta \log p_\theta(x)
              - \nabla_\theta \log q(x) \Big\rangle_{p_\theta(x)},

    with the leave-one-out baseline :math:`b_n = \frac{1}{N-1}\sum_{m\ne n} f(x_m)`, which is
    independent of :math:`x_n` and so keeps the gradient unbiased while cutting its variance.
    The term enters through a stop-gradient surrogate that is exactly zero, so the **value**
    (and the standard error) are the plain estimate above. Gradients with respect to ``q``'s
    parameters are pathwise in both cases. The standard error is that of the value, not of
    the gradient.

    A sample outside ``q``'s support makes the estimate ``+inf`` (with standard error 0: one
    such sample proves the divergence is infinite).

    **What is checked where.** The key's type, the distributions' types, ``num_samples``
    (a Python integer >= 2), broadcastable batch shapes and equal event shapes are checked
    eagerly and inside ``jit`` alike (they are static). Parameter *values* are not checked
    here (use :func:`kl` where a closed form exists, or NumPyro's ``validate_args``): invalid
    parameters give whatever NumPyro's samplers and densities give, typically NaN.

    Args:
        key: a JAX PRNG key.
        p, q: NumPyro distributions with the same event shape and broadcastable batch shapes.
        num_samples: ``N >= 2``.

    Returns:
        :class:`MCEstimate` ``(value, stderr)``, each of shape ``broadcast(p.batch_shape,
        q.batch_shape)``.

    Raises:
        TypeError: if ``key`` is not a PRNG key or ``p``/``q`` not NumPyro distributions.
        ValueError: if ``num_samples`` is not an integer >= 2 or the shapes do not match.
    """
    check_key(key)
    _check_distribution(p, "p")
    _check_distribution(q, "q")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    n = int(num_samples)
    batch = broadcast_batch(p.batch_shape, q.batch_shape)
    if tuple(p.event_shape) != tuple(q.event_shape):
        raise ValueError(f"event shapes of p {tuple(p.event_shape)} and q {tuple(q.event_shape)} differ")
    full = (n,) + tuple(batch)
    shape = (n,) + tuple(batch)[: len(batch) - len(p.batch_shape)]
    pathwise = p.has_rsample
    with jax.numpy_rank_promotion("allow"):  # inside NumPyro's samplers and densities
        x = p.rsample(key, shape) if pathwise else jax.lax.stop_gradient(p.sample(key, shape))
        log_p = jnp.broadcast_to(p.log_prob(x), full)  # [N, *batch]
        log_q = jnp.broadcast_to(log_prob(q, x), full)  # [N, *batch]
    if not pathwise:
        # The direct gradient of log p(x_n) has expectation 0; the score term replaces it.
        log_p, score_log_p = jax.lax.stop_gradient(log_p), log_p
    log_ratio = log_p - log_q  # [N, *batch]
    infinite = jnp.any(jnp.isposinf(log_ratio), axis=0)
    finite_ratio = jnp.where(jnp.isposinf(log_ratio), 0.0, log_ratio)
    value = jnp.mean(finite_ratio, axis=0)  # [*batch]
    if not pathwise:
        f = jax.lax.stop_gradient(finite_ratio)
        baseline = (jnp.sum(f, axis=0, keepdims=True) - f) / (n - 1)  # leave-one-out, [N, *batch]
        safe = jnp.where(jnp.isfinite(score_log_p), score_log_p, 0.0)
        zero = safe - jax.lax.stop_gradient(safe)  # value 0, gradient: the score
        value = value + jnp.mean((f - baseline) * zero, axis=0)
    value = jnp.where(infinite, jnp.inf, value)
    stderr = jnp.std(finite_ratio, axis=0, ddof=1) / jnp.sqrt(n)
    return MCEstimate(value, jnp.where(infinite, 0.0, stderr))
