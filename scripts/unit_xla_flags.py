"""Print the XLA flags under which the unit tests compile: XLA's CPU optimisations off.

The unit tests (``make test-unit`` and the lowest-versions layer) check klbook's mathematics, not
XLA's optimiser, and most of their time goes to compiling hundreds of small programs once each.
With LLVM's optimisation level 0 and XLA's older CPU emitters they compile about twice as fast
(the 24 slowest unit tests: 164 s with XLA's defaults, 73 s with both flags, 138 s with the first
alone, on this 2-core machine). A result that moves under these flags is one a GPU or another CPU
could move too, so the tests' tolerances must (and do) allow for it. The notebook and seed layers
keep XLA's defaults: they reproduce the stored outputs as a reader's machine computes them.

An XLA that does not know a flag aborts at start-up, and the flags differ between versions (the
lowest allowed jaxlib has no ``xla_cpu_use_fusion_emitters``: its CPU emitters are the old ones
already), so each candidate is tried in a throw-away process first and only the accepted ones are
printed, after any ``XLA_FLAGS`` already set.

Usage: ``XLA_FLAGS="$(python scripts/unit_xla_flags.py)" python -m pytest tests``
"""

from __future__ import annotations

import os
import subprocess
import sys

CANDIDATES = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
PROBE = "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"


def accepted(flag: str) -> bool:
    """Whether this interpreter's XLA starts with ``flag`` (an unknown flag aborts the process)."""
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, timeout=300).returncode == 0


def flags() -> str:
    return " ".join([os.environ.get("XLA_FLAGS", "").strip()] + [f for f in CANDIDATES if accepted(f)]).strip()


if __name__ == "__main__":
    print(flags())
