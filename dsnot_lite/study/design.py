"""The design of the refinement study: its stages, seeds, windows and refiner variants.

Kept apart from ``refinement`` (which runs the study) and ``refinement_report`` (which writes its
report) so that both read one definition and neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses

from dsnot_lite.core.dsnot import preset
from dsnot_lite.core.exact import ExactConfig
from dsnot_lite.runs.spec import RunSpec

SEEDS = (0, 1, 2)
TUNE_WINDOWS, GRID_WINDOWS = 64, 32
# Test windows and calibration seeds of the headline per model (None: the full test set). Gemma 3
# 270M's 262k-word head makes a window about 5x as costly as SmolLM2's on this CPU: its headline
# uses the first 64 windows and, for now, seed 0 (seeds 1 and 2 are the next runs to add).
HEADLINE_WINDOWS = {"smollm2-135m": None, "gemma3-270m": 64}
HEADLINE_SEEDS = {"smollm2-135m": SEEDS, "gemma3-270m": (0,)}
PLANNED = {"gemma3-270m": ("headline", "refit")}  # a model's stages (default: all of STAGES)
TUNED_ON = "smollm2-135m"  # models without their own tune stage use the setting tuned on this one
GRID_ORDER = (0.6, "2:4", 0.7, 0.5, 0.8)  # the grid is computed in this order: the levels the story needs first
METHODS = ("magnitude", "wanda", "sparsegpt")
TOKEN_EPS = 0.1 / 512  # the official epsilon on the token-mean scale (R1: E[A] is seqlen x the token mean)

# name -> (refiner, preset, DSnoT overrides); "official"/"paper" are the presets as they are.
VARIANTS: dict[str, tuple[str | None, str, dict]] = {
    "none": (None, "official", {}),
    "official": ("dsnot", "official", {}),
    "paper": ("dsnot", "paper", {}),
    "paper-token-eps": ("dsnot", "paper", {"eps": TOKEN_EPS}),
    "official-T-width": ("dsnot", "official", {"T_width": 4096}),
    "official-var-floor-0.1": ("dsnot", "official", {"var_floor": 0.1}),
    "official-var-floor-1": ("dsnot", "official", {"var_floor": 1.0}),
    "paper-token-eps-var-floor-1": ("dsnot", "paper", {"eps": TOKEN_EPS, "var_floor": 1.0}),
    "paper-token-eps-T-width": ("dsnot", "paper", {"eps": TOKEN_EPS, "T_width": 4096}),
    "exact": ("exact", "official", {}),
    "exact-T10": ("exact", "official", {"T": 10}),  # fewer swaps, a fifth of the cost: what does it give up?
    "exact-T25": ("exact", "official", {"T": 25}),
    "dsnot+exact": ("dsnot+exact", "official", {}),
    # DSnoT with no iteration: the per-row start mask every refiner starts from. Plain magnitude
    # pruning uses one threshold per layer (the reference baseline), so it needs this as its control.
    "per-row start": ("dsnot", "official", {"T": 0}),
}
TUNED = [k for k, v in VARIANTS.items() if v[0] == "dsnot" and k != "per-row start"]  # candidates for "DSnoT, tuned"
# The grid's refiners: DSnoT official and the setting tuned on validation, the exact refiner, and
# the paper preset at 60% (the epsilon and variance-floor variants are compared at 60% in the tune
# stage; at 60% the paper preset changes Wanda by about 1%, so it is not repeated at every level).
GRID_VARIANTS = ("none", "official", "tuned", "exact")
STAGES = ("tune", "headline", "grid", "criteria", "floor", "zeroshot", "refit")
ZERO_SHOT_TASKS, ZERO_SHOT_DOCS = ("wikitext2_lastword",), 300
# The refit stage: no-training pipelines of this library (a mask, then the least-squares re-fit of its
# kept weights) against full SparseGPT, by level and calibration seed, computed in this order (seed 0
# at every level first, the levels the goal needs first), on the first REFIT_WINDOWS test windows; some levels
# also on the full test set, after all of those.
REFIT_PIPELINES: dict[str, dict] = {
    "sparsegpt (full)": {"method": "sparsegpt"},
    "wanda + refit": {"method": "wanda", "refit": True},
    "wanda + exact + refit": {"method": "wanda", "refiner": "exact", "refit": True},
    "sparsegpt mask + exact + refit": {"method": "sparsegpt", "refiner": "exact", "refit": True},
    # full SparseGPT, then the re-fit from its updated weights on its own mask (added after the other
    # three were stored: at 2:4 on Gemma 3 270M every pipeline that changes SparseGPT's mask lost)
    "sparsegpt + refit": {"method": "sparsegpt", "refit": True},
    # the same with ten times the damping (bench/refit_heldout.py: 0.01 over-fits Gemma's down_proj), and
    # with the dense model's outputs as the target too (true-sequential; bench/refit_targets.py)
    "sparsegpt + refit (damping 0.1)": {"method": "sparsegpt", "refit": True, "refit_damping": 0.1},
    "sparsegpt + refit (dense target, damping 0.1)": {
        "method": "sparsegpt",
        "refit": True,
        "refit_target": "dense",
        "refit_damping": 0.1,
    },
}
# The reference, then the pipeline that was best where first measured (60%): these two run at every
# level before the others (each level's goal check comes soonest); the report keeps REFIT_PIPELINES' order.
REFIT_RUN_ORDER = ("sparsegpt (full)", "wanda + exact + refit", "sparsegpt mask + exact + refit", "wanda + refit",
                   "sparsegpt + refit", "sparsegpt + refit (damping 0.1)", "sparsegpt + refit (dense target, damping 0.1)")  # fmt: skip
REFIT_WINDOWS = 64
REFIT_LEVELS = {"smollm2-135m": (0.6, 0.7, "2:4", 0.5, 0.8), "gemma3-270m": (0.6, 0.7, "2:4")}
REFIT_SEEDS = {"smollm2-135m": SEEDS, "gemma3-270m": (0,)}
REFIT_FULL_TEST = {"smollm2-135m": (0.6, 0.7)}  # levels also scored on the whole test set


def base_spec(model: str, data_dir: str | None = None) -> RunSpec:
    return RunSpec(model=model, nsamples=16, seqlen=512, record_errors=True, data_dir=data_dir)


def level_changes(level: float | str) -> dict:
    """``0.6`` -> ``{"sparsity": 0.6}``, ``"2:4"`` -> ``{"nm": (2, 4)}``: a level of the grid or the refit stage."""
    return {"nm": (2, 4)} if level == "2:4" else {"sparsity": level}


def variant(base: RunSpec, name: str, **changes) -> RunSpec:
    """``base`` refined by the named variant (``VARIANTS``; the exact refiner's overrides set its config)."""
    refiner, preset_name, overrides = VARIANTS[name]
    if refiner == "exact":
        return base.replace(refiner=refiner, exact=ExactConfig(**overrides), **changes)
    dsnot = dataclasses.replace(preset(preset_name), **overrides) if overrides else None
    return base.replace(refiner=refiner, preset=preset_name, dsnot=dsnot, **changes)
