"""Exercises of notebooks 02 and 03: the statistics DSnoT reads, the true error and its split, N:M masks, a
variance floor for Eq. 2.

Each exercise is a solution ``<name>(...)`` (plain torch, the paper's symbols) and a checker
``check_<name>(fn)`` that runs a reader's function on random cases, edge cases and the tokens of a
synthetic layer with outlier channels against the library (``dsnot_lite.core``: ``stats``,
``errors``, ``pruners``), never against the solution, and names known slips (``one_layer.hinted``).
Symbols: ``X`` the calibration inputs, ``W`` the weight (C_out, C_in), ``M`` the mask
(True = pruned), ``G = X^T X`` the Gram matrix over all L tokens, ``mu`` the token mean.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dsnot_lite.core.dsnot import dsnot, preset
from dsnot_lite.core.errors import error_parts, gram_matrix, removed_weights, row_squared_error
from dsnot_lite.core.pruners import mask_from_score
from dsnot_lite.core.stats import ChannelStats

from .checking import Case, Compare, Verdict, close, run_checks, same_index, same_mask
from .one_layer import Expected, _stats, hinted

MODULE = "statistics"


def _inputs(samples: int, tokens: int, channels: int, seed: int, drift: float = 0.5) -> torch.Tensor:
    """Random inputs whose channel means drift from sample to sample (so pooled != per-sample variance)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(channels, generator=g) + drift * torch.randn(samples, 1, channels, generator=g)
    return torch.randn(samples, tokens, channels, generator=g) * (torch.rand(channels, generator=g) + 0.2) + mean


def _synthetic():
    """A synthetic layer with outlier channels and its calibration tokens (``tutorial.layers.synthetic_layer``)."""
    from dsnot_lite.tutorial.layers import synthetic_layer

    return synthetic_layer(c_out=24, c_in=96, samples=3, tokens=48, n_outliers=3, seed=5)


def _mask(W: torch.Tensor, seed: int, sparsity: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mask_from_score(torch.rand(W.shape, generator=g) * W.abs(), sparsity)


def _each(compare: Compare, names: tuple[str, ...]) -> Compare:
    """Compare tuples entry by entry, naming the entry that differs."""

    def check(got, want) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"return a tuple of {len(want)} tensors ({', '.join(names)}), got {type(got).__name__}"
        for name, g, w in zip(names, got, want):
            problem = compare(g, w)
            if problem:
                return f"{name}: {problem}"
        return None

    return check


# --------------------------------------------------------------------------- 1. R1 statistics (02)
def official_statistics(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The statistics the authors' code feeds DSnoT (spec R1), from inputs X of shape (N samples,
    L tokens, C_in): E[A] = the mean over samples of each sample's SUM over its tokens (L x the token
    mean), Var(A) = the mean over samples of each sample's own biased variance, ||A||^2 = the mean
    over samples of each sample's squared L2 norm. Returns (E_A, Var_A, A_norm_sq), each (C_in,)."""
    E_A = X.sum(dim=1).mean(dim=0)  # seqlen x the token mean
    Var_A = X.var(dim=1, unbiased=False).mean(dim=0)  # mean of per-sample variances, not pooled
    A_norm_sq = (X**2).sum(dim=1).mean(dim=0)  # Wanda's ||A_k||^2 (scaler_row)
    return E_A, Var_A, A_norm_sq


def _statistics_expected(X) -> Expected:
    stats = ChannelStats(X.shape[-1])
    stats.add_batch(X)
    official = (stats.sum_metric_row, stats.var, stats.scaler_row)
    E_A, Var_A, A_norm_sq = official
    flat = X.reshape(-1, X.shape[-1])
    return Expected(
        official,
        (
            (
                (X.mean(dim=(0, 1)), Var_A, A_norm_sq),
                "E[A] is the token mean; R1's E[A] is the mean over samples of "
                "each sample's SUM over its tokens, L x the token mean",
            ),
            (
                (E_A, flat.var(0, unbiased=False), A_norm_sq),
                "Var(A) is the pooled variance over all tokens; R1 "
                "averages each sample's own variance (a drift of the mean between samples is not counted)",
            ),
            (
                (E_A, X.var(dim=1).mean(0), A_norm_sq),
                "Var(A) uses the unbiased variance (divides by L - 1); R1's per-sample variance is the biased one (divides by L)",
            ),
            ((E_A, Var_A, X.norm(dim=1).mean(0)), "||A||^2 is the norm, not its square: average the squared norms"),
        ),
    )


def check_official_statistics(fn) -> Verdict:
    """Check a reader's ``official_statistics(X)`` against ``core.stats.ChannelStats`` (R1)."""
    cases = [Case(f"random inputs, {n} samples x {L} tokens x {c} channels", (_inputs(n, L, c, seed),))
             for n, L, c, seed in ((2, 8, 5, 0), (4, 16, 12, 1), (3, 33, 7, 2))]  # fmt: skip
    one = _inputs(1, 10, 6, 3)
    cases.append(Case("one sample (per-sample and pooled variance agree)", (one,)))
    constant = _inputs(3, 12, 6, 4)
    constant[..., 2] = 1.5
    cases.append(Case("a constant channel (variance 0)", (constant,)))
    cases.append(Case("the tokens of a synthetic layer with outlier channels", (_synthetic().inputs,)))
    compare = _each(close(rtol=1e-4, atol=1e-5), ("E_A", "Var_A", "A_norm_sq"))
    return run_checks(f"{MODULE}.official_statistics", fn, cases, _statistics_expected, hinted(compare))


# --------------------------------------------------------------------------- 2. true error (02)
def true_error(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The true squared output error of every row, ||dW_r X||^2 = dW_r G dW_r^T, from the Gram
    matrix G = X^T X (summed over all tokens), with dW the REMOVED weights (W where M is True,
    0 elsewhere). Returns a tensor of shape (C_out,)."""
    dW = torch.where(M, W, torch.zeros_like(W))  # what the mask removes
    return ((dW @ G) * dW).sum(dim=1)  # sum_jk dW_rj G_jk dW_rk, cross terms included


def _true_error_expected(W, M, G) -> Expected:
    dW, kept = W * M, W * ~M
    return Expected(
        row_squared_error(removed_weights(W, M), G),
        (
            (((kept @ G) * kept).sum(1), "you used the KEPT weights; the error comes from the removed ones (W where M)"),
            (((dW @ G) * dW).sum(1).sqrt(), "you returned the norm ||dW_r X||; the exercise asks for its square"),
            (
                (dW**2 * G.diagonal()).sum(1),
                "you used only the diagonal of G; the cross terms dW_rj G_jk dW_rk (j != k) count too: channels are correlated",
            ),
        ),
    )


def check_true_error(fn) -> Verdict:
    """Check a reader's ``true_error(W, M, G)`` against ``core.errors.row_squared_error``."""
    cases = []
    for rows, cols, seed in ((4, 8, 0), (8, 16, 1), (16, 40, 2)):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(rows, cols, generator=g)
        X = _inputs(2, 24, cols, seed).reshape(-1, cols)
        cases.append(Case(f"random {rows}x{cols}, Gram of {X.shape[0]} tokens", (W, _mask(W, seed), gram_matrix(X))))
    W = cases[0].args[0]
    cases.append(Case("nothing pruned (error 0)", (W, torch.zeros_like(W, dtype=torch.bool), cases[0].args[2])))
    layer = _synthetic()
    cases.append(Case("a synthetic layer with outlier channels", (layer.weight, _mask(layer.weight, 7), layer.gram)))
    return run_checks(f"{MODULE}.true_error", fn, cases, _true_error_expected, hinted(close(rtol=1e-4, atol=1e-4, what="error")))


# --------------------------------------------------------------------------- 3. the split (02)
def error_split(W: torch.Tensor, M: torch.Tensor, G: torch.Tensor, mu: torch.Tensor, L: int) -> torch.Tensor:
    """The layer's squared output error split without the tokens, from G = X^T X over L tokens and
    their mean mu: mean part = L * sum_r (dW_r . mu)^2 (the part E[Delta_r] measures), variance part
    = sum_r dW_r G dW_r^T - mean part. Returns tensor([mean part, variance part])."""
    dW = torch.where(M, W, torch.zeros_like(W))
    total = ((dW @ G) * dW).sum()  # sum over rows of ||dW_r X||^2
    mean_part = L * ((dW @ mu) ** 2).sum()  # L * (mean over tokens of the row's error)^2, summed over rows
    return torch.stack([mean_part, total - mean_part])


def _split_expected(W, M, G, mu, L) -> Expected:
    parts = error_parts(removed_weights(W, M), W, G, mu, L)
    dW = W * M
    total = ((dW @ G) * dW).sum()
    mean_part = L * ((dW @ mu) ** 2).sum()
    return Expected(
        torch.tensor([parts.mean, parts.total - parts.mean]),
        (
            (
                torch.stack([mean_part / L, total - mean_part / L]),
                "the mean part lacks its factor L: it is the "
                "SUM over the L tokens of (mean error)^2, L * (dW_r . mu)^2, not the mean over tokens",
            ),
            (
                torch.stack([mean_part * L**2, total - mean_part * L**2]),
                "you used R1's E[A] = L x mu: the split needs the token mean mu itself",
            ),
            (
                torch.stack([total, torch.zeros(())]),
                "the whole error went into the mean part; the mean part is L * (dW_r . mu)^2, the rest is the variance part",
            ),
        ),
    )


def check_error_split(fn) -> Verdict:
    """Check a reader's ``error_split(W, M, G, mu, L)`` against ``core.errors.error_parts``."""
    cases = []
    for rows, cols, seed in ((4, 8, 0), (8, 16, 1), (12, 32, 2)):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(rows, cols, generator=g)
        X = _inputs(2, 20, cols, seed).reshape(-1, cols)
        cases.append(
            Case(f"random {rows}x{cols}, {X.shape[0]} tokens", (W, _mask(W, seed), gram_matrix(X), X.mean(0), X.shape[0]))
        )
    layer = _synthetic()
    s = layer.stats
    cases.append(
        Case("a synthetic layer with outlier channels", (layer.weight, _mask(layer.weight, 3), layer.gram, s.mean, s.ntokens))
    )
    return run_checks(
        f"{MODULE}.error_split",
        fn,
        cases,
        _split_expected,
        hinted(close(rtol=2e-4, atol=1e-3, what="[mean part, variance part]")),
    )


# --------------------------------------------------------------------------- 4. N:M (03)
def nm_mask(S: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M mask of a score S (C_out, C_in), True = pruned: in every row, every block of m
    consecutive input columns loses its n lowest scores (n of every m weights pruned)."""
    rows, cols = S.shape
    blocks = S.reshape(rows, cols // m, m)  # (row, block, position in the block)
    lowest = blocks.topk(n, dim=-1, largest=False).indices  # the n weakest of each block
    M = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, lowest, True)
    return M.reshape(rows, cols)


def _nm_expected(S, n, m) -> Expected:
    rows, cols = S.shape
    by_columns = S.t().reshape(cols, rows // m, m) if rows % m == 0 else None
    slips = [
        (
            mask_from_score(S, n / m),
            "you pruned n/m of each ROW's weights; N:M prunes n in EVERY BLOCK of m consecutive columns (ignoring the blocks)",
        ),
        (mask_from_score(-S, n / m, (n, m)), "you pruned the HIGHEST scores of each block; prune the n lowest"),
    ]
    if by_columns is not None:
        lowest = by_columns.topk(n, dim=-1, largest=False).indices
        wrong = torch.zeros_like(by_columns, dtype=torch.bool).scatter_(-1, lowest, True).reshape(cols, rows).t()
        slips.append((wrong, "your blocks run down the output dimension; N:M blocks are m consecutive INPUT columns of a row"))
    return Expected(mask_from_score(S, n / m, (n, m)), tuple(slips))


def check_nm_mask(fn) -> Verdict:
    """Check a reader's ``nm_mask(S, n, m)`` against ``core.pruners.mask_from_score`` with N:M."""
    cases = []
    for rows, cols, (n, m), seed in ((4, 8, (2, 4), 0), (8, 16, (2, 4), 1), (8, 32, (4, 8), 2), (6, 12, (1, 3), 3)):
        S = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
        cases.append(Case(f"random {rows}x{cols}, {n}:{m}", (S, n, m)))
    layer = _synthetic()
    S = layer.weight.abs() * layer.stats.scaler_row.sqrt()
    cases.append(Case("Wanda scores of a synthetic layer, 2:4", (S, 2, 4)))
    return run_checks(f"{MODULE}.nm_mask", fn, cases, _nm_expected, hinted(same_mask("N:M mask")))


# --------------------------------------------------------------------------- 5. floored Eq. 2 (03)
def floored_grow_choice(
    W: torch.Tensor, M: torch.Tensor, E_A: torch.Tensor, Var_A: torch.Tensor, var_floor: float
) -> torch.Tensor:
    """DSnoT's first grow choice with a variance floor (``--var-floor``): Eq. 2 with Var(A_k) replaced
    by max(Var(A_k), var_floor x median Var) (the median as ``torch.median`` gives it), so a
    near-constant channel no longer gets a huge score. Among the PRUNED weights: argmax of
    W_rk E[A_k] / Var if E[Delta_r] > 0, argmin otherwise. Returns a long tensor (C_out,)."""
    floored = Var_A.clamp_min(var_floor * Var_A.median())  # the floor: a share of the typical variance
    c = W * E_A
    error = (c * M).sum(dim=1)
    score = c / floored
    largest = score.masked_fill(~M, float("-inf")).argmax(dim=1)
    smallest = score.masked_fill(~M, float("inf")).argmin(dim=1)
    return torch.where(error > 0, largest, smallest)


def _floored_expected(W, M, E_A, Var_A, var_floor) -> Expected:
    cfg = replace(preset("paper"), T=1, eps=0.0, var_floor=var_floor)
    want = dsnot(W, _stats(E_A, Var_A), M, cfg, trace=True).trace.grown[0]

    def pick(var):
        c = W * E_A
        score, error = c / var, (c * M).sum(1)
        return torch.where(error > 0, score.masked_fill(~M, float("-inf")).argmax(1),
                           score.masked_fill(~M, float("inf")).argmin(1))  # fmt: skip

    return Expected(
        want,
        (
            (pick(Var_A), "you left the variance unfloored: divide by max(Var(A_k), var_floor x median Var)"),
            (pick(Var_A.clamp_min(var_floor)), "your floor is var_floor itself; it is var_floor TIMES the median variance"),
            (pick(Var_A.clamp_min(var_floor * Var_A.mean())), "your floor uses the mean variance; it is a share of the MEDIAN"),
            (
                pick(Var_A.clamp_max(var_floor * Var_A.median())),
                "you capped the variance from above (min); the floor raises small variances: max(Var, floor)",
            ),
        ),
    )


def check_floored_grow_choice(fn) -> Verdict:
    """Check a reader's ``floored_grow_choice(W, M, E_A, Var_A, var_floor)`` against ``core.dsnot`` with ``var_floor``."""
    cases = []
    for rows, cols, seed, floor, scale in (
        (4, 16, 0, 0.1, 0.01),
        (8, 32, 1, 0.5, 3.0),
        (8, 32, 2, 1.0, 0.02),
        (6, 24, 3, 0.0, 1.0),
    ):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(rows, cols, generator=g) / cols**0.5
        E_A = torch.randn(cols, generator=g)
        Var_A = (torch.rand(cols, generator=g) + 0.5) * scale
        channels = torch.randperm(cols, generator=g)
        Var_A[channels[:3]] = 1e-4 * scale  # near-constant channels
        Var_A[channels[3:5]] = 50 * scale  # loud ones: the mean variance is far above the median
        M = mask_from_score(W.abs() * (E_A**2 + Var_A).sqrt(), 0.6)
        name = f"random {rows}x{cols}, variances ~{scale:g} with near-constant and loud channels, var_floor={floor}"
        cases.append(Case(name, (W, M, E_A, Var_A, floor)))
    layer = _synthetic()
    s = layer.stats
    var = s.var.clone()
    var[layer.outlier_channels[0]] = 1e-5
    M = mask_from_score(layer.weight.abs() * s.scaler_row.sqrt(), 0.6)
    cases.append(
        Case("a synthetic layer, one channel made near-constant, var_floor=0.1", (layer.weight, M, s.sum_metric_row, var, 0.1))
    )
    return run_checks(f"{MODULE}.floored_grow_choice", fn, cases, _floored_expected, hinted(same_index("grown column")))
