"""Where the exact refiner's time goes, on every layer of a real run, and whether its masks change.

    .venv/bin/python bench/exact_profile.py --capture            # once: the layers of a real run (see below)
    .venv/bin/python bench/exact_profile.py --threads 1 --label before

``--capture`` runs SmolLM2-135M, Wanda 60% + the exact refiner (16 x 512 C4 calibration, T = 50,
shortlist 8) through ``runs.pipeline.prune_model`` and stores, for each of its 210 linear layers,
the weight, Gram matrix and Wanda mask the refiner received and the mask and swaps it returned
(``results/bench/exact-layers/``, about 1 GB, not committed). Every block's inputs come from the
blocks pruned before it by that refiner, so a refiner that returns the stored mask on every stored
layer gives the whole model's masks.

The profile then refines every stored layer once with the code of the working tree (wall-clock
seconds by layer type), compares each mask and swap count with the stored ones, and refines the
layers of every fifth block once more under ``torch.profiler`` (operator self-times). It writes
``bench/results/exact_profile[-<label>].{json,md}``. A plain script, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # run_context lives beside this script

from run_context import run_context, write_result  # noqa: E402

from dsnot_lite.core import exact_kernel  # noqa: E402
from dsnot_lite.core.exact import ExactConfig, exact_refine  # noqa: E402

LAYERS = ROOT / "results" / "bench" / "exact-layers"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def capture(folder: Path) -> None:
    """Run Wanda 60% + exact on SmolLM2-135M and store every refiner call's inputs and outputs."""
    from dsnot_lite.lm import data
    from dsnot_lite.runs import pipeline
    from dsnot_lite.runs.runner import ModelSession
    from dsnot_lite.runs.spec import RunSpec

    spec = RunSpec(method="wanda", sparsity=0.6, refiner="exact", nsamples=16, seqlen=512)
    folder.mkdir(parents=True, exist_ok=True)
    original, count = pipeline.exact_refine, [0]

    def recording(weight, gram, mask, config, nm):
        result = original(weight, gram, mask, config, nm)
        torch.save({"weight": weight.clone(), "gram": gram.clone(), "mask": mask.clone(), "nm": nm, "config": config,
                    "refined": result.mask.clone(), "swaps": result.swaps.clone()}, folder / f"{count[0]:03d}.pt")  # fmt: skip
        count[0] += 1
        return result

    session = ModelSession()
    loaded = session.model_for(spec, pipeline.PhaseTimer())
    calib = session.calibration(spec, data.resolve_data_dir(None))
    pipeline.exact_refine = recording
    try:
        pipeline.prune_model(loaded, calib, spec)
    finally:
        pipeline.exact_refine = original
    log(f"stored {count[0]} layers in {folder}")


def layer_type(index: int) -> str:
    return ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")[index % 7]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def refine(layer: dict):
    return exact_refine(layer["weight"], layer["gram"], layer["mask"], layer["config"], layer["nm"])


def profile(folder: Path, top: int, every: int) -> dict:
    """Every stored layer timed (no profiler) and its mask compared; the layers of every ``every``-th
    block once more under ``torch.profiler`` for the operator table (all 210 would not fit in memory)."""
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise SystemExit(f"error: no stored layers in {folder}; fix: run with --capture first")
    seconds, cpu, mismatched, flips_differ, swaps_differ = defaultdict(float), defaultdict(float), [], 0, 0
    kernel_cpu = [0.0]  # CPU seconds inside the compiled kernel: no torch operator, so not in the table below
    original = exact_kernel.refine_rows_cpu

    def timed_kernel(*args):
        start_cpu = time.process_time()
        try:
            return original(*args)
        finally:
            kernel_cpu[0] += time.process_time() - start_cpu

    exact_kernel.refine_rows_cpu = timed_kernel
    try:
        for i, path in enumerate(files):
            layer = load(path)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = refine(layer)
            seconds[layer_type(i)] += time.perf_counter() - start
            cpu[layer_type(i)] += time.process_time() - start_cpu
            if not torch.equal(result.mask, layer["refined"]):
                mismatched.append(path.stem)
                flips_differ += int((result.mask != layer["refined"]).sum())
            swaps_differ += int((result.swaps != layer["swaps"]).sum())
    finally:
        exact_kernel.refine_rows_cpu = original
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sample = [path for i, path in enumerate(files) if (i // 7) % every == 0]
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for path in sample:
            refine(load(path))
    profiled_wall = time.perf_counter() - start
    events = prof.key_averages()
    ops = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count}
           for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]]  # fmt: skip
    return {"layers": len(files), "seconds_by_type": dict(seconds), "seconds": sum(seconds.values()),
            "cpu_seconds_by_type": dict(cpu), "cpu_seconds": sum(cpu.values()), "kernel_cpu_seconds": kernel_cpu[0],
            "profiled_layers": len(sample), "profiled_wall_s": profiled_wall,
            "profiled_self_s": sum(e.self_cpu_time_total for e in events) / 1e6, "top_ops": ops, "masks_differ": mismatched,
            "mask_entries_differ": flips_differ, "rows_with_other_swap_count": swaps_differ}  # fmt: skip


def markdown(result: dict, command: str) -> str:
    lines = [f"# Exact refiner profile ({result['layers']} layers of SmolLM2-135M, Wanda 60%, T = 50, shortlist 8)", "",
             f"Generated by `{command}` at commit {result['commit']} on {result['when']} ({result['machine']}, "
             f"{result['threads']} threads, load average {result['load']}).", "",
             f"Refine seconds, all layers, no profiler: **{result['cpu_seconds']:.1f} s of CPU time** (by layer type: "
             + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_seconds_by_type"].items())
             + f"; in the compiled kernel, which no torch operator below covers: {result.get('kernel_cpu_seconds', 0.0):.1f})"
             + f", {result['seconds']:.1f} s of wall-clock time (other jobs shared the 2 cores: the CPU time is the "
             "measure to compare).", "",
             f"Masks against the stored run's (the refiner as it was at capture): {len(result['masks_differ'])} of "
             f"{result['layers']} layers differ ({result['mask_entries_differ']} entries); rows with another swap count: "
             f"{result['rows_with_other_swap_count']}.", "",
             f"Operators by self time under `torch.profiler`, on the {result['profiled_layers']} layers of every "
             f"{result['every']}th block (loading included in the wall time {result['profiled_wall_s']:.1f} s; operator "
             f"total {result['profiled_self_s']:.1f} s, profiler overhead included):", "",
             "| operator | self s | share | calls |", "|---|---|---|---|"]  # fmt: skip
    for op in result["top_ops"]:
        share = op["self_s"] / result["profiled_self_s"] if result["profiled_self_s"] else 0.0
        lines.append(f"| `{op['op']}` | {op['self_s']:.2f} | {share:.0%} | {op['calls']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", action="store_true", help="store the layers of a real run first")
    parser.add_argument("--layers", default=str(LAYERS), help="folder of stored layers")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--every", type=int, default=5, help="profile the layers of every N-th block")
    parser.add_argument("--label", default="", help="suffix of the output file names")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.capture:
        capture(Path(args.layers))
        return
    result = profile(Path(args.layers), args.top, args.every)
    result["every"] = args.every
    result.update(run_context("exact_profile.py", argv), config=str(ExactConfig()))
    name = "exact_profile" + (f"-{args.label}" if args.label else "")
    report = write_result(result, Path(args.out), name, markdown(result, result["command"]))
    log(f"wrote {report}: {result['seconds']:.1f} s, {len(result['masks_differ'])} masks differ")


if __name__ == "__main__":
    main()
