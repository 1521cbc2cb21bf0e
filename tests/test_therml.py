"""klbook.therml (chapter 12): the special cases, NumPyro's ELBO, and the refused configurations."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Trace_ELBO

from klbook import bayes, therml, vae, vib
from klbook import semisup as ss
from klbook.book import jit_once
from klbook.nn import categorical_head
from klbook.recipe import KLObjective

N, D, K, C = 8, 6, 2, 3
KEY = jax.random.key(7)


def _close(a, b, rtol=2e-6, atol=2e-6):
    """Equal to float32 rounding: the two sides add the same float32 terms in another order or scale."""
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _grads_close(ga, gb):
    for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        _close(a, b, rtol=1e-5, atol=1e-6)


def _compare(ours, theirs, model, factor=1.0, same=(), gradients=True):
    """Run both objectives and their gradients in one program, compiled cheaply (``jit_once``: it runs once);
    compare loss, total, terms, gradients.

    ``same`` pairs (our term, their term) that must agree (the same draw, so only rounding may differ).
    """

    @jit_once
    def run(m):
        grad = lambda f: eqx.filter_grad(lambda mm: f(mm).loss)(m) if gradients else None  # noqa: E731
        return ours(m), theirs(m), grad(lambda mm: _Scaled(ours(mm), factor)), grad(theirs)

    a, b, ga, gb = run(model)
    assert isinstance(a, KLObjective)
    for mine, their in same:
        _close(a.terms[mine], b.terms[their])
    _close(factor * a.loss, b.loss)
    _close(a.total, b.total)
    if gradients:  # the chapter-8 case compares values only: its pieces' gradients are the VAE's and VIB's
        _grads_close(ga, gb)
    return a, b


class _Scaled:
    def __init__(self, obj, factor):
        self.loss = factor * obj.loss


def _images():
    return (jax.random.uniform(jax.random.key(1), (N, D)) > 0.5).astype(jnp.float32)


def _labels(n=N):
    return jax.random.randint(jax.random.key(2), (n,), 0, C)


# --- special cases: the same code and parameters give each earlier chapter's loss ------------------


def test_beta_vae_is_therml_with_delta_one_over_beta(beta=0.5):
    model, x = vae.bernoulli_vae(jax.random.key(3), D, K, width=8), _images()
    mult, factor = therml.special_case("beta_vae", beta=beta)
    assert mult == {"delta": 1 / beta, "gamma": 0.0, "sigma": 0.0} and factor == beta
    ours = lambda m: therml.objective(KEY, therml.from_vae(m), x, **mult)  # noqa: E731
    theirs = lambda m: vae.objective(KEY, m, x, beta=beta)  # noqa: E731
    a, _ = _compare(ours, theirs, model, factor, same=[("distortion", "distortion"), ("rate", "rate")])
    assert set(a.terms) == {"distortion", "rate"}


def test_vib_is_therml_with_gamma_one_over_beta(beta=1e-3):
    model = vib.vib(jax.random.key(4), D, K, C, width=8)
    x, y = jax.random.uniform(jax.random.key(5), (N, D)), _labels()
    mult, factor = therml.special_case("vib", beta=beta)
    ours = lambda m: therml.objective(KEY, therml.from_vib(m), x, y, **mult)  # noqa: E731
    theirs = lambda m: vib.objective(KEY, m, x, y, beta=beta)  # noqa: E731
    a, _ = _compare(ours, theirs, model, factor, same=[("classification", "classification"), ("rate", "rate")])
    assert set(a.terms) == {"inputs", "classification", "rate"} and float(a.terms["inputs"]) == 0.0


def test_semisupervised_post_objective_is_therml_with_delta_beta():
    model = ss.code_model(jax.random.key(6), D, K, C, width=8, total_count=4)
    x_l = jax.random.randint(jax.random.key(8), (N, D), 0, 5)
    x_u = jax.random.randint(jax.random.key(9), (2 * N, D), 0, 5)
    y_l, beta, gamma = _labels(), 0.7, 5.0
    mult, factor = therml.special_case("semisupervised", beta=beta, gamma=gamma)
    assert factor == 1.0

    def ours(m):
        return therml.semisupervised_objective(KEY, therml.from_semisup(m), x_l, y_l, x_u, 100, **mult)

    def theirs(m):
        return ss.post_objective(KEY, m, x_l, y_l, x_u, 100, beta=beta, gamma=gamma)

    names = ["distortion", "classification", "rate"]
    a, b = _compare(ours, theirs, model, same=[(n, n) for n in names], gradients=False)
    assert set(a.terms) == set(b.terms) == set(names)


def test_variational_bayes_is_therml_without_a_code_and_sigma_one(beta=0.3):
    x = jax.random.normal(jax.random.key(10), (N, 2))
    y = (jax.random.uniform(jax.random.key(11), (N,)) < 0.5).astype(jnp.int32)
    prior = dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    params = {"loc": jnp.array([0.3, -0.4]), "raw_scale": jnp.array([-1.0, 0.2])}
    mult, factor = therml.special_case("variational_bayes", beta=beta)
    assert factor == 1.0

    def ours(p):
        model = therml.from_bayes(bayes.gaussian(p), prior, bayes.logistic)
        return therml.objective(KEY, model, x, y, **mult, data_size=40)

    def theirs(p):
        return bayes.objective(KEY, bayes.gaussian(p), prior, bayes.logistic, x, y, beta=beta, data_size=40)

    # chapter 10 calls C the distortion and S the rate
    a, _ = _compare(ours, theirs, params, same=[("classification", "distortion"), ("weights_rate", "rate")])
    assert set(a.terms) == {"inputs", "classification", "weights_rate"}


# --- the full diagram: every term, against NumPyro's Trace_ELBO -------------------------------------


class _Head(eqx.Module):
    net: eqx.nn.Linear
    kind: str = eqx.field(static=True)

    def __call__(self, z):
        logits = jax.vmap(self.net)(z)
        return dist.Bernoulli(logits=logits).to_event(1) if self.kind == "bernoulli" else categorical_head(logits)


def _full(key):
    k1, k2, k3 = jax.random.split(key, 3)
    encoder = therml.WeightEncoder((D, 4, 2 * K))  # one hidden layer; its weights are theta
    posterior = therml.mean_field(0.3 * jax.random.normal(k1, (encoder.num_weights,)), 0.2)
    return therml.TherML(
        encoder=encoder,
        prior=lambda n: dist.Normal(jnp.zeros((n, K)), 1.0).to_event(1),
        decoder=_Head(eqx.nn.Linear(K, D, key=k2), "bernoulli"),
        classifier=_Head(eqx.nn.Linear(K, C, key=k3), "categorical"),
        posterior=posterior,
        weight_prior=dist.Normal(jnp.zeros(encoder.num_weights), 1.0).to_event(1),
    )


def _numpyro_pair():
    def model(m, x, y):
        numpyro.sample("theta", m.weight_prior)
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", m.prior(x.shape[0]))
            numpyro.sample("x", m.decoder(z), obs=x)
            numpyro.sample("y", m.classifier(z), obs=y)

    def guide(m, x, y):
        theta = numpyro.sample("theta", m.posterior())
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", m.encoder(theta, x))

    return model, guide


def test_full_objective_matches_numpyro_trace_elbo_value_and_gradient():
    """With every multiplier 1, loss = total = Trace_ELBO / N (S's KL divided by N), in expectation.

    Both are one-particle Monte Carlo estimators of the same expectation; 200 independent keys
    each, compared within 5 combined standard errors per component (value and every gradient entry).
    """
    m = _full(jax.random.key(12))
    x, y = _images(), _labels()
    params, static = eqx.partition(m, eqx.is_inexact_array)
    model, guide = _numpyro_pair()
    reps = 200

    def ours(p, key):
        return therml.objective(key, eqx.combine(p, static), x, y, delta=1.0, gamma=1.0, sigma=1.0).loss

    def theirs(p, key):
        return jnp.asarray(Trace_ELBO().loss(key, {}, model, guide, eqx.combine(p, static), x, y)) / N

    def draws(fn, seed):
        keys = jax.random.split(jax.random.key(seed), reps)
        values, grads = jit_once(jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0)))(params, keys)
        flat = jnp.concatenate([g.reshape(reps, -1) for g in jax.tree_util.tree_leaves(grads)], axis=1)
        return np.asarray(values)[:, None], np.asarray(flat)

    for a, b in zip(draws(ours, 20), draws(theirs, 21), strict=True):
        gap = np.abs(a.mean(0) - b.mean(0))
        se = np.sqrt(a.var(0, ddof=1) / reps + b.var(0, ddof=1) / reps)
        assert np.all(gap < 5 * se + 1e-6), (a.mean(0), b.mean(0), se)


def test_loss_is_the_papers_weighted_sum_and_total_the_unweighted_one_in_a_jitted_sweep():
    """A sweep over delta, vmapped and jitted (traced multipliers): loss = R + delta D + gamma C + sigma S."""
    m = _full(jax.random.key(13))
    x, y = _images(), _labels()
    gamma, sigma = 2.0, 0.3
    deltas = jnp.array([0.0, 0.5, 2.0])
    sweep = jit_once(
        jax.vmap(lambda d: therml.objective(KEY, m, x, y, delta=d, gamma=gamma, sigma=sigma, num_particles=3))
    )
    obj = sweep(deltas)
    t = obj.terms
    assert set(t) == {"weights_rate", "rate", "distortion", "classification"}
    _close(obj.loss, t["rate"] + deltas * t["distortion"] + gamma * t["classification"] + sigma * t["weights_rate"])
    _close(obj.total, sum(t.values()))
    assert np.all(np.diff(np.asarray(obj.loss, np.float64)) > 0.0)  # same draws; D > 0 (Bernoulli pixels)
    # S is the weights' KL divided by N (here the batch is the whole set): its closed form is within 5 s.e.
    exact = float(dist.kl_divergence(m.posterior(), m.weight_prior)) / N
    assert abs(float(t["weights_rate"][0]) - exact) < 5 * float(obj.stderr["weights_rate"][0])


# --- refused configurations, eagerly and under jit -----------------------------------------------


def _both(fn, *args, match, exc=ValueError):
    """``fn(*args)`` raises eagerly, and (the structure being the same) under ``jax.jit``."""
    with pytest.raises(exc, match=match):
        fn(*args)
    with pytest.raises(exc, match=match):
        jax.jit(fn)(*args)


class _DeltaEncoder(eqx.Module):
    def __call__(self, theta, x):
        return dist.Delta(x @ theta[: D * K].reshape(D, K), event_dim=1)


def test_deterministic_code_is_refused_naming_the_rate():
    m = _full(jax.random.key(15))
    m = eqx.tree_at(lambda t: t.encoder, m, _DeltaEncoder())
    x, y = _images(), _labels()
    _both(
        lambda k: therml.objective(k, m, x, y, delta=1.0, gamma=1.0, sigma=1.0).loss,
        KEY,
        match=r"rate R = .* is infinite: the encoder returned a point mass",
    )


def test_point_mass_weights_refuse_S_but_work_as_a_plain_parameter():
    m = _full(jax.random.key(16))
    point = dist.Delta(m.posterior.loc, event_dim=1)
    mp = eqx.tree_at(lambda t: t.posterior, m, point)
    x, y = _images(), _labels()
    _both(
        lambda k: therml.objective(k, mp, x, y, delta=1.0, gamma=1.0, sigma=1.0).loss,
        KEY,
        match=r"sigma but the weight posterior p\(theta\|D\) is a point mass, so S = .* is undefined",
    )
    obj = jax.eval_shape(lambda: therml.objective(KEY, mp, x, y, delta=1.0, gamma=1.0, sigma=0.0))
    assert set(obj.terms) == {"rate", "distortion", "classification"}  # theta is no site: no S
    no_posterior = therml.from_vae(vae.bernoulli_vae(jax.random.key(3), D, K, width=8))
    _both(
        lambda k: therml.objective(k, no_posterior, _images(), delta=1.0, gamma=0.0, sigma=1.0).loss,
        KEY,
        match="is absent .* S = .* is undefined",
    )


def test_missing_heads_with_nonzero_multipliers_are_refused():
    x, y = jax.random.uniform(jax.random.key(5), (N, D)), _labels()
    vib_model = therml.from_vib(vib.vib(jax.random.key(4), D, K, C, width=8))
    _both(
        lambda k: therml.objective(k, vib_model, x, y, delta=1.0, gamma=1.0, sigma=0.0).loss,
        KEY,
        match=r"distortion term has multiplier delta but the model has no decoder",
    )
    vae_model = therml.from_vae(vae.bernoulli_vae(jax.random.key(3), D, K, width=8))
    _both(
        lambda k: therml.objective(k, vae_model, _images(), y, delta=1.0, gamma=1.0, sigma=0.0).loss,
        KEY,
        match=r"classification term has multiplier gamma but the model has no classifier",
    )
    # gamma = 0: the labels are simply not a site of either world
    shapes = jax.eval_shape(lambda: therml.objective(KEY, vae_model, _images(), y, delta=1.0, gamma=0.0, sigma=0.0))
    assert set(shapes.terms) == {"distortion", "rate"}
    # a traced non-zero multiplier for a missing head stops the program when it runs
    with pytest.raises(Exception, match="has no decoder"):
        jit_once(lambda d: therml.objective(KEY, vib_model, x, y, delta=d, gamma=1.0, sigma=0.0).loss)(1.0)
    decoder_only = therml.TherML(decoder=lambda z: None, classifier=bayes.logistic)
    with pytest.raises(ValueError, match="a decoder was given without an encoder"):
        therml.objective(KEY, decoder_only, x, y, delta=0.0, gamma=1.0, sigma=0.0)


@pytest.mark.parametrize("name,value", [("delta", -1.0), ("gamma", float("nan")), ("sigma", float("inf"))])
def test_bad_multipliers_are_refused(name, value):
    m = _full(jax.random.key(17))
    x, y = _images(), _labels()
    kw: dict[str, Any] = {"delta": 1.0, "gamma": 1.0, "sigma": 1.0}
    match = f"the multiplier {name} .* must be a finite number >= 0"
    with pytest.raises(ValueError, match=match):
        therml.objective(KEY, m, x, y, **{**kw, name: value})
    with pytest.raises(Exception, match=match):  # traced: checked when the program runs
        jit_once(lambda v: therml.objective(KEY, m, x, y, **{**kw, name: v}).loss)(value)


def test_shape_mismatches_are_refused():
    m = _full(jax.random.key(18))
    x, y = _images(), _labels()
    kw: dict[str, Any] = {"delta": 1.0, "gamma": 1.0, "sigma": 1.0}
    _both(lambda k, xx: therml.objective(k, m, xx, y, **kw).loss, KEY, x[0], match=r"x must have shape \[N, d\]")
    _both(lambda k, yy: therml.objective(k, m, x, yy, **kw).loss, KEY, y[:-1], match=r"y must have shape \(8,\)")


def test_special_case_names_and_betas_are_checked():
    with pytest.raises(ValueError, match="unknown special case"):
        therml.special_case("gan", beta=1.0)
    with pytest.raises(ValueError, match="beta > 0"):
        therml.special_case("vib", beta=0.0)


def test_weight_encoder_reads_theta_as_its_layers():
    enc = therml.WeightEncoder((D, 2 * K), input_scale=2.0)  # one linear layer
    assert enc.num_weights == (D + 1) * 2 * K
    theta = jax.random.normal(jax.random.key(19), (enc.num_weights,))
    x = _images()
    w, b = theta[: D * 2 * K].reshape(D, 2 * K), theta[D * 2 * K :]
    _close(enc(theta, x).mean, (x / 2.0 @ w + b[None, :])[:, :K])
    with pytest.raises(ValueError, match=r"theta must have shape \(28,\)"):
        enc(theta[:-1], x)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 6\]"):
        enc(theta, x[:, :-1])
    with pytest.raises(ValueError, match="scale > 0"):
        therml.mean_field(jnp.zeros(3), 0.0)
    mf = therml.mean_field(jnp.zeros(3), 0.5)
    _close(jnp.sqrt(mf().variance), jnp.full(3, 0.5))


def test_weight_model_pieces():
    """weight_model: theta is the encoder's weights (mean-field posterior); priors and heads hold no trained array."""
    m = therml.weight_model(jax.random.key(20), D, K, C, width=4, decoder="bernoulli")
    enc = m.encoder
    assert isinstance(enc, therml.WeightEncoder) and enc.sizes == (D, 4, 2 * K)
    assert m.posterior.loc.shape == (enc.num_weights,)
    _close(jnp.sqrt(m.posterior().variance), jnp.full(enc.num_weights, 0.05))
    assert m.weight_prior().event_shape == (enc.num_weights,) and m.prior(5).batch_shape == (5,)
    trained = [a.shape for a in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))]
    assert sorted(trained) == sorted([(enc.num_weights,)] * 2 + [(D, K), (D,), (C, K), (C,)])
    obj = jax.eval_shape(lambda: therml.objective(KEY, m, _images(), _labels(), delta=1.0, gamma=1.0, sigma=1.0))
    assert set(obj.terms) == {"weights_rate", "rate", "distortion", "classification"}
    assert therml.LinearHead(eqx.nn.Linear(K, D, key=KEY), "binomial", 4)(jnp.zeros((3, K))).event_shape == (D,)
    with pytest.raises(ValueError, match="decoder must be None"):
        therml.weight_model(KEY, D, K, C, decoder="gaussian")


def test_optimizer_gives_the_posterior_scales_their_own_rate():
    """therml.optimizer: Adam's first step moves each array by its learning rate (sign of the gradient)."""
    m = therml.weight_model(jax.random.key(21), D, K, C, width=4)
    for params in (
        eqx.filter(m, eqx.is_inexact_array),  # one model, and two stacked (fit_stacked's layout)
        jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), eqx.filter(m, eqx.is_inexact_array)),
    ):
        opt = therml.optimizer(10, learning_rate=1e-3, scale_learning_rate=5e-2)
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        updates, _ = opt.update(grads, opt.init(params), params)
        _close(updates.posterior.raw_scale, jnp.full_like(params.posterior.raw_scale, -5e-2), rtol=1e-4)
        _close(updates.posterior.loc, jnp.full_like(params.posterior.loc, -1e-3), rtol=1e-4)
        _close(updates.classifier.linear.weight, jnp.full_like(params.classifier.linear.weight, -1e-3), rtol=1e-4)
    # decay=False: the rate after num_steps is still the peak (with decay, 1% of it)
    params = eqx.filter(m, eqx.is_inexact_array)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    for decay, factor in ((True, 0.01), (False, 1.0)):
        opt = therml.optimizer(2, learning_rate=1e-3, scale_learning_rate=5e-2, decay=decay)
        state = opt.init(params)
        for _ in range(3):
            updates, state = opt.update(grads, state, params)
        _close(updates.posterior.raw_scale, jnp.full_like(params.posterior.raw_scale, -5e-2 * factor), rtol=1e-4)
        _close(updates.posterior.loc, jnp.full_like(params.posterior.loc, -1e-3 * factor), rtol=1e-4)
    with pytest.raises(ValueError, match="decay must be True"):
        therml.optimizer(10, decay="cosine")
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        therml.optimizer(0)
    with pytest.raises(ValueError, match="scale_learning_rate must be a finite number > 0"):
        therml.optimizer(10, scale_learning_rate=-1.0)
