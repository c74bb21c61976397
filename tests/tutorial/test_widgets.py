"""study.widgets driven without a browser: set control values, check the result and the plot changed."""

from __future__ import annotations

import pytest
from _tinydir import tiny_model_dir

from dsnot_lite.runs.model_lab import ModelLab
from dsnot_lite.runs.spec import RunSpec
from dsnot_lite.tutorial import layer_lab, widgets
from dsnot_lite.tutorial.layers import synthetic_layer


@pytest.fixture(scope="module")
def layer():
    return synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1)


def convergence_lines(ex):
    return [ln for ln in ex.figure.axes[0].lines if ln.get_label().startswith("row")]


def test_layer_explorer_starts_on_the_worst_row(layer):
    ex = widgets.LayerExplorer(layer)
    assert ex.result.params == layer_lab.LayerParams()
    worst = layer_lab.rows_by_initial_error(ex.result, 1)[0]
    assert ex.controls["row"].value == worst and ex.controls["row"].max == 31
    assert convergence_lines(ex)[0].get_label() == f"row {worst} (picked)"
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{ex.result.summary['flips']} flips" in ex.status.value
    assert ex.widget.children[-1] is ex.image
    for name, control in ex.controls.items():  # every dropdown shows a selection (None would show blank)
        if hasattr(control, "index"):
            assert control.index is not None and control.label, name


def test_every_control_reaches_run_layer(layer):
    ex = widgets.LayerExplorer(layer)
    changes = {
        "sparsity": ("sparsity", 0.7),
        "T": ("T", 5),
        "eps": ("eps", 1.0),
        "grow": ("grow", "wanda"),
        "prune": ("prune", "magnitude"),
        "sign_check": ("sign_check", "on"),
        "preset": ("preset", "paper"),
        "method": ("method", "magnitude"),
    }
    expected = {"sign_check": True}
    for control, (field, value) in changes.items():
        before_png, before_run = ex.image.value, ex.result
        ex.controls[control].value = value
        assert getattr(ex.result.params, field) == pytest.approx(expected.get(control, value)), control
        assert ex.result is not before_run, control
        assert ex.image.value != before_png, control
    assert ex.result.config.sign_check is True and ex.result.config.statistics == "true"
    ex.controls["refiner"].value = "exact"
    assert ex.result.params.refiner == "exact" and ex.result.trace is None
    assert ex.result.summary["rel_output_error_after"] <= ex.result.summary["rel_output_error_before"]
    assert "never rises" in ex.figure.axes[0].get_title()  # the exact refiner's own convergence plot
    ex.controls["nm"].value = "2:4"
    assert ex.result.params.nm == (2, 4) and ex.result.params.sparsity == 0.5
    assert bool((ex.result.mask.reshape(32, -1, 4).sum(-1) == 2).all())


def test_T_slider_changes_the_plotted_curves(layer):
    ex = widgets.LayerExplorer(layer)
    full = [list(ln.get_ydata()) for ln in convergence_lines(ex)]
    ex.controls["T"].value = 3
    short = [list(ln.get_ydata()) for ln in convergence_lines(ex)]
    assert all(len(s) <= 4 for s in short) and any(len(f) > 4 for f in full)
    assert all(s == f[: len(s)] for s, f in zip(short, full))  # the first 3 iterations are the same
    assert f"T={3}" in ex.figure._suptitle.get_text()


def test_row_picker_only_redraws(layer):
    ex = widgets.LayerExplorer(layer)
    run, updates = ex.result, ex.updates
    hits = layer_lab.cache_info()["hits"]
    ex.controls["row"].value = 3
    assert ex.result is run and ex.updates == updates + 1  # same cached run, new drawing
    assert layer_lab.cache_info()["hits"] == hits + 1
    assert convergence_lines(ex)[0].get_label() == "row 3 (picked)"
    assert "row 3:" in ex.status.value


def test_going_back_is_served_from_the_cache(layer):
    ex = widgets.LayerExplorer(layer)
    first = ex.result
    ex.controls["T"].value = 9
    misses = layer_lab.cache_info()["misses"]
    ex.controls["T"].value = 50
    assert ex.result is first and layer_lab.cache_info()["misses"] == misses


def test_set_updates_once(layer):
    ex = widgets.LayerExplorer(layer)
    n = ex.updates
    ex.set(T=4, eps=0.5, grow="eq3")
    assert ex.updates == n + 1
    assert (ex.result.params.T, ex.result.params.eps, ex.result.params.grow) == (4, 0.5, "eq3")


def test_layer_sweeps_switches_axis_and_metric(layer):
    sw = widgets.layer_sweeps(layer, fast=True)
    assert list(sw.frame["T"]) == [0, 1, 2, 5, 10, 20, 50]
    assert set(sw.controls["axis"].options) >= {"T", "eps", "var_floor", "refiner", "grow x prune criteria"}
    png = sw.image.value
    sw.controls["axis"].value = "sparsity"
    assert list(sw.frame["sparsity"]) == [0.5, 0.6, 0.7, 0.8] and sw.image.value != png
    line = sw.figure.axes[0].lines[0]
    assert list(line.get_ydata()) == pytest.approx(list(sw.frame["rel_output_error_after"]))
    sw.controls["metric"].value = "flips"
    assert list(sw.figure.axes[0].lines[0].get_ydata()) == list(sw.frame["flips"])
    sw.controls["axis"].value = "grow x prune criteria"
    assert sw.frame.shape == (4, 4) and len(sw.figure.axes[0].texts) == 16
    assert sw.frame.loc["eq3", "eq2"] == layer_lab.run_layer(layer).summary["flips"]
    assert "<table" in sw.table.value


def test_lab_sweeps_on_a_tiny_model(tmp_path_factory):
    folder = str(tiny_model_dir(tmp_path_factory.mktemp("tiny")))
    lab = ModelLab(RunSpec(model=folder, nsamples=3, seqlen=32, max_windows=2, blocks=1), progress=False)
    sw = widgets.lab_sweeps(lab, sparsities=(0.5, 0.6))
    assert list(sw.frame["sparsity"]) == [0.5, 0.6] and lab.computed == 4
    assert list(sw.figure.axes[0].lines[0].get_ydata()) == pytest.approx(list(sw.frame["ppl_refined"]))
    sw.controls["axis"].value = "preset"
    assert lab.computed == 5  # wanda and + DSnoT official at 60% were already run; + paper is new
    assert list(sw.frame["preset"]) == ["official", "paper"]
    exact = widgets.lab_sweeps(lab, sparsities=(0.6,), refiner="exact")
    assert list(exact.controls["axis"].options) == ["sparsity"] and lab.computed == 6


def test_revisiting_a_setting_redraws_nothing(layer):
    """The explorer keeps each drawn dashboard: going back to a setting shows the same figure and PNG."""
    ex = widgets.LayerExplorer(layer)
    first_figure, first_png = ex.figure, ex.image.value
    ex.controls["T"].value = 4
    assert ex.figure is not first_figure
    ex.controls["T"].value = 50
    assert ex.figure is first_figure and ex.image.value == first_png
