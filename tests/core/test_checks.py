"""``check_finite``'s one-pass fast path must agree with the full element test."""

import pytest
import torch

from dsnot_lite.core.checks import check_finite


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), float("-inf")],
)
def test_a_non_finite_entry_is_named(bad):
    t = torch.randn(64, 32)
    t[3, 5] = bad
    with pytest.raises(ValueError, match="contains 1 NaN/inf"):
        check_finite("weight", t)


def test_opposite_infinities_are_caught():
    t = torch.zeros(8, 8)
    t[0, 0], t[1, 1] = float("inf"), float("-inf")  # their sum is NaN, still not finite
    with pytest.raises(ValueError, match="contains 2 NaN/inf"):
        check_finite("weight", t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_finite_values_whose_sum_overflows_pass(dtype):
    big = torch.finfo(dtype).max
    t = torch.full((4, 4), big, dtype=dtype)
    assert not torch.isfinite(t.sum())  # the fast path fails here ...
    check_finite("weight", t)  # ... and the full test decides: no error
