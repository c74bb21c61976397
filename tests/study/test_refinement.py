"""The refinement study: its runs per stage, the tuned variant, resuming, and the report built from
stored runs (fake records here: the study's real runs take hours)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsnot_lite.runs import schema
from dsnot_lite.study import refinement_report
from dsnot_lite.study.refinement import STAGES, Study


def _store(study: Study, spec, ppl: float, nll: float) -> None:
    """A stored run record for ``spec`` (test data, never reported as a measurement)."""
    windows = 4
    record = {"name": spec.name(), "label": spec.label(), "key": spec.key(), **spec.result_fields(), "ppl": ppl,
              "windows": windows, "total_windows": 10, "window_nll": [nll] * windows, "seconds": {"refine": 1.0},
              "layers": [], "finished_at": "2000-01-01T00:00:00+00:00"}  # fmt: skip
    schema.save_result(record, study.cache.path(spec), study.cache.table)


def test_every_stage_has_distinct_runs_and_the_grid_covers_every_start_and_level(tmp_path):
    study = Study(folder=tmp_path / "s")
    keys = {stage: {spec.key() for spec in study.specs(stage).values()} for stage in STAGES}
    assert all(len(keys[s]) == len(study.specs(s)) for s in STAGES)
    grid = study.specs("grid")
    assert {label.split(" | ")[1] for label in grid if " | " in label} == {"0.5", "0.6", "0.7", "0.8", "2:4"}
    assert {label.split(" + ")[0] for label in grid if " + " in label} == {"magnitude", "wanda", "sparsegpt"}
    assert all(not s.weight_update for label, s in grid.items() if label.startswith("sparsegpt + none"))  # mask only
    assert grid["sparsegpt (full) | 0.6"].full_sparsegpt
    headline = study.specs("headline")
    assert all(s.max_windows is None for s in headline.values())  # the full test set
    assert {s.seed for s in headline.values() if s.method != "dense"} == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown study stage"):
        study.specs("nope")


def test_the_tuned_variant_is_the_best_on_validation_and_joins_the_headline(tmp_path):
    study = Study(folder=tmp_path / "refinement-smollm2-135m")
    assert study.tuned_variant() is None and not any("tuned" in label for label in study.specs("headline"))
    tune = study.tune_specs()
    for i, (name, spec) in enumerate(tune.items()):
        _store(study, spec, ppl=100.0 + i if name != "paper" else 50.0, nll=1.0)
    assert study.tuned_variant() == "paper"
    tuned = [s for label, s in study.specs("headline").items() if "tuned" in label]
    assert len(tuned) == 3 and all(s.preset == "paper" and s.refiner == "dsnot" for s in tuned)
    # another model without its own tune stage uses this one's choice
    other = Study("gemma3-270m", folder=tmp_path / "refinement-gemma3-270m")
    other_tuned = [s for label, s in other.specs("headline").items() if "tuned" in label]
    assert other_tuned and all(s.preset == "paper" and s.max_windows == 64 for s in other_tuned)


def test_the_report_is_built_from_whatever_is_stored(tmp_path):
    study = Study(folder=tmp_path / "s")
    for name, spec in study.tune_specs().items():
        _store(study, spec, ppl=140.0 if name == "none" else 150.0, nll=5.0 if name == "none" else 5.1)
    head = study.specs("headline")
    for label, spec in head.items():
        better = "exact" in label
        _store(study, spec, ppl=120.0 if better else 160.0, nll=(4.8 if better else 5.0) + 0.001 * spec.seed)
    paths = refinement_report.write_report(study)
    readme = (tmp_path / "s" / "README.md").read_text()
    assert {p.name for p in paths} >= {"README.md", "results.csv", "fig_headline.png"}
    assert "| wanda + exact | 120.00 | 120.00 | 120.00 | 120.00 | -18.1% [-18.1, -18.1]" in readme
    assert "wanda + exact vs wanda: -18.1%" in readme and "B better" in readme
    assert f"tune {len(study.tune_specs())}/{len(study.tune_specs())}" in readme and "grid 0/" in readme
    assert "(no grid run stored yet)" in readme
    shared = sum(spec.key() in {h.key() for h in head.values()} for spec in study.specs("refit").values())  # also refit runs
    assert len((tmp_path / "s" / "results.csv").read_text().splitlines()) == 1 + len(study.tune_specs()) + len(head) + shared
    # the table names each run relative to itself, so a clone in another folder finds the runs
    outputs = schema.read_table(tmp_path / "s" / "results.csv")["output"]
    assert all(not Path(o).is_absolute() and (tmp_path / "s" / o).is_file() for o in outputs)


def test_paired_comparisons_only_pair_runs_of_the_same_seed(tmp_path):
    """With seeds still missing on one side, a comparison rests on the seeds both sides have, named."""
    study = Study(folder=tmp_path / "s")
    head = study.specs("headline")
    nll = {"wanda": 5.0, "wanda + exact": 4.8, "sparsegpt": 4.9}
    for label, spec in head.items():
        name, seed = label.split(" | ")[0], spec.seed
        if name in nll and (seed == 0 or (seed == 1 and name != "sparsegpt")):
            _store(study, spec, ppl=100.0, nll=nll[name] + (0.5 if seed == 1 else 0.0))
    refinement_report.write_report(study)
    readme = (tmp_path / "s" / "README.md").read_text()
    # exact vs sparsegpt: seed 0 only (-0.1 in log-ppl), never exact's seed 1 against sparsegpt's seed 0
    assert "wanda + exact vs sparsegpt: -9.5% [-9.5, -9.5] (seed 0: -9.5)" in readme
    assert "wanda + exact vs wanda: -18.1% [-18.1, -18.1] (seeds 0, 1: -18.1, -18.1)" in readme
    assert "| sparsegpt | 100.00 | – | – |" in readme


def test_the_figures_name_the_model_they_show():
    run = {"ppl": 100.0}
    fig = refinement_report._headline_figure({"wanda": [run], "wanda + exact": [run]}, "gemma3-270m")
    assert "gemma3-270m" in fig.axes[0].get_title()
    grid = {"magnitude + none | 0.6": run, "magnitude + exact | 0.6": run, "wanda + exact | 0.6": run,
            "sparsegpt (full) | 0.6": run}  # fmt: skip
    fig = refinement_report._grid_figure(grid, "gemma3-270m")
    assert "gemma3-270m" in fig.texts[0].get_text()
    colour = {ax.get_title(): {line.get_label(): line.get_color() for line in ax.lines} for ax in fig.axes}
    assert colour["start: magnitude"]["exact"] == colour["start: wanda"]["exact"]  # one colour per refiner
    assert "full SparseGPT" in colour["start: wanda"]  # the reference in every panel with runs
