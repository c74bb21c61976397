"""The cache of executed notebooks that the book and the notebook tests share.

An executed notebook is stored under ``results/notebooks/cache/`` (``<stem>.<mode>.ipynb`` with
``<stem>.<mode>.json`` beside it: key, seconds, when) and reused while its key is unchanged. The
key is a hash of

* the notebook file,
* every ``dsnot_lite`` module its code imports, followed transitively through the package's own
  imports (a change to ``study/`` does not rerun notebook 01, a change to ``core/dsnot.py`` does),
* the exercise solutions filled in (their modules are among those imports) and
  ``scripts/run_notebooks.py`` (how the notebook is run),
* any repository file a code cell names in a string literal (e.g. the study's ``results.csv``;
  not ``results/`` or ``figures/``, which notebooks write),
* the mode (``fast`` / ``full``), the ``-p`` parameter overrides and whether solutions are filled.

Data under ``../shared`` and cached model runs under ``results/`` are not in the key (they are
inputs that do not change, or outputs); ``make book REBUILD=1`` reruns everything.

Only runs that passed are stored. ``tests/test_notebooks.py`` stores its fast-mode executions
here, so ``make book FAST=1`` (and the book test after them) reuses them instead of running each
notebook twice.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "results" / "notebooks" / "cache"
PACKAGE = "dsnot_lite"
RUNNER = ROOT / "scripts" / "run_notebooks.py"
OUTPUTS = (ROOT / "results", ROOT / "figures")  # what notebooks write: never part of a key


def _module_file(name: str) -> Path | None:
    """The source file of the ``dsnot_lite`` module ``name`` (a package's ``__init__.py``), if any."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, current: str, is_package: bool) -> set[str]:
    """Every module name an AST imports (absolute; ``from a import b`` also yields ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                parts = current.split(".") if is_package else current.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_modules(sources: list[str]) -> list[Path]:
    """The ``dsnot_lite`` source files that code ``sources`` imports, transitively, parents included."""
    todo: list[tuple[str, bool]] = []
    for src in sources:
        try:
            todo.extend((n, False) for n in _imported_names(ast.parse(src), "__notebook__", False))
        except SyntaxError:  # IPython magics or shell escapes: fall back to whole lines
            for line in src.splitlines():
                try:
                    todo.extend((n, False) for n in _imported_names(ast.parse(line.strip()), "__notebook__", False))
                except SyntaxError:
                    continue
    seen: dict[str, Path] = {}
    while todo:
        name, _ = todo.pop()
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            path = _module_file(mod)
            if path is None:
                continue
            seen[mod] = path
            tree = ast.parse(path.read_text(encoding="utf-8"))
            todo.extend((n, False) for n in _imported_names(tree, mod, path.name == "__init__.py"))
    return sorted(set(seen.values()))


def _named_files(sources: list[str], nb_dir: Path) -> list[Path]:
    """Repository files (not outputs: ``results/``, ``figures/``) that a string literal in the code names."""
    found: set[Path] = set()
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and 0 < len(node.value) < 300:
                if "\n" in node.value:
                    continue
                for base in (nb_dir, ROOT):
                    try:
                        path = (base / node.value).resolve()
                        if path.is_file() and path.is_relative_to(ROOT) and not any(path.is_relative_to(o) for o in OUTPUTS):
                            found.add(path)
                    except (OSError, ValueError):
                        continue
    return sorted(found)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(path: Path, mode: str, parameters: list[str] | tuple[str, ...] = (), solutions: bool = True) -> str:
    """The hash that decides whether a stored run of ``path`` is still valid (module docstring)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    if solutions:  # the filled-in solutions live in the exercise modules the stubs name
        sources += [
            f"import {PACKAGE}.tutorial.exercises.{c.metadata['exercise'].rpartition('.')[0]}"
            for c in nb.cells
            if c.cell_type == "code" and "exercise" in c.get("metadata", {}).get("tags", []) and c.metadata.get("exercise")
        ]
    files = [path.resolve(), RUNNER, *package_modules(sources), *_named_files(sources, path.parent)]
    payload = {
        "files": {str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f): _sha(f) for f in files},
        "mode": mode,
        "parameters": list(parameters),
        "solutions": solutions,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _paths(stem: str, mode: str, cache_dir: Path) -> tuple[Path, Path]:
    return cache_dir / f"{stem}.{mode}.ipynb", cache_dir / f"{stem}.{mode}.json"


def lookup(path: Path, mode: str, parameters=(), solutions: bool = True, cache_dir: Path = CACHE_DIR):
    """``(executed notebook, meta)`` of a stored run with the current key, else ``None``."""
    import nbformat

    nb_path, meta_path = _paths(path.stem, mode, cache_dir)
    if not (nb_path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("key") != cache_key(path, mode, parameters, solutions):
        return None
    return nbformat.read(nb_path, as_version=4), meta


def store(
    path: Path,
    mode: str,
    nb,
    seconds: float,
    parameters=(),
    solutions: bool = True,
    cache_dir: Path = CACHE_DIR,
    key: str | None = None,
) -> dict:
    """Store a passed run of ``path`` (atomically: the notebook first, then its meta). Pass the ``key``
    computed before the run started: the notebook or the code may have been edited while it ran."""
    import nbformat

    from dsnot_lite.runs.io import atomic_write_text

    meta = {
        "notebook": path.name,
        "mode": mode,
        "key": key or cache_key(path, mode, parameters, solutions),
        "seconds": round(seconds, 1),
        "parameters": list(parameters),
        "solutions": solutions,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    nb_path, meta_path = _paths(path.stem, mode, cache_dir)
    meta_path.unlink(missing_ok=True)  # a crash between the two writes leaves no meta: a miss, not a stale hit
    atomic_write_text(nb_path, nbformat.writes(nb))
    atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def stored(stem: str, mode: str, cache_dir: Path = CACHE_DIR) -> dict | None:
    """The meta of the last stored run of notebook ``stem`` in ``mode``, current or not."""
    meta_path = _paths(stem, mode, cache_dir)[1]
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None


def stored_notebook(stem: str, mode: str, cache_dir: Path = CACHE_DIR):
    """The last stored executed copy of ``stem`` in ``mode`` (current or not), else ``None``."""
    import nbformat

    nb_path = _paths(stem, mode, cache_dir)[0]
    return nbformat.read(nb_path, as_version=4) if nb_path.is_file() else None
