"""Initial pruners: magnitude, Wanda and SparseGPT, unstructured or N:M.

Pure tensor functions: a weight (C_out, C_in) and statistics in, a bool mask out (True = pruned).
Scores are computed in fp32 (R11). Which weights a score prunes:

* unstructured, per row (R7): in every row, the ``int(C_in * sparsity)`` lowest scores
  (stable sort, so ties go to the lower column index, as in the reference code);
* unstructured, per layer (magnitude only, the reference ``prune_magnitude`` baseline): every
  weight whose score is at or below the layer's ``int(numel * sparsity)``-th smallest score;
* N:M: in every block of M consecutive inputs of a row, the N lowest scores.
"""

from __future__ import annotations

import torch

from .checks import NM, check_hessian, check_nm, check_sparsity, check_weight
from .stats import ChannelStats

METHODS = ("magnitude", "wanda", "sparsegpt")


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|W|."""
    return weight.float().abs()


def wanda_score(weight: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """Wanda: |W_rk| * ||A_k||_2, with ``scaler_row`` the squared input norms (R1)."""
    return weight.float().abs() * torch.sqrt(scaler_row.float().reshape(1, -1))


def sparsegpt_inverse_hessian_diag(hessian: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal of the upper Cholesky factor of the damped inverse Hessian, and the dead-input mask.

    Follows SparseGPT: inputs with a zero Hessian diagonal are "dead" (their diagonal is set to 1
    and their weights count as zero), then ``percdamp * mean(diag H)`` is added to the diagonal.
    """
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx[dead], idx[dead]] = 1
    h[idx, idx] += percdamp * torch.mean(torch.diag(h))
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.diag(torch.linalg.cholesky(h_inv, upper=True)), dead


def sparsegpt_score(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT saliency ``W^2 / diag(Hinv)^2`` computed once, with no weight update.

    This is the ``initial_method=sparsegpt`` score of the reference DSnoT code, with a Hessian
    that is really accumulated (R8 fixed: the reference ranks all-zero scores).
    """
    check_hessian(hessian, weight.shape[1])
    diag, dead = sparsegpt_inverse_hessian_diag(hessian, percdamp)
    w = weight.float().clone()
    w[:, dead] = 0
    return w**2 / diag.reshape(1, -1) ** 2


def mask_from_score(score: torch.Tensor, sparsity: float, nm: NM | None = None, nm_ties: str = "topk") -> torch.Tensor:
    """Prune the lowest scores: per row (R7) for unstructured, per M-block for N:M.

    ``nm_ties`` picks how equal scores inside a block are broken, because the reference code is
    not consistent: its plain N:M pruners use ``topk`` and its DSnoT N:M branch re-derives the
    start mask with a block ``sort``. Only exact ties differ; ``reference.py`` needs both.
    """
    rows, cols = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        blocks = score.reshape(rows, cols // m, m)
        if nm_ties == "topk":
            lowest = torch.topk(blocks, n, dim=-1, largest=False)[1]
        elif nm_ties == "sort":
            lowest = torch.sort(blocks, dim=-1)[1][..., :n]
        else:
            raise ValueError(f"nm_ties must be 'topk' or 'sort', got {nm_ties!r}")
        return mask.reshape(rows, cols // m, m).scatter_(-1, lowest, True).reshape(rows, cols)
    n_prune = int(cols * sparsity)
    order = torch.sort(score, dim=-1, stable=True)[1]
    return mask.scatter_(1, order[:, :n_prune], True)


def layer_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One threshold for the whole layer: the reference ``prune_magnitude`` baseline (not R7)."""
    score = magnitude_score(weight)
    threshold = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
    return score <= threshold


def initial_score(weight: torch.Tensor, stats: ChannelStats | None, method: str) -> torch.Tensor:
    """The score an initial method ranks weights by (lower = pruned first)."""
    if method == "magnitude":
        return magnitude_score(weight)
    if stats is None:
        raise ValueError(f"method {method!r} needs calibration statistics; pass a ChannelStats")
    if stats.in_features != weight.shape[1]:
        raise ValueError(
            f"statistics have {stats.in_features} channels but the weight has C_in = {weight.shape[1]}; "
            "collect them on the inputs of this same layer"
        )
    if method == "wanda":
        return wanda_score(weight, stats.scaler_row.to(weight.device))
    if method == "sparsegpt":
        return sparsegpt_score(weight, None if stats.hessian is None else stats.hessian.to(weight.device))
    raise ValueError(f"unknown pruning method {method!r}; choose one of {METHODS}")


def initial_mask(
    weight: torch.Tensor,
    stats: ChannelStats | None,
    method: str,
    sparsity: float,
    nm: NM | None = None,
    scope: str = "row",
) -> torch.Tensor:
    """Mask of an initial pruner; ``scope="layer"`` (magnitude only) uses one threshold per layer."""
    check_weight(weight)
    check_sparsity(sparsity)
    check_nm(nm, weight.shape[1])
    if scope not in ("row", "layer"):
        raise ValueError(f"scope must be 'row' or 'layer', got {scope!r}")
    if scope == "layer":
        if method != "magnitude" or nm is not None:
            raise ValueError("scope='layer' exists only for unstructured magnitude pruning; use scope='row'")
        return layer_magnitude_mask(weight, sparsity)
    return mask_from_score(initial_score(weight, stats, method), sparsity, nm)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: NM | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full SparseGPT (Frantar & Alistarh 2023): OBS pruning with weight update, column block by block.

    Within each block of ``blocksize`` columns the mask is chosen by ``w^2 / diag(Hinv)^2``
    (per row, or per M-group for N:M); every pruned column's error is spread onto the
    remaining columns through the inverse Hessian's Cholesky factor. Returns the updated
    weight (zeros where pruned, in the weight's dtype) and the mask.
    """
    check_weight(weight)
    check_sparsity(sparsity)
    check_nm(nm, weight.shape[1])
    check_hessian(hessian, weight.shape[1])
    w = weight.float().clone()
    _rows, cols = w.shape
    h = hessian.float().to(w.device).clone()
    dead = torch.diag(h) == 0
    idx = torch.arange(cols, device=w.device)
    h[idx[dead], idx[dead]] = 1
    w[:, dead] = 0
    h[idx, idx] += percdamp * torch.mean(torch.diag(h))
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    mask = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        w_block = w[:, start:end].clone()
        hinv_block = h_inv[start:end, start:end]
        err_block = torch.zeros_like(w_block)
        if nm is None:
            saliency = w_block**2 / torch.diag(hinv_block).reshape(1, -1) ** 2
            threshold = torch.sort(saliency.flatten())[0][int(saliency.numel() * sparsity)]
            block_mask = saliency <= threshold
        else:
            block_mask = torch.zeros_like(w_block, dtype=torch.bool)
        for j in range(end - start):
            col = w_block[:, j]
            d = hinv_block[j, j]
            if nm is not None and j % nm[1] == 0:
                group = w_block[:, j : j + nm[1]] ** 2 / torch.diag(hinv_block)[j : j + nm[1]].reshape(1, -1) ** 2
                block_mask.scatter_(1, j + torch.topk(group, nm[0], dim=1, largest=False)[1], True)
            q = col.clone()
            q[block_mask[:, j]] = 0
            err = (col - q) / d
            w_block[:, j:] -= err.unsqueeze(1) @ hinv_block[j, j:].unsqueeze(0)
            w_block[:, j] = q
            err_block[:, j] = err
        w[:, start:end] = w_block
        mask[:, start:end] = block_mask
        w[:, end:] -= err_block @ h_inv[start:end, end:]
    w[mask] = 0
    return w.to(weight.dtype), mask
