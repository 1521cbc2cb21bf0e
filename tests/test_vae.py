"""klbook.vae: the ELBO as distortion plus rate, the closed-form rate, and the IWAE bound on L."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from estimator_check import same_estimator
from numpyro import handlers
from numpyro.infer import Trace_ELBO

from klbook import entropy, vae
from klbook.recipe import KLObjective, kl_objective

KEY = jax.random.key(0)
D, K = 4, 2  # data and latent dimensions of the linear-Gaussian world
NOISE = 0.7


def _counts(key, n=12, d=6):
    return jax.random.randint(key, (n, d), 0, 17)


_binomial = eqx.filter_jit(vae.binomial_vae)  # one compiled initialisation instead of many eager ops


@pytest.fixture(scope="module")
def small():
    """A small Binomial(16) VAE on 6 pixels with 3 latents, untrained."""
    return _binomial(jax.random.key(1), 6, 3, 16, width=16)


def _linear_world():
    """A linear-Gaussian dream world with orthogonal columns, so its posterior is diagonal."""
    w = jnp.array([[1.5, 0.0], [0.0, 1.0], [1.5, 0.0], [0.0, -2.0]])
    return vae.linear_gaussian_vae(KEY, D, K, weight=w, bias=jnp.array([0.5, -1.0, 0.0, 2.0]), noise=NOISE)


def _exact_posterior_encoder(m: vae.VAE) -> vae.VAE:
    """Set the encoder to the world's own posterior q(z|x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1."""
    w, b = m.decoder.linear.weight, m.decoder.linear.bias
    cov = jnp.linalg.inv(jnp.eye(K) + w.T @ w / NOISE**2)
    gain = cov @ w.T / NOISE**2  # [K, D]
    raw = jnp.log(jnp.expm1(jnp.sqrt(jnp.diag(cov)) - 1e-4))
    weight = jnp.concatenate([gain, jnp.zeros((K, D))])
    bias = jnp.concatenate([-gain @ b, raw])
    enc = eqx.tree_at(lambda e: (e.weight, e.bias), m.encoder, (weight, bias))
    return eqx.tree_at(lambda v: v.encoder, m, enc)


@eqx.filter_jit
def _linear_data(m: vae.VAE, key, n):
    """n draws from the dream world: z ~ q(z), x ~ q(x|z)."""
    k1, k2 = jax.random.split(key)
    return m.decode(m.prior(n).sample(k1)).sample(k2)


def _log_marginal(m: vae.VAE, x):
    return jax.vmap(vae.linear_gaussian_marginal(m).log_prob)(x)


def _mean_se(v):
    v = np.asarray(v, np.float64).ravel()
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


# --- the ledger: -ELBO = D + R ---------------------------------------------------------------


def test_recipe_ledger_is_distortion_plus_rate_exactly(small):
    x, m = _counts(KEY), small

    @eqx.filter_jit
    def both(m, x):
        z = m.encode(x).sample(jax.random.key(2))  # one draw, shared by both computations
        real = handlers.substitute(vae.real_world, data={"z": z})
        return vae.terms(jax.random.key(3), m, x, z=z), kl_objective(KEY, real, vae.dream_world, m, x, names=vae.NAMES)

    t, obj = both(m, x)
    np.testing.assert_allclose(obj.terms["rate"], jnp.mean(t.rate), rtol=1e-6)
    np.testing.assert_allclose(obj.terms["distortion"], jnp.mean(t.distortion), rtol=1e-6)
    np.testing.assert_allclose(-obj.total, jnp.mean(t.elbo), rtol=1e-6)
    assert obj.dropped == ("x",)
    weighted = eqx.filter_jit(lambda k, m, x: vae.objective(k, m, x, beta=2.5))(jax.random.key(4), m, x)
    assert isinstance(weighted, KLObjective) and weighted.dropped == ("x",)
    terms = weighted.terms
    np.testing.assert_allclose(weighted.loss, terms["distortion"] + 2.5 * terms["rate"], rtol=1e-6)
    np.testing.assert_allclose(weighted.total, terms["distortion"] + terms["rate"], rtol=1e-6)


def test_closed_form_rate_matches_sampled_rate_within_stderr(small):
    x, m = _counts(KEY), small
    sampled = eqx.filter_jit(jax.vmap(lambda k: vae.terms(k, m, x).rate))(jax.random.split(KEY, 2000))  # [2000, N]
    rate, closed = eqx.filter_jit(lambda m: (vae.rate(m, x), vae.terms(KEY, m, x, closed_form_rate=True)))(m)
    mean, se = _mean_se(sampled)
    assert abs(mean - float(jnp.mean(rate))) < 5 * se
    np.testing.assert_allclose(closed.rate, rate, rtol=1e-6)
    assert bool(jnp.all(rate >= 0))


def test_decoders_are_proper_likelihoods():
    """The Binomial(16) decoder sums to one over the 17 pixel values; Bernoulli over {0, 1}."""
    z = jax.random.normal(KEY, (3, 2))

    @eqx.filter_jit
    def total(m, values):  # sum over every pixel value of q(x | z), one per z
        return jnp.sum(jax.vmap(lambda v: jnp.exp(m.decode(z).log_prob(jnp.full((3, 1), v))))(values), 0)

    np.testing.assert_allclose(total(_binomial(KEY, 1, 2, 16, width=8), jnp.arange(17)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        total(eqx.filter_jit(vae.bernoulli_vae)(KEY, 1, 2, width=8), jnp.arange(2)), 1.0, rtol=1e-5
    )


# --- the chain on a world with an exact marginal -------------------------------------------------


def test_linear_gaussian_marginal_is_the_dream_worlds_marginal():
    m = _linear_world()
    x = np.asarray(_linear_data(m, jax.random.key(5), 20000), np.float64)
    marginal = vae.linear_gaussian_marginal(m)
    se = x.std(0) / math.sqrt(x.shape[0])
    assert np.all(np.abs(x.mean(0) - np.asarray(marginal.mean)) < 5 * se)
    # mean of -log q(x) over its own samples is its entropy
    mean, se = _mean_se(-eqx.filter_jit(_log_marginal)(m, x.astype(np.float32)))
    assert abs(mean - float(entropy(marginal))) < 5 * se


def test_exact_posterior_makes_the_elbo_and_iwae_exact():
    m = _exact_posterior_encoder(_linear_world())
    x = _linear_data(m, jax.random.key(7), 50)
    log_q = _log_marginal(m, x)
    t, est = eqx.filter_jit(lambda m: (vae.terms(jax.random.key(8), m, x), vae.iwae(KEY, m, x, 7, chunk=3)))(m)
    np.testing.assert_allclose(t.elbo, log_q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(est, log_q, rtol=1e-4, atol=1e-4)


def test_iwae_rises_with_k_toward_the_exact_marginal_and_brackets_it():
    """-(D + R) <= IWAE_1 <= IWAE_10 <= IWAE_100 <= log q(x), and L >= H, all with standard errors."""
    world = _linear_world()
    m = eqx.tree_at(lambda v: v.encoder, world, vae.linear_gaussian_vae(jax.random.key(10), D, K).encoder)
    x = _linear_data(world, jax.random.key(11), 400)  # data from the world itself: H is exact
    log_q = _log_marginal(m, x)
    reps = jax.random.split(jax.random.key(12), 10)

    @eqx.filter_jit
    def estimates(m):
        elbo = jax.vmap(lambda k: vae.terms(k, m, x).elbo)(reps)  # [10, N]
        return elbo, {k: jax.vmap(lambda r: vae.iwae(r, m, x, k))(reps) for k in (1, 10, 100)}

    elbo, est = estimates(m)
    mean, se = _mean_se(est[1] - elbo)  # K = 1 is the ELBO in expectation
    assert abs(mean) < 5 * se
    for lo, hi in ((1, 10), (10, 100)):
        mean, se = _mean_se(est[hi] - est[lo])
        assert mean > 4 * se  # strictly rises (this encoder is far from the posterior)
    mean, se = _mean_se(log_q[None] - est[100])
    assert mean > -4 * se  # still a lower bound on log q(x)
    gap_1, gap_100 = _mean_se(log_q[None] - est[1])[0], _mean_se(log_q[None] - est[100])[0]
    assert gap_100 < 0.5 * gap_1  # and much closer to it
    neg_log_q, se = _mean_se(-log_q)
    assert neg_log_q > float(entropy(vae.linear_gaussian_marginal(world))) - 4 * se  # L >= H


def test_measure_chain_shapes_and_the_gap(small):
    m, x = small, _counts(jax.random.key(13), n=30)
    c = eqx.filter_jit(vae.measure)(jax.random.key(14), m, x, num_samples=50)
    assert all(v.shape == (30,) for v in c)
    assert all(v.shape == () for v in c.mean()) and all(v.shape == () for v in c.stderr())
    mean, se = _mean_se(c.gap)
    assert mean > -4 * se
    np.testing.assert_allclose(c.gap, c.distortion + c.rate - c.neg_log_marginal, rtol=1e-6)


# --- shapes, jit, training ----------------------------------------------------------------------


def test_shapes_of_the_worlds_distributions(small):
    m = small
    x = _counts(KEY, n=5)
    shape = lambda f, *a: eqx.filter_eval_shape(f, *a)  # noqa: E731  (traced, nothing computed)
    enc = shape(lambda m: m.encode(x), m)
    assert enc.batch_shape == (5,) and enc.event_shape == (3,)
    dec = shape(lambda m: m.decode(jnp.zeros((7, 5, 3))), m)
    assert dec.batch_shape == (7, 5) and dec.event_shape == (6,)
    assert shape(lambda m: vae.iwae(KEY, m, x, 10), m).shape == (5,)
    assert shape(lambda m: vae.reconstruct(KEY, m, x), m).shape == (5, 6)
    assert shape(lambda m: vae.generate(KEY, m, 4), m).shape == (4, 6)


def test_jit_equals_eager_and_same_key_same_result(small):
    m, x = small, _counts(KEY)
    eager = vae.terms(KEY, m, x)
    jitted = eqx.filter_jit(vae.terms)(KEY, m, x)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_array_equal(vae.terms(KEY, m, x).rate, eager.rate)


def test_fit_betas_trains_stacked_models_one_per_beta():
    world = _linear_world()
    x = _linear_data(world, jax.random.key(15), 256)
    betas = [0.5, 8.0]
    models, history = vae.fit_betas(
        jax.random.key(16),
        lambda k: vae.linear_gaussian_vae(k, D, K),
        betas,
        x,
        num_steps=300,
        batch_size=64,
        progress=False,
    )
    assert models.decoder.linear.weight.shape == (2, D, K)
    assert set(history) == {"loss", "rate/0", "rate/1", "distortion/0", "distortion/1"}
    assert history["loss"].shape == (300,) and history["loss"][-20:].mean() < history["loss"][:20].mean()
    rates = [vae.rate(vae.model_at(models, i), x) for i in range(2)]
    (r0, s0), (r1, s1) = _mean_se(rates[0]), _mean_se(rates[1])
    assert r1 < r0 - 4 * math.hypot(s0, s1)  # a higher price of rate buys less of it


# --- bad inputs -----------------------------------------------------------------------------------


def test_bad_inputs_are_named(small):
    m, x = small, _counts(KEY)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 6\]"):
        vae.rate(m, x[:, :5])
    with pytest.raises(ValueError, match=r"x must have shape"):
        vae.real_world(m, x[0])
    with pytest.raises(ValueError, match="finite"):
        vae.terms(KEY, m, x.astype(jnp.float32).at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"z must have shape \[..., 3\]"):
        m.decode(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="num_samples"):
        vae.iwae(KEY, m, x, 0)
    with pytest.raises(TypeError, match="key"):
        vae.terms(0, m, x)
    with pytest.raises(TypeError, match="linear_gaussian_vae"):
        vae.linear_gaussian_marginal(m)
    with pytest.raises(ValueError, match="betas"):
        vae.fit_betas(KEY, lambda k: m, [1.0, -2.0], x, num_steps=1)
    with pytest.raises(ValueError, match="betas"):
        vae.fit_betas(KEY, lambda k: m, [], x, num_steps=1)


def _numeric_optimum(w, beta, noise, seed=0, restarts=1):
    """L-BFGS on the float64 population objective D + beta R of the fixed-sigma family (no closed form used)."""
    from scipy.optimize import minimize

    d, m = w.shape
    cov = w @ w.T + noise**2 * np.eye(d)

    def f(p):
        a, log_s, v = p[: m * d].reshape(m, d), p[m * d : m * d + m], p[m * d + m :].reshape(d, m)
        dd, rr = vae.linear_gaussian_population(cov, a, np.exp(log_s), v, noise)
        return dd + beta * rr

    rng = np.random.default_rng(seed)
    best = min(
        (
            minimize(
                f,
                0.3 * rng.standard_normal(m * (2 * d + 1)),
                method="L-BFGS-B",
                options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9},
            )
            for _ in range(restarts)
        ),
        key=lambda r: r.fun,
    )
    p = best.x
    return vae.linear_gaussian_population(
        cov, p[: m * d].reshape(m, d), np.exp(p[m * d : m * d + m]), p[m * d + m :].reshape(d, m), noise
    )


def test_linear_gaussian_optimum_closed_form_matches_numeric_optimum_in_float64():
    # chapter 6's world: lambda = (17, 5) and six ones; the review's table, and an L-BFGS optimum
    i = np.arange(8)
    w = np.stack([2 * np.cos(np.pi * i / 4), np.sin(np.pi * i / 4)], axis=1)
    h = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * (w @ w.T + np.eye(8)))[1]
    betas = [0.5, 1.0, 2.0, 4.0, 8.0, 20.0]
    d, r = vae.linear_gaussian_optimum(w, betas)
    assert d.dtype == np.float64 and r.shape == (6,)
    np.testing.assert_allclose(r[:4], [2.9145, 2.2213, 1.5282, 0.8350], atol=1e-4)
    np.testing.assert_allclose((d + r - h)[:4], [0.1931, 0.0, 0.3069, 1.6137], atol=1e-4)
    assert abs(d[1] + r[1] - h) < 1e-12  # beta = 1: the family contains the truth
    assert abs(r[4] - 0.5 * math.log(17 / 8)) < 1e-12 and r[5] == 0.0  # collapse above 5, then above 17
    for beta, dd, rr in list(zip(betas, d, r, strict=True))[
        ::2
    ]:  # 0.5, 2 and 8: both sides of 1, and one collapsed direction
        dn, rn = _numeric_optimum(w, beta, 1.0)
        assert abs((dn + beta * rn) - (dd + beta * rr)) < 1e-6, (beta, dn + beta * rn, dd + beta * rr)
        assert dn + beta * rn >= dd + beta * rr - 1e-9  # nothing numeric beats the closed form
        assert abs(rn - rr) < 1e-3, (beta, rn, rr)
    # another noise level and shape
    w3 = np.array([[2.0], [1.0], [-1.0]])
    d3, r3 = vae.linear_gaussian_optimum(w3, [0.7, 1.5], noise=0.5)
    for beta, dd, rr in zip([0.7, 1.5], d3, r3, strict=True):
        dn, rn = _numeric_optimum(w3, beta, 0.5)
        assert abs((dn + beta * rn) - (dd + beta * rr)) < 1e-6


def test_linear_gaussian_fit_is_the_sample_optimum_and_ml_at_beta_one():
    rng = np.random.default_rng(3)
    w = np.array([[1.5, 0.0], [0.5, 1.0], [1.5, 0.2], [0.0, -2.0]])
    x = rng.multivariate_normal(np.array([0.5, -1.0, 0.0, 2.0]), w @ w.T + np.eye(4), size=500)
    ml = vae.linear_gaussian_fit(x, 2)
    # ML: the closed form's log-likelihood beats random perturbations of it (float64 check of the marginal)
    cov = np.asarray(vae.linear_gaussian_marginal(ml).covariance_matrix, np.float64)
    mean = np.asarray(ml.decoder.linear.bias, np.float64)

    def loglik(c, mu):
        diff = x - mu
        return -0.5 * np.mean(np.sum(diff @ np.linalg.inv(c) * diff, -1)) - 0.5 * np.linalg.slogdet(2 * np.pi * c)[1]

    base = loglik(cov, mean)
    v = np.asarray(ml.decoder.linear.weight, np.float64)
    for _ in range(20):
        dv = 0.05 * rng.standard_normal(v.shape)
        assert loglik((v + dv) @ (v + dv).T + np.eye(4), mean + 0.05 * rng.standard_normal(4)) < base
    # the ELBO is tight there: D + R (code integrated out) equals -log q(x) example by example
    t = vae.linear_gaussian_terms(ml, x)
    np.testing.assert_allclose(t.distortion + t.rate, -_log_marginal(ml, x), rtol=2e-5)
    # at beta != 1 the fit minimises the sample objective: perturbations only raise it
    for beta in (0.5, 3.0):
        fit = vae.linear_gaussian_fit(x, 2, beta=beta)
        obj = lambda m: float(jnp.mean((lambda tt: tt.distortion + beta * tt.rate)(vae.linear_gaussian_terms(m, x))))  # noqa: E731
        leaves, tree = jax.tree.flatten(fit)
        f0 = obj(fit)
        for k in range(10):
            kk = jax.random.key(k)
            moved = jax.tree.map(
                lambda a: a + 0.02 * jax.random.normal(kk, a.shape) if eqx.is_inexact_array(a) else a, fit
            )
            moved = eqx.tree_at(lambda m: m.decoder.raw_scale, moved, fit.decoder.raw_scale)  # sigma stays fixed
            assert obj(moved) > f0 - 1e-5


def test_fixed_noise_gets_no_gradient_and_learned_noise_does():
    x = _linear_data(_linear_world(), jax.random.key(4), 64)
    fixed = vae.linear_gaussian_vae(KEY, D, K, noise=1.0, learn_noise=False)
    learned = vae.linear_gaussian_vae(KEY, D, K, noise=1.0)
    for m, zero in ((fixed, True), (learned, False)):
        g = eqx.filter_grad(lambda mm: vae.objective(KEY, mm, x, beta=0.5).loss)(m)
        assert bool(jnp.all(g.decoder.raw_scale == 0)) == zero
    np.testing.assert_allclose(
        vae.linear_gaussian_marginal(fixed).covariance_matrix.diagonal() - jnp.sum(fixed.decoder.linear.weight**2, 1),
        1.0,
        rtol=1e-5,
    )


def test_learned_noise_runaway_below_beta_one():
    # copy two pixels into the code with noise s: D + R - H stays put while D + beta R -> -inf for beta < 1
    i = np.arange(8)
    w = np.stack([2 * np.cos(np.pi * i / 4), np.sin(np.pi * i / 4)], axis=1)
    c = w @ w.T + np.eye(8)
    vals = []
    for s in (1e-1, 1e-3, 1e-6):
        a = np.zeros((2, 8))
        a[0, 0], a[1, 2] = math.sqrt((1 - s**2) / c[0, 0]), math.sqrt((1 - s**2) / c[2, 2])
        covz = a @ c @ a.T + s**2 * np.eye(2)
        v = c @ a.T @ np.linalg.inv(covz)  # the best decoder: regression of x on z
        resid = np.linalg.inv(np.linalg.inv(c) + a.T @ a / s**2)  # Cov(x | z), computed stably
        vals.append(vae.linear_gaussian_population(c, a, np.full(2, s), v, np.sqrt(np.diag(resid))))
    (d1, r1), (d2, r2), (d3, r3) = vals
    assert r3 - r1 > 2 * math.log(1e5) - 1e-6
    assert (d3 + 0.5 * r3) < (d1 + 0.5 * r1) - 0.5 * 2 * math.log(1e5) + 1e-6  # falls by (1 - beta) x the rate
    assert abs((d3 + r3) - (d2 + r2)) < 0.1


def test_linear_gaussian_closed_forms_refuse_bad_input_eagerly_and_under_jit():
    w = np.ones((3, 1))
    with pytest.raises(ValueError, match="weight must be"):
        vae.linear_gaussian_optimum(np.ones(3), [1.0])
    with pytest.raises(ValueError, match="betas"):
        vae.linear_gaussian_optimum(w, [1.0, 0.0])
    with pytest.raises(ValueError, match="betas"):
        vae.linear_gaussian_optimum(w, [])
    with pytest.raises(ValueError, match="noise"):
        vae.linear_gaussian_optimum(w, [1.0], noise=-1.0)
    with pytest.raises(ValueError, match="finite"):
        vae.linear_gaussian_optimum(w, [np.nan])
    with pytest.raises(TypeError, match="concrete numbers"):
        jax.jit(lambda ww: vae.linear_gaussian_optimum(ww, [1.0])[0])(jnp.ones((3, 1)))
    x = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="latent_dim"):
        vae.linear_gaussian_fit(x, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, d\]"):
        vae.linear_gaussian_fit(x[0], 1)
    with pytest.raises(ValueError, match="beta"):
        vae.linear_gaussian_fit(x, 1, beta=-1.0)
    with pytest.raises(ValueError, match="finite"):
        vae.linear_gaussian_fit(np.where(x > 1, np.inf, x), 1)
    with pytest.raises(TypeError, match="concrete numbers"):
        jax.jit(lambda xx: vae.linear_gaussian_fit(xx, 1).decoder.linear.bias)(jnp.asarray(x))
    c = np.eye(3)
    with pytest.raises(ValueError, match="cov must be"):
        vae.linear_gaussian_population(np.ones((3, 2)), np.ones((1, 3)), [1.0], np.ones((3, 1)), 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        vae.linear_gaussian_population(-c, np.ones((1, 3)), [1.0], np.ones((3, 1)), 1.0)
    with pytest.raises(ValueError, match="encoder_scale"):
        vae.linear_gaussian_population(c, np.ones((1, 3)), [0.0], np.ones((3, 1)), 1.0)
    with pytest.raises(ValueError, match="decoder_weight"):
        vae.linear_gaussian_population(c, np.ones((1, 3)), [1.0], np.ones((2, 1)), 1.0)
    with pytest.raises(ValueError, match="noise"):
        vae.linear_gaussian_population(c, np.ones((1, 3)), [1.0], np.ones((3, 1)), [1.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="concrete numbers"):
        jax.jit(lambda cc: vae.linear_gaussian_population(cc, np.ones((1, 3)), [1.0], np.ones((3, 1)), 1.0))(jnp.eye(3))
    with pytest.raises(ValueError, match="learn_noise=False needs a noise"):
        vae.linear_gaussian_vae(KEY, 3, 1, learn_noise=False)
    with pytest.raises(ValueError, match="noise must be finite and above"):
        vae.linear_gaussian_vae(KEY, 3, 1, noise=0.0)
    m = _linear_world()
    with pytest.raises(TypeError, match="linear_gaussian_vae"):
        vae.linear_gaussian_terms(_binomial(KEY, 6, 3, 16, width=8), np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        vae.linear_gaussian_terms(m, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        eqx.filter_jit(vae.linear_gaussian_terms)(m, jnp.zeros((2, 3)))


# --- against NumPyro's own estimator --------------------------------------------------------


def _numpyro_pair(beta):
    """NumPyro's model (the dream world with x observed) and guide (the encoder), the code's sites scaled by β.

    ``handlers.scale`` multiplies log q(z) in the model and log p(z|x) in the guide by β, so
    ``Trace_ELBO().loss / N`` estimates ``D + β R`` per example: the β-VAE's loss.
    """

    def model(m, x):
        with numpyro.plate("data", x.shape[0]):
            with handlers.scale(scale=beta):
                z = numpyro.sample("z", m.prior(x.shape[0]))
            numpyro.sample("x", m.decode(z), obs=x)

    def guide(m, x):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=beta):
            numpyro.sample("z", m.encode(x))

    return model, guide


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_objective_matches_numpyro_trace_elbo_value_and_gradient(beta):
    """vae.objective's loss and its gradient against Trace_ELBO / N on a tiny binomial VAE.

    Both are one-particle Monte Carlo estimators of the same expectation; 300 independent keys
    each, compared within 5 combined standard errors per component (value and every gradient entry).
    """
    m = _binomial(jax.random.key(11), 4, 2, 16, width=8)
    x = _counts(jax.random.key(12), n=6, d=4)
    params, static = eqx.partition(m, eqx.is_inexact_array)
    model, guide = _numpyro_pair(beta)

    def ours(p, key):
        return vae.objective(key, eqx.combine(p, static), x, beta=beta).loss

    def theirs(p, key):
        return Trace_ELBO().loss(key, {}, model, guide, eqx.combine(p, static), x) / x.shape[0]

    same_estimator(ours, theirs, params)
