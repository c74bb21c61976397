"""Phase times of the pruning pipeline, measured through the one runner, side by side.

    .venv/bin/python bench/pipeline_phases.py                   # SmolLM2-135M, 60%, 16 x 512, 3 rounds
    .venv/bin/python bench/pipeline_phases.py --llama7b 2       # 2 random LLaMA-7B-shaped blocks (cuda if present)
    .venv/bin/python bench/pipeline_phases.py --quick           # a smoke run (tiny settings)

Writes ``bench/results/pipeline_phases[-<label>].json`` and ``.md``. A plain script, not a test.

**SmolLM2-135M** (default): every round runs each configuration once, in turn, through
``runs.runner.run`` (the code ``python -m dsnot_lite run`` executes), and reads the seconds per
phase that the runner's ``PhaseTimer`` records. Configurations: Wanda, Wanda + DSnoT (official),
Wanda + DSnoT with per-layer error records (``--record-errors``), Wanda + the exact refiner (T = 50, and T = 10), full
SparseGPT, Wanda + the least-squares re-fit (``--refit``) with and without the exact refiner. *Pruning phases* =
capture + statistics + prune + refine + refit + block forward (model
loading, data and evaluation excluded; evaluation is cut to one window). Reported: the median of
each phase over rounds, and the ratio of pruning phases to Wanda's taken within each round
(configurations ran minutes apart on the same machine), median and range over rounds.

**LLaMA-7B shapes** (``--llama7b N``): a randomly initialised LLaMA with the 7B shapes (hidden
4096, intermediate 11008, 32 heads) and N decoder blocks, pruned by ``runs.pipeline.prune_model``
on random token ids (``--nsamples`` x ``--seqlen``), fp16 on CUDA, fp32 on the CPU, for each
configuration; seconds per phase and peak memory (CUDA's allocator, or the process's RSS).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # run_context lives beside this script

from run_context import run_context, write_result  # noqa: E402

from dsnot_lite.core.exact import ExactConfig  # noqa: E402
from dsnot_lite.runs.pipeline import PhaseTimer, prune_model  # noqa: E402
from dsnot_lite.runs.runner import ModelSession, run  # noqa: E402
from dsnot_lite.runs.spec import RunSpec  # noqa: E402

PRUNING_PHASES = ("capture", "statistics", "dense_forward", "prune", "refine", "refit", "block_forward")
CONFIGS = {  # label -> RunSpec changes
    "wanda": {},
    "wanda + DSnoT (official)": {"refiner": "dsnot"},
    "wanda + DSnoT (--record-errors)": {"refiner": "dsnot", "record_errors": True},
    "wanda + exact": {"refiner": "exact"},
    "wanda + exact (T = 10)": {"refiner": "exact", "exact": ExactConfig(T=10)},
    "sparsegpt (full)": {"method": "sparsegpt"},
    "wanda + refit": {"refit": True},
    "wanda + refit (tolerance 0.005)": {"refit": True, "refit_tolerance": 0.005},
    "wanda + refit (bf16 products)": {"refit": True, "refit_precision": "bf16"},
    "wanda + exact + refit": {"refiner": "exact", "refit": True},
    "sparsegpt + refit": {"method": "sparsegpt", "refit": True},
    "sparsegpt + refit (dense target; damping 0.1)": {
        "method": "sparsegpt",
        "refit": True,
        "refit_target": "dense",
        "refit_damping": 0.1,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pruning_seconds(seconds: dict) -> float:
    return sum(seconds.get(p, 0.0) for p in PRUNING_PHASES)


def smollm2(args) -> dict:
    """Every configuration once per round through the runner; phase seconds from its timer."""
    base = RunSpec(method="wanda", sparsity=0.6, nsamples=args.nsamples, seqlen=args.seqlen, max_windows=1)
    session, rounds = ModelSession(), []
    configs = {label: CONFIGS[label] for label in args.configs}
    for r in range(args.rounds):
        row = {}
        for label, changes in configs.items():
            result = run(base.replace(**changes), session=session, progress=False)
            row[label] = result["seconds"]
            log(f"round {r}: {label}: pruning phases {pruning_seconds(result['seconds']):.1f} s")
        rounds.append(row)
    summary = {}
    for label in configs:
        phases = {p: statistics.median(rd[label].get(p, 0.0) for rd in rounds) for p in PRUNING_PHASES}
        ratios = [pruning_seconds(rd[label]) / pruning_seconds(rd["wanda"]) for rd in rounds]
        summary[label] = {**phases, "pruning": statistics.median(pruning_seconds(rd[label]) for rd in rounds),
                          "ratio_to_wanda": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}  # fmt: skip
    return {"model": base.model, "setting": f"Wanda 60%, {args.nsamples} x {args.seqlen} C4 calibration", "rounds": rounds,
            "summary": summary}  # fmt: skip


def llama7b(args) -> dict:
    """Random LLaMA-7B-shaped blocks through prune_model, one configuration after the other."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dsnot_lite.lm.models import LoadedModel, find_blocks

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=args.llama7b, vocab_size=32000)  # fmt: skip
    ids = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    summary = {}
    for label in args.configs:
        changes = CONFIGS[label]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        loaded = LoadedModel(model, None, "llama-7b-shaped", "random", find_blocks(model))
        spec = RunSpec(
            model="llama-7b-shaped", method="wanda", sparsity=0.6, device=device, batch_size=args.batch_size, **changes
        )
        timer = PhaseTimer()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        prune_model(loaded, ids, spec, timer=timer, progress=False)
        seconds = dict(timer.seconds, total=time.perf_counter() - start)
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        summary[label] = {**{p: seconds.get(p, 0.0) for p in PRUNING_PHASES}, "pruning": pruning_seconds(seconds),
                          "peak_mb": peak, "per_block_s": pruning_seconds(seconds) / args.llama7b}  # fmt: skip
        log(f"{label}: {summary[label]['pruning']:.1f} s for {args.llama7b} blocks, peak {peak:.0f} MB")
        del model, loaded
    wanda = summary["wanda"]["pruning"]
    for row in summary.values():
        row["ratio_to_wanda"] = row["pruning"] / wanda
    return {"model": f"random LLaMA-7B shapes, {args.llama7b} blocks, {dtype}", "device": device,
            "setting": f"Wanda 60%, {args.nsamples} x {args.seqlen} random tokens", "summary": summary}  # fmt: skip


def markdown(result: dict, command: str) -> str:
    lines = [f"# Pipeline phases: {result['model']}", "",
             f"Generated by `{command}` at commit {result.get('commit', 'unknown')} on {result['when']} "
             f"({result['machine']}, {result['threads']} threads, load "
             f"average {result['load']}). {result['setting']}. Seconds are medians over rounds; the ratio is the "
             "pruning phases of a configuration over Wanda's, taken within each round (median, and the range over rounds).", "",
             "| configuration | " + " | ".join(PRUNING_PHASES) + " | pruning phases | x Wanda |", "|---|" + "---|" * (len(PRUNING_PHASES) + 2)]  # fmt: skip
    for label, row in result["summary"].items():
        ratio = f"{row['ratio_to_wanda']:.2f}" + (
            f" ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})" if "ratio_min" in row else ""
        )
        lines.append(
            f"| {label} | " + " | ".join(f"{row[p]:.1f}" for p in PRUNING_PHASES) + f" | {row['pruning']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--configs`` becomes a list of labels of ``CONFIGS`` (an unknown one is a usage error)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--llama7b", type=int, default=0, metavar="BLOCKS", help="random LLaMA-7B-shaped model with this many blocks"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 4 x 128 (or 1 small block)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, among: {', '.join(CONFIGS)} (wanda first)"
    )
    parser.add_argument("--label", default="", help="suffix of the output file names")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or args.configs[0] != "wanda":
        parser.error(f"--configs must start with wanda and name only {list(CONFIGS)}; got {args.configs}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.nsamples, args.seqlen = 1, 4, 128
    label = "" if not args.llama7b else f"-llama7b-{args.llama7b}"
    label += ("-quick" if args.quick else "") + (f"-{args.label}" if args.label else "")
    result = llama7b(args) if args.llama7b else smollm2(args)
    result.update(run_context("pipeline_phases.py", argv))
    log(f"wrote {write_result(result, Path(args.out), f'pipeline_phases{label}', markdown(result, result['command']))}")


if __name__ == "__main__":
    main()
