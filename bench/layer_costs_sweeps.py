"""The synthetic layers, timing helpers and sweeps of ``bench/layer_costs.py`` (see its docstring).

Synthetic layers: weights N(0, 0.02) rounded through fp16, calibration tokens Gaussian with
per-channel means and scales and 0.5% outlier channels scaled 20-50x. Sweeps (on ``--sweep-shape``,
Wanda mask): DSnoT time vs T, vs rows active at the start, vs C_in and vs C_out; the trace
overhead; the per-row oracle of ``tests/oracle.py`` against ``dsnot``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the oracle lives with the tests

from dsnot_lite.core.dsnot import dsnot  # noqa: E402
from dsnot_lite.core.pruners import initial_mask  # noqa: E402
from dsnot_lite.core.stats import ChannelStats  # noqa: E402


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# Synthetic layers.


def make_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.02).half().float()


def channel_profile(cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and scale with 0.5% outlier channels scaled 20-50x."""
    g = torch.Generator().manual_seed(seed + 1)
    mean = torch.randn(cols, generator=g) * 0.3
    scale = torch.rand(cols, generator=g) + 0.5
    n_out = max(1, cols // 200)
    idx = torch.randperm(cols, generator=g)[:n_out]
    boost = 20 + 30 * torch.rand(n_out, generator=g)
    mean[idx] *= boost
    scale[idx] *= boost
    return mean, scale


def make_stats(
    cols: int, nsamples: int, seqlen: int, seed: int, hessian_cols: int = 0
) -> tuple[ChannelStats, ChannelStats | None]:
    """R1 statistics of synthetic tokens, and (optionally) a Hessian-carrying ChannelStats of the first ``hessian_cols`` channels."""
    mean, scale = channel_profile(cols, seed)
    g = torch.Generator().manual_seed(seed + 2)
    stats = ChannelStats(cols)
    hstats = ChannelStats(hessian_cols, hessian=True) if hessian_cols else None
    for _ in range(nsamples):
        x = torch.randn(1, seqlen, cols, generator=g) * scale + mean
        stats.add_batch(x)
        if hstats is not None:
            hstats.add_batch(x[..., :hessian_cols].contiguous())
        del x
    return stats, hstats


# ------------------------------------------------------------------------------------------------
# Timing.


def timed(fn) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def summarize(times: list[float]) -> dict:
    return {"n": len(times), "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


# ------------------------------------------------------------------------------------------------
# Sweeps.


def sweep_point(weight, stats, mask, cfg, args) -> tuple[dict, object]:
    """Median DSnoT time on one layer (used by the oracle comparison)."""
    ts = []
    res = None
    for rep in range(args.warmup + args.repeats):
        t, res = timed(lambda: dsnot(weight, stats, mask, cfg))
        if rep >= args.warmup:
            ts.append(t)
    return summarize(ts), res


def round_robin(points: dict, args) -> dict[str, list[float]]:
    """Time every ``points[key]()`` once per repeat, all keys in turn, so load drift hits them alike."""
    times = {key: [] for key in points}
    for rep in range(args.warmup + args.repeats):
        for key, fn in points.items():
            t, _ = timed(fn)
            if rep >= args.warmup:
                times[key].append(t)
    return times


def sweeps(args, cfg) -> list[dict]:
    """DSnoT cost vs T, vs rows active at the start, vs C_in and vs C_out; each sweep interleaved."""
    rows, cols = args.sweep_shape
    out = []

    def record(param, value, ts, wanda_ts, res, r, c, note=""):
        summary = summarize(ts)
        wanda_med = statistics.median(wanda_ts)
        row = {"section": "sweep", "shape": f"{r}x{c}", "rows": r, "cols": c, "method": "dsnot[wanda]", "param": param,
               "value": value, **summary, "ratio_to_wanda": summary["median_s"] / wanda_med,
               "paired_ratio_median": statistics.median(a / b for a, b in zip(ts, wanda_ts)),
               "total_median_s": summary["median_s"] + wanda_med, "total_ratio_to_wanda": 1 + summary["median_s"] / wanda_med,
               "measured": True, "note": f"swaps {int(res.swaps.sum())}; stops {res.stop_counts}{note}; load {load()}"}  # fmt: skip
        out.append(row)
        log(
            f"  {param}={value}: dsnot {summary['median_s']:.3f}s wanda {wanda_med:.3f}s paired x{row['paired_ratio_median']:.2f}"
        )

    weight = make_weight(rows, cols, args.seed)
    stats, _ = make_stats(cols, args.nsamples, args.seqlen, args.seed)
    mask = initial_mask(weight, stats, "wanda", args.sparsity)
    wanda = lambda: initial_mask(weight, stats, "wanda", args.sparsity)

    log(f"sweep T on {rows}x{cols}")
    cfgs = {t: dataclasses.replace(cfg, T=t) for t in args.sweep_t}
    points = {"wanda": wanda, **{t: (lambda c=c: dsnot(weight, stats, mask, c)) for t, c in cfgs.items()}}
    times = round_robin(points, args)
    for t, c in cfgs.items():
        record("T", t, times[t], times["wanda"], dsnot(weight, stats, mask, c), rows, cols,
               " (T=0: candidate lists only)" if t == 0 else "")  # fmt: skip

    log(f"sweep active rows on {rows}x{cols} (epsilon = quantiles of |E[Delta_r]|)")
    e0 = dsnot(weight, stats, mask, dataclasses.replace(cfg, T=0)).initial_error.abs()
    cfgs = {}
    for frac in args.sweep_active:
        eps = 0.0 if frac >= 1 else float(torch.quantile(e0, 1 - frac))
        cfgs[int((e0 > eps).sum())] = dataclasses.replace(cfg, eps=eps)
    points = {"wanda": wanda, **{k: (lambda c=c: dsnot(weight, stats, mask, c)) for k, c in cfgs.items()}}
    times = round_robin(points, args)
    for active0, c in cfgs.items():
        res = dsnot(weight, stats, mask, c, trace=True)
        iters = res.trace.swapped.shape[0]
        mean_active = float(res.trace.swapped.float().sum(1).mean()) if iters else 0.0
        record("active_rows", active0, times[active0], times["wanda"], res, rows, cols,
               f"; epsilon {c.eps:.4g}; iterations {iters}; mean swapping rows per iteration {mean_active:.0f}")  # fmt: skip
    gc.collect()

    for param, dims in (("C_in", [(rows, c) for c in args.sweep_dims]), ("C_out", [(r, cols) for r in args.sweep_dims])):
        log(f"sweep {param}")
        layers = {}
        for r, c in dims:
            w = make_weight(r, c, args.seed)
            st, _ = make_stats(c, args.nsamples, args.seqlen, args.seed)
            layers[(r, c)] = (w, st, initial_mask(w, st, "wanda", args.sparsity))
        points = {}
        for key, (w, st, m) in layers.items():
            points[("wanda", key)] = lambda w=w, st=st: initial_mask(w, st, "wanda", args.sparsity)
            points[("dsnot", key)] = lambda w=w, st=st, m=m: dsnot(w, st, m, cfg)
        times = round_robin(points, args)
        for (r, c), (w, st, m) in layers.items():
            record(param, c if param == "C_in" else r, times[("dsnot", (r, c))], times[("wanda", (r, c))],
                   dsnot(w, st, m, cfg), r, c)  # fmt: skip
        del layers, points
        gc.collect()
    return out


def trace_overhead(args, cfg) -> dict:
    """DSnoT with trace=True vs trace=False, interleaved pairs, median of the per-pair ratios."""
    rows, cols = args.sweep_shape
    weight = make_weight(rows, cols, args.seed)
    stats, _ = make_stats(cols, args.nsamples, args.seqlen, args.seed)
    mask = initial_mask(weight, stats, "wanda", args.sparsity)
    off, on = [], []
    for rep in range(args.warmup + args.trace_pairs):
        a, _ = timed(lambda: dsnot(weight, stats, mask, cfg))
        b, _ = timed(lambda: dsnot(weight, stats, mask, cfg, trace=True))
        if rep >= args.warmup:
            off.append(a)
            on.append(b)
    return {"shape": f"{rows}x{cols}", "pairs": len(off), "off_median_s": statistics.median(off),
            "on_median_s": statistics.median(on), "overhead_ratio_median": statistics.median(b / a for a, b in zip(off, on)),
            "load": load()}  # fmt: skip


def oracle_comparison(args, cfg) -> dict:
    from oracle import dsnot_oracle

    rows, cols = args.oracle_shape
    weight = make_weight(rows, cols, args.seed)
    stats, _ = make_stats(cols, args.nsamples, args.seqlen, args.seed)
    mask = initial_mask(weight, stats, "wanda", args.sparsity)
    summary, fast = sweep_point(weight, stats, mask, cfg, args)
    t_oracle, slow = timed(lambda: dsnot_oracle(weight, stats, mask, cfg))
    return {
        "section": "oracle", "shape": f"{rows}x{cols}", "rows": rows, "cols": cols, "method": "dsnot[wanda] vs oracle",
        "param": "", "value": "", **summary, "oracle_s": t_oracle, "speedup": t_oracle / summary["median_s"],
        "masks_equal": bool(torch.equal(slow.mask, fast.mask)), "swaps_equal": bool(torch.equal(slow.swaps, fast.swaps)),
        "final_error_equal": bool(torch.equal(slow.final_error, fast.final_error)), "swaps": int(fast.swaps.sum()),
        "measured": True, "note": f"oracle run once; vectorised median of {summary['n']}; load {load()}",
    }  # fmt: skip
