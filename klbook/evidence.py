r"""Odds, log-odds and the weight of evidence (chapter 1).

Bayes' rule in odds form says that each observation multiplies the odds of hypothesis
:math:`H_1` against :math:`H_2` by a likelihood ratio:

.. math:: \log\frac{P(H_1\mid x_{1:n})}{P(H_2\mid x_{1:n})}
          = \log\frac{P(H_1)}{P(H_2)} + \sum_{i=1}^n \log\frac{p(x_i\mid H_1)}{p(x_i\mid H_2)}.

The summand is the *weight of evidence* (Good, 1950) that :math:`x_i` carries for :math:`H_1`.
When :math:`H_1` is true, its expectation is :math:`I[p_1; p_2]`: the KL divergence is the
average evidence per observation. :func:`accumulate` gives the whole trajectory of
log-odds, which is what the chapter's Belief-O-Meter shows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.typing import ArrayLike

from klbook._checks import check_finite, check_probability, is_concrete
from klbook.divergence import log_prob

__all__ = [
    "log_odds",
    "probability",
    "weight_of_evidence",
    "accumulate",
    "EvidenceTrajectory",
]


def log_odds(prob: ArrayLike) -> jnp.ndarray:
    r"""Log-odds :math:`\log\frac{\pi}{1-\pi}` of a probability, in nats (``±inf`` at 0 and 1).

    Raises:
        ValueError: if a concrete ``prob`` lies outside [0, 1] or is NaN.
    """
    check_probability(prob, "prob")
    prob = jnp.asarray(prob, dtype=jnp.result_type(float))
    return jnp.log(prob) - jnp.log1p(-prob)


def probability(log_odds_value: ArrayLike) -> jnp.ndarray:
    r"""Invert :func:`log_odds`: :math:`\pi = \sigma(\ell) = 1/(1+e^{-\ell})`."""
    return jax.nn.sigmoid(jnp.asarray(log_odds_value, dtype=jnp.result_type(float)))


def _check_hypotheses(h1, h2) -> None:
    for d, name in ((h1, "h1"), (h2, "h2")):
        if not isinstance(d, dist.Distribution):
            raise TypeError(f"{name} must be a numpyro Distribution; got {type(d).__name__}")
    if tuple(h1.event_shape) != tuple(h2.event_shape):
        raise ValueError(
            f"h1 and h2 must describe the same observation: event shapes {tuple(h1.event_shape)} "
            f"and {tuple(h2.event_shape)} differ"
        )


def weight_of_evidence(x: ArrayLike, h1: dist.Distribution, h2: dist.Distribution) -> jnp.ndarray:
    r"""Weight of evidence for ``h1`` over ``h2`` in each observation, in nats.

    .. math:: w(x) = \log\frac{p(x\mid H_1)}{p(x\mid H_2)}

    ``+inf`` when only ``h1`` allows ``x`` (and ``-inf`` when only ``h2`` does): such an
    observation settles the question.

    Args:
        x: observations, shape ``[..., *event_shape]`` broadcastable against the hypotheses.
        h1, h2: NumPyro distributions for one observation under each hypothesis.

    Raises:
        ValueError: if ``x`` is non-finite, the event shapes differ, or an observation is
            impossible under both hypotheses (its weight of evidence is undefined).
    """
    _check_hypotheses(h1, h2)
    check_finite(x, "observations x")
    x = jnp.asarray(x)
    l1, l2 = log_prob(h1, x), log_prob(h2, x)
    both_impossible = jnp.isneginf(l1) & jnp.isneginf(l2)
    if is_concrete(both_impossible) and bool(jnp.any(both_impossible)):
        raise ValueError("an observation is impossible under both hypotheses, so it weighs nothing either way")
    # Finite stand-ins keep the subtraction (and its gradient) free of inf - inf.
    s1 = jnp.where(jnp.isneginf(l1), 0.0, l1)
    s2 = jnp.where(jnp.isneginf(l2), 0.0, l2)
    w = s1 - s2
    w = jnp.where(jnp.isneginf(l2) & ~jnp.isneginf(l1), jnp.inf, w)
    return jnp.where(jnp.isneginf(l1) & ~jnp.isneginf(l2), -jnp.inf, w)


class EvidenceTrajectory(NamedTuple):
    """The running state of belief after each observation (axis 0 indexes observations)."""

    weights: jnp.ndarray
    """Weight of evidence of each observation, nats, ``[n, ...]``."""
    log_odds: jnp.ndarray
    """Posterior log-odds of ``h1`` after observations ``1..i``, nats, ``[n, ...]``."""
    probability: jnp.ndarray
    """Posterior probability of ``h1`` after observations ``1..i``, ``[n, ...]``."""


def accumulate(
    xs: ArrayLike,
    h1: dist.Distribution,
    h2: dist.Distribution,
    prior_prob: ArrayLike = 0.5,
) -> EvidenceTrajectory:
    r"""Accumulate evidence over a sequence of observations (the Belief-O-Meter).

    .. math:: \ell_i = \log\frac{\pi_0}{1-\pi_0} + \sum_{j\le i} w(x_j)

    Once an observation carries infinite evidence the log-odds stay infinite: a hypothesis
    that was ruled out cannot come back.

    Args:
        xs: observations along axis 0, shape ``[n, ..., *event_shape]``.
        h1, h2: NumPyro distributions of one observation under each hypothesis.
        prior_prob: prior probability of ``h1``, in [0, 1].

    Returns:
        :class:`EvidenceTrajectory` with arrays of shape ``[n, ...]``.

    Raises:
        ValueError: for an empty sequence, probabilities outside [0, 1], or the errors of
            :func:`weight_of_evidence`.
    """
    check_probability(prior_prob, "prior_prob")
    xs = jnp.asarray(xs)
    if xs.ndim < 1 + len(h1.event_shape) or xs.shape[0] == 0:
        raise ValueError(f"xs must hold at least one observation along axis 0; got shape {xs.shape}")
    w = weight_of_evidence(xs, h1, h2)
    # Count infinities separately so that +inf followed by finite evidence stays +inf.
    pos = jnp.cumsum(jnp.isposinf(w), axis=0) > 0
    neg = jnp.cumsum(jnp.isneginf(w), axis=0) > 0
    finite = jnp.cumsum(jnp.where(jnp.isinf(w), 0.0, w), axis=0)
    if is_concrete(pos) and bool(jnp.any(pos & neg)):
        raise ValueError("the observations rule out both hypotheses; neither can be true")
    ell = log_odds(prior_prob) + finite
    ell = jnp.where(pos, jnp.inf, jnp.where(neg, -jnp.inf, ell))
    return EvidenceTrajectory(w, ell, probability(ell))
