"""Execute every notebook top to bottom on whatever JAX finds, and record what ran where.

    python scripts/run_notebooks.py --record book/runs/gpu-check.json      # make gpu-check
    KLBOOK_SCALE=full python scripts/run_notebooks.py --record book/runs/cpu-full.json  # make full-check

Each notebook runs with nbclient in its own directory at the scale ``klbook.book.scale()``
picks there (``full`` on a GPU, ``quick`` on a CPU, or ``KLBOOK_SCALE``). Nothing is written
back into the notebooks (``--keep DIR`` writes each executed copy, outputs included, to DIR): this checks
that every assert holds at that scale on that device. The
record (JSON) has, per notebook, the seconds, pass/fail and, on failure, the failing cell (its
index in the notebook's cells) and the exception's name and message, or that the kernel died or
the cell ran past its time limit, and for the run the device, the jax/jaxlib/numpyro versions, the scale,
the seed, the machine and the date. The *Execution status* page of the book shows every record
under ``book/runs/``. The record is written atomically and also after each notebook, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', d.platform)} (x{len(jax.devices())})"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def run_one(path: Path, timeout: int, keep: Path | None = None) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    started: list[int] = []  # the index in nb.cells of each cell as it starts: the last one is the one that failed
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=lambda cell, cell_index: started.append(cell_index),
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellTimeoutError:
        # a cell that runs past the limit raised nothing itself: say so, rather than quote the timeout's banner
        error = f"timed out: the cell ran past {timeout} s"
    except CellExecutionError as err:
        # the exception's name and message, not the last line of IPython's (coloured) traceback
        error = f"{err.ename}: {err.evalue}"[:500]
    except DeadKernelError as err:
        # a kernel that died (killed for memory, say) fails its notebook; the next one gets a new kernel
        error = f"the kernel died: {err}"[:500]
    result: dict = {"passed": error is None}
    if error is not None:
        result.update(failing_cell=started[-1] if started else None, error=error)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if keep is not None:  # the executed notebook, its outputs up to the failing cell included, written atomically
        keep.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=keep)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.replace(tmp, keep / path.name)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--record", type=Path, required=True, help="where to write the JSON record")
    parser.add_argument("--label", default=None, help="a name for the run (default: the device)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--keep", type=Path, default=None, help="a folder for the executed notebooks, outputs included")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    from klbook import book

    paths = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    device = _device()
    record = {
        "label": args.label or device,
        "device": device,
        "scale": book.scale(),
        "seed": book.seed(),
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "numpyro", "equinox", "optax", "klbook")},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "date": _dt.date.today().isoformat(),
        "notebooks": {},
    }
    print(f"{record['label']}: scale {record['scale']}, {record['versions']}", flush=True)
    for path in paths:
        rel = path.resolve().relative_to(ROOT).as_posix()
        print(f"running {rel} ...", flush=True)
        result = run_one(path.resolve(), args.timeout, args.keep)
        record["notebooks"][rel] = result
        status = "ok" if result["passed"] else f"FAILED at cell {result['failing_cell']}: {result['error']}"
        print(f"  {result['seconds']:.1f} s  {status}", flush=True)
        _write(args.record, record)
    record["total_seconds"] = round(sum(r["seconds"] for r in record["notebooks"].values()), 1)
    _write(args.record, record)
    failed = [n for n, r in record["notebooks"].items() if not r["passed"]]
    print(f"total {record['total_seconds']:.1f} s; " + (f"FAILED: {failed}" if failed else "every notebook passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
