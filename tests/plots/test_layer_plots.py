"""study.style and study.layer_plots: plots carry the data they are given, PNGs are reproducible."""

from __future__ import annotations

import os
import re
import zlib

import pytest
from _paths import SPEC

from dsnot_lite.plots import layer_plots
from dsnot_lite.plots.style import save_figure
from dsnot_lite.study import paper
from dsnot_lite.tutorial import layer_lab
from dsnot_lite.tutorial.layers import synthetic_layer


@pytest.fixture(scope="module")
def run():
    layer = synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1)
    return layer, layer_lab.run_layer(layer, T=20)


def png_text_chunks(data: bytes) -> dict[str, bytes]:
    """tEXt/zTXt/iTXt chunks of a PNG (the metadata a reproducible file must not vary in)."""
    chunks, pos = {}, 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("ascii")
        body = data[pos + 8 : pos + 8 + length]
        if kind in ("tEXt", "zTXt", "iTXt"):
            key, _, value = body.partition(b"\0")
            chunks[key.decode("latin-1")] = zlib.decompress(value[1:]) if kind == "zTXt" else value
        pos += 12 + length
    return chunks


def test_save_figure_is_reproducible_and_atomic(run, tmp_path):
    layer, r = run
    path = tmp_path / "sub" / "dash.png"
    save_figure(layer_plots.layer_dashboard(r), path)
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Software" not in png_text_chunks(first)
    save_figure(layer_plots.layer_dashboard(r), path)  # a fresh figure from the same data
    assert path.read_bytes() == first and path.stat().st_mtime_ns == stamp  # not even rewritten
    assert [p.name for p in path.parent.iterdir()] == ["dash.png"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # an ordinary file, not mkstemp's 0600
    save_figure(layer_plots.layer_dashboard(layer_lab.run_layer(layer, T=3)), path)
    assert path.read_bytes() != first


def test_convergence_plots_the_trace(run):
    _, r = run
    rows = layer_lab.rows_by_initial_error(r, 3)
    fig = layer_plots.convergence(r, rows, highlight=rows[0])
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if ln.get_label().startswith("row")]
    assert [ln.get_label() for ln in lines] == [f"row {rows[0]} (picked)", f"row {rows[1]}", f"row {rows[2]}"]
    for ln, row in zip(lines, rows):
        assert list(ln.get_ydata()) == pytest.approx(r.trace.error[:, row].tolist())
    assert "E[Δ_r]" in ax.get_ylabel() and ax.get_xlabel() and ax.get_title()


def test_dashboard_and_panels_are_labelled(run):
    layer, r = run
    fig = layer_plots.layer_dashboard(r, row=5)
    assert len([a for a in fig.axes if a.get_title()]) == 4
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    assert f"flips {r.summary['flips']}" in fig._suptitle.get_text()
    hist = layer_plots.flip_histogram(r).axes[0]
    assert sum(p.get_height() for p in hist.patches) == 32  # one count per row
    bars = layer_plots.stop_reasons(r).axes[0].patches
    assert sum(b.get_height() for b in bars) == 32
    fm = layer_plots.flip_map(r, outliers=layer.outlier_channels).axes[0]
    img = fm.images[0].get_array()
    assert int((img != 0).sum()) == r.summary["flips"]  # 32 rows < 64: every row is shown
    bars = layer_plots.channel_statistics(layer).axes[0].patches
    heights = [b.get_height() for b in bars[: layer.weight.shape[1]]]
    assert heights == pytest.approx(layer.stats.mean.abs().tolist())  # one bar per input channel
    assert len(bars) == layer.weight.shape[1] + len(layer.outlier_channels)  # outliers redrawn in colour


def test_exact_runs_plot_their_true_error(run):
    layer, _ = run
    r = layer_lab.run_layer(layer, refiner="exact", T=20)
    rows = layer_lab.rows_by_initial_error(r, 2)
    ax = layer_plots.convergence(r, rows).axes[0]
    for line, row in zip(ax.lines, rows):
        trace = r.result.trace[:, row]
        assert list(line.get_ydata()) == pytest.approx((trace / trace[0]).tolist())
    assert "never rises" in ax.get_title()
    assert "exact (T=20" in layer_plots.layer_dashboard(r)._suptitle.get_text()


def test_criterion_heatmap_writes_every_cell(run):
    layer, _ = run
    grid = layer_lab.criterion_grid(layer, "flips", T=5)
    ax = layer_plots.criterion_heatmap(grid, title="t", label="flips").axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16 and texts[0] == f"{grid.iloc[0, 0]:.4g}"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(grid.columns)


def test_paper_numbers_are_the_specs():
    """Every quoted paper number appears verbatim in the spec (guards against typos)."""
    if not SPEC.is_file():
        pytest.skip("spec not found beside the project")
    text = SPEC.read_text(encoding="utf-8")
    for model, vals in paper.PAPER_TABLE1.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {model}"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        order = [vals[(m, d)] for m in ("magnitude", "sparsegpt", "wanda") for d in (False, True)]
        assert cells[1:] == order and f"dense {vals['dense']}" in cells[0]
    for s, (a, b) in paper.PAPER_SPARSITY_LLAMA1.items():
        if s == 0.6:  # Table 1's Wanda columns
            assert (a, b) == (
                paper.PAPER_TABLE1["LLaMA-1 7B"][("wanda", False)],
                paper.PAPER_TABLE1["LLaMA-1 7B"][("wanda", True)],
            )
        else:
            assert f"{round(s * 100)}% {a}/{b}" in text
    for (method, _nm), (a, b) in paper.PAPER_NM_LLAMA1.items():
        assert re.search(rf"{method}\s+{re.escape(a)} -> {re.escape(b)}", text, re.IGNORECASE)
    assert "10.52 / 10.37 / 10.22" in text and "11.24 / 10.61 / 10.84" in text


def test_criterion_heatmap_goes_logarithmic_only_for_wide_ranges():
    import pandas as pd

    wide = pd.DataFrame([[10.0, 2000.0], [12.0, 11.0]], index=["eq2", "eq3"], columns=["wanda", "eq2"])
    fig = layer_plots.criterion_heatmap(wide, label="perplexity")
    assert "log colour scale" in fig.axes[-1].get_ylabel()
    fig = layer_plots.criterion_heatmap(wide.clip(upper=50.0), label="perplexity")
    assert fig.axes[-1].get_ylabel() == "perplexity"
