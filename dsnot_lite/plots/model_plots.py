"""Plots of whole-model runs: per-layer errors and flips (``model_lab.layer_frame``), perplexity bars."""

from __future__ import annotations

from dsnot_lite.plots.style import AFTER, BEFORE, OKABE_ITO, PALETTE, log_axis, own


def layer_errors(frame, ax=None, title: str = ""):
    """Relative output error ||ΔW X||/||W X|| of every linear layer, initial mask and after refinement."""
    fig, ax = own(ax, size=(10.0, 3.8))
    idx = range(len(frame))
    ax.plot(idx, frame["error_initial"], color=BEFORE, marker="o", ms=3, lw=1, label="initial mask")
    ax.plot(idx, frame["error_final"], color=AFTER, marker="s", ms=3, lw=1, label="after refinement")
    ax.set_xlabel("linear layer, in network order (block.type)")
    step = max(1, len(frame) // 28)
    ax.set_xticks(list(idx)[::step], [f"{b}.{t.split('.')[-1]}" for b, t in zip(frame["block"], frame["type"])][::step],
                  rotation=70, fontsize=7)  # fmt: skip
    ax.set_ylabel("relative output error (fraction)")
    ax.set_title(title or "Per-layer reconstruction error on the calibration inputs")
    ax.legend(fontsize=8)
    return fig


def layer_error_change(frame, ax=None, title: str = ""):
    """Relative change of each layer's output error made by refinement, in % (negative = it helped)."""
    fig, ax = own(ax, size=(10.0, 3.4))
    types = list(dict.fromkeys(frame["type"]))
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}
    ax.bar(range(len(frame)), frame["error_change_%"], color=[colors[t] for t in frame["type"]])
    for t in types:
        ax.bar([0], [0], color=colors[t], label=t)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("linear layer, in network order")
    ax.set_ylabel("output error change (%)")
    ax.set_title(title or "Change of each layer's output error by refinement (below 0: lower error)")
    _legend_outside(ax)
    return fig


def _legend_outside(ax) -> None:
    """The layer-type legend to the right of the axes, where it cannot cover a bar."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0, title="layer type",
              title_fontsize=7)  # fmt: skip


def flips_per_layer(frame, ax=None, title: str = ""):
    """Fraction of each layer's weights whose mask entry refinement flipped."""
    fig, ax = own(ax, size=(10.0, 3.4))
    types = list(dict.fromkeys(frame["type"]))
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}
    ax.bar(range(len(frame)), 100 * frame["fraction_flipped"], color=[colors[t] for t in frame["type"]])
    for t in types:
        ax.bar([0], [0], color=colors[t], label=t)
    ax.set_xlabel("linear layer, in network order")
    ax.set_ylabel("mask entries flipped (% of weights)")
    ax.set_title(title or "How much refinement changed each layer's mask")
    _legend_outside(ax)
    return fig


def ppl_bars(frame, ax=None, title: str = "", label_col: str = "run", value_col: str = "ppl", logy: bool = False):
    """Horizontal bars of perplexity per run (value written at the end of each bar).

    With ``logy`` the axis is logarithmic and every bar starts at perplexity 1 (a perfect model), so
    a bar's length is its mean token NLL and bars compare honestly; on a linear axis they start at 0.
    """
    fig, ax = own(ax, size=(7.0, 0.5 + 0.45 * len(frame)))
    labels = list(frame[label_col])
    values = [float(v) for v in frame[value_col]]
    colors = [AFTER if " + " in lab else (OKABE_ITO["black"] if lab == "dense" else BEFORE) for lab in labels]
    start = 1.0 if logy else 0.0
    ax.barh(range(len(values)), [v - start for v in values], left=start, color=colors)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    if logy:
        log_axis(ax, "x")
        ax.set_xlim(start, max(values) * 3)  # room for the value labels
    ax.set_xlabel("WikiText-2 perplexity (lower is better)" + (", log scale from 1" if logy else ""))
    ax.set_title(title or "Perplexity")
    return fig
