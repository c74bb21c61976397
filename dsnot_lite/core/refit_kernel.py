"""The re-fit's conjugate-gradient vector updates, fused for the CPU (numba): the same steps, fewer passes.

Between its two matrix products, an iteration of ``refit._masked_cg`` updates five row-by-column
arrays and takes two row sums: with torch operators about ten passes over memory, a quarter of the
re-fit's time on SmolLM2-135M's layers. Rows are independent, so each kernel takes one row at a time
and does all of that row's work while it is in cache: ``curvature_step`` (damping and mask of the
product, curvature, step length, the ``e`` and residual updates) and ``direction_step`` (mask of the
preconditioned residual, ``r.z``, the next direction). Same operations as ``refit``'s torch steps,
which every other device runs; the row sums are vectorised (reassociated) and the updates fused
multiply-adds, so the two agree up to float order (``tests/core/test_refit.py``).
"""

from __future__ import annotations

import numba
import torch

from .compiled import match_torch_threads

_FLAGS = {"contract", "reassoc"}  # fused multiply-adds, vectorised row sums: float order only


@numba.njit(cache=True, parallel=True, fastmath=_FLAGS)
def _curvature_rows(q, d, e, r, keep, rz, damping, gain):  # pragma: no cover - compiled
    for i in numba.prange(q.shape[0]):
        curvature = damping - damping  # a zero of the arrays' dtype
        for j in range(q.shape[1]):
            v = (q[i, j] + damping * d[i, j]) * keep[i, j]
            q[i, j] = v
            curvature += d[i, j] * v
        alpha = rz[i] / curvature if curvature > 0 else curvature - curvature
        for j in range(q.shape[1]):
            e[i, j] += alpha * d[i, j]
            r[i, j] -= alpha * q[i, j]
        gain[i] = alpha * rz[i]


@numba.njit(cache=True, parallel=True, fastmath=_FLAGS)
def _direction_rows(z, r, d, keep, rz):  # pragma: no cover - compiled
    for i in numba.prange(z.shape[0]):
        rz_next = rz[i] - rz[i]
        for j in range(z.shape[1]):
            v = z[i, j] * keep[i, j]
            z[i, j] = v
            rz_next += r[i, j] * v
        beta = rz_next / rz[i] if rz[i] > 0 else rz_next - rz_next
        rz[i] = rz_next
        for j in range(z.shape[1]):
            d[i, j] = z[i, j] + beta * d[i, j]


def curvature_step(q, d, e, r, keep, rz, damping: float) -> torch.Tensor:
    """``refit._curvature_step`` on contiguous CPU tensors of one dtype, in place; returns the gains."""
    gain = torch.empty_like(rz)
    match_torch_threads()
    _curvature_rows(q.numpy(), d.numpy(), e.numpy(), r.numpy(), keep.numpy(), rz.numpy(),
                    rz.new_tensor(damping).numpy()[()], gain.numpy())  # fmt: skip
    return gain


def direction_step(z, r, d, keep, rz) -> None:
    """``refit._direction_step`` on contiguous CPU tensors of one dtype, in place."""
    match_torch_threads()
    _direction_rows(z.numpy(), r.numpy(), d.numpy(), keep.numpy(), rz.numpy())
