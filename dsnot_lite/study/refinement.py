"""The study "when does mask refinement help?": one resumable command, ``python -m dsnot_lite study``.

Every run is a ``RunSpec`` stored in a ``RunCache`` folder (``studies/refinement-<model>/``), so
an interrupted study resumes where it stopped and the report is rebuilt from the stored runs.
Stages, in the order they run (``--list`` prints every run of each):

* ``tune``: Wanda 60%, seed 0, WikiText-2 *validation* (first 64 windows): DSnoT variants (both
  presets, epsilon on the token-mean scale, T scaled to the layer width, a variance floor in
  Eq. 2) next to Wanda and the exact refiner (T = 50, 25, 10: quality against cost); the best
  DSnoT variant is "DSnoT, tuned".
* ``headline``: Wanda 60% on the full test set, calibration seeds 0, 1, 2: Wanda, + DSnoT
  (official), + DSnoT (tuned), + exact, full SparseGPT, and the dense model.
* ``grid``: 50/60/70/80% and 2:4, from magnitude, Wanda and SparseGPT (mask only): DSnoT
  ``official`` and tuned (and ``paper`` at 60%), the exact refiner, full SparseGPT for reference;
  seed 0, first 32 test windows.
* ``criteria``: Wanda 60% + DSnoT (official) with every grow x prune pair of Eq. 2, Eq. 3 and
  Wanda's score (paper Table 7).
* ``floor``: the numerical floor: Wanda and SparseGPT at 60% with the reference numerics (eager
  attention, one calibration window per forward) against our defaults.
* ``zeroshot``: dense, Wanda 60%, + DSnoT (official), + exact on the offline zero-shot smoke task
  ``wikitext2_lastword`` (first 300 documents; lm-evaluation-harness).
* ``refit``: beyond the mask: full SparseGPT against Wanda + re-fit, Wanda + exact + re-fit and
  SparseGPT's mask + exact + re-fit (``--refit``: least-squares kept weights, ``core.refit``) at
  50/60/70/80% and 2:4 with three calibration seeds, first 64 test windows; 60% and 70% also on the
  full test set (``design.REFIT_*``; Gemma 3 270M: 60%, 70%, 2:4, seed 0).

All stages calibrate on 16 C4 windows of 512 tokens and record per-layer errors (mean/variance
split). The report (``study.refinement_report``) turns the stored runs into ``README.md``,
``results.csv`` and figures in the same folder.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

from dsnot_lite.core.dsnot import preset
from dsnot_lite.runs import workspace
from dsnot_lite.runs.cache import RunCache
from dsnot_lite.runs.spec import RunSpec
from dsnot_lite.study import refinement_report
from dsnot_lite.study.design import (
    GRID_ORDER,
    GRID_VARIANTS,
    GRID_WINDOWS,
    HEADLINE_SEEDS,
    HEADLINE_WINDOWS,
    METHODS,
    PLANNED,
    REFIT_FULL_TEST,
    REFIT_LEVELS,
    REFIT_PIPELINES,
    REFIT_RUN_ORDER,
    REFIT_SEEDS,
    REFIT_WINDOWS,
    SEEDS,
    STAGES,
    TUNE_WINDOWS,
    TUNED,
    TUNED_ON,
    VARIANTS,
    ZERO_SHOT_DOCS,
    ZERO_SHOT_TASKS,
    base_spec,
    level_changes,
    variant,
)  # fmt: skip


class Study:
    """The study's runs for one model, stored in ``folder``."""

    def __init__(self, model: str = "smollm2-135m", folder: str | Path | None = None, data_dir: str | None = None,
                 progress: bool = True):  # fmt: skip
        self.model = model
        self.folder = Path(folder) if folder else workspace.study_dir(model)
        self.base = base_spec(model, data_dir)
        self.cache = RunCache(self.folder / "runs", progress=progress)

    # -- the runs of each stage ---------------------------------------------------------------
    def tune_specs(self) -> dict[str, RunSpec]:
        tune = self.base.replace(method="wanda", sparsity=0.6, eval_split="validation", max_windows=TUNE_WINDOWS)
        return {name: variant(tune, name) for name in ("none", *TUNED, "exact", "exact-T25", "exact-T10")}

    def tuned_variant(self, prefix: str = "") -> str | None:
        """The DSnoT variant (name starting with ``prefix``) with the lowest validation perplexity,
        or None while the tune stage is incomplete. A model whose own tune stage has no run uses
        the variant tuned on ``TUNED_ON`` (stated in its report)."""
        specs = self.tune_specs()
        scores = {name: self.cache.get(specs[name]) for name in TUNED if name.startswith(prefix)}
        if all(r is None for r in scores.values()) and self.model != TUNED_ON:
            return Study(TUNED_ON, self.folder.parent / f"refinement-{TUNED_ON}").tuned_variant(prefix)
        if any(r is None for r in scores.values()):
            return None
        return min(scores, key=lambda name: scores[name]["ppl"])

    def headline_specs(self) -> dict[str, RunSpec]:
        windows = HEADLINE_WINDOWS.get(self.model)
        head = self.base.replace(method="wanda", sparsity=0.6, max_windows=windows)
        specs = {"dense": self.base.replace(method="dense", max_windows=windows)}
        tuned = self.tuned_variant()
        for seed in HEADLINE_SEEDS.get(self.model, SEEDS):
            runs = {"wanda": variant(head, "none", seed=seed), "wanda + DSnoT (official)": variant(head, "official", seed=seed),
                    "wanda + exact": variant(head, "exact", seed=seed),
                    "sparsegpt": head.replace(method="sparsegpt", seed=seed)}  # fmt: skip
            if tuned is not None:
                runs["wanda + DSnoT (tuned)"] = variant(head, tuned, seed=seed)
            specs.update({f"{label} | seed {seed}": spec for label, spec in runs.items()})
        return specs

    def grid_specs(self) -> dict[str, RunSpec]:
        grid = self.base.replace(max_windows=GRID_WINDOWS)
        tuned = self.tuned_variant() or "official-T-width"
        specs = {"dense": grid.replace(method="dense")}
        for level in GRID_ORDER:
            where = {"nm": (2, 4)} if level == "2:4" else {"sparsity": level}
            specs[f"sparsegpt (full) | {level}"] = grid.replace(method="sparsegpt", **where)
            for method in METHODS:
                start = grid.replace(method=method, weight_update=method != "sparsegpt", **where)
                extra = (("paper",) if level == 0.6 else ()) + (("per-row start",) if method == "magnitude" else ())
                for name in GRID_VARIANTS + extra:
                    name = tuned if name == "tuned" else name
                    refined = variant(start, name, weight_update=True) if VARIANTS[name][0] else start
                    specs[f"{method} + {name} | {level}"] = refined
        specs["wanda + dsnot+exact | 0.6"] = variant(grid.replace(method="wanda", sparsity=0.6), "dsnot+exact")
        return specs

    def criteria_specs(self) -> dict[str, RunSpec]:
        grid = self.base.replace(method="wanda", sparsity=0.6, max_windows=GRID_WINDOWS, refiner="dsnot")
        crit = ("eq2", "eq3", "wanda")  # the criteria of the paper's Table 7
        return {f"grow {g} / prune {p}": grid.replace(dsnot=dataclasses.replace(preset("official"), grow=g, prune=p))
                if (g, p) != ("eq2", "eq3") else grid for g in crit for p in crit}  # fmt: skip

    def floor_specs(self) -> dict[str, RunSpec]:
        grid = self.base.replace(sparsity=0.6, max_windows=GRID_WINDOWS)
        return {f"{method} | {numerics}": grid.replace(method=method, **changes)
                for method in ("dense", "wanda", "sparsegpt")
                for numerics, changes in (("sdpa, 8 windows per forward", {}),
                                          ("eager, 1 window per forward", {"attn": "eager", "batch_size": 1, "eval_batch_size": 1}))}  # fmt: skip

    def zeroshot_specs(self) -> dict[str, RunSpec]:
        """Dense, Wanda 60% and both refiners scored on the offline zero-shot smoke task too."""
        base = self.base.replace(max_windows=GRID_WINDOWS, tasks=ZERO_SHOT_TASKS, tasks_limit=ZERO_SHOT_DOCS)
        head = base.replace(method="wanda", sparsity=0.6)
        return {"dense": base.replace(method="dense"), "wanda": head, "wanda + DSnoT (official)": variant(head, "official"),
                "wanda + exact": variant(head, "exact")}  # fmt: skip

    def refit_specs(self) -> dict[str, RunSpec]:
        """``"<pipeline> | <level> | seed <s>"`` on the first 64 test windows, seed by seed (for each,
        the first two of ``REFIT_RUN_ORDER`` at every level of ``REFIT_LEVELS``, then the others),
        then ``"... | full test set"`` for ``REFIT_FULL_TEST``, where those first two run for every
        seed before the others (a full-test run takes four to five times as long); and dense."""
        specs: dict[str, RunSpec] = {}
        seeds = REFIT_SEEDS.get(self.model, SEEDS)
        groups = (REFIT_RUN_ORDER[:2], REFIT_RUN_ORDER[2:])
        for windows, levels, suffix in ((REFIT_WINDOWS, REFIT_LEVELS.get(self.model, ()), ""),
                                        (None, REFIT_FULL_TEST.get(self.model, ()), " | full test set")):  # fmt: skip
            # 64 windows: seed 0 first, within a seed each level's goal-check pair, then the rest;
            # full test set: the goal-check pair at every seed first, then the rest
            order = [(seed, g) for seed in seeds for g in groups] if windows else [(seed, g) for g in groups for seed in seeds]
            for seed, pipelines in order:
                for level in levels:
                    for label in pipelines:
                        changes = REFIT_PIPELINES[label]
                        spec = self.base.replace(max_windows=windows, seed=seed, **level_changes(level), **changes)
                        specs[f"{label} | {level} | seed {seed}{suffix}"] = spec
            if levels:
                specs[f"dense{suffix}"] = self.base.replace(method="dense", max_windows=windows)
        return specs

    def specs(self, stage: str) -> dict[str, RunSpec]:
        if stage not in STAGES:
            raise ValueError(f"unknown study stage {stage!r}; fix: choose among {STAGES}")
        return getattr(self, f"{stage}_specs")()

    # -- running ------------------------------------------------------------------------------
    def run(self, stages=STAGES) -> Iterator[tuple[str, str, dict | None]]:
        """Compute every missing run of ``stages`` in order; yields (stage, label, result or None
        when another worker holds it)."""
        for stage in stages:
            for label, spec in self.specs(stage).items():
                yield stage, label, self.cache.run(spec)

    def results(self, stage: str) -> dict[str, dict]:
        """The stored runs of a stage (missing ones left out)."""
        found = {label: self.cache.get(spec) for label, spec in self.specs(stage).items()}
        return {label: r for label, r in found.items() if r is not None}


def main(args) -> int:
    """``python -m dsnot_lite study [STAGE ...] [--list] [--report-only]``: runs the named stages (default:
    the model's planned ones); the report always covers every planned stage."""
    planned = PLANNED.get(args.model, STAGES)
    stages = tuple(args.stage) or planned
    study = Study(args.model, args.out, args.data_dir, progress=not args.no_progress)
    for stage in stages:
        study.specs(stage)  # unknown stage names fail here, before any work
    if args.list:
        for stage in stages:
            for label, spec in study.specs(stage).items():
                done = "done" if study.cache.get(spec) else "todo"
                print(f"{stage:9s} {done}  {label:45s} {spec.name()}")
        return 0
    if not args.report_only:
        for stage, label, result in study.run(stages):
            ppl = f"ppl {result['ppl']:.3f}" if result else "held by another worker"
            print(f"[{stage}] {label}: {ppl}", file=sys.stderr, flush=True)
    for path in refinement_report.write_report(study, planned=tuple(dict.fromkeys(planned + stages))):
        print(path)
    return 0
