"""scripts/unit_xla_flags.py keeps only the flags this jaxlib accepts, after any flags already set."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import unit_xla_flags  # noqa: E402


def test_an_unknown_flag_is_refused_and_a_known_one_accepted():
    assert not unit_xla_flags.accepted("--xla_klbook_no_such_flag=1")
    assert unit_xla_flags.accepted("--xla_backend_optimization_level=0")


def test_flags_keep_what_is_set_and_add_only_accepted_candidates(monkeypatch):
    monkeypatch.setattr(
        unit_xla_flags, "CANDIDATES", ("--xla_backend_optimization_level=0", "--xla_klbook_no_such_flag=1")
    )
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/dev/null ")
    assert unit_xla_flags.flags() == "--xla_dump_to=/dev/null --xla_backend_optimization_level=0"
    monkeypatch.delenv("XLA_FLAGS")
    assert unit_xla_flags.flags() == "--xla_backend_optimization_level=0"
