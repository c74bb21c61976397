"""The notebook suite: stored clean, has a FAST parameters cell, and runs top to bottom in fast mode.

For every ``notebooks/*.ipynb``:

* ``test_stored_clean``: no outputs, no execution counts, no saved widget state
  (fix with ``make strip``; the rules are those of ``scripts/strip_notebooks.py``).
* ``test_has_fast_parameters_cell``: a code cell tagged ``parameters`` (papermill style) that
  reads the ``DSNOT_LITE_FAST`` environment variable, so the run below really is the fast one.
* ``test_executes_in_fast_mode`` (marker ``notebooks``, part of the default ``make test``):
  executes the notebook with nbclient in a kernel running *this* interpreter (``sys.executable``,
  i.e. the project's venv), with ``DSNOT_LITE_FAST=1`` in the kernel's environment and the
  notebook's own folder as working directory. Outputs are not written back.

The kernel is described by a throw-away kernelspec in a temporary folder, so nothing has to be
installed into the user's Jupyter dirs and a fresh clone works with only ``make test``.
Run just these with ``.venv/bin/python -m pytest tests/test_notebooks.py`` or ``-m notebooks``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL_NAME = "dsnot-lite-test"

if NOTEBOOKS:
    PARAMS = [pytest.param(p, id=p.stem) for p in NOTEBOOKS]
else:
    # parametrize over an empty list would silently collect nothing; say why instead.
    PARAMS = [pytest.param(None, id="no-notebooks",
                           marks=pytest.mark.skip(reason="no notebooks/*.ipynb in the repository yet"))]


def _load_strip_module():
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", PARAMS)
def test_stored_clean(path):
    found = _load_strip_module().problems(_read(path))
    assert not found, f"{path.name} is stored with outputs; run `make strip`:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("path", PARAMS)
def test_has_fast_parameters_cell(path):
    cells = [c for c in _read(path)["cells"]
             if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells, f"{path.name} has no code cell tagged `parameters` (papermill style) holding the FAST switch"
    src = "".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    assert "DSNOT_LITE_FAST" in src, (
        f"{path.name}: the `parameters` cell does not read DSNOT_LITE_FAST, so CI would run it in full mode")


def _kernel_manager(tmp_path: Path):
    """A KernelManager for a kernelspec that runs sys.executable with DSNOT_LITE_FAST=1."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kdir = tmp_path / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dsnot-lite (test venv)",
        "language": "python",
        "env": {"DSNOT_LITE_FAST": "1", "PYTHONPATH": pythonpath},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", PARAMS)
def test_executes_in_fast_mode(path, tmp_path, monkeypatch, record_property):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DSNOT_LITE_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    elapsed = time.perf_counter() - t0
    record_property("fast_mode_seconds", round(elapsed, 1))
    print(f"{path.name}: executed in fast mode in {elapsed:.1f} s")
    # nbclient skips empty code cells and cells tagged skip-execution; every other one must have run.
    runnable = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()
                and "skip-execution" not in c.get("metadata", {}).get("tags", [])]
    n_code = len(runnable)
    n_run = sum(c.get("execution_count") is not None for c in runnable)
    assert n_run == n_code, f"{path.name}: only {n_run} of {n_code} code cells were executed"
