"""Pure, cached functions behind the notebooks and the widgets (no plotting, no printing).

Two scales:

* **one linear layer** (``Layer``): a synthetic layer with planted outlier input channels
  (``synthetic_layer``) or a real layer of the bundled SmolLM2-135M with its inputs collected on
  a few C4 calibration windows (``bundled_layer``). ``run_layer`` prunes it (Wanda by default),
  refines the mask with DSnoT and returns a ``LayerRun``: the DSnoT trace, swaps and flips per
  row, stop reasons, the expected error ``E[Delta_r]`` and the *true* output error
  ``||(W - M.W) X||`` per row, on the calibration tokens and on held-out tokens.
  ``explain_row``, ``criterion_grid`` (paper Table 7 on one layer) and ``sweep`` build tables
  from it.
* **a whole model** (``ModelLab``): the pipeline's public functions (``prune_model``,
  ``perplexity``) on a model loaded once, with the calibration windows and the test text
  tokenised once and the dense weights restored between runs. ``blocks=k`` prunes only the
  first ``k`` decoder blocks (the fast mode of the notebooks; the result's model label says so).
  Every run is cached in memory and, with ``cache_dir``, as one JSON file per configuration (and
  a row in a results table), so a sweep re-runs instantly and resumes where it stopped.

Everything expensive is cached by its parameters, so a widget click that repeats a setting does
not recompute. The cached objects are shared: treat the tensors they hold as read-only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from dsnot_lite.dsnot import (
    GROW_CRITERIA,
    PRUNE_CRITERIA,
    STOP_REASONS,
    DSnoTConfig,
    DSnoTResult,
    dsnot,
    gram_matrix,
    preset,
    row_output_error,
)
from dsnot_lite.pruners import initial_mask, wanda_score
from dsnot_lite.stats import ChannelStats

BUNDLED = "smollm2-135m"


def _cached(maxsize: int):
    """``functools.lru_cache`` keyed on the *bound* arguments, so ``f()`` and ``f(default)`` share an entry."""
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)
        inner = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return inner(*bound.args)

        call.cache_clear = inner.cache_clear
        call.cache_info = inner.cache_info
        return call

    return wrap
LAYER_METHODS = ("magnitude", "wanda", "sparsegpt")


# --------------------------------------------------------------------------------------------
# One linear layer
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Layer:
    """A linear layer and its calibration inputs, ready for ``run_layer``.

    ``key`` identifies the data (it is part of every cache key: two layers with the same key must
    hold the same tensors). ``gram`` is ``X^T X`` over the calibration tokens and
    ``heldout_gram`` over tokens the statistics never saw.
    """

    key: str
    name: str
    weight: torch.Tensor  # (C_out, C_in), fp32, CPU
    stats: ChannelStats
    gram: torch.Tensor
    heldout_gram: torch.Tensor | None = None
    outlier_channels: tuple[int, ...] = ()
    description: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def channel_frame(self):
        """Per input channel: official/true E[A], variances and input norm (a pandas DataFrame)."""
        import pandas as pd

        s = self.stats
        return pd.DataFrame(
            {
                "channel": range(s.in_features),
                "E[A] official (seqlen x mean)": s.sum_metric_row.numpy(),
                "E[A] token mean": s.mean.numpy(),
                "Var official": s.var.numpy(),
                "Var pooled": s.pooled_var.numpy(),
                "||A||_2": s.scaler_row.sqrt().numpy(),
                "outlier": [c in set(self.outlier_channels) for c in range(s.in_features)],
            }
        )


def _stats_of(inputs: torch.Tensor, hessian: bool = True) -> ChannelStats:
    stats = ChannelStats(inputs.shape[-1], hessian=hessian)
    stats.add_batch(inputs)
    return stats


@_cached(maxsize=16)
def synthetic_layer(
    c_out: int = 64,
    c_in: int = 256,
    samples: int = 4,
    tokens: int = 128,
    n_outliers: int = 4,
    outlier_scale: float = 8.0,
    seed: int = 0,
) -> Layer:
    """A random layer whose inputs have ``n_outliers`` channels with a large, systematic mean.

    LLM activations have a few input channels whose values are large and mostly of one sign
    (Dettmers et al. 2022); those make ``E[A]`` far from zero, which is exactly where the
    expected error ``E[Delta_r]`` of a pruned row comes from. Weights ~ N(0, 1/C_in); ordinary
    channels ~ N(mu_k, 1) with small means mu_k ~ N(0, 0.1^2); outlier channels
    ~ outlier_scale * (s_k + 0.3 N(0, 1)) with a fixed sign s_k. ``samples`` x ``tokens``
    calibration inputs and the same amount of held-out inputs are drawn with ``seed``.
    """
    if not (c_out > 0 and c_in > 0 and samples > 0 and tokens > 1 and 0 <= n_outliers <= c_in):
        raise ValueError("synthetic_layer needs positive sizes, tokens > 1 and 0 <= n_outliers <= c_in")
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, generator=gen) / math.sqrt(c_in)
    outliers = torch.randperm(c_in, generator=gen)[:n_outliers].sort().values
    base_mean = 0.1 * torch.randn(c_in, generator=gen)
    signs = torch.where(torch.rand(n_outliers, generator=gen) < 0.5, -1.0, 1.0)

    def draw() -> torch.Tensor:
        x = torch.randn(samples, tokens, c_in, generator=gen) + base_mean
        x[..., outliers] = outlier_scale * (signs + 0.3 * torch.randn(samples, tokens, n_outliers, generator=gen))
        return x

    calib, heldout = draw(), draw()
    key = f"synthetic(c_out={c_out},c_in={c_in},samples={samples},tokens={tokens},outliers={n_outliers},scale={outlier_scale},seed={seed})"
    return Layer(
        key=key,
        name="synthetic",
        weight=weight,
        stats=_stats_of(calib),
        gram=gram_matrix(calib),
        heldout_gram=gram_matrix(heldout),
        outlier_channels=tuple(int(c) for c in outliers),
        description=(
            f"synthetic {c_out}x{c_in} layer, {samples} samples x {tokens} tokens, "
            f"{n_outliers} outlier channels (scale {outlier_scale}), seed {seed}"
        ),
    )


@_cached(maxsize=2)
def load_dense(model: str = BUNDLED, device: str = "cpu", dtype: str | None = None):
    """``(LoadedModel, dense block weights)`` loaded once per process (``models.load_model``)."""
    from dsnot_lite.models import load_model

    torch_dtype = getattr(torch, dtype) if dtype else None
    loaded = load_model(model, device=device, dtype=torch_dtype)
    snapshot = {k: v.detach().clone() for k, v in loaded.blocks.state_dict().items()}
    return loaded, snapshot


def restore_dense(loaded, snapshot: dict) -> None:
    """Put the dense block weights back (after a pruning run changed them)."""
    loaded.blocks.load_state_dict(snapshot)


@_cached(maxsize=8)
def calibration_ids(
    model: str, nsamples: int, seqlen: int, seed: int = 0, data_dir: str | None = None, device: str = "cpu", dtype: str | None = None
) -> torch.Tensor:
    """Wanda-style C4 calibration windows (``data.calibration_windows``), cached."""
    from dsnot_lite import data

    loaded, _ = load_dense(model, device, dtype)
    return data.calibration_windows(loaded.tokenizer, data.c4_documents(data_dir), nsamples, seqlen, seed, progress=False)


@_cached(maxsize=4)
def heldout_ids(model: str, windows: int, seqlen: int, data_dir: str | None = None) -> torch.Tensor:
    """The first ``windows`` non-overlapping ``seqlen``-token windows of WikiText-2 validation text."""
    from dsnot_lite import data
    from dsnot_lite.evaluation import tokenize_test_text

    loaded, _ = load_dense(model)
    ids = tokenize_test_text(loaded.tokenizer, data.wikitext_rows("validation", data_dir))
    if ids.numel() < windows * seqlen:
        raise ValueError(f"WikiText-2 validation has {ids.numel()} tokens, fewer than {windows} x {seqlen}; fix: lower them")
    return ids[: windows * seqlen].view(windows, seqlen)


@_cached(maxsize=8)
def bundled_layer(
    block: int = 3,
    linear: str = "self_attn.q_proj",
    nsamples: int = 4,
    seqlen: int = 128,
    seed: int = 0,
    heldout: int = 2,
    model: str = BUNDLED,
    data_dir: str | None = None,
) -> Layer:
    """A real linear layer of ``model`` with its inputs on ``nsamples`` C4 calibration windows.

    The calibration windows are the pipeline's (``data.calibration_windows`` with ``seed``). The
    held-out inputs come from the first ``heldout`` non-overlapping ``seqlen``-token windows of
    WikiText-2 *validation* text, the same for every ``nsamples``, so held-out errors of layers
    calibrated differently are comparable. Block 0's inputs are captured
    (``calibration.capture_block_inputs``), run through the *dense* blocks before ``block``
    (``run_block``) and the layer's statistics are collected with the pipeline's
    ``collect_stats``. (In the full pipeline the earlier blocks would already be pruned; for
    studying one layer the dense upstream is the cleaner setting.)
    """
    from dsnot_lite.calibration import BlockInputs, capture_block_inputs, collect_stats, run_block
    from dsnot_lite.models import find_linears

    loaded, snapshot = load_dense(model)
    restore_dense(loaded, snapshot)
    if not 0 <= block < len(loaded.blocks):
        raise ValueError(f"block {block} out of range; {model} has {len(loaded.blocks)} blocks")
    linears = find_linears(loaded.blocks[block])
    if linear not in linears:
        raise ValueError(f"block {block} has no linear {linear!r}; choose one of {sorted(linears)}")
    ids = calibration_ids(model, nsamples, seqlen, seed, data_dir)

    def inputs_of(rows: torch.Tensor) -> tuple[BlockInputs, torch.Tensor]:
        hidden = capture_block_inputs(loaded.model, loaded.blocks, rows, batch_size=8)
        for i in range(block):
            hidden = run_block(loaded.blocks[i], hidden)
        seen: list[torch.Tensor] = []
        handle = linears[linear].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().float().clone()))
        try:
            run_block(loaded.blocks[block], hidden)
        finally:
            handle.remove()
        return hidden, torch.cat(seen)

    calib_hidden, calib_x = inputs_of(ids)
    stats = collect_stats(loaded.blocks[block], {linear: linears[linear]}, calib_hidden, hessian=True)[linear]
    heldout_gram = gram_matrix(inputs_of(heldout_ids(model, heldout, seqlen, data_dir))[1]) if heldout else None
    weight = linears[linear].weight.detach().float().cpu().clone()
    mean = stats.mean.abs()
    outliers = torch.nonzero(mean > mean.median() + 6 * (mean - mean.median()).abs().median()).flatten()
    name = f"{loaded.blocks_path}.{block}.{linear}"
    return Layer(
        key=f"{model}/{name}/n{nsamples}/L{seqlen}/seed{seed}/heldout{heldout}/{data_dir}",
        name=name,
        weight=weight,
        stats=stats,
        gram=gram_matrix(calib_x),
        heldout_gram=heldout_gram,
        outlier_channels=tuple(int(c) for c in outliers[:32]),
        description=(
            f"{model} {name} ({weight.shape[0]}x{weight.shape[1]}), inputs on {nsamples} C4 windows "
            f"of {seqlen} tokens (seed {seed}), {heldout} held-out WikiText-2 validation windows"
        ),
    )


@dataclass(frozen=True)
class LayerParams:
    """One setting of ``run_layer`` (hashable: it is the cache key with the layer's key)."""

    sparsity: float = 0.6
    T: int = 50
    eps: float = 0.1
    grow: str = "eq2"
    prune: str = "eq3"
    sign_check: bool | None = None  # None: the preset's choice
    preset: str = "official"
    nm: tuple[int, int] | None = None
    method: str = "wanda"
    pow_of_var: float | None = None  # None: the preset's (1)
    statistics: str | None = None  # None: the preset's ("official" or "true")

    def config(self) -> DSnoTConfig:
        """The DSnoTConfig: the preset with these overrides."""
        base = preset(self.preset)
        changes = dict(max_cycle_time=int(self.T), update_threshold=float(self.eps), grow=self.grow, prune=self.prune)
        if self.sign_check is not None:
            changes["sign_check"] = bool(self.sign_check)
        if self.pow_of_var is not None:
            changes["pow_of_var_regrowing"] = float(self.pow_of_var)
        if self.statistics is not None:
            changes["statistics"] = self.statistics
        return dataclasses.replace(base, **changes)


@dataclass(eq=False)
class LayerRun:
    """What DSnoT did to one layer (the result of ``run_layer``)."""

    layer_key: str
    layer_name: str
    params: LayerParams
    config: DSnoTConfig
    initial_mask: torch.Tensor
    result: DSnoTResult  # .mask, .swaps, .stop_reason, .initial_error, .final_error, .trace
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
        return self.result.trace

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
    """Forget every cached ``run_layer`` result (the layer/model caches are kept)."""
    _LAYER_CACHE.clear()
    _cache_stats.update(hits=0, misses=0)


def run_layer(layer: Layer, params: LayerParams | None = None, **overrides) -> LayerRun:
    """Initial mask (``params.method``) then DSnoT on ``layer``; cached by (layer, params).

    ``run_layer(layer, sparsity=0.7, T=20)`` is the same as
    ``run_layer(layer, LayerParams(sparsity=0.7, T=20))``.
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
    if params.method not in LAYER_METHODS:
        raise ValueError(f"method must be one of {LAYER_METHODS}, got {params.method!r}")
    cfg = params.config()
    start = time.perf_counter()
    mask0 = initial_mask(layer.weight, layer.stats, params.method, params.sparsity, params.nm)
    res = dsnot(layer.weight, layer.stats, mask0, cfg, params.nm, initial_method=params.method, trace=True)
    seconds = time.perf_counter() - start
    everything = torch.ones_like(mask0)
    dense_norm = row_output_error(layer.weight, everything, layer.gram)
    before = row_output_error(layer.weight, mask0, layer.gram)
    after = row_output_error(layer.weight, res.mask, layer.gram)
    h_before = h_after = None
    if layer.heldout_gram is not None:
        h_dense = row_output_error(layer.weight, everything, layer.heldout_gram)
        h_before = _rel(row_output_error(layer.weight, mask0, layer.heldout_gram), h_dense)
        h_after = _rel(row_output_error(layer.weight, res.mask, layer.heldout_gram), h_dense)
    run = LayerRun(
        layer_key=layer.key,
        layer_name=layer.name,
        params=params,
        config=cfg,
        initial_mask=mask0,
        result=res,
        output_error_before=before,
        output_error_after=after,
        dense_output_norm=dense_norm,
        heldout_rel_before=h_before,
        heldout_rel_after=h_after,
        seconds=seconds,
    )
    flips = run.flips_per_row
    run.summary = {
        "mean_abs_error_before": float(res.initial_error.abs().mean()),
        "mean_abs_error_after": float(res.final_error.abs().mean()),
        "rel_output_error_before": _rel(before, dense_norm),
        "rel_output_error_after": _rel(after, dense_norm),
        "heldout_rel_error_before": h_before,
        "heldout_rel_error_after": h_after,
        "rows_output_error_lower": float((after < before).float().mean()),
        "swaps": int(res.swaps.sum()),
        "flips": int(res.flips),
        "rows_changed": int((flips > 0).sum()),
        "max_swaps_in_a_row": int(res.swaps.max()) if res.swaps.numel() else 0,
        "iterations": int(res.trace.grown.shape[0]),
        "sparsity_before": float(mask0.float().mean()),
        "sparsity_after": float(res.mask.float().mean()),
        "row_sparsity_preserved": bool((mask0.sum(1) == res.mask.sum(1)).all()),
        "seconds": seconds,
        **{f"stop_{k}": v for k, v in res.stop_counts.items()},
    }
    _LAYER_CACHE[key] = run
    while len(_LAYER_CACHE) > _LAYER_CACHE_SIZE:
        _LAYER_CACHE.popitem(last=False)
    return run


def summary_frame(runs: dict) -> "object":
    """``{label: LayerRun}`` -> a DataFrame of their summaries, one row per label."""
    import pandas as pd

    return pd.DataFrame({label: run.summary for label, run in runs.items()}).T


def explain_row(layer: Layer, run: LayerRun, row: int, steps: int = 8):
    """The first ``steps`` iterations of DSnoT on ``row``, one line per iteration (a DataFrame).

    Columns: the row's error before the step, the grown column and why (its contribution
    ``W E[A]``, ``Var(A)`` and the Eq. 2 score ``W E[A] / Var^pow``), the pruned column and why
    (its contribution and Wanda score ``|W| ||A||``), whether the swap happened and the error after.
    """
    import pandas as pd

    trace = run.trace
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
        lines.append(
            {
                "iteration": t,
                "E[Delta_r] before": float(trace.error[t, row]),
                "grown column": g,
                "grown W*E[A]": g_contrib,
                "grown Var(A)": float(var[g]),
                "grown Eq.2 score": g_contrib / float(var[g]) ** cfg.pow_of_var_regrowing if float(var[g]) else float("inf"),
                "pruned column": p,
                "pruned W*E[A]": float(w[p] * mean[p]),
                "pruned Wanda score": float(wanda[p]),
                "swapped": bool(trace.swapped[t, row]),
                "E[Delta_r] after": float(trace.error[t + 1, row]),
            }
        )
    return pd.DataFrame(lines)


def rows_by_initial_error(run: LayerRun, k: int = 4) -> list[int]:
    """The ``k`` rows with the largest initial ``|E[Delta_r]|`` (the most interesting to plot)."""
    k = min(k, run.result.initial_error.numel())
    return [int(i) for i in torch.topk(run.result.initial_error.abs(), k).indices]


SUMMARY_METRICS = (
    "rel_output_error_after",
    "heldout_rel_error_after",
    "mean_abs_error_after",
    "flips",
    "swaps",
)


def criterion_grid(
    layer: Layer,
    metric: str = "rel_output_error_after",
    grows: tuple[str, ...] = GROW_CRITERIA,
    prunes: tuple[str, ...] = PRUNE_CRITERIA,
    params: LayerParams | None = None,
    **overrides,
):
    """Paper Table 7 on one layer: ``metric`` for every (prune, grow) criterion pair.

    Returns a DataFrame indexed by the prune criterion with one column per grow criterion.
    """
    import pandas as pd

    base = dataclasses.replace(params or LayerParams(), **overrides)
    table = {g: {p: run_layer(layer, base, grow=g, prune=p).summary[metric] for p in prunes} for g in grows}
    frame = pd.DataFrame(table).loc[list(prunes), list(grows)]
    frame.index.name, frame.columns.name = "prune criterion", "grow criterion"
    return frame


SWEEPABLE = {
    "sparsity": "sparsity",
    "T": "T",
    "eps": "eps",
    "pow_of_var": "pow_of_var",
    "sign_check": "sign_check",
    "preset": "preset",
    "method": "method",
    "nm": "nm",
}


def sweep(layer: Layer, param: str, values, params: LayerParams | None = None, **overrides):
    """``run_layer`` for every value of ``param`` (one of ``SWEEPABLE``); one row per value."""
    import pandas as pd

    if param not in SWEEPABLE:
        raise ValueError(f"cannot sweep {param!r}; choose one of {sorted(SWEEPABLE)}")
    base = dataclasses.replace(params or LayerParams(), **overrides)
    rows = []
    for value in values:
        run = run_layer(layer, base, **{SWEEPABLE[param]: value})
        rows.append({param: value if param != "nm" else (f"{value[0]}:{value[1]}" if value else "unstructured"), **run.summary})
    return pd.DataFrame(rows)


def calibration_sweep(nsamples_list, params: LayerParams | None = None, **layer_kwargs):
    """DSnoT on the same real layer calibrated with each number of windows (held-out error too)."""
    import pandas as pd

    rows = []
    for n in nsamples_list:
        layer = bundled_layer(nsamples=int(n), **layer_kwargs)
        rows.append({"nsamples": int(n), **run_layer(layer, params).summary})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# A whole model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabConfig:
    """Calibration, evaluation and scope shared by every run of a ``ModelLab``."""

    model: str = BUNDLED
    nsamples: int = 4
    seqlen: int = 128
    seed: int = 0
    max_windows: int | None = 2
    blocks: int | None = None  # prune only the first k decoder blocks (None: all)
    device: str = "cpu"
    dtype: str | None = None  # None: fp32 on CPU, fp16 on CUDA
    batch_size: int = 8
    eval_batch_size: int = 4
    data_dir: str | None = None


class _FirstBlocks:
    """A ``LoadedModel`` look-alike whose ``blocks`` are only the first ``k`` decoder blocks."""

    def __init__(self, loaded, k: int):
        self._loaded, self._k = loaded, k
        self.model, self.tokenizer, self.name = loaded.model, loaded.tokenizer, loaded.name
        self.source, self.blocks_path = loaded.source, loaded.blocks_path

    @property
    def blocks(self):
        return torch.nn.ModuleList(list(self._loaded.blocks)[: self._k])


# LabConfig fields that change speed, not results: left out of the cache key, so changing them
# reuses the stored runs (evaluation batches agree to ~1e-7 relative perplexity).
_SPEED_ONLY_FIELDS = ("eval_batch_size",)


def spec_key(cfg: LabConfig, spec) -> str:
    """A short stable hash of a lab configuration and a ``PruneSpec`` (the cache file name)."""
    lab = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SPEED_ONLY_FIELDS}
    payload = {"lab": lab, "spec": _spec_dict(spec)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _spec_dict(spec) -> dict:
    d = {"method": spec.method, "sparsity": spec.target_sparsity, "nm": list(spec.nm) if spec.nm else None, "dsnot": spec.dsnot}
    if spec.dsnot:
        d["preset"] = spec.preset
        d["config"] = dataclasses.asdict(spec.config())
    return d


class ModelLab:
    """Prune a model many ways with one calibration set; every run cached (memory and disk).

    ``cache_dir``: one JSON per configuration (``<hash>.json``) is written there and a row is
    appended to ``cache_dir/results.csv`` (the pipeline's results-table format). A later
    ``ModelLab`` with the same ``cache_dir`` returns those runs without recomputing, so a sweep
    interrupted half-way resumes where it stopped.
    """

    def __init__(self, cfg: LabConfig | None = None, cache_dir: str | Path | None = None, progress: bool = True):
        self.cfg = cfg or LabConfig()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self._memory: dict[str, dict] = {}
        self.computed = 0  # runs really computed by this object (not served from a cache)

    # -- shared, loaded once --------------------------------------------------------------
    @property
    def loaded(self):
        return load_dense(self.cfg.model, self.cfg.device, self.cfg.dtype)[0]

    @property
    def total_blocks(self) -> int:
        return len(self.loaded.blocks)

    @property
    def pruned_blocks(self) -> int:
        return self.total_blocks if self.cfg.blocks is None else min(self.cfg.blocks, self.total_blocks)

    @property
    def label(self) -> str:
        """The model name in results: says when only the first blocks are pruned."""
        if self.pruned_blocks == self.total_blocks:
            return self.cfg.model
        return f"{self.cfg.model} [first {self.pruned_blocks}/{self.total_blocks} blocks pruned]"

    def _test_ids(self) -> torch.Tensor:
        return _test_ids(self.cfg.model, self.cfg.data_dir, self.cfg.device, self.cfg.dtype)

    # -- runs -------------------------------------------------------------------------------
    def run(
        self,
        method: str = "wanda",
        sparsity: float = 0.6,
        nm: tuple[int, int] | None = None,
        dsnot: bool = False,
        preset: str = "official",
        config: DSnoTConfig | None = None,
    ) -> dict:
        """One pruning configuration on this lab's calibration; the result dict (cached)."""
        from dsnot_lite.pipeline import PruneSpec

        spec = PruneSpec(method, 0.0 if method == "dense" else (nm[0] / nm[1] if nm else sparsity), nm, dsnot, preset, config)
        key = spec_key(self.cfg, spec)
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            result = json.loads(path.read_text(encoding="utf-8"))
            self._memory[key] = result
            return result
        result = self._compute(spec)
        result["cache_key"] = key
        if path is not None:
            from dsnot_lite.results import append_table, write_json

            result["output"] = str(path)
            write_json(result, path)
            append_table(result, self.cache_dir / "results.csv")
        self._memory[key] = result
        return result

    def dense(self) -> dict:
        return self.run("dense")

    def _compute(self, spec) -> dict:
        from dsnot_lite.evaluation import perplexity
        from dsnot_lite.experiment import outcome_fields, peak_memory_mb
        from dsnot_lite.pipeline import PhaseTimer, prune_model

        cfg = self.cfg
        loaded, snapshot = load_dense(cfg.model, cfg.device, cfg.dtype)
        restore_dense(loaded, snapshot)
        timer = PhaseTimer()
        start = time.perf_counter()
        records = []
        if spec.method != "dense":
            calib = calibration_ids(cfg.model, cfg.nsamples, cfg.seqlen, cfg.seed, cfg.data_dir, cfg.device, cfg.dtype)
            view = loaded if self.pruned_blocks == self.total_blocks else _FirstBlocks(loaded, self.pruned_blocks)
            records = prune_model(
                view, calib, spec, device=cfg.device, batch_size=cfg.batch_size, timer=timer, progress=self.progress
            )
        with timer.phase("eval"):
            ppl = perplexity(
                loaded.model, self._test_ids(), cfg.seqlen, cfg.max_windows, cfg.eval_batch_size, cfg.device,
                progress=self.progress,
            )
        restore_dense(loaded, snapshot)
        timer.seconds["total"] = time.perf_counter() - start
        self.computed += 1
        return {
            "model": self.label,
            **outcome_fields(spec, ppl, records),
            "seqlen": cfg.seqlen,
            "max_windows": cfg.max_windows,
            "nsamples": cfg.nsamples if records else None,
            "calib_seqlen": cfg.seqlen if records else None,
            "seed": cfg.seed,
            "device": cfg.device,
            "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
            "pruned_blocks": self.pruned_blocks if records else 0,
            "total_blocks": self.total_blocks,
            "seconds": dict(timer.seconds),
            "peak_memory_mb": peak_memory_mb(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def runs(self, configs, progress: bool | None = None) -> list[dict]:
        """``run(**c)`` for every dict ``c`` in ``configs`` (a tqdm bar over the configurations)."""
        from tqdm.auto import tqdm

        show = self.progress if progress is None else progress
        return [self.run(**c) for c in tqdm(list(configs), desc="configurations", disable=not show)]


LAB_SWEEPABLE = ("sparsity", "preset", "nm", "method")


def lab_sweep(lab: ModelLab, param: str, values, method: str = "wanda", sparsity: float = 0.6, preset: str = "official"):
    """Initial method vs + DSnoT for each value of ``param`` on a ``ModelLab`` (cached, resumable).

    One row per value: ``ppl_initial``, ``ppl_dsnot``, ``delta_ppl`` (DSnoT minus initial, negative
    = DSnoT helped), flips and the runs' achieved sparsity.
    """
    import pandas as pd

    if param not in LAB_SWEEPABLE:
        raise ValueError(f"cannot sweep {param!r} on a model; choose one of {LAB_SWEEPABLE}")
    rows = []
    for value in values:
        kw = {"method": method, "sparsity": sparsity, "preset": preset, "nm": None}
        kw[param] = tuple(value) if param == "nm" and value is not None else value
        initial = lab.run(kw["method"], kw["sparsity"], kw["nm"])
        refined = lab.run(kw["method"], kw["sparsity"], kw["nm"], dsnot=True, preset=kw["preset"])
        shown = (f"{value[0]}:{value[1]}" if value else "unstructured") if param == "nm" else value
        rows.append(
            {
                param: shown,
                "ppl_initial": initial["ppl"],
                "ppl_dsnot": refined["ppl"],
                "delta_ppl": refined["ppl"] - initial["ppl"],
                "flips": refined["total_flips"],
                "sparsity_initial": initial["achieved_sparsity"],
                "sparsity_dsnot": refined["achieved_sparsity"],
            }
        )
    return pd.DataFrame(rows)


@_cached(maxsize=2)
def _test_ids(model: str, data_dir: str | None, device: str = "cpu", dtype: str | None = None) -> torch.Tensor:
    from dsnot_lite import data
    from dsnot_lite.evaluation import tokenize_test_text

    loaded, _ = load_dense(model, device, dtype)
    return tokenize_test_text(loaded.tokenizer, data.wikitext_rows("test", data_dir))


def run_label(result: dict) -> str:
    """``"wanda + DSnoT (official)"`` style label of a result dict."""
    if result["method"] == "dense":
        return "dense"
    label = result["method"]
    if result.get("dsnot"):
        label += f" + DSnoT ({result.get('preset')})"
    return label


def results_frame(results: list[dict]):
    """One row per run: label, perplexity, sparsity, flips, seconds (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "run": run_label(r),
                "sparsity": r["sparsity"] if not r.get("nm") else r["nm"],
                "ppl": r["ppl"],
                "achieved sparsity (pruned blocks)": r["achieved_sparsity"],
                "flips": r.get("total_flips", 0),
                "swaps": r.get("total_swaps", 0),
                "seconds": r["seconds"]["total"],
            }
            for r in results
        ]
    )


def layer_frame(result: dict):
    """A run's per-linear-layer records as a DataFrame with ``block`` and ``type`` columns."""
    import pandas as pd

    rows = []
    for rec in result.get("layers", []):
        parts = rec["name"].split(".")
        idx = next(i for i, p in enumerate(parts) if p.isdigit())
        rows.append(
            {
                "block": int(parts[idx]),
                "type": ".".join(parts[idx + 1 :]),
                "name": rec["name"],
                "dsnot_applied": rec["dsnot_applied"],
                "rel_error_before": rec["rel_output_error_before"],
                "rel_error_after": rec["rel_output_error_after"],
                "flips": rec["flips"],
                "swaps": rec["swaps"],
                "sparsity": rec["sparsity"],
                "fraction_flipped": rec["flips"] / (rec["shape"][0] * rec["shape"][1]),
                **{f"stop_{k}": v for k, v in rec.get("stop_reasons", {}).items()},
            }
        )
    frame = pd.DataFrame(rows)
    if len(frame):
        for col in ("rel_error_before", "rel_error_after"):  # None when the run kept no Hessian
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
        frame["rel_change_%"] = 100 * (frame["rel_error_after"] / frame["rel_error_before"] - 1)
    return frame


def gain_by_type(result: dict):
    """Per layer type: mean relative output error before/after DSnoT and mean change in %."""
    frame = layer_frame(result)
    if frame.empty:
        return frame
    return (
        frame.groupby("type")[["rel_error_before", "rel_error_after", "rel_change_%", "flips"]]
        .mean()
        .sort_values("rel_change_%")
    )


__all__ = [
    "BUNDLED",
    "GROW_CRITERIA",
    "PRUNE_CRITERIA",
    "STOP_REASONS",
    "LabConfig",
    "Layer",
    "LayerParams",
    "LayerRun",
    "ModelLab",
    "bundled_layer",
    "cache_info",
    "calibration_sweep",
    "clear_cache",
    "criterion_grid",
    "explain_row",
    "gain_by_type",
    "lab_sweep",
    "layer_frame",
    "load_dense",
    "results_frame",
    "rows_by_initial_error",
    "run_label",
    "run_layer",
    "summary_frame",
    "sweep",
    "synthetic_layer",
]
