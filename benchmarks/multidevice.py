"""Steps per second of ``klbook.train.fit`` on 1, 2 and 4 devices (data parallel), on forced CPU devices.

A small MLP classifier (64 inputs, two hidden layers of 256 tanh units, 10 classes; Adam) trains
on 4096 synthetic examples with minibatches of 512 rows, once per device count. With ``K`` devices
``fit`` splits each batch over a 1-D mesh (512 / K rows each) and keeps the parameters and the
optimiser state replicated; ``devices=1`` is the single-device program. Each device count runs in
a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (the flag must be set
before JAX starts). Every ``fit`` call compiles its own program, so the time of a step is taken
from two runs that compile the same program (same ``chunk_size``): ``(t_long - t_short) /
(steps_long - steps_short)`` (``--steps``, default 1050 against 50); the median over the repeats
is reported, with the first loss as a check that every configuration trains the same model on
the same batches, and the 1-minute load average before and after.

Usage: ``python benchmarks/multidevice.py [--repeats 3] [--counts 1,2,4] [--steps 1050] [--json F]``
(CPU; on a machine with several GPUs, ``--gpu`` uses its real devices instead of forced CPU ones).

Results: ``benchmarks/multidevice.md`` (2026-12-06, forced CPU devices on the shared 2-core CPU,
under load 7-11: 221, 135 and 117 steps per second on 1, 2 and 4 devices, the same losses to
float32 rounding). Forced CPU devices are not extra hardware (K devices share the same two cores),
so splitting a batch cannot be faster there: the table measures the split's overhead and checks
that every count trains the same model; the per-step all-reduce of the gradient across devices
and the smaller per-device matrix products cost time.

On GPUs each device brings its own compute and memory, which is where the split pays: a batch that
fills one GPU runs as K batches of a K-th of the size, at the price of one all-reduce of the
gradient per step (see ``book/gpu.md`` for the GPU check; this benchmark has not been run on
several GPUs: the machines lent to this project have one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import equinox as eqx, jax, jax.numpy as jnp, optax
from klbook.train import fit

import os
count, repeats = int(sys.argv[1]), int(sys.argv[2])
load_before = os.getloadavg()[0]
devices = jax.local_devices()
assert len(devices) >= count, (len(devices), count)
x = jax.random.normal(jax.random.key(0), (4096, 64))
y = jnp.argmax(x[:, :10] + 0.5 * jax.random.normal(jax.random.key(1), (4096, 10)), axis=1)
model = eqx.nn.MLP(64, 10, 256, 2, activation=jnp.tanh, key=jax.random.key(2))

def loss(m, k, b):
    logits = jax.vmap(m)(b[0])
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, b[1][:, None], 1)[:, 0])

def run(steps):
    t = time.perf_counter()
    r = fit(jax.random.key(3), loss, model, num_steps=steps, data=(x, y), batch_size=512, chunk_size=50,
            optimizer=optax.adam(1e-3), progress=False, devices=count)
    jax.block_until_ready(r.params)
    return time.perf_counter() - t, float(r.history["loss"][0]), float(r.history["loss"][-1])

short, long = 50, int(sys.argv[3])
per_step = []
for _ in range(repeats):
    t_short, first, _ = run(short)
    t_long, _, last = run(long)
    per_step.append((t_long - t_short) / (long - short))
print("RESULT" + json.dumps({"count": count, "per_step": per_step, "first_loss": first, "last_loss": last,
                             "backend": jax.default_backend(), "devices": len(devices),
                             "load": [load_before, os.getloadavg()[0]]}))
"""


def measure(count: int, repeats: int, gpu: bool, long: int) -> dict:
    env = dict(os.environ)
    if not gpu:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), str(repeats), str(long)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--steps", type=int, default=1050, help="the long run's steps (the short one takes 50)")
    parser.add_argument("--json", help="also write the rows (every repeat, the load averages) to this file")
    parser.add_argument("--gpu", action="store_true", help="use the machine's real devices, not forced CPU ones")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    rows = [measure(c, args.repeats, args.gpu, args.steps) for c in counts]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    base = statistics.median(rows[0]["per_step"])
    print(
        f"backend {rows[0]['backend']}; batch 512, MLP 64-256-256-10, {args.steps - 50}-step difference, "
        f"median of {args.repeats} repeats"
    )
    print(
        "| devices | rows per device | ms per step | steps per second | vs first row | first loss | last loss | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = statistics.median(r["per_step"])
        spread = ", ".join(f"{1e3 * v:.2f}" for v in r["per_step"])
        print(
            f"| {r['count']} | {512 // r['count']} | {1e3 * t:.2f} ({spread}) | {1 / t:.0f} | {base / t:.2f}x "
            f"| {r['first_loss']:.6f} | {r['last_loss']:.6f} | {r['load'][0]:.1f} to {r['load'][1]:.1f} |"
        )


if __name__ == "__main__":
    main()
