r"""The variational information bottleneck: a classifier that must pay for every bit it reads (chapter 7).

The real world holds labelled data :math:`p(x, y)` and augments it with a *stochastic encoder*
:math:`p(z\mid x)` that sees only the image. The dream world holds the same images as data (it
does not model them), a fixed marginal :math:`q(z) = \mathcal{N}(0, I)` for the code, and a
classifier :math:`q(y\mid z)` that reads the code alone. The recipe's KL then splits into

.. math::
   I[P;Q] = \underbrace{\left\langle -\log q(y\mid z)\right\rangle_{p(x,y)\,p(z\mid x)}}_{C}
   + \underbrace{\left\langle \log\frac{p(z\mid x)}{q(z)}\right\rangle_{p(x)\,p(z\mid x)}}_{R}
   - H[Y\mid X] ,

(the images' term is zero: both worlds read :math:`x` as data) and the variational information
bottleneck (Alemi et al., 2017) minimises :math:`C + \beta R`. The recipe names :math:`C`, the
label's term, ``"classification"`` (as :mod:`klbook.supervised` does) and :math:`R` ``"rate"``.
The rate bounds the information the code keeps about the image, :math:`R \ge I(X; Z)`, and the
classification term bounds the cross-entropy of the *stochastic classifier*
:math:`\bar q(y\mid x) = \int p(z\mid x)\, q(y\mid z)\, dz` (Jensen's inequality), which in turn
is at least the conditional entropy :math:`H[Y\mid X]`:

.. math:: C \;\ge\; \left\langle -\log \bar q(y\mid x)\right\rangle_{p(x, y)} \;\ge\; H[Y\mid X],
   \qquad R \ge 0 .

The rate is priced below one nat per nat for a reason: :math:`C + R \ge H[Y]` for every encoder
and classifier (:math:`C \ge H[Y\mid Z]` and :math:`I(Y;Z) \le I(X;Z) \le R`), with equality for
a code that carries nothing, so the unweighted KL (:math:`\beta = 1`) is minimised by the
constant classifier; chapter 7 proves it and checks it on the digits.

In NumPyro's terms the real world is the guide (with the data) and the dream world the model:
``Trace_ELBO`` of the pair gives :math:`C + R`, and :math:`\beta` is a ``handlers.scale`` on the
code's site.

:func:`real_world` and :func:`dream_world` are the two NumPyro models (with ``NAMES`` for the
recipe); :func:`objective` is the weighted ledger :func:`fit_betas` trains; :func:`rate` is the
rate in closed form; :func:`predictive` is the stochastic classifier; :func:`fgsm` and
:func:`expected_calibration_error` measure what the bits buy beyond accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from klbook._checks import check_finite, is_concrete
from klbook.divergence import check_key
from klbook.nn import categorical_head, categorical_probs, diagonal_normal, gaussian_head, mlp
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import Devices, fit_stacked, member

__all__ = [
    "NAMES",
    "VIB",
    "vib",
    "real_world",
    "dream_world",
    "objective",
    "rate",
    "predictive",
    "error_rate",
    "fit_betas",
    "model_at",
    "Scores",
    "evaluate",
    "fgsm",
    "calibration_bins",
    "expected_calibration_error",
    "labelled_mixture",
    "label_posterior",
]

#: The recipe's names for the three sites: the images' term (zero: both worlds read x as data),
#: the code's term, the rate, and the labels' term :math:`C`, the classification term.
NAMES = {"x": "inputs", "z": "rate", "y": "classification"}


class VIB(eqx.Module):
    """A stochastic encoder :math:`p(z\\mid x)` and a classifier :math:`q(y\\mid z)` reading only the code.

    ``encoder``: ``x [data_dim] -> [2 latent_dim]`` (mean and raw scale of a diagonal Gaussian);
    ``decoder``: ``z [latent_dim] -> logits [num_classes]``. Both unbatched (Equinox style).
    """

    encoder: Callable
    decoder: Callable
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def check(self, x, y=None) -> tuple[jax.Array, jax.Array | None]:
        """``x [N, data_dim]`` (floats in [0, 1] or any finite scale) and integer labels ``y [N]``."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape [N, {self.data_dim}] with N >= 1; got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating point (e.g. klbook.data.to_unit_interval); got {x.dtype}")
        check_finite(x, "x")
        if y is None:
            return x, None
        y = jnp.asarray(y)
        if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"y must be integer labels of shape ({x.shape[0]},); got {y.shape}, {y.dtype}")
        if is_concrete(y):
            _labels_in_range(y, self.num_classes)
        return x, y

    def encode(self, x) -> dist.Distribution:
        """The encoder :math:`p(z\\mid x)`: batch ``(N,)``, event ``(latent_dim,)``."""
        x, _ = self.check(x)
        return gaussian_head(jax.vmap(self.encoder)(x))

    def classify(self, z) -> dist.Distribution:
        """The classifier :math:`q(y\\mid z)` for codes ``z [*B, latent_dim]``: batch ``*B``."""
        z = jnp.asarray(z)
        if z.ndim < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [..., {self.latent_dim}]; got {z.shape}")
        logits = jax.vmap(self.decoder)(z.reshape(-1, self.latent_dim))  # [prod(B), C]
        return categorical_head(logits.reshape(*z.shape[:-1], self.num_classes))

    def prior(self, n: int) -> dist.Distribution:
        """The code's marginal in the dream world, :math:`q(z) = \\mathcal{N}(0, I)`: batch ``(n,)``."""
        return dist.Normal(jnp.zeros((n, self.latent_dim)), 1.0).to_event(1)


def _labels_in_range(y: jax.Array | None, num_classes: int) -> jax.Array:
    """``y`` if every label lies in ``0..num_classes-1``; else a ValueError naming the range.

    Eagerly when ``y`` holds numbers; under ``jit`` (where ``y`` is a tracer) the same message stops
    the program at run time (``eqx.error_if``), so a wrapped call cannot turn a bad label into a
    silent NaN or a wrong count.
    """
    if y is None:
        raise ValueError("labels y are required here; got None")
    message = f"labels must lie in 0..{num_classes - 1}"
    if is_concrete(y):
        a = np.asarray(y)
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{message}; got {int(a.min())}..{int(a.max())}")
        return y
    return eqx.error_if(y, (y < 0) | (y >= num_classes), message)


def _logits(d: dist.Distribution) -> jax.Array:
    """The logits of :meth:`VIB.classify`'s distribution (a ``CategoricalLogits``, from ``categorical_head``)."""
    if not isinstance(d, dist.CategoricalLogits):
        raise TypeError(f"expected a categorical distribution from categorical_head; got {d}")
    return jnp.asarray(d.logits)


def vib(key: jax.Array, data_dim: int, latent_dim: int, num_classes: int, *, width: int = 256, depth: int = 2) -> VIB:
    """A VIB as in Alemi et al. (2017): an MLP encoder (``depth`` layers of ``width``) and a linear classifier."""
    check_key(key)
    k1, k2 = jax.random.split(key)
    return VIB(
        mlp(k1, data_dim, 2 * latent_dim, width=width, depth=depth),
        mlp(k2, latent_dim, num_classes, depth=0),
        data_dim,
        latent_dim,
        num_classes,
    )


def real_world(model: VIB, x, y) -> None:
    """P: labelled images ``x [N, D]``, ``y [N]`` (density unknown) and the encoder :math:`p(z\\mid x)`."""
    x, y = model.check(x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        data("y", y)
        numpyro.sample("z", model.encode(x))


def dream_world(model: VIB, x, y) -> None:
    """Q: the images as data, the code's marginal :math:`q(z)` and the classifier :math:`q(y\\mid z)`.

    ``y`` is not read: the recipe substitutes the real world's labels and scores them.
    """
    x, _ = model.check(x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        z = numpyro.sample("z", model.prior(x.shape[0]))
        numpyro.sample("y", model.classify(z))


def objective(key: jax.Array, model: VIB, x, y, *, beta=1e-3, num_particles: int = 1) -> KLObjective:
    r"""The VIB's ledger from the recipe: ``loss`` is :math:`C + \beta R`, nats per example.

    ``x [N, D]``, ``y [N]``; ``num_particles`` draws of the code per example. Returns the recipe's
    :class:`~klbook.recipe.KLObjective` with terms ``"inputs"`` (zero), ``"rate"`` (:math:`R`) and
    ``"classification"`` (:math:`C`); ``total`` is the unweighted :math:`C + R`, the KL up to the
    constant :math:`H[Y\mid X]` (the dropped data sites ``x`` and ``y``).
    """
    check_key(key)
    message = "beta must be a finite number >= 0"
    if is_concrete(beta):
        if np.ndim(beta) != 0 or not np.isfinite(beta) or beta < 0:
            raise ValueError(f"{message}; got {beta}")
    else:  # a traced beta (a sweep vmapped over it): the same message stops the program at run time
        beta = eqx.error_if(beta, ~jnp.isfinite(beta) | (beta < 0), message)
    return kl_objective(
        key, real_world, dream_world, model, x, y, names=NAMES, weights={"rate": beta}, num_particles=num_particles
    )


def rate(model: VIB, x) -> jax.Array:
    """The rate in closed form, :math:`I[p(z\\mid x); \\mathcal{N}(0, I)]` per example, ``[N]`` nats."""
    q = model.encode(x)
    return dist.kl_divergence(q, model.prior(q.batch_shape[0]))


def predictive(key: jax.Array, model: VIB, x, num_samples: int = 1) -> jax.Array:
    """The stochastic classifier :math:`\\bar q(y\\mid x) \\approx \\frac1S \\sum_s q(y\\mid z_s)`, ``[N, C]``.

    ``num_samples = 1`` is a one-draw classifier; more draws average the class probabilities.
    """
    check_key(key)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    encoder = model.encode(x)
    z = jax.vmap(encoder.sample)(jax.random.split(key, num_samples))  # [S, N, K]
    return jnp.mean(categorical_probs(model.classify(z)), axis=0)  # [N, C]


def error_rate(key: jax.Array, model: VIB, x, y, num_samples: int = 1) -> jax.Array:
    """Fraction of ``x`` the stochastic classifier (``num_samples`` draws averaged) gets wrong."""
    _, y = model.check(x, y)
    y = _labels_in_range(y, model.num_classes)  # also under an outer jit
    return jnp.mean(jnp.argmax(predictive(key, model, x, num_samples), axis=-1) != y)


def fit_betas(
    key: jax.Array,
    make: Callable[[jax.Array], VIB],
    betas: Sequence[float] | np.ndarray | jax.Array,
    x,
    y,
    *,
    num_steps: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    devices: Devices = None,
) -> tuple[VIB, dict[str, np.ndarray]]:
    r"""Train one VIB per β at once: parameters stacked, one vmapped, compiled loop.

    Model :math:`m` minimises :math:`C + \beta_m R` (:func:`objective`) on the same batches; the
    losses are summed, which leaves each model its own gradient. ``betas`` may contain 0 (a plain
    stochastic classifier) and repeats (several seeds of one β); :func:`klbook.train.fit_stacked`
    does the training. Returns the stacked models
    (leading axis ``len(betas)``; see :func:`model_at`) and the history with ``rate/i`` and
    ``classification/i`` per model.

    ``devices`` splits each shared batch over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device; ``batch_size`` must divide by their number,
    or a ``ValueError`` naming both is raised before anything compiles).
    """
    check_key(key)
    grid = jnp.asarray(betas, jnp.float32)
    if grid.ndim != 1 or grid.size == 0 or not bool(jnp.all(grid >= 0)):
        raise ValueError(f"betas must be a non-empty list of non-negative numbers; got {grid}")
    return fit_stacked(
        key,
        make,
        lambda m, k, batch, b: objective(k, m, batch[0], batch[1], beta=b),
        grid,
        (jnp.asarray(x), jnp.asarray(y)),
        num_steps=num_steps,
        batch_size=batch_size,
        optimizer=optimizer,
        terms=("rate", "classification"),
        progress=progress,
        desc=f"{grid.size} VIBs",
        devices=devices,
    )


def model_at(models: VIB, i: int) -> VIB:
    """Model ``i`` of models stacked by :func:`fit_betas` (:func:`klbook.train.member`)."""
    return member(models, i)


class Scores(NamedTuple):
    """What :func:`evaluate` measures for one model on a labelled set (nats, fractions; scalars)."""

    rate: jax.Array  #: closed-form rate :math:`R`, averaged over the images
    classification: jax.Array  #: :math:`C = \langle -\log q(y\mid z)\rangle` over the encoder's draws
    classification_se: jax.Array  #: its Monte Carlo standard error (over the independent draws)
    error_one: jax.Array  #: expected error of a one-draw classifier (averaged over the draws)
    error_avg: jax.Array  #: error of the stochastic classifier with ``num_samples`` draws averaged
    calibration: jax.Array  #: expected calibration error of that averaged classifier
    error_mean_code: jax.Array  #: error of the classifier read at the code's mean, :math:`q(y\mid\mu(x))`
    #: signed calibration gap of the averaged classifier: mean top-class probability minus accuracy
    #: (positive: overconfident; negative: underconfident). Its size is at most ``calibration``.
    confidence_gap: jax.Array


def evaluate(key: jax.Array, model: VIB, x, y, num_samples: int = 16) -> Scores:
    r"""Rate, classification term, errors and calibration of one VIB on ``x [N, D]``, ``y [N]``.

    ``num_samples`` draws :math:`z_s \sim p(z\mid x)` per image serve every sampled score; the
    classification term's standard error treats the ``num_samples`` draws (each averaged over the images)
    as independent estimates. ``error_one`` averages the one-draw error over the draws (lower
    variance than a single draw, same expectation). The draws are those of
    ``predictive(key, model, x, num_samples)``.

    The data are checked here, once, before the compiled program runs (shapes, dtypes, finite
    pixels, labels in range), so there is no need to wrap this function in ``jit``; wrapped all
    the same, an out-of-range label still stops the program with the same message.
    """
    check_key(key)
    x, y = model.check(x, y)
    y = _labels_in_range(y, model.num_classes)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (for a standard error); got {num_samples!r}")
    return _evaluate(key, model, x, y, int(num_samples))


@eqx.filter_jit
def _evaluate(key, model: VIB, x, y, num_samples: int) -> Scores:
    encoder = model.encode(x)
    z = jax.vmap(encoder.sample)(jax.random.split(key, num_samples))  # [S, N, K]
    log_probs = jax.nn.log_softmax(_logits(model.classify(z)), axis=-1)  # [S, N, C]
    nll = -jnp.take_along_axis(log_probs, y[None, :, None], axis=-1)[..., 0]  # [S, N]
    per_draw = jnp.mean(nll, axis=1)  # [S]
    qbar = jnp.mean(jnp.exp(log_probs), axis=0)  # [N, C]
    wrong_one = jnp.argmax(log_probs, axis=-1) != y[None, :]  # [S, N]
    at_mean = jnp.argmax(_logits(model.classify(diagonal_normal(encoder).loc)), axis=-1)  # [N]
    conf, correct, _ = _bins(qbar, y, 10)
    return Scores(
        rate=jnp.mean(rate(model, x)),
        classification=jnp.mean(per_draw),
        classification_se=jnp.std(per_draw, ddof=1) / jnp.sqrt(num_samples),
        error_one=jnp.mean(wrong_one),
        error_avg=jnp.mean(jnp.argmax(qbar, -1) != y),
        calibration=jnp.sum(jnp.abs(correct - conf)) / y.shape[0],
        error_mean_code=jnp.mean(at_mean != y),
        confidence_gap=(jnp.sum(conf) - jnp.sum(correct)) / y.shape[0],
    )


def labelled_mixture(key: jax.Array, num_samples: int, mixture: dist.MixtureSameFamily) -> tuple[jax.Array, jax.Array]:
    r"""Labelled points from a Gaussian mixture: the label is the component, ``x [N, d]``, ``y [N]``.

    With :func:`label_posterior` this is a world whose :math:`p(y\mid x)`, hence :math:`H[Y\mid X]`,
    is known, so the chain of bounds can be checked end to end (e.g. on
    :func:`klbook.data.ring_mixture`).
    """
    check_key(key)
    base = _diagonal_normal_components(mixture)
    k_which, k_noise = jax.random.split(key)
    loc, scale = jnp.asarray(base.loc), jnp.asarray(base.scale)  # [C, d]
    logits = jnp.asarray(mixture.mixing_distribution.logits)
    y = jax.random.categorical(k_which, logits, shape=(int(num_samples),))
    x = loc[y] + scale[y] * jax.random.normal(k_noise, (int(num_samples), loc.shape[-1]))
    return x, y.astype(jnp.int32)


def _diagonal_normal_components(mixture) -> dist.Normal:
    """The components of a mixture of diagonal Gaussians as one ``Normal`` with ``loc``, ``scale`` ``[C, d]``."""
    if not isinstance(mixture, dist.MixtureSameFamily):
        raise TypeError(f"mixture must be a numpyro MixtureSameFamily; got {type(mixture).__name__}")
    comp = mixture.component_distribution
    base = comp.base_dist if isinstance(comp, dist.Independent) else None
    if (
        not isinstance(comp, dist.Independent)
        or not isinstance(base, dist.Normal)
        or comp.reinterpreted_batch_ndims != 1
    ):
        raise TypeError(
            "the mixture's components must be diagonal Gaussians, Normal(loc, scale).to_event(1); "
            f"got {type(comp).__name__}"
        )
    num = jnp.asarray(mixture.mixing_distribution.logits).shape[-1]
    loc, scale = (
        jnp.broadcast_to(jnp.asarray(base.loc), comp.batch_shape + comp.event_shape),
        jnp.broadcast_to(jnp.asarray(base.scale), comp.batch_shape + comp.event_shape),
    )
    if loc.ndim != 2 or loc.shape[0] != num:
        raise ValueError(f"expected {num} components of shape [d]; got loc of shape {loc.shape}")
    return dist.Normal(loc, scale)


def label_posterior(mixture: dist.MixtureSameFamily, x) -> jax.Array:
    r"""The true :math:`p(y\mid x) \propto w_y\, \mathcal{N}(x; \mu_y, \Sigma_y)` of a mixture's components, ``[N, C]``.

    ``x [N, d]`` must have the components' dimension ``d`` (a ValueError otherwise: a ``[N, 1]``
    array would broadcast against ``d`` means and give a silent wrong answer).
    """
    base = _diagonal_normal_components(mixture)  # loc, scale [C, d]
    x = jnp.asarray(x)
    loc, scale = jnp.asarray(base.loc), jnp.asarray(base.scale)
    d = loc.shape[-1]
    if x.ndim != 2 or x.shape[-1] != d:
        raise ValueError(f"x must have shape [N, {d}], the mixture's dimension; got {x.shape}")
    log_lik = jnp.asarray(dist.Normal(loc[None], scale[None]).log_prob(x[:, None, :])).sum(-1)  # [N, C]
    logits = jax.nn.log_softmax(jnp.asarray(mixture.mixing_distribution.logits))[None, :] + log_lik  # [N, C]
    return jax.nn.softmax(logits, axis=-1)


def fgsm(model: VIB, x, y, epsilon: float, *, low: float = 0.0, high: float = 1.0) -> jax.Array:
    r"""The fast gradient-sign attack (Goodfellow et al., 2015) on the classifier at the code's mean.

    .. math::
       x' = \mathrm{clip}\big(x + \epsilon\, \mathrm{sign}\,\nabla_x [-\log q(y\mid \mu(x))],\
       [\text{low}, \text{high}]\big)

    Each pixel moves by at most ``epsilon``, in the direction that raises the loss of the true
    label fastest. Returns ``x' [N, D]``.
    """
    x, y = model.check(x, y)
    y = _labels_in_range(y, model.num_classes)
    if is_concrete(epsilon) and (not np.isfinite(epsilon) or epsilon < 0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}")

    def loss(xx):
        mean = diagonal_normal(model.encode(xx)).loc  # [N, K]
        return -jnp.sum(model.classify(mean).log_prob(y))

    return jnp.clip(x + epsilon * jnp.sign(jax.grad(loss)(x)), low, high)


def calibration_bins(probs, y, num_bins: int = 10) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Sums per equal-width bin of the top-class probability: ``(confidence, correct, count)``, each ``[num_bins]``.

    Bin :math:`b` holds the examples whose top-class probability lies in
    :math:`[b/\text{num\_bins}, (b+1)/\text{num\_bins})` (the last bin closed); ``confidence`` sums
    their top-class probabilities, ``correct`` counts their correct predictions and ``count`` the
    examples. :func:`expected_calibration_error` and chapter 11's reliability diagram
    (``klbook.bnn.reliability``) are both read from these sums. ``probs [N, C]``, ``y [N]``.

    Raises:
        ValueError: shapes other than ``[N, C]`` and ``[N]`` with ``N >= 1``; ``num_bins`` not a
            positive integer; labels outside ``0..C-1`` (eagerly, and at run time under ``jit``);
            concrete ``probs`` whose rows are not distributions (an entry outside [0, 1], or a
            row sum off 1 by more than ``1e-3``, far above float32 rounding of an average).
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer; got {num_bins!r}")
    probs, y = jnp.asarray(probs), jnp.asarray(y)
    if probs.ndim != 2 or y.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and y [N]; got {probs.shape} and {y.shape}")
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must be [N, C] with N >= 1 and C >= 1; got {probs.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer labels; got {y.dtype}")
    if is_concrete(probs):
        p = np.asarray(probs, np.float64)
        if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6 or np.max(np.abs(p.sum(-1) - 1)) > 1e-3:
            raise ValueError("probs must hold one probability vector per row (entries in [0, 1], rows summing to 1)")
    y = _labels_in_range(y, probs.shape[1])
    return _bins(probs, y, int(num_bins))


def _bins(probs, y, num_bins: int):
    conf = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == y).astype(jnp.float32)
    bins = jnp.clip((conf * num_bins).astype(jnp.int32), 0, num_bins - 1)
    return (
        jnp.zeros(num_bins).at[bins].add(conf),
        jnp.zeros(num_bins).at[bins].add(correct),
        jnp.zeros(num_bins).at[bins].add(1.0),
    )


def expected_calibration_error(probs, y, num_bins: int = 10) -> jax.Array:
    r"""Expected calibration error (Guo et al., 2017): confidence against accuracy, binned.

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\big|\mathrm{acc}(b) - \mathrm{conf}(b)\big|

    over ``num_bins`` equal-width bins of the top-class probability (:func:`calibration_bins`,
    which checks the arguments). The ECE has no sign: the signed gap
    :math:`\sum_b (\mathrm{conf}_b - \mathrm{correct}_b)/N` (``Scores.confidence_gap``) says
    whether the classifier is over- or underconfident. ``probs [N, C]``, ``y [N]``.
    """
    conf, correct, _ = calibration_bins(probs, y, num_bins)
    return jnp.sum(jnp.abs(correct - conf)) / jnp.shape(y)[0]
