"""klbook.train on more than one device: data parallel through jax.sharding (issue 22).

XLA's CPU backend can pretend to have several devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``), but only when the flag is set before JAX
starts, so each device count runs in a subprocess of its own. The child trains a small MLP with
minibatches (a loss with noise drawn from the step's key), a NumPyro model through the recipe
(``kl_objective``: its data plate sees the sharded batch) and a stacked sweep, once on one
device (``devices=1``) and once on all ``K`` (``devices=None``), and reports the loss
histories, the sharding of the batch *inside* the compiled step (``jax.debug.inspect_array_sharding``
calls back at compile time with the sharding XLA's partitioner chose) and the errors.

**The tolerance.** On ``K`` devices every step computes the same numbers from the same draws
(the batch indices and the noise come from the same keys), so the only difference is the order
of the sums over the batch: each device sums its ``B / K`` rows and the partial sums are added
across devices. A float32 sum computed in two orders differs by about ``log2(B) * eps`` of the
sum of the magnitudes (pairwise summation, ``eps = 2**-23 = 1.2e-7``), a few ulps; the optimiser
then carries these parameter differences forward. So the histories are compared on the scale
of each term's own trajectory (:func:`max_rel_diff`). Measured over ten keys (0-9), 30 steps on
2 and on 4 devices (2026-12-06, jax 0.10.2, each entry relative to its own value, which bounds
the scaled difference from above): the MLP's and the stacked sweep's histories differed by at
most 3.6e-7 (3 eps) and ``evaluate`` by 1.0e-7; the recipe's one-parameter model by up to
6.2e-6 (2.5e-6 on 2 devices): relative to each entry, this is inflated where a term passes near
zero (the one-draw Monte Carlo rate), and Adam's step ``m / sqrt(v)`` near the optimum divides
one tiny gradient by another, which magnifies their rounding. The tests allow ``RTOL = 2e-6`` (17
eps, over five times the largest measured) for the MLP, the sweep and ``evaluate``, and
``RTOL_RECIPE = 2e-5`` (three times the largest measured) for the recipe's run. A wrong split (a
device seeing other rows, a gradient not summed across devices) moves the loss by percent, not
by ulps.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

RTOL = 2e-6  # float32 summation order; see the module docstring for how both were chosen
RTOL_RECIPE = 2e-5  # the recipe's one-parameter run: see the module docstring

CHILD = textwrap.dedent(r"""
    import json, sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    import numpyro, numpyro.distributions as dist
    from klbook import recipe
    from klbook.train import evaluate, fit, fit_stacked

    jax.config.update("jax_numpy_rank_promotion", "raise")
    seeds = [int(s) for s in sys.argv[1].split(",")]
    count = len(jax.local_devices())
    out = {"count": count, "platform": jax.default_backend(), "runs": []}
    X = jax.random.normal(jax.random.key(101), (96, 8))
    Y = jnp.sin(X @ jnp.linspace(-1.0, 1.0, 8))[:, None]
    seen = {}

    def record(what):
        def callback(sharding):
            seen[what] = sharding
        return callback

    def mlp_loss(m, k, b):
        x, y = b
        jax.debug.inspect_array_sharding(x, callback=record("batch"))
        jax.debug.inspect_array_sharding(m.layers[0].weight, callback=record("weight"))
        pred = jax.vmap(m)(x) + 0.05 * jax.random.normal(k, y.shape)
        return jnp.mean((pred - y) ** 2), {"max_pred": jnp.max(jnp.abs(pred))}

    def real(mu, x):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def dream(mu, x):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide_real(mu, x):  # the real world draws the global latent from a guide q(z) = N(mu, 0.5)
        numpyro.sample("z", dist.Normal(mu, 0.5))
        real(mu, x)

    def recipe_loss(mu, k, b):
        return recipe.kl_objective(k, guide_real, dream, mu, b, names={"z": "rate", "x": "distortion"},
                                   data_size=96)

    def stacked_loss(m, k, b, w):
        pred = jax.vmap(m)(b[0]) + 0.05 * jax.random.normal(k, b[1].shape)
        dist_ = jnp.mean((pred - b[1]) ** 2)
        return w * dist_, {"rate": jnp.mean(pred ** 2), "distortion": dist_}

    make = lambda k: eqx.nn.MLP(8, 1, 16, 1, key=k)
    for seed in seeds:
        key = jax.random.key(seed)
        run = {}
        for name, devices in (("one", 1), ("all", None)):
            r = fit(key, mlp_loss, make(jax.random.key(seed + 1000)), num_steps=30, data=(X, Y), batch_size=32,
                    optimizer=optax.adam(1e-2), chunk_size=10, progress=False, devices=devices)
            g = fit(key, recipe_loss, jnp.array(0.0), num_steps=30, data=X[:, 0], batch_size=16,
                    optimizer=optax.adam(5e-2), progress=False, devices=devices)
            e = evaluate(key, mlp_loss, r.params, (X, Y), 40, devices=devices)  # 2 batches of 40 + 16
            _, h = fit_stacked(key, make, stacked_loss, [0.5, 1.0, 2.0], (X, Y), num_steps=30, batch_size=16,
                               optimizer=optax.adam(1e-2), progress=False, devices=devices)
            run[name] = {
                "mlp": {k: v.tolist() for k, v in r.history.items()},
                "recipe": {k: v.tolist() for k, v in g.history.items()},
                "evaluate": e,
                "stacked": {k: v.tolist() for k, v in h.items()},
                "params_sharding": str(jax.tree.leaves(r.params)[0].sharding.is_fully_replicated),
                "params_devices": len(jax.tree.leaves(r.params)[0].sharding.device_set),
            }
            if devices is None:
                b, w = seen["batch"], seen["weight"]
                run["inside"] = {
                    "batch_shard_shape": list(b.shard_shape((32, 8))),
                    "batch_devices": len(b.device_set),
                    "batch_rows": sorted(str(i[0]) for i in b.devices_indices_map((32, 8)).values()),
                    "weight_replicated": bool(w.is_fully_replicated),
                    "weight_devices": len(w.device_set),
                }
        out["runs"].append(run)

    # a batch that does not divide: refused before loss_fn is traced (so before anything compiles)
    traced = []
    def counting(m, k, b):
        traced.append(1)
        return mlp_loss(m, k, b)
    errors = {}
    for label, call in {
        "fit": lambda: fit(jax.random.key(0), counting, make(jax.random.key(0)), num_steps=3, data=(X, Y),
                           batch_size=count + 1, progress=False),
        "fit_full": lambda: fit(jax.random.key(0), counting, make(jax.random.key(0)), num_steps=3,
                                data=(X[: count + 1], Y[: count + 1]), progress=False),
        "evaluate": lambda: evaluate(jax.random.key(0), counting, make(jax.random.key(0)), (X, Y), count + 1),
        "too_many": lambda: fit(jax.random.key(0), counting, make(jax.random.key(0)), num_steps=3,
                                data=(X, Y), batch_size=32, devices=count + 1, progress=False),
    }.items():
        try:
            call()
            errors[label] = None
        except ValueError as err:
            errors[label] = str(err)
    out["errors"], out["traced"] = errors, len(traced)
    # one device in a K-device process still trains on a non-dividing batch
    fit(jax.random.key(0), mlp_loss, make(jax.random.key(0)), num_steps=2, data=(X, Y), batch_size=count + 1,
        progress=False, devices=1)
    print("RESULT" + json.dumps(out))
""")


def run_child(count: int, seeds=(0,)) -> dict:
    """Run the child in a fresh process with ``count`` forced CPU devices; its JSON report."""
    flags = os.environ.get("XLA_FLAGS", "")  # keep the unit layer's flags, add the device count
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}".strip()
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(map(str, seeds))], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest ``|a - b|`` over every history entry, relative to the largest ``|a|`` of its term.

    Rounding errors are relative to the magnitudes summed, not to the result: a term that crosses
    zero (a Monte Carlo rate, say) is compared on the scale of its own trajectory.
    """
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-30)))
    return worst


@pytest.fixture(scope="module", params=[2, 4], ids=lambda k: f"{k}devices")
def child(request):
    return run_child(request.param)


def test_the_child_sees_the_forced_devices(child):
    assert child["platform"] == "cpu" and child["count"] in (2, 4)


def test_same_loss_trajectory_as_one_device(child):
    (run,) = child["runs"]
    for what in ("mlp", "recipe", "stacked"):
        assert max_rel_diff(run["one"][what], run["all"][what]) <= (RTOL_RECIPE if what == "recipe" else RTOL), what
        # and not trivially: training moved the loss
        assert run["all"][what]["loss"][-1] < run["all"][what]["loss"][0], what
    assert set(run["all"]["recipe"]) == {"loss", "rate", "distortion"}
    assert (
        max_rel_diff(
            {k: [v] for k, v in run["one"]["evaluate"].items()}, {k: [v] for k, v in run["all"]["evaluate"].items()}
        )
        <= RTOL
    )


def test_the_batch_is_really_split_and_the_parameters_replicated(child):
    (run,) = child["runs"]
    k = child["count"]
    inside = run["inside"]
    assert inside["batch_devices"] == k
    assert inside["batch_shard_shape"] == [32 // k, 8]  # each device holds 1/k of the rows, all features
    # the k shards are the k consecutive row blocks [0, 32/k), [32/k, 64/k), ...
    starts = sorted(int(r.split("(")[1].split(",")[0]) for r in inside["batch_rows"])
    assert starts == [i * 32 // k for i in range(k)]
    assert inside["weight_replicated"] and inside["weight_devices"] == k
    # the trained parameters come back replicated on the k devices; devices=1 leaves them on one
    assert run["all"]["params_sharding"] == "True" and run["all"]["params_devices"] == k
    assert run["one"]["params_devices"] == 1


def test_a_batch_that_does_not_divide_is_refused_before_compiling(child):
    k = child["count"]
    errors = child["errors"]
    assert f"batch_size {k + 1} does not divide over {k} devices" in errors["fit"]
    assert f"{k + 1} does not divide over {k} devices" in errors["fit_full"]
    assert "batch_size=None" in errors["fit_full"]
    assert f"batch_size {k + 1} does not divide over {k} devices" in errors["evaluate"]
    assert f"devices={k + 1} asks for more devices than the {k} local ones" in errors["too_many"]
    assert child["traced"] == 0  # refused before loss_fn was even traced


@functools.cache
def here_mlp_history() -> np.ndarray:
    """The child's MLP run at seed 0 (``devices=1``), computed in this one-device test process."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from klbook.train import fit

    assert len(jax.local_devices()) == 1
    X = jax.random.normal(jax.random.key(101), (96, 8))
    Y = jnp.sin(X @ jnp.linspace(-1.0, 1.0, 8))[:, None]

    def mlp_loss(m, k, b):
        pred = jax.vmap(m)(b[0]) + 0.05 * jax.random.normal(k, b[1].shape)
        return jnp.mean((pred - b[1]) ** 2), {"max_pred": jnp.max(jnp.abs(pred))}

    res = fit(
        jax.random.key(0),
        mlp_loss,
        eqx.nn.MLP(8, 1, 16, 1, key=jax.random.key(1000)),
        num_steps=30,
        data=(X, Y),
        batch_size=32,
        optimizer=optax.adam(1e-2),
        chunk_size=10,
        progress=False,
    )
    return res.history["loss"]


def test_one_device_is_the_single_device_program_bit_for_bit(child):
    """devices=1 in a K-device process gives exactly what fit gives in a one-device process."""
    (run,) = child["runs"]
    np.testing.assert_array_equal(np.asarray(run["one"]["mlp"]["loss"], np.float32), here_mlp_history())


def test_bad_devices_argument_is_named():
    import jax
    import jax.numpy as jnp

    from klbook.train import fit

    loss = lambda p, k, b: jnp.sum(p**2)  # noqa: E731
    for bad, error in ((0, ValueError), ("gpu", TypeError), ([], TypeError), ([0, 1], TypeError), (True, TypeError)):
        with pytest.raises(error, match="devices"):
            fit(jax.random.key(0), loss, jnp.ones(2), num_steps=2, data=jnp.ones(4), progress=False, devices=bad)
    dev = jax.local_devices()[0]
    with pytest.raises(ValueError, match="lists a device twice"):
        fit(jax.random.key(0), loss, jnp.ones(2), num_steps=2, data=jnp.ones(4), progress=False, devices=[dev, dev])


# --- every public helper that trains through fit / fit_stacked forwards devices= -------------------------------

HELPERS_CHILD = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import numpyro.distributions as dist
    from klbook import bayes, bnn, density, semisup, supervised, vae, vib
    from klbook.nn import mlp

    jax.config.update("jax_numpy_rank_promotion", "raise")
    seeds = [int(s) for s in sys.argv[1].split(",")]
    count = len(jax.local_devices())
    N, D, K, C, T, STEPS = 16, 6, 2, 3, 4, 8
    kx, ky, kc = jax.random.split(jax.random.key(101), 3)
    xf = jax.random.normal(kx, (N, D))                       # real-valued inputs
    yc = jax.random.randint(ky, (N,), 0, C)                  # class labels
    xc = jax.random.randint(kc, (N, D), 0, T + 1)            # pixel counts out of T
    flips = (jnp.arange(N) % 3 == 0).astype(jnp.int32)       # coin flips
    net = bnn.network(jax.random.key(7), D, 1, width=4, depth=1)
    lik, prior = bnn.regression(net, 0.5), bnn.gaussian_prior(net.num_weights)
    yr = xf[:, 0] - 0.5 * xf[:, 1]
    split = semisup.split_labelled(jax.random.key(8), yc, 1, num_splits=2)
    beta_family = lambda p: dist.Beta(jnp.exp(p[0]), jnp.exp(p[1]))

    # name -> (key, batch_size, devices) -> history; tiny models, STEPS steps
    stacked = {
        "vae.fit_betas": lambda key, b, dev: vae.fit_betas(
            key, lambda k: vae.linear_gaussian_vae(k, D, K), [0.5, 2.0], xf, num_steps=STEPS, batch_size=b,
            progress=False, devices=dev)[1],
        "vib.fit_betas": lambda key, b, dev: vib.fit_betas(
            key, lambda k: vib.vib(k, D, K, C, width=8, depth=1), [0.0, 1.0], xf, yc, num_steps=STEPS,
            batch_size=b, progress=False, devices=dev)[1],
        "semisup.fit_models": lambda key, b, dev: semisup.fit_models(
            key, lambda k: semisup.code_model(k, D, K, C, width=8, total_count=T),
            lambda m, k, xl, yl, xu, n, w: semisup.post_objective(k, m, xl, yl, xu, n, gamma=w),
            xc, yc, split, [1.0, 4.0], num_steps=STEPS, batch_size=b, progress=False, devices=dev)[1],
    }
    others = {
        "bayes.fit_posterior": lambda key, b, dev: bayes.fit_posterior(
            key, beta_family, jnp.zeros((2, 2)), dist.Beta(1.0, 1.0), bayes.coin, None, flips, betas=(1.0, 2.0),
            num_steps=STEPS, batch_size=b, num_particles=2, progress=False, devices=dev).history,
        "bnn.fit_posterior": lambda key, b, dev: bnn.fit_posterior(
            key, jax.tree.map(lambda a: a[None], bnn.init_posterior(net, scale=0.3)), prior, lik, xf, yr,
            num_steps=STEPS, batch_size=b, progress=False, devices=dev).history,
        "bnn.fit_point": lambda key, b, dev: bnn.fit_point(
            key, net.init_weights(), lik, xf, yr, prior=prior, num_steps=STEPS, batch_size=b, progress=False,
            devices=dev).history,
        "density.fit_density": lambda key, b, dev: density.fit_density(
            key, xf[:, :2], 2, num_steps=STEPS, batch_size=b, devices=dev).history,
        "density.fit_density_restarts": lambda key, b, dev: density.fit_density_restarts(  # full data: b + 8 rows
            key, xf[: b + 8, :2], 2, 2, num_steps=STEPS, devices=dev).history,
        "supervised.train": lambda key, b, dev: supervised.train(
            key, mlp(jax.random.key(9), D, C, width=8, depth=1), xf, yc, num_steps=STEPS, batch_size=b,
            progress=False, devices=dev).history,
        "supervised.train_ensemble": lambda key, b, dev: supervised.train_ensemble(
            key, supervised.ensemble(jax.random.key(9), 2, D, C, width=8, depth=1), xf, yc, num_steps=STEPS,
            batch_size=b, progress=False, devices=dev).history,
    }
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(stacked)  # whose trajectories to compare
    everything = {**stacked, **others}
    out = {"count": count, "runs": [], "errors": {}}
    history = lambda h: {k: np.asarray(v, np.float64).tolist() for k, v in h.items()}
    for seed in seeds:
        key = jax.random.key(seed)
        out["runs"].append({name: {"one": history(everything[name](key, 8, 1)),
                                   "all": history(everything[name](key, 8, None))} for name in only})
    for name, run in everything.items():  # a batch that does not divide over the devices: named, before compiling
        try:
            run(jax.random.key(0), count + 1, None)
            out["errors"][name] = None
        except ValueError as err:
            out["errors"][name] = str(err)
    print("RESULT" + json.dumps(out))
""")

STACKED = ("vae.fit_betas", "vib.fit_betas", "semisup.fit_models")
OTHERS = (
    "bayes.fit_posterior",
    "bnn.fit_posterior",
    "bnn.fit_point",
    "density.fit_density",
    "density.fit_density_restarts",
    "supervised.train",
    "supervised.train_ensemble",
)


def run_helpers_child(count: int, seeds=(0,), only=STACKED) -> dict:
    """The helpers' child with ``count`` forced CPU devices: trajectories of ``only``, every helper's refusal."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}".strip()
    )
    proc = subprocess.run(
        [sys.executable, "-c", HELPERS_CHILD, ",".join(map(str, seeds)), ",".join(only)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def helpers_child():
    return run_helpers_child(2)


def test_the_stacked_sweeps_on_two_devices_follow_the_one_device_trajectory(helpers_child):
    """vae.fit_betas, vib.fit_betas and semisup.fit_models: 2 devices against 1, within float32 summation order.

    The tolerance is the file's ``RTOL`` (2e-6, 17 eps). Measured at keys 0, 1 and 2 (2026-12-06, 8 steps,
    batches of 8 split 4 + 4, ``max_rel_diff`` over every recorded term): vae.fit_betas 1.2e-7, 6.8e-8,
    1.3e-7; vib.fit_betas 1.8e-7, 9.3e-8, 9.1e-8; semisup.fit_models 7.1e-8, 7.5e-8, 1.4e-7. At most
    1.8e-7 (1.5 eps), eleven times below the bound; the other seven helpers' trajectories, measured once
    at key 0, were within 1.7e-7 too (they are only checked for forwarding below, to keep this cheap).
    Under the unit layer's XLA flags (``scripts/unit_xla_flags.py``, optimisation off) key 0 gave
    1.2e-7, 9.9e-8 and 7.1e-8, and this child took 78 s on the shared 2-core CPU at load ~6.
    """
    assert helpers_child["count"] == 2
    (run,) = helpers_child["runs"]
    assert set(run) == set(STACKED)
    for name in STACKED:
        one, both = run[name]["one"], run[name]["all"]
        assert max_rel_diff(one, both) <= RTOL, name
        assert np.all(np.isfinite(one["loss"])) and len(one["loss"]) == 8, name


def test_every_training_helper_refuses_a_batch_that_does_not_divide(helpers_child):
    """devices=None reaches fit from every helper: 3 rows over 2 devices is refused by name, before compiling."""
    for name in STACKED + OTHERS:
        error = helpers_child["errors"][name]
        assert error is not None and "does not divide over 2 devices" in error, (name, error)


def test_every_training_helper_passes_an_explicit_devices_on():
    """In this one-device process, devices=2 from any helper is refused by fit, naming the device count."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from klbook import bayes, bnn, density, semisup, supervised, vae, vib
    from klbook.nn import mlp

    assert len(jax.local_devices()) == 1
    KEY = jax.random.key(0)  # noqa: N806
    n, d, c = 8, 3, 2
    x = jax.random.normal(jax.random.key(0), (n, d))
    y = jnp.arange(n) % c
    counts = jnp.ones((n, d), jnp.int32)
    net = bnn.network(jax.random.key(1), d, 1, width=2, depth=1)
    lik, prior = bnn.regression(net, 0.5), bnn.gaussian_prior(net.num_weights)
    split = semisup.split_labelled(jax.random.key(2), y, 1)
    common = {"num_steps": 1, "devices": 2}
    calls = {
        "vae.fit_betas": lambda: vae.fit_betas(
            KEY, lambda k: vae.linear_gaussian_vae(k, d, 1), [1.0], x, batch_size=4, progress=False, **common
        ),
        "vib.fit_betas": lambda: vib.fit_betas(
            KEY, lambda k: vib.vib(k, d, 1, c, width=4), [1.0], x, y, batch_size=4, progress=False, **common
        ),
        "semisup.fit_models": lambda: semisup.fit_models(
            KEY,
            lambda k: semisup.code_model(k, d, 1, c, width=4, total_count=1),
            lambda m, k, xl, yl, xu, nu, w: semisup.post_objective(k, m, xl, yl, xu, nu, gamma=w),
            counts,
            y,
            split,
            [1.0],
            batch_size=2,
            progress=False,
            **common,
        ),
        "bayes.fit_posterior": lambda: bayes.fit_posterior(
            KEY,
            lambda p: dist.Beta(jnp.exp(p[0]), jnp.exp(p[1])),
            jnp.zeros((1, 2)),
            dist.Beta(1.0, 1.0),
            bayes.coin,
            None,
            y,
            progress=False,
            **common,
        ),
        "bnn.fit_posterior": lambda: bnn.fit_posterior(
            KEY,
            jax.tree.map(lambda a: a[None], bnn.init_posterior(net)),
            prior,
            lik,
            x,
            x[:, 0],
            batch_size=4,
            progress=False,
            **common,
        ),
        "bnn.fit_point": lambda: bnn.fit_point(
            KEY, net.init_weights(), lik, x, x[:, 0], batch_size=4, progress=False, **common
        ),
        "density.fit_density": lambda: density.fit_density(KEY, x[:, :2], 1, **common),
        "density.fit_density_restarts": lambda: density.fit_density_restarts(KEY, x[:, :2], 1, 1, **common),
        "supervised.train": lambda: supervised.train(
            KEY, mlp(KEY, d, c, width=4, depth=1), x, y, batch_size=4, progress=False, **common
        ),
        "supervised.train_ensemble": lambda: supervised.train_ensemble(
            KEY, supervised.ensemble(KEY, 2, d, c, width=4, depth=1), x, y, batch_size=4, progress=False, **common
        ),
    }
    assert set(calls) == set(STACKED + OTHERS)
    for call in calls.values():
        with pytest.raises(ValueError, match="devices=2 asks for more devices than the 1 local ones"):
            call()
