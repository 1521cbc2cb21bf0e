r"""Semi-supervised learning: two choices of worlds when only some images carry a label (chapter 8).

**The post's model** (:class:`CodeModel`). The real world holds the data and an encoder
:math:`p(z\mid x)` that reads the image only; the dream world draws a code :math:`z \sim q(z)` and
predicts *both* the image, :math:`q(x\mid z)`, and the label, :math:`q(y\mid z)`, from it. With
weights on the two distortions, as the post writes it,

.. math:: \mathcal{L}_\text{post} = \left\langle -\beta \log q(x\mid z) - \gamma \log q(y\mid z)
   + \log\frac{p(z\mid x)}{q(z)} \right\rangle .

When an example has no label, :math:`y` is simply not a site of its worlds: the dream world's
:math:`q(y\mid z)` is summed out (it is a leaf, so it sums to one) and the label's term vanishes.
Per example of the whole set of :math:`N = N_l + N_u` images the recipe gives

.. math:: \mathcal{L} = \frac{N_l}{N}\big(\beta D_l + \gamma C_l + R_l\big) + \frac{N_u}{N}\big(\beta D_u + R_u\big),

with :math:`D = \langle -\log q(x\mid z)\rangle` the image's distortion, :math:`C = \langle -\log
q(y\mid z)\rangle` the label's and :math:`R` the rate (:func:`post_objective`).

The head may be a network of its own (:class:`CodeModel`), which only labelled images train, or
*tied to the prior* (:class:`TiedCodeModel`): the same joint of code and label written as
:math:`q(y)\,q(z\mid y)`, a Gaussian per class, so that :math:`q(z)` is their mixture and
:math:`q(y\mid z)` its Bayes posterior; then the rate of an unlabelled image trains the head too.
The worlds and the objective are the same for both.

**M2** (Kingma et al., 2014; :class:`M2`). Another choice of worlds: the real world gets a
classifier :math:`p(y\mid x)` that *imputes* the missing label, and an encoder :math:`p(z\mid x, y)`;
the dream world draws the label from :math:`q(y)`, the code from :math:`q(z)` and the image from
:math:`q(x\mid y, z)`. For an unlabelled image the label is a latent of the real world, and its
ten values are summed out exactly (``kl_objective(..., enumerate_sites=("y",))``):

.. math:: U(x) = \sum_{y} p(y\mid x)\Big[\log\frac{p(y\mid x)}{q(y)} + \Big\langle \log\frac{p(z\mid x,y)}{q(z)}
   - \log q(x\mid y,z)\Big\rangle_{p(z\mid x,y)}\Big].

A labelled image's label is data, and the classifier does not appear in its worlds at all, so
Kingma et al. add :math:`\alpha\langle -\log p(y\mid x)\rangle` over the labelled images
(:func:`m2_objective`).

The pixels are counts out of ``total_count`` (16 for the 8×8 digits) with binomial likelihoods
(:func:`klbook.nn.binomial_head`); the networks read ``x / total_count``. :func:`fit_models`
trains many models at once (one per seed or per weight, each with its own labelled set),
vmapped over a leading axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from klbook._checks import check_finite, is_concrete
from klbook._compile import filter_jit_once
from klbook.divergence import check_key
from klbook.nn import binomial_head, categorical_head, categorical_probs, diagonal_normal, gaussian_head, mlp
from klbook.recipe import KLObjective, data, kl_objective
from klbook.train import Devices, _check_positive_int, _split_for, fit, init_stacked, member, stack_size

__all__ = [
    "MIN_SCALE",
    "floored_scale",
    "POST_NAMES",
    "M2_NAMES",
    "CodeModel",
    "MixtureCodeModel",
    "TiedCodeModel",
    "M2",
    "Classifier",
    "code_model",
    "mixture_code_model",
    "tied_code_model",
    "m2",
    "classifier",
    "holdout",
    "mistakes",
    "per_model_adam",
    "post_real_world",
    "post_dream_world",
    "m2_real_world",
    "m2_dream_world",
    "post_objective",
    "m2_objective",
    "supervised_objective",
    "split_labelled",
    "Split",
    "fit_models",
    "model_at",
    "error_rate",
    "image_terms",
]

#: Recipe names for the post's model: the image's distortion D, the label's distortion C, the rate R.
POST_NAMES = {"x": "distortion", "y": "classification", "z": "rate"}
#: Recipe names for M2: the image's distortion, the label's term and the rate.
M2_NAMES = {"x": "distortion", "y": "label", "z": "rate"}


def _check(x, y, data_dim: int, num_classes: int, total_count: int, y_name: str = "y"):
    """``x [N, data_dim]`` counts in 0..total_count, ``y [N]`` labels in 0..num_classes-1 (or None)."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != data_dim:
        raise ValueError(f"x must have shape [N, {data_dim}] with N >= 1; got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"x must hold integer pixel counts in 0..{total_count}; got {x.dtype}")
    if is_concrete(x):
        low, high = int(np.min(np.asarray(x))), int(np.max(np.asarray(x)))
        if low < 0 or high > total_count:
            raise ValueError(f"pixel counts must lie in 0..{total_count}; got {low}..{high}")
    if y is None:
        return x, None
    y = jnp.asarray(y)
    if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"{y_name} must be integer labels of shape ({x.shape[0]},); got {y.shape}, {y.dtype}")
    if is_concrete(y):
        low, high = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {low}..{high}")
    return x, y


def _check_codes(z, latent_dim: int) -> jax.Array:
    """Codes ``z [N, latent_dim]`` (one per example), checked by shape: eagerly and under ``jit`` alike."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[-1] != latent_dim:
        raise ValueError(f"z must have shape [N, {latent_dim}] (one code per example); got {z.shape}")
    return z


#: Floor on the standard deviations of the class components :math:`q(z\mid y)` (as
#: :func:`klbook.nn.gaussian_head`'s ``min_scale``): a component cannot collapse to a point.
MIN_SCALE = 1e-4


def floored_scale(log_scales) -> jax.Array:
    r""":math:`\max(e^{s}, \sigma_{\min})` in value, with the gradient of :math:`e^{s}` everywhere.

    Above the floor this is ``exp(log_scales)`` bit for bit (the added term is exactly zero); below
    it the value stays at :data:`MIN_SCALE`, and the gradient is still ``exp``'s own, so a component
    pushed to the floor can grow back rather than freeze (a plain ``maximum`` would pass no gradient).
    The class components of :class:`TiedCodeModel` and :class:`MixtureCodeModel` use it; a model
    written outside the package that should match them (chapter 8's control heads) calls it too.
    """
    scale = jnp.exp(log_scales)
    return scale + jax.lax.stop_gradient(jnp.maximum(scale, MIN_SCALE) - scale)


class _Code(eqx.Module):
    """What the post's two parametrisations share: the encoder, the decoder and reading the head at the code's mean."""

    def _model(self) -> CodeModel | MixtureCodeModel | TiedCodeModel:
        # _Code is private and mixed only into these three, which declare its fields (as dataclass
        # fields in their own order, so they cannot be declared here without reordering them)
        return cast("CodeModel | MixtureCodeModel | TiedCodeModel", self)

    def check(self, x, y=None):
        """Checked ``x [N, D]`` (integer counts) and ``y [N]`` (integer labels, or None)."""
        m = self._model()
        return _check(x, y, m.data_dim, m.num_classes, m.total_count)

    def encode(self, x) -> dist.Distribution:
        """:math:`p(z\\mid x)`: batch ``(N,)``, event ``(K,)``."""
        m = self._model()
        x, _ = self.check(x)
        return gaussian_head(jax.vmap(m.encoder)(x / m.total_count))

    def decode(self, z) -> dist.Distribution:
        """:math:`q(x\\mid z)` for codes ``z [N, K]``, pixels out of ``total_count``: batch ``(N,)``, event ``(D,)``."""
        m = self._model()
        return binomial_head(jax.vmap(m.decoder)(_check_codes(z, m.latent_dim)), m.total_count)

    def predict(self, x) -> jax.Array:
        """Class probabilities :math:`q(y\\mid \\mu(x))` read at the code's mean, ``[N, C]``."""
        return categorical_probs(self._model().classify(diagonal_normal(self.encode(x)).loc))


class CodeModel(_Code):
    r"""The post's model: encoder :math:`p(z\mid x)`, decoder :math:`q(x\mid z)`, classifier :math:`q(y\mid z)`.

    Networks are unbatched: ``encoder [D] -> [2K]``, ``decoder [K] -> [D]`` (pixel logits),
    ``head [K] -> [C]`` (label logits). The head and the prior :math:`q(z) = \mathcal{N}(0, I)`
    share no parameters, so an image without a label never trains the head.
    """

    encoder: Callable
    decoder: Callable
    head: Callable
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    total_count: int = eqx.field(static=True)

    def classify(self, z) -> dist.Distribution:
        """:math:`q(y\\mid z)` for codes ``z [N, K]``: batch ``(N,)``."""
        return categorical_head(jax.vmap(self.head)(_check_codes(z, self.latent_dim)))

    def prior(self, n: int) -> dist.Distribution:
        """:math:`q(z) = \\mathcal{N}(0, I)`: batch ``(n,)``."""
        return dist.Normal(jnp.zeros((n, self.latent_dim)), 1.0).to_event(1)


class _Mixture(eqx.Module):
    """A prior that is a mixture of one diagonal Gaussian per class,
    :math:`q(z) = \\sum_y q(y)\\,q(z\\mid y)`, ``q(y)`` uniform."""

    def _mixture(self) -> MixtureCodeModel | TiedCodeModel:
        # _Mixture is private and mixed only into these two, which declare its fields
        return cast("MixtureCodeModel | TiedCodeModel", self)

    def components(self, n: int = 1) -> dist.Distribution:
        """:math:`q(z\\mid y)` for every class, repeated for ``n`` examples: batch ``(n, C)``, event ``(K,)``."""
        m = self._mixture()
        shape = (n, m.num_classes, m.latent_dim)
        scale = floored_scale(m.log_scales)  # never below MIN_SCALE
        return dist.Normal(jnp.broadcast_to(m.locs, shape), jnp.broadcast_to(scale, shape)).to_event(1)

    def prior(self, n: int) -> dist.Distribution:
        """:math:`q(z) = \\sum_y q(y)\\,q(z\\mid y)`, the classes' mixture: batch ``(n,)``, event ``(K,)``."""
        logits = jnp.zeros((n, self._mixture().num_classes))
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), self.components(n))


class MixtureCodeModel(_Code, _Mixture):
    r"""The post's model with the tied model's prior but a *separate* head: the control that isolates the tying.

    The prior is a mixture of ``num_classes`` diagonal Gaussians (``locs [C, K]``,
    ``log_scales [C, K]``; standard deviations never below :data:`MIN_SCALE`), as in
    :class:`TiedCodeModel`, and the head :math:`q(y\mid z)` is a network of its own
    (``head [K] -> [C]``), as in :class:`CodeModel`: the prior family is the tied model's, but an
    image without a label still never trains the head.
    """

    encoder: Callable
    decoder: Callable
    head: Callable
    locs: jax.Array
    log_scales: jax.Array
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    total_count: int = eqx.field(static=True)

    def classify(self, z) -> dist.Distribution:
        """:math:`q(y\\mid z)` for codes ``z [N, K]``: batch ``(N,)``."""
        return categorical_head(jax.vmap(self.head)(_check_codes(z, self.latent_dim)))


class TiedCodeModel(_Code, _Mixture):
    r"""The post's worlds with the label head tied to the prior: one joint :math:`q(y)\,q(z\mid y)`
    for the code and label.

    The dream world's :math:`q(z)\,q(y\mid z)` is written as :math:`q(y)\,q(z\mid y)`, with
    :math:`q(y)` uniform over the classes and :math:`q(z\mid y) = \mathcal{N}(\mu_y,
    \operatorname{diag}\sigma_y^2)` (``locs [C, K]``, ``log_scales [C, K]``: :math:`\sigma_y =
    \max(e^{s_y}, \sigma_{\min})` with :data:`MIN_SCALE`, which no component shrinks below). Then
    the prior is the mixture :math:`q(z) = \sum_y q(y)\,q(z\mid y)` and the head is its Bayes posterior
    :math:`q(y\mid z) = q(y)\,q(z\mid y)/q(z)`: the same joint, so :func:`post_real_world` and
    :func:`post_dream_world` serve unchanged. Because the head's parameters are the prior's, the
    rate :math:`\log p(z\mid x)/q(z)` of an image *without* a label trains the head too.
    ``encoder [D] -> [2K]`` and ``decoder [K] -> [D]`` as in :class:`CodeModel`.
    """

    encoder: Callable
    decoder: Callable
    locs: jax.Array
    log_scales: jax.Array
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    total_count: int = eqx.field(static=True)

    def classify(self, z) -> dist.Distribution:
        """:math:`q(y\\mid z) \\propto q(y)\\,q(z\\mid y)` for codes ``z [N, K]``: batch ``(N,)``."""
        z = _check_codes(z, self.latent_dim)
        return categorical_head(
            jnp.asarray(self.components(z.shape[0]).log_prob(z[:, None, :]))
        )  # q(y) uniform: a constant


class M2(eqx.Module):
    r"""Kingma et al.'s M2: classifier :math:`p(y\mid x)`, encoder :math:`p(z\mid x, y)`, decoder :math:`q(x\mid y, z)`.

    ``classifier [D] -> [C]``, ``encoder [D + C] -> [2K]``, ``decoder [K + C] -> [D]``; the label
    enters the encoder and decoder one-hot.
    """

    classifier: Callable
    encoder: Callable
    decoder: Callable
    data_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    total_count: int = eqx.field(static=True)

    def check(self, x, y=None):
        """Checked ``x [N, D]`` (integer counts) and ``y [N]`` (integer labels, or None)."""
        return _check(x, y, self.data_dim, self.num_classes, self.total_count)

    def classify(self, x) -> dist.Distribution:
        """The real world's classifier :math:`p(y\\mid x)`: batch ``(N,)``."""
        x, _ = self.check(x)
        return categorical_head(jax.vmap(self.classifier)(x / self.total_count))

    def encode(self, x, y) -> dist.Distribution:
        """:math:`p(z\\mid x, y)` for images ``x [N, D]`` and labels ``y [N]``: batch ``(N,)``, event ``(K,)``.

        Raises ValueError for labels outside ``0..num_classes-1`` (their one-hot would be a silent
        zero vector): eagerly when ``y`` is concrete, at run time (``eqx.error_if``) under ``jit``.
        """
        x, y = self.check(x, y)
        inputs = jnp.concatenate([x / self.total_count, self._one_hot(y)], axis=-1)
        return gaussian_head(jax.vmap(self.encoder)(inputs))

    def decode(self, z, y) -> dist.Distribution:
        """:math:`q(x\\mid y, z)` for codes ``z [N, K]`` and labels ``y [N]``: batch ``(N,)``, event ``(D,)``.

        Labels are checked as in :meth:`encode`.
        """
        z = _check_codes(z, self.latent_dim)
        y = jnp.asarray(y)
        if y.shape != z.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"y must be integer labels of shape ({z.shape[0]},); got {y.shape}, {y.dtype}")
        if is_concrete(y):
            _check(
                jnp.zeros((y.shape[0], self.data_dim), jnp.int32), y, self.data_dim, self.num_classes, self.total_count
            )
        inputs = jnp.concatenate([z, self._one_hot(y)], axis=-1)
        return binomial_head(jax.vmap(self.decoder)(inputs), self.total_count)

    def _one_hot(self, y) -> jax.Array:
        """One-hot labels; a traced label out of range stops the program with the same message as the eager check."""
        if not is_concrete(y):
            y = eqx.error_if(y, (y < 0) | (y >= self.num_classes), f"labels must lie in 0..{self.num_classes - 1}")
        return jax.nn.one_hot(y, self.num_classes)

    def label_prior(self, n: int) -> dist.Distribution:
        """:math:`q(y)`, uniform over the classes: batch ``(n,)``."""
        return dist.CategoricalLogits(logits=jnp.zeros((n, self.num_classes)))  # what Categorical(logits=) makes

    def prior(self, n: int) -> dist.Distribution:
        """:math:`q(z) = \\mathcal{N}(0, I)`: batch ``(n,)``."""
        return dist.Normal(jnp.zeros((n, self.latent_dim)), 1.0).to_event(1)

    def predict(self, x) -> jax.Array:
        """Class probabilities of the classifier :math:`p(y\\mid x)`, ``[N, C]``."""
        return categorical_probs(self.classify(x))


class Classifier(eqx.Module):
    """A plain classifier :math:`q(y\\mid x)` (the supervised-only baseline), same network as M2's."""

    net: Callable
    data_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    total_count: int = eqx.field(static=True)

    def check(self, x, y=None):
        """Checked ``x [N, D]`` (integer counts) and ``y [N]`` (integer labels, or None)."""
        return _check(x, y, self.data_dim, self.num_classes, self.total_count)

    def classify(self, x) -> dist.Distribution:
        """:math:`q(y\\mid x)`: batch ``(N,)``."""
        x, _ = self.check(x)
        return categorical_head(jax.vmap(self.net)(x / self.total_count))

    def predict(self, x) -> jax.Array:
        """Class probabilities, ``[N, C]``."""
        return categorical_probs(self.classify(x))


def code_model(
    key,
    data_dim: int,
    latent_dim: int,
    num_classes: int,
    *,
    width: int = 64,
    head_depth: int = 1,
    total_count: int = 16,
) -> CodeModel:
    """The post's model with one-hidden-layer MLPs of ``width``; the label head has ``head_depth`` hidden layers."""
    check_key(key)
    k1, k2, k3 = jax.random.split(key, 3)
    return CodeModel(
        mlp(k1, data_dim, 2 * latent_dim, width=width, depth=1),
        mlp(k2, latent_dim, data_dim, width=width, depth=1),
        mlp(k3, latent_dim, num_classes, width=width, depth=head_depth),
        data_dim,
        latent_dim,
        num_classes,
        total_count,
    )


def tied_code_model(
    key,
    data_dim: int,
    latent_dim: int,
    num_classes: int,
    *,
    width: int = 64,
    spread: float = 1.0,
    total_count: int = 16,
) -> TiedCodeModel:
    """The post's model with its head tied to the prior (:class:`TiedCodeModel`): one-hidden-layer MLPs of ``width``.

    The classes' means start as independent draws from :math:`\\mathcal{N}(0, \\text{spread}^2 I)`,
    their scales at 1.
    """
    check_key(key)
    if not spread > 0:
        raise ValueError(f"spread must be positive; got {spread!r}")
    k1, k2, k3 = jax.random.split(key, 3)
    return TiedCodeModel(
        mlp(k1, data_dim, 2 * latent_dim, width=width, depth=1),
        mlp(k2, latent_dim, data_dim, width=width, depth=1),
        spread * jax.random.normal(k3, (num_classes, latent_dim)),
        jnp.zeros((num_classes, latent_dim)),
        data_dim,
        latent_dim,
        num_classes,
        total_count,
    )


def mixture_code_model(
    key,
    data_dim: int,
    latent_dim: int,
    num_classes: int,
    *,
    width: int = 64,
    head_depth: int = 1,
    spread: float = 1.0,
    total_count: int = 16,
) -> MixtureCodeModel:
    """:class:`MixtureCodeModel`: the tied model's prior (initialised as :func:`tied_code_model`'s)
    with :func:`code_model`'s separate head."""
    check_key(key)
    if not spread > 0:
        raise ValueError(f"spread must be positive; got {spread!r}")
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return MixtureCodeModel(
        mlp(k1, data_dim, 2 * latent_dim, width=width, depth=1),
        mlp(k2, latent_dim, data_dim, width=width, depth=1),
        mlp(k4, latent_dim, num_classes, width=width, depth=head_depth),
        spread * jax.random.normal(k3, (num_classes, latent_dim)),
        jnp.zeros((num_classes, latent_dim)),
        data_dim,
        latent_dim,
        num_classes,
        total_count,
    )


def m2(key, data_dim: int, latent_dim: int, num_classes: int, *, width: int = 64, total_count: int = 16) -> M2:
    """M2 with one-hidden-layer MLPs of ``width`` for the classifier, encoder and decoder."""
    check_key(key)
    k1, k2, k3 = jax.random.split(key, 3)
    return M2(
        mlp(k1, data_dim, num_classes, width=width, depth=1),
        mlp(k2, data_dim + num_classes, 2 * latent_dim, width=width, depth=1),
        mlp(k3, latent_dim + num_classes, data_dim, width=width, depth=1),
        data_dim,
        latent_dim,
        num_classes,
        total_count,
    )


def classifier(key, data_dim: int, num_classes: int, *, width: int = 64, total_count: int = 16) -> Classifier:
    """The supervised-only baseline: the same one-hidden-layer MLP as M2's classifier."""
    check_key(key)
    return Classifier(mlp(key, data_dim, num_classes, width=width, depth=1), data_dim, num_classes, total_count)


def post_real_world(model: CodeModel | MixtureCodeModel | TiedCodeModel, x, y=None) -> None:
    """P of the post's model: images ``x [N, D]`` (and labels ``y [N]`` when given) and :math:`p(z\\mid x)`."""
    x, y = model.check(x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        if y is not None:
            data("y", y)
        numpyro.sample("z", model.encode(x))


def post_dream_world(model: CodeModel | MixtureCodeModel | TiedCodeModel, x, y=None) -> None:
    """Q of the post's model: :math:`q(z)\\,q(x\\mid z)\\,q(y\\mid z)`; without labels,
    :math:`q(y\\mid z)` is summed out (dropped)."""
    x, y = model.check(x, y)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", model.prior(x.shape[0]))
        numpyro.sample("x", model.decode(z))
        if y is not None:
            numpyro.sample("y", model.classify(z))


def m2_real_world(model: M2, x, y=None) -> None:
    """P of M2: images, labels as data when given, else imputed by :math:`p(y\\mid x)`; then :math:`p(z\\mid x, y)`."""
    x, y = model.check(x, y)
    with numpyro.plate("data", x.shape[0]):
        data("x", x, event_dim=1)
        if y is None:
            y = numpyro.sample("y", model.classify(x))
        else:
            data("y", y)
        numpyro.sample("z", model.encode(x, y))


def m2_dream_world(model: M2, x, y=None) -> None:
    """Q of M2: :math:`q(y)\\,q(z)\\,q(x\\mid y, z)`, the label drawn whether or not the data carry it."""
    x, _ = model.check(x, y)
    n = x.shape[0]
    with numpyro.plate("data", n):
        y = numpyro.sample("y", model.label_prior(n))
        z = numpyro.sample("z", model.prior(n))
        numpyro.sample("x", model.decode(z, y))


def _fractions(n_labelled: int, n_unlabelled) -> tuple[float, float]:
    if isinstance(n_unlabelled, bool) or not isinstance(n_unlabelled, (int, np.integer)) or n_unlabelled < 1:
        raise ValueError(
            f"n_unlabelled (the size of the whole unlabelled set) must be a positive integer; got {n_unlabelled!r}"
        )
    n = n_labelled + int(n_unlabelled)
    return n_labelled / n, int(n_unlabelled) / n


def _mix(f_l: float, lab: KLObjective, f_u: float, unl: KLObjective, loss, extra: dict | None = None) -> KLObjective:
    """One :class:`~klbook.recipe.KLObjective` per example of the whole set from the labelled and
    the unlabelled ledgers.

    Each term is ``f_l`` times its labelled estimate plus ``f_u`` times its unlabelled one (a term
    of one ledger only counts zero in the other); ``extra`` adds terms computed on the labelled
    images outside the recipe, ``name -> (value, stderr)`` per labelled image. The two ledgers use
    disjoint images and independent draws, so their standard errors add in quadrature; an extra
    term shares its images with the labelled ledger, so the total's standard error adds its share
    linearly (the triangle inequality: a bound, not an estimate).
    """
    extra = {} if extra is None else extra
    names = list(dict.fromkeys([*lab.terms, *unl.terms]))
    zero = jnp.zeros(())

    def part(obj, n, field):
        return getattr(obj, field).get(n, zero)

    terms = {n: f_l * part(lab, n, "terms") + f_u * part(unl, n, "terms") for n in names}
    stderr, mc = {}, {}
    for n in [*names, "total"]:
        stderr[n] = jnp.hypot(f_l * part(lab, n, "stderr"), f_u * part(unl, n, "stderr"))
        mc[n] = jnp.hypot(f_l * part(lab, n, "mc_stderr"), f_u * part(unl, n, "mc_stderr"))
    total = f_l * lab.total + f_u * unl.total
    for n, (value, se) in extra.items():
        terms[n], stderr[n], mc[n] = f_l * value, f_l * se, zero
        total = total + f_l * value
        stderr["total"] = jnp.hypot(f_l * (part(lab, "total", "stderr") + se), f_u * part(unl, "total", "stderr"))
    dropped = tuple(dict.fromkeys([*lab.dropped, *unl.dropped]))
    return KLObjective(loss, total, terms, stderr, mc, dropped)


def _cross_entropy(model, x_l, y_l) -> tuple[jax.Array, jax.Array]:
    """The classifier's mean cross-entropy on the labelled images, and its standard error over them."""
    per = -model.classify(x_l).log_prob(y_l)  # [N_l]
    n = per.shape[0]
    se = jnp.std(per, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.zeros(())
    return jnp.mean(per), se


def post_objective(
    key, model: CodeModel | MixtureCodeModel | TiedCodeModel, x_l, y_l, x_u, n_unlabelled: int, *, beta=1.0, gamma=1.0
) -> KLObjective:
    r"""The post's semi-supervised objective per example of the whole set, as a :class:`~klbook.recipe.KLObjective`.

    .. math:: \frac{N_l}{N}\big(\beta D_l + \gamma C_l + R_l\big) + \frac{N_u}{N}\big(\beta D_u + R_u\big)

    ``x_l [N_l, D]``, ``y_l [N_l]``: the labelled images (all of them); ``x_u [B, D]``: a batch of
    the ``n_unlabelled`` unlabelled images. ``loss`` is the weighted sum above; ``terms``
    (``distortion``, ``classification``, ``rate``) are per example of the whole set, so
    ``classification`` is :math:`\tfrac{N_l}{N} C_l` and ``total`` (their unweighted sum, the
    recipe's KL up to the data's entropy) is the loss at :math:`\beta = \gamma = 1`.
    """
    check_key(key)
    f_l, f_u = _fractions(jnp.shape(x_l)[0], n_unlabelled)
    k_l, k_u = jax.random.split(key)
    lab = kl_objective(
        k_l,
        post_real_world,
        post_dream_world,
        model,
        x_l,
        y_l,
        names=POST_NAMES,
        weights={"distortion": beta, "classification": gamma},
    )
    unl = kl_objective(
        k_u,
        post_real_world,
        post_dream_world,
        model,
        x_u,
        names={n: t for n, t in POST_NAMES.items() if n != "y"},
        weights={"distortion": beta},
    )
    return _mix(f_l, lab, f_u, unl, f_l * lab.loss + f_u * unl.loss)


def m2_objective(key, model: M2, x_l, y_l, x_u, n_unlabelled: int, *, alpha=1.0) -> KLObjective:
    r"""M2's objective per example of the whole set (Kingma et al., 2014, eq. 9), as a
    :class:`~klbook.recipe.KLObjective`.

    .. math:: \frac{N_l}{N}\big(L(x, y) + \alpha\langle -\log p(y\mid x)\rangle\big) + \frac{N_u}{N}\,U(x)

    :math:`L` is the recipe's KL with the label as data, :math:`U` the recipe's KL with the label
    a latent of the real world, summed out exactly over its values. Arguments as
    :func:`post_objective`. ``terms``, per example of the whole set: ``distortion``, ``rate``,
    ``label`` (the two worlds' KL) and ``classification``, :math:`\tfrac{N_l}{N}` times the
    classifier's cross-entropy on the labelled images (itself the supervised recipe's KL of
    chapter 5, up to the data's entropy). ``total`` is their unweighted sum (:math:`\alpha = 1`).
    """
    check_key(key)
    f_l, f_u = _fractions(jnp.shape(x_l)[0], n_unlabelled)
    k_l, k_u = jax.random.split(key)
    lab = kl_objective(k_l, m2_real_world, m2_dream_world, model, x_l, y_l, names=M2_NAMES)
    unl = kl_objective(k_u, m2_real_world, m2_dream_world, model, x_u, names=M2_NAMES, enumerate_sites=("y",))
    ce, se = _cross_entropy(model, x_l, y_l)
    return _mix(f_l, lab, f_u, unl, f_l * (lab.loss + alpha * ce) + f_u * unl.loss, {"classification": (ce, se)})


def supervised_objective(
    key, model: Classifier, x_l, y_l, x_u=None, n_unlabelled: int = 1, *, weight=1.0
) -> KLObjective:
    """Cross-entropy of the labelled images alone, :math:`\\langle -\\log q(y\\mid x)\\rangle` (the
    baseline), as a KLObjective.

    Same signature as the other objectives; ``key``, ``x_u`` and ``n_unlabelled`` are ignored (no
    draws; the unlabelled images play no part). ``terms``: ``classification`` per labelled image;
    ``loss`` is ``weight`` times it; the label's unknown entropy is ``dropped``.
    """
    check_key(key)
    ce, se = _cross_entropy(model, x_l, y_l)
    zero = jnp.zeros(())
    return KLObjective(
        weight * ce,
        ce,
        {"classification": ce},
        {"classification": se, "total": se},
        {"classification": zero, "total": zero},
        ("y",),
    )


class Split(NamedTuple):
    """A labelled/unlabelled split of a training set: ``labelled [R, L]`` and ``unlabelled [R, N - L]`` row indices."""

    labelled: np.ndarray
    unlabelled: np.ndarray


def split_labelled(key, y, per_class: int, num_splits: int = 1, *, num_classes: int | None = None) -> Split:
    """``num_splits`` random splits of the labels ``y [N]``: ``per_class`` labelled images of each
    class, the rest unlabelled.

    The classes are ``0..num_classes-1`` (default ``max(y) + 1``); every one of them must have at
    least ``per_class`` images, so a class absent from ``y`` is refused by name rather than left
    out of the labelled set without a word. Pass ``num_classes`` to catch a missing last class too.

    Raises:
        ValueError: labels outside ``0..num_classes-1``, or a class with fewer than ``per_class``
            images (none at all included).
    """
    check_key(key)
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be integer labels of shape (N,); got {y.shape}, {y.dtype}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer; got {per_class!r}")
    if y.size == 0:
        raise ValueError("y holds no labels")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {y.min()}..{y.max()}")
    classes, counts = np.arange(num_classes), np.bincount(y, minlength=num_classes)
    if counts.min() < per_class:
        raise ValueError(
            f"class {classes[counts.argmin()]} has {counts.min()} images, fewer than per_class={per_class}"
        )
    labelled, unlabelled = [], []
    for r in range(num_splits):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, r), y.shape[0]))
        chosen = np.concatenate([order[y[order] == c][:per_class] for c in classes])
        labelled.append(np.sort(chosen))
        unlabelled.append(np.setdiff1d(np.arange(y.shape[0]), chosen))
    return Split(np.stack(labelled), np.stack(unlabelled))


def per_model_adam(learning_rates, weight_decay=0.0) -> optax.GradientTransformation:
    r"""Adam with a step size (and a decoupled weight decay) of its own for each of ``M`` stacked models.

    ``learning_rates`` and ``weight_decay``: scalars or ``[M]``. Every parameter leaf must carry
    the models on its leading axis (as :func:`fit_models` stacks them); model :math:`m`'s update is
    :math:`-\eta_m(\text{adam} + \lambda_m\theta)`, so with one step size and no decay this is
    ``optax.adam`` exactly, and with one decay ``optax.adamw``.
    """
    lrs, wds = (np.asarray(v, np.float32) for v in (learning_rates, weight_decay))
    for name, v in (("learning_rates", lrs), ("weight_decay", wds)):
        if v.ndim > 1 or not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"{name} must be a non-negative scalar or one value per model; got {v!r}")
    if not np.all(lrs > 0):
        raise ValueError(f"learning_rates must be positive; got {lrs!r}")

    def per_model(v, leaf):
        if v.ndim == 0:
            return jnp.asarray(v)
        if leaf.ndim == 0 or leaf.shape[0] != v.shape[0]:
            raise ValueError(
                f"per-model values ({v.shape[0]}) need parameters stacked on a leading axis of that "
                f"size; got a leaf of shape {leaf.shape}"
            )
        return jnp.asarray(v).reshape((-1,) + (1,) * (leaf.ndim - 1))

    def update(updates, state, params=None):
        if np.any(wds > 0):
            if params is None:
                raise ValueError("per_model_adam with weight decay needs the parameters in update")
            updates = jax.tree.map(lambda u, p: u + per_model(wds, p) * p, updates, params)
        return jax.tree.map(lambda u: -per_model(lrs, u) * u, updates), state

    return optax.chain(optax.scale_by_adam(), optax.GradientTransformation(lambda params: optax.EmptyState(), update))


def fit_models(
    key,
    make: Callable,
    objective: Callable,
    x,
    y,
    split: Split,
    weights,
    *,
    num_steps: int,
    batch_size: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    desc: str = "models",
    devices: Devices = None,
) -> tuple[eqx.Module, dict[str, np.ndarray]]:
    r"""Train one model per entry of ``weights`` at once: parameters stacked, one vmapped, compiled loop.

    Model :math:`m` sees the labelled images of ``split`` row :math:`m` (all of them every step)
    and a batch of ``batch_size`` of its unlabelled images, and minimises the ``loss`` of the
    :class:`~klbook.recipe.KLObjective` that ``objective(model, key, x_l, y_l, x_u, n_unlabelled,
    weight)`` returns, with its own weight (:math:`\gamma`, :math:`\alpha`, ...). The callback
    takes the parameters first, as :func:`klbook.train.fit` differentiates them; the objectives
    themselves are key-first: ``lambda m, k, xl, yl, xu, n, w: post_objective(k, m, xl, yl, xu, n, gamma=w)``.
    ``weights`` is ``[M]`` (one number per model) or ``[M, P]`` (a row per model, e.g. :math:`(\beta,
    \gamma)`; ``w`` is then that row). ``x [N, D]``, ``y [N]``: the training set; ``split`` has one
    row per model. ``optimizer`` defaults to ``optax.adam(1e-3)``; :func:`per_model_adam` gives each
    model its own step size. Returns the stacked models (see :func:`model_at`) and the history
    (``loss`` and each term summed over models).

    ``devices`` splits each batch of unlabelled rows over several devices, as in :func:`klbook.train.fit`
    (``None``: every local device; ``1``: one device; the batch size must divide by their number,
    or a ``ValueError`` naming both is raised before anything compiles).
    """
    check_key(key)
    weights = jnp.asarray(weights, jnp.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)
    check_finite(weights, "weights")
    if weights.ndim not in (1, 2) or split.labelled.shape[0] != weights.shape[0]:
        raise ValueError(
            f"weights must have one entry (or one row) per row of split ({split.labelled.shape[0]}); "
            f"got shape {weights.shape}"
        )
    m = weights.shape[0]
    x_l, y_l = x[split.labelled], y[split.labelled]  # [M, L, D], [M, L]
    x_u = x[split.unlabelled]  # [M, U, D]
    n_u = int(split.unlabelled.shape[1])
    _split_for(
        devices, n_u, _check_positive_int(batch_size, "batch_size")
    )  # the devices and the batch checked before the models are built
    k_init, k_fit = jax.random.split(key)
    models = init_stacked(make, jax.random.split(k_init, m))

    def loss_fn(stacked, k, rows):  # rows [B]: the same positions in each model's unlabelled set
        def one(model, kk, xl, yl, xu, w):
            return objective(model, kk, xl, yl, xu[rows], n_u, w)

        out = eqx.filter_vmap(one)(stacked, jax.random.split(k, m), x_l, y_l, x_u, weights)
        if not isinstance(out, KLObjective):
            raise TypeError(
                f"objective must return a KLObjective (as post_objective, m2_objective and "
                f"supervised_objective do); got {type(out).__name__}"
            )
        return jnp.sum(out.loss), {n: jnp.sum(t) for n, t in out.terms.items()}

    res = fit(
        k_fit,
        loss_fn,
        models,
        num_steps=num_steps,
        data=jnp.arange(n_u),
        batch_size=batch_size,
        optimizer=optax.adam(1e-3) if optimizer is None else optimizer,
        progress=progress,
        desc=f"{m} {desc}",
        devices=devices,
    )
    return res.params, res.history


def holdout(key, num: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random validation split of ``num`` examples: ``(train [num - size], validation [size])`` sorted row indices."""
    check_key(key)
    for name, v in (("num", num), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer; got {v!r}")
    if not 1 <= size < num:
        raise ValueError(f"size must lie in 1..num-1 ({num - 1}); got {size}")
    order = np.asarray(jax.random.permutation(key, num))
    return np.sort(order[size:]), np.sort(order[:size])


def model_at(models, i: int):
    """Model ``i`` of models stacked by :func:`fit_models` (:func:`klbook.train.member`: an unstacked
    model or an index out of range is refused)."""
    return member(models, i)


def error_rate(models, x, y) -> np.ndarray:
    """Test error of each of the stacked ``models`` (``[M]``): argmax of ``predict`` against ``y [N]``."""
    return mistakes(models, x, y).mean(-1)


def mistakes(models, x, y) -> np.ndarray:
    """Which images each of the stacked ``models`` gets wrong, ``[M, N]`` booleans (for paired,
    per-image statistics)."""
    stack_size(_stacked(models), "models")
    x, y = models.check(x, y)  # eagerly: shapes, dtypes and values (the compiled program sees shapes only)
    return np.asarray(_mistakes(models, x, y))


def _stacked(models):
    """``models`` if they are this module's models (stacked by :func:`fit_models`), else a TypeError naming them."""
    if not isinstance(models, (CodeModel, MixtureCodeModel, TiedCodeModel, M2, Classifier)):
        raise TypeError(f"models must be semisup models stacked by fit_models; got {type(models).__name__}")
    return models


@filter_jit_once
def _mistakes(models, x, y):
    probs = eqx.filter_vmap(lambda mm: mm.predict(x))(models)  # [M, N, C]
    return jnp.argmax(probs, axis=-1) != y[None, :]


def image_terms(key, models, x, num_particles: int = 4) -> dict[str, np.ndarray]:
    """The unlabelled ledger of each stacked post's model on images ``x [N, D]``: ``distortion`` and
    ``rate`` ``[M]`` (nats per image).

    The recipe's terms of :func:`post_real_world` / :func:`post_dream_world` without labels,
    ``num_particles`` draws of the code per image.
    """
    check_key(key)
    if not isinstance(models, (CodeModel, MixtureCodeModel, TiedCodeModel)):
        raise TypeError(
            "image_terms scores the post's models (CodeModel, MixtureCodeModel or TiedCodeModel); "
            f"got {type(models).__name__}"
        )
    stack_size(models, "models")
    x, _ = models.check(x)
    names = {n: t for n, t in POST_NAMES.items() if n != "y"}

    def one(m):
        obj = kl_objective(key, post_real_world, post_dream_world, m, x, names=names, num_particles=num_particles)
        return {n: obj.terms[n] for n in ("distortion", "rate")}

    return {n: np.asarray(v) for n, v in filter_jit_once(eqx.filter_vmap(one))(models).items()}
