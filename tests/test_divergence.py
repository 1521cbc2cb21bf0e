"""kl, mc_kl, entropy and cross_entropy: closed forms vs Monte Carlo, identities, boundaries, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import klbook
from klbook import cross_entropy, entropy, kl, mc_kl

LN2 = math.log(2.0)


def _mvn(seed, k=3):
    a = jax.random.normal(jax.random.key(seed), (k, k))
    return dist.MultivariateNormal(jax.random.normal(jax.random.key(seed + 1), (k,)), a @ a.T + 0.5 * jnp.eye(k))


# Every pair the book uses, batched where that is natural.
PAIRS = {
    "bernoulli-probs": (dist.Bernoulli(probs=jnp.array([0.2, 0.5, 0.9])), dist.Bernoulli(probs=0.4)),
    "bernoulli-logits": (dist.Bernoulli(logits=jnp.array([-1.0, 2.0])), dist.Bernoulli(logits=jnp.array([0.5, -0.5]))),
    "bernoulli-mixed": (dist.Bernoulli(probs=0.7), dist.Bernoulli(logits=-0.3)),
    "categorical-probs": (
        dist.Categorical(probs=jnp.array([0.1, 0.2, 0.7])),
        dist.Categorical(probs=jnp.array([0.3, 0.3, 0.4])),
    ),
    "categorical-logits": (
        dist.Categorical(logits=jnp.array([[0.0, 1.0, -1.0, 2.0], [1.0, 1.0, 0.0, 0.0]])),
        dist.Categorical(logits=jnp.array([0.2, 0.1, 0.0, -0.3])),
    ),
    "binomial": (dist.Binomial(16, probs=jnp.array([0.3, 0.6])), dist.Binomial(16, probs=0.45)),
    "binomial-logits": (dist.Binomial(16, logits=0.3), dist.Binomial(16, logits=-0.2)),
    "poisson": (dist.Poisson(jnp.array([2.0, 5.0])), dist.Poisson(3.0)),
    "normal": (dist.Normal(jnp.array([0.0, 1.0, -2.0]), jnp.array([1.0, 0.5, 2.0])), dist.Normal(0.3, 1.3)),
    "mvn-full": (_mvn(0), _mvn(10)),
    "mvn-diag": (
        dist.Normal(jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 0.5, 2.0])).to_event(1),
        dist.Normal(jnp.zeros(3), 1.5).to_event(1),
    ),
    "diag-vs-full": (dist.Normal(jnp.array([0.0, 1.0, 2.0]), 0.7).to_event(1), _mvn(20)),
    "full-vs-diag": (_mvn(30), dist.Normal(jnp.zeros(3), 2.0).to_event(1)),
    "beta": (dist.Beta(jnp.array([2.0, 0.7]), jnp.array([3.0, 1.5])), dist.Beta(1.0, 1.0)),
    "gamma": (dist.Gamma(jnp.array([2.0, 5.0]), jnp.array([1.0, 3.0])), dist.Gamma(3.0, 2.0)),
    "exponential": (dist.Exponential(jnp.array([0.5, 2.0])), dist.Exponential(1.0)),
    "dirichlet": (dist.Dirichlet(jnp.array([1.0, 2.0, 3.0])), dist.Dirichlet(jnp.array([2.0, 2.0, 2.0]))),
    "uniform": (dist.Uniform(0.2, 0.7), dist.Uniform(0.0, 1.0)),
    "expanded": (dist.Normal(0.0, 1.0).expand([4]), dist.Normal(1.0, 2.0)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_closed_form_matches_monte_carlo(name):
    p, q = PAIRS[name]
    exact = kl(p, q)
    est = mc_kl(jax.random.key(0), p, q, 20000)
    assert exact.shape == est.value.shape == jnp.broadcast_shapes(p.batch_shape, q.batch_shape)
    assert bool(jnp.all(exact >= 0))
    z = (est.value - exact) / jnp.maximum(est.stderr, 1e-7)
    assert bool(jnp.all(jnp.abs(z) < 5)), f"{name}: exact {exact}, estimate {est.value} ± {est.stderr}"


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_jit_equals_eager(name):
    p, q = PAIRS[name]
    np.testing.assert_allclose(jax.jit(kl)(p, q), kl(p, q), rtol=1e-5, atol=1e-6)


def test_zero_when_equal():
    for name, (p, _) in PAIRS.items():
        np.testing.assert_allclose(kl(p, p), 0.0, atol=2e-5, err_msg=name)


# --------------------------------------------------------------------------- the coins of chapter 1
FAIR = 0.5
DOUBLE_HEADED = 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: dist.Bernoulli(probs=p),
        # logit(1) = +inf is a legitimate coin for kl, though NumPyro's validation refuses it.
        lambda p: dist.Bernoulli(logits=jnp.log(p) - jnp.log1p(-p), validate_args=False),
    ],
)
def test_fair_and_double_headed_coins(make):
    fair, cheat = make(jnp.float32(FAIR)), make(jnp.float32(DOUBLE_HEADED))
    assert kl(fair, cheat) == jnp.inf
    np.testing.assert_allclose(kl(cheat, fair), LN2, rtol=1e-6)
    np.testing.assert_allclose(klbook.to_bits(kl(cheat, fair)), 1.0, rtol=1e-6)
    assert not jnp.isnan(kl(fair, cheat)) and not jnp.isnan(kl(cheat, fair))


def test_monte_carlo_sees_infinity_at_the_boundary():
    fair, cheat = dist.Bernoulli(probs=FAIR), dist.Bernoulli(probs=DOUBLE_HEADED)
    est = mc_kl(jax.random.key(1), fair, cheat, 100)
    assert est.value == jnp.inf and est.stderr == 0.0
    est = mc_kl(jax.random.key(1), cheat, fair, 100)
    np.testing.assert_allclose(est.value, LN2, rtol=1e-6)


def test_categorical_with_zero_probabilities():
    p = dist.Categorical(probs=jnp.array([0.5, 0.5, 0.0]))
    q = dist.Categorical(probs=jnp.array([0.25, 0.25, 0.5]))
    np.testing.assert_allclose(kl(p, q), LN2, rtol=1e-6)
    assert kl(q, p) == jnp.inf
    p_logits = dist.Categorical(logits=jnp.array([0.0, 0.0, -jnp.inf]), validate_args=False)
    assert kl(p_logits, q) == pytest.approx(LN2, rel=1e-6)


def test_uniform_outside_support_is_infinite():
    assert kl(dist.Uniform(0.0, 2.0), dist.Uniform(0.0, 1.0)) == jnp.inf


def test_poisson_zero_rate():
    assert kl(dist.Poisson(1.0), dist.Poisson(0.0)) == jnp.inf
    np.testing.assert_allclose(kl(dist.Poisson(0.0), dist.Poisson(2.0)), 2.0, rtol=1e-6)


# --------------------------------------------------------------------------- gradients
GRAD_CASES = {
    "bernoulli": lambda t: kl(dist.Bernoulli(probs=jax.nn.sigmoid(t)), dist.Bernoulli(probs=0.3)),
    "bernoulli-at-boundary-p": lambda t: kl(dist.Bernoulli(probs=1.0), dist.Bernoulli(probs=jax.nn.sigmoid(t))),
    "categorical": lambda t: kl(
        dist.Categorical(logits=jnp.array([t, 0.0, 1.0])),
        dist.Categorical(probs=(jnp.array([0.5, 0.5, 0.0]) + 0.1) / 1.3),
    ),
    "categorical-zero-in-p": lambda t: kl(
        dist.Categorical(probs=jnp.array([0.0, 0.5, 0.5])), dist.Categorical(logits=jnp.array([t, 0.0, 1.0]))
    ),
    "binomial": lambda t: kl(dist.Binomial(16, logits=t), dist.Binomial(16, probs=0.2)),
    "poisson": lambda t: kl(dist.Poisson(jnp.exp(t)), dist.Poisson(2.0)),
    "normal": lambda t: kl(dist.Normal(t, jnp.exp(t)), dist.Normal(0.0, 1.0)),
    "mvn": lambda t: kl(dist.MultivariateNormal(jnp.array([t, 0.0]), jnp.eye(2) * jnp.exp(t)), _mvn(40, 2)),
    "beta": lambda t: kl(dist.Beta(jnp.exp(t), 2.0), dist.Beta(1.0, 3.0)),
    "gamma": lambda t: kl(dist.Gamma(jnp.exp(t), 2.0), dist.Gamma(1.0, 3.0)),
    "dirichlet": lambda t: kl(dist.Dirichlet(jnp.array([jnp.exp(t), 1.0])), dist.Dirichlet(jnp.array([2.0, 2.0]))),
    "exponential": lambda t: kl(dist.Exponential(jnp.exp(t)), dist.Exponential(2.0)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradients_finite_and_match_finite_differences(name):
    f = GRAD_CASES[name]
    t = jnp.float32(0.3)
    g = jax.grad(f)(t)
    assert jnp.isfinite(g), f"{name}: gradient {g}"
    h = 1e-2
    fd = (f(t + h) - f(t - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=5e-2, atol=5e-3)


def test_mc_kl_value_and_gradient_match_exact():
    """Distrax-style: the reparameterised estimator's gradient is unbiased for the exact gradient."""

    def estimate(mu, key):
        return mc_kl(key, dist.Normal(mu, 0.7), dist.Normal(0.0, 1.0), 500).value

    exact = jax.grad(lambda m: kl(dist.Normal(m, 0.7), dist.Normal(0.0, 1.0)))(0.5)
    grads = jax.jit(jax.vmap(jax.grad(estimate), in_axes=(None, 0)))(0.5, jax.random.split(jax.random.key(3), 40))
    se = jnp.std(grads, ddof=1) / jnp.sqrt(grads.size)
    assert abs(grads.mean() - exact) < 5 * se


# --------------------------------------------------------------------------- properties
probability_vectors = st.integers(2, 6).flatmap(
    lambda k: st.tuples(
        st.lists(st.floats(0.0, 10.0), min_size=k, max_size=k).filter(lambda v: sum(v) > 1e-3),
        st.lists(st.floats(1e-3, 10.0), min_size=k, max_size=k),
    )
)


@settings(max_examples=60, deadline=None)
@given(probability_vectors)
def test_non_negative_and_zero_only_at_equality(pair):
    a, b = (np.asarray(v, dtype=np.float64) for v in pair)
    p, q = a / a.sum(), b / b.sum()
    value = float(kl(dist.Categorical(probs=jnp.asarray(p)), dist.Categorical(probs=jnp.asarray(q))))
    assert value >= -1e-6
    support = p > 0
    exact = float(np.sum(p[support] * np.log(p[support] / q[support])))
    assert value == pytest.approx(exact, rel=1e-4, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(2, 4),
    st.integers(0, 2**31 - 1),
)
def test_chain_rule_on_random_discrete_joints(nx, ny, seed):
    """I[p(x,y); q(x,y)] = I[p(x); q(x)] + <I[p(y|x); q(y|x)]>_p(x) >= I[p(x); q(x)]."""
    kp, kq = jax.random.split(jax.random.key(seed))
    p = jax.random.dirichlet(kp, jnp.ones(nx * ny)).reshape(nx, ny)
    q = jax.random.dirichlet(kq, jnp.ones(nx * ny)).reshape(nx, ny)
    joint = kl(dist.Categorical(probs=p.ravel()), dist.Categorical(probs=q.ravel()))
    px, qx = p.sum(1), q.sum(1)
    marginal = kl(dist.Categorical(probs=px), dist.Categorical(probs=qx))
    conditional = kl(dist.Categorical(probs=p / px[:, None]), dist.Categorical(probs=q / qx[:, None]))
    np.testing.assert_allclose(joint, marginal + jnp.sum(px * conditional), rtol=1e-4, atol=1e-6)
    assert joint >= marginal - 1e-6


@settings(max_examples=30, deadline=None)
@given(st.floats(-3, 3), st.floats(0.1, 3), st.floats(-3, 3), st.floats(0.1, 3))
def test_cross_entropy_is_entropy_plus_kl(m1, s1, m2, s2):
    p, q = dist.Normal(m1, s1), dist.Normal(m2, s2)
    # -<log q>_p in closed form for two Gaussians.
    exact = 0.5 * math.log(2 * math.pi * s2**2) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2)
    np.testing.assert_allclose(cross_entropy(p, q), exact, rtol=1e-4, atol=1e-5)


def test_entropy_of_coins():
    np.testing.assert_allclose(entropy(dist.Bernoulli(probs=0.5)), LN2, rtol=1e-6)
    assert float(entropy(dist.Bernoulli(probs=1.0))) == 0.0
    np.testing.assert_allclose(cross_entropy(dist.Bernoulli(probs=1.0), dist.Bernoulli(probs=0.5)), LN2, rtol=1e-6)
    assert cross_entropy(dist.Bernoulli(probs=0.5), dist.Bernoulli(probs=1.0)) == jnp.inf


# --------------------------------------------------------------------------- bad input
def test_unsupported_pair_names_both_and_points_at_mc_kl():
    # NotImplementedError, as NumPyro and TFP raise, so their fallback code catches it.
    with pytest.raises(NotImplementedError, match=r"I\[Normal; Laplace\].*mc_kl"):
        kl(dist.Normal(0.0, 1.0), dist.Laplace(0.0, 1.0))
    # Still a TypeError too, for code written against earlier klbook.
    with pytest.raises(TypeError, match=r"I\[Normal; Laplace\]"):
        kl(dist.Normal(0.0, 1.0), dist.Laplace(0.0, 1.0))
    # Wrapped pairs name what they wrap, and the same error comes out under jit.
    p, q = dist.Laplace(jnp.zeros(3), 1.0).to_event(1), dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3))
    with pytest.raises(NotImplementedError, match=r"I\[Independent\(Laplace\); MultivariateNormal\].*mc_kl"):
        kl(p, q)
    with pytest.raises(NotImplementedError, match=r"Independent\(Laplace\)"):
        jax.jit(kl)(p, q)
    with pytest.raises(NotImplementedError, match=r"I\[MultivariateNormal; Independent\(Laplace\)\]"):
        kl(q, p)


def test_pairs_in_numpyros_registry_are_used():
    from numpyro.distributions.kl import kl_divergence

    # Kumaraswamy-Beta is NumPyro's truncated series (0.0383 at a=2, b=3 where quadrature
    # gives 0.0450), so only Weibull-Gamma is also checked against Monte Carlo.
    for p, q, exact in [
        (dist.Kumaraswamy(jnp.array([2.0, 0.5]), 3.0), dist.Beta(1.5, 2.0), False),
        (dist.Weibull(jnp.array([2.0, 0.8]), 1.5), dist.Gamma(2.0, 1.0), True),
    ]:
        with jax.numpy_rank_promotion("allow"):  # NumPyro's own closed form broadcasts by rank
            reference = kl_divergence(p, q)
        np.testing.assert_allclose(kl(p, q), reference, rtol=1e-6)
        # Compiled, the closed form may be evaluated in another order; 0.0383 is a difference of
        # terms of order one, so it agrees within a few float32 ulps of those terms, not of itself.
        np.testing.assert_allclose(jax.jit(kl)(p, q), reference, rtol=1e-5, atol=16 * float(jnp.finfo(jnp.float32).eps))
        if exact:
            est = mc_kl(jax.random.key(2), p, q, 20000)
            assert bool(jnp.all(jnp.abs(est.value - reference) < 5 * est.stderr)), (est, reference)


def test_pairs_registered_with_numpyro_later_are_used():
    from multipledispatch import dispatch

    class Left(dist.Normal):
        pass

    class Right(dist.Laplace):
        pass

    @dispatch(Left, Right)
    def kl_divergence(p, q):  # joins NumPyro's kl_divergence dispatcher (same name and namespace)
        return jnp.full(jnp.broadcast_shapes(p.batch_shape, q.batch_shape), 42.0)

    assert float(kl(Left(0.0, 1.0), Right(0.0, 1.0))) == 42.0


def test_not_a_distribution():
    with pytest.raises(TypeError, match="q must be a numpyro Distribution"):
        kl(dist.Normal(0.0, 1.0), 3.0)


def test_batch_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"batch shapes of p \(3,\) and q \(4,\) do not broadcast"):
        kl(dist.Normal(jnp.zeros(3), 1.0), dist.Normal(jnp.zeros(4), 1.0))


def test_event_shapes_that_differ():
    with pytest.raises(ValueError, match="event shapes"):
        kl(_mvn(0, 2), _mvn(1, 3))


def test_categories_that_differ():
    with pytest.raises(ValueError, match="3 categories but q has 4"):
        kl(dist.Categorical(probs=jnp.ones(3) / 3), dist.Categorical(probs=jnp.ones(4) / 4))


@pytest.mark.parametrize(
    "p, message",
    [
        (dist.Bernoulli(probs=1.5, validate_args=False), r"Bernoulli probs must be probabilities in \[0, 1\]"),
        (dist.Bernoulli(probs=-0.1, validate_args=False), r"probabilities in \[0, 1\]"),
        (dist.Categorical(probs=jnp.array([0.5, 0.6]), validate_args=False), "must sum to 1"),
        (dist.Normal(jnp.nan, 1.0, validate_args=False), "Normal loc of p must be finite"),
        (dist.Normal(0.0, -1.0, validate_args=False), "Normal scale of p must be positive"),
        (dist.Normal(0.0, jnp.inf, validate_args=False), "Normal scale of p must be finite"),
        (dist.Gamma(-1.0, 1.0, validate_args=False), "Gamma p concentration must be positive"),
    ],
)
def test_bad_parameters_are_named(p, message):
    q = {
        dist.BernoulliProbs: dist.Bernoulli(probs=0.5),
        dist.CategoricalProbs: dist.Categorical(probs=jnp.array([0.5, 0.5])),
        dist.Normal: dist.Normal(0.0, 1.0),
        dist.Gamma: dist.Gamma(1.0, 1.0),
    }[type(p)]
    with pytest.raises(ValueError, match=message):
        kl(p, q)


def test_binomial_counts_must_match():
    with pytest.raises(ValueError, match="equal total_count"):
        kl(dist.Binomial(10, probs=0.5), dist.Binomial(16, probs=0.5))


@pytest.mark.parametrize(
    "p, q, message",
    [
        (dist.Poisson(-1.0, validate_args=False), dist.Poisson(1.0), "Poisson rate of p must be non-negative"),
        (dist.Poisson(1.0), dist.Poisson(-1.0, validate_args=False), "Poisson rate of q must be non-negative"),
        (
            dist.Binomial(-3, probs=0.5, validate_args=False),
            dist.Binomial(-3, probs=0.2, validate_args=False),
            "Binomial total_count of p must be non-negative",
        ),
        (
            dist.Binomial(2.5, probs=0.5, validate_args=False),
            dist.Binomial(2.5, probs=0.2, validate_args=False),
            "Binomial total_count of p must be a whole number",
        ),
        (
            dist.Categorical(probs=jnp.array([0.2, 0.2]), validate_args=False),
            dist.Categorical(probs=jnp.ones(2) / 2),
            "must sum to 1",
        ),
        (
            dist.Uniform(1.0, 0.0, validate_args=False),
            dist.Uniform(0.0, 2.0),
            "Uniform width high - low of p must be positive",
        ),
        (dist.Exponential(0.0, validate_args=False), dist.Exponential(1.0), "Exponential rate of p must be positive"),
        (
            dist.MultivariateNormal(jnp.zeros(2), scale_tril=jnp.diag(jnp.array([1.0, 0.0])), validate_args=False),
            dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
            "scale_tril of p must have a non-zero diagonal",
        ),
    ],
)
def test_bad_parameters_raise_eagerly_with_validation_off(p, q, message):
    with pytest.raises(ValueError, match=message):
        kl(p, q)


# Invalid parameters reaching kl inside jit: NaN (documented), never a finite wrong number.
TRACED_BAD = {
    "bernoulli-1.5": (lambda t: kl(dist.Bernoulli(probs=t), dist.Bernoulli(probs=0.5)), 1.5),
    "bernoulli-q-negative": (lambda t: kl(dist.Bernoulli(probs=0.5), dist.Bernoulli(probs=t)), -0.1),
    "categorical-sum-0.4": (
        lambda t: kl(dist.Categorical(probs=jnp.stack([t, t])), dist.Categorical(probs=jnp.ones(2) / 2)),
        0.2,
    ),
    "categorical-q-sum": (
        lambda t: kl(dist.Categorical(probs=jnp.ones(2) / 2), dist.Categorical(probs=jnp.stack([t, t]))),
        0.2,
    ),
    "normal-both-scales-negative": (lambda t: kl(dist.Normal(0.0, t), dist.Normal(0.0, t)), -1.0),
    "normal-scale-negative": (lambda t: kl(dist.Normal(0.0, t), dist.Normal(0.0, 1.0)), -1.0),
    "poisson-negative": (lambda t: kl(dist.Poisson(t), dist.Poisson(1.0)), -1.0),
    "binomial-negative-count": (lambda t: kl(dist.Binomial(t, probs=0.5), dist.Binomial(t, probs=0.2)), -3.0),
    "binomial-counts-differ": (lambda t: kl(dist.Binomial(t, probs=0.5), dist.Binomial(16, probs=0.2)), 10.0),
    "mvn-diag-negative": (
        lambda t: kl(dist.Normal(jnp.zeros(2), t).to_event(1), dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))),
        -1.0,
    ),
    "mvn-zero-diagonal": (
        lambda t: kl(
            dist.MultivariateNormal(jnp.zeros(2), scale_tril=jnp.diag(jnp.stack([1.0, t]))),
            dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
        ),
        0.0,
    ),
    "beta-negative": (lambda t: kl(dist.Beta(t, 2.0), dist.Beta(1.0, 1.0)), -1.0),
    "gamma-negative": (lambda t: kl(dist.Gamma(2.0, t), dist.Gamma(2.0, t)), -1.0),
    "exponential-negative": (lambda t: kl(dist.Exponential(t), dist.Exponential(t)), -1.0),
    "dirichlet-negative": (
        lambda t: kl(dist.Dirichlet(jnp.stack([t, 1.0])), dist.Dirichlet(jnp.stack([t, 1.0]))),
        -1.0,
    ),
    "uniform-reversed": (lambda t: kl(dist.Uniform(t, 0.0), dist.Uniform(t, 0.0)), 1.0),
    "entropy-bernoulli-1.5": (lambda t: entropy(dist.Bernoulli(probs=t)), 1.5),
}


@pytest.mark.parametrize("name", sorted(TRACED_BAD))
def test_bad_parameters_under_jit_give_nan(name):
    f, bad = TRACED_BAD[name]
    assert bool(jnp.isnan(jax.jit(f)(jnp.float32(bad)))), name


def test_under_jit_only_the_bad_batch_entries_are_nan():
    f = jax.jit(lambda t: kl(dist.Bernoulli(probs=t), dist.Bernoulli(probs=0.5)))
    out = f(jnp.array([0.2, 1.5, 1.0, -0.5]))
    np.testing.assert_array_equal(jnp.isnan(out), [False, True, False, True])
    np.testing.assert_allclose(out[2], LN2, rtol=1e-6)


def test_gradients_of_valid_parameters_are_unchanged_by_the_masks():
    f = lambda t: kl(dist.Normal(0.0, t), dist.Normal(0.0, 1.0))  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(f))(2.0), 2.0 - 0.5, rtol=1e-6)  # t - 1/t


# --------------------------------------------------------------------------- diagonal vs full (item 10)
D = 4
FULL = dist.MultivariateNormal(
    jnp.array([0.3, -0.2, 0.5, 0.0]), covariance_matrix=jnp.eye(D) * 1.5 + 0.4 * jnp.ones((D, D))
)


@pytest.mark.parametrize(
    "diagonal",
    [
        dist.Normal(0.0, 1.0).expand([D]).to_event(1),
        dist.Normal(jnp.zeros(D), 1.0).to_event(1),
        dist.Normal(jnp.zeros(D), jnp.ones(D)).to_event(1),
    ],
    ids=["expand-to_event", "vector-loc", "vector-both"],
)
@pytest.mark.parametrize("order", ["diag-full", "full-diag"])
def test_standard_normal_prior_against_full_gaussian(diagonal, order):
    p, q = (diagonal, FULL) if order == "diag-full" else (FULL, diagonal)
    identity = dist.MultivariateNormal(jnp.zeros(D), jnp.eye(D))
    reference = kl(identity, FULL) if order == "diag-full" else kl(FULL, identity)
    np.testing.assert_allclose(kl(p, q), reference, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(kl)(p, q), reference, rtol=1e-5)
    est = mc_kl(jax.random.key(5), p, q, 20000)
    assert abs(est.value - reference) < 5 * est.stderr


def test_batched_expanded_diagonal_against_full():
    p = dist.Normal(jnp.array([0.0, 1.0])[:, None], 1.0).expand([2, D]).to_event(1)  # batch (2,)
    out = kl(p, FULL)
    assert out.shape == (2,)
    for i, m in enumerate([0.0, 1.0]):
        np.testing.assert_allclose(out[i], kl(dist.MultivariateNormal(jnp.full(D, m), jnp.eye(D)), FULL), rtol=1e-6)


def test_mc_kl_bad_arguments():
    p, q = dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0)
    with pytest.raises(TypeError, match="PRNG key"):
        mc_kl(0, p, q, 10)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        mc_kl(jax.random.key(0), p, q, 1)
    with pytest.raises(ValueError, match="event shapes"):
        mc_kl(jax.random.key(0), _mvn(0, 2), _mvn(1, 3), 10)


def test_entropy_without_closed_form():
    class NoEntropy(dist.Normal):
        def entropy(self):
            raise NotImplementedError

    with pytest.raises(TypeError, match="no closed form for NoEntropy"):
        entropy(NoEntropy(0.0, 1.0))


# --- the float64 Gaussian closed form -------------------------------------------------------


def test_gaussian_kl_matches_numpyro_is_zero_on_itself_and_takes_a_precision():
    from klbook.divergence import gaussian_kl

    m1, c1 = np.array([0.3, -1.0]), np.array([[1.5, 0.4], [0.4, 0.8]])
    m2, c2 = np.array([1.0, 0.5]), np.array([[0.7, -0.2], [-0.2, 1.1]])
    expected = kl(
        dist.MultivariateNormal(jnp.asarray(m1), jnp.asarray(c1)),
        dist.MultivariateNormal(jnp.asarray(m2), jnp.asarray(c2)),
    )
    value = gaussian_kl(m1, c1, m2, c2)
    assert abs(value - float(expected)) < 1e-5  # numpyro's float32 against float64
    assert abs(gaussian_kl(m1, c1, m1, c1)) < 1e-12
    assert abs(gaussian_kl(m1, c1, m2, precision_q=np.linalg.inv(c2)) - value) < 1e-12
    # chapter 4's and chapter 10's helpers are this one
    from klbook import bayes, density

    assert density.gaussian_kl is gaussian_kl
    target = bayes.Gaussian(jnp.asarray(m2), jnp.asarray(np.linalg.inv(c2)))
    assert abs(bayes.gaussian_kl(m1, c1, target) - value) < 1e-6


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((np.zeros(2), np.eye(2), np.zeros(2)), {}, "exactly one"),
        ((np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)), {"precision_q": np.eye(2)}, "exactly one"),
        ((np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)), {}, "vectors of one length"),
        ((np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), {}, "cov_p must be"),
        ((np.zeros(2), np.eye(2), np.zeros(2)), {"precision_q": np.eye(3)}, "precision_q must be"),
        ((np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2)), {}, "mean_p has non-finite"),
        ((np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]])), {}, "cov_q is not symmetric"),
        ((np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2)), {}, "cov_p is not positive definite"),
    ],
)
def test_gaussian_kl_names_bad_input(args, kwargs, message):
    from klbook.divergence import gaussian_kl

    with pytest.raises(ValueError, match=message):
        gaussian_kl(*args, **kwargs)


def test_gaussian_kl_accepts_a_float32_sample_covariance():
    """X^T X / N in float32 is symmetric only up to rounding; that is not an error."""
    from klbook.divergence import gaussian_kl

    x = np.asarray(jax.random.normal(jax.random.key(0), (5000, 6)), np.float32)
    s = (x.T @ x / x.shape[0]).astype(np.float32)
    assert np.isfinite(gaussian_kl(np.zeros(6), s, np.zeros(6), np.eye(6)))
