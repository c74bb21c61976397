"""Exercises of notebook 01: every checker passes its solution and names plausible slips."""

from __future__ import annotations

import pytest
import torch
from _exercises import assert_solution_passes, assert_stub_not_attempted

from dsnot_lite.tutorial.exercises import checking
from dsnot_lite.tutorial.exercises import one_layer as ex


@pytest.mark.parametrize("name", ["wanda_mask", "expected_error", "grow_choice", "prune_choice"])
def test_checker_passes_the_solution(name):
    assert_solution_passes(ex, name)


def test_a_stub_is_not_attempted():
    assert_stub_not_attempted(ex, "grow_choice")


# --------------------------------------------------------------------------- Wanda's mask
def _mask_of(score: torch.Tensor, n: int) -> torch.Tensor:
    order = torch.sort(score, dim=1, stable=True).indices
    return torch.zeros(score.shape, dtype=torch.bool).scatter_(1, order[:, :n], True)


def wanda_one_threshold(W, A_norm_sq, p):
    S = W.abs() * A_norm_sq.sqrt()
    mask = torch.zeros(S.numel(), dtype=torch.bool)
    mask[torch.sort(S.flatten(), stable=True).indices[: int(S.numel() * p)]] = True
    return mask.reshape(S.shape)


def wanda_keeps_smallest(W, A_norm_sq, p):
    return _mask_of(-(W.abs() * A_norm_sq.sqrt()), int(W.shape[1] * p))


def wanda_squared_norm(W, A_norm_sq, p):
    return _mask_of(W.abs() * A_norm_sq, int(W.shape[1] * p))


@pytest.mark.parametrize(
    ("wrong", "words"),
    [(wanda_one_threshold, ["one threshold", "row"]), (wanda_keeps_smallest, ["LARGEST"]), (wanda_squared_norm, ["sqrt"])],
)
def test_wanda_mask_names_the_slip(wrong, words):
    verdict = ex.check_wanda_mask(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- E[Delta_r]
def error_over_kept(W, M, E_A):
    return (W * E_A * ~M).sum(1)


def error_mean_not_sum(W, M, E_A):
    return (W * E_A * M).sum(1) / M.sum(1)


def error_abs_weights(W, M, E_A):
    return (W.abs() * E_A * M).sum(1)


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (error_over_kept, ["KEPT"]),
        (error_mean_not_sum, ["constant factor", "sum instead of mean"]),
        (error_abs_weights, ["|W|", "sign"]),
    ],
)
def test_expected_error_names_the_slip(wrong, words):
    verdict = ex.check_expected_error(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


def test_expected_error_finds_a_constant_factor_when_rows_agree(capsys):
    """With equal pruned counts per row (the first case), a mean instead of a sum is a constant factor."""
    verdict = ex.check_expected_error(lambda W, M, E_A: 2 * (W * E_A * M).sum(1))
    assert "constant factor 2" in verdict.message


# --------------------------------------------------------------------------- grow (Eq. 2)
def grow_without_power(W, M, E_A, Var_A, var_power=1.0):
    return ex.grow_choice(W, M, E_A, Var_A, 1.0)


def grow_ignoring_sign(W, M, E_A, Var_A, var_power=1.0):
    return (W * E_A / Var_A**var_power).masked_fill(~M, float("-inf")).argmax(1)


def grow_among_all(W, M, E_A, Var_A, var_power=1.0):
    score, error = W * E_A / Var_A**var_power, (W * E_A * M).sum(1)
    return torch.where(error > 0, score.argmax(1), score.argmin(1))


@pytest.mark.parametrize(
    ("wrong", "words"),
    [(grow_without_power, ["var_power"]), (grow_ignoring_sign, ["SMALLEST", "row"]), (grow_among_all, ["PRUNED"])],
)
def test_grow_choice_names_the_slip(wrong, words):
    verdict = ex.check_grow_choice(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- prune (Eq. 3)
def _prune(W, M, E_A, A_norm_sq, same=False, among_pruned=False):
    c = W * E_A
    error = (c * M).sum(1, keepdim=True)
    sign_ok = torch.where(error > 0, c > 0, c < 0) if same else torch.where(error > 0, c < 0, c > 0)
    candidate = (M if among_pruned else ~M) & sign_ok
    column = (W.abs() * A_norm_sq.sqrt()).masked_fill(~candidate, float("inf")).argmin(1)
    return torch.where(candidate.any(1), column, -1)


def prune_same_sign(W, M, E_A, A_norm_sq):
    return _prune(W, M, E_A, A_norm_sq, same=True)


def prune_among_pruned(W, M, E_A, A_norm_sq):
    return _prune(W, M, E_A, A_norm_sq, among_pruned=True)


@pytest.mark.parametrize(
    ("wrong", "words"),
    [(prune_same_sign, ["sign rule", "OPPOSITE"]), (prune_among_pruned, ["pruned weights", "KEPT"])],
)
def test_prune_choice_names_the_slip(wrong, words):
    verdict = ex.check_prune_choice(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


def test_checkers_raise_in_strict_mode(monkeypatch):
    monkeypatch.setenv(checking.STRICT_ENV, "1")
    with pytest.raises(AssertionError, match=r"one_layer\.prune_choice"):
        ex.check_prune_choice(prune_same_sign)


def test_the_hand_example_is_the_readme_one():
    """README (R3): the 2 x 8 example starts at E[Delta] = 0.67 and -0.67."""
    W, E_A, _, A_norm_sq = ex.hand_example()
    M = ex.wanda_mask(W, A_norm_sq, 0.5)
    assert ex.expected_error(W, M, E_A).tolist() == pytest.approx([0.67, -0.67])
    assert ex.grow_choice(W, M, E_A, torch.ones(8)).tolist() == [0, 0]
    assert ex.prune_choice(W, M, E_A, A_norm_sq).tolist() == [7, 7]
