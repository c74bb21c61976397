"""Exercises of notebook 06 (the exact refiner): the swap change, the swap itself, one greedy step.

Each exercise is a solution ``<name>(...)`` (plain torch, the spec's symbols, section 6) and a
checker ``check_<name>(fn)`` that runs a reader's function on random cases, edge cases and a
synthetic layer against the library (``dsnot_lite.core.exact`` and ``core.errors``), never against
the solution. Symbols: ``W`` the weight (C_out, C_in), ``M`` the mask (True = pruned), ``G`` the
Gram matrix ``X^T X`` (C_in, C_in), ``dW`` the removed weights (``W`` where pruned, 0 elsewhere),
``u = dW G`` (row r: ``u_r = G dW_r^T``, as G is symmetric), so that ``E_r = dW_r G dW_r^T``.
A swap in row r grows ``g[r]`` (a pruned column) and prunes ``p[r]`` (a kept column).
"""

from __future__ import annotations

import torch

from dsnot_lite.core.errors import removed_weights
from dsnot_lite.core.exact import RELATIVE_TOLERANCE, ExactConfig, exact_refine, squared_errors

from .checking import Case, Verdict, close, run_checks, same_mask
from .one_layer import Expected, hinted

MODULE = "exact"


# --------------------------------------------------------------------------- cases
def _layer(rows: int, cols: int, seed: int, sparsity: float = 0.5, tokens: int | None = None):
    """A random layer: W, a mask pruning ``int(cols * sparsity)`` weights per row, and G = X^T X
    of random inputs (with a mean, so G is not diagonal; fewer tokens than inputs: G is singular)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen) / cols**0.5
    X = torch.randn(tokens or 4 * cols, cols, generator=gen) + torch.randn(cols, generator=gen)
    G = X.T @ X
    n = int(cols * sparsity)
    M = torch.zeros(rows, cols, dtype=torch.bool)
    M.scatter_(1, torch.rand(rows, cols, generator=gen).argsort(1)[:, :n], True)
    return W, M, G


def _synthetic(sparsity: float = 0.6):
    """A synthetic layer with outlier channels (``tutorial.layers.synthetic_layer``), Wanda's mask."""
    from dsnot_lite.core.pruners import initial_mask
    from dsnot_lite.tutorial.layers import synthetic_layer

    layer = synthetic_layer(c_out=16, c_in=64, samples=2, tokens=32, n_outliers=3, seed=3)
    return layer.weight, initial_mask(layer.weight, layer.stats, "wanda", sparsity), layer.gram


def _pairs(M: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random pruned column g and kept column p in every row (every row must have both)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(M.shape, generator=gen)
    g = noise.masked_fill(~M, -1.0).argmax(1)
    p = noise.masked_fill(M, -1.0).argmax(1)
    return g, p


def _swapped(M: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The mask after growing ``g`` and pruning ``p`` in every row."""
    rows = torch.arange(M.shape[0])
    out = M.clone()
    out[rows, g], out[rows, p] = False, True
    return out


def _pair_cases(seed0: int) -> list[Case]:
    """Cases taking (W, M, G, g, p): random layers, a singular G, a synthetic layer, and the
    largest weights of each row as the pair (where the cross term is biggest)."""
    cases = []
    for i, (rows, cols, tokens) in enumerate(((4, 8, None), (8, 16, None), (6, 32, 8))):
        W, M, G = _layer(rows, cols, seed0 + i, tokens=tokens)
        what = f"random {rows}x{cols}" + (f", {tokens} tokens (G singular)" if tokens else "")
        cases.append(Case(what, (W, M, G, *_pairs(M, seed0 + i))))
    W, M, G = _synthetic()
    cases.append(Case("a synthetic layer with outlier channels, Wanda 60%", (W, M, G, *_pairs(M, seed0))))
    W, M, G = _layer(8, 16, seed0 + 7)
    big = W.abs()
    g, p = big.masked_fill(~M, -1.0).argmax(1), big.masked_fill(M, -1.0).argmax(1)
    cases.append(Case("the largest pruned and kept weight of each row (a large cross term)", (W, M, G, g, p)))
    return cases


# --------------------------------------------------------------------------- 1. delta(g, p)
def swap_delta(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The change of every row's true error E_r = dW_r G dW_r^T when row r grows g[r] (pruned) and
    prunes p[r] (kept), from u = G dW_r^T (spec section 6):
    delta = (W_rg^2 G_gg - 2 W_rg u_g) + (W_rp^2 G_pp + 2 W_rp u_p) - 2 W_rg W_rp G_gp.
    Returns a float tensor of shape (C_out,)."""
    dW = torch.where(M, W, torch.zeros_like(W))  # the removed weights
    u = dW @ G  # row r: u_r = G dW_r^T
    r = torch.arange(W.shape[0])
    w_g, w_p = W[r, g], W[r, p]
    grow_gain = w_g**2 * G[g, g] - 2 * w_g * u[r, g]  # g leaves dW
    prune_cost = w_p**2 * G[p, p] + 2 * w_p * u[r, p]  # p joins dW
    cross = w_g * w_p * G[g, p]  # the two change together
    return grow_gain + prune_cost - 2 * cross


def _delta_expected(W, M, G, g, p) -> Expected:
    W64, G64 = W.double(), G.double()
    want = squared_errors(W64, _swapped(M, g, p), G64) - squared_errors(W64, M, G64)
    r = torch.arange(W.shape[0])
    cross = W64[r, g] * W64[r, p] * G64[g, p]
    return Expected(
        want,
        (
            (want + 2 * cross, "you left out the cross term -2 W_rg W_rp G_gp: g and p change the error together, not apart"),
            (want + 4 * cross, "the cross term has the wrong sign: it is -2 W_rg W_rp G_gp (g leaves dW as p joins it)"),
            (-want, "the sign is flipped: delta is the error AFTER the swap minus the error before (negative = it helps)"),
        ),
    )


def check_swap_delta(fn) -> Verdict:
    """Check a reader's ``swap_delta(W, M, G, g, p)`` against the true error recomputed by the library
    (``core.exact.squared_errors`` after the swap minus before)."""
    return run_checks(f"{MODULE}.swap_delta", fn, _pair_cases(10), _delta_expected,
                      hinted(close(rtol=1e-4, atol=1e-4, what="delta")))  # fmt: skip


# --------------------------------------------------------------------------- 2. the swap
def apply_swap(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor, u: torch.Tensor, g: torch.Tensor, p: torch.Tensor):
    """Apply the swap of every row r (grow g[r], prune p[r]) to the mask and to u = dW G without
    recomputing u: u_r += G[:, p] W_rp - G[:, g] W_rg. Returns (the new mask, the new u); the
    inputs are left unchanged."""
    r = torch.arange(W.shape[0])
    M_new = M.clone()
    M_new[r, g] = False  # g grows back: it leaves the pruned set
    M_new[r, p] = True  # p is pruned: it joins it
    u_new = u + W[r, p].unsqueeze(1) * G[p] - W[r, g].unsqueeze(1) * G[g]  # G[p] = G[:, p]^T (G symmetric)
    return M_new, u_new


def _swap_expected(W, M, G, u, g, p) -> Expected:
    after = _swapped(M, g, p)
    want = (after, removed_weights(W, after) @ G)  # the library's dW of the new mask, times G
    backwards = u - (want[1] - u)
    return Expected(
        want,
        (
            ((M, backwards),
             "you swapped the roles of g and p: g is pruned and grows back, so M[r, g] becomes False; "
             "p is kept and is pruned, so M[r, p] becomes True (your mask did not change)"),
            ((after, backwards),
             "u moved the wrong way (g and p swapped in the update): p joins dW, so u += G[:, p] W_rp; "
             "g leaves it, so u -= G[:, g] W_rg"),
            ((after, u), "you did not update u: it must follow the mask (u = dW G for the new dW)"),
        ),
    )  # fmt: skip


def _same_swap(got, want) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2:
        return f"expected a tuple (new mask, new u), got {type(got).__name__}"
    problem = same_mask("new mask")(got[0], want[0])
    if problem:
        return problem
    return close(rtol=1e-4, atol=1e-3, what="new u")(got[1], want[1])


def check_apply_swap(fn) -> Verdict:
    """Check a reader's ``apply_swap(W, M, G, u, g, p)``: the mask with g grown and p pruned, and u
    equal to the library's ``removed_weights(W, new mask) @ G``."""
    cases = []
    for case in _pair_cases(20):
        W, M, G, g, p = case.args
        cases.append(Case(case.name, (W, M, G, removed_weights(W, M) @ G, g, p)))
    return run_checks(f"{MODULE}.apply_swap", fn, cases, _swap_expected, hinted(_same_swap))


# --------------------------------------------------------------------------- 3. one greedy step
def exact_step(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """One step of the exact refiner, exhaustive: in every row, of ALL pairs (g pruned, p kept),
    take the one with the most negative delta(g, p), if it lowers E_r by more than 1e-5 of E_r
    (``core.exact.RELATIVE_TOLERANCE``: rounding noise is no gain); else leave the row alone.
    Returns the new mask."""
    dW = torch.where(M, W, torch.zeros_like(W))
    u = dW @ G
    E = (dW * u).sum(1)  # E_r
    self_term = W**2 * G.diagonal()  # W_rk^2 G_kk
    grow_gain = (self_term - 2 * W * u).masked_fill(~M, float("inf"))  # only pruned columns can grow
    prune_cost = (self_term + 2 * W * u).masked_fill(M, float("inf"))  # only kept columns can be pruned
    cross = W.unsqueeze(2) * W.unsqueeze(1) * G  # [r, g, p] = W_rg W_rp G_gp
    delta = grow_gain.unsqueeze(2) + prune_cost.unsqueeze(1) - 2 * cross  # every pair of every row
    best, at = delta.flatten(1).min(1)
    g, p = at // W.shape[1], at % W.shape[1]
    lowers = best < -RELATIVE_TOLERANCE * E.abs()
    M_new = M.clone()
    r = torch.arange(W.shape[0])[lowers]
    M_new[r, g[lowers]], M_new[r, p[lowers]] = False, True
    return M_new


def _step_expected(W, M, G) -> Expected:
    want = exact_refine(W, G, M, ExactConfig(T=1, shortlist=None)).mask
    dW = removed_weights(W, M)
    u = dW @ G
    self_term = W * W * G.diagonal()
    gain = (self_term - 2 * W * u).masked_fill(~M, float("inf"))
    cost = (self_term + 2 * W * u).masked_fill(M, float("inf"))
    separate = _swapped(M, gain.argmin(1), cost.argmin(1))
    cross = W.unsqueeze(2) * W.unsqueeze(1) * G
    at = (gain.unsqueeze(2) + cost.unsqueeze(1) - 2 * cross).flatten(1).argmin(1)
    always = _swapped(M, at // W.shape[1], at % W.shape[1])
    return Expected(
        want,
        (
            (separate, "you picked the best grow and the best prune separately; the best PAIR also weighs the "
                       "cross term -2 W_rg W_rp G_gp, so score every (g, p) together"),
            (always, "you swapped even where the best pair does not lower the error (delta >= 0): such a row must "
                     "stay as it is, so E_r never rises"),
        ),
    )  # fmt: skip


def _step_cases() -> list[Case]:
    """Cases taking (W, M, G): random layers, a singular G, a synthetic layer, and a mask where most
    rows have no improving swap left (the refiner's converged mask)."""
    cases = []
    for i, (rows, cols, tokens) in enumerate(((4, 8, None), (8, 16, None), (6, 32, 8))):
        W, M, G = _layer(rows, cols, 30 + i, tokens=tokens)
        cases.append(Case(f"random {rows}x{cols}" + (f", {tokens} tokens (G singular)" if tokens else ""), (W, M, G)))
    W, M, G = _synthetic()
    cases.append(Case("a synthetic layer with outlier channels, Wanda 60%", (W, M, G)))
    W, M, G = _layer(8, 16, 34)
    done = exact_refine(W, G, M, ExactConfig(T=100, shortlist=None)).mask
    cases.append(Case("a converged mask (no swap lowers the error in most rows)", (W, done, G)))
    return cases


def check_exact_step(fn) -> Verdict:
    """Check a reader's ``exact_step(W, M, G)`` against ``exact_refine(W, G, M, ExactConfig(T=1, shortlist=None))``."""
    return run_checks(f"{MODULE}.exact_step", fn, _step_cases(), _step_expected, hinted(same_mask("mask after one step")))
