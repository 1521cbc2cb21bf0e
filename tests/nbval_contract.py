"""nbval plugin: the reproducibility contract of the notebook layer (DESIGN.md).

Loaded by the notebook and seed layers of ``make test`` (``-p nbval_contract`` with ``tests/`` on
``PYTHONPATH``). Every notebook still executes top to bottom under nbval; what changes is how a
re-run output is compared with the stored (published) one.

Two kinds of number
-------------------
*Exact* outputs (closed forms, counts, anything not trained or sampled with hardware-dependent
rounding) are compared exactly, as plain nbval does.

*Measured* outputs (trained, or estimated by Monte Carlo) are compared within a tolerance that
is declared beside them in the notebook:

* a code cell whose source has a line ``# measured: rel=R abs=A  (why)`` declares every number
  in its printed text (stdout, ``text/plain`` results) measured: a re-run number ``v`` matches
  the stored ``s`` when ``|v - s| <= A + R * |s|``; the text around the numbers must be equal
  (up to the width of the space that pads a column);
* a glued number (``klbook.book.glue(name, value, tol=A, rel=R)``) carries its own tolerance in
  its output's metadata, and is compared the same way; other glued numbers are exact, unless
  they are glued in a ``# measured:`` cell, whose tolerance they then share.

Seeds
-----
With ``KLBOOK_SEED`` set to a non-zero seed, every key a chapter draws is different
(``klbook.book.key``), so exact outputs that depend on random draws legitimately change: the
seed layer then checks that every cell runs (every assert holds) and compares the *measured*
outputs, within their declared tolerances, with the stored ones. That is what makes a
tolerance honest: it must cover another seed's result, not only another CPU's rounding.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import pytest

MEASURED = re.compile(r"^\s*#\s*measured:\s*(?P<spec>[^()\n]*)", re.MULTILINE)
SPEC = re.compile(r"\b(rel|abs)\s*=\s*([0-9.eE+-]+)")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|(?<!\w)[-+]?(?:inf|nan)(?!\w)")
GLUE = "application/papermill.record/text/plain"


def seed() -> int:
    try:
        return int(os.environ.get("KLBOOK_SEED", "0") or 0)
    except ValueError:
        return 0


def parse_spec(text: str) -> dict[str, float]:
    """``rel=0.1 abs=0.02`` -> ``{"rel": 0.1, "abs": 0.02}``; a declaration names at least one."""
    spec = {k: float(v) for k, v in SPEC.findall(text)}
    if not spec or any(not math.isfinite(v) or v < 0 for v in spec.values()):
        raise ValueError(f"a '# measured:' line needs rel=... and/or abs=... (finite, >= 0); got {text!r}")
    return spec


def cell_tolerance(source: str) -> dict[str, float] | None:
    """The tolerance a cell declares with a ``# measured:`` line, or ``None`` (exact)."""
    m = MEASURED.search(source)
    return parse_spec(m.group("spec")) if m else None


def _split(text: str) -> tuple[list[str], list[str]]:
    """Text between numbers (horizontal space runs collapsed) and the numbers themselves."""
    numbers = NUMBER.findall(text)
    between = [re.sub(r"[ \t]+", " ", part) for part in NUMBER.split(text)]
    return between, numbers


def _value(token: str) -> float:
    return float(token.replace("+", "")) if token.strip("+-") not in ("inf", "nan") else float(token)


def within(stored: str, rerun: str, spec: dict[str, float]) -> tuple[bool, list[str]]:
    """Whether two texts agree under a tolerance; the reasons when they do not."""
    b1, n1 = _split(stored)
    b2, n2 = _split(rerun)
    if b1 != b2 or len(n1) != len(n2):
        return False, ["the text around the measured numbers differs (not only the numbers)"]
    problems = []
    a, r = spec.get("abs", 0.0), spec.get("rel", 0.0)
    for s_tok, v_tok in zip(n1, n2, strict=True):
        s, v = _value(s_tok), _value(v_tok)
        if s == v or (math.isnan(s) and math.isnan(v)):
            continue
        if math.isfinite(s) and math.isfinite(v) and abs(v - s) <= a + r * abs(s):
            continue
        problems.append(
            f"measured {v_tok} against stored {s_tok}: outside the declared tolerance "
            f"abs={a:g} rel={r:g} (allowed |difference| <= {a + r * abs(s):.3g})"
        )
    return not problems, problems


def _texts(output) -> list[tuple[str, str]]:
    """(kind, text) pairs of an output that carry comparable text."""
    if output.get("output_type") == "stream":
        return [("stream", "text")]
    data = output.get("data", {})
    return [("data", k) for k in ("text/plain", GLUE) if k in data]


def _get(output, where):
    kind, key = where
    return output[key] if kind == "stream" else output["data"][key]


def _set(output, where, value):
    kind, key = where
    if kind == "stream":
        output[key] = value
    else:
        output["data"][key] = value


def _glue_spec(output, fallback):
    spec = output.get("metadata", {}).get("klbook", {}).get("tolerance")
    return dict(spec) if spec else fallback


def _is_glue(output) -> bool:
    return GLUE in output.get("data", {})


def _glue_name(output):
    return output.get("metadata", {}).get("scrapbook", {}).get("name")


def reconcile(item, test: list, ref: list, notes: list[str]) -> tuple[list, list]:
    """Apply the contract: measured numbers within tolerance take their stored text.

    Returns the (test, ref) lists that nbval's exact comparison then checks. In the seed layer,
    outputs that are not measured are dropped from both sides (their values follow the seed).
    """
    import copy

    spec = cell_tolerance(item.cell.source)
    seeded = seed() != 0
    test = [copy.deepcopy(o) for o in test]
    ref = [copy.deepcopy(o) for o in ref]

    # Glued numbers: matched by name, each with its own (or the cell's) tolerance.
    ref_glue = {_glue_name(o): o for o in ref if _is_glue(o)}
    for out in test:
        if not _is_glue(out):
            continue
        name = _glue_name(out)
        stored = ref_glue.get(name)
        g_spec = _glue_spec(out, spec)
        if stored is None or g_spec is None:
            continue
        ok, why = within(stored["data"][GLUE], out["data"][GLUE], g_spec)
        if ok:
            out["data"][GLUE] = stored["data"][GLUE]
        else:
            notes.extend(f"glued {name}: {w}" for w in why)

    # Printed text of a measured cell: aligned by position among the non-glue outputs.
    if spec is not None:
        t_plain = [o for o in test if not _is_glue(o)]
        r_plain = [o for o in ref if not _is_glue(o)]
        if len(t_plain) == len(r_plain):
            for t_out, r_out in zip(t_plain, r_plain, strict=True):
                for where in _texts(t_out):
                    if where not in _texts(r_out) or t_out.get("output_type") != r_out.get("output_type"):
                        continue
                    ok, why = within(_get(r_out, where), _get(t_out, where), spec)
                    if ok:
                        _set(t_out, where, _get(r_out, where))
                    else:
                        notes.extend(why)

    if seeded:

        def keep(o):
            if _is_glue(o):
                return _glue_spec(o, spec) is not None
            return spec is not None and o.get("output_type") in ("stream", "execute_result")

        ref_names = {_glue_name(o) for o in ref if _is_glue(o) and keep(o)}
        test = [o for o in test if keep(o) and (not _is_glue(o) or _glue_name(o) in ref_names)]
        ref = [o for o in ref if keep(o)]
    return test, ref


def own_compilation_cache(environ=os.environ) -> None:
    """Give each pytest-xdist worker its own directory of JAX's persistent compilation cache.

    The kernels a worker starts inherit its environment, so with ``JAX_COMPILATION_CACHE_DIR`` set
    (the Makefile's notebook layer) worker ``gw0`` writes to ``<dir>/gw0`` and ``gw1`` to
    ``<dir>/gw1``: two processes never write one directory, so neither can read an entry the other
    is half way through writing (JAX writes an entry in place and locks only when a size limit
    is set). Outside xdist the directory is left as it is.
    """
    base, worker = environ.get("JAX_COMPILATION_CACHE_DIR"), environ.get("PYTEST_XDIST_WORKER")
    if base and worker:
        environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, worker)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    own_compilation_cache()
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to extend
        return
    if getattr(IPyNbCell, "_klbook_contract", False):
        return
    original = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        notes: list[str] = []
        try:
            test, ref = reconcile(self, test, ref, notes)
        except ValueError as err:  # a malformed '# measured:' declaration
            self.comparison_traceback = [f"klbook contract: {err}"]
            return False
        ok = original(self, test, ref, skip_compare)
        if not ok and notes:
            self.comparison_traceback.append("klbook reproducibility contract:")
            self.comparison_traceback.extend(f"  {n}" for n in notes)
        return ok

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbCell._klbook_contract = True

    import nbval.kernel

    nbval.kernel.start_new_kernel = retry_kernel_start(nbval.kernel.start_new_kernel)


KERNEL_START_ATTEMPTS = 3


def retry_kernel_start(start, attempts: int = KERNEL_START_ATTEMPTS):
    """Wrap nbval's ``start_new_kernel`` so that a kernel which dies while starting is started again.

    jupyter_client picks a kernel's five TCP ports by binding to free ones and closing them again
    before the kernel binds them, so when two processes start kernels at once (the two seeds of the
    seed layer, the two workers of the notebook layer) one kernel can find a port taken and exit
    ("Kernel died before replying to kernel_info"; jupyter/jupyter_client#154). No cell of the
    notebook has run yet, so starting a fresh kernel hides nothing; a kernel that cannot start
    ``attempts`` times in a row still fails every cell of its notebook, with the last error.
    """

    def start_new_kernel(*args, **kwargs):
        for attempt in range(1, attempts + 1):
            try:
                return start(*args, **kwargs)
            except RuntimeError as err:
                if attempt == attempts:
                    raise
                warnings.warn(
                    f"klbook contract: a kernel failed to start ({err}); starting another "
                    f"(attempt {attempt + 1} of {attempts})",
                    RuntimeWarning,
                    stacklevel=2,
                )

    start_new_kernel.__wrapped__ = start
    return start_new_kernel
