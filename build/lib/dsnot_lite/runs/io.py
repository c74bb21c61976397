"""The one way files are written: atomically (temp file in the same folder, then ``os.replace``)
with ordinary permissions (0666 minus the umask, 0644 by default), never half-written.

Run results are one JSON file per run and a flat CSV table of all runs (``schema.TABLE_COLUMNS``).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, only_if_changed: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically; with ``only_if_changed`` an identical file is left
    untouched. Returns whether the file was (re)written."""
    path = Path(path)
    if only_if_changed and path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def atomic_write_text(path: str | os.PathLike, text: str, *, only_if_changed: bool = False) -> Path:
    """``atomic_write_bytes`` for UTF-8 text (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), only_if_changed=only_if_changed)
    return Path(path)


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """A JSON object, indented, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_rows(rows: list[dict], path: str | os.PathLike, columns: tuple[str, ...]) -> Path:
    """Append rows to a CSV table (rewritten atomically under a lock; extra keys become columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:  # runs may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        old: list[dict] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                old = list(csv.DictReader(fh))
        return write_rows(old + rows, path, columns)


def write_rows(rows: list[dict], path: str | os.PathLike, columns: tuple[str, ...] = ()) -> Path:
    """A CSV table of ``rows``: ``columns`` first, any other keys after them (sorted)."""
    names = list(columns) + sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in names})
    return atomic_write_text(path, buf.getvalue())


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Fail now, with the fix, if a file could not be created at ``path`` later."""
    path = Path(path).expanduser()
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(path)!r} cannot be written ({folder} is not a writable folder); "
                              f"fix: choose a location you can write to")  # fmt: skip
