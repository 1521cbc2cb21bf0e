"""Tests for klbook.data: the shipped and generated data sets, splits, batches and MNIST loading."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import math
import socket
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from klbook import data

KEY = jax.random.key(0)


# ---- digits -----------------------------------------------------------------------------------


def test_digits_are_integer_counts_with_views():
    d = data.digits()
    assert d.x.shape == (1797, 64) and d.y.shape == (1797,)
    assert d.x.dtype == jnp.int32 and d.y.dtype == jnp.int32
    assert int(d.x.min()) == 0 and int(d.x.max()) == data.DIGITS_MAX
    assert set(np.unique(d.y).tolist()) == set(range(10))
    u = data.to_unit_interval(d.x)
    assert u.dtype == jnp.float32 and float(u.min()) == 0.0 and float(u.max()) == 1.0
    np.testing.assert_allclose(u * 16, d.x)
    b = data.binarize(d.x)
    assert set(np.unique(b).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(b, d.x > 8)  # 0.5 of 16
    with pytest.raises(ValueError, match="threshold"):
        data.binarize(d.x, threshold=1.5)
    with pytest.raises(ValueError, match="max_value"):
        data.to_unit_interval(d.x, max_value=0)


def test_digits_split_is_deterministic_and_disjoint():
    a, b = data.digits_split(KEY), data.digits_split(KEY)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.train.x.shape[0] + a.test.x.shape[0] == 1797 and a.test.x.shape[0] == round(0.2 * 1797)
    assert (a.max_value, a.image_shape, a.source) == (16, (8, 8), "digits")


# ---- splits and batches -----------------------------------------------------------------------


def test_train_test_split_moves_rows_together_and_covers_all():
    rows = {"i": jnp.arange(10), "twice": 2 * jnp.arange(10.0)}
    train, test = data.train_test_split(KEY, rows, 0.3)
    assert test["i"].shape == (3,) and train["i"].shape == (7,)
    assert sorted(np.concatenate([train["i"], test["i"]]).tolist()) == list(range(10))
    np.testing.assert_array_equal(train["twice"], 2 * train["i"])
    again, _ = data.train_test_split(KEY, rows, 0.3)
    np.testing.assert_array_equal(again["i"], train["i"])
    other = [data.train_test_split(jax.random.key(s), rows, 0.3)[1]["i"] for s in range(1, 4)]
    assert any(not np.array_equal(o, test["i"]) for o in other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.01, -0.2])
def test_train_test_split_rejects_empty_sides(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(KEY, jnp.arange(10), fraction)


def test_train_test_split_bad_data():
    with pytest.raises(ValueError, match="share their leading axis"):
        data.train_test_split(KEY, (jnp.arange(10), jnp.arange(9)))
    with pytest.raises(ValueError, match="leading example axis"):
        data.train_test_split(KEY, jnp.array(3.0))
    with pytest.raises(TypeError, match="key"):
        data.train_test_split(0, jnp.arange(10))


def test_batches_cover_each_row_once():
    rows = (jnp.arange(10), jnp.arange(10) * 3)
    seen = [b for b in data.batches(KEY, rows, 4)]
    assert [b[0].shape[0] for b in seen] == [4, 4, 2]
    assert sorted(np.concatenate([b[0] for b in seen]).tolist()) == list(range(10))
    assert all(np.array_equal(b[1], 3 * b[0]) for b in seen)
    in_order = list(data.batches(None, rows, 4, drop_remainder=True))
    assert len(in_order) == 2 and in_order[1][0].tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(None, rows, 0))


# ---- generated data with known densities ------------------------------------------------------


def test_ring_mixture_samples_match_its_moments():
    # E|x|^2 = r^2 + 2 s^2 and E x = 0 for equal weights on the ring (symmetry); tolerance 5 s.e.
    r, s, n = 2.0, 0.25, 4000
    sample = data.mixture_2d(KEY, n, "ring", radius=r, scale=s)
    assert sample.x.shape == (n, 2)
    sq = jnp.sum(sample.x**2, -1)
    assert abs(float(sq.mean()) - (r**2 + 2 * s**2)) < 5 * float(sq.std()) / math.sqrt(n)
    se = np.asarray(sample.x.std(0)) / math.sqrt(n)
    assert np.all(np.abs(np.asarray(sample.x.mean(0))) < 5 * se)


def test_mixture_density_is_the_weighted_sum_of_its_components():
    p = data.grid_mixture(side=2, spacing=2.0, scale=0.5, weights=jnp.array([0.1, 0.2, 0.3, 0.4]))
    x = jnp.array([[0.3, -0.7], [2.0, 1.0]])
    locs = jnp.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])  # ij grid at ±spacing/2
    sq = jnp.sum((x[:, None, :] - locs[None, :, :]) ** 2, -1)  # [2, 4]
    log_comp = -sq / (2 * 0.25) - jnp.log(2 * jnp.pi * 0.25)
    expected = logsumexp(log_comp + jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))[None, :], -1)
    with jax.numpy_rank_promotion("allow"):  # NumPyro broadcasts components internally
        np.testing.assert_allclose(p.log_prob(x), expected, rtol=1e-5)


def test_mixture_weights_choose_components():
    # all weight on component 0 of the ring: samples ~ N((r, 0), s^2 I), mean within 5 s.e.
    w = jnp.zeros(8).at[0].set(1.0)
    x = data.mixture_2d(KEY, 500, radius=2.0, scale=0.25, weights=w).x
    assert np.all(np.abs(np.asarray(x.mean(0)) - np.array([2.0, 0.0])) < 5 * 0.25 / math.sqrt(500))
    with pytest.raises(ValueError, match="weights must have shape"):
        data.ring_mixture(4, weights=jnp.ones(3) / 3)
    with pytest.raises(ValueError, match="layout"):
        data.mixture_2d(KEY, 10, "spiral")
    with pytest.raises(ValueError, match="scale must be positive"):
        data.mixture_2d(KEY, 10, scale=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        data.mixture_2d(KEY, 0)


def test_regression_noise_gap_and_true_conditional():
    n, noise = 3000, 0.2
    r = data.regression_1d(KEY, n, noise=noise, low=-3.0, high=3.0, gap=(-1.0, 1.0))
    assert r.x.shape == r.y.shape == (n,)
    assert float(r.x.min()) >= -3.0 and float(r.x.max()) <= 3.0
    assert not np.any((np.asarray(r.x) > -1.0) & (np.asarray(r.x) < 1.0))
    # half the remaining length is left of the gap: binomial standard error
    left = float(jnp.mean(r.x < -1.0))
    assert abs(left - 0.5) < 5 * math.sqrt(0.25 / n)
    resid = r.y - r.mean_fn(r.x)
    assert abs(float(resid.mean())) < 5 * noise / math.sqrt(n)
    assert abs(float(resid.var()) - noise**2) < 5 * noise**2 * math.sqrt(2 / (n - 1))
    lp = r.conditional(r.x).log_prob(r.y)
    np.testing.assert_allclose(
        lp, -0.5 * (resid / noise) ** 2 - math.log(noise * math.sqrt(2 * math.pi)), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="gap"):
        data.regression_1d(KEY, 10, gap=(2.0, 4.0))
    with pytest.raises(ValueError, match="low < high"):
        data.regression_1d(KEY, 10, low=1.0, high=0.0)


def test_coin_flips():
    n, bias = 2000, 0.3
    flips = data.coin_flips(KEY, n, bias)
    assert flips.x.dtype == jnp.int32 and set(np.unique(flips.x).tolist()) <= {0, 1}
    assert abs(float(flips.x.mean()) - bias) < 5 * math.sqrt(bias * (1 - bias) / n)
    assert float(flips.distribution.mean) == pytest.approx(bias)
    assert int(data.coin_flips(KEY, 50, 0.0).x.sum()) == 0
    with pytest.raises(ValueError, match="bias"):
        data.coin_flips(KEY, 10, 1.5)
    np.testing.assert_array_equal(data.coin_flips(KEY, 20, 0.5).x, data.coin_flips(KEY, 20, 0.5).x)


# ---- MNIST from a local server ----------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture
def fake_mnist():
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (6, 3, 3))),
        "train-labels-idx1-ubyte.gz": _idx(rng.integers(0, 10, 6)),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (4, 3, 3))),
        "t10k-labels-idx1-ubyte.gz": _idx(rng.integers(0, 10, 4)),
    }
    sums = {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
    return files, sums


@pytest.fixture
def server(fake_mnist):
    """Serve the fake files on 127.0.0.1; ``state["truncate"]`` names a file to cut short."""
    files, _ = fake_mnist
    state = {"requests": 0, "truncate": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["requests"] += 1
            name = self.path.rsplit("/", 1)[-1]
            if name not in files:
                self.send_error(404)
                return
            blob = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[: len(blob) // 2] if name == state["truncate"] else blob)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/mnist/", state
    httpd.shutdown()
    httpd.server_close()


def _cached(tmp_path: Path) -> list[str]:
    folder = tmp_path / "mnist"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mnist_downloads_verifies_and_then_reads_the_cache(server, fake_mnist, tmp_path):
    url, state = server
    files, sums = fake_mnist
    images = data.mnist(cache_dir=tmp_path, base_urls=url, checksums=sums, fallback=False)
    assert images.source == "mnist" and images.max_value == 255 and images.image_shape == (3, 3)
    assert images.train.x.shape == (6, 9) and images.test.y.shape == (4,)
    expected = np.frombuffer(gzip.decompress(files["train-images-idx3-ubyte.gz"])[16:], np.uint8).reshape(6, 9)
    np.testing.assert_array_equal(images.train.x, expected)
    assert _cached(tmp_path) == sorted(files)  # the four files, no temporary leftovers
    assert state["requests"] == 4
    again = data.mnist(cache_dir=tmp_path, base_urls=url, checksums=sums, fallback=False)
    assert state["requests"] == 4  # second load: no network
    np.testing.assert_array_equal(again.test.x, images.test.x)


def test_mnist_cache_dir_from_environment(server, fake_mnist, tmp_path, monkeypatch):
    url, _ = server
    monkeypatch.setenv("KLBOOK_CACHE", str(tmp_path))
    assert data.resolve_cache_dir() == tmp_path
    data.mnist(base_urls=url, checksums=fake_mnist[1], fallback=False)
    assert len(_cached(tmp_path)) == 4


def test_mnist_truncated_download_leaves_nothing(server, fake_mnist, tmp_path):
    url, state = server
    state["truncate"] = "train-images-idx3-ubyte.gz"  # the first file fetched
    with pytest.raises(data.DownloadError, match="truncated"):
        data.mnist(cache_dir=tmp_path, base_urls=url, checksums=fake_mnist[1], fallback=False)
    assert _cached(tmp_path) == []
    with pytest.warns(UserWarning, match="falling back to scikit-learn's 8x8 digits"):
        images = data.mnist(cache_dir=tmp_path, base_urls=url, checksums=fake_mnist[1])
    assert images.source == "digits" and images.max_value == 16
    assert _cached(tmp_path) == []


def test_mnist_wrong_checksum_leaves_nothing(server, fake_mnist, tmp_path):
    url, _ = server
    sums = dict(fake_mnist[1], **{"t10k-labels-idx1-ubyte.gz": "0" * 64})  # the last file fetched
    with pytest.raises(data.DownloadError, match="sha256"):
        data.mnist(cache_dir=tmp_path, base_urls=url, checksums=sums, fallback=False)
    cached = _cached(tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" not in cached and not any(name.endswith(".part") for name in cached)
    for name in cached:  # whatever stayed is verified
        assert hashlib.sha256((tmp_path / "mnist" / name).read_bytes()).hexdigest() == sums[name]


def test_mnist_corrupted_cache_is_fetched_again(server, fake_mnist, tmp_path):
    url, state = server
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    data.mnist(cache_dir=tmp_path, base_urls=url, checksums=fake_mnist[1], fallback=False)
    assert state["requests"] == 4


def test_mnist_offline_falls_back_with_a_warning(fake_mnist, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = data.mnist(cache_dir=tmp_path, base_urls=url, checksums=fake_mnist[1], timeout=5)
    assert any("MNIST could not be loaded" in str(w.message) and "digits" in str(w.message) for w in caught)
    assert images.source == "digits" and images.train.x.shape[1] == 64
    assert _cached(tmp_path) == []
    with pytest.raises(data.DownloadError, match=str(port)):
        data.mnist(cache_dir=tmp_path, base_urls=url, checksums=fake_mnist[1], timeout=5, fallback=False)
    with pytest.raises(ValueError, match="checksums must name"):
        data.mnist(cache_dir=tmp_path, checksums={"a.gz": "0" * 64})
