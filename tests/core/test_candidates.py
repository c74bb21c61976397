"""The two-ended candidate lists equal the ends of a full stable sort, ties included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsnot_lite.core import candidates


def _values(rows: int, cols: int, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=g)
    if ties:
        values = (values * 2).round() / 2  # few distinct values: many exact ties, -0.0 and +0.0
    return values


def _stable_order(values: torch.Tensor, valid: torch.Tensor) -> list[list[int]]:
    order = torch.sort(values, dim=1, stable=True).indices
    return [[c for c in row.tolist() if valid[r, c]] for r, row in enumerate(order)]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 70),
    k=st.integers(1, 40),
    seed=st.integers(0, 9999),
    ties=st.booleans(),
    density=st.sampled_from([0.2, 0.6, 1.0]),
)
def test_ascending_ends_match_stable_sort(rows, cols, k, seed, ties, density):
    values = _values(rows, cols, seed, ties)
    valid = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed + 1)) < density
    cands = candidates.ascending(values, valid, valid.sum(1), k, "front")
    for r, full in enumerate(_stable_order(values, valid)):
        n = len(full)
        assert int(cands.size[r]) == n
        for position in range(min(k, n)):  # every position a pointer can reach in k steps
            assert int(cands.column(torch.tensor([[position]]).expand(rows, 1))[r]) == full[position]
            back = n - 1 - position
            assert int(cands.column(torch.tensor([[back]]).expand(rows, 1))[r]) == full[back]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(2, 60),
    k=st.integers(1, 30),
    seed=st.integers(0, 9999),
    ties=st.booleans(),
    negatives_ascending=st.booleans(),
    segments_only=st.booleans(),
)
def test_sign_partition_matches_its_definition(rows, cols, k, seed, ties, negatives_ascending, segments_only):
    rank = _values(rows, cols, seed, ties).abs()
    contribution = _values(rows, cols, seed + 7, True)  # includes exact zeros
    valid = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < 0.7
    cands, n_neg, n_zero = candidates.sign_partitioned(
        rank,
        valid,
        valid.sum(1),
        contribution,
        negatives_ascending=negatives_ascending,
        k=k,
        end="prune",
        segments_only=segments_only,
    )
    for r, by_rank in enumerate(_stable_order(rank, valid)):
        neg = [c for c in by_rank if contribution[r, c] < 0]
        zero = [c for c in by_rank if contribution[r, c] == 0]
        pos = [c for c in by_rank if contribution[r, c] > 0]
        full = (neg if negatives_ascending else neg[::-1]) + zero + (pos[::-1] if negatives_ascending else pos)
        n = len(full)
        assert (int(n_neg[r]), int(n_zero[r])) == (len(neg), len(zero))
        reach_front = min(k, len(neg)) if segments_only else min(k, n)
        reach_back = min(k, len(pos)) if segments_only else min(k, n)
        for position in range(reach_front):
            assert int(cands.column(torch.full((rows, 1), position))[r]) == full[position]
        for step in range(reach_back):
            assert int(cands.column(torch.full((rows, 1), n - 1 - step))[r]) == full[n - 1 - step]


def test_stable_rank_key_orders_like_a_stable_sort():
    values = torch.tensor([[0.0, -0.0, 1.5, -2.0, 1.5, float("inf"), -float("inf"), 0.0]])
    keys = candidates.stable_rank_key(values)
    assert torch.equal(torch.argsort(keys, dim=1), torch.sort(values, dim=1, stable=True).indices)


def test_weakest_is_the_first_of_a_stable_sort():
    rank = torch.tensor([[3.0, 1.0, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    valid = torch.tensor([[True, True, True, False], [False, True, True, True]])
    assert candidates.weakest(rank, valid).tolist() == [1, 1]


def test_rows_too_long_for_keys_are_refused():
    with pytest.raises(ValueError, match="too long"):
        candidates.stable_rank_key(torch.zeros(1, 1 << 24))
