r"""Small networks and the heads that turn their outputs into distributions.

Every learned world in the book is a network followed by a *head*: the network maps an input
to a vector of unconstrained numbers, and the head reads that vector as the parameters of a
NumPyro distribution, e.g. an encoder :math:`e(z \mid x) = \mathcal{N}(z;\, \mu(x),
\mathrm{diag}\,\sigma^2(x))` (chapter 6) or a decoder :math:`d(x \mid z) = \mathrm{Binomial}(x;\,
16,\, \mathrm{sigmoid}(\ell(z)))` for the 8×8 digits' pixel counts.

Networks are Equinox modules and, as in Equinox, **unbatched**: ``net(x)`` maps one example
``[in_size]`` to ``[out_size]``. Batch at the call site with ``jax.vmap``; the heads accept any
leading batch shape::

    net = mlp(key, 64, 2 * 8)                  # x [64] -> (mu, raw sigma) [2 * 8]
    q_z = gaussian_head(jax.vmap(net)(x))      # x [B, 64]: batch_shape (B,), event_shape (8,)

Heads return distributions whose ``event_shape`` covers the last ``event_dims`` axes (one
vector per example by default), so ``log_prob`` is one number per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from klbook._checks import check_finite, check_positive, is_concrete
from klbook.divergence import check_key

if TYPE_CHECKING:  # shape annotations for readers and type checkers; jaxtyping is optional
    from jaxtyping import Array, Float, Int

__all__ = [
    "mlp",
    "gaussian_head",
    "bernoulli_head",
    "categorical_head",
    "binomial_head",
    "diagonal_normal",
    "categorical_probs",
]


def _size(value, what: str) -> int | Literal["scalar"]:
    if value == "scalar":
        return "scalar"
    return _count(value, what, " (or 'scalar')")


def _count(value, what: str, alternative: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer{alternative}; got {value!r}")
    return int(value)


def mlp(
    key: jax.Array,
    in_size: int | Literal["scalar"],
    out_size: int | Literal["scalar"],
    *,
    width: int = 64,
    depth: int = 2,
    activation: Callable = jax.nn.relu,
    final_activation: Callable = lambda x: x,
) -> eqx.nn.MLP:
    r"""A multilayer perceptron ``[in_size] -> [out_size]`` with ``depth`` hidden layers.

    .. math:: h_0 = x,\quad h_{i} = \mathrm{act}(W_i h_{i-1} + b_i)\ (i = 1..\mathrm{depth}),\quad
       y = \mathrm{final}(W h_{\mathrm{depth}} + b).

    Unbatched (use ``jax.vmap(net)(x)`` for ``x [B, in_size]``); an ``eqx.nn.MLP``, so it is a
    pytree of parameters :func:`klbook.train.fit` can train directly.

    Args:
        key: JAX PRNG key for the initial weights.
        in_size: input size, or ``"scalar"`` for a scalar input.
        out_size: output size, or ``"scalar"`` for a scalar output.
        width: hidden layer width.
        depth: number of hidden layers (0 gives a linear map).
        activation: hidden nonlinearity.
        final_activation: applied to the output (identity by default: heads expect raw numbers).
    """
    check_key(key)
    in_size, out_size = _size(in_size, "in_size"), _size(out_size, "out_size")
    width = _count(width, "width")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer; got {depth!r}")
    if not callable(activation) or not callable(final_activation):
        raise TypeError("activation and final_activation must be callables such as jax.nn.relu")
    return eqx.nn.MLP(in_size, out_size, width, int(depth), activation, final_activation, key=key)


def _outputs(x, what: str, min_ndim: int) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what} must be a floating-point array; got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{what} needs at least {min_ndim} axes for these event_dims; got shape {x.shape}")
    check_finite(x, what)
    return x


def _event_dims(event_dims: int) -> int:
    if isinstance(event_dims, bool) or not isinstance(event_dims, (int, np.integer)) or event_dims < 0:
        raise ValueError(f"event_dims must be a non-negative integer; got {event_dims!r}")
    return int(event_dims)


def gaussian_head(
    outputs: Float[Array, "*batch 2*d"] | Float[Array, "*batch d"],
    *,
    scale: float | Float[Array, "*batch d"] | None = None,
    event_dims: int = 1,
    min_scale: float = 1e-4,
) -> dist.Distribution:
    r"""Diagonal Gaussian :math:`\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2)` from raw outputs.

    Without ``scale``, the last axis of ``outputs`` is split in half as
    :math:`(\mu, s)` and :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}` (positive,
    smooth, never below ``min_scale``). With ``scale`` (fixed or learned elsewhere) the outputs
    are :math:`\mu` alone. Chapters 4–7 and 10–11.

    Args:
        outputs: ``[*batch, 2 d]`` (or ``[*batch, d]`` with ``scale``).
        scale: positive standard deviation broadcasting against ``[*batch, d]``, or ``None``.
        event_dims: trailing axes that form one event (``to_event``); 1 = one vector per example.
        min_scale: floor added to the learned standard deviation.

    Returns:
        ``Normal(mu, sigma).to_event(event_dims)``: batch ``*batch``, event ``[d]`` by default.
    """
    event_dims = _event_dims(event_dims)
    outputs = _outputs(outputs, "outputs", max(event_dims, 1))
    if scale is None:
        check_positive(min_scale, "min_scale")
        if outputs.shape[-1] % 2:
            raise ValueError(
                f"gaussian_head splits the last axis into (loc, scale) halves; it must be even, got {outputs.shape}"
            )
        loc, raw = jnp.split(outputs, 2, axis=-1)
        sigma = jax.nn.softplus(raw) + min_scale
    else:
        check_positive(scale, "scale")
        loc, sigma = outputs, jnp.asarray(scale, outputs.dtype)
        if sigma.ndim > loc.ndim:
            raise ValueError(f"scale of shape {sigma.shape} has more axes than the loc {loc.shape}")
        sigma = jnp.broadcast_to(sigma.reshape((1,) * (loc.ndim - sigma.ndim) + sigma.shape), loc.shape)
    return dist.Normal(loc, sigma).to_event(event_dims)


def bernoulli_head(logits: Float[Array, "*batch d"], *, event_dims: int = 1) -> dist.Distribution:
    r"""Independent Bernoulli pixels :math:`p(x) = \prod_i \sigma(\ell_i)^{x_i}(1 - \sigma(\ell_i))^{1 - x_i}`.

    For binarised images (chapters 6–8). ``logits [*batch, d]`` are unconstrained.

    Returns:
        ``BernoulliLogits(logits).to_event(event_dims)``.
    """
    event_dims = _event_dims(event_dims)
    logits = _outputs(logits, "logits", event_dims)
    return dist.BernoulliLogits(logits).to_event(event_dims)


def categorical_head(logits: Float[Array, "*batch k"]) -> dist.Distribution:
    r"""A categorical label :math:`p(y = k) = \mathrm{softmax}(\ell)_k` over the last axis.

    For classifiers (chapters 5, 7, 8). ``logits [*batch, k]`` with ``k`` classes; the event is
    one label per example, so the batch shape is ``*batch``.
    """
    logits = _outputs(logits, "logits", 1)
    if logits.shape[-1] < 2:
        raise ValueError(f"categorical_head needs at least 2 classes on the last axis; got shape {logits.shape}")
    return dist.CategoricalLogits(logits)


def binomial_head(
    logits: Float[Array, "*batch d"], total_count: int | Int[Array, "*batch d"], *, event_dims: int = 1
) -> dist.Distribution:
    r"""Independent binomial counts :math:`p(x_i) = \binom{n}{x_i}\sigma(\ell_i)^{x_i}(1-\sigma(\ell_i))^{n - x_i}`.

    For pixel *counts*: the 8×8 digits' values are the number of lit cells out of 16 (so
    ``total_count=16``), MNIST's out of 255. Keeps the data discrete, so its log-likelihood is
    a proper log-probability in nats (appendix A).

    Args:
        logits: ``[*batch, d]`` unconstrained success log-odds.
        total_count: positive integer ``n`` (or an integer array broadcasting against logits).
        event_dims: trailing axes that form one event.

    Returns:
        ``BinomialLogits(logits, total_count).to_event(event_dims)``.
    """
    event_dims = _event_dims(event_dims)
    logits = _outputs(logits, "logits", event_dims)
    n = jnp.asarray(total_count)
    if not jnp.issubdtype(n.dtype, jnp.integer) or (is_concrete(n) and np.any(np.asarray(n) < 1)):
        raise ValueError(f"total_count must be a positive integer; got {total_count!r}")
    return dist.BinomialLogits(logits, total_count=n).to_event(event_dims)


def diagonal_normal(d: dist.Distribution) -> dist.Normal:
    """The ``Normal`` inside :func:`gaussian_head`'s ``Independent``: its ``loc`` and ``scale`` are the
    diagonal Gaussian's mean and standard deviations. Any other distribution is a ``TypeError``."""
    base = d.base_dist if isinstance(d, dist.Independent) else None
    if not isinstance(base, dist.Normal):
        raise TypeError(f"expected a diagonal Gaussian (an Independent Normal, as gaussian_head makes); got {d}")
    return base


def categorical_probs(d: dist.Distribution) -> jax.Array:
    """The class probabilities of :func:`categorical_head`'s distribution (a ``CategoricalLogits``);
    any other distribution is a ``TypeError``."""
    if not isinstance(d, dist.CategoricalLogits):
        raise TypeError(f"expected a categorical distribution from categorical_head; got {d}")
    return jnp.asarray(d.probs)
