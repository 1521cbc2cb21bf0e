"""How much of each declared tolerance a fresh seed uses: run notebooks under seeds, keep the runs, report margins.

    python benchmarks/seed_margins.py run OUT ch07_vib:27 ch07_vib:28 ...   # one worker, jobs in order
    python benchmarks/seed_margins.py report OUT [ch07_vib ...]            # every notebook under OUT by default

``run`` executes ``book/<name>.ipynb`` at the quick scale under ``KLBOOK_SEED=<seed>`` with nbclient (errors do not
stop it: the failing cell's error is kept) and writes the executed copy to ``OUT/<name>/seed<seed>.ipynb``; a job
whose copy exists is skipped, so an interrupted sweep resumes. Start two workers for two cores, each with its own
``JAX_COMPILATION_CACHE_DIR`` (see the Makefile's JAX_CACHE) so later seeds load the programs the first compiled.

``report`` compares every executed copy with the stored notebook under the reproducibility contract
(``tests/nbval_contract.py``): for every measured glue and every number printed by a ``# measured:`` cell it
computes |re-run - stored| / allowed, where allowed is the declared ``abs + rel * |stored|``. Above 1 the seed layer
would fail; the report lists those, every cell error, and each number whose worst ratio over the seeds is above
``--near`` (0.6), with the seed and the values. A ratio near 1 under a handful of seeds says the tolerance rests on
too few seeds: re-derive it (the book's rule is about 4 x sqrt(2) x the sd over seeds) before a derived seed finds it.
``report --rule`` also lists every measured number whose allowance is below that rule's, the sd taken over the
executed copies and the stored value (with a handful of seeds the sd is itself uncertain by about 1/sqrt(2 n)).
Tolerances are the stored notebook's (as declared now), so old runs can be re-checked against re-derived
tolerances; cells are matched by position, so the notebook's cells must not have moved since the sweep ran.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import nbval_contract as contract  # noqa: E402


def run(out: Path, jobs: list[str]) -> None:
    import nbformat
    from nbclient import NotebookClient

    for job in jobs:
        name, seed = job.rsplit(":", 1)
        dest = out / name / f"seed{int(seed)}.ipynb"
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.environ["KLBOOK_SEED"] = seed
        os.environ.setdefault("KLBOOK_SCALE", "quick")
        nb = nbformat.read(ROOT / "book" / f"{name}.ipynb", as_version=4)
        start = time.time()
        client = NotebookClient(
            nb,
            timeout=900,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(ROOT / "book")}},
        )
        client.execute()
        nb.metadata["seed_margins"] = {"seed": int(seed), "seconds": round(time.time() - start, 1)}
        tmp = dest.with_suffix(".tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, dest)  # a copy is complete or absent
        print(f"{job}: {time.time() - start:.1f} s", flush=True)


def _ratios(stored: str, rerun: str, spec: dict[str, float]):
    """(stored token, re-run token, ratio, stored, re-run, allowed) per number, or None when the text around the
    numbers differs."""
    b1, n1 = contract._split(stored)
    b2, n2 = contract._split(rerun)
    if b1 != b2 or len(n1) != len(n2):
        return None
    a, r = spec.get("abs", 0.0), spec.get("rel", 0.0)
    out = []
    for s_tok, v_tok in zip(n1, n2, strict=True):
        s, v = contract._value(s_tok), contract._value(v_tok)
        allowed = a + r * abs(s)
        if s == v or (math.isnan(s) and math.isnan(v)):
            out.append((s_tok, v_tok, 0.0, s, v, allowed))
            continue
        out.append((s_tok, v_tok, abs(v - s) / allowed if allowed > 0 else math.inf, s, v, allowed))
    return out


def _merged(outputs):
    """Consecutive stream outputs of one stream joined, as nbval sees them."""
    res = []
    for o in outputs:
        same = res and res[-1].get("output_type") == "stream" and res[-1].get("name") == o.get("name")
        if same and o.get("output_type") == "stream":
            res[-1] = dict(res[-1], text=res[-1]["text"] + o["text"])
        else:
            res.append(o)
    return res


def compare(ref, run_nb):
    """(cell, what, values, ratio, (stored, re-run, allowed)) for every measured number and cell error of one
    executed copy (the last element None for errors and mismatched text)."""
    rows = []
    for i, (rc, tc) in enumerate(zip(ref.cells, run_nb.cells, strict=False)):
        if rc.cell_type != "code" or tc.cell_type != "code":
            continue
        rows += [
            (i, "ERROR", f"{o['ename']}: {o['evalue'][:300]}", math.inf, None)
            for o in tc.outputs
            if o.get("output_type") == "error"
        ]
        spec = contract.cell_tolerance(rc.source)
        stored_glue = {contract._glue_name(o): o for o in rc.outputs if contract._is_glue(o)}
        for o in tc.outputs:
            if not contract._is_glue(o):
                continue
            name = contract._glue_name(o)
            if name not in stored_glue:
                continue
            g_spec = contract._glue_spec(stored_glue[name], spec)  # the stored notebook's tolerance, as declared now
            if g_spec is None:
                continue
            rr = _ratios(stored_glue[name]["data"][contract.GLUE], o["data"][contract.GLUE], g_spec)
            rows += (
                [(i, f"glue {name}", "text differs", math.inf, None)]
                if rr is None
                else [(i, f"glue {name}", f"{x[1]} vs {x[0]}", x[2], x[3:]) for x in rr]
            )
        if spec is None:
            continue
        plain = [
            [
                o
                for o in _merged(c.outputs)
                if not contract._is_glue(o) and o.get("output_type") in ("stream", "execute_result")
            ]
            for c in (tc, rc)
        ]
        if len(plain[0]) != len(plain[1]):
            rows.append((i, "printed", f"{len(plain[0])} outputs vs {len(plain[1])}", math.inf, None))
            continue
        for k, (t, r) in enumerate(zip(*plain, strict=True)):
            for where in contract._texts(t):
                if where in contract._texts(r):
                    rr = _ratios(contract._get(r, where), contract._get(t, where), spec)
                    rows += (
                        [(i, f"printed[{k}]", "text differs", math.inf, None)]
                        if rr is None
                        else [(i, f"printed[{k}] #{j}", f"{x[1]} vs {x[0]}", x[2], x[3:]) for j, x in enumerate(rr)]
                    )
    return rows


def report(out: Path, names: list[str], near: float, rule: bool = False) -> None:
    """Failures and near misses per notebook; with ``rule``, also every measured number whose declared allowance is
    below the book's rule, 4 sqrt(2) x its sd over the seeds (the stored seed 0 counted among them)."""
    import statistics

    import nbformat

    dirs = [out / n for n in names] or sorted(d for d in out.iterdir() if (ROOT / "book" / f"{d.name}.ipynb").exists())
    for d in dirs:
        ref = nbformat.read(ROOT / "book" / f"{d.name}.ipynb", as_version=4)
        copies = sorted(d.glob("seed*.ipynb"), key=lambda p: int(p.stem[4:]))
        worst, fails, values = {}, [], {}
        for path in copies:
            seed = path.stem[4:]
            for i, what, val, q, x in compare(ref, nbformat.read(path, as_version=4)):
                if x is not None:
                    values.setdefault((i, what), (x[0], x[2], []))[2].append(x[1])
                if q > 1:
                    fails.append(f"   FAIL seed {seed}, cell {i}, {what}: {val} (ratio {q:.2f})")
                if q > worst.get((i, what), (-1,))[0]:
                    worst[(i, what)] = (q, seed, val)
        print(f"== {d.name}: seeds {', '.join(p.stem[4:] for p in copies)}")
        print("\n".join(fails)) if fails else None
        for (i, what), (q, seed, val) in sorted(worst.items()):
            if near <= q <= 1:
                print(f"   near: cell {i}, {what}: worst ratio {q:.2f} at seed {seed} ({val})")
        for (i, what), (stored, allowed, vs) in sorted(values.items()) if rule else ():
            finite = [v for v in (stored, *vs) if math.isfinite(v)]   # an infinite value (printed "inf") has no sd
            if len(finite) < len(vs) + 1:
                if any(repr(v) != repr(stored) for v in vs):   # repr: nan equals nan, inf equals inf
                    print(f"   rule: cell {i}, {what}: non-finite values, not all equal to the stored {stored}")
                continue
            sd = statistics.stdev(finite) if vs else 0.0
            if 4 * math.sqrt(2) * sd > allowed:
                print(
                    f"   rule: cell {i}, {what}: allowed {allowed:.3g} < 4 sqrt(2) sd = {4 * math.sqrt(2) * sd:.3g} "
                    f"(sd {sd:.3g} over {len(vs) + 1} values; stored {stored:.4g})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("jobs", nargs="+", help="NAME:SEED, NAME a notebook under book/ without .ipynb")
    p = sub.add_parser("report")
    p.add_argument("out", type=Path)
    p.add_argument("names", nargs="*")
    p.add_argument("--near", type=float, default=0.6)
    p.add_argument("--rule", action="store_true", help="also list allowances below 4 sqrt(2) x the sd over seeds")
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.jobs)
    else:
        report(args.out, args.names, args.near, args.rule)


if __name__ == "__main__":
    main()
