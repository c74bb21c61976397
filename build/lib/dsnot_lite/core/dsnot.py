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
R10, R11, including its defects, listed in ``quirks.py``); ``paper`` is what
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

from . import candidates, quirks
from .candidates import Candidates, Pointers
from .checks import NM, check_channel_vector, check_mask, check_nm, check_weight
from .pruners import initial_score
from .stats import FLAVOURS, ChannelStats

GROW_CRITERIA = ("eq2", "eq3", "wanda", "magnitude")
PRUNE_CRITERIA = ("eq2", "eq3", "wanda", "magnitude")
NM_PRUNE_CRITERIA = ("eq2", "eq3", "wanda", "magnitude", "initial")
LAYER_SCOPES = ("attention", "all")

STOP_REASONS = ("running", "threshold", "T_reached", "sign_flip", "no_candidates")
RUNNING, THRESHOLD, T_REACHED, SIGN_FLIP, NO_CANDIDATES = range(len(STOP_REASONS))


@dataclass(frozen=True)
class DSnoTConfig:
    """Every knob of DSnoT. Defaults are the ``official`` preset (R10).

    ``T``: most swaps per row (the reference's ``max_cycle_time``); ``T_width``: when set, a layer
    with C_in inputs uses ``round(T * C_in / T_width)`` (e.g. ``T_width=4096`` keeps the paper's
    T = 50 per 4096 inputs of LLaMA-7B on narrower layers). ``eps``: stop a row once
    ``|E[Delta_r]| <= eps`` (``update_threshold``). ``var_power``: exponent of Var(A) in Eq. 2
    (``pow_of_var_regrowing``). ``var_floor``: Eq. 2 divides by ``max(Var(A_k), var_floor x the
    layer's median Var)`` so near-constant channels stop dominating the grow score (0 = off, as in
    both presets). ``reference_quirks`` switches on ``quirks.REFERENCE``, the reference code's
    departures from Algorithm 1 (that module lists them; with the quirks, T = 200 on SmolLM2
    block-3 ``q_proj`` drifts from 60% to 62.4% sparsity, notebook 03).
    """

    T: int = 50
    eps: float = 0.1
    var_power: float = 1.0
    var_floor: float = 0.0
    sign_check: bool = False
    grow: str = "eq2"
    prune: str = "eq3"
    nm_prune: str = "initial"
    statistics: str = "official"
    layers: str = "attention"
    reference_quirks: bool = True
    T_width: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 0:
            raise ValueError(f"T must be an int >= 0, got {self.T!r}; fix: e.g. 50, the paper's value")
        if self.T_width is not None and (not isinstance(self.T_width, int) or self.T_width < 1):
            raise ValueError(f"T_width must be a positive int or None, got {self.T_width!r}; fix: e.g. 4096 (LLaMA-7B)")
        for name, value, hint in (("eps", self.eps, "0.1, the paper's value"), ("var_power", self.var_power, "1, R10"),
                                  ("var_floor", self.var_floor, "0 (off) or 0.1")):  # fmt: skip
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}; fix: e.g. {hint}")
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

    def layer_T(self, in_features: int) -> int:
        """T for a layer with ``in_features`` inputs (``T_width`` scaling, at least 1 when T > 0)."""
        if self.T_width is None or self.T == 0:
            return self.T
        return max(1, round(self.T * in_features / self.T_width))

    @property
    def quirks(self) -> quirks.Quirks:
        return quirks.REFERENCE if self.reference_quirks else quirks.NONE


PRESETS: dict[str, DSnoTConfig] = {
    "official": DSnoTConfig(),
    "paper": DSnoTConfig(sign_check=True, nm_prune="eq3", statistics="true", layers="all", reference_quirks=False),
}


def preset(name: str) -> DSnoTConfig:
    """The ``official`` (reference code) or ``paper`` configuration."""
    if name not in PRESETS:
        raise ValueError(f"unknown DSnoT preset {name!r}; fix: choose one of {tuple(PRESETS)}")
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
    had no candidate left) and ``swapped`` whether the swap happened.
    """

    error: torch.Tensor
    grown: torch.Tensor
    pruned: torch.Tensor
    swapped: torch.Tensor


@dataclass
class DSnoTResult:
    """The refined mask (True = pruned) and what happened to every row (errors are E[Delta_r])."""

    mask: torch.Tensor
    swaps: torch.Tensor
    stop_reason: torch.Tensor
    initial_error: torch.Tensor
    final_error: torch.Tensor
    flips: int
    trace: DSnoTTrace | None = None
    stop_counts: dict[str, int] = field(default_factory=dict)


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
) -> DSnoTResult:
    """Refine ``mask`` (True = pruned) of ``weight`` with DSnoT, paper Algorithm 1, all rows at once.

    ``initial_method`` only matters for ``nm_prune="initial"`` (the reference N:M behaviour);
    ``trace=True`` records every iteration.
    """
    cfg = config or preset("official")
    rules = cfg.quirks
    w, mean, variance, scaler = _checked_inputs(weight, stats, mask, nm, cfg)
    rows = w.shape[0]
    pruned = mask.clone().to(w.device)
    contribution = w * mean.reshape(1, -1)  # W_rk E[A_k]
    wanda = w.abs() * torch.sqrt(scaler.reshape(1, -1))  # |W_rk| ||A_k||
    error = contribution.masked_fill(~pruned, 0).sum(dim=1, keepdim=True)  # E[Delta_r]
    initial_error, initial_sign = error.clone(), torch.sign(error)
    grow = Pointers(_grow_list(cfg, pruned, contribution, variance, wanda, w), strict=not rules.loose_pointers)
    if nm is None:
        prune = Pointers(_prune_list(cfg, pruned, contribution, variance, wanda, w), strict=not rules.loose_pointers)
    else:
        prune = _BlockPrune(
            cfg, nm[1], _nm_prune_key(cfg, w, stats, initial_method, contribution, variance, wanda, pruned), contribution
        )
    sign_check = rules.sign_check(cfg.sign_check, nm is not None)

    active = torch.ones(rows, 1, dtype=torch.bool, device=w.device)
    stop = torch.full((rows, 1), RUNNING, dtype=torch.long, device=w.device)
    swaps = torch.zeros(rows, 1, dtype=torch.long, device=w.device)
    log: list[tuple[torch.Tensor, ...]] = []
    for _ in range(cfg.layer_T(w.shape[1])):
        if not bool(active.any()):
            break
        g, g_ok = grow.next(error)  # Eq. 2: the pruned weight that moves E[Delta_r] toward 0 most per unit Var
        p, p_ok = prune.next(error) if nm is None else prune.next(error, g)  # Eq. 3 (N:M: in g's block)
        grown, removed = contribution.gather(1, g), contribution.gather(1, p)

        update = active & (error.abs() > cfg.eps)  # stop at |E[Delta_r]| <= eps
        stop = torch.where(active & ~update, THRESHOLD, stop)
        if sign_check:  # R4: a swap may not flip the sign of the row's error
            keep_sign = initial_sign == torch.sign(error + removed - grown)
            stop = torch.where(update & ~keep_sign, SIGN_FLIP, stop)
            update &= keep_sign
        has = g_ok & p_ok  # R9: a row out of candidates stops
        stop = torch.where(update & ~has, NO_CANDIDATES, stop)
        update &= has

        rules.write_swap(pruned, g, p, update, has)  # grow g, prune p
        grow.advance(rules.moving_rows(active))
        if nm is None:
            prune.advance(rules.moving_rows(active))
        else:
            prune.use(p, rules.nm_used(update, has))
        if trace:
            log.append((error.squeeze(1).clone(), torch.where(g_ok, g, -1).squeeze(1),
                        torch.where(p_ok, p, -1).squeeze(1), update.squeeze(1)))  # fmt: skip
        error += torch.where(update, removed, torch.zeros_like(removed))
        error -= torch.where(update, grown, torch.zeros_like(grown))
        swaps += update.long()
        active = update
    stop = torch.where(active, T_REACHED, stop)

    result = DSnoTResult(
        mask=pruned, swaps=swaps.squeeze(1), stop_reason=stop.squeeze(1), initial_error=initial_error.squeeze(1),
        final_error=error.squeeze(1), flips=int((pruned != mask.to(w.device)).sum()),
        trace=_build_trace(log, error, rows) if trace else None,
    )  # fmt: skip
    result.stop_counts = {name: int((result.stop_reason == code).sum()) for code, name in enumerate(STOP_REASONS)}
    return result


def _checked_inputs(weight, stats, mask, nm, cfg: DSnoTConfig):
    """fp32 weight and the statistics of ``cfg`` (E[A], Var(A) with its floor, ||A||^2), checked."""
    check_weight(weight)
    check_mask(mask, weight)
    check_nm(nm, weight.shape[1])
    if not isinstance(stats, ChannelStats):
        raise ValueError(f"stats must be a ChannelStats, got {type(stats).__name__}; fix: collect them with ChannelStats")
    device = weight.device
    mean = stats.expected_input(cfg.statistics).to(device)
    variance = stats.variance(cfg.statistics).to(device)
    scaler = stats.scaler_row.to(device)
    for name, vec in (("E[A]", mean), ("Var(A)", variance), ("scaler_row", scaler)):
        check_channel_vector(name, vec, weight.shape[1])
    if cfg.var_floor:
        variance = variance.clamp_min(cfg.var_floor * float(variance.median()))
    n_pruned = mask.sum(1)
    if cfg.quirks.grow_list_whole_row and nm is None and not bool((n_pruned == n_pruned[0]).all()):
        raise ValueError(
            "reference_quirks reproduce the reference code, which needs the same number of pruned "
            "weights in every row (R7); fix: use a per-row initial mask or reference_quirks=False"
        )
    return weight.float(), mean, variance, scaler


def _grow_list(cfg: DSnoTConfig, pruned, contribution, variance, wanda, weight) -> Candidates:
    """Ranked pruned weights for the grow step (Eq. 2 by default)."""
    k, n_pruned = cfg.layer_T(weight.shape[1]), pruned.sum(1)
    pruned_contribution = contribution.masked_fill(~pruned, 0)
    if cfg.grow == "eq2":
        score = _eq2_score(cfg, pruned_contribution, variance)
        if cfg.quirks.grow_list_whole_row:  # R2: kept weights ranked too, at score 0
            return candidates.ascending(score, None, torch.full_like(n_pruned, pruned.shape[1]), k, "grow")
        return candidates.ascending(score, pruned, n_pruned, k, "grow")
    if cfg.grow == "eq3":
        return candidates.sign_partitioned(
            wanda, pruned, n_pruned, pruned_contribution, negatives_ascending=False, k=k, end="grow",
            segments_only=not cfg.quirks.loose_pointers,
        )[0]  # fmt: skip
    return candidates.ascending(wanda if cfg.grow == "wanda" else weight.abs(), pruned, n_pruned, k, "back")


def _prune_list(cfg: DSnoTConfig, pruned, contribution, variance, wanda, weight) -> Candidates:
    """Ranked kept weights for the prune step (Eq. 3 by default, R3)."""
    kept = ~pruned
    k, n_kept = cfg.layer_T(weight.shape[1]), kept.sum(1)
    if cfg.prune == "eq3":
        cands, n_neg, n_zero = candidates.sign_partitioned(
            wanda, kept, n_kept, contribution, negatives_ascending=True, k=k, end="prune",
            segments_only=not cfg.quirks.loose_pointers,
        )  # fmt: skip
        if cfg.quirks.prune_list_zero_fill:  # R3: zero-contribution slots read the weakest kept weight
            cands.fill, cands.fill_from, cands.fill_to = candidates.weakest(wanda, kept), n_neg, n_neg + n_zero
        return cands
    if cfg.prune == "eq2":
        return candidates.ascending(_eq2_score(cfg, contribution.masked_fill(pruned, 0), variance), kept, n_kept, k, "prune")
    return candidates.ascending(wanda if cfg.prune == "wanda" else weight.abs(), kept, n_kept, k, "front")


def _eq2_score(cfg: DSnoTConfig, contribution: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``W E[A] / Var(A)^var_power``, given contributions already zeroed outside the candidates.

    A channel with zero variance gets +-inf (it lowers the error at no variance cost) and 0/0
    becomes 0, where the reference would produce NaN; so no NaN ever reaches a ranking.
    """
    if not cfg.var_power:
        return contribution
    score = contribution / torch.pow(variance.reshape(1, -1), cfg.var_power)
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


class _BlockPrune:
    """N:M prune step: the kept weight of the grown weight's block of ``m`` with the lowest key."""

    def __init__(self, cfg: DSnoTConfig, m: int, key: torch.Tensor, contribution: torch.Tensor):
        self.cfg, self.m, self.key, self.contribution = cfg, m, key, contribution
        self.offsets = torch.arange(m, device=key.device).reshape(1, -1)

    def next(self, error: torch.Tensor, grown: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block = grown - grown % self.m + self.offsets
        keys = self.key.gather(1, block)
        if self.cfg.nm_prune == "eq2":
            keys = torch.where(error < 0, -keys, keys).masked_fill(keys.isinf(), float("inf"))
        any_sign = self.cfg.quirks.nm_any_sign
        if self.cfg.nm_prune == "eq3" and not any_sign:  # Eq. 3's sign restriction inside the block
            wrong_sign = torch.sign(self.contribution.gather(1, block)) != -torch.sign(error)
            keys = keys.masked_fill(wrong_sign, float("inf"))
        best, j = torch.topk(keys, 1, dim=1, largest=False)
        return block.gather(1, j), torch.ones_like(best, dtype=torch.bool) if any_sign else best.isfinite()

    def use(self, column: torch.Tensor, used: torch.Tensor) -> None:
        self.key.scatter_(1, column, torch.where(used, float("inf"), self.key.gather(1, column)))


def _build_trace(log, error, rows) -> DSnoTTrace:
    def stack(i: int) -> torch.Tensor:
        if not log:
            return torch.zeros(0, rows, dtype=torch.float32 if i == 0 else torch.long)
        return torch.stack([entry[i] for entry in log]).cpu()

    errors = torch.cat([stack(0), error.squeeze(1).cpu().unsqueeze(0)])
    return DSnoTTrace(error=errors, grown=stack(1), pruned=stack(2), swapped=stack(3).bool())
