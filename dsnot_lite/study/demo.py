"""``make demo`` / ``python -m dsnot_lite demo``: does refinement help? One table answers it.

Prunes the bundled SmolLM2-135M with Wanda at 60% and refines the mask with DSnoT (the authors'
``official`` preset) and with the exact refiner, then re-fits the exact refiner's kept weights
(``--refit``, least squares on the calibration inputs), on a quick protocol (16 C4 windows of 256 tokens,
the first 16 WikiText-2 test windows), and prints perplexity side by side with the dense model and
the change against Wanda, with a paired 95% interval over the evaluation windows. Every run is a
normal run record (``results/demo/<run name>-<key>.json``, a row in ``results/demo/results.csv``),
computed once: a second ``make demo`` only prints.
"""

from __future__ import annotations

import math
import time

from dsnot_lite.runs import workspace
from dsnot_lite.runs.io import atomic_write_text, write_json
from dsnot_lite.runs.model_lab import ModelLab
from dsnot_lite.runs.spec import RunSpec
from dsnot_lite.study.intervals import paired_difference

QUICK = RunSpec(nsamples=16, seqlen=256, max_windows=16)
RUNS = (("dense", "dense", {}), ("Wanda", "wanda", {}), ("Wanda + DSnoT (official)", "wanda", {"refiner": "dsnot"}),
        ("Wanda + exact refiner", "wanda", {"refiner": "exact"}),
        ("Wanda + exact refiner + refit", "wanda", {"refiner": "exact", "refit": True}))  # fmt: skip


def demo(sparsity: float = 0.6, progress: bool = True) -> str:
    """Run (or read) the demo's runs and return its Markdown table; also written to ``results/demo.md``."""
    start = time.perf_counter()
    lab = ModelLab(QUICK, cache_dir=workspace.results_dir("demo"), progress=progress)
    runs = {label: lab.run(method, sparsity, **changes) for label, method, changes in RUNS}
    wanda = runs["Wanda"]
    lines = [f"## SmolLM2-135M, {sparsity:.0%} unstructured: does refinement help?", "",
             f"{QUICK.nsamples} C4 calibration windows of {QUICK.seqlen} tokens; WikiText-2 test perplexity on the first "
             f"{wanda['windows']} of {wanda['total_windows']} windows (a quick check, not the full test set).", "",
             "| run | perplexity | change vs Wanda (95% interval over windows) |", "|---|---|---|"]  # fmt: skip
    for label, r in runs.items():
        change = paired_difference([wanda], [r]).text().split(" (seeds")[0] if label.startswith("Wanda +") else ""
        lines.append(f"| {label} | {r['ppl']:.2f} | {change} |")
    verdict = {label: _verdict(wanda, r) for label, r in runs.items() if label.startswith("Wanda +")}
    lines += [""] + [f"- {label}: {text}" for label, text in verdict.items()]
    seconds = time.perf_counter() - start
    lines += ["", f"{lab.computed} of {len(runs)} runs computed now, {seconds:.0f} s; runs in `{lab.cache.folder}`. "
              "The study (the whole test set, calibration seeds, every sparsity and starting mask; its first line "
              "says which runs are stored): `studies/refinement-smollm2-135m/README.md`."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    atomic_write_text(workspace.results_dir("demo.md"), text)
    write_json(runs["Wanda + DSnoT (official)"], workspace.results_dir("demo.json"))
    return text


def _verdict(base: dict, refined: dict) -> str:
    diff = paired_difference([base], [refined])
    if not (diff.high < 0 or diff.low > 0):
        return "no clear change on these windows"
    word = "lowers" if diff.mean < 0 else "raises"
    return f"{word} perplexity by {abs(100 * (math.exp(diff.mean) - 1)):.1f}% (interval excludes 0)"
