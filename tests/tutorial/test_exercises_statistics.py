"""Exercises of notebooks 02 and 03: every checker passes its solution and names plausible slips."""

from __future__ import annotations

import pytest
import torch
from _exercises import assert_solution_passes, assert_stub_not_attempted

from dsnot_lite.core.pruners import mask_from_score
from dsnot_lite.tutorial.exercises import statistics as ex

NAMES = ["official_statistics", "true_error", "error_split", "nm_mask", "floored_grow_choice"]


@pytest.mark.parametrize("name", NAMES)
def test_checker_passes_the_solution(name):
    assert_solution_passes(ex, name, cases=4)


@pytest.mark.parametrize("name", NAMES)
def test_a_stub_is_not_attempted(name):
    assert_stub_not_attempted(ex, name)


def _rejects(check, wrong, words):
    verdict = check(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- R1 statistics
def token_mean(X):
    return X.mean(dim=(0, 1)), X.var(dim=1, unbiased=False).mean(0), (X**2).sum(1).mean(0)


def pooled_variance(X):
    return X.sum(1).mean(0), X.reshape(-1, X.shape[-1]).var(0, unbiased=False), (X**2).sum(1).mean(0)


def unbiased_variance(X):
    return X.sum(1).mean(0), X.var(dim=1).mean(0), (X**2).sum(1).mean(0)


def stacked_not_tuple(X):
    return torch.stack(ex.official_statistics(X))


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (token_mean, ["E_A", "L x the token mean", "constant factor"]),
        (pooled_variance, ["Var_A", "pooled"]),
        (unbiased_variance, ["unbiased", "L - 1"]),
        (stacked_not_tuple, ["tuple of 3"]),
    ],
)
def test_official_statistics_names_the_slip(wrong, words):
    _rejects(ex.check_official_statistics, wrong, words)


# --------------------------------------------------------------------------- true error
def error_of_kept(W, M, G):
    d = W * ~M
    return ((d @ G) * d).sum(1)


def error_without_cross_terms(W, M, G):
    return ((W * M) ** 2 * G.diagonal()).sum(1)


def error_norm(W, M, G):
    d = W * M
    return ((d @ G) * d).sum(1).sqrt()


@pytest.mark.parametrize(
    ("wrong", "words"),
    [(error_of_kept, ["KEPT"]), (error_without_cross_terms, ["cross terms"]), (error_norm, ["square"])],
)
def test_true_error_names_the_slip(wrong, words):
    _rejects(ex.check_true_error, wrong, words)


# --------------------------------------------------------------------------- the split
def split_without_L(W, M, G, mu, L):
    d = W * M
    total, mean = ((d @ G) * d).sum(), ((d @ mu) ** 2).sum()
    return torch.stack([mean, total - mean])


def split_with_official_mean(W, M, G, mu, L):
    d = W * M
    total, mean = ((d @ G) * d).sum(), L * ((d @ (L * mu)) ** 2).sum()
    return torch.stack([mean, total - mean])


def split_rows_not_summed(W, M, G, mu, L):
    d = W * M
    total, mean = ((d @ G) * d).sum(1), L * (d @ mu) ** 2
    return torch.stack([mean, total - mean])


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (split_without_L, ["factor L", "SUM"]),
        (split_with_official_mean, ["R1", "token mean"]),
        (split_rows_not_summed, ["shape"]),
    ],
)
def test_error_split_names_the_slip(wrong, words):
    _rejects(ex.check_error_split, wrong, words)


# --------------------------------------------------------------------------- N:M
def nm_ignoring_blocks(S, n, m):
    return mask_from_score(S, n / m)


def nm_highest(S, n, m):
    return ex.nm_mask(-S, n, m)


def nm_blocks_down_rows(S, n, m):
    return ex.nm_mask(S.t().contiguous(), n, m).t() if S.shape[0] % m == 0 else ex.nm_mask(S, n, m)


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (nm_ignoring_blocks, ["EVERY BLOCK", "ignoring the blocks"]),
        (nm_highest, ["HIGHEST"]),
        (nm_blocks_down_rows, ["output dimension"]),
    ],
)
def test_nm_mask_names_the_slip(wrong, words):
    _rejects(ex.check_nm_mask, wrong, words)


# --------------------------------------------------------------------------- the variance floor
def floor_missing(W, M, E_A, Var_A, var_floor):
    return ex.floored_grow_choice(W, M, E_A, Var_A, 0.0)


def floor_not_scaled(W, M, E_A, Var_A, var_floor):
    return ex.floored_grow_choice(W, M, E_A, Var_A.clamp_min(var_floor), 0.0)


def floor_from_mean(W, M, E_A, Var_A, var_floor):
    return ex.floored_grow_choice(W, M, E_A, Var_A.clamp_min(var_floor * Var_A.mean()), 0.0)


@pytest.mark.parametrize(
    ("wrong", "words"),
    [(floor_missing, ["unfloored"]), (floor_not_scaled, ["TIMES the median"]), (floor_from_mean, ["MEDIAN"])],
)
def test_floored_grow_choice_names_the_slip(wrong, words):
    _rejects(ex.check_floored_grow_choice, wrong, words)


def test_split_adds_up_to_the_true_error():
    """The two exercises agree: mean part + variance part = the summed true error."""
    layer = ex._synthetic()
    M = mask_from_score(layer.weight.abs() * layer.stats.scaler_row.sqrt(), 0.6)
    parts = ex.error_split(layer.weight, M, layer.gram, layer.stats.mean, layer.stats.ntokens)
    assert float(parts.sum()) == pytest.approx(float(ex.true_error(layer.weight, M, layer.gram).sum()), rel=1e-4)
    assert 0 < float(parts[0]) < float(parts[1])
