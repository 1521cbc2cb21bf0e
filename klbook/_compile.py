r"""Compile a program that runs once (initialise stacked models, score a test set) cheaply on a CPU.

XLA's CPU compiler spends most of its time in LLVM's optimiser. That pays for a training loop run
thousands of times, and not for a program run once: the first call that initialises eight stacked
M2 models (trace, compile, run) takes 3.9 s with XLA's defaults and 1.3 s with LLVM's optimisation
level 0 and XLA's older CPU emitters, and either program then runs in milliseconds (jax 0.10.2 on
the 2-core machine of ``benchmarks/README.md``; ``benchmarks/compile_once.py`` measures it).
:func:`filter_jit_once` is :func:`equinox.filter_jit` with those two options where this JAX
accepts them. The results are the same computation: an unoptimised program may round differently
in the last bit (no fused multiply-add), no more.

Only on the CPU backend (a GPU's compile is a different trade), and only where
``jax.jit`` takes ``compiler_options`` and XLA knows the option: older JAX and jaxlib (the
lowest versions klbook supports) compile with their defaults.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

_CHEAP = (("xla_backend_optimization_level", 0), ("xla_cpu_use_fusion_emitters", False))


@functools.cache
def once_options() -> dict[str, Any]:
    """The compiler options :func:`filter_jit_once` passes: those this JAX and XLA accept, on a CPU."""
    if "compiler_options" not in inspect.signature(jax.jit).parameters or jax.default_backend() != "cpu":
        return {}
    accepted: dict[str, Any] = {}
    for name, value in _CHEAP:
        trial = {**accepted, name: value}
        try:  # an option XLA does not know is refused at compile time ("No such compile option")
            jax.jit(lambda v: v + 1, compiler_options=trial)(jnp.zeros(1)).block_until_ready()
        except RuntimeError:
            continue
        accepted = trial
    return accepted


def filter_jit_once(fn: Callable) -> Callable:
    """:func:`equinox.filter_jit` for a program that runs once: compiled without LLVM's optimisations on a CPU.

    The options are chosen at the first call, not here, so that decorating a function at import
    time does not start JAX's backend. Called inside another transformation (``jax.grad``,
    ``jax.vmap``, an outer ``jit``), where JAX accepts compiler options only on the outermost
    ``jit``, it is a plain :func:`equinox.filter_jit` and compiles as part of the outer program.
    """
    plain = eqx.filter_jit(fn)
    cheap = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal cheap
        if cheap is None:
            options = once_options()
            # Equinox's overloads leave out the keyword arguments it passes on to jax.jit.
            cheap = eqx.filter_jit(fn, compiler_options=options) if options else plain  # pyright: ignore[reportCallIssue]
        try:
            return cheap(*args, **kwargs)
        except ValueError as err:  # "`compiler_options` can only be passed to top-level `jax.jit`"
            if cheap is plain or "compiler_options" not in str(err):
                raise
            return plain(*args, **kwargs)

    return call
