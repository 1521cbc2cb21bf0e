"""Input checks shared by every public function: clear errors that name the problem.

Checks on *values* (finite, inside [0, 1], ...) only run on concrete arrays; inside
``jax.jit`` the values are tracers and cannot be inspected, so only the static checks
(shapes, types) apply there.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds actual numbers (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(x: Any, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if a concrete array holds NaN or ±inf."""
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[:3]
        raise ValueError(f"{what} must be finite; got non-finite values such as {bad.tolist()}")


def check_probability(x: Any, what: str) -> None:
    """Raise ``ValueError`` if a concrete array has entries outside [0, 1] (or NaN)."""
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if np.any(np.isnan(a)):
        raise ValueError(f"{what} must be probabilities in [0, 1]; got NaN")
    if np.any((a < 0) | (a > 1)):
        bad = a[(a < 0) | (a > 1)].ravel()[:3]
        raise ValueError(f"{what} must be probabilities in [0, 1]; got values such as {bad.tolist()}")


def check_simplex(x: Any, what: str, atol: float = 1e-5) -> None:
    """Raise ``ValueError`` if the last axis of a concrete array is not a probability vector."""
    check_probability(x, what)
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x, dtype=np.float64)
    sums = a.sum(-1)
    if not np.allclose(sums, 1.0, atol=atol * max(1, a.shape[-1])):
        raise ValueError(
            f"{what} must sum to 1 along its last axis; got sums such as {np.ravel(sums)[:3].tolist()}"
        )


def check_positive(x: Any, what: str) -> None:
    """Raise ``ValueError`` if a concrete array has entries that are not > 0 (or not finite)."""
    check_finite(x, what)
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if np.any(a <= 0):
        bad = a[a <= 0].ravel()[:3]
        raise ValueError(f"{what} must be positive; got values such as {bad.tolist()}")


def broadcast_batch(shape_p: tuple, shape_q: tuple, what_p: str = "p", what_q: str = "q") -> tuple:
    """The broadcast of two batch shapes, or a ``ValueError`` naming both."""
    try:
        return tuple(np.broadcast_shapes(tuple(shape_p), tuple(shape_q)))
    except ValueError:
        raise ValueError(
            f"batch shapes of {what_p} {tuple(shape_p)} and {what_q} {tuple(shape_q)} do not broadcast"
        ) from None
