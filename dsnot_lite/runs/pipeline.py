"""Sequential block-by-block pruning of a causal LM, as SparseGPT, Wanda and DSnoT run it.

Block 0's inputs are captured once on the calibration windows. For every block in turn: forward
hooks gather ``ChannelStats`` of each linear layer's inputs (one pass, unpruned block), each
linear is pruned (and refined, if asked), the pruned weights are written, and the block is run
again so its *pruned* outputs become the next block's inputs. Only one block's activations are
held at a time; with ``device="cuda"`` the model stays on the CPU and blocks travel one by one.

What each method does on one layer (spec R7, R8):

* ``magnitude`` without a refiner: one threshold per layer (the reference baseline); with one:
  a per-row magnitude mask, then the refiner.
* ``wanda``: per-row Wanda mask, then the refiner if asked.
* ``sparsegpt`` without a refiner: full OBS SparseGPT with weight update, or only its saliency
  mask (``weight_update=False``); with a refiner: the saliency mask from a really accumulated
  Hessian, no weight update (the reference, with R8 repaired), then the refiner.
* N:M: every mask keeps N zeros per block of M; the refiners' swaps stay inside a block.

Refiners: ``dsnot`` runs where its configuration ``applies_to`` the layer (``official``:
attention projections only, R6); ``exact`` runs on every layer; ``dsnot+exact`` runs both in
that order. With ``refit``, after the pruner and the refiners, the kept weights of the final mask
are re-fitted by least squares on the layer's calibration inputs (``core.refit``; from full
SparseGPT's updated weights when it ran), on every layer. With ``refit_target="dense"`` the re-fit
aims at the dense model's outputs instead: the dense model's hidden states are carried beside the
pruned ones (``calibration.dense_linear_inputs``: one dense forward per block, before it is pruned,
holding every linear group's inputs), and the block's groups (q/k/v, o, gate/up, down) are pruned
in call order, each re-fitted on its inputs with the groups before it already pruned
(``calibration.group_targets``, true-sequential). Fitted against inputs from unpruned upstream
layers, o_proj and down_proj would compensate the same drift their upstream layers already do:
on SmolLM2-135M at 2:4 that one-pass version (commit 1b23e40) raised the calibration error after
block 6 (0.32 against 0.28 for the layer target) and the perplexity to 1336 (114 with the layer
target).
The masks still come from the one-pass statistics, as in every other run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from dsnot_lite.core.dsnot import dsnot
from dsnot_lite.core.errors import error_parts
from dsnot_lite.core.exact import exact_refine
from dsnot_lite.core.pruners import initial_mask, sparsegpt_prune
from dsnot_lite.core.refit import Target, refit
from dsnot_lite.core.stats import ChannelStats
from dsnot_lite.lm.calibration import (
    capture_block_inputs,
    collect_stats,
    dense_linear_inputs,
    group_targets,
    move_outside_blocks,
    run_block,
)
from dsnot_lite.lm.models import LoadedModel, find_linears
from dsnot_lite.runs.spec import RunSpec


@dataclass
class LayerRecord:
    """What pruning did to one linear layer."""

    name: str
    shape: tuple[int, int]
    sparsity: float  # fraction of zero weights after pruning
    refined_by: list[str] = field(default_factory=list)  # refiners that ran on this layer, in order
    swaps: int = 0  # swaps made by all refiners
    flips: int = 0  # mask entries that differ from the initial mask
    stop_reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # refiner -> reason -> rows
    # With record_errors: ||dW X||_F / ||W X||_F on the calibration tokens, and the share of the
    # squared error that is its mean part (core.errors.error_parts), for the initial pruner and
    # the final weights.
    error_initial: float | None = None
    error_before_refit: float | None = None  # with refit: the final mask's error before the re-fit
    error_final: float | None = None
    mean_share_initial: float | None = None
    mean_share_final: float | None = None
    seconds: float = 0.0  # initial pruner (and error records)
    refine_seconds: float = 0.0
    refit_seconds: float = 0.0
    refit_iterations: int = 0  # conjugate-gradient iterations of the re-fit (core.refit)

    def to_dict(self) -> dict:
        return asdict(self)


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def prune_layer(
    layer: nn.Linear,
    name: str,
    stats: ChannelStats,
    spec: RunSpec,
    target: Target | None = None,
    target_gram: torch.Tensor | None = None,
) -> LayerRecord:
    """Prune (and refine) one linear layer in place and return its record. With the dense target
    (``spec.refit_target == "dense"``) the re-fit aims at ``target`` with ``target_gram``, the Gram
    matrix of its true-sequential inputs (``calibration.group_targets``)."""
    start = time.perf_counter()
    weight = layer.weight.data
    record = LayerRecord(name=name, shape=tuple(weight.shape), sparsity=0.0)
    new_w = None
    if spec.full_sparsegpt:
        new_w, mask = sparsegpt_prune(weight, stats.hessian, spec.sparsity, spec.nm)
    else:
        scope = "layer" if spec.method == "magnitude" and not spec.refiners and spec.nm is None else "row"
        mask = initial_mask(weight, stats, spec.method, spec.sparsity, spec.nm, scope=scope)
    if spec.record_errors:
        initial = error_parts(_removed(weight, new_w, mask), weight, stats.gram, stats.mean, stats.ntokens)
        record.error_initial, record.mean_share_initial = initial.relative, initial.mean_share
    refine_start = time.perf_counter()
    mask = _refine(weight, stats, mask, name, spec, record)
    record.refine_seconds = time.perf_counter() - refine_start
    if new_w is None:
        new_w = weight.masked_fill(mask, 0)
    if spec.refit:
        if spec.record_errors:
            before = error_parts(weight.float() - new_w.float(), weight, stats.gram, stats.mean, stats.ntokens)
            record.error_before_refit = before.relative
        refit_start = time.perf_counter()
        gram = stats.gram if target is None else target_gram
        fitted = refit(
            weight, gram, mask, start=new_w, target=target, percdamp=spec.refit_damping, tolerance=spec.refit_tolerance,
            precision=spec.refit_precision,
        )  # fmt: skip
        new_w, record.refit_iterations = fitted.weight, fitted.iterations
        record.refit_seconds = time.perf_counter() - refit_start
    if spec.record_errors:
        final = error_parts(weight.float() - new_w.float(), weight, stats.gram, stats.mean, stats.ntokens)
        record.error_final, record.mean_share_final = final.relative, final.mean_share
    layer.weight.data.copy_(new_w)
    record.sparsity = float((layer.weight.data == 0).float().mean())
    record.seconds = time.perf_counter() - start - record.refine_seconds - record.refit_seconds
    return record


def _removed(weight: torch.Tensor, new_w: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """The weight change of the initial pruner: the pruned weights, or W - W' after an OBS update."""
    if new_w is not None:
        return weight.float() - new_w.float()
    return torch.where(mask, weight.float(), torch.zeros((), device=weight.device))


def _refine(weight: torch.Tensor, stats: ChannelStats, mask: torch.Tensor, name: str, spec: RunSpec, record: LayerRecord):
    """Run the spec's refiners on one layer's mask, in order; returns the final mask."""
    start_mask = mask
    for refiner in spec.refiners:
        if refiner == "dsnot":
            cfg = spec.dsnot_config
            if not cfg.applies_to(name):
                continue
            result = dsnot(weight, stats, mask, cfg, spec.nm, initial_method=spec.method)
        else:
            result = exact_refine(weight, stats.gram, mask, spec.exact_config, spec.nm)
        mask = result.mask
        record.refined_by.append(refiner)
        record.swaps += int(result.swaps.sum())
        record.stop_reasons[refiner] = dict(result.stop_counts)
    record.flips = int((mask != start_mask).sum())
    return mask


def prune_model(
    loaded: LoadedModel,
    calibration_ids: torch.Tensor,
    spec: RunSpec,
    timer: PhaseTimer | None = None,
    progress: bool = True,
    teacher: Callable[[str, nn.Linear, torch.Tensor, ChannelStats], None] | None = None,
) -> list[LayerRecord]:
    """Prune the decoder blocks of ``loaded`` in order (the first ``spec.blocks`` only, when set);
    returns one record per linear layer. ``calibration_ids`` is (nsamples, seqlen).

    ``teacher(name, layer, dense_weight, stats)``, called after each layer is pruned, may write
    another pruned weight into the layer, which the next block's inputs then come from (teacher
    forcing: ``reference.teacher_forced`` feeds the authors' masks forward)."""
    timer = timer or PhaseTimer()
    if spec.method == "dense":
        return []
    model, all_blocks = loaded.model, loaded.blocks
    blocks = all_blocks if spec.blocks is None else all_blocks[: spec.blocks]
    storage = next(all_blocks.parameters()).device
    device = torch.device(spec.device)
    with timer.phase("capture"):
        inputs = capture_block_inputs(model, all_blocks, calibration_ids, spec.batch_size, device)
        move_outside_blocks(model, all_blocks, storage)
    dense_hidden = inputs.hidden if spec.refit_target == "dense" else None  # the dense model's stream
    records: list[LayerRecord] = []
    for index, block in enumerate(tqdm(blocks, desc="pruning blocks", disable=not progress)):
        block.to(device)
        linears = find_linears(block)
        with timer.phase("statistics"):
            stats = collect_stats(block, linears, inputs.for_block(index), hessian=spec.needs_gram)
        dense = None
        if dense_hidden is not None:
            with timer.phase("dense_forward"):
                dense = dense_linear_inputs(block, linears, inputs.with_hidden(dense_hidden).for_block(index))
                dense_hidden = dense.outputs.hidden
        groups = dense.groups if dense else [list(linears)]
        with torch.no_grad():
            for group in groups:
                target = gram = None
                if dense:  # true-sequential: this group's inputs with the groups before it pruned
                    with timer.phase("dense_forward"):
                        target, gram = group_targets(block, linears[group[0]], inputs.for_block(index), dense.inputs[group[0]])
                for name in group:
                    layer, full_name = linears[name], f"{loaded.blocks_path}.{index}.{name}"
                    dense_w = layer.weight.data.clone() if teacher else None
                    record = prune_layer(layer, full_name, stats[name], spec, target, gram)
                    if teacher:
                        teacher(full_name, layer, dense_w, stats[name])
                    timer.seconds["prune"] += record.seconds
                    timer.seconds["refine"] += record.refine_seconds
                    timer.seconds["refit"] += record.refit_seconds
                    records.append(record)
        del stats, dense
        if index + 1 < len(blocks):
            with timer.phase("block_forward"):
                inputs = inputs.with_hidden(run_block(block, inputs.for_block(index)).hidden)
        block.to(storage)
    return records
