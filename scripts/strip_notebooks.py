#!/usr/bin/env python3
"""Strip outputs from Jupyter notebooks in place, so they are committed clean.

Usage:
    python scripts/strip_notebooks.py                 # every notebooks/*.ipynb
    python scripts/strip_notebooks.py a.ipynb b.ipynb # just these
    python scripts/strip_notebooks.py --check         # change nothing; exit 1 if any notebook is dirty

"Clean" means: every code cell has ``outputs == []`` and ``execution_count == None``, and the
notebook metadata holds no saved ipywidgets state (``metadata.widgets``). Per-cell execution
timing metadata (``metadata.execution``, written by some JupyterLab extensions) is removed too.
Standard library only, so it also runs outside the project's venv. Files are written the way
Jupyter writes them (1-space indent, sorted keys, UTF-8, trailing newline) and only when
something changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dsnot_lite.runs.io import atomic_write_text  # noqa: E402

DEFAULT_GLOB = "notebooks/*.ipynb"


def problems(nb: dict) -> list[str]:
    """Return a human-readable list of what keeps ``nb`` (a parsed .ipynb) from being clean."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i}: has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution_count = {cell['execution_count']}")
    if "widgets" in nb.get("metadata", {}):
        found.append("notebook metadata holds saved widget state (metadata.widgets)")
    return found


def strip(nb: dict) -> dict:
    """Strip ``nb`` in place and return it."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help=f"notebooks (default: {DEFAULT_GLOB})")
    ap.add_argument("--check", action="store_true", help="report dirty notebooks, change nothing")
    args = ap.parse_args(argv)

    paths = args.paths or sorted(ROOT.glob(DEFAULT_GLOB))
    if not paths:
        print(f"no notebooks found ({DEFAULT_GLOB})")
        return 0
    dirty = 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
        issues = problems(nb)
        if args.check:
            if issues:
                dirty += 1
                print(f"{path}: not clean: " + "; ".join(issues))
            continue
        new = dumps(strip(nb))
        if new != text:
            atomic_write_text(path, new)
            print(f"stripped {path}")
    if args.check and dirty:
        print(f"{dirty} notebook(s) not clean; run `make strip`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
