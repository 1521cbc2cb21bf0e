"""Non-negativity and the chain rule (klbook.properties, chapter 2), checked on random cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import kl
from klbook.properties import (
    chain_rule,
    mvn_conditional,
    mvn_marginal,
    random_distributions,
    random_joints,
    rounding_tolerance,
    total_variation,
)

KEY = jax.random.key(2)
EPS = float(jnp.finfo(jnp.float32).eps)


def _keys(n):
    return [jax.random.fold_in(KEY, i) for i in range(n)]


def test_random_distributions_are_dirichlet_draws():
    num, k, alpha = 4000, 5, 0.7
    p = random_distributions(KEY, (num,), k, alpha)
    assert p.shape == (num, k)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=k * EPS)
    # Each coordinate of Dir(alpha 1) has mean 1/K and variance (1/K)(1 - 1/K)/(K alpha + 1).
    se = math.sqrt((1 / k) * (1 - 1 / k) / (k * alpha + 1) / num)
    assert np.all(np.abs(np.asarray(p.mean(0)) - 1 / k) < 5 * se)


def test_concentrations_can_vary_across_the_batch():
    alpha = jnp.array([0.05, 100.0])
    p = random_distributions(KEY, (2000, 2), 4, alpha)
    spread = np.asarray(jnp.max(p, -1).mean(0))
    assert spread[0] > spread[1]  # small alpha: peaked; large alpha: nearly uniform


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_outcomes=1), "at least 2"),
        (dict(num_outcomes=2.5), "positive integer"),
        (dict(concentration=0.0), "positive"),
        (dict(concentration=float("inf")), "finite"),
    ],
)
def test_random_distributions_reject_bad_input(kwargs, match):
    args = dict(shape=(3,), num_outcomes=3, concentration=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        random_distributions(KEY, **args)


def test_random_distributions_need_a_key():
    with pytest.raises(TypeError, match="PRNG key"):
        random_distributions(1, (3,), 3)


def test_total_variation_extremes_and_bad_input():
    p = jnp.array([0.2, 0.3, 0.5])
    assert float(total_variation(p, p)) == 0.0
    assert float(total_variation(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))) == 1.0
    with pytest.raises(ValueError, match="sum to 1"):
        total_variation(p, jnp.array([0.2, 0.2, 0.2]))


def test_kl_is_non_negative_and_obeys_pinsker_on_random_pairs():
    k1, k2, k3 = _keys(3)
    alpha = jnp.exp(jax.random.uniform(k3, (3000,), minval=-3.0, maxval=3.0))
    p = random_distributions(k1, (3000,), 6, alpha)
    q = random_distributions(k2, (3000,), 6, alpha)
    d = np.asarray(kl(dist.Categorical(probs=p), dist.Categorical(probs=q)))
    tol = np.asarray(rounding_tolerance(p, q))
    assert np.all(d >= -tol)
    assert np.all(d >= 2 * np.asarray(total_variation(p, q)) ** 2 - tol)
    assert np.all(np.asarray(kl(dist.Categorical(probs=p), dist.Categorical(probs=p))) == 0.0)


def test_forced_zeros_keep_one_outcome_and_leave_plain_draws_alone():
    num, k, rate = 4000, 6, 0.4
    p = np.asarray(random_distributions(KEY, (num,), k, 1.0, zero_prob=rate))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=k * EPS)
    assert np.all((p > 0).sum(-1) >= 1)
    # Each of the K - 1 outcomes not kept is zeroed independently: zeros per row ~ Binomial(K - 1, rate).
    zeros = (p == 0).sum(-1)
    se = math.sqrt((k - 1) * rate * (1 - rate) / num)
    assert abs(zeros.mean() - (k - 1) * rate) < 5 * se
    plain = random_distributions(KEY, (num,), k, 1.0)
    np.testing.assert_array_equal(plain, random_distributions(KEY, (num,), k, 1.0, zero_prob=None))
    assert np.all(np.asarray(random_distributions(KEY, (num,), k, 1.0, zero_prob=0.0)) > 0)
    with pytest.raises(ValueError, match="below 1"):
        random_distributions(KEY, (3,), 3, zero_prob=1.0)
    with pytest.raises(ValueError, match="zero_prob"):
        random_distributions(KEY, (3,), 3, zero_prob=-0.1)


def test_rounding_tolerance_bounds_the_float32_error_of_kl():
    k1, k2, k3 = _keys(3)
    for i, k in enumerate((2, 10, 100)):
        alpha = jnp.exp(jax.random.uniform(jax.random.fold_in(k3, i), (3000,), minval=-3.0, maxval=3.0))
        rate = jnp.where(jnp.arange(3000) < 1500, 0.0, 0.1)  # zeros in half the pairs
        p = random_distributions(jax.random.fold_in(k1, i), (3000,), k, alpha, zero_prob=rate)
        q = random_distributions(jax.random.fold_in(k2, i), (3000,), k, alpha, zero_prob=rate)
        d32 = np.asarray(kl(dist.Categorical(probs=p), dist.Categorical(probs=q)))
        p64, q64 = np.asarray(p, np.float64), np.asarray(q, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p64 > 0, p64 * (np.log(p64) - np.log(q64)), 0.0)
        d64 = terms.sum(-1)  # the exact divergence of the stored vectors, to float64 rounding
        tol = np.asarray(rounding_tolerance(p, q))
        finite = np.isfinite(d64)
        assert np.all(np.isinf(d32[~finite])) and finite.any() and (~finite).any()
        err = np.abs(d32[finite] - d64[finite])
        assert np.all(err <= tol[finite])
        assert np.all(d64[finite] >= -tol[finite])  # Gibbs, for the stored (nearly normalised) vectors
        assert np.all(np.isfinite(tol))


def test_rounding_tolerance_grows_with_the_outcomes_and_the_logs():
    u2, u4 = jnp.ones(2) / 2, jnp.ones(4) / 4
    eps = EPS
    np.testing.assert_allclose(rounding_tolerance(u2, u2), 4 * eps * (2 * math.log(2) + 1), rtol=1e-6)
    np.testing.assert_allclose(rounding_tolerance(u4, u4), 6 * eps * (2 * math.log(4) + 1), rtol=1e-6)
    # p_k = 0 adds nothing; p_k > 0 = q_k is left out (the divergence is inf there)
    np.testing.assert_allclose(rounding_tolerance(jnp.array([1.0, 0.0]), u2), 4 * eps * (math.log(2) + 1), rtol=1e-6)
    np.testing.assert_allclose(
        rounding_tolerance(u2, jnp.array([1.0, 0.0])), 4 * eps * (0.5 * math.log(2) + 1), rtol=1e-6
    )
    assert rounding_tolerance(jnp.ones((3, 5)) / 5, jnp.ones(5) / 5).shape == (3,)


def test_chain_rule_holds_and_joint_dominates_marginal():
    k1, k2 = _keys(2)
    p = random_joints(k1, (500,), 3, 4, 0.5)
    q = random_joints(k2, (500,), 3, 4, 2.0)
    terms = chain_rule(p, q)
    assert terms.joint.shape == terms.marginal.shape == terms.conditional.shape == (500,)
    # three divergences, each within the joint table's rounding bound (chapter 2, cell on the chain rule)
    tol = 3 * np.asarray(rounding_tolerance(p.reshape(500, -1), q.reshape(500, -1)))
    np.testing.assert_array_less(np.abs(np.asarray(terms.joint - terms.marginal - terms.conditional)), tol)
    assert np.all(np.asarray(terms.conditional) >= 0.0)
    assert np.all(np.asarray(terms.joint) >= np.asarray(terms.marginal) - tol)


def test_chain_rule_for_independent_variables_adds_the_two_kls():
    k1, k2, k3, k4 = _keys(4)
    px, qx = random_distributions(k1, (), 3), random_distributions(k2, (), 3)
    py, qy = random_distributions(k3, (), 4), random_distributions(k4, (), 4)
    terms = chain_rule(jnp.outer(px, py), jnp.outer(qx, qy))
    cat = dist.Categorical
    np.testing.assert_allclose(terms.marginal, kl(cat(probs=px), cat(probs=qx)), rtol=1e-5)
    np.testing.assert_allclose(terms.conditional, kl(cat(probs=py), cat(probs=qy)), rtol=1e-4)


def test_chain_rule_is_zero_for_equal_joints():
    p = random_joints(KEY, (), 3, 3)
    assert tuple(float(t) for t in chain_rule(p, p)) == (0.0, 0.0, 0.0)


def test_chain_rule_boundaries_give_inf_or_zero_never_nan():
    p = jnp.array([[0.5, 0.0], [0.0, 0.5]])  # p(x) > 0 everywhere
    q = jnp.array([[0.5, 0.5], [0.0, 0.0]])  # q(x = 1) = 0
    terms = chain_rule(p, q)
    assert math.isinf(float(terms.joint)) and math.isinf(float(terms.marginal))
    p_sparse = jnp.array([[0.0, 0.0], [0.3, 0.7]])  # p(x = 0) = 0: that row carries no weight
    terms = chain_rule(p_sparse, jnp.full((2, 2), 0.25))
    assert not any(math.isnan(float(t)) for t in terms)
    np.testing.assert_allclose(float(terms.joint), float(terms.marginal + terms.conditional), rtol=1e-6)


@pytest.mark.parametrize(
    "p, q, match",
    [
        (jnp.ones((2, 3)) / 6, jnp.ones((3, 2)) / 6, "same X and Y"),
        (jnp.ones(4) / 4, jnp.ones(4) / 4, "tables"),
        (jnp.ones((2, 2)) / 2, jnp.ones((2, 2)) / 4, "sum to 1"),
        (jnp.full((2, 2), jnp.nan), jnp.ones((2, 2)) / 4, "finite"),
    ],
)
def test_chain_rule_rejects_bad_tables(p, q, match):
    with pytest.raises(ValueError, match=match):
        chain_rule(p, q)


def numpyro_broadcasts():
    """NumPyro's MultivariateNormal sample/log_prob broadcast by rank internally; allow it there only."""
    return jax.numpy_rank_promotion("allow")


def _gaussians():
    p = dist.MultivariateNormal(
        jnp.array([0.0, 1.0, -1.0]), covariance_matrix=jnp.array([[1.0, 0.6, 0.2], [0.6, 1.5, -0.4], [0.2, -0.4, 0.8]])
    )
    q = dist.MultivariateNormal(
        jnp.array([0.5, 0.0, 0.0]), covariance_matrix=jnp.array([[2.0, -0.3, 0.0], [-0.3, 0.5, 0.1], [0.0, 0.1, 1.0]])
    )
    return p, q


def test_gaussian_factorises_into_marginal_times_conditional():
    p, _ = _gaussians()
    with numpyro_broadcasts():
        x = p.sample(KEY, (50,))
        for m in (1, 2):
            lhs = p.log_prob(x)
            rhs = mvn_marginal(p, m).log_prob(x[:, :m]) + mvn_conditional(p, x[:, :m]).log_prob(x[:, m:])
        np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_gaussian_marginal_kl_matches_the_normal_closed_form():
    p, q = _gaussians()
    via_mvn = kl(mvn_marginal(p), mvn_marginal(q))
    via_normal = kl(dist.Normal(0.0, 1.0), dist.Normal(0.5, math.sqrt(2.0)))
    np.testing.assert_allclose(via_mvn, via_normal, rtol=1e-5)


def test_gaussian_chain_rule_within_monte_carlo_error():
    p, q = _gaussians()
    n = 20000
    with numpyro_broadcasts():
        x = mvn_marginal(p).sample(KEY, (n,))
    per_x = kl(mvn_conditional(p, x), mvn_conditional(q, x))
    mean, se = float(per_x.mean()), float(per_x.std() / math.sqrt(n))
    gap = float(kl(p, q) - kl(mvn_marginal(p), mvn_marginal(q)))
    assert gap > 0 and abs(gap - mean) < 5 * se


@pytest.mark.parametrize("m", [0, 3, 1.0])
def test_gaussian_split_must_leave_coordinates_on_both_sides(m):
    p, _ = _gaussians()
    with pytest.raises(ValueError, match="1 <= m < 3"):
        mvn_marginal(p, m)


def test_gaussian_helpers_reject_other_distributions():
    with pytest.raises(TypeError, match="MultivariateNormal"):
        mvn_marginal(dist.Normal(0.0, 1.0))
    p, _ = _gaussians()
    with pytest.raises(ValueError, match="finite"):
        mvn_conditional(p, jnp.array([jnp.nan]))
    batched = dist.MultivariateNormal(jnp.zeros((2, 2)), covariance_matrix=jnp.eye(2))
    with pytest.raises(ValueError, match="batch shape"):
        mvn_conditional(batched, jnp.zeros(1))
