"""klbook.vib: the chapter-7 identities (rate closed form, the classifier bound) and clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from estimator_check import same_estimator
from numpyro import handlers
from numpyro.infer import Trace_ELBO

from klbook import vib
from klbook.recipe import KLObjective, kl_objective

N, D, K, C = 64, 12, 3, 4


def _draws(model, x, key, n):
    return jax.vmap(model.encode(x).sample)(jax.random.split(key, n))


@pytest.fixture(scope="module")
def model_and_data():
    kx, ky, km = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (N, D))
    y = jax.random.randint(ky, (N,), 0, C)
    return vib.vib(km, D, K, C, width=16), x, y


def test_recipe_terms_match_closed_form_rate_and_sampled_classification(model_and_data):
    model, x, y = model_and_data
    obj = kl_objective(
        jax.random.key(1), vib.real_world, vib.dream_world, model, x, y, names=vib.NAMES, num_particles=64
    )
    assert obj.dropped == ("x", "y")
    assert float(obj.terms["inputs"]) == 0.0
    exact_rate = float(jnp.mean(vib.rate(model, x)))
    se = float(obj.mc_stderr["rate"])
    assert abs(float(obj.terms["rate"]) - exact_rate) < 4 * se
    # the classification term C is <-log q(y|z)> over the encoder's draws: an independent Monte Carlo estimate
    z = _draws(model, x, jax.random.key(2), 4000)  # [S, N, K]
    nll = -model.classify(z).log_prob(y)  # [S, N]
    per_draw = np.asarray(nll.mean(axis=1))
    ref, ref_se = per_draw.mean(), per_draw.std(ddof=1) / np.sqrt(per_draw.size)
    assert abs(float(obj.terms["classification"]) - ref) < 4 * np.hypot(float(obj.mc_stderr["classification"]), ref_se)


def test_classification_term_bounds_the_stochastic_classifier_cross_entropy(model_and_data):
    model, x, y = model_and_data
    # C (one estimate) >= -<log qbar(y|x)>, estimated from independent draws; both within Monte Carlo error
    z = _draws(model, x, jax.random.key(3), 2000)
    nll = np.asarray(-model.classify(z).log_prob(y))  # [S, N]
    c_term = nll.mean()
    qbar = np.asarray(vib.predictive(jax.random.key(4), model, x, 2000))[np.arange(N), np.asarray(y)]
    cross_entropy = -np.log(qbar).mean()
    gap_se = nll.mean(axis=1).std(ddof=1) / np.sqrt(nll.shape[0])
    assert c_term - cross_entropy > -4 * gap_se
    # Jensen per example is strict for a non-degenerate encoder: the gap is well above its error
    assert c_term - cross_entropy > 4 * gap_se


def test_fit_betas_rate_falls_with_beta():
    x = jax.random.uniform(jax.random.key(5), (200, D))
    y = (x[:, 0] > 0.5).astype(jnp.int32)
    models, history = vib.fit_betas(
        jax.random.key(6),
        lambda k: vib.vib(k, D, K, 2, width=16),
        [0.0, 1.0],
        x,
        y,
        num_steps=300,
        batch_size=50,
        progress=False,
    )
    rates = [float(jnp.mean(vib.rate(vib.model_at(models, i), x))) for i in range(2)]
    assert rates[1] < rates[0] / 4
    assert set(history) >= {"rate/0", "classification/1"}


def test_predictive_is_a_probability_and_error_rate_in_range(model_and_data):
    model, x, y = model_and_data
    p = vib.predictive(jax.random.key(7), model, x, 5)
    assert p.shape == (N, C)
    np.testing.assert_allclose(np.asarray(p.sum(-1)), 1.0, rtol=1e-5)
    err = float(vib.error_rate(jax.random.key(8), model, x, y, 5))
    assert 0.0 <= err <= 1.0


def test_fgsm_moves_each_pixel_at_most_epsilon_and_raises_the_loss(model_and_data):
    model, x, y = model_and_data
    x_adv = vib.fgsm(model, x, y, 0.05)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.05 + 1e-6
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0

    def loss(xx):
        return float(-jnp.mean(model.classify(model.encode(xx).base_dist.loc).log_prob(y)))

    assert loss(x_adv) > loss(x)


def test_expected_calibration_error_against_a_direct_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=500).astype(np.float32)
    y = rng.integers(0, 3, size=500)
    conf, pred = probs.max(-1), probs.argmax(-1)
    ece = 0.0
    for b in range(10):
        inside = np.minimum((conf * 10).astype(int), 9) == b
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    assert float(vib.expected_calibration_error(probs, y)) == pytest.approx(ece, abs=1e-5)
    perfect = np.eye(3, dtype=np.float32)[y]
    assert float(vib.expected_calibration_error(perfect, y)) == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_name_the_problem(model_and_data):
    model, x, y = model_and_data
    with pytest.raises(ValueError, match="shape"):
        vib.real_world(model, x[:, :3], y)
    with pytest.raises(ValueError, match="labels must lie"):
        kl_objective(jax.random.key(0), vib.real_world, vib.dream_world, model, x, y + C, names=vib.NAMES)
    with pytest.raises(ValueError, match="finite"):
        model.encode(x.at[0, 0].set(jnp.nan))
    with pytest.raises(TypeError, match="floating"):
        model.encode(jnp.ones((2, D), jnp.int32))
    with pytest.raises(ValueError, match="non-negative"):
        vib.fit_betas(jax.random.key(0), lambda k: vib.vib(k, D, K, C), [-1.0], x, y, num_steps=1)
    with pytest.raises(ValueError, match="num_samples"):
        vib.predictive(jax.random.key(0), model, x, 0)


def test_evaluate_matches_its_parts(model_and_data):
    model, x, y = model_and_data
    s = vib.evaluate(jax.random.key(9), model, x, y, num_samples=8)
    assert float(s.rate) == pytest.approx(float(jnp.mean(vib.rate(model, x))), rel=1e-6)
    z = _draws(model, x, jax.random.key(9), 8)  # the same draws evaluate uses
    nll = -model.classify(z).log_prob(y)  # [S, N]
    assert float(s.classification) == pytest.approx(float(nll.mean()), rel=1e-5)
    assert float(s.classification_se) == pytest.approx(float(nll.mean(axis=1).std(ddof=1) / np.sqrt(8)), rel=1e-4)
    for e in (s.error_one, s.error_avg, s.error_mean_code, s.calibration):
        assert 0.0 <= float(e) <= 1.0
    with pytest.raises(ValueError, match="num_samples"):
        vib.evaluate(jax.random.key(0), model, x, y, num_samples=1)


def test_labelled_mixture_posterior_is_bayes_rule():
    from klbook.data import ring_mixture

    mix = ring_mixture(4, radius=1.0, scale=0.7)
    x, y = vib.labelled_mixture(jax.random.key(10), 20000, mix)
    assert x.shape == (20000, 2) and y.shape == (20000,)
    np.testing.assert_allclose(np.bincount(np.asarray(y), minlength=4) / 20000, 0.25, atol=0.02)
    post = np.asarray(vib.label_posterior(mix, x), np.float64)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=1e-5)
    # the posterior is calibrated: its mean probability of each class matches the class frequency
    # among points, and the label's cross-entropy under it is the smallest of any classifier (here
    # compared with the uniform guess)
    nll = -np.log(post[np.arange(20000), np.asarray(y)])
    assert nll.mean() < np.log(4) - 0.1
    np.testing.assert_allclose(post.mean(0), np.bincount(np.asarray(y), minlength=4) / 20000, atol=0.01)


def test_calibration_bins_add_up_and_give_the_ece():
    probs = jax.nn.softmax(3 * jax.random.normal(jax.random.key(0), (400, 10)))
    y = jax.random.randint(jax.random.key(1), (400,), 0, 10)
    conf, correct, count = vib.calibration_bins(probs, y, num_bins=10)
    assert float(count.sum()) == 400
    assert abs(float(conf.sum()) - float(probs.max(-1).sum())) < 1e-3
    assert float(correct.sum()) == float((probs.argmax(-1) == y).sum())
    ece = float(jnp.sum(jnp.abs(correct - conf)) / 400)
    assert abs(float(vib.expected_calibration_error(probs, y)) - ece) < 1e-7
    with pytest.raises(ValueError, match=r"probs must be \[N, C\] and y \[N\]"):
        vib.calibration_bins(probs, y[:10])


def test_module_docstring_ledger_constant_is_the_conditional_entropy():
    # the images' term is zero (both worlds read x as data), so the constant is -H[Y|X], not -H[X, Y]
    assert r"- H[Y\mid X]" in vib.__doc__ and "H[X, Y]" not in vib.__doc__


@pytest.mark.parametrize("jit", [False, True])
def test_ece_refuses_no_bins(jit):
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (20, 3)))
    y = jnp.arange(20) % 3
    ece = jax.jit(vib.expected_calibration_error, static_argnums=2) if jit else vib.expected_calibration_error
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        ece(probs, y, 0)  # used to return ECE = 0 silently
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        ece(probs, y, -3)


@pytest.mark.parametrize("jit", [False, True])
def test_ece_refuses_labels_out_of_range(jit):
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (20, 3)))
    y = (jnp.arange(20) % 3).at[0].set(3)
    ece = eqx_jit(vib.expected_calibration_error) if jit else vib.expected_calibration_error
    with pytest.raises(Exception, match=r"labels must lie in 0\.\.2"):
        jax.block_until_ready(ece(probs, y))


def test_calibration_bins_refuse_empty_and_non_distributions():
    y = jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="N >= 1"):
        vib.calibration_bins(jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32))
    with pytest.raises(ValueError, match="probability vector per row"):
        vib.calibration_bins(jnp.full((4, 3), 0.2), y)


def eqx_jit(fn):
    import equinox as eqx

    return eqx.filter_jit(fn)


@pytest.mark.parametrize("jit", [False, True])
def test_label_posterior_refuses_x_of_the_wrong_dimension(jit):
    from klbook.data import ring_mixture

    mix = ring_mixture(4, radius=1.0, scale=0.7)  # 2-d components
    post = eqx_jit(vib.label_posterior) if jit else vib.label_posterior
    assert post(mix, jnp.zeros((5, 2))).shape == (5, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2\]"):
        post(mix, jnp.zeros((5, 1)))  # used to broadcast to [5, 4, 2] and answer
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2\]"):
        post(mix, jnp.zeros(5))


def test_label_posterior_is_bayes_rule_by_hand():
    from klbook.data import ring_mixture

    mix = ring_mixture(3, radius=1.0, scale=0.5)
    base = mix.component_distribution.base_dist
    loc = np.broadcast_to(np.asarray(base.loc, np.float64), (3, 2))
    scale = np.broadcast_to(np.asarray(base.scale, np.float64), (3, 2))
    w = np.exp(np.asarray(mix.mixing_distribution.logits, np.float64))
    w /= w.sum()
    x = np.array([[0.3, -0.2], [1.0, 0.0], [-0.5, 0.9]])
    lik = np.exp(-0.5 * (((x[:, None, :] - loc[None]) / scale[None]) ** 2).sum(-1)) / np.prod(scale, -1)[None]
    by_hand = w[None] * lik
    by_hand /= by_hand.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(vib.label_posterior(mix, jnp.asarray(x, jnp.float32))), by_hand, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_evaluate_checks_labels_even_when_wrapped_in_jit(model_and_data, jit):
    model, x, y = model_and_data
    evaluate = eqx_jit(vib.evaluate) if jit else vib.evaluate
    with pytest.raises(Exception, match=rf"labels must lie in 0\.\.{C - 1}"):
        jax.block_until_ready(evaluate(jax.random.key(0), model, x, y.at[3].set(C), 4))
    with pytest.raises(Exception, match=rf"labels must lie in 0\.\.{C - 1}"):
        jax.block_until_ready(evaluate(jax.random.key(0), model, x, y.at[3].set(-1), 4))


@pytest.mark.parametrize("jit", [False, True])
def test_error_rate_and_fgsm_check_labels_under_jit(model_and_data, jit):
    model, x, y = model_and_data
    wrap = eqx_jit if jit else (lambda f: f)
    with pytest.raises(Exception, match=rf"labels must lie in 0\.\.{C - 1}"):
        jax.block_until_ready(wrap(vib.error_rate)(jax.random.key(0), model, x, y.at[0].set(C), 2))
    with pytest.raises(Exception, match=rf"labels must lie in 0\.\.{C - 1}"):
        jax.block_until_ready(wrap(lambda m, a, b: vib.fgsm(m, a, b, 0.1))(model, x, y.at[0].set(C)))


def test_confidence_gap_is_signed_and_bounded_by_the_ece(model_and_data):
    model, x, y = model_and_data
    s = vib.evaluate(jax.random.key(11), model, x, y, num_samples=8)
    qbar = vib.predictive(jax.random.key(11), model, x, 8)  # the same draws
    conf, correct, _ = vib.calibration_bins(qbar, y)
    gap = float((conf.sum() - correct.sum()) / N)
    assert float(s.confidence_gap) == pytest.approx(gap, abs=1e-5)
    assert float(s.calibration) == pytest.approx(float(vib.expected_calibration_error(qbar, y)), abs=1e-5)
    assert abs(float(s.confidence_gap)) <= float(s.calibration) + 1e-6
    # mean top-class probability minus accuracy, directly
    direct = float(jnp.mean(qbar.max(-1)) - jnp.mean(qbar.argmax(-1) == y))
    assert float(s.confidence_gap) == pytest.approx(direct, abs=1e-5)


# --- the objective: the one API, and NumPyro's own estimator ---------------------------------


def test_objective_is_the_recipe_ledger_key_first(model_and_data):
    model, x, y = model_and_data
    obj = vib.objective(jax.random.key(7), model, x, y, beta=0.3, num_particles=4)
    assert isinstance(obj, KLObjective)
    assert set(obj.terms) == {"inputs", "rate", "classification"} and obj.dropped == ("x", "y")
    c, r = float(obj.terms["classification"]), float(obj.terms["rate"])
    assert float(obj.loss) == pytest.approx(c + 0.3 * r, rel=1e-5)
    assert float(obj.total) == pytest.approx(c + r, rel=1e-5)
    jitted = eqx.filter_jit(lambda k, m: vib.objective(k, m, x, y, beta=0.3, num_particles=4))(jax.random.key(7), model)
    assert float(jitted.loss) == pytest.approx(float(obj.loss), rel=1e-5)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_objective_refuses_a_bad_beta(model_and_data, bad):
    model, x, y = model_and_data
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        vib.objective(jax.random.key(0), model, x, y, beta=bad)
    traced = eqx.filter_jit(lambda b: vib.objective(jax.random.key(0), model, x, y, beta=b).loss)
    with pytest.raises(Exception, match="beta must be a finite number >= 0"):
        jax.block_until_ready(traced(jnp.float32(bad)))
    assert np.isfinite(float(traced(jnp.float32(0.5))))


def test_objective_refuses_a_model_in_the_key_slot(model_and_data):
    model, x, y = model_and_data
    with pytest.raises((TypeError, ValueError)):
        vib.objective(model, jax.random.key(0), x, y)


def _numpyro_pair(beta):
    """NumPyro's model (the dream world, labels observed) and guide (the encoder), the code's sites scaled by β.

    The images are data in both worlds (a zero term), so they appear only as the encoder's input.
    ``Trace_ELBO().loss / N`` then estimates ``C + β R`` per example.
    """

    def model(m, x, y):
        with numpyro.plate("data", x.shape[0]):
            with handlers.scale(scale=beta):
                z = numpyro.sample("z", m.prior(x.shape[0]))
            numpyro.sample("y", m.classify(z), obs=y)

    def guide(m, x, y):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=beta):
            numpyro.sample("z", m.encode(x))

    return model, guide


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_objective_matches_numpyro_trace_elbo_value_and_gradient(beta):
    """vib.objective's loss and gradient against Trace_ELBO / N on a tiny VIB (4 pixels, 2-d code, 3 classes).

    Both are one-particle Monte Carlo estimators of the same expectation; 300 independent keys
    each, compared within 5 combined standard errors per component (value and every gradient entry).
    """
    m = vib.vib(jax.random.key(11), 4, 2, 3, width=8)
    x = jax.random.uniform(jax.random.key(12), (6, 4))
    y = jax.random.randint(jax.random.key(13), (6,), 0, 3)
    params, static = eqx.partition(m, eqx.is_inexact_array)
    model, guide = _numpyro_pair(beta)

    def ours(p, key):
        return vib.objective(key, eqx.combine(p, static), x, y, beta=beta).loss

    def theirs(p, key):
        return Trace_ELBO().loss(key, {}, model, guide, eqx.combine(p, static), x, y) / x.shape[0]

    same_estimator(ours, theirs, params)
