"""The seed table of book/ch06_vae.ipynb's digit sweep, from the JSON files of ch06_digits_seeds.py.

Usage: .venv/bin/python benchmarks/ch06_seeds_table.py DIR  (prints Markdown)
"""

import glob
import json
import os
import sys

import numpy as np

rows = [json.load(open(f)) for f in glob.glob(os.path.join(sys.argv[1], "seed*.json"))]
rows.sort(key=lambda d: d["seed"])
B = rows[0]["betas"]
i03, i1, i10 = B.index(0.3), B.index(1.0), B.index(10.0)
print(
    "| seed | best β (K=100, 1000) | β=0.3 − β=1, K=1000 (nats ± s.e.) | paired s.e. | "
    "every other β behind the best, fewest s.e. (K=100, 1000) | β=1 held-out L̂_1000 | fell by, max % |"
)
print("|---|---|---|---|---|---|---|")
for d in rows:
    bests, worst_other = [], []
    for k in (100, 1000):
        h, z = np.array(d[f"held_{k}"]), np.array(d[f"z_{k}"])
        b = int(np.argmin(h))
        bests.append(f"{B[b]:g}")
        worst_other.append(min(z[i, b] for i in range(len(B)) if i not in (i03, i1)))
    h = np.array(d["held_1000"])
    z = d["z_1000"][i03][i1]
    diff = h[i03] - h[i1]
    fell = f"{max(d['fell_by_percent']):.2f}" if "fell_by_percent" in d else "—"
    print(
        f"| {d['seed']} | {', '.join(bests)} | {diff:+.2f} ± {diff / z:.2f} | {z:.1f} | "
        f"{worst_other[0]:.1f}, {worst_other[1]:.1f} | {h[i1]:.1f} | {fell} |"
    )
print()
print(
    "| seed | β=10: active dims (> 0.01 nats) | its rate R | its four largest per-dimension rates | "
    "training L̂_100 | held-out L̂_100 | D+R−L̂_100 | active dims, β = 0.1 … 100 |"
)
print("|---|---|---|---|---|---|---|---|")
for d in rows:
    dims = ", ".join(f"{v:.2f}" for v in d["rate_dims"][i10][:4])
    print(
        f"| {d['seed']} | {d['active'][i10]} | {d['rate'][i10]:.2f} | {dims} | {d['train_bound'][i10]:.1f} | "
        f"{d['held_100'][i10]:.1f} | {d['gap'][i10]:.1f} | {' '.join(map(str, d['active']))} |"
    )
