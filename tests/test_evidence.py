"""Weight of evidence and the Belief-O-Meter's arithmetic (chapter 1)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import kl
from klbook.evidence import accumulate, log_odds, probability, weight_of_evidence

FAIR, CHEAT = dist.Bernoulli(probs=0.5), dist.Bernoulli(probs=1.0)


def test_log_odds_round_trip_and_boundaries():
    p = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(probability(log_odds(p)), p, rtol=1e-6)
    assert log_odds(0.5) == 0.0
    assert log_odds(1.0) == jnp.inf and log_odds(0.0) == -jnp.inf


def test_each_head_is_one_bit_for_the_cheat_and_a_tail_is_infinite():
    w = weight_of_evidence(jnp.array([1.0, 0.0]), CHEAT, FAIR)
    np.testing.assert_allclose(w[0], math.log(2.0), rtol=1e-6)
    assert w[1] == -jnp.inf


def test_trajectory_adds_up_and_an_impossible_observation_settles_it():
    flips = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])
    traj = accumulate(flips, CHEAT, FAIR, prior_prob=0.5)
    np.testing.assert_allclose(traj.log_odds[:3], math.log(2.0) * jnp.arange(1, 4), rtol=1e-6)
    assert bool(jnp.all(traj.log_odds[3:] == -jnp.inf))
    assert bool(jnp.all(traj.probability[3:] == 0.0))
    np.testing.assert_allclose(traj.probability[0], 2 / 3, rtol=1e-6)


def test_average_evidence_is_the_kl():
    """Under h1, the mean weight of evidence per observation is I[h1; h2] (within s.e.)."""
    h1, h2 = dist.Bernoulli(probs=0.7), dist.Bernoulli(probs=0.4)
    xs = h1.sample(jax.random.key(0), (20000,))
    w = weight_of_evidence(xs, h1, h2)
    se = jnp.std(w, ddof=1) / jnp.sqrt(w.size)
    assert abs(w.mean() - kl(h1, h2)) < 5 * se


def test_continuous_hypotheses_and_batches():
    h1, h2 = dist.Normal(jnp.array([0.0, 1.0]), 1.0), dist.Normal(0.5, 1.0)
    xs = jnp.zeros((4, 2))
    traj = accumulate(xs, h1, h2)
    assert traj.log_odds.shape == (4, 2)
    expected = h1.log_prob(0.0) - h2.log_prob(0.0)
    np.testing.assert_allclose(traj.log_odds[-1], 4 * expected, rtol=1e-5)


def test_jit_equals_eager():
    xs = jnp.array([1.0, 0.0, 1.0])
    h1, h2 = dist.Bernoulli(probs=0.8), dist.Bernoulli(probs=0.3)
    f = lambda x: accumulate(x, h1, h2, 0.2).log_odds  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(xs), f(xs), rtol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"prob must be probabilities in \[0, 1\]"):
        log_odds(1.2)
    with pytest.raises(ValueError, match="prior_prob"):
        accumulate(jnp.ones(3), CHEAT, FAIR, prior_prob=-0.5)
    with pytest.raises(ValueError, match="observations x must be finite"):
        weight_of_evidence(jnp.array([jnp.nan]), CHEAT, FAIR)
    with pytest.raises(ValueError, match="impossible under both hypotheses"):
        weight_of_evidence(jnp.array([0.0]), CHEAT, CHEAT)
    with pytest.raises(ValueError, match="at least one observation"):
        accumulate(jnp.zeros((0,)), CHEAT, FAIR)
    with pytest.raises(TypeError, match="h2 must be a numpyro Distribution"):
        weight_of_evidence(jnp.ones(2), CHEAT, 0.5)
    with pytest.raises(ValueError, match="event shapes"):
        weight_of_evidence(jnp.ones(2), dist.Normal(0.0, 1.0), dist.Normal(jnp.zeros(2), 1.0).to_event(1))
