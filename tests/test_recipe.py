"""The universal recipe: agreement with NumPyro's Trace_ELBO and with closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Trace_ELBO

import klbook
from klbook.recipe import KLObjective, data, kl_objective

X = jnp.array([0.5, -1.0, 2.0, 0.1])
NAMES = {"z": "rate", "x": "distortion"}


def real_vae(x, a=0.5, s=0.8):
    """Data plus a linear-Gaussian encoder p(z|x) = N(a x, s)."""
    with numpyro.plate("data", x.shape[0]):
        data("x", x)
        numpyro.sample("z", dist.Normal(a * x, s))


def dream_vae(x, a=0.5, s=0.8):
    """Prior q(z) = N(0, 1) and decoder q(x|z) = N(z, 1)."""
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def exact_terms(x, a=0.5, s=0.8):
    rate = klbook.kl(dist.Normal(a * x, s), dist.Normal(0.0, 1.0))
    distortion = 0.5 * jnp.log(2 * jnp.pi) + 0.5 * ((x - a * x) ** 2 + s**2)
    return float(rate.mean()), float(distortion.mean())


def test_terms_match_closed_form_within_standard_error():
    obj = kl_objective(jax.random.key(0), real_vae, dream_vae, X, names=NAMES, num_particles=4000)
    rate, distortion = exact_terms(X)
    assert abs(obj.terms["rate"] - rate) < 5 * obj.mc_stderr["rate"]
    assert abs(obj.terms["distortion"] - distortion) < 5 * obj.mc_stderr["distortion"]
    assert obj.dropped == ("x",)
    np.testing.assert_allclose(obj.total, obj.terms["rate"] + obj.terms["distortion"], rtol=1e-6)
    np.testing.assert_allclose(obj.loss, obj.total, rtol=1e-6)


def test_agrees_with_numpyro_trace_elbo():
    """-ELBO of the same model/guide pair, per example (the recipe averages over the data plate)."""
    obj = kl_objective(jax.random.key(1), real_vae, dream_vae, X, num_particles=4000)

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(0.5 * x, 0.8))

    keys = jax.random.split(jax.random.key(100), 4000)
    elbo_losses = jax.jit(jax.vmap(lambda k: Trace_ELBO().loss(k, {}, dream_vae, guide, X)))(keys) / X.shape[0]
    se = jnp.sqrt(obj.mc_stderr["total"] ** 2 + jnp.var(elbo_losses, ddof=1) / elbo_losses.size)
    assert abs(obj.total - elbo_losses.mean()) < 5 * se


def _delta_code_worlds(dream_z):
    def real(x):
        with numpyro.plate("data", x.shape[0]):
            data("x", x)
            numpyro.sample("z", dist.Delta(0.3 * x))

    def dream(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dream_z(x))
            numpyro.sample("x", dist.Normal(0.5 * jnp.asarray(z, jnp.float32), 1.0), obs=x)

    return real, dream


def test_agrees_with_trace_elbo_exactly_when_the_guide_is_deterministic():
    """With a Delta encoder there is no sampling noise: the two must agree to float precision."""
    real, _ = _delta_code_worlds(lambda x: dist.Normal(jnp.zeros_like(x), 1.0))

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Delta(0.3 * x))

    # The point mass's infinite <log p(z)> is dropped on request, as NumPyro's ELBO drops it.
    obj = kl_objective(jax.random.key(2), real, dream_vae, X, point_masses=("z",))
    elbo = Trace_ELBO().loss(jax.random.key(3), {}, dream_vae, guide, X)
    np.testing.assert_allclose(obj.total * X.shape[0], elbo, rtol=1e-5)
    assert obj.dropped == ("x", "z")


def test_a_point_mass_against_a_density_is_refused_eagerly_and_under_jit():
    """Its term is +inf; scoring the Delta as log p = 0 would return a finite number that is not the KL."""
    real, dream = _delta_code_worlds(lambda x: dist.Normal(jnp.zeros_like(x), 1.0))
    for run in (
        lambda: kl_objective(jax.random.key(0), real, dream, X),
        jax.jit(lambda: kl_objective(jax.random.key(0), real, dream, X)),
    ):
        with pytest.raises(ValueError, match=r"site 'z' is a point mass .* infinite.*point_masses=\('z',\)"):
            run()

    # Behind the usual wrappers too.
    def real_event(x):
        with numpyro.plate("data", x.shape[0]):
            data("x", x)
            numpyro.sample("z", dist.Delta(jnp.stack([x, x], -1)).to_event(1))

    def dream_event(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(jnp.zeros((x.shape[0], 2)), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="point mass"):
        kl_objective(jax.random.key(0), real_event, dream_event, X)


def test_a_point_mass_against_a_discrete_site_is_an_ordinary_finite_term():
    """p(z = v) = 1 and q(z = v) is a probability: the term is -log q(v), exactly."""
    xb = (X > 0).astype(jnp.int32)

    def real(x):
        with numpyro.plate("data", x.shape[0]):
            data("x", x)
            numpyro.sample("z", dist.Delta(xb.astype(jnp.float32)))

    def dream(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Bernoulli(probs=0.25 * jnp.ones(x.shape[0])))
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    obj = kl_objective(jax.random.key(0), real, dream, X)
    expected = -jnp.mean(jnp.where(xb == 1, jnp.log(0.25), jnp.log(0.75)))
    np.testing.assert_allclose(obj.terms["z"], expected, rtol=1e-6)
    assert obj.dropped == ("x",)


def test_point_masses_must_name_point_mass_latents():
    real, dream = _delta_code_worlds(lambda x: dist.Normal(jnp.zeros_like(x), 1.0))
    with pytest.raises(ValueError, match=r"point_masses names \['x'\]"):
        kl_objective(jax.random.key(0), real, dream, X, point_masses=("z", "x"))
    with pytest.raises(TypeError, match="point_masses must be a tuple"):
        kl_objective(jax.random.key(0), real, dream, X, point_masses="z")


def _gaussian_joint_worlds():
    """P: x ~ N(1, 1.5), z|x ~ N(0.7 x - 0.2, 0.6). Q: z ~ N(0, 1), x|z ~ N(0.9 z + 0.5, 1.2)."""

    def real():
        x = numpyro.sample("x", dist.Normal(1.0, 1.5))
        numpyro.sample("z", dist.Normal(0.7 * x - 0.2, 0.6))

    def dream():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(0.9 * z + 0.5, 1.2))

    # The same joints over (x, z) as multivariate normals.
    mp = jnp.array([1.0, 0.7 * 1.0 - 0.2])
    cov_p = jnp.array([[1.5**2, 0.7 * 1.5**2], [0.7 * 1.5**2, 0.49 * 1.5**2 + 0.36]])
    mq = jnp.array([0.5, 0.0])
    cov_q = jnp.array([[0.81 + 1.44, 0.9], [0.9, 1.0]])
    exact = klbook.kl(dist.MultivariateNormal(mp, cov_p), dist.MultivariateNormal(mq, cov_q))
    return real, dream, float(exact)


def test_closed_form_kl_between_joint_gaussians():
    real, dream, exact = _gaussian_joint_worlds()
    obj = kl_objective(jax.random.key(4), real, dream, num_particles=20000)
    assert obj.dropped == ()
    assert abs(obj.total - exact) < 5 * obj.stderr["total"]


def test_gradient_matches_closed_form_gradient():
    """Pathwise gradient of the sampled rate vs the gradient of the closed-form KL."""

    def real(mu):
        numpyro.sample("z", dist.Normal(mu, 0.5))

    def dream(mu):
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    def estimate(mu, key):
        return kl_objective(key, real, dream, mu, num_particles=2000).loss

    exact = jax.grad(lambda m: klbook.kl(dist.Normal(m, 0.5), dist.Normal(0.0, 1.0)))(0.8)
    grads = jax.jit(jax.vmap(jax.grad(estimate), in_axes=(None, 0)))(0.8, jax.random.split(jax.random.key(5), 10))
    se = jnp.std(grads, ddof=1) / jnp.sqrt(grads.size)
    assert abs(grads.mean() - exact) < 5 * se + 1e-6


def test_discrete_latent_score_function_gradient():
    """A Bernoulli latent is not reparameterisable: the REINFORCE term must give the right gradient."""

    def real(logit):
        numpyro.sample("b", dist.Bernoulli(logits=logit))

    def dream(logit):
        numpyro.sample("b", dist.Bernoulli(probs=0.3))

    exact = jax.grad(lambda lg: klbook.kl(dist.Bernoulli(logits=lg), dist.Bernoulli(probs=0.3)))(0.4)
    grad = jax.grad(lambda lg, k: kl_objective(k, real, dream, lg, num_particles=500).loss)
    grads = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(0.4, jax.random.split(jax.random.key(7), 20))
    se = jnp.std(grads, ddof=1) / jnp.sqrt(grads.size)
    assert abs(grads.mean() - exact) < 5 * se
    # The surrogate adds gradient only: the value is still the KL estimate.
    obj = kl_objective(jax.random.key(8), real, dream, 0.4, num_particles=5000)
    np.testing.assert_allclose(obj.loss, obj.total, rtol=1e-6)
    exact_value = klbook.kl(dist.Bernoulli(logits=0.4), dist.Bernoulli(probs=0.3))
    assert abs(obj.total - exact_value) < 5 * obj.stderr["total"]


def test_weights_scale_the_loss_not_the_total():
    key = jax.random.key(9)
    plain = kl_objective(key, real_vae, dream_vae, X, names=NAMES, num_particles=8)
    beta = kl_objective(key, real_vae, dream_vae, X, names=NAMES, weights={"rate": 4.0}, num_particles=8)
    np.testing.assert_allclose(beta.total, plain.total, rtol=1e-6)
    np.testing.assert_allclose(beta.loss, plain.terms["distortion"] + 4.0 * plain.terms["rate"], rtol=1e-5)


def test_base_measure_makes_the_data_term_an_exact_kl():
    """With m = the true data density, the recipe's total is the KL from the truth to the model."""
    truth = dist.Normal(0.3, 1.1)
    model = dist.Normal(-0.2, 1.5)
    xs = truth.sample(jax.random.key(10), (20000,))

    def real(x):
        with numpyro.plate("data", x.shape[0]):
            data("x", x)

    def dream(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", model, obs=x)

    obj = kl_objective(jax.random.key(11), real, dream, xs, base_measure={"x": truth})
    assert obj.dropped == ()
    assert abs(obj.total - klbook.kl(truth, model)) < 5 * obj.stderr["total"]
    # Without the base measure the data term is the cross-entropy (KL plus the data's entropy).
    ce = kl_objective(jax.random.key(11), real, dream, xs)
    assert ce.dropped == ("x",)
    assert abs(ce.total - klbook.cross_entropy(truth, model)) < 5 * ce.stderr["total"]


def test_jit_equals_eager():
    f = lambda k: kl_objective(k, real_vae, dream_vae, X, names=NAMES, num_particles=3)  # noqa: E731
    eager, jitted = f(jax.random.key(12)), jax.jit(f)(jax.random.key(12))
    assert isinstance(jitted, KLObjective) and jitted.dropped == ("x",)
    for name in ("rate", "distortion"):
        np.testing.assert_allclose(eager.terms[name], jitted.terms[name], rtol=1e-5)
    np.testing.assert_allclose(eager.loss, jitted.loss, rtol=1e-5)


def test_same_key_same_result():
    a = kl_objective(jax.random.key(13), real_vae, dream_vae, X, num_particles=2)
    b = kl_objective(jax.random.key(13), real_vae, dream_vae, X, num_particles=2)
    assert float(a.total) == float(b.total)


def test_global_latent_divides_by_the_plate_size():
    """A global site's KL is shared out per example: total = KL(global)/N + per-example terms."""

    def real(x):
        numpyro.sample("w", dist.Normal(0.2, 0.5))
        with numpyro.plate("data", x.shape[0]):
            data("x", x)

    def dream(x):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(w, 1.0), obs=x)

    obj = kl_objective(jax.random.key(14), real, dream, X, num_particles=4000)
    exact_w = klbook.kl(dist.Normal(0.2, 0.5), dist.Normal(0.0, 1.0)) / X.shape[0]
    assert abs(obj.terms["w"] - exact_w) < 5 * obj.stderr["w"]
    with_one = kl_objective(jax.random.key(14), real, dream, X)
    assert jnp.isnan(with_one.stderr["total"])  # one particle cannot measure the spread


def test_mismatched_worlds_name_the_sites():
    def dream_extra(x):
        dream_vae(x)
        numpyro.sample("y", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"\['y'\] are in the dream world but not the real world"):
        kl_objective(jax.random.key(0), real_vae, dream_extra, X)

    def dream_missing(x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"\['z'\] are in the real world but not the dream world"):
        kl_objective(jax.random.key(0), real_vae, dream_missing, X)


def test_observed_in_dream_but_drawn_in_real_is_an_error():
    def real():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    def dream():
        numpyro.sample("x", dist.Normal(0.0, 1.0), obs=0.0)

    with pytest.raises(ValueError, match="observed in the dream world but drawn in the real world"):
        kl_objective(jax.random.key(0), real, dream)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"names": {"q": "rate"}}, "names refers to sites"),
        ({"weights": {"beta": 1.0}}, "weights refers to terms"),
        ({"base_measure": {"z": dist.Normal(0.0, 1.0)}}, "base_measure is for data"),
        ({"num_particles": 0}, "num_particles must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kl_objective(jax.random.key(0), real_vae, dream_vae, X, **kwargs)


def test_bad_key_and_worlds():
    with pytest.raises(TypeError, match="PRNG key"):
        kl_objective(0, real_vae, dream_vae, X)
    with pytest.raises(TypeError, match="dream world must be a NumPyro model function"):
        kl_objective(jax.random.key(0), real_vae, "dream", X)


def test_data_rejects_bad_event_dim():
    with pytest.raises(ValueError, match="event_dim"):
        with numpyro.handlers.seed(rng_seed=0):
            data("x", jnp.zeros(3), event_dim=2)


def test_masked_sites_are_refused_by_name():
    def masked_real(x):
        with numpyro.plate("data", x.shape[0]), numpyro.handlers.mask(mask=x > 0):
            data("x", x)
            numpyro.sample("z", dist.Normal(0.5 * x, 0.8))

    with pytest.raises(ValueError, match=r"sites \['x', 'z'\] of the real world are masked"):
        kl_objective(jax.random.key(0), masked_real, dream_vae, X)


def test_the_two_standard_errors_answer_their_questions():
    """mc_stderr: the spread of the estimate over keys, the data fixed; stderr: over examples too.

    200 independent estimates (K = 20 particles each) on the same 4 examples: their standard
    deviation estimates the Monte Carlo error, with relative standard error 1/sqrt(2 * 199) = 5%,
    so the reported mc_stderr must match it to within 4 * 5% = 20%. stderr is the spread of the
    per-example averages over sqrt(4), the same with one particle as with many.
    """
    keys = jax.random.split(jax.random.key(21), 200)
    objs = jax.jit(jax.vmap(lambda k: kl_objective(k, real_vae, dream_vae, X, names=NAMES, num_particles=20)))(keys)
    spread = np.std(np.asarray(objs.total), ddof=1)
    reported = float(np.sqrt(np.mean(np.asarray(objs.mc_stderr["total"]) ** 2)))
    assert abs(reported / spread - 1) < 0.2, (reported, spread)
    # Over examples: the exact per-example totals (closed forms) and their spread.
    per_example = np.asarray(
        klbook.kl(dist.Normal(0.5 * X, 0.8), dist.Normal(0.0, 1.0))
        + 0.5 * jnp.log(2 * jnp.pi)
        + 0.5 * ((X - 0.5 * X) ** 2 + 0.8**2)
    )
    data_se = np.std(per_example, ddof=1) / np.sqrt(X.shape[0])
    many = kl_objective(jax.random.key(22), real_vae, dream_vae, X, names=NAMES, num_particles=4000)
    assert float(many.mc_stderr["total"]) < 0.05 * data_se  # 4000 draws: Monte Carlo error is small
    np.testing.assert_allclose(float(many.stderr["total"]), data_se, rtol=0.05)
    one = kl_objective(jax.random.key(22), real_vae, dream_vae, X, names=NAMES)
    assert np.isnan(float(one.mc_stderr["total"])) and np.isfinite(float(one.stderr["total"]))


def test_a_proper_observed_density_in_the_real_world_is_not_scored():
    """obs= under any distribution in P is data: dropped unless given as a base measure."""

    def real_proper(x, a=0.5, s=0.8):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
            numpyro.sample("z", dist.Normal(a * x, s))

    key = jax.random.key(23)
    as_data = kl_objective(key, real_vae, dream_vae, X, names=NAMES)
    proper = kl_objective(key, real_proper, dream_vae, X, names=NAMES)
    assert proper.dropped == ("x",)
    np.testing.assert_allclose(proper.total, as_data.total, rtol=1e-6)
    based = kl_objective(key, real_vae, dream_vae, X, names=NAMES, base_measure={"x": dist.Normal(0.0, 1.0)})
    shift = jnp.mean(dist.Normal(0.0, 1.0).log_prob(X))
    np.testing.assert_allclose(based.terms["distortion"], as_data.terms["distortion"] + shift, rtol=1e-5)
    assert based.dropped == ()
