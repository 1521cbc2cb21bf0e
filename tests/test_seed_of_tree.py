"""The seed layer's seed (scripts/seed_of_tree.py): replayable, new for every code change, never a tuned one."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import seed_of_tree  # noqa: E402


def _tree(root: Path, notebook: bytes = b"{}") -> list[Path]:
    (root / "book").mkdir()
    (root / "klbook").mkdir()
    (root / "book" / "ch01.ipynb").write_bytes(notebook)
    (root / "klbook" / "kl.py").write_text("x = 1\n")
    (root / "README.md").write_text("prose\n")
    return [root / "book" / "ch01.ipynb", root / "klbook" / "kl.py"]


def test_same_code_same_seed_and_a_change_moves_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sa = seed_of_tree.seed_of(_tree(a), a)
    assert sa == seed_of_tree.seed_of(_tree(b), b)  # replayable: the same bytes give the same seed
    (b / "book" / "ch01.ipynb").write_bytes(b'{"changed": 1}')
    assert seed_of_tree.seed_of(seed_of_tree.tested_files(b), b) != sa


def test_prose_and_untracked_files_do_not_move_it(tmp_path):
    _tree(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "book", "klbook", "README.md"], cwd=tmp_path, check=True)
    before = seed_of_tree.seed_of(seed_of_tree.tested_files(tmp_path), tmp_path)
    (tmp_path / "README.md").write_text("other prose\n")
    (tmp_path / "klbook" / "scratch.py").write_text("untracked = True\n")
    files = seed_of_tree.tested_files(tmp_path)
    assert [p.name for p in files] == ["ch01.ipynb", "kl.py"]
    assert seed_of_tree.seed_of(files, tmp_path) == before


@pytest.mark.parametrize("content", [b"", b"a", b"b", b"{}", b"0" * 1000])
def test_never_a_seed_used_to_publish_or_tune(tmp_path, content):
    s = seed_of_tree.seed_of(_tree(tmp_path, content), tmp_path)
    assert seed_of_tree.FIRST_FRESH <= s < seed_of_tree.FIRST_FRESH + seed_of_tree.SPAN


def test_this_checkout_prints_one_integer():
    out = subprocess.run(
        [sys.executable, str(Path(seed_of_tree.__file__))], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(out) >= seed_of_tree.FIRST_FRESH
