"""Helpers the chapters share: the scale a chapter runs at, gluing numbers into the prose, and compiling a
cell's one-off checks.

Every chapter runs at the ``quick`` scale (about a minute on a 2-core CPU) unless it finds a
GPU, where it runs at ``full`` (bigger data, longer training). ``KLBOOK_SCALE`` overrides both.
Numbers the prose quotes are *glued* from execution with :func:`glue`, rounded to the
precision the text needs, so the published text and the stored outputs that CI re-checks
are the same numbers.

Every random key a chapter uses comes from :func:`key`, so one setting, ``KLBOOK_SEED``, shifts
them all: the seed layer of ``make test`` re-runs every chapter under other seeds and checks
that every assert still holds and that every *measured* output (trained, or estimated by Monte
Carlo) stays within the tolerance declared beside it (see :func:`glue` and
``tests/nbval_contract.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from klbook._compile import filter_jit_once

__all__ = ["scale", "is_full", "seed", "key", "jit_once", "glue", "glue_text", "round_sig"]

SCALES = ("quick", "full")


def scale() -> str:
    """The scale this chapter runs at: ``KLBOOK_SCALE`` if set, else ``full`` on a GPU.

    Raises:
        ValueError: if ``KLBOOK_SCALE`` is set to anything but ``quick`` or ``full``.
    """
    env = os.environ.get("KLBOOK_SCALE", "").strip().lower()
    if env:
        if env not in SCALES:
            raise ValueError(f"KLBOOK_SCALE must be one of {SCALES}; got {env!r}")
        return env
    return "full" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "quick"


def is_full() -> bool:
    """``True`` when the chapter runs at the ``full`` scale."""
    return scale() == "full"


def seed() -> int:
    """The seed shift every chapter's keys get: ``KLBOOK_SEED`` (a non-negative integer), else 0.

    Seed 0 gives the keys of the published outputs. Any other seed shifts every key a chapter
    draws through :func:`key`; the chapter's asserts must still hold, and its measured outputs
    must stay within their declared tolerances of the published ones.

    Raises:
        ValueError: if ``KLBOOK_SEED`` is not a non-negative integer.
    """
    env = os.environ.get("KLBOOK_SEED", "").strip()
    if not env:
        return 0
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"KLBOOK_SEED must be a non-negative integer; got {env!r}") from None
    if value < 0:
        raise ValueError(f"KLBOOK_SEED must be a non-negative integer; got {value}")
    return value


def key(n: int) -> jax.Array:
    """The chapter's random key number ``n``: ``jax.random.key(n)`` at seed 0, else folded with the seed.

    Chapters take every key from here (never ``jax.random.key`` directly), so that one setting,
    ``KLBOOK_SEED``, moves every random draw of a chapter at once.

    Derive a chapter's sub-keys with ``jax.random.fold_in(key, i)`` for distinct ``i`` and do not
    also hand the key itself to a function that splits it: with JAX's partitionable Threefry
    (the default in current JAX) ``jax.random.split(k, n)[i]`` *is* ``fold_in(k, i)``, so the two
    would draw the same random numbers.

    Args:
        n: the key's number within the chapter (a non-negative integer).

    Returns:
        A new-style JAX key (``jax.random.key``), the same for the same ``n`` and seed.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"key numbers are non-negative integers; got {n!r}")
    base = jax.random.key(int(n))
    s = seed()
    return base if s == 0 else jax.random.fold_in(base, s)


def jit_once(fn: Callable) -> Callable:
    """Compile ``fn`` as :func:`equinox.filter_jit` does, for a computation a chapter runs once or twice.

    A check in a cell (score a model once, take one gradient) is a small program that XLA compiles
    and then runs in milliseconds: on a CPU the compile is nearly all of its cost, and most of the
    compile is LLVM's optimiser. ``jit_once`` turns that optimiser off on a CPU (LLVM level 0, XLA's
    older CPU emitters): chapter 8's checks compile two to four times faster and then run two to
    five times slower, still in milliseconds (``benchmarks/compile_once.py``). The program
    computes the same thing, up to rounding in the last bit (no fused multiply-adds). Training
    loops keep XLA's defaults: they run thousands of times, and unoptimised they run several
    times slower. On a GPU, and where this JAX cannot pass compiler options, it *is*
    ``equinox.filter_jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> from klbook import book
        >>> total = book.jit_once(lambda v: jnp.sum(v ** 2))
        >>> float(total(jnp.arange(4.0)))
        14.0
    """
    if not callable(fn):
        raise TypeError(f"jit_once compiles a function; got {type(fn).__name__}")
    return filter_jit_once(fn)


def round_sig(value: Any, digits: int = 3) -> Any:
    """Round a number to ``digits`` significant figures (ints, inf and bools pass through)."""
    if isinstance(value, (bool, int, str)):
        return value
    x = float(value)
    if not math.isfinite(x) or x == 0.0:
        return x
    return float(f"{x:.{digits}g}")


def glue_text(value: Any) -> str:
    """The text the prose shows for a glued value: a whole number without a trailing ``.0``
    (``525.0`` reads as more precise than the 3 significant figures it has), else its repr."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def glue(name: str, value: Any, digits: int = 3, *, tol: float | None = None, rel: float | None = None) -> Any:
    """Glue a number into the book's prose (myst-nb ``{glue}`` role), rounded to ``digits``.

    Writes the same output as ``myst_nb.glue(name, value, display=False)`` without needing
    myst-nb installed (it is a book-building dependency, absent on Colab). The stored output is
    the rounded number's text, so nbval re-checks what the prose shows.

    The reproducibility contract (DESIGN.md) has two kinds of number:

    * *exact* (no ``tol``, no ``rel``): closed forms, counts, anything that does not depend on
      the hardware's float rounding or on the seed. The notebook layer compares it exactly.
    * *measured* (``tol`` and/or ``rel`` given): trained, or estimated by Monte Carlo. The
      notebook layer accepts a re-run value ``v`` against the stored ``s`` when
      ``|v - s| <= tol + rel * |s|``, on any machine and under other seeds (``KLBOOK_SEED``).
      Declare the tolerance from a measured spread (across seeds, CPUs and GPUs) with a margin.

    Args:
        name: the name the prose uses, ``{glue}`name```.
        value: the number (a Python or NumPy/JAX scalar).
        digits: significant figures shown.
        tol: absolute tolerance of a measured number (same units as ``value``).
        rel: relative tolerance of a measured number (a fraction of the stored value).

    Returns:
        The rounded value, so a cell can ``assert`` on what it glued.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name must be an identifier-like string; got {name!r}")
    tolerance = {}
    for what, t in (("abs", tol), ("rel", rel)):
        if t is not None:
            t = float(t)
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"glue {name!r}: the {what} tolerance must be finite and >= 0; got {t}")
            tolerance[what] = t
    rounded = round_sig(value, digits)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: nothing to glue into
        return rounded
    if get_ipython() is None:
        return rounded
    prefix = "application/papermill.record/"
    display(
        {prefix + "text/plain": glue_text(rounded)},
        raw=True,
        metadata={
            "scrapbook": {"name": name, "mime_prefix": prefix},
            **({"klbook": {"tolerance": tolerance}} if tolerance else {}),
        },
    )
    return rounded
