"""Unit conversion (one place for nats and bits) and the chapters' shared helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from klbook import bits_per_dim, to_bits, to_nats
from klbook.book import glue, glue_text, round_sig, scale


def test_one_bit_is_ln2_nats():
    np.testing.assert_allclose(to_bits(math.log(2.0)), 1.0, rtol=1e-7)
    np.testing.assert_allclose(to_nats(to_bits(3.7)), 3.7, rtol=1e-6)
    assert to_bits(float("inf")) == float("inf")


def test_bits_per_dim():
    np.testing.assert_allclose(bits_per_dim(64 * math.log(2.0), 64), 1.0, rtol=1e-6)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_dims must be a positive integer"):
            bits_per_dim(1.0, bad)


def test_scale_from_environment(monkeypatch):
    monkeypatch.setenv("KLBOOK_SCALE", "full")
    assert scale() == "full"
    monkeypatch.setenv("KLBOOK_SCALE", "quick")
    assert scale() == "quick"
    monkeypatch.setenv("KLBOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="KLBOOK_SCALE must be one of"):
        scale()
    monkeypatch.delenv("KLBOOK_SCALE")
    assert scale() == "quick"  # tests run on the CPU


def test_round_sig_and_glue_outside_a_notebook():
    assert round_sig(0.693147, 3) == 0.693
    assert round_sig(12345.6, 2) == 12000.0
    assert round_sig(float("inf")) == float("inf")
    assert round_sig(7) == 7
    assert glue("kl_bits", 0.999999, 3) == 1.0
    assert glue_text(round_sig(524.7, 3)) == "525" and glue_text(round_sig(17.2, 2)) == "17"
    assert glue_text(0.693) == "0.693" and glue_text(-3.0) == "-3" and glue_text(7) == "7"
    assert glue_text(float("inf")) == "inf"
    with pytest.raises(ValueError, match="glue name"):
        glue("not a name", 1.0)
