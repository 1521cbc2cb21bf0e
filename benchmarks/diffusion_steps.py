"""Training steps per second of chapter 9's diffusion model: through ``kl_objective`` vs by hand.

The model is ``klbook.diffusion``'s (a noise-predicting MLP, a linear log-SNR schedule, a
discretised Gaussian decoder) on scikit-learn's 8x8 digits mapped to 17 levels in [-1, 1]
(``--data digits``, 64 dims, batch 64) or on the 2-d ring of ``klbook.data`` (``--data ring``,
batch 128). One jit-compiled step, value-and-grad of the T-step ledger plus an Adam update, is
written twice:

* **recipe:** ``klbook.diffusion.objective``: the two T-step worlds (``real_world``,
  ``dream_world``) through ``klbook.recipe.kl_objective`` with the names prior / diffusion /
  reconstruction;
* **hand:** the same sampled ledger written directly in JAX: the same network, reverse step
  (``posterior``) and decoder, the same draws (the recipe's key handling is reproduced: one
  particle from ``split(key, 1)``, P's half of ``split(particle)``, then
  ``numpyro.handlers.seed``'s split per latent site, in the order z_T, ..., z_0), so both give
  the same loss for the same key.

As in ``recipe_vs_hand.py`` (whose HLO helpers this script reuses), runs alternate recipe, hand,
... (``--steps`` steps each, then ``block_until_ready``) and the median per-round time ratio is
the headline, for a Python loop of jitted steps and for one ``lax.scan`` over the steps (the
compiled step alone, as ``klbook.train`` runs it).

Usage::

    python benchmarks/diffusion_steps.py [--data digits|ring] [--steps-per-chain 16] [--rounds 21] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_vs_hand import _all_eqns, hlo_counts, time_loop_and_scan  # noqa: E402  (the same bookkeeping)

from klbook import data  # noqa: E402
from klbook import diffusion as dm  # noqa: E402


def hand_loss(model: dm.Diffusion, key, x, num_steps: int):
    """The recipe's sampled T-step ledger, written out: prior + diffusion + reconstruction, nats per example."""
    particle = jax.random.split(key, 1)[0]
    key_real, _ = jax.random.split(particle)
    gam = model.schedule(jnp.linspace(0.0, 1.0, num_steps + 1))  # [T + 1]

    def draw(k, d):  # numpyro's Normal.sample: loc + eps * scale
        return d.loc + jax.random.normal(k, d.loc.shape) * d.scale

    def log_normal(z, loc, scale):  # [B]
        return jnp.sum(-0.5 * ((z - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi), -1)

    alpha, sigma = dm.alpha_sigma(gam[-1])
    key_real, k = jax.random.split(key_real)
    z = alpha * x + sigma * jax.random.normal(k, x.shape)  # z_1 ~ q(z_1 | x)
    prior = log_normal(z, alpha * x, sigma) - log_normal(z, 0.0, 1.0)  # [B]
    diffusion = jnp.zeros(x.shape[0])
    for i in range(num_steps, 0, -1):
        q = dm.posterior(z, x, gam[i - 1], gam[i])  # q(z_s | z_t, x)
        p = dm.posterior(z, model.denoise(z, gam[i]), gam[i - 1], gam[i])  # p(z_s | z_t)
        key_real, k = jax.random.split(key_real)
        z_s = draw(k, q)
        diffusion = diffusion + log_normal(z_s, q.loc, q.scale) - log_normal(z_s, p.loc, p.scale)
        z = z_s
    reconstruction = -model.decoder(z).log_prob(x)  # [B]
    return jnp.mean(prior) + jnp.mean(diffusion) + jnp.mean(reconstruction)


def recipe_loss(model, key, x, num_steps):
    return dm.objective(key, model, x, num_steps).loss


def make_step(loss_fn, opt, num_steps):
    def step(state, inputs):
        params, opt_state = state
        key, x = inputs
        loss, grads = eqx.filter_value_and_grad(loss_fn)(params, key, x, num_steps)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(params, eqx.is_array))
        return (eqx.apply_updates(params, updates), opt_state), loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "ring"), default="digits")
    parser.add_argument("--steps-per-chain", type=int, default=16, help="T, the chain's steps")
    parser.add_argument("--rounds", type=int, default=21, help="rounds of recipe, hand")
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    T = args.steps_per_chain

    if args.data == "digits":
        x_all = data.to_unit_interval(data.digits().x) * 2 - 1  # [1797, 64], 17 levels
        model = dm.diffusion_model(jax.random.key(1), 64, dm.LinearSchedule(-6.5, 6.0), 2 / 16, -1.0, 1.0,
                                   width=args.width)
        batch = 64
    else:
        x_all = dm.discretise(data.mixture_2d(jax.random.key(0), 20_000, "ring").x, 1 / 16)
        model = dm.diffusion_model(jax.random.key(1), 2, dm.LinearSchedule(-8.0, 6.0), 1 / 16, width=args.width)
        batch = 128
    n_batches = x_all.shape[0] // batch
    batches = x_all[: n_batches * batch].reshape(n_batches, batch, -1)
    opt = optax.adam(1e-3)
    state0 = (model, opt.init(eqx.filter(model, eqx.is_array)))
    k_run = jax.random.key(2)
    keys = jax.vmap(lambda i: jax.random.fold_in(k_run, i))(jnp.arange(args.steps))
    xs = batches[jnp.arange(args.steps) % n_batches]
    key0, x0 = keys[0], xs[0]

    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, {jax.default_backend()}, {platform.machine()}, "
          f"{os.cpu_count()} CPU cores; data {args.data}, batch {batch}, T = {T}, width {args.width}")

    variants = {"recipe": recipe_loss, "hand": hand_loss}
    vg = {k: eqx.filter_jit(eqx.filter_value_and_grad(f))(model, key0, x0, T) for k, f in variants.items()}
    g_hand = jax.tree.leaves(eqx.filter(vg["hand"][1], eqx.is_array))
    gscale = max(float(jnp.max(jnp.abs(g))) for g in g_hand)
    for k, (loss, grads) in vg.items():
        g = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
        gdiff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, g_hand))
        print(f"{k:>7}: loss for key 0 = {float(loss):.6f} (|diff| to hand {abs(float(loss - vg['hand'][0])):.1e}); "
              f"max |grad diff| {gdiff:.1e} (max |grad| {gscale:.1e})")

    dyn0, static = eqx.partition(state0, eqx.is_array)  # jit over the arrays, the rest closed over (as fit does)

    def on_arrays(step):
        def f(dyn, inputs):
            state, loss = step(eqx.combine(dyn, static), inputs)
            return eqx.filter(state, eqx.is_array), loss
        return f

    steps = {k: jax.jit(on_arrays(make_step(f, opt, T))) for k, f in variants.items()}
    scans = {k: jax.jit(lambda s, i, f=f: jax.lax.scan(on_arrays(make_step(f, opt, T)), s, i))
             for k, f in variants.items()}
    state0 = dyn0
    for k, f in steps.items():
        n_eqns = sum(1 for _ in _all_eqns(jax.make_jaxpr(f)(state0, (key0, x0)).jaxpr))
        t0 = time.perf_counter()
        hlo = f.lower(state0, (key0, x0)).compile().as_text()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(f(state0, (key0, x0)))
        counts = hlo_counts(hlo)
        print(f"{k:>7}: jaxpr {n_eqns} equations (nested); optimised HLO {sum(counts.values())} instructions, "
              f"{hlo.count(' dot(')} dots; trace+compile {compile_s:.2f} s")
    for f in scans.values():
        jax.block_until_ready(f(state0, (keys, xs)))

    for label, times in time_loop_and_scan(steps, scans, state0, keys, xs, args.steps, args.rounds).items():
        print(f"{label} ({args.rounds} rounds of {args.steps} steps):")
        for k in times:
            ratios = [a / b for a, b in zip(times[k], times["hand"])]
            q = np.quantile(ratios, [0.25, 0.75])
            per_step = statistics.median(times[k]) / args.steps
            print(f"  {k:>7}: {1e3 * per_step:7.2f} ms/step ({1 / per_step:6.0f} steps/s, median); "
                  f"median ratio to hand {statistics.median(ratios):.3f} (IQR {q[0]:.3f}-{q[1]:.3f})")

if __name__ == "__main__":
    main()
