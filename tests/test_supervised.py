"""Chapter 5: the recipe's ledger for a classifier is the cross-entropy, and the helpers around it."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from klbook import supervised as sv
from klbook.nn import mlp
from klbook.worlds import structure

KEY = jax.random.key(0)


def _toy(n=12, d=5, k=3, seed=0):
    kx, ky, kn = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d))
    y = jax.random.randint(ky, (n,), 0, k)
    return mlp(kn, d, k, width=8, depth=2), x, y


def test_ledger_is_the_cross_entropy_exactly():
    net, x, y = _toy()
    obj = sv.objective(KEY, net, x, y)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(sv.logits(net, x), y).mean()
    np.testing.assert_allclose(obj.terms["classification"], expected, rtol=1e-6)
    assert float(obj.terms["inputs"]) == 0.0  # both worlds read x from the data
    assert obj.dropped == ("x", "y")
    np.testing.assert_allclose(obj.loss, obj.total, rtol=1e-6)


def test_ledger_is_deterministic_and_jit_equals_eager():
    """No random site is drawn from P, so the key does not matter and the stderr is the spread."""
    net, x, y = _toy()
    eager = sv.objective(KEY, net, x, y)
    jitted = eqx.filter_jit(sv.objective)(jax.random.key(7), net, x, y)
    np.testing.assert_allclose(jitted.terms["classification"], eager.terms["classification"], rtol=1e-6)


def test_gradient_matches_optax_cross_entropy_gradient():
    net, x, y = _toy()
    ours = eqx.filter_grad(lambda n: sv.objective(KEY, n, x, y).loss)(net)
    ref = eqx.filter_grad(lambda n: optax.losses.softmax_cross_entropy_with_integer_labels(sv.logits(n, x), y).mean())(
        net
    )
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_worlds_graph_shows_data_and_classifier():
    net, x, y = _toy()
    p, q = structure(sv.real_world, net, x, y), structure(sv.dream_world, net, x, y)
    assert p.observed == {"x", "y"} and p.edges == ()
    assert q.observed == {"x"} and q.edges == (("x", "y"),)


def test_training_lowers_the_cross_entropy_and_beats_chance():
    kx, kn = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (200, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)  # linearly separable
    net = mlp(kn, 2, 2, width=16, depth=1)
    res = sv.train(jax.random.key(4), net, x, y, num_steps=300, batch_size=64, learning_rate=1e-2, progress=False)
    assert set(res.history) == {"loss", "inputs", "classification"}
    assert res.history["classification"][-20:].mean() < 0.5 * res.history["classification"][:5].mean()
    # 200 balanced-ish labels: chance is ~0.5 with s.e. ~0.035; a separable problem must do far better.
    assert sv.accuracy(res.params, x, y) > 0.9


def test_an_ensemble_trains_each_member_as_if_alone():
    """Summed losses, shared batches, Adam per weight: member i ends where training it alone ends."""
    _, x, y = _toy(n=40)
    nets = sv.ensemble(jax.random.key(5), 3, 5, 3, width=8, depth=1)
    assert jax.tree.leaves(nets)[0].shape[0] == 3
    together = sv.train_ensemble(jax.random.key(6), nets, x, y, num_steps=30, batch_size=16, progress=False)
    alone = sv.train(jax.random.key(6), sv.member(nets, 1), x, y, num_steps=30, batch_size=16, progress=False)
    arrays = lambda net: jax.tree.leaves(eqx.filter(net, eqx.is_array))  # noqa: E731
    for a, b in zip(arrays(sv.member(together.params, 1)), arrays(alone.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert together.history["classification"].shape == (30,)


def test_features_are_what_the_last_layer_reads():
    net, x, _ = _toy()
    h = sv.features(net, x)
    assert h.shape == (x.shape[0], 8)
    last = net.layers[-1]
    np.testing.assert_allclose(jax.vmap(last)(h), sv.logits(net, x), rtol=1e-5, atol=1e-6)


def test_linear_probe_separable_and_chance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    informative = labels[:, None] * 3.0 + rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 3))
    good = sv.linear_probe(informative[:200], labels[:200], informative[200:], labels[200:])
    bad = sv.linear_probe(noise[:200], labels[:200], noise[200:], labels[200:])
    assert good.accuracy > 0.95 and good.num_test == 200
    # Pure noise: accuracy is chance, 0.5, within binomial standard errors.
    assert abs(bad.accuracy - 0.5) < 4 * np.sqrt(0.25 / 200)
    np.testing.assert_allclose(good.stderr, np.sqrt(good.accuracy * (1 - good.accuracy) / 200))


@pytest.mark.parametrize(
    "args, match",
    [
        ((jnp.ones((4, 6)), jnp.zeros(4, jnp.int32)), "x must have shape"),
        ((jnp.ones((4, 5)), jnp.zeros(3, jnp.int32)), "y must be integer labels"),
        ((jnp.ones((4, 5)), jnp.zeros(4)), "y must be integer labels"),
        ((jnp.ones((4, 5)), jnp.full(4, 3, jnp.int32)), "labels must lie in 0..2"),
        ((jnp.full((4, 5), jnp.nan), jnp.zeros(4, jnp.int32)), "x must be finite"),
    ],
)
def test_bad_inputs_are_named(args, match):
    net, _, _ = _toy()
    with pytest.raises(ValueError, match=match):
        sv.objective(KEY, net, *args)


def test_non_mlp_and_bad_probe_inputs():
    with pytest.raises(TypeError, match="eqx.nn.MLP"):
        sv.accuracy(lambda v: v, jnp.ones((2, 2)), jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="floating point"):
        net, _, _ = _toy()
        sv.accuracy(net, jnp.ones((2, 5), jnp.int32), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="num_members"):
        sv.ensemble(KEY, 0, 5, 3)
    with pytest.raises(ValueError, match="one label per row"):
        sv.linear_probe(np.ones((4, 2)), np.zeros(3), np.ones((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="two classes"):
        sv.linear_probe(np.ones((4, 2)), np.zeros(4), np.ones((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        sv.linear_probe(np.full((4, 2), np.nan), np.arange(4) % 2, np.ones((2, 2)), np.zeros(2))


# --- probe_accuracy: many probes over many splits, vmapped -----------------------------------


def _probe_data(n=120, f=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(7, 10, n)  # any integer labels, not only 0..K-1
    feats = rng.normal(size=(n, f)) + 2.0 * (labels[:, None] - 8.0)
    splits = np.stack([rng.permutation(n) for _ in range(3)])
    return feats, labels, splits


def test_probe_accuracy_matches_linear_probe_split_by_split():
    """Same penalised logistic regression as scikit-learn's (C = 1, standardised): same accuracy."""
    feats, labels, splits = _probe_data()
    half = labels.size // 2
    expected = np.mean(
        [sv.linear_probe(feats[s[:half]], labels[s[:half]], feats[s[half:]], labels[s[half:]]).accuracy for s in splits]
    )
    np.testing.assert_allclose(sv.probe_accuracy(feats, labels, splits), expected, atol=1e-12)


def test_probe_accuracy_batched_over_layers_equals_one_at_a_time():
    feats, labels, splits = _probe_data()
    noise = np.random.default_rng(1).normal(size=feats.shape)
    stacked = sv.probe_accuracy(np.stack([feats, noise]), labels, np.stack([splits, splits[::-1]]))
    assert stacked.shape == (2,)
    np.testing.assert_allclose(stacked[0], sv.probe_accuracy(feats, labels, splits), atol=1e-12)
    np.testing.assert_allclose(stacked[1], sv.probe_accuracy(noise, labels, splits[::-1]), atol=1e-12)
    # Informative features beat pure noise; noise scores chance (1/3) within binomial errors.
    assert stacked[0] > 0.8 and abs(stacked[1] - 1 / 3) < 4 * np.sqrt(2 / 9 / (3 * 60))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f, y, s: (f, y[:-1], s), "one label per row"),
        (lambda f, y, s: (f, y + 0.5, s), "labels must be integers"),
        (lambda f, y, s: (f, y, s[:, :-1]), "splits must be integer"),
        (lambda f, y, s: (f, y, s.astype(float)), "splits must be integer"),
        (lambda f, y, s: (f, y, np.zeros_like(s)), "permutation"),
        (lambda f, y, s: (np.where(np.arange(f.shape[1]) == 0, np.nan, f), y, s), "finite"),
        (lambda f, y, s: (f, np.zeros_like(y), s), "two classes"),
        (lambda f, y, s: (np.stack([f, f]), y, s), "splits must be integer"),
    ],
)
def test_probe_accuracy_bad_inputs_are_named(change, match):
    with pytest.raises(ValueError, match=match):
        sv.probe_accuracy(*change(*_probe_data()))


# --- fit_temperature: calibration by one number ----------------------------------------------


def _calibration_data(true_temperature=2.5, n=4000, k=5, seed=0):
    kf, ky = jax.random.split(jax.random.key(seed))
    logits = 3.0 * jax.random.normal(kf, (n, k))
    labels = jax.random.categorical(ky, logits / true_temperature).astype(jnp.int32)
    return logits, labels


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    logits, labels = _calibration_data()
    t = float(sv.fit_temperature(logits, labels))
    # Maximum likelihood for one parameter: within four of its standard errors of the truth. With
    # b = 1/T the negative log-likelihood's curvature is the summed variance of the logits under
    # softmax(b * logits), so se(b) = 1/sqrt(that) and se(T) = T^2 se(b) (about 0.05 here).
    p = jax.nn.softmax(logits / t, axis=-1)
    curvature = float(jnp.sum(jnp.sum(p * logits**2, -1) - jnp.sum(p * logits, -1) ** 2))
    se_t = t**2 / math.sqrt(curvature)
    assert abs(t - 2.5) < 4 * se_t, (t, se_t)
    # It minimises the mean cross-entropy: nearby temperatures do no better.
    ce = lambda s: float(optax.losses.softmax_cross_entropy_with_integer_labels(logits / s, labels).mean())  # noqa: E731
    assert ce(t) <= min(ce(0.97 * t), ce(1.03 * t)) + 1e-6


def test_fit_temperature_jit_equals_eager_and_keeps_predictions():
    logits, labels = _calibration_data(true_temperature=0.7, seed=1)
    eager = sv.fit_temperature(logits, labels)
    np.testing.assert_allclose(jax.jit(sv.fit_temperature)(logits, labels), eager, rtol=1e-6)
    assert float(eager) < 1.0  # labels sharper than the logits say: the fitted T sharpens them
    assert bool(jnp.all(jnp.argmax(logits / eager, -1) == jnp.argmax(logits, -1)))


def test_fit_temperature_stops_at_the_bracket_for_separable_data():
    logits = jnp.array([[2.0, -2.0], [-1.0, 1.0]])
    labels = jnp.array([0, 1])
    # The loss falls with 1/T without bound: the fit runs towards the lower end of T, until the
    # float32 loss is flat (zero to rounding), far below T = 1.
    t = float(sv.fit_temperature(logits, labels, low=0.05))
    assert 0.05 <= t < 0.2
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits / t, labels).mean()
    assert float(ce) < 1e-6


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((jnp.ones((4,)), jnp.zeros(4, jnp.int32)), {}, ValueError, "logits must have shape"),
        ((jnp.ones((4, 1)), jnp.zeros(4, jnp.int32)), {}, ValueError, "logits must have shape"),
        ((jnp.ones((4, 3)), jnp.zeros(3, jnp.int32)), {}, ValueError, "labels must be integer labels"),
        ((jnp.ones((4, 3)), jnp.zeros(4)), {}, ValueError, "labels must be integer labels"),
        ((jnp.ones((4, 3), jnp.int32), jnp.zeros(4, jnp.int32)), {}, TypeError, "floating point"),
        ((jnp.ones((4, 3)), jnp.full(4, 3, jnp.int32)), {}, ValueError, "labels must lie in 0..2"),
        ((jnp.full((4, 3), jnp.inf), jnp.zeros(4, jnp.int32)), {}, ValueError, "logits must be finite"),
        ((jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)), {"low": 2.0, "high": 1.0}, ValueError, "0 < low < high"),
        ((jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)), {"num_iter": 0}, ValueError, "num_iter"),
    ],
)
def test_fit_temperature_bad_inputs_are_named(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sv.fit_temperature(*args, **kwargs)


def test_fit_temperature_bad_inputs_under_jit():
    """Shapes are checked while tracing; values a tracer hides give NaN rather than a wrong number."""
    fit = jax.jit(sv.fit_temperature)
    with pytest.raises(ValueError, match="labels must be integer labels"):
        fit(jnp.ones((4, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="logits must have shape"):
        fit(jnp.ones((4,)), jnp.zeros(4, jnp.int32))
    assert bool(jnp.isnan(fit(jnp.full((4, 3), jnp.nan), jnp.zeros(4, jnp.int32))))
