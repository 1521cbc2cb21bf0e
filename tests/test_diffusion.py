"""klbook.diffusion: the chapter-9 identities (closed forms, T -> infinity, schedule invariance, the sampler)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy.stats import norm

from klbook import data
from klbook import diffusion as dm
from klbook.recipe import kl_objective

V = jnp.array([0.05, 0.3, 1.0, 4.0])  # variances of the Gaussian data, per dimension
GMIN, GMAX = -8.0, 6.0
N_MC = 40_000


def _gaussian_mc(schedule, key, n=N_MC):
    k_x, k_mc = jax.random.split(key)  # (fold_in(key, 1) would be split(key)[1]: the same noise twice)
    x = jnp.sqrt(V)[None] * jax.random.normal(k_x, (n, V.size))
    t = dm.continuous_terms(k_mc, None, x, denoise=dm.gaussian_denoiser(V), schedule=schedule).diffusion
    t = np.asarray(t, np.float64)
    return t.mean(), t.std(ddof=1) / math.sqrt(n)


@pytest.mark.parametrize(
    "schedule",
    [dm.LinearSchedule(GMIN, GMAX), dm.CosineSchedule(GMIN, GMAX), dm.MonotoneSchedule(jax.random.key(3), GMIN, GMAX)],
    ids=["linear", "cosine", "monotone-net"],
)
def test_continuous_term_closed_form_matches_monte_carlo_for_any_schedule(schedule):
    exact = dm.gaussian_continuous_term(V, GMIN, GMAX)
    mean, se = _gaussian_mc(schedule, jax.random.key(0))
    assert abs(mean - exact) < 4 * se, (mean, se, exact)


def test_closed_form_depends_only_on_the_endpoints():
    # the integral over SNR, done numerically in float64 along two different schedules, equals the closed form
    exact = dm.gaussian_continuous_term(V, GMIN, GMAX)
    t = np.linspace(0, 1, 200_001)
    v = np.asarray(V, np.float64)
    for gamma in (GMIN + (GMAX - GMIN) * t, GMIN + (GMAX - GMIN) * t**3):
        u = np.exp(-gamma)
        f = np.sum(v / (1 + v * u[:, None]), axis=1)
        integral = 0.5 * np.sum(0.5 * (f[1:] + f[:-1]) * -(u[1:] - u[:-1]))  # trapezoid over SNR
        assert abs(integral - exact) < 1e-6 * exact


def test_discrete_term_falls_to_the_continuous_value():
    exact = dm.gaussian_continuous_term(V, GMIN, GMAX)
    for schedule in (dm.LinearSchedule(GMIN, GMAX), dm.CosineSchedule(GMIN, GMAX)):
        values = [
            dm.gaussian_discrete_term(V, np.asarray(schedule(np.linspace(0, 1, T + 1)), np.float64))
            for T in (2**k for k in range(0, 15))
        ]
        assert all(
            a > b for a, b in zip(values, values[1:], strict=False)
        )  # consecutive pairs  # refining the grid lowers L_T
        assert all(v > exact for v in values)  # L_T >= L_infinity
        assert values[-1] - exact < 1e-2 * exact  # and it gets there


def test_discrete_estimator_matches_its_closed_form():
    schedule, T = dm.LinearSchedule(GMIN, GMAX), 64
    exact = dm.gaussian_discrete_term(V, np.asarray(schedule(np.linspace(0, 1, T + 1)), np.float64))
    x = jnp.sqrt(V)[None] * jax.random.normal(jax.random.key(4), (N_MC, V.size))
    t = np.asarray(
        dm.discrete_terms(jax.random.key(5), None, x, T, denoise=dm.gaussian_denoiser(V), schedule=schedule).diffusion,
        np.float64,
    )
    assert abs(t.mean() - exact) < 4 * t.std(ddof=1) / math.sqrt(t.size)


def test_posterior_step_kl_is_half_the_snr_drop_times_the_error():
    k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
    z, x, x_hat = (jax.random.normal(k, (5, 3)) for k in (k1, k2, k3))
    g_s, g_t = -2.0, 1.5
    exact = dist.kl_divergence(dm.posterior(z, x, g_s, g_t), dm.posterior(z, x_hat, g_s, g_t)).sum(-1)
    formula = 0.5 * (math.exp(-g_s) - math.exp(-g_t)) * jnp.sum((x - x_hat) ** 2, -1)
    np.testing.assert_allclose(exact, formula, rtol=1e-5)
    # variance preserving: alpha^2 + sigma^2 = 1 (the marginals themselves: test_sampler_first_and_last_steps_...)
    alpha, sigma = dm.alpha_sigma(jnp.array([g_s, g_t]))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)


def test_monotone_schedule_is_increasing_with_fixed_endpoints():
    t = jnp.linspace(0, 1, 2001)
    for seed in range(5):
        s = dm.MonotoneSchedule(jax.random.key(seed), -7.0, 5.0, width=8)
        s = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(100 + seed), a.shape), s)  # any parameters
        g, dg = dm.gamma_prime(s, t)
        assert np.all(np.diff(np.asarray(g)) > 0) and np.all(np.asarray(dg) > 0)
        np.testing.assert_allclose([float(s(0.0)), float(s(1.0))], [-7.0, 5.0], atol=1e-5)


def test_sampler_first_and_last_steps_match_the_forward_process():
    # data = one point x*, denoiser = x* (the exact reverse process): the path has q(z_t | x*) at every step
    x_star = jnp.array([0.7, -1.2])
    schedule, T, n = dm.LinearSchedule(-6.0, 4.0), 8, 20_000
    a1, s1 = dm.alpha_sigma(schedule(1.0))
    z1 = a1 * x_star[None] + s1 * jax.random.normal(jax.random.key(7), (n, 2))
    path = dm.ancestral_path(jax.random.key(8), schedule, lambda z, g: jnp.broadcast_to(x_star[None], z.shape), z1, T)
    assert path.shape == (T + 1, n, 2) and bool(jnp.all(path[T] == z1))
    for i in (T - 1, 0):  # the first step taken and the last
        alpha, sigma = dm.alpha_sigma(schedule(i / T))
        z = np.asarray(path[i], np.float64)
        se_mean = float(sigma) / math.sqrt(n)
        assert np.all(np.abs(z.mean(0) - float(alpha) * np.asarray(x_star)) < 4 * se_mean)
        se_var = float(sigma) ** 2 * math.sqrt(2 / (n - 1))
        assert np.all(np.abs(z.var(0, ddof=1) - float(sigma) ** 2) < 4 * se_var)


@pytest.fixture(scope="module")
def small_model():
    x = dm.discretise(data.mixture_2d(jax.random.key(9), 64, "ring").x, 1 / 16)
    return dm.diffusion_model(jax.random.key(10), 2, dm.LinearSchedule(-6.0, 5.0), 1 / 16, width=16), x


def test_recipe_ledger_matches_the_analytic_estimator(small_model):
    model, x = small_model
    T = 4
    obj = eqx.filter_jit(
        lambda m, k: kl_objective(k, dm.real_world, dm.dream_world, m, x, T, names=dm.names(T), num_particles=32)
    )(model, jax.random.key(11))
    assert set(obj.terms) == {"prior", "diffusion", "reconstruction"} and obj.dropped == ("x",)
    ref = eqx.filter_jit(lambda m, ks: jax.vmap(lambda k: dm.discrete_terms(k, m, x, T))(ks))(
        model, jax.random.split(jax.random.key(12), 256)
    )
    for name in ("prior", "diffusion", "reconstruction"):
        r = np.asarray(getattr(ref, name)).mean(1)  # [256] batch means
        se = math.hypot(float(obj.mc_stderr[name]), r.std(ddof=1) / math.sqrt(r.size))
        assert abs(float(obj.terms[name]) - r.mean()) < 4 * se + 1e-6, name


def test_discretised_normal_is_a_distribution_over_the_grid():
    grid = jnp.linspace(-1, 1, 17)
    d = dm.DiscretisedNormal(jnp.array([[-0.93], [0.2], [3.0]]), jnp.array([[0.05], [0.3], [0.01]]), 0.125, -1.0, 1.0)
    p = jnp.exp(jax.jit(d.log_prob)(grid[None, :]))  # [3, 17]
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    # against scipy in float64, interior bin far in a tail
    lp = float(dm.DiscretisedNormal(0.0, 0.05, 0.125).log_prob(0.5))
    lo, hi = norm.logsf(0.4375 / 0.05), norm.logsf(0.5625 / 0.05)  # log P(u > a), log P(u > b)
    ref = lo + math.log1p(-math.exp(hi - lo))
    assert abs(lp - ref) < 1e-3 * abs(ref)
    assert np.isfinite(float(dm.DiscretisedNormal(0.0, 0.01, 0.125).log_prob(-0.5)))


def test_mixture_bin_probabilities_sum_to_one():
    ring = data.ring_mixture(4, radius=1.0, scale=0.3)
    axis = jnp.arange(-3, 3, 1 / 8) + 1 / 16
    gx, gy = jnp.meshgrid(axis, axis)
    p = jnp.exp(jax.jit(lambda x: dm.mixture_bin_log_prob(ring, x, 1 / 8))(jnp.stack([gx.ravel(), gy.ravel()], -1)))
    assert abs(float(p.sum()) - 1.0) < 1e-4


def test_bad_inputs_raise(small_model):
    model, x = small_model
    with pytest.raises(ValueError, match="grid"):
        model.check(x + 0.01)
    with pytest.raises(ValueError, match="shape"):
        model.check(x[:, :1])
    with pytest.raises(ValueError, match="finite"):
        model.check(x.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        dm.LinearSchedule(2.0, 1.0)
    with pytest.raises(ValueError, match="num_steps"):
        dm.real_world(model, x, 0)
    with pytest.raises(ValueError, match="bin_width"):
        dm.discretise(x, 0.0)


# ---- issue 22: no silent wrong answers from a schedule -------------------------------------------------


def _decreasing(t):  # log SNR passed where gamma = -log SNR is meant: SNR rises with t
    return 6.0 - 14.0 * jnp.asarray(t)


def test_decreasing_schedule_is_refused_eagerly_and_under_jit(small_model):
    model, x = small_model
    xg = jnp.sqrt(V)[None] * jax.random.normal(jax.random.key(20), (64, V.size))
    den = dm.gaussian_denoiser(V)
    calls = {
        "continuous": lambda xx: (
            dm.continuous_terms(jax.random.key(0), None, xx, denoise=den, schedule=_decreasing).diffusion
        ),
        "discrete": lambda xx: (
            dm.discrete_terms(jax.random.key(0), None, xx, 8, denoise=den, schedule=_decreasing).diffusion
        ),
        "all steps": lambda xx: (
            dm.all_steps_terms(jax.random.key(0), None, xx, 8, denoise=den, schedule=_decreasing).diffusion
        ),
        "path": lambda xx: dm.ancestral_path(jax.random.key(0), _decreasing, den, xx, 4),
    }
    for f in calls.values():
        for g in (f, jax.jit(f)):
            with pytest.raises(ValueError, match="increasing.*log SNR passed"):
                g(xg)
    with pytest.raises(ValueError, match="model's schedule must be increasing"):
        dm.diffusion_model(jax.random.key(1), 2, _decreasing, 1 / 16)
    swapped = eqx.tree_at(lambda m: m.schedule, model, _decreasing)  # tree_at skips __check_init__
    for g in (
        lambda m: dm.objective(jax.random.key(0), m, x, 4).loss,
        eqx.filter_jit(lambda m: dm.objective(jax.random.key(0), m, x, 4).loss),
    ):
        with pytest.raises(ValueError, match="model's schedule must be increasing"):
            g(swapped)
    with pytest.raises(ValueError, match="model's schedule must be increasing"):
        eqx.filter_jit(dm.sample)(jax.random.key(0), swapped, 4, 2)
    # what it used to give: a negative "KL" for the optimal denoiser
    gam = np.asarray(_decreasing(np.linspace(0, 1, 9)), np.float64)
    assert dm.gaussian_discrete_term(V, gam) < 0


def test_schedule_with_other_endpoints_is_refused_eagerly_and_under_jit(small_model):
    model, x = small_model  # LinearSchedule(-6, 5)
    other = [
        dm.LinearSchedule(-8.0, 5.0),
        dm.MonotoneSchedule(jax.random.key(2), -6.0, 7.0),
        lambda t: -6.0 + 12.0 * jnp.asarray(t),
    ]  # static fields, static fields (traced params), constants
    for sched in other:
        for fn in (
            dm.continuous_terms,
            lambda k, m, xx, schedule: dm.discrete_terms(k, m, xx, 4, schedule=schedule),
            lambda k, m, xx, schedule: dm.all_steps_terms(k, m, xx, 4, schedule=schedule),
        ):
            f = lambda m, s: fn(jax.random.key(0), m, x, schedule=s).total
            with pytest.raises(ValueError, match="endpoints .* differ from the model's"):
                f(model, sched)
            with pytest.raises(ValueError, match="endpoints .* differ from the model's"):
                eqx.filter_jit(f)(model, sched)
    # the same endpoints with another interior are accepted, eagerly and under jit
    same = dm.MonotoneSchedule(jax.random.key(3), -6.0, 5.0)
    a = dm.continuous_terms(jax.random.key(0), model, x, schedule=same).total
    b = eqx.filter_jit(lambda m, s: dm.continuous_terms(jax.random.key(0), m, x, schedule=s).total)(model, same)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_noise_form_equals_the_denoiser_form(small_model):
    # ||x - x_hat||^2 = e^gamma ||eps - eps_hat||^2: the model's terms (noise form) equal the x-form with its denoiser
    model, x = small_model
    for fn in (
        dm.continuous_terms,
        lambda k, m, xx, **kw: dm.discrete_terms(k, m, xx, 8, **kw),
        lambda k, m, xx, **kw: dm.all_steps_terms(k, m, xx, 8, **kw),
    ):
        a = fn(jax.random.key(4), model, x).diffusion
        b = fn(jax.random.key(4), model, x, denoise=model.denoise).diffusion
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4)


def test_all_steps_estimator_matches_its_closed_form_with_lower_variance():
    schedule, T = dm.LinearSchedule(GMIN, GMAX), 64
    exact = dm.gaussian_discrete_term(V, np.asarray(schedule(np.linspace(0, 1, T + 1)), np.float64))
    x = jnp.sqrt(V)[None] * jax.random.normal(jax.random.key(4), (N_MC // 4, V.size))
    kw = dict(denoise=dm.gaussian_denoiser(V), schedule=schedule)
    a = np.asarray(dm.all_steps_terms(jax.random.key(5), None, x, T, **kw).diffusion, np.float64)
    one = np.asarray(dm.discrete_terms(jax.random.key(6), None, x, T, **kw).diffusion, np.float64)
    assert abs(a.mean() - exact) < 4 * a.std(ddof=1) / math.sqrt(a.size)
    assert a.var() < one.var() / 10  # every step charged beats one sampled step by far


# ---- issue 22: one API (key first, a KLObjective), and the objective against NumPyro's own estimator --------


def test_objective_is_key_first_and_returns_the_recipes_klobjective(small_model):
    from klbook.recipe import KLObjective

    model, x = small_model
    obj = dm.objective(jax.random.key(0), model, x, 4)
    assert isinstance(obj, KLObjective) and set(obj.terms) == {"prior", "diffusion", "reconstruction"}
    np.testing.assert_allclose(float(obj.total), sum(float(v) for v in obj.terms.values()), rtol=1e-5)
    jitted = eqx.filter_jit(lambda k, m: dm.objective(k, m, x, 4))(jax.random.key(0), model)
    np.testing.assert_allclose(float(jitted.loss), float(obj.loss), rtol=1e-4, atol=1e-4)
    with pytest.raises((TypeError, ValueError), match="key"):  # the old order (model, key, ...) is refused
        dm.objective(model, jax.random.key(0), x, 4)


def test_objective_is_numpyros_negative_elbo_per_example_value_and_gradient():
    """dm.objective(...).loss = Trace_ELBO().loss / N with the dream world as the model (x observed) and the
    real world's noising chain as the guide: value and gradient (every network weight), within 5 Monte
    Carlo standard errors over independent draws of each."""
    from numpyro import handlers
    from numpyro.infer import Trace_ELBO

    T, n = 3, 16
    x = dm.discretise(data.mixture_2d(jax.random.key(30), n, "ring").x, 1 / 8)
    model = dm.diffusion_model(jax.random.key(31), 2, dm.LinearSchedule(-5.0, 4.0), 1 / 8, width=8)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def guide(p, xx):  # p(z | x): the real world without its data site (x is the model's observation)
        handlers.block(dm.real_world, hide=["x"])(eqx.combine(p, static), xx, T)

    def dream(p, xx):
        handlers.condition(dm.dream_world, data={"x": xx})(eqx.combine(p, static), xx, T)

    recipe = lambda p, k: dm.objective(k, eqx.combine(p, static), x, T).loss
    elbo = lambda p, k: Trace_ELBO().loss(k, {}, dream, guide, p, x) / n

    def draws(fn, seed, m=400):
        vg = eqx.filter_jit(jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0)))
        v, g = vg(params, jax.random.split(jax.random.key(seed), m))
        flat = jnp.concatenate([jnp.reshape(a, (m, -1)) for a in jax.tree.leaves(g)], axis=1)
        return np.asarray(v, np.float64), np.asarray(flat, np.float64)

    (rv, rg), (ev, eg) = draws(recipe, 32), draws(elbo, 33)
    for a, b, what in ((rv[:, None], ev[:, None], "value"), (rg, eg, "gradient")):
        se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
        gap = np.abs(a.mean(0) - b.mean(0))
        assert np.all(gap < 5 * se + 1e-5), (what, gap.max(), se[np.argmax(gap)])
    assert rg.std(0).max() > 0 and np.abs(rg.mean(0)).max() > 5 * rg.std(0).max() / math.sqrt(rg.shape[0])
