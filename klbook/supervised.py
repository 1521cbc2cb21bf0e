r"""Supervised learning: a classifier is the dream world's :math:`q(y\mid x)` (chapter 5).

The real world holds labelled data, both observed, with an unknown joint density
:math:`p(x, y)`. The dream world takes the same inputs (it does not model their density: both
worlds read :math:`x` from the data) and draws a label from the classifier,
:math:`y \sim q(y\mid x) = \mathrm{Categorical}(\mathrm{softmax}\, f_\theta(x))`. The recipe's
KL is then a conditional KL, and up to the label entropy we cannot change it is the
cross-entropy loss:

.. math:: I[P;Q] = \left\langle \log\frac{p(x)\,p(y\mid x)}{p(x)\,q(y\mid x)}\right\rangle_{p(x, y)}
          = \big\langle I[p(y\mid x);\, q(y\mid x)]\big\rangle_{p(x)}
          = \underbrace{-\langle \log q(y\mid x)\rangle_{p(x, y)}}_{\text{cross-entropy}} - H[Y\mid X].

:func:`real_world` and :func:`dream_world` are the two NumPyro models (use them with
:func:`klbook.recipe.kl_objective` and ``NAMES``; :func:`objective` does); :func:`train` fits a
classifier with :func:`klbook.train.fit` and :func:`train_ensemble` fits many at once;
:func:`features` reads the penultimate layer of an ``eqx.nn.MLP`` and :func:`linear_probe` asks
how well a linear classifier on such features does on a task the network never saw.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax

from klbook._checks import check_finite, is_concrete
from klbook.nn import categorical_head, mlp
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import FitResult, fit

__all__ = ["NAMES", "real_world", "dream_world", "objective", "loss_fn", "logits", "features",
           "accuracy", "train", "ensemble", "member", "train_ensemble", "Probe", "linear_probe"]

#: The recipe's names for the two sites: the inputs' term (zero: both worlds read x from the
#: data) and the labels' term, the cross-entropy.
NAMES = {"x": "inputs", "y": "cross_entropy"}


def _check(net: eqx.nn.MLP, x, y) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not isinstance(net, eqx.nn.MLP):
        raise TypeError(f"net must be an eqx.nn.MLP (e.g. klbook.nn.mlp); got {type(net).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != net.in_size:
        raise ValueError(f"x must have shape [N, {net.in_size}] with N >= 1; got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point (e.g. klbook.data.to_unit_interval); got {x.dtype}")
    if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},); got {y.shape}, {y.dtype}")
    check_finite(x, "x")
    if is_concrete(y):  # numpy, not jnp: under a trace even a concrete array's min is staged
        low, high = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if low < 0 or high >= net.out_size:
            raise ValueError(f"labels must lie in 0..{net.out_size - 1}; got {low}..{high}")
    return x, y


def logits(net: eqx.nn.MLP, x) -> jax.Array:
    """The classifier's logits :math:`f_\\theta(x)`, ``[N, num_classes]`` for ``x [N, in_size]``."""
    return jax.vmap(net)(jnp.asarray(x))


def real_world(net: eqx.nn.MLP, x, y) -> None:
    """P: labelled data, ``x [N, D]`` and ``y [N]`` both observed, their density unknown."""
    x, y = _check(net, x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        data("y", y)


def dream_world(net: eqx.nn.MLP, x, y) -> None:
    """Q: the same inputs (density not modelled) and :math:`y \\sim q(y\\mid x)` from ``net``.

    ``y`` is not read here: the recipe substitutes the real world's labels and scores them.
    """
    x, _ = _check(net, x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        numpyro.sample("y", categorical_head(logits(net, x)))


def objective(key: jax.Array, net: eqx.nn.MLP, x, y) -> KLObjective:
    """The recipe's ledger for a classifier: ``inputs`` (zero) and ``cross_entropy``, nats per example.

    ``dropped`` lists ``x`` and ``y``: the data's own entropy, which no classifier changes.
    """
    return kl_objective(key, real_world, dream_world, net, x, y, names=NAMES)


def loss_fn(net: eqx.nn.MLP, key: jax.Array, batch) -> tuple[jax.Array, dict]:
    """``(loss, terms)`` for :func:`klbook.train.fit`; ``batch`` is ``(x, y)`` (e.g. ``data.Labelled``)."""
    x, y = batch
    obj = objective(key, net, x, y)
    return obj.loss, obj.terms


def features(net: eqx.nn.MLP, x) -> jax.Array:
    """The penultimate layer: every layer but the last, activations applied, ``[N, width]``.

    The classifier's logits are a linear function of these features, ``net(x) = W h(x) + b``.
    """
    if not isinstance(net, eqx.nn.MLP) or len(net.layers) < 2:
        raise TypeError("features needs an eqx.nn.MLP with at least one hidden layer (depth >= 1)")
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != net.in_size:
        raise ValueError(f"x must have shape [N, {net.in_size}]; got {x.shape}")

    def one(h):  # [in_size] -> [width]
        for layer in net.layers[:-1]:
            h = net.activation(layer(h))
        return h

    return jax.vmap(one)(x)


def accuracy(net: eqx.nn.MLP, x, y) -> float:
    """Fraction of examples whose most probable label under :math:`q(y\\mid x)` is the true one."""
    x, y = _check(net, x, y)
    return float(jnp.mean(jnp.argmax(logits(net, x), axis=-1) == y))


def train(
    key: jax.Array,
    net: eqx.nn.MLP,
    x,
    y,
    *,
    num_steps: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    progress: bool = True,
) -> FitResult:
    """Minimise the recipe's KL (the cross-entropy) with Adam on minibatches of ``(x, y)``.

    Returns:
        :class:`klbook.train.FitResult`; ``history`` has ``loss``, ``inputs`` and ``cross_entropy``.
    """
    x, y = _check(net, x, y)
    return fit(key, loss_fn, net, num_steps=num_steps, optimizer=optax.adam(learning_rate),
               data=(x, y), batch_size=batch_size, progress=progress, desc="classifier")


def ensemble(key: jax.Array, num_members: int, in_size: int, num_classes: int, *, width: int = 64,
             depth: int = 2) -> eqx.nn.MLP:
    """``num_members`` independently initialised :func:`klbook.nn.mlp` classifiers, stacked.

    One ``eqx.nn.MLP`` whose arrays carry a leading ``[num_members]`` axis (``eqx.filter_vmap``
    over the keys); :func:`member` takes one out.
    """
    if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
        raise ValueError(f"num_members must be a positive integer; got {num_members!r}")
    keys = jax.random.split(key, num_members)
    return eqx.filter_vmap(lambda k: mlp(k, in_size, num_classes, width=width, depth=depth))(keys)


def member(nets: eqx.nn.MLP, i: int) -> eqx.nn.MLP:
    """The ``i``-th classifier of a stack made by :func:`ensemble`."""
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, nets)


def train_ensemble(
    key: jax.Array,
    nets: eqx.nn.MLP,
    x,
    y,
    *,
    num_steps: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    progress: bool = True,
) -> FitResult:
    """Train a stack of classifiers (:func:`ensemble`) together, in one compiled loop.

    Each member minimises its own recipe KL on the shared minibatches: the loss is the sum of
    the members' cross-entropies, whose gradient with respect to one member's weights is that
    member's own gradient (Adam scales each weight separately). ``history["cross_entropy"]``
    is the members' mean.
    """
    x, y = _check(member(nets, 0), x, y)

    def loss(stack, k, batch):
        per_member = eqx.filter_vmap(lambda net: loss_fn(net, k, batch)[0])(stack)  # [M]
        return jnp.sum(per_member), {"cross_entropy": jnp.mean(per_member)}

    return fit(key, loss, nets, num_steps=num_steps, optimizer=optax.adam(learning_rate),
               data=(x, y), batch_size=batch_size, progress=progress, desc="ensemble")


class Probe(NamedTuple):
    """A linear probe's test ``accuracy`` and its binomial standard error on ``num_test`` examples."""

    accuracy: float
    stderr: float
    num_test: int


def linear_probe(train_features, train_labels, test_features, test_labels) -> Probe:
    r"""Fit a linear classifier on frozen features and score it on held-out examples.

    Each feature is standardised on the training examples, then scikit-learn's multinomial
    logistic regression (its default L2 penalty) is fitted. The standard error is binomial,
    :math:`\sqrt{a(1 - a)/n}` for accuracy :math:`a` on :math:`n` test examples.

    Args:
        train_features, test_features: ``[N, F]`` and ``[M, F]`` arrays.
        train_labels, test_labels: integer labels ``[N]`` and ``[M]``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_train, f_test = np.asarray(train_features, np.float64), np.asarray(test_features, np.float64)
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    if f_train.ndim != 2 or f_test.ndim != 2 or f_train.shape[1] != f_test.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F]; got {f_train.shape} and {f_test.shape}")
    if y_train.shape != f_train.shape[:1] or y_test.shape != f_test.shape[:1]:
        raise ValueError("there must be one label per row of features")
    if not (np.all(np.isfinite(f_train)) and np.all(np.isfinite(f_test))):
        raise ValueError("features must be finite")
    if np.unique(y_train).size < 2:
        raise ValueError("the probe needs at least two classes among the training labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(f_train, y_train)
    acc = float(probe.score(f_test, y_test))
    return Probe(acc, float(np.sqrt(acc * (1 - acc) / y_test.size)), int(y_test.size))
