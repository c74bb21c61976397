"""The result of a run: one dict (written as JSON), one flat row of the results table.

A record holds the run's settings (``RunSpec.result_fields``, the same names as on the command
line), what pruning did (sparsity reached, swaps, flips, per-layer records), its scores
(perplexity, per-window NLL, zero-shot metrics) and how it ran (seconds per phase, memory,
versions). ``TABLE_COLUMNS`` is the results table; the study and the figures read that table.
"""

from __future__ import annotations

import platform
import resource
from datetime import datetime, timezone
from pathlib import Path

import torch

from dsnot_lite.runs.spec import RunSpec

TABLE_COLUMNS = (
    "name", "model", "method", "refiner", "preset", "weight_update", "refit", "sparsity", "nm", "ppl", "eval_split",
    "windows", "total_windows", "max_windows", "nsamples", "seqlen", "seed", "blocks", "attn", "achieved_sparsity",
    "total_swaps", "total_flips", "dsnot", "exact", "zero_shot", "seconds_total", "seconds_prune", "seconds_refine",
    "seconds_refit", "peak_memory_mb", "device", "dtype", "key", "output", "finished_at",
)  # fmt: skip


def reset_peak_memory() -> str:
    """Start a new peak of resident memory (Linux: ``/proc/self/clear_refs``); returns the scope of
    ``peak_memory_mb`` from now on: ``"run"``, or ``"process"`` where the peak cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "run" if _status_hwm_kib() is not None else "process"
    except OSError:
        return "process"


def peak_memory_mb() -> float:
    """Peak resident memory since ``reset_peak_memory`` (``VmHWM``), else of the whole process so far
    (``ru_maxrss``); both are in KiB."""
    hwm = _status_hwm_kib()
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _status_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def result_record(
    spec: RunSpec, loaded, ppl, records: list, seconds: dict, *, data_dir, calib_windows: int, total_blocks: int,
    zero_shot: dict | None = None, memory_scope: str = "process",
) -> dict:  # fmt: skip
    """The run's result dict."""
    zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in records)
    numel = sum(r.shape[0] * r.shape[1] for r in records)
    device = torch.device(spec.device)
    dtype = next(loaded.model.parameters()).dtype
    return {
        "name": spec.name(),
        "label": spec.label(),
        "key": spec.key(),
        **spec.result_fields(),
        "model_source": loaded.source,
        "achieved_sparsity": zeros / numel if numel else 0.0,
        "ppl": ppl.ppl,
        "mean_nll": ppl.mean_nll,
        "windows": ppl.windows,
        "total_windows": ppl.total_windows,
        "full_eval": ppl.windows == ppl.total_windows,
        "predicted_tokens": ppl.predicted_tokens,
        "window_nll": ppl.window_nll,
        "zero_shot": zero_shot,
        "pruned_blocks": min(spec.blocks or total_blocks, total_blocks) if records else 0,
        "total_blocks": total_blocks,
        "calib_windows": calib_windows or None,
        "total_swaps": sum(r.swaps for r in records),
        "total_flips": sum(r.flips for r in records),
        "layers": [r.to_dict() for r in records],
        "data_dir": str(data_dir) if data_dir else "huggingface-hub",
        "dtype": str(dtype).replace("torch.", ""),
        "eval_batch_size": ppl.batch_size,
        "seconds": seconds,
        "peak_memory_mb": peak_memory_mb(),
        "peak_memory_scope": memory_scope,  # "run": since this run started; "process": since the process started
        "cuda_peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"), "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def table_row(result: dict) -> dict:
    """The flat results-table row of a result dict (nested settings as compact JSON)."""
    import json

    row = {k: result.get(k) for k in TABLE_COLUMNS}
    for nested in ("dsnot", "exact", "zero_shot"):
        if row[nested] is not None:
            row[nested] = json.dumps(row[nested], sort_keys=True, separators=(",", ":"))
    seconds = result.get("seconds", {})
    row["seconds_total"], row["seconds_prune"], row["seconds_refine"], row["seconds_refit"] = (
        seconds.get("total"), seconds.get("prune"), seconds.get("refine"), seconds.get("refit"),
    )  # fmt: skip
    return row


def read_table(path: str | Path):
    """A results table as a DataFrame, nested settings decoded back into dicts."""
    import json

    import pandas as pd

    frame = pd.read_csv(path, dtype={"nm": "string", "refiner": "string", "preset": "string"})
    for nested in ("dsnot", "exact", "zero_shot"):
        if nested in frame:
            frame[nested] = [json.loads(v) if isinstance(v, str) and v else None for v in frame[nested]]
    for text in ("nm", "refiner", "preset"):
        if text in frame:
            frame[text] = frame[text].astype(object).where(frame[text].notna(), None)
    return frame


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


def save_result(result: dict, json_path: str | Path, table_path: str | Path | None = None) -> Path:
    """Write the run's JSON (atomically) and append its row to the results table."""
    from dsnot_lite.runs import io

    result["output"] = str(json_path)
    io.write_json(result, json_path)
    if table_path is not None:
        io.append_rows([table_row(result)], table_path, TABLE_COLUMNS)
    return Path(json_path)
