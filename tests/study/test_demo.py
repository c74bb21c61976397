"""``python -m dsnot_lite demo`` on a tiny protocol: five real runs, one table, cached the second time."""

from __future__ import annotations

from dsnot_lite.runs.spec import RunSpec
from dsnot_lite.study import demo


def test_demo_table_compares_each_refiner_with_wanda_and_reuses_its_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DSNOT_LITE_WORKSPACE", str(tmp_path))
    monkeypatch.setattr(demo, "QUICK", RunSpec(nsamples=2, seqlen=64, max_windows=2, blocks=1))
    text = demo.demo(progress=False)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert {"dense", "Wanda", "Wanda + DSnoT (official)", "Wanda + exact refiner", "Wanda + exact refiner + refit"} <= set(rows)
    for label in ("Wanda + DSnoT (official)", "Wanda + exact refiner", "Wanda + exact refiner + refit"):
        assert "%" in rows[label] and "[" in rows[label], rows[label]  # change vs Wanda with its interval
    assert "5 of 5 runs computed now" in text
    assert (tmp_path / "results" / "demo.md").read_text() == text
    again = demo.demo(progress=False)
    assert "0 of 5 runs computed now" in again  # read from results/demo/, not recomputed
    assert again.split("runs computed now")[0].rsplit("\n", 1)[0] == text.split("runs computed now")[0].rsplit("\n", 1)[0]
