"""Capture what every decoder block receives, run blocks on it, and collect per-layer statistics.

The hidden states entering block 0 are caught on the calibration windows, together with the
keyword arguments the model passes to *each* block (attention mask, ``position_ids``,
``position_embeddings``, ...). Those can differ from block to block: Gemma 3 alternates
sliding-window and full-attention layers with different masks and rotary tables. During the
capture every block is stood in for by a recorder that keeps its arguments and returns its input
unchanged, so the model's own code builds each block's arguments and no block computes anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from dsnot_lite.core.refit import Target
from dsnot_lite.core.stats import ChannelStats


class _StopForward(Exception):
    """Raised once the last block's arguments are recorded."""


@dataclass
class BlockInputs:
    """What one block sees: hidden states per batch, with that batch's keyword arguments."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    @property
    def nsamples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)


@dataclass
class CapturedInputs:
    """Hidden states entering the current block, and every block's keyword arguments per batch."""

    hidden: list[torch.Tensor]
    block_kwargs: list[list[dict]]  # [block][batch]

    def for_block(self, index: int) -> BlockInputs:
        return BlockInputs(self.hidden, self.block_kwargs[index])

    def with_hidden(self, hidden: list[torch.Tensor]) -> CapturedInputs:
        return CapturedInputs(hidden, self.block_kwargs)


class _Recorder(nn.Module):
    """Stands in for a block during capture: records its arguments, returns its input unchanged."""

    def __init__(self, block: nn.Module, index: int, last: bool, sink: CapturedInputs, output: dict):
        super().__init__()
        self.block, self.index, self.last, self.sink, self.output = block, index, last, sink, output

    def __getattr__(self, name: str):  # model code may read block attributes (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.block, name)

    def forward(self, *args, **kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kept = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values", "cache", "use_cache")}
        if self.index == 0:
            self.sink.hidden.append(hidden)
            if "tuple" not in self.output:  # once: does this model's block return a tuple or a tensor?
                self.output["tuple"] = isinstance(self.block(hidden, **kept), (tuple, list))
        self.sink.block_kwargs[self.index].append(kept)
        if self.last:
            raise _StopForward
        return (hidden,) if self.output["tuple"] else hidden


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: str | torch.device) -> None:
    """Move every parameter and buffer of ``model`` except those of ``blocks`` to ``device``.

    Embeddings, rotary tables, final norm and head go to the accelerator while the decoder blocks
    stay where they are (blocks then travel one at a time).
    """
    block_params = {id(t) for t in blocks.parameters()} | {id(t) for t in blocks.buffers()}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None and id(tensor) not in block_params and tensor.device != torch.device(device):
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = tensor.data.to(device)
                    else:
                        store[key] = tensor.to(device)


def capture_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    input_ids: torch.Tensor,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> CapturedInputs:
    """Run the model on ``input_ids`` (N, L) in batches; record block 0's hidden states and the
    keyword arguments of every block."""
    captured = CapturedInputs(hidden=[], block_kwargs=[[] for _ in blocks])
    move_outside_blocks(model, blocks, device)
    originals, output = list(blocks), {}
    for i, block in enumerate(originals):
        blocks[i] = _Recorder(block, i, i == len(originals) - 1, captured, output)
    try:
        with torch.inference_mode():
            for start in range(0, input_ids.shape[0], batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
    return captured


def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs for every batch of ``inputs`` (kwargs carried over)."""
    out = BlockInputs(kwargs=inputs.kwargs)
    with torch.inference_mode():
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
            result = block(hidden, **kwargs)
            out.hidden.append(result[0] if isinstance(result, (tuple, list)) else result)
    return out


def collect_stats(
    block: nn.Module,
    linears: dict[str, nn.Linear],
    inputs: BlockInputs,
    hessian: bool = False,
) -> dict[str, ChannelStats]:
    """Per-linear ``ChannelStats`` of the inputs each linear sees when ``block`` runs on ``inputs``.

    A forward hook on every linear feeds ``ChannelStats.add_batch(inp[0])`` (R1 statistics; the
    Gram matrix too when ``hessian`` is set). All linears see the block's unpruned weights, as in
    Wanda and DSnoT, which gather a block's statistics in one pass before pruning it. Linears that
    receive the very same input tensor (q/k/v, gate/up) share one ``ChannelStats``, which is
    exactly what separate accumulation would give, at a fraction of the cost.
    """
    owner: dict[str, str] = {}  # linear -> the linear whose statistics it shares
    # First batch only: input identity -> (first linear fed with it, the input). Holding the input
    # keeps its memory from being reused by a later tensor, so equal addresses mean equal inputs.
    first_seen: dict[tuple, tuple[str, torch.Tensor]] = {}
    stats: dict[str, ChannelStats] = {}

    def hook(name: str, layer: nn.Linear):
        def feed(_module, inp, _out):
            x = inp[0]
            if name not in owner:  # decided on the first batch
                key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
                owner[name] = first_seen.setdefault(key, (name, x))[0]
                if owner[name] == name:
                    stats[name] = ChannelStats(layer.in_features, hessian=hessian, device=layer.weight.device)
            if owner[name] == name:
                stats[name].add_batch(x)

        return feed

    handles = [layer.register_forward_hook(hook(name, layer)) for name, layer in linears.items()]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
        first_seen.clear()
    _check_all_ran(linears, owner)
    return {name: stats[owner[name]] for name in linears}


def _check_all_ran(linears: dict[str, nn.Linear], seen: dict[str, str]) -> None:
    """Every linear's hook fired (``seen`` maps each one that did to its group's leader)."""
    missing = [name for name in linears if name not in seen]
    if missing:
        raise ValueError(f"linear layers {missing} never ran in the block's forward; their inputs cannot be measured")


@dataclass
class DenseInputs:
    """What the linears of one block see in the dense model: ``groups`` of linears fed the same
    input tensor (q/k/v, o, gate/up, down), in the order the block calls them, each group's
    inputs per batch, and the block's dense outputs (the next block's dense stream)."""

    groups: list[list[str]]
    inputs: dict[str, list[torch.Tensor]]  # group leader -> its input, per batch
    outputs: BlockInputs


def dense_linear_inputs(block: nn.Module, linears: dict[str, nn.Linear], dense_inputs: BlockInputs) -> DenseInputs:
    """Run the (still dense) ``block`` on the dense stream and hold every linear group's inputs."""
    groups: list[list[str]] = []
    held: dict[str, list[torch.Tensor]] = {}
    leader_of: dict[str, str] = {}
    batch: dict[str, torch.Tensor] = {}  # this batch: leader -> input tensor

    def hold(name: str):
        def hook(_module, inp, _out):
            x = inp[0]
            if name not in leader_of:  # decided on the first batch, in call order
                twin = next((lead for lead, t in batch.items() if t is x), None)
                leader_of[name] = twin or name
                if twin is None:
                    groups.append([name])
                else:
                    next(g for g in groups if g[0] == twin).append(name)
            if leader_of[name] == name:
                batch[name] = x
                held.setdefault(name, []).append(x)

        return hook

    handles = [layer.register_forward_hook(hold(name)) for name, layer in linears.items()]
    try:
        outputs = BlockInputs(kwargs=dense_inputs.kwargs)
        for hidden, kwargs in zip(dense_inputs.hidden, dense_inputs.kwargs):
            batch.clear()
            outputs.hidden += run_block(block, BlockInputs([hidden], [kwargs])).hidden
    finally:
        for h in handles:
            h.remove()
    _check_all_ran(linears, leader_of)
    return DenseInputs(groups, held, outputs)


def group_targets(
    block: nn.Module, layer: nn.Linear, inputs: BlockInputs, dense_x: list[torch.Tensor]
) -> tuple[Target, torch.Tensor]:
    """For the linear group fed like ``layer``: ``Target`` (``X^T X_d``, ``X_d^T X_d``) and the Gram
    matrix ``X^T X`` of what it sees when ``block`` runs on ``inputs`` *as it is now*, with the
    groups called before it already pruned (true-sequential: a dense target fitted against
    inputs from unpruned upstream layers would make both compensate the same drift). The forward
    of each batch stops right after ``layer``."""
    d = layer.in_features
    cross, dense_gram, gram = (torch.zeros(d, d, device=layer.weight.device) for _ in range(3))
    index = [0]

    def pair(_module, inp, _out):
        x = inp[0].reshape(-1, d).float()
        xd = dense_x[index[0]].reshape(-1, d).float()
        cross.addmm_(x.T, xd)
        dense_gram.addmm_(xd.T, xd)
        gram.addmm_(x.T, x)
        raise _StopForward

    handle = layer.register_forward_hook(pair)
    try:
        for index[0], (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs)):
            with contextlib.suppress(_StopForward):
                run_block(block, BlockInputs([hidden], [kwargs]))
    finally:
        handle.remove()
    return Target(cross=cross, gram=dense_gram), gram
