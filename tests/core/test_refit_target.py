"""The re-fit toward the dense model's outputs (``core.refit.Target``): per-row lstsq, the layer
target as its special case, the errors it reports, bad input."""

from __future__ import annotations

import pytest
import torch

from dsnot_lite.core.pruners import mask_from_score
from dsnot_lite.core.refit import PERCDAMP, Target, refit


def case(seed: int, rows: int = 5, cols: int = 12, tokens: int = 40):
    """A weight, the pruned model's inputs ``x`` and the dense model's ``xd`` (close, not equal)."""
    g = torch.Generator().manual_seed(seed)
    xd = torch.randn(tokens, cols, generator=g) + torch.randn(cols, generator=g)
    x = xd + 0.3 * torch.randn(tokens, cols, generator=g)
    weight = torch.randn(rows, cols, generator=g)
    mask = mask_from_score(torch.rand(rows, cols, generator=g), 0.5)
    return weight.double(), x.double(), xd.double(), mask


def lstsq_to_dense(weight, x, xd, mask, percdamp=PERCDAMP) -> torch.Tensor:
    """Per row: min ||X_S w'_S - X_d w||^2 + lambda ||w'_S - w_S||^2 by torch.linalg.lstsq."""
    damping = percdamp * float((x * x).sum(0).mean())
    out = torch.zeros_like(weight)
    for r in range(weight.shape[0]):
        kept = (~mask[r]).nonzero().squeeze(1)
        a = torch.cat([x[:, kept], damping**0.5 * torch.eye(kept.numel(), dtype=torch.float64)])
        b = torch.cat([xd @ weight[r], damping**0.5 * weight[r, kept]])
        out[r, kept] = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_per_row_lstsq_and_reports_the_true_errors(seed):
    weight, x, xd, mask = case(seed)
    target = Target(cross=x.T @ xd, gram=xd.T @ xd)
    result = refit(weight, x.T @ x, mask, target=target, tolerance=1e-14, max_iterations=200)
    torch.testing.assert_close(result.weight, lstsq_to_dense(weight, x, xd, mask), rtol=1e-7, atol=1e-9)
    assert bool((result.weight[mask] == 0).all())
    truth = lambda w: ((x @ w.T - xd @ weight.T) ** 2).sum(0)
    torch.testing.assert_close(result.initial_error, truth(weight.masked_fill(mask, 0)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.final_error, truth(result.weight), rtol=1e-9, atol=1e-9)
    assert bool((result.final_error <= result.initial_error).all())


def test_with_the_dense_inputs_equal_to_the_pruned_ones_it_is_the_layer_refit():
    weight, x, _, mask = case(3)
    gram = x.T @ x
    aimed = refit(weight, gram, mask, target=Target(cross=gram, gram=gram), tolerance=1e-14)
    own = refit(weight, gram, mask, tolerance=1e-14)
    torch.testing.assert_close(aimed.weight, own.weight, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(aimed.final_error, own.final_error, rtol=1e-7, atol=1e-8)


def test_it_beats_the_layer_refit_on_the_dense_outputs_and_starts_from_a_given_start():
    weight, x, xd, mask = case(4, rows=8, cols=16, tokens=64)
    target = Target(cross=x.T @ xd, gram=xd.T @ xd)
    own = refit(weight, x.T @ x, mask).weight
    aimed = refit(weight, x.T @ x, mask, target=target)
    from_own = refit(weight, x.T @ x, mask, start=own, target=target)
    miss = lambda w: float(((x @ w.T - xd @ weight.T) ** 2).sum())
    assert miss(aimed.weight) < miss(own) and miss(from_own.weight) < miss(own)
    assert from_own.initial_error.sum() == pytest.approx(miss(own), rel=1e-9)


def test_a_cross_matrix_of_another_layer_is_named():
    weight, x, xd, mask = case(5)
    with pytest.raises(ValueError, match=r"\(12, 12\)"):
        refit(weight, x.T @ x, mask, target=Target(cross=torch.zeros(10, 10, dtype=torch.float64), gram=xd.T @ xd))
