"""Streaming statistics (spec R1) and their batch invariance."""

from __future__ import annotations

import pytest
import torch

from dsnot_lite.core.stats import ChannelStats


def _inputs(samples: int = 6, tokens: int = 32, channels: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, tokens, channels, generator=g) + torch.randn(channels, generator=g) * 2
    x[..., 0] *= 30  # an outlier channel
    return x


def test_r1_definitions_against_direct_formulas():
    x = _inputs()
    stats = ChannelStats(x.shape[-1])
    stats.add_batch(x)
    tokens = x.shape[1]
    torch.testing.assert_close(stats.sum_metric_row, x.sum(1).mean(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.sum_metric_row, stats.mean * tokens, rtol=1e-5, atol=1e-4)  # R1: seqlen x mean
    torch.testing.assert_close(stats.scaler_row, (x**2).sum(1).mean(0), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stats.var, x.var(1, unbiased=False).mean(0), rtol=1e-5, atol=1e-5)
    flat = x.reshape(-1, x.shape[-1])
    torch.testing.assert_close(stats.mean, flat.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.pooled_var, flat.var(0, unbiased=False), rtol=1e-4, atol=1e-4)
    assert stats.nsamples == x.shape[0] and stats.ntokens == x.shape[0] * tokens


def test_official_var_differs_from_pooled_when_sample_means_differ():
    x = _inputs()
    x[0] += 5.0  # one sample shifted: within-sample variances unchanged, pooled variance grows
    stats = ChannelStats(x.shape[-1])
    stats.add_batch(x)
    assert bool((stats.pooled_var > stats.var + 1.0).all())


@pytest.mark.parametrize("split", [[6], [1] * 6, [2, 4], [5, 1]])
def test_batching_does_not_change_results(split):
    x = _inputs()
    whole = ChannelStats(x.shape[-1], hessian=True)
    whole.add_batch(x)
    parts = ChannelStats(x.shape[-1], hessian=True)
    for chunk in torch.split(x, split):
        parts.add_batch(chunk)
    for key, value in whole.as_dict().items():
        torch.testing.assert_close(parts.as_dict()[key], value, rtol=1e-5, atol=1e-4, msg=key)
    torch.testing.assert_close(parts.hessian, whole.hessian, rtol=1e-5, atol=1e-3)


def test_two_d_input_is_one_sample():
    x = _inputs(samples=1)
    a, b = ChannelStats(16), ChannelStats(16)
    a.add_batch(x[0])
    b.add_batch(x)
    assert a.nsamples == b.nsamples == 1
    torch.testing.assert_close(a.sum_metric_row, b.sum_metric_row)


def test_hessian_is_sparsegpt_convention():
    x = _inputs()
    stats = ChannelStats(16, hessian=True)
    stats.add_batch(x)
    flat = x.reshape(-1, 16)
    torch.testing.assert_close(stats.hessian, 2.0 / x.shape[0] * flat.t() @ flat, rtol=1e-4, atol=1e-2)


def test_fp16_inputs_accumulate_in_fp32():
    x = _inputs().half()
    stats = ChannelStats(16)
    stats.add_batch(x)
    assert stats.sum_metric_row.dtype == torch.float32
    assert bool(torch.isfinite(stats.scaler_row).all())


def test_flavours_select_the_right_vectors():
    stats = ChannelStats(16)
    stats.add_batch(_inputs())
    assert stats.expected_input("official") is stats.sum_metric_row
    assert torch.equal(stats.expected_input("true"), stats.mean)
    assert torch.equal(stats.variance("true"), stats.pooled_var)
    with pytest.raises(ValueError, match="flavour"):
        stats.variance("nope")


@pytest.mark.parametrize(
    "bad, match",
    [(torch.zeros(2, 3, 5), r"\(batch, tokens, 16\)"), (torch.zeros(16), r"\(tokens, 16\)")],
)
def test_wrong_shapes_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        ChannelStats(16).add_batch(bad)


def test_in_features_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        ChannelStats(0)
