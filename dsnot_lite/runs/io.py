"""Run results: one JSON file per run and a flat CSV table of all runs, both written atomically."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path

# Columns of the results table, in order; a run's JSON carries these keys and more.
TABLE_COLUMNS = (
    "model", "method", "dsnot", "preset", "weight_update", "sparsity", "nm", "ppl", "seqlen", "windows", "total_windows",
    "max_windows", "nsamples", "calib_seqlen", "seed", "device", "dtype", "achieved_sparsity",
    "seconds_total", "peak_memory_mb", "output", "finished_at",
)  # fmt: skip


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """The run's JSON object, written atomically."""
    return atomic_write_text(path, json.dumps(result, indent=2, sort_keys=False) + "\n")


def table_row(result: dict) -> dict:
    """The flat table row of a run's result dict."""
    row = {k: result.get(k) for k in TABLE_COLUMNS}
    row["seconds_total"] = result.get("seconds", {}).get("total")
    return row


def append_table(result: dict, path: str | os.PathLike) -> Path:
    """Append the run's row to the CSV table (rewritten atomically; pandas reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:  # runs may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows: list[dict] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        rows.append(table_row(result))
        return _write_rows(rows, path)


def _write_rows(rows: list[dict], path: Path) -> Path:
    columns = list(TABLE_COLUMNS) + sorted({k for r in rows for k in r} - set(TABLE_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())
