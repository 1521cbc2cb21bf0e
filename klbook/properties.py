r"""The two properties of KL that carry the book, made checkable (chapter 2).

**Non-negativity.** :math:`I[p;q] \ge 0`, with equality only when :math:`p = q`; quantitatively,
Pinsker's inequality :math:`I[p;q] \ge 2\,\mathrm{TV}(p, q)^2` (in nats) bounds it below by the
total variation distance.

**Monotonicity.** Forgetting a variable can only lose evidence, because of the chain rule

.. math:: I[p(x, y); q(x, y)] = I[p(x); q(x)] + \big\langle I[p(y\mid x); q(y\mid x)] \big\rangle_{p(x)},

whose last term is non-negative. This module holds random discrete distributions and joints
for numerical sweeps, the three terms of the chain rule for discrete joint tables, and the
marginal and conditional of a multivariate Gaussian, so that the chapter can check both
properties exactly (with :func:`klbook.kl`) and by sampling (with :func:`klbook.mc_kl`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from klbook._checks import check_finite, check_positive, check_probability, check_simplex, is_concrete
from klbook.divergence import check_key, kl

__all__ = [
    "random_distributions",
    "random_joints",
    "total_variation",
    "rounding_tolerance",
    "ChainRule",
    "chain_rule",
    "mvn_marginal",
    "mvn_conditional",
]


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def random_distributions(
    key, shape: tuple[int, ...], num_outcomes: int, concentration=1.0, zero_prob=None
) -> jnp.ndarray:
    r"""Probability vectors drawn from a symmetric Dirichlet: :math:`p \sim \mathrm{Dir}(\alpha\mathbf 1)`.

    Small ``concentration`` gives peaked vectors (entries near 0), large gives nearly uniform
    ones; an array of concentrations (broadcast against ``shape``) mixes both in one sweep.
    With ``zero_prob``, each outcome is then set to probability exactly zero independently with
    that probability (one outcome, chosen uniformly, is always kept) and the vector renormalised,
    so that sweeps meet the boundary cases :math:`0\log 0 = 0` and :math:`I = \infty`.

    Args:
        key: a JAX PRNG key.
        shape: batch shape of the result.
        num_outcomes: ``K >= 2`` outcomes.
        concentration: :math:`\alpha > 0`, a scalar or an array broadcastable to ``shape``.
        zero_prob: ``None`` (no forced zeros; the draws are then the plain Dirichlet ones) or a
            probability in [0, 1), a scalar or an array broadcastable to ``shape``.

    Returns:
        Array ``[*shape, K]`` whose last axis sums to one.
    """
    check_key(key)
    if _check_count(num_outcomes, "num_outcomes") < 2:
        raise ValueError(f"num_outcomes must be at least 2; got {num_outcomes}")
    check_positive(concentration, "concentration")
    alpha = jnp.broadcast_to(jnp.asarray(concentration, dtype=jnp.float32), tuple(shape))
    dirichlet = dist.Dirichlet(jnp.repeat(alpha[..., None], num_outcomes, axis=-1))
    if zero_prob is None:
        return dirichlet.sample(key)
    check_probability(zero_prob, "zero_prob")
    if is_concrete(zero_prob) and bool(np.any(np.asarray(zero_prob) >= 1.0)):
        raise ValueError(f"zero_prob must be below 1 (one outcome is always kept); got {zero_prob!r}")
    k_dir, k_zero, k_keep = jax.random.split(key, 3)
    p = dirichlet.sample(k_dir)
    rate = jnp.broadcast_to(jnp.asarray(zero_prob, dtype=jnp.float32), tuple(shape))[..., None]
    zero = jax.random.uniform(k_zero, p.shape) < rate  # [*shape, K]
    keep = jax.nn.one_hot(jax.random.randint(k_keep, tuple(shape), 0, num_outcomes), num_outcomes) > 0
    p = jnp.where(zero & ~keep, 0.0, p)
    # The kept outcome can itself have underflowed to 0: fall back to it alone.
    total = jnp.sum(p, -1, keepdims=True)
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), keep.astype(p.dtype))


def random_joints(key, shape: tuple[int, ...], num_x: int, num_y: int, concentration=1.0) -> jnp.ndarray:
    """Random joint tables :math:`p(x, y)`, shape ``[*shape, num_x, num_y]``, summing to one.

    Drawn as :func:`random_distributions` over the ``num_x * num_y`` cells.
    """
    _check_count(num_x, "num_x")
    _check_count(num_y, "num_y")
    flat = random_distributions(key, shape, num_x * num_y, concentration)
    return flat.reshape(tuple(shape) + (num_x, num_y))


def total_variation(p: jnp.ndarray, q: jnp.ndarray) -> jnp.ndarray:
    r"""Total variation distance :math:`\mathrm{TV}(p, q) = \tfrac12 \sum_k |p_k - q_k|` over the last axis.

    Raises:
        ValueError: if either argument is not a probability vector along its last axis.
    """
    check_simplex(p, "p")
    check_simplex(q, "q")
    return 0.5 * jnp.sum(jnp.abs(jnp.asarray(p) - jnp.asarray(q)), axis=-1)


def rounding_tolerance(p: jnp.ndarray, q: jnp.ndarray) -> jnp.ndarray:
    r"""How far a float32 :func:`klbook.kl` between Categoricals can sit from the true value.

    The model: :math:`\varepsilon` is float32's machine epsilon (twice the unit roundoff
    :math:`u`); each logarithm is within one ulp (relative error :math:`\le\varepsilon`), the
    difference and the product in :math:`t_k = p_k(\log p_k - \log q_k)` are rounded once each,
    and a sum of :math:`K` terms is within :math:`(K-1)u\sum_k|t_k|`. With
    :math:`S = \sum_k p_k(|\log p_k| + |\log q_k|) \ge \sum_k |t_k|` that gives an error of at
    most :math:`(2 + \tfrac{K-1}{2})\varepsilon S \le (K+2)\varepsilon S`. Stored vectors sum to
    one only up to rounding, and for vectors that do not, Gibbs' inequality reads
    :math:`\sum_k p_k \log(p_k/q_k) \ge \sum_k p_k - \sum_k q_k`: so add
    :math:`|\sum_k p_k - \sum_k q_k|` and :math:`(K+2)\varepsilon` for the float32 error in that
    difference. The tolerance is

    .. math:: (K + 2)\,\varepsilon\,(S + 1) + \Big|\sum_k p_k - \sum_k q_k\Big| .

    Outcomes with :math:`p_k = 0` contribute nothing (:math:`0\log 0 = 0`); those with
    :math:`p_k > 0 = q_k` are left out of :math:`S`, since the divergence is then exactly
    ``inf``. Chapter 2 uses it for non-negativity, Pinsker's inequality and the chain rule.

    Args:
        p, q: probability vectors over the last axis, batch shapes broadcastable.

    Returns:
        The tolerance in nats, shape the broadcast batch shape.
    """
    p, q = jnp.broadcast_arrays(jnp.asarray(p), jnp.asarray(q))
    k = p.shape[-1]
    eps = float(jnp.finfo(jnp.float32).eps)
    abs_log = lambda a: jnp.abs(jnp.log(jnp.where(a > 0, a, 1.0)))  # noqa: E731
    counted = (p > 0) & (q > 0)
    size = jnp.sum(jnp.where(counted, p * (abs_log(p) + abs_log(q)), 0.0), -1)
    return (k + 2) * eps * (size + 1.0) + jnp.abs(jnp.sum(p, -1) - jnp.sum(q, -1))


class ChainRule(NamedTuple):
    """The three terms of the chain rule for a pair of joints, in nats (same batch shape)."""

    joint: jnp.ndarray
    """:math:`I[p(x, y); q(x, y)]`."""
    marginal: jnp.ndarray
    """:math:`I[p(x); q(x)]`."""
    conditional: jnp.ndarray
    r""":math:`\langle I[p(y\mid x); q(y\mid x)]\rangle_{p(x)}`, non-negative."""


def _conditional(joint, marginal):
    # p(y | x) = p(x, y) / p(x); rows with p(x) = 0 carry no weight, so any distribution will do.
    safe = jnp.where(marginal[..., None] > 0, joint / jnp.where(marginal > 0, marginal, 1.0)[..., None], 1.0)
    return safe / jnp.sum(safe, -1, keepdims=True)


def chain_rule(p_joint: jnp.ndarray, q_joint: jnp.ndarray) -> ChainRule:
    r"""Each term of :math:`I[p(x,y);q(x,y)] = I[p(x);q(x)] + \langle I[p(y|x);q(y|x)]\rangle_{p(x)}`.

    Every term is an exact :func:`klbook.kl` between Categoricals: over the ``X*Y`` cells, over
    ``x`` and, for each ``x``, over ``y``. The identity is then a check, not an assumption.

    Args:
        p_joint, q_joint: joint tables ``[..., X, Y]`` (each sums to one over its last two
            axes), batch shapes broadcastable.

    Returns:
        :class:`ChainRule` of arrays with the broadcast batch shape.

    Raises:
        ValueError: if a table is not two-dimensional per example, the tables' shapes differ in
            their last two axes, or an entry is not a probability.
    """
    p, q = jnp.asarray(p_joint), jnp.asarray(q_joint)
    if p.ndim < 2 or q.ndim < 2 or p.shape[-2:] != q.shape[-2:]:
        raise ValueError(
            f"p_joint and q_joint must be tables [..., X, Y] of the same X and Y; got {p.shape} and {q.shape}"
        )
    for table, name in ((p, "p_joint"), (q, "q_joint")):
        check_finite(table, name)
        check_simplex(table.reshape(table.shape[:-2] + (-1,)), name)
    # CategoricalProbs: what dist.Categorical(probs=...) returns (typed as a Distribution, not Optional)
    flat = lambda t: dist.CategoricalProbs(probs=t.reshape(t.shape[:-2] + (-1,)))  # noqa: E731
    joint = kl(flat(p), flat(q))
    px, qx = jnp.sum(p, -1), jnp.sum(q, -1)
    marginal = kl(dist.CategoricalProbs(probs=px), dist.CategoricalProbs(probs=qx))
    per_x = kl(dist.CategoricalProbs(probs=_conditional(p, px)), dist.CategoricalProbs(probs=_conditional(q, qx)))
    weighted = jnp.where(px > 0, px * jnp.where(px > 0, per_x, 0.0), 0.0)
    return ChainRule(joint, marginal, jnp.sum(weighted, -1))


def _mvn_loc_cov(d: dist.MultivariateNormal, name: str) -> tuple[jax.Array, jax.Array]:
    if not isinstance(d, dist.MultivariateNormal):
        raise TypeError(f"{name} must be a numpyro MultivariateNormal; got {type(d).__name__}")
    return jnp.asarray(d.loc), jnp.asarray(d.covariance_matrix)


def _check_split(d, m: int) -> int:
    k = d.event_shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < k:
        raise ValueError(f"the first m coordinates must leave some behind: need 1 <= m < {k}; got {m!r}")
    return k


def mvn_marginal(d: dist.MultivariateNormal, m: int = 1) -> dist.MultivariateNormal:
    r"""The marginal of the first ``m`` coordinates: :math:`\mathcal N(\mu_a, \Sigma_{aa})`.

    Args:
        d: a multivariate normal over ``k`` coordinates.
        m: how many leading coordinates to keep, ``1 <= m < k``.
    """
    loc, cov = _mvn_loc_cov(d, "d")
    _check_split(d, m)
    return dist.MultivariateNormal(loc[..., :m], covariance_matrix=cov[..., :m, :m])


def mvn_conditional(d: dist.MultivariateNormal, x_a: jnp.ndarray) -> dist.MultivariateNormal:
    r"""The conditional of the remaining coordinates given the first ``m`` equal ``x_a``.

    .. math:: \mathcal N\big(\mu_b + \Sigma_{ba}\Sigma_{aa}^{-1}(x_a - \mu_a),\;
              \Sigma_{bb} - \Sigma_{ba}\Sigma_{aa}^{-1}\Sigma_{ab}\big)

    (e.g. Rasmussen & Williams 2006, eq. A.6).

    Args:
        d: a multivariate normal over ``k`` coordinates (no batch shape).
        x_a: values of the first ``m`` coordinates, shape ``[..., m]``.

    Returns:
        A MultivariateNormal over ``k - m`` coordinates with batch shape ``x_a.shape[:-1]``.
    """
    loc, cov = _mvn_loc_cov(d, "d")
    if d.batch_shape != ():
        raise ValueError(f"mvn_conditional takes one distribution; got batch shape {d.batch_shape}")
    check_finite(x_a, "x_a")
    x_a = jnp.asarray(x_a, dtype=loc.dtype)
    m = x_a.shape[-1] if x_a.ndim else 0
    _check_split(d, m)
    gain = jnp.linalg.solve(cov[:m, :m], cov[:m, m:]).T  # Sigma_ba Sigma_aa^-1   [k-m, m]
    shift = jnp.einsum("bm,...m->...b", gain, x_a - jnp.broadcast_to(loc[:m], x_a.shape))  # [..., k-m]
    mean = jnp.broadcast_to(loc[m:], shift.shape) + shift
    cond_cov = cov[m:, m:] - gain @ cov[:m, m:]
    cond_cov = 0.5 * (cond_cov + cond_cov.T)
    return dist.MultivariateNormal(mean, covariance_matrix=jnp.broadcast_to(cond_cov, mean.shape[:-1] + cond_cov.shape))
