"""The exact refiner's compiled kernel against its torch path, side by side, on every stored layer.

    .venv/bin/python bench/exact_kernel.py --threads 1        # after bench/exact_profile.py --capture

On the 210 layers stored by ``bench/exact_profile.py --capture`` (SmolLM2-135M, Wanda 60%, T = 50,
shortlist 8), each layer is refined by ``exact_refine(..., kernel="torch")`` and by
``kernel="numba"`` one after the other (alternating, so both see the same machine), timed (wall
clock and CPU), and the masks, swap counts and final errors compared with each other and with the
stored run's. The kernel is compiled (or its cache loaded) on a warm-up layer first. Writes
``bench/results/exact_kernel.{json,md}``. A plain script, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # run_context lives beside this script

from run_context import run_context, write_result  # noqa: E402

from dsnot_lite.core.exact import ExactConfig, exact_refine  # noqa: E402

LAYERS = ROOT / "results" / "bench" / "exact-layers"
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KERNELS = ("torch", "numba")


def compare(folder: Path) -> dict:
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise SystemExit(f"error: no stored layers in {folder}; fix: run bench/exact_profile.py --capture first")
    first = torch.load(files[0], weights_only=False)
    exact_refine(first["weight"], first["gram"], first["mask"], first["config"], kernel="numba")  # compile / load cache
    wall = {k: defaultdict(float) for k in KERNELS}
    cpu = {k: defaultdict(float) for k in KERNELS}
    names: list[str] = []  # layers whose masks differ between the two
    differ = {"kernel vs torch: masks": 0, "kernel vs torch: swaps": 0, "kernel vs torch: final errors": 0,
              "torch vs stored: masks": 0, "kernel vs stored: masks": 0}  # fmt: skip
    for i, path in enumerate(files):
        layer = torch.load(path, weights_only=False)
        results = {}
        for kernel in KERNELS:
            start, start_cpu = time.perf_counter(), time.process_time()
            results[kernel] = exact_refine(
                layer["weight"], layer["gram"], layer["mask"], layer["config"], layer["nm"], kernel=kernel
            )
            wall[kernel][TYPES[i % 7]] += time.perf_counter() - start
            cpu[kernel][TYPES[i % 7]] += time.process_time() - start_cpu
        a, b = results["torch"], results["numba"]
        differ["kernel vs torch: masks"] += not torch.equal(a.mask, b.mask)
        if not torch.equal(a.mask, b.mask):
            for row in (a.mask != b.mask).any(1).nonzero().flatten().tolist():
                names.append({"layer": f"{path.stem} ({TYPES[i % 7]}, block {i // 7})", "row": row, **diagnose(layer, row)})
        differ["kernel vs torch: swaps"] += not torch.equal(a.swaps, b.swaps)
        differ["kernel vs torch: final errors"] += not torch.equal(a.final_error, b.final_error)
        differ["torch vs stored: masks"] += not torch.equal(a.mask, layer["refined"])
        differ["kernel vs stored: masks"] += not torch.equal(b.mask, layer["refined"])
    return {"layers": len(files), "wall_by_type": {k: dict(v) for k, v in wall.items()},
            "cpu_by_type": {k: dict(v) for k, v in cpu.items()}, "wall": {k: sum(v.values()) for k, v in wall.items()},
            "cpu": {k: sum(v.values()) for k, v in cpu.items()}, "layers_that_differ": differ, "masks_differ": names}  # fmt: skip


def diagnose(layer: dict, row: int) -> dict:
    """Where one row's swaps part: the first step at which the two paths' traces differ, the swap
    each made there (float64 deltas from the common state), and the ranks of the swapped columns
    among the grow gains and prune costs with the gap between the shortlist's last and the next."""
    w, g, mask, cfg = layer["weight"], layer["gram"], layer["mask"], layer["config"]
    trace = {k: exact_refine(w, g, mask, cfg, kernel=k, trace=True).trace[:, row] for k in KERNELS}
    steps = min(len(trace["torch"]), len(trace["numba"]))
    step = int((trace["torch"][:steps] != trace["numba"][:steps]).nonzero()[0])
    before = {k: exact_refine(w, g, mask, ExactConfig(T=step - 1, shortlist=cfg.shortlist), kernel=k).mask[row] for k in KERNELS}
    after = {k: exact_refine(w, g, mask, ExactConfig(T=step, shortlist=cfg.shortlist), kernel=k).mask[row] for k in KERNELS}
    state, wr, gd = before["torch"], w[row].double(), g.double()
    removed = torch.where(state, wr, torch.zeros((), dtype=torch.float64))
    u, self_term, inf = gd @ removed, wr * wr * gd.diagonal(), torch.tensor(float("inf"), dtype=torch.float64)
    scores = {"grow": torch.where(state, self_term - 2 * wr * u, inf), "prune": torch.where(state, inf, self_term + 2 * wr * u)}
    alone = exact_refine(w[row : row + 1], g, mask[row : row + 1], cfg, kernel="torch").mask[
        0
    ]  # the torch path on this row alone
    out = {"step": step, "same state before": bool(torch.equal(before["torch"], before["numba"])),
           "torch on the row alone = kernel": bool(torch.equal(alone, exact_refine(w, g, mask, cfg, kernel="numba").mask[row]))}  # fmt: skip
    for k in KERNELS:
        grow = int((state & ~after[k]).nonzero()[0])
        prune = int((~state & after[k]).nonzero()[0])
        new = after[k] & (wr != 0)
        delta = float(torch.where(new, wr, 0.0) @ gd @ torch.where(new, wr, 0.0) - removed @ u)
        ranks = {side: int((scores[side].argsort() == col).nonzero()) + 1 for side, col in (("grow", grow), ("prune", prune))}
        out[k] = {"grow": grow, "prune": prune, "delta": delta, "ranks": ranks}
    k = cfg.shortlist
    for side, values in scores.items():
        ordered = values.sort().values
        out[f"{side} gap at the shortlist edge"] = float((ordered[k] - ordered[k - 1]).abs() / ordered[k - 1].abs())
    return out


def markdown(result: dict, command: str) -> str:
    wall, cpu = result["wall"], result["cpu"]
    lines = [f"# Exact refiner: compiled kernel against the torch path ({result['layers']} layers of SmolLM2-135M, "
             "Wanda 60%, T = 50, shortlist 8)", "",
             f"Generated by `{command}` at commit {result['commit']} on {result['when']} ({result['machine']}, "
             f"{result['threads']} threads, load average {result['load']}). Each layer refined by both, one after the other.", "",
             "| layer type | torch s | kernel s | speed-up |", "|---|---|---|---|"]  # fmt: skip
    for t in TYPES:
        a, b = result["wall_by_type"]["torch"][t], result["wall_by_type"]["numba"][t]
        lines.append(f"| {t} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
    lines += [f"| **all** | **{wall['torch']:.1f}** | **{wall['numba']:.1f}** | **{wall['torch'] / wall['numba']:.1f}x** |", "",
              f"CPU seconds: torch {cpu['torch']:.1f}, kernel {cpu['numba']:.1f} ({cpu['torch'] / cpu['numba']:.1f}x).", "",
              "Layers that differ (of " + str(result["layers"]) + "):", ""]  # fmt: skip
    lines += [f"- {what}: {n}" for what, n in result["layers_that_differ"].items()]
    lines += ["", "Rows whose masks differ, where they part (the first step whose error differs; each path's swap "
              "there, its float64 delta from the common state, and the ranks of its columns among the row's grow "
              "gains and prune costs; the relative gap between the shortlist's last score and the next):", "",
              "| layer | row | step | torch: grow, prune (ranks), delta | kernel: grow, prune (ranks), delta "
              "| gap at the edge: grow, prune | torch on the row alone = kernel |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for d in result["masks_differ"]:
        cells = [
            f"{d[k]['grow']}, {d[k]['prune']} ({d[k]['ranks']['grow']}, {d[k]['ranks']['prune']}), {d[k]['delta']:.4g}"
            for k in KERNELS
        ]
        lines.append(f"| {d['layer']} | {d['row']} | {d['step']} | {cells[0]} | {cells[1]} | "
                     f"{d['grow gap at the shortlist edge']:.1e}, {d['prune gap at the shortlist edge']:.1e} | "
                     f"{d['torch on the row alone = kernel']} |")  # fmt: skip
    if not result["masks_differ"]:
        lines.append("| none | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=str(LAYERS), help="folder of stored layers")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare(Path(args.layers))
    result.update(run_context("exact_kernel.py", argv))
    report = write_result(result, Path(args.out), "exact_kernel", markdown(result, result["command"]))
    print(f"wrote {report}: torch {result['wall']['torch']:.1f} s, kernel {result['wall']['numba']:.1f} s")


if __name__ == "__main__":
    main()
