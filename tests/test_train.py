"""Tests for klbook.train: the shared optax loop and the dataset average."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from klbook.train import FitResult, NonFiniteLossError, evaluate, fit

KEY = jax.random.key(0)


def normal_mean_loss(mu, key, batch):
    """Negative log-likelihood of a unit Normal, up to a constant: optimum at the batch mean."""
    return 0.5 * jnp.mean((batch - mu) ** 2), {"rate": 0.5 * mu**2}


def noisy_loss(mu, key, batch):
    """A stochastic objective: the key matters."""
    return jnp.mean((mu - jax.random.normal(key, (4,))) ** 2), {}


@pytest.fixture(scope="module")
def sample():
    return jax.random.normal(jax.random.key(1), (50,)) * 2.0 + 3.0


def test_full_batch_sgd_reaches_the_sample_mean(sample):
    # loss(mu) = mean (x - mu)^2 / 2 is convex with its minimum at the sample mean; SGD with step
    # 0.5 halves the error each step, so 80 steps leave 2^-80 of it: float32 rounding only.
    res = fit(
        KEY, normal_mean_loss, jnp.array(0.0), num_steps=80, optimizer=optax.sgd(0.5), data=sample, progress=False
    )
    assert isinstance(res, FitResult)
    target = float(jnp.mean(sample))
    assert abs(float(res.params) - target) <= 8 * np.finfo(np.float32).eps * (1 + abs(target))
    assert set(res.history) == {"loss", "rate"}
    assert all(v.shape == (80,) for v in res.history.values())
    # the history records the loss before each step: it is non-increasing for this convex problem
    assert np.all(np.diff(res.history["loss"]) <= 1e-6)
    np.testing.assert_allclose(res.history["rate"][-1], 0.5 * target**2, rtol=1e-5)


def test_default_adam_decreases_the_loss(sample):
    res = fit(KEY, normal_mean_loss, jnp.array(0.0), num_steps=30, data=sample, progress=False)
    assert res.history["loss"][-1] < res.history["loss"][0]


def test_minibatches_are_iid_draws_from_the_data():
    # Record the batch mean as a term: over T steps of B draws with replacement, the average of
    # the batch means has mean = data mean and standard error sd(data) / sqrt(B T).
    data = jnp.arange(100.0)
    loss = lambda p, k, b: (jnp.sum(p**2), {"batch_mean": jnp.mean(b)})  # noqa: E731
    steps, size = 400, 8
    res = fit(KEY, loss, jnp.zeros(()), num_steps=steps, data=data, batch_size=size, progress=False)
    se = float(jnp.std(data)) / math.sqrt(steps * size)
    assert abs(res.history["batch_mean"].mean() - float(jnp.mean(data))) < 5 * se
    # whole rows of a pytree are drawn together
    pairs = {"x": data, "y": 2 * data}
    loss2 = lambda p, k, b: (jnp.sum(p**2), {"gap": jnp.max(jnp.abs(b["y"] - 2 * b["x"]))})  # noqa: E731
    res2 = fit(KEY, loss2, jnp.zeros(()), num_steps=20, data=pairs, batch_size=5, progress=False)
    assert np.all(res2.history["gap"] == 0)


def test_same_key_same_result_and_other_key_differs():
    a = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=37, chunk_size=5, progress=False)
    b = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=37, chunk_size=5, progress=False)
    c = fit(jax.random.key(1), noisy_loss, jnp.array(1.0), num_steps=37, chunk_size=5, progress=False)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert float(a.params) == float(b.params)
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_chunking_does_not_change_the_result():
    # per-step keys are fold_in(key, step): how steps are grouped into chunks is invisible
    a = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=23, chunk_size=23, progress=False)
    b = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=23, chunk_size=4, progress=False)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(float(a.params), float(b.params), rtol=1e-6)


def test_compiles_once_however_many_chunks():
    traces = []

    def loss(p, k, b):
        traces.append(1)  # runs only while JAX traces
        return jnp.sum(p**2), {"rate": jnp.sum(p**2)}

    fit(KEY, loss, jnp.ones(3), num_steps=3, chunk_size=1, progress=False)
    few = len(traces)
    traces.clear()
    fit(KEY, loss, jnp.ones(3), num_steps=97, chunk_size=4, progress=False)  # 25 chunks, last padded
    assert len(traces) == few
    assert few <= 2  # one shape check, one trace of the step


def test_stops_at_the_first_infinite_term_with_a_clear_message():
    # loss = -p with sgd(1): p_t = t exactly, so rate = 1 / (37 - p) is inf at step 37
    loss = lambda p, k, b: (-p, {"rate": 1.0 / (37.0 - p), "distortion": p})  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"step 37: rate is inf") as err:
        fit(KEY, loss, jnp.array(0.0), num_steps=100, optimizer=optax.sgd(1.0), chunk_size=10, progress=False)
    assert isinstance(err.value, FloatingPointError)
    assert err.value.step == 37 and err.value.name == "rate"
    assert float(err.value.params) == 37.0  # no update from the bad step or after it
    assert len(err.value.history["loss"]) == 38 and np.isinf(err.value.history["rate"][-1])


def test_stops_on_nan_loss_and_on_nan_gradient():
    # value log(5.5 - p), gradient -1: with sgd(1) p_t = t, and log(-0.5) = nan at step 6
    loss = lambda p, k, b: -p + jax.lax.stop_gradient(p + jnp.log(5.5 - p))  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"step 6: loss is nan") as err:
        fit(KEY, loss, jnp.array(0.0), num_steps=50, optimizer=optax.sgd(1.0), chunk_size=4, progress=False)
    assert err.value.name == "loss"
    # finite loss, infinite gradient: d sqrt(p) / dp at p = 0
    with pytest.raises(NonFiniteLossError, match=r"step 0: the gradient is not finite"):
        fit(KEY, lambda p, k, b: jnp.sqrt(p), jnp.array(0.0), num_steps=5, progress=False)


def test_equinox_module_params():
    model = eqx.nn.MLP(1, 1, 8, 1, key=jax.random.key(2))
    x = jnp.linspace(-1, 1, 32)[:, None]
    y = 3.0 * x - 1.0

    def loss(m, k, b):
        pred = jax.vmap(m)(b[0])
        return jnp.mean((pred - b[1]) ** 2), {}

    res = fit(KEY, loss, model, num_steps=200, optimizer=optax.adam(1e-2), data=(x, y), progress=False)
    assert isinstance(res.params, eqx.nn.MLP)
    assert res.params.activation is model.activation  # non-array fields are left alone
    assert res.history["loss"][-1] < 0.1 * res.history["loss"][0]


def test_integer_arrays_are_not_trained():
    class Scaled(eqx.Module):
        w: jax.Array
        count: jax.Array

    loss = lambda m, k, b: (jnp.sum((m.w - m.count) ** 2), {})  # noqa: E731
    res = fit(
        KEY, loss, Scaled(jnp.zeros(2), jnp.array([2, 3])), num_steps=100, optimizer=optax.sgd(0.25), progress=False
    )
    np.testing.assert_array_equal(res.params.count, [2, 3])
    np.testing.assert_allclose(res.params.w, [2.0, 3.0], rtol=1e-5)


def test_continue_from_opt_state(sample):
    first = fit(KEY, normal_mean_loss, jnp.array(0.0), num_steps=10, data=sample, progress=False)
    more = fit(
        KEY, normal_mean_loss, first.params, num_steps=10, data=sample, opt_state=first.opt_state, progress=False
    )
    assert more.history["loss"][0] == pytest.approx(float(normal_mean_loss(first.params, KEY, sample)[0]), rel=1e-6)


def test_progress_bar_reaches_the_end(capsys):
    fit(KEY, noisy_loss, jnp.array(1.0), num_steps=12, chunk_size=5, desc="demo")
    err = capsys.readouterr().err
    assert "demo" in err and "12/12" in err
    fit(KEY, noisy_loss, jnp.array(1.0), num_steps=12, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 0}, ValueError, "num_steps must be a positive integer"),
        ({"num_steps": 2.5}, ValueError, "num_steps"),
        ({"num_steps": 5, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"num_steps": 5, "batch_size": 3}, ValueError, "data is None"),
        ({"num_steps": 5, "data": jnp.ones(4), "batch_size": -1}, ValueError, "batch_size"),
        ({"num_steps": 5, "data": (jnp.ones(4), jnp.ones(3))}, ValueError, "share their leading axis"),
        ({"num_steps": 5, "data": jnp.ones((0, 2))}, ValueError, "no examples"),
        ({"num_steps": 5, "optimizer": "adam"}, TypeError, "optax"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(KEY, noisy_loss, jnp.array(1.0), progress=False, **kwargs)


def test_bad_loss_functions_and_params():
    with pytest.raises(TypeError, match="key"):
        fit(0, noisy_loss, jnp.array(1.0), num_steps=2)
    with pytest.raises(TypeError, match="callable"):
        fit(KEY, "loss", jnp.array(1.0), num_steps=2)
    with pytest.raises(ValueError, match="real scalars; loss has shape"):
        fit(KEY, lambda p, k, b: p**2, jnp.ones(3), num_steps=2)
    with pytest.raises(TypeError, match="terms must be a dict"):
        fit(KEY, lambda p, k, b: (p**2, [p]), jnp.array(1.0), num_steps=2)
    with pytest.raises(ValueError, match="other than 'loss'"):
        fit(KEY, lambda p, k, b: (p**2, {"loss": p}), jnp.array(1.0), num_steps=2)
    with pytest.raises(ValueError, match="rate has shape"):
        fit(KEY, lambda p, k, b: (p**2, {"rate": jnp.ones(2)}), jnp.array(1.0), num_steps=2)
    with pytest.raises(ValueError, match="no floating-point arrays"):
        fit(KEY, lambda p, k, b: jnp.float32(0), jnp.arange(3), num_steps=2)
    with pytest.raises(ValueError, match="finite before training"):
        fit(KEY, noisy_loss, jnp.array(jnp.nan), num_steps=2)


def test_evaluate_averages_over_every_example():
    data = jnp.arange(10.0)
    loss = lambda p, k, b: (0.5 * jnp.mean((b - p) ** 2), {"batch_max": jnp.max(b)})  # noqa: E731
    for batch_size in (1, 3, 5, 10, 20):  # remainders 0 and non-zero; a batch larger than the data
        out = evaluate(KEY, loss, jnp.array(1.0), data, batch_size)
        assert out["loss"] == pytest.approx(float(jnp.mean(0.5 * (data - 1.0) ** 2)), rel=1e-6)
    assert set(out) == {"loss", "batch_max"}
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(KEY, loss, jnp.array(1.0), data, 0)
    with pytest.raises(ValueError, match="share their leading axis"):
        evaluate(KEY, loss, jnp.array(1.0), (data, data[:3]), 2)


# --- resuming, and optimisers that need extra arguments (issue 9, finding 8) ------------------


def test_resuming_continues_the_key_sequence_instead_of_replaying_it():
    """10 steps then 10 more (same key, opt_state passed on) are exactly 20 steps."""
    data = jnp.arange(40.0)
    loss = lambda p, k, b: (jnp.mean((b - p) ** 2) + 0.1 * jax.random.normal(k), {"batch_mean": jnp.mean(b)})  # noqa: E731
    whole = fit(KEY, loss, jnp.array(0.0), num_steps=20, data=data, batch_size=4, chunk_size=5, progress=False)
    first = fit(KEY, loss, jnp.array(0.0), num_steps=10, data=data, batch_size=4, chunk_size=5, progress=False)
    more = fit(
        KEY,
        loss,
        first.params,
        num_steps=10,
        data=data,
        batch_size=4,
        chunk_size=5,
        opt_state=first.opt_state,
        progress=False,
    )
    assert first.opt_state.step == 10 and more.opt_state.step == 20
    np.testing.assert_array_equal(np.concatenate([first.history["loss"], more.history["loss"]]), whole.history["loss"])
    np.testing.assert_array_equal(more.history["batch_mean"], whole.history["batch_mean"][10:])
    assert float(more.params) == float(whole.params)
    # the replay the old loop did would have drawn the same batches again
    assert not np.array_equal(more.history["batch_mean"], first.history["batch_mean"])


def test_a_bare_optax_state_starts_at_step_zero():
    opt = optax.sgd(0.1)
    fresh = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=5, optimizer=opt, progress=False)
    bare = fit(
        KEY, noisy_loss, jnp.array(1.0), num_steps=5, optimizer=opt, opt_state=opt.init(jnp.array(1.0)), progress=False
    )
    np.testing.assert_array_equal(fresh.history["loss"], bare.history["loss"])


def test_resuming_with_another_optimizer_or_a_bad_step_is_refused():
    first = fit(KEY, noisy_loss, jnp.array(1.0), num_steps=3, optimizer=optax.adam(1e-2), progress=False)
    with pytest.raises(ValueError, match="opt_state does not match the optimizer"):
        fit(
            KEY,
            noisy_loss,
            jnp.array(1.0),
            num_steps=3,
            optimizer=optax.sgd(0.1, momentum=0.9),
            opt_state=first.opt_state,
            progress=False,
        )
    with pytest.raises(ValueError, match="FitState.step must be a non-negative integer"):
        fit(
            KEY,
            noisy_loss,
            jnp.array(1.0),
            num_steps=3,
            optimizer=optax.adam(1e-2),
            opt_state=first.opt_state._replace(step=-1),
            progress=False,
        )


def test_reduce_on_plateau_gets_the_loss_as_value():
    """reduce_on_plateau needs value=: fit passes the loss; the state records the best one."""
    opt = optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(patience=2, accumulation_size=1))
    res = fit(
        KEY,
        normal_mean_loss,
        jnp.array(0.0),
        num_steps=20,
        optimizer=opt,
        data=jnp.array([1.0, 2.0, 6.0]),
        progress=False,
    )
    plateau = res.opt_state.optimizer_state[1]
    # its best value is one of the losses fit recorded (it only updates on a clear improvement),
    # below the first: fit passed the step's loss as value
    best = float(plateau.best_value)
    assert np.any(np.isclose(res.history["loss"], best, rtol=1e-6, atol=0)), (best, res.history["loss"])
    assert best < res.history["loss"][0]


def test_lbfgs_gets_value_grad_and_value_fn():
    """lbfgs needs value=, grad=, value_fn=: on a quadratic it converges in a few dozen steps
    (optax 0.2.3, the lowest allowed, takes about 20 to reach 1e-4; newer ones fewer)."""
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p, k, b: 0.5 * jnp.sum((p - target) ** 2 * jnp.array([1.0, 10.0, 100.0]))  # noqa: E731
    res = fit(KEY, loss, jnp.zeros(3), num_steps=30, optimizer=optax.lbfgs(), progress=False)
    np.testing.assert_allclose(res.params, target, rtol=1e-4)


def test_a_transform_needing_unknown_extra_arguments_is_refused_by_name():
    def needs_temperature():
        def init_fn(params):
            return optax.EmptyState()

        def update_fn(updates, state, params=None, *, temperature, **extra):
            return jax.tree.map(lambda g: -temperature * g, updates), state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    with pytest.raises(TypeError, match="optax transformation needs_temperature.*temperature"):
        fit(KEY, noisy_loss, jnp.array(1.0), num_steps=2, optimizer=needs_temperature(), progress=False)


# --- fit_stacked: a sweep trained in one program --------------------------------------------


def _weighted_loss(params, key, batch, weight):
    """A weight on a quadratic term plus a noisy term (so each model's own key matters)."""
    fit_term = jnp.mean((batch - params["m"]) ** 2)
    noise = jnp.mean((params["m"] - jax.random.normal(key, ())) ** 2)
    return weight * fit_term + 0.1 * noise, {"rate": noise, "distortion": fit_term}


def test_fit_stacked_trains_each_model_as_if_alone():
    from klbook.train import fit_stacked, member

    data = jax.random.normal(jax.random.key(1), (200,)) + 3.0
    make = lambda k: {"m": jax.random.normal(k, ())}  # noqa: E731
    weights = [0.5, 2.0, 2.0]
    key = jax.random.key(7)
    models, history = fit_stacked(
        key,
        make,
        _weighted_loss,
        weights,
        data,
        num_steps=60,
        batch_size=16,
        optimizer=optax.adam(0.05),
        progress=False,
    )
    assert sorted(history) == sorted(["loss", *(f"{n}/{i}" for n in ("rate", "distortion") for i in range(3))])
    k_init, k_fit = jax.random.split(key)
    inits = jax.random.split(k_init, 3)
    for i, w in enumerate(weights):
        # alone: the same initial key, the same batches (fit's key), the model's own noise keys
        alone = fit(
            k_fit,
            lambda p, k, b: _weighted_loss(p, jax.random.split(k, 3)[i], b, w),
            make(inits[i]),
            num_steps=60,
            data=data,
            batch_size=16,
            optimizer=optax.adam(0.05),
            progress=False,
        )
        np.testing.assert_allclose(member(models, i)["m"], alone.params["m"], rtol=1e-5)
        np.testing.assert_allclose(history[f"distortion/{i}"], alone.history["distortion"], rtol=1e-4, atol=1e-6)
    # and the sweep trains: every model's distortion fell
    for i in range(3):
        assert history[f"distortion/{i}"][-10:].mean() < history[f"distortion/{i}"][:10].mean()


@pytest.mark.parametrize("weights", [[], [[1.0]], [1.0, float("nan")]])
def test_fit_stacked_refuses_bad_weights(weights):
    from klbook.train import fit_stacked

    with pytest.raises(ValueError, match="weights must be a non-empty vector of finite numbers"):
        fit_stacked(
            jax.random.key(0),
            lambda k: {"m": jnp.zeros(())},
            _weighted_loss,
            weights,
            jnp.zeros(8),
            num_steps=2,
            progress=False,
        )


def test_fit_accepts_a_kl_objective():
    """A loss function may return the recipe's KLObjective: fit minimises its loss and records its terms."""
    import numpyro
    import numpyro.distributions as dist

    from klbook import recipe

    x = jnp.array([1.0, 2.0, 6.0, 3.0])

    def real(mu, x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def dream(mu, x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def loss(mu, k, b):
        return recipe.kl_objective(k, real, dream, mu, b, names={"x": "distortion"}, weights={"distortion": 2.0})

    res = fit(jax.random.key(0), loss, jnp.array(0.0), num_steps=200, optimizer=optax.sgd(0.2), data=x, progress=False)
    assert abs(float(res.params) - float(x.mean())) < 1e-4  # the sample mean minimises the Gaussian distortion
    np.testing.assert_allclose(res.history["loss"], 2.0 * res.history["distortion"], rtol=1e-6)
    scores = evaluate(jax.random.key(1), loss, res.params, x, 2)
    np.testing.assert_allclose(
        scores["distortion"], 0.5 * np.log(2 * np.pi) + 0.5 * float(((x - x.mean()) ** 2).mean()), rtol=1e-5
    )


# --- stacked models: a missing leading axis is named, not indexed into (issue 22) -------------


def _stack3():
    from klbook.train import init_stacked

    return init_stacked(lambda k: {"w": jax.random.normal(k, (2,)), "b": jnp.zeros(())}, jax.random.split(KEY, 3))


def test_member_refuses_an_unstacked_model_and_an_index_out_of_range():
    from klbook.train import member, stack_size

    stacked = _stack3()
    assert stack_size(stacked) == 3
    np.testing.assert_array_equal(member(stacked, -1)["w"], stacked["w"][2])
    np.testing.assert_array_equal(member(stacked, np.int64(1))["w"], stacked["w"][1])
    # JAX clamps an out-of-range index: member(stacked, 5) used to return model 2 silently
    with pytest.raises(IndexError, match=r"model index 5 is out of range for 3 stacked models"):
        member(stacked, 5)
    with pytest.raises(IndexError, match=r"model index -4 is out of range for 3 stacked models"):
        member(stacked, -4)
    with pytest.raises(TypeError, match="model index must be an integer; got 1.0"):
        member(stacked, 1.0)
    # an unstacked MLP (weights [8, 1], [1, 8], biases [8], [1]) used to come back as a model of rows
    model = eqx.nn.MLP(1, 1, 8, 1, key=KEY)
    with pytest.raises(ValueError, match=r"stacked on a leading axis M .* leading sizes 1, 8: an unstacked model"):
        member(model, 0)
    with pytest.raises(ValueError, match=r"leading sizes scalar"):
        member({"a": jnp.array(1.0)}, 0)
    with pytest.raises(ValueError, match="holds no arrays"):
        member({"a": 1.0}, 0)
    # a traced index (inside jit or vmap) cannot be checked and is used as given
    picked = jax.jit(lambda s, i: member(s, i)["w"])(stacked, 1)
    np.testing.assert_array_equal(picked, stacked["w"][1])


def test_init_stacked_wants_one_key_per_model():
    from klbook.train import init_stacked

    make = lambda k: {"w": jax.random.normal(k, (2,))}  # noqa: E731
    assert init_stacked(make, jax.random.split(KEY, 4))["w"].shape == (4, 2)
    assert init_stacked(make, jax.random.split(jax.random.PRNGKey(0), 4))["w"].shape == (4, 2)  # raw keys [4, 2]
    # one key used to fail inside vmap ("rank should be at least 1") or as "invalid PRNG key data"
    with pytest.raises(TypeError, match=r"one PRNG key per model .* shape \(\) \(a single key\)"):
        init_stacked(make, KEY)
    with pytest.raises(TypeError, match=r"raw uint32 key data of shape \(2,\) \(a single key\)"):
        init_stacked(make, jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        init_stacked(make, jnp.zeros(3))
    with pytest.raises(TypeError, match="make must be callable"):
        init_stacked("mlp", jax.random.split(KEY, 2))


def test_fit_stacked_refuses_a_per_example_loss_and_missing_terms_before_compiling():
    from klbook.train import fit_stacked

    traced = []

    def per_example(p, k, b, w):  # forgot the mean over the batch: fit_stacked used to sum it silently
        traced.append(1)
        return w * (b - p["m"]) ** 2, {"rate": jnp.mean(p["m"] ** 2), "distortion": jnp.mean((b - p["m"]) ** 2)}

    make = lambda k: {"m": jnp.zeros(())}  # noqa: E731
    with pytest.raises(ValueError, match=r"a scalar loss for each model; got shape \(4,\) per model"):
        fit_stacked(KEY, make, per_example, [1.0, 2.0], jnp.ones(8), num_steps=2, batch_size=4, progress=False)
    assert len(traced) == 1  # the abstract shape check only: refused before anything ran
    no_rate = lambda p, k, b, w: (w * jnp.mean((b - p["m"]) ** 2), {"distortion": jnp.mean((b - p["m"]) ** 2)})  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"records terms \['rate', 'distortion'\], but loss returns no \['rate'\] "
        r"\(it returns \['distortion'\]\)",
    ):
        fit_stacked(KEY, make, no_rate, [1.0, 2.0], jnp.ones(8), num_steps=2, batch_size=4, progress=False)
    vector_term = lambda p, k, b, w: (jnp.mean((b - p["m"]) ** 2), {"rate": b, "distortion": jnp.mean(b)})  # noqa: E731
    with pytest.raises(ValueError, match=r"term 'rate' must be a scalar for each model; got shape \(4,\)"):
        fit_stacked(KEY, make, vector_term, [1.0], jnp.ones(8), num_steps=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"one per model \(shape \[M\]\); got shape \(\)"):
        fit_stacked(KEY, make, no_rate, 0.5, jnp.ones(8), num_steps=2, terms=("distortion",), progress=False)
    with pytest.raises(TypeError, match="terms must be a tuple of term names"):
        fit_stacked(KEY, make, no_rate, [0.5], jnp.ones(8), num_steps=2, terms="distortion", progress=False)
    _, history = fit_stacked(
        KEY, make, no_rate, [0.5, 1.0], jnp.ones(8), num_steps=2, batch_size=4, terms=("distortion",), progress=False
    )
    assert sorted(history) == ["distortion/0", "distortion/1", "loss"]
