"""klbook.recipe: exact enumeration of small discrete latents (``enumerate_sites``), against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from klbook.recipe import data, kl_objective

U, V = 6, 3
X = jax.random.normal(jax.random.key(0), (U,))
PRIOR = jnp.array([0.3, -0.2, 0.1])


def _logits(x, th):
    return jnp.stack([x * th, -x, 0 * x], -1)  # [U, V]


def real(x, th):
    with numpyro.plate("data", x.shape[0]):
        data("x", x)
        y = numpyro.sample("y", dist.Categorical(logits=_logits(x, th)))
        numpyro.sample("z", dist.Normal(x + y, 0.5))


def dream(x, th):
    with numpyro.plate("data", x.shape[0]):
        y = numpyro.sample("y", dist.Categorical(logits=PRIOR))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(y - 1.0 + 0.3 * z, 1.0), obs=x)


def brute(th):
    """sum_y p(y|x) [log p(y|x)/q(y) + KL(N(x+y, .5) || N(0, 1)) - <log q(x|y, z)>], per example."""
    lp = jax.nn.log_softmax(_logits(X, th))  # [U, V]
    lq = jax.nn.log_softmax(PRIOR)
    y = jnp.arange(V, dtype=jnp.float32)
    mu = X[:, None] + y[None, :]  # [U, V]
    kl_z = dist.kl_divergence(dist.Normal(mu, 0.5), dist.Normal(0.0, 1.0))
    # <-log N(x; y - 1 + .3 z, 1)> with z ~ N(mu, .5): Gaussian closed form
    mean = y[None, :] - 1.0 + 0.3 * mu
    nll_x = 0.5 * jnp.log(2 * jnp.pi) + 0.5 * ((X[:, None] - mean) ** 2 + (0.3 * 0.5) ** 2)
    per = {"y": lp - lq[None, :], "z": kl_z, "x": nll_x}
    return {k: jnp.mean(jnp.sum(jnp.exp(lp) * v, -1)) for k, v in per.items()}


def _discrete_only(th, **kw):
    def r(x):
        with numpyro.plate("data", U):
            data("x", x)
            numpyro.sample("y", dist.Categorical(logits=_logits(x, th)))

    def d(x):
        with numpyro.plate("data", U):
            y = numpyro.sample("y", dist.Categorical(logits=PRIOR))
            numpyro.sample("x", dist.Normal(y - 1.0, 1.0), obs=x)

    return kl_objective(jax.random.key(1), r, d, X, enumerate_sites=("y",), **kw)


def test_discrete_only_is_exact_value_and_gradient():
    def exact(th):
        b = brute(th)
        lp = jax.nn.log_softmax(_logits(X, th))
        lx = dist.Normal(jnp.arange(V)[None, :] - 1.0, 1.0).log_prob(X[:, None])
        return b["y"] - jnp.mean(jnp.sum(jnp.exp(lp) * lx, -1))

    th = 0.7
    loss, grad = jax.jit(jax.value_and_grad(lambda t: _discrete_only(t).loss))(th)
    np.testing.assert_allclose(loss, exact(th), rtol=1e-5)
    np.testing.assert_allclose(grad, jax.grad(exact)(th), rtol=1e-4)  # through the weights p(y|x)
    obj = jax.jit(lambda t: _discrete_only(t, num_particles=3))(th)
    assert float(obj.mc_stderr["total"]) < 1e-6  # nothing random is left: the particles agree up to rounding
    np.testing.assert_allclose(obj.terms["y"], brute(th)["y"], rtol=1e-5)


def test_with_a_continuous_latent_matches_closed_form_within_monte_carlo_error():
    obj = jax.jit(lambda k: kl_objective(k, real, dream, X, 0.7, enumerate_sites=("y",), num_particles=1000))(
        jax.random.key(2)
    )
    ref = brute(0.7)
    np.testing.assert_allclose(obj.terms["y"], ref["y"], rtol=1e-5)  # the label's term is exact
    for site in ("z", "x"):
        assert abs(float(obj.terms[site] - ref[site])) < 4 * float(obj.mc_stderr[site]) + 1e-5


def test_enumeration_agrees_with_the_sampled_estimate():
    ref = brute(0.7)
    total = sum(ref.values())
    sampled = jax.jit(lambda k: kl_objective(k, real, dream, X, 0.7, num_particles=1000))(jax.random.key(3))
    assert abs(float(sampled.total - total)) < 4 * float(sampled.mc_stderr["total"])


def test_two_sites_enumerate_every_combination():
    p1, p2 = jnp.linspace(0.1, 0.9, U), jnp.linspace(0.8, 0.3, U)

    def r(x):
        with numpyro.plate("data", U):
            data("x", x)
            numpyro.sample("a", dist.Bernoulli(probs=p1))
            numpyro.sample("b", dist.Bernoulli(probs=p2))

    def d(x):
        with numpyro.plate("data", U):
            a = numpyro.sample("a", dist.Bernoulli(probs=0.5))
            b = numpyro.sample("b", dist.Bernoulli(probs=0.3))
            numpyro.sample("x", dist.Normal(a + 2 * b, 1.0), obs=x)

    obj = kl_objective(jax.random.key(4), r, d, X, enumerate_sites=("a", "b"))
    total = 0.0
    for a in (0.0, 1.0):
        for b in (0.0, 1.0):
            pa = jnp.where(a == 1, p1, 1 - p1)
            pb = jnp.where(b == 1, p2, 1 - p2)
            ratio = (
                jnp.log(pa)
                - jnp.log(0.5)
                + jnp.log(pb)
                - jnp.log(jnp.where(b == 1, 0.3, 0.7))
                - dist.Normal(a + 2 * b, 1.0).log_prob(X)
            )
            total = total + pa * pb * ratio
    np.testing.assert_allclose(obj.total, jnp.mean(total), rtol=1e-5)


@pytest.mark.parametrize(
    "sites, error, match",
    [
        (("w",), ValueError, "do not have"),
        (("x",), ValueError, "data sites"),
        (("z",), ValueError, "cannot be enumerated"),
        ("y", TypeError, "tuple of site names"),
    ],
)
def test_bad_sites_are_named(sites, error, match):
    with pytest.raises(error, match=match):
        kl_objective(jax.random.key(0), real, dream, X, 0.7, enumerate_sites=sites)


def test_global_sites_and_other_discrete_latents_are_refused():
    def r(x):
        g = numpyro.sample("g", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", U):
            data("x", x)
            numpyro.sample("y", dist.Bernoulli(probs=0.5 + 0 * g))

    def d(x):
        g = numpyro.sample("g", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", U):
            y = numpyro.sample("y", dist.Bernoulli(probs=0.5))
            numpyro.sample("x", dist.Normal(y + g, 1.0), obs=x)

    with pytest.raises(ValueError, match="outside"):
        kl_objective(jax.random.key(0), r, d, X, enumerate_sites=("y",))

    def r2(x):
        with numpyro.plate("data", U):
            data("x", x)
            numpyro.sample("y", dist.Bernoulli(probs=0.5))
            numpyro.sample("c", dist.Bernoulli(probs=0.2))

    def d2(x):
        with numpyro.plate("data", U):
            y = numpyro.sample("y", dist.Bernoulli(probs=0.5))
            c = numpyro.sample("c", dist.Bernoulli(probs=0.5))
            numpyro.sample("x", dist.Normal(y + c, 1.0), obs=x)

    with pytest.raises(NotImplementedError, match="c"):
        kl_objective(jax.random.key(0), r2, d2, X, enumerate_sites=("y",))
