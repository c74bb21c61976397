"""End to end against the authors' own pipeline, teacher-forced: Wanda and Wanda + DSnoT (``official``)
at 60% on the bundled SmolLM2-135M, 16 C4 windows of 512 tokens, seed 0, the settings of
``../shared/reference/official-e2e`` (its README). At every linear layer our mask, from our own
statistics, is compared with the authors'; every row that differs must be a float near-tie
(``core.near_ties``: our algorithm reaches their row from our statistics once decisions between
nearly equal numbers go the other way), else the test fails; then their mask is adopted, so the
next block sees the inputs their pipeline saw and one flip never cascades. The first blocks are
in the default suite, the whole model (about 3.5 minutes a run on 2 cores) in the slow one; both
strict.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _paths import E2E_DIR

from dsnot_lite.core.dsnot import preset
from dsnot_lite.core.near_ties import Tolerance
from dsnot_lite.reference import LayerConformance, e2e_differences, load_e2e, teacher_forced
from dsnot_lite.runs.runner import ModelSession
from dsnot_lite.runs.spec import RunSpec

RUNS = {"wanda_s60": None, "wanda_dsnot_s60": "dsnot"}  # reference file -> our refiner
# The tolerance. `bench/conformance.py` walks the whole model teacher-forced three times, with float
# orders that two correct pipelines may use (ours; eager attention and one window per forward, as
# the reference feeds them; MKL_CBWR=COMPATIBLE, other GEMM kernels as on another CPU), and
# compares the numbers every decision uses (bench/results/conformance.md). Measured on this
# project's 2-core machine (AMD EPYC, torch 2.13), largest over the 210 layers: Wanda scores 2.8e-6
# apart (relative), the Eq. 2 keys DSnoT takes (50 at each end of every row) 1.0e-5, E[Delta_r]
# 1.6e-8 of the row's scale sum_k |W_rk| sqrt(L ||A_k||^2). Against the authors' masks the decisions
# that went the other way here (bench/results/conformance.md; which ones varies from run to run on
# this machine) were exact ties (gap 0: two Wanda scores, or two prune keys that our stable sort and
# theirs order differently), Wanda and Eq. 2 keys 8.7e-8 and 5.3e-7 apart, and DSnoT stops at
# epsilon 2.3e-9 to 1.1e-6 of the row scale: their pipeline rounds E[Delta_r] differently from every
# variant measured here, within what the scale bounds (activations off by 1e-5 relative, all
# aligned, move E[Delta_r] by 1e-5 of it). So: scores 1e-4 (10x the largest key gap measured),
# E[Delta_r] 1e-5 of the row scale (9x the largest gap seen against the authors). A tolerance alone
# never passes a row: the flipped decisions must then reproduce the authors' row exactly.
TOLERANCE = Tolerance(score=1e-4, error=1e-5, flips=4)


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_e2e(E2E_DIR / f"{name}.safetensors")


def _spec(refiner: str | None, blocks: int | None, **dsnot) -> RunSpec:
    config = dataclasses.replace(preset("official"), **dsnot) if dsnot else None
    return RunSpec(method="wanda", sparsity=0.6, refiner=refiner, dsnot=config, nsamples=16, seqlen=512, seed=0, blocks=blocks)


@pytest.fixture(scope="module")
def session():
    return ModelSession()


def _unexplained(layers: list[LayerConformance]) -> dict[tuple[str, int], str]:
    return {(layer.name, v.row): v.reason for layer in layers for v in layer.unexplained}


def _assert_conforms(layers: list[LayerConformance], count: int) -> None:
    assert len(layers) == count
    bad = _unexplained(layers)
    assert not bad, f"{len(bad)} rows differ from the authors' masks beyond near-ties: {dict(list(bad.items())[:5])}"


@pytest.mark.parametrize("name", list(RUNS))
def test_first_blocks_conform_to_the_authors_pipeline(session, name):
    layers = teacher_forced(_reference(name), _spec(RUNS[name], blocks=3), session=session, tolerance=TOLERANCE)
    _assert_conforms(layers, count=7 * 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_whole_model_conforms_to_the_authors_pipeline(session, name):
    layers = teacher_forced(_reference(name), _spec(RUNS[name], blocks=None), session=session, tolerance=TOLERANCE)
    _assert_conforms(layers, count=7 * 30)


def test_another_power_of_the_variance_fails(session):
    """A real deviation in our DSnoT (Eq. 2 dividing by Var^2) is no near-tie: every refined layer fails."""
    layers = teacher_forced(_reference("wanda_dsnot_s60"), _spec("dsnot", blocks=1, var_power=2.0), session=session,
                            tolerance=TOLERANCE, limit=2)  # fmt: skip
    failing = {name for name, _row in _unexplained(layers)}
    assert failing == {f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"}  # R6: the MLP keeps Wanda's mask


def test_one_changed_row_fails(session):
    """A reference with one row changed in a DSnoT layer and one in a Wanda-only layer: exactly those rows fail."""
    reference = _reference("wanda_dsnot_s60")
    planted = {("model.layers.0.self_attn.o_proj", 7), ("model.layers.0.mlp.down_proj", 11)}
    for name, row in planted:
        mask = reference[name].clone()
        mask[row, int(mask[row].nonzero()[0])] = False  # keep a pruned weight
        mask[row, int((~mask[row]).nonzero()[-1])] = True  # and prune a kept one
        reference[name] = mask
    layers = teacher_forced(reference, _spec("dsnot", blocks=1), session=session, tolerance=TOLERANCE)
    assert set(_unexplained(layers)) == planted


def test_a_different_mask_is_caught():
    """The reference files differ where they should: Wanda's pattern is not Wanda + DSnoT's in the attention layers."""
    plain, refined = _reference("wanda_s60"), _reference("wanda_dsnot_s60")
    attention = [k for k in plain if "self_attn" in k]
    assert set(e2e_differences({k: plain[k] for k in attention}, refined)) == set(attention)
    # R6: DSnoT leaves MLP masks alone, so block 0's MLP (same inputs in both runs) is identical
    assert not e2e_differences({k: v for k, v in plain.items() if k.startswith("model.layers.0.mlp.")}, refined)
