"""Temporary files and folders beside their final path, named after the process that makes them.

Every writer here writes to a temporary path in the final path's folder and renames it when it is
complete (``runs.io``, ``lm.models.save_model``, ``lm.bundled``), so a reader never sees half a
file. A process killed mid-write (``kill -9``, a lost session) cannot remove its temporary file,
so its name carries the writer's process id and host: ``.<name>.<pid>@<host>.<random>``. The
next writer of the same final path removes every such leftover of a process of this host that
no longer runs (``remove_stale``); one still running, or from another host, is left alone.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
from pathlib import Path


class WriteError(OSError):
    """A file or folder could not be written (no space, no permission, ...); the message names it
    and the fix. The writers leave what was there before untouched (they write beside it, then rename)."""

    def __init__(self, path: str | os.PathLike, exc: OSError):
        fix = ("free space on that disk or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
               else "choose a location you can write to")  # fmt: skip
        super().__init__(exc.errno, f"could not write {str(path)!r} ({exc.strerror or exc}); earlier files are "
                                    f"untouched; fix: {fix}")  # fmt: skip

    def __str__(self) -> str:
        return self.strerror


def prefix(final: str | os.PathLike) -> str:
    """The ``prefix`` for ``tempfile.mkstemp``/``mkdtemp`` of a temporary path for ``final``."""
    return f".{Path(final).name}.{os.getpid()}@{socket.gethostname()}."


def _owner(path: Path, final: Path) -> tuple[int, str] | None:
    """(pid, host) of a temporary path made by ``prefix(final)``, else None."""
    rest = path.name[len(f".{final.name}.") :]
    pid, _, host_random = rest.partition("@")
    if not pid.isdigit() or "." not in host_random:
        return None
    return int(pid), host_random.rsplit(".", 1)[0]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders left for ``final`` by dead processes of this host."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.*@*"):
        owner = _owner(path, final)
        if owner is None or owner[1] != socket.gethostname() or owner[0] == os.getpid() or _running(owner[0]):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
