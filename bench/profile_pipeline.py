"""Whole-pipeline profile of one SmolLM2-135M run: time and peak memory per phase, then micro-measurements.

    .venv/bin/python bench/profile_pipeline.py                 # the `make demo` configuration
    .venv/bin/python bench/profile_pipeline.py --no-micro      # the profile only

Writes ``bench/results/profile_pipeline.json`` and ``bench/results/profile_pipeline.md``.

The run is the one ``make demo`` does (Wanda 60% + DSnoT official, 16 x 256 C4 calibration windows,
the first 16 WikiText-2 test windows of 256 tokens, fp32 on the CPU), driven through the pipeline's
public functions in the order ``dsnot_lite.pipeline.prune_model`` and ``experiment.run_experiment``
call them, with every phase wrapped in a wall clock and a peak-RSS sampler (``bench/memtrack.py``):

* ``convert``: the bundled GGUF -> safetensors conversion (``models.convert_bundled``) into a
  temporary cache, what a first run on a fresh machine pays once (``--no-convert`` skips it);
* ``load_model`` (``models.load_model`` from the converted folder), ``calibration_data``
  (C4 sample + tokenized windows), ``capture`` (block 0 inputs), then per block ``statistics``
  (``collect_stats``, with the per-linear Hessians that ``prune_model(record_errors=True)``, the
  default, accumulates), ``prune`` (``prune_layer``: Wanda mask + reconstruction-error metrics +
  weight write), ``dsnot`` (inside ``prune_layer``, its own clock), ``re-forward`` (``run_block``);
* ``eval_data`` (WikiText-2 test tokenization) and ``eval`` (``evaluation.perplexity``).

Micro-measurements (``--micro``, default on) then time, on the same model and calibration, the
alternatives for the phases that dominate, so a recommendation rests on numbers from this machine:
statistics with vs without Hessians, the cost split inside ``prune_layer`` (mask vs error metrics),
evaluation batch size, and torch threads.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memtrack import PeakRSS  # noqa: E402

from dsnot_lite import data as data_mod  # noqa: E402
from dsnot_lite.core.dsnot import row_output_error  # noqa: E402
from dsnot_lite.core.pruners import initial_mask  # noqa: E402
from dsnot_lite.lm.calibration import capture_block_inputs, collect_stats, run_block  # noqa: E402
from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text  # noqa: E402
from dsnot_lite.lm.models import convert_bundled, find_linears, load_model  # noqa: E402
from dsnot_lite.runs.io import atomic_write_text  # noqa: E402
from dsnot_lite.runs.pipeline import PruneSpec, prune_layer  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


class Phases:
    """Seconds and peak RSS per phase name, summed (time) / maxed (memory) over repeats."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.delta_mb: dict[str, float] = defaultdict(float)
        self.order: list[str] = []

    def run(self, name: str, fn):
        with PeakRSS() as m:
            out = fn()
        self.add(name, m.seconds, m.peak_mb, m.delta_mb)
        return out

    def add(self, name, seconds, peak, delta) -> None:
        if name not in self.order:
            self.order.append(name)
        self.seconds[name] += seconds
        self.peak_mb[name] = max(self.peak_mb[name], peak)
        self.delta_mb[name] = max(self.delta_mb[name], delta)


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    ts = []
    for i in range(warmup + repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        if i >= warmup:
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def profile(args) -> tuple[Phases, dict]:
    ph = Phases()
    extra: dict = {}
    if args.convert:
        with tempfile.TemporaryDirectory(prefix="dsnot-profile-cache-") as tmp:
            ph.run("convert", lambda: convert_bundled(args.model, cache=Path(tmp)))
    loaded = ph.run("load_model", lambda: load_model(args.model, device="cpu", dtype=torch.float32))
    model, blocks = loaded.model, loaded.blocks
    data_dir = data_mod.resolve_data_dir(None)
    calib = ph.run(
        "calibration_data",
        lambda: data_mod.calibration_windows(
            loaded.tokenizer, data_mod.c4_documents(data_dir), args.nsamples, args.seqlen, 0, progress=False
        ),
    )
    spec = PruneSpec("wanda", sparsity=args.sparsity, dsnot=True, preset="official")
    inputs = ph.run("capture", lambda: capture_block_inputs(model, blocks, calib, args.batch_size, "cpu"))
    swaps = 0
    with torch.no_grad():
        for index, block in enumerate(blocks):
            linears = find_linears(block)
            stats = ph.run("statistics", lambda: collect_stats(block, linears, inputs, hessian=args.record_errors))
            with PeakRSS() as m:
                records = [
                    prune_layer(layer, f"{loaded.blocks_path}.{index}.{name}", stats[name], spec)
                    for name, layer in linears.items()
                ]
            dsnot_s = sum(r.dsnot_seconds for r in records)
            prune_s = sum(r.seconds for r in records)
            swaps += sum(r.swaps for r in records)
            # prune_layer's own clocks split the wall time; memory is shared by both.
            ph.add("prune", prune_s, m.peak_mb, m.delta_mb)
            ph.add("dsnot", dsnot_s, m.peak_mb, m.delta_mb)
            del stats
            inputs = ph.run("re-forward", lambda: run_block(block, inputs))
    extra["swaps"] = swaps
    test_ids = ph.run("eval_data", lambda: tokenize_test_text(loaded.tokenizer, data_mod.wikitext_rows("test", data_dir)))
    ppl = ph.run(
        "eval",
        lambda: perplexity(model, test_ids, args.seqlen, args.max_windows, 1, "cpu", progress=False),
    )
    extra.update(loaded=loaded, calib=calib, test_ids=test_ids, ppl=ppl)
    return ph, extra


def micro(args, extra: dict) -> dict:
    """Alternatives for the heavy phases, timed side by side on this machine (medians)."""
    loaded, calib, test_ids = extra["loaded"], extra["calib"], extra["test_ids"]
    model, blocks = loaded.model, loaded.blocks
    out: dict = {}
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks, calib, args.batch_size, "cpu")
        block = blocks[0]
        linears = find_linears(block)
        # 1. statistics with / without the per-linear Hessians (record_errors)
        out["statistics_block0_with_hessians_s"] = median_time(lambda: collect_stats(block, linears, inputs, hessian=True))
        out["statistics_block0_without_hessians_s"] = median_time(lambda: collect_stats(block, linears, inputs, hessian=False))
        out["plain_forward_block0_s"] = median_time(lambda: run_block(block, inputs))
        # 2. inside prune_layer: the mask vs the two reconstruction-error metrics (each 2 row_output_error)
        stats = collect_stats(block, linears, inputs, hessian=True)
        mask_s = err_s = 0.0
        for name, layer in linears.items():
            w = layer.weight.data
            mask_s += median_time(lambda: initial_mask(w, stats[name], "wanda", args.sparsity))
            everything = torch.ones_like(w, dtype=torch.bool)
            h = stats[name].hessian
            err_s += 2 * median_time(lambda: (row_output_error(w, everything, h), row_output_error(w, everything, h)))
        out["block0_wanda_masks_s"] = mask_s
        out["block0_error_metrics_s"] = err_s
        # 3. evaluation: batch size 1 (the default) vs 4, on the same windows
        n = min(8, args.max_windows or 8)
        for bs in (1, 4):
            out[f"eval_{n}_windows_batch{bs}_s"] = median_time(
                lambda: perplexity(model, test_ids, args.seqlen, n, bs, "cpu", progress=False), repeats=2
            )
        # 4. threads: the block forward with 1 and 2 threads
        before = torch.get_num_threads()
        for threads in sorted({1, before}):
            torch.set_num_threads(threads)
            out[f"plain_forward_block0_threads{threads}_s"] = median_time(lambda: run_block(block, inputs))
            out[f"eval_{n}_windows_batch1_threads{threads}_s"] = median_time(
                lambda: perplexity(model, test_ids, args.seqlen, n, 1, "cpu", progress=False), repeats=2
            )
        torch.set_num_threads(before)
    return out


def markdown(result: dict) -> str:
    rows = result["phases"]
    total = sum(r["seconds"] for r in rows)
    lines = [
        "# Pipeline profile: one SmolLM2-135M run (generated)",
        "",
        f"Generated by `{result['command']}` ({result['finished']}); torch {result['torch']}, {result['threads']} threads, "
        f"load average {result['load_start']} -> {result['load_end']}. Configuration: {result['config']}. "
        f"Perplexity {result['ppl']:.2f} (first {result['eval_windows']} windows).",
        "",
        "| phase | seconds | share | peak RSS MiB | peak above phase start MiB |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        lines.append(
            f"| {r['phase']} | {r['seconds']:.1f} | {r['seconds'] / total:.0%} | {r['peak_mb']:.0f} | {r['delta_mb']:.0f} |"
        )
    lines += ["", f"Total of the phases: {total:.1f} s; process peak RSS (ru_maxrss): {result['ru_maxrss_mb']:.0f} MiB.", ""]
    if result.get("full_eval_estimate_s"):
        lines += [f"The full WikiText-2 test set has {result['total_windows']} windows at this seqlen: about "
                  f"{result['full_eval_estimate_s'] / 60:.0f} min of evaluation at the measured rate.", ""]  # fmt: skip
    if result.get("micro"):
        lines += ["## Micro-measurements (medians, same machine, same model)", "", "| measurement | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["micro"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, default=0.6)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--max-windows", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-record-errors", dest="record_errors", action="store_false",
                   help="statistics without Hessians (prune_model(record_errors=False))")  # fmt: skip
    p.add_argument("--no-convert", dest="convert", action="store_false", help="skip timing the GGUF conversion")
    p.add_argument("--no-micro", dest="micro", action="store_false")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    ph, extra = profile(args)
    for name in ph.order:
        log(f"{name:<18} {ph.seconds[name]:8.1f}s  peak {ph.peak_mb[name]:6.0f} MiB")
    result = {
        "command": " ".join(["python", *[a if i else "bench/profile_pipeline.py" for i, a in enumerate(sys.argv)]]),
        "finished": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "load_start": load_start,
        "config": f"{args.model}, Wanda {args.sparsity:.0%} + DSnoT official, {args.nsamples} x {args.seqlen} calibration, "
                  f"batch {args.batch_size}, record_errors={args.record_errors}, eval first {args.max_windows} windows of {args.seqlen}",
        "phases": [{"phase": n, "seconds": ph.seconds[n], "peak_mb": ph.peak_mb[n], "delta_mb": ph.delta_mb[n]} for n in ph.order],
        "ppl": extra["ppl"].ppl, "eval_windows": extra["ppl"].windows, "total_windows": extra["ppl"].total_windows,
        "full_eval_estimate_s": ph.seconds["eval"] / extra["ppl"].windows * extra["ppl"].total_windows,
        "swaps": extra["swaps"], "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    if args.micro:
        log("micro-measurements ...")
        result["micro"] = micro(args, extra)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_text(args.out_dir / "profile_pipeline.json", json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    atomic_write_text(args.out_dir / "profile_pipeline.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
