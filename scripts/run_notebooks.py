#!/usr/bin/env python3
"""Execute the notebooks top to bottom, in fast or full mode, and time each one.

Usage:
    .venv/bin/python scripts/run_notebooks.py                   # every notebook, full mode
    .venv/bin/python scripts/run_notebooks.py --fast            # fast mode (DSNOT_LITE_FAST=1)
    .venv/bin/python scripts/run_notebooks.py --fast --solutions  # the CI setting: every exercise solved
    .venv/bin/python scripts/run_notebooks.py notebooks/05_paper_figures.ipynb \\
        -p 'TABLE="../results/issue5_small/issue5.csv"'        # override a parameter (papermill style)

Each notebook runs in a kernel started from *this* interpreter (the project's venv) with the
notebook's folder as working directory. The executed copy, outputs included, is written to
``--out`` (default ``results/notebooks/executed/``, not committed; the notebooks in
``notebooks/`` stay clean), and ``--out/timings.json`` gets one entry per notebook: mode, seconds,
parameter overrides, whether it passed and, if not, the error (the executed copy then shows
the traceback in the failing cell). ``-p NAME=EXPR`` lines go into a cell inserted right
after the cell tagged ``parameters``, as papermill does. ``--solutions`` replaces every exercise
stub (a code cell tagged ``exercise``) by its solution's source and makes the checkers strict
(``DSNOT_LITE_STRICT_EXERCISES=1``: a failed check raises), as CI and the book do; such a run
without ``-p`` that passes is also stored in the book's cache (``scripts/notebook_cache.py``), so
``make book`` does not run it again. Exit status 1 if any notebook failed.

``tests/test_notebooks.py`` uses ``execute`` from here, so CI runs notebooks exactly this way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
KERNEL_NAME = "dsnot-lite-run"
CELL_TIMEOUT_S = 600  # seconds per cell in fast mode (CI); full mode allows 7200 unless --cell-timeout says otherwise


def _kernel_manager(kernel_dir: Path, fast: bool, python: str | None = None, solutions: bool = False):
    """An AsyncKernelManager (nbclient's own kind: with a blocking one the cell timeout never fires)
    for a throw-away kernelspec running ``python`` (default ``sys.executable`` with this checkout on
    its path; another interpreter runs with its own installed packages only)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kdir = kernel_dir / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    env = {"DSNOT_LITE_FAST": "1" if fast else "0", "DSNOT_LITE_STRICT_EXERCISES": "1" if solutions else "0"}
    if python is None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dsnot-lite (venv)",
        "language": "python",
        "env": env,
    }
    (kdir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def _notebook_cache():
    sys.path.insert(0, str(ROOT / "scripts"))
    import notebook_cache

    return notebook_cache


def inject_parameters(nb, overrides: list[str]) -> None:
    """Insert a cell holding ``overrides`` after the ``parameters`` cell (papermill's convention)."""
    if not overrides:
        return
    import nbformat

    idx = next(
        (i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])),
        None,
    )
    if idx is None:
        raise SystemExit("error: the notebook has no cell tagged `parameters`, so -p has nowhere to go")
    cell = nbformat.v4.new_code_cell("# parameters injected by scripts/run_notebooks.py\n" + "\n".join(overrides))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)


def fill_solutions(nb) -> int:
    """Replace every exercise stub (code cell tagged ``exercise``, metadata ``exercise``: its
    name) by the solution's source; returns how many were filled."""
    from dsnot_lite.tutorial.exercises import solution_source

    filled = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in cell.get("metadata", {}).get("tags", []):
            name = cell.metadata.get("exercise")
            if not name:
                raise SystemExit("error: a cell tagged `exercise` has no `exercise` metadata naming its solution")
            cell.source = f"# solution filled in by scripts/run_notebooks.py --solutions\n{solution_source(name)}"
            filled += 1
    return filled


def execute(
    path: Path,
    fast: bool,
    overrides: list[str] | None = None,
    cell_timeout: int = CELL_TIMEOUT_S,
    python: str | None = None,
    cwd: Path | None = None,
    solutions: bool = False,
):
    """Run the notebook at ``path`` (in ``cwd``, default its own folder; with the interpreter
    ``python``, default this one); return ``(executed notebook, seconds, error)``.

    ``error`` is ``None`` when every cell ran, else the failing cell's error in one line; the
    returned notebook then holds the outputs up to and including that cell's traceback.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, overrides or [])
    if solutions:
        fill_solutions(nb)
    with tempfile.TemporaryDirectory(prefix="dsnot-kernel-") as kernel_dir:
        client = NotebookClient(
            nb,
            km=_kernel_manager(Path(kernel_dir), fast, python, solutions),
            timeout=cell_timeout,
            startup_timeout=120,
            resources={"metadata": {"path": str(cwd or path.parent)}},
        )
        t0 = time.perf_counter()
        try:
            client.execute()
            error = None
        except CellExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}" if getattr(exc, "ename", None) else str(exc).strip().splitlines()[-1]
        except CellTimeoutError:
            error = f"a cell ran longer than {cell_timeout} s (raise it with --cell-timeout)"
        except DeadKernelError:
            error = "the kernel died (out of memory?)"
        return nb, time.perf_counter() - t0, error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    ap.add_argument("--fast", action="store_true", help="set DSNOT_LITE_FAST=1 (the CI setting)")
    ap.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=EXPR",
        help="a Python assignment run after the parameters cell; repeatable",
    )
    ap.add_argument("--solutions", action="store_true", help="fill every exercise with its solution; checkers strict")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "notebooks" / "executed")
    ap.add_argument("--cell-timeout", type=int, default=None, help=f"seconds per cell (default {CELL_TIMEOUT_S} fast, 7200 full)")
    args = ap.parse_args(argv)

    paths = args.notebooks or sorted(NB_DIR.glob("*.ipynb"))
    for p in paths:
        if not p.is_file():
            ap.error(f"no such notebook: {p}")
    for expr in args.parameter:
        if "=" not in expr:
            ap.error(f"-p {expr!r}: expected NAME=EXPR, e.g. -p 'SPARSITY=0.7'")
    timeout = args.cell_timeout or (CELL_TIMEOUT_S if args.fast else 7200)
    mode = "fast" if args.fast else "full"
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}

    import nbformat

    from dsnot_lite.runs.io import atomic_write_text

    failed = 0
    total = 0.0
    for path in paths:
        print(f"{path.name} ({mode} mode) ...", flush=True)
        cacheable = args.solutions and not args.parameter and path.resolve().parent == NB_DIR  # exactly the book's run
        key = _notebook_cache().cache_key(path.resolve(), mode) if cacheable else None
        nb, seconds, error = execute(path, args.fast, args.parameter, timeout, solutions=args.solutions)
        failed += error is not None
        total += seconds
        print(f"  {'FAILED: ' + error if error else 'passed'} in {seconds:.1f} s", flush=True)
        # the executed copy is written either way: a failed one shows the traceback in its cell
        atomic_write_text(args.out / f"{path.stem}.{mode}.ipynb", nbformat.writes(nb))
        if cacheable and error is None:  # stored for `make book`
            _notebook_cache().store(path.resolve(), mode, nb, seconds, key=key)
        timings[f"{path.stem}.{mode}"] = {
            "notebook": path.name,
            "mode": mode,
            "seconds": round(seconds, 1),
            "passed": error is None,
            "error": error,
            "parameters": args.parameter,
            "solutions": args.solutions,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(timings_path, json.dumps(timings, indent=1, sort_keys=True) + "\n")
    print(f"{len(paths)} notebook(s), {mode} mode: {total:.1f} s in all, {failed} failed; executed copies in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
