"""One linear layer under the microscope: prune it, refine the mask, measure everything.

``run_layer(layer, params)`` computes the initial mask (Wanda by default), refines it with DSnoT,
the exact refiner or both (``params.refiner``) and returns a ``LayerRun``: the refiner's result
(DSnoT's per-iteration trace, or the exact refiner's error per swap), flips per row, stop
reasons, the expected error ``E[Delta_r]`` and the *true* output error ``||(W - M.W) X||`` per
row on the calibration tokens and on held-out tokens. ``explain_row``, ``criterion_grid`` (paper
Table 7 on one layer) and ``sweep`` build tables from it. Runs are cached by (layer, params).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from dsnot_lite.core.dsnot import GROW_CRITERIA, PRUNE_CRITERIA, DSnoTConfig, DSnoTResult, dsnot, preset
from dsnot_lite.core.errors import row_output_error
from dsnot_lite.core.exact import ExactConfig, ExactResult, exact_refine
from dsnot_lite.core.pruners import initial_mask, wanda_score
from dsnot_lite.tutorial.layers import Layer, bundled_layer

LAYER_METHODS = ("magnitude", "wanda", "sparsegpt")
LAYER_REFINERS = ("dsnot", "exact", "dsnot+exact")


@dataclass(frozen=True)
class LayerParams:
    """One setting of ``run_layer`` (hashable: with the layer's key it is the cache key).

    DSnoT knobs left at None take the preset's value; ``T`` also bounds the exact refiner.
    """

    sparsity: float = 0.6
    method: str = "wanda"
    nm: tuple[int, int] | None = None
    refiner: str = "dsnot"
    preset: str = "official"
    T: int = 50
    eps: float = 0.1
    grow: str = "eq2"
    prune: str = "eq3"
    sign_check: bool | None = None
    var_power: float | None = None
    var_floor: float | None = None
    statistics: str | None = None
    shortlist: int | None = 8  # exact refiner: candidates per side (None: every pair)

    def dsnot_config(self) -> DSnoTConfig:
        """The preset with these overrides."""
        changes = dict(T=int(self.T), eps=float(self.eps), grow=self.grow, prune=self.prune)
        for name in ("sign_check", "var_power", "var_floor", "statistics"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return dataclasses.replace(preset(self.preset), **changes)

    def exact_config(self) -> ExactConfig:
        return ExactConfig(T=int(self.T), shortlist=self.shortlist)


@dataclass(eq=False)
class LayerRun:
    """What refinement did to one layer (the result of ``run_layer``)."""

    layer_key: str
    layer_name: str
    params: LayerParams
    config: DSnoTConfig  # DSnoT's configuration (also the statistics E[Delta_r] is measured with)
    initial_mask: torch.Tensor
    result: DSnoTResult | ExactResult  # the last refiner's result; .mask is the final mask
    dsnot_result: DSnoTResult | None  # DSnoT's own result (with its trace) when DSnoT ran
    expected_error_before: torch.Tensor  # E[Delta_r] per row, initial mask
    expected_error_after: torch.Tensor
    output_error_before: torch.Tensor  # per row, calibration tokens
    output_error_after: torch.Tensor
    dense_output_norm: torch.Tensor  # per row ||W_r X||
    heldout_rel_before: float | None
    heldout_rel_after: float | None
    seconds: float
    summary: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.result.mask

    @property
    def trace(self):
        """DSnoT's per-iteration trace (None when DSnoT did not run)."""
        return self.dsnot_result.trace if self.dsnot_result is not None else None

    @property
    def flips_per_row(self) -> torch.Tensor:
        return (self.result.mask != self.initial_mask).sum(1)


def _rel(num_rows: torch.Tensor, den_rows: torch.Tensor) -> float:
    den = float(den_rows.square().sum())
    return math.sqrt(float(num_rows.square().sum()) / den) if den > 0 else 0.0


_LAYER_CACHE: OrderedDict = OrderedDict()
_LAYER_CACHE_SIZE = 256
_cache_stats = {"hits": 0, "misses": 0}


def cache_info() -> dict:
    """Hits and misses of the ``run_layer`` cache, and how many runs it holds."""
    return {**_cache_stats, "size": len(_LAYER_CACHE)}


def clear_cache() -> None:
    """Forget every cached ``run_layer`` result (the layer caches are kept)."""
    _LAYER_CACHE.clear()
    _cache_stats.update(hits=0, misses=0)


def run_layer(layer: Layer, params: LayerParams | None = None, **overrides) -> LayerRun:
    """Initial mask (``params.method``) then the refiner(s) on ``layer``; cached by (layer, params).

    ``run_layer(layer, sparsity=0.7, T=20)`` is the same as ``run_layer(layer, LayerParams(sparsity=0.7, T=20))``.
    """
    params = dataclasses.replace(params or LayerParams(), **overrides)
    if params.nm is not None:
        params = dataclasses.replace(params, nm=tuple(params.nm), sparsity=params.nm[0] / params.nm[1])
    key = (layer.key, params)
    if key in _LAYER_CACHE:
        _cache_stats["hits"] += 1
        _LAYER_CACHE.move_to_end(key)
        return _LAYER_CACHE[key]
    _cache_stats["misses"] += 1
    if params.method not in LAYER_METHODS or params.refiner not in LAYER_REFINERS:
        raise ValueError(f"method must be one of {LAYER_METHODS} and refiner one of {LAYER_REFINERS}, "
                         f"got {params.method!r} and {params.refiner!r}")  # fmt: skip
    run = _compute(layer, params)
    _LAYER_CACHE[key] = run
    while len(_LAYER_CACHE) > _LAYER_CACHE_SIZE:
        _LAYER_CACHE.popitem(last=False)
    return run


def _compute(layer: Layer, params: LayerParams) -> LayerRun:
    cfg = params.dsnot_config()
    start = time.perf_counter()
    mask0 = initial_mask(layer.weight, layer.stats, params.method, params.sparsity, params.nm)
    result = dsnot_result = None
    mask, swaps = mask0, 0
    for refiner in params.refiner.split("+"):
        if refiner == "dsnot":
            result = dsnot_result = dsnot(
                layer.weight, layer.stats, mask, cfg, params.nm, initial_method=params.method, trace=True
            )
        else:
            result = exact_refine(layer.weight, layer.gram, mask, params.exact_config(), params.nm, trace=True)
        mask, swaps = result.mask, swaps + int(result.swaps.sum())
    seconds = time.perf_counter() - start
    everything = torch.ones_like(mask0)
    dense_norm = row_output_error(layer.weight, everything, layer.gram)
    before, after = row_output_error(layer.weight, mask0, layer.gram), row_output_error(layer.weight, mask, layer.gram)
    h_before = h_after = None
    if layer.heldout_gram is not None:
        h_dense = row_output_error(layer.weight, everything, layer.heldout_gram)
        h_before = _rel(row_output_error(layer.weight, mask0, layer.heldout_gram), h_dense)
        h_after = _rel(row_output_error(layer.weight, mask, layer.heldout_gram), h_dense)
    contribution = layer.weight * layer.stats.expected_input(cfg.statistics).reshape(1, -1)
    run = LayerRun(
        layer_key=layer.key, layer_name=layer.name, params=params, config=cfg, initial_mask=mask0, result=result,
        dsnot_result=dsnot_result, expected_error_before=(contribution * mask0).sum(1),
        expected_error_after=(contribution * mask).sum(1), output_error_before=before, output_error_after=after,
        dense_output_norm=dense_norm, heldout_rel_before=h_before, heldout_rel_after=h_after, seconds=seconds,
    )  # fmt: skip
    run.summary = _summary(run, mask0, mask, swaps)
    return run


def _summary(run: LayerRun, mask0: torch.Tensor, mask: torch.Tensor, swaps: int) -> dict:
    flips, res = run.flips_per_row, run.result
    before, after = run.output_error_before, run.output_error_after
    return {
        "mean_abs_error_before": float(run.expected_error_before.abs().mean()),
        "mean_abs_error_after": float(run.expected_error_after.abs().mean()),
        "rel_output_error_before": _rel(before, run.dense_output_norm),
        "rel_output_error_after": _rel(after, run.dense_output_norm),
        "heldout_rel_error_before": run.heldout_rel_before,
        "heldout_rel_error_after": run.heldout_rel_after,
        "rows_output_error_lower": float((after < before).float().mean()),
        "swaps": swaps,
        "flips": int(flips.sum()),
        "rows_changed": int((flips > 0).sum()),
        "max_swaps_in_a_row": int(res.swaps.max()) if res.swaps.numel() else 0,
        "sparsity_before": float(mask0.float().mean()),
        "sparsity_after": float(mask.float().mean()),
        "row_sparsity_preserved": bool((mask0.sum(1) == mask.sum(1)).all()),
        "seconds": run.seconds,
        **{f"stop_{k}": v for k, v in res.stop_counts.items()},
    }


def summary_frame(runs: dict):
    """``{label: LayerRun}`` -> a DataFrame of their summaries, one row per label."""
    import pandas as pd

    return pd.DataFrame({label: run.summary for label, run in runs.items()}).T


def explain_row(layer: Layer, run: LayerRun, row: int, steps: int = 8):
    """The first ``steps`` DSnoT iterations on ``row``, one line each (a DataFrame).

    Columns: the row's error before the step, the grown column and why (its contribution
    ``W E[A]``, ``Var(A)`` and the Eq. 2 score ``W E[A] / Var^var_power``), the pruned column and
    why (its contribution and Wanda score ``|W| ||A||``), whether the swap happened and the error after.
    """
    import pandas as pd

    trace = run.trace
    if trace is None:
        raise ValueError("explain_row follows DSnoT's iterations, but this run has no DSnoT; fix: use refiner='dsnot'")
    if not 0 <= row < layer.weight.shape[0]:
        raise ValueError(f"row {row} out of range [0, {layer.weight.shape[0]})")
    cfg = run.config
    mean = layer.stats.expected_input(cfg.statistics)
    var = layer.stats.variance(cfg.statistics)
    w = layer.weight[row]
    wanda = wanda_score(w.reshape(1, -1), layer.stats.scaler_row).flatten()
    lines = []
    for t in range(min(steps, trace.grown.shape[0])):
        g, p = int(trace.grown[t, row]), int(trace.pruned[t, row])
        g_contrib = float(w[g] * mean[g])
        lines.append({
            "iteration": t,
            "E[Delta_r] before": float(trace.error[t, row]),
            "grown column": g,
            "grown W*E[A]": g_contrib,
            "grown Var(A)": float(var[g]),
            "grown Eq.2 score": g_contrib / float(var[g]) ** cfg.var_power if float(var[g]) else float("inf"),
            "pruned column": p,
            "pruned W*E[A]": float(w[p] * mean[p]),
            "pruned Wanda score": float(wanda[p]),
            "swapped": bool(trace.swapped[t, row]),
            "E[Delta_r] after": float(trace.error[t + 1, row]),
        })  # fmt: skip
    return pd.DataFrame(lines)


def rows_by_initial_error(run: LayerRun, k: int = 4) -> list[int]:
    """The ``k`` rows with the largest initial ``|E[Delta_r]|`` (the most interesting to plot)."""
    k = min(k, run.expected_error_before.numel())
    return [int(i) for i in torch.topk(run.expected_error_before.abs(), k).indices]


def criterion_grid(
    layer: Layer,
    metric: str = "rel_output_error_after",
    grows: tuple[str, ...] = GROW_CRITERIA,
    prunes: tuple[str, ...] = PRUNE_CRITERIA,
    params: LayerParams | None = None,
    **overrides,
):
    """Paper Table 7 on one layer: ``metric`` for every (prune, grow) criterion pair (a DataFrame
    indexed by the prune criterion, one column per grow criterion)."""
    import pandas as pd

    base = dataclasses.replace(params or LayerParams(), **overrides)
    table = {g: {p: run_layer(layer, base, grow=g, prune=p).summary[metric] for p in prunes} for g in grows}
    frame = pd.DataFrame(table).loc[list(prunes), list(grows)]
    frame.index.name, frame.columns.name = "prune criterion", "grow criterion"
    return frame


def sweep(layer: Layer, param: str, values, params: LayerParams | None = None, **overrides):
    """``run_layer`` for every value of one ``LayerParams`` field; one row per value (a DataFrame)."""
    import pandas as pd

    names = {f.name for f in dataclasses.fields(LayerParams)}
    if param not in names:
        raise ValueError(f"cannot sweep {param!r}; fix: choose a LayerParams field, one of {sorted(names)}")
    base = dataclasses.replace(params or LayerParams(), **overrides)
    rows = []
    for value in values:
        run = run_layer(layer, base, **{param: value})
        shown = (f"{value[0]}:{value[1]}" if value else "unstructured") if param == "nm" else value
        rows.append({param: shown, **run.summary})
    return pd.DataFrame(rows)


def calibration_sweep(nsamples_list, params: LayerParams | None = None, **layer_kwargs):
    """The same real layer calibrated with each number of windows (held-out error too)."""
    import pandas as pd

    rows = []
    for n in nsamples_list:
        layer = bundled_layer(nsamples=int(n), **layer_kwargs)
        rows.append({"nsamples": int(n), **run_layer(layer, params).summary})
    return pd.DataFrame(rows)


def grown_channels(layer: Layer, run: LayerRun, k: int = 10):
    """The input channels DSnoT regrew in the most rows, with their statistics (a DataFrame).

    ``rows`` counts the rows in which the channel's weight was grown back; ``variance`` and
    ``variance quantile`` (0 = the layer's lowest) are the Var(A) that Eq. 2 divides by.
    """
    import pandas as pd

    trace = run.trace
    if trace is None:
        raise ValueError("grown_channels reads DSnoT's trace, but this run has no DSnoT; fix: use refiner='dsnot'")
    grown = trace.grown[trace.swapped]
    counts = torch.bincount(grown, minlength=layer.weight.shape[1])
    variance = layer.stats.variance(run.config.statistics)
    quantile = variance.argsort().argsort().float() / max(1, variance.numel() - 1)
    top = torch.topk(counts, min(k, int((counts > 0).sum()))).indices
    return pd.DataFrame({
        "channel": top.tolist(), "rows": counts[top].tolist(), "variance": variance[top].tolist(),
        "variance quantile": quantile[top].tolist(), "median variance": [float(variance.median())] * len(top),
        "E[A] (token mean)": layer.stats.mean[top].tolist(),
    })  # fmt: skip


def error_split(layer: Layer, run: LayerRun) -> dict[str, float]:
    """The layer's squared output error split into its mean and variance parts (spec section 6),
    for the initial mask and after refinement, relative to ``||W X||^2`` on the calibration tokens."""
    from dsnot_lite.core.errors import error_parts, removed_weights

    stats, parts = layer.stats, {}
    for when, mask in (("before", run.initial_mask), ("after", run.mask)):
        p = error_parts(removed_weights(layer.weight, mask), layer.weight, stats.gram, stats.mean, stats.ntokens)
        parts[f"mean part {when}"] = p.mean / p.dense
        parts[f"variance part {when}"] = (p.total - p.mean) / p.dense
        parts[f"total {when}"] = p.total / p.dense
    return parts


def flip_accounting(run: LayerRun) -> dict[str, int]:
    """Why DSnoT's flipped mask entries are not two per swap: its writes replayed from the trace.

    A swap writes two entries, so ``2 x swaps`` would be the flips if nothing else happened. The
    net count (``flips``: entries whose final state differs from the initial mask) is lower when
    an entry changes twice (a weight pruned by one swap and regrown by a later one, or regrown and
    pruned again: ``round_trips``), and differs when a write changes nothing (``idle_writes``: R2
    lists kept weights at score 0, so the grow pointer may "regrow" a weight that is already kept)
    or when a row that has stopped still writes (``stopped_row_changes``: the reference's
    unconditional writes, ``quirks.REFERENCE``). ``regrown_after_pruned`` counts swaps that regrew a
    weight an earlier swap of the row had pruned (``..._one_step_earlier``: by the previous swap,
    R2). Identity: ``flips = swap_changes + stopped_row_changes - 2 x round_trips``, checked here.
    """
    trace = run.trace
    if trace is None:
        raise ValueError("flip_accounting replays DSnoT's trace, but this run has no DSnoT; fix: use refiner='dsnot'")
    mask = run.initial_mask.clone()
    changes = torch.zeros(mask.shape, dtype=torch.long)
    pruned_by_swap_at = torch.full(mask.shape, -2, dtype=torch.long)  # iteration a swap last pruned the entry
    counts = dict.fromkeys(("swap_changes", "idle_writes", "stopped_row_changes", "regrown_after_pruned",
                            "regrown_one_step_earlier"), 0)  # fmt: skip
    rows = torch.arange(mask.shape[0])
    for t in range(trace.grown.shape[0]):
        g, p, update = trace.grown[t], trace.pruned[t], trace.swapped[t]
        has = (g >= 0) & (p >= 0)
        g, p = g.clamp_min(0), p.clamp_min(0)
        swapped_rows = update & has
        earlier = pruned_by_swap_at[rows, g]
        counts["regrown_after_pruned"] += int((swapped_rows & (earlier >= 0)).sum())
        counts["regrown_one_step_earlier"] += int((swapped_rows & (earlier == t - 1)).sum())
        before = mask.clone()
        run.config.quirks.write_swap(mask, g.unsqueeze(1), p.unsqueeze(1), update.unsqueeze(1), has.unsqueeze(1))
        changed = mask != before
        changes += changed.long()
        in_swaps = changed[swapped_rows]
        counts["swap_changes"] += int(in_swaps.sum())
        counts["idle_writes"] += 2 * int(swapped_rows.sum()) - int(in_swaps.sum())
        counts["stopped_row_changes"] += int(changed[~swapped_rows].sum())
        pruned_by_swap_at[rows[swapped_rows], p[swapped_rows]] = t
    if not torch.equal(mask, run.mask):
        raise RuntimeError("replaying the trace did not give the run's mask; the trace and the refiner disagree")
    flips = int((mask != run.initial_mask).sum())
    round_trips = int((changes // 2).sum())
    assert flips == counts["swap_changes"] + counts["stopped_row_changes"] - 2 * round_trips
    return {"swaps": int(trace.swapped.sum()), "two_per_swap": 2 * int(trace.swapped.sum()), **counts,
            "round_trips": round_trips, "flips": flips}  # fmt: skip
