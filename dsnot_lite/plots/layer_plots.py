"""Plots of one layer under refinement (a ``tutorial.layer_lab.LayerRun``, read by its fields) and of layer-level sweeps."""

from __future__ import annotations

import math

from dsnot_lite.plots.style import (
    AFTER,
    BEFORE,
    DIVERGING_CMAP,
    OKABE_ITO,
    PALETTE,
    SEQUENTIAL_CMAP,
    STOP_LABELS,
    log_axis,
    new_figure,
    own,
)  # fmt: skip


def _error_unit(run) -> str:
    return "output units × seqlen (official R1)" if run.config.statistics == "official" else "output units"


def convergence(run, rows, ax=None, highlight: int | None = None):
    """E[Delta_r] of the given rows after every DSnoT iteration (paper Fig. 3 style); for the exact
    refiner, each row's true squared error relative to its initial value."""
    fig, ax = own(ax)
    if run.trace is None:
        return _exact_convergence(run, rows, ax, highlight)
    err = run.trace.error.numpy()
    eps = run.config.eps
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


def _exact_convergence(run, rows, ax, highlight):
    """The exact refiner's true squared error per row, relative to the initial mask's, swap by swap."""
    trace = run.result.trace.numpy()
    for i, r in enumerate(rows):
        strong = highlight is None or r == highlight
        start = trace[0, r] if trace[0, r] > 0 else 1.0
        ax.plot(range(trace.shape[0]), trace[:, r] / start, color=PALETTE[i % len(PALETTE)], lw=2.2 if strong else 1.2,
                alpha=1.0 if strong else 0.6, label=f"row {r}")  # fmt: skip
    ax.set_xlabel("exact-refiner iteration t (swaps so far)")
    ax.set_ylabel("true squared error / initial (fraction)")
    ax.set_title("True error of a row, swap by swap (never rises)")
    ax.legend(fontsize=8, loc="best")
    return ax.figure


def flip_histogram(run, ax=None):
    """How many mask entries each row flipped (2 per swap)."""
    fig, ax = own(ax)
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
    """Heat map of mask changes: +1 weight pruned by the refiner, -1 weight grown back, 0 unchanged."""
    fig, ax = own(ax, size=(7.0, 4.0))
    change = run.initial_mask.int() - run.result.mask.int()  # +1: was pruned, now kept (grown)
    rows = list(rows) if rows is not None else list(range(min(max_rows, change.shape[0])))
    img = (-change[rows]).numpy()  # +1 newly pruned, -1 grown back
    im = ax.imshow(img, aspect="auto", cmap=DIVERGING_CMAP, vmin=-1, vmax=1, interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, ticks=[-1, 0, 1])
    cb.ax.set_yticklabels(["grown back", "unchanged", "newly pruned"])
    for c in outliers:
        ax.axvline(c, color=OKABE_ITO["black"], lw=0.6, ls=":")
    ax.set_xlabel("input channel k" + (" (dotted: outlier channels)" if len(outliers) else ""))
    ax.set_ylabel("output row r (first rows)" if rows == list(range(len(rows))) else "output row (index in list)")
    ax.set_title("Where refinement changed the mask")
    return fig


def stop_reasons(run_or_counts, ax=None):
    """Bar chart of why the rows stopped."""
    fig, ax = own(ax, size=(5.0, 3.2))
    counts = run_or_counts if isinstance(run_or_counts, dict) else run_or_counts.result.stop_counts
    names = [k for k in STOP_LABELS if k in counts]
    ax.bar([STOP_LABELS[k] for k in names], [counts[k] for k in names], color=PALETTE[: len(names)])
    ax.set_ylabel("rows (count)")
    ax.set_xlabel("stop reason")
    ax.set_title("Why rows stopped")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig


def output_error_scatter(run, ax=None, highlight: int | None = None):
    """True per-row output error ||(W - M.W) X_r|| before vs after refinement (below the diagonal = better)."""
    fig, ax = own(ax, size=(4.6, 4.0))
    b, a = run.output_error_before.numpy(), run.output_error_after.numpy()
    better = a < b
    ax.scatter(b[better], a[better], s=8, color=AFTER, label=f"lower after ({int(better.sum())} rows)")
    ax.scatter(b[~better], a[~better], s=8, color=BEFORE, marker="^", label=f"not lower ({int((~better).sum())} rows)")
    lo, hi = float(min(b.min(), a.min())), float(max(b.max(), a.max()))
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--")
    if highlight is not None:
        ax.scatter([b[highlight]], [a[highlight]], s=80, facecolors="none", edgecolors="black", label=f"row {highlight}")
    ax.set_xlabel("output error of the initial mask ||ΔW_r X|| (output units)")
    ax.set_ylabel("after refinement (output units)")
    ax.set_title("True output error per row")
    ax.legend(fontsize=8)
    return fig


def layer_dashboard(run, row: int | None = None, rows=None, fixed_layout: bool = False):
    """2 x 2 overview of one ``LayerRun``: convergence, output errors, flips per row, stop reasons.

    ``fixed_layout`` places the panels at fixed margins instead of the constrained layout, which
    costs about a third of the drawing time (the explorer widget redraws with it)."""
    if fixed_layout:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11.0, 7.4))
        margins = dict(left=0.075, right=0.955, bottom=0.13, top=0.87, hspace=0.45, wspace=0.22)
        axes = fig.subplots(2, 2, squeeze=False, gridspec_kw=margins)
    else:
        fig, axes = new_figure(2, 2, size=(11.0, 7.4))
    if rows is None:  # the rows with the largest initial |E[Delta_r]|
        before = run.expected_error_before.abs()
        rows = [int(i) for i in before.topk(min(4, before.numel())).indices]
    rows = list(rows)
    if row is not None and row not in rows:
        rows = [row, *rows[:3]]
    convergence(run, rows, axes[0, 0], highlight=row)
    output_error_scatter(run, axes[0, 1], highlight=row)
    flip_histogram(run, axes[1, 0])
    stop_reasons(run, axes[1, 1])
    s, p = run.summary, run.params
    fig.suptitle(
        f"{run.layer_name}: {p.method} {p.sparsity:.0%}{' ' + str(p.nm[0]) + ':' + str(p.nm[1]) if p.nm else ''} + "
        f"{_refiner_text(run)}\n"
        f"mean |E[Δ]| {s['mean_abs_error_before']:.3g} → {s['mean_abs_error_after']:.3g}; "
        f"relative output error {s['rel_output_error_before']:.4f} → {s['rel_output_error_after']:.4f}; "
        f"flips {s['flips']}; sparsity {s['sparsity_before']:.4f} → {s['sparsity_after']:.4f}",
        fontsize=10,
    )
    return fig


def _refiner_text(run) -> str:
    p, parts = run.params, []
    if "dsnot" in p.refiner:
        parts.append(f"DSnoT ({p.preset}, T={p.T}, ε={p.eps:g}, grow={p.grow}, prune={p.prune}, "
                     f"sign check={'on' if run.config.sign_check else 'off'})")  # fmt: skip
    if "exact" in p.refiner:
        parts.append(f"exact (T={p.T}, shortlist={p.shortlist or 'all'})")
    return " + ".join(parts)


def channel_statistics(layer, ax=None, variance: bool = True, grown=()):
    """|E[A_k]| per input channel (token mean), outlier channels marked; below it (``variance``, on a
    new figure) Var(A_k), the denominator of Eq. 2, with the ``grown`` channels (e.g. the ones DSnoT
    regrew most, ``layer_lab.grown_channels``) marked in green."""
    if ax is None and variance:
        fig, axes = new_figure(2, 1, size=(7.0, 5.6), sharex=True)
        ax, var_ax = axes[0, 0], axes[1, 0]
    else:
        (fig, ax), var_ax = own(ax, size=(7.0, 3.2)), None
    mean = layer.stats.mean.abs().numpy()
    ax.bar(range(mean.size), mean, width=1.0, color=PALETTE[0])
    for c in layer.outlier_channels:
        ax.bar([c], [mean[c]], width=1.0, color=OKABE_ITO["vermillion"])
    log_axis(ax)
    ax.set_xlabel("input channel k")
    ax.set_ylabel("|E[A_k]| (token mean, input units, log)")
    ax.set_title(f"Input channel means ({len(layer.outlier_channels)} outlier channels in vermillion)")
    if var_ax is not None:
        var = layer.stats.pooled_var.numpy()
        var_ax.bar(range(var.size), var, width=1.0, color=PALETTE[0])
        for c in layer.outlier_channels:
            var_ax.bar([c], [var[c]], width=1.0, color=OKABE_ITO["vermillion"])
        if len(grown):
            grown = [int(c) for c in grown]
            var_ax.scatter(grown, var[grown], marker="v", s=36, color=OKABE_ITO["bluish green"], edgecolors="black",
                           linewidths=0.5, zorder=3, label="most regrown by DSnoT")  # fmt: skip
            var_ax.annotate(f"channel {grown[0]}", (grown[0], var[grown[0]]), xytext=(6, 6), textcoords="offset points",
                            fontsize=8)  # fmt: skip
        positive = var[var > 0]
        if positive.size and positive.max() > 10 * positive.min():
            log_axis(var_ax)
        var_ax.axhline(float(sorted(var)[var.size // 2]), color="0.3", lw=0.8, ls="--", label="median Var")
        var_ax.set_xlabel("input channel k")
        var_ax.set_ylabel("Var(A_k) (pooled, input units²)")
        var_ax.set_title("Input channel variances (Eq. 2 divides by them)")
        var_ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("")
    return fig


def criterion_heatmap(frame, ax=None, title: str = "", label: str = "", fmt: str = "{:.4g}", cmap=SEQUENTIAL_CMAP):
    """Heat map of a (prune criterion x grow criterion) table, values written in the cells.

    Positive values spanning more than 10x get a logarithmic colour scale (the label says so).
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    fig, ax = own(ax, size=(5.6, 4.4))
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
    fig, ax = own(ax)
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
    fig, axes = new_figure(1, len(panels), size=(4.6 * len(panels), 3.8))
    for ax, (name, metrics) in zip(axes[0], panels.items()):
        sweep_plot(frame, x, metrics, ax, title=name, logx=logx, xlabel=xlabel)
        if len(metrics) == 1:
            ax.set_ylabel(next(iter(metrics.values())))
    if title:
        fig.suptitle(title)
    return fig
