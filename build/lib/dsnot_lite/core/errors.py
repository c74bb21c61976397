"""Reconstruction errors of a pruned layer (paper Eq. 1), from the Gram matrix of its inputs.

For a layer with weight ``W`` (C_out, C_in) and calibration tokens ``x_t`` (N of them), the Gram
matrix ``G = sum_t x_t x_t^T`` (C_in, C_in) gives every error exactly without the tokens:

* per row, ``||W_r X - (M.W)_r X||^2 = dW_r G dW_r^T`` with ``dW`` the removed weights;
* its split (spec section 6) into a *mean part* ``N (dW_r mu)^2`` (``mu`` the token mean; what
  DSnoT's expected error ``E[Delta_r]`` measures) and a *variance part* (the rest, which no DSnoT
  criterion looks at).

SparseGPT's Hessian ``H = 2/n_samples G`` is ``G`` up to a positive factor, so every *relative*
error below is the same computed from either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_gram, check_mask


def gram_matrix(inputs: torch.Tensor) -> torch.Tensor:
    """``X^T X`` over all tokens of ``inputs`` (..., C_in), fp32."""
    flat = inputs.reshape(-1, inputs.shape[-1]).float()
    return flat.t() @ flat


def removed_weights(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``dW``: the weights a mask (True = pruned) removes, fp32, zeros elsewhere."""
    check_mask(mask, weight)
    return torch.where(mask, weight.float(), torch.zeros((), dtype=torch.float32, device=weight.device))


def row_squared_error(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per row ``dW_r G dW_r^T`` for a weight change ``delta`` (C_out, C_in), fp32, >= 0."""
    check_gram(gram, delta.shape[1])
    delta = delta.float()
    return ((delta @ gram.float().to(delta.device)) * delta).sum(1).clamp_min(0)


def row_output_error(weight: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per-row ``||W_r X - (M.W)_r X||_2`` (paper Eq. 1), fp32."""
    return row_squared_error(removed_weights(weight, mask), gram).sqrt()


def relative_error(delta: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``||delta X||_F / ||W X||_F``: a layer's error relative to its dense output (0 for a zero layer)."""
    dense = float(row_squared_error(weight, gram).sum())
    return (float(row_squared_error(delta, gram).sum()) / dense) ** 0.5 if dense > 0 else 0.0


@dataclass(frozen=True)
class ErrorParts:
    """A layer's squared output error, summed over rows, and its mean part (spec section 6)."""

    total: float
    mean: float
    dense: float  # ||W X||_F^2, the scale

    @property
    def relative(self) -> float:
        return (self.total / self.dense) ** 0.5 if self.dense > 0 else 0.0

    @property
    def mean_share(self) -> float:
        """Fraction of the squared error that is the mean part (what DSnoT's criteria see)."""
        return self.mean / self.total if self.total > 0 else 0.0


def error_parts(delta: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor, mean: torch.Tensor, ntokens: int) -> ErrorParts:
    """Split ``||delta X||_F^2`` into ``N ||delta mu||^2`` and the rest (float32 products, float64 sums).

    ``gram`` must be ``sum_t x_t x_t^T`` over the ``ntokens`` tokens whose mean is ``mean``
    (``ChannelStats.gram``).
    """
    check_gram(gram, weight.shape[1])
    g, d, w = gram.float().to(delta.device), delta.float(), weight.float()
    total = float(((d @ g) * d).double().sum())
    mean_part = float(ntokens * ((d @ mean.float().to(d.device)).double() ** 2).sum())
    return ErrorParts(total=max(total, 0.0), mean=min(mean_part, max(total, 0.0)), dense=float(((w @ g) * w).double().sum()))
