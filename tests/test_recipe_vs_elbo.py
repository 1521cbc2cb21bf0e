"""The recipe against NumPyro's ELBOs on models the book does not use: value *and* gradient.

For each model pair the recipe's real world is NumPyro's guide plus the data and its dream
world is NumPyro's model, so ``kl_objective(...).total`` estimates ``Trace_ELBO().loss / N``
(N the full number of examples). Both estimators are run with many independent keys; each
comparison is within 5 combined Monte Carlo standard errors measured here, never a tolerance
picked by hand. Discrete latents are compared with ``TraceGraph_ELBO`` for the gradient
(``Trace_ELBO`` has no score-function term) and ``Trace_ELBO`` for the value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import Trace_ELBO, TraceGraph_ELBO

from klbook.recipe import data, kl_objective

REPLICATES = 200  # independent keys per estimator


def _draws(fn, params, seed):
    """``REPLICATES`` independent (value, flat gradient) draws of ``fn(params, key)``."""
    keys = jax.random.split(jax.random.key(seed), REPLICATES)
    value_and_grad = jax.value_and_grad(fn)
    values, grads = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0)))(params, keys)
    flat = jnp.concatenate([g.reshape(REPLICATES, -1) for g in jax.tree.leaves(grads)], axis=1)
    return np.asarray(values, np.float64), np.asarray(flat, np.float64)


def _mean_se(x):
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(x.shape[0])


def assert_same_expectation(a, b, what):
    """Means of two independent samples agree within 5 combined standard errors, per component."""
    (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
    gap, se = np.abs(ma - mb), np.sqrt(sa**2 + sb**2)
    assert np.all(gap < 5 * se + 1e-6), (what, ma, mb, se)


def compare(real, dream, guide, params, args, n, *, seed, elbo=Trace_ELBO, grad_elbo=None, particles=1):
    """Value and gradient of the recipe vs ``ELBO.loss / n`` over ``REPLICATES`` keys each."""

    def recipe(p, key):
        return kl_objective(key, real, dream, p, *args, num_particles=particles).loss

    def numpyro_loss(cls):
        return lambda p, key: cls(num_particles=particles).loss(key, {}, dream, guide, p, *args) / n

    r_values, r_grads = _draws(recipe, params, seed)
    e_values, e_grads = _draws(numpyro_loss(elbo), params, seed + 1)
    assert_same_expectation(r_values, e_values, "value")
    if grad_elbo is not None:
        e_values, e_grads = _draws(numpyro_loss(grad_elbo), params, seed + 2)
    assert_same_expectation(r_grads, e_grads, "gradient")
    assert np.std(r_grads, axis=0).max() > 0  # the comparison is not vacuous
    return r_values, r_grads


# ---------------------------------------------------------------------------------------------
# Subsampled conjugate Gaussian: mu ~ N(0, 1), x_i | mu ~ N(mu, 1), i = 1..N, minibatches of B.
N, B = 200, 16
XS = 0.8 + jax.random.normal(jax.random.key(0), (N,))


def conj_real(p, x):
    numpyro.sample("mu", dist.Normal(p["m"], jnp.exp(p["log_s"])))
    with numpyro.plate("data", N, subsample_size=B) as idx:
        data("x", x[idx])


def conj_guide(p, x):
    numpyro.sample("mu", dist.Normal(p["m"], jnp.exp(p["log_s"])))


def conj_dream(p, x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", N, subsample_size=B) as idx:
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def conj_exact(p, x):
    """-ELBO / N in closed form: [KL(g || prior) + sum_i E_g(-log N(x_i | mu, 1))] / N."""
    s2 = jnp.exp(2 * p["log_s"])
    kl = 0.5 * (s2 + p["m"] ** 2 - 1.0) - p["log_s"]
    nll = 0.5 * jnp.log(2 * jnp.pi) + 0.5 * ((x - p["m"]) ** 2 + s2)
    return (kl + jnp.sum(nll)) / x.shape[0]


def conj_posterior(x):
    precision = 1.0 + x.shape[0]
    return {"m": jnp.sum(x) / precision, "log_s": -0.5 * jnp.log(precision)}


def test_subsampled_conjugate_gaussian_gives_the_evidence_per_example():
    """At the exact posterior, -ELBO / N = -log p(x) / N exactly; subsampling only adds noise."""
    post = conj_posterior(XS)
    log_evidence = (
        dist.Normal(post["m"], 1.0).log_prob(XS).sum()
        + dist.Normal(0.0, 1.0).log_prob(post["m"])
        - dist.Normal(post["m"], jnp.exp(post["log_s"])).log_prob(post["m"])
    )
    truth = float(-log_evidence / N)
    obj = kl_objective(jax.random.key(1), conj_real, conj_dream, post, XS, num_particles=2000)
    assert abs(float(obj.total) - truth) < 5 * float(obj.stderr["total"]), (float(obj.total), truth)
    assert float(obj.stderr["total"]) < 0.01  # a sharp test: 2000 minibatches of 16
    np.testing.assert_allclose(float(conj_exact(post, XS)), truth, rtol=1e-5)  # the closed form agrees


def test_subsampled_conjugate_gaussian_matches_trace_elbo_value_and_gradient():
    # Far from the prior (KL = 4 nats) and from the posterior: non-zero gradients, and a global
    # term divided by B instead of N would be off by 4 (1/B - 1/N) = 0.23 nats per example.
    params = {"m": jnp.array(2.0), "log_s": jnp.array(-2.5)}
    values, grads = compare(conj_real, conj_dream, conj_guide, params, (XS,), N, seed=10, particles=8)
    exact_value = float(conj_exact(params, XS))
    g = jax.grad(conj_exact)(params, XS)
    exact_grad = np.array([float(g["log_s"]), float(g["m"])])  # leaves in key order
    mean, se = _mean_se(values)
    assert abs(mean - exact_value) < 5 * se
    mean, se = _mean_se(grads)
    assert np.all(np.abs(mean - exact_grad) < 5 * se), (mean, exact_grad, se)


def test_both_worlds_score_the_same_minibatch():
    """Same indices in both worlds: one particle's data term is exactly that batch's mean."""

    def real(x):
        with numpyro.plate("data", N, subsample_size=B) as idx:
            data("x", x[idx])

    def dream(x):
        with numpyro.plate("data", N, subsample_size=B) as idx:
            numpyro.sample("x", dist.Normal(x[idx], 1.0), obs=x[idx])  # scores x_i under N(x_i, 1)

    obj = kl_objective(jax.random.key(2), real, dream, XS)
    # With the same indices every example scores its own mean: 0.5 log(2 pi) exactly.
    np.testing.assert_allclose(float(obj.total), 0.5 * np.log(2 * np.pi), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Hierarchical, with global and local latents: mu, log_tau global; theta_j per group.
SIGMA = jnp.array([1.0, 0.6, 1.5, 0.8, 1.2, 2.0, 0.7, 1.1])
YS = jnp.array([2.1, 0.4, -0.3, 1.7, 0.9, 3.0, 1.2, -0.8])
J = YS.shape[0]


def hier_dream(p, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    log_tau = numpyro.sample("log_tau", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", J):
        theta = numpyro.sample("theta", dist.Normal(mu, jnp.exp(log_tau)))
        numpyro.sample("y", dist.Normal(theta, SIGMA), obs=y)


def hier_guide(p, y):
    mu = numpyro.sample("mu", dist.Normal(p["mu_loc"], jnp.exp(p["mu_log_scale"])))
    numpyro.sample("log_tau", dist.Normal(p["tau_loc"], jnp.exp(p["tau_log_scale"])))
    with numpyro.plate("data", J):
        # local posteriors that lean on the global draw (global plus local, not mean-field)
        numpyro.sample("theta", dist.Normal(p["w"] * y + (1 - p["w"]) * mu, jnp.exp(p["theta_log_scale"])))


def hier_real(p, y):
    hier_guide(p, y)
    with numpyro.plate("data", J):
        data("y", y)


HIER_PARAMS = {
    "mu_loc": jnp.array(0.8),
    "mu_log_scale": jnp.array(-0.5),
    "tau_loc": jnp.array(-0.2),
    "tau_log_scale": jnp.array(-1.0),
    "w": jnp.array(0.6),
    "theta_log_scale": jnp.full(J, -0.4),
}


def test_hierarchical_global_and_local_latents_match_trace_elbo():
    compare(hier_real, hier_dream, hier_guide, HIER_PARAMS, (YS,), J, seed=20)


# ---------------------------------------------------------------------------------------------
# Discrete local latents: a two-component mixture with a learned assignment model.
XMIX = jnp.array([-2.1, -1.4, 0.3, 1.8, 2.5, -0.2, 1.1, -1.9, 2.2, 0.7])


def mix_dream(p, x):
    locs = jnp.stack([p["loc0"], p["loc1"]])
    with numpyro.plate("data", x.shape[0]):
        c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(2)))
        numpyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)


def mix_guide(p, x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("c", dist.Categorical(logits=jnp.stack([jnp.zeros_like(x), p["a"] * x + p["b"]], -1)))


def mix_real(p, x):
    mix_guide(p, x)
    with numpyro.plate("data", x.shape[0]):
        data("x", x)


def test_discrete_latents_match_trace_elbo_value_and_tracegraph_gradient():
    params = {"a": jnp.array(0.7), "b": jnp.array(0.2), "loc0": jnp.array(-1.0), "loc1": jnp.array(1.5)}
    _, grads = compare(
        mix_real, mix_dream, mix_guide, params, (XMIX,), XMIX.shape[0], seed=30, grad_elbo=TraceGraph_ELBO, particles=4
    )
    assert np.all(np.abs(grads.mean(0)) > 0)
