"""study.paper: our runs and the paper's numbers side by side, never in one column; model_plots.ppl_bars' log axis."""

from __future__ import annotations

import pandas as pd
import pytest

from dsnot_lite.plots import model_plots
from dsnot_lite.study import paper


def _run(method, refiner=None, ppl=50.0, nm=None, sparsity=0.6):
    label = method + (f" + {refiner}" if refiner else "")
    return {"label": label, "method": method, "refiner": refiner, "sparsity": 0.0 if method == "dense" else sparsity,
            "nm": nm, "ppl": ppl, "preset": "official" if refiner else None}  # fmt: skip


def test_compare_with_paper_names_our_model_in_its_own_column():
    runs = [_run("dense", ppl=30.0), _run("wanda", ppl=180.0), _run("wanda", "dsnot", ppl=220.0),
            _run("wanda", nm="2:4"), _run("wanda", sparsity=0.7)]  # fmt: skip
    frame = paper.compare_with_paper(runs, ours="smollm2-135m [first 2/30 blocks pruned]")
    assert list(frame.columns) == [
        "run",
        "ours: smollm2-135m [first 2/30 blocks pruned]",
        "paper: LLaMA-1 7B",
        "paper: LLaMA-2 7B",
    ]
    assert list(frame["run"]) == ["dense", "wanda", "wanda + dsnot"]  # 2:4 and 70% are not Table 1 rows
    assert list(frame["paper: LLaMA-1 7B"]) == ["5.68", "10.69", "10.22"]


def test_paper_table1_frame_is_the_spec_quote():
    frame = paper.paper_table1_frame()
    assert frame.loc["LLaMA-1 7B", "wanda w. DSnoT"] == "10.22" and frame.loc["OPT-13B", "magnitude"] == "1.1e6"
    with pytest.raises(ValueError, match="fix"):
        paper.paper_table1_frame(0.5)


def test_ppl_bars_on_a_log_axis_start_at_one():
    frame = pd.DataFrame({"run": ["dense", "wanda", "wanda + DSnoT"], "ppl": [46.0, 57.7, 58.6]})
    ax = model_plots.ppl_bars(frame, logy=True).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == 1.0
    bars = ax.patches
    assert [b.get_x() for b in bars] == [1.0] * 3
    assert [round(b.get_x() + b.get_width(), 6) for b in bars] == [46.0, 57.7, 58.6]
    linear = model_plots.ppl_bars(frame).axes[0]
    assert linear.get_xscale() == "linear" and [b.get_x() for b in linear.patches] == [0.0] * 3
