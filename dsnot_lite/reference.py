"""Conformance with the authors' code: the stable API that tests and outside checks use.

The files in ``../shared/reference/official-dsnot/`` each hold one layer, its statistics and the
masks the reference code returns (see that folder's README). ``masks_for_case`` recomputes both
masks from the weight, the statistics and the parameters alone; it never reads the expected masks.

``../shared/reference/official-e2e/`` holds the zero patterns of a whole model pruned by the
authors' own pipeline (``load_e2e``). ``teacher_forced`` runs our pipeline on the same model and
checks it layer by layer: our mask, from our statistics, against theirs, every difference judged
by ``core.near_ties`` (a float near-tie, or a real difference), then their mask is adopted so
the next block sees the inputs their pipeline saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open

from .core.dsnot import dsnot, preset
from .core.near_ties import RowVerdict, Tolerance, explain_rows
from .core.pruners import initial_mask, initial_score, mask_from_score
from .core.stats import ChannelStats
from .runs.spec import RunSpec

STAT_KEYS = ("sum_metric_row", "scaler_row", "var", "mean")
# The reference code's argument names -> ours (DSnoTConfig fields) and their types; the only place
# the reference names appear (R5's ``without_same_sign`` is inverted into ``sign_check``).
REFERENCE_NAMES = {
    "max_cycle_time": ("T", int),
    "update_threshold": ("eps", float),
    "pow_of_var_regrowing": ("var_power", float),
}


def load_case(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and ``params`` metadata of one reference file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference file at {path}; the files live in ../shared/reference/official-dsnot/")
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        metadata = f.metadata() or {}
    if "params" not in metadata:
        raise ValueError(f"{path} has no 'params' metadata; it is not a reference case file")
    return tensors, json.loads(metadata["params"])


def statistics_for_case(calibration_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """R1 statistics of (nsamples, seqlen, C_in) inputs, fed one sample per batch as the reference."""
    if calibration_inputs.dim() != 3:
        raise ValueError(f"calibration_inputs must be (nsamples, seqlen, C_in), got {tuple(calibration_inputs.shape)}")
    stats = ChannelStats(calibration_inputs.shape[-1])
    stats.add_batch(calibration_inputs)
    return {key: stats.as_dict()[key] for key in STAT_KEYS}


def dsnot_inputs(tensors: dict[str, torch.Tensor], params: dict):
    """What the reference's DSnoT routine works on, rebuilt from a case's weight, statistics (and
    ``hessian`` for ``initial_method=sparsegpt``) and ``params``: ``(weight, stats, initial mask,
    DSnoT's start mask, config, nm, initial method)``. The ``official`` preset's values, which are
    the reference's defaults (R5, R10), apply where ``params`` is silent."""
    stats = ChannelStats.from_tensors({k: v for k, v in tensors.items() if k in (*STAT_KEYS, "hessian")})
    weight = tensors["weight"]
    method = params["initial_method"]
    n, m = int(params.get("prune_n", 0)), int(params.get("prune_m", 0))
    nm = (n, m) if n else None
    config = replace(
        preset("official"),
        **{ours: kind(params[theirs]) for theirs, (ours, kind) in REFERENCE_NAMES.items() if theirs in params},
        sign_check=not params.get("without_same_sign", True),
    )
    start = initial_mask(weight, stats, method, float(params["sparsity_ratio"]), nm)
    # the reference's N:M DSnoT branch re-derives its start with a block sort (ties differ from topk)
    dsnot_start = mask_from_score(initial_score(weight, stats, method), 0.0, nm, nm_ties="sort") if nm else start
    return weight, stats, start, dsnot_start, config, nm, method


def masks_for_case(tensors: dict[str, torch.Tensor], params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial pruned mask, final pruned mask), bool, True = pruned, as the reference code returns."""
    weight, stats, start, dsnot_start, config, nm, method = dsnot_inputs(tensors, params)
    return start, dsnot(weight, stats, dsnot_start, config, nm, initial_method=method).mask


def load_e2e(path: str | Path) -> dict[str, torch.Tensor]:
    """Layer name -> (C_out, C_in) bool zero pattern (True = zero) of one file of
    ``../shared/reference/official-e2e/`` (packed with ``numpy.packbits(weight == 0, axis=1)``)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no end-to-end reference file at {path}; the files live in ../shared/reference/official-e2e/")
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads((f.metadata() or {})["shapes"])
        return {k: torch.from_numpy(np.unpackbits(f.get_tensor(k).numpy(), axis=1, count=shapes[k][1]).astype(bool))
                for k in f.keys()}  # fmt: skip  # noqa: SIM118 (safe_open is not iterable)


def zero_patterns(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """``weight == 0`` of the named linear layers of ``model`` (on the CPU)."""
    return {name: (model.get_submodule(name).weight.detach() == 0).cpu() for name in names}


def e2e_differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Layers whose zero pattern differs from the reference's, with the number of differing entries."""
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise ValueError(f"layers {missing[:3]} are not in the reference; fix: compare a model of the same architecture")
    return {name: int((ours[name] != theirs[name]).sum()) for name in ours if not torch.equal(ours[name], theirs[name])}


@dataclass
class LayerConformance:
    """One linear layer of a teacher-forced run: how many mask entries differ from the reference,
    and the verdict on every differing row (``core.near_ties``)."""

    name: str
    differing: int
    verdicts: list[RowVerdict] = field(default_factory=list)

    @property
    def unexplained(self) -> list[RowVerdict]:
        return [v for v in self.verdicts if not v.explained]

    @property
    def near_ties(self) -> int:
        """Differing entries that near-ties explain."""
        return sum(v.entries for v in self.verdicts if v.explained)


def teacher_forced(reference: dict[str, torch.Tensor], spec: RunSpec, *, session=None, tolerance: Tolerance | None = None,
                   limit: int | None = 20, progress: bool = False) -> list[LayerConformance]:  # fmt: skip
    """Prune with ``spec`` block by block through the pipeline (``runs.pipeline.prune_model``); at
    every linear layer compare our zero pattern with ``reference[name]`` (``load_e2e``), judge each
    differing row (``explain_rows``; ``limit`` unexplained rows per layer are searched), then write
    the dense weight under the reference's zero pattern into the layer, so the next block's
    statistics come from the inputs the reference pipeline saw. Wanda, with DSnoT or not."""
    from .lm import data
    from .runs.pipeline import PhaseTimer, prune_model
    from .runs.runner import ModelSession

    if spec.method != "wanda" or spec.nm is not None or spec.refiner not in (None, "dsnot"):
        raise ValueError("teacher forcing judges unstructured Wanda masks, with or without DSnoT; fix: use such a spec")
    session = session or ModelSession()
    timer = PhaseTimer()
    loaded = session.model_for(spec, timer)
    calibration = session.calibration(spec, data.resolve_data_dir(spec.data_dir))
    layers: list[LayerConformance] = []

    def teach(name: str, layer: torch.nn.Linear, dense: torch.Tensor, stats: ChannelStats) -> None:
        if name not in reference:
            raise ValueError(f"layer {name} is not in the reference; fix: compare a model of the same architecture")
        ours, theirs = (layer.weight.data == 0).cpu(), reference[name].cpu()
        if ours.shape != theirs.shape:
            raise ValueError(f"layer {name} is {tuple(ours.shape)} here, {tuple(theirs.shape)} in the reference")
        verdicts = []
        if not torch.equal(ours, theirs):
            weight = dense.float().cpu()
            start = initial_mask(weight, stats, spec.method, spec.sparsity)
            config = spec.dsnot_config if spec.dsnot_config and spec.dsnot_config.applies_to(name) else None
            verdicts = explain_rows(weight, stats, start, ours, theirs, config, tolerance or Tolerance(), limit)
        layers.append(LayerConformance(name, int((ours != theirs).sum()), verdicts))
        layer.weight.data = dense.masked_fill(theirs.to(dense.device), 0)

    prune_model(loaded, calibration, spec, timer=timer, progress=progress, teacher=teach)
    return layers
