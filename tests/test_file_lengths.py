"""No hand-written file in the tree is longer than 450 lines (the project's brief).

The rule covers every file of the checkout that git tracks or would track (untracked files that
are not ignored count too, so a new file is checked before it is committed), bench/ and scripts/
included: Python, Markdown, shell, TOML, YAML, templates, the Makefile, CI scripts. Left out, by
format: binary files (figures), and the data formats ``.json``, ``.csv`` and ``.ipynb`` (run
records, results tables, benchmark outputs written by programs, and notebooks, which are JSON
cells whose length the course measures per notebook).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from _paths import ROOT

MAX_LINES = 450
DATA_FORMATS = (".json", ".csv", ".ipynb")
SKIP_DIRS = {".git", ".venv", "results", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def _files() -> list[str]:
    """The checkout's files: git's view when there is one, else a walk that skips build folders."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout  # fmt: skip
        return sorted({name for name in out.decode().split("\0") if name and (ROOT / name).is_file()})
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts))  # fmt: skip


def _text_lines(path: Path) -> int | None:
    """Line count of a text file, None for a binary one (a NUL byte or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return len(data.decode("utf-8").splitlines())
    except UnicodeDecodeError:
        return None


def too_long(root: Path, names: list[str]) -> tuple[int, dict[str, int]]:
    """(files checked, {file: lines} of those over ``MAX_LINES``)."""
    checked, long = 0, {}
    for name in names:
        lines = None if name.endswith(DATA_FORMATS) else _text_lines(root / name)
        if lines is None:
            continue
        checked += 1
        if lines > MAX_LINES:
            long[name] = lines
    return checked, long


def test_no_hand_written_file_is_longer_than_450_lines():
    checked, long = too_long(ROOT, _files())
    assert checked > 100, f"only {checked} files checked: is this a checkout?"
    assert not long, f"files over {MAX_LINES} lines (split them): {long}"


def test_the_rule_flags_long_text_and_skips_data_and_binaries(tmp_path):
    files = {"a.py": "x = 1\n" * (MAX_LINES + 1), "ok.md": "line\n" * MAX_LINES, "Makefile": "all:\n" * 500,
             "run.json": "{}\n" * 900, "fig.png": "\0" * 900 + "\n" * 900}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert too_long(tmp_path, sorted(files)) == (3, {"Makefile": 500, "a.py": MAX_LINES + 1})
