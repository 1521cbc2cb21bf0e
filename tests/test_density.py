"""Density estimation (chapter 4): the mixture density, the recipe's two readings, maximum likelihood."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import klbook
from klbook import data, density

KEY = jax.random.key(0)
# NumPyro's own samplers and densities broadcast by rank. A fresh context for every use: in
# jax 0.4.30 (the lowest we support) jax.numpy_rank_promotion(...) is a one-shot context manager.
NUMPYRO = functools.partial(jax.numpy_rank_promotion, "allow")


def sample(d, key, n):
    with NUMPYRO():
        return d.sample(key, (n,))


def log_prob(d, x):
    with NUMPYRO():
        return d.log_prob(x)


def random_params(key, k=3, d=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "logits": jax.random.normal(k1, (k,)),
        "loc": 2.0 * jax.random.normal(k2, (k, d)),
        "tril": 0.5 * jax.random.normal(k3, (k, d, d)),
    }


def reference(params):
    """The same mixture written with NumPyro's own distributions."""
    q = density.density(params)
    components = dist.MultivariateNormal(q.loc, scale_tril=q.scale_tril)
    return dist.MixtureSameFamily(dist.Categorical(logits=q.logits), components)


@pytest.mark.parametrize("k, d", [(1, 2), (3, 2), (4, 3)])
def test_log_prob_matches_numpyro_mixture(k, d):
    params = random_params(jax.random.key(k + d), k, d)
    x = jax.random.normal(jax.random.key(1), (5, 7, d)) * 3.0  # two batch dimensions
    with NUMPYRO():
        expected = reference(params).log_prob(x)
    np.testing.assert_allclose(density.density(params).log_prob(x), expected, rtol=1e-5, atol=1e-5)


def test_one_component_is_a_gaussian():
    params = random_params(KEY, 1, 2)
    q = density.density(params)
    mvn = dist.MultivariateNormal(q.loc[0], scale_tril=q.scale_tril[0])
    x = jax.random.normal(jax.random.key(2), (10, 2))
    with NUMPYRO():
        expected = mvn.log_prob(x)
    np.testing.assert_allclose(q.log_prob(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q.mean, mvn.mean, rtol=1e-6)
    np.testing.assert_allclose(q.covariance_matrix, mvn.covariance_matrix, rtol=1e-5)


def test_scale_tril_is_lower_triangular_with_positive_diagonal():
    q = density.density(random_params(KEY, 3, 3))
    assert jnp.all(jnp.triu(q.scale_tril, 1) == 0.0)
    assert jnp.all(jnp.diagonal(q.scale_tril, axis1=-2, axis2=-1) > 0.0)


def test_mixture_moments_match_samples_within_standard_error():
    q = density.density(random_params(jax.random.key(3), 3, 2))
    n = 200_000
    x = np.asarray(q.sample(jax.random.key(4), (n,)), np.float64)
    mean_se = x.std(0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(x.mean(0) - np.asarray(q.mean)) < 5 * mean_se)
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]  # [n, D, D]
    cov_se = products.std(0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(products.mean(0) - np.asarray(q.covariance_matrix)) < 5 * cov_se)


def test_objective_is_cross_entropy_without_truth_and_kl_with_it():
    truth = dist.MultivariateNormal(jnp.array([0.5, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]))
    x = sample(truth, jax.random.key(5), 20_000)
    params = random_params(jax.random.key(6), 1, 2)
    q = density.density(params)
    ce = density.objective(KEY, params, x)
    assert ce.dropped == ("x",) and set(ce.terms) == {"cross_entropy"}
    np.testing.assert_allclose(ce.total, -jnp.mean(q.log_prob(x)), rtol=1e-5)
    kl = density.objective(KEY, params, x, truth)
    assert kl.dropped == () and set(kl.terms) == {"kl"}
    np.testing.assert_allclose(kl.total, jnp.mean(log_prob(truth, x) - q.log_prob(x)), rtol=1e-5)
    exact = klbook.kl(truth, dist.MultivariateNormal(q.loc[0], scale_tril=q.scale_tril[0]))
    assert abs(kl.total - exact) < 5 * kl.stderr["kl"]


def test_loss_records_both_terms_and_their_difference_is_the_data_entropy_estimate():
    truth = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    x = sample(truth, jax.random.key(7), 500)
    params = random_params(jax.random.key(8), 2, 2)
    loss, terms = density.loss_fn(truth)(params, KEY, x)
    np.testing.assert_allclose(loss, terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(
        terms["cross_entropy"] - terms["kl"], -jnp.mean(log_prob(truth, x)), rtol=1e-5, atol=1e-5
    )
    loss_ce, terms_ce = density.loss_fn()(params, KEY, x)
    assert set(terms_ce) == {"cross_entropy"}
    np.testing.assert_allclose(loss_ce, terms["cross_entropy"], rtol=1e-6)


def test_kl_and_cross_entropy_have_the_same_gradient():
    """Chapter 4: the two readings differ by <log p(x)>, which has no parameters."""
    truth = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    x = sample(truth, jax.random.key(18), 400)
    params = random_params(jax.random.key(19), 3, 2)
    grad_kl = jax.grad(lambda p: density.objective(KEY, p, x, truth).loss)(params)
    grad_ce = jax.grad(lambda p: density.objective(KEY, p, x).loss)(params)
    for name in params:
        largest = float(jnp.abs(grad_ce[name]).max())
        assert largest > 0.0
        # the same float32 operations on log q either way: only rounding of the mean can differ
        np.testing.assert_allclose(grad_kl[name], grad_ce[name], rtol=0, atol=1e-5 * largest)


def test_gradient_matches_numpyro_mixture_gradient():
    x = jax.random.normal(jax.random.key(9), (50, 2)) * 2.0
    params = random_params(jax.random.key(10), 3, 2)
    ours = jax.grad(lambda p: density.objective(KEY, p, x).loss)(params)
    with NUMPYRO():
        theirs = jax.grad(lambda p: -jnp.mean(reference(p).log_prob(x)))(params)
    for name in params:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_fit_recovers_maximum_likelihood_gaussian():
    """Minimum KL from the sample = maximum likelihood: the sample mean and (biased) covariance."""
    n = 1000
    x = jax.random.normal(jax.random.key(11), (n, 2)) @ jnp.array([[1.0, 0.0], [0.6, 0.5]]) + jnp.array([[1.0, -2.0]])
    result = density.fit_density(jax.random.key(12), x, 1, num_steps=400, learning_rate=0.1)
    q = density.density(result.params)
    x64 = np.asarray(x, np.float64)
    mean, cov = x64.mean(0), np.cov(x64.T, bias=True)
    # The optimiser's error must be far below the estimates' own sampling error (1/sqrt(n) scale).
    tolerance = 0.01 * np.sqrt(np.diag(cov).min() / n)
    assert np.abs(np.asarray(q.mean) - mean).max() < tolerance
    assert np.abs(np.asarray(q.covariance_matrix) - cov).max() < tolerance
    assert set(result.history) == {"loss", "cross_entropy"}


def test_fit_with_truth_records_kl():
    truth = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    x = sample(truth, jax.random.key(13), 300)
    result = density.fit_density(jax.random.key(14), x, 2, truth=truth, num_steps=20)
    assert set(result.history) == {"loss", "kl", "cross_entropy"}
    assert result.history["kl"][-1] < result.history["kl"][0]


def test_entropy_mc_matches_closed_form():
    p = dist.MultivariateNormal(jnp.array([1.0, 2.0]), jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    est = density.entropy_mc(jax.random.key(15), p, 50_000)
    assert abs(est.value - p.entropy()) < 5 * est.stderr


def test_init_mixture_spreads_the_means_over_the_data():
    x = data.mixture_2d(jax.random.key(16), 2000).x
    params = density.init_mixture(jax.random.key(17), x, 8)
    assert params["loc"].shape == (8, 2) and params["tril"].shape == (8, 2, 2) and params["logits"].shape == (8,)
    gaps = jnp.linalg.norm(params["loc"][:, None] - params["loc"][None], axis=-1) + 1e9 * jnp.eye(8)  # [8, 8]
    assert jnp.min(gaps) > 0.5  # no two means on top of each other (the components are 2 sin(pi/8) = 0.77 apart)
    assert jnp.all((params["loc"] >= x.min(0)[None]) & (params["loc"] <= x.max(0)[None]))  # inside the data
    again = density.init_mixture(jax.random.key(17), x, 8)
    assert jnp.array_equal(again["loc"], params["loc"])  # same key, same start


def test_init_mixture_finds_the_components_of_a_large_sample():
    """20000 points from eight separated components (scale 0.25, 0.77 apart): each k-means centre
    averages about 2500 points of one component, so it lies within 0.25 / sqrt(2500) = 0.005 (per
    coordinate) of that component's mean; 0.05 is ten of those. Each true mean gets its own centre."""
    sample = data.mixture_2d(jax.random.key(18), 20000)  # ring: radius 2, component scale 0.25
    params = density.init_mixture(jax.random.key(19), sample.x, 8)
    true_means = np.asarray(sample.distribution.component_distribution.base_dist.loc)  # [8, 2]
    d = np.linalg.norm(np.asarray(params["loc"])[:, None] - true_means[None], axis=-1)  # [8 centres, 8 truths]
    assert sorted(np.argmin(d, axis=1)) == list(range(8)), d  # one centre per component
    assert np.max(np.min(d, axis=1)) < 0.05, np.min(d, axis=1)


def test_init_mixture_starts_each_component_from_its_own_cluster():
    """Each component starts with its k-means cluster's share, centre and covariance (as scikit-learn's
    GaussianMixture does), not all with the whole data's spread: before this start, chapter 4's
    eight-component fit at learning rate 0.1 slid onto a wrong maximum at some seeds."""
    x = data.mixture_2d(jax.random.key(26), 2000).x
    params = density.init_mixture(jax.random.key(27), x, 8)
    q = density.density(params)
    x64, centres = np.asarray(x, np.float64), np.asarray(params["loc"], np.float64)
    labels = np.argmin(((x64[:, None] - centres[None]) ** 2).sum(-1), 1)  # k-means's own final assignment
    jitter = 1e-6 * np.mean(np.var(x64, axis=0))
    started = np.asarray(q.scale_tril @ jnp.swapaxes(q.scale_tril, -1, -2), np.float64)  # [8, 2, 2]
    for k in range(8):
        members = x64[labels == k]
        assert members.shape[0] > 100  # every bump has about 250 points
        np.testing.assert_allclose(members.mean(0), centres[k], atol=1e-5)
        cluster_cov = np.cov(members.T, bias=True) + jitter * np.eye(2)
        np.testing.assert_allclose(started[k], cluster_cov, rtol=1e-4, atol=1e-6)
        assert np.all(np.diag(started[k]) < 0.1)  # a bump's own width (0.25^2), far below the ring's spread (2^2)
    shares = np.bincount(labels, minlength=8) / x64.shape[0]
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(params["logits"])), shares, rtol=1e-5)


def test_init_mixture_falls_back_to_the_data_spread_for_a_tiny_cluster():
    """A cluster with fewer than D + 1 points has no full covariance: it starts isotropic with the data's
    average per-dimension variance. A cluster of identical points starts at the jitter, still a valid start."""
    bulk = np.asarray(jax.random.normal(jax.random.key(28), (40, 2)), np.float64)
    x = np.concatenate([bulk, [[50.0, 50.0]], np.full((5, 2), -30.0)])  # a lone outlier, a pile of copies
    params = density.init_mixture(jax.random.key(29), jnp.asarray(x, jnp.float32), 3)
    q = density.density(params)
    covs = np.asarray(q.scale_tril @ jnp.swapaxes(q.scale_tril, -1, -2), np.float64)
    assert np.all(np.isfinite(covs)) and np.all(np.isfinite(np.asarray(params["logits"])))
    where = {tuple(np.round(np.asarray(params["loc"][k]))): k for k in range(3)}
    lone, pile = where[(50.0, 50.0)], where[(-30.0, -30.0)]
    spread = np.mean(np.var(np.asarray(jnp.asarray(x, jnp.float32), np.float64), axis=0))
    np.testing.assert_allclose(covs[lone], spread * np.eye(2), rtol=1e-5)
    np.testing.assert_allclose(covs[pile], 1e-6 * spread * np.eye(2), rtol=1e-3)
    shares = np.asarray(jax.nn.softmax(params["logits"]))
    np.testing.assert_allclose(shares[[lone, pile]], [1 / 46, 5 / 46], rtol=1e-5)


def test_fit_density_restarts_keeps_the_run_with_the_best_training_likelihood():
    truth = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    x = sample(truth, jax.random.key(21), 300)
    result = density.fit_density_restarts(jax.random.key(22), x, 2, 3, truth=truth, num_steps=30)
    assert result.final_cross_entropy.shape == (3,) and result.best == int(np.argmin(result.final_cross_entropy))
    assert set(result.history) == {"kl", "cross_entropy"} and result.history["kl"].shape == (30,)
    # the kept parameters score the training data at the reported best cross-entropy
    kept = -float(jnp.mean(log_prob(density.density(result.params), x)))
    assert abs(kept - result.final_cross_entropy[result.best]) < 1e-5
    no_truth = density.fit_density_restarts(jax.random.key(22), x, 2, 2, num_steps=5)
    assert set(no_truth.history) == {"cross_entropy"}


def test_em_steps_never_lower_the_likelihood_and_fit_one_gaussian_in_one_step():
    x = data.mixture_2d(jax.random.key(23), 500).x
    start = density.init_mixture(jax.random.key(24), x, 4)
    params, log_lik = density.em_steps(start, x, 15)
    assert log_lik.shape == (16,) and np.all(np.diff(log_lik) >= -1e-12)  # Dempster, Laird & Rubin
    # the reported likelihood is the mixture's own (float32 parameters: rounding only)
    assert abs(log_lik[-1] - float(jnp.mean(log_prob(density.density(params), x)))) < 1e-4
    # K = 1: one M step is the maximum-likelihood Gaussian, the sample mean and biased covariance
    one, _ = density.em_steps(density.init_mixture(jax.random.key(25), x, 1), x, 1)
    x64 = np.asarray(x, np.float64)
    q = density.density(one)
    np.testing.assert_allclose(np.asarray(q.mean), x64.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.covariance_matrix), np.cov(x64.T, bias=True), atol=1e-5)
    same, log_lik0 = density.em_steps(start, x, 0)
    assert log_lik0.shape == (1,) and abs(log_lik0[0] - log_lik[0]) < 1e-12


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: density.init_mixture(KEY, jnp.zeros(5), 1), ValueError, "shape \\[N, D\\]"),
        (lambda: density.init_mixture(KEY, jnp.full((4, 2), jnp.nan), 1), ValueError, "x"),
        (lambda: density.init_mixture(KEY, jnp.zeros((4, 2)), 0), ValueError, "num_components"),
        (lambda: density.init_mixture(KEY, jnp.zeros((4, 2)), 5), ValueError, "exceeds"),
        (lambda: density.init_mixture(0, jnp.zeros((4, 2)), 1), TypeError, "PRNG key"),
        (lambda: density.density({"loc": jnp.zeros((2, 2))}), ValueError, "missing"),
        (
            lambda: density.density({"logits": jnp.zeros(3), "loc": jnp.zeros((2, 2)), "tril": jnp.zeros((2, 2, 2))}),
            ValueError,
            "shapes disagree",
        ),
        (lambda: density.entropy_mc(KEY, "p", 10), TypeError, "NumPyro distribution"),
        (lambda: density.entropy_mc(KEY, dist.Normal(0.0, 1.0), 1), ValueError, "num_samples"),
        (lambda: density.fit_density_restarts(KEY, jnp.zeros((4, 2)), 1, 0), ValueError, "num_inits"),
        (lambda: density.fit_density_restarts(KEY, jnp.zeros((4, 2)), 1, True), ValueError, "num_inits"),
        (lambda: density.em_steps(random_params(KEY, 2, 2), jnp.zeros((4, 2)), -1), ValueError, "num_steps"),
        (lambda: density.em_steps(random_params(KEY, 2, 2), jnp.zeros((4, 3)), 1), ValueError, "shape \\[N, D\\]"),
        (lambda: density.em_steps(random_params(KEY, 2, 2), jnp.full((4, 2), jnp.nan), 1), ValueError, "finite"),
        (lambda: density.em_steps({"loc": jnp.zeros((2, 2))}, jnp.zeros((4, 2)), 1), ValueError, "missing"),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_gaussian_mle_kl_averages_to_the_exact_expectation():
    """At N = 20 the exact mean (0.179) is far from k/(2N) = 0.125, so this checks the O(1/N^2) terms."""
    kls = density.gaussian_mle_kl(jax.random.key(20), np.ones(2), np.array([[1.0, 0.3], [0.3, 0.5]]), 20, 4000)
    se = kls.std(ddof=1) / np.sqrt(kls.size)
    assert np.all(kls >= 0)
    assert abs(kls.mean() - density.expected_gaussian_mle_kl(2, 20)) < 5 * se
    assert abs(density.expected_gaussian_mle_kl(2, 20_000) - 5 / 40_000) < 0.01 * 5 / 40_000  # -> k/(2N)
    with pytest.raises(ValueError, match="dim \\+ 2"):
        density.expected_gaussian_mle_kl(2, 4)
