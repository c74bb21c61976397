"""The outputs of ``bench/layer_costs.py``: its CSV and JSON tables, the summary table and the figure."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnot_lite.plots.style import save_figure  # noqa: E402
from dsnot_lite.runs.io import atomic_write_text  # noqa: E402

# Okabe-Ito, colour-blind safe.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
FIELDS = [
    "section", "shape", "rows", "cols", "method", "param", "value", "n", "median_s", "min_s", "max_s",
    "ratio_to_wanda", "paired_ratio_median", "total_median_s", "total_ratio_to_wanda", "measured", "note",
]  # fmt: skip


def plot(rows: list[dict], oracle: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    layer = [r for r in rows if r["section"] == "layer"]
    shapes = list(dict.fromkeys(r["shape"] for r in layer))
    methods = list(dict.fromkeys(r["method"] for r in layer))
    ax = axes[0, 0]
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, ys, hatch = [], [], []
        for j, s in enumerate(shapes):
            hit = [r for r in layer if r["shape"] == s and r["method"] == m]
            if hit:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(hit[0]["median_s"])
                hatch.append(not hit[0]["measured"])
        bars = ax.bar(xs, ys, width, color=PALETTE[i % len(PALETTE)], label=m, edgecolor="black", linewidth=0.4)
        for b, h in zip(bars, hatch):
            if h:
                b.set_hatch("//")
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_yscale("log")
    ax.set_xlabel("layer shape C_out x C_in")
    ax.set_ylabel("seconds (median; hatched = extrapolated)")
    ax.set_title("Per-layer cost, CPU fp32")
    ax.legend(fontsize=7, ncol=2)

    sweep = [r for r in rows if r["section"] == "sweep"]

    def line(ax, param, xlabel, logx=False, color=PALETTE[0], label="DSnoT (Wanda mask)", wanda=True):
        pts = sorted((r["value"], r["median_s"], r["total_median_s"] - r["median_s"]) for r in sweep if r["param"] == param)
        if not pts:
            return
        xs, ys, ws = zip(*pts)
        ax.plot(xs, ys, "o-", color=color, label=label)
        if wanda:
            ax.plot(xs, ws, "s--", color=PALETTE[1], label="Wanda mask, same layer")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (median)")
        ax.legend(fontsize=8)

    line(axes[0, 1], "T", "T (max cycles; 0 = candidate lists only)")
    axes[0, 1].set_title("DSnoT cost vs T")
    axes[0, 1].set_ylim(bottom=0)
    line(axes[1, 0], "C_in", "dimension (the other one fixed)", logx=True, label="DSnoT vs C_in", wanda=False)
    line(axes[1, 0], "C_out", "dimension (the other one fixed)", logx=True, color=PALETTE[2], label="DSnoT vs C_out", wanda=False)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_title("DSnoT cost vs C_in and C_out")
    line(axes[1, 1], "active_rows", "rows active at the start (epsilon varied)")
    title = "DSnoT cost vs active rows"
    if oracle:
        title += f"\noracle {oracle['shape']}: vectorised {oracle['speedup']:.0f}x faster, masks equal: {oracle['masks_equal']}"
    axes[1, 1].set_title(title, fontsize=10)
    axes[1, 1].set_ylim(bottom=0)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomic, no version or date: re-runs do not churn
    plt.close(fig)


RUN_KEYS = ("command", "load_start", "load_end", "threads", "repeats", "warmup", "wall_s", "sections")


def write(rows: list[dict], meta: dict, out_dir: Path, fig_path: Path, base: tuple | None = None) -> dict:
    if base is not None:  # --merge: rows and meta of the earlier run, read once at the start
        old_rows, old_meta = base
        key = lambda r: (r["section"], r["shape"], r["method"], str(r["param"]), str(r["value"]))
        fresh = {key(r) for r in rows}
        rows = [r for r in old_rows if key(r) not in fresh] + rows
        meta = {**old_meta, **meta, "runs": [*old_meta.get("runs", []), {k: meta.get(k) for k in RUN_KEYS}]}
    meta["summary_table"] = summary_table(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(out_dir / "layer_costs.csv", buf.getvalue())
    atomic_write_text(out_dir / "layer_costs.json", json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    plot(rows, meta.get("oracle"), fig_path)
    return meta


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| shape | method | median s | x Wanda | x Wanda, paired | with its mask, x Wanda | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["section"] != "layer":
            continue
        total = f"{r['total_ratio_to_wanda']:.2f}" if r.get("total_ratio_to_wanda") else ""
        paired = f"{r['paired_ratio_median']:.2f}" if r.get("paired_ratio_median") else ""
        measured = "yes" if r["measured"] else "extrapolated"
        lines.append(
            f"| {r['shape']} | {r['method']} | {r['median_s']:.3f} | {r['ratio_to_wanda']:.2f} | {paired} | {total} | {measured} |"
        )
    return "\n".join(lines)
