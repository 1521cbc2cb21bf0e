"""Does vmapping a β sweep pay? ``klbook.vae.fit_betas`` on M βs at once vs M separate runs.

Chapter 6 trains one β-VAE per price of rate. ``fit_betas`` stacks the M models' parameters
and trains them in one compiled loop (one compilation, one batch per step shared by all
models); the alternative is M calls with one β each (M compilations, M loops). Both use the
chapter's quick configuration: the 8x8 digits' training split, Binomial(16) decoder, 16
latents, width 128, batch 128, Adam(2e-3). The script prints the wall time of each way,
compilation included, as a reader running the chapter pays it.

Measured results are in ``benchmarks/README.md`` (2026-11-29, quiet 2-core CPU: 7.9 s
vmapped against 21.8 s apart, ratio 2.75).

Usage::

    python benchmarks/vae_beta_sweep.py [--steps 2000] [--betas 0.1,0.3,1,3,10,30,100]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import optax

from klbook import data, vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--betas", default="0.1,0.3,1,3,10,30,100")
    args = parser.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    x = data.digits_split(jax.random.key(0)).train.x

    def make(key):
        return vae.binomial_vae(key, x.shape[1], 16, 16, width=128)

    def run(bs):
        start = time.perf_counter()
        models, _ = vae.fit_betas(jax.random.key(1), make, bs, x, num_steps=args.steps,
                                  optimizer=optax.adam(2e-3), progress=False)
        jax.block_until_ready(jax.tree.leaves(models))
        return time.perf_counter() - start

    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}; {len(betas)} betas, {args.steps} steps each")
    together = run(betas)
    apart = [run([b]) for b in betas]
    print(f"vmapped, one loop:    {together:6.1f} s")
    print(f"one loop per beta:    {sum(apart):6.1f} s  ({', '.join(f'{t:.1f}' for t in apart)})")
    print(f"ratio (apart / vmapped): {sum(apart) / together:.2f}")


if __name__ == "__main__":
    main()
