"""The README's Python examples run as a reader would copy them.

Every ```python block of README.md runs in a fresh interpreter (a reader's session: no test
configuration, JAX rank promotion as JAX ships it), on the CPU, and must exit cleanly. The recipe
example (two NumPyro worlds, ``klbook.recipe.kl_objective`` and ``klbook.train.fit``) must also
land where its comment says: Q's mean and spread at the data's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(
    r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
)


def _run(source: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, f"README example failed:\n{source}\n{result.stderr[-4000:]}"
    return result.stdout


def test_the_readme_has_the_examples():
    assert any("klbook.kl(" in b for b in BLOCKS), "the README lost its kl example"
    recipe = [b for b in BLOCKS if "kl_objective" in b and "klbook.train.fit" in b]
    assert recipe, "the README lost its worked recipe example (two worlds, kl_objective, fit)"
    code = [line for line in recipe[0].splitlines() if line.strip() and not line.startswith("#")]
    assert len(code) <= 20, f"the worked example should stay short ({len(code)} lines)"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index):
    source = BLOCKS[index]
    if "klbook.train.fit" in source:  # the worked recipe: also check where it lands
        source += (
            "\nassert abs(float(result.params['loc']) - float(x.mean())) < 0.1\n"
            "assert abs(float(jnp.exp(result.params['log_scale'])) - float(x.std())) < 0.1\n"
        )
    _run(source)
