"""Exercises of notebook 07 (mask or weights?): every checker passes its solution and names plausible slips."""

from __future__ import annotations

import pytest
import torch
from _exercises import assert_solution_passes, assert_stub_not_attempted

from dsnot_lite.tutorial.exercises import refit as ex


@pytest.mark.parametrize("name", ["refit_rows", "refit_gain"])
def test_checker_passes_the_solution(name):
    assert_solution_passes(ex, name)


def test_a_stub_is_not_attempted():
    assert_stub_not_attempted(ex, "refit_rows")


def _solve_rows(W, M, G, lam, rhs):
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = (~M[r]).nonzero().squeeze(1)
        out[r, S] = torch.linalg.solve(G[S][:, S] + lam * torch.eye(len(S), dtype=G.dtype), rhs(r, S))
    return out


# --------------------------------------------------------------------------- refit_rows
def rows_without_damping_on_the_right(W, M, G, lam):
    return _solve_rows(W, M, G, lam, lambda r, S: (G @ W[r])[S])


def rows_from_the_kept_weights_only(W, M, G, lam):
    return _solve_rows(W, M, G, lam, lambda r, S: G[S][:, S] @ W[r, S] + lam * W[r, S])


def rows_keeping_the_pruned_weights(W, M, G, lam):
    return torch.where(M, W, ex.refit_rows(W, M, G, lam))


def rows_without_damping_at_all(W, M, G, lam):
    return _solve_rows(W, M, G, 0.0, lambda r, S: (G @ W[r])[S])


@pytest.mark.parametrize(
    "wrong, words",
    [
        (rows_without_damping_on_the_right, ["lam W_rS", "toward 0"]),
        (rows_from_the_kept_weights_only, ["PRUNED", "G_SP W_rP"]),
        (rows_keeping_the_pruned_weights, ["pruned weights must be 0"]),
        (rows_without_damping_at_all, ["differs at row"]),
    ],
)
def test_refit_rows_names_the_slip(wrong, words):
    verdict = ex.check_refit_rows(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- refit_gain
def _b_and_e(W, M, G, lam):
    dW = torch.where(M, W, torch.zeros_like(W))
    b = (dW @ G) * ~M
    e = (ex.refit_rows(W, M, G, lam) - W) * ~M
    return b, e


def gain_without_the_damping_term(W, M, G, lam):
    b, e = _b_and_e(W, M, G, lam)
    return (b * e).sum(1)


def gain_with_the_wrong_sign(W, M, G, lam):
    return -ex.refit_gain(W, M, G, lam)


def gain_from_b_alone(W, M, G, lam):
    b, _ = _b_and_e(W, M, G, lam)
    return (b * b).sum(1)


def gain_as_twice_b_dot_e(W, M, G, lam):
    b, e = _b_and_e(W, M, G, lam)
    return 2 * (b * e).sum(1)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (gain_without_the_damping_term, ["lam ||e_S||^2"]),
        (gain_with_the_wrong_sign, ["sign is flipped", "BEFORE"]),
        (gain_from_b_alone, ["b.b", "solution e_S"]),
        (gain_as_twice_b_dot_e, ["differs at row"]),
    ],
)
def test_refit_gain_names_the_slip(wrong, words):
    verdict = ex.check_refit_gain(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message
