"""Comparing two Monte Carlo estimators of the same expectation (klbook's objectives against NumPyro's).

Shared by the unit tests that cross-check a module's objective with ``Trace_ELBO`` and its kin:
draw the value and the gradient under many independent keys, then ask that the two samples' means
agree within 5 combined standard errors, component by component.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

REPLICATES = 300  # independent keys per estimator


def value_and_grad_draws(fn, params, seed: int, replicates: int = REPLICATES) -> tuple[np.ndarray, np.ndarray]:
    """``fn(params, key)`` and its gradient under ``replicates`` keys: values ``[R]``, flat gradients ``[R, P]``."""
    keys = jax.random.split(jax.random.key(seed), replicates)
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0)))(params, keys)
    flat = jnp.concatenate([g.reshape(replicates, -1) for g in jax.tree.leaves(grads)], axis=1)
    return np.asarray(values, np.float64), np.asarray(flat, np.float64)


def same_expectation(a, b, what: str) -> None:
    """Means of two independent samples (leading axis) agree within 5 combined standard errors, per component."""
    gap = np.abs(a.mean(0) - b.mean(0))
    se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
    assert np.all(gap < 5 * se + 1e-6), (what, a.mean(0), b.mean(0), se)


def same_estimator(ours, theirs, params) -> None:
    """``ours`` and ``theirs`` (``fn(params, key) -> scalar``) agree in value and gradient on average
    (:func:`same_expectation` over independent keys), and the gradient is not constant, so the check can fail."""
    for a, b, what in zip(
        value_and_grad_draws(ours, params, 1),
        value_and_grad_draws(theirs, params, 2),
        ("value", "gradient"),
        strict=True,
    ):
        same_expectation(a, b, what)
    assert np.std(value_and_grad_draws(ours, params, 3)[1], axis=0).max() > 0
