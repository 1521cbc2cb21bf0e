"""Chapter 8's asserted statistics under one KLBOOK_SEED: runs the notebook's code cells and dumps them to JSON.

Written by the ch08 helper (issue 21/24). Run from the repository root, one seed per call:

    KLBOOK_SCALE=quick KLBOOK_SEED=5 PYTHONPATH=. .venv/bin/python benchmarks/ch08_seed_stats.py \
        book/ch08_semi_supervised.ipynb /tmp/ch08_seed5.json

Every code cell runs (a failing assert is recorded, not fatal); the JSON holds each cell's seconds,
the failures, every model's mean errors, the paired gains and standard errors of the chapter's pairs
at the code's mean and for q-bar, and the sweep's nats. ``benchmarks/ch08_seeds.md`` is written from
these files.
"""

import json
import os
import sys
import time
import traceback

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import numpy as np  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
nb = nbformat.read(src, 4)
ns = {"__name__": "__main__"}
os.chdir(os.path.dirname(os.path.abspath(src)))
fails, cells, t0, c0 = [], [], time.time(), time.process_time()
for i, c in enumerate(nb.cells):
    if c.cell_type != "code" or "klbook set-up" in c.source:
        continue
    t, cpu = time.time(), time.process_time()
    try:
        exec(compile(c.source, f"cell{i}", "exec"), ns)
    except Exception as e:  # record and go on: the statistics of the other cells still count
        fails.append((i, type(e).__name__, str(e)[:300], traceback.format_exc()[-800:]))
    cells.append((i, round(time.time() - t, 1), round(time.process_time() - cpu, 1)))  # wall and CPU seconds
res = {"seed": os.environ.get("KLBOOK_SEED", "0"), "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0,
       "load": os.getloadavg(), "fails": fails, "cells": cells}


def f(v):
    return np.asarray(v).tolist()


P, W, WB = ns["paired"], ns["wrong"], ns["wrong_bar"]
res["pairs"] = {
    f"{a}-{b}": list(map(float, P(a, b))) for a, b in ns["PAIRS"] + [("tied_unw", "tied"), ("tied_unw", "sup")]
}
res["pairs_bar"] = {
    f"{a}-{b}": list(map(float, P(W[a] if a == "sup" else WB[a], WB[b])))
    for a, b in ns["PAIRS"]
    if b in WB and (a == "sup" or a in WB)
}
res["err"] = {k: f(v) for k, v in ns["err"].items()}
res["means"] = {k: float(np.mean(v)) for k, v in ns["err"].items()}
res["bar_means"] = {k: float(np.mean(v)) for k, v in ns["err_bar"].items()}
res["err_sweep"] = f(ns["err_sweep"])
res["sweep_vs_sup"] = [list(map(float, P("sup", ns["wrong_sweep"][:, j]))) for j in range(ns["wrong_sweep"].shape[1])]
res["ledger_sweep"] = {k: f(v) for k, v in ns["ledger_sweep"].items()}
res["ledger"] = {k: f(v) for k, v in ns.get("ledger", {}).items()}  # [SPLITS, len(CODED)], columns in CODED's order
res["coded"] = list(ns.get("CODED", []))
res["agree"] = float(ns["agree"])
with open(out, "w") as fh:
    json.dump(res, fh, indent=1)
print(out, "failed cells:", [(a, b, c) for a, b, c, _ in fails], round(res["seconds"]), "s")
