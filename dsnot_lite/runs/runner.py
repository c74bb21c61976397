"""One end-to-end run: load a model, prune it block by block, measure WikiText-2 perplexity.

``run_experiment`` is what ``python -m dsnot_lite run`` calls; notebooks can call it directly.
It returns the result dict (the JSON the command writes) and never writes files itself except
the optional pruned model folder (``save_model``, atomic).
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from dsnot_lite import data as data_mod
from dsnot_lite.dsnot import preset_overrides
from dsnot_lite.evaluation import perplexity, tokenize_test_text
from dsnot_lite.models import default_dtype, load_model, save_model
from dsnot_lite.pipeline import PhaseTimer, PruneSpec, prune_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RunConfig:
    """Everything one run needs; the defaults suit a 2-core CPU."""

    model: str = "smollm2-135m"
    spec: PruneSpec = dataclasses.field(default_factory=lambda: PruneSpec("dense"))
    nsamples: int = 32
    seqlen: int = 512  # calibration windows and evaluation windows
    seed: int = 0
    max_windows: int | None = None
    data_dir: str | None = None
    device: str = "cpu"
    dtype: str | None = None  # None: fp32 on CPU, fp16 on CUDA (R11)
    batch_size: int = 8
    eval_batch_size: int = 4  # windows per evaluation forward: 2.6x faster than 1 (bench/results/profile_pipeline.md)
    save_model: str | None = None
    progress: bool = True


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_experiment(cfg: RunConfig) -> dict:
    """Run one configuration end to end and return its result dict."""
    timer = PhaseTimer()
    start = time.perf_counter()
    spec = cfg.spec
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype] if cfg.dtype else default_dtype(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # R11: TF32 off
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats(device)
    data_dir = data_mod.resolve_data_dir(cfg.data_dir)

    with timer.phase("load_model"):
        loaded = load_model(cfg.model, device=device, dtype=dtype)
    calib_windows = 0
    records = []
    if spec.method != "dense":
        with timer.phase("calibration_data"):
            docs = data_mod.c4_documents(data_dir)
            calib = data_mod.calibration_windows(
                loaded.tokenizer, docs, cfg.nsamples, cfg.seqlen, cfg.seed, progress=cfg.progress
            )
            calib_windows = int(calib.shape[0])
        records = prune_model(
            loaded, calib, spec, device=device, batch_size=cfg.batch_size, timer=timer, progress=cfg.progress
        )
    with timer.phase("eval_data"):
        test_ids = tokenize_test_text(loaded.tokenizer, data_mod.wikitext_rows("test", data_dir))
    with timer.phase("eval"):
        ppl = perplexity(
            loaded.model, test_ids, cfg.seqlen, cfg.max_windows, cfg.eval_batch_size, device, progress=cfg.progress
        )
    saved = None
    if cfg.save_model:
        with timer.phase("save_model"):
            loaded.model.to("cpu")
            saved = str(save_model(loaded, cfg.save_model))
    timer.seconds["total"] = time.perf_counter() - start

    result = {
        "model": cfg.model,
        "model_source": loaded.source,
        **outcome_fields(spec, ppl, records),
        "weight_update": spec.method == "sparsegpt" and not spec.dsnot and spec.weight_update,
        "seqlen": cfg.seqlen,
        "max_windows": cfg.max_windows,
        "predicted_tokens": ppl.predicted_tokens,
        "nsamples": calib_windows or None,
        "calib_seqlen": cfg.seqlen if calib_windows else None,
        "seed": cfg.seed,
        "data_dir": str(data_dir) if data_dir else "huggingface-hub",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size,
        "seconds": dict(timer.seconds),
        "peak_memory_mb": peak_memory_mb(),
        "cuda_peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "saved_model": saved,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"), "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return result


def outcome_fields(spec: PruneSpec, ppl, records: list) -> dict:
    """What every run record holds about the pruning and its score (also used by ``explore.ModelLab``)."""
    zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in records)
    numel = sum(r.shape[0] * r.shape[1] for r in records)
    return {
        "method": spec.method,
        "dsnot": spec.dsnot,
        "preset": spec.preset if spec.dsnot else None,
        "dsnot_config": dataclasses.asdict(spec.config()) if spec.dsnot else None,
        "sparsity": spec.target_sparsity,
        "nm": f"{spec.nm[0]}:{spec.nm[1]}" if spec.nm else None,
        "achieved_sparsity": zeros / numel if numel else 0.0,
        "ppl": ppl.ppl,
        "mean_nll": ppl.mean_nll,
        "windows": ppl.windows,
        "total_windows": ppl.total_windows,
        "full_eval": ppl.windows == ppl.total_windows,
        "total_swaps": sum(r.swaps for r in records),
        "total_flips": sum(r.flips for r in records),
        "layers": [r.to_dict() for r in records],
    }


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


def _knob_label(name: str, value) -> str:
    """``max_cycle_time=200`` -> ``T200`` (part of a default output file name)."""
    short = {"max_cycle_time": "T", "update_threshold": "eps", "pow_of_var_regrowing": "pow", "sign_check": "sign-"}
    shown = ("on" if value else "off") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else value
    return f"{short[name]}{shown}" if name in short else f"{name.replace('_', '-')}-{shown}"


def default_output(cfg: RunConfig) -> Path:
    """``results/<model>-<method>[-dsnot-<preset>]-<sparsity or N_M>.json`` (used when no --output)."""
    spec = cfg.spec
    name = Path(cfg.model).name
    parts = [name, spec.method]
    if spec.dsnot:
        parts.append(f"dsnot-{spec.preset}")
        if spec.dsnot_config is not None:  # knobs that differ from the preset name the file too
            parts += [_knob_label(k, v) for k, v in preset_overrides(spec.dsnot_config, spec.preset).items()]
    if not spec.weight_update:
        parts.append("mask-only")
    if spec.method != "dense":
        parts.append(f"{spec.nm[0]}_{spec.nm[1]}" if spec.nm else f"s{round(spec.sparsity * 100)}")
    return Path("results") / ("-".join(parts) + ".json")
