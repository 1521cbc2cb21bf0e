"""Where a chapter's time goes: per cell, wall seconds and the seconds JAX spent tracing, lowering and compiling.

Each notebook runs top to bottom with nbclient (its own kernel and directory, the scale from
``KLBOOK_SCALE``), with one cell put in front that listens to JAX's compile events
(``jax.monitoring``: ``jaxpr_trace_duration``, ``jaxpr_to_mlir_module_duration`` and
``backend_compile_duration``) and counts them against the cell that is running. Nothing is written
back; JAX's persistent cache is whatever the environment sets (unset: off, so every program compiles).

Usage::

    KLBOOK_SCALE=quick python benchmarks/compile_profile.py book/ch08_semi_supervised.ipynb [--top 8] [--json OUT]

For each notebook it prints the total wall time, the compile share (trace + lower + XLA compile),
the number of XLA compilations, and the cells that cost most, with both numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

LISTEN = r"""
import collections as _c, time as _t
import jax.monitoring as _m
_klprof = {"cell": -1, "compile": _c.defaultdict(float), "count": _c.defaultdict(int)}
def _klprof_listen(event, duration, **kwargs):
    if event.startswith("/jax/core/compile/"):
        _klprof["compile"][_klprof["cell"]] += duration
        if event.endswith("backend_compile_duration"):
            _klprof["count"][_klprof["cell"]] += 1
_m.register_event_duration_secs_listener(_klprof_listen)
"""
REPORT = "import json as _j; print(_j.dumps({'compile': dict(_klprof['compile']), 'count': dict(_klprof['count'])}))"


def profile(path: Path, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    cells = [nbformat.v4.new_code_cell(LISTEN)]
    for i in code:  # each code cell first tells the listener which cell is running (its index in the notebook)
        cells += [nbformat.v4.new_code_cell(f"_klprof['cell'] = {i}"), nb.cells[i]]
    cells.append(nbformat.v4.new_code_cell(REPORT))
    run = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    starts: dict[int, float] = {}
    client = NotebookClient(
        run,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=lambda cell, cell_index: starts.__setitem__(cell_index, time.perf_counter()),
    )
    t0 = time.perf_counter()
    client.execute()
    total = time.perf_counter() - t0
    marks = sorted(starts.items()) + [(len(cells), t0 + total)]
    wall = {}
    for (j, t), (_, t_next) in itertools.pairwise(marks):
        if j >= 1 and (j - 1) % 2 == 1 and j < len(cells) - 1:  # the notebook's own cells, not the markers
            wall[code[(j - 2) // 2]] = t_next - t
    report = json.loads(run.cells[-1].outputs[0]["text"])
    comp = {int(k): v for k, v in report["compile"].items()}
    count = {int(k): v for k, v in report["count"].items()}
    return {"total": total, "wall": wall, "compile": comp, "count": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = {}
    for path in args.notebooks:
        r = profile(path.resolve(), args.timeout)
        out[path.name] = r
        comp_total = sum(r["compile"].values())
        print(
            f"{path.name}: {r['total']:.1f} s, of which JAX compiling {comp_total:.1f} s "
            f"({100 * comp_total / r['total']:.0f}%), {sum(r['count'].values())} XLA compilations"
        )
        for i in sorted(r["wall"], key=lambda i: -r["wall"][i])[: args.top]:
            print(
                f"  cell {i:3d}: {r['wall'][i]:7.1f} s wall, {r['compile'].get(i, 0.0):6.1f} s compiling, "
                f"{r['count'].get(i, 0):5d} compilations"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
