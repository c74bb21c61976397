"""Nothing is lost to a fault: a run or a study worker killed (``kill -9``) while it prunes or writes
leaves no partial JSON, CSV or model folder where a reader looks, and the rerun works (it also
removes the dead writer's temporary files); a killed study worker loses no run and repeats none,
and its ``results.csv`` agrees with the stored runs; two workers on one study compute every run
once; a write that fails for lack of space ends in one line and leaves earlier results intact.

The processes are ``tests/_killable.py``: the real command line or study worker, stopped at a
chosen point (it creates a marker file there) so the kill lands where the test says.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _killable import sweep, sweep_specs
from _paths import ROOT
from _tinydir import tiny_model_dir

from dsnot_lite.cli import main

KILLABLE = ROOT / "tests" / "_killable.py"
LAYERS_PER_RUN = 14  # the tiny LLaMA: 2 blocks of 7 linear layers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def _run_args(tiny: Path, out: Path, save: bool) -> list[str]:
    args = ["run", "--model", str(tiny), "--method", "wanda", "--dsnot", "--sparsity", "0.5", "--nsamples", "2", "--seqlen",
            "32", "--max-windows", "1", "--batch-size", "2", "--no-progress", "--output", str(out / "r.json"),
            "--results-table", str(out / "t.csv")]  # fmt: skip
    return [*args, "--save-model", str(out / "saved")] if save else args


def _start(point: str, marker: Path, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, str(KILLABLE), point, str(marker), *args], cwd=ROOT, stdout=fh, stderr=fh)


def _kill_at_marker(proc: subprocess.Popen, marker: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the process ended before its kill point: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the process never reached its kill point"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _rows(table: Path) -> list[dict]:
    with open(table, newline="") as fh:
        return list(csv.DictReader(fh))


# Where the kill lands, whether the run saves its model, and what may be left (a temporary
# file or folder is hidden, named after the dead process, and never read as a result).
KILLS = {
    "prune:3": (True, []),
    "model": (True, [".saved.*", ".saved.*/*"]),
    "json": (False, [".r.json.*"]),
    "csv": (False, [".t.csv.*", "r.json", "t.csv.lock"]),  # the lock file is empty and stays (flock)
}


@pytest.mark.parametrize("point", list(KILLS))
def test_a_killed_run_leaves_no_partial_output_and_the_rerun_works(point, tiny, tmp_path, capsys):
    save, allowed = KILLS[point]
    out, marker, log = tmp_path / "out", tmp_path / "marker", tmp_path / "log.txt"
    _kill_at_marker(_start(point, marker, *_run_args(tiny, out, save), log=log), marker, log)
    left = _names(out)
    assert all(any(Path(name).match(pattern) for pattern in allowed) for name in left), left
    if "r.json" in left:  # written whole before the table: a complete result
        assert json.loads((out / "r.json").read_text())["ppl"] > 0
    assert main(_run_args(tiny, out, save)) == 0, capsys.readouterr().err
    assert json.loads((out / "r.json").read_text())["ppl"] > 0 and len(_rows(out / "t.csv")) == 1
    assert not [name for name in _names(out) if name.startswith(".") and not name.endswith(".lock")]  # temps removed
    if save:
        assert (out / "saved" / "model.safetensors").is_file() and (out / "saved" / "tokenizer.json").is_file()


def _check_sweep(folder: Path, model: str, unlogged: frozenset[str] = frozenset()) -> None:
    """Every run stored once, computed once, with exactly one row each; no claim or temp file left.
    ``unlogged``: runs a killed worker stored before it could log them (computed, not in a done file)."""
    keys = {spec.key() for spec in sweep_specs(model)}
    stored = {json.loads(p.read_text())["key"] for p in folder.glob("*.json")}
    done = [key for log in folder.glob("done-*.txt") for key in log.read_text().split()]
    table = [row["key"] for row in _rows(folder / "results.csv")]
    assert stored == keys and sorted(done + sorted(unlogged)) == sorted(keys) and sorted(table) == sorted(keys)
    assert not list(folder.glob("*.claim")) and not [p for p in folder.glob(".*") if not p.name.endswith(".lock")]


@pytest.mark.parametrize("point", [f"prune:{2 * LAYERS_PER_RUN + 3}", "row"])
def test_a_killed_study_worker_loses_no_run_and_repeats_none(point, tiny, tmp_path):
    """Killed in its third run, or between its first run's JSON and its row; then restarted."""
    folder, marker, log = tmp_path / "runs", tmp_path / "marker", tmp_path / "log.txt"
    _kill_at_marker(_start(point, marker, "sweep", str(folder), str(tiny), log=log), marker, log)
    killed = [key for p in folder.glob("done-*.txt") for key in p.read_text().split()]
    assert len(killed) == (2 if point.startswith("prune") else 0) and len(list(folder.glob("*.json"))) == max(len(killed), 1)
    stored = {json.loads(p.read_text())["key"] for p in folder.glob("*.json")}
    sweep(str(folder), str(tiny))  # the restart, in this process: it must not compute the stored runs again
    _check_sweep(folder, str(tiny), unlogged=frozenset(stored - set(killed)))


def test_two_workers_on_one_study_compute_every_run_once(tiny, tmp_path):
    folder = tmp_path / "runs"
    procs = [_start("none", tmp_path / "never", "sweep", str(folder), str(tiny), log=tmp_path / f"log{i}.txt") for i in (0, 1)]
    assert [proc.wait(timeout=600) for proc in procs] == [0, 0], [(tmp_path / f"log{i}.txt").read_text()[-2000:] for i in (0, 1)]
    _check_sweep(folder, str(tiny))


def _full_disk(suffix: str):
    """A writer that fails half-way through files ending in ``suffix``, as a full disk does."""
    import dsnot_lite.runs.io as io

    real = io._write

    def write(path, fh, data):
        if path.suffix == suffix:
            fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, fh, data)

    return write


@pytest.mark.parametrize("where", [".json", ".csv", "model folder"])
def test_a_full_disk_gives_one_line_and_keeps_earlier_results(where, tiny, tmp_path, monkeypatch, capsys):
    import dsnot_lite.runs.io as io

    out = tmp_path / "out"
    assert main(_run_args(tiny, out, save=False)) == 0
    capsys.readouterr()
    before = {name: (out / name).read_bytes() for name in ("r.json", "t.csv")}
    if where == "model folder":
        import transformers.modeling_utils as modeling

        def no_space(state, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(modeling, "safe_save_file", no_space)
    else:
        monkeypatch.setattr(io, "_write", _full_disk(where))
    args = _run_args(tiny, out, save=where == "model folder")
    args[args.index("--output") + 1] = str(out / "r2.json")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "fix: free space" in err[0], err
    assert {name: (out / name).read_bytes() for name in before} == before  # earlier results intact
    assert not [name for name in _names(out) if name.startswith(".") and not name.endswith(".lock")]  # no temp left
    assert (out / "r2.json").exists() == (where == ".csv") and not (out / "saved").exists()
