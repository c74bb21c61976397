"""A folder of finished runs, one JSON per ``RunSpec``, that sweeps resume from.

``RunCache(folder).run(spec)`` returns the stored result when the folder has one, else computes
it with the runner, writes it (atomically) and appends its row to ``folder/results.csv``. Before
computing, a worker claims the run with a file created exclusively (``O_EXCL``), so two processes
sweeping the same grid never compute the same run twice; the claim of a process that died is
taken over. A session that ends mid-sweep loses only the run in progress: its JSON is written
before its row, and a stored run whose row is missing from ``results.csv`` (a worker killed
between the two) gets it the next time the run is asked for, so the table and the stored runs
agree (one row per run: rows are added only for keys not yet in the table).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dsnot_lite.runs import schema
from dsnot_lite.runs.io import append_rows, read_json
from dsnot_lite.runs.runner import ModelSession, run
from dsnot_lite.runs.spec import RunSpec


class RunCache:
    """Finished runs in ``folder``, keyed by ``RunSpec.key``."""

    def __init__(self, folder: str | Path, session: ModelSession | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.session = session or ModelSession()
        self.progress = progress
        self.computed = 0  # runs this object really computed
        self._keys: set[str] = set()  # keys known to have a row in the table

    def path(self, spec: RunSpec) -> Path:
        """``<run name>-<key>.json``; a stored file is found by its key alone, whatever its name."""
        key = spec.key()[:12]
        stored = sorted(self.folder.glob(f"*-{key}.json")) if self.folder.is_dir() else []
        return stored[0] if stored else self.folder / f"{spec.name()}-{key}.json"

    @property
    def table(self) -> Path:
        return self.folder / "results.csv"

    def get(self, spec: RunSpec) -> dict | None:
        path = self.path(spec)
        return read_json(path) if path.is_file() else None

    def run(self, spec: RunSpec) -> dict | None:
        """The stored or newly computed result; None when another live worker holds the claim."""
        stored = self.get(spec)
        if stored is not None:
            return self._recorded(spec, stored)
        if not self._claim(spec):
            return None
        try:
            stored = self.get(spec)  # finished by another worker between the check and the claim
            if stored is not None:
                return self._recorded(spec, stored)
            result = run(spec, session=self.session, progress=self.progress)
            path = schema.save_result(result, self.path(spec), None)
            self.computed += 1
            return self._recorded(spec, read_json(path))  # as stored: the same object a later call returns
        finally:
            self._claim_path(spec).unlink(missing_ok=True)

    def _recorded(self, spec: RunSpec, stored: dict) -> dict:
        """``stored``, with its row in the table (added when a killed worker left it out) and a
        dead worker's claim on it removed."""
        if stored["key"] not in self._keys:
            self._keys = _table_keys(self.table)  # another worker may have added it
            if stored["key"] not in self._keys:
                append_rows([schema.table_row(stored)], self.table, schema.TABLE_COLUMNS, unique="key")
                self._keys.add(stored["key"])
        claim = self._claim_path(spec)
        if claim.is_file() and not _alive(claim):
            claim.unlink(missing_ok=True)
        return stored

    def _claim_path(self, spec: RunSpec) -> Path:
        return self.path(spec).with_suffix(".claim")

    def _claim(self, spec: RunSpec) -> bool:
        path = self._claim_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _alive(path):
                    return False
                path.unlink(missing_ok=True)  # a dead worker's claim
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, fh)
            return True
        return False


def _table_keys(table: Path) -> set[str]:
    if not table.is_file():
        return set()
    import csv

    with open(table, newline="", encoding="utf-8") as fh:
        return {row.get("key", "") for row in csv.DictReader(fh)}


STALE_CLAIM_S = 24 * 3600  # no run takes a day here: an older claim is left over from a crash


def _alive(claim: Path) -> bool:
    """Whether the process that wrote ``claim`` still runs (a claim from another host counts as alive
    for ``STALE_CLAIM_S``)."""
    import time

    try:
        owner = json.loads(claim.read_text())
        age = time.time() - claim.stat().st_mtime
    except (OSError, ValueError):
        return True  # being written right now
    if age > STALE_CLAIM_S:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
