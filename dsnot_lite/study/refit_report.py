"""The refit stage in the study's report: no-training pipelines against full SparseGPT.

Reads the stage's stored runs (labels ``"<pipeline> | <level> | seed <s>[ | full test set]"``, see
``Study.refit_specs``) and writes a table per window set (every seed's perplexity, the paired change
against full SparseGPT with its 95% interval, pruning seconds, the re-fit's seconds, peak memory),
the goal check (does a pipeline beat full SparseGPT at a level, every seed agreeing?), a figure of
perplexity by level, and "where the error goes": per layer type, each layer's output error with its
final mask before the re-fit and after it, next to full SparseGPT's.
"""

from __future__ import annotations

import math
import statistics

from dsnot_lite.plots.style import PALETTE, log_axis, new_figure
from dsnot_lite.study.design import REFIT_PIPELINES, REFIT_WINDOWS
from dsnot_lite.study.intervals import paired_difference

REFERENCE = "sparsegpt (full)"
NO_TRAINING = tuple(p for p in REFIT_PIPELINES if p != REFERENCE)
PRUNING_PHASES = ("capture", "statistics", "dense_forward", "prune", "refine", "refit", "block_forward")
FULL = "full test set"
ORDER = ("0.5", "0.6", "0.7", "0.8", "2:4")


def organise(results: dict[str, dict]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """``{(window set, level, pipeline): {seed: run}}``; window set ``"64"`` or ``"full test set"``."""
    out: dict[tuple[str, str, str], dict[int, dict]] = {}
    for label, run in results.items():
        parts = label.split(" | ")
        if parts[0] == "dense":
            continue
        window_set = FULL if parts[-1] == FULL else str(REFIT_WINDOWS)
        out.setdefault((window_set, parts[1], parts[0]), {})[int(parts[2].split()[-1])] = run
    return out


def _level_name(level: str) -> str:
    return level if ":" in level else f"{float(level):.0%}"


def _versus(reference: dict[int, dict], runs: dict[int, dict]):
    """Paired change of ``runs`` against ``reference`` over their common seeds, and those seeds."""
    seeds = sorted(reference.keys() & runs.keys())
    if not seeds:
        return None, seeds
    return paired_difference([reference[s] for s in seeds], [runs[s] for s in seeds]), seeds


def _median(runs: dict[int, dict], value) -> float:
    return statistics.median(value(r) for r in runs.values())


def refit_section(results: dict[str, dict], seeds: tuple[int, ...]) -> list[str]:
    """The stage's Markdown: goal check, then one table per window set."""
    if not results:
        return []
    groups = organise(results)
    lines = ["## Beyond the mask: re-fitted weights against full SparseGPT (stage `refit`)", "",
             "Full SparseGPT (OBS weight update) against no-training pipelines of this library that end "
             "with `--refit`, the least-squares kept weights on the final mask (`core/refit.py`, SparseGPT's "
             "damping unless stated): Wanda's mask, Wanda's mask refined by the exact refiner, SparseGPT's own mask "
             "(no weight update) refined by the exact refiner, and full SparseGPT's mask and updated weights "
             "(the re-fit starts from them), the last also with ten times the damping, and with ten times the "
             "damping aiming at the dense model's outputs (`--refit-target dense`: each layer group re-fitted, "
             "true-sequential, on the inputs the pruned model feeds it, toward what the dense model computes on "
             "its own inputs). Pipelines added later may still miss runs. "
             "Perplexity per calibration seed; *vs full SparseGPT*: the paired change with its 95% interval over windows and each seed's own change "
             "(negative: the pipeline is better); *pruning s*: capture + statistics + dense forward (dense target "
             "only) + prune + refine + refit + block forward, *refit s*: the re-fit alone, both the median over seeds (one thread, a shared "
             "2-core machine: compare within a run's row, not across rows finished hours apart); *peak MB*: "
             "the run's peak resident memory (median over seeds).", ""]  # fmt: skip
    lines += _goal(groups, seeds)
    lines += _objective_check(groups)
    for window_set in (str(REFIT_WINDOWS), FULL):
        levels = [lv for lv in ORDER if any((window_set, lv, p) in groups for p in REFIT_PIPELINES)]
        if not levels:
            continue
        shown = f"the first {REFIT_WINDOWS} test windows" if window_set != FULL else "the full test set"
        dense = results.get("dense" if window_set != FULL else f"dense | {FULL}")
        lines += [f"### On {shown}" + (f" (dense {dense['ppl']:.2f})" if dense else ""), "",
                  "| level | run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs full SparseGPT, 95% interval "
                  "(seeds) | pruning s | refit s | peak MB |", "|---|---|" + "---|" * (len(seeds) + 5)]  # fmt: skip
        for level in levels:
            reference = groups.get((window_set, level, REFERENCE), {})
            for pipeline in REFIT_PIPELINES:
                runs = groups.get((window_set, level, pipeline), {})
                if not runs:
                    continue
                cells = [_ppl(runs[s]["ppl"]) if s in runs else "–" for s in seeds]
                diff, common = _versus(reference, runs) if pipeline != REFERENCE else (None, [])
                change = diff.text(common) if diff else ""
                pruning = _median(runs, lambda r: sum(r["seconds"].get(p, 0.0) for p in PRUNING_PHASES))
                refit = _median(runs, lambda r: r["seconds"].get("refit", 0.0))
                memory = _median(runs, lambda r: r.get("peak_memory_mb", math.nan))
                mean = statistics.fmean(r["ppl"] for r in runs.values())
                lines.append(f"| {_level_name(level)} | {pipeline} | " + " | ".join(cells) +
                             f" | {_ppl(mean)} | {change} | {pruning:.0f} | {refit:.0f} | {memory:.0f} |")  # fmt: skip
        lines.append("")
    return lines


def _ppl(v: float) -> str:
    return f"{v:.3g}" if v >= 1000 else f"{v:.2f}"


def _goal(groups, seeds: tuple[int, ...]) -> list[str]:
    """Per level: the best no-training pipeline against full SparseGPT, on the first 64 windows, then
    on the full test set where the study scores it."""
    lines = ["**Goal** (issue 21): a no-training pipeline of this library beats full SparseGPT at every level, every "
             "calibration seed agreeing (the paired interval below zero and every seed's change negative).", ""]  # fmt: skip
    lines += _verdicts(groups, seeds, str(REFIT_WINDOWS))
    full = _verdicts(groups, seeds, FULL)
    if full:
        lines += ["On the full test set:", "", *full]
    return lines


def _verdicts(groups, seeds: tuple[int, ...], window_set: str) -> list[str]:
    """One line per level with runs in ``window_set``: the verdict, the best pipeline (among those
    with the most seeds stored), its change."""
    lines = []
    for level in ORDER:
        reference = groups.get((window_set, level, REFERENCE), {})
        candidates = []
        for pipeline in NO_TRAINING:
            diff, common = _versus(reference, groups.get((window_set, level, pipeline), {}))
            if diff is not None:
                candidates.append((-len(common), diff.mean, pipeline, diff, common))  # most seeds, then lowest
        if not candidates:
            continue
        _, _, pipeline, diff, common = min(candidates)
        complete = len(common) == len(seeds)
        beats = diff.decided and diff.mean < 0
        verdict = (
            ("**yes**" if beats else "**no**") if complete else f"not decided yet ({len(common)} of {len(seeds)} seeds stored)"
        )
        lines.append(f"- {_level_name(level)}: {verdict}; best pipeline {pipeline}: {diff.text(common)} against full SparseGPT")
    return [*lines, ""] if lines else []


def mean_layer_error(run: dict) -> float | None:
    """Mean over the run's layers of the final relative output error on the calibration tokens."""
    errors = [rec.get("error_final") for rec in run.get("layers") or []]
    return statistics.fmean(errors) if errors and None not in errors else None


def _objective_check(groups) -> list[str]:
    """Seed 0, first 64 windows: does the layer-wise objective rank the pipelines as perplexity does?
    Per level, each pipeline's mean relative layer error (what the pruners, refiners and re-fit
    minimise, on the calibration tokens) next to its perplexity; then every pipeline whose order
    against full SparseGPT differs between the two."""
    window_set, rows, disagree = str(REFIT_WINDOWS), [], []
    for level in ORDER:
        runs = {p: groups.get((window_set, level, p), {}).get(0) for p in REFIT_PIPELINES}
        errors = {p: mean_layer_error(r) for p, r in runs.items() if r}
        measured = {p: (errors[p], runs[p]["ppl"]) for p in errors if errors[p] is not None}
        if REFERENCE not in measured or len(measured) < 2:
            continue
        rows.append(f"| {_level_name(level)} | " + " | ".join(
            f"{measured[p][0]:.4f} / {_ppl(measured[p][1])}" if p in measured else "–" for p in REFIT_PIPELINES) + " |")  # fmt: skip
        ref_error, ref_ppl = measured[REFERENCE]
        for p in NO_TRAINING:
            if p in measured and (measured[p][0] < ref_error) != (measured[p][1] < ref_ppl):
                pair = "lower error, higher perplexity" if measured[p][0] < ref_error else "higher error, lower perplexity"
                disagree.append(f"{_level_name(level)}, {p} ({pair})")
    if not rows:
        return []
    lines = ["**Does the layer objective predict perplexity?** Seed 0, first 64 windows: each run's mean relative "
             "output error over its layers, ||ΔW X|| / ||W X|| on the calibration tokens (what the pruners, refiners "
             "and the re-fit lower, layer by layer), then its perplexity. Each run measures a layer on its own "
             "inputs, which earlier pruned blocks have changed: a summary, not a controlled comparison. A "
             "dense-target re-fit lowers another error (against the dense model's outputs), so its layer error "
             "here is expected to be higher.", "",
             "| level | " + " | ".join(f"{p}: error / ppl" for p in REFIT_PIPELINES) + " |",
             "|---|" + "---|" * len(REFIT_PIPELINES), *rows, ""]  # fmt: skip
    if disagree:
        lines += ["Against full SparseGPT, the mean layer error and the perplexity order these runs differently: "
                  + "; ".join(disagree) + ".", ""]  # fmt: skip
    else:
        lines += ["Against full SparseGPT, the mean layer error and the perplexity order every run shown the same way.", ""]
    return lines


def refit_figure(results: dict[str, dict], model: str):
    """Perplexity by level (first 64 windows): each pipeline's mean over seeds, each seed a dot."""
    groups = organise(results)
    levels = [lv for lv in ORDER if any((str(REFIT_WINDOWS), lv, p) in groups for p in REFIT_PIPELINES)]
    if not levels:
        return None
    fig, axes = new_figure(1, 1, size=(8.0, 4.2))
    ax = axes[0, 0]
    for i, pipeline in enumerate(REFIT_PIPELINES):
        xs, means = [], []
        for x, level in enumerate(levels):
            runs = groups.get((str(REFIT_WINDOWS), level, pipeline), {})
            if runs:
                ppls = [r["ppl"] for r in runs.values()]
                ax.scatter([x + 0.06 * (i - 1.5)] * len(ppls), ppls, color=PALETTE[i], s=10, zorder=3)
                xs.append(x)
                means.append(statistics.fmean(ppls))
        ax.plot(xs, means, color=PALETTE[i], ls=":" if pipeline == REFERENCE else "-", marker="o", label=pipeline)
    ax.set_xticks(range(len(levels)), [_level_name(lv) for lv in levels])
    log_axis(ax)
    ax.set_xlabel("sparsity")
    ax.set_ylabel(f"WikiText-2 perplexity, first {REFIT_WINDOWS} windows (log)")
    ax.set_title(f"{model}: re-fitted masks against full SparseGPT (lines: mean over seeds, dots: seeds)")
    ax.legend(fontsize=8)
    return fig


def error_figure(results: dict[str, dict], model: str):
    """Where the error goes: per layer type, the relative output error of the final mask before and
    after the re-fit (seed 0, first 64 windows), with full SparseGPT's, at 60% and 70%."""
    from dsnot_lite.runs.model_lab import layer_frame

    groups = organise(results)
    panels = [lv for lv in ("0.6", "0.7") if (str(REFIT_WINDOWS), lv, "wanda + exact + refit") in groups]
    if not panels:
        return None
    fig, axes = new_figure(1, len(panels), size=(7.0 * len(panels), 4.2))
    for ax, level in zip(axes[0], panels):
        bars = []  # (label, per-type errors, colour, hatch)
        for i, pipeline in enumerate(REFIT_PIPELINES):
            run = groups.get((str(REFIT_WINDOWS), level, pipeline), {}).get(0)
            if run is None or not run["layers"] or run["layers"][0].get("error_final") is None:
                continue
            frame = layer_frame(run)
            frame["error_before_refit"] = [rec.get("error_before_refit") for rec in run["layers"]]
            by_type = frame.groupby("type", sort=False)
            if pipeline == REFERENCE:
                bars.append(("full SparseGPT", by_type["error_final"].mean(), "grey", ""))
                continue
            bars.append(
                (f"{pipeline.removesuffix(' + refit')}: mask only", by_type["error_before_refit"].mean(), PALETTE[i], "//")
            )
            bars.append((f"{pipeline}", by_type["error_final"].mean(), PALETTE[i], ""))
        width = 0.8 / max(len(bars), 1)
        for j, (label, errors, colour, hatch) in enumerate(bars):
            ax.bar([k + (j - (len(bars) - 1) / 2) * width for k in range(len(errors))], errors.values, width,
                   color=colour, hatch=hatch, edgecolor="white", label=label)  # fmt: skip
        if bars:
            ax.set_xticks(range(len(bars[0][1])), [t.split(".")[-1] for t in bars[0][1].index], rotation=30)
        ax.set_ylabel("relative output error ||ΔW X|| / ||W X|| (mean over blocks)")
        ax.set_title(f"{_level_name(level)}, seed 0")
        ax.legend(fontsize=7)
    fig.suptitle(f"{model}: where the error goes: the mask alone, then the re-fitted weights (calibration tokens)")
    return fig
