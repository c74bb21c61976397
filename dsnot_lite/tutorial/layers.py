"""Layers to study, with their calibration inputs: synthetic or taken from a real model.

* ``synthetic_layer``: a random layer whose inputs have planted outlier channels, the setting in
  which DSnoT's expected error ``E[Delta_r]`` is far from zero;
* ``bundled_layer``: a real linear layer of a model (the bundled SmolLM2-135M by default), its
  inputs collected on C4 calibration windows through the dense blocks before it, plus held-out
  WikiText-2 validation windows for an honest error.

Everything is cached by its parameters (a widget click that repeats a setting does not
recompute); the cached objects are shared, so treat their tensors as read-only.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch

from dsnot_lite.core.errors import gram_matrix
from dsnot_lite.core.stats import ChannelStats

BUNDLED = "smollm2-135m"


def _cached(maxsize: int):
    """``functools.lru_cache`` keyed on the *bound* arguments, so ``f()`` and ``f(default)`` share an entry."""

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
    inputs: torch.Tensor | None = None  # the calibration tokens (samples, tokens, C_in), kept by synthetic layers

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
    channel_mean: float = 0.1,
) -> Layer:
    """A random layer whose inputs have ``n_outliers`` channels with a large, systematic mean.

    LLM activations have a few input channels whose values are large and mostly of one sign
    (Dettmers et al. 2022); those make ``E[A]`` far from zero, which is exactly where the
    expected error ``E[Delta_r]`` of a pruned row comes from. Weights ~ N(0, 1/C_in); ordinary
    channels ~ N(mu_k, 1) with means mu_k ~ N(0, channel_mean^2) (small by default; with
    ``channel_mean`` near 1 or above, the mean part of a pruned row's error is a large share of it,
    the setting DSnoT's expected error is made for); outlier channels
    ~ outlier_scale * (s_k + 0.3 N(0, 1)) with a fixed sign s_k. ``samples`` x ``tokens``
    calibration inputs and the same amount of held-out inputs are drawn with ``seed``.
    """
    if not (c_out > 0 and c_in > 0 and samples > 0 and tokens > 1 and 0 <= n_outliers <= c_in):
        raise ValueError("synthetic_layer needs positive sizes, tokens > 1 and 0 <= n_outliers <= c_in")
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, generator=gen) / math.sqrt(c_in)
    outliers = torch.randperm(c_in, generator=gen)[:n_outliers].sort().values
    base_mean = channel_mean * torch.randn(c_in, generator=gen)
    signs = torch.where(torch.rand(n_outliers, generator=gen) < 0.5, -1.0, 1.0)

    def draw() -> torch.Tensor:
        x = torch.randn(samples, tokens, c_in, generator=gen) + base_mean
        x[..., outliers] = outlier_scale * (signs + 0.3 * torch.randn(samples, tokens, n_outliers, generator=gen))
        return x

    calib, heldout = draw(), draw()
    key = f"synthetic(c_out={c_out},c_in={c_in},samples={samples},tokens={tokens},outliers={n_outliers},scale={outlier_scale},seed={seed},mean={channel_mean})"
    return Layer(
        key=key,
        name="synthetic",
        weight=weight,
        stats=_stats_of(calib),
        gram=gram_matrix(calib),
        heldout_gram=gram_matrix(heldout),
        outlier_channels=tuple(int(c) for c in outliers),
        inputs=calib,
        description=(
            f"synthetic {c_out}x{c_in} layer, {samples} samples x {tokens} tokens, "
            f"{n_outliers} outlier channels (scale {outlier_scale}), channel means ~ N(0, {channel_mean:g}²), seed {seed}"
        ),
    )


@_cached(maxsize=2)
def load_dense(model: str = BUNDLED, device: str = "cpu", dtype: str | None = None):
    """``(LoadedModel, dense block weights)`` loaded once per process (``lm.models.load_model``)."""
    from dsnot_lite.lm.models import load_model

    torch_dtype = getattr(torch, dtype) if dtype else None
    loaded = load_model(model, device=device, dtype=torch_dtype)
    snapshot = {k: v.detach().clone() for k, v in loaded.blocks.state_dict().items()}
    return loaded, snapshot


def restore_dense(loaded, snapshot: dict) -> None:
    """Put the dense block weights back (after a pruning run changed them)."""
    loaded.blocks.load_state_dict(snapshot)


@_cached(maxsize=8)
def calibration_ids(
    model: str,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    data_dir: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> torch.Tensor:
    """Wanda-style C4 calibration windows (``data.calibration_windows``), cached."""
    from dsnot_lite.lm import data

    loaded, _ = load_dense(model, device, dtype)
    return data.calibration_windows(loaded.tokenizer, data.c4_documents(data_dir), nsamples, seqlen, seed, progress=False)


@_cached(maxsize=4)
def heldout_ids(model: str, windows: int, seqlen: int, data_dir: str | None = None) -> torch.Tensor:
    """The first ``windows`` non-overlapping ``seqlen``-token windows of WikiText-2 validation text."""
    from dsnot_lite.lm import data
    from dsnot_lite.lm.evaluation import tokenize_test_text

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
    from dsnot_lite.lm.calibration import capture_block_inputs, collect_stats, run_block
    from dsnot_lite.lm.models import find_linears

    loaded, snapshot = load_dense(model)
    restore_dense(loaded, snapshot)
    if not 0 <= block < len(loaded.blocks):
        raise ValueError(f"block {block} out of range; {model} has {len(loaded.blocks)} blocks")
    linears = find_linears(loaded.blocks[block])
    if linear not in linears:
        raise ValueError(f"block {block} has no linear {linear!r}; choose one of {sorted(linears)}")
    ids = calibration_ids(model, nsamples, seqlen, seed, data_dir)

    def inputs_of(rows: torch.Tensor):
        captured = capture_block_inputs(loaded.model, loaded.blocks, rows, batch_size=8)
        for i in range(block):
            captured = captured.with_hidden(run_block(loaded.blocks[i], captured.for_block(i)).hidden)
        seen: list[torch.Tensor] = []
        handle = linears[linear].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().float().clone()))
        try:
            run_block(loaded.blocks[block], captured.for_block(block))
        finally:
            handle.remove()
        return captured.for_block(block), torch.cat(seen)

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
