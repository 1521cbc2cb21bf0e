"""A column-shaped observed value must be refused, never scored as an [N, N] grid (issue 22).

NumPyro broadcasts an observed value against its plates: ``x[:, None]`` (shape ``[N, 1]``) in a
plate of size N scores every example against every other, in both worlds alike, so a check that
only compares the two worlds' shapes passes and the recipe returns about N times the right
number. These tests pin the refusal at the recipe (eagerly and under ``jit``) and through every
module objective built on it, and check that correct shapes still pass.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from klbook import bayes, bnn
from klbook.recipe import data, kl_objective


def _real(x, params):
    with numpyro.plate("data", x.shape[0]):
        data("x", x)


def _dream(x, params):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))


PARAMS = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
X = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (200,))


def _total(x):
    return kl_objective(jax.random.key(1), _real, _dream, x, PARAMS).total


def test_readme_example_with_a_column_is_refused_eagerly_and_under_jit():
    good = float(_total(X))
    # The right number: -<log N(x; 0, 1)> over the data, computed directly.
    expected = float(-jnp.mean(dist.Normal(0.0, 1.0).log_prob(X)))
    assert good == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"site 'x'.*\(200, 1\).*plates 'data' \(size 200 at dim -1\)"):
        _total(X[:, None])
    with pytest.raises(ValueError, match=r"site 'x'.*\(200, 1\)"):
        jax.jit(_total)(X[:, None])


def test_a_value_missing_the_plate_dim_is_refused():
    def real(x):
        with numpyro.plate("data", 5):
            data("x", x)

    def dream(x):
        with numpyro.plate("data", 5):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'x' is observed with a value of shape \(\)"):
        kl_objective(jax.random.key(0), real, dream, jnp.array(1.0))


def test_declared_event_dims_and_outer_plates_still_pass():
    # A [N, 1] value whose trailing dim is declared as an event dim is a vector per example.
    def real(x):
        with numpyro.plate("data", x.shape[0]):
            data("x", x, event_dim=1)

    def dream(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(jnp.zeros(x.shape), 1.0).to_event(1))

    out = kl_objective(jax.random.key(0), real, dream, X[:, None])
    assert float(out.total) == pytest.approx(float(-jnp.mean(dist.Normal(0.0, 1.0).log_prob(X))), rel=1e-6)

    # Two plates (data at dim -2, features at dim -1): a [N, D] value fills both.
    def real2(x, n):
        with numpyro.plate("data", n, dim=-2), numpyro.plate("features", 2, dim=-1):
            data("x", x)

    def dream2(x, n):
        with numpyro.plate("data", n, dim=-2), numpyro.plate("features", 2, dim=-1):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    x2 = jnp.stack([X, -X], axis=1)
    out2 = kl_objective(jax.random.key(0), real2, dream2, x2, 200)
    assert float(out2.total) == pytest.approx(float(-2 * jnp.mean(dist.Normal(0.0, 1.0).log_prob(X))), rel=1e-6)
    # ... and the same worlds refuse one row broadcast over the data plate.
    with pytest.raises(ValueError, match=r"\(1, 2\).*'data' \(size 200 at dim -2\)"):
        kl_objective(jax.random.key(0), real2, dream2, x2[:1], 200)


def test_subsampled_plate_refuses_a_column_minibatch():
    def real(x):
        with numpyro.plate("data", x.shape[0], subsample_size=20) as idx:
            data("x", x[idx])

    def dream(x):
        with numpyro.plate("data", x.shape[0], subsample_size=20):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    kl_objective(jax.random.key(0), real, dream, X)  # fine
    with pytest.raises(ValueError, match=r"\(20, 1\).*size 20 at dim -1"):
        kl_objective(jax.random.key(0), real, dream, X[:, None])


def test_bayes_objective_refuses_a_column_of_responses():
    flips = (jax.random.uniform(jax.random.key(2), (50,)) < 0.3).astype(jnp.float32)
    posterior = dist.Beta(2.0, 3.0)
    prior = dist.Beta(1.0, 1.0)
    ok = bayes.objective(jax.random.key(0), posterior, prior, bayes.coin, None, flips)
    assert jnp.isfinite(ok.total)
    with pytest.raises(ValueError, match=r"site 'y'.*\(50, 1\)"):
        bayes.objective(jax.random.key(0), posterior, prior, bayes.coin, None, flips[:, None])
    with pytest.raises(ValueError, match=r"site 'y'.*\(50, 1\)"):
        jax.jit(lambda y: bayes.objective(jax.random.key(0), posterior, prior, bayes.coin, None, y).total)(
            flips[:, None]
        )


@pytest.mark.parametrize("which", ["objective", "objective_lrt"])
def test_bnn_objectives_refuse_a_column_of_responses(which):
    net = bnn.network(jax.random.key(0), 3, 1, width=4)
    likelihood = bnn.regression(net, 0.5)
    params = bnn.init_posterior(net)
    prior = bnn.gaussian_prior(net.num_weights)
    x = jax.random.normal(jax.random.key(1), (16, 3))
    y = jnp.sum(x, axis=1)
    fn = getattr(bnn, which)
    ok = fn(jax.random.key(2), params, prior, likelihood, x, y, data_size=64)
    assert jnp.isfinite(ok.total)
    with pytest.raises(ValueError, match=r"y"):
        fn(jax.random.key(2), params, prior, likelihood, x, y[:, None], data_size=64)
    with pytest.raises(ValueError, match=r"y"):
        jax.jit(lambda yy: fn(jax.random.key(2), params, prior, likelihood, x, yy, data_size=64).total)(y[:, None])


@pytest.mark.parametrize("option", ["weights", "names", "base_measure"])
def test_an_array_for_a_mapping_option_says_what_the_option_is(option):
    with pytest.raises(TypeError, match=rf"{option}= maps .*model_kwargs=\{{'{option}'"):
        kl_objective(jax.random.key(1), _real, _dream, X, PARAMS, **{option: jnp.ones(2)})
