"""How far apart two correct pipelines' numbers are, and where ours meets the authors' masks at a near-tie.

    .venv/bin/python bench/conformance.py                # both parts (about an hour on 2 busy cores)
    .venv/bin/python bench/conformance.py --part noise   # only the float noise
    .venv/bin/python bench/conformance.py --part ties    # only the near-tie table

Writes ``bench/results/conformance.json`` and ``bench/results/conformance.md``. The numbers justify
the tolerance of ``tests/runs/test_conformance_e2e.py``.

* ``noise``: the teacher-forced walk over SmolLM2-135M (the authors' Wanda + DSnoT masks adopted
  block by block, 16 x 512 C4, seed 0) is run three times, each in its own process: our default
  (sdpa attention, 8 windows per forward), the reference's shape (eager attention, one window per
  forward) and MKL's conditional-reproducibility mode (``MKL_CBWR=COMPATIBLE``: other GEMM kernels,
  as on another CPU). Every layer's statistics are compared with the default's: the relative gap of
  the Wanda scores, of the 50 largest and 50 smallest Eq. 2 keys of every row (the ones DSnoT takes),
  and of ``E[Delta_r]`` under the authors' mask as a fraction of the row's scale
  ``sum_k |W_rk| sqrt(L ||A_k||^2)`` (``core.near_ties``).
* ``ties``: ``reference.teacher_forced`` for Wanda and Wanda + DSnoT at the settings of
  ``../shared/reference/official-e2e``: per layer, entries and rows that differ from the authors'
  masks, which near-ties explain them and their gaps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsnot_lite.runs.io import atomic_write_text, write_json  # noqa: E402

E2E = ROOT.parent / "shared" / "reference" / "official-e2e"
VARIANTS = {"default": ("sdpa", 8, {}), "eager, 1 window per forward": ("eager", 1, {}),
            "MKL_CBWR=COMPATIBLE": ("sdpa", 8, {"MKL_CBWR": "COMPATIBLE"})}  # fmt: skip
STATS_LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")  # q/k/v and gate/up share inputs
SHARED = {"self_attn.q_proj": ("q", "k", "v"), "mlp.gate_proj": ("gate", "up")}


def walk(out: Path, attn: str, batch: int) -> None:
    """One teacher-forced walk (the authors' DSnoT masks adopted), saving every layer's statistics."""
    from dsnot_lite.lm import data
    from dsnot_lite.lm.calibration import capture_block_inputs, collect_stats, run_block
    from dsnot_lite.lm.models import find_linears, load_model
    from dsnot_lite.reference import load_e2e

    reference = load_e2e(E2E / "wanda_dsnot_s60.safetensors")
    loaded = load_model("smollm2-135m", attn=attn)
    ids = data.calibration_windows(loaded.tokenizer, data.c4_documents(None), 16, 512, 0, progress=False)
    inputs = capture_block_inputs(loaded.model, loaded.blocks, ids, batch)
    saved = {}
    for i, block in enumerate(loaded.blocks):
        linears = find_linears(block)
        stats = collect_stats(block, linears, inputs.for_block(i))
        for name in STATS_LAYERS:
            saved[f"{i}.{name}"] = {k: stats[name].as_dict()[k].clone() for k in ("sum_metric_row", "scaler_row", "var")}
        for name, layer in linears.items():
            layer.weight.data = layer.weight.data.masked_fill(reference[f"model.layers.{i}.{name}"], 0)
        inputs = inputs.with_hidden(run_block(block, inputs.for_block(i)).hidden)
    torch.save(saved, out)


def _gaps(a: dict, b: dict, weight: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Largest relative gaps between two statistics of one layer (b: the default's)."""
    wanda = ((a["scaler_row"].sqrt() - b["scaler_row"].sqrt()).abs() / b["scaler_row"].sqrt().clamp_min(1e-30)).max()
    ca, cb = weight * a["sum_metric_row"], weight * b["sum_metric_row"]
    ka, kb = ca.masked_fill(~mask, 0) / a["var"], cb.masked_fill(~mask, 0) / b["var"]
    ends = torch.cat([kb.topk(50, dim=1).indices, (-kb).topk(50, dim=1).indices], 1)
    key = ((ka.gather(1, ends) - kb.gather(1, ends)).abs() / kb.gather(1, ends).abs().clamp_min(1e-30)).max()
    scale = (weight.abs() * (512 * b["scaler_row"]).sqrt()).sum(1)
    error = ((ca.masked_fill(~mask, 0).sum(1) - cb.masked_fill(~mask, 0).sum(1)).abs() / scale).max()
    return {"wanda": float(wanda), "eq2_key": float(key), "error": float(error)}


def noise(scratch: Path) -> dict:
    from safetensors.torch import load_file

    from dsnot_lite.lm.bundled import cache_root
    from dsnot_lite.reference import load_e2e

    files = {}
    for label, (attn, batch, env) in VARIANTS.items():
        files[label] = scratch / f"stats-{len(files)}.pt"
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--walk", str(files[label]), attn, str(batch)], check=True,
                       env={**os.environ, **env})  # fmt: skip
        print(f"walk {label}: {time.perf_counter() - start:.0f} s", flush=True)
    weights = load_file(str(cache_root() / "models" / "smollm2-135m" / "model.safetensors"))
    reference = load_e2e(E2E / "wanda_dsnot_s60.safetensors")
    base = torch.load(files["default"])
    out = {}
    for label in list(VARIANTS)[1:]:
        other, worst = torch.load(files[label]), {}
        for key, stats in base.items():
            block, name = key.split(".", 1)
            kind, proj = name.split(".")
            for sibling in SHARED.get(name, (proj.split("_")[0],)):
                full = f"model.layers.{block}.{kind}.{sibling}_proj"
                for what, gap in _gaps(other[key], stats, weights[full + ".weight"].float(), reference[full]).items():
                    worst.setdefault(what, []).append((gap, full))
        out[label] = {what: {"max": max(g)[0], "at": max(g)[1], "median": statistics.median(x for x, _ in g)}
                      for what, g in worst.items()}  # fmt: skip
    return out


def ties() -> dict:
    import dataclasses
    import importlib.util

    from dsnot_lite.core.near_ties import Tolerance
    from dsnot_lite.reference import load_e2e, teacher_forced
    from dsnot_lite.runs.runner import ModelSession
    from dsnot_lite.runs.spec import RunSpec

    sys.path.insert(0, str(ROOT / "tests"))  # the test module's helpers
    spec = importlib.util.spec_from_file_location("conformance_test", ROOT / "tests" / "runs" / "test_conformance_e2e.py")
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    tolerance: Tolerance = test.TOLERANCE  # the test's tolerance, which these numbers justify
    session, out = ModelSession(), {"tolerance": dataclasses.asdict(tolerance)}
    for name, refiner in (("wanda_s60", None), ("wanda_dsnot_s60", "dsnot")):
        run = RunSpec(method="wanda", sparsity=0.6, refiner=refiner, nsamples=16, seqlen=512, seed=0)
        start = time.perf_counter()
        layers = teacher_forced(load_e2e(E2E / f"{name}.safetensors"), run, session=session, tolerance=tolerance)
        out[name] = {"seconds": time.perf_counter() - start, "layers": len(layers),
                     "differing": [{"layer": layer.name, "entries": layer.differing, "rows": len(layer.verdicts),
                                    "near_tie_entries": layer.near_ties, "unexplained_rows": len(layer.unexplained),
                                    "ties": [[str(t) for t in v.ties] for v in layer.verdicts],
                                    "reasons": [v.reason for v in layer.unexplained]}
                                   for layer in layers if layer.differing]}  # fmt: skip
        print(f"{name}: {len(out[name]['differing'])} layers differ, {out[name]['seconds']:.0f} s", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = ["# Conformance with the authors' pipeline: float noise and near-ties", "",
             f"Made by `{result['command']}` (torch {torch.__version__}, {os.cpu_count()} CPUs).", ""]  # fmt: skip
    if "noise" in result:
        lines += ["## Float noise between two correct pipelines (largest over the 210 layers, relative)", "",
                  "| variant vs default | Wanda score | Eq. 2 key (row ends) | E[Delta_r] / row scale |", "|---|---|---|---|"]  # fmt: skip
        for label, gaps in result["noise"].items():
            lines.append(f"| {label} | " + " | ".join(f"{gaps[w]['max']:.2e}" for w in ("wanda", "eq2_key", "error")) + " |")
        lines.append("")
    if "ties" in result:
        lines += ["## Teacher-forced comparison, layers whose mask differs from the authors'", "",
                  "| run | layer | entries | rows | explained entries | near-ties (gap) | unexplained rows |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for run, data in result["ties"].items():
            if run == "tolerance":
                continue
            for d in data["differing"] or [{"layer": "(none of 210)", "entries": 0, "rows": 0, "near_tie_entries": 0,
                                            "ties": [], "unexplained_rows": 0}]:  # fmt: skip
                shown = "; ".join(t for row in d["ties"] for t in row)
                lines.append(f"| {run} | {d['layer']} | {d['entries']} | {d['rows']} | {d['near_tie_entries']} | {shown} | "
                             f"{d['unexplained_rows']} |")  # fmt: skip
        lines += ["", f"Tolerance: {result['ties']['tolerance']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["noise", "ties", "both"], default="both")
    p.add_argument("--walk", nargs=3, metavar=("OUT", "ATTN", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.walk:
        walk(Path(args.walk[0]), args.walk[1], int(args.walk[2]))
        return
    torch.set_grad_enabled(False)
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "load_start": os.getloadavg()}
    if args.part in ("noise", "both"):
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            result["noise"] = noise(Path(scratch))
    if args.part in ("ties", "both"):
        result["ties"] = ties()
    result["load_end"] = os.getloadavg()
    write_json(result, args.out_dir / "conformance.json")
    atomic_write_text(args.out_dir / "conformance.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
