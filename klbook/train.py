r"""The one training loop every chapter uses: minimise a loss with Optax, jit-compiled.

Every chapter ends the same way: an objective :math:`\mathcal{L}(\theta)` (almost always an
estimate of a KL divergence :math:`I[P;Q_\theta]` plus named terms such as rate and
distortion) is minimised by stochastic gradient steps

.. math:: \theta_{t+1} = \theta_t + \mathrm{update}\big(\nabla_\theta \hat{\mathcal{L}}(\theta_t;\, k_t,\, b_t)\big),
   \qquad k_t = \mathrm{fold\_in}(k, t),

where the minibatch :math:`b_t` holds ``batch_size`` i.i.d. draws from the empirical
distribution of ``data`` (the world as it is, appendix B), keyed by the same step key.
:func:`fit` runs that loop as a ``lax.scan`` over chunks of steps: one compilation, one
Python round trip per chunk (when the progress bar moves), and a clear
:class:`NonFiniteLossError` naming the step and the term the moment the loss, a term or the
gradient stops being finite. :func:`evaluate` averages the loss and its terms over a dataset.

Two things a minibatch loop must get right, and how this one does:

* **The objective must not depend on the batch size.** A loss built with
  :func:`klbook.recipe.kl_objective` reports nats per example; a *global* latent's term
  (one shared by all examples) is divided by the number of examples N of the full data set.
  ``fit`` draws the batch outside the model, so the model's data plate only holds the batch:
  state N with ``kl_objective(..., data_size=N)`` (N = the rows of ``data``), and the loss is
  the same objective at every ``batch_size`` (and :func:`evaluate` agrees across batch sizes).
* **Resuming must not replay randomness.** ``FitResult.opt_state`` carries the number of
  steps taken; ``fit(..., opt_state=result.opt_state)`` continues the key sequence
  :math:`k_t` where it stopped, so 10 steps then 10 more are exactly 20 steps.

With more than one local device (several GPUs, say), :func:`fit`, :func:`evaluate` and
:func:`fit_stacked` split each batch over them (data parallel, through :mod:`jax.sharding`) with
no change to the model code; ``devices=1`` keeps one. ``tests/test_multidevice.py`` checks it on
2 and 4 forced CPU devices and ``benchmarks/multidevice.py`` times it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from klbook._compile import filter_jit_once
from klbook.divergence import check_key
from klbook.recipe import KLObjective

__all__ = [
    "fit",
    "evaluate",
    "fit_stacked",
    "init_stacked",
    "member",
    "stack_size",
    "FitResult",
    "FitState",
    "NonFiniteLossError",
]

LossFn = Callable[[Any, jax.Array, Any], Any]
#: What ``devices=`` accepts here and in every helper that trains through :func:`fit`.
Devices = int | Sequence[Any] | None


class FitState(NamedTuple):
    """The optimiser's state and the number of steps taken, to resume :func:`fit` where it stopped.

    Attributes:
        optimizer_state: the Optax state (``optimizer.init(params)`` and its updates).
        step: steps taken so far, over every resumed run: the next step folds ``step`` into the
            key, so a resumed run draws new minibatches and new noise.
    """

    optimizer_state: Any
    step: int


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        params: the trained parameters, the same pytree (or Equinox module) type as given.
        history: ``name -> float array [num_steps]``: ``"loss"`` and every named term, per step.
        opt_state: a :class:`FitState` (the Optax state and the step count), to continue
            training with ``fit(..., opt_state=result.opt_state)``.
    """

    params: Any
    history: dict[str, np.ndarray]
    opt_state: Any


class NonFiniteLossError(FloatingPointError):
    """The loss, a named term or the gradient became NaN or infinite at ``step``.

    Attributes:
        step: the 0-based step whose evaluation was not finite.
        name: ``"loss"``, the term's name, or ``"gradient"``.
        params: the parameters at that step (all earlier updates applied, none after), finite.
        history: ``name -> array [step + 1]``, up to and including the bad step.
    """

    def __init__(self, message: str, *, step: int, name: str, params: Any, history: dict):
        super().__init__(message)
        self.step, self.name, self.params, self.history = step, name, params, history


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def _data_size(data: Any) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must be a pytree of arrays with a shared leading axis; got no arrays")
    sizes = set()
    for leaf in leaves:
        if not hasattr(leaf, "shape") or len(leaf.shape) == 0:
            raise ValueError(f"every leaf of data must be an array with a leading example axis; got {leaf!r}")
        sizes.add(leaf.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"data leaves must share their leading axis (one row per example); got sizes {sorted(sizes)}")
    (n,) = sizes
    if n == 0:
        raise ValueError("data has no examples (leading axis of size 0)")
    return n


def _as_pair(out: Any) -> tuple[Any, Any]:
    """A loss function's output as ``(loss, terms)``: a :class:`~klbook.recipe.KLObjective` gives
    its weighted ``loss`` and its named ``terms``; a tuple is ``(loss, terms)``; a bare scalar
    loss has no terms."""
    if isinstance(out, KLObjective):
        return out.loss, out.terms
    if isinstance(out, tuple) and len(out) == 2:
        return out[0], out[1]
    return out, {}


def _call(loss_fn: LossFn, params: Any, key: jax.Array, batch: Any) -> tuple[jax.Array, dict]:
    """``loss_fn``'s output as ``(loss, terms)`` (see :func:`_as_pair`)."""
    loss, terms = _as_pair(loss_fn(params, key, batch))
    return loss, dict(terms)


def _check_output(loss_fn: LossFn, params: Any, key: jax.Array, batch: Any) -> list[str]:
    """Trace ``loss_fn`` once (no FLOPs) and check it returns a scalar loss and scalar terms."""
    out = eqx.filter_eval_shape(loss_fn, params, key, batch)
    pair = isinstance(out, tuple) and len(out) == 2
    if not isinstance(out, KLObjective) and not pair and not hasattr(out, "shape"):
        raise TypeError(
            "loss_fn(params, key, batch) must return a KLObjective, a scalar loss or a tuple "
            f"(loss, terms) with terms a dict of scalars; got {type(out).__name__}"
        )
    loss, terms = _as_pair(out)
    if not isinstance(terms, dict):
        raise TypeError(f"loss_fn's terms must be a dict name -> scalar; got {type(terms).__name__}")
    for name, value in [("loss", loss), *terms.items()]:
        if not isinstance(name, str) or (name == "loss" and value is not loss):
            raise ValueError(f"term names must be strings other than 'loss'; got {name!r}")
        if getattr(value, "shape", None) != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(
                f"loss_fn must return real scalars; {name} has shape {getattr(value, 'shape', None)} "
                f"and dtype {getattr(value, 'dtype', type(value).__name__)}"
            )
    return list(terms)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"FitState.step must be a non-negative integer (steps taken); got {step!r}")
    return int(step)


def _resolve_devices(devices: Any) -> list:
    """The devices to split batches over: all local ones (``None``), the first ``k`` (an int), or a list."""
    local = jax.local_devices()
    if devices is None:
        return list(local)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        k = _check_positive_int(devices, "devices")
        if k > len(local):
            raise ValueError(f"devices={k} asks for more devices than the {len(local)} local ones ({local})")
        return list(local[:k])
    if isinstance(devices, (str, bytes, bool)) or not hasattr(devices, "__iter__"):
        raise TypeError(f"devices must be None, a positive int or a sequence of jax devices; got {devices!r}")
    chosen = list(devices)
    if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
        raise TypeError(f"devices must be None, a positive int or a non-empty sequence of jax devices; got {devices!r}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"devices lists a device twice: {chosen}")
    return chosen


class _Split:
    """Data parallelism over a 1-D mesh: batches split on their leading axis, all else replicated."""

    def __init__(self, devices: list):
        self.count = len(devices)
        self.mesh = Mesh(np.asarray(devices, dtype=object), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.rows = NamedSharding(self.mesh, PartitionSpec("batch"))

    def place(self, tree: Any) -> Any:
        """Copy every array of ``tree`` to every device of the mesh."""
        return jax.device_put(tree, self.replicated)

    def shard(self, tree: Any) -> Any:
        """Inside the compiled step: each device holds ``1 / count`` of the rows of every leaf."""
        return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, self.rows), tree)

    def keep_replicated(self, tree: Any) -> Any:
        return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, self.replicated), tree)


def _check_divides(rows: int, count: int, what: str) -> None:
    if rows % count:
        raise ValueError(
            f"{what} {rows} does not divide over {count} devices ({rows} % {count} = {rows % count}): "
            f"each device takes an equal share of the batch. Make it a multiple of {count}, "
            "or pass devices=1 (one device) or devices=<a count that divides it>"
        )


def _split_for(devices: Any, rows: int | None, batch_size: int | None) -> _Split | None:
    """The split of each batch over ``devices`` (None: one device), refusing a batch that does not divide.

    ``rows``: the rows of ``data`` (None without data: nothing to split); ``batch_size`` checked already.
    Eager and cheap, so helpers call it before building their models.
    """
    chosen = _resolve_devices(devices)
    if len(chosen) == 1 or rows is None:  # no data: no batch to split, one device runs it
        return None
    if batch_size is None:
        _check_divides(rows, len(chosen), "the number of rows of data (batch_size=None uses them all each step)")
    else:
        _check_divides(batch_size, len(chosen), "batch_size")
    return _Split(chosen)


def _sample_batch(key: jax.Array, data: Any, n: int, batch_size: int | None) -> Any:
    """``batch_size`` i.i.d. rows of ``data`` (the empirical distribution), or all of it."""
    if data is None or batch_size is None:
        return data
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree.map(lambda leaf: leaf[idx], data)


def _transform_name(optimizer: Any) -> str:
    """A readable name for an Optax transformation: ``reduce_on_plateau``, ``lbfgs``, ..."""
    qualname = getattr(getattr(optimizer, "update", None), "__qualname__", "") or ""
    parts = qualname.split(".<locals>.")  # e.g. "reduce_on_plateau.<locals>.update_fn"
    return parts[-2] if len(parts) >= 2 else type(optimizer).__name__


def _extra_args(optimizer: Any, loss: Any, grads: Any, value_fn: Callable) -> dict:
    """The extra arguments an Optax ``GradientTransformationExtraArgs`` may ask for.

    ``value`` (the loss at the current parameters, for ``reduce_on_plateau``), ``grad`` and
    ``value_fn`` (the loss as a function of the trained parameters on this step's key and
    batch, for ``lbfgs``'s line search). A plain ``GradientTransformation`` gets none.
    """
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return {"value": loss, "grad": grads, "value_fn": value_fn}
    return {}


def _check_optimizer(optimizer: Any, train: Any, opt_state: Any) -> None:
    """Trace one update (no FLOPs): the state fits the optimiser and its extra arguments are met."""
    fresh = eqx.filter_eval_shape(optimizer.init, train)
    if opt_state is not None and jax.tree.structure(opt_state) != jax.tree.structure(fresh):
        raise ValueError(
            f"opt_state does not match the optimizer {_transform_name(optimizer)} on these params "
            "(was it made by another optimizer, or for other parameters?); pass the opt_state of a "
            "fit with the same optimizer and params, or none to start afresh"
        )
    state = fresh if opt_state is None else opt_state
    zero = jnp.zeros((), jnp.float32)
    extra = _extra_args(optimizer, zero, train, lambda tr: zero)
    try:
        eqx.filter_eval_shape(lambda g, s, p: optimizer.update(g, s, p, **extra), train, state, train)
    except TypeError as err:
        raise TypeError(
            f"fit cannot drive the optax transformation {_transform_name(optimizer)}: its update "
            f"failed with {err!r}. fit calls optimizer.update(grads, state, params) and, for an "
            "optax.GradientTransformationExtraArgs, also passes value= (the loss), grad= and "
            "value_fn= (the loss as a function of params, on the step's key and batch); other "
            "extra arguments are not supplied. Wrap the transformation to provide them, or train "
            "with your own loop"
        ) from err


def fit(
    key: jax.Array,
    loss_fn: LossFn,
    params: Any,
    *,
    num_steps: int,
    optimizer: optax.GradientTransformation | None = None,
    data: Any = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    opt_state: Any = None,
    progress: bool = True,
    desc: str | None = None,
    devices: int | Sequence[Any] | None = None,
) -> FitResult:
    r"""Minimise ``loss_fn`` over ``params`` for ``num_steps`` Optax steps, compiled once.

    Step :math:`t` calls ``loss_fn(params, k_loss, batch)`` with
    ``k_loss, k_batch = split(fold_in(key, t))``, where :math:`t` counts the steps of every run
    resumed from ``opt_state`` (0 for a fresh run); ``batch`` holds ``batch_size`` rows of
    ``data`` drawn uniformly with replacement using ``k_batch`` (all of ``data`` when
    ``batch_size`` is None, ``None`` when there is no data). Only floating-point arrays in
    ``params`` are trained; integer arrays and non-array leaves (an Equinox module's activation
    function, say) are kept as they are. The steps run as a ``lax.scan`` over chunks of
    ``chunk_size`` steps inside one ``jax.jit``: nothing recompiles while training.

    **Global latents and N.** The batch is drawn here, outside the model, so a loss built with
    :func:`klbook.recipe.kl_objective` sees a data plate of ``batch_size`` examples. If the
    worlds have a global latent (a site outside the data plate, e.g. the weights of a Bayesian
    model), pass ``data_size=N`` to ``kl_objective`` with N the number of rows of ``data``:
    its term is then KL/N at every batch size, and the expected loss is the full-data objective
    per example. Without it the global term would be KL/``batch_size``.

    **Optimisers.** Any ``optax.GradientTransformation``. An
    ``optax.GradientTransformationExtraArgs`` is also given ``value=`` (the loss at the current
    parameters), ``grad=`` and ``value_fn=`` (the loss as a function of the trained parameters,
    on this step's key and batch), which ``optax.contrib.reduce_on_plateau`` and ``optax.lbfgs``
    need. A transformation that needs other arguments is refused before training with an error
    naming it.

    **More than one device (data parallel).** With several local devices (``jax.local_devices()``:
    GPUs, TPU cores, or CPU devices forced with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4``), each step's batch is split over a 1-D
    device mesh (:class:`jax.sharding.Mesh` with one axis ``"batch"``): the batch's rows are
    sharded with ``NamedSharding(mesh, PartitionSpec("batch"))``, and the parameters, the
    optimiser state, ``data`` and the key are replicated on every device. The model code does not
    change: ``loss_fn`` still sees the whole batch (a global array), XLA's SPMD partitioner gives
    each device its rows, and a mean over the batch becomes a sum across devices, so every copy
    of the parameters receives the same gradient and takes the same step. The draws are the same
    as on one device (the batch indices and ``loss_fn``'s noise come from the same keys), so the
    loss trajectory equals the single-device one up to float32 rounding (sums taken in another
    order). ``devices=None`` (the default) uses every local device; ``devices=1`` forces one
    device: the single-device program, bit for bit as without this option; ``devices=k`` the
    first ``k`` local devices; or pass a list of ``jax.Device``. The batch size (the rows of
    ``data`` when ``batch_size`` is None) must divide by the number of devices; a
    ``ValueError`` naming both numbers is raised before anything is compiled. Without ``data``
    there is no batch to split and one device runs the loop. The returned ``params`` are
    replicated on the devices used. ``data`` is copied to every device: for data too large for
    that, shard it yourself and train with your own loop.

    *Several hosts* are documented, not tested (the tests run one process on one machine). The
    intended use: call ``jax.distributed.initialize()`` in every process, then
    ``fit(..., devices=jax.devices())`` (the devices of every process; ``None`` means this
    process's own) with the same arguments in every process, as JAX's multi-controller model
    requires. The replicated inputs are placed with ``jax.device_put``, which must then accept a
    sharding over other processes' devices; where your JAX version does not, build global arrays
    with ``jax.make_array_from_process_local_data`` and write the loop yourself.

    **What is checked where.** Eagerly, before anything is compiled: the key, ``loss_fn``
    (traced once, abstractly, to check it returns a real scalar loss and a dict of real scalar
    terms), ``num_steps``, ``batch_size``, ``chunk_size``, ``data`` (one shared leading axis, at
    least one row), ``params`` (some floating arrays, all finite), ``optimizer`` and
    ``opt_state`` (an abstract update is traced: the state must fit the optimiser and its extra
    arguments must be ones supplied here). Inside the compiled loop, on every step: the loss,
    each term and the gradient must be finite; the first step where one is not stops the
    updates, and :class:`NonFiniteLossError` is raised when its chunk returns.

    Args:
        key: JAX PRNG key; the same key gives the same result.
        loss_fn: ``(params, key, batch) -> objective``: a :class:`~klbook.recipe.KLObjective`
            (its ``loss`` is minimised and its ``terms`` recorded), a tuple ``(loss, terms)`` (a
            scalar loss and a dict of named scalar terms such as ``rate``, ``distortion``), or a
            bare scalar. The parameters come first because they are what is differentiated, as
            ``jax.grad`` wants; every klbook function that draws randomness takes the key first,
            so a chapter writes ``lambda m, k, x: vae.objective(k, m, x, beta=b)``.
        params: any pytree of arrays, including Equinox modules.
        num_steps: number of optimiser steps.
        optimizer: an Optax transformation; default ``optax.adam(1e-3)``.
        data: pytree of arrays sharing a leading example axis ``[N, ...]``, or ``None``.
        batch_size: rows per step (``1 <= batch_size``); ``None`` uses the full data each step.
        chunk_size: at most this many steps per compiled chunk (the progress bar and the
            finiteness check run once per chunk; chunks are balanced so the last one is barely
            padded); default about ``num_steps / 50``.
        opt_state: where to continue from: ``FitResult.opt_state`` (a :class:`FitState`,
            which resumes the key sequence at its step), or a bare Optax state (counted from
            step 0); default a fresh ``optimizer.init``. Use the same ``optimizer``.
        progress: show a ``tqdm.auto`` progress bar (a widget in notebooks, text in logs).
        desc: label for the progress bar.
        devices: the devices to split each batch over (above): ``None`` every local device,
            an int ``k`` the first ``k`` local devices (``1``: one device), or a sequence of
            ``jax.Device``.

    Returns:
        :class:`FitResult` with the trained ``params``, ``history`` (``name -> [num_steps]``:
        ``"loss"`` and every term, this run's steps) and ``opt_state`` (a :class:`FitState`).

    Raises:
        NonFiniteLossError: (a ``FloatingPointError``) after the chunk in which the loss, a term
            or the gradient first became NaN or infinite; its message names the step of this
            run and the quantity, e.g. ``"step 37: rate is inf (loss=-37, rate=inf)"``.
        ValueError: a bad size, data, params or ``opt_state`` (the message names it), or a batch
            that does not divide by the number of devices (the message names both numbers).
        TypeError: a bad key, ``loss_fn`` output or optimizer, or an optimizer needing extra
            arguments ``fit`` does not supply.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> x = jnp.array([1.0, 2.0, 6.0])
        >>> loss = lambda mu, key, batch: 0.5 * jnp.mean((batch - mu) ** 2)
        >>> res = fit(jax.random.key(0), loss, jnp.array(0.0), num_steps=100,
        ...           optimizer=optax.sgd(0.5), data=x, progress=False)
        >>> round(float(res.params), 4)  # the sample mean
        3.0
    """
    check_key(key)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, key, batch); got {type(loss_fn).__name__}")
    num_steps = _check_positive_int(num_steps, "num_steps")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")
    n = 0
    if data is not None:
        n = _data_size(data)
        if batch_size is not None:
            batch_size = _check_positive_int(batch_size, "batch_size")
    elif batch_size is not None:
        raise ValueError("batch_size was given but data is None; pass the data to draw batches from")
    split = _split_for(devices, None if data is None else n, batch_size)
    if chunk_size is None:
        chunk_size = math.ceil(num_steps / 50)
    chunk_size = min(_check_positive_int(chunk_size, "chunk_size"), num_steps)
    chunk_size = math.ceil(num_steps / math.ceil(num_steps / chunk_size))  # balance: little padding

    # Trainable: floating arrays. Frozen: other arrays (passed in, not baked into the program).
    train, rest = eqx.partition(params, eqx.is_inexact_array)
    frozen, static = eqx.partition(rest, eqx.is_array)
    if not jax.tree.leaves(train):
        raise ValueError("params holds no floating-point arrays to train")
    for leaf in jax.tree.leaves(train):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError("params must be finite before training; got NaN or inf in an initial value")

    def full(train_, frozen_=frozen):
        return eqx.combine(train_, frozen_, static)

    first_step = 0
    if isinstance(opt_state, FitState):
        first_step = _check_step(opt_state.step)
        opt_state = opt_state.optimizer_state
    k0 = jax.random.fold_in(key, first_step)
    # the batch is drawn inside the abstract trace too: checking compiles and computes nothing
    names = _check_output(lambda p, k, d: loss_fn(p, k, _sample_batch(k, d, n, batch_size)), params, k0, data)
    _check_optimizer(optimizer, train, opt_state)
    opt_state = filter_jit_once(optimizer.init)(train) if opt_state is None else opt_state

    # Data, frozen arrays and the key are arguments, not constants baked into the program.
    @jax.jit
    def run_chunk(train_, opt_state_, start, offset, key_, data_, frozen_):
        def real(carry, t):
            train_, opt_state_, ok = carry
            # The global step (offset: steps of the runs this one resumes) keys the draws.
            k_loss, k_batch = jax.random.split(jax.random.fold_in(key_, offset + t))
            batch = _sample_batch(k_batch, data_, n, batch_size)
            if split is not None:  # each device draws and scores its share of the rows
                batch = split.shard(batch)
            objective = lambda tr: _call(loss_fn, full(tr, frozen_), k_loss, batch)  # noqa: E731
            (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(train_)
            values = jnp.stack([loss, *(terms[k] for k in names)]).astype(jnp.float32)
            grads_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
            go = ok & jnp.all(jnp.isfinite(values)) & grads_ok  # stop updating at the first bad step
            extra = _extra_args(optimizer, loss, grads, lambda tr: objective(tr)[0])
            updates, new_state = optimizer.update(grads, opt_state_, train_, **extra)
            new_train = optax.apply_updates(train_, updates)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)  # noqa: E731
            row = jnp.where(ok, values, jnp.nan)
            new_train, new_state = keep(new_train, train_), keep(new_state, opt_state_)
            if split is not None:  # the gradient is summed over the devices: every copy updates alike
                new_train, new_state = split.keep_replicated((new_train, new_state))
            return (new_train, new_state, go), (row, grads_ok)

        def padding(carry, t):  # steps past num_steps in the last chunk: do nothing
            return carry, (jnp.full(len(names) + 1, jnp.nan, jnp.float32), jnp.array(True))

        def step(carry, t):
            return jax.lax.cond(t < num_steps, real, padding, carry, t)

        steps = start + jnp.arange(chunk_size)
        (train_, opt_state_, ok), rows = jax.lax.scan(step, (train_, opt_state_, jnp.array(True)), steps)
        return train_, opt_state_, ok, rows

    if split is not None:  # parameters, optimiser state, data and key: a copy on every device
        train, opt_state, frozen, data, key = split.place((train, opt_state, frozen, data, key))
    columns = ["loss", *names]
    rows: list[np.ndarray] = []
    bar = tqdm(total=num_steps, desc=desc, disable=not progress, leave=True)
    try:
        for start in range(0, num_steps, chunk_size):
            train, opt_state, ok, (chunk_rows, grads_ok) = run_chunk(
                train, opt_state, jnp.asarray(start), jnp.asarray(first_step), key, data, frozen
            )
            chunk_rows, grads_ok = np.asarray(chunk_rows), np.asarray(grads_ok)
            count = min(chunk_size, num_steps - start)
            if not bool(ok):
                bad = np.flatnonzero(~(np.all(np.isfinite(chunk_rows), axis=1) & grads_ok))[0]
                rows.append(chunk_rows[: bad + 1])
                history = dict(zip(columns, np.concatenate(rows).T, strict=True))
                values = chunk_rows[bad]
                culprit = next((c for c, v in zip(columns, values, strict=True) if not np.isfinite(v)), "gradient")
                shown = culprit if culprit != "gradient" else "the gradient"
                state = "not finite" if culprit == "gradient" else f"{values[columns.index(culprit)]}"
                listed = ", ".join(f"{c}={v:.4g}" for c, v in zip(columns, values, strict=True))
                raise NonFiniteLossError(
                    f"step {start + bad}: {shown} is {state} ({listed})",
                    step=start + bad,
                    name=culprit,
                    params=full(train),
                    history=history,
                )
            rows.append(chunk_rows[:count])
            if progress:
                bar.set_postfix_str(f"loss={chunk_rows[count - 1, 0]:.3g}", refresh=False)
            bar.update(count)
    finally:
        bar.close()
    history = dict(zip(columns, np.concatenate(rows).T.copy(), strict=True))
    return FitResult(full(train), history, FitState(opt_state, first_step + num_steps))


def evaluate(
    key: jax.Array,
    loss_fn: LossFn,
    params: Any,
    data: Any,
    batch_size: int,
    *,
    devices: int | Sequence[Any] | None = None,
) -> dict[str, float]:
    r"""Average the loss and its named terms over every example of ``data``.

    The data is cut into consecutive batches of ``batch_size`` rows (the last one smaller if
    ``batch_size`` does not divide ``N``); batch :math:`i` is scored with key
    ``fold_in(key, i)`` and the per-batch values are averaged with weights proportional to the
    batch sizes, so for a ``loss_fn`` that returns batch means the result is the mean over all
    :math:`N` examples. At most two compilations (full batches and the remainder).

    The result does not depend on ``batch_size`` (beyond Monte Carlo noise) when ``loss_fn``
    reports per-example terms of the full data set: for a loss built with
    :func:`klbook.recipe.kl_objective` whose worlds have a global latent, pass
    ``data_size=N`` to it (see :func:`fit`); without it a global term is divided by the batch
    size and the average grows as batches shrink.

    Args:
        key: JAX PRNG key for stochastic losses.
        loss_fn: ``(params, key, batch) -> (loss, terms)`` as in :func:`fit`.
        params: the parameters (any pytree or Equinox module).
        data: pytree of arrays sharing a leading axis ``[N, ...]``.
        batch_size: rows per batch, ``1 <= batch_size``.
        devices: as in :func:`fit`: each batch is split over them (``batch_size`` must divide
            by their number); a last, smaller batch whose rows do not divide is scored whole on
            every device. ``None``: every local device; ``1``: today's single-device program.

    Returns:
        ``name -> float``: ``"loss"`` and every term, averaged over the data.

    Raises:
        ValueError: a bad ``batch_size`` or ``data``, or a ``batch_size`` that does not divide
            by the number of devices (the message names both).
    """
    check_key(key)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    n = _data_size(data)
    batch_size = _check_positive_int(batch_size, "batch_size")
    chosen = _resolve_devices(devices)
    split = None
    if len(chosen) > 1:
        _check_divides(batch_size, len(chosen), "batch_size")
        split = _Split(chosen)
    batch_size = min(batch_size, n)
    names = _check_output(loss_fn, params, key, jax.tree.map(lambda a: a[:batch_size], data))
    dynamic, static = eqx.partition(params, eqx.is_array)

    def divides(batches) -> bool:  # batches [count, rows, ...]: are the rows split over the devices?
        return split is not None and jax.tree.leaves(batches)[0].shape[1] % split.count == 0

    def place(batches):
        if split is None:
            return batches
        spec = PartitionSpec(None, "batch") if divides(batches) else PartitionSpec()
        return jax.device_put(batches, NamedSharding(split.mesh, spec))

    if split is not None:
        dynamic, key = split.place((dynamic, key))

    @jax.jit
    def score(dyn, batches, first, key):
        sharded = divides(batches)

        def one(i, batch):
            if sharded and split is not None:
                batch = split.shard(batch)
            loss, terms = _call(loss_fn, eqx.combine(dyn, static), jax.random.fold_in(key, i), batch)
            return jnp.stack([loss, *(terms[k] for k in names)])

        index = first + jnp.arange(jax.tree.leaves(batches)[0].shape[0])
        return jax.lax.map(lambda args: one(*args), (index, batches))  # one batch in memory at a time

    num_full, remainder = divmod(n, batch_size)
    head = jax.tree.map(lambda a: a[: num_full * batch_size].reshape(num_full, batch_size, *a.shape[1:]), data)
    totals = np.asarray(score(dynamic, place(head), 0, key), np.float64).sum(0) * batch_size
    if remainder:
        tail = jax.tree.map(lambda a: a[num_full * batch_size :][None], data)
        totals += np.asarray(score(dynamic, place(tail), num_full, key), np.float64)[0] * remainder
    return {name: float(v / n) for name, v in zip(["loss", *names], totals, strict=True)}


def fit_stacked(
    key: jax.Array,
    make: Callable[[jax.Array], Any],
    loss: Callable[..., Any],
    weights,
    data: Any,
    *,
    num_steps: int,
    batch_size: int | None = 128,
    optimizer: optax.GradientTransformation | None = None,
    terms: tuple[str, ...] = ("rate", "distortion"),
    progress: bool = True,
    desc: str | None = None,
    devices: int | Sequence[Any] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    r"""Train one model per weight at once: parameters stacked, one vmapped, compiled :func:`fit` loop.

    A sweep over a weight (chapter 6's :math:`\beta` on the rate, chapter 7's :math:`\beta`, or
    several seeds of one weight) is many small, identical trainings. Here model :math:`m`, built by
    ``make(key_m)``, minimises ``loss(model_m, key, batch, weights[m])`` on the *same* batches
    as the others, with its own noise key; the losses are summed, which leaves each model its own
    gradient (and Adam's per-parameter step its own), so each trains as if alone, in one program.

    Args:
        key: JAX PRNG key: split into the models' initial keys and :func:`fit`'s key.
        make: ``key -> model`` (an Equinox module or any pytree of arrays).
        loss: ``(model, key, batch, weight) -> objective``: a :class:`~klbook.recipe.KLObjective`
            or ``(loss, terms)``, its terms holding every name in ``terms``.
        weights: ``[M]`` finite numbers, one model each (repeats allowed).
        data: as in :func:`fit`.
        num_steps, batch_size, optimizer, progress, devices: as in :func:`fit` (default optimizer
            Adam, 1e-3): with several devices each shared batch is split over them and every
            device holds all ``M`` models.
        terms: the loss's terms to record per model.
        desc: the progress bar's label.

    Returns:
        ``(models, history)``: the models stacked on a leading axis ``M`` (:func:`member` takes one
        out) and ``name -> [num_steps]`` with ``loss`` and ``"{term}/{m}"`` per model.

    Raises:
        ValueError: ``weights`` not a non-empty vector of finite numbers.
    """
    check_key(key)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim != 1 or weights.size == 0 or not bool(jnp.all(jnp.isfinite(weights))):
        raise ValueError(
            f"weights must be a non-empty vector of finite numbers, one per model (shape [M]); "
            f"got shape {weights.shape}: {weights}"
        )
    if isinstance(terms, str) or not all(isinstance(t, str) for t in terms):
        raise TypeError(f"terms must be a tuple of term names; got {terms!r}")
    if data is not None:  # the devices and the batch checked before the models are built
        checked = None if batch_size is None else _check_positive_int(batch_size, "batch_size")
        _split_for(devices, _data_size(data), checked)
    k_init, k_fit = jax.random.split(key)
    models = init_stacked(make, jax.random.split(k_init, weights.size))
    count = weights.size

    def loss_fn(stacked, k, batch):
        keys = jax.random.split(k, count)
        losses, ts = eqx.filter_vmap(lambda m, kk, w: _as_pair(loss(m, kk, batch, w)))(stacked, keys, weights)
        # checked while fit traces this once, abstractly, before anything is compiled
        if getattr(losses, "shape", None) != (count,):
            raise ValueError(
                f"loss(model, key, batch, weight) must return a scalar loss for each model; got "
                f"shape {getattr(losses, 'shape', (count,))[1:]} per model (a per-example loss "
                "not averaged over the batch?)"
            )
        if not isinstance(ts, dict):
            raise TypeError(f"loss's terms must be a dict name -> scalar; got {type(ts).__name__}")
        missing = [n for n in terms if n not in ts]
        if missing:
            raise ValueError(
                f"fit_stacked records terms {list(terms)}, but loss returns no {missing} "
                f"(it returns {sorted(ts)}); pass terms= with names it returns"
            )
        for n in terms:
            if ts[n].shape != (count,):
                raise ValueError(f"term {n!r} must be a scalar for each model; got shape {ts[n].shape[1:]} per model")
        named = {f"{n}/{i}": ts[n][i] for n in terms for i in range(count)}
        return jnp.sum(losses), named

    res = fit(
        k_fit,
        loss_fn,
        models,
        num_steps=num_steps,
        data=data,
        batch_size=batch_size,
        optimizer=optax.adam(1e-3) if optimizer is None else optimizer,
        progress=progress,
        desc=desc or f"{weights.size} models",
        devices=devices,
    )
    return res.params, res.history


def init_stacked(make: Callable[[jax.Array], Any], keys: jax.Array) -> Any:
    """``make(key)`` for each of ``keys [M]``, stacked on a leading axis ``M``: one vmapped program.

    Compiled cheaply, without LLVM's optimisations on a CPU: it runs once.

    Raises:
        TypeError: ``make`` not callable, or ``keys`` not a vector of PRNG keys (``jax.random.split(key, M)``:
            typed keys of shape ``[M]`` or raw ``uint32 [M, 2]``); one key is refused by name.
    """
    if not callable(make):
        raise TypeError(f"make must be callable as make(key) -> model; got {type(make).__name__}")
    check_key(keys)
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if keys.ndim != (1 if typed else 2) or keys.shape[0] == 0:
        raise TypeError(
            f"keys must hold one PRNG key per model on a leading axis, e.g. jax.random.split(key, M); got "
            f"{'typed keys' if typed else 'raw uint32 key data'} of shape {keys.shape}"
            + (" (a single key)" if keys.ndim == (0 if typed else 1) else "")
        )
    return filter_jit_once(eqx.filter_vmap(make))(keys)


def stack_size(stacked: Any, what: str = "stacked") -> int:
    """The number ``M`` of models stacked on a leading axis: every array of ``stacked`` is ``[M, ...]``.

    Raises ``ValueError`` naming ``what`` when there is no array, an array has no axis, or the
    leading sizes differ (an unstacked model, most often). An unstacked model whose arrays all
    happen to share their first size (say ``w [3, 2]`` and ``b [3]``) cannot be told apart.
    """
    leaves = [a for a in jax.tree.leaves(stacked) if eqx.is_array(a)]
    if not leaves:
        raise ValueError(f"{what} holds no arrays; expected models stacked on a leading axis (see fit_stacked)")
    sizes = sorted({a.shape[0] if a.ndim else -1 for a in leaves})
    if len(sizes) != 1 or sizes[0] < 1:
        shown = ", ".join("scalar" if s < 0 else str(s) for s in sizes)
        raise ValueError(
            f"{what} must be models stacked on a leading axis M (every array [M, ...], as fit_stacked and "
            f"init_stacked return them); its arrays have leading sizes {shown}: an unstacked model?"
        )
    return sizes[0]


def member(stacked: Any, i: int) -> Any:
    """Model ``i`` of models stacked on a leading axis (by :func:`fit_stacked`), ``-M <= i < M``.

    Raises:
        ValueError: ``stacked`` is not stacked (see :func:`stack_size`).
        TypeError: ``i`` is not an integer.
        IndexError: ``i`` is out of range (JAX's indexing would silently return another model).
    """
    count = stack_size(stacked)
    dtype = np.dtype(type(i)) if isinstance(i, (int, np.integer)) else getattr(i, "dtype", None)
    if isinstance(i, bool) or dtype is None or np.ndim(i) != 0 or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"the model index must be an integer; got {i!r}")
    try:
        index = int(i)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        index = None  # a traced index (inside jit or vmap): no value to check
    if index is not None and not -count <= index < count:
        raise IndexError(
            f"model index {index} is out of range for {count} stacked models (use -{count} <= i < {count})"
        )
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, stacked)
