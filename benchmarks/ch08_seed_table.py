"""Tabulate chapter 8's asserted statistics over seeds from ``benchmarks/ch08_seed_stats.py``'s JSON files.

Written by the ch08 helper (issue 24). Usage, from the repository root:

    python benchmarks/ch08_seed_table.py /tmp/ch08_seed0.json /tmp/ch08_seed1.json ...

Prints a markdown table of every asserted statistic (t = gain / s.e. against t_0.975(7) = 2.36, the
signs, the smallest margins of the "every labelled set" claims) and, against the first file (the
stored outputs' seed), each glued quantity's largest move beside its declared tolerance.
"""

import json
import sys

import numpy as np

T = 2.3646  # t_0.975(7)


def t(p):
    return p[0] / p[1]


rows, runs = [], [json.load(open(f)) for f in sys.argv[1:]]
print("| seed | tied t | net-tie t (mean) | gauss-tie t (mean) | sep t | M2 t (mean) | q-bar tied t | q-bar net-tie t | "
      "q-bar gauss-tie t | q-bar sep t | max sweep t | unw-tied t | unw-sup t | every-set margins | agree | failed cells | s (CPU s, load) |")
print("|" + "---|" * 17)
for r in runs:
    P, B, names = r["pairs"], r["pairs_bar"], r["coded"]
    led = {k: np.asarray(v) for k, v in r["ledger"].items()}
    rate, dist = np.asarray(r["ledger_sweep"]["rate"]), np.asarray(r["ledger_sweep"]["distortion"])
    G, ONE = rate.shape[1] - 1, rate.shape[1] - 1
    J = {n: j for j, n in enumerate(names)}
    margins = [
        np.min(rate[:, G - 1] - rate[:, 0]),                       # more rate at the top of the sweep
        np.min(dist[:, :G].min(1) - dist[:, ONE]),                 # unweighted: less distortion than any beta = 0.3 model
        np.min(rate[:, ONE] - rate[:, 0]),                         # ... more rate than gamma = 1
        np.min(led["distortion"][:, J["tied"]] - led["distortion"][:, J["tied_unw"]]),
        np.min(led["rate"][:, J["tied_unw"]] - led["rate"][:, J["tied"]]),
    ]
    sweep_t = max(g / s for g, s in r["sweep_vs_sup"])
    fails = ",".join(str(f[0]) for f in r["fails"]) or "none"
    print(f"| {r['seed']} | {t(P['sup-tied']):+.2f} | {t(P['mix-tied']):+.2f} ({P['mix-tied'][0]:+.3f}) | "
          f"{t(P['gauss-tied']):+.2f} ({P['gauss-tied'][0]:+.3f}) | {t(P['sup-post']):+.2f} | "
          f"{t(P['sup-m2']):+.2f} ({P['sup-m2'][0]:+.3f}) | {t(B['sup-tied']):+.2f} | {t(B['mix-tied']):+.2f} | "
          f"{t(B['gauss-tied']):+.2f} | {t(B['sup-post']):+.2f} | {sweep_t:+.2f} | {t(P['tied_unw-tied']):+.2f} | "
          f"{t(P['tied_unw-sup']):+.2f} | {min(margins):+.2f} | {r['agree']:.3f} | {fails} | "
          f"{r['seconds']:.0f} ({r.get('cpu_seconds', float('nan')):.0f}, {r.get('load', [float('nan')])[0]:.1f}) |")

# largest move of each glued quantity from the first file's value, beside its tolerance
ref, rest = runs[0], runs[1:]
if rest:
    def moves(get):
        return max(abs(get(r) - get(ref)) for r in rest)
    checks = []
    for n in ref["means"]:
        if n != "tied_unw":
            checks.append((f"mean error {n}", moves(lambda r: r["means"][n]), 0.045))
    checks.append(("mean error tied_unw", moves(lambda r: r["means"]["tied_unw"]), 0.16))
    for n in ref["bar_means"]:
        checks.append((f"q-bar mean {n}", moves(lambda r: r["bar_means"][n]), 0.04))
    for p in ref["pairs"]:
        if p.startswith("tied_unw"):
            continue  # asserted only, neither glued nor printed
        checks.append((f"gain {p}", moves(lambda r: r["pairs"][p][0]), 0.035))
        checks.append((f"s.e. {p}", moves(lambda r: r["pairs"][p][1]), 0.01))
    for p in ref["pairs_bar"]:
        checks.append((f"q-bar gain {p} (printed)", moves(lambda r: r["pairs_bar"][p][0]), 0.035))
    for j in range(len(ref["sweep_vs_sup"])):
        checks.append((f"sweep err col {j}", moves(lambda r: np.mean(np.asarray(r["err_sweep"])[:, j])), 0.035))
        checks.append((f"sweep gap col {j}", moves(lambda r: r["sweep_vs_sup"][j][0]), 0.035))
    nats = {"rate_lo": ("rate", 0, 0.9), "rate_hi": ("rate", 3, 1.9), "dist_lo": ("distortion", 0, 5.4),
            "dist_hi": ("distortion", 3, 7.7), "d_unweighted": ("distortion", 4, 3.5), "r_unweighted": ("rate", 4, 1.0)}
    for name, (q, j, tol) in nats.items():
        checks.append((f"nats {name}", moves(lambda r: np.mean(np.asarray(r["ledger_sweep"][q])[:, j])), tol))
    checks.append(("agree", moves(lambda r: r["agree"]), 0.06))
    print("\n| glued / printed quantity | largest move from the first file | tolerance | ratio |\n|---|---|---|---|")
    for name, m, tol in sorted(checks, key=lambda c: -c[1] / c[2]):
        print(f"| {name} | {m:.4f} | {tol} | {m / tol:.2f} |")
