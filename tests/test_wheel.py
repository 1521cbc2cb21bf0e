"""A reader's first run, from the wheel: a fresh virtualenv, klbook and its runtime dependencies
only, and chapter 1 executed top to bottom with nbclient.

The wheel is built from a copy of the source tree (so stale ``build/`` output cannot leak in)
and installed into a new virtual environment (``python -m venv``) by uv (pip where uv is missing;
both resolve the same requirements from the wheel's metadata), which may fetch the runtime
dependencies from the registry, with the ``chapters`` extra (figures, widgets, datasets): exactly what the
notebooks' install cell asks for on Colab. The site and test extras are *not* installed, and
neither is the source tree (no editable install). The environment gets only what a Colab machine
already has for running a notebook: ``ipykernel`` and ``nbclient``. Chapter 1 then runs in a temporary directory, with
that environment's kernel, exactly as a reader would run it: its first cell finds klbook installed and
does nothing. A last cell added by the test proves klbook came from the wheel. Each step is
timed; the times are printed and written to ``_build/wheel-test.json``.

Chapter 1 is ``book/ch01_weight_of_evidence.ipynb``; while it does not exist yet, the first
notebook of the table of contents stands in for it, and while there is none, a two-cell notebook
(the install cell, then ``klbook.kl``) made here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_1 = ROOT / "book" / "ch01_weight_of_evidence.ipynb"
RECORD = ROOT / "_build" / "wheel-test.json"
NOTEBOOK_TIMEOUT = 900  # seconds per cell
# KLBOOK_WHEEL_EXECUTE=0: build, install and import the wheel, but run no chapter. The lowest-versions layer
# sets it: there the test checks the lowest `build` and uv, while the chapter's run from the wheel (at the
# versions a reader gets) is the wheel layer's, and chapter 1 at the lowest versions is run by that layer itself.
EXECUTE = os.environ.get("KLBOOK_WHEEL_EXECUTE", "1") != "0"

pytestmark = pytest.mark.slow

# Copying the tree for the build leaves out what is generated or private.
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "_build",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
    ".ipynb_checkpoints",
    ".gl",
)


def _chapter() -> Path | None:
    if CHAPTER_1.exists():
        return CHAPTER_1
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    for name in files:
        if (ROOT / f"{name}.ipynb").exists():
            print(f"\n{CHAPTER_1.name} does not exist yet; running {name}.ipynb instead")
            return ROOT / f"{name}.ipynb"
    print(f"\nno notebook in the table of contents yet; running a stand-in for {CHAPTER_1.name}")
    return None


def _stand_in(directory: Path) -> Path:
    """A reader's notebook for when no chapter exists yet: the install cell, then klbook."""
    import nbformat

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from klbook_strict import install_cell_source

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(install_cell_source(url)),
        nbformat.v4.new_code_cell(
            "import math\nimport numpyro.distributions as dist\nimport klbook\n"
            "value = float(klbook.kl(dist.Bernoulli(probs=1.0), dist.Bernoulli(probs=0.5)))\n"
            "assert abs(value - math.log(2)) < 1e-6, value\nprint(f'{value:.3f} nats')"
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = directory / "stand_in_for_ch01.ipynb"
    nbformat.write(nb, path)
    return path


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _build_wheel(source: Path, out: Path) -> Path:
    try:
        import build  # noqa: F401  (the PyPA front end, from the test extra)

        _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)])
    except ImportError:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)])
    wheels = sorted(out.glob("klbook-*.whl"))
    assert len(wheels) == 1, f"expected one klbook wheel, found {wheels}"
    return wheels[0]


# The driver runs inside the fresh environment, as a Colab reader's Jupyter would.
DRIVER = textwrap.dedent("""
    import json, sys, time
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    path, workdir, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, klbook\\n"
        "print(json.dumps({'prefix': sys.prefix, 'klbook': klbook.__file__}))"))
    start = time.perf_counter()
    for attempt in (1, 2, 3):  # a kernel that loses a port race while starting is started again
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": workdir}})
        try:
            client.execute()
            break
        except DeadKernelError:  # lost while running cells: a real failure
            raise
        except RuntimeError as err:  # the kernel never answered (a cell's error is not one)
            if attempt == 3:
                raise
            print(f"a kernel failed to start ({err}); starting another", file=sys.stderr)
    seconds = time.perf_counter() - start
    where = json.loads(nb.cells[-1].outputs[0]["text"])
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    print(json.dumps({"seconds": seconds, "where": where, "errors": len(errors)}))
""")


def _print_times(title: str, times: dict[str, float]) -> None:
    print(f"\n{title}:")
    for step, seconds in times.items():
        print(f"  {seconds:7.1f} s  {step}")


def test_chapter_runs_from_a_fresh_wheel_install(tmp_path):
    chapter = _chapter() or _stand_in(tmp_path)
    times: dict[str, float] = {}

    start = time.perf_counter()
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    wheel = _build_wheel(source, tmp_path / "dist")
    times["build wheel"] = time.perf_counter() - start

    names = zipfile.ZipFile(wheel).namelist()
    assert "klbook/__init__.py" in names and "klbook/py.typed" in names
    licenses = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
    assert licenses, f"the wheel ships no LICENSE file: {names}"
    assert zipfile.ZipFile(wheel).read(licenses[0]).decode().startswith("MIT License")
    assert not [n for n in names if n.startswith(("tests/", "book/", "scripts/", "colab/"))], names

    start = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    requirements = [f"{wheel}[chapters]", "ipykernel", "nbclient"]
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv:  # the same resolution from the wheel's metadata as pip's, in a fraction of the time
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *requirements], timeout=1800)
    else:
        _run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements], timeout=1800
        )
    # Its own kernel, registered inside the environment; JUPYTER_DATA_DIR hides any user-wide
    # kernel named python3 that could point at another interpreter.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHONPATH", "JUPYTER", "VIRTUAL_ENV", "KLBOOK_STRICT"))
    }
    env.update(
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
        KLBOOK_SCALE="quick",
        JAX_PLATFORMS="cpu",
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    _run([str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], env=env)
    times["create environment and install"] = time.perf_counter() - start

    # Only the runtime dependencies: none of the book's or the tests' packages came along.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    freeze = _run([str(python), "-m", "pip", "freeze"], env=env).stdout.lower()
    assert "klbook @ file" in freeze or "klbook==" in freeze, freeze
    assert "-e " not in freeze, "klbook must come from the wheel, not an editable install"
    for extra in ("jupyter-book", "sphinx", "pytest", "nbval", "selenium"):
        assert f"\n{extra}==" not in "\n" + freeze, f"{extra} is not a runtime dependency"
    assert project["dependencies"], "pyproject.toml lists no runtime dependencies"
    for extra in ("matplotlib", "ipywidgets", "scikit-learn"):  # the chapters extra came along
        assert f"\n{extra}==" in "\n" + freeze, f"{extra} (the chapters extra) is missing"

    if not EXECUTE:
        start = time.perf_counter()
        importer = (  # every module of the package, against the installed dependencies
            "import importlib, pkgutil, klbook\n"
            "for m in pkgutil.iter_modules(klbook.__path__): importlib.import_module('klbook.' + m.name)\n"
            "print(klbook.__file__)"
        )
        where = _run([str(python), "-c", importer], env=env, cwd=tmp_path)
        times["import klbook"] = time.perf_counter() - start
        assert Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()), where.stdout
        _print_times("fresh-wheel test (KLBOOK_WHEEL_EXECUTE=0: no chapter run)", times)
        return

    workdir = tmp_path / "reader"
    workdir.mkdir()
    notebook = workdir / chapter.name
    shutil.copy(chapter, notebook)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    start = time.perf_counter()
    result = _run(
        [str(python), str(driver), str(notebook), str(workdir), str(NOTEBOOK_TIMEOUT)],
        env=env,
        cwd=workdir,
        timeout=3600,
    )
    times["execute " + chapter.name] = time.perf_counter() - start
    outcome = json.loads(result.stdout.strip().splitlines()[-1])

    assert outcome["errors"] == 0
    assert Path(outcome["where"]["prefix"]).resolve() == venv.resolve(), outcome
    assert Path(outcome["where"]["klbook"]).resolve().is_relative_to(venv.resolve()), (
        f"klbook was imported from {outcome['where']['klbook']}, not from the wheel"
    )

    # The Colab edition of the same chapter (colab/, scripts/make_colab.py), as the launch buttons
    # open it: plain Markdown, the same code, run in the same fresh environment.
    if chapter.parent == ROOT / "book":
        colab = ROOT / "colab" / chapter.name
        assert colab.exists(), f"no {colab.relative_to(ROOT)}: run make colab"
        colab_dir = workdir / "colab"
        colab_dir.mkdir()
        shutil.copy(colab, colab_dir / chapter.name)
        start = time.perf_counter()
        result = _run(
            [str(python), str(driver), str(colab_dir / chapter.name), str(colab_dir), str(NOTEBOOK_TIMEOUT)],
            env=env,
            cwd=colab_dir,
            timeout=3600,
        )
        times["execute colab/" + chapter.name] = time.perf_counter() - start
        colab_outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert colab_outcome["errors"] == 0, colab_outcome
        assert Path(colab_outcome["where"]["klbook"]).resolve().is_relative_to(venv.resolve())

    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(
        json.dumps(
            {"notebook": chapter.name, "wheel": wheel.name, "seconds": {k: round(v, 1) for k, v in times.items()}},
            indent=2,
        )
    )
    _print_times("fresh-wheel test", times)
