#!/usr/bin/env python3
"""Build the book: every notebook executed with its exercises solved, as a static HTML site.

Usage:
    .venv/bin/python scripts/build_book.py            # make book: full mode (fast where the course says why)
    .venv/bin/python scripts/build_book.py --fast     # make book FAST=1: every page from a fast-mode run (CI)
    .venv/bin/python scripts/build_book.py --rebuild  # rerun every notebook, whatever the cache holds

Each notebook runs as ``scripts/run_notebooks.py --solutions`` runs it (every exercise stub
replaced by its solution, checkers strict), in full mode unless ``course_stats.FAST_IN_BOOK``
names it (then fast, and its page says why) or ``--fast`` is given. Executed copies are cached
(``scripts/notebook_cache.py``: keyed by the notebook, the package code it runs, the mode and the
parameters), so a second build with nothing changed only renders. Output, in ``--out`` (default
``results/book/``): ``index.html`` (the course path of ``notebooks/README.md`` with the measured
table), one page per notebook (``01_one_linear_layer.html``, ...), ``mathjax/`` (a local MathJax)
and ``book.json`` (what was built, from which run, how long it took). Pages need nothing from the
network: open ``results/book/index.html`` in a browser, or serve the folder
(``python -m http.server -d results/book``). Exit status 1 if a notebook failed (its page shows
the traceback), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import course_stats  # noqa: E402
import notebook_cache  # noqa: E402

ROOT = HERE.parent
NB_DIR = ROOT / "notebooks"
DEFAULT_OUT = ROOT / "results" / "book"
FULL_CELL_TIMEOUT_S = 7200


def _runner():
    import run_notebooks

    return run_notebooks


def check_out_dir(out: Path) -> str | None:
    """``None`` when ``out`` can be created and written, else why not: ``runs.io.check_writable``, the
    check of every output of the command line (a temporary file is made and removed there, and a
    folder made for the test is removed again)."""
    from dsnot_lite.runs.io import check_writable

    try:
        check_writable(out, "--out", folder=True)
    except (PermissionError, ValueError) as exc:
        return str(exc).split("; fix:")[0]
    return None


def plan(paths: list[Path], fast: bool) -> list[tuple[Path, str, str | None]]:
    """``(notebook, mode, why fast)`` for each notebook, in course order."""
    out = []
    for p in paths:
        reason = course_stats.FAST_IN_BOOK.get(p.stem)
        out.append((p, "fast" if fast or reason else "full", reason))
    return out


def executed_copy(path: Path, mode: str, rebuild: bool, log, cache_dir: Path) -> tuple[object, dict, bool]:
    """``(executed notebook, record, from cache)``: the cached run if its key is current, else a new run."""
    if not rebuild:
        hit = notebook_cache.lookup(path, mode, cache_dir=cache_dir)
        if hit is not None:
            nb, meta = hit
            return nb, {**meta, "error": None}, True
    log(f"{path.name}: executing in {mode} mode with the solutions filled in ...")
    key = notebook_cache.cache_key(path, mode)
    timeout = _runner().CELL_TIMEOUT_S if mode == "fast" else FULL_CELL_TIMEOUT_S
    nb, seconds, error = _runner().execute(path, fast=mode == "fast", cell_timeout=timeout, solutions=True)
    if error is None:
        meta = notebook_cache.store(path, mode, nb, seconds, cache_dir=cache_dir, key=key)
        return nb, {**meta, "error": None}, False
    record = {"notebook": path.name, "mode": mode, "seconds": round(seconds, 1), "error": error,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    return nb, record, False


def build(
    paths: list[Path], out: Path, fast: bool = False, rebuild: bool = False, log=print, cache_dir: Path = notebook_cache.CACHE_DIR
) -> dict:
    """Execute (or reuse) and render every notebook of ``paths`` into ``out``; returns the manifest."""
    import book_html
    import nbformat

    from dsnot_lite.runs.io import atomic_write_text

    t0 = time.perf_counter()
    book_html.copy_mathjax(out)
    steps = plan(paths, fast)
    clean = {p.stem: nbformat.read(p, as_version=4) for p, _, _ in steps}
    order = [p.stem for p, _, _ in steps]
    titles = {stem: book_html.title_of(nb, stem) for stem, nb in clean.items()}
    pages = []
    for path, mode, reason in steps:
        t_page = time.perf_counter()
        executed, record, cached = executed_copy(path, mode, rebuild, log, cache_dir)
        page, counts = book_html.render_page(
            executed, clean[path.stem], path.stem, mode, record, reason, order, titles, fast_build=fast
        )
        atomic_write_text(out / f"{path.stem}.html", page)
        status = "failed" if record.get("error") else ("cached run" if cached else "ran now")
        log(f"{path.name}: {mode} mode, {status} ({record.get('seconds')} s run), page in {time.perf_counter() - t_page:.1f} s")
        pages.append({
            "stem": path.stem, "title": titles[path.stem], "mode": mode, "why_fast": reason, "cached": cached,
            "status": status, "seconds": record.get("seconds"), "finished_at": record.get("finished_at"),
            "error": record.get("error"), **counts,
        })  # fmt: skip
    readme = (NB_DIR / "README.md").read_text(encoding="utf-8")
    table = course_stats.stats_table(course_stats.all_stats(paths, cache_dir))
    if course_stats.BEGIN in readme and course_stats.END in readme:
        readme = course_stats.replace_between_markers(readme, table)
    else:
        readme += "\n\n## Measured\n\n" + table
    seconds = time.perf_counter() - t0
    note = f"Built {time.strftime('%Y-%m-%d %H:%M')} in {seconds:.0f} s; {sum(p['cached'] for p in pages)} of {len(pages)} runs from the cache."
    atomic_write_text(out / "index.html", book_html.render_index(readme, pages, fast, note))
    manifest = {"fast": fast, "build_seconds": round(seconds, 1), "pages": pages}
    atomic_write_text(out / "book.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    ap.add_argument("--fast", action="store_true", help="every page from a fast-mode run (DSNOT_LITE_FAST=1), as CI")
    ap.add_argument("--rebuild", action="store_true", help="rerun every notebook even if the cache holds a current run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NB_DIR.glob("*.ipynb"))
    for p in paths:
        if not p.is_file() or p.suffix != ".ipynb":
            print(f"error: no such notebook: {p}; fix: name files like notebooks/01_one_linear_layer.ipynb", file=sys.stderr)
            return 2
    if not paths:
        print(f"error: no notebooks in {NB_DIR}; fix: run from a checkout of dsnot-lite", file=sys.stderr)
        return 2
    missing = [m for m in ("nbconvert", "jupyter_server_mathjax") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the book needs {', '.join(missing)} (the `book` extra); fix: make venv", file=sys.stderr)
        return 2
    problem = check_out_dir(args.out)
    if problem:
        print(f"error: {problem}; fix: pass --out with a writable folder", file=sys.stderr)
        return 2
    manifest = build(paths, args.out, fast=args.fast, rebuild=args.rebuild, log=lambda m: print(f"book: {m}", flush=True))
    failed = [p["stem"] for p in manifest["pages"] if p["error"]]
    print(
        f"book: {len(manifest['pages'])} pages + index.html in {args.out} in {manifest['build_seconds']:.1f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
