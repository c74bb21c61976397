"""Initial pruners: masks, structure, SparseGPT, and the errors bad input gets."""

from __future__ import annotations

import pytest
import torch

from dsnot_lite.core.pruners import initial_mask, sparsegpt_prune, sparsegpt_score, wanda_score
from dsnot_lite.core.stats import ChannelStats


def _layer(rows: int = 24, cols: int = 32, seed: int = 0) -> tuple[torch.Tensor, ChannelStats, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g) * 0.02
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)  # correlated inputs
    x = (torch.randn(4, 64, cols, generator=g) @ mix) + torch.randn(cols, generator=g)
    x[..., 3] *= 25
    stats = ChannelStats(cols, hessian=True)
    stats.add_batch(x)
    return weight, stats, x


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75])
def test_unstructured_masks_are_exact_per_row(method, sparsity):
    weight, stats, _ = _layer()
    mask = initial_mask(weight, stats, method, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert bool((mask.sum(1) == int(weight.shape[1] * sparsity)).all())  # R7


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_masks_have_n_zeros_per_block(method, nm):
    weight, stats, _ = _layer()
    mask = initial_mask(weight, stats, method, 0.5, nm)
    blocks = mask.reshape(weight.shape[0], -1, nm[1]).sum(-1)
    assert bool((blocks == nm[0]).all())


def test_wanda_prunes_the_lowest_scores_of_each_row():
    weight, stats, _ = _layer()
    mask = initial_mask(weight, stats, "wanda", 0.5)
    score = wanda_score(weight, stats.scaler_row)
    assert bool((score[mask].reshape(24, -1).amax(1) <= score[~mask].reshape(24, -1).amin(1)).all())


def test_layer_magnitude_uses_one_threshold():
    weight, _, _ = _layer()
    mask = initial_mask(weight, None, "magnitude", 0.5, scope="layer")
    assert float(weight.abs()[mask].max()) <= float(weight.abs()[~mask].min())
    assert abs(float(mask.float().mean()) - 0.5) < 0.01
    assert not bool((mask.sum(1) == mask.sum(1)[0]).all())  # rows differ: not R7


def _output_error(weight: torch.Tensor, new_weight: torch.Tensor, x: torch.Tensor) -> float:
    flat = x.reshape(-1, x.shape[-1])
    return float(((flat @ (weight - new_weight).t()) ** 2).sum())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_full_sparsegpt_beats_masking_alone(nm):
    weight, stats, x = _layer(rows=32, cols=64)
    new_weight, mask = sparsegpt_prune(weight, stats.hessian, 0.5, nm, blocksize=16)
    assert bool((new_weight[mask] == 0).all())
    if nm is None:
        assert abs(float(mask.float().mean()) - 0.5) < 0.02
    else:
        assert bool((mask.reshape(32, -1, 4).sum(-1) == 2).all())
    saliency_only = weight.masked_fill(initial_mask(weight, stats, "sparsegpt", 0.5, nm), 0)
    wanda_only = weight.masked_fill(initial_mask(weight, stats, "wanda", 0.5, nm), 0)
    ours = _output_error(weight, new_weight, x)
    assert ours < 0.8 * _output_error(weight, saliency_only, x)
    assert ours < 0.8 * _output_error(weight, wanda_only, x)


def test_sparsegpt_keeps_dtype_and_handles_dead_inputs():
    weight, stats, _ = _layer()
    hessian = stats.hessian.clone()
    hessian[5, :] = 0
    hessian[:, 5] = 0  # a dead input channel
    new_weight, _mask = sparsegpt_prune(weight.half(), hessian, 0.5)
    assert new_weight.dtype == torch.float16
    assert bool(torch.isfinite(new_weight).all())
    assert bool(torch.isfinite(sparsegpt_score(weight, hessian)).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
        (dict(sparsity=-0.1), r"sparsity must be"),
        (dict(nm=(4, 2)), "0 < N < M"),
        (dict(nm=(2, 5)), "not divisible by M = 5"),
        (dict(nm="2:4"), "pair of integers"),
        (dict(method="random"), "unknown pruning method"),
        (dict(scope="layer"), "scope='layer' exists only for unstructured magnitude"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    weight, stats, _ = _layer()
    args = dict(weight=weight, stats=stats, method="wanda", sparsity=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        initial_mask(**args)


def test_bad_weights_are_named():
    _, stats, _ = _layer()
    bad = torch.zeros(24, 32)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        initial_mask(bad, stats, "wanda", 0.5)
    with pytest.raises(ValueError, match="must be 2-D"):
        initial_mask(torch.zeros(32), stats, "wanda", 0.5)
    with pytest.raises(ValueError, match="C_in = 16"):
        initial_mask(torch.zeros(8, 16), stats, "wanda", 0.5)
    with pytest.raises(ValueError, match="needs calibration statistics"):
        initial_mask(torch.zeros(8, 32), None, "wanda", 0.5)


def test_sparsegpt_without_hessian_says_how_to_get_one():
    weight, _, x = _layer()
    stats = ChannelStats(32)
    stats.add_batch(x)
    with pytest.raises(ValueError, match="hessian=True"):
        initial_mask(weight, stats, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match=r"hessian has shape \(3, 3\)"):
        sparsegpt_prune(weight, torch.eye(3), 0.5)
