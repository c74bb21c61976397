"""The re-fit with bf16 products (``--refit-precision bf16``) against the float32 one and SparseGPT's OBS update.

    .venv/bin/python bench/refit_precision.py --threads 1        # after bench/exact_profile.py --capture

Nearly all the re-fit's time is its two matrix products per CG iteration (``core/refit.py``); a CPU
with AMX (or a GPU) multiplies bf16 matrices several times faster than float32 ones. On the layers
stored by ``bench/exact_profile.py --capture`` (SmolLM2-135M, Wanda 60% + the exact refiner) this
runs, in rounds, each in turn:

* ``float32 (library)``: ``core.refit.refit`` as the study runs it;
* ``bf16 (library)``: ``refit(..., precision="bf16")``: the preconditioner's product on bf16
  inputs, the product ``d G`` as three bf16 products of heads and tails (about 16 bits of the inputs);
* two ablations of it: the preconditioner alone in bf16 (``d G`` in float32), and ``d G`` as one
  bf16 product (``G`` rounded to 8 bits);
* ``sparsegpt OBS``: ``core.pruners.sparsegpt_prune`` on the same weight and Gram matrix at 60%
  (its own mask and OBS update), the cost the issue compares the re-fit with.

Reports CPU seconds (medians over rounds) and their ratio to the float32 re-fit and to the OBS
update, the CG iterations, and how far each variant's final error lies from the float32 re-fit's,
as a share of what that re-fit gained. Writes ``bench/results/refit_precision.{json,md}``. A plain
script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # run_context lives beside this script

from run_context import run_context, write_result  # noqa: E402

import dsnot_lite.core.refit as core_refit  # noqa: E402
from dsnot_lite.core.pruners import sparsegpt_prune  # noqa: E402

LAYERS = ROOT / "results" / "bench" / "exact-layers"
BF16 = torch.bfloat16


def float32_curvature(g: torch.Tensor, precision: str):
    """The library's float32 product ``d G`` whatever ``precision`` says (the preconditioner alone in bf16)."""
    return lambda d, out: torch.mm(d, g, out=out)


def one_bf16_curvature(g: torch.Tensor, precision: str):
    """``d G`` as one bf16 product: ``G`` and ``d`` rounded to bf16 (8 bits), the result too."""
    g_bf16 = g.to(BF16)
    return lambda d, out: out.copy_(torch.mm(d.to(BF16), g_bf16))


# name -> (the library's precision, what replaces core.refit._curvature_product)
VARIANTS = {
    "float32 (library)": ("float32", None),
    "bf16 (library: bf16 preconditioner, bf16x3 curvature)": ("bf16", None),
    "bf16 preconditioner, float32 curvature": ("bf16", float32_curvature),
    "bf16 preconditioner, one bf16 curvature product": ("bf16", one_bf16_curvature),
}


def refit_all(layers: list[dict], precision: str, curvature) -> tuple[float, list]:
    """CPU seconds and results of re-fitting every stored layer's final mask at ``precision``, with
    ``curvature`` (if given) in place of the library's product ``d G``."""
    patch = mock.patch.object(core_refit, "_curvature_product", curvature) if curvature else contextlib.nullcontext()
    with patch:
        start = time.process_time()
        fitted = [core_refit.refit(layer["weight"], layer["gram"], layer["refined"], precision=precision) for layer in layers]
        return time.process_time() - start, fitted


def measure(folder: Path, rounds: int) -> dict:
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise SystemExit(f"error: no stored layers in {folder}; fix: run bench/exact_profile.py --capture first")
    layers = [torch.load(path, weights_only=False) for path in files]
    seconds: dict[str, list[float]] = {name: [] for name in [*VARIANTS, "sparsegpt OBS"]}
    results: dict[str, list] = {}
    for _ in range(rounds):
        for name, (precision, curvature) in VARIANTS.items():
            spent, results[name] = refit_all(layers, precision, curvature)
            seconds[name].append(spent)
        start = time.process_time()
        for layer in layers:
            sparsegpt_prune(layer["weight"], layer["gram"], 0.6)
        seconds["sparsegpt OBS"].append(time.process_time() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    library = results["float32 (library)"]
    rows = []
    for name in seconds:
        row = {"variant": name, "cpu_s": median[name], "cpu_s_rounds": seconds[name],
               "x_float32": median[name] / median["float32 (library)"], "x_obs": median[name] / median["sparsegpt OBS"]}  # fmt: skip
        if name in results:
            gaps = [float((b.final_error.sum() - a.final_error.sum()) / (a.initial_error.sum() - a.final_error.sum()))
                    for a, b in zip(library, results[name])]  # fmt: skip
            row.update(iterations=sum(f.iterations for f in results[name]), gap_mean=statistics.fmean(gaps),
                       gap_max=max(gaps), gap_min=min(gaps))  # fmt: skip
        rows.append(row)
    return {"rows": rows, "layers": len(layers), "rounds": rounds, "amx_bf16": _has_amx()}


def _has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def markdown(result: dict) -> str:
    lines = ["# Re-fit with bf16 products against the library's and SparseGPT's OBS update (stored SmolLM2-135M layers)", "",
             f"Generated by `{result['command']}` at commit {result['commit']} on {result['when']} ({result['machine']}, "
             f"{result['threads']} threads, load average {result['load']}; AMX bf16: {'yes' if result['amx_bf16'] else 'no'}). "
             f"The {result['layers']} layers of Wanda 60% + the exact refiner, every variant in turn for {result['rounds']} "
             "rounds; CPU seconds are medians over rounds. *Gap*: a variant's final error minus the library's, as a share "
             "of what the library's re-fit gained, per layer (mean and range; negative: lower error).", "",
             "| variant | CPU s | x float32 | x OBS | CG iterations | gap, mean | gap, range |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        its = row.get("iterations", "-")
        gap = f"{row['gap_mean']:+.3%}" if "gap_mean" in row else "-"
        span = f"{row['gap_min']:+.3%} to {row['gap_max']:+.3%}" if "gap_mean" in row else "-"
        lines.append(
            f"| {row['variant']} | {row['cpu_s']:.1f} | {row['x_float32']:.2f} | {row['x_obs']:.2f} | {its} | {gap} | {span} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=str(LAYERS), help="folder of stored layers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be >= 1; fix: e.g. --rounds 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(Path(args.layers), args.rounds)
    result.update(run_context("refit_precision.py", argv))
    print(f"wrote {write_result(result, Path(args.out), 'refit_precision', markdown(result))}")


if __name__ == "__main__":
    main()
