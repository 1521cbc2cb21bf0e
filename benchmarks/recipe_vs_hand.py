"""Does the recipe cost anything? One VAE training step through ``kl_objective`` vs by hand.

The same small VAE on scikit-learn's 8x8 digits (64 binarised pixels, Bernoulli decoder,
a ``--latent``-dimensional Gaussian latent, one-hidden-layer MLP encoder and decoder, batch
128) is trained with one jit-compiled step, ``value_and_grad`` + an Adam update, written twice:

* **A (recipe):** the two worlds as NumPyro models and ``klbook.recipe.kl_objective``;
* **B (hand):** the same negative ELBO, rate + distortion, written directly in JAX with the
  same shapes, the same network code and the same random draws (the recipe's key splitting
  is reproduced, so both give the same loss for the same key).

Runs alternate A B A B ... (each run: ``--steps`` steps, then ``block_until_ready``); the
median of the per-pair time ratios A/B is the headline. Also timed: a ``lax.scan`` over the
same steps (one dispatch for all of them: the compiled code alone), and the size of each
step's jaxpr and optimised HLO.

Usage::

    python benchmarks/recipe_vs_hand.py [--rounds 41] [--steps 100] [--latent 4] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from sklearn.datasets import load_digits

from klbook.recipe import data, kl_objective

BATCH, PIXELS, HIDDEN = 128, 64, 128
LOG_2PI = float(np.log(2 * np.pi))


def init_mlp(key, sizes):
    """Weights of an MLP with the given layer sizes (LeCun-normal), as a list of (W, b)."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(params, x):
    """[..., m] -> [..., n]: tanh hidden layers, linear output."""
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def encode(params, x):  # [B, 64] -> loc, scale [B, K]
    h = mlp(params["enc"], x)
    loc, raw = jnp.split(h, 2, axis=-1)
    return loc, jax.nn.softplus(raw) + 1e-4


def decode(params, z):  # [B, K] -> logits [B, 64]
    return mlp(params["dec"], z)


# ---- A: through the recipe --------------------------------------------------------------


def real(x, params):
    """P: the digits as they are, and the encoder's guess of each one's code."""
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        loc, scale = encode(params, x)
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def dream(x, params):
    """Q: a code from N(0, I), a digit from the decoder."""
    latent = params["dec"][0][0].shape[0]
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(params, z)).to_event(1))


def recipe_loss(params, key, x):
    out = kl_objective(key, real, dream, x, params, names={"z": "rate", "x": "distortion"})
    return out.loss


# ---- B: by hand ---------------------------------------------------------------------------


def hand_loss(params, key, x):
    # The recipe's keys: one particle from split(key, 1); P gets the first half of its split;
    # numpyro.handlers.seed splits again for the first latent site, z.
    particle = jax.random.split(key, 1)[0]
    key_real, _ = jax.random.split(particle)
    _, key_z = jax.random.split(key_real)
    loc, scale = encode(params, x)  # [B, K]
    eps = jax.random.normal(key_z, loc.shape)
    z = loc + eps * scale  # [B, K] reparameterised draw from p(z|x)
    log_p_z = jnp.sum(-0.5 * ((z - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG_2PI, -1)  # [B]
    log_q_z = jnp.sum(-0.5 * z**2 - 0.5 * LOG_2PI, -1)  # [B]
    logits = decode(params, z)  # [B, 64]
    log_q_x = jnp.sum(x * logits - jax.nn.softplus(logits), -1)  # [B] Bernoulli log-likelihood
    rate = jnp.mean(log_p_z - log_q_z)
    distortion = jnp.mean(-log_q_x)
    return rate + distortion


# ---- the training step, timed --------------------------------------------------------------


def make_step(loss_fn, opt):
    def step(state, inputs):
        params, opt_state = state
        key, x = inputs
        loss, grads = jax.value_and_grad(loss_fn)(params, key, x)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def hlo_counts(hlo: str) -> collections.Counter:
    """Opcode counts of an optimised HLO module (inside fusions too)."""
    return collections.Counter(m.group(1) for m in re.finditer(r"= \S+ ([a-z][\w-]*)\(", hlo))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41, help="rounds of A B")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--latent", type=int, default=4, help="latent dimensions (2-8)")
    parser.add_argument("--profile", action="store_true",
                        help="also list the HLO opcodes whose counts differ between the two steps")
    args = parser.parse_args()

    digits = load_digits().data  # [1797, 64], 0..16
    x_all = jnp.asarray(digits > 7, dtype=jnp.float32)
    n_batches = x_all.shape[0] // BATCH
    batches = x_all[: n_batches * BATCH].reshape(n_batches, BATCH, PIXELS)  # [nb, B, 64]
    k_enc, k_dec, k_run = jax.random.split(jax.random.key(0), 3)
    params = {
        "enc": init_mlp(k_enc, [PIXELS, HIDDEN, 2 * args.latent]),
        "dec": init_mlp(k_dec, [args.latent, HIDDEN, PIXELS]),
    }
    opt = optax.adam(1e-3)
    state0 = (params, opt.init(params))
    keys = jax.vmap(lambda i: jax.random.fold_in(k_run, i))(jnp.arange(args.steps))
    xs = batches[jnp.arange(args.steps) % n_batches]  # [steps, B, 64]
    key0, x0 = keys[0], xs[0]

    # name -> (loss function, context to trace it in)
    variants = {"recipe": (recipe_loss, contextlib.nullcontext), "hand": (hand_loss, contextlib.nullcontext)}
    steps = {k: jax.jit(make_step(f, opt)) for k, (f, _) in variants.items()}
    scans = {k: jax.jit(lambda s, i, f=f: jax.lax.scan(make_step(f, opt), s, i)) for k, (f, _) in variants.items()}

    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, {jax.default_backend()}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores; batch {BATCH}, {PIXELS} pixels, "
          f"latent {args.latent}, hidden {HIDDEN}")

    # Same key, same loss (and gradient): the variants compute the same thing.
    vg = {}
    for k, (f, ctx) in variants.items():
        with ctx():
            vg[k] = jax.jit(jax.value_and_grad(f))(params, key0, x0)
    _, g_hand = vg["hand"]
    gscale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_hand))
    for k, (loss, grads) in vg.items():
        gdiff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_hand)))
        print(f"{k:>14}: loss for key 0 = {float(loss):.7f}  (|diff| to hand {abs(float(loss - vg['hand'][0])):.1e}); "
              f"max |grad diff| to hand {gdiff:.1e} (max |grad| {gscale:.1e})")

    # Program sizes and compile times of one training step.
    counts = {}
    for k, f in steps.items():
        with variants[k][1]():
            n_eqns = sum(1 for _ in _all_eqns(jax.make_jaxpr(f)(state0, (key0, x0)).jaxpr))
            t0 = time.perf_counter()
            hlo = f.lower(state0, (key0, x0)).compile().as_text()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(f(state0, (key0, x0)))  # fills the jit cache for the timing below
        counts[k] = hlo_counts(hlo)
        entry = hlo[hlo.index("ENTRY"):]
        print(f"{k:>14}: jaxpr {n_eqns} equations (nested); optimised HLO {sum(counts[k].values())} instructions, "
              f"{entry.count(' fusion(')} top-level fusions, {hlo.count(' dot(')} dots; trace+compile {compile_s:.2f} s")
    if args.profile:
        ops = sorted(set().union(*counts.values()))
        print("HLO opcodes that differ (" + ", ".join(variants) + "):")
        print("  " + ", ".join(f"{op} {tuple(counts[k][op] for k in variants)}" for op in ops
                                if len({counts[k][op] for k in variants}) > 1))
    for k, f in scans.items():  # compile the scans in their contexts too
        with variants[k][1]():
            jax.block_until_ready(f(state0, (keys, xs)))

    for label, times in time_loop_and_scan(steps, scans, state0, keys, xs, args.steps, args.rounds).items():
        print(f"{label} ({args.rounds} rounds of {args.steps} steps):")
        for k in times:
            ratios = [a / b for a, b in zip(times[k], times["hand"])]
            q = np.quantile(ratios, [0.25, 0.75])
            print(f"  {k:>14}: {1e6 * statistics.median(times[k]) / args.steps:7.1f} us/step (median); "
                  f"median ratio to hand {statistics.median(ratios):.3f} (IQR {q[0]:.3f}-{q[1]:.3f})")


def time_loop_and_scan(steps: dict, scans: dict, state0, keys, xs, num_steps: int, rounds: int) -> dict:
    """Wall times of training runs, two ways: a Python loop of jitted steps, and one ``lax.scan``.

    ``steps`` and ``scans`` map a variant's name (one of them ``"hand"``) to its jitted step
    ``(state, (key, x)) -> (state, loss)`` and scan ``(state, (keys, xs)) -> ...``. Each variant
    runs once to warm up, then the variants run in turn (A B A B ...) for ``rounds`` rounds of
    ``num_steps`` steps, so a slow phase of the machine hits all of them alike. Returns
    ``{label: {variant: [seconds of each round]}}``. Shared with ``diffusion_steps.py``.
    """
    inputs = [(keys[i], xs[i]) for i in range(num_steps)]  # sliced once, outside the timing

    def run_loop(f):
        state = state0
        for inp in inputs:
            state, loss = f(state, inp)
        jax.block_until_ready((state, loss))

    def run_scan(f):
        jax.block_until_ready(f(state0, (keys, xs)))

    out = {}
    for label, runner, fns in (("python loop of jitted steps", run_loop, steps), ("one lax.scan", run_scan, scans)):
        for f in fns.values():  # warm up
            runner(f)
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():  # A B in turn, every round
                t0 = time.perf_counter()
                runner(f)
                times[k].append(time.perf_counter() - t0)
        out[label] = times
    return out

def _all_eqns(jaxpr):
    """Every equation of a jaxpr, including those of sub-jaxprs (pjit, custom_jvp, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _all_eqns(inner if hasattr(inner, "eqns") else inner.jaxpr)


if __name__ == "__main__":
    main()
