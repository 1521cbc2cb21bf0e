"""The book's figure helpers (klbook.plot): what they draw is what the math says."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from klbook import plot  # noqa: E402


def test_evidence_fan_draws_runs_mean_and_expected_line_in_bits():
    n, runs = 10, 4
    log_odds = np.cumsum(np.full((n, runs), math.log(2.0)), axis=0)  # one bit per observation
    fig, ax = plot.figure()
    plot.evidence_fan(ax, log_odds, expected_slope=math.log(2.0), num_lines=3)
    lines = ax.get_lines()
    assert len(lines) == 3 + 2  # three runs, the mean, the expected line
    for line in lines:
        x, y = line.get_data()
        np.testing.assert_allclose(y, x, rtol=1e-12)  # one bit per step, from 0 at n = 0
    assert ax.get_ylabel() == "log-odds (bits)"


def test_evidence_fan_marks_runs_that_become_certain_and_skips_an_infinite_mean():
    log_odds = np.array([[-math.log(2.0), math.inf], [math.inf, math.inf]])  # [n=2, runs=2]
    fig, ax = plot.figure()
    plot.evidence_fan(ax, log_odds, expected_slope=math.inf)
    markers = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(markers) == 2  # each run ends in an arrow head at the top edge
    top = ax.get_ylim()[1]
    assert all(line.get_ydata()[0] == top for line in markers)
    assert not any(line.get_linewidth() > 2 for line in ax.get_lines())  # no mean drawn


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 3))])
def test_evidence_fan_rejects_bad_shapes(bad):
    fig, ax = plot.figure()
    with pytest.raises(ValueError, match=r"\[n, runs\]"):
        plot.evidence_fan(ax, bad)


def test_gaussian_ellipses_lie_at_the_requested_mahalanobis_radii():
    loc, cov = np.array([0.5, -1.0]), np.array([[2.0, 0.6], [0.6, 0.5]])
    fig, ax = plot.figure()
    plot.gaussian_ellipses(ax, loc, cov, plot.REAL, label="p", radii=(1.0, 2.0))
    contours = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    precision = np.linalg.inv(cov)
    for line, radius in zip(contours, (1.0, 2.0), strict=True):
        d = np.stack(line.get_data(), axis=1) - loc
        np.testing.assert_allclose(np.einsum("ni,ij,nj->n", d, precision, d), radius**2, rtol=1e-10)
    assert contours[0].get_label() == "p"


def test_gaussian_ellipses_reject_bad_input():
    fig, ax = plot.figure()
    with pytest.raises(ValueError, match="shape"):
        plot.gaussian_ellipses(ax, np.zeros(3), np.eye(3), plot.REAL)
    with pytest.raises(np.linalg.LinAlgError):
        plot.gaussian_ellipses(ax, np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]), plot.REAL)
