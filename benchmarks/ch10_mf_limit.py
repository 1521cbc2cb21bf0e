"""Chapter 10: the seed-independent limits of the logistic regression (data and split are fixed).

The exact mean-field optimum of the posterior (reverse KL, float64, L-BFGS on 2 x 32768 fixed antithetic
draws) and the posterior covariance from 4 x 20000 NUTS draws, with the best mean-field member of a Gaussian
with that covariance (eq. ch10_gap). Run: .venv/bin/python benchmarks/ch10_mf_limit.py [draws per chain]
"""
import jax, math, json, sys
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, scipy.optimize
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from sklearn.datasets import load_breast_cancer
from klbook import bayes
cancer = load_breast_cancer()
FEATURES = ["mean radius", "worst radius", "mean texture", "mean concave points"]
columns = [list(cancer.feature_names).index(f) for f in FEATURES]
rows_all = np.arange(len(cancer.target))
train_rows = rows_all[rows_all % 3 != 0]
raw = cancer.data[:, columns]
standard = (raw - raw[train_rows].mean(0)) / raw[train_rows].std(0)
inputs = np.concatenate([np.ones((len(raw), 1)), standard], axis=1)
labels = cancer.target.astype(np.float64)
X, Y = jnp.asarray(inputs[train_rows]), jnp.asarray(labels[train_rows])
SUM = np.eye(5)[1] + np.eye(5)[2]
def logpost(t):
    logits = X @ t
    return jnp.sum(Y * logits - jnp.logaddexp(0, logits)) + jnp.sum(dist.Normal(0, 2.0).log_prob(t))
eps = jax.random.normal(jax.random.key(0), (1 << 15, 5), jnp.float64)
eps = jnp.concatenate([eps, -eps])
@jax.jit
def negelbo(p):
    mu, logsd = p[:5], p[5:]
    t = mu + jnp.exp(logsd) * eps
    return -(jnp.mean(jax.vmap(logpost)(t)) + jnp.sum(logsd))
g = jax.jit(jax.grad(negelbo))
res = scipy.optimize.minimize(lambda p: float(negelbo(jnp.asarray(p))), np.zeros(10), jac=lambda p: np.asarray(g(jnp.asarray(p))),
                              method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10})
sd_mf = np.exp(res.x[5:])
print("exact MF optimum sd", sd_mf.round(4), "sum sd", math.sqrt(sd_mf[1]**2 + sd_mf[2]**2), res.message)
# long chains
mcmc = MCMC(NUTS(bayes.joint_model), num_warmup=1000, num_samples=int(sys.argv[1]) if len(sys.argv) > 1 else 20000,
            num_chains=4, chain_method="vectorized", progress_bar=False)
mcmc.run(jax.random.key(123), dist.Normal(jnp.zeros(5), 2.0).to_event(1), bayes.logistic,
         jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
d = np.asarray(mcmc.get_samples()["theta"], np.float64)
C = np.cov(d.T); P = np.linalg.inv(C)
pred = 1 / np.sqrt(np.diag(P))
print("long chains sd", np.sqrt(np.diag(C)).round(4), "Gaussian-MF sd", pred.round(4),
      "sum: nuts", math.sqrt(SUM @ C @ SUM), "pred", math.sqrt(pred[1]**2 + pred[2]**2))
print("RESULT", json.dumps(dict(mf_exact=sd_mf.tolist(), sum_mf_exact=math.sqrt(sd_mf[1]**2 + sd_mf[2]**2),
      pred=pred.tolist(), sum_pred=math.sqrt(pred[1]**2 + pred[2]**2), sum_nuts=math.sqrt(SUM @ C @ SUM),
      diff_nuts=math.sqrt((SUM - 2*np.eye(5)[2]) @ C @ (SUM - 2*np.eye(5)[2])))))
