"""figures.py: plots carry the data they are given, PNGs are reproducible, `figures` command."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest

from dsnot_lite import explore, figures
from dsnot_lite.cli import main
from dsnot_lite.runs.io import append_table, write_json

from _paths import SPEC


@pytest.fixture(scope="module")
def run():
    layer = explore.synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1)
    return layer, explore.run_layer(layer, T=20)


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
    figures.save_figure(figures.layer_dashboard(r), path)
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Software" not in png_text_chunks(first)
    figures.save_figure(figures.layer_dashboard(r), path)  # a fresh figure from the same data
    assert path.read_bytes() == first and path.stat().st_mtime_ns == stamp  # not even rewritten
    assert [p.name for p in path.parent.iterdir()] == ["dash.png"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644 or path.stat().st_mode & 0o044  # readable by others
    figures.save_figure(figures.layer_dashboard(explore.run_layer(layer, T=3)), path)
    assert path.read_bytes() != first


def test_convergence_plots_the_trace(run):
    _, r = run
    rows = explore.rows_by_initial_error(r, 3)
    fig = figures.convergence(r, rows, highlight=rows[0])
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if ln.get_label().startswith("row")]
    assert [ln.get_label() for ln in lines] == [f"row {rows[0]} (picked)", f"row {rows[1]}", f"row {rows[2]}"]
    for ln, row in zip(lines, rows):
        assert list(ln.get_ydata()) == pytest.approx(r.trace.error[:, row].tolist())
    assert "E[Δ_r]" in ax.get_ylabel() and ax.get_xlabel() and ax.get_title()


def test_dashboard_and_panels_are_labelled(run):
    layer, r = run
    fig = figures.layer_dashboard(r, row=5)
    assert len([a for a in fig.axes if a.get_title()]) == 4
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    assert f"flips {r.summary['flips']}" in fig._suptitle.get_text()
    hist = figures.flip_histogram(r).axes[0]
    assert sum(p.get_height() for p in hist.patches) == 32  # one count per row
    bars = figures.stop_reasons(r).axes[0].patches
    assert sum(b.get_height() for b in bars) == 32
    fm = figures.flip_map(r, outliers=layer.outlier_channels).axes[0]
    img = fm.images[0].get_array()
    assert int((img != 0).sum()) == r.summary["flips"]  # 32 rows < 64: every row is shown
    figures.channel_statistics(layer)


def test_criterion_heatmap_writes_every_cell(run):
    layer, _ = run
    grid = explore.criterion_grid(layer, "flips", T=5)
    ax = figures.criterion_heatmap(grid, title="t", label="flips").axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16 and texts[0] == f"{grid.iloc[0, 0]:.4g}"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(grid.columns)


def test_paper_numbers_are_the_specs():
    """Every quoted paper number appears verbatim in the spec (guards against typos)."""
    if not SPEC.is_file():
        pytest.skip("spec not found beside the project")
    text = SPEC.read_text(encoding="utf-8")
    for model, vals in figures.PAPER_TABLE1.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {model}"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        order = [vals[(m, d)] for m in ("magnitude", "sparsegpt", "wanda") for d in (False, True)]
        assert cells[1:] == order and f"dense {vals['dense']}" in cells[0]
    for s, (a, b) in figures.PAPER_SPARSITY_LLAMA1.items():
        if s == 0.6:  # Table 1's Wanda columns
            assert (a, b) == (figures.PAPER_TABLE1["LLaMA-1 7B"][("wanda", False)], figures.PAPER_TABLE1["LLaMA-1 7B"][("wanda", True)])
        else:
            assert f"{round(s * 100)}% {a}/{b}" in text
    for (method, nm), (a, b) in figures.PAPER_NM_LLAMA1.items():
        assert re.search(rf"{method}\s+{re.escape(a)} -> {re.escape(b)}", text, re.IGNORECASE)
    assert "10.52 / 10.37 / 10.22" in text and "11.24 / 10.61 / 10.84" in text


# -- `python -m dsnot_lite figures` -------------------------------------------------------------


def fake_run(tmp_path: Path, method: str, dsnot: bool, sparsity: float, ppl: float, preset="official", nm=None, grow=None,
             weight_update=None, knobs=None):
    """A result dict shaped like `run`'s (test data only; it is never reported as a measurement)."""
    result = {
        "model": "test-model", "method": method, "dsnot": dsnot, "preset": preset if dsnot else None,
        "sparsity": sparsity, "nm": nm, "ppl": ppl, "seqlen": 128, "windows": 4, "total_windows": 10,
        "max_windows": 4, "nsamples": 4, "calib_seqlen": 128, "seed": 0, "achieved_sparsity": sparsity,
        "finished_at": "2000-01-01T00:00:00+00:00", "seconds": {"total": 1.0},
        "dsnot_config": {"grow": grow or "eq2", "prune": "eq3"} if dsnot else None,
        "layers": [{"name": "model.layers.0.self_attn.q_proj", "shape": [4, 4], "sparsity": sparsity, "dsnot_applied": dsnot,
                    "swaps": 1, "flips": 2, "stop_reasons": {}, "rel_output_error_before": 0.2, "rel_output_error_after": 0.1}],
    }  # fmt: skip
    if weight_update is not None:
        result["weight_update"] = weight_update
    if knobs:
        result["dsnot_config"].update(knobs)
    name = f"{method}-{dsnot}-{preset}-{sparsity}-{nm}-{grow}-{weight_update}-{knobs}.json".replace(":", "_")
    result["output"] = str(tmp_path / name)
    write_json(result, tmp_path / name)
    append_table(result, tmp_path / "results.csv")


def test_figures_command_missing_and_empty_table(tmp_path, capsys):
    assert main(["figures", "--table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "python -m dsnot_lite run" in err and err.count("\n") == 1
    (tmp_path / "empty.csv").write_text("")
    assert main(["figures", "--table", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "f")]) == 2
    assert "has no rows" in capsys.readouterr().err
    (tmp_path / "header.csv").write_text("model,method,dsnot,sparsity,ppl\n")
    assert main(["figures", "--table", str(tmp_path / "header.csv"), "--out", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "f").exists()


def test_figures_command_writes_reproducible_outputs(tmp_path, capsys):
    fake_run(tmp_path, "dense", False, 0.0, 20.0)
    for method, base in (("wanda", 30.0), ("magnitude", 300.0)):
        for s in (0.5, 0.6):
            fake_run(tmp_path, method, False, s, base * s)
            fake_run(tmp_path, method, True, s, base * s - 1)
    fake_run(tmp_path, "wanda", True, 0.6, 16.5, preset="paper")
    fake_run(tmp_path, "wanda", True, 0.6, 17.5, grow="wanda")
    fake_run(tmp_path, "wanda", False, 0.5, 25.0, nm="2:4")
    fake_run(tmp_path, "wanda", True, 0.5, 24.0, nm="2:4")
    out = tmp_path / "figs"
    assert main(["figures", "--table", str(tmp_path / "results.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = {Path(p).name for p in printed}
    assert {"table1_ppl_60.md", "fig_table1_ppl_60.png", "fig_sparsity_sweep.png", "table2_nm.md",
            "table_presets.md", "fig_table7_criteria.png", "fig_layer_errors.png", "INDEX.md"} == names  # fmt: skip
    table1 = (out / "table1_ppl_60.md").read_text()
    assert "| test-model | 20.00 | 180.00 | 179.00 | – | – | 18.00 | 17.00 |" in table1
    assert "### Ours" in table1 and "### Paper" in table1 and "| LLaMA-1 7B | 5.68 | 5.6e2 | 66.70 |" in table1
    assert "| test-model | 2:4 | wanda | 25.00 | 24.00 | – |" in (out / "table2_nm.md").read_text()
    assert "| test-model | wanda | 60% | 18.00 | 17.00 | 16.50 |" in (out / "table_presets.md").read_text()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["figures", "--table", str(tmp_path / "results.csv"), "--out", str(out)]) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before  # same bytes, files not even touched


def test_sparsegpt_full_and_mask_only_go_to_their_own_columns(tmp_path):
    """Paper-layout tables show full SparseGPT (as the note under them says); the presets table
    compares DSnoT with the mask it starts from, SparseGPT's saliency mask without the update.
    A row without a weight_update value (tables written before the column) is full SparseGPT."""
    fake_run(tmp_path, "dense", False, 0.0, 20.0)
    fake_run(tmp_path, "sparsegpt", False, 0.6, 40.0)  # no weight_update column value: full
    fake_run(tmp_path, "sparsegpt", False, 0.6, 55.0, weight_update=False)  # mask only, written later
    fake_run(tmp_path, "sparsegpt", True, 0.6, 60.0)
    fake_run(tmp_path, "sparsegpt", True, 0.6, 50.0, preset="paper")
    frame = figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 5 and frame["weight_update"].sum() == 1
    assert "| test-model | 20.00 | – | – | 40.00 | 60.00 | – | – |" in figures.main_table(frame)
    assert "| test-model | sparsegpt | 60% | 55.00 | 60.00 | 50.00 |" in figures.preset_table(frame)


def test_runs_with_other_dsnot_settings_stay_out_of_the_paper_tables(tmp_path):
    """A later run with T = 200 is its own configuration: it neither replaces the preset's run
    in Table 1 nor enters the criteria grid."""
    fake_run(tmp_path, "wanda", False, 0.6, 18.0)
    fake_run(tmp_path, "wanda", True, 0.6, 17.0)
    fake_run(tmp_path, "wanda", True, 0.6, 99.0, knobs={"max_cycle_time": 200})
    frame = figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 3 and set(frame["knobs"]) == {"", "T=200"}
    assert "| 18.00 | 17.00 |" in figures.main_table(frame) and "99.00" not in figures.main_table(frame)
    assert "99.00" not in figures.preset_table(frame)


def test_latest_row_wins(tmp_path):
    fake_run(tmp_path, "wanda", False, 0.6, 30.0)
    import json

    row = json.loads(next(tmp_path.glob("wanda-*.json")).read_text())
    row["ppl"], row["finished_at"] = 29.0, "2001-01-01T00:00:00+00:00"
    append_table(row, tmp_path / "results.csv")
    frame = figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 1 and frame.loc[0, "ppl"] == 29.0


def test_figures_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["figures", "--help"])
    out = capsys.readouterr().out
    assert "--table" in out and "--out" in out and "results/results.csv" in out


def test_criterion_figure_says_when_there_is_no_grid(tmp_path):
    fake_run(tmp_path, "wanda", True, 0.6, 17.0)
    fig = figures.criterion_figure(figures.load_table(tmp_path / "results.csv"))
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "one grow/prune pair (prune eq3, grow eq2: 17.00)" in texts and "no grid to draw" in texts
    fake_run(tmp_path, "wanda", True, 0.6, 18.0, grow="wanda")
    fig = figures.criterion_figure(figures.load_table(tmp_path / "results.csv"))
    assert not fig.axes[0].texts or "no grid" not in " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "2 runs" in fig.axes[0].get_title()


def test_criterion_heatmap_goes_logarithmic_only_for_wide_ranges():
    import pandas as pd

    wide = pd.DataFrame([[10.0, 2000.0], [12.0, 11.0]], index=["eq2", "eq3"], columns=["wanda", "eq2"])
    fig = figures.criterion_heatmap(wide, label="perplexity")
    assert "log colour scale" in fig.axes[-1].get_ylabel()
    fig = figures.criterion_heatmap(wide.clip(upper=50.0), label="perplexity")
    assert fig.axes[-1].get_ylabel() == "perplexity"
