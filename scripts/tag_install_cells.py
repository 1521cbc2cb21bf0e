"""Tag every chapter's install cell ``hide-input``: the site shows it collapsed, Colab runs it.

    python scripts/tag_install_cells.py [NOTEBOOK ...]     # default: every notebook under book/

Only the first code cell's tags change (the code digest covers sources, so stamps stay valid).
Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def tag(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if c.get("cell_type") == "code"), None)
    if cell is None:
        return False
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if "hide-input" in tags:
        return False
    tags.append("hide-input")
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        nbformat.write(nb, fh)
    os.replace(tmp, path)
    return True


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:]] or sorted((ROOT / "book").glob("*.ipynb"))
    for p in paths:
        print(("tagged " if tag(p) else "already tagged ") + str(p))
