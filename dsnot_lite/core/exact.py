"""The exact-objective swap refiner: per row, the 1-swap that lowers the true error most (spec section 6).

DSnoT chooses its swaps from a row's *expected* error ``E[Delta_r]`` and a variance heuristic
(Eq. 2-3). The quantity it approximates is the row's true squared reconstruction error on the
calibration tokens, which the Gram matrix ``G = X^T X`` gives exactly:

    E_r = dW_r G dW_r^T,        dW_r = W_r on the pruned columns P, zero elsewhere.

With ``u = G dW_r^T`` (so ``E_r = sum_{k in P} W_rk u_k``), growing ``g`` (pruned) and pruning
``p`` (kept) changes it by

    delta(g, p) = (W_rg^2 G_gg - 2 W_rg u_g) + (W_rp^2 G_pp + 2 W_rp u_p) - 2 W_rg W_rp G_gp
                   \\______ grow gain _____/   \\______ prune cost _____/   \\__ cross term __/

and afterwards ``u += G[:, p] W_rp - G[:, g] W_rg``. ``exact_refine`` applies, in every row, the
swap with the most negative ``delta`` until no swap lowers ``E_r`` or ``T`` swaps were made.
Hence: ``E_r`` never rises; a row keeps its number of pruned weights; with N:M the two weights
of a swap share a block of M, so every block keeps its N zeros.

Unstructured search scores pairs among a shortlist, the ``shortlist`` best grow gains times the
``shortlist`` best prune costs (cross term included); ``shortlist=None`` scores every pair
(exhaustive, for small layers and tests). N:M search is always exhaustive: N x (M - N) pairs per
block. Rows run in chunks whose working tensors stay within about one layer's worth of memory.
The search runs in float32 and a swap must lower ``E_r`` by more than ``RELATIVE_TOLERANCE`` of
the row's initial error, far above float32 rounding, so no swap is taken on rounding noise.
On the CPU, unstructured search runs row by row in a compiled kernel (``exact_kernel``, numba):
the same float32 operations in the same order, so the same swaps, several times faster.

SparseSwaps (Zimmer et al. 2025, arXiv 2512.10922) studies this refinement at LLM scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .checks import NM, check_gram, check_mask, check_nm, check_weight

STOP_REASONS = ("running", "converged", "T_reached", "no_candidates")
RUNNING, CONVERGED, T_REACHED, NO_CANDIDATES = range(len(STOP_REASONS))
RELATIVE_TOLERANCE = 1e-5  # a swap must lower E_r by more than this fraction of the row's initial E_r
_MIN_CHUNK_BYTES = 32 * 2**20
KERNELS = ("auto", "torch", "numba")  # how the search runs: see exact_refine


@dataclass(frozen=True)
class ExactConfig:
    """``T``: most swaps per row (as DSnoT's T); ``shortlist``: candidates per side, None = all pairs."""

    T: int = 50
    shortlist: int | None = 8

    def __post_init__(self) -> None:
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 0:
            raise ValueError(f"T must be an int >= 0, got {self.T!r}; fix: e.g. 50, DSnoT's value")
        if self.shortlist is not None and (not isinstance(self.shortlist, int) or self.shortlist < 1):
            raise ValueError(f"shortlist must be an int >= 1 or None (every pair), got {self.shortlist!r}; fix: e.g. 8")


@dataclass
class ExactResult:
    """The refined mask (True = pruned) and what happened to every row.

    ``initial_error`` / ``final_error`` are the rows' true squared errors ``E_r`` (float32, in the
    units of the Gram matrix given); with ``trace=True``, ``trace[t]`` is every row's ``E_r``
    after ``t`` iterations (``trace[0]`` the initial one), on the CPU.
    """

    mask: torch.Tensor
    swaps: torch.Tensor
    stop_reason: torch.Tensor
    initial_error: torch.Tensor
    flips: int
    stop_counts: dict[str, int] = field(default_factory=dict)
    trace: torch.Tensor | None = None
    _final: torch.Tensor | Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def final_error(self) -> torch.Tensor:
        """Every row's ``E_r`` on the refined mask, from the weights and Gram matrix as they were
        given; computed on first use (one product with G, which the pipeline does not need)."""
        if callable(self._final):
            self._final = self._final()
        return self._final


@torch.no_grad()
def exact_refine(
    weight: torch.Tensor,
    gram: torch.Tensor,
    mask: torch.Tensor,
    config: ExactConfig | None = None,
    nm: NM | None = None,
    *,
    chunk_rows: int | None = None,
    trace: bool = False,
    kernel: str = "auto",
) -> ExactResult:
    """Refine ``mask`` (True = pruned) of ``weight`` by exact-error 1-swaps; ``gram`` is ``X^T X``
    (any positive multiple, e.g. SparseGPT's Hessian, gives the same swaps).

    ``kernel``: ``"auto"`` runs unstructured search on the CPU by the compiled kernel
    (``exact_kernel``: the same swaps, several times faster) and the rest (N:M, CUDA, or
    ``chunk_rows`` given) by torch operators in chunks of ``chunk_rows`` rows; ``"torch"`` always
    by those, ``"numba"`` always by the kernel."""
    cfg = config or ExactConfig()
    check_weight(weight)
    check_mask(mask, weight)
    rows, cols = weight.shape
    check_nm(nm, cols)
    check_gram(gram, cols)
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    compiled = _use_kernel(kernel, weight.device, nm, chunk_rows)
    device = weight.device
    g = gram.to(device=device, dtype=torch.float32)
    w = weight.to(torch.float32)
    pruned = mask.clone().to(device)
    history = torch.zeros(cfg.T + 1, rows, dtype=torch.float32) if trace else None
    chunk = chunk_rows or _rows_per_chunk(weight, cfg, nm)
    if compiled:
        initial, swaps, stop = _refine_rows_compiled(w, g, pruned, cfg, history, chunk)
    else:
        swaps = torch.zeros(rows, dtype=torch.long, device=device)
        stop = torch.full((rows,), RUNNING, dtype=torch.long, device=device)
        initial = torch.zeros(rows, dtype=torch.float32, device=device)
        blocks = _diagonal_blocks(g, nm[1]) if nm else None
        for start in range(0, rows, chunk):
            part = slice(start, min(start + chunk, rows))
            initial[part], swaps[part], stop[part] = _refine_rows(
                w[part], g, pruned[part], cfg, nm, blocks, None if history is None else history[:, part]
            )
    removed = _removed(w, pruned)  # a new tensor: later changes to the weight or mask do not reach it
    g_then = g.clone() if g.data_ptr() == gram.data_ptr() else g
    result = ExactResult(
        mask=pruned, swaps=swaps, stop_reason=stop, initial_error=initial,
        flips=int((pruned != mask.to(device)).sum()),
        trace=None if history is None else history[: int(swaps.max()) + 1 if rows else 1],
        _final=lambda: _errors_of(removed, g_then),
    )  # fmt: skip
    result.stop_counts = {name: int((stop == code).sum()) for code, name in enumerate(STOP_REASONS)}
    return result


def _use_kernel(kernel: str, device: torch.device, nm: NM | None, chunk_rows: int | None) -> bool:
    """Whether the compiled kernel runs (see ``exact_refine``'s ``kernel``)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}; fix: keep the default 'auto'")
    fits = device.type == "cpu" and nm is None and chunk_rows is None
    if kernel == "numba" and not fits:
        raise ValueError("the compiled kernel runs unstructured search on the CPU, in one piece; "
                         "fix: kernel='auto' or 'torch' (for N:M, CUDA or chunk_rows)")  # fmt: skip
    return kernel == "numba" or (kernel == "auto" and fits)


def squared_errors(w: torch.Tensor, pruned: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per row ``E_r = dW_r G dW_r^T`` (in the dtype of ``w`` and ``g``)."""
    return _errors_of(_removed(w, pruned), g)


def _removed(w: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``dW``: ``w`` on the pruned entries, zero elsewhere."""
    return torch.where(pruned, w, torch.zeros((), dtype=w.dtype, device=w.device))


def _errors_of(removed: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return ((removed @ g) * removed).sum(1)


def _start(w: torch.Tensor, pruned: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u = dW G`` for the rows of ``w`` and their initial ``E_r = sum_{k in P} W_rk u_k``."""
    removed = _removed(w, pruned)
    u = removed @ g
    return u, (removed * u).sum(1)


def _refine_rows_compiled(w, g, pruned, cfg: ExactConfig, history, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_refine_rows`` for unstructured search on the CPU, by the compiled kernel (``exact_kernel``):
    the same float32 operations row by row, so the same swaps (``tests/core/test_exact_kernel.py``).
    ``u = dW G`` is computed in the torch path's chunks of rows: a product's rounding can depend on
    how many rows it has."""
    from .exact_kernel import refine_rows_cpu  # numba: imported (and its cache loaded) on first use

    u, initial = torch.empty_like(w), torch.empty(w.shape[0], dtype=w.dtype)
    for start in range(0, w.shape[0], chunk):
        part = slice(start, start + chunk)
        u[part], initial[part] = _start(w[part], pruned[part], g)
    error = initial.clone()
    if history is not None:
        history[0] = initial
    k = _shortlist_size(cfg.shortlist, w.shape[1])
    tolerance = RELATIVE_TOLERANCE * initial.abs()
    swaps, stop = refine_rows_cpu(w, g, pruned, u, tolerance, error, cfg.T, k, history, (T_REACHED, CONVERGED, NO_CANDIDATES))
    return initial, swaps, stop


def _refine_rows(w, g, pruned, cfg: ExactConfig, nm, blocks, history) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy best 1-swaps for the rows of ``w`` (``pruned`` is updated in place, and ``history``
    (T + 1, rows) with each row's E_r after every iteration, when given).

    The rows still running form a compact working set; a row that stops is only masked out until
    a quarter of the set has stopped, then the set is compacted (fewer gathers than every step).
    """
    rows = w.shape[0]
    u, initial = _start(w, pruned, g)
    error, swaps = initial.clone(), torch.zeros(rows, dtype=torch.long, device=w.device)
    stop = torch.full((rows,), RUNNING, dtype=torch.long, device=w.device)
    if history is not None:
        history[:] = initial.cpu()
    idx = torch.arange(rows, device=w.device)  # working set: rows of this chunk
    ws, us, ps = w, u, pruned.clone()
    two_w = 2 * w
    self_term = w * w * g.diagonal()  # W_rk^2 G_kk, fixed
    # W_rk^2 G_kk where k can be grown (pruned) or pruned (kept), +inf elsewhere; a swap moves two entries
    grow_base = self_term.masked_fill(~ps, torch.inf)
    prune_base = self_term.masked_fill(ps, torch.inf)
    tolerance = RELATIVE_TOLERANCE * initial.abs()
    live = torch.ones(rows, dtype=torch.bool, device=w.device)
    for step in range(cfg.T):
        if not bool(live.any()):
            break
        twice_wu = two_w * us
        grow_gain = torch.sub(grow_base, twice_wu)  # removing g from the pruned set
        prune_cost = twice_wu.add_(prune_base)  # adding p to it
        if nm is None:
            best, grow, prune = _best_pair(ws, grow_gain, prune_cost, g, cfg.shortlist)
        else:
            best, grow, prune = _best_pair_nm(ws, grow_gain, prune_cost, blocks, nm[1])
        del grow_gain, prune_cost, twice_wu
        improves = live & (best < -tolerance)
        ended = live & ~improves
        stop[idx[ended & ~torch.isfinite(best)]] = NO_CANDIDATES
        stop[idx[ended & torch.isfinite(best)]] = CONVERGED
        on = improves.to(ws.dtype).unsqueeze(1)  # rows that swap; the others add zero below
        us.addcmul_(g.index_select(0, prune), ws.gather(1, prune.unsqueeze(1)) * on)  # u += G[:, p] W_rp
        us.addcmul_(g.index_select(0, grow), ws.gather(1, grow.unsqueeze(1)) * on, value=-1)  # u -= G[:, g] W_rg
        _swap(ps, grow_base, prune_base, self_term, grow.unsqueeze(1), prune.unsqueeze(1), improves.unsqueeze(1))
        error[idx[improves]] += best[improves]
        swaps[idx[improves]] += 1
        live = improves
        if history is not None:
            history[step + 1 :] = error.cpu()
        if int(live.sum()) < 0.75 * live.numel():  # compact the working set
            pruned[idx] = ps
            working = (idx, ws, us, ps, two_w, self_term, grow_base, prune_base, tolerance)
            idx, ws, us, ps, two_w, self_term, grow_base, prune_base, tolerance = (t[live] for t in working)
            live = live[live]
    pruned[idx] = ps
    stop[idx[live]] = T_REACHED
    return initial, swaps, stop


def _swap(pruned, grow_base, prune_base, self_term, grow, prune, on) -> None:
    """Where ``on``: column ``grow`` leaves the pruned set, column ``prune`` joins it."""
    for col, now_pruned in ((grow, pruned.gather(1, grow) & ~on), (prune, pruned.gather(1, prune) | on)):
        pruned.scatter_(1, col, now_pruned)
        term = self_term.gather(1, col)
        grow_base.scatter_(1, col, torch.where(now_pruned, term, torch.inf))
        prune_base.scatter_(1, col, torch.where(now_pruned, torch.inf, term))


def _best_pair(w, grow_gain, prune_cost, g, shortlist: int | None):
    """Per row, the most negative ``delta`` among the shortlisted pairs: (delta, grow col, prune col)."""
    k = _shortlist_size(shortlist, w.shape[1])
    gain, grow = torch.topk(grow_gain, k, dim=1, largest=False)
    cost, prune = torch.topk(prune_cost, k, dim=1, largest=False)
    pairs = (grow.unsqueeze(2) * g.shape[1] + prune.unsqueeze(1)).flatten()
    g_pairs = g.view(-1).index_select(0, pairs).view(grow.shape[0], k, k)  # G[g, p] for every shortlisted pair
    cross = g_pairs * (w.gather(1, grow).unsqueeze(2) * w.gather(1, prune).unsqueeze(1))
    delta = (gain.unsqueeze(2) + cost.unsqueeze(1) - 2 * cross).flatten(1)
    best, at = delta.min(dim=1)
    return best, grow.gather(1, (at // k).unsqueeze(1)).squeeze(1), prune.gather(1, (at % k).unsqueeze(1)).squeeze(1)


def _best_pair_nm(w, grow_gain, prune_cost, blocks, m: int):
    """Per row, the most negative ``delta`` over all pairs inside one block of ``m`` inputs."""
    rows, cols = w.shape
    wb = w.view(rows, cols // m, m)
    cross = blocks.unsqueeze(0) * (wb.unsqueeze(3) * wb.unsqueeze(2))
    delta = grow_gain.view(rows, -1, m).unsqueeze(3) + prune_cost.view(rows, -1, m).unsqueeze(2) - 2 * cross
    best, at = delta.flatten(1).min(dim=1)
    block, within = at // (m * m), at % (m * m)
    return best, block * m + within // m, block * m + within % m


def _diagonal_blocks(g: torch.Tensor, m: int) -> torch.Tensor:
    """The (C_in / m, m, m) diagonal blocks of ``g``: the Gram entries an N:M swap can touch."""
    nb = g.shape[0] // m
    idx = torch.arange(nb, device=g.device)
    return g.view(nb, m, nb, m)[idx, :, idx, :]


def _shortlist_size(shortlist: int | None, cols: int) -> int:
    """Candidates per side: ``shortlist``, at most the row's length (None: every column)."""
    return cols if shortlist is None else min(shortlist, cols)


def _rows_per_chunk(weight: torch.Tensor, cfg: ExactConfig, nm: NM | None) -> int:
    """Rows per chunk so the float64 working set stays about the size of the layer."""
    rows, cols = weight.shape
    if nm is not None:
        pair_entries = cols * nm[1] * 2
    else:
        k = _shortlist_size(cfg.shortlist, cols)
        pair_entries = k * k * 3
    per_row = 8 * (8 * cols + pair_entries)
    budget = max(weight.numel() * 4, _MIN_CHUNK_BYTES)
    return max(1, min(rows, budget // per_row))
