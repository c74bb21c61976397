"""The bundled SmolLM2-135M: GGUF conversion into a fresh cache, reference perplexity, one small pruning run.

Not marked slow on purpose, so the default run really exercises the bundled model (about two to
three minutes on 2 cores). The numbers checked come from shared/data/README.md.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from dsnot_lite.cli import main
from dsnot_lite.lm.data import wikitext_rows
from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text
from dsnot_lite.lm.models import convert_bundled, find_linears, load_model


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """An empty $DSNOT_LITE_CACHE for this module, so the conversion itself is exercised."""
    cache = tmp_path_factory.mktemp("dsnot_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSNOT_LITE_CACHE", str(cache))
        yield cache


def test_convert_once_load_and_reference_perplexity(fresh_cache):
    folder = convert_bundled("smollm2-135m")
    assert folder == fresh_cache / "models" / "smollm2-135m"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    assert os.listdir(folder.parent) == ["smollm2-135m"]  # the temporary folder was renamed, none left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert convert_bundled("smollm2-135m") == folder  # second call reuses the conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    loaded = load_model("smollm2-135m")
    assert loaded.source == str(folder)
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert loaded.blocks_path == "model.layers" and len(loaded.blocks) == 30
    assert len(find_linears(loaded.blocks[0])) == 7

    ids = tokenize_test_text(loaded.tokenizer, wikitext_rows("test"))
    assert ids.numel() == 304_986 and ids[:4].tolist() == [1116, 446, 6356, 389]  # no BOS
    res = perplexity(loaded.model, ids, seqlen=512, max_windows=4, progress=False)
    assert (res.windows, res.total_windows) == (4, 595)
    assert res.ppl == pytest.approx(30.96, abs=0.01)  # README: first 4 windows at 512 -> 30.96


def test_small_pruning_run_on_the_bundled_model(fresh_cache, tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main([
        "run", "--model", "smollm2-135m", "--method", "wanda", "--dsnot", "--sparsity", "0.6",
        "--nsamples", "4", "--seqlen", "128", "--max-windows", "2", "--output", str(out),
        "--results-table", str(tmp_path / "table.csv"), "--no-progress", "--tasks", "wikitext2_lastword", "--tasks-limit", "5",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert (result["nsamples"], result["seqlen"], result["windows"], result["max_windows"]) == (4, 128, 2, 2)
    layers = result["layers"]
    assert len(layers) == 30 * 7
    for layer in layers:
        c_in = layer["shape"][1]
        assert layer["sparsity"] == pytest.approx(int(c_in * 0.6) / c_in), layer["name"]  # per row, R7
        assert bool(layer["refined_by"]) == ("self_attn" in layer["name"])  # official: attention only (R6)
        if not layer["refined_by"]:
            assert layer["swaps"] == 0
    assert sum(layer["swaps"] for layer in layers) > 0
    zero_shot = result["zero_shot"]["wikitext2_lastword"]
    assert 0 <= zero_shot["acc"] <= 1 and zero_shot["acc"] * 5 == pytest.approx(round(zero_shot["acc"] * 5))
    assert "wikitext2_lastword" in (tmp_path / "table.csv").read_text()
    # Pruning 60% hurts: worse than the dense model on the same two windows, but finite.
    loaded = load_model("smollm2-135m")
    ids = tokenize_test_text(loaded.tokenizer, wikitext_rows("test"))
    dense = perplexity(loaded.model, ids, seqlen=128, max_windows=2, progress=False)
    assert torch.isfinite(torch.tensor(result["ppl"])) and result["ppl"] > dense.ppl


@pytest.mark.slow
def test_full_dense_perplexity_matches_the_readme():
    """All 595 windows at seqlen 512 (about 9 minutes on 2 free cores): README value 30.2140."""
    loaded = load_model("smollm2-135m")
    ids = tokenize_test_text(loaded.tokenizer, wikitext_rows("test"))
    res = perplexity(loaded.model, ids, seqlen=512, progress=False)
    assert (res.windows, res.predicted_tokens) == (595, 304_045)
    assert res.ppl == pytest.approx(30.2140, rel=1e-3)
