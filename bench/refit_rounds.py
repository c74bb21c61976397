"""Does alternating the exact refiner and the re-fit pay? Layer errors of a few rounds, on stored layers.

    .venv/bin/python bench/refit_rounds.py --threads 1        # after bench/exact_profile.py --capture

On layers stored by ``bench/exact_profile.py --capture`` (SmolLM2-135M, Wanda 60%, the exact
refiner's input and output), the relative squared output error ``||dW X||^2 / ||W X||^2`` of: the
Wanda mask; the exact refiner's mask; that mask re-fitted (``core.refit``, what ``--refiner exact
--refit`` does); then rounds of (swaps scored against the *re-fitted* kept weights, re-fit again).
The round's refiner is written here, not in the library: it is the exact refiner's greedy 1-swap
with the kept weights' current values in the prune cost and the cross term (a regrown weight comes
back at its dense value). Writes ``bench/results/refit_rounds.{json,md}``. A plain script, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # run_context lives beside this script

from run_context import run_context  # noqa: E402

from dsnot_lite.core.exact import RELATIVE_TOLERANCE  # noqa: E402
from dsnot_lite.core.refit import refit  # noqa: E402
from dsnot_lite.runs.io import atomic_write_text, write_json  # noqa: E402

LAYERS = ROOT / "results" / "bench" / "exact-layers"
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@torch.no_grad()
def refine_current(w, g, pruned, current, T: int = 50, k: int = 8) -> torch.Tensor:
    """Greedy best 1-swaps (shortlist ``k`` per side) for the error ``(w - current) G (w - current)^T``."""
    pruned, current = pruned.clone(), current.clone()
    u = (w - current) @ g
    tolerance = RELATIVE_TOLERANCE * ((w - current) * u).sum(1).abs()
    diag, live = g.diagonal(), torch.ones(w.shape[0], dtype=torch.bool)
    for _ in range(T):
        gain, grow = (w * w * diag - 2 * w * u).masked_fill(~pruned, torch.inf).topk(k, 1, largest=False)
        cost, prune = (current * current * diag + 2 * current * u).masked_fill(pruned, torch.inf).topk(k, 1, largest=False)
        cross = g[grow.unsqueeze(2), prune.unsqueeze(1)] * w.gather(1, grow).unsqueeze(2) * current.gather(1, prune).unsqueeze(1)
        best, at = (gain.unsqueeze(2) + cost.unsqueeze(1) - 2 * cross).flatten(1).min(1)
        live = live & (best < -tolerance)
        if not bool(live.any()):
            break
        r = live.nonzero().squeeze(1)
        gc, pc = grow.gather(1, (at // k)[:, None])[r, 0], prune.gather(1, (at % k)[:, None])[r, 0]
        grown, removed = w[r, gc], current[r, pc]
        u[r] += g[pc] * removed[:, None] - g[gc] * grown[:, None]
        pruned[r, gc], pruned[r, pc], current[r, gc], current[r, pc] = False, True, grown, 0.0
    return pruned


def relative(w, new, g) -> float:
    d, wd, gd = (w - new).double(), w.double(), g.double()
    return float(((d @ gd) * d).sum() / ((wd @ gd) * wd).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=str(LAYERS))
    parser.add_argument("--blocks", default="0,10,20,29", help="blocks whose 7 layers are measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for block in (int(b) for b in args.blocks.split(",")):
        for i, kind in enumerate(TYPES):
            path = Path(args.layers) / f"{7 * block + i:03d}.pt"
            if not path.is_file():
                raise SystemExit(f"error: {path} is missing; fix: run bench/exact_profile.py --capture first")
            layer = torch.load(path, weights_only=False)
            w, g, mask = layer["weight"], layer["gram"], layer["refined"]
            start = time.process_time()
            fitted = refit(w, g, mask).weight
            seconds = [time.process_time() - start]
            errors = [
                relative(w, w.masked_fill(layer["mask"], 0), g),
                relative(w, w.masked_fill(mask, 0), g),
                relative(w, fitted, g),
            ]
            for _ in range(args.rounds):
                start = time.process_time()
                mask = refine_current(w, g, mask, fitted)
                fitted = refit(w, g, mask, fitted).weight
                seconds.append(time.process_time() - start)
                errors.append(relative(w, fitted, g))
            rows.append({"block": block, "type": kind, "errors": errors, "cpu_seconds": seconds})
            print(f"block {block} {kind}: " + " ".join(f"{e:.4f}" for e in errors), file=sys.stderr, flush=True)
    result = {**run_context("refit_rounds.py", argv), "rows": rows}
    out = Path(args.out)
    write_json(result, out / "refit_rounds.json")
    heads = ["Wanda", "exact", "exact + refit"] + [f"+ round {r + 1}" for r in range(args.rounds)]
    lines = ["# Alternating the exact refiner and the re-fit (SmolLM2-135M, Wanda 60%, stored layers)", "",
             f"Generated by `{result['command']}` at commit {result['commit']} on {result['when']}. Relative squared output error "
             "||dW X||^2 / ||W X||^2 on the calibration tokens; a round = swaps scored against the re-fitted kept weights, "
             "then the re-fit again; *round CPU s*: the CPU seconds of the re-fit (first) and of each round.", "",
             "| block | layer | " + " | ".join(heads) + " | round 1 vs exact + refit | CPU s (refit; rounds) |",
             "|---|---|" + "---|" * (len(heads) + 2)]  # fmt: skip
    for row in rows:
        e = row["errors"]
        lines.append(f"| {row['block']} | {row['type']} | " + " | ".join(f"{x:.4f}" for x in e) +
                     f" | {100 * (e[3] / e[2] - 1):+.1f}% | " + "; ".join(f"{s:.1f}" for s in row["cpu_seconds"]) + " |")  # fmt: skip
    gains = sorted(100 * (r["errors"][3] / r["errors"][2] - 1) for r in rows)
    later = sorted(100 * (r["errors"][-1] / r["errors"][3] - 1) for r in rows)
    lines += ["", f"Median change of the first round against exact + refit: {gains[len(gains) // 2]:+.1f}% (range "
              f"{gains[0]:+.1f} to {gains[-1]:+.1f}); all later rounds together: {later[len(later) // 2]:+.1f}% (median)."]  # fmt: skip
    atomic_write_text(out / "refit_rounds.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
