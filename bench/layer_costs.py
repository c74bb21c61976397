"""Per-layer cost of the pruners and of DSnoT on top of them, side by side, on LLaMA layer shapes.

    .venv/bin/python bench/layer_costs.py                       # LLaMA-7B shapes + sweeps + oracle
    .venv/bin/python bench/layer_costs.py --shapes 7b,13b,70b   # also the 13B and 70B shapes
    .venv/bin/python bench/layer_costs.py --quick               # small shapes, a smoke run (~1 min)

Writes ``bench/results/layer_costs.csv`` (one row per measurement), ``bench/results/layer_costs.json``
(the same rows plus the environment, the load average and the summary ratios) and
``bench/results/bench_layer_costs.png``. A plain script, not a test: the numbers depend on the machine.

What is timed (CPU, fp32, ``torch.get_num_threads()`` threads, forward passes excluded as in the
paper's Table 3): the mask of magnitude (per row), Wanda and the SparseGPT saliency (the
reference's ``initial_method=sparsegpt``), full OBS SparseGPT (``sparsegpt_prune``), DSnoT
(``official`` preset, T=50) on the magnitude, Wanda and SparseGPT-saliency masks, DSnoT with
``trace=True``, and the exact refiner (T=50, shortlist 8) on the Wanda mask (where the Gram matrix
is built, C_in up to ``--sparsegpt-max-cin``). Every repeat runs all methods one after the other (interleaved), after warm-up
repeats; the table reports the median, min and max, and ratios of medians to Wanda measured in the
same run. Full SparseGPT is slow on 2 cores, so it is run once per shape (no warm-up), and beyond
``--sparsegpt-max-cin`` input channels or ``--sparsegpt-max-numel`` weights it is *extrapolated*
(labelled so in every output) from a sub-problem: ``rows`` rows and ``cols`` columns measured, then
inverse-Hessian time x (C_in/cols)^3 + OBS sweep time x (C_out/rows) x (C_in/cols)^2. The script
checks that rule on the largest measured shape and reports the estimate next to the measurement.

Inputs are synthetic but shaped like LLM activations: weights N(0, 0.02) rounded through fp16,
calibration tokens Gaussian with per-channel means, per-channel scales and 0.5% outlier channels
scaled 20-50x (the recipe of ../shared/reference/official-dsnot/README.md), ``--nsamples`` samples of
``--seqlen`` tokens fed to ``ChannelStats`` (the official statistics scale E[A] by seqlen, R1, which
decides how many rows stop on epsilon; the stop counts are reported).

Sweeps (on ``--sweep-shape``, Wanda mask): DSnoT time vs T (0 = list building only), vs C_in, vs
C_out, and vs the number of rows that start active (epsilon set to quantiles of |E[Delta_r]|).
Oracle: the per-row loop of tests/oracle.py against ``dsnot`` on ``--oracle-shape``, one oracle run
(it is slow) against the median of the vectorised repeats, masks compared exactly.
The sweeps and the synthetic layers are in ``layer_costs_sweeps.py``, the tables and the figure in
``layer_costs_output.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the sweeps and the outputs live beside this script

from layer_costs_output import RUN_KEYS, plot, write  # noqa: E402
from layer_costs_sweeps import (  # noqa: E402
    load,
    log,
    make_stats,
    make_weight,
    oracle_comparison,
    summarize,
    sweeps,
    timed,
    trace_overhead,
)

from dsnot_lite.core.dsnot import dsnot, preset  # noqa: E402
from dsnot_lite.core.exact import ExactConfig, exact_refine  # noqa: E402
from dsnot_lite.core.pruners import initial_mask, sparsegpt_inverse_hessian_diag, sparsegpt_prune  # noqa: E402

SHAPES = {
    "7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "13b": [(5120, 5120), (13824, 5120), (5120, 13824)],
    "70b": [(8192, 8192), (28672, 8192), (8192, 28672)],
    "quick": [(512, 512), (1376, 512), (512, 1376)],
}
LAYER_NAMES = {0: "attn q/k/v/o", 1: "mlp gate/up", 2: "mlp down"}


def sparsegpt_cost(weight, hstats, sparsity, rows_sub, cols_sub) -> tuple[float, bool, str]:
    """Seconds of full SparseGPT, measured on the whole layer or extrapolated from a sub-problem."""
    rows, cols = weight.shape
    r, c = min(rows, rows_sub), min(cols, cols_sub)
    h = hstats.hessian[:c, :c]
    if (r, c) == (rows, cols):
        t, _ = timed(lambda: sparsegpt_prune(weight, h, sparsity))
        return t, True, "measured"
    t_sub, _ = timed(lambda: sparsegpt_prune(weight[:r, :c].contiguous(), h, sparsity))
    t_inv, _ = timed(lambda: sparsegpt_inverse_hessian_diag(h))
    t_obs = max(t_sub - t_inv, 0.0)
    est = t_inv * (cols / c) ** 3 + t_obs * (rows / r) * (cols / c) ** 2
    note = f"extrapolated from {r}x{c}: inverse {t_inv:.2f}s x (C_in/{c})^3 + OBS sweep {t_obs:.2f}s x (C_out/{r}) x (C_in/{c})^2"
    return est, False, note


def bench_shape(rows, cols, args, cfg, trace: bool) -> list[dict]:
    """All methods on one layer shape, interleaved within each repeat."""
    shape = f"{rows}x{cols}"
    sparsity = args.sparsity
    with_sparsegpt = cols <= args.sparsegpt_max_cin
    weight = make_weight(rows, cols, args.seed)
    stats, hstats = make_stats(cols, args.nsamples, args.seqlen, args.seed, hessian_cols=min(cols, args.sparsegpt_max_cin))
    if with_sparsegpt:  # the saliency mask needs the whole Hessian
        stats.hessian = hstats.hessian
    masks = {
        "magnitude": initial_mask(weight, None, "magnitude", sparsity),
        "wanda": initial_mask(weight, stats, "wanda", sparsity),
    }
    if with_sparsegpt:
        masks["sparsegpt"] = initial_mask(weight, stats, "sparsegpt", sparsity)

    methods = {
        "magnitude": lambda: initial_mask(weight, None, "magnitude", sparsity),
        "wanda": lambda: initial_mask(weight, stats, "wanda", sparsity),
    }
    if with_sparsegpt:
        methods["sparsegpt_saliency"] = lambda: initial_mask(weight, stats, "sparsegpt", sparsity)
    for init in masks:
        methods[f"dsnot[{init}]"] = lambda init=init: dsnot(weight, stats, masks[init], cfg, initial_method=init)
    if trace:
        methods["dsnot[wanda]+trace"] = lambda: dsnot(weight, stats, masks["wanda"], cfg, initial_method="wanda", trace=True)
    if with_sparsegpt:  # the exact refiner needs the layer's Gram matrix, as SparseGPT does
        exact_cfg = ExactConfig(T=cfg.T)
        methods["exact[wanda]"] = lambda: exact_refine(weight, hstats.hessian, masks["wanda"], exact_cfg)

    times: dict[str, list[float]] = {name: [] for name in methods}
    results = {}
    load_before = load()
    heavy: set[str] = set()  # methods slower than --heavy-s in warm-up are measured once
    for rep in range(args.warmup + args.repeats):
        for name, fn in methods.items():
            if name in heavy and times[name]:
                continue
            t, out = timed(fn)
            if rep >= args.warmup:
                times[name].append(t)
            elif t > args.heavy_s:
                heavy.add(name)
            results[name] = out
            del out
    # Full SparseGPT: once (or extrapolated), after the others.
    sgpt_rows = args.sparsegpt_rows
    numel_ok = rows * cols <= args.sparsegpt_max_numel
    sgpt_t, sgpt_measured, sgpt_note = sparsegpt_cost(
        weight, hstats, sparsity, rows if numel_ok else sgpt_rows, args.sparsegpt_max_cin
    )
    load_after = load()

    wanda_med = statistics.median(times["wanda"])
    out = []
    mask_of = {"dsnot[magnitude]": "magnitude", "dsnot[wanda]": "wanda", "dsnot[sparsegpt]": "sparsegpt_saliency",
               "dsnot[wanda]+trace": "wanda", "exact[wanda]": "wanda"}  # fmt: skip
    for name, ts in times.items():
        row = {"section": "layer", "shape": shape, "rows": rows, "cols": cols, "method": name, "param": "", "value": "",
               **summarize(ts), "measured": True, "note": f"load {load_before}->{load_after}"}  # fmt: skip
        row["ratio_to_wanda"] = row["median_s"] / wanda_med
        # the same ratio taken inside each repeat (Wanda and this method ran seconds apart), then the median
        row["paired_ratio_median"] = statistics.median(t / w for t, w in zip(ts, times["wanda"]))
        if name in heavy:
            row["note"] += f"; slower than {args.heavy_s:.0f}s in warm-up: measured once"
        if name in mask_of:  # the pruner and DSnoT, paired repeat by repeat
            total = [a + b for a, b in zip(times[mask_of[name]], ts)]
            row["total_median_s"] = statistics.median(total)
            row["total_ratio_to_wanda"] = row["total_median_s"] / wanda_med
            res = results[name]
            row["note"] += f"; swaps {int(res.swaps.sum())}; stops {res.stop_counts}"
        out.append(row)
    out.append({"section": "layer", "shape": shape, "rows": rows, "cols": cols, "method": "sparsegpt_full", "param": "",
                "value": "", "n": 1, "median_s": sgpt_t, "min_s": sgpt_t, "max_s": sgpt_t,
                "ratio_to_wanda": sgpt_t / wanda_med, "measured": sgpt_measured, "note": sgpt_note})  # fmt: skip
    return out


def sparsegpt_check(rows, cols, args) -> dict:
    """The extrapolation rule against a full measurement on one shape."""
    weight = make_weight(rows, cols, args.seed)
    _, hstats = make_stats(cols, args.nsamples, args.seqlen, args.seed, hessian_cols=cols)
    sub_rows, sub_cols = max(rows // 4, 1), max(cols // 2, 128)
    full, _, _ = sparsegpt_cost(weight, hstats, args.sparsity, rows, cols)
    est, _, note = sparsegpt_cost(weight, hstats, args.sparsity, sub_rows, sub_cols)
    return {"shape": f"{rows}x{cols}", "measured_s": full, "extrapolated_s": est, "rule": note, "ratio": est / full}


def parse_shape(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="7b", help="comma list of 7b, 13b, 70b, quick; 'none' for no layer table")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--T", type=int, default=50, help="DSnoT max_cycle_time for the layer table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--heavy-s", type=float, default=30.0, help="methods slower than this in warm-up are measured once")
    p.add_argument("--nsamples", type=int, default=2, help="calibration samples for the statistics")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per sample (R1 scales E[A] by it; paper 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparsegpt-max-cin", type=int, default=11008, help="beyond this C_in, SparseGPT is extrapolated")
    p.add_argument(
        "--sparsegpt-max-numel",
        type=int,
        default=4096 * 11008,
        help="beyond this many weights, extrapolated from --sparsegpt-rows rows",
    )
    p.add_argument("--sparsegpt-rows", type=int, default=2048)
    p.add_argument("--no-sparsegpt-check", action="store_true", help="skip checking the extrapolation rule")
    p.add_argument("--sweep-shape", type=parse_shape, default=(4096, 4096))
    p.add_argument("--sweep-t", type=int, nargs="*", default=[0, 1, 5, 10, 25, 50, 100])
    p.add_argument("--sweep-dims", type=int, nargs="*", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--sweep-active", type=float, nargs="*", default=[1.0, 0.75, 0.5, 0.25, 0.1, 0.0])
    p.add_argument("--no-sweeps", action="store_true")
    p.add_argument("--trace-pairs", type=int, default=7, help="interleaved trace-off/trace-on pairs")
    p.add_argument("--oracle-shape", type=parse_shape, default=(4096, 4096))
    p.add_argument("--no-oracle", action="store_true")
    p.add_argument("--merge", action="store_true",
                   help="keep the earlier output's rows that this run does not measure again (e.g. --shapes none, or --shapes 13b)")  # fmt: skip
    p.add_argument("--replot", action="store_true", help="only redraw the figure from the existing JSON")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--quick", action="store_true", help="small shapes and sweeps: checks the script runs")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--figure", type=Path, default=ROOT / "bench" / "results" / "bench_layer_costs.png")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.sweep_shape, args.oracle_shape = "quick", (512, 512), (256, 256)
        args.sweep_dims, args.sweep_t, args.repeats, args.trace_pairs = [256, 512, 1024], [0, 1, 10, 50], 2, 3
        args.seqlen, args.sparsegpt_max_cin, args.sparsegpt_max_numel, args.sparsegpt_rows = 256, 1024, 512 * 1376, 256
        if args.out_dir == ROOT / "bench" / "results":
            args.out_dir = ROOT / "bench" / "results" / "quick"
        if args.figure == ROOT / "figures" / "bench_layer_costs.png":
            args.figure = args.out_dir / "bench_layer_costs.png"

    if args.replot:
        old = json.loads((args.out_dir / "layer_costs.json").read_text())
        plot(old["rows"], old.get("oracle"), args.figure)
        return
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(preset("official"), T=args.T)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "load_start": load(),
        "dtype": "float32", "sparsity": args.sparsity, "T": args.T, "preset": "official",
        "calibration": f"{args.nsamples} x {args.seqlen} synthetic tokens", "repeats": args.repeats, "warmup": args.warmup,
    }  # fmt: skip
    rows: list[dict] = []
    base = None
    if args.merge and (args.out_dir / "layer_costs.json").is_file():
        old = json.loads((args.out_dir / "layer_costs.json").read_text())
        old_meta = {k: v for k, v in old.items() if k != "rows"}
        old_meta.setdefault("runs", [{k: old.get(k) for k in RUN_KEYS}])
        base = (old["rows"], old_meta)
    meta["sections"] = [s for s, on in (("layer", args.shapes != "none"), ("sweep", not args.no_sweeps)) if on]
    started = time.perf_counter()
    for group in [g for g in args.shapes.split(",") if g.strip() != "none"]:
        for i, (r, c) in enumerate(SHAPES[group.strip()]):
            log(f"layer {group} {r}x{c} ({LAYER_NAMES[i]}), load {load()}")
            rows += bench_shape(r, c, args, cfg, trace=group.strip() in ("7b", "quick"))
            for row in rows[-8:]:
                if row["shape"] == f"{r}x{c}":
                    log(f"  {row['method']:<20} {row['median_s']:8.3f}s  x{row['ratio_to_wanda']:.2f} Wanda"
                        + (f"  (with mask x{row['total_ratio_to_wanda']:.2f})" if row.get("total_ratio_to_wanda") else ""))  # fmt: skip
            write(rows, meta, args.out_dir, args.figure, base)  # partial results survive an interrupted run
    if not args.no_sparsegpt_check:
        r, c = SHAPES["quick" if args.quick else "7b"][1]
        log(f"checking the SparseGPT extrapolation rule on {r}x{c}")
        meta["sparsegpt_extrapolation_check"] = sparsegpt_check(r, c, args)
        log(f"  {meta['sparsegpt_extrapolation_check']}")
    if not args.no_sweeps:
        rows += sweeps(args, cfg)
        write(rows, meta, args.out_dir, args.figure, base)
    if not args.no_sweeps:
        log(f"trace overhead on {args.sweep_shape}")
        meta["trace_overhead"] = trace_overhead(args, cfg)
        log(f"  {meta['trace_overhead']}")
    if not args.no_oracle:
        log(f"oracle vs vectorised on {args.oracle_shape}")
        meta["oracle"] = oracle_comparison(args, cfg)
        log(f"  {meta['oracle']}")
    meta["load_end"] = load()
    meta["wall_s"] = time.perf_counter() - started
    log(write(rows, meta, args.out_dir, args.figure, base)["summary_table"])


if __name__ == "__main__":
    main()
