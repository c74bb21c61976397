"""Exercises of notebook 07 (mask or weights?): the re-fit's normal equations and what they gain.

Each exercise is a solution ``<name>(...)`` (plain torch, the notebook's symbols) and a checker
``check_<name>(fn)`` that runs a reader's function on random cases, edge cases and a synthetic
layer against the library (``dsnot_lite.core.refit``), never against the solution. Symbols: ``W``
the dense weight (C_out, C_in), ``M`` the mask (True = pruned), ``G = X^T X`` (C_in, C_in),
``lam`` the damping. Row r keeps the columns ``S`` (``~M[r]``); its re-fitted kept weights solve

    (G_SS + lam I) w'_S = (G W_r)_S + lam W_rS,

and ``e_S = w'_S - W_rS`` solves ``(G_SS + lam I) e_S = b_S`` with ``b = G dW_r`` (``dW``: ``W``
where pruned, 0 elsewhere).
"""

from __future__ import annotations

import torch

from dsnot_lite.core.refit import refit

from .checking import Case, Verdict, close, run_checks
from .one_layer import Expected, hinted

MODULE = "refit"
PERCDAMP = 0.01


def _exact(W, M, G, lam):
    """The library's re-fit in float64, solved to rounding (``core.refit`` with a tight tolerance)."""
    percdamp = lam / float(G.double().diagonal().mean())
    return refit(W.double(), G.double(), M, percdamp=percdamp, tolerance=1e-15, max_iterations=10 * W.shape[1])


def _layer(rows: int, cols: int, seed: int, sparsity: float = 0.5, tokens: int | None = None, dead: int = 0):
    """A random layer, a random mask pruning ``int(cols * sparsity)`` weights per row, G = X^T X of
    correlated inputs with a mean (``dead`` input channels never fire), and SparseGPT's damping."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    X = (torch.randn(tokens or 4 * cols, cols, generator=gen, dtype=torch.float64) + 1.0) @ mix
    X[:, :dead] = 0
    G = X.T @ X
    M = torch.zeros(rows, cols, dtype=torch.bool)
    M.scatter_(1, torch.rand(rows, cols, generator=gen).argsort(1)[:, : int(cols * sparsity)], True)
    return W, M, G, PERCDAMP * float(G.diagonal().mean())


def _synthetic():
    """A synthetic layer with outlier channels (``tutorial.layers.synthetic_layer``), Wanda's 60% mask."""
    from dsnot_lite.core.pruners import initial_mask
    from dsnot_lite.tutorial.layers import synthetic_layer

    layer = synthetic_layer(c_out=12, c_in=48, samples=2, tokens=64, n_outliers=3, seed=5)
    W, G = layer.weight.double(), layer.gram.double()
    return W, initial_mask(layer.weight, layer.stats, "wanda", 0.6), G, PERCDAMP * float(G.diagonal().mean())


def _cases(seed0: int) -> list[Case]:
    cases = []
    for i, (rows, cols, sparsity, tokens, dead) in enumerate(((3, 8, 0.5, None, 0), (6, 16, 0.75, None, 0), (5, 24, 0.25, None, 2),
                                                                (4, 32, 0.5, 12, 0))):  # fmt: skip
        what = f"random {rows}x{cols}, {sparsity:.0%} pruned" + (f", {tokens} tokens (G singular)" if tokens else "")
        cases.append(
            Case(
                what + (f", {dead} inputs that never fire" if dead else ""), _layer(rows, cols, seed0 + i, sparsity, tokens, dead)
            )
        )
    cases.append(Case("a synthetic layer with outlier channels, Wanda 60%", _synthetic()))
    return cases


# --------------------------------------------------------------------------- 1. the normal equations
def refit_rows(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor, lam: float) -> torch.Tensor:
    """The re-fitted weight: in every row r, with S the kept columns (~M[r]), solve
    (G_SS + lam I) w'_S = (G W_r)_S + lam W_rS; pruned weights are 0. Returns a (C_out, C_in) tensor."""
    W_new = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = (~M[r]).nonzero().squeeze(1)  # the kept columns of row r
        A = G[S][:, S] + lam * torch.eye(len(S), dtype=G.dtype)  # G_SS + lam I
        b = (G @ W[r])[S] + lam * W[r, S]  # (G W_r)_S + lam W_rS
        W_new[r, S] = torch.linalg.solve(A, b)
    return W_new


def _rows_expected(W, M, G, lam) -> Expected:
    want = _exact(W, M, G, lam).weight
    keep = ~M
    no_damping_rhs, only_kept = torch.zeros_like(W), torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = keep[r].nonzero().squeeze(1)
        A = G[S][:, S] + lam * torch.eye(len(S), dtype=G.dtype)
        no_damping_rhs[r, S] = torch.linalg.solve(A, (G @ W[r])[S])
        only_kept[r, S] = torch.linalg.solve(A, G[S][:, S] @ W[r, S] + lam * W[r, S])
    return Expected(
        want,
        (
            (no_damping_rhs, "the right-hand side lacks lam W_rS: with lam I on the left only, you pull the kept weights "
                             "toward 0 instead of toward their dense values"),
            (only_kept, "you used G_SS W_rS (the kept weights alone) on the right: the re-fit must make up for the PRUNED "
                        "weights too, which (G W_r)_S = G_SS W_rS + G_SP W_rP carries; yours gives back W_rS"),
            (torch.where(M, W, want), "the pruned weights must be 0 in the result"),
        ),
    )  # fmt: skip


def check_refit_rows(fn) -> Verdict:
    """Check a reader's ``refit_rows(W, M, G, lam)`` against the library's re-fit (``core.refit.refit``,
    float64, solved to rounding)."""
    return run_checks(
        f"{MODULE}.refit_rows", fn, _cases(40), _rows_expected, hinted(close(rtol=1e-6, atol=1e-8, what="re-fitted weight"))
    )


# --------------------------------------------------------------------------- 2. what the re-fit gains
def refit_gain(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor, lam: float) -> torch.Tensor:
    """How much the re-fit lowers every row's true error E_r, without recomputing E_r: with
    b = G dW_r and e_S solving (G_SS + lam I) e_S = b_S, the drop is b_S . e_S + lam ||e_S||^2.
    Returns a (C_out,) tensor."""
    dW = torch.where(M, W, torch.zeros_like(W))  # the removed weights
    gain = torch.zeros(W.shape[0], dtype=W.dtype)
    for r in range(W.shape[0]):
        S = (~M[r]).nonzero().squeeze(1)
        b = (G @ dW[r])[S]
        e = torch.linalg.solve(G[S][:, S] + lam * torch.eye(len(S), dtype=G.dtype), b)
        gain[r] = b @ e + lam * e @ e
    return gain


def _gain_expected(W, M, G, lam) -> Expected:
    fitted = _exact(W, M, G, lam)
    want = fitted.initial_error - fitted.final_error
    e = (fitted.weight - W) * (~M)
    b = (torch.where(M, W, torch.zeros_like(W)) @ G) * (~M)
    return Expected(
        want,
        (
            (
                (b * e).sum(1),
                "you left out lam ||e_S||^2: E_after = E_before - 2 b.e + e G_SS e, and e G_SS e = b.e - lam ||e||^2",
            ),
            (-want, "the sign is flipped: the gain is the error BEFORE the re-fit minus the error after (it is >= 0)"),
            ((b * b).sum(1), "you used b.b: the gain needs the solution e_S of (G_SS + lam I) e_S = b_S, not b itself"),
        ),
    )


def check_refit_gain(fn) -> Verdict:
    """Check a reader's ``refit_gain(W, M, G, lam)`` against the drop of the true error that the library's
    re-fit reports (``initial_error - final_error``, float64)."""
    return run_checks(f"{MODULE}.refit_gain", fn, _cases(50), _gain_expected, hinted(close(rtol=1e-5, atol=1e-6, what="gain")))
