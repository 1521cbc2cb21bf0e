"""klbook.vae_explorer: the β sweep's numbers (entropy, floor, identification) and its pictures."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import vae
from klbook import vae_explorer as vx

matplotlib.use("Agg")
KEY = jax.random.key(0)


def test_empirical_entropy_is_log_n_for_distinct_rows_and_counts_duplicates():
    x = np.arange(12).reshape(6, 2)
    assert vx.empirical_entropy(x) == pytest.approx(math.log(6))
    dup = np.array([[0, 1], [0, 1], [0, 1], [2, 2]])  # frequencies 3/4, 1/4
    assert vx.empirical_entropy(dup) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ValueError, match=r"shape \[N, d\]"):
        vx.empirical_entropy(np.zeros(3))


def test_binomial_floor_is_the_best_binomial_that_knows_x():
    x = np.array([[0, 16, 8], [4, 4, 12]])
    expected = -np.mean([sum(float(dist.Binomial(16, probs=v / 16).log_prob(v)) for v in row) for row in x])
    assert vx.binomial_floor(x, 16) == pytest.approx(expected, rel=1e-5)
    # no other success probability does better on any pixel
    worse = -float(dist.Binomial(16, probs=0.45).log_prob(8.0))
    assert worse > -float(dist.Binomial(16, probs=0.5).log_prob(8.0))
    with pytest.raises(ValueError, match="counts in 0..16"):
        vx.binomial_floor(np.array([[17, 0]]), 16)


def test_identified_counts_rows_nearest_their_own_original():
    x = jnp.eye(5) * 10.0
    assert float(vx.identified(x + 0.1, x)) == 1.0
    assert float(vx.identified(jnp.roll(x, 1, axis=0), x)) == 0.0
    assert vx.identified(jnp.stack([x, x]), x).shape == (2,)
    with pytest.raises(ValueError, match="shape of x"):
        vx.identified(x[:3], x)


def test_identification_bound_is_fano():
    n = 100
    assert vx.identification_bound(0.0, n) == pytest.approx(1 - (math.log(n) - math.log(2)) / math.log(n - 1))
    assert vx.identification_bound(math.log(n), n) == 1.0
    rates = np.linspace(0, 6, 7)
    assert np.all(np.diff(vx.identification_bound(rates, n)) >= 0)
    with pytest.raises(ValueError, match="non-negative"):
        vx.identification_bound(-1.0, n)
    with pytest.raises(ValueError, match="at least 3"):
        vx.identification_bound(1.0, 2)


@pytest.fixture(scope="module")
def sweep():
    x = jax.random.randint(KEY, (40, 4), 0, 17)
    models, _ = vae.fit_betas(
        KEY,
        lambda k: vae.binomial_vae(k, 4, 2, 16, width=8),
        [0.5, 4.0],
        x,
        num_steps=20,
        batch_size=16,
        progress=False,
    )
    return vx.summarise(
        jax.random.key(1),
        models,
        [0.5, 4.0],
        x,
        num_samples=8,
        entropy=vx.empirical_entropy(x),
        floor=vx.binomial_floor(x, 16),
        image_shape=(2, 2),
        num_show=3,
    )


def test_summarise_shapes_and_chain(sweep):
    assert sweep.betas.shape == (2,) and all(v.shape == (2,) for v in sweep.mean)
    assert sweep.originals.shape == (3, 2, 2)
    assert sweep.reconstructions.shape == (2, 3, 2, 2) and sweep.samples.shape == (2, 3, 2, 2)
    assert np.all(sweep.gap > -4 * sweep.gap_stderr)  # D + R >= L
    assert np.all((sweep.identified >= 0) & (sweep.identified <= 1))
    assert sweep.max_value == 16.0


def test_figures_and_the_explorer(sweep):
    fig = vx.draw_sweep(sweep)
    assert len(fig.axes) == 2 * 3 + 1
    fig = vx.draw_beta(sweep, 1)
    assert len(fig.axes) == 4
    explorer = vx.beta_explorer(sweep)
    assert repr(explorer) == "BetaExplorer(betas=[0.5, 4.0])"
    assert explorer.image.value[:4] == b"\x89PNG"
    first = explorer.image.value
    explorer.slider.value = 1 - explorer.slider.value
    assert explorer.image.value != first
    with pytest.raises(ValueError, match="i must be in 0..1"):
        vx.draw_beta(sweep, 2)
    with pytest.raises(TypeError, match="BetaSweep"):
        vx.beta_explorer({"betas": [1.0]})


def test_a_sweep_without_images_draws_only_the_plane(sweep):
    bare = sweep._replace(reconstructions=None, samples=None, originals=None)
    fig, ax = matplotlib.pyplot.subplots()
    vx.draw_plane(ax, bare, highlight=0)
    assert ax.get_xlabel() == "rate R (nats)" and ax.get_ylabel() == "distortion D (nats)"
    with pytest.raises(ValueError, match="no images"):
        vx.draw_sweep(bare)


def _fake_sweep(rate, identified):
    m = len(rate)
    z = np.zeros(m)
    chain = vae.Chain(np.full(m, 50.0), np.asarray(rate, float), np.asarray(rate, float), np.full(m, 40.0) + rate)
    se = vae.Chain(np.full(m, 0.1), np.full(m, 0.01), np.full(m, 0.05), np.full(m, 0.1))
    chain = chain._replace(neg_log_marginal=np.array([45.0, 41.0, 48.0])[:m])
    avg = np.ones((2, 2))
    imgs = np.stack([avg + 0.5 * np.arange(4).reshape(2, 2), avg - 0.5 * np.arange(4).reshape(2, 2)])
    recon = np.stack([imgs, imgs, np.stack([avg, avg])])[:m]
    return vx.BetaSweep(
        np.array([0.1, 1.0, 100.0])[:m],
        chain,
        se,
        z + 1.0,
        z + 0.5,
        3.0,
        10.0,
        np.asarray(identified, float),
        None,
        None,
        imgs,
        recon,
        recon,
        2.0,
    )


def test_check_sweep_passes_a_consistent_sweep_and_names_a_broken_claim():
    x_train = np.ones((4, 4))  # the average image is all ones
    ok = vx.check_sweep(_fake_sweep([20.0, 5.0, 0.0], [1.0, 0.5, 0.0]), x_train, 16, 400)
    assert list(ok.collapsed) == [False, False, True] and ok.best == 1
    with pytest.raises(AssertionError, match="Fano"):  # 0.99 identified with a rate of 5 nats among 400
        vx.check_sweep(_fake_sweep([20.0, 5.0, 0.0], [1.0, 0.99, 0.0]), x_train, 16, 400)
    with pytest.raises(AssertionError, match="lowest β"):
        vx.check_sweep(_fake_sweep([20.0, 5.0, 0.0], [0.5, 0.1, 0.0]), x_train, 16, 400)


def test_summarise_refuses_betas_that_do_not_match_the_stack():
    from klbook import train

    make = lambda k: vae.binomial_vae(k, 4, 2, 16, width=8)  # noqa: E731
    models = train.init_stacked(make, jax.random.split(KEY, 2))
    x = jax.random.randint(KEY, (10, 4), 0, 17)
    with pytest.raises(ValueError, match=r"betas must be one-dimensional.*\(1, 2\)"):
        vx.summarise(KEY, models, [[0.5, 4.0]], x, num_samples=2)
    with pytest.raises(ValueError, match="models holds 2 stacked models but betas has 3 values"):
        vx.summarise(KEY, models, [0.5, 1.0, 4.0], x, num_samples=2)
    with pytest.raises(ValueError, match="models must be models stacked on a leading axis"):
        vx.summarise(KEY, make(KEY), [0.5], x, num_samples=2)
