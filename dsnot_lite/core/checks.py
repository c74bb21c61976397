"""Input checks shared by the tensor functions (pruners, refiners, errors).

Every check raises ``ValueError`` with a message that names the problem and the fix, so a bad
call never surfaces as a traceback from deep inside torch.
"""

from __future__ import annotations

import torch

NM = tuple[int, int]


def check_weight(weight: torch.Tensor) -> None:
    """A 2-D, floating, finite weight matrix (C_out, C_in)."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}; pass layer.weight.data")
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (C_out, C_in), got shape {tuple(weight.shape)}; "
            "pass the nn.Linear weight, not a batch or a flattened vector"
        )
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating tensor, got {weight.dtype}; convert it with .float()")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(weight.shape)}); there is nothing to prune")
    check_finite("weight", weight)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor``. A sum is finite exactly when every element is, unless finite
    values overflow it: so one cheap pass first (a twentieth of ``isfinite(t).all()`` on the CPU),
    the full test only if it fails."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """No NaN or inf, which would silently corrupt every ranking."""
    if all_finite(tensor):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise ValueError(
        f"{name} contains {bad} NaN/inf value(s); fix the upstream computation "
        "(e.g. an fp16 overflow in the calibration forward) before pruning"
    )


def check_channel_vector(name: str, vector: torch.Tensor, in_features: int) -> None:
    """A per-input-channel statistic must have C_in entries and be finite."""
    if vector.dim() != 1 or vector.shape[0] != in_features:
        raise ValueError(
            f"{name} has shape {tuple(vector.shape)} but the weight has C_in = {in_features}; "
            "statistics must be collected on the inputs of this same layer"
        )
    check_finite(name, vector)


def check_sparsity(sparsity: float) -> None:
    """Sparsity is the pruned fraction, in [0, 1)."""
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}; e.g. 0.6 for 60% zeros")


def check_nm(nm: NM | None, in_features: int) -> None:
    """N:M means N zeros in every block of M consecutive inputs: 0 < N < M, M divides C_in."""
    if nm is None:
        return
    if not (isinstance(nm, (tuple, list)) and len(nm) == 2 and all(isinstance(v, int) for v in nm)):
        raise ValueError(f"nm must be a pair of integers (N, M), got {nm!r}; e.g. (2, 4) for 2:4")
    n, m = nm
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}; e.g. 2:4 prunes 2 of every 4 weights")
    if in_features % m:
        raise ValueError(f"C_in = {in_features} is not divisible by M = {m}; choose an M that divides the layer's input size")


def check_mask(mask: torch.Tensor, weight: torch.Tensor) -> None:
    """A boolean mask (True = pruned) of the weight's shape."""
    if mask.shape != weight.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but weight has {tuple(weight.shape)}; "
            "pass the mask returned by a pruner for this same weight"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = pruned), got {mask.dtype}; use mask.bool()")


def check_hessian(hessian: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """A (C_in, C_in) finite Hessian, as SparseGPT accumulates it."""
    if hessian is None:
        raise ValueError("SparseGPT needs the layer Hessian; build the statistics with ChannelStats(..., hessian=True)")
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian has shape {tuple(hessian.shape)}, expected ({in_features}, {in_features}); "
            "accumulate it on the inputs of this same layer"
        )
    check_finite("hessian", hessian)
    return hessian


def check_gram(gram: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """A finite (C_in, C_in) Gram matrix ``X^T X`` of the layer's calibration inputs."""
    if gram is None:
        raise ValueError(
            "this needs the Gram matrix X^T X of the layer's calibration inputs; fix: build the statistics "
            "with ChannelStats(..., hessian=True) and pass stats.gram (or errors.gram_matrix(inputs))"
        )
    if not isinstance(gram, torch.Tensor) or tuple(gram.shape) != (in_features, in_features):
        shape = tuple(gram.shape) if isinstance(gram, torch.Tensor) else type(gram).__name__
        raise ValueError(
            f"the Gram matrix must be ({in_features}, {in_features}) for a weight with C_in = {in_features}, "
            f"got {shape}; fix: accumulate it on the inputs of this same layer"
        )
    check_finite("Gram matrix", gram)
    return gram
