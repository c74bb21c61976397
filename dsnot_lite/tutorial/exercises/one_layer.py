"""Exercises of notebook 01 (one linear layer): Wanda's mask, the expected error, Eq. 2 and Eq. 3.

Each exercise is a solution ``<name>(...)`` (plain torch, the paper's symbols) and a checker
``check_<name>(fn)`` that runs a reader's function on random cases, edge cases and a synthetic
layer with outlier channels against the library (``dsnot_lite.core``), never against the solution.
Symbols: ``W`` the weight (C_out, C_in), ``M`` the mask (True = pruned), ``E_A`` = E[A_k],
``Var_A`` = Var(A_k), ``A_norm_sq`` = ||A_k||_2^2 (the reference's ``scaler_row``, R1).

``Expected`` and ``hinted`` (used by ``statistics`` too) let a checker recognise a known slip: the
library's answer comes with the answers of typical mistakes, and a reader's answer that equals one
of them gets that mistake's explanation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from dsnot_lite.core.dsnot import dsnot, preset
from dsnot_lite.core.pruners import initial_mask, mask_from_score
from dsnot_lite.core.stats import ChannelStats

from .checking import Case, Compare, Verdict, close, run_checks, same_index, same_mask

MODULE = "one_layer"


# --------------------------------------------------------------------------- slips
@dataclass(frozen=True)
class Expected:
    """The library's answer and the answers of known slips, each with what it means."""

    value: object
    slips: tuple[tuple[object, str], ...] = ()


def hinted(compare: Compare) -> Compare:
    """``compare`` against ``Expected.value``; on a miss, name the slips whose answer the reader gave
    (several when this case cannot tell them apart)."""

    def check(got, want: Expected) -> str | None:
        problem = compare(got, want.value)
        if problem is None:
            return None
        meanings = [meaning for answer, meaning in want.slips if compare(got, answer) is None]
        return f"{'; or '.join(meanings)} ({problem})" if meanings else problem

    return check


def _stats(E_A: torch.Tensor, Var_A: torch.Tensor | None = None, A_norm_sq: torch.Tensor | None = None) -> ChannelStats:
    """Statistics given directly: both flavours (official and true) see this E[A] and Var(A)."""
    ones = torch.ones_like(E_A)
    return ChannelStats.from_tensors({
        "sum_metric_row": E_A, "mean": E_A, "var": ones if Var_A is None else Var_A,
        "scaler_row": ones if A_norm_sq is None else A_norm_sq,
    })  # fmt: skip


def _first_step(W, M, E_A, Var_A=None, A_norm_sq=None, var_power: float = 1.0):
    """The library's first DSnoT iteration (Algorithm 1 without the reference quirks): its trace."""
    cfg = replace(preset("paper"), T=1, eps=0.0, var_power=var_power)
    return dsnot(W, _stats(E_A, Var_A, A_norm_sq), M, cfg, trace=True)


# --------------------------------------------------------------------------- cases
def _layer(rows: int, cols: int, seed: int, sparsity: float = 0.6):
    """A random layer: W, a Wanda mask, E[A] (mixed signs), Var(A) > 0 and ||A||^2 > 0."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) / cols**0.5
    E_A = torch.randn(cols, generator=g)
    Var_A = torch.rand(cols, generator=g) + 0.05
    A_norm_sq = (E_A**2 + Var_A) * 64
    M = mask_from_score(W.abs() * A_norm_sq.sqrt(), sparsity)
    return W, M, E_A, Var_A, A_norm_sq


def hand_example():
    """The 2 x 8 example of notebook 01 (README, R3): row 1 is row 0 negated; every E[A_k] = 1,
    Var(A_k) = 1; channel 7 has ||A_7|| = 10, so its small weight -0.1 is kept by Wanda."""
    row = torch.tensor([0.30, 0.20, 0.15, 0.02, 0.9, 0.8, 0.7, -0.10])
    W = torch.stack([row, -row])
    E_A, Var_A = torch.ones(8), torch.ones(8)
    A_norm_sq = torch.tensor([1.0] * 7 + [100.0])
    return W, E_A, Var_A, A_norm_sq


def _synthetic():
    """A synthetic layer with outlier channels (``tutorial.layers.synthetic_layer``), official statistics."""
    from dsnot_lite.tutorial.layers import synthetic_layer

    layer = synthetic_layer(c_out=32, c_in=128, samples=2, tokens=32, n_outliers=3, seed=3)
    s = layer.stats
    M = initial_mask(layer.weight, s, "wanda", 0.6)
    return layer.weight, M, s.sum_metric_row, s.var, s.scaler_row


def _real_cases(with_var: bool, with_norm: bool, suffix: str = "", **kwargs) -> list[Case]:
    """The hand example (both rows) and a synthetic layer, as cases taking (W, M, E_A[, Var_A][, A_norm_sq])."""
    W, E_A, Var_A, A_norm_sq = hand_example()
    M = mask_from_score(W.abs() * A_norm_sq.sqrt(), 0.5)
    cases = []
    for name, (w, m, e, v, n) in (("the 2 x 8 hand example", (W, M, E_A, Var_A, A_norm_sq)),
                                  ("a synthetic layer with outlier channels", _synthetic())):  # fmt: skip
        args = (w, m, e) + ((v,) if with_var else ()) + ((n,) if with_norm else ())
        cases.append(Case(name + suffix, args, dict(kwargs)))
    return cases


# --------------------------------------------------------------------------- 1. Wanda's mask
def wanda_mask(W: torch.Tensor, A_norm_sq: torch.Tensor, p: float) -> torch.Tensor:
    """Wanda's mask (True = pruned): in every row, the ``int(C_in * p)`` weights with the smallest
    score S_rk = |W_rk| * ||A_k||_2 (``A_norm_sq`` holds ||A_k||_2^2). Ties go to the lower column."""
    S = W.abs() * A_norm_sq.sqrt()  # Wanda score of every weight
    n = int(W.shape[1] * p)  # every row loses the same number of weights (R7)
    order = torch.sort(S, dim=1, stable=True).indices  # per row, smallest score first
    M = torch.zeros(W.shape, dtype=torch.bool)
    M.scatter_(1, order[:, :n], True)
    return M


def _wanda_expected(W, A_norm_sq, p) -> Expected:
    S = W.abs() * A_norm_sq.sqrt()
    n_layer = int(S.numel() * p)
    layer_wide = torch.zeros(S.numel(), dtype=torch.bool)
    layer_wide[torch.sort(S.flatten(), stable=True).indices[:n_layer]] = True
    return Expected(
        initial_mask(W, _stats(torch.zeros_like(A_norm_sq), None, A_norm_sq), "wanda", p),
        (
            (mask_from_score(-S, p), "you pruned the LARGEST scores; Wanda prunes the smallest |W| ||A|| in each row"),
            (
                layer_wide.reshape(S.shape),
                "you used one threshold for the whole layer; Wanda (and DSnoT, R7) "
                "prunes the same number of weights in every row: sort each row on its own",
            ),
            (
                mask_from_score(W.abs() * A_norm_sq, p),
                "you used ||A_k||^2; the Wanda score takes the norm ||A_k||_2 = sqrt(A_norm_sq)",
            ),
            (mask_from_score(W.abs(), p), "you ranked by |W| alone (magnitude pruning); Wanda multiplies by ||A_k||_2"),
        ),
    )


def check_wanda_mask(fn) -> Verdict:
    """Check a reader's ``wanda_mask(W, A_norm_sq, p)`` against ``core.pruners.initial_mask``."""
    cases = []
    for rows, cols, seed, p in ((4, 16, 0, 0.5), (8, 32, 1, 0.6), (16, 64, 2, 0.7)):
        W, _, _, _, A_norm_sq = _layer(rows, cols, seed)
        cases.append(Case(f"random {rows}x{cols}, p={p}", (W, A_norm_sq, p)))
    W, _, _, A_norm_sq = hand_example()
    cases.append(Case("the 2 x 8 hand example, p=0.5", (W, A_norm_sq, 0.5)))
    ties = torch.tensor([[0.5] * 8, [1.0, -1.0] * 4])
    cases.append(Case("ties (equal scores: the lower column goes first)", (ties, torch.ones(8), 0.5)))
    W, _, _, _, A_norm_sq = _layer(4, 16, 4)
    A_norm_sq[3] = 0.0
    cases.append(Case("a dead channel (||A_3|| = 0)", (W, A_norm_sq, 0.6)))
    cases.append(Case("p = 0 (nothing pruned)", (W, A_norm_sq, 0.0)))
    W, _, _, _, A_norm_sq = _synthetic()
    cases.append(Case("a synthetic layer with outlier channels, p=0.6", (W, A_norm_sq, 0.6)))
    return run_checks(f"{MODULE}.wanda_mask", fn, cases, _wanda_expected, hinted(same_mask("Wanda mask")))


# --------------------------------------------------------------------------- 2. E[Delta_r]
def expected_error(W: torch.Tensor, M: torch.Tensor, E_A: torch.Tensor) -> torch.Tensor:
    """E[Delta_r] of every row (paper Eq. 1 in expectation): the sum over the row's PRUNED weights
    of W_rk * E[A_k]. Returns a float tensor of shape (C_out,)."""
    contribution = W * E_A  # W_rk E[A_k]: what weight k adds to the row's output on average
    return (contribution * M).sum(dim=1)  # only the removed weights are missing from the output


def _error_expected(W, M, E_A) -> Expected:
    c = W * E_A
    return Expected(
        _first_step(W, M, E_A).initial_error,
        (
            ((c * ~M).sum(1), "you summed over the KEPT weights; the error is what the PRUNED weights no longer add"),
            ((W.abs() * E_A * M).sum(1), "you used |W|; the contribution keeps the sign of W_rk"),
            (-(c * M).sum(1), "the sign is flipped: Delta = W A - (M.W) A is what the pruned weights contributed"),
        ),
    )


def check_expected_error(fn) -> Verdict:
    """Check a reader's ``expected_error(W, M, E_A)`` against ``core.dsnot``'s initial E[Delta_r]."""
    cases = []
    for rows, cols, seed in ((4, 16, 0), (8, 32, 1)):
        W, M, E_A, _, _ = _layer(rows, cols, seed)
        cases.append(Case(f"random {rows}x{cols}", (W, M, E_A)))
    W, M, E_A, _, _ = _layer(6, 24, 2)
    M = M.clone()
    M[2] = torch.arange(24) % 3 == 0  # rows may prune different counts here
    cases.append(Case("rows with different numbers of pruned weights", (W, M, E_A)))
    cases += _real_cases(with_var=False, with_norm=False)
    return run_checks(
        f"{MODULE}.expected_error", fn, cases, _error_expected, hinted(close(rtol=1e-5, atol=1e-5, what="E[Delta_r]"))
    )


# --------------------------------------------------------------------------- 3. grow (Eq. 2)
def grow_choice(W: torch.Tensor, M: torch.Tensor, E_A: torch.Tensor, Var_A: torch.Tensor, var_power: float = 1.0) -> torch.Tensor:
    """DSnoT's first grow choice in every row (paper Eq. 2): among the PRUNED weights, the column
    with the largest score W_rk E[A_k] / Var(A_k)^var_power if E[Delta_r] > 0, the smallest
    otherwise. Returns a long tensor of shape (C_out,)."""
    c = W * E_A  # contributions W_rk E[A_k]
    error = (c * M).sum(dim=1)  # E[Delta_r]
    score = c / Var_A**var_power  # Eq. 2: a steady contribution (small variance) scores higher
    largest = score.masked_fill(~M, float("-inf")).argmax(dim=1)
    smallest = score.masked_fill(~M, float("inf")).argmin(dim=1)
    return torch.where(error > 0, largest, smallest)  # regrow what cancels the error's sign


def _grow_expected(W, M, E_A, Var_A, var_power=1.0) -> Expected:
    c = W * E_A
    error = (c * M).sum(1)

    def pick(score, among):
        return torch.where(error > 0, score.masked_fill(~among, float("-inf")).argmax(1),
                           score.masked_fill(~among, float("inf")).argmin(1))  # fmt: skip

    slips = [
        (pick(c / Var_A, M), "you ignored var_power: Eq. 2 divides by Var(A_k) to the power var_power"),
        (pick(c, M), "you left out the variance: Eq. 2 divides W_rk E[A_k] by Var(A_k)^var_power"),
        ((c / Var_A**var_power).masked_fill(~M, float("-inf")).argmax(1),
         "you always took the largest score; when E[Delta_r] <= 0 Eq. 2 takes the SMALLEST (most negative) one"),
        (pick(c / Var_A**var_power, torch.ones_like(M)), "you chose among all weights; grow brings back a PRUNED weight (M = True)"),
    ]  # fmt: skip
    return Expected(_first_step(W, M, E_A, Var_A, var_power=var_power).trace.grown[0], tuple(slips))


def check_grow_choice(fn) -> Verdict:
    """Check a reader's ``grow_choice(W, M, E_A, Var_A, var_power)`` against ``core.dsnot``'s first iteration."""
    cases = []
    for rows, cols, seed, power in ((4, 16, 0, 1.0), (8, 32, 1, 2.0), (8, 32, 2, 0.5), (6, 24, 3, 0.0)):
        W, M, E_A, Var_A, _ = _layer(rows, cols, seed)
        cases.append(Case(f"random {rows}x{cols}, var_power={power}", (W, M, E_A, Var_A), {"var_power": power}))
    W, M, E_A, Var_A, _ = _layer(8, 32, 5)
    Var_A = Var_A.clone()
    Var_A[int(M[0].nonzero()[0])] = 0.0  # a constant channel among row 0's pruned weights
    cases.append(Case("a zero-variance channel (its score is +-inf)", (W, M, E_A, Var_A), {"var_power": 1.0}))
    cases += _real_cases(with_var=True, with_norm=False, var_power=1.0)
    cases.append(_real_cases(with_var=True, with_norm=False, suffix=", var_power=2", var_power=2.0)[1])
    return run_checks(f"{MODULE}.grow_choice", fn, cases, _grow_expected, hinted(same_index("grown column")))


# --------------------------------------------------------------------------- 4. prune (Eq. 3)
def prune_choice(W: torch.Tensor, M: torch.Tensor, E_A: torch.Tensor, A_norm_sq: torch.Tensor) -> torch.Tensor:
    """DSnoT's first prune choice in every row (paper Eq. 3): among the KEPT weights whose
    contribution W_rk E[A_k] has the sign opposite to E[Delta_r] (negative if E[Delta_r] > 0,
    positive if E[Delta_r] < 0), the one with the smallest Wanda score |W_rk| ||A_k||_2.
    Returns a long tensor of shape (C_out,), -1 in rows with no such weight."""
    c = W * E_A
    error = (c * M).sum(dim=1, keepdim=True)  # E[Delta_r]
    opposite = torch.where(error > 0, c < 0, c > 0)  # removing it moves E[Delta_r] toward 0
    candidate = ~M & opposite
    S = W.abs() * A_norm_sq.sqrt()  # Wanda score: what the weight costs on average
    column = S.masked_fill(~candidate, float("inf")).argmin(dim=1)
    return torch.where(candidate.any(dim=1), column, -1)


def _prune_expected(W, M, E_A, A_norm_sq) -> Expected:
    c, S = W * E_A, W.abs() * A_norm_sq.sqrt()
    error = (c * M).sum(1, keepdim=True)

    def pick(candidate, key=S):
        return torch.where(candidate.any(1), key.masked_fill(~candidate, float("inf")).argmin(1), -1)

    opposite = torch.where(error > 0, c < 0, c > 0)
    same = torch.where(error > 0, c > 0, c < 0)
    return Expected(
        _first_step(W, M, E_A, None, A_norm_sq).trace.pruned[0],
        (
            (
                pick(~M & same),
                "wrong sign rule: you pruned a weight whose contribution has the error's sign, "
                "which pushes E[Delta_r] further from 0; Eq. 3 takes the OPPOSITE sign",
            ),
            (pick(M & opposite), "you chose among the pruned weights; prune removes a KEPT weight (M = False)"),
            (
                pick(~M),
                "you ignored the sign rule of Eq. 3: only kept weights whose contribution has the sign "
                "opposite to E[Delta_r] are candidates",
            ),
            (pick(~M & opposite, W.abs()), "you ranked by |W| alone; Eq. 3 ranks by the Wanda score |W_rk| ||A_k||_2"),
        ),
    )


def check_prune_choice(fn) -> Verdict:
    """Check a reader's ``prune_choice(W, M, E_A, A_norm_sq)`` against ``core.dsnot``'s first iteration."""
    cases = []
    for rows, cols, seed in ((4, 16, 0), (8, 32, 1), (16, 64, 2)):
        W, M, E_A, _, A_norm_sq = _layer(rows, cols, seed)
        cases.append(Case(f"random {rows}x{cols}", (W, M, E_A, A_norm_sq)))
    W, M, E_A, _, A_norm_sq = _layer(4, 16, 6)
    E_A = E_A.clone()
    E_A[int((~M[0]).nonzero()[0])] = 0.0  # a kept weight with zero contribution: neither sign
    cases.append(Case("a channel with E[A_k] = 0 (zero contribution: no sign, no candidate)", (W, M, E_A, A_norm_sq)))
    W = torch.tensor([[0.5, 0.4, 2.0, 3.0], [-0.5, 0.4, 2.0, 3.0]])
    M = torch.tensor([[True, True, False, False]] * 2)
    cases.append(Case("a row with no kept weight of the opposite sign (answer -1)", (W, M, torch.ones(4), torch.ones(4))))
    cases += _real_cases(with_var=False, with_norm=True)
    return run_checks(f"{MODULE}.prune_choice", fn, cases, _prune_expected, hinted(same_index("pruned column")))
