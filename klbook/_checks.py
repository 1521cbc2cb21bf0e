r"""Input checks shared by every public function: clear errors that name the problem.

Two kinds of function live here.

* ``check_*`` raise a ``ValueError`` naming the problem when the argument holds actual numbers.
  Inside ``jax.jit`` (or ``grad``, ``vmap``) the values are tracers and cannot be inspected, so
  these checks return silently there.
* ``*_ok`` return a boolean array saying, element by element, whether the value is valid. They
  work on tracers too, so a closed form can turn an invalid parameter into NaN under ``jit``
  instead of a finite wrong number (see :func:`klbook.kl`).

**Checks that know float32.** A probability computed in floating point may land a few units
of roundoff outside [0, 1], and a probability vector may sum to 1 only up to rounding (a GPU
adds in another order than a CPU). Both are valid. The allowance comes from the machine
epsilon ``eps`` of the array's dtype, floored at float32's (JAX computes in float32 by default,
so values often carry float32 rounding even when handed over as float64):

* a single probability may lie in :math:`[-4\,\mathrm{eps},\ 1 + 4\,\mathrm{eps}]`: two ulps
  above 1 (an ulp at 1 is ``eps``) with a margin of 2;
* a vector of ``n`` probabilities may have entries in :math:`[-4n\,\mathrm{eps},\ 1 + 4n\,
  \mathrm{eps}]` and a sum within :math:`4n\,\mathrm{eps}` of 1. Normalising by a sum of
  ``n`` terms computed in any order is off by at most :math:`n u` with :math:`u =
  \mathrm{eps}/2` (Higham 2002, *Accuracy and Stability of Numerical Algorithms*, §4.2), and a
  few more units per entry from a division or an ``exp``; together at most :math:`n\,
  \mathrm{eps}`, allowed with a margin of 4.

For float32 and ``n = 3`` that is about 1.4e-6: far below any real error (1.5, a negative
entry -0.1, a sum of 0.4), which is refused with the same message as before.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.core  # jax imports it but deletes the name: import it for the checker
import jax.numpy as jnp
import numpy as np

#: Allowed rounding, in units of ``eps`` per entry: two ulps with a margin of 2 (see above).
ROUNDING_ULPS = 4


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds actual numbers (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def rounding_eps(x: Any) -> float:
    """Machine epsilon for rounding allowances: ``x``'s float dtype, floored at float32's."""
    eps = float(jnp.finfo(jnp.float32).eps)
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        eps = max(eps, float(jnp.finfo(dtype).eps))
    return eps


def probability_tolerance(x: Any) -> float:
    """How far outside [0, 1] a single computed probability may lie: ``4 eps``."""
    return ROUNDING_ULPS * rounding_eps(x)


def simplex_tolerance(x: Any) -> float:
    """How far from 1 the sum of a probability vector of length ``n`` may lie: ``4 n eps``."""
    n = int(np.shape(x)[-1]) if np.ndim(x) else 1
    return ROUNDING_ULPS * max(n, 1) * rounding_eps(x)


# ------------------------------------------------------------------------------------------
# Element-wise validity masks: work on tracers (for NaN under jit) and on concrete arrays.


def finite_ok(x: Any) -> jnp.ndarray:
    """``isfinite(x)``, elementwise (integers are always finite)."""
    return jnp.isfinite(jnp.asarray(x))


def positive_ok(x: Any) -> jnp.ndarray:
    """``x`` is finite and strictly positive, elementwise."""
    x = jnp.asarray(x)
    return jnp.isfinite(x) & (x > 0)


def nonnegative_ok(x: Any) -> jnp.ndarray:
    """``x`` is finite and at least 0, elementwise."""
    x = jnp.asarray(x)
    return jnp.isfinite(x) & (x >= 0)


def count_ok(x: Any) -> jnp.ndarray:
    """``x`` is a finite non-negative whole number, elementwise."""
    x = jnp.asarray(x)
    return nonnegative_ok(x) & (x == jnp.round(x))


def probability_ok(x: Any, tol: float | None = None) -> jnp.ndarray:
    """``x`` lies in [0, 1] up to rounding (``tol``, default :func:`probability_tolerance`)."""
    tol = probability_tolerance(x) if tol is None else tol
    x = jnp.asarray(x)
    return (x >= -tol) & (x <= 1 + tol)  # NaN compares False


def simplex_ok(x: Any) -> jnp.ndarray:
    """The last axis of ``x`` is a probability vector up to rounding; shape ``x.shape[:-1]``."""
    tol = simplex_tolerance(x)
    x = jnp.asarray(x)
    entries = jnp.all(probability_ok(x, tol), axis=-1)
    return entries & (jnp.abs(jnp.sum(x, axis=-1) - 1) <= tol)


# ------------------------------------------------------------------------------------------
# Eager checks: raise a ValueError naming the problem when the values are concrete.


def check_finite(x: Any, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if a concrete array holds NaN or ±inf."""
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = a[~np.isfinite(a)].ravel()[:3]
        raise ValueError(f"{what} must be finite; got non-finite values such as {bad.tolist()}")


def check_probability(x: Any, what: str) -> None:
    """Raise ``ValueError`` if a concrete array has entries outside [0, 1] (or NaN).

    Entries up to :func:`probability_tolerance` outside (float rounding) are accepted.
    """
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    _check_probability(a, what, probability_tolerance(a))


def _check_probability(a: np.ndarray, what: str, tol: float) -> None:
    wide = a.astype(np.float64)
    if np.any(np.isnan(wide)):
        raise ValueError(f"{what} must be probabilities in [0, 1]; got NaN")
    outside = (wide < -tol) | (wide > 1 + tol)
    if np.any(outside):
        bad = a[outside].ravel()[:3]
        raise ValueError(f"{what} must be probabilities in [0, 1]; got values such as {bad.tolist()}")


def check_simplex(x: Any, what: str, atol: float | None = None) -> None:
    """Raise ``ValueError`` if the last axis of a concrete array is not a probability vector.

    Args:
        x: array ``[..., n]``.
        what: the name used in the message.
        atol: per-entry allowance on the sum (the sum may be off by ``atol * n``); by default
            the float rounding allowance :func:`simplex_tolerance` (``4 n eps``).
    """
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    n = int(a.shape[-1]) if a.ndim else 1
    tol = simplex_tolerance(a) if atol is None else atol * max(1, n)
    _check_probability(a, what, tol)
    sums = a.astype(np.float64).sum(-1)
    if np.any(np.abs(sums - 1.0) > tol):
        raise ValueError(f"{what} must sum to 1 along its last axis; got sums such as {np.ravel(sums)[:3].tolist()}")


def check_positive(x: Any, what: str) -> None:
    """Raise ``ValueError`` if a concrete array has entries that are not > 0 (or not finite)."""
    check_finite(x, what)
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if np.any(a <= 0):
        bad = a[a <= 0].ravel()[:3]
        raise ValueError(f"{what} must be positive; got values such as {bad.tolist()}")


def check_nonnegative(x: Any, what: str) -> None:
    """Raise ``ValueError`` if a concrete array has entries below 0 (or not finite)."""
    check_finite(x, what)
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if np.any(a < 0):
        bad = a[a < 0].ravel()[:3]
        raise ValueError(f"{what} must be non-negative; got values such as {bad.tolist()}")


def check_count(x: Any, what: str) -> None:
    """Raise ``ValueError`` unless a concrete array holds non-negative whole numbers."""
    check_nonnegative(x, what)
    if x is None or not is_concrete(x):
        return
    a = np.asarray(x)
    if np.any(a != np.round(a)):
        bad = a[a != np.round(a)].ravel()[:3]
        raise ValueError(f"{what} must be a whole number; got values such as {bad.tolist()}")


def broadcast_batch(shape_p: tuple, shape_q: tuple, what_p: str = "p", what_q: str = "q") -> tuple:
    """The broadcast of two batch shapes, or a ``ValueError`` naming both."""
    try:
        return tuple(np.broadcast_shapes(tuple(shape_p), tuple(shape_q)))
    except ValueError:
        raise ValueError(
            f"batch shapes of {what_p} {tuple(shape_p)} and {what_q} {tuple(shape_q)} do not broadcast"
        ) from None
