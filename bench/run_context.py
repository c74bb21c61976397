"""What every benchmark result records about its run: the command, commit, time, machine, threads, load."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnot_lite.runs.io import atomic_write_text, write_json  # noqa: E402


def run_context(script: str, argv: list[str] | None) -> dict:
    """``command`` (``python bench/<script> ...``), ``commit``, ``when``, ``machine``, ``threads``,
    ``load`` (1, 5 and 15-minute load averages as text) and ``versions`` (torch, python)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args = argv if argv is not None else sys.argv[1:]
    return {"command": f"python bench/{script} {shlex.join(args)}".strip(), "commit": commit or "unknown",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "threads": torch.get_num_threads(), "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}  # fmt: skip


def write_result(result: dict, folder: Path, stem: str, text: str) -> Path:
    """``<stem>.json`` (the result) and ``<stem>.md`` (its report ``text``) in ``folder``, each written
    atomically (the folder made if missing); returns the report's path."""
    write_json(result, folder / f"{stem}.json")
    return atomic_write_text(folder / f"{stem}.md", text)


def add_heldout_arguments(parser: argparse.ArgumentParser, *, model: str) -> None:
    """The flags the held-out re-fit benches share: model, level, calibration, held-out windows, threads, output."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--sparsity", type=float, default=0.5, help="unstructured level (ignored with --nm)")
    parser.add_argument("--nm", default="2:4", help="N:M pattern, e.g. 2:4; empty for unstructured")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=8, help="held-out WikiText-2 validation windows")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
