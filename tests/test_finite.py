"""Appendix B: the empirical distribution, smoothed histograms and their exact losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import klbook
from klbook import finite


def test_empirical_frequencies_and_the_likelihood_identity():
    """-mean log q(x_i) = I[p_hat; q] + H[p_hat] for any q, to float precision."""
    x = jax.random.categorical(jax.random.key(0), jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05])), shape=(37,))
    p_hat = finite.empirical(x, 4)
    np.testing.assert_allclose(p_hat, np.bincount(np.asarray(x), minlength=4) / 37, rtol=1e-6)
    for seed in range(3):
        q = jax.nn.softmax(jax.random.normal(jax.random.key(seed), (4,)))
        nll = -jnp.mean(jnp.log(q)[x])
        kl_hat = klbook.kl(dist.Categorical(probs=p_hat), dist.Categorical(probs=q))
        h_hat = klbook.entropy(dist.Categorical(probs=p_hat))
        np.testing.assert_allclose(nll, kl_hat + h_hat, rtol=1e-5)


def test_bin_counts_prefix_and_clipping():
    x = jnp.array([-1.0, 0.05, 0.3, 0.3, 0.99, 2.0])
    np.testing.assert_array_equal(finite.bin_counts(x, 4, 0.0, 1.0), [2, 2, 0, 2])
    np.testing.assert_array_equal(finite.bin_counts(x, 4, 0.0, 1.0, num_used=3), [2, 1, 0, 0])
    traced = jax.jit(lambda n: finite.bin_counts(x, 4, 0.0, 1.0, num_used=n))(3)
    np.testing.assert_array_equal(traced, [2, 1, 0, 0])


def test_additive_smoothing_limits():
    counts = jnp.array([3.0, 0.0, 1.0])
    np.testing.assert_allclose(finite.additive_smoothing(counts, 0.0), counts / 4)
    np.testing.assert_allclose(finite.additive_smoothing(counts, 1.0), (counts + 1) / 7)
    np.testing.assert_allclose(finite.additive_smoothing(counts, 1e7), jnp.full(3, 1 / 3), rtol=1e-5)


def test_bin_masses_sum_to_one_and_match_the_cdf():
    p = dist.Beta(2.0, 5.0)
    masses = finite.bin_masses(p.cdf, 5, 0.0, 1.0)
    np.testing.assert_allclose(masses.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(masses[0], p.cdf(0.2), rtol=1e-5)


def test_histogram_loss_is_the_entropy_of_its_own_density_and_empty_bins_are_inf():
    probs = jnp.array([0.5, 0.25, 0.25, 0.0])
    # differential entropy of the histogram density on [0, 2]: -sum pi log(pi K / 2)
    expected = -(0.5 * np.log(0.5 * 2) + 2 * 0.25 * np.log(0.25 * 2))
    np.testing.assert_allclose(finite.histogram_loss(probs, probs, 0.0, 2.0), expected, rtol=1e-6)
    assert np.isinf(finite.histogram_loss(probs, jnp.array([0.4, 0.2, 0.2, 0.2]), 0.0, 2.0))


def test_heldout_loss_matches_monte_carlo_on_fresh_data():
    """The exact held-out loss equals the average -log q over many fresh draws, within 5 s.e."""
    p = dist.Beta(2.0, 3.0)
    train = p.sample(jax.random.key(1), (200,))
    probs = finite.additive_smoothing(finite.bin_counts(train, 8, 0.0, 1.0), 1.0)
    exact = finite.histogram_loss(probs, finite.bin_masses(p.cdf, 8, 0.0, 1.0), 0.0, 1.0)
    fresh = p.sample(jax.random.key(2), (100_000,))
    per_point = -(jnp.log(probs * 8))[jnp.clip(jnp.floor(fresh * 8).astype(int), 0, 7)]
    se = jnp.std(per_point) / jnp.sqrt(per_point.size)
    assert abs(per_point.mean() - exact) < 5 * se


def test_gap_identity_for_maximum_likelihood():
    """With pi = p_hat: held-out - train = I[P; p_hat] + H[P] - H[p_hat] over the bins, exactly."""
    p = dist.Beta(2.0, 2.0)
    x = p.sample(jax.random.key(3), (500,))
    counts = finite.bin_counts(x, 6, 0.0, 1.0)
    p_hat, masses = counts / 500, finite.bin_masses(p.cdf, 6, 0.0, 1.0)
    assert np.all(np.asarray(counts) > 0)
    gap = finite.histogram_loss(p_hat, masses, 0.0, 1.0) - finite.histogram_loss(p_hat, p_hat, 0.0, 1.0)
    cat = lambda probs: dist.Categorical(probs=probs)  # noqa: E731
    expected = klbook.kl(cat(masses), cat(p_hat)) + klbook.entropy(cat(masses)) - klbook.entropy(cat(p_hat))
    np.testing.assert_allclose(gap, expected, rtol=1e-4, atol=1e-6)


def test_histogram_gaps_agrees_with_one_fit_at_a_time():
    p = dist.Beta(2.0, 5.0)
    samples = p.sample(jax.random.key(4), (3, 50))
    gaps = finite.histogram_gaps(samples, p.cdf, [10, 50], 5, [0.0, 1.0])
    assert gaps.train.shape == gaps.heldout.shape == (3, 2, 2)
    probs = finite.additive_smoothing(finite.bin_counts(samples[2, :10], 5, 0.0, 1.0), 1.0)
    masses = finite.bin_masses(p.cdf, 5, 0.0, 1.0)
    counts = finite.bin_counts(samples[2, :10], 5, 0.0, 1.0)
    np.testing.assert_allclose(gaps.train[2, 0, 1], finite.histogram_loss(probs, counts / 10, 0.0, 1.0), rtol=1e-5)
    np.testing.assert_allclose(gaps.heldout[2, 0, 1], finite.histogram_loss(probs, masses, 0.0, 1.0), rtol=1e-5)
    np.testing.assert_allclose(gaps.gap, gaps.heldout - gaps.train)


def test_training_loss_flatters_on_average():
    """Maximum likelihood minimises the training loss, so train <= held-out on average (many fits)."""
    p = dist.Beta(2.0, 5.0)
    gaps = finite.histogram_gaps(p.sample(jax.random.key(5), (400, 100)), p.cdf, [100], 4, [0.5])
    g = gaps.gap[:, 0, 0]
    assert g.mean() > 4 * g.std() / np.sqrt(g.size)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: finite.empirical(jnp.array([0, 4]), 4), "labels must lie in 0..3"),
        (lambda: finite.empirical(jnp.array([0.0, 1.0]), 4), "integer array"),
        (lambda: finite.bin_counts(jnp.array([0.1]), 0, 0.0, 1.0), "num_bins"),
        (lambda: finite.bin_counts(jnp.array([0.1]), 3, 1.0, 0.0), "low < high"),
        (lambda: finite.bin_counts(jnp.array([jnp.nan]), 3, 0.0, 1.0), "x must be finite"),
        (lambda: finite.additive_smoothing(jnp.array([1.0, -1.0]), 1.0), "non-negative"),
        (lambda: finite.additive_smoothing(jnp.array([1.0, 1.0]), -0.5), "alpha"),
        (lambda: finite.histogram_loss(jnp.ones(3) / 3, jnp.ones(4) / 4, 0.0, 1.0), "one length"),
        (lambda: finite.histogram_loss(jnp.ones(3) / 2, jnp.ones(3) / 3, 0.0, 1.0), "probs must sum to 1"),
        (lambda: finite.histogram_loss(jnp.ones(3) / 3, jnp.array([1.5, -0.5, 0.0]), 0.0, 1.0), "weights must be"),
        (lambda: finite.histogram_gaps(jnp.ones((2, 5)) / 2, lambda e: e, [10], 3, [0.0]), "at least that many"),
        (lambda: finite.histogram_gaps(jnp.ones((2, 5)) / 2, lambda e: e, [5], 3, [-1.0]), "alphas"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_categorical_nll_and_kl_closed_forms():
    logits = jnp.array([0.5, -1.0, 0.0])
    q = jax.nn.softmax(logits)
    x = jnp.array([0, 0, 2, 1])
    np.testing.assert_allclose(
        finite.categorical_nll(logits, x), -np.mean(np.log(np.asarray(q))[[0, 0, 2, 1]]), rtol=1e-6
    )
    p = jnp.array([0.5, 0.0, 0.5])  # 0 log 0 = 0: a category p never produces costs nothing
    expected = klbook.kl(dist.Categorical(probs=p), dist.Categorical(probs=q))
    np.testing.assert_allclose(finite.categorical_kl(p, logits), expected, rtol=1e-5)
    np.testing.assert_allclose(finite.categorical_kl(q, logits), 0.0, atol=1e-6)


def test_fresh_minibatch_gradient_is_unbiased():
    """The mean over many fresh minibatches of the NLL gradient is softmax(theta) - p, within 5 s.e."""
    p = jnp.array([0.5, 0.3, 0.15, 0.05])
    theta = jnp.array([0.3, -0.2, 0.1, 0.0])
    xs = jax.random.categorical(jax.random.key(1), jnp.log(p), shape=(4000, 8))
    grads = jax.vmap(jax.grad(finite.categorical_nll), (None, 0))(theta, xs)  # [M, K]
    exact = jax.nn.softmax(theta) - p
    se = grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(grads.mean(0) - exact) < 5 * se)


def test_fit_categorical_fresh_beats_reused_at_the_same_budget():
    p = jnp.array([0.4, 0.3, 0.2, 0.05, 0.05])
    fresh = finite.fit_categorical(jax.random.key(2), p, num_steps=300, batch_size=16, num_runs=4)
    reused = finite.fit_categorical(jax.random.key(3), p, num_steps=300, batch_size=16, sample_size=32, num_runs=4)
    assert fresh.heldout_kl.shape == (4, 300) and fresh.logits.shape == (4, 5) and fresh.samples is None
    assert reused.samples.shape == (4, 32)
    # Reuse converges towards the sample's frequencies, fresh draws towards p.
    freq = np.stack([np.bincount(s, minlength=5) / 32 for s in reused.samples])
    assert np.abs(np.asarray(jax.nn.softmax(reused.logits)) - freq).max() < 0.02
    assert fresh.heldout_kl[:, -1].max() < reused.heldout_kl[:, -1].min()
    np.testing.assert_allclose(fresh.heldout_kl[:, -1], finite.categorical_kl(p, fresh.logits), rtol=1e-5)


def test_fit_categorical_bad_inputs():
    p = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        finite.fit_categorical(jax.random.key(0), p, num_steps=3, batch_size=4, sample_size=6)
    with pytest.raises(ValueError, match="learning_rate"):
        finite.fit_categorical(jax.random.key(0), p, num_steps=3, batch_size=4, learning_rate=0.0)
    with pytest.raises(ValueError):
        finite.fit_categorical(jax.random.key(0), jnp.array([0.5, 0.7]), num_steps=3, batch_size=4)
