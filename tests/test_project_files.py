"""The project's own files agree with each other (pyproject.toml is the source of truth)."""

from __future__ import annotations

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalise(spec: str) -> tuple[str, str]:
    req = Requirement(spec)
    name = req.name.lower().replace("_", "-")
    return name, str(req.specifier)


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = {}
    for spec in project["dependencies"] + extras["book"] + extras["test"]:
        name, specifier = _normalise(spec)
        wanted[name] = specifier
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {}
    for line in pip_section:
        if line.startswith("-"):
            continue
        name, specifier = _normalise(line)
        assert name not in listed, f"environment.yml lists {name} twice"
        listed[name] = specifier
    missing = sorted(set(wanted) - set(listed))
    extra = sorted(set(listed) - set(wanted))
    assert not missing, f"environment.yml lacks {missing} that pyproject.toml requires"
    assert not extra, f"environment.yml lists {extra} that pyproject.toml does not"
    differ = {n: (wanted[n], listed[n]) for n in wanted if wanted[n] != listed[n]}
    assert not differ, f"version ranges differ (pyproject, environment.yml): {differ}"
    assert "-e ." in pip_section, "environment.yml must install klbook itself"


@pytest.mark.parametrize("name", ["jax", "jaxlib", "numpy"])
def test_no_hard_pins_that_would_replace_colab_jax(name):
    project = _pyproject()["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.name == name:
            assert not any(s.operator in ("==", "===", "<", "<=", "~=") for s in req.specifier), (
                f"{spec!r} pins {name}: installing klbook on Colab would replace its GPU JAX"
            )


def test_py_typed_ships_with_the_package():
    assert (ROOT / "klbook" / "py.typed").exists()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["klbook"]
