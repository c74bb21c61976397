"""DSnoT: training-free mask refinement by grow-and-prune swaps (paper Algorithm 1, Eq. 2-3).

For every output row r the expected reconstruction error of the current mask is

    E[Delta_r] = sum over pruned k of  W_rk * E[A_k]                  (the row's "error")

and each iteration swaps one pruned weight back in (grow) against one kept weight out (prune),
so the sparsity of the row never changes. A row stops when ``|E[Delta_r]| <= epsilon``, when a
swap would flip the sign of its error (sign check, R4), when it runs out of candidates (R9:
stops cleanly, where the reference code crashes) or after ``T`` iterations. All rows advance
together: there is no Python loop over rows, only over the at most ``T`` iterations.

Candidates are ranked once per layer and consumed from both ends of a sorted list with two
pointers (R2), so a weight regrown or pruned is never reconsidered. Criteria (paper Table 7):

=========  ====================================================  ==============================
name       grow (a pruned weight comes back)                     prune (a kept weight goes)
=========  ====================================================  ==============================
eq2        argmax/argmin of ``W E[A] / Var(A)^pow`` by the sign   the same score, opposite end
           of the error (Eq. 2)
eq3        largest Wanda score among weights whose contribution   smallest Wanda score among
           has the error's sign                                   weights whose contribution has
                                                                  the opposite sign (Eq. 3)
wanda      largest Wanda score ``|W| ||A||``                      smallest Wanda score
magnitude  largest ``|W|``                                        smallest ``|W|``
initial    (N:M prune only) the initial method's own score, no sign restriction (the reference)
=========  ====================================================  ==============================

N:M: the pruned weight is chosen inside the regrown weight's block of M, so every block keeps N
zeros; ``nm_prune`` names its criterion.

Two presets (see ``preset``): ``official`` reproduces the reference code bit for bit (R1-R7,
R10, R11, including its defects, listed at ``DSnoTConfig.reference_quirks``); ``paper`` is what
the paper describes. Their differences:

====================  =========================================  ======================================
                      official (reference code)                  paper
====================  =========================================  ======================================
statistics            R1: E[A] = seqlen x token mean, Var = mean  token mean and pooled variance
                      of per-sample variances
sign check            off (R5), except in N:M where it is on      on
layers                attention projections only (R6)             every linear layer
N:M prune criterion   initial method's score, any sign            Eq. 3 inside the block
candidate lists       reference quirks (R2, R3 defects)           pruned / kept weights only
====================  =========================================  ======================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from . import candidates
from .candidates import Candidates
from .pruners import initial_score
from .stats import FLAVOURS, ChannelStats
from .validation import NM, check_channel_vector, check_mask, check_nm, check_weight

GROW_CRITERIA = ("eq2", "eq3", "wanda", "magnitude")
PRUNE_CRITERIA = ("eq2", "eq3", "wanda", "magnitude")
NM_PRUNE_CRITERIA = ("eq2", "eq3", "wanda", "magnitude", "initial")
LAYER_SCOPES = ("attention", "all")

STOP_REASONS = ("running", "threshold", "max_cycles", "sign_flip", "no_candidates")
RUNNING, THRESHOLD, MAX_CYCLES, SIGN_FLIP, NO_CANDIDATES = range(len(STOP_REASONS))


@dataclass(frozen=True)
class DSnoTConfig:
    """Every knob of DSnoT. Defaults are the ``official`` preset (R10).

    ``reference_quirks=True`` reproduces what the reference code does where it departs from the
    algorithm: the grow list also holds the kept weights (score 0) between its two ends (R2);
    contributions that are exactly zero make the prune list point at the weakest kept weight
    (R3); rows that have stopped still write their (no-op) swap into the mask every iteration
    until all rows stop; and in N:M the sign check is always on and the block's prune candidate
    is used up even when no swap happens. With ``False`` the lists hold only real candidates and
    stopped rows are left alone.

    One consequence the spec does not list: with the quirks, a grow pointer that runs past the
    pruned weights of its sign lands on kept weights (score 0 in the middle of the list), and the
    write prunes them. Stopped rows keep writing and their pointers keep moving until the last
    row stops, so one long-running row is enough: SmolLM2-135M block-3 ``q_proj`` at 60% with
    T = 200 ends at 62.4% sparsity (483 of 576 rows drifted, notebook 03), while T <= 100 stays
    exact. The same overrun can leave an N:M block with more than N zeros, and at 0% sparsity the
    first (no-op) write prunes the row's first column. All of this is what the reference does.
    Without the quirks the row sparsity is always exact.
    """

    max_cycle_time: int = 50
    update_threshold: float = 0.1
    pow_of_var_regrowing: float = 1.0
    sign_check: bool = False
    grow: str = "eq2"
    prune: str = "eq3"
    nm_prune: str = "initial"
    statistics: str = "official"
    layers: str = "attention"
    reference_quirks: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_cycle_time, int) or self.max_cycle_time < 0:
            raise ValueError(f"max_cycle_time (T) must be an int >= 0, got {self.max_cycle_time!r}; fix: e.g. 50, the paper's value")
        if not self.update_threshold >= 0:
            raise ValueError(f"update_threshold (epsilon) must be >= 0, got {self.update_threshold!r}; fix: e.g. 0.1, the paper's value")
        if not self.pow_of_var_regrowing >= 0:
            raise ValueError(f"pow_of_var_regrowing must be >= 0, got {self.pow_of_var_regrowing!r}; fix: e.g. 1, the reference's value")
        for name, value, allowed in (
            ("grow", self.grow, GROW_CRITERIA),
            ("prune", self.prune, PRUNE_CRITERIA),
            ("nm_prune", self.nm_prune, NM_PRUNE_CRITERIA),
            ("statistics", self.statistics, FLAVOURS),
            ("layers", self.layers, LAYER_SCOPES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def applies_to(self, layer_name: str) -> bool:
        """Whether DSnoT refines this linear layer (R6: the reference skips every MLP layer)."""
        if self.layers == "all":
            return True
        return any("attn" in part or "attention" in part for part in layer_name.lower().split("."))


PRESETS: dict[str, DSnoTConfig] = {
    "official": DSnoTConfig(),
    "paper": DSnoTConfig(
        sign_check=True, nm_prune="eq3", statistics="true", layers="all", reference_quirks=False
    ),
}


def preset(name: str) -> DSnoTConfig:
    """The ``official`` (reference code) or ``paper`` configuration."""
    if name not in PRESETS:
        raise ValueError(f"unknown DSnoT preset {name!r}; choose one of {tuple(PRESETS)}")
    return PRESETS[name]


def preset_overrides(config: DSnoTConfig | dict, name: str) -> dict:
    """The fields where ``config`` (a DSnoTConfig or its ``asdict``, as stored in a run record)
    differs from ``preset(name)``, in field order: ``{field: value}``."""
    base = asdict(preset(name))
    values = config if isinstance(config, dict) else asdict(config)
    return {k: values[k] for k in base if k in values and values[k] != base[k]}


@dataclass
class DSnoTTrace:
    """Per-iteration record, every tensor (iterations, C_out) on the CPU.

    ``error[t]`` is E[Delta_r] before iteration t (``error[-1]`` after the last one, so it has
    one more row); ``grown``/``pruned`` are the column indices considered at t (-1 where the row
    had no candidate left) and ``swapped`` whether the swap happened. ``output_error_before/after`` are ||W X - (M.W) X|| per row when
    inputs were given.
    """

    error: torch.Tensor
    grown: torch.Tensor
    pruned: torch.Tensor
    swapped: torch.Tensor
    output_error_before: torch.Tensor | None = None
    output_error_after: torch.Tensor | None = None


@dataclass
class DSnoTResult:
    """The refined mask (True = pruned) and what happened to every row."""

    mask: torch.Tensor
    swaps: torch.Tensor
    stop_reason: torch.Tensor
    initial_error: torch.Tensor
    final_error: torch.Tensor
    flips: int
    trace: DSnoTTrace | None = None
    stop_counts: dict[str, int] = field(default_factory=dict)


def _grow_list(cfg: DSnoTConfig, pruned, n_pruned, pruned_contribution, variance, wanda, weight) -> Candidates:
    """Ranked pruned weights for the grow step (Eq. 2 by default)."""
    k = cfg.max_cycle_time
    if cfg.grow == "eq2":
        score = _eq2_score(cfg, pruned_contribution, variance)
        if cfg.reference_quirks:  # R2: the reference ranks the whole row, kept weights at score 0
            return candidates.ascending(score, None, torch.full_like(n_pruned, pruned.shape[1]), k, "grow")
        return candidates.ascending(score, pruned, n_pruned, k, "grow")
    if cfg.grow == "eq3":
        return candidates.sign_partitioned(
            wanda, pruned, n_pruned, pruned_contribution, negatives_ascending=False, k=k, end="grow",
            segments_only=not cfg.reference_quirks,
        )[0]
    return candidates.ascending(wanda if cfg.grow == "wanda" else weight.abs(), pruned, n_pruned, k, "back")


def _prune_list(cfg: DSnoTConfig, pruned, n_pruned, contribution, variance, wanda, weight) -> Candidates:
    """Ranked kept weights for the prune step (Eq. 3 by default, R3)."""
    kept, n_kept = ~pruned, pruned.shape[1] - n_pruned
    k = cfg.max_cycle_time
    if cfg.prune == "eq3":
        cands, n_neg, n_zero = candidates.sign_partitioned(
            wanda, kept, n_kept, contribution, negatives_ascending=True, k=k, end="prune",
            segments_only=not cfg.reference_quirks,
        )
        if cfg.reference_quirks:  # R3: zero-contribution slots point at the weakest kept weight
            cands.fill, cands.fill_from, cands.fill_to = candidates.weakest(wanda, kept), n_neg, n_neg + n_zero
        return cands
    if cfg.prune == "eq2":
        score = _eq2_score(cfg, contribution.masked_fill(pruned, 0), variance)
        return candidates.ascending(score, kept, n_kept, k, "prune")
    return candidates.ascending(wanda if cfg.prune == "wanda" else weight.abs(), kept, n_kept, k, "front")


def _eq2_score(cfg: DSnoTConfig, contribution: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``W E[A] / Var(A)^pow``, given contributions already zeroed outside the candidates.

    A channel with zero variance gets +-inf (it lowers the error at no variance cost) and 0/0
    becomes 0, where the reference would produce NaN; so no NaN ever reaches a ranking.
    """
    if not cfg.pow_of_var_regrowing:
        return contribution
    score = contribution / torch.pow(variance.reshape(1, -1), cfg.pow_of_var_regrowing)
    if bool((variance == 0).any()):
        score = torch.nan_to_num(score, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    return score


def _nm_prune_key(cfg: DSnoTConfig, weight, stats, initial_method, contribution, variance, wanda, pruned):
    """Per-weight priority (lower = pruned first) for the in-block prune step; used-up = +inf."""
    if cfg.nm_prune == "initial":
        key = initial_score(weight, stats, initial_method)
    elif cfg.nm_prune in ("eq3", "wanda"):
        key = wanda.clone()
    elif cfg.nm_prune == "magnitude":
        key = weight.abs()
    else:  # eq2: direction depends on the error's sign, applied per iteration
        key = _eq2_score(cfg, contribution.masked_fill(pruned, 0), variance)
    return key.masked_fill(pruned, float("inf"))


@torch.no_grad()
def dsnot(
    weight: torch.Tensor,
    stats: ChannelStats,
    mask: torch.Tensor,
    config: DSnoTConfig | None = None,
    nm: NM | None = None,
    *,
    initial_method: str = "wanda",
    trace: bool = False,
    inputs: torch.Tensor | None = None,
) -> DSnoTResult:
    """Refine ``mask`` (True = pruned) of ``weight`` with DSnoT; returns the new mask and a report.

    ``initial_method`` only matters for ``nm_prune="initial"`` (the reference N:M behaviour).
    ``trace=True`` records every iteration; ``inputs`` (tokens, C_in) adds the true per-row
    output error before and after.
    """
    cfg = config or preset("official")
    check_weight(weight)
    check_mask(mask, weight)
    rows, cols = weight.shape
    check_nm(nm, cols)
    if not isinstance(stats, ChannelStats):
        raise ValueError(f"stats must be a ChannelStats, got {type(stats).__name__}")
    device = weight.device
    w = weight.float()
    mean = stats.expected_input(cfg.statistics).to(device)
    variance = stats.variance(cfg.statistics).to(device)
    scaler = stats.scaler_row.to(device)
    for name, vec in (("E[A]", mean), ("Var(A)", variance), ("scaler_row", scaler)):
        check_channel_vector(name, vec, cols)
    pruned = mask.clone().to(device)
    n_pruned = pruned.sum(1)
    if cfg.reference_quirks and nm is None and not bool((n_pruned == n_pruned[0]).all()):
        raise ValueError(
            "reference_quirks reproduce the reference code, which needs the same number of pruned "
            "weights in every row (R7); use a per-row initial mask or reference_quirks=False"
        )

    contribution = w * mean.reshape(1, -1)  # W_rk E[A_k]
    wanda = w.abs() * torch.sqrt(scaler.reshape(1, -1))
    pruned_contribution = contribution.masked_fill(~pruned, 0)  # as the reference's metric_for_regrowing
    error = pruned_contribution.sum(dim=1, keepdim=True)
    initial_error = error.clone()
    initial_sign = torch.sign(error)

    grow = _grow_list(cfg, pruned, n_pruned, pruned_contribution, variance, wanda, w)
    grow_front = torch.zeros(rows, 1, dtype=torch.long, device=device)
    grow_back = grow.size.reshape(rows, 1) - 1
    if nm is None:
        prune = _prune_list(cfg, pruned, n_pruned, contribution, variance, wanda, w)
        prune_front = torch.zeros(rows, 1, dtype=torch.long, device=device)
        prune_back = prune.size.reshape(rows, 1) - 1
    else:
        nm_key = _nm_prune_key(cfg, w, stats, initial_method, contribution, variance, wanda, pruned)
        block_offsets = torch.arange(nm[1], device=device).reshape(1, -1)
    sign_check = cfg.sign_check or (nm is not None and cfg.reference_quirks)

    active = torch.ones(rows, 1, dtype=torch.bool, device=device)
    stop = torch.full((rows, 1), RUNNING, dtype=torch.long, device=device)
    swaps = torch.zeros(rows, 1, dtype=torch.long, device=device)
    log: list[tuple[torch.Tensor, ...]] = []
    cycle = 0
    while cycle < cfg.max_cycle_time and bool(active.any()):
        cycle += 1
        # Grow (Eq. 2): the next pruned weight from the end that lowers |error|.
        g_back = grow.take_back(error)
        g_ok = grow.reachable(g_back, grow_front, grow_back, strict=not cfg.reference_quirks)
        g_idx = grow.column(torch.where(g_back, grow_back, grow_front))
        grown_value = contribution.gather(1, g_idx)

        # Prune (Eq. 3): the next kept weight whose removal moves the error toward zero.
        if nm is None:
            p_back = prune.take_back(error)
            p_ok = prune.reachable(p_back, prune_front, prune_back, strict=not cfg.reference_quirks)
            p_idx = prune.column(torch.where(p_back, prune_back, prune_front))
        else:
            block = g_idx - g_idx % nm[1] + block_offsets
            keys = nm_key.gather(1, block)
            if cfg.nm_prune == "eq2":
                keys = torch.where(error < 0, -keys, keys).masked_fill(keys.isinf(), float("inf"))
            if cfg.nm_prune == "eq3" and not cfg.reference_quirks:
                wrong_sign = torch.sign(contribution.gather(1, block)) != -torch.sign(error)
                keys = keys.masked_fill(wrong_sign, float("inf"))
            best, j = torch.topk(keys, 1, dim=1, largest=False)
            p_idx = block.gather(1, j)
            p_ok = torch.ones_like(g_ok) if cfg.reference_quirks else best.isfinite()
        pruned_value = contribution.gather(1, p_idx)

        # Swap where the row is still active and the swap is allowed (R4).
        error_after = error + pruned_value - grown_value
        update = active & (abs(error) > cfg.update_threshold)
        stop = torch.where(active & ~update, THRESHOLD, stop)
        if sign_check:
            keep_sign = initial_sign == torch.sign(error_after)
            stop = torch.where(update & ~keep_sign, SIGN_FLIP, stop)
            update = update & keep_sign
        has_candidates = g_ok & p_ok
        stop = torch.where(update & ~has_candidates, NO_CANDIDATES, stop)
        update = update & has_candidates

        current_p, current_g = pruned.gather(1, p_idx), pruned.gather(1, g_idx)
        if cfg.reference_quirks:  # every row writes, as the reference's unconditional scatters
            new_p = torch.where(has_candidates, update, current_p)
            new_g = torch.where(has_candidates, ~update, current_g)
        else:
            new_p, new_g = current_p | update, current_g & ~update
        pruned.scatter_(1, p_idx, new_p)
        pruned.scatter_(1, g_idx, new_g)
        if nm is not None:
            used = has_candidates if cfg.reference_quirks else update
            nm_key.scatter_(1, p_idx, torch.where(used, float("inf"), nm_key.gather(1, p_idx)))
        else:
            _advance(p_back, prune_front, prune_back, active if not cfg.reference_quirks else None)
        _advance(g_back, grow_front, grow_back, active if not cfg.reference_quirks else None)

        if trace:
            log.append((
                error.squeeze(1).clone(),
                torch.where(g_ok, g_idx, -1).squeeze(1),
                torch.where(p_ok, p_idx, -1).squeeze(1),
                update.squeeze(1),
            ))
        error += torch.where(update, pruned_value, torch.zeros_like(pruned_value))
        error -= torch.where(update, grown_value, torch.zeros_like(grown_value))
        swaps += update.long()
        active = update
    stop = torch.where(active, MAX_CYCLES, stop)

    final = pruned
    result = DSnoTResult(
        mask=final,
        swaps=swaps.squeeze(1),
        stop_reason=stop.squeeze(1),
        initial_error=initial_error.squeeze(1),
        final_error=error.squeeze(1),
        flips=int((final != mask.to(device)).sum()),
    )
    result.stop_counts = {name: int((result.stop_reason == code).sum()) for code, name in enumerate(STOP_REASONS)}
    if trace:
        result.trace = _build_trace(log, error, rows, weight, mask, final, inputs)
    return result


def _advance(back: torch.Tensor, front_ptr: torch.Tensor, back_ptr: torch.Tensor, only: torch.Tensor | None) -> None:
    """Move the used pointer one step inward (for every row, or ``only`` the given rows)."""
    step = torch.ones_like(front_ptr) if only is None else only.long()
    front_ptr += step * (~back).long()
    back_ptr -= step * back.long()


def _build_trace(log, error, rows, weight, initial_mask, final_mask, inputs) -> DSnoTTrace:
    def stack(i: int) -> torch.Tensor:
        if not log:
            return torch.zeros(0, rows, dtype=torch.float32 if i == 0 else torch.long)
        return torch.stack([entry[i] for entry in log]).cpu()

    errors = torch.cat([stack(0), error.squeeze(1).cpu().unsqueeze(0)])
    out = DSnoTTrace(error=errors, grown=stack(1), pruned=stack(2), swapped=stack(3).bool())
    if inputs is not None:
        gram = gram_matrix(inputs.to(weight.device))
        out.output_error_before = row_output_error(weight, initial_mask, gram).cpu()
        out.output_error_after = row_output_error(weight, final_mask, gram).cpu()
    return out


def gram_matrix(inputs: torch.Tensor) -> torch.Tensor:
    """``X^T X`` over all tokens of ``inputs`` (..., C_in), fp32."""
    flat = inputs.reshape(-1, inputs.shape[-1]).float()
    return flat.t() @ flat


def row_output_error(weight: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per-row ``||W_r X - (M.W)_r X||_2`` from the Gram matrix ``X^T X`` (paper Eq. 1), fp32."""
    check_mask(mask, weight)
    if tuple(gram.shape) != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gram must be ({weight.shape[1]}, {weight.shape[1]}), got {tuple(gram.shape)}")
    removed = torch.where(mask, weight.float(), torch.zeros_like(weight, dtype=torch.float32))
    return ((removed @ gram.float().to(weight.device)) * removed).sum(1).clamp_min(0).sqrt()
