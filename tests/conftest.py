"""Test configuration for the klbook package tests.

Rank promotion raises (silent broadcasting is the most common bug in KL sums), and every
test runs on the CPU so results do not depend on the machine.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
