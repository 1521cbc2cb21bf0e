r"""The book's data: the world as it is, P, as samples (and, where we made it, its density).

Chapters 4–13. Shipped or generated data, so the book never needs the network:

* :func:`digits`: scikit-learn's 1,797 8×8 handwritten digits. Pixel values are integer
  *counts* 0..16 (lit cells in a 4×4 block), so a ``Binomial(16, ·)`` likelihood is a proper
  probability; :func:`to_unit_interval` and :func:`binarize` give the other usual views.
* :func:`mixture_2d`, :func:`regression_1d`, :func:`coin_flips`: generated data returned with
  the NumPyro distribution that made it, so a chapter can compute the true entropy or KL
  (closed form or Monte Carlo) that a trained model is compared with.
* :func:`train_test_split` and :func:`batches` for any pytree of arrays with a leading
  example axis; :func:`mnist` downloads MNIST once (checksummed, atomic write, cached) and
  falls back to the digits, with a warning, when it cannot.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from klbook._checks import check_finite, check_positive, check_probability
from klbook.divergence import check_key

__all__ = [
    "Labelled", "Images", "Sample", "Regression", "DIGITS_MAX", "DIGITS_SHAPE",
    "digits", "digits_split", "to_unit_interval", "binarize", "mixture_2d", "ring_mixture",
    "grid_mixture", "regression_1d", "regression_function", "coin_flips", "train_test_split",
    "batches", "mnist", "resolve_cache_dir", "DownloadError", "MNIST_SHA256", "MNIST_URLS",
]  # fmt: skip

#: The digits' largest pixel value: each pixel counts the lit cells of a 4×4 block, 0..16.
DIGITS_MAX = 16
#: The digits' image shape (height, width).
DIGITS_SHAPE = (8, 8)


class Labelled(NamedTuple):
    """Examples and labels: ``x [N, ...]``, ``y [N]`` (a pytree :func:`klbook.train.fit` can batch)."""

    x: jax.Array
    y: jax.Array


class Images(NamedTuple):
    """An image data set split in two: pixel counts ``0..max_value``, flattened to ``[N, H*W]``."""

    train: Labelled
    test: Labelled
    max_value: int
    image_shape: tuple[int, int]
    source: str  # "mnist" or "digits"


class Sample(NamedTuple):
    """Samples ``x`` from ``distribution``, the density that generated them."""

    x: jax.Array
    distribution: dist.Distribution


class Regression(NamedTuple):
    """``y = f(x) + noise * eps``: inputs ``x [N]``, targets ``y [N]``, the true mean ``f`` and noise."""

    x: jax.Array
    y: jax.Array
    mean_fn: Callable[[jax.Array], jax.Array]
    noise: float

    def conditional(self, x: jax.Array) -> dist.Distribution:
        """The true :math:`p(y \\mid x) = \\mathcal{N}(f(x), \\text{noise}^2)`."""
        return dist.Normal(self.mean_fn(jnp.asarray(x)), self.noise)


@functools.lru_cache(maxsize=1)
def digits() -> Labelled:
    """scikit-learn's 8×8 digits: ``x`` int32 ``[1797, 64]`` counts in 0..16, ``y`` int32 ``[1797]``.

    Each pixel counts the lit cells of a 4×4 block of a 32×32 bitmap, so ``x`` is a count out
    of :data:`DIGITS_MAX` = 16 (use :func:`klbook.nn.binomial_head` with ``total_count=16``).
    """
    try:  # the book's extra: pip install "klbook[chapters]"
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as err:
        from klbook import _require_chapters_extra

        _require_chapters_extra("klbook.data.digits", err)

    images, labels = load_digits(return_X_y=True)
    return Labelled(jnp.asarray(images.astype(np.int32)), jnp.asarray(labels.astype(np.int32)))


def digits_split(key: jax.Array, test_fraction: float = 0.2) -> Images:
    """The digits as an :class:`Images` train/test split, shuffled by ``key``."""
    train, test = train_test_split(key, digits(), test_fraction)
    return Images(train, test, DIGITS_MAX, DIGITS_SHAPE, "digits")


def to_unit_interval(x: jax.Array, max_value: int = DIGITS_MAX) -> jax.Array:
    """Counts ``0..max_value`` as float32 intensities ``x / max_value`` in [0, 1]."""
    check_positive(max_value, "max_value")
    return jnp.asarray(x, jnp.float32) / max_value


def binarize(x: jax.Array, max_value: int = DIGITS_MAX, threshold: float = 0.5) -> jax.Array:
    """Counts as float32 {0, 1}: 1 where ``x / max_value > threshold`` (for Bernoulli pixels)."""
    check_probability(threshold, "threshold")
    return (to_unit_interval(x, max_value) > threshold).astype(jnp.float32)


def _mixture(locs: jax.Array, scale: float, weights: jax.Array | None) -> dist.MixtureSameFamily:
    check_positive(scale, "scale")
    k = locs.shape[0]
    weights = jnp.full(k, 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), one per component; got {weights.shape}")
    check_probability(weights, "weights")
    mixing = dist.Categorical(probs=weights / jnp.sum(weights))
    components = dist.Normal(locs, jnp.full(locs.shape, scale, jnp.float32)).to_event(1)  # [K] x [2]
    return dist.MixtureSameFamily(mixing, components)


def ring_mixture(num_components: int = 8, radius: float = 2.0, scale: float = 0.25, weights=None):
    r"""Equal Gaussians on a circle:
    :math:`p(x) = \sum_k w_k \mathcal{N}(x;\, r(\cos\theta_k, \sin\theta_k), s^2 I)`."""
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive integer; got {num_components!r}")
    check_positive(radius, "radius")
    theta = 2 * jnp.pi * jnp.arange(num_components) / num_components
    return _mixture(radius * jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1), scale, weights)


def grid_mixture(side: int = 3, spacing: float = 2.0, scale: float = 0.25, weights=None):
    r"""Gaussians on a centred ``side × side`` grid, ``spacing`` apart, each with std ``scale``."""
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be a positive integer; got {side!r}")
    check_positive(spacing, "spacing")
    axis = spacing * (jnp.arange(side) - (side - 1) / 2)
    gx, gy = jnp.meshgrid(axis, axis, indexing="ij")
    return _mixture(jnp.stack([gx.ravel(), gy.ravel()], -1), scale, weights)


def mixture_2d(key: jax.Array, num_samples: int, layout: str = "ring", **kwargs: Any) -> Sample:
    """``num_samples`` points ``[N, 2]`` from a 2-D Gaussian mixture, with the mixture itself.

    Args:
        key: JAX PRNG key.
        num_samples: ``N >= 1``.
        layout: ``"ring"`` (:func:`ring_mixture`) or ``"grid"`` (:func:`grid_mixture`).
        **kwargs: passed to the layout's builder (number of components, scale, weights, ...).
    """
    check_key(key)
    n = _count(num_samples, "num_samples")
    builders = {"ring": ring_mixture, "grid": grid_mixture}
    if layout not in builders:
        raise ValueError(f"layout must be one of {sorted(builders)}; got {layout!r}")
    p = builders[layout](**kwargs)
    k_which, k_noise = jax.random.split(key)
    which = jax.random.categorical(k_which, p.mixing_distribution.logits, shape=(n,))  # [N]
    base = p.component_distribution.base_dist
    x = base.loc[which] + base.scale[which] * jax.random.normal(k_noise, (n, 2))  # [N, 2]
    return Sample(x, p)


def regression_function(x: jax.Array) -> jax.Array:
    """The book's 1-D regression curve :math:`f(x) = \\sin(2x) + 0.3 x`."""
    return jnp.sin(2.0 * x) + 0.3 * x


def regression_1d(
    key: jax.Array,
    num_samples: int,
    *,
    noise: float = 0.2,
    low: float = -3.0,
    high: float = 3.0,
    gap: tuple[float, float] | None = None,
) -> Regression:
    r"""``y = f(x) + noise * eps`` with :math:`f` = :func:`regression_function`, ``x`` uniform.

    ``x`` is uniform on ``[low, high]`` minus the open interval ``gap`` (if given): a region
    with no data, where a Bayesian model should be uncertain (chapters 10–11).
    """
    check_key(key)
    n = _count(num_samples, "num_samples")
    check_positive(noise, "noise")
    check_finite(jnp.array([low, high]), "low and high")
    if not low < high:
        raise ValueError(f"need low < high; got low={low}, high={high}")
    a, b = gap if gap is not None else (high, high)
    if gap is not None and not low < a < b < high:
        raise ValueError(f"gap must satisfy low < gap[0] < gap[1] < high; got gap={gap} in [{low}, {high}]")
    k_x, k_y = jax.random.split(key)
    # inverse CDF of the uniform on [low, a] + [b, high]: squeeze the gap out, then put it back
    u = jax.random.uniform(k_x, (n,), minval=low, maxval=high - (b - a))
    x = jnp.where(u < a, u, u + (b - a))
    y = regression_function(x) + noise * jax.random.normal(k_y, (n,))
    return Regression(x, y, regression_function, float(noise))


def coin_flips(key: jax.Array, num_flips: int, bias: float = 0.5) -> Sample:
    """``num_flips`` tosses (int32 0/1) of a coin with P(heads) = ``bias``, with ``Bernoulli(bias)``."""
    check_key(key)
    check_probability(bias, "bias")
    p = dist.Bernoulli(probs=jnp.asarray(bias, jnp.float32))
    return Sample(p.sample(key, (_count(num_flips, "num_flips"),)).astype(jnp.int32), p)


def _count(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive integer; got {n!r}")
    return int(n)


def _num_examples(data: Any) -> int:
    sizes: set[tuple[int, ...]] = {tuple(getattr(leaf, "shape", ()))[:1] for leaf in jax.tree.leaves(data)}
    if not sizes or () in sizes:
        raise ValueError("data must be a pytree of arrays, each with a leading example axis")
    if len(sizes) != 1:
        raise ValueError(f"data leaves must share their leading axis; got sizes {sorted(s[0] for s in sizes)}")
    return sizes.pop()[0]


def train_test_split(key: jax.Array, data: Any, test_fraction: float = 0.2) -> tuple[Any, Any]:
    """Shuffle the rows of ``data`` by ``key`` and split off ``round(test_fraction * N)`` for testing.

    Deterministic: the same key gives the same split. Rows of every leaf move together.

    Returns:
        ``(train, test)``, each the same pytree type as ``data``.
    """
    check_key(key)
    n = _num_examples(data)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} of {n} examples leaves an empty train or test set")
    perm = jax.random.permutation(key, n)
    take = lambda idx: jax.tree.map(lambda leaf: jnp.asarray(leaf)[idx], data)  # noqa: E731
    return take(perm[n_test:]), take(perm[:n_test])


def batches(key: jax.Array | None, data: Any, batch_size: int, *, drop_remainder: bool = False) -> Iterator[Any]:
    """One epoch over ``data`` in batches of ``batch_size`` rows, shuffled by ``key`` (in order if None).

    The last batch is smaller when ``batch_size`` does not divide ``N`` (dropped with
    ``drop_remainder=True``). For an epoch per key use ``jax.random.fold_in(key, epoch)``.
    """
    n = _num_examples(data)
    batch_size = _count(batch_size, "batch_size")
    if key is None:
        order = np.arange(n)
    else:
        check_key(key)
        order = np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield jax.tree.map(lambda leaf, idx=idx: leaf[idx], data)


# ---- MNIST: download once, verify, cache; fall back to the digits ---------------------------

#: Mirrors of the MNIST files, tried in order.
MNIST_URLS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
#: sha256 of the four gzipped IDX files (the same bytes on every mirror).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class DownloadError(OSError):
    """A download failed: unreachable, truncated, or not the file its checksum names."""


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: ``path``, else ``$KLBOOK_CACHE``, else ``~/.cache/klbook``."""
    return Path(path or os.environ.get("KLBOOK_CACHE") or Path.home() / ".cache" / "klbook").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, sha256: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; rename it into place only if verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and size != int(expected):
            raise DownloadError(f"{url}: truncated download ({size} of {expected} bytes)")
        if digest.hexdigest() != sha256:
            raise DownloadError(f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)  # atomic: a reader sees no file or the whole verified file
    except (OSError, http.client.HTTPException) as err:
        Path(tmp).unlink(missing_ok=True)
        raise err if isinstance(err, DownloadError) else DownloadError(f"{url}: {err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fetch(name: str, folder: Path, base_urls: tuple[str, ...], sha256: str, timeout: float) -> Path:
    """The verified cached file ``folder/name``, downloading it (trying each mirror) if needed."""
    dest = folder / name
    if dest.exists():
        if _sha256(dest) == sha256:
            return dest  # cached: no network
        dest.unlink()  # corrupted cache: fetch again
    errors = []
    for base in base_urls:
        try:
            _download(base.rstrip("/") + "/" + name, dest, sha256, timeout)
            return dest
        except DownloadError as err:
            errors.append(str(err))
    raise DownloadError("; ".join(errors))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST file format: magic 0x0000 08 ndim, big-endian sizes)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DownloadError(f"{path.name} is not a {ndim}-d unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DownloadError(f"{path.name}: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def mnist(
    *,
    cache_dir: str | os.PathLike | None = None,
    base_urls: str | tuple[str, ...] = MNIST_URLS,
    checksums: dict[str, str] | None = None,
    timeout: float = 30.0,
    fallback: bool = True,
) -> Images:
    """MNIST (60,000 + 10,000 28×28 digits, counts 0..255), downloaded once and cached.

    Each gzipped IDX file is streamed to a temporary file, checked against its sha256 and
    renamed into the cache atomically, so the cache never holds a partial or wrong
    file; later calls read the cache without touching the network.

    Args:
        cache_dir: cache folder (see :func:`resolve_cache_dir`); files go in its ``mnist`` subfolder.
        base_urls: a mirror URL or several, tried in order.
        checksums: file name -> sha256 for the four files (default :data:`MNIST_SHA256`).
        timeout: seconds to wait on the network.
        fallback: on any failure, warn and return :func:`digits_split` (``source="digits"``)
            instead of raising :class:`DownloadError`.

    Returns:
        :class:`Images` with flattened uint8 ``x [N, 784]``, int32 labels, ``max_value=255``.
    """
    checksums = dict(MNIST_SHA256 if checksums is None else checksums)
    if set(checksums) != set(MNIST_SHA256):
        raise ValueError(f"checksums must name exactly the files {sorted(MNIST_SHA256)}")
    urls = (base_urls,) if isinstance(base_urls, str) else tuple(base_urls)
    folder = resolve_cache_dir(cache_dir) / "mnist"
    try:
        arrays = {}
        for name, digest in checksums.items():
            arrays[name] = _read_idx(_fetch(name, folder, urls, digest, timeout), 3 if "images" in name else 1)
        splits = []
        for prefix in ("train", "t10k"):
            images, labels = arrays[f"{prefix}-images-idx3-ubyte.gz"], arrays[f"{prefix}-labels-idx1-ubyte.gz"]
            if images.shape[0] != labels.shape[0]:
                raise DownloadError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
            x = jnp.asarray(images.reshape(images.shape[0], -1))
            splits.append(Labelled(x, jnp.asarray(labels.astype(np.int32))))
        return Images(splits[0], splits[1], 255, tuple(images.shape[1:]), "mnist")
    except DownloadError as err:
        if not fallback:
            raise
        warnings.warn(
            f"MNIST could not be loaded ({err}); falling back to scikit-learn's 8x8 digits "
            "(1,797 images, pixel counts 0..16) via klbook.data.digits_split.",
            UserWarning,
            stacklevel=2,
        )
        return digits_split(jax.random.key(0))
