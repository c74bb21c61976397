"""Output errors from the Gram matrix: equal to the direct computation on the tokens, and the
mean/variance split of spec section 6."""

from __future__ import annotations

import pytest
import torch

from dsnot_lite.core.errors import error_parts, gram_matrix, relative_error, removed_weights, row_output_error
from dsnot_lite.core.pruners import mask_from_score
from dsnot_lite.core.stats import ChannelStats


def _layer(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 32, 16, generator=g) + 3 * torch.randn(16, generator=g)  # 4 samples x 32 tokens
    weight = torch.randn(8, 16, generator=g)
    return weight, x, mask_from_score(torch.rand(8, 16, generator=g), 0.5)


def test_row_errors_equal_the_direct_computation():
    weight, x, mask = _layer()
    tokens = x.reshape(-1, 16)
    direct = (tokens @ torch.where(mask, weight, 0.0).t()).norm(dim=0)
    torch.testing.assert_close(row_output_error(weight, mask, gram_matrix(x)), direct, rtol=1e-4, atol=1e-4)
    rel = relative_error(removed_weights(weight, mask), weight, gram_matrix(x))
    assert rel == pytest.approx(float(direct.norm() / (tokens @ weight.t()).norm()), rel=1e-5)


def test_stats_gram_is_the_sum_of_outer_products_over_tokens():
    _weight, x, _ = _layer()
    stats = ChannelStats(16, hessian=True)
    stats.add_batch(x[:3])
    stats.add_batch(x[3:])
    torch.testing.assert_close(stats.gram, gram_matrix(x), rtol=1e-4, atol=1e-3)


def test_mean_part_plus_variance_part_is_the_total():
    weight, x, mask = _layer(1)
    stats = ChannelStats(16, hessian=True)
    stats.add_batch(x)
    delta = removed_weights(weight, mask)
    parts = error_parts(delta, weight, stats.gram, stats.mean, stats.ntokens)
    tokens = x.reshape(-1, 16).double()
    out = tokens @ delta.double().t()  # (tokens, rows)
    assert parts.total == pytest.approx(float(out.square().sum()), rel=1e-5)
    assert parts.mean == pytest.approx(float(tokens.shape[0] * out.mean(0).square().sum()), rel=1e-5)
    variance = float(((out - out.mean(0)) ** 2).sum())
    assert parts.total - parts.mean == pytest.approx(variance, rel=1e-4)
    assert 0 < parts.mean_share < 1 and parts.relative == pytest.approx(relative_error(delta, weight, stats.gram), rel=1e-5)


def test_bad_gram_is_named():
    weight, _x, mask = _layer()
    with pytest.raises(ValueError, match=r"must be \(16, 16\)"):
        row_output_error(weight, mask, torch.eye(3))
    with pytest.raises(ValueError, match="needs the Gram matrix"):
        row_output_error(weight, mask, None)
