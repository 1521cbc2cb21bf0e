"""Re-execute notebooks in place and stamp them: the one command that refreshes stored outputs.

    python scripts/refresh_outputs.py [NOTEBOOK ...]      # default: every notebook under book/

Each notebook runs top to bottom with nbclient at the scale given by ``KLBOOK_SCALE`` (``quick``
unless set), in its own directory. On success its outputs are written back together with a
stamp in the metadata: the digest of its code (the book build refuses notebooks whose code
changed since), how long it took and where it ran. A notebook that raises is left untouched and
the script exits non-zero. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from klbook_strict import METADATA_KEY, code_digest  # noqa: E402


def _device() -> str:
    try:
        import jax

        d = jax.devices()[0]
        return f"{d.platform}: {getattr(d, 'device_kind', d.platform)}"
    except Exception:  # pragma: no cover - only for the record
        return "unknown"


def refresh(path: Path, timeout: int = 900) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nb.metadata[METADATA_KEY] = {
        "source_sha256": code_digest(nb),
        "scale": os.environ.get("KLBOOK_SCALE", "quick"),
        "seconds": round(seconds, 1),
        "device": _device(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "executed": _dt.date.today().isoformat(),
    }
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        nbformat.write(nb, fh)
    os.replace(tmp, path)
    return seconds


def main(argv: list[str]) -> int:
    os.environ.setdefault("KLBOOK_SCALE", "quick")
    paths = [Path(a) for a in argv] or sorted((ROOT / "book").glob("*.ipynb"))
    failed = []
    for path in paths:
        print(f"refreshing {path} ...", flush=True)
        try:
            seconds = refresh(path)
        except CellExecutionError as err:
            print(f"  FAILED, left unchanged:\n{err}", flush=True)
            failed.append(path)
            continue
        print(f"  {seconds:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
