"""klbook.book.jit_once (klbook._compile): a one-off program compiled cheaply computes what filter_jit computes,
and composes."""

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klbook import book, nn
from klbook._compile import once_options


def test_options_are_only_ones_this_xla_accepts():
    options = once_options()
    if jax.default_backend() != "cpu" or "compiler_options" not in inspect.signature(jax.jit).parameters:
        assert options == {}
    else:  # every chosen option compiles (an unknown one would raise "No such compile option")
        assert set(options) <= {"xla_backend_optimization_level", "xla_cpu_use_fusion_emitters"}
        jax.jit(lambda v: v * 2, compiler_options=options)(jnp.ones(2)).block_until_ready()


def test_same_numbers_as_filter_jit_up_to_rounding():
    net = nn.mlp(jax.random.key(0), 5, 3, width=16, depth=2)
    x = jax.random.normal(jax.random.key(1), (7, 5))

    def loss(model, v):
        return jnp.mean(jax.nn.logsumexp(jax.vmap(model)(v), axis=-1))

    want = eqx.filter_jit(loss)(net, x)
    got = book.jit_once(loss)(net, x)
    np.testing.assert_allclose(got, want, rtol=8 * np.finfo(np.float32).eps)
    g_want = eqx.filter_jit(eqx.filter_grad(loss))(net, x)
    g_got = book.jit_once(eqx.filter_grad(loss))(net, x)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_composes_with_grad_vmap_and_an_outer_jit():
    f = book.jit_once(lambda v: jnp.sum(jnp.sin(v) ** 2))
    x = jnp.arange(3.0)
    exact = np.sin(2 * np.arange(3.0))  # d/dv sin(v)^2
    np.testing.assert_allclose(jax.grad(f)(x), exact, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), exact, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        jax.vmap(f)(jnp.stack([x, 2 * x])),
        [np.sum(np.sin(np.arange(3.0)) ** 2), np.sum(np.sin(2 * np.arange(3.0)) ** 2)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(book.jit_once(jax.grad(f))(x), exact, rtol=1e-6, atol=1e-7)  # nested jit_once


def test_errors_are_the_functions_own():
    with pytest.raises(TypeError, match="compiles a function"):
        book.jit_once(3)

    def needs_two(a, b):
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
        return a + b

    with pytest.raises(ValueError, match="shapes differ"):  # not swallowed by the nested-jit fallback
        book.jit_once(needs_two)(jnp.ones(2), jnp.ones(3))
