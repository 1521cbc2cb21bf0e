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
    for spec in project["dependencies"] + extras["chapters"] + extras["site"] + extras["test"]:
        name, specifier = _normalise(spec)
        if name == "klbook":  # one extra naming another (site includes chapters)
            continue
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


def test_core_install_is_light_and_the_book_extras_are_extras():
    """`pip install klbook` brings what kl, the recipe and fit need; figures, widgets and datasets
    come with the chapters extra, the book's build with the site extra."""
    project = _pyproject()["project"]
    core = {_normalise(s)[0] for s in project["dependencies"]}
    assert core == {"jax", "numpy", "numpyro", "equinox", "optax", "tqdm"}, core
    extras = project["optional-dependencies"]
    chapters = {_normalise(s)[0] for s in extras["chapters"]}
    assert {"matplotlib", "ipywidgets", "scikit-learn"} <= chapters
    site = [Requirement(s) for s in extras["site"]]
    assert any(r.name == "klbook" and "chapters" in r.extras for r in site), (
        "the site extra must include the chapters extra: autodoc imports every chapter module"
    )
    assert not {"jupyter-book", "sphinx-book-theme"} & (chapters | core)


def test_every_requirement_has_a_lower_bound():
    """make test-lowest installs each runtime requirement at its lower bound."""
    project = _pyproject()["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["chapters"]:
        assert any(s.operator == ">=" for s in Requirement(spec).specifier), (
            f"{spec!r} has no lower bound (>=) for make test-lowest to install"
        )


def test_license_is_spdx_and_ships():
    project = _pyproject()["project"]
    assert project["license"] == "MIT", "use the SPDX string form (the table form is deprecated)"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    requires = _pyproject()["build-system"]["requires"]
    setuptools = next(Requirement(r) for r in requires if Requirement(r).name == "setuptools")
    assert setuptools.specifier.contains("77") and not setuptools.specifier.contains("76.9"), (
        "SPDX license strings and license-files need setuptools >= 77"
    )


def test_version_comes_from_the_package_metadata():
    import importlib.metadata

    import klbook

    assert klbook.__version__ == importlib.metadata.version("klbook")
    assert klbook.__version__ == _pyproject()["project"]["version"], (
        "the installed metadata is stale: reinstall (make install)"
    )
