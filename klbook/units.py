"""Units of information: nats inside, bits (and bits per dimension) for display.

Everything in klbook computes in nats (natural logarithms). A bit is ``ln 2`` nats. This module
is the *one* place the conversion happens, so a figure or a printed number in bits always goes
through :func:`to_bits` or :func:`bits_per_dim` (Preface, "Notation").
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.typing import ArrayLike

#: One bit expressed in nats: ln 2.
NATS_PER_BIT: float = math.log(2.0)


def to_bits(nats: ArrayLike) -> jnp.ndarray:
    r"""Convert an information quantity from nats to bits.

    .. math:: x_\text{bits} = x_\text{nats} / \ln 2

    Args:
        nats: any array of values in nats (``inf`` stays ``inf``).

    Returns:
        The same values in bits, same shape.
    """
    return jnp.asarray(nats) / NATS_PER_BIT


def to_nats(bits: ArrayLike) -> jnp.ndarray:
    r"""Convert an information quantity from bits to nats: :math:`x_\text{nats} = x_\text{bits} \ln 2`."""
    return jnp.asarray(bits) * NATS_PER_BIT


def bits_per_dim(nats: ArrayLike, num_dims: int) -> jnp.ndarray:
    r"""Convert a total in nats for a ``num_dims``-dimensional datum to bits per dimension.

    .. math:: \text{bpd} = \frac{x_\text{nats}}{D \ln 2}

    Args:
        nats: values in nats, any shape.
        num_dims: the number of dimensions ``D`` the total is spread over (``D >= 1``).

    Raises:
        ValueError: if ``num_dims`` is not a positive integer.
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive integer; got {num_dims!r}")
    return to_bits(nats) / num_dims
