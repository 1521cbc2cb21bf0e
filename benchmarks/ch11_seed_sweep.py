"""ch11 seeds: run only the regression fit (fit_err) and the beta sweep of the notebook, for each seed given.

    KLBOOK_SCALE=quick OUTDIR=/tmp/ch11w python benchmarks/ch11_seed_sweep.py 15 16 17

Executes cells 2, 4, 6, 11, 19, 20, 21, 24, 29 of book/ch11_bnn.ipynb (by index) and writes one JSON per seed:
the entropies, paired s.e. of their differences between members, the ECE bootstrap intervals. See ch11_seeds.md."""

import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat
import numpy as np

t0 = time.time()
OUTDIR = os.environ.get("OUTDIR", ".")
nb = nbformat.read(str(Path(__file__).resolve().parents[1] / "book" / "ch11_bnn.ipynb"), 4)
for SEED in sys.argv[1:]:
    os.environ["KLBOOK_SEED"] = SEED
    t_seed = time.time()
    g = {}

    def run(i, src=None, g=g):
        exec(compile(src or nb.cells[i].source, f"cell{i}", "exec"), g)

    for i in (2, 4, 6, 11):
        run(i)
    gg = g
    inside = gg["inside"]
    mean_bbb = gg["mean_bbb"]
    reg = gg["reg"]
    GRID = gg["GRID"]
    sd_bbb = gg["sd_bbb"]
    fit_err = float(np.sqrt(np.mean((mean_bbb[inside] - np.asarray(reg.mean_fn(GRID[inside, 0]))) ** 2)))
    for i in (19, 20, 21, 24, 29):
        run(i)
    bnn = g["bnn"]
    BETAS = g["BETAS"]

    def ent(p, bnn=bnn):
        return np.asarray(bnn.entropy(p), np.float64)  # [N]

    out = {
        "seed": os.environ.get("KLBOOK_SEED", "0"),
        "fit_err": fit_err,
        "beta_ood": g["beta_ood"].tolist(),
        "half_ood": g["half_ood"].tolist(),
        "beta_scores": g["beta_scores"].tolist(),
        "half_scores": g["half_scores"].tolist(),
        "rates": g["rates"].tolist(),
        "distortions": g["distortions"].tolist(),
    }
    # per-digit entropies, for paired standard errors of differences between betas
    for tag, probs in (("full", g["bnn_probs"]), ("half", g["half_probs"])):
        for s in ("test", "rotated", "noisy"):
            E = np.stack([ent(p[s]) for p in probs])  # [4, N]
            d = {}
            for i in range(len(BETAS)):
                for j in range(i + 1, len(BETAS)):
                    diff = E[i] - E[j]
                    d[f"{BETAS[i]:g}-{BETAS[j]:g}"] = (
                        float(diff.mean()),
                        float(diff.std(ddof=1) / math.sqrt(len(diff))),
                    )
            out[f"pairs_{tag}_{s}"] = d
    out["beta_pairs"] = g["beta_pairs"]
    out["half_pairs"] = g["half_pairs"]
    out["drop"] = np.asarray(g["drop"]).tolist()
    out["step_noise"] = np.asarray(g["step_noise"]).tolist()
    out["rows"] = {k: [float(x) for x in v] for k, v in g["rows"].items()}
    out["ece_pairs"] = g["ece_pairs"]
    out["seconds"] = time.time() - t_seed
    json.dump(out, open(os.path.join(OUTDIR, f"seed_{out['seed']}.json"), "w"), indent=1)
    print(json.dumps({k: out[k] for k in ("seed", "fit_err", "beta_ood", "half_ood", "seconds")}))
    for tag in ("full", "half"):
        for s in ("rotated", "noisy"):
            print(tag, s, {k: f"{v[0]:+.3f}±{v[1]:.3f}" for k, v in out[f"pairs_{tag}_{s}"].items()})
