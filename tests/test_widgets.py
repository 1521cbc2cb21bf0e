"""The Belief-O-Meter (klbook.widgets): its state, its arithmetic and its widget, without a browser."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro.distributions as dist
import pytest

from klbook import kl
from klbook.widgets import BeliefOMeter, BeliefOMeterWidget, belief_o_meter, draw_belief_o_meter

matplotlib.use("Agg")

KEY = jax.random.key(7)


def test_flips_do_not_depend_on_how_they_are_batched():
    a = BeliefOMeter(KEY, true_heads=0.3).flip(3).flip(2).flip(1)
    b = BeliefOMeter(KEY, true_heads=0.3).flip(6)
    np.testing.assert_array_equal(a.flips, b.flips)
    assert a.num_flips == 6


def test_heads_frequency_matches_the_coin_within_binomial_error():
    n, theta = 4000, 0.3
    heads = float(jnp.mean(BeliefOMeter(KEY, true_heads=theta, h1_heads=0.3).flip(n).flips))
    assert abs(heads - theta) < 5 * math.sqrt(theta * (1 - theta) / n)


def test_changing_the_coin_rereads_the_same_random_numbers():
    meter = BeliefOMeter(KEY, true_heads=0.2, h1_heads=0.5).flip(200)
    low = np.asarray(meter.flips)
    high = np.asarray(meter.configure(true_heads=0.8).flips)
    assert np.all(high >= low) and high.sum() > low.sum()  # every head stays a head


def test_log_odds_are_prior_plus_counted_evidence():
    meter = BeliefOMeter(KEY, true_heads=0.6, h1_heads=0.6, h2_heads=0.4, prior_prob=0.25).flip(50)
    heads = float(jnp.sum(meter.flips))
    tails = meter.num_flips - heads
    expected = math.log(0.25 / 0.75) + heads * math.log(0.6 / 0.4) + tails * math.log(0.4 / 0.6)
    np.testing.assert_allclose(float(meter.trajectory.log_odds[-1]), expected, rtol=1e-5)
    assert meter.trajectory.log_odds.shape == (50,)


def test_a_cheating_coin_gives_exactly_one_bit_per_flip():
    meter = BeliefOMeter(KEY, true_heads=1.0, h1_heads=1.0, h2_heads=0.5).flip(12)
    np.testing.assert_allclose(np.asarray(meter.trajectory.log_odds), math.log(2) * np.arange(1, 13), rtol=1e-6)
    assert "+12 bits" in meter.status


def test_one_tail_is_infinite_evidence_for_the_fair_coin():
    meter = BeliefOMeter(KEY, true_heads=0.5, h1_heads=0.5, h2_heads=1.0).flip(40)
    flips = np.asarray(meter.flips)
    first_tail = int(np.argmax(flips == 0))
    ell = np.asarray(meter.trajectory.log_odds)
    np.testing.assert_allclose(ell[:first_tail], -math.log(2) * np.arange(1, first_tail + 1), rtol=1e-6)
    assert np.all(np.isposinf(ell[first_tail:]))
    assert float(meter.trajectory.probability[-1]) == 1.0


def test_flips_that_refute_both_hypotheses_are_reported_not_hidden():
    meter = BeliefOMeter(KEY, true_heads=0.5, h1_heads=1.0, h2_heads=0.0).flip(30)
    with pytest.raises(ValueError, match="both"):
        _ = meter.trajectory
    assert "rule out both" in meter.status
    assert math.isnan(meter.expected_slope)
    fig = draw_belief_o_meter(meter)
    assert any("both" in t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.mark.parametrize("h1, h2", [(0.7, 0.5), (0.9, 0.2), (0.5, 1.0)])
def test_expected_slope_is_the_kl_from_the_true_hypothesis(h1, h2):
    b1, b2 = dist.Bernoulli(probs=h1), dist.Bernoulli(probs=h2)
    when_h1 = BeliefOMeter(KEY, true_heads=h1, h1_heads=h1, h2_heads=h2).expected_slope
    when_h2 = BeliefOMeter(KEY, true_heads=h2, h1_heads=h1, h2_heads=h2).expected_slope
    np.testing.assert_allclose(when_h1, float(kl(b1, b2)), rtol=1e-6)
    np.testing.assert_allclose(when_h2, -float(kl(b2, b1)), rtol=1e-6)


def test_reset_forgets_flips_but_keeps_the_coin():
    meter = BeliefOMeter(KEY, true_heads=0.4).flip(5).reset()
    assert meter.num_flips == 0 and meter.trajectory is None and meter.true_heads == 0.4
    assert meter.status.startswith("no flips")


@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(true_heads=1.5), ValueError, "true_heads"),
        (dict(h1_heads=-0.1), ValueError, "h1_heads"),
        (dict(h2_heads=float("nan")), ValueError, "h2_heads"),
        (dict(prior_prob=0.0), ValueError, "strictly between"),
        (dict(prior_prob=1.0), ValueError, "strictly between"),
        (dict(true_heads="half"), TypeError, "true_heads"),
        (dict(true_heads=True), TypeError, "true_heads"),
        (dict(h1_heads=[0.5, 0.5]), TypeError, "h1_heads"),
        (dict(true_heads=0.5, h1_heads=0.0, h2_heads=0.0), ValueError, "both hypotheses rule out heads"),
        (dict(true_heads=0.5, h1_heads=1.0, h2_heads=1.0), ValueError, "both hypotheses rule out tails"),
    ],
)
def test_bad_settings_are_rejected_by_name(config, error, match):
    with pytest.raises(error, match=match):
        BeliefOMeter(KEY, **config)


def test_a_rejected_setting_leaves_the_state_alone():
    meter = BeliefOMeter(KEY, true_heads=0.5, h1_heads=0.5, h2_heads=0.9)
    with pytest.raises(ValueError):
        meter.configure(h1_heads=1.0, h2_heads=1.0)
    assert (meter.h1_heads, meter.h2_heads) == (0.5, 0.9)


@pytest.mark.parametrize("n", [0, -3, 1.5, True])
def test_flip_needs_a_positive_integer(n):
    with pytest.raises(ValueError, match="positive integer"):
        BeliefOMeter(KEY).flip(n)


def test_key_must_be_a_prng_key():
    with pytest.raises(TypeError, match="PRNG key"):
        BeliefOMeter(0)


def test_drawing_marks_infinite_evidence():
    meter = BeliefOMeter(KEY, true_heads=0.5, h1_heads=0.5, h2_heads=1.0).flip(20)
    fig = draw_belief_o_meter(meter)
    assert len(fig.axes) == 2
    assert any("\u221e" in t.get_text() for t in fig.axes[1].texts)
    assert "P(H1) = 1" in [t.get_text() for t in fig.axes[0].texts]


def test_widget_buttons_and_sliders_change_the_state():
    widget = belief_o_meter(KEY, true_heads=0.7, h1_heads=0.7, h2_heads=0.5)
    assert isinstance(widget, BeliefOMeterWidget)
    first = widget.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    widget.buttons[10].click()
    widget.buttons[1].click()
    assert widget.meter.num_flips == 11 and widget.label.value.startswith("11 flips")
    assert widget.image.value != first
    widget.sliders["h2_heads"].value = 0.3
    assert widget.meter.h2_heads == 0.3
    widget.buttons[0].click()
    assert widget.meter.num_flips == 0


def test_widget_reports_an_impossible_slider_setting_and_keeps_the_state():
    widget = belief_o_meter(KEY, true_heads=1.0, h1_heads=0.0, h2_heads=0.5)
    widget.sliders["h2_heads"].value = 0.0  # both hypotheses would rule out the coin's heads
    assert widget.meter.h2_heads == 0.5
    assert widget.label.value.startswith("not changed")


def test_widget_text_is_deterministic_for_stored_notebook_outputs():
    a, b = belief_o_meter(KEY), belief_o_meter(jax.random.key(7))
    text = a._repr_mimebundle_()["text/plain"]
    assert text == b._repr_mimebundle_()["text/plain"]
    assert "0x" not in text and text.startswith("BeliefOMeterWidget(")


def test_widget_needs_a_meter():
    with pytest.raises(TypeError, match="BeliefOMeter"):
        BeliefOMeterWidget("meter")
