"""klbook.bnn: minibatch scaling of the rate, the local reparameterisation trick (unbiased, lower
variance), the closed forms it uses, and errors on bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import bayes, bnn, kl, vib

N = 40


@pytest.fixture(scope="module")
def regression():
    key = jax.random.key(0)
    x = jax.random.uniform(jax.random.fold_in(key, 0), (N, 1), minval=-2.0, maxval=2.0)
    y = jnp.sin(2 * x[:, 0]) + 0.2 * jax.random.normal(jax.random.fold_in(key, 1), (N,))
    net = bnn.network(jax.random.fold_in(key, 2), 1, 1, width=4, depth=1, activation=jax.nn.relu)
    params = bnn.init_posterior(net, scale=0.3)
    return x, y, net, bnn.regression(net, 0.2), bnn.gaussian_prior(net.num_weights), params


def test_network_is_the_equinox_mlp_with_those_weights(regression):
    x, _, net, _, _, _ = regression
    theta = net.init_weights()
    assert theta.shape == (net.num_weights,) == (13,)
    np.testing.assert_allclose(net(theta, x), jax.vmap(net.template)(x), rtol=1e-6)
    np.testing.assert_allclose(net(2 * theta, x), jax.vmap(net.unravel(2 * theta))(x), rtol=1e-6)


def test_rate_is_kl_over_the_full_n_at_every_batch_size(regression):
    x, y, _, lik, prior, params = regression
    exact = float(kl(bayes.gaussian(params), prior))  # closed form, nats
    # a batch of 4 with data_size=N: the rate is KL/N, not KL/4 (the full batch is in the next test)
    out = jax.jit(
        lambda k: bnn.objective(
            k, params, prior, lik, x[:4], y[:4], data_size=N, num_particles=500, analytic_rate=False
        )
    )(jax.random.key(1))
    assert abs(float(out.terms["rate"]) - exact / N) < 5 * float(out.mc_stderr["rate"]), out.terms
    assert exact / 4 - exact / N > 50 * float(out.mc_stderr["rate"])  # KL/4 would be far outside
    lrt = bnn.objective_lrt(jax.random.key(1), params, prior, lik, x[:4], y[:4], data_size=N)
    assert abs(float(lrt.terms["rate"]) - exact / N) <= 1e-6 * exact  # closed form against a Gaussian prior
    plain = bnn.objective(jax.random.key(1), params, prior, lik, x[:4], y[:4], data_size=N)
    assert abs(float(plain.terms["rate"]) - exact / N) <= 1e-6 * exact  # the same estimator by default


def test_both_objectives_use_the_same_rate_estimator(regression):
    """analytic_rate chooses the rate's estimator in both objectives; the sampled one is unbiased for the closed
    form."""
    x, y, _, lik, prior, params = regression
    exact = float(kl(bayes.gaussian(params), prior)) / N
    keys = jax.random.split(jax.random.key(11), 2000)
    for one in (bnn.objective, bnn.objective_lrt):
        closed = jax.jit(jax.vmap(lambda k: one(k, params, prior, lik, x[:8], y[:8], data_size=N).terms["rate"]))(keys)
        sampled = jax.jit(
            jax.vmap(lambda k: one(k, params, prior, lik, x[:8], y[:8], data_size=N, analytic_rate=False).terms["rate"])
        )(keys)
        np.testing.assert_allclose(np.asarray(closed), exact, rtol=1e-6)
        se = float(jnp.std(sampled)) / math.sqrt(len(keys))
        assert se > 0 and abs(float(jnp.mean(sampled)) - exact) < 5 * se, (
            one.__name__,
            float(jnp.mean(sampled)),
            exact,
            se,
        )
    # with the closed-form rate the total's standard error is the distortion's
    out = bnn.objective(jax.random.key(12), params, prior, lik, x, y, data_size=N, num_particles=16)
    assert float(out.mc_stderr["rate"]) == 0.0 and float(out.mc_stderr["total"]) == float(out.mc_stderr["distortion"])
    assert abs(float(out.total) - float(out.terms["distortion"] + out.terms["rate"])) < 1e-6
    assert abs(float(out.loss) - float(out.total)) < 1e-6 * abs(float(out.total)) + 1e-6  # beta = 1


@pytest.mark.parametrize(
    "bad, error",
    [(None, TypeError), (0, ValueError), (-40, ValueError), (40.0, TypeError), (2.5, TypeError), (True, TypeError)],
)
def test_data_size_must_be_a_positive_integer(regression, bad, error):
    """A BNN's weights are a global latent: without N the rate would silently be KL/B (issue 22)."""
    x, y, _, lik, prior, params = regression
    for one in (bnn.objective, bnn.objective_lrt):
        with pytest.raises(error, match="data_size must be a positive integer"):
            one(jax.random.key(0), params, prior, lik, x[:4], y[:4], data_size=bad)
        with pytest.raises(error, match="data_size must be a positive integer"):
            jax.jit(lambda k: one(k, params, prior, lik, x[:4], y[:4], data_size=bad))(jax.random.key(0))
        with pytest.raises(TypeError):  # required: no default
            one(jax.random.key(0), params, prior, lik, x[:4], y[:4])


def test_wrong_feature_count_and_column_y_are_named_before_xla(regression):
    """Named errors instead of XLA's dot_general message (or a silent [B, B] broadcast), eagerly and under jit."""
    x, y, _, lik, prior, params = regression
    wide = jnp.ones((N, 3))
    for one in (bnn.objective, bnn.objective_lrt):
        for run in (lambda f: f(jax.random.key(0)), lambda f: jax.jit(f)(jax.random.key(0))):
            with pytest.raises(
                ValueError, match=r"x has 3 features \(shape \(40, 3\)\) but the network's input size is 1"
            ):
                run(lambda k: one(k, params, prior, lik, wide, y, data_size=N))
            with pytest.raises(ValueError, match=r"x must be \[B, in_size\] = \[B, 1\]"):
                run(lambda k: one(k, params, prior, lik, x[:, 0], y, data_size=N))
            with pytest.raises(ValueError, match=r"y must be \[B\] with B = 40.*got shape \(40, 1\)"):
                run(lambda k: one(k, params, prior, lik, x, y[:, None], data_size=N))


def test_map_adds_the_prior_per_example_and_lrt_applies_the_final_activation(regression):
    x, y, net, lik, _, params = regression
    prior = bnn.gaussian_prior(net.num_weights, 0.5)
    theta = net.init_weights()
    ml = bnn.fit_point(jax.random.key(3), theta, lik, x, y, num_steps=1, batch_size=8, progress=False)
    mp = bnn.fit_point(jax.random.key(3), theta, lik, x, y, prior=prior, num_steps=1, batch_size=8, progress=False)
    # the same key draws the same batch: the first losses differ by exactly -log q(theta) / N
    gap = float(mp.history["loss"][0] - ml.history["loss"][0])
    assert abs(gap - float(-prior.log_prob(theta)) / N) < 1e-5 * abs(gap)
    assert float(mp.history["distortion"][0]) == float(ml.history["distortion"][0])
    # outputs_lrt with zero spread is the network at the means, final activation included
    import equinox as eqx
    from jax.flatten_util import ravel_pytree

    from klbook.nn import mlp

    template = mlp(jax.random.key(4), 1, 2, width=3, depth=1, final_activation=jnp.tanh)
    flat, unravel = ravel_pytree(eqx.filter(template, eqx.is_array))
    squashed = bnn.Network(template, unravel, int(flat.shape[0]))
    tight = {"loc": 3 * flat, "raw_scale": jnp.full(flat.shape, -60.0)}
    np.testing.assert_allclose(bnn.outputs_lrt(jax.random.key(5), tight, squashed, x), squashed(3 * flat, x), atol=1e-6)


def test_minibatch_objective_has_the_full_data_expectation(regression):
    x, y, _, lik, prior, params = regression
    full = jax.jit(lambda k: bnn.objective(k, params, prior, lik, x, y, data_size=N, num_particles=1000))(
        jax.random.key(2)
    )

    def batch_value(k):
        kb, ko = jax.random.split(k)
        idx = jax.random.randint(kb, (8,), 0, N)
        return bnn.objective(ko, params, prior, lik, x[idx], y[idx], data_size=N).total

    v = jax.jit(jax.vmap(batch_value))(jax.random.split(jax.random.key(3), 1000))
    se = math.hypot(float(jnp.std(v)) / math.sqrt(1000), float(full.mc_stderr["total"]))
    assert abs(float(jnp.mean(v)) - float(full.total)) < 5 * se


def test_lrt_outputs_have_each_examples_weight_draw_distribution(regression):
    x, _, net, _, _, params = regression
    s = 2000
    per_weights = bnn.outputs(jax.random.key(4), params, net, x[:3], s)[..., 0]  # [S, 3]
    per_lrt = jax.vmap(lambda k: bnn.outputs_lrt(k, params, net, x[:3]))(jax.random.split(jax.random.key(5), s))[..., 0]
    for a, b in ((per_weights, per_lrt),):
        m_se = jnp.sqrt(jnp.var(a, 0) / s + jnp.var(b, 0) / s)
        assert np.all(np.abs(np.asarray(a.mean(0) - b.mean(0))) < 5 * np.asarray(m_se))
        np.testing.assert_allclose(np.asarray(a.std(0)), np.asarray(b.std(0)), rtol=0.1)
    # the difference: examples share a weight draw (correlated) without the trick, not with it
    corr = lambda o: float(jnp.corrcoef(o[:, 0], o[:, 1])[0, 1])
    assert abs(corr(per_lrt)) < 5 / math.sqrt(s) < corr(per_weights) - 5 / math.sqrt(s)


def test_lrt_distortion_is_unbiased(regression):
    x, y, _, lik, prior, params = regression
    keys = jax.random.split(jax.random.key(6), 2000)
    plain = jax.jit(jax.vmap(lambda k: bnn.objective(k, params, prior, lik, x, y, data_size=N).terms["distortion"]))(
        keys
    )
    local = jax.jit(
        jax.vmap(lambda k: bnn.objective_lrt(k, params, prior, lik, x, y, data_size=N).terms["distortion"])
    )(keys)
    se = math.hypot(float(jnp.std(plain)), float(jnp.std(local))) / math.sqrt(len(keys))
    assert abs(float(jnp.mean(plain) - jnp.mean(local))) < 5 * se
    assert float(jnp.std(local)) < float(jnp.std(plain))


def test_lrt_reduces_the_gradient_variance():
    key = jax.random.key(7)
    x = jax.random.uniform(jax.random.fold_in(key, 0), (200, 6))
    y = (x[:, 0] + x[:, 1] > 1).astype(jnp.int32) + (x[:, 2] > 0.5).astype(jnp.int32)
    net = bnn.network(jax.random.fold_in(key, 1), 6, 3, width=8, depth=1, activation=jax.nn.relu)
    lik, prior, params = bnn.classifier(net), bnn.gaussian_prior(net.num_weights), bnn.init_posterior(net, scale=0.3)
    draws = 80
    sq = {}
    for lrt in (False, True):
        g = np.asarray(
            bnn.gradient_draws(
                jax.random.key(8), params, prior, lik, x, y, batch_size=64, num_draws=draws, local_reparam=lrt
            ),
            np.float64,
        )
        assert g.shape == (draws, 2 * net.num_weights)
        sq[lrt] = np.sum((g - g.mean(0)) ** 2, axis=1)
    ratio = sq[False].mean() / sq[True].mean()
    se = ratio * math.hypot(*(sq[k].std(ddof=1) / sq[k].mean() / math.sqrt(draws) for k in sq))
    assert ratio - 4 * se > 1.0, (ratio, se)


def test_reliability_bins_give_chapter_7s_ece_and_entropy_closed_forms():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(9), (300, 10)) * 3)
    y = jax.random.randint(jax.random.key(10), (300,), 0, 10)
    rel = bnn.reliability(probs, y)
    ok = rel.count > 0
    ece = jnp.sum(jnp.where(ok, rel.count * jnp.abs(rel.accuracy - rel.confidence), 0.0)) / 300
    assert abs(float(ece) - float(vib.expected_calibration_error(probs, y))) < 1e-6
    assert float(rel.count.sum()) == 300
    assert abs(float(bnn.entropy(jnp.full((1, 10), 0.1))[0]) - math.log(10)) < 1e-6
    assert float(bnn.entropy(jnp.eye(10))[3]) == 0.0


def test_scale_mixture_prior_density_and_sampled_rate():
    p = bnn.scale_mixture_prior(3, pi=0.25, scale1=1.0, scale2=0.1)
    w = jnp.array([0.0, 0.05, -2.0])
    n = lambda v, s: math.exp(-0.5 * (v / s) ** 2) / (s * math.sqrt(2 * math.pi))
    manual = sum(math.log(0.25 * n(float(v), 1.0) + 0.75 * n(float(v), 0.1)) for v in w)
    assert abs(float(p.log_prob(w)) - manual) < 1e-5
    net = bnn.network(jax.random.key(0), 3, 2, width=2, depth=1)
    params = bnn.init_posterior(net)
    x, y = jnp.ones((5, 3)), jnp.zeros(5, jnp.int32)
    out = jax.jit(
        lambda k: bnn.objective_lrt(
            k, params, bnn.scale_mixture_prior(net.num_weights), bnn.classifier(net), x, y, data_size=5
        )
    )(jax.random.key(1))
    # no closed form against the mixture: a sampled rate
    assert np.isfinite(float(out.total))


def test_bad_inputs_name_the_problem(regression):
    x, y, net, lik, prior, params = regression
    with pytest.raises(ValueError, match=r"x must be \[N, in_size\] and y \[N\]"):
        bnn.fit_posterior(jax.random.key(0), params, prior, lik, x, y[:5], num_steps=1)
    with pytest.raises(ValueError, match="features but the network takes 1"):
        bnn.fit_point(jax.random.key(0), net.init_weights(), lik, jnp.ones((N, 2)), y, num_steps=1)
    with pytest.raises(ValueError, match="x must be finite|non-finite|NaN"):
        bnn.fit_point(jax.random.key(0), net.init_weights(), lik, x.at[0, 0].set(jnp.nan), y, num_steps=1)
    with pytest.raises(ValueError, match=r"flattened 8x8 digits"):
        bnn.rotate_digits(jnp.ones((3, 63)))
    with pytest.raises(ValueError, match=r"pi must be in \(0, 1\)"):
        bnn.scale_mixture_prior(3, pi=1.5)
    with pytest.raises(ValueError, match="noise"):
        bnn.regression(net, -1.0)
    with pytest.raises(ValueError, match=r"probs must be \[N, C\]"):
        bnn.reliability(jnp.ones(5), jnp.ones(5, jnp.int32))
    assert np.array_equal(
        bnn.rotate_digits(bnn.rotate_digits(jnp.arange(128.0).reshape(2, 64), 2), 2), jnp.arange(128.0).reshape(2, 64)
    )
    assert isinstance(lik(net.init_weights(), x), dist.Normal)


def test_objective_is_numpyros_mean_field_elbo_per_example_value_and_gradient(regression):
    """bnn.objective (closed-form rate) = TraceMeanField_ELBO().loss / N (its KL is closed form too), and
    with analytic_rate=False = Trace_ELBO().loss / N: value and gradient within 5 Monte Carlo s.e."""
    import numpyro
    from numpyro.infer import Trace_ELBO, TraceMeanField_ELBO

    x, y, _, lik, prior, params = regression
    reps = 300

    def guide(p, xx, yy):
        numpyro.sample("theta", bayes.gaussian(p))

    def model(p, xx, yy):
        bayes.joint_model(prior, lik, xx, yy)

    def draws(fn, seed):
        keys = jax.random.split(jax.random.key(seed), reps)
        v, g = jax.jit(jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0)))(params, keys)
        flat = jnp.concatenate([a.reshape(reps, -1) for a in jax.tree.leaves(g)], axis=1)
        return np.asarray(v, np.float64), np.asarray(flat, np.float64)

    def same(a, b, what):
        gap = np.abs(a.mean(0) - b.mean(0))
        se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
        assert np.all(gap < 5 * se + 1e-6), (what, a.mean(0), b.mean(0), se)

    for analytic, elbo_cls, seed in ((True, TraceMeanField_ELBO, 30), (False, Trace_ELBO, 40)):
        recipe = lambda p, k: bnn.objective(k, p, prior, lik, x, y, data_size=N, analytic_rate=analytic).loss
        elbo = lambda p, k: elbo_cls().loss(k, {}, model, guide, p, x, y) / N
        rv, rg = draws(recipe, seed)
        ev, eg = draws(elbo, seed + 1)
        same(rv, ev, ("value", analytic))
        same(rg, eg, ("gradient", analytic))
        assert rg.std(0).max() > 0


def test_fit_posterior_names_a_missing_beta_axis(regression):
    """Issue 22: posterior parameters without the leading [len(betas)] axis are refused by name."""
    x, y, net, lik, prior, params = regression  # params {"loc": [W], "raw_scale": [W]}: one set, unstacked
    for betas in ((1.0,), (1.0,) * net.num_weights):
        with pytest.raises(ValueError, match=rf"leading axis of len\(betas\) = {len(betas)}"):
            bnn.fit_posterior(jax.random.key(0), params, prior, lik, x, y, betas=betas, num_steps=1, progress=False)
    res = bnn.fit_posterior(
        jax.random.key(0),
        jax.tree.map(lambda a: a[None], params),
        prior,
        lik,
        x,
        y,
        num_steps=1,
        batch_size=8,
        progress=False,
    )
    assert np.all(np.isfinite(res.history["loss"]))
