"""The notebook suite: stored clean, has a FAST parameters cell, and runs top to bottom in fast mode.

For every ``notebooks/*.ipynb``:

* ``test_stored_clean``: no outputs, no execution counts, no saved widget state
  (fix with ``make strip``; the rules are those of ``scripts/strip_notebooks.py``).
* ``test_has_fast_parameters_cell``: a code cell tagged ``parameters`` (papermill style) that
  reads the ``DSNOT_LITE_FAST`` environment variable, so the run below really is the fast one.
* ``test_executes_in_fast_mode`` (marker ``notebooks``, part of the default ``make test``):
  executes the notebook exactly as ``scripts/run_notebooks.py --fast --solutions`` does (every
  exercise filled with its solution, every checker strict): nbclient, a kernel
  running *this* interpreter (the project's venv) with ``DSNOT_LITE_FAST=1``, the notebook's own
  folder as working directory. Outputs are not written back to the notebook; the executed copy is
  stored in the book's cache (``scripts/notebook_cache.py``), which is exactly what
  ``make book FAST=1`` would run.
* ``test_fast_book_builds_from_these_runs`` (after them, in file order): builds the book in fast
  mode into a temporary folder from those stored runs, without executing any notebook again.
* ``test_fast_book_in_chromium`` (marker ``browser``): every page of that book in headless
  Chromium (``scripts/book_check.py``); skipped only where ``/usr/bin/chromium`` is not installed.

The kernel is described by a throw-away kernelspec in a temporary folder, so nothing has to be
installed into the user's Jupyter dirs and a fresh clone works with only ``make test``.
Run just these with ``.venv/bin/python -m pytest tests/test_notebooks.py`` or ``-m notebooks``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600

if NOTEBOOKS:
    PARAMS = [pytest.param(p, id=p.stem) for p in NOTEBOOKS]
else:
    # parametrize over an empty list would silently collect nothing; say why instead.
    PARAMS = [pytest.param(None, id="no-notebooks", marks=pytest.mark.skip(reason="no notebooks/*.ipynb in the repository yet"))]


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
    cells = [
        c for c in _read(path)["cells"] if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert cells, f"{path.name} has no code cell tagged `parameters` (papermill style) holding the FAST switch"
    src = "".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    assert "DSNOT_LITE_FAST" in src, (
        f"{path.name}: the `parameters` cell does not read DSNOT_LITE_FAST, so CI would run it in full mode"
    )


def _load_runner_module():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _script(name: str):
    """A module of scripts/ (the book's builder and cache import each other by plain name)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module(name)


# notebook stem -> whether its fast-mode execution passed in this session (read by the book test)
EXECUTED: dict[str, bool] = {}


@pytest.mark.notebooks
@pytest.mark.parametrize("path", PARAMS)
def test_executes_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("DSNOT_LITE_FAST", "1")
    EXECUTED[path.stem] = False
    key = _script("notebook_cache").cache_key(path, "fast")  # before the run: the notebook may be edited meanwhile
    nb, elapsed, error = _load_runner_module().execute(path, fast=True, cell_timeout=CELL_TIMEOUT_S, solutions=True)
    assert error is None, f"{path.name} failed in fast mode: {error}"
    print(f"{path.name}: executed in fast mode in {elapsed:.1f} s")
    # nbclient skips empty code cells and cells tagged skip-execution; every other one must have run.
    runnable = [
        c
        for c in nb.cells
        if c.cell_type == "code" and c.source.strip() and "skip-execution" not in c.get("metadata", {}).get("tags", [])
    ]
    n_code = len(runnable)
    n_run = sum(c.get("execution_count") is not None for c in runnable)
    assert n_run == n_code, f"{path.name}: only {n_run} of {n_code} code cells were executed"
    _script("notebook_cache").store(path, "fast", nb, elapsed, key=key)  # the run `make book FAST=1` would do
    EXECUTED[path.stem] = True


@pytest.fixture(scope="module")
def fast_book(tmp_path_factory):
    """The book built in fast mode from the runs stored above (runs only what is not stored)."""
    failed = sorted(stem for stem, ok in EXECUTED.items() if not ok)
    if failed:  # building would only run them again, and fail again
        pytest.fail(f"the book needs every notebook; these failed above: {', '.join(failed)}")
    out = tmp_path_factory.mktemp("book")
    return out, _script("build_book").build(NOTEBOOKS, out, fast=True, log=print)


@pytest.mark.notebooks
def test_fast_book_builds_from_these_runs(fast_book):
    out, manifest = fast_book
    pages = {p["stem"]: p for p in manifest["pages"]}
    assert sorted(pages) == sorted(p.stem for p in NOTEBOOKS)
    assert not [s for s, p in pages.items() if p["error"]], manifest
    rerun = [stem for stem in EXECUTED if not pages[stem]["cached"]]
    assert not rerun, f"the book executed {rerun} again instead of reusing the test's runs"
    for stem in pages:
        page = (out / f"{stem}.html").read_text(encoding="utf-8")
        assert "Fast mode" in page and "book-banner" in page, f"{stem}: no mode banner"
    assert all(f"{stem}.html" in (out / "index.html").read_text(encoding="utf-8") for stem in pages)
    print(f"fast book: {len(pages)} pages in {manifest['build_seconds']} s")


@pytest.mark.notebooks
@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_fast_book_in_chromium(fast_book, tmp_path):
    out, _ = fast_book
    assert _script("book_check").run(out, "/usr/bin/chromium", tmp_path / "shots") == 0, "see the book-check lines above"


def test_runner_injects_parameters_and_records_timings(tmp_path):
    """scripts/run_notebooks.py end to end on a two-cell notebook: -p overrides, executed copy, timings."""
    import nbformat

    params = nbformat.v4.new_code_cell('import os\nFAST = os.environ.get("DSNOT_LITE_FAST") == "1"\nX = 1')
    params.metadata["tags"] = ["parameters"]
    check = nbformat.v4.new_code_cell("assert FAST is False and X == 41 + 1\nprint('ran', X)")
    src = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[params, check]), src)
    runner = _load_runner_module()
    out = tmp_path / "out"
    assert runner.main([str(src), "-p", "X = 42", "--out", str(out)]) == 0
    executed = nbformat.read(out / "tiny.full.ipynb", as_version=4)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]
    assert "ran 42" in executed.cells[2].outputs[0]["text"]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["tiny.full"]["passed"] and timings["tiny.full"]["parameters"] == ["X = 42"]
    # a failing cell: exit status 1, the error in the timings and the traceback in the executed copy
    assert runner.main([str(src), "--fast", "--out", str(out)]) == 1
    failed = json.loads((out / "timings.json").read_text())["tiny.fast"]
    assert failed["passed"] is False and failed["error"].startswith("AssertionError")
    outputs = nbformat.read(out / "tiny.fast.ipynb", as_version=4).cells[1].outputs
    assert outputs[0]["output_type"] == "error" and outputs[0]["ename"] == "AssertionError"


def test_runner_rejects_bad_parameters(tmp_path):
    runner = _load_runner_module()
    with pytest.raises(SystemExit):
        runner.main([str(NOTEBOOKS[0]), "-p", "no equals sign", "--out", str(tmp_path)])
    assert not (tmp_path / "timings.json").exists()


def test_runner_reports_a_cell_timeout(tmp_path):
    import nbformat

    params = nbformat.v4.new_code_cell("import time")
    params.metadata["tags"] = ["parameters"]
    src = tmp_path / "slow.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell("time.sleep(30)")]), src)
    out = tmp_path / "out"
    assert _load_runner_module().main([str(src), "--cell-timeout", "2", "--out", str(out)]) == 1
    entry = json.loads((out / "timings.json").read_text())["slow.full"]
    assert not entry["passed"] and "longer than 2 s" in entry["error"] and entry["seconds"] < 25
