"""Chapter 10 seed statistics: run the logistic-regression cells (19-22) of book/ch10_bayesian_inference.ipynb,
with the asserts of cell 22 recorded instead of raised, and the regression exercise closed forms, for each seed given.

    /tmp/klbrief/heavy env KLBOOK_SCALE=quick .venv/bin/python benchmarks/ch10_seed_stats.py 479158 15 16 17
    REG_ONLY=1 .venv/bin/python benchmarks/ch10_seed_stats.py $(seq 1000 2999)   # closed forms only: seconds

Prints one RESULT line (JSON) per seed. Results and their use: benchmarks/ch10_seeds.md.
"""
import os, sys, json, warnings
warnings.filterwarnings("ignore")
import nbformat
import numpy as np
nb = nbformat.read('book/ch10_bayesian_inference.ipynb', 4)
setup = nb.cells[2].source.replace('print(f"scale', 'pass  # print(f"scale').replace('      f"{PARTICLES}', '#')
setup += "\nstack = lambda params, k: jax.tree.map(lambda a: jnp.stack([a] * k), params)\none = lambda params, i: jax.tree.map(lambda a: a[i], params)\n"
body = []
for i in (19, 20, 21):
    body.append(nb.cells[i].source.replace("desc=name)", "desc=name, progress=False)"))
c22 = []
for n, l in enumerate(nb.cells[22].source.split("\n")):
    if l.startswith("assert "):
        c22.append(f"try:\n    {l}\nexcept AssertionError:\n    fails.append({n})\n    failtext.append({l[:70]!r})")
    elif l.startswith("_ = book.glue") or l.startswith("for name, short") or l.startswith("    _ = book.glue"):
        continue
    else:
        c22.append(l)
body.append("\n".join(c22))
body = "\n".join(body)
reg = '''
N_REG, DIM, NOISE, PRIOR_SCALE = 100, 3, 1.0, 1.0
corr = np.full((DIM, DIM), 0.8) + 0.2 * np.eye(DIM)
x_reg = jax.random.normal(jax.random.fold_in(key, 3), (N_REG, DIM)) @ jnp.asarray(np.linalg.cholesky(corr).T, jnp.float32)
w_true = jnp.array([1.0, -0.5, 0.3])
y_reg = x_reg @ w_true + NOISE * jax.random.normal(jax.random.fold_in(key, 4), (N_REG,))
posterior_reg = bayes.regression_posterior(x_reg, y_reg, NOISE, PRIOR_SCALE)
gap = bayes.mean_field_gap(precision=posterior_reg.precision)
cov_ = np.asarray(posterior_reg.cov, np.float64); prec_ = np.asarray(posterior_reg.precision, np.float64)
forward_gap = 0.5 * np.sum(np.log(np.diag(cov_))) - 0.5 * np.linalg.slogdet(cov_)[1]
reverse_width = float(np.min(np.sqrt(1 / (np.diag(prec_) * np.diag(cov_)))))
'''
seeds = sys.argv[1:]
for s in seeds:
    os.environ["KLBOOK_SEED"] = s
    g = {}
    exec(setup, g)
    exec(reg, g)
    out = dict(seed=int(s), gap=float(g["gap"]), forward_gap=float(g["forward_gap"]), reverse_width=g["reverse_width"])
    if os.environ.get("REG_ONLY"):
        print("RESULT", json.dumps(out), flush=True); continue
    g["fails"], g["failtext"] = [], []
    exec(body, g)
    sp, sump = g["spread"], g["sum_predicted"]
    out.update(fails=g["failtext"], sum_mf=sp["mean field"][0], sum_nuts=sp["NUTS"][0], diff_nuts=sp["NUTS"][1],
               sum_full=sp["full rank"][0], sum_pred=sump, sum_check=sp["mean field"][0] / sump - 1,
               diff_ratio=sp["mean field"][1] / sp["NUTS"][1], sum_ratio=sp["mean field"][0] / sp["NUTS"][0],
               ratio_mf=g["ratio_mf"].tolist(), ratio_pred=g["ratio_predicted"].tolist(),
               mf_sd=g["sd_mf"].tolist(), nuts_sd=g["nuts_sd"].tolist(),
               ess=float(g["ess"].min()), rhat=float(g["rhat"].max()), div=g["divergences"], full_dev=g["full_dev"],
               mean_dev=g["mean_dev"], ll_diff=g["ll_diff"], share_sum=g["share_sum"], share_diff=g["share_diff"],
               weights_corr=g["weights_corr"], multiple_r=g["multiple_r"].tolist(),
               pred_full=(1 / np.sqrt(np.diag(np.linalg.inv(g["covs"]["full rank"])))).tolist(),
               mean_dev_w={n: ((g["means"][n] - g["nuts_mean"]) / g["nuts_sd"]).tolist() for n in ("full rank", "mean field")},
               nuts_mean=g["nuts_mean"].tolist())
    print("RESULT", json.dumps(out), flush=True)
