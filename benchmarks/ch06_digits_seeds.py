"""ch06 digits sweep at one seed, replayed outside the notebook (quick scale): the held-out ranking
statistics of cell "held-out table" and the beta = 10 model's active code dimensions.

Usage: KLBOOK_SCALE=quick .venv/bin/python benchmarks/ch06_digits_seeds.py OUTDIR SEED [SEED ...]
Writes OUTDIR/seed<s>.json per seed (one process runs a small group of seeds,
setting KLBOOK_SEED in turn). Replays exactly the notebook's keys and code (book/ch06_vae.ipynb,
cells 5, 21, 23, 27, 28), so seed 0 reproduces the stored outputs.
"""

import json
import math
import os
import sys
import time

import equinox as eqx
import jax
import numpy as np
import optax

from klbook import book, data, vae
from klbook import vae_explorer as vx


def run_seed(outdir):
    t0 = time.time()
    assert book.scale() == "quick"
    images = data.digits_split(book.key(0))
    x, COUNT = images.train.x, images.max_value
    LATENT, WIDTH = 16, 128

    def make(key):
        return vae.binomial_vae(key, x.shape[1], LATENT, COUNT, width=WIDTH)

    BETAS = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    STEPS, K, NUM_EVAL = 2_000, 100, 400
    models, history = vae.fit_betas(
        book.key(20), make, BETAS, x, num_steps=STEPS, optimizer=optax.adam(2e-3), progress=False
    )
    x_eval = x[:NUM_EVAL]
    H_eval = vx.empirical_entropy(x_eval)
    sweep = vx.summarise(
        book.key(21),
        models,
        BETAS,
        x_eval,
        num_samples=K,
        entropy=H_eval,
        floor=vx.binomial_floor(x_eval, COUNT),
        image_shape=images.image_shape,
    )
    m = sweep.mean
    HELD_KS = (100, 1000)
    x_held = images.test.x[:NUM_EVAL]

    @eqx.filter_jit
    def held_out(models, key, images_x, k):
        return eqx.filter_vmap(lambda mdl, kk: -vae.iwae(kk, mdl, images_x, k))(
            models, jax.random.split(key, len(BETAS))
        )

    held = {k: np.asarray(held_out(models, book.key(22), x_held, k), np.float64) for k in HELD_KS}

    def rate_per_dimension(model):
        enc = model.encode(x_eval).base_dist
        return np.asarray(0.5 * (enc.loc**2 + enc.scale**2 - 1) - np.log(enc.scale)).mean(0)

    out = {
        "seed": book.seed(),
        "betas": BETAS,
        "n_held": int(x_held.shape[0]),
        "train_bound": [float(v) for v in m.neg_log_marginal],
        "rate": [float(v) for v in m.rate],
        "distortion": [float(v) for v in m.distortion],
        "gap": [float(v) for v in sweep.gap],
    }
    for k in HELD_KS:
        h = held[k]
        out[f"held_{k}"] = [float(v) for v in h.mean(1)]
        # paired z = mean / s.e. of the difference, for every ordered pair (i, j): held[i] - held[j]
        z = np.zeros((len(BETAS), len(BETAS)))
        for i in range(len(BETAS)):
            for j in range(len(BETAS)):
                if i != j:
                    d = h[i] - h[j]
                    z[i, j] = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
        out[f"z_{k}"] = z.tolist()
    objective = np.stack([history[f"distortion/{i}"] + b * history[f"rate/{i}"] for i, b in enumerate(BETAS)])
    tenth = STEPS // 10
    before, last = objective[:, -2 * tenth : -tenth].mean(1), objective[:, -tenth:].mean(1)
    out["last_tenth"] = [float(v) for v in last]
    out["fell_by_percent"] = [float(v) for v in 100 * (before - last) / last]
    out["active"], out["rate_dims"] = [], []
    for i in range(len(BETAS)):
        r = rate_per_dimension(vae.model_at(models, i))
        out["active"].append(int(np.sum(r > 0.01)))
        out["rate_dims"].append(sorted([float(v) for v in r], reverse=True))
    out["seconds"] = time.time() - t0
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, f"seed{book.seed()}.json"), "w") as f:
        json.dump(out, f, indent=1)
    b1, b03 = BETAS.index(1.0), BETAS.index(0.3)
    print(
        f"seed {book.seed()}: best K=1000 beta={BETAS[int(np.argmin(out['held_1000']))]}; "
        f"z(0.3 vs 1) K=100 {out['z_100'][b03][b1]:.2f} K=1000 {out['z_1000'][b03][b1]:.2f}; "
        f"active(beta=10) {out['active'][4]}; {out['seconds']:.0f} s"
    )


if __name__ == "__main__":
    for s in sys.argv[2:]:
        os.environ["KLBOOK_SEED"] = s
        run_seed(sys.argv[1])
