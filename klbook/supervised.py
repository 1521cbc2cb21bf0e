r"""Supervised learning: a classifier is the dream world's :math:`q(y\mid x)` (chapter 5).

The real world holds labelled data, both observed, with an unknown joint density
:math:`p(x, y)`. The dream world takes the same inputs (it does not model their density: both
worlds read :math:`x` from the data) and draws a label from the classifier,
:math:`y \sim q(y\mid x) = \mathrm{Categorical}(\mathrm{softmax}\, f_\theta(x))`. The recipe's
KL is then a conditional KL, and up to the label entropy we cannot change it is the
cross-entropy loss:

.. math:: I[P;Q] &= \left\langle \log\frac{p(x)\,p(y\mid x)}{p(x)\,q(y\mid x)}\right\rangle_{p(x, y)}
          = \big\langle I[p(y\mid x);\, q(y\mid x)]\big\rangle_{p(x)} \\
          &= \underbrace{-\langle \log q(y\mid x)\rangle_{p(x, y)}}_{\text{cross-entropy}} - H[Y\mid X].

:func:`real_world` and :func:`dream_world` are the two NumPyro models (use them with
:func:`klbook.recipe.kl_objective` and ``NAMES``; :func:`objective` does); :func:`train` fits a
classifier with :func:`klbook.train.fit` and :func:`train_ensemble` fits many at once;
:func:`features` reads the penultimate layer of an ``eqx.nn.MLP`` and :func:`linear_probe` asks
how well a linear classifier on such features does on a task the network never saw;
:func:`probe_accuracy` averages such probes over several random fit/score splits.
:func:`fit_temperature` calibrates a trained classifier on held-out data (temperature scaling).
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
from klbook.train import Devices, FitResult, fit

__all__ = [
    "NAMES",
    "real_world",
    "dream_world",
    "objective",
    "logits",
    "features",
    "accuracy",
    "train",
    "ensemble",
    "member",
    "train_ensemble",
    "Probe",
    "linear_probe",
    "probe_accuracy",
    "fit_temperature",
]

#: The recipe's names for the two sites: the inputs' term (zero: both worlds read x from the
#: data) and the labels' term, the cross-entropy ``-<log q(y|x)>`` (named ``classification``, as
#: in :mod:`klbook.vib` and :mod:`klbook.semisup`).
NAMES = {"x": "inputs", "y": "classification"}


def _check(net: eqx.nn.MLP, x, y) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not isinstance(net, eqx.nn.MLP):
        raise TypeError(f"net must be an eqx.nn.MLP (e.g. klbook.nn.mlp); got {type(net).__name__}")
    num_classes = net.out_size
    if not isinstance(num_classes, int):
        raise ValueError(f"net must output one logit per class (integer out_size); got out_size={num_classes!r}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != net.in_size:
        raise ValueError(f"x must have shape [N, {net.in_size}] with N >= 1; got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point (e.g. klbook.data.to_unit_interval); got {x.dtype}")
    if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},); got {y.shape}, {y.dtype}")
    check_finite(x, "x")
    if is_concrete(y):  # numpy, not jnp: under a trace even a concrete array's min is staged
        low, high = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {low}..{high}")
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
    """The recipe's ledger for a classifier: ``inputs`` (zero) and ``classification``, nats per example.

    ``classification`` is the cross-entropy :math:`-\\langle\\log q(y\\mid x)\\rangle`; ``dropped`` lists
    ``x`` and ``y``: the data's own entropy, which no classifier changes. For
    :func:`klbook.train.fit`: ``lambda net, k, batch: supervised.objective(k, net, *batch)``.
    """
    return kl_objective(key, real_world, dream_world, net, x, y, names=NAMES)


def _loss(net: eqx.nn.MLP, key: jax.Array, batch) -> KLObjective:  # fit's callback: parameters first
    return objective(key, net, *batch)


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
    devices: Devices = None,
) -> FitResult:
    """Minimise the recipe's KL (the cross-entropy) with Adam on minibatches of ``(x, y)``.

    Returns:
        :class:`klbook.train.FitResult`; ``history`` has ``loss``, ``inputs`` and ``classification``.

    ``devices`` splits each batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device; the batch size must divide by their number,
    or a ``ValueError`` naming both is raised before anything compiles).
    """
    x, y = _check(net, x, y)
    return fit(
        key,
        _loss,
        net,
        num_steps=num_steps,
        optimizer=optax.adam(learning_rate),
        data=(x, y),
        batch_size=batch_size,
        progress=progress,
        desc="classifier",
        devices=devices,
    )


def ensemble(
    key: jax.Array, num_members: int, in_size: int, num_classes: int, *, width: int = 64, depth: int = 2
) -> eqx.nn.MLP:
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
    devices: Devices = None,
) -> FitResult:
    """Train a stack of classifiers (:func:`ensemble`) together, in one compiled loop.

    Each member minimises its own recipe KL on the shared minibatches: the loss is the sum of
    the members' cross-entropies, whose gradient with respect to one member's weights is that
    member's own gradient (Adam scales each weight separately). ``history["classification"]``
    is the members' mean. ``devices`` as in :func:`train`.
    """
    x, y = _check(member(nets, 0), x, y)

    def loss(stack, k, batch):
        per_member = eqx.filter_vmap(lambda net: _loss(net, k, batch).loss)(stack)  # [M]
        return jnp.sum(per_member), {"classification": jnp.mean(per_member)}

    return fit(
        key,
        loss,
        nets,
        num_steps=num_steps,
        optimizer=optax.adam(learning_rate),
        data=(x, y),
        batch_size=batch_size,
        progress=progress,
        desc="ensemble",
        devices=devices,
    )


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


def _probe_one(f: jax.Array, onehot: jax.Array, perm: jax.Array, half: int, num_steps: int) -> jax.Array:
    # One split: standardise on the fitted half, minimise 0.5 |W|^2 + sum of cross-entropies
    # (scikit-learn's default penalty, C = 1, intercept unpenalised) by damped Newton steps,
    # and score the arg-max on the other half.
    fit_x, fit_y = f[perm[:half]], onehot[perm[:half]]
    mean, sd = jnp.mean(fit_x, axis=0), jnp.std(fit_x, axis=0)
    sd = jnp.where(sd > 1e-6 * (1.0 + jnp.abs(mean)), sd, 1.0)  # constant features: left as they are

    def design(x):  # [n, F] -> [n, F + 1]: standardised features and a column of ones
        z = (x - mean[None, :]) / sd[None, :]
        return jnp.concatenate([z, jnp.ones_like(z[:, :1])], axis=1)

    a = design(fit_x)
    num_in, num_classes = a.shape[1], onehot.shape[1]
    penalty = jnp.ones(num_in).at[-1].set(0.0)  # no penalty on the intercept

    def objective(theta):  # theta [F + 1, K]
        z = a @ theta
        ce = jax.nn.logsumexp(z, axis=1) - jnp.sum(z * fit_y, axis=1)
        return 0.5 * jnp.sum(penalty[:, None] * theta**2) + jnp.sum(ce)

    def newton(theta, _):
        p = jax.nn.softmax(a @ theta, axis=1)  # [n, K]
        grad = a.T @ (p - fit_y) + penalty[:, None] * theta  # [F + 1, K]
        curv = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)  # [n, K, K]
        hess = jnp.einsum("if,ikl,ig->fkgl", a, curv, a).reshape(num_in * num_classes, -1)
        # The intercepts' common shift is a flat direction; a small ridge keeps the solve regular.
        ridge = jnp.repeat(penalty, num_classes) + 1e-4
        direction = -jnp.linalg.solve(hess + jnp.diag(ridge), grad.reshape(-1)).reshape(theta.shape)
        sizes = 0.5 ** jnp.arange(8.0)
        trial = jax.vmap(lambda t: objective(theta + t * direction))(sizes)
        best = jnp.argmin(jnp.where(jnp.isfinite(trial), trial, jnp.inf))
        better = trial[best] < objective(theta)
        return jnp.where(better, theta + sizes[best] * direction, theta), None

    theta, _ = jax.lax.scan(newton, jnp.zeros((num_in, num_classes), f.dtype), None, length=num_steps)
    score = perm[half:]
    guess = jnp.argmax(design(f[score]) @ theta, axis=1)
    return jnp.mean(guess == jnp.argmax(onehot[score], axis=1))


def probe_accuracy(features, labels, splits, *, num_steps: int = 30) -> np.ndarray:
    """A linear probe's test accuracy averaged over several fit/score splits, for many layers at once.

    One split scores a probe on a few hundred examples, so its accuracy carries the luck of the
    split as well as the quality of the features; averaging over splits removes most of it. The
    probe is :func:`linear_probe`'s (each feature standardised on the fitted half, multinomial
    logistic regression with scikit-learn's default L2 penalty, :math:`C = 1`), fitted here in
    JAX by damped Newton steps and vmapped over layers and splits, so that hundreds of probes
    cost one compiled call.

    Args:
        features: ``[N, F]`` frozen features of ``N`` examples, or ``[M, N, F]`` for ``M`` layers.
        labels: integer labels ``[N]`` (any values; at least two distinct).
        splits: integer ``[S, N]`` (or ``[M, S, N]``, each layer its own splits), each row a
            permutation of ``0..N-1`` (e.g. ``jax.random.permutation``); a probe is fitted on the
            first ``N // 2`` examples of a row and scored on the rest.
        num_steps: Newton steps per probe.

    Returns:
        The mean accuracy over the splits: a float64 scalar array, or ``[M]`` for ``M`` layers.
    """
    f, y, s = np.asarray(features, np.float32), np.asarray(labels), np.asarray(splits)
    batched = f.ndim == 3
    if f.ndim not in (2, 3) or y.ndim != 1 or y.shape[0] != f.shape[-2]:
        raise ValueError(
            f"features must be [N, F] or [M, N, F] with one label per row; got {f.shape} and labels {y.shape}"
        )
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers; got {y.dtype}")
    n = f.shape[-2]
    want = (f.shape[0], s.shape[-2] if s.ndim == 3 else -1, n) if batched else (s.shape[0] if s.ndim == 2 else -1, n)
    if s.ndim != f.ndim or s.shape != want or s.shape[-2] < 1 or s.dtype.kind not in "iu":
        layers = f"{f.shape[0]}, " if batched else ""
        raise ValueError(f"splits must be integer [{layers}S, {n}] with S >= 1; got {s.shape}, {s.dtype}")
    if not np.all(np.sort(s, axis=-1) == np.arange(n)):
        raise ValueError(f"each row of splits must be a permutation of 0..{n - 1}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features must be finite")
    classes, index = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError("the probe needs at least two classes among the labels")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    onehot = jax.nn.one_hot(jnp.asarray(index), classes.size)
    f, s = (f, s) if batched else (f[None], s[None])
    acc = _probe_layers(jnp.asarray(f), onehot, jnp.asarray(s, jnp.int32), n // 2, num_steps)  # [M, S]
    means = np.asarray(acc, np.float64).mean(axis=1)
    return means if batched else means[0]


@eqx.filter_jit
def _probe_layers(f, onehot, splits, half, num_steps):
    one = lambda layer, perm: _probe_one(layer, onehot, perm, half, num_steps)  # noqa: E731
    return jax.vmap(lambda layer, rows: jax.vmap(lambda perm: one(layer, perm))(rows))(f, splits)


def _temperature(logits: jax.Array, labels: jax.Array, num_iter: int, low: float, high: float) -> jax.Array:
    # Mean cross-entropy at inverse temperature b is <logsumexp(b f) - b f_y>, convex in b; its
    # derivative <E_softmax(b f)[f] - f_y> is non-decreasing, so bisection on log b finds the
    # minimiser (or the end of the bracket it lies beyond).
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]  # [N]

    def slope(log_b):
        probs = jax.nn.softmax(jnp.exp(log_b) * logits, axis=-1)
        return jnp.mean(jnp.sum(probs * logits, axis=-1) - picked)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        up = slope(mid) < 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_iter, step, (jnp.log(1.0 / high), jnp.log(1.0 / low)))
    t = 1.0 / jnp.exp(0.5 * (lo + hi))
    return jnp.where(jnp.all(jnp.isfinite(logits)), t, jnp.nan)


def fit_temperature(logits, labels, *, low: float = 1e-2, high: float = 1e2, num_iter: int = 60) -> jax.Array:
    r"""Temperature scaling: the :math:`T` minimising the cross-entropy of :math:`\mathrm{softmax}(f/T)`.

    Fit it on held-out examples (a validation split, never the training set, whose logits are
    overconfident by construction) and divide the classifier's logits by it. One parameter
    changes no prediction (the arg-max is the same) but can bring an overconfident classifier's
    cross-entropy down on fresh data (Guo et al. 2017, *On calibration of modern neural
    networks*). The mean cross-entropy is convex in :math:`1/T`, so bisection on
    :math:`\log(1/T)` finds the minimiser; if it lies outside ``[low, high]`` the nearer end is
    returned. On separable data the loss falls without bound as :math:`T \to 0`; the bisection
    then stops where the float32 loss is flat.

    Args:
        logits: ``[N, K]`` floating-point logits of held-out examples.
        labels: integer labels ``[N]`` in ``0..K-1``.
        low, high: the bracket for :math:`T`, ``0 < low < high``.
        num_iter: bisection steps (60 halve the bracket to float32 resolution).

    Returns:
        The temperature, a scalar (NaN under ``jit`` if a logit is not finite).
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, K] with N >= 1 and K >= 2; got {logits.shape}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be floating point; got {logits.dtype}")
    if labels.shape != logits.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integer labels of shape ({logits.shape[0]},); got {labels.shape}, {labels.dtype}"
        )
    if not (0 < float(low) < float(high) and np.isfinite(high)):
        raise ValueError(f"need 0 < low < high < inf for the temperature bracket; got {low}, {high}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"num_iter must be a positive integer; got {num_iter!r}")
    check_finite(logits, "logits")
    if is_concrete(labels):
        lo_label, hi_label = int(np.min(np.asarray(labels))), int(np.max(np.asarray(labels)))
        if lo_label < 0 or hi_label >= logits.shape[1]:
            raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}; got {lo_label}..{hi_label}")
    return _temperature(logits, labels, num_iter, float(low), float(high))
