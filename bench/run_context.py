"""What every benchmark result records about its run: the command, commit, time, machine, threads, load."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_context(script: str, argv: list[str] | None) -> dict:
    """``command`` (``python bench/<script> ...``), ``commit``, ``when``, ``machine``, ``threads``,
    ``load`` (1, 5 and 15-minute load averages as text) and ``versions`` (torch, python)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args = argv if argv is not None else sys.argv[1:]
    return {"command": f"python bench/{script} {shlex.join(args)}".strip(), "commit": commit or "unknown",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "threads": torch.get_num_threads(), "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}  # fmt: skip
