"""The re-fit: the kept weights that minimise the true error on a fixed mask (least squares).

A mask (True = pruned) fixes which weights are zero; the refiners choose it, and leave the kept
weights as they were. With the Gram matrix ``G = X^T X`` of the layer's calibration inputs, the
kept weights ``w'_S`` of a row (kept columns ``S``, pruned ``P``) that minimise the row's true
squared error ``E_r = (w' - w) G (w' - w)^T`` (spec section 6), damped as SparseGPT damps its
Hessian, solve the normal equations

    (G_SS + lambda I) w'_S = (G w)_S + lambda w_S,    lambda = percdamp * mean(diag G),

or, for the change ``e_S = w'_S - w_S`` of the kept weights,

    (G_SS + lambda I) e_S = G_SP w_P = (G dW)_S,      dW = w on P, 0 elsewhere.

The damping keeps the system positive definite (a channel that never fires, ``G_jj = 0``, keeps
its weight: its row of the system reads ``lambda e_j = 0``) and is what SparseGPT's OBS update uses
(``percdamp`` = 0.01 of the mean diagonal; SparseGPT's Hessian is ``2/n G``, the same up to scale).
The damped objective is ``E_r(w') + lambda ||w'_S - w_S||^2``.

``refit`` solves every row at once by conjugate gradients on the kept columns (as ALPS, Meng et
al. 2024, arXiv 2406.07831, solves its masked least squares), preconditioned by the damped inverse
``(G + lambda I)^-1`` restricted to the kept columns (SPD on them, one Cholesky factor per layer;
the diagonal if that factor fails): each iteration is two matrix products of all rows with a d x d
matrix, then the damping and the mask in place. On 21 SmolLM2-135M layers (Wanda 60% + exact refiner,
blocks 2, 14, 27; float32) the diagonal preconditioner stopped at ``TOLERANCE`` 1e-4 took 585
iterations in all, 0.06% of the error reduction short of the float64 optimum; this one at 1e-3
takes 202, 0.08% short on average and 0.3% on the worst layer. ``SOLVER`` names the method and
its tolerance and is part of every re-fitted run's key: a change of either must change it; a
change that only reorders float operations keeps it (as did the fused products, 1.1x faster, and
the CG's preallocated in-place buffers with a start at the masked weights needing two products
fewer, 0.91x the time on a whole SmolLM2-135M run: ``bench/refit_versions.py``). Nearly all that
is left is the two products per iteration (a numba kernel fusing the vector steps row by row took
0.98x their time on 210 stored layers, ``bench/refit_kernel.py`` at commit 543d46e: not kept).
With a ``Target`` the re-fit aims at the *dense model's* outputs instead of the layer's own (error
compensation across blocks, as asymmetric calibration does for quantisation: GPTAQ, Li et al.,
ICML 2025, arXiv 2504.02692, which also damps by 10% on vision models): with ``X`` the inputs the
pruned model feeds the layer and ``X_d`` those the dense model feeds it, a row minimises
``||X w'^T - X_d w^T||^2``, whose normal equations differ only on the right:
``(G_SS + lambda I) e_S = (w C^T - w_S G)_S``, ``C = X^T X_d``. Without one, ``C = G``.
With ``precision="bf16"`` the CG's two products run on bf16 inputs: the preconditioner's product as
is, the product ``d G`` as three bf16 products of a head and a tail of each factor in one
(``_curvature_product``: about 16 bits of the inputs kept; one bf16 product keeps 8 and lost nearly
all the gain on a layer with massive activations); starting residual and errors stay float32. On
the 210 stored SmolLM2-135M layers and this CPU (AMX bf16) it took 0.76x the float32 re-fit's time,
0.85x SparseGPT's OBS update's, 0.045% of the gain short on average (``bench/results/refit_precision.md``);
a CPU without native bf16 products is likely slower (not measured: none here).
CG started from the given weights lowers the damped objective at every iteration; a row whose true
error would still end above its start (possible only through the damping term or rounding) keeps
its start, so **no row's true error rises**. The mask is never changed: pruned weights stay zero,
so N:M blocks are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from .checks import all_finite, check_gram, check_mask, check_weight

_METHOD = "cg, (G + lambda I)^-1 preconditioner"
SOLVER = f"{_METHOD}, tolerance 1e-3"  # stored with every re-fitted run (its key)
PERCDAMP = 0.01  # SparseGPT's damping: this fraction of the mean diagonal of G
TOLERANCE = 1e-3  # stop once an iteration gains less than this fraction of all gained (see _masked_cg)
MAX_ITERATIONS = 100
PRECISIONS = ("float32", "bf16")  # of the CG's two matrix products (see the module docstring)


def solver(tolerance: float = TOLERANCE, precision: str = "float32") -> str:
    """The solver's name stored with a re-fitted run: ``SOLVER`` at the default tolerance and
    precision (so the stored runs keep their keys), the same method with the others named otherwise."""
    if tolerance == TOLERANCE and precision == "float32":
        return SOLVER
    return f"{_METHOD}, tolerance {tolerance:g}" + (f", {precision} products" if precision != "float32" else "")


@dataclass
class Target:
    """The dense model's side of the re-fit's target (see the module docstring), sums over tokens."""

    cross: torch.Tensor  # X^T X_d (d x d): the pruned model's inputs against the dense model's
    gram: torch.Tensor  # X_d^T X_d (d x d): the dense model's inputs


@dataclass
class RefitResult:
    """Re-fitted weights (zeros where pruned, the input weight's dtype) and per-row true errors
    ``E_r`` of the start and of the result (float32 or float64, units of the Gram matrix given)."""

    weight: torch.Tensor
    initial_error: torch.Tensor
    final_error: torch.Tensor
    iterations: int  # CG iterations run (every row of the layer runs the same number)
    kept_start: int  # rows whose start was kept because the re-fit would have raised their error


@torch.no_grad()
def refit(
    weight: torch.Tensor,
    gram: torch.Tensor,
    mask: torch.Tensor,
    start: torch.Tensor | None = None,
    *,
    target: Target | None = None,
    percdamp: float = PERCDAMP,
    tolerance: float = TOLERANCE,
    max_iterations: int = MAX_ITERATIONS,
    precision: str = "float32",
) -> RefitResult:
    """Least-squares kept weights of the dense ``weight`` on ``mask`` (True = pruned).

    ``gram`` is ``X^T X`` (any positive multiple gives the same weights); ``start`` is where the
    search starts and what no row may end worse than (default: ``weight`` with the mask applied;
    e.g. full SparseGPT's updated weights); ``target``: fit the dense model's outputs on its own
    inputs (then the errors are against those, and ``gram`` must be the sum over tokens). Computes
    in float64 if ``weight`` or ``gram`` is float64, else float32, on ``weight``'s device;
    ``precision`` "bf16": the CG's products in bf16 (float32 inputs only).
    """
    check_weight(weight)
    check_mask(mask, weight)
    check_gram(gram, weight.shape[1])
    if start is not None and start.shape != weight.shape:
        raise ValueError(f"start has shape {tuple(start.shape)} but the weight {tuple(weight.shape)}; pass weights of this layer")
    if not percdamp >= 0 or not tolerance > 0 or max_iterations < 0:
        raise ValueError("percdamp must be >= 0, tolerance > 0 and max_iterations >= 0; fix: keep the defaults")
    dtype = torch.float64 if torch.float64 in (weight.dtype, gram.dtype) else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}; fix: choose one of them")
    if precision != "float32" and dtype == torch.float64:
        raise ValueError(f"precision {precision!r} rounds the CG's products, but the weight or Gram matrix is float64; "
                         "fix: pass float32 tensors, or keep precision='float32'")  # fmt: skip
    device = weight.device
    w, g = weight.to(dtype), gram.to(device=device, dtype=dtype)
    keep = (~mask.to(device)).to(dtype)
    problem = _own_outputs if target is None else partial(_dense_outputs, target=target)
    w0, e0, initial, rhs, row_errors = problem(w, g, keep, start)
    damping = percdamp * float(g.diagonal().mean())
    if damping <= 0:  # no input ever fired: every weight change leaves the output as it is
        return RefitResult(w0.to(weight.dtype), initial, initial.clone(), 0, 0)
    precondition, curvature = _preconditioner(g, damping, precision), _curvature_product(g, precision)
    e, iterations = _masked_cg(g, damping, keep, rhs, e0, precondition, curvature, tolerance, max_iterations)
    fitted = (w + e) * keep
    final = row_errors(fitted)
    worse = final > initial
    fitted[worse], final[worse] = w0[worse], initial[worse]
    return RefitResult(fitted.to(weight.dtype), initial, final, iterations, int(worse.sum()))


def _own_outputs(w, g, keep, start):
    """The layer's own outputs as the target: the start ``w0``, its change ``e0`` of the kept weights
    (None: zero), the start's row errors ``E_r``, the right-hand side ``(G dW)_S`` and ``E_r`` itself."""
    removed = w * (1 - keep)  # dW: the pruned weights
    moved = removed @ g  # (G dW)^T, the right-hand side before masking
    if start is None:  # from the masked weights: w0 - w = -dW, so E_r = dW G dW^T needs no other product
        w0, e0, initial = w * keep, None, (removed * moved).sum(1)
    else:
        w0 = start.to(device=w.device, dtype=w.dtype) * keep
        e0 = (w0 - w) * keep
        if bool(e0.any()):
            initial = _row_errors(w0 - w, g)
        else:  # the start is the masked weights (w0 - w = -dW): as without a start, two products fewer
            e0, initial = None, (removed * moved).sum(1)
    return w0, e0, initial, moved * keep, lambda fitted: _row_errors(fitted - w, g)


def _dense_outputs(w, g, keep, start, *, target: Target):
    """The dense model's outputs as the target (``_own_outputs``' five parts): right-hand side
    ``(w C^T - (w keep) G)_S``; row errors ``w' G w'^T - 2 w' C w^T + w G_d w^T`` (``_target_errors``)."""
    check_gram(target.gram, w.shape[1])
    check_gram(target.cross, w.shape[1])  # the same shape and finiteness rules (not symmetric)
    c, gd = target.cross.to(device=w.device, dtype=w.dtype), target.gram.to(device=w.device, dtype=w.dtype)
    w0 = (w if start is None else start.to(device=w.device, dtype=w.dtype)) * keep
    dense = ((w @ gd) * w).sum(1)  # w G_d w^T: the dense outputs' squared norm, the same for every w'
    aimed = w @ c.T  # (C w^T)^T
    e0 = (w0 - w) * keep
    rhs = (aimed - (w * keep) @ g) * keep
    row_errors = lambda fitted: _target_errors(fitted, g, aimed, dense)
    return w0, e0 if bool(e0.any()) else None, row_errors(w0), rhs, row_errors


def _target_errors(fitted: torch.Tensor, g: torch.Tensor, aimed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Per row ``||X w'^T - X_d w^T||^2 = w' G w'^T - 2 w' C w^T + w G_d w^T`` (clamped at 0: rounding)."""
    return (((fitted @ g) * fitted).sum(1) - 2 * (fitted * aimed).sum(1) + dense).clamp_min(0)


def _preconditioner(g: torch.Tensor, damping: float, precision: str):
    """``(r, out) -> r (G + lambda I)^-1`` into ``out``, masked by the caller to the kept columns:
    for each row the kept block of the damped inverse, a principal block of an SPD matrix, so SPD on
    the row's kept columns; the diagonal ``r / (diag G + lambda)`` if the Cholesky factor fails (a
    Gram matrix too ill-conditioned in float32). ``precision`` "bf16": the product on bf16 inputs."""
    factor, info = torch.linalg.cholesky_ex(g + damping * torch.eye(g.shape[0], dtype=g.dtype, device=g.device))
    inverse = torch.cholesky_inverse(factor) if int(info) == 0 else None
    if inverse is None or not all_finite(inverse):
        inverse_diag = 1 / (g.diagonal() + damping)
        return lambda r, out: torch.mul(r, inverse_diag, out=out)
    if precision == "bf16":
        inverse = inverse.to(torch.bfloat16)
        return lambda r, out: out.copy_(torch.mm(r.to(torch.bfloat16), inverse))
    return lambda r, out: torch.mm(r, inverse, out=out)


def _curvature_product(g: torch.Tensor, precision: str):
    """``(d, out) -> d G`` into ``out``. ``precision`` "bf16": ``head_d head_G + head_d tail_G +
    tail_d head_G`` (``_split``), one bf16 product with float32 accumulation (the result rounded to
    bf16: torch's bf16 product returns bf16)."""
    if precision == "float32":
        return lambda d, out: torch.mm(d, g, out=out)
    head, tail = _split(g)
    stacked = torch.cat([head, tail, head])  # (3d x d), against [head_d, head_d, tail_d] (n x 3d)
    size = g.shape[0]
    inputs: list[torch.Tensor] = []  # [head_d, head_d, tail_d], allocated on the first call

    def product(d: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not inputs:
            inputs.append(torch.empty(d.shape[0], 3 * size, dtype=torch.bfloat16, device=d.device))
        both = inputs[0]
        both[:, :size].copy_(d)  # _split(d) in place: the head, then the tail from d - head (out as scratch)
        both[:, 2 * size :].copy_(torch.sub(d, both[:, :size], out=out))
        both[:, size : 2 * size].copy_(both[:, :size])
        return out.copy_(torch.mm(both, stacked))

    return product


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as a bf16 head and the bf16 rounding of what the head misses (``head + tail`` keeps
    about 16 bits of ``x``)."""
    head = x.to(torch.bfloat16)
    return head, (x - head.to(x.dtype)).to(torch.bfloat16)


def _masked_cg(g, damping, keep, rhs, e, precondition, curvature, tolerance, max_iterations) -> tuple[torch.Tensor, int]:
    """Solve ``(e G) * keep + damping e = rhs`` for every row ``e`` supported on ``keep``, by
    preconditioned conjugate gradients from ``e`` (None: from 0); returns the solution and the iterations.

    Each iteration lowers the damped objective of every row by ``alpha r.z``; the search stops once
    an iteration lowers the layer's total by less than ``tolerance`` of what all iterations did.
    The direction is supported on ``keep``, so ``(d G) * keep + damping d = (d G + damping d) * keep``.
    Per iteration: the product ``d G`` (``curvature``), ``_curvature_step``, the preconditioner's product,
    ``_direction_step``, every buffer allocated once and updated in place.
    """
    if e is None:
        e, residual = torch.zeros_like(rhs), rhs.clone()
    else:
        residual = rhs - torch.addmm(e, e, g, beta=damping).mul_(keep)
    direction, q, z = torch.zeros_like(rhs), torch.empty_like(rhs), torch.empty_like(rhs)
    rz = torch.zeros(rhs.shape[0], dtype=rhs.dtype, device=rhs.device)  # r.z of the last iteration; 0: beta = 0
    _direction_step(precondition(residual, z), residual, direction, keep, rz)
    gained = 0.0
    for iteration in range(max_iterations):
        step = float(_curvature_step(curvature(direction, q), direction, e, residual, keep, rz, damping).sum())
        gained += step
        if step <= tolerance * gained:
            return e, iteration + 1
        _direction_step(precondition(residual, z), residual, direction, keep, rz)
    return e, max_iterations


def _curvature_step(q, d, e, r, keep, rz, damping: float) -> torch.Tensor:
    """With ``q = d G``: ``q <- (q + damping d) * keep``, the step ``alpha = r.z / d.q`` (0 where
    ``d.q <= 0``), ``e += alpha d``, ``r -= alpha q``; returns each row's gain ``alpha r.z``."""
    q.add_(d, alpha=damping).mul_(keep)
    curvature = (d * q).sum(1)
    alpha = torch.where(curvature > 0, rz / curvature, torch.zeros_like(rz))
    e.addcmul_(alpha.unsqueeze(1), d)
    r.addcmul_(alpha.unsqueeze(1), q, value=-1)
    return alpha * rz


def _direction_step(z, r, d, keep, rz) -> None:
    """With ``z`` the preconditioned residual: ``z <- z * keep``, ``beta = r.z / rz`` (0 where
    ``rz <= 0``), ``d <- z + beta d``, ``rz <- r.z``."""
    z.mul_(keep)
    rz_next = (r * z).sum(1)
    beta = torch.where(rz > 0, rz_next / rz, torch.zeros_like(rz))
    d.mul_(beta.unsqueeze(1)).add_(z)
    rz.copy_(rz_next)


def _row_errors(delta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per row ``delta G delta^T``."""
    return ((delta @ g) * delta).sum(1)
