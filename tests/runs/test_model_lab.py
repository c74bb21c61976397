"""study.model_lab: a whole tiny model pruned many ways, a cache over the one runner."""

from __future__ import annotations

import pytest
import torch
from _tinydir import tiny_model_dir

from dsnot_lite.runs import model_lab
from dsnot_lite.runs.io import read_json
from dsnot_lite.runs.model_lab import ModelLab
from dsnot_lite.runs.spec import RunSpec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def test_model_lab_runs_caches_and_resumes(tiny_dir, tmp_path):
    cfg = RunSpec(model=tiny_dir, nsamples=3, seqlen=32, max_windows=2, blocks=1)
    lab = ModelLab(cfg, cache_dir=tmp_path, progress=False)
    dense = lab.dense()
    snapshot = {k: v.clone() for k, v in lab.session.loaded.blocks.state_dict().items()}
    wanda = lab.run("wanda", 0.6)
    refined = lab.run("wanda", 0.6, refiner="dsnot")
    assert lab.computed == 3
    assert lab.run("wanda", 0.6, refiner="dsnot") is refined and lab.computed == 3  # memory cache
    again_dense = lab.run("dense", refiner=None)  # cached: no recompute
    assert again_dense is dense
    # a new run starts from the dense weights, whatever ran before
    lab.run("magnitude", 0.5)
    assert lab.computed == 4
    lab.session.model_for(cfg, __import__("dsnot_lite.runs.pipeline", fromlist=["PhaseTimer"]).PhaseTimer())
    for k, v in lab.session.loaded.blocks.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    # only block 0 was pruned; the label says so
    assert "first 1/2 blocks" in lab.label and wanda["pruned_blocks"] == 1 and wanda["blocks"] == 1
    assert {r["name"].split(".")[2] for r in wanda["layers"]} == {"0"}
    assert wanda["achieved_sparsity"] == pytest.approx(refined["achieved_sparsity"]) == pytest.approx(0.6, abs=0.01)
    assert dense["ppl"] > 0 and wanda["ppl"] != dense["ppl"]
    # disk cache: a new lab computes nothing and reads the same numbers
    again = ModelLab(cfg, cache_dir=tmp_path, progress=False)
    assert again.run("wanda", 0.6, refiner="dsnot")["ppl"] == refined["ppl"] and again.computed == 0
    table = (tmp_path / "results.csv").read_text().splitlines()
    assert len(table) == 5  # header + 4 runs
    stored = read_json(refined["output"])
    assert stored["dsnot"]["grow"] == "eq2" and stored["total_flips"] == refined["total_flips"]
    assert len(stored["window_nll"]) == 2 and stored["key"] == cfg.replace(method="wanda", sparsity=0.6, refiner="dsnot").key()
    frame = model_lab.layer_frame(refined)
    assert len(frame) == 7 and set(frame["block"]) == {0}
    official_attention_only = frame[~frame["type"].str.contains("attn")]
    assert (official_attention_only["flips"] == 0).all()  # R6: the official preset leaves MLP masks alone
    sweep = model_lab.lab_sweep(again, "sparsity", [0.6])
    assert again.computed == 0 and sweep.loc[0, "ppl_refined"] == refined["ppl"]
    assert sweep.loc[0, "delta_ppl"] == pytest.approx(refined["ppl"] - wanda["ppl"])
    presets = model_lab.lab_sweep(again, "preset", ["official", "paper"])
    assert again.computed == 1 and list(presets["preset"]) == ["official", "paper"]
