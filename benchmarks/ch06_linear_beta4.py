"""Chapter 6, cell 14: the beta = 4 linear model's L - H over seeds, from the exact optimum on each seed's sample.

    KLBOOK_SCALE=quick .venv/bin/python benchmarks/ch06_linear_beta4.py SEED [SEED ...]

No training: `vae.linear_gaussian_fit` is the exact minimiser of D + 4R on the chapter's training sample
(N = 2000 draws at quick, the same keys as the notebook: book.key(10) split three ways), and L - H is the
closed-form KL from the real world's p(x) to the fit's q(x). At seeds 0 and 31 it gives 0.232 and 0.543,
what the trained models print, so the spread over seeds is the sample's, not the optimiser's.
"""
import os
import sys

import jax
import numpy as np

from klbook import book, vae
from klbook.divergence import cross_entropy

seeds = [int(s) for s in sys.argv[1:]]
i = np.arange(8)
W = np.stack([2 * np.cos(np.pi * i / 4), np.sin(np.pi * i / 4)], axis=1)  # as in the chapter
N = 20_000 if os.environ.get("KLBOOK_SCALE") == "full" else 2_000
out = []
for s in seeds:
    os.environ["KLBOOK_SEED"] = str(s)
    k_truth, k_train, _ = jax.random.split(book.key(10), 3)
    truth = vae.linear_gaussian_vae(k_truth, 8, 2, weight=W, bias=0.0, noise=1.0)
    p_x = vae.linear_gaussian_marginal(truth)
    k_z, k_x = jax.random.split(k_train)
    x = truth.decode(truth.prior(N).sample(k_z)).sample(k_x)
    fit = vae.linear_gaussian_fit(x, 2, beta=4.0)
    lh = float(cross_entropy(p_x, vae.linear_gaussian_marginal(fit))) - float(cross_entropy(p_x, p_x))
    out.append(lh)
    print(s, round(lh, 4), flush=True)
out = np.array(out)
print("n", len(out), "mean", out.mean(), "sd", out.std(ddof=1), "min", out.min(), "max", out.max())
