"""klbook.model_guide: a NumPyro model and guide give the recipe's ledger, equal to Trace_ELBO / N.

The recipe and NumPyro's ``Trace_ELBO`` draw different random numbers, so they are compared as
what they are: unbiased estimators of the same expectation. Each is evaluated on many keys, one
particle each, and the two means (value and every gradient component) must agree within four
standard errors of their difference. A closed form (the conjugate model's exact ELBO) checks
both against the truth too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from klbook import model_guide, train
from klbook.recipe import kl_objective

N = 20
Y = 1.0 + jax.random.normal(jax.random.key(7), (N,))
PRIOR_SCALE, NOISE = 3.0, 1.0


def conjugate_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE), obs=y)


def conjugate_guide(y):
    loc = numpyro.param("loc", 0.3)
    scale = numpyro.param("scale", 0.5, constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


def exact_neg_elbo(loc, scale, y):
    """-ELBO of the conjugate model under the guide N(loc, scale), in closed form (nats, total)."""
    n = y.shape[0]
    expected_loglik = jnp.sum(-0.5 * jnp.log(2 * jnp.pi * NOISE**2) - ((y - loc) ** 2 + scale**2) / (2 * NOISE**2))
    kl_prior = jnp.log(PRIOR_SCALE / scale) + (scale**2 + loc**2) / (2 * PRIOR_SCALE**2) - 0.5
    del n
    return -expected_loglik + kl_prior


def _per_key(fn, params, num):
    keys = jax.random.split(jax.random.key(11), num)
    vals, grads = jax.vmap(lambda k: jax.value_and_grad(fn)(params, k))(keys)
    return vals, grads


def _agree(a, b, z=4.0):
    """Means of two independent samples agree within z standard errors of their difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a.mean(0) - b.mean(0)
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    assert np.all(np.abs(diff) <= z * se + 1e-6), (diff, se)


def _compare_with_trace_elbo(model, guide, args, num=4000, data_size=N):
    w = model_guide.worlds(jax.random.key(0), model, guide, *args)

    def recipe_loss(params, k):
        return kl_objective(k, w.real, w.dream, params, *args).loss

    def elbo_loss(params, k):
        return Trace_ELBO().loss(k, w.constrained(params), model, guide, *args) / data_size

    rv, rg = _per_key(recipe_loss, w.params, num)
    ev, eg = _per_key(elbo_loss, w.params, num)
    _agree(rv, ev)
    for name in w.params:
        _agree(rg[name].reshape(num, -1), eg[name].reshape(num, -1))
    return w, rv, rg


def test_conjugate_model_matches_trace_elbo_and_the_closed_form():
    w, rv, rg = _compare_with_trace_elbo(conjugate_model, conjugate_guide, (Y,))
    assert set(w.params) == {"loc", "scale"}
    c = w.constrained(w.params)
    assert float(c["scale"]) == pytest.approx(0.5, rel=1e-6)  # unconstrained round trip

    def exact(params):
        cp = w.constrained(params)
        return exact_neg_elbo(cp["loc"], cp["scale"], Y) / N

    # The recipe drops the data's unknown <log p(y)>, so its total is -ELBO/N exactly in expectation.
    value, grad = jax.value_and_grad(exact)(w.params)
    se = float(np.std(rv, ddof=1) / np.sqrt(len(rv)))
    assert abs(float(np.mean(rv)) - float(value)) <= 4 * se
    for name in w.params:
        g = np.asarray(rg[name])
        assert abs(g.mean() - float(grad[name])) <= 4 * g.std(ddof=1) / np.sqrt(len(g)) + 1e-6


def hierarchical_model(y, batch=5):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 0.5), obs=y[idx])


def hierarchical_guide(y, batch=5):
    m = numpyro.param("m", 0.1)
    s = numpyro.param("s", 0.7, constraint=constraints.positive)
    a = numpyro.param("a", jnp.zeros(y.shape[0]))
    b = numpyro.param("b", 0.5 * jnp.ones(y.shape[0]), constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s))
    with numpyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        numpyro.sample("z", dist.Normal(a[idx], b[idx]))


def test_subsampled_hierarchical_model_matches_trace_elbo():
    w, _, _ = _compare_with_trace_elbo(hierarchical_model, hierarchical_guide, (Y,), num=6000)
    out = kl_objective(jax.random.key(3), w.real, w.dream, w.params, Y, num_particles=4)
    # per-site ledger: the global latent's KL/N, the local latents' KL per example, the data term
    assert set(out.terms) == {"mu", "z", "y"} and out.dropped == ("y",)


def test_autoguide_and_training_reach_the_exact_posterior():
    guide = AutoNormal(conjugate_model)
    w = model_guide.worlds(jax.random.key(0), conjugate_model, guide, Y)

    def loss(params, k, batch):
        out = kl_objective(k, w.real, w.dream, params, Y, num_particles=8)
        return out.loss, out.terms

    result = train.fit(jax.random.key(1), loss, w.params, num_steps=1500, optimizer=optax.adam(0.03), progress=False)
    post_prec = 1 / PRIOR_SCALE**2 + N / NOISE**2
    post_mean, post_sd = float(jnp.sum(Y) / NOISE**2 / post_prec), float(post_prec**-0.5)
    fitted = w.constrained(result.params)
    loc = float(fitted["mu_auto_loc"])
    scale = float(fitted["mu_auto_scale"])
    # Adam with a constant step and 8-particle gradients wanders around the optimum by about
    # step x gradient noise; a tenth of the posterior's sd is far outside that and far inside
    # the distance from the initialisation (AutoNormal starts at the prior's median, 0, sd 0.1).
    assert abs(loc - post_mean) < 0.1 * post_sd
    assert abs(scale - post_sd) < 0.1 * post_sd


def test_mismatched_pairs_are_named():
    def guide_missing_mu(y):
        numpyro.param("unused", 0.0)

    with pytest.raises(ValueError, match=r"\['mu'\] are latent sites of the model that the guide does not draw"):
        model_guide.worlds(jax.random.key(0), conjugate_model, guide_missing_mu, Y)

    def guide_with_extra(y):
        conjugate_guide(y)
        numpyro.sample("nu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"\['nu'\] are sites the guide draws that the model does not have"):
        model_guide.worlds(jax.random.key(0), conjugate_model, guide_with_extra, Y)

    def guide_wrong_shape(y):  # the recipe names a site whose shapes differ, eagerly and under jit
        numpyro.sample("mu", dist.Normal(jnp.zeros(1), 1.0).to_event(1))

    w = model_guide.worlds(jax.random.key(0), conjugate_model, guide_wrong_shape, Y)
    with pytest.raises(ValueError, match=r"site 'mu' has"):
        kl_objective(jax.random.key(1), w.real, w.dream, w.params, Y)
    with pytest.raises(ValueError, match=r"site 'mu' has"):
        jax.jit(lambda p: kl_objective(jax.random.key(1), w.real, w.dream, p, Y).total)(w.params)

    def model_without_data(y):
        numpyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed"):
        model_guide.worlds(jax.random.key(0), model_without_data, conjugate_guide, Y)

    def guide_observing(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"guide observes sites \['y'\]"):
        model_guide.worlds(jax.random.key(0), conjugate_model, guide_observing, Y)
    with pytest.raises(TypeError, match="guide must be"):
        model_guide.worlds(jax.random.key(0), conjugate_model, None, Y)
    w = model_guide.worlds(jax.random.key(0), conjugate_model, conjugate_guide, Y)
    with pytest.raises(KeyError, match="not parameters"):
        w.constrained({"nope": jnp.zeros(())})


def test_the_comparison_has_power():
    # The same comparison must fail for a quantity that is off by a plausible mistake: the
    # ELBO divided by N/2 instead of N (a global term counted per minibatch, say).
    with pytest.raises(AssertionError):
        _compare_with_trace_elbo(conjugate_model, conjugate_guide, (Y,), num=2000, data_size=N // 2)
