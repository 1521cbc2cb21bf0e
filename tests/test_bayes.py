"""klbook.bayes: the recipe's optimum against conjugate closed forms, the mean-field gap, minibatches."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from estimator_check import same_expectation, value_and_grad_draws

from klbook import bayes, kl

N, DIM, NOISE, TAU = 60, 2, 1.0, 1.0
EPS = float(jnp.finfo(jnp.float32).eps)


def stack(params, k):
    return jax.tree.map(lambda a: jnp.stack([a] * k), params)


def one(params, i):
    return jax.tree.map(lambda a: a[i], params)


@pytest.fixture(scope="module")
def regression():
    key = jax.random.key(0)
    corr = np.array([[1.0, 0.9], [0.9, 1.0]])
    x = jax.random.normal(jax.random.fold_in(key, 0), (N, DIM)) @ jnp.asarray(np.linalg.cholesky(corr).T, jnp.float32)
    y = x @ jnp.array([0.7, -0.4]) + NOISE * jax.random.normal(jax.random.fold_in(key, 1), (N,))
    prior = dist.Normal(jnp.zeros(DIM), TAU).to_event(1)
    return x, y, prior


def test_closed_forms_against_direct_computation():
    # coin: log B(a+h, b+t) - log B(a, b) against the sum over the sequence of predictive probabilities
    h, t, a, b = 3, 5, 2.0, 1.5
    seq = [1] * h + [0] * t
    direct, ha, ta = 0.0, 0, 0
    for flip in seq:
        p = (a + ha) / (a + b + ha + ta)
        direct += math.log(p if flip else 1 - p)
        ha, ta = ha + flip, ta + 1 - flip
    assert abs(bayes.coin_log_evidence(h, t, a, b) - direct) < 1e-12
    assert bayes.coin_posterior(h, t, a, b, beta=0.5) == (a + 1.5, b + 2.5)


def test_regression_evidence_is_prior_times_likelihood_over_posterior(regression):
    x, y, _ = regression
    post = bayes.regression_posterior(x, y, NOISE, TAU)
    theta = np.array([0.3, -0.2])  # any theta: log q(D) = log q(theta) + log q(D|theta) - log q(theta|D)
    xd, yd = np.asarray(x, np.float64), np.asarray(y, np.float64)
    log_prior = -0.5 * theta @ theta / TAU**2 - DIM / 2 * math.log(2 * math.pi * TAU**2)
    r = yd - xd @ theta
    log_lik = -0.5 * r @ r / NOISE**2 - N / 2 * math.log(2 * math.pi * NOISE**2)
    d = theta - post.mean
    log_post = (
        -0.5 * d @ post.precision @ d + 0.5 * np.linalg.slogdet(post.precision)[1] - DIM / 2 * math.log(2 * math.pi)
    )
    assert abs(bayes.regression_log_evidence(x, y, NOISE, TAU) - (log_prior + log_lik - log_post)) < 1e-9


def test_mean_field_gap_is_the_kl_of_the_best_member():
    s = np.array([[2.0, 0.8, 0.1], [0.8, 1.5, -0.4], [0.1, -0.4, 1.0]])
    target = bayes.Gaussian(np.zeros(3), s)
    best = bayes.gaussian_kl(np.zeros(3), np.diag(1 / np.diag(s)), target)
    assert abs(best - bayes.mean_field_gap(precision=s)) < 1e-12
    for scale in (0.9, 1.1):  # any other diagonal member is further
        assert bayes.gaussian_kl(np.zeros(3), np.diag(scale / np.diag(s)), target) > best


def test_objective_at_the_exact_posterior_is_minus_log_evidence_with_no_spread(regression):
    x, y, prior = regression
    post = bayes.regression_posterior(x, y, NOISE, TAU)
    q = dist.MultivariateNormal(jnp.asarray(post.mean, jnp.float32), jnp.asarray(post.cov, jnp.float32))
    out = bayes.objective(jax.random.key(1), q, prior, bayes.linear(NOISE), x, y, num_particles=64)
    target = -bayes.regression_log_evidence(x, y, NOISE, TAU) / N
    assert abs(float(out.total) - target) <= 256 * EPS * target
    assert float(out.mc_stderr["total"]) <= 256 * EPS * target
    assert set(out.terms) == {"rate", "distortion", "inputs"}


def test_coin_recipe_recovers_tempered_posteriors():
    flips = jnp.array([1] * 7 + [0] * 13, jnp.int32)
    family = lambda p: dist.Beta(jnp.exp(p[0]), jnp.exp(p[1]))
    betas = (0.5, 1.0, 2.0)
    res = bayes.fit_posterior(
        jax.random.key(2),
        family,
        jnp.zeros((3, 2)),
        dist.Beta(1.0, 1.0),
        bayes.coin,
        None,
        flips,
        betas=betas,
        num_steps=600,
        learning_rate=0.2,
        progress=False,
    )
    for i, b in enumerate(betas):
        exact = dist.Beta(*bayes.coin_posterior(7, 13, beta=b))
        others = [dist.Beta(*bayes.coin_posterior(7, 13, beta=o)) for o in betas if o != b]
        k = float(kl(family(res.params[i]), exact))
        assert k < 0.02 and all(k < 0.1 * float(kl(family(res.params[i]), o)) for o in others)


@pytest.fixture(scope="module")
def fits(regression):
    x, y, prior = regression
    full = bayes.fit_posterior(
        jax.random.key(3),
        bayes.gaussian,
        stack(bayes.init_gaussian(DIM, True), 3),
        prior,
        bayes.linear(NOISE),
        x,
        y,
        betas=(1.0, 0.5, 2.0),
        num_steps=1500,
        learning_rate=0.05,
        progress=False,
    )
    mf = bayes.fit_posterior(
        jax.random.key(4),
        bayes.gaussian,
        stack(bayes.init_gaussian(DIM, False), 1),
        prior,
        bayes.linear(NOISE),
        x,
        y,
        num_steps=1500,
        learning_rate=0.05,
        progress=False,
    )
    return full, mf


def test_full_rank_optimum_is_the_exact_and_tempered_posterior(regression, fits):
    x, y, prior = regression
    full, _ = fits
    for i, b in enumerate((1.0, 0.5, 2.0)):
        q = bayes.gaussian(one(full.params, i))
        k = bayes.gaussian_kl(q.mean, q.covariance_matrix, bayes.regression_posterior(x, y, NOISE, TAU, beta=b))
        assert k < 0.01, (b, k)
    q = bayes.gaussian(one(full.params, 0))
    k = bayes.gaussian_kl(q.mean, q.covariance_matrix, bayes.regression_posterior(x, y, NOISE, TAU))
    ev = bayes.evaluate(
        jax.random.key(5),
        bayes.gaussian,
        jax.tree.map(lambda a: a[:1], full.params),
        prior,
        bayes.linear(NOISE),
        x,
        y,
        num_particles=4096,
    )
    excess = N * float(ev.total[0]) + bayes.regression_log_evidence(x, y, NOISE, TAU)  # = KL(q || posterior)
    assert abs(excess - k) <= 4 * N * float(ev.mc_stderr["total"][0]) + 1e-3


def test_mean_field_gap_measured_by_the_recipe(regression, fits):
    x, y, prior = regression
    _, mf = fits
    post = bayes.regression_posterior(x, y, NOISE, TAU)
    gap = bayes.mean_field_gap(precision=post.precision)
    assert gap > 0.5  # correlation 0.9: a gap well above the noise
    q = bayes.gaussian(one(mf.params, 0))
    k = bayes.gaussian_kl(q.mean, jnp.diag(q.variance), post)
    assert 0 <= k - gap < 0.02
    ev = bayes.evaluate(
        jax.random.key(6), bayes.gaussian, mf.params, prior, bayes.linear(NOISE), x, y, num_particles=16384
    )
    measured = N * float(ev.total[0]) + bayes.regression_log_evidence(x, y, NOISE, TAU)
    assert abs(measured - k) <= 4 * N * float(ev.mc_stderr["total"][0]) + 1e-3


@pytest.mark.parametrize("batch", [8, 64])
def test_minibatch_objective_has_the_full_data_expectation(batch):
    key = jax.random.key(7)
    n = 128
    x = jax.random.normal(jax.random.fold_in(key, 0), (n, DIM))
    y = x @ jnp.array([1.0, 0.5]) + jax.random.normal(jax.random.fold_in(key, 1), (n,))
    prior = dist.Normal(jnp.zeros(DIM), TAU).to_event(1)
    q = dist.Normal(jnp.array([0.8, 0.4]), jnp.array([0.2, 0.3])).to_event(1)
    keys = jax.random.split(jax.random.fold_in(key, 2), 4000)

    def values(b):
        run = jax.vmap(lambda k: bayes.objective(k, q, prior, bayes.linear(NOISE), x, y, subsample_size=b))
        return np.asarray(jax.jit(run)(keys).total, np.float64)

    sub, full = values(batch), values(None)
    se = math.sqrt(sub.var() / sub.size + full.var() / full.size)
    assert abs(sub.mean() - full.mean()) <= 4 * se
    # fit's way: the batch drawn outside, N stated; the rate is KL/N, not KL/B
    idx = jnp.arange(batch)
    out = bayes.objective(key, q, prior, bayes.linear(NOISE), x[idx], y[idx], data_size=n, num_particles=2)
    assert abs(float(out.terms["rate"]) - float(kl(q, prior)) / n) < 1e-5 + 4 * float(out.mc_stderr["rate"])


def test_predictive_log_lik_of_a_point_mass_is_the_log_likelihood():
    x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    y = jnp.array([1.0, 0.0])
    theta = jnp.array([0.3, -0.2])
    expected = dist.Bernoulli(logits=x @ theta).log_prob(y).mean()
    got = bayes.predictive_log_lik(bayes.logistic, jnp.stack([theta] * 5), x, y)
    assert abs(float(got - expected)) < 8 * EPS


def test_mean_field_gap_names_its_matrix_and_refuses_a_wrong_one():
    s = np.array([[2.0, 0.8], [0.8, 1.5]])
    with pytest.raises(TypeError):  # keyword-only: a covariance cannot slip in positionally
        bayes.mean_field_gap(s)
    with pytest.raises(ValueError, match="positive definite"):
        bayes.mean_field_gap(precision=np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 and -1
    with pytest.raises(ValueError, match="positive definite"):
        bayes.mean_field_gap(precision=-np.eye(2))  # log det finite, sign -1
    with pytest.raises(ValueError, match="symmetric"):
        bayes.mean_field_gap(precision=np.array([[2.0, 0.8], [0.1, 1.5]]))
    with pytest.raises(ValueError, match="square"):
        bayes.mean_field_gap(precision=np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        bayes.mean_field_gap(precision=np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="outside the transform"):  # under jit: a clear error, not a tracer one
        jax.jit(lambda m: bayes.mean_field_gap(precision=m))(jnp.asarray(s))


def test_objective_takes_numpy_arrays_with_subsampling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, DIM)).astype(np.float32)
    y = (x @ np.array([1.0, 0.5]) + rng.normal(size=20)).astype(np.float32)
    prior = dist.Normal(jnp.zeros(DIM), TAU).to_event(1)
    q = dist.Normal(jnp.array([0.8, 0.4]), jnp.array([0.2, 0.3])).to_event(1)
    key = jax.random.key(8)

    def run(a, b, **kw):
        return bayes.objective(key, q, prior, bayes.linear(NOISE), a, b, subsample_size=4, **kw).total

    many = run(x, y, num_particles=3)  # particles are vmapped: the subsample's indices are traced
    jitted = jax.jit(lambda k: bayes.objective(k, q, prior, bayes.linear(NOISE), x, y, subsample_size=4).total)(key)
    assert np.isfinite(float(many)) and np.isfinite(float(jitted))
    assert float(many) == pytest.approx(float(run(jnp.asarray(x), jnp.asarray(y), num_particles=3)), rel=1e-6)
    assert float(jitted) == pytest.approx(float(run(jnp.asarray(x), jnp.asarray(y))), rel=1e-5)


# ------------------------------------------------- against NumPyro's own estimator (issue 22)


@pytest.mark.parametrize("full_rank", [False, True])
def test_objective_is_numpyros_negative_elbo_per_example_value_and_gradient(regression, full_rank):
    """bayes.objective(...).total = Trace_ELBO().loss / N for the model joint_model and a guide drawing
    theta from the family: value and gradient, each within 5 Monte Carlo standard errors."""
    import numpyro
    from numpyro.infer import Trace_ELBO

    x, y, prior = regression
    lik = bayes.linear(NOISE)
    params = bayes.init_gaussian(DIM, full_rank, scale=0.3)
    params = {**params, "loc": jnp.array([0.5, -0.2])}

    def guide(p, prior_, likelihood, xx, yy):
        numpyro.sample("theta", bayes.gaussian(p))

    def model(p, prior_, likelihood, xx, yy):
        bayes.joint_model(prior_, likelihood, xx, yy)

    recipe = lambda p, k: bayes.objective(k, bayes.gaussian(p), prior, lik, x, y).loss
    elbo = lambda p, k: Trace_ELBO().loss(k, {}, model, guide, p, prior, lik, x, y) / N
    r_values, r_grads = value_and_grad_draws(recipe, params, 20)
    e_values, e_grads = value_and_grad_draws(elbo, params, 21)
    same_expectation(r_values, e_values, "value")
    same_expectation(r_grads, e_grads, "gradient")
    assert r_grads.std(0).max() > 0


def test_coin_objective_is_numpyros_negative_elbo_with_no_inputs():
    """The coin (x = None, passed explicitly) against Trace_ELBO on a Beta guide, value and gradient."""
    import numpyro
    from numpyro.infer import Trace_ELBO

    flips = jnp.array([1] * 7 + [0] * 13, jnp.float32)
    prior = dist.Beta(1.0, 1.0)
    family = lambda p: dist.Beta(jnp.exp(p[0]), jnp.exp(p[1]))
    params = jnp.log(jnp.array([6.0, 12.0]))

    def guide(p, yy):
        numpyro.sample("theta", family(p))

    def model(p, yy):
        bayes.joint_model(prior, bayes.coin, None, yy)

    recipe = lambda p, k: bayes.objective(k, family(p), prior, bayes.coin, None, flips).loss
    elbo = lambda p, k: Trace_ELBO().loss(k, {}, model, guide, p, flips) / flips.shape[0]
    r_values, r_grads = value_and_grad_draws(recipe, params, 22)
    e_values, e_grads = value_and_grad_draws(elbo, params, 23)
    same_expectation(r_values, e_values, "value")
    same_expectation(r_grads, e_grads, "gradient")


def test_fit_posterior_names_a_missing_beta_axis(regression):
    """Issue 22: unstacked params reached jax.vmap ("inconsistent sizes", "reinterpreted_batch_ndims")."""
    x, y, prior = regression
    one = bayes.init_gaussian(DIM, False)  # {"loc": [DIM], ...}: no leading beta axis
    fit = lambda params, betas: bayes.fit_posterior(  # noqa: E731
        jax.random.key(0),
        bayes.gaussian,
        params,
        prior,
        bayes.linear(NOISE),
        x,
        y,
        betas=betas,
        num_steps=1,
        progress=False,
    )
    with pytest.raises(ValueError, match=r"leading axis of len\(betas\) = 1.*got a leaf of shape \(2,\)"):
        fit(one, (1.0,))
    # betas as many as the weights: every leaf "has" the axis; family(params[0]) is what gives it away
    with pytest.raises(ValueError, match=r"leading axis of len\(betas\) = 2.*family\(params\[0\]\)"):
        fit(one, (1.0, 2.0))
    with pytest.raises(ValueError, match=r"leading axis of len\(betas\) = 3"):
        fit(stack(one, 2), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="betas must be a non-empty vector"):
        fit(stack(one, 1), ())
    res = fit(stack(one, 2), (1.0, 2.0))  # stacked: accepted
    assert set(res.history) == {"loss", "total, beta=1", "total, beta=2"}
