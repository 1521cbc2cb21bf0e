"""The lowest-versions layer (``make test-lowest``): klbook at the lower bounds it declares.

pyproject.toml is the source of truth. Three steps, each a sub-command:

``constraints``
    print ``name==lower-bound`` for every declared requirement: the core install and the
    ``chapters``, ``site`` and ``test`` extras, for ``uv pip install -c`` (or ``pip install -c``).
    (The ``lint`` extra is pinned exactly and tested by ``make test-lint``; ``gpu`` needs a GPU.)
    What the bounds do not name (IPython, Sphinx, docutils, ...) is resolved as usual.
``check``
    in the environment that runs it, print the installed version of every declared requirement
    (and of jaxlib, SciPy, IPython, Sphinx and Python, which follow from them), and fail unless
    each is installed at exactly its declared lower bound.
``notebooks [--jobs N] NOTEBOOK...``
    execute each notebook top to bottom with nbclient, in its own directory, with this
    environment's kernel, N at a time; a cell that raises (a failed ``assert``) fails. Outputs are not
    compared with the stored ones (the notebook layer does that at the current versions) and
    nothing is written back.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


# The extras whose lower bounds the layer installs and exercises: ``chapters`` by the unit tests and
# the notebooks, ``test`` by the same runs (pytest, xdist, hypothesis, nbclient, nbval, ipykernel)
# and by the wheel and site tests (build, uv, selenium), ``site`` by a strict build of the book.
EXTRAS = ("chapters", "site", "test")


def runtime_requirements() -> list[Requirement]:
    """Every requirement with a lower bound to test: the core and :data:`EXTRAS` (this Python's)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in EXTRAS:
        specs += project["optional-dependencies"][extra]
    reqs: dict[str, Requirement] = {}
    for req in map(Requirement, specs):
        if (req.marker is not None and not req.marker.evaluate()) or req.name == project["name"]:
            continue  # another Python's requirement, or "klbook[chapters]" inside an extra
        if req.name in reqs and str(reqs[req.name].specifier) != str(req.specifier):
            sys.exit(f"{req.name} is declared twice with different ranges: {reqs[req.name]} and {req}")
        reqs.setdefault(req.name, req)
    return list(reqs.values())


def lower_bound(req: Requirement) -> str:
    lows = [s.version for s in req.specifier if s.operator == ">="]
    if len(lows) != 1:
        sys.exit(f"{req} needs exactly one lower bound (>=) for the lowest-versions layer")
    return lows[0]


def constraints() -> None:
    for req in runtime_requirements():
        print(f"{req.name}=={lower_bound(req)}")


def check() -> None:
    wrong = []
    print(f"lowest versions (Python {platform.python_version()}):")
    for req in runtime_requirements():
        installed, low = importlib.metadata.version(req.name), lower_bound(req)
        ok = Version(installed) == Version(low)
        wrong += [] if ok else [f"{req.name} {installed} (declared lower bound {low})"]
        print(f"  {req.name:14s} {installed:10s} {'= lower bound' if ok else '!= ' + low}")
    for name in ("jaxlib", "scipy", "ipython", "sphinx"):
        print(f"  {name:14s} {importlib.metadata.version(name):10s} (follows from the above)")
    if wrong:
        sys.exit("not at the declared lower bound: " + "; ".join(wrong))


KERNEL_START_ATTEMPTS = 3


def run_notebook(path: Path) -> tuple[float, str | None]:
    """Execute one notebook in its own kernel: (seconds, None) or (seconds, the failing cell's error).

    A kernel that dies before it answers (jupyter_client frees the TCP ports it picked before the
    kernel binds them, so two kernels starting at once can collide: jupyter/jupyter_client#154) is
    started again, up to three times; no cell has run by then. Any other error fails the notebook.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        start = time.perf_counter()
        try:
            client.execute()
            return time.perf_counter() - start, None
        except CellExecutionError as err:
            return time.perf_counter() - start, str(err)[-3000:]
        except DeadKernelError:
            raise
        except RuntimeError as err:  # the kernel did not start
            if attempt == KERNEL_START_ATTEMPTS:
                raise
            print(f"  {path.name}: a kernel failed to start ({err}); starting another", flush=True)
    raise AssertionError("unreachable")


def notebooks(paths: list[str], jobs: int = 1) -> None:
    """Execute the notebooks, ``jobs`` at a time (each in its own process and kernel)."""
    # This environment's kernel and no other: an empty user data directory hides any user-wide
    # "python3" kernel, and the kernel is registered inside this environment.
    data_dir = ROOT / "_build" / "lowest-jupyter"
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["JUPYTER_DATA_DIR"] = str(data_dir)
    os.environ.pop("JUPYTER_PATH", None)
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
        check=True,
        capture_output=True,
    )

    failed = []
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_notebook, path): path for path in map(Path, paths)}
        for future in as_completed(futures):
            path = futures[future]
            seconds, error = future.result()
            if error is not None:
                failed.append(path.name)
                print(error, file=sys.stderr)
            print(f"  {seconds:6.1f} s  {path.name}: {'FAILED' if error else 'passed'}", flush=True)
    if failed:
        sys.exit(f"failed at the lowest versions: {', '.join(sorted(failed))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("constraints")
    sub.add_parser("check")
    run = sub.add_parser("notebooks")
    run.add_argument("paths", nargs="+")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed at a time")
    args = parser.parse_args()
    if args.command == "constraints":
        constraints()
    elif args.command == "check":
        check()
    else:
        notebooks(args.paths, args.jobs)


if __name__ == "__main__":
    main()
