"""The notebook layer's kernel start survives a kernel that dies while starting, and only that.

Two pytest processes that start Jupyter kernels at the same moment (the seed layer runs two seeds
side by side, the notebook layer two workers) can hand two kernels the same TCP port; the loser
exits before it answers ``kernel_info``. ``nbval_contract.retry_kernel_start`` starts another
kernel then. These tests pin down what it may and may not hide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import nbval_contract
import pytest

ROOT = Path(__file__).resolve().parents[1]


class FlakyStart:
    """A stand-in for nbval's ``start_new_kernel`` whose first ``failures`` calls raise ``error``."""

    def __init__(self, failures: int, error: Exception | None = None):
        self.failures, self.calls = failures, []
        self.error = error or RuntimeError("Kernel died before replying to kernel_info")

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if len(self.calls) <= self.failures:
            raise self.error
        return "km", "kc"


def test_a_kernel_that_dies_starting_is_started_again():
    flaky = FlakyStart(failures=2)
    start = nbval_contract.retry_kernel_start(flaky, attempts=3)
    with pytest.warns(RuntimeWarning, match="failed to start") as record:
        assert start(kernel_name="python3", startup_timeout=60) == ("km", "kc")
    assert len(flaky.calls) == 3 and len(record) == 2
    assert all(kw == {"kernel_name": "python3", "startup_timeout": 60} for _, kw in flaky.calls)


def test_a_kernel_that_never_starts_still_fails_with_its_error():
    flaky = FlakyStart(failures=3)
    start = nbval_contract.retry_kernel_start(flaky, attempts=3)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="kernel_info"):
        start()
    assert len(flaky.calls) == 3


def test_other_errors_are_not_retried():
    flaky = FlakyStart(failures=1, error=FileNotFoundError("no such kernel spec"))
    start = nbval_contract.retry_kernel_start(flaky, attempts=3)
    with pytest.raises(FileNotFoundError):
        start()
    assert len(flaky.calls) == 1


def test_a_kernel_that_starts_is_started_once():
    flaky = FlakyStart(failures=0)
    assert nbval_contract.retry_kernel_start(flaky)() == ("km", "kc")
    assert len(flaky.calls) == 1


def test_the_plugin_wraps_the_start_nbval_really_calls():
    # In a fresh interpreter: loading the plugin replaces the module global that
    # nbval.kernel.RunningKernel looks up when it starts a notebook's kernel.
    code = (
        "import nbval.kernel, nbval_contract; original = nbval.kernel.start_new_kernel; "
        "nbval_contract.pytest_configure(None); "
        "assert nbval.kernel.start_new_kernel.__wrapped__ is original; "
        "assert 'start_new_kernel(' in __import__('inspect').getsource(nbval.kernel.RunningKernel.__init__)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


FLAKY_KERNEL = """\
import sys
from pathlib import Path

# Dies at its first start, as a kernel that lost its port race does; starts normally afterwards.
marker = Path(sys.argv[1])
if not marker.exists():
    marker.write_text("died once")
    sys.exit(1)
from ipykernel.kernelapp import launch_new_instance

sys.argv = [sys.argv[0], "-f", sys.argv[2]]
launch_new_instance()
"""


def _flaky_run(tmp_path: Path, plugin: bool) -> subprocess.CompletedProcess:
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "flaky"
    spec_dir.mkdir(parents=True)
    (tmp_path / "flaky_kernel.py").write_text(FLAKY_KERNEL)
    argv = [sys.executable, str(tmp_path / "flaky_kernel.py"), str(tmp_path / "died"), "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "flaky", "language": "python"}))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "flaky", "display_name": "flaky", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "print(6 * 7)", execution_count=1, outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n")]
        )
    ]
    nbformat.write(nb, tmp_path / "case.ipynb")
    env = dict(
        os.environ,
        JUPYTER_PATH=str(tmp_path / "share" / "jupyter"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    args = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        "--nbval-kernel-name",
        "flaky",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        "-W",
        "always",
        "case.ipynb",
    ]
    if plugin:
        args[3:3] = ["-p", "nbval_contract"]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_a_real_kernel_that_dies_once_no_longer_fails_its_notebook(tmp_path):
    without = _flaky_run(tmp_path / "plain", plugin=False)
    assert without.returncode != 0 and "Kernel died before replying to kernel_info" in without.stdout, without.stdout
    with_plugin = _flaky_run(tmp_path / "contract", plugin=True)
    assert with_plugin.returncode == 0, with_plugin.stdout + with_plugin.stderr
    assert "failed to start" in with_plugin.stdout and "1 passed" in with_plugin.stdout, with_plugin.stdout


def test_each_xdist_worker_writes_its_own_compilation_cache():
    env = {"JAX_COMPILATION_CACHE_DIR": "/c/notebooks", "PYTEST_XDIST_WORKER": "gw1"}
    nbval_contract.own_compilation_cache(env)
    assert env["JAX_COMPILATION_CACHE_DIR"] == os.path.join("/c/notebooks", "gw1")
    alone = {"JAX_COMPILATION_CACHE_DIR": "/c/seed-1"}  # one process (a seed): its directory as given
    nbval_contract.own_compilation_cache(alone)
    assert alone["JAX_COMPILATION_CACHE_DIR"] == "/c/seed-1"
    no_cache = {"PYTEST_XDIST_WORKER": "gw0"}  # no cache asked for: none is made up
    nbval_contract.own_compilation_cache(no_cache)
    assert "JAX_COMPILATION_CACHE_DIR" not in no_cache
