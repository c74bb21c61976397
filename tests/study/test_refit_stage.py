"""The study's refit stage: its runs, their order, and its report section and figures, built from
stored runs (fake records here, never reported as measurements: the real runs take hours)."""

from __future__ import annotations

from dsnot_lite.runs import schema
from dsnot_lite.study import refinement_report
from dsnot_lite.study.design import REFIT_PIPELINES, REFIT_RUN_ORDER
from dsnot_lite.study.refinement import Study


def _layers(error: float = 0.1) -> list[dict]:
    names = ("self_attn.q_proj", "mlp.down_proj")
    return [{"name": f"model.layers.{b}.{n}", "shape": [4, 4], "sparsity": 0.6, "refined_by": [], "swaps": 0, "flips": 0,
             "stop_reasons": {}, "error_initial": 0.3, "error_before_refit": 0.2, "error_final": error,
             "mean_share_initial": 0.1, "mean_share_final": 0.1} for b in range(2) for n in names]  # fmt: skip


def _store(study: Study, spec, nll: list[float], error: float = 0.1) -> None:
    """A stored run record for ``spec`` (test data)."""
    import math

    record = {"name": spec.name(), "label": spec.label(), "key": spec.key(), **spec.result_fields(),
              "ppl": math.exp(sum(nll) / len(nll)), "windows": len(nll), "total_windows": 10, "window_nll": nll,
              "seconds": {"statistics": 2.0, "prune": 1.0, "refit": 3.0}, "peak_memory_mb": 900.0, "layers": _layers(error),
              "finished_at": "2000-01-01T00:00:00+00:00"}  # fmt: skip
    schema.save_result(record, study.cache.path(spec), study.cache.table)


def test_runs_come_in_the_order_the_goal_needs_and_match_the_other_stages(tmp_path):
    study = Study(folder=tmp_path / "s")
    specs = study.specs("refit")
    labels = list(specs)
    # the reference and the pipeline best at 60% first, at every level: two runs give a level's goal check
    assert labels[:4] == ["sparsegpt (full) | 0.6 | seed 0", "wanda + exact + refit | 0.6 | seed 0",
                          "sparsegpt (full) | 0.7 | seed 0", "wanda + exact + refit | 0.7 | seed 0"]  # fmt: skip
    assert labels[10:15] == ["sparsegpt mask + exact + refit | 0.6 | seed 0", "wanda + refit | 0.6 | seed 0",
                             "sparsegpt + refit | 0.6 | seed 0", "sparsegpt + refit (damping 0.1) | 0.6 | seed 0",
                             "sparsegpt + refit (dense target, damping 0.1) | 0.6 | seed 0"]  # fmt: skip
    assert specs["sparsegpt + refit (dense target, damping 0.1) | 0.6 | seed 0"].refit_target == "dense"
    assert {specs[f"{p} | 2:4 | seed 1"].refit_damping for p in REFIT_PIPELINES if "damping" in p} == {0.1}
    assert sorted(REFIT_RUN_ORDER) == sorted(REFIT_PIPELINES)
    levels = list(dict.fromkeys(label.split(" | ")[1] for label in labels if " | " in label and "full" not in label))
    assert levels == ["0.6", "0.7", "2:4", "0.5", "0.8"]
    seeds = [label.split(" | ")[2] for label in labels if label.count(" | ") == 2]  # the 64-window runs
    assert seeds == sorted(seeds) and seeds[: 5 * len(levels)] == ["seed 0"] * 5 * len(levels)  # seed 0 at every level first
    assert labels.index("dense") < labels.index("sparsegpt (full) | 0.6 | seed 0 | full test set")
    # on the full test set, the goal-check pair at every seed before the other two pipelines
    full = [label.split(" | ")[:3] for label in labels if label.endswith("full test set") and label.count(" | ") == 3]
    assert [p for p, _, _ in full[:12]] == ["sparsegpt (full)", "wanda + exact + refit"] * 6
    assert [s for _, _, s in full[:12:4]] == ["seed 0", "seed 1", "seed 2"] and len(full) == 42
    assert {s.seed for s in specs.values() if s.method != "dense"} == {0, 1, 2}
    assert {s.max_windows for s in specs.values()} == {64, None}
    assert all(s.refit for label, s in specs.items() if "refit" in label.split(" | ")[0])
    assert specs["sparsegpt mask + exact + refit | 2:4 | seed 1"].nm == (2, 4)
    # full SparseGPT on the full test set at 60% is the headline's run: stored once, found by both stages
    headline = study.specs("headline")
    assert specs["sparsegpt (full) | 0.6 | seed 2 | full test set"].key() == headline["sparsegpt | seed 2"].key()
    gemma = Study("gemma3-270m", folder=tmp_path / "g").specs("refit")
    assert {label.split(" | ")[1] for label in gemma if " | " in label} == {"0.6", "0.7", "2:4"}
    assert {s.seed for s in gemma.values()} == {0} and all(s.max_windows == 64 for s in gemma.values())


def test_the_section_says_where_the_goal_is_met_and_where_not(tmp_path):
    study = Study(folder=tmp_path / "s")
    specs = study.specs("refit")
    for label, spec in specs.items():
        pipeline, level = label.split(" | ")[:2] if " | " in label else (label, "")
        if level not in ("0.6", "0.7") or label.endswith("full test set"):
            continue
        seed = spec.seed
        base = {
            "sparsegpt (full)": 5.0,
            "wanda + refit": 5.2,
            "wanda + exact + refit": 4.8,
            "sparsegpt mask + exact + refit": 4.9,
            "sparsegpt + refit": 4.95,
            "sparsegpt + refit (damping 0.1)": 4.96,
            "sparsegpt + refit (dense target, damping 0.1)": 4.97,
        }
        better = base[pipeline] + (0.3 if level == "0.7" and seed == 2 and pipeline != "sparsegpt (full)" else 0.0)
        _store(study, spec, [better + 0.01 * w for w in range(8)])
    paths = refinement_report.write_report(study, planned=("refit",))
    readme = (tmp_path / "s" / "README.md").read_text()
    assert {p.name for p in paths} >= {"fig_refit.png", "fig_refit_errors.png"}
    assert (
        "- 60%: **yes**; best pipeline wanda + exact + refit: -18.1% [-18.1, -18.1] (seeds 0, 1, 2: -18.1, -18.1, -18.1)"
        in readme
    )
    assert "- 70%: **no**; best pipeline" in readme and "+10.5" in readme  # seed 2 disagrees
    assert "| 60% | wanda + exact + refit | 125.84 | 125.84 | 125.84 | 125.84 | -18.1% [-18.1, -18.1]" in readme
    assert "| 6 | 3 | 900 |" in readme  # pruning seconds (statistics + prune + refit), refit seconds, peak memory
    assert "### On the full test set" not in readme and "On the full test set:" not in readme  # none stored yet
    # one seed on the full test set: the verdict waits for the others
    for pipeline, nll in (("sparsegpt (full)", 5.0), ("wanda + exact + refit", 4.8)):
        _store(study, specs[f"{pipeline} | 0.6 | seed 0 | full test set"], [nll + 0.01 * w for w in range(8)])
    refinement_report.write_report(study, planned=("refit",))
    readme = (tmp_path / "s" / "README.md").read_text()
    assert "On the full test set:\n\n- 60%: not decided yet (1 of 3 seeds stored); best pipeline wanda + exact + refit" in readme


def test_the_section_shows_where_a_lower_layer_error_comes_with_a_higher_perplexity(tmp_path):
    study = Study(folder=tmp_path / "s")
    specs = study.specs("refit")
    # seed 0 at 60%: (mean nll, mean layer error); wanda + refit has the lower error and the higher perplexity
    runs = {"sparsegpt (full)": (5.0, 0.10), "wanda + refit": (5.2, 0.08), "wanda + exact + refit": (4.8, 0.07)}
    for pipeline, (nll, error) in runs.items():
        _store(study, specs[f"{pipeline} | 0.6 | seed 0"], [nll] * 8, error=error)
    refinement_report.write_report(study, planned=("refit",))
    readme = (tmp_path / "s" / "README.md").read_text()
    assert "| 60% | 0.1000 / 148.41 | 0.0800 / 181.27 | 0.0700 / 121.51 | – | – |" in readme
    assert "order these runs differently: 60%, wanda + refit (lower error, higher perplexity)." in readme
    # the same runs without the inversion: the report says so, it does not claim one
    _store(study, specs["wanda + refit | 0.6 | seed 0"], [5.2] * 8, error=0.12)
    refinement_report.write_report(study, planned=("refit",))
    readme = (tmp_path / "s" / "README.md").read_text()
    assert "order these runs differently" not in readme and "order every run shown the same way" in readme
