"""Sequential block-by-block pruning of a causal LM, as SparseGPT, Wanda and DSnoT run it.

Block 0's inputs are captured once on the calibration windows. For every block in turn: forward
hooks gather ``ChannelStats`` of each linear layer's inputs (one pass, unpruned block), each
linear is pruned (and optionally refined by DSnoT), the pruned weights are written, and the block
is run again so its *pruned* outputs become the next block's inputs. Only one block's activations
are held at a time; with ``device="cuda"`` the model stays on the CPU and blocks travel one by one.

What each method does on one layer (spec R7, R8):

* ``magnitude`` without DSnoT: one threshold per layer (the reference baseline);
  with DSnoT: per-row magnitude mask, then DSnoT.
* ``wanda``: per-row Wanda mask, then DSnoT if asked.
* ``sparsegpt`` without DSnoT: full OBS SparseGPT with weight update (``sparsegpt_prune``),
  or, with ``weight_update=False``, only the saliency mask (the baseline DSnoT starts from);
  with DSnoT: SparseGPT saliency mask with a really accumulated Hessian, no weight update,
  then DSnoT (what the reference code does, with R8 repaired).
* N:M: every method's mask keeps N zeros per M-block; DSnoT's swaps stay inside a block.

DSnoT runs on a layer only where ``DSnoTConfig.applies_to`` says so (``official``: attention
projections only, R6; ``paper``: every linear layer).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from dsnot_lite.calibration import BlockInputs, capture_block_inputs, collect_stats, move_outside_blocks, run_block
from dsnot_lite.dsnot import DSnoTConfig, dsnot, preset, row_output_error
from dsnot_lite.models import LoadedModel, find_linears
from dsnot_lite.pruners import initial_mask, sparsegpt_prune
from dsnot_lite.stats import ChannelStats

METHODS = ("dense", "magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class PruneSpec:
    """What to do to every linear layer of every block."""

    method: str
    sparsity: float = 0.0
    nm: tuple[int, int] | None = None
    dsnot: bool = False
    preset: str = "official"
    dsnot_config: DSnoTConfig | None = None  # overrides the preset when given
    weight_update: bool = True  # SparseGPT without DSnoT: OBS weight update (True) or saliency mask only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; fix: use one of {METHODS}")
        if self.method == "dense" and self.dsnot:
            raise ValueError("DSnoT refines a pruned mask; fix: pick a pruning method other than dense")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}; fix: e.g. 0.6 for 60% zeros")
        if not self.weight_update and (self.method != "sparsegpt" or self.dsnot):
            raise ValueError(
                "weight_update=False only applies to SparseGPT without DSnoT (DSnoT never updates weights); "
                "fix: drop it or use --method sparsegpt without --dsnot"
            )
        if self.nm is not None and not (0 < self.nm[0] < self.nm[1]):
            raise ValueError(f"N:M needs 0 < N < M, got {self.nm[0]}:{self.nm[1]}; fix: e.g. 2:4")

    @property
    def target_sparsity(self) -> float:
        return self.nm[0] / self.nm[1] if self.nm else self.sparsity

    def config(self) -> DSnoTConfig:
        return self.dsnot_config or preset(self.preset)


@dataclass
class LayerRecord:
    """What pruning did to one linear layer."""

    name: str
    shape: tuple[int, int]
    sparsity: float  # fraction of zero weights after pruning
    dsnot_applied: bool = False
    swaps: int = 0
    flips: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict)
    # ||dW X||_F / ||W X||_F on the calibration inputs (from the layer's Hessian); None when the
    # Hessian was not accumulated (no DSnoT and not SparseGPT, unless record_errors=True).
    rel_output_error_before: float | None = None  # initial pruner (before DSnoT)
    rel_output_error_after: float | None = None  # final weights
    seconds: float = 0.0  # initial pruner and error metrics
    dsnot_seconds: float = 0.0

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


def _output_norm(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """``||weight X||_F`` with ``X^T X`` proportional to ``hessian`` (from the per-row errors)."""
    return row_output_error(weight, torch.ones_like(weight, dtype=torch.bool), hessian).square().sum().sqrt()


def prune_layer(layer: nn.Linear, name: str, stats: ChannelStats, spec: PruneSpec) -> LayerRecord:
    """Prune one linear layer in place and return its record."""
    start = time.perf_counter()
    weight = layer.weight.data
    w = weight.float()
    nm = spec.nm
    cfg = spec.config()
    use_dsnot = spec.dsnot and cfg.applies_to(name)
    sparsity = spec.target_sparsity
    new_w = None
    if spec.method == "sparsegpt" and not spec.dsnot and spec.weight_update:
        new_w, mask = sparsegpt_prune(weight, stats.hessian, sparsity, nm)
    else:
        scope = "layer" if spec.method == "magnitude" and not spec.dsnot and nm is None else "row"
        mask = initial_mask(weight, stats, spec.method, sparsity, nm, scope=scope)
    record = LayerRecord(name=name, shape=tuple(weight.shape), sparsity=0.0, dsnot_applied=use_dsnot)
    hessian = stats.hessian
    if hessian is not None:  # relative output error ||dW X||_F / ||W X||_F
        dense_norm = float(_output_norm(w, hessian)) or 1.0
        before = w - new_w.float() if new_w is not None else torch.where(mask, w, torch.zeros_like(w))
        record.rel_output_error_before = float(_output_norm(before, hessian)) / dense_norm
    if use_dsnot:
        dsnot_start = time.perf_counter()
        res = dsnot(weight, stats, mask, cfg, nm, initial_method=spec.method)
        record.dsnot_seconds = time.perf_counter() - dsnot_start
        mask = res.mask
        record.swaps = int(res.swaps.sum())
        record.flips = res.flips
        record.stop_reasons = dict(res.stop_counts)
    if new_w is None:
        new_w = weight.masked_fill(mask, 0)
    if hessian is not None:
        record.rel_output_error_after = float(_output_norm(w - new_w.float(), hessian)) / dense_norm
    layer.weight.data.copy_(new_w)
    record.sparsity = float((layer.weight.data == 0).float().mean())
    record.seconds = time.perf_counter() - start - record.dsnot_seconds
    return record


def prune_model(
    loaded: LoadedModel,
    calibration_ids: torch.Tensor,
    spec: PruneSpec,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    record_errors: bool | None = None,
    timer: PhaseTimer | None = None,
    progress: bool = True,
) -> list[LayerRecord]:
    """Prune every decoder block of ``loaded`` in order; returns one record per linear layer.

    ``calibration_ids`` is (nsamples, seqlen). ``record_errors`` accumulates each layer's
    Hessian so reconstruction errors before/after DSnoT can be reported; by default only when
    DSnoT runs (SparseGPT needs the Hessian regardless, so its errors come for free). The
    Hessian roughly doubles the cost of the statistics pass.
    """
    timer = timer or PhaseTimer()
    if spec.method == "dense":
        return []
    model, blocks = loaded.model, loaded.blocks
    storage = next(blocks.parameters()).device
    hessian = (spec.dsnot if record_errors is None else record_errors) or spec.method == "sparsegpt"
    with timer.phase("capture"):
        inputs: BlockInputs = capture_block_inputs(model, blocks, calibration_ids, batch_size, device)
        move_outside_blocks(model, blocks, storage)
    records: list[LayerRecord] = []
    for index, block in enumerate(tqdm(blocks, desc="pruning blocks", disable=not progress)):
        block.to(device)
        linears = find_linears(block)
        with timer.phase("statistics"):
            stats = collect_stats(block, linears, inputs, hessian=hessian)
        with torch.no_grad():
            for name, layer in linears.items():
                record = prune_layer(layer, f"{loaded.blocks_path}.{index}.{name}", stats[name], spec)
                timer.seconds["prune"] += record.seconds
                timer.seconds["dsnot"] += record.dsnot_seconds
                records.append(record)
        del stats
        with timer.phase("block_forward"):
            inputs = run_block(block, inputs)
        block.to(storage)
    return records
