"""Chapter 8's glue tolerances from the spread of its numbers over seeds (issue 24).

Written by the ch08 helper. Reads the JSON files of ``benchmarks/ch08_seed_stats.py`` (one per
``KLBOOK_SEED``; older files from revision 2 of the chapter use the keys ``err``/``err_bar``/``gain``)
and prints, for every glued quantity, its sd over the seeds and 4 x sqrt(2) x sd: about four standard
errors of the difference between two seeds' values, the width a tolerance needs so that a glue
fails a fresh seed with a chance well under 1 in 1000 (if the values are roughly normal). Beside the
measured spread it prints the test images' binomial bound for a mean error p over n test images,
4 x sqrt(2) x sqrt(p (1 - p) / n), since every seed redraws the test split.

    .venv/bin/python benchmarks/ch08_tolerances.py /tmp/ch08run/s*.json /tmp/ch08seeds/seed*.json
"""

import json
import math
import sys

import numpy as np

N_TEST = 359
runs = [json.load(open(f)) for f in sys.argv[1:]]


def means(r):  # mean test error of each model, at the code's mean and for q-bar
    if "means" in r:
        return r["means"], r.get("bar_means", {})
    return {k: float(np.mean(v)) for k, v in r["err"].items()}, {k: float(np.mean(v)) for k, v in r["err_bar"].items()}


def gains(r):  # (gain, s.e.) of the baseline over each model, and of the controls over the tied model
    if "pairs" in r:
        return {k: v for k, v in r["pairs"].items()} | {f"bar {k}": v for k, v in r["pairs_bar"].items()}
    out = {f"sup-{k}": v for k, v in r["gain"].items()}
    out["mix-tied"] = r["tie_gain"]
    return out


rows = {}
for r in runs:
    m, b = means(r)
    for k, v in m.items():
        rows.setdefault(f"err {k}", []).append(v)
    for k, v in b.items():
        rows.setdefault(f"errbar {k}", []).append(v)
    for k, (g, se) in gains(r).items():
        rows.setdefault(f"gain {k}", []).append(g)
        rows.setdefault(f"se {k}", []).append(se)
    es = np.mean(r["err_sweep"], 0)
    for j, v in enumerate(es):
        rows.setdefault(f"err sweep col {j}", []).append(float(v))
    for j, (g, se) in enumerate(r["sweep_vs_sup"]):
        rows.setdefault(f"gain sweep col {j}", []).append(-g)
        rows.setdefault(f"se sweep col {j}", []).append(se)
    for name in ("rate", "distortion"):
        for j, v in enumerate(np.mean(r["ledger_sweep"][name], 0)):
            rows.setdefault(f"{name} sweep col {j}", []).append(float(v))
    rows.setdefault("agree", []).append(r["agree"])

print(f"{len(runs)} seeds: {sorted(r['seed'] for r in runs)}")
print(f"{'quantity':<28}{'n':>3}{'min':>9}{'max':>9}{'sd':>9}{'4*sqrt2*sd':>12}{'binomial':>10}")
for k, v in rows.items():
    v = np.asarray(v, float)
    if len(v) < 2:
        continue
    sd = v.std(ddof=1)
    p = float(np.mean(v))
    binom = 4 * math.sqrt(2) * math.sqrt(p * (1 - p) / N_TEST) if k.startswith("err") and 0 < p < 1 else float("nan")
    print(f"{k:<28}{len(v):3d}{v.min():9.4f}{v.max():9.4f}{sd:9.4f}{4 * math.sqrt(2) * sd:12.4f}{binom:10.4f}")
