"""Tests for klbook.nn: the MLP builder and the distribution heads."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax.scipy.special import gammaln

from klbook import kl, mc_kl
from klbook.nn import bernoulli_head, binomial_head, categorical_head, gaussian_head, mlp

KEY = jax.random.key(0)


def test_mlp_is_unbatched_and_vmaps():
    net = mlp(KEY, 5, 3, width=16, depth=2)
    assert isinstance(net, eqx.nn.MLP)
    x = jax.random.normal(KEY, (7, 5))
    one, many = eqx.filter_jit(lambda n, x: (n(x[2]), jax.vmap(n)(x)))(net, x)
    assert one.shape == (3,) and many.shape == (7, 3)
    np.testing.assert_allclose(many[2], one, rtol=1e-5)
    # depth 0 is an affine map: f(a + b) - f(b) = f(a) - f(0)
    lin = mlp(KEY, 2, 2, depth=0)
    a, b = jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0])
    np.testing.assert_allclose(lin(a + b) - lin(b), lin(a) - lin(jnp.zeros(2)), atol=1e-5)
    assert mlp(KEY, "scalar", "scalar", width=4, depth=1)(jnp.array(1.0)).shape == ()
    # same key, same weights
    assert eqx.tree_equal(mlp(KEY, 5, 3, width=16, depth=2), net)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((5, 0), {}, "out_size"),
        ((5.5, 2), {}, "in_size"),
        ((5, 2), {"width": 0}, "width"),
        ((5, 2), {"depth": -1}, "depth"),
        ((5, 2), {"activation": "relu"}, "callables"),
    ],
)
def test_mlp_bad_arguments(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mlp(KEY, *args, **kwargs)
    with pytest.raises(TypeError, match="key"):
        mlp(3, 5, 2)


def test_gaussian_head_splits_loc_and_positive_scale():
    out = jnp.array([[0.0, 1.0, -50.0, 2.0], [3.0, -1.0, 0.0, 20.0]])  # [B=2, 2d=4]
    q = gaussian_head(out)
    assert q.batch_shape == (2,) and q.event_shape == (2,)
    np.testing.assert_allclose(q.mean, out[:, :2])
    sigma = jnp.sqrt(q.variance)
    np.testing.assert_allclose(sigma, jax.nn.softplus(out[:, 2:]) + 1e-4, rtol=1e-6)
    assert np.all(sigma >= 1e-4)  # a very negative raw scale still gives a positive sigma
    x = jnp.array([[0.3, -0.2], [1.0, 2.0]])
    expected = dist.Normal(out[:, :2], sigma).log_prob(x).sum(-1)
    np.testing.assert_allclose(q.log_prob(x), expected, rtol=1e-6)


def test_gaussian_head_with_fixed_scale_and_event_dims():
    loc = jnp.zeros((3, 4, 2))
    p = gaussian_head(loc, scale=0.5, event_dims=2)
    assert p.batch_shape == (3,) and p.event_shape == (4, 2)
    np.testing.assert_allclose(jnp.sqrt(p.variance), 0.5)
    per_axis = gaussian_head(loc, scale=jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(jnp.sqrt(per_axis.variance)[0, 0], [1.0, 2.0])


def test_gaussian_head_kl_matches_monte_carlo():
    # the heads produce ordinary NumPyro distributions: klbook.kl's closed form applies, and
    # agrees with a Monte Carlo estimate within its standard error
    out_p = jnp.array([0.2, -1.0, 0.5, -0.3])
    p, q = gaussian_head(out_p), gaussian_head(jnp.zeros(4))
    with jax.numpy_rank_promotion("allow"):  # NumPyro broadcasts the sample axis internally
        est = mc_kl(jax.random.key(3), p, q, 20_000)
    assert abs(float(est.value) - float(kl(p, q))) < 5 * float(est.stderr)


def test_bernoulli_head_log_prob():
    logits = jnp.array([[-2.0, 0.0, 3.0]])
    x = jnp.array([[0.0, 1.0, 1.0]])
    d = bernoulli_head(logits)
    assert d.batch_shape == (1,) and d.event_shape == (3,)
    expected = jnp.sum(x * logits - jax.nn.softplus(logits), -1)  # log sigma(l)^x (1 - sigma(l))^(1-x)
    np.testing.assert_allclose(d.log_prob(x), expected, rtol=1e-6)


def test_categorical_head_is_softmax_over_the_last_axis():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    d = categorical_head(logits)
    assert d.batch_shape == (2,) and d.event_shape == ()
    np.testing.assert_allclose(d.probs, jax.nn.softmax(logits, -1), rtol=1e-6)
    np.testing.assert_allclose(
        d.log_prob(jnp.array([2, 0])), jax.nn.log_softmax(logits)[jnp.arange(2), jnp.array([2, 0])], rtol=1e-6
    )


def test_binomial_head_log_prob_and_mean():
    logits = jnp.array([[-1.0, 0.5], [2.0, 0.0]])
    x = jnp.array([[0, 16], [7, 8]])
    d = binomial_head(logits, 16)
    assert d.batch_shape == (2,) and d.event_shape == (2,)
    np.testing.assert_allclose(d.mean, 16 * jax.nn.sigmoid(logits), rtol=1e-6)
    log_choose = gammaln(17.0) - gammaln(x + 1.0) - gammaln(17.0 - x)
    expected = jnp.sum(log_choose + x * jax.nn.log_sigmoid(logits) + (16 - x) * jax.nn.log_sigmoid(-logits), -1)
    np.testing.assert_allclose(d.log_prob(x), expected, rtol=1e-5)


def test_heads_are_jit_and_grad_compatible():
    x = jnp.array([[0.3, -0.2]])

    @jax.jit
    def nll(out):
        return -gaussian_head(out).log_prob(x).sum() - binomial_head(out[:, :2], 16).log_prob(jnp.array([[3, 4]])).sum()

    out = jnp.array([[0.0, 1.0, -2.0, 0.5]])
    g = jax.grad(nll)(out)
    assert g.shape == out.shape and np.all(np.isfinite(g))
    with jax.disable_jit():
        eager = nll(out)
    np.testing.assert_allclose(nll(out), eager, rtol=1e-5)


def test_heads_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        gaussian_head(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        gaussian_head(jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="scale must be positive"):
        gaussian_head(jnp.zeros(2), scale=-1.0)
    with pytest.raises(ValueError, match="min_scale must be positive"):
        gaussian_head(jnp.zeros(2), min_scale=0.0)
    with pytest.raises(ValueError, match="at least 2 axes"):
        bernoulli_head(jnp.zeros(3), event_dims=2)
    with pytest.raises(ValueError, match="event_dims"):
        bernoulli_head(jnp.zeros(3), event_dims=-1)
    with pytest.raises(TypeError, match="floating-point"):
        bernoulli_head(jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="at least 2 classes"):
        categorical_head(jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="total_count"):
        binomial_head(jnp.zeros(3), 0)
    with pytest.raises(ValueError, match="total_count"):
        binomial_head(jnp.zeros(3), 16.0)


def test_head_readers_name_a_distribution_they_cannot_read():
    """diagonal_normal and categorical_probs read gaussian_head's and categorical_head's outputs, and
    refuse any other distribution with a TypeError naming what they expected."""
    import numpyro.distributions as dist

    from klbook.nn import categorical_head, categorical_probs, diagonal_normal, gaussian_head

    h = jnp.array([[0.5, -1.0, 0.2, 0.0]])
    normal = diagonal_normal(gaussian_head(h))
    np.testing.assert_allclose(normal.loc, h[:, :2])
    logits = jnp.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(categorical_probs(categorical_head(logits)), jax.nn.softmax(logits), rtol=1e-6)
    with pytest.raises(TypeError, match="diagonal Gaussian"):
        diagonal_normal(dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="categorical"):
        categorical_probs(dist.Normal(0.0, 1.0))
