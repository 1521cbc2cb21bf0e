"""Input checks that know float32 (issue 8): rounding is valid, real errors are refused.

The allowance under test is ``4 eps`` for one probability and ``4 n eps`` for a vector of
``n`` (see :mod:`klbook._checks`). The valid side uses vectors computed the way a CPU or a GPU
computes them (normalised by sums in different orders, a softmax); the invalid side uses real
errors and values just beyond the allowance, so a looser or a tighter check fails here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import _checks
from klbook._checks import (
    check_count,
    check_nonnegative,
    check_probability,
    check_simplex,
    probability_ok,
    simplex_ok,
)
from klbook.divergence import kl

EPS32 = float(np.finfo(np.float32).eps)


def _pairwise_sum(x: np.ndarray) -> np.float32:
    """Float32 tree sum (a GPU-style reduction order)."""
    x = x.astype(np.float32)
    while x.size > 1:
        if x.size % 2:
            x = np.append(x, np.float32(0))
        x = x[0::2] + x[1::2]
    return x[0]


def _sequential_sum(x: np.ndarray) -> np.float32:
    total = np.float32(0)
    for v in x.astype(np.float32):
        total = np.float32(total + v)
    return total


NORMALISERS = {
    "sequential": lambda x: x / _sequential_sum(x),
    "reversed": lambda x: x / _sequential_sum(x[::-1]),
    "pairwise": lambda x: x / _pairwise_sum(x),
    "jax-softmax": lambda x: np.asarray(jax.nn.softmax(jnp.log(jnp.asarray(x)))),
    "exp-log-softmax": lambda x: np.asarray(jnp.exp(jax.nn.log_softmax(jnp.log(jnp.asarray(x))))),
}


def _vectors(seed: int):
    """Random float32 weight vectors of several lengths, including near-one-hot ones."""
    rng = np.random.default_rng(seed)
    for n in (2, 3, 10, 1000):
        for _ in range(10):
            yield rng.gamma(0.3, size=n).astype(np.float32) + np.float32(1e-30)
        one_hot = np.full(n, 1e-9, np.float32)
        one_hot[rng.integers(n)] = 1.0
        yield one_hot


@pytest.mark.parametrize("how", sorted(NORMALISERS))
def test_vectors_normalised_in_any_order_are_valid(how):
    worst = 0.0
    for x in _vectors(0):
        p = NORMALISERS[how](x).astype(np.float32)
        n = p.shape[-1]
        check_simplex(p, "p")  # does not raise
        assert bool(simplex_ok(p))
        assert bool(jax.jit(simplex_ok)(p))
        # The bound the allowance is derived from: |sum - 1| <= n eps (allowance: 4 n eps).
        worst = max(worst, abs(float(np.sum(p, dtype=np.float64)) - 1.0) / (n * EPS32))
    assert worst <= 1.0, f"{how}: sum off by {worst:.2f} n eps, beyond the derivation's bound"


def test_the_ch02_gpu_vector_is_valid():
    # The message from the GPU run: "got values such as [1.0000001192092896, ...]".
    p = jnp.array([1.0000001192092896, 0.0, 0.0], jnp.float32)
    check_simplex(p, "Categorical probs")
    q = dist.Categorical(probs=jnp.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(kl(dist.Categorical(probs=p), q), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(kl)(dist.Categorical(probs=p), q), np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("ulps", [1, 2, 4])
def test_one_to_four_ulps_outside_the_unit_interval_are_valid(ulps):
    above = np.float32(1.0) + np.float32(ulps * EPS32)
    below = -np.float32(ulps * EPS32)
    for value in (above, below):
        check_probability(np.float32(value), "p")
        assert bool(probability_ok(np.float32(value)))
        coin = dist.Bernoulli(probs=jnp.float32(value), validate_args=False)
        assert np.isfinite(kl(coin, dist.Bernoulli(probs=0.5)))
    # The Bernoulli one ulp above 1 is a double-headed coin up to rounding: I = ln 2.
    coin = dist.Bernoulli(probs=jnp.float32(above), validate_args=False)
    np.testing.assert_allclose(kl(coin, dist.Bernoulli(probs=0.5)), np.log(2.0), rtol=1e-5)


@pytest.mark.parametrize(
    "value",
    [1.5, -0.1, 1.0 + 8 * EPS32, -8 * EPS32, np.nan],
    ids=["1.5", "-0.1", "1+8eps", "-8eps", "nan"],
)
def test_real_errors_are_refused_with_the_same_message(value):
    x = np.float32(value)
    with pytest.raises(ValueError, match=r"p must be probabilities in \[0, 1\]; got"):
        check_probability(x, "p")
    assert not bool(probability_ok(x))
    assert not bool(jax.jit(probability_ok)(x))


@pytest.mark.parametrize(
    "vector, message",
    [
        ([0.2, 0.2], "must sum to 1"),  # a sum of 0.4
        ([0.5, 0.6], "must sum to 1"),
        ([1.5, -0.5], r"probabilities in \[0, 1\]; got values such as \[1.5, -0.5\]"),
        ([1.001, -0.001, 0.0], r"probabilities in \[0, 1\]; got values such as"),  # beyond rounding
        ([0.5, 0.5 + 3 * 4 * 2 * EPS32, 0.0], "must sum to 1"),  # twice the allowance 4 n eps
        ([0.5, np.nan], "got NaN"),
    ],
)
def test_bad_probability_vectors_are_refused(vector, message):
    x = np.asarray(vector, np.float32)
    with pytest.raises(ValueError, match=message):
        check_simplex(x, "Categorical probs")
    assert not bool(simplex_ok(x))
    assert not bool(jax.jit(simplex_ok)(x))


def test_allowance_scales_with_length_and_dtype():
    assert _checks.simplex_tolerance(np.zeros(10, np.float32)) == pytest.approx(40 * EPS32)
    assert _checks.probability_tolerance(np.float32(0.5)) == pytest.approx(4 * EPS32)
    # bfloat16 rounds far more coarsely, and its allowance follows.
    bf16 = jnp.ones(4, jnp.bfloat16) / 4
    assert _checks.simplex_tolerance(bf16) == pytest.approx(16 * float(jnp.finfo(jnp.bfloat16).eps))
    # float64 is floored at float32's eps: values often pass through float32 first.
    assert _checks.simplex_tolerance(np.zeros(3)) == pytest.approx(12 * EPS32)
    check_simplex(np.array([0.5, 0.5 + 2 * EPS32]), "p")
    with pytest.raises(ValueError, match="must sum to 1"):
        check_simplex(np.array([0.5, 0.5 + 1e-4]), "p")


def test_batched_masks_flag_only_the_bad_rows():
    x = jnp.array([[0.5, 0.5], [0.2, 0.2], [1.0 + EPS32, 0.0]], jnp.float32)
    np.testing.assert_array_equal(jax.jit(simplex_ok)(x), [True, False, True])


def test_counts_and_non_negative_values():
    check_count(np.array([0, 3, 16]), "n")
    check_nonnegative(np.array([0.0, 2.5]), "rate")
    with pytest.raises(ValueError, match="n must be non-negative; got values such as \\[-3\\]"):
        check_count(np.array([-3]), "n")
    with pytest.raises(ValueError, match="n must be a whole number"):
        check_count(np.array([2.5]), "n")
    with pytest.raises(ValueError, match="rate must be non-negative"):
        check_nonnegative(np.array([-1.0]), "rate")
    with pytest.raises(ValueError, match="rate must be finite"):
        check_nonnegative(np.array([np.inf]), "rate")
