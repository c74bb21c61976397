"""End to end against the authors' own pipeline: the zero pattern of every linear layer of the
bundled SmolLM2-135M after Wanda and Wanda + DSnoT (``official``) at 60%, 16 C4 windows of 512
tokens, seed 0 (``../shared/reference/official-e2e``, its README gives the settings), must equal
the authors' bit for bit. The run goes through the one runner (``runs.runner.run``); the first
blocks are in the default suite (``RunSpec.blocks`` caps them), the whole model in the slow one.
"""

from __future__ import annotations

import pytest
import torch
from _paths import E2E_DIR

from dsnot_lite.lm.models import find_linears
from dsnot_lite.reference import e2e_differences, load_e2e, zero_patterns
from dsnot_lite.runs.runner import ModelSession, run
from dsnot_lite.runs.spec import RunSpec

RUNS = {"wanda_s60": None, "wanda_dsnot_s60": "dsnot"}  # reference file -> our refiner


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_e2e(E2E_DIR / f"{name}.safetensors")


@pytest.fixture(scope="module")
def session():
    return ModelSession()


def _zero_patterns(session: ModelSession, refiner: str | None, blocks: int | None) -> dict[str, torch.Tensor]:
    spec = RunSpec(method="wanda", sparsity=0.6, refiner=refiner, nsamples=16, seqlen=512, seed=0, blocks=blocks,
                   max_windows=1)  # fmt: skip
    patterns: dict[str, torch.Tensor] = {}

    def keep(loaded) -> None:
        names = [f"{loaded.blocks_path}.{i}.{name}" for i, block in enumerate(loaded.blocks[: blocks or len(loaded.blocks)])
                 for name in find_linears(block)]  # fmt: skip
        patterns.update(zero_patterns(loaded.model, names))

    run(spec, session=session, progress=False, after_eval=keep)
    return patterns


def _compare(session, name: str, blocks: int | None) -> None:
    expected = _reference(name)
    got = _zero_patterns(session, RUNS[name], blocks)
    assert len(got) == (7 * blocks if blocks else len(expected)) == len(set(got) & set(expected))
    differing = e2e_differences(got, expected)
    assert not differing, f"{len(differing)} layers differ from the authors' pipeline: {differing}"


@pytest.mark.parametrize("name", list(RUNS))
def test_first_blocks_equal_the_authors_pipeline(session, name):
    _compare(session, name, blocks=3)


# Measured 2026-11-30 on this project's 2-core Xeon (AVX-512, MKL): the first blocks equal the
# authors' masks bit for bit, but from block 16 (Wanda) and block 3 (Wanda + DSnoT) on, near-ties
# flip (first 2 entries in one layer, then growing as the blocks feed each other): 91 and 184 of
# 210 layers differ. The flips follow the CPU's float rounding, not our settings: one window per
# forward, eager attention and 1, 2 or 4 threads give the very same differences, while forcing the
# BLAS kernels to AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2) moves them (a 6-block DSnoT run: 16 layers
# differ from block 3 by default, 8 from block 4 with AVX2). So the whole-model equality holds
# only on a machine whose kernels round as the reference machine's did; it is kept, strict, for
# such machines, and reported as an expected failure elsewhere.
@pytest.mark.slow
@pytest.mark.xfail(reason="whole-model bit-equality depends on the CPU's float rounding (see the comment above)", strict=False)
@pytest.mark.parametrize("name", list(RUNS))
def test_whole_model_equals_the_authors_pipeline(session, name):
    _compare(session, name, blocks=None)


def test_a_different_mask_is_caught():
    """The comparison has teeth: Wanda's pattern is not Wanda + DSnoT's in the attention layers."""
    plain, refined = _reference("wanda_s60"), _reference("wanda_dsnot_s60")
    attention = [k for k in plain if "self_attn" in k]
    assert set(e2e_differences({k: plain[k] for k in attention}, refined)) == set(attention)
    # R6: DSnoT leaves MLP masks alone, so block 0's MLP (same inputs in both runs) is identical
    assert not e2e_differences({k: v for k, v in plain.items() if k.startswith("model.layers.0.mlp.")}, refined)
