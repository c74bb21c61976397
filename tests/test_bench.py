"""The benchmark scripts' command lines (plain scripts under bench/, not part of the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_phases_default_configs_are_all_known():
    phases = _load("pipeline_phases")
    args = phases.parse_args([])
    assert args.configs == list(phases.CONFIGS)  # no label may contain the separator ","


def test_pipeline_phases_picks_configs_and_rejects_unknown_ones(capsys):
    phases = _load("pipeline_phases")
    assert phases.parse_args(["--configs", "wanda, wanda + exact (T = 10)"]).configs == ["wanda", "wanda + exact (T = 10)"]
    for bad in ("wanda,nope", "sparsegpt (full),wanda"):
        with pytest.raises(SystemExit):
            phases.parse_args(["--configs", bad])
        assert "--configs must start with wanda" in capsys.readouterr().err


def test_layer_costs_script_loads_with_its_parts():
    """bench/layer_costs.py imports its sweeps and outputs from the modules beside it."""
    costs = _load("layer_costs")
    row = {"section": "layer", "shape": "8x8", "method": "wanda", "median_s": 0.5, "ratio_to_wanda": 1.0, "measured": True}
    assert costs.SHAPES["quick"] and "| 8x8 | wanda | 0.500 | 1.00 |" in costs.write.__globals__["summary_table"]([row])


def test_refit_tolerance_refuses_bad_input_before_any_work(tmp_path):
    tolerance = _load("refit_tolerance")
    for argv, words in ((["--tolerances", "1e-3,fast"], "must be numbers"), (["--tolerances", "0"], "must be > 0"),
                        (["--layers", str(tmp_path)], "no stored layers")):  # fmt: skip
        with pytest.raises(SystemExit, match=words):
            tolerance.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refit_tolerance_runs_refuses_bad_input_before_any_run(tmp_path):
    runs = _load("refit_tolerance_runs")
    for argv, words in ((["--tolerance", "2"], "must be in"), (["--levels", "0.6,half"], "takes sparsities"),
                        (["--levels", "0.6,0.65"], "has no run"), (["--seeds", "one"], "takes integers")):  # fmt: skip
        with pytest.raises(SystemExit, match=words):
            runs.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refit_precision_refuses_bad_input_before_any_work(tmp_path):
    precision = _load("refit_precision")
    for argv, words in ((["--rounds", "0"], "must be >= 1"), (["--layers", str(tmp_path)], "no stored layers")):
        with pytest.raises(SystemExit, match=words):
            precision.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
