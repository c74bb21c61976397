"""Plots for the notebooks and widgets, reproducible PNG output, and ``python -m dsnot_lite figures``.

Every plotting function builds a ``matplotlib.figure.Figure`` (no pyplot, so nothing global is
left open) or draws into a given ``ax``, and returns it. Colours are the Okabe-Ito palette
(distinguishable with the common colour-vision deficiencies); heat maps use ``viridis`` or the
diverging ``PuOr``. Axes carry labels with units and every figure has a title.

``save_figure`` writes PNGs byte-for-byte reproducibly: fixed dpi, no "Software" or date
metadata, written through a temporary file and ``os.replace``, and not rewritten at all when
the bytes are unchanged, so re-running does not churn ``figures/``.

``paper_figures(table, out_dir)`` (also ``python -m dsnot_lite figures``) turns the results table
(``results/results.csv``, filled by ``python -m dsnot_lite run``) into the paper-style figures
and Markdown tables. Our numbers and the paper's (quoted from the spec, section 4, for LLaMA and
OPT models we do not run here) are always in separate, labelled panels or columns.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}
# Yellow last: it has the least contrast on white.
PALETTE = [OKABE_ITO[k] for k in ("blue", "orange", "bluish green", "vermillion", "reddish purple", "sky blue", "black", "yellow")]
BEFORE, AFTER = OKABE_ITO["orange"], OKABE_ITO["blue"]
DPI = 110
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "PuOr"

# Paper numbers (WikiText-2 perplexity), quoted from ../shared/spec/dsnot.md section 4 (Zhang et
# al., ICLR 2024). They are for LLaMA/OPT models; they are shown next to ours, never mixed in.
# Stored as the spec writes them (strings keep the paper's precision, e.g. "5.6e2", "66.70").
PAPER_TABLE1 = {  # model -> {(method, dsnot): ppl} at 60% unstructured
    "LLaMA-1 7B": {"dense": "5.68", ("magnitude", False): "5.6e2", ("magnitude", True): "66.70",
                   ("sparsegpt", False): "10.41", ("sparsegpt", True): "9.65",
                   ("wanda", False): "10.69", ("wanda", True): "10.22"},
    "LLaMA-2 7B": {"dense": "5.47", ("magnitude", False): "6.9e3", ("magnitude", True): "40.01",
                   ("sparsegpt", False): "10.14", ("sparsegpt", True): "9.67",
                   ("wanda", False): "10.79", ("wanda", True): "10.59"},
    "OPT-13B": {"dense": "10.12", ("magnitude", False): "1.1e6", ("magnitude", True): "2.4e2",
                ("sparsegpt", False): "21.23", ("sparsegpt", True): "16.92",
                ("wanda", False): "15.88", ("wanda", True): "14.01"},
}  # fmt: skip
PAPER_SPARSITY_LLAMA1 = {  # LLaMA-1 7B, (Wanda, Wanda + DSnoT)
    0.5: ("7.26", "7.12"), 0.6: ("10.69", "10.22"), 0.7: ("88.84", "62.05"), 0.8: ("4.80e3", "4.12e3"),
}  # fmt: skip
PAPER_NM_LLAMA1 = {("wanda", "2:4"): ("11.53", "10.89"), ("sparsegpt", "2:4"): ("11.00", "10.03")}
PAPER_TABLE7 = {  # LLaMA-7B, Wanda init, 60%: prune criterion -> grow criterion -> ppl
    "eq2": {"wanda": "11.24", "eq3": "10.61", "eq2": "10.84"},
    "eq3": {"wanda": "10.52", "eq3": "10.37", "eq2": "10.22"},
}
# The prune=Wanda row of Table 7 has two values (10.72, 10.49) whose columns the source leaves
# unclear (spec section 4), so it is left out of the grid.
def paper_table7_frame():
    """Paper Table 7 (perplexity, LLaMA-7B, Wanda 60%) as a prune x grow DataFrame (quoted)."""
    import pandas as pd

    frame = pd.DataFrame(PAPER_TABLE7).T.loc[["eq2", "eq3"], ["wanda", "eq3", "eq2"]].astype(float)
    frame.index.name, frame.columns.name = "prune criterion", "grow criterion"
    return frame


def compare_with_paper(results, sparsity: float = 0.6):
    """Our runs (result dicts) next to the paper's Table 1 LLaMA rows, one line per (method, DSnoT).

    Columns: ``ours`` (perplexity we measured) and one ``paper: <model>`` column per quoted model.
    """
    import pandas as pd

    lines = []
    for r in results:
        if r.get("nm") or (r["method"] != "dense" and abs(r["sparsity"] - sparsity) > 1e-9):
            continue
        key = "dense" if r["method"] == "dense" else (r["method"], bool(r["dsnot"]))
        label = _run_name(r["method"], bool(r["dsnot"]), r.get("preset"))
        line = {"run": label, "ours": r["ppl"]}
        for model in ("LLaMA-1 7B", "LLaMA-2 7B"):
            quoted = PAPER_TABLE1[model].get(key)
            line[f"paper: {model}"] = quoted if quoted is not None and (key == "dense" or r.get("preset") in (None, "official")) else "–"
        lines.append(line)
    return pd.DataFrame(lines)


SPARSEGPT_NOTE = (
    "SparseGPT without DSnoT is full SparseGPT (mask and OBS weight update); SparseGPT + DSnoT starts from "
    "SparseGPT's saliency mask *without* the weight update, as the reference code does (spec R8), so those "
    "two columns differ in more than DSnoT."
)
PAPER_SOURCE = "Zhang et al., ICLR 2024, as quoted in the spec, section 4"
METHOD_ORDER = ("magnitude", "sparsegpt", "wanda")
STOP_LABELS = {"running": "still running", "threshold": "|E[Δ]| ≤ ε", "max_cycles": "T reached",
               "sign_flip": "sign check", "no_candidates": "no candidates"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as reproducible PNG bytes (fixed dpi, no Software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def write_bytes_if_changed(data: bytes, path: str | os.PathLike) -> bool:
    """Write ``data`` atomically (temp file + ``os.replace``) unless the file already holds it.

    Returns True when the file was (re)written.
    """
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG at ``path`` reproducibly (see module docstring); returns the path."""
    write_bytes_if_changed(figure_png(fig, dpi), path)
    return Path(path)


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Save a text file (Markdown table) atomically, untouched when unchanged."""
    write_bytes_if_changed(text.encode("utf-8"), path)
    return Path(path)


def _log_axis(ax, axis: str = "y") -> None:
    """Log scale with plain numbers (20, 50, 100) instead of 2 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    target.set_major_formatter(plain)
    target.set_minor_locator(LogLocator(subs=(2, 5)))
    target.set_minor_formatter(plain)


def _room_above_bars(ax, factor: float = 3.0) -> None:
    """Raise the top of a log axis so value labels written above the bars stay inside it."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * factor)


def _new(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0), **kw):
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def side_by_side(n: int, size: tuple[float, float] = (5.5, 4.2)):
    """A figure with ``n`` panels in a row: ``(fig, [ax, ...])`` for the plotters' ``ax=`` argument."""
    fig, axes = _new(1, n, size=(size[0] * n, size[1]))
    return fig, list(axes[0])


def _own(ax, size=(6.4, 4.0)):
    """(fig, ax): the given axes, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig, axes = _new(size=size)
    return fig, axes[0, 0]


# --------------------------------------------------------------------------------------------
# One layer (explore.LayerRun)
# --------------------------------------------------------------------------------------------


def _error_unit(run) -> str:
    return "output units × seqlen (official R1)" if run.config.statistics == "official" else "output units"


def convergence(run, rows, ax=None, highlight: int | None = None):
    """E[Delta_r] of the given rows after every DSnoT iteration (paper Fig. 3 style)."""
    fig, ax = _own(ax)
    err = run.trace.error.numpy()
    eps = run.config.update_threshold
    its = range(err.shape[0])
    for i, r in enumerate(rows):
        strong = highlight is None or r == highlight
        ax.plot(its, err[:, r], color=PALETTE[i % len(PALETTE)], lw=2.2 if strong else 1.2,
                alpha=1.0 if strong else 0.6, marker="o" if err.shape[0] <= 12 else None, ms=3,
                label=f"row {r}" + (" (picked)" if highlight is not None and r == highlight else ""))  # fmt: skip
    ax.axhspan(-eps, eps, color=OKABE_ITO["bluish green"], alpha=0.15, label=f"|E[Δ]| ≤ ε = {eps:g}")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("DSnoT iteration t (swaps so far)")
    ax.set_ylabel(f"E[Δ_r] ({_error_unit(run)})")
    ax.set_title("Expected error of a row, swap by swap")
    ax.legend(fontsize=8, loc="best")
    return fig


def flip_histogram(run, ax=None):
    """How many mask entries each row flipped (2 per swap)."""
    fig, ax = _own(ax)
    import numpy as np

    flips = run.flips_per_row.numpy()
    top = max(int(flips.max()), 1)
    step = 2 if not (flips % 2).any() else 1  # a swap flips two entries: counts are usually even
    step *= max(1, math.ceil((top + 1) / step / 50))  # at most about 50 bars
    edges = np.arange(-step / 2, top + step, step)
    ax.hist(flips, bins=edges, color=AFTER, edgecolor="white")
    ax.set_xlabel("mask entries flipped in the row (count)")
    ax.set_ylabel("rows (count)")
    ax.set_title(f"Flips per row: {int(flips.sum())} in all, {int((flips > 0).sum())}/{flips.size} rows changed")
    return fig


def flip_map(run, rows=None, ax=None, max_rows: int = 64, outliers=()):
    """Heat map of mask changes: +1 weight pruned by DSnoT, -1 weight grown back, 0 unchanged."""
    fig, ax = _own(ax, size=(7.0, 4.0))
    change = run.initial_mask.int() - run.result.mask.int()  # +1: was pruned, now kept (grown)
    rows = list(rows) if rows is not None else list(range(min(max_rows, change.shape[0])))
    img = (-change[rows]).numpy()  # +1 newly pruned, -1 grown back
    im = ax.imshow(img, aspect="auto", cmap=DIVERGING_CMAP, vmin=-1, vmax=1, interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, ticks=[-1, 0, 1])
    cb.ax.set_yticklabels(["grown back", "unchanged", "pruned by DSnoT"])
    for c in outliers:
        ax.axvline(c, color=OKABE_ITO["black"], lw=0.6, ls=":")
    ax.set_xlabel("input channel k" + (" (dotted: outlier channels)" if len(outliers) else ""))
    ax.set_ylabel("output row r (first rows)" if rows == list(range(len(rows))) else "output row (index in list)")
    ax.set_title("Where DSnoT changed the mask")
    return fig


def stop_reasons(run_or_counts, ax=None):
    """Bar chart of why the rows stopped."""
    fig, ax = _own(ax, size=(5.0, 3.2))
    counts = run_or_counts if isinstance(run_or_counts, dict) else run_or_counts.result.stop_counts
    names = [k for k in STOP_LABELS if k in counts]
    ax.bar([STOP_LABELS[k] for k in names], [counts[k] for k in names], color=PALETTE[: len(names)])
    ax.set_ylabel("rows (count)")
    ax.set_xlabel("stop reason")
    ax.set_title("Why rows stopped")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig


def output_error_scatter(run, ax=None, highlight: int | None = None):
    """True per-row output error ||(W - M.W) X_r|| before vs after DSnoT (below the diagonal = better)."""
    fig, ax = _own(ax, size=(4.6, 4.0))
    b, a = run.output_error_before.numpy(), run.output_error_after.numpy()
    better = a < b
    ax.scatter(b[better], a[better], s=8, color=AFTER, label=f"lower after ({int(better.sum())} rows)")
    ax.scatter(b[~better], a[~better], s=8, color=BEFORE, marker="^", label=f"not lower ({int((~better).sum())} rows)")
    lo, hi = float(min(b.min(), a.min())), float(max(b.max(), a.max()))
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--")
    if highlight is not None:
        ax.scatter([b[highlight]], [a[highlight]], s=80, facecolors="none", edgecolors="black", label=f"row {highlight}")
    ax.set_xlabel("output error before DSnoT ||ΔW_r X|| (output units)")
    ax.set_ylabel("after DSnoT (output units)")
    ax.set_title("True output error per row")
    ax.legend(fontsize=8)
    return fig


def layer_dashboard(run, row: int | None = None, rows=None):
    """2 x 2 overview of one ``LayerRun``: convergence, output errors, flips per row, stop reasons."""
    from dsnot_lite.explore import rows_by_initial_error

    fig, axes = _new(2, 2, size=(11.0, 7.4))
    rows = list(rows) if rows is not None else rows_by_initial_error(run, 4)
    if row is not None and row not in rows:
        rows = [row] + rows[:3]
    convergence(run, rows, axes[0, 0], highlight=row)
    output_error_scatter(run, axes[0, 1], highlight=row)
    flip_histogram(run, axes[1, 0])
    stop_reasons(run, axes[1, 1])
    s, p = run.summary, run.params
    fig.suptitle(
        f"{run.layer_name}: {p.method} {p.sparsity:.0%}{' ' + str(p.nm[0]) + ':' + str(p.nm[1]) if p.nm else ''} + DSnoT "
        f"({p.preset}, T={p.T}, ε={p.eps:g}, grow={p.grow}, prune={p.prune}, sign check={'on' if run.config.sign_check else 'off'})\n"
        f"mean |E[Δ]| {s['mean_abs_error_before']:.3g} → {s['mean_abs_error_after']:.3g}; "
        f"relative output error {s['rel_output_error_before']:.4f} → {s['rel_output_error_after']:.4f}; "
        f"flips {s['flips']}; sparsity {s['sparsity_before']:.4f} → {s['sparsity_after']:.4f}",
        fontsize=10,
    )
    return fig


def channel_statistics(layer, ax=None):
    """|E[A_k]| per input channel (token mean), outlier channels marked."""
    fig, ax = _own(ax, size=(7.0, 3.2))
    mean = layer.stats.mean.abs().numpy()
    ax.bar(range(mean.size), mean, width=1.0, color=PALETTE[0])
    for c in layer.outlier_channels:
        ax.bar([c], [mean[c]], width=1.0, color=OKABE_ITO["vermillion"])
    _log_axis(ax)
    ax.set_xlabel("input channel k")
    ax.set_ylabel("|E[A_k]| (token mean, input units, log)")
    ax.set_title(f"Input channel means ({len(layer.outlier_channels)} outlier channels in vermillion)")
    return fig


def criterion_heatmap(frame, ax=None, title: str = "", label: str = "", fmt: str = "{:.4g}", cmap=SEQUENTIAL_CMAP):
    """Heat map of a (prune criterion x grow criterion) table, values written in the cells.

    Positive values spanning more than 10x get a logarithmic colour scale (the label says so).
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    fig, ax = _own(ax, size=(5.6, 4.4))
    values = frame.to_numpy(dtype=float)
    masked = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values)]
    log = finite.size > 0 and finite.min() > 0 and finite.max() > 10 * finite.min()
    norm = LogNorm(finite.min(), finite.max()) if log else None
    label = f"{label} (log colour scale)" if log and label else label
    im = ax.imshow(masked, cmap=cmap, aspect="auto", norm=norm)
    ax.figure.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(frame.shape[1]), [str(c) for c in frame.columns])
    ax.set_yticks(range(frame.shape[0]), [str(i) for i in frame.index])
    ax.set_xlabel(f"{frame.columns.name or 'grow criterion'}")
    ax.set_ylabel(f"{frame.index.name or 'prune criterion'}")
    mid = (math.sqrt(finite.min() * finite.max()) if log else (finite.min() + finite.max()) / 2) if finite.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if math.isfinite(values[i, j]):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] < mid else "black")  # fmt: skip
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_title(title or "Criterion grid")
    return fig


def sweep_plot(frame, x: str, metrics: dict, ax=None, title: str = "", logx: bool = False, xlabel: str | None = None):
    """One line per metric (``{column: label}``) against ``x``."""
    fig, ax = _own(ax)
    for i, (col, label) in enumerate(metrics.items()):
        ax.plot(frame[x].astype(float) if _numeric(frame[x]) else frame[x].astype(str), frame[col],
                marker="o", color=PALETTE[i % len(PALETTE)], label=label)  # fmt: skip
    if logx:
        ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(" / ".join(metrics.values()) if len(metrics) == 1 else "value (see legend)")
    ax.set_title(title or f"Sweep over {x}")
    if len(metrics) > 1:
        ax.legend(fontsize=8)
    return fig


def _numeric(series) -> bool:
    try:
        series.astype(float)
        return True
    except (TypeError, ValueError):
        return False


def sweep_panels(frame, x: str, panels: dict, title: str = "", logx: bool = False, xlabel: str | None = None):
    """Several ``sweep_plot`` panels side by side: ``{panel title: {column: label}}``."""
    fig, axes = _new(1, len(panels), size=(4.6 * len(panels), 3.8))
    for ax, (name, metrics) in zip(axes[0], panels.items()):
        sweep_plot(frame, x, metrics, ax, title=name, logx=logx, xlabel=xlabel)
        if len(metrics) == 1:
            ax.set_ylabel(next(iter(metrics.values())))
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# A whole model (explore.ModelLab result dicts, or explore.layer_frame)
# --------------------------------------------------------------------------------------------


def layer_errors(frame, ax=None, title: str = ""):
    """Relative output error ||ΔW X||/||W X|| of every linear layer, before and after DSnoT."""
    fig, ax = _own(ax, size=(10.0, 3.8))
    idx = range(len(frame))
    ax.plot(idx, frame["rel_error_before"], color=BEFORE, marker="o", ms=3, lw=1, label="initial mask (before DSnoT)")
    ax.plot(idx, frame["rel_error_after"], color=AFTER, marker="s", ms=3, lw=1, label="after DSnoT")
    ax.set_xlabel("linear layer, in network order (block.type)")
    step = max(1, len(frame) // 28)
    ax.set_xticks(list(idx)[::step], [f"{b}.{t.split('.')[-1]}" for b, t in zip(frame["block"], frame["type"])][::step],
                  rotation=70, fontsize=7)  # fmt: skip
    ax.set_ylabel("relative output error (fraction)")
    ax.set_title(title or "Per-layer reconstruction error on the calibration inputs")
    ax.legend(fontsize=8)
    return fig


def layer_error_change(frame, ax=None, title: str = ""):
    """Relative change of each layer's output error made by DSnoT, in % (negative = DSnoT helped)."""
    fig, ax = _own(ax, size=(10.0, 3.4))
    types = list(dict.fromkeys(frame["type"]))
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}
    ax.bar(range(len(frame)), frame["rel_change_%"], color=[colors[t] for t in frame["type"]])
    for t in types:
        ax.bar([0], [0], color=colors[t], label=t)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("linear layer, in network order")
    ax.set_ylabel("output error change (%)")
    ax.set_title(title or "Change of each layer's output error by DSnoT (below 0: lower error)")
    ax.legend(fontsize=7, ncol=4)
    return fig


def flips_per_layer(frame, ax=None, title: str = ""):
    """Fraction of each layer's weights whose mask entry DSnoT flipped."""
    fig, ax = _own(ax, size=(10.0, 3.4))
    types = list(dict.fromkeys(frame["type"]))
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}
    ax.bar(range(len(frame)), 100 * frame["fraction_flipped"], color=[colors[t] for t in frame["type"]])
    for t in types:
        ax.bar([0], [0], color=colors[t], label=t)
    ax.set_xlabel("linear layer, in network order")
    ax.set_ylabel("mask entries flipped (% of weights)")
    ax.set_title(title or "How much DSnoT changed each layer's mask")
    ax.legend(fontsize=7, ncol=4)
    return fig


def ppl_bars(frame, ax=None, title: str = "", label_col: str = "run", value_col: str = "ppl", logy: bool = False):
    """Horizontal bars of perplexity per run (value written at the end of each bar)."""
    fig, ax = _own(ax, size=(7.0, 0.5 + 0.45 * len(frame)))
    labels = list(frame[label_col])
    values = [float(v) for v in frame[value_col]]
    colors = [AFTER if "DSnoT" in lab else (OKABE_ITO["black"] if lab == "dense" else BEFORE) for lab in labels]
    ax.barh(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    if logy:
        ax.set_xscale("log")
    ax.set_xlabel("WikiText-2 perplexity (lower is better)")
    ax.set_title(title or "Perplexity")
    return fig


# --------------------------------------------------------------------------------------------
# The paper-style figures from the results table
# --------------------------------------------------------------------------------------------


class TableError(Exception):
    """The results table is missing or has no usable rows (message says how to fill it)."""


FILL_HINT = (
    "fix: fill it with `python -m dsnot_lite run --model smollm2-135m --method wanda --dsnot --sparsity 0.6` "
    "(or `make demo`; each run appends one row)"
)


def load_table(path: str | os.PathLike):
    """The results table as a DataFrame with typed columns and one row per configuration (latest wins)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TableError(f"results table {path} does not exist; {FILL_HINT}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    need = {"model", "method", "dsnot", "sparsity", "ppl"}
    if frame.empty or not need <= set(frame.columns):
        missing = sorted(need - set(frame.columns))
        what = "has no rows" if not missing or frame.empty else f"lacks the columns {missing}"
        raise TableError(f"results table {path} {what}; {FILL_HINT}")
    frame = frame.copy()
    frame["dsnot"] = frame["dsnot"].astype(str).str.lower().isin(["true", "1"])
    for col in ("preset", "nm", "output", "finished_at"):
        if col not in frame:
            frame[col] = None
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    frame["sparsity"] = frame["sparsity"].astype(float)
    frame["ppl"] = frame["ppl"].astype(float)
    frame["preset"] = [p if d else None for p, d in zip(frame["preset"], frame["dsnot"])]
    # True only for full SparseGPT (mask + OBS weight update). Tables written before the column
    # existed hold only full SparseGPT for plain `--method sparsegpt` runs, so blank means True.
    stated_false = frame.get("weight_update", pd.Series([None] * len(frame))).astype(str).str.lower().isin(["false", "0"])
    frame["weight_update"] = (frame["method"] == "sparsegpt") & ~frame["dsnot"] & ~stated_false.to_numpy()
    frame["config"] = [_config_of(o, path.parent) for o in frame["output"]]
    frame["grow"] = [c.get("grow") if c else None for c in frame["config"]]
    frame["prune"] = [c.get("prune") if c else None for c in frame["config"]]
    frame["knobs"] = [_other_knobs(c, p) for c, p in zip(frame["config"], frame["preset"])]
    keys = [c for c in ("model", "method", "dsnot", "preset", "weight_update", "sparsity", "nm", "nsamples", "seqlen",
                        "max_windows", "grow", "prune", "knobs", "seed") if c in frame]  # fmt: skip
    frame = frame.sort_values("finished_at", na_position="first", kind="stable")
    frame = frame.drop_duplicates([k for k in keys], keep="last").reset_index(drop=True)
    return frame


def _config_of(output, base: Path) -> dict | None:
    """The DSnoT config stored in a run's JSON (``output`` column), when the file is readable."""
    if not isinstance(output, str) or not output:
        return None
    for candidate in (Path(output), base.parent / output, base / Path(output).name):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8")).get("dsnot_config")
            except (OSError, ValueError):
                return None
    return None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _paper_layout(frame):
    """Rows for the paper-layout tables and figures, where SparseGPT without DSnoT is the full
    method (with its weight update) as in the paper; mask-only SparseGPT runs are left out."""
    return frame[~((frame["method"] == "sparsegpt") & ~frame["dsnot"] & ~frame["weight_update"])]


def _other_knobs(config: dict | None, preset_name) -> str:
    """DSnoT settings other than grow/prune where a run departs from its preset (T, eps, ...),
    e.g. ``"max_cycle_time=200"``; empty for runs without DSnoT or with the preset's settings."""
    if not config or not isinstance(preset_name, str):
        return ""
    from dsnot_lite.dsnot import preset_overrides

    changed = preset_overrides(config, preset_name)
    return ", ".join(f"{k}={v}" for k, v in sorted(changed.items()) if k not in ("grow", "prune"))


def is_preset_default(row) -> bool:
    """Runs of the method as its preset defines it (grow Eq. 2, prune Eq. 3, the preset's T,
    epsilon, ...), or without DSnoT."""
    return ((_missing(row["grow"]) or row["grow"] == "eq2") and (_missing(row["prune"]) or row["prune"] == "eq3")
            and not row.get("knobs"))  # fmt: skip


def _run_name(method: str, dsnot: bool, preset) -> str:
    if method == "dense":
        return "dense"
    return f"{method} + DSnoT ({preset})" if dsnot else method


def _fmt(v) -> str:
    """Our numbers: 2 decimals below 1000, else 3 significant digits (as the paper writes 4.80e3)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if abs(v) >= 1000:
        mantissa, exp = f"{v:.2e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{v:.2f}"


def _setting(frame) -> str:
    parts = []
    for col, name in (("nsamples", "calibration windows"), ("seqlen", "seqlen")):
        if col in frame and frame[col].notna().any():
            vals = sorted({int(v) for v in frame[col].dropna()})
            parts.append(f"{name} {', '.join(map(str, vals))}")
    if "windows" in frame and frame["windows"].notna().any():
        pairs = sorted({(int(w), int(t)) for w, t in zip(frame["windows"], frame.get("total_windows", frame["windows"]))
                        if w == w and t == t})  # fmt: skip
        parts.append("eval windows " + ", ".join(f"{w}" if w == t else f"first {w} of {t}" for w, t in pairs))
    return "; ".join(parts)


def main_table(frame, sparsity: float = 0.6) -> str:
    """Markdown: ours (per model) at ``sparsity`` unstructured, then the paper's Table 1 rows."""
    lines = [f"## WikiText-2 perplexity at {sparsity:.0%} unstructured sparsity (paper Table 1 layout)", ""]
    lines += ["### Ours (measured by `python -m dsnot_lite run`, from the results table)", ""]
    header = "| model | dense | " + " | ".join(f"{m} | w. DSnoT" for m in METHOD_ORDER) + " | setting |"
    lines += [header, "|" + "---|" * (3 + 2 * len(METHOD_ORDER)) ]
    frame = _paper_layout(frame)
    sel = frame[(frame["nm"].isna()) & frame.apply(is_preset_default, axis=1)]
    for model in sorted(sel["model"].unique()):
        m = sel[sel["model"] == model]
        dense = m[m["method"] == "dense"]["ppl"]
        at = m[(m["sparsity"] - sparsity).abs() < 1e-9]
        cells = [_fmt(float(dense.iloc[-1])) if len(dense) else "–"]
        for method in METHOD_ORDER:
            for ds in (False, True):
                q = at[(at["method"] == method) & (at["dsnot"] == ds)]
                if ds:
                    q = q[q["preset"].isin(["official"])] if (q["preset"] == "official").any() else q
                cells.append(_fmt(float(q["ppl"].iloc[-1])) if len(q) else "–")
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {_setting(m)} |")
    lines += ["", f"Note: {SPARSEGPT_NOTE}"]
    lines += ["", f"### Paper ({PAPER_SOURCE}; not measured here)", "",
              "| model | dense | " + " | ".join(f"{m} | w. DSnoT" for m in METHOD_ORDER) + " |",
              "|" + "---|" * (2 + 2 * len(METHOD_ORDER))]  # fmt: skip
    for model, vals in PAPER_TABLE1.items():
        cells = [vals["dense"]] + [vals[(m, d)] for m in METHOD_ORDER for d in (False, True)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main_figure(frame, sparsity: float = 0.6):
    """Grouped bars: ours (left) and the paper's LLaMA rows (right), without vs with DSnoT."""
    import numpy as np

    fig, axes = _new(1, 2, size=(12.0, 4.2))
    frame = _paper_layout(frame)
    sel = frame[(frame["nm"].isna()) & frame.apply(is_preset_default, axis=1)
                & ((frame["sparsity"] - sparsity).abs() < 1e-9)]  # fmt: skip
    models = sorted(sel["model"].unique())
    ax = axes[0, 0]
    x = np.arange(len(METHOD_ORDER))
    width = 0.8 / max(1, 2 * len(models))
    for i, model in enumerate(models):
        m = sel[sel["model"] == model]
        for j, ds in enumerate((False, True)):
            vals = []
            for method in METHOD_ORDER:
                q = m[(m["method"] == method) & (m["dsnot"] == ds)]
                if ds and (q["preset"] == "official").any():
                    q = q[q["preset"] == "official"]
                vals.append(float(q["ppl"].iloc[-1]) if len(q) else np.nan)
            pos = x + (2 * i + j - len(models) + 0.5) * width
            ax.bar(pos, vals, width, color=AFTER if ds else BEFORE, hatch="//" if i % 2 else None,
                   label=f"{model}: {'w. DSnoT' if ds else 'initial'}")  # fmt: skip
            for p, v in zip(pos, vals):
                if np.isfinite(v):
                    ax.text(p, v, _fmt(v), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, METHOD_ORDER)
    _log_axis(ax)
    _room_above_bars(ax)
    ax.set_xlabel("initial pruning method")
    ax.set_ylabel("WikiText-2 perplexity (log scale)")
    ax.set_title(f"Ours, {sparsity:.0%} unstructured ({_setting(sel) or 'no runs'})", fontsize=9)
    if models:
        ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, model in enumerate(("LLaMA-1 7B", "LLaMA-2 7B")):
        for j, ds in enumerate((False, True)):
            texts = [PAPER_TABLE1[model][(m, ds)] for m in METHOD_ORDER]
            vals = [float(t) for t in texts]
            pos = x + (2 * i + j - 1.5) * 0.2
            ax.bar(pos, vals, 0.2, color=AFTER if ds else BEFORE, hatch="//" if i else None,
                   label=f"{model}: {'w. DSnoT' if ds else 'initial'}")  # fmt: skip
            for p, v, t in zip(pos, vals, texts):
                ax.text(p, v, t, ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, METHOD_ORDER)
    _log_axis(ax)
    _room_above_bars(ax)
    ax.set_xlabel("initial pruning method")
    ax.set_ylabel("WikiText-2 perplexity (log scale)")
    ax.set_title("Paper, 60% unstructured (quoted, not measured here)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("Does DSnoT lower perplexity after pruning? (paper Table 1)")
    return fig


def sparsity_figure(frame):
    """Perplexity vs sparsity, without and with DSnoT: ours (left) and the paper's LLaMA-1 7B (right)."""
    fig, axes = _new(1, 2, size=(12.0, 4.2))
    ax = axes[0, 0]
    frame = _paper_layout(frame)
    sel = frame[(frame["nm"].isna()) & (frame["method"] != "dense") & frame.apply(is_preset_default, axis=1)]
    sel = sel[~sel["dsnot"] | (sel["preset"] == "official")]
    i = 0
    for model in sorted(sel["model"].unique()):
        for method in METHOD_ORDER:
            for ds in (False, True):
                q = sel[(sel["model"] == model) & (sel["method"] == method) & (sel["dsnot"] == ds)].sort_values("sparsity")
                if len(q) == 0:
                    continue
                ax.plot(100 * q["sparsity"], q["ppl"], marker="o", ls="-" if ds else "--",
                        color=PALETTE[(i // 2) % len(PALETTE)],
                        label=f"{model}: {_run_name(method, ds, 'official')}")  # fmt: skip
                i += 1
    _log_axis(ax)
    ax.set_xlabel("sparsity (% of weights pruned)")
    ax.set_ylabel("WikiText-2 perplexity (log scale)")
    ax.set_title(f"Ours ({_setting(sel) or 'no runs'})\ndashed: initial, solid: w. DSnoT", fontsize=9)
    if len(sel):
        ax.set_xticks(sorted({round(100 * v, 6) for v in sel["sparsity"]}))
    if i:
        ax.legend(fontsize=7)
    ax = axes[0, 1]
    xs = sorted(PAPER_SPARSITY_LLAMA1)
    for k, (ls, name) in enumerate((("--", "Wanda"), ("-", "Wanda + DSnoT"))):
        ys = [float(PAPER_SPARSITY_LLAMA1[s][k]) for s in xs]
        ax.plot([100 * s for s in xs], ys, marker="o", ls=ls, color=PALETTE[0], label=name)
        for s_, y in zip(xs, ys):
            ax.annotate(PAPER_SPARSITY_LLAMA1[s_][k], (100 * s_, y), textcoords="offset points",
                        xytext=(4, -12 if k else 6), fontsize=7)  # fmt: skip
    _log_axis(ax)
    ax.set_xlabel("sparsity (% of weights pruned)")
    ax.set_ylabel("WikiText-2 perplexity (log scale)")
    ax.set_title("Paper, LLaMA-1 7B (quoted, not measured here)", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle("Perplexity across sparsity levels")
    return fig


def nm_table(frame) -> str:
    """Markdown: N:M rows, ours and the paper's 2:4 numbers."""
    lines = ["## N:M semi-structured sparsity", "", "### Ours (from the results table)", "",
             "| model | N:M | method | initial | w. DSnoT (official) | w. DSnoT (paper preset) |", "|---|---|---|---|---|---|"]  # fmt: skip
    frame = _paper_layout(frame)
    sel = frame[frame["nm"].notna() & frame.apply(is_preset_default, axis=1)]
    for (model, nm, method), q in sel.groupby(["model", "nm", "method"], sort=True):
        cell = lambda ds, pre=None: _fmt(float(q[(q["dsnot"] == ds) & ((q["preset"] == pre) if pre else True)]["ppl"].iloc[-1])) if len(q[(q["dsnot"] == ds) & ((q["preset"] == pre) if pre else True)]) else "–"  # noqa: E731
        lines.append(f"| {model} | {nm} | {method} | {cell(False)} | {cell(True, 'official')} | {cell(True, 'paper')} |")
    if len(sel) == 0:
        lines.append("| (no N:M runs in the table yet: `python -m dsnot_lite run --method wanda --nm 2:4 [--dsnot]`) | | | | | |")
    lines += ["", f"Note: {SPARSEGPT_NOTE}"]
    lines += ["", f"### Paper, LLaMA-1 7B ({PAPER_SOURCE}; not measured here)", "", "| N:M | method | initial | w. DSnoT |", "|---|---|---|---|"]
    for (method, nm), (a, b) in PAPER_NM_LLAMA1.items():
        lines.append(f"| {nm} | {method} | {a} | {b} |")
    return "\n".join(lines) + "\n"


def preset_table(frame) -> str:
    """Markdown: official vs paper preset, same model/method/sparsity."""
    lines = ["## Presets: `official` (reference code) vs `paper` (as the paper describes)", "",
             "Ours only (the paper reports one number per setting). *initial* is the mask DSnoT starts from: "
             "for SparseGPT its saliency mask without the weight update, when the table has that run.", "",
             "| model | method | sparsity | initial | official | paper |", "|---|---|---|---|---|---|"]  # fmt: skip
    sel = frame[frame.apply(is_preset_default, axis=1) & (frame["method"] != "dense")]
    n = 0
    for (model, method, sp, nm), q in sel.groupby(["model", "method", "sparsity", sel["nm"].fillna("")], sort=True):
        vals = {}
        start = ~q["dsnot"]
        if (start & ~q["weight_update"]).any():  # SparseGPT: DSnoT's real starting point, not full SparseGPT
            start = start & ~q["weight_update"]
        for key, cond in (("initial", start), ("official", q["preset"] == "official"), ("paper", q["preset"] == "paper")):
            hit = q[cond]
            vals[key] = _fmt(float(hit["ppl"].iloc[-1])) if len(hit) else "–"
        if vals["paper"] == "–" or vals["official"] == "–":
            continue
        n += 1
        lines.append(f"| {model} | {method} | {nm or f'{sp:.0%}'} | {vals['initial']} | {vals['official']} | {vals['paper']} |")
    if not n:
        lines.append("| (no setting with both presets yet: add `--preset paper` runs) | | | | | |")
    return "\n".join(lines) + "\n"


def criterion_figure(frame):
    """Paper Table 7: ours (runs with non-default grow/prune criteria in their JSON) and the paper's."""
    fig, axes = _new(1, 2, size=(11.0, 4.2))
    sel = frame[frame["dsnot"] & frame["grow"].notna() & (frame["method"] == "wanda") & frame["nm"].isna()
                & (frame["knobs"] == "")]  # fmt: skip
    sel = sel[(sel["sparsity"] - 0.6).abs() < 1e-9]
    if (sel["preset"] == "official").any():  # one preset per grid: the reference code's, if present
        sel = sel[sel["preset"] == "official"]
    if sel["model"].nunique():
        model = sel["model"].value_counts().index[0]
        sel = sel[sel["model"] == model]
    pairs = sel[["grow", "prune"]].drop_duplicates()
    if len(pairs) > 1:
        grid = sel.pivot_table(index="prune", columns="grow", values="ppl", aggfunc="last")
        # the paper's layout (grow: wanda, eq3, eq2; prune: eq2, eq3, wanda), magnitude last
        grid = grid.loc[[r for r in ("eq2", "eq3", "wanda", "magnitude") if r in grid.index],
                        [c for c in ("wanda", "eq3", "eq2", "magnitude") if c in grid.columns]]  # fmt: skip
        grid.index.name, grid.columns.name = "prune criterion", "grow criterion"
        criterion_heatmap(grid, axes[0, 0], title=f"Ours: {model}, Wanda 60%, {sel['preset'].iloc[0]} preset ({len(sel)} runs)",
                          label="WikiText-2 perplexity", fmt="{:.2f}")  # fmt: skip
    else:
        have = "no run" if not len(pairs) else (
            f"one grow/prune pair (prune {pairs.iloc[0]['prune']}, grow {pairs.iloc[0]['grow']}: "
            f"{_fmt(float(sel['ppl'].iloc[-1]))})")
        axes[0, 0].text(0.5, 0.5, f"This table has {have}\nfor Wanda 60% + DSnoT: no grid to draw.\n\n"
                        "Notebook 03 draws the grid on one layer;\nwhole-model runs with other criteria:\n"
                        "explore.ModelLab(...).run(..., config=DSnoTConfig(grow=..., prune=...))",
                        ha="center", va="center", fontsize=9, transform=axes[0, 0].transAxes)  # fmt: skip
        axes[0, 0].set_axis_off()
        axes[0, 0].set_title("Ours")
    criterion_heatmap(paper_table7_frame(), axes[0, 1], title="Paper Table 7, LLaMA-7B (quoted, not measured here)",
                      label="WikiText-2 perplexity", fmt="{:.2f}")  # fmt: skip
    fig.suptitle("Grow x prune criteria (paper Table 7)")
    return fig


def layer_figure(frame):
    """Per-layer error before/after DSnoT for the latest Wanda + DSnoT run whose JSON has layer records.

    Runs with the official preset and the method's criteria are preferred.
    """
    sel = frame[frame["dsnot"] & (frame["method"] == "wanda") & frame["output"].notna()]
    rank = [(r["preset"] == "official") + is_preset_default(r) for _, r in sel.iterrows()]
    sel = sel.assign(_rank=rank).sort_values("_rank", kind="stable")
    for index, row in sel.iloc[::-1].iterrows():
        data = _json_of(row["output"])
        if data and data.get("layers") and data["layers"][0].get("rel_output_error_before") is not None:
            from dsnot_lite.explore import layer_frame

            lf = layer_frame(data)
            fig, axes = _new(3, 1, size=(11.0, 10.0))
            layer_errors(lf, axes[0, 0])
            layer_error_change(lf, axes[1, 0])
            flips_per_layer(lf, axes[2, 0])
            fig.suptitle(f"Ours: {row['model']}, {_run_name('wanda', True, row['preset'])} at "
                         f"{row['nm'] or format(row['sparsity'], '.0%')}\n{_setting(frame.loc[[index]])}")  # fmt: skip
            return fig
    return None


def _json_of(output) -> dict | None:
    p = Path(output)
    if p.is_file():
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None


def paper_figures(table: str | os.PathLike = "results/results.csv", out_dir: str | os.PathLike = "figures") -> list[Path]:
    """Write the paper-style figures and tables made from the results table; returns the paths.

    Raises ``TableError`` (with the command that fills it) when the table is missing or empty.
    """
    frame = load_table(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        save_text(main_table(frame), out / "table1_ppl_60.md"),
        save_figure(main_figure(frame), out / "fig_table1_ppl_60.png"),
        save_figure(sparsity_figure(frame), out / "fig_sparsity_sweep.png"),
        save_text(nm_table(frame), out / "table2_nm.md"),
        save_text(preset_table(frame), out / "table_presets.md"),
        save_figure(criterion_figure(frame), out / "fig_table7_criteria.png"),
    ]
    lf = layer_figure(frame)
    if lf is not None:
        written.append(save_figure(lf, out / "fig_layer_errors.png"))
    index = ["# Generated figures and tables", "",
             f"Made by `python -m dsnot_lite figures --table {Path(table).as_posix()}` from {len(frame)} "
             "configurations of the results table. Every number labelled *ours* comes from that table; "
             f"numbers labelled *paper* are quoted from {PAPER_SOURCE} (LLaMA/OPT models, not run here).", ""]  # fmt: skip
    index += [f"- `{p.name}`" for p in written]
    written.append(save_text("\n".join(index) + "\n", out / "INDEX.md"))
    return written


def register_cli(subparsers) -> None:
    """``python -m dsnot_lite figures`` (picked up by ``dsnot_lite.cli``)."""
    p = subparsers.add_parser("figures", help="paper-style figures and tables from the results table")
    p.add_argument("--table", default="results/results.csv", help="results table CSV, filled by `run` (default: %(default)s)")
    p.add_argument("--out", default="figures", help="folder for the PNG figures and Markdown tables (default: %(default)s)")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    from dsnot_lite.cli import UsageError

    try:
        paths = paper_figures(args.table, args.out)
    except TableError as exc:
        raise UsageError(str(exc)) from None
    for path in paths:
        print(path)
    return 0
