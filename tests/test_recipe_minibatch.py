"""The recipe on minibatches and its refusals: N, plates, shapes and model arguments.

Issue 9, findings 2, 4, 6 and 7: a global latent's term is KL/N whatever the batch size (N
stated with ``data_size=`` when batches are drawn outside the model, as ``klbook.train`` does);
sites whose shapes or plates differ between the worlds, a data plate with another name, a
mistyped ``data_plate=`` and keyword arguments meant for the models all raise errors that
name the problem, eagerly and under ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import klbook
from klbook.recipe import data, kl_objective
from klbook.train import evaluate

N = 200
XS = 0.5 + jax.random.normal(jax.random.key(0), (N,))
PARAMS = {"m": jnp.array(1.5), "log_s": jnp.array(-1.5)}  # KL(global) = 2.15 nats


def real(x, p):
    numpyro.sample("w", dist.Normal(p["m"], jnp.exp(p["log_s"])))
    with numpyro.plate("data", x.shape[0]):
        data("x", x)


def dream(x, p):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(w, 1.0), obs=x)


def exact(p, x):
    """Nats per example of the full data: KL(w)/N + mean_i E(-log N(x_i | w, 1))."""
    s2 = jnp.exp(2 * p["log_s"])
    kl = klbook.kl(dist.Normal(p["m"], jnp.sqrt(s2)), dist.Normal(0.0, 1.0))
    return float(kl / x.shape[0] + jnp.mean(0.5 * jnp.log(2 * jnp.pi) + 0.5 * ((x - p["m"]) ** 2 + s2)))


def make_loss(data_size):
    def loss_fn(p, key, batch):
        obj = kl_objective(key, real, dream, batch, p, num_particles=32, data_size=data_size)
        return obj.loss, {"se2": obj.mc_stderr["total"] ** 2}

    return loss_fn


def evaluate_with_error(loss_fn, batch_size):
    """evaluate's average and its Monte Carlo standard error.

    The batches are independent and evaluate weights batch b by n_b / N, so the variance of the
    average is sum (n_b / N)^2 se_b^2 <= (B / N) sum (n_b / N) se_b^2 = (B / N) * evaluate(se2).
    """
    out = evaluate(jax.random.key(1), loss_fn, PARAMS, XS, batch_size)
    return out["loss"], float(np.sqrt(batch_size / N * out["se2"]))


def test_evaluate_agrees_across_batch_sizes_with_a_global_latent():
    truth = exact(PARAMS, XS)
    loss_fn = make_loss(N)
    for batch_size in (200, 64, 8):
        value, se = evaluate_with_error(loss_fn, batch_size)
        assert abs(value - truth) < 5 * se, (batch_size, value, truth, se)
    # Without N the global term is KL/B: at B = 8 that is off by 2.15 (1/8 - 1/200) = 0.26 nats.
    value, se = evaluate_with_error(make_loss(None), 8)
    assert abs(value - truth) > 0.2 and 0.2 > 10 * se


def test_data_size_is_the_plates_full_size_when_subsampled():
    def sub_real(x, p):
        numpyro.sample("w", dist.Normal(p["m"], jnp.exp(p["log_s"])))
        with numpyro.plate("data", N, subsample_size=8) as idx:
            data("x", x[idx])

    def sub_dream(x, p):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", N, subsample_size=8) as idx:
            numpyro.sample("x", dist.Normal(w, 1.0), obs=x[idx])

    key = jax.random.key(2)
    implied = kl_objective(key, sub_real, sub_dream, XS, PARAMS, names={"w": "rate"})
    stated = kl_objective(key, sub_real, sub_dream, XS, PARAMS, names={"w": "rate"}, data_size=N)
    assert float(implied.total) == float(stated.total)
    # the global term is one draw's log ratio over N = 200, not over the batch of 8
    many = kl_objective(key, sub_real, sub_dream, XS, PARAMS, names={"w": "rate"}, num_particles=1000)
    kl_w = float(klbook.kl(dist.Normal(1.5, float(jnp.exp(-1.5))), dist.Normal(0.0, 1.0)))
    assert abs(float(many.terms["rate"]) - kl_w / N) < 5 * float(many.stderr["rate"])
    with pytest.raises(ValueError, match="data_size=100 contradicts the subsampled plate 'data'.*N = 200"):
        kl_objective(key, sub_real, sub_dream, XS, PARAMS, data_size=100)


def test_a_subsampled_plate_other_than_the_data_plate_estimates_its_full_sum():
    mus = jnp.linspace(-1.0, 2.0, 10)

    def g_real():
        with numpyro.plate("groups", 10, subsample_size=3) as idx:
            numpyro.sample("z", dist.Normal(mus[idx], 1.0))

    def g_dream():
        with numpyro.plate("groups", 10, subsample_size=3):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    obj = kl_objective(jax.random.key(3), g_real, g_dream, data_plate=None, num_particles=1000)
    truth = float(jnp.sum(0.5 * mus**2))  # sum over all 10 groups of KL(N(mu_g, 1) || N(0, 1))
    assert abs(float(obj.total) - truth) < 5 * float(obj.stderr["total"])


@pytest.mark.parametrize(
    "real_plate, dream_plate, message",
    [
        ((N, 8), None, r"plate 'data' is subsampled but not the same way.*absent from the dream world"),
        ((N, 8), (N, 16), r"plate 'data' is subsampled but not the same way.*subsample_size 8.*subsample_size 16"),
    ],
)
def test_subsampling_must_be_the_same_in_both_worlds(real_plate, dream_plate, message):
    def r(x):
        with numpyro.plate("data", *real_plate) as idx:
            data("x", x[idx])

    def d(x):
        if dream_plate is None:
            numpyro.sample("x", dist.Normal(0.0, 1.0).expand([real_plate[1]]).to_event(1), obs=x[:8])
            return
        with numpyro.plate("data", *dream_plate) as idx:
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x[idx])

    with pytest.raises(ValueError, match=message):
        kl_objective(jax.random.key(0), r, d, XS)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_data_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="data_size must be a positive integer"):
        kl_objective(jax.random.key(0), real, dream, XS, PARAMS, data_size=bad)


def test_data_size_needs_a_data_plate():
    with pytest.raises(ValueError, match="data_size was given but there is no data plate"):
        kl_objective(jax.random.key(0), real, dream, XS, PARAMS, data_plate=None, data_size=N)


# --- finding 4: shapes ------------------------------------------------------------------------


def _pair(p_dist, q_dist):
    return (lambda: numpyro.sample("z", p_dist)), (lambda: numpyro.sample("z", q_dist))


@pytest.mark.parametrize(
    "p_dist, q_dist, message",
    [
        (
            dist.Normal(0.0, 1.0),
            dist.Normal(jnp.zeros(2), 1.0),
            r"site 'z' has batch shape \(\), event shape \(\) in the real world"
            r" but batch shape \(2,\), event shape \(\) in the dream world",
        ),
        (
            dist.Normal(jnp.zeros(2), 1.0),
            dist.Normal(0.0, 1.0),
            r"site 'z' has batch shape \(2,\), event shape \(\) in the real world"
            r" but batch shape \(\), event shape \(\)",
        ),
        (
            dist.Normal(jnp.zeros(2), 1.0),
            dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
            r"site 'z' has batch shape \(2,\), event shape \(\) in the real world"
            r" but batch shape \(\), event shape \(2,\)",
        ),
    ],
)
def test_site_shapes_must_agree_eagerly_and_under_jit(p_dist, q_dist, message):
    r, d = _pair(p_dist, q_dist)
    with pytest.raises(ValueError, match=message):
        kl_objective(jax.random.key(0), r, d)
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda k: kl_objective(k, r, d).total)(jax.random.key(0))


def test_a_data_site_with_other_event_dims_is_named_with_the_fix():
    x = jnp.ones((5, 3))

    def r(x):
        with numpyro.plate("data", 5, dim=-2):
            data("x", x)  # forgot event_dim=1: batch (5, 3)

    def d(x):
        with numpyro.plate("data", 5, dim=-2):
            numpyro.sample("x", dist.Normal(jnp.zeros((1, 3)), 1.0), obs=x)

    def d_event(x):
        with numpyro.plate("data", 5):
            numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0).to_event(1), obs=x)

    kl_objective(jax.random.key(0), r, d, x)  # same shapes: fine
    with pytest.raises(ValueError, match=r"site 'x' has batch shape \(5, 3\).*event_dim"):
        kl_objective(jax.random.key(0), r, d_event, x)


def test_a_site_in_other_plates_is_named():
    def r(x):
        with numpyro.plate("data", 4):
            data("x", x)

    def d(x):
        numpyro.sample("x", dist.Normal(jnp.zeros(4), 1.0), obs=x)  # batch (4,), but no plate

    with pytest.raises(ValueError, match=r"site 'x' is in plates \['data'\] in the real world but \[\] in the dream"):
        kl_objective(jax.random.key(0), r, d, jnp.arange(4.0))


# --- finding 6: the data plate's name ---------------------------------------------------------

X4 = jnp.array([0.5, -1.0, 2.0, 0.1])


def named_worlds(plate):
    def r(x):
        with numpyro.plate(plate, x.shape[0]):
            data("x", x)
            numpyro.sample("z", dist.Normal(0.5 * x, 0.8))

    def d(x):
        with numpyro.plate(plate, x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    return r, d


def test_a_plate_with_another_name_raises_instead_of_switching_to_totals():
    key = jax.random.key(4)
    per_example = kl_objective(key, *named_worlds("data"), X4)
    with pytest.raises(ValueError, match=r"data_plate='data' names no plate of the worlds \(their plates: \['obs'\]\)"):
        kl_objective(key, *named_worlds("obs"), X4)
    same = kl_objective(key, *named_worlds("obs"), X4, data_plate="obs")
    assert float(same.total) == float(per_example.total)
    totals = kl_objective(key, *named_worlds("obs"), X4, data_plate=None)
    np.testing.assert_allclose(float(totals.total), 4 * float(per_example.total), rtol=1e-6)


def test_a_mistyped_data_plate_raises():
    with pytest.raises(ValueError, match=r"data_plate='dta' names no plate.*\['data'\]"):
        kl_objective(jax.random.key(0), *named_worlds("data"), X4, data_plate="dta")
    with pytest.raises(ValueError, match=r"data_plate='dta' names no plate.*\[\]"):
        kl_objective(jax.random.key(0), *_pair(dist.Normal(0.0, 1.0), dist.Normal(0.0, 2.0)), data_plate="dta")
    with pytest.raises(TypeError, match="data_plate must be a plate's name or None"):
        kl_objective(jax.random.key(0), *named_worlds("data"), X4, data_plate=1)


def test_without_any_plate_the_terms_are_totals():
    r, d = _pair(dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0))
    obj = kl_objective(jax.random.key(0), r, d, num_particles=2000)
    assert abs(float(obj.total) - 0.5) < 5 * float(obj.stderr["total"])


# --- finding 7: the models' keyword arguments -------------------------------------------------


def mixture_real(x, *, weights, locs):
    with numpyro.plate("data", x.shape[0]):
        data("x", x)


def mixture_dream(x, *, weights, locs):
    """A mixture whose own argument is called ``weights``, like the recipe's option."""
    mixing = dist.Categorical(probs=weights)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.MixtureSameFamily(mixing, dist.Normal(locs, 1.0)), obs=x)


def test_model_keyword_arguments_go_in_model_kwargs_and_never_clash():
    w, locs = jnp.array([0.3, 0.7]), jnp.array([-1.0, 1.0])
    with jax.numpy_rank_promotion("allow"):  # NumPyro's MixtureSameFamily.log_prob broadcasts by rank
        obj = kl_objective(
            jax.random.key(0),
            mixture_real,
            mixture_dream,
            X4,
            model_kwargs={"weights": w, "locs": locs},
            weights={"x": 2.0},
        )
        mixture = dist.MixtureSameFamily(dist.Categorical(probs=w), dist.Normal(locs, 1.0))
        expected = float(-jnp.mean(mixture.log_prob(X4)))
    np.testing.assert_allclose(float(obj.total), expected, rtol=1e-6)
    np.testing.assert_allclose(float(obj.loss), 2 * float(obj.total), rtol=1e-6)  # the recipe's weights


def test_keyword_arguments_meant_for_the_models_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"\['locs'\] that are not its own options.*model_kwargs=\{'locs': \.\.\.\}"):
        kl_objective(jax.random.key(0), mixture_real, mixture_dream, X4, locs=jnp.zeros(2))
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        kl_objective(jax.random.key(0), mixture_real, mixture_dream, X4, model_kwargs=[1])
