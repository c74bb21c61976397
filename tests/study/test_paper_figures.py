"""study.paper_figures and ``python -m dsnot_lite figures``: tables and figures from a results table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dsnot_lite.cli import main
from dsnot_lite.core.dsnot import preset
from dsnot_lite.runs import schema
from dsnot_lite.runs.spec import RunSpec
from dsnot_lite.study import paper_figures

BASE = RunSpec(model="test-model", nsamples=4, seqlen=128, max_windows=4)


def fake_run(folder: Path, ppl: float, finished: str = "2000-01-01T00:00:00+00:00", **spec) -> dict:
    """A result record shaped like the runner's, from a real RunSpec (test data only; it is never
    reported as a measurement)."""
    s = BASE.replace(**spec)
    record = {
        "name": s.name(), "label": s.label(), "key": s.key(), **s.result_fields(), "ppl": ppl, "windows": 4,
        "total_windows": 10, "finished_at": finished, "seconds": {"total": 1.0}, "window_nll": [1.0] * 4,
        "layers": [{"name": "model.layers.0.self_attn.q_proj", "shape": [4, 4], "sparsity": 0.5, "refined_by": list(s.refiners),
                    "swaps": 1, "flips": 2, "stop_reasons": {}, "error_initial": 0.2, "error_final": 0.1,
                    "mean_share_initial": 0.1, "mean_share_final": 0.05}],
    }  # fmt: skip
    return schema.save_result(record, folder / f"{s.name()}-{finished[:4]}.json", folder / "results.csv") and record


def test_missing_and_empty_tables_are_one_line_errors(tmp_path, capsys):
    assert main(["figures", "--table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "python -m dsnot_lite study" in err and err.count("\n") == 1
    (tmp_path / "empty.csv").write_text("")
    assert main(["figures", "--table", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "f")]) == 2
    assert "has no rows" in capsys.readouterr().err
    (tmp_path / "header.csv").write_text("model,method,sparsity,ppl\nm,wanda,0.5,10.0\n")
    assert main(["figures", "--table", str(tmp_path / "header.csv"), "--out", str(tmp_path / "f")]) == 2
    assert "lacks the columns" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_figures_command_writes_reproducible_outputs(tmp_path, capsys):
    fake_run(tmp_path, 20.0, method="dense")
    for method, base in (("wanda", 30.0), ("magnitude", 300.0)):
        for s in (0.5, 0.6):
            fake_run(tmp_path, base * s, method=method, sparsity=s)
            fake_run(tmp_path, base * s - 1, method=method, sparsity=s, refiner="dsnot")
    fake_run(tmp_path, 16.5, method="wanda", sparsity=0.6, refiner="dsnot", preset="paper")
    fake_run(tmp_path, 15.5, method="wanda", sparsity=0.6, refiner="exact")
    fake_run(
        tmp_path, 17.5, method="wanda", sparsity=0.6, refiner="dsnot", dsnot=dataclasses.replace(preset("official"), grow="wanda")
    )
    fake_run(tmp_path, 25.0, method="wanda", nm=(2, 4))
    fake_run(tmp_path, 24.0, method="wanda", nm=(2, 4), refiner="dsnot")
    fake_run(tmp_path, 99.0, method="wanda", sparsity=0.6, seed=1)  # another seed: not in the seed-0 tables
    out = tmp_path / "figs"
    assert main(["figures", "--table", str(tmp_path / "results.csv"), "--out", str(out)]) == 0
    names = {Path(p).name for p in capsys.readouterr().out.split()}
    assert {"table1_ppl_60.md", "fig_table1_ppl_60.png", "fig_sparsity_sweep.png", "table2_nm.md",
            "table_presets.md", "fig_table7_criteria.png", "fig_layer_errors.png", "INDEX.md"} == names  # fmt: skip
    table1 = (out / "table1_ppl_60.md").read_text()
    assert "| test-model | 20.00 | 180.00 | 179.00 | – | – | – | – | 18.00 | 17.00 | 15.50 |" in table1
    assert "### Ours" in table1 and "### Paper" in table1 and "| LLaMA-1 7B | 5.68 | 5.6e2 | 66.70 |" in table1
    assert "99.00" not in table1
    assert "| test-model | 2:4 | wanda | 25.00 | 24.00 | – | – |" in (out / "table2_nm.md").read_text()
    assert "| test-model | wanda | 60% | 18.00 | 17.00 | 16.50 | 15.50 |" in (out / "table_presets.md").read_text()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["figures", "--table", str(tmp_path / "results.csv"), "--out", str(out)]) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before  # same bytes, files not even touched


def test_sparsegpt_full_and_mask_only_go_to_their_own_columns(tmp_path):
    """Paper-layout tables show full SparseGPT (as the note under them says); the refiners table
    compares the refiners with the mask they start from, SparseGPT's saliency mask without the update."""
    fake_run(tmp_path, 20.0, method="dense")
    fake_run(tmp_path, 40.0, method="sparsegpt", sparsity=0.6)
    fake_run(tmp_path, 55.0, method="sparsegpt", sparsity=0.6, weight_update=False)
    fake_run(tmp_path, 60.0, method="sparsegpt", sparsity=0.6, refiner="dsnot")
    fake_run(tmp_path, 50.0, method="sparsegpt", sparsity=0.6, refiner="dsnot", preset="paper")
    frame = paper_figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 5 and frame["weight_update"].sum() == 1
    assert "| test-model | 20.00 | – | – | – | 40.00 | 60.00 | – | – | – | – |" in paper_figures.main_table(frame)
    assert "| test-model | sparsegpt | 60% | 55.00 | 60.00 | 50.00 | – |" in paper_figures.preset_table(frame)


def test_runs_with_other_refiner_settings_stay_out_of_the_paper_tables(tmp_path):
    """A run with T = 200 is its own configuration: it neither replaces the preset's run in
    Table 1 nor enters the criteria grid."""
    fake_run(tmp_path, 18.0, method="wanda", sparsity=0.6)
    fake_run(tmp_path, 17.0, method="wanda", sparsity=0.6, refiner="dsnot")
    fake_run(tmp_path, 99.0, method="wanda", sparsity=0.6, refiner="dsnot", dsnot=dataclasses.replace(preset("official"), T=200))
    frame = paper_figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 3 and set(frame["knobs"]) == {"", "T=200"}
    assert "| 18.00 | 17.00 |" in paper_figures.main_table(frame) and "99.00" not in paper_figures.main_table(frame)
    assert "99.00" not in paper_figures.preset_table(frame)


def test_latest_row_wins(tmp_path):
    fake_run(tmp_path, 30.0, method="wanda", sparsity=0.6)
    fake_run(tmp_path, 29.0, finished="2001-01-01T00:00:00+00:00", method="wanda", sparsity=0.6)
    frame = paper_figures.load_table(tmp_path / "results.csv")
    assert len(frame) == 1 and frame.loc[0, "ppl"] == 29.0


def test_figures_is_a_subcommand_with_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["figures", "--help"])
    out = capsys.readouterr().out
    assert "--table" in out and "--out" in out


def test_criterion_figure_says_when_there_is_no_grid(tmp_path):
    fake_run(tmp_path, 17.0, method="wanda", sparsity=0.6, refiner="dsnot")
    fig = paper_figures.criterion_figure(paper_figures.load_table(tmp_path / "results.csv"))
    assert "no grow x prune grid" in " ".join(t.get_text() for t in fig.axes[0].texts)
    fake_run(
        tmp_path, 18.0, method="wanda", sparsity=0.6, refiner="dsnot", dsnot=dataclasses.replace(preset("official"), grow="wanda")
    )
    # the same pair once more, in a zero-shot run (another run, the same cell)
    fake_run(tmp_path, 17.0, method="wanda", sparsity=0.6, refiner="dsnot", tasks=("wikitext2_lastword",))
    fig = paper_figures.criterion_figure(paper_figures.load_table(tmp_path / "results.csv"))
    ours = fig.axes[0]
    assert "(2 grow x prune pairs)" in ours.get_title()
    cells = sorted(t.get_text() for t in ours.texts)
    assert "17.00" in cells and "18.00" in cells and "no grow" not in " ".join(cells)


def test_zero_shot_table_in_the_paper_table_6_layout(tmp_path):
    for refiner, acc in ((None, 0.30), ("dsnot", 0.25), ("exact", 0.35)):
        record = fake_run(tmp_path, 20.0, method="wanda", sparsity=0.6, refiner=refiner)
        record["zero_shot"] = {"wikitext2_lastword": {"acc": acc, "acc_stderr": 0.01}}
        schema.save_result(record, tmp_path / f"{record['name']}.json", tmp_path / "results.csv")
    table = paper_figures.zero_shot_table(paper_figures.load_table(tmp_path / "results.csv"))
    assert "| test-model | wanda + exact | 60% | 35.00 | 35.00 |" in table and "smoke task" in table
    assert paper_figures.zero_shot_table(paper_figures.load_table(tmp_path / "results.csv").assign(zero_shot=None)) is None
