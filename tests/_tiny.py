"""Tiny randomly initialised causal LMs of each supported architecture (Gemma 3 with a sliding-window
and a full-attention block), and a tiny tokenizer.

Built inside the tests (no download): hidden 64, 2 blocks, vocabulary 320. The tokenizer is a
character-level BPE trained on the first WikiText-2 training-like rows we have locally (the
validation split), so data loading, calibration and evaluation run on real text.
"""

from __future__ import annotations

import functools

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from dsnot_lite.lm.models import LoadedModel, find_blocks

VOCAB = 320
ARCHS = ("llama", "mistral", "qwen2", "opt", "gemma3")


def tiny_config(arch: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if arch == "llama":
        return LlamaConfig(intermediate_size=128, num_key_value_heads=2, **common)
    if arch == "mistral":
        return MistralConfig(intermediate_size=128, num_key_value_heads=2, sliding_window=None, **common)
    if arch == "qwen2":
        return Qwen2Config(intermediate_size=128, num_key_value_heads=2, **common)
    if arch == "opt":
        return OPTConfig(ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=512, **common)
    if arch == "gemma3":  # a sliding-window block then a full-attention one: different masks and RoPE per block
        return Gemma3TextConfig(
            intermediate_size=128,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=512,
            **common,
        )
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    return model.eval()


def tiny_loaded(arch: str, seed: int = 0, tokenizer=None) -> LoadedModel:
    model = tiny_model(arch, seed)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{arch}", source="memory", blocks_path=find_blocks(model))


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 320-token byte-level BPE tokenizer trained on local WikiText-2 validation text (no BOS added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from dsnot_lite.lm.data import wikitext_rows

    rows = [r for r in wikitext_rows("validation") if r][:3000]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(rows, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert len(fast) <= VOCAB
    return fast
