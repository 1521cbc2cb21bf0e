"""What compiling a run-once program costs with XLA's defaults and with ``klbook.book.jit_once``.

For each of chapter 8's models, eight stacked copies are initialised (what ``semisup.fit_models``
does before training) and, separately, one copy is scored once on 100 images with
``kl_objective`` (what a chapter's check cell does). Each measurement runs in a fresh Python
process, so nothing is cached between them. The times are the first call (trace, compile and
run) and the second call (run only), medians over the repeats; the last column is the largest
difference between the two versions' results.

Usage: ``python benchmarks/compile_once.py [--repeats 3]`` (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, sys, time
import equinox as eqx, jax, jax.numpy as jnp, numpy as np
from klbook import book, semisup
from klbook.recipe import kl_objective

what, how = sys.argv[1], sys.argv[2]
jit = book.jit_once if how == "jit_once" else eqx.filter_jit
D, K, C, W = 64, 16, 10, 64
makers = {"classifier": lambda k: semisup.classifier(k, D, C, width=W),
          "post": lambda k: semisup.code_model(k, D, K, C, width=W),
          "tied": lambda k: semisup.tied_code_model(k, D, K, C, width=W),
          "M2": lambda k: semisup.m2(k, D, K, C, width=W)}
keys = jax.random.split(jax.random.key(0), 8)
x = jax.random.randint(jax.random.key(1), (100, D), 0, 17)
y = jax.random.randint(jax.random.key(2), (100,), 0, C)
if what.startswith("init:"):
    f = jit(eqx.filter_vmap(makers[what[5:]]))
    run = lambda: f(keys)
else:
    model = makers[what[6:]](jax.random.key(3))
    real, dream, names, data = ((semisup.m2_real_world, semisup.m2_dream_world, semisup.M2_NAMES, (x,))
                                if what.endswith("M2") else
                                (semisup.post_real_world, semisup.post_dream_world, semisup.POST_NAMES, (x, y)))
    extra = {"enumerate_sites": ("y",)} if what.endswith("M2") else {}
    f = jit(lambda k, m: kl_objective(k, real, dream, m, *data, names=names, num_particles=8, **extra).total)
    run = lambda: f(jax.random.key(4), model)
times = []
for _ in range(2):
    t = time.perf_counter()
    out = jax.block_until_ready(run())
    times.append(time.perf_counter() - t)
leaves = [np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(eqx.filter(out, eqx.is_array))]
print(json.dumps({"first": times[0], "second": times[1], "values": np.concatenate(leaves).tolist()}))
"""

CASES = ["init:classifier", "init:post", "init:tied", "init:M2", "score:post", "score:tied", "score:M2"]


def measure(case: str, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case, how], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'program':<18}{'first call: filter_jit':>23}{'jit_once':>10}{'ratio':>7}"
          f"{'second call (ms): filter_jit':>30}{'jit_once':>10}{'max |diff|':>12}")
    for case in CASES:
        runs = {how: [measure(case, how) for _ in range(args.repeats)] for how in ("filter_jit", "jit_once")}
        first = {how: statistics.median(r["first"] for r in rs) for how, rs in runs.items()}
        second = {how: statistics.median(r["second"] for r in rs) * 1e3 for how, rs in runs.items()}
        diff = float(np.max(np.abs(np.subtract(runs["filter_jit"][0]["values"], runs["jit_once"][0]["values"]))))
        print(f"{case:<18}{first['filter_jit']:22.2f}s{first['jit_once']:9.2f}s{first['filter_jit'] / first['jit_once']:7.1f}"
              f"{second['filter_jit']:30.2f}{second['jit_once']:10.2f}{diff:12.2e}")


if __name__ == "__main__":
    main()
