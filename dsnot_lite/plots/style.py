"""Plot style and reproducible output shared by every figure of the study.

Every plotting function builds a ``matplotlib.figure.Figure`` (no pyplot, so nothing global is
left open) or draws into a given ``ax``, and returns it. Colours are the Okabe-Ito palette
(distinguishable with the common colour-vision deficiencies); heat maps use ``viridis`` or the
diverging ``PuOr``. ``save_figure`` writes PNGs byte for byte reproducibly (fixed dpi, no
"Software" or date metadata) through the one atomic writer, and leaves an unchanged file alone,
so re-running does not churn ``figures/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from dsnot_lite.runs.io import atomic_write_bytes

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
PALETTE = [
    OKABE_ITO[k] for k in ("blue", "orange", "bluish green", "vermillion", "reddish purple", "sky blue", "black", "yellow")
]
BEFORE, AFTER = OKABE_ITO["orange"], OKABE_ITO["blue"]
DPI = 110
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "PuOr"
STOP_LABELS = {"running": "still running", "threshold": "|E[Δ]| ≤ ε", "T_reached": "T reached",
               "sign_flip": "sign check", "no_candidates": "no candidates", "converged": "no swap lowers the error"}  # fmt: skip


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as reproducible PNG bytes (fixed dpi, no Software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG at ``path`` reproducibly (see module docstring); returns the path."""
    atomic_write_bytes(path, figure_png(fig, dpi), only_if_changed=True)
    return Path(path)


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Save a text file (Markdown table) atomically, untouched when unchanged."""
    atomic_write_bytes(path, text.encode("utf-8"), only_if_changed=True)
    return Path(path)


def log_axis(ax, axis: str = "y") -> None:
    """Log scale with plain numbers (20, 50, 100) instead of 2 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    target.set_major_formatter(plain)
    target.set_minor_locator(LogLocator(subs=(2, 5)))
    target.set_minor_formatter(plain)


def room_above_bars(ax, factor: float = 3.0) -> None:
    """Raise the top of a log axis so value labels written above the bars stay inside it."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * factor)


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0), **kw):
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def side_by_side(n: int, size: tuple[float, float] = (5.5, 4.2)):
    """A figure with ``n`` panels in a row: ``(fig, [ax, ...])`` for the plotters' ``ax=`` argument."""
    fig, axes = new_figure(1, n, size=(size[0] * n, size[1]))
    return fig, list(axes[0])


def own(ax, size=(6.4, 4.0)):
    """(fig, ax): the given axes, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig, axes = new_figure(size=size)
    return fig, axes[0, 0]
