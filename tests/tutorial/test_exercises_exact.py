"""Exercises of notebook 06 (the exact refiner): every checker passes its solution and names plausible slips."""

from __future__ import annotations

import pytest
import torch
from _exercises import assert_solution_passes, assert_stub_not_attempted

from dsnot_lite.core.exact import RELATIVE_TOLERANCE
from dsnot_lite.tutorial.exercises import exact as ex


@pytest.mark.parametrize("name", ["swap_delta", "apply_swap", "exact_step"])
def test_checker_passes_the_solution(name):
    assert_solution_passes(ex, name)


def test_a_stub_is_not_attempted():
    assert_stub_not_attempted(ex, "exact_step")


def _parts(W, M, G, g, p):
    """(grow gain, prune cost, cross term W_rg W_rp G_gp) of every row's pair."""
    dW = torch.where(M, W, torch.zeros_like(W))
    u = dW @ G
    r = torch.arange(W.shape[0])
    w_g, w_p = W[r, g], W[r, p]
    return w_g**2 * G[g, g] - 2 * w_g * u[r, g], w_p**2 * G[p, p] + 2 * w_p * u[r, p], w_g * w_p * G[g, p]


# --------------------------------------------------------------------------- delta(g, p)
def delta_without_cross_term(W, M, G, g, p):
    gain, cost, _ = _parts(W, M, G, g, p)
    return gain + cost


def delta_cross_term_plus(W, M, G, g, p):
    gain, cost, cross = _parts(W, M, G, g, p)
    return gain + cost + 2 * cross


def delta_after_minus_before_flipped(W, M, G, g, p):
    return -ex.swap_delta(W, M, G, g, p)


def delta_without_the_twos(W, M, G, g, p):
    dW = torch.where(M, W, torch.zeros_like(W))
    u = dW @ G
    r = torch.arange(W.shape[0])
    w_g, w_p = W[r, g], W[r, p]
    return w_g**2 * G[g, g] - w_g * u[r, g] + w_p**2 * G[p, p] + w_p * u[r, p] - w_g * w_p * G[g, p]


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (delta_without_cross_term, ["left out the cross term"]),
        (delta_cross_term_plus, ["cross term has the wrong sign"]),
        (delta_after_minus_before_flipped, ["sign is flipped", "AFTER"]),
        (delta_without_the_twos, ["delta differs at row", "case 'random 4x8'"]),
    ],
)
def test_swap_delta_names_the_slip(wrong, words):
    verdict = ex.check_swap_delta(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- the swap
def swap_roles_swapped(W, M, G, u, g, p):
    return ex.apply_swap(W, M, G, u, p, g)


def swap_update_backwards(W, M, G, u, g, p):
    M_new, _ = ex.apply_swap(W, M, G, u, g, p)
    r = torch.arange(W.shape[0])
    return M_new, u - W[r, p].unsqueeze(1) * G[p] + W[r, g].unsqueeze(1) * G[g]


def swap_forgets_u(W, M, G, u, g, p):
    M_new, _ = ex.apply_swap(W, M, G, u, g, p)
    return M_new, u


def swap_in_place(W, M, G, u, g, p):
    r = torch.arange(W.shape[0])
    M[r, g], M[r, p] = False, True
    return M, torch.where(M, W, torch.zeros_like(W)) @ G


def swap_returns_mask_only(W, M, G, u, g, p):
    return ex.apply_swap(W, M, G, u, g, p)[0]


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (swap_roles_swapped, ["swapped the roles of g and p", "M[r, g] becomes False"]),
        (swap_update_backwards, ["u moved the wrong way", "u += G[:, p] W_rp"]),
        (swap_forgets_u, ["did not update u"]),
        (swap_in_place, ["in place"]),
        (swap_returns_mask_only, ["tuple (new mask, new u)"]),
    ],
)
def test_apply_swap_names_the_slip(wrong, words):
    verdict = ex.check_apply_swap(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


# --------------------------------------------------------------------------- one greedy step
def _gain_cost(W, M, G):
    dW = torch.where(M, W, torch.zeros_like(W))
    u = dW @ G
    self_term = W**2 * G.diagonal()
    gain = (self_term - 2 * W * u).masked_fill(~M, float("inf"))
    cost = (self_term + 2 * W * u).masked_fill(M, float("inf"))
    return gain, cost, (dW * u).sum(1)


def _apply(M, g, p, where):
    out = M.clone()
    r = torch.arange(M.shape[0])[where]
    out[r, g[where]], out[r, p[where]] = False, True
    return out


def step_best_grow_and_prune_apart(W, M, G):
    gain, cost, E = _gain_cost(W, M, G)
    delta = gain.min(1).values + cost.min(1).values
    return _apply(M, gain.argmin(1), cost.argmin(1), delta < -RELATIVE_TOLERANCE * E)


def step_even_if_it_does_not_help(W, M, G):
    gain, cost, _ = _gain_cost(W, M, G)
    delta = (gain.unsqueeze(2) + cost.unsqueeze(1) - 2 * W.unsqueeze(2) * W.unsqueeze(1) * G).flatten(1)
    at = delta.argmin(1)
    return _apply(M, at // W.shape[1], at % W.shape[1], torch.ones(W.shape[0], dtype=torch.bool))


def step_largest_delta(W, M, G):
    gain, cost, _ = _gain_cost(W, M, G)
    delta = gain.unsqueeze(2) + cost.unsqueeze(1) - 2 * W.unsqueeze(2) * W.unsqueeze(1) * G
    delta = delta.masked_fill(~torch.isfinite(delta), float("-inf")).flatten(1)
    best, at = delta.max(1)
    return _apply(M, at // W.shape[1], at % W.shape[1], best > 0)


@pytest.mark.parametrize(
    ("wrong", "words"),
    [
        (step_best_grow_and_prune_apart, ["best grow and the best prune separately", "cross term"]),
        (step_even_if_it_does_not_help, ["does not lower the error", "never rises"]),
        (step_largest_delta, ["entries differ", "the library"]),
    ],
)
def test_exact_step_names_the_slip(wrong, words):
    verdict = ex.check_exact_step(wrong)
    assert not verdict and verdict.attempted
    assert all(w in verdict.message for w in words), verdict.message


def test_the_converged_case_has_rows_without_a_swap():
    """The case that catches 'swap even if it does not help' must really hold such rows."""
    case = next(c for c in ex._step_cases() if c.name.startswith("a converged mask"))
    W, M, G = case.args
    assert int((ex.exact_step(W, M, G) == M).all(1).sum()) >= W.shape[0] // 2
