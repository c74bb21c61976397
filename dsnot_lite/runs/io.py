"""The one way files are written: atomically (temp file in the same folder, then ``os.replace``)
with ordinary permissions (0666 minus the umask, 0644 by default), never half-written.

A write that fails (a full disk, a lost permission) raises ``WriteError`` with the path and the
fix, and leaves the file as it was; a temporary file left by a killed writer carries its process
id and is removed by the next write of the same file (``lm.tempfiles``). ``check_writable`` finds
an output location that cannot be written before any work starts, by creating and removing a
file there (``os.access`` says yes to root even where nothing can be created, as in ``/proc``).

Run results are one JSON file per run and a flat CSV table of all runs (``schema.TABLE_COLUMNS``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path

from dsnot_lite.lm import tempfiles
from dsnot_lite.lm.tempfiles import WriteError

__all__ = [
    "WriteError",
    "append_rows",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "read_json",
    "write_json",
    "write_rows",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(path: Path, fh, data: bytes) -> None:
    """The one place bytes reach a file, ``fh`` being the temporary file for ``path`` (tests make it
    fail or stop half-way, as a full disk or a kill does)."""
    fh.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, only_if_changed: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically; with ``only_if_changed`` an identical file is left
    untouched. Returns whether the file was (re)written."""
    path = Path(path)
    if only_if_changed and path.is_file() and path.read_bytes() == data:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfiles.remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=tempfiles.prefix(path), dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            _write(path, fh, data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
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


def append_rows(rows: list[dict], path: str | os.PathLike, columns: tuple[str, ...], unique: str | None = None) -> Path:
    """Append rows to a CSV table (rewritten atomically under a lock; extra keys become columns).
    With ``unique`` (a column), a row whose value there is already in the table is not added again."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 (held below); runs may finish at once
    except OSError as exc:
        raise WriteError(path, exc) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old: list[dict] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                old = list(csv.DictReader(fh))
        if unique is not None:
            present = {r.get(unique) for r in old}
            rows = [r for r in rows if str(r.get(unique)) not in present]
            if not rows:
                return path
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


def check_writable(
    path: str | os.PathLike, what: str, *, folder: bool = False, fix: str = "choose a location you can write to"
) -> None:
    """Fail now, with the fix, if the file ``path`` (with ``folder``: files in the folder ``path``)
    could not be written later: a temporary file is created and removed where they will go, and
    folders made for the test are removed again, so nothing is left behind."""
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; fix: give a file path")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder; fix: give a folder path")
    target = path if folder else path.parent
    made: list[Path] = []
    try:
        missing = [p for p in (target, *target.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            made.append(p)
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=target)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise PermissionError(f"{what} {str(path)!r} cannot be written ({exc.strerror or exc}); fix: {fix}") from None
    finally:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()
