"""The practitioner's page (book/practitioner.md) runs as written, and says what it shows.

Its ```python blocks run in order in one fresh interpreter (a reader's session: no test
configuration, JAX as it ships), on the CPU. Checks appended after them hold the page to its
words: the minibatch fit lands on the exact posterior, the model-and-guide ledger has one term
per site and the same posterior, the sweep's beliefs widen with the rate weight, and each
mistake on the page is refused with a named error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "practitioner.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)

CHECKS = """
# -- the page's claims (tests/test_practitioner_page.py) --
# the data-parallel fit (one device here) lands on the sample mean: Adam's jitter at step 0.05
# with a batch of 64 (gradient noise sd 1/8) stays well inside 0.2
assert abs(float(result_dev.params) - float(x_dev.mean())) < 0.2, (float(result_dev.params), float(x_dev.mean()))
assert set(out.terms) == {"rate", "distortion", "inputs"} and out.dropped == ("x", "y")
fit_loc, fit_scale = float(result_minibatch.params["loc"]), float(jnp.exp(result_minibatch.params["log_scale"]))
sd = float(jnp.sqrt(post_var))
# Adam on a decaying step ends within a fraction of the posterior sd of the optimum (measured:
# the mean within 0.3 sd, the sd within 7%); the initial belief (0 +- 0.37) is ~100 sds away.
assert abs(fit_loc - float(post_mean)) < 0.5 * sd, (fit_loc, float(post_mean), sd)
assert abs(fit_scale - sd) < 0.25 * sd, (fit_scale, sd)
assert {"loss", "w", "y"} <= set(result.history)
assert abs(float(w.constrained(result.params)["w_auto_loc"]) - float(post_mean)) < 0.5 * sd
scales = np.exp(np.asarray(models["log_scale"]))
# The tempered posterior's sd at each weight beta: 1 / sqrt(beta / 10**2 + sum x^2 / 0.5**2 / ... )
exact = np.sqrt(1.0 / (1 / 10.0**2 + float(jnp.sum(x**2)) / 0.5**2 / betas))
assert np.all(np.abs(scales / exact - 1) < 0.25), (scales, exact)
assert len(printed_errors) == 3, printed_errors
"""


def test_the_page_has_its_sections():
    text = PAGE.read_text(encoding="utf-8")
    for heading in (
        "## Install",
        "## The recipe on a model of your own",
        "## Minibatches and `data_size`",
        "## From a NumPyro model and guide to the ledger",
        "## A sweep of weights",
        "## What errors to expect",
        "## More than one device",
    ):
        assert heading in text, f"the practitioner's page lost its section {heading!r}"
    assert len(BLOCKS) >= 5


def test_the_page_runs_and_its_claims_hold():
    source = "\n".join(BLOCKS)
    # Keep the minibatch fit's result under its own name before the next section reuses `result`,
    # and collect the printed errors of the last block.
    source = source.replace(
        "result = klbook.train.fit(jax.random.key(2)",
        "result = result_minibatch = klbook.train.fit(jax.random.key(2)",
        1,
    )
    source = source.replace(
        'print(f"{attempt}: {type(err).__name__}',
        'printed_errors.append(attempt); print(f"{attempt}: {type(err).__name__}',
        1,
    )
    source = "printed_errors = []\n" + source + CHECKS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert result.returncode == 0, f"the practitioner's page failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
