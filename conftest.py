"""Repository-wide pytest hooks: per-notebook execution times for the nbval layer.

nbval reports one test item per notebook cell; here the cells' durations are summed per
notebook, printed at the end of the run and written to ``_build/nbval-timings.json`` (the
execution-status page and the notes read them from there), or to ``$KLBOOK_TIMINGS`` (the seed
layer writes one record per seed).
"""

from __future__ import annotations

import json
import os
import platform
from collections import defaultdict
from pathlib import Path

_TIMES: dict[str, float] = defaultdict(float)
_FAILED: set[str] = set()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _TIMES[path] += report.duration
    if report.failed:
        _FAILED.add(path)


def pytest_terminal_summary(terminalreporter):
    if not _TIMES:
        return
    terminalreporter.section("notebook execution times (nbval)")
    for path, seconds in sorted(_TIMES.items()):
        status = "FAILED" if path in _FAILED else "ok"
        terminalreporter.write_line(f"{seconds:8.1f} s  {status:6s}  {path}")
    terminalreporter.write_line(f"{sum(_TIMES.values()):8.1f} s  total")
    out = Path("_build")
    out.mkdir(exist_ok=True)
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "scale": os.environ.get("KLBOOK_SCALE", "quick"),
        "notebooks": {p: {"seconds": round(s, 1), "passed": p not in _FAILED} for p, s in _TIMES.items()},
    }
    record["seed"] = int(os.environ.get("KLBOOK_SEED", "0") or 0)
    target = Path(os.environ.get("KLBOOK_TIMINGS", str(out / "nbval-timings.json")))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2))
