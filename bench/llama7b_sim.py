"""LLaMA-7B without the weights: per-block time and memory of the pruning pipeline, extrapolated.

    .venv/bin/python bench/llama7b_sim.py                 # 2 random 7B-shaped blocks, 4 x 512 tokens, fp32
    .venv/bin/python bench/llama7b_sim.py --quick         # a 256-wide toy, checks the script (~1 min)

Writes ``bench/results/llama7b_sim.json`` and ``bench/results/llama7b_sim.md`` (both generated here).

A randomly initialised ``LlamaConfig`` with the 7B layer shapes (hidden 4096, intermediate 11008,
32 heads, vocabulary 32000) and ``--blocks`` decoder blocks is driven through the pipeline's own
public functions, block by block as ``dsnot_lite.pipeline.prune_model`` does:
``calibration.capture_block_inputs`` (block 0's inputs), ``calibration.collect_stats`` (the
statistics forward, with and without SparseGPT's Hessian), ``pipeline.prune_layer`` (Wanda mask,
DSnoT ``official`` on the attention projections, weights written) and ``calibration.run_block``
(the re-forward whose pruned outputs feed the next block). DSnoT on the MLP layers (what the
``paper`` preset adds) is timed separately, not applied. Every phase records wall time and the
peak resident memory of the process while it ran (``bench/memtrack.py``).

Extrapolation: to ``--target-blocks`` blocks (mean of the measured blocks) and to
``--target-nsamples`` x ``--target-seqlen`` calibration tokens. Forward phases scale with the
forward FLOPs (tokens x (2 x linear params + 4 x seqlen x hidden) per block, attention included);
pruning phases do not depend on the calibration size (the statistics are per-channel vectors).

Memory planning (no weights needed: parameters counted on the ``meta`` device) for LLaMA-7B and
13B, fp16 on a GPU with 128 x 2048 calibration: weights (whole model resident, as the reference
code, or one block at a time, as this pipeline), one block's inputs and outputs, the forward
workspace of one batch, the statistics, SparseGPT's Hessians, and the pruning workspace (DSnoT's
bytes per weight measured here on CPU). The same arithmetic, applied to the simulated model in
its own dtype, is compared with the measured peak RSS as a sanity check.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memtrack import PeakRSS, rss_mb  # noqa: E402

from dsnot_lite.core.dsnot import dsnot, preset  # noqa: E402
from dsnot_lite.core.pruners import initial_mask  # noqa: E402
from dsnot_lite.lm.calibration import capture_block_inputs, collect_stats, run_block  # noqa: E402
from dsnot_lite.lm.models import find_linears  # noqa: E402
from dsnot_lite.runs.io import atomic_write_text  # noqa: E402
from dsnot_lite.runs.pipeline import PruneSpec, prune_layer  # noqa: E402

GIB = 2**30
LLAMA = {  # hidden, intermediate, heads, layers, vocab
    "7B": (4096, 11008, 32, 32, 32000),
    "13B": (5120, 13824, 40, 40, 32000),
}
PAPER_SECONDS = {"wanda": 0.3, "wanda+dsnot": 4.3, "sparsegpt": 209}  # LLaMA-7B, A100, whole model, spec section 4


def llama_config(hidden, inter, heads, layers, vocab):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=heads,
        num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=4096, use_cache=False,
    )  # fmt: skip


def param_counts(hidden, inter, heads, layers, vocab) -> dict:
    """Parameters of the whole model, one block and everything outside the blocks (meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_config(hidden, inter, heads, layers, vocab))
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    linear_shapes = [tuple(m.weight.shape) for m in find_linears(model.model.layers[0]).values()]
    return {"total": total, "block": block, "outside": total - layers * block, "linear_shapes": linear_shapes}


def memory_plan(name, hidden, inter, heads, layers, vocab, nsamples, seqlen, batch, bytes_per_el, dsnot_bytes_per_weight) -> dict:
    """GiB per component and predicted peaks, for Wanda+DSnoT and for SparseGPT."""
    pc = param_counts(hidden, inter, heads, layers, vocab)
    b = bytes_per_el
    tokens = nsamples * seqlen
    largest = max(r * c for r, c in pc["linear_shapes"])
    largest_cin = max(c for _, c in pc["linear_shapes"])
    comp = {
        "weights_whole_model": pc["total"] * b / GIB,
        "weights_one_block_plus_outside": (pc["block"] + pc["outside"]) * b / GIB,
        "block_inputs": tokens * hidden * b / GIB,
        "block_outputs": tokens * hidden * b / GIB,
        # one batch through a block (SDPA attention, no score matrix kept): q, k, v, attention
        # output, residual (5 x hidden) and gate, up, act(gate)*up (3 x intermediate) per token
        "forward_workspace_one_batch": batch * seqlen * (5 * hidden + 3 * inter) * b / GIB,
        # eager attention would also hold batch x heads x seqlen^2 scores
        "eager_attention_scores_one_batch": batch * heads * seqlen * seqlen * b / GIB,
        # R1 statistics: 5 fp32 vectors per distinct linear input (q/k/v, o, gate/up, down)
        "statistics_fp32": 5 * (3 * hidden + inter) * 4 / GIB,
        # SparseGPT Hessians (fp32): q/k/v share one, o, gate/up share one, down
        "hessians_fp32": (3 * hidden**2 + inter**2) * 4 / GIB,
        # measured on CPU fp32 (where weight.float() is free); a half-precision weight adds its fp32 copy
        "dsnot_workspace_largest_layer": largest * (dsnot_bytes_per_weight + (4 if b != 4 else 0)) / GIB,
        # full SparseGPT on the largest-C_in layer: fp32 weight copy + H, its Cholesky and inverse factor
        "sparsegpt_workspace_largest_layer": (largest * 4 * 2 + 3 * largest_cin**2 * 4) / GIB,
    }
    resident = {"whole_model": comp["weights_whole_model"], "block_offload": comp["weights_one_block_plus_outside"]}
    acts = comp["block_inputs"] + comp["block_outputs"]
    peaks = {}
    for mode, weights in resident.items():
        fwd = comp["forward_workspace_one_batch"]
        peaks[f"wanda_dsnot_{mode}"] = weights + acts + fwd + comp["statistics_fp32"] + comp["dsnot_workspace_largest_layer"]
        peaks[f"wanda_dsnot_{mode}_with_error_hessians"] = peaks[f"wanda_dsnot_{mode}"] + comp["hessians_fp32"]
        peaks[f"sparsegpt_{mode}"] = (
            weights + acts + fwd + comp["statistics_fp32"] + comp["hessians_fp32"] + comp["sparsegpt_workspace_largest_layer"]
        )
    return {"model": name, "params": {k: v for k, v in pc.items() if k != "linear_shapes"}, "linear_shapes": pc["linear_shapes"],
            "bytes_per_element": b, "calibration": f"{nsamples} x {seqlen}", "batch": batch,
            "components_gib": comp, "peaks_gib": peaks}  # fmt: skip


def forward_flops(params_linear: int, hidden: int, tokens: int, seqlen: int) -> float:
    return tokens * (2 * params_linear + 4 * seqlen * hidden)


def log(msg: str) -> None:
    print(msg, flush=True)


def run(args) -> dict:
    from transformers import AutoModelForCausalLM

    hidden, inter, heads, vocab = args.hidden, args.intermediate, args.heads, args.vocab
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    base_rss = rss_mb()
    with PeakRSS() as m_build:
        model = AutoModelForCausalLM.from_config(llama_config(hidden, inter, heads, args.blocks, vocab), dtype=dtype).eval()
    blocks = model.model.layers
    log(
        f"model built: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params, {m_build.seconds:.1f}s, RSS {rss_mb():.0f} MiB"
    )
    ids = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    spec = PruneSpec("wanda", sparsity=args.sparsity, dsnot=True, preset="official")
    cfg = preset("official")

    phases = []
    with torch.no_grad():
        with PeakRSS() as m:
            inputs = capture_block_inputs(model, blocks, ids, args.batch_size, "cpu")
        phases.append({"block": None, "phase": "capture", "seconds": m.seconds, "peak_rss_mb": m.peak_mb, "delta_mb": m.delta_mb})
        log(f"capture {m.seconds:.2f}s")
        for index, block in enumerate(blocks):
            linears = find_linears(block)
            if index == 0 and args.hessian_pass:
                with PeakRSS() as m:
                    hstats = collect_stats(block, linears, inputs, hessian=True)
                phases.append(
                    {
                        "block": index,
                        "phase": "statistics+hessians",
                        "seconds": m.seconds,
                        "peak_rss_mb": m.peak_mb,
                        "delta_mb": m.delta_mb,
                    }
                )
                log(f"block {index} statistics with Hessians {m.seconds:.2f}s (+{m.delta_mb:.0f} MiB)")
                del hstats
                gc.collect()
            with PeakRSS() as m:
                stats = collect_stats(block, linears, inputs, hessian=False)
            phases.append(
                {"block": index, "phase": "statistics", "seconds": m.seconds, "peak_rss_mb": m.peak_mb, "delta_mb": m.delta_mb}
            )
            log(f"block {index} statistics {m.seconds:.2f}s")

            # DSnoT on the MLP layers: what the paper preset would add (timed, not applied).
            mlp_dsnot = 0.0
            with PeakRSS() as m_mlp:
                for name, layer in linears.items():
                    if cfg.applies_to(name):
                        continue
                    mask = initial_mask(layer.weight.data, stats[name], "wanda", args.sparsity)
                    t0 = time.perf_counter()
                    dsnot(layer.weight.data, stats[name], mask, cfg)
                    mlp_dsnot += time.perf_counter() - t0
                    del mask
            phases.append(
                {
                    "block": index,
                    "phase": "dsnot_mlp_not_applied",
                    "seconds": mlp_dsnot,
                    "peak_rss_mb": m_mlp.peak_mb,
                    "delta_mb": m_mlp.delta_mb,
                }
            )

            wanda_s = dsnot_s = 0.0
            per_layer = {}
            with PeakRSS() as m:
                for name, layer in linears.items():
                    with PeakRSS() as ml:
                        rec = prune_layer(layer, f"model.layers.{index}.{name}", stats[name], spec)
                    wanda_s += rec.seconds
                    dsnot_s += rec.dsnot_seconds
                    per_layer[name] = {"shape": list(rec.shape), "wanda_s": rec.seconds, "dsnot_s": rec.dsnot_seconds,
                                       "dsnot_applied": rec.dsnot_applied, "peak_delta_mb": ml.delta_mb,
                                       "swaps": rec.swaps, "stops": rec.stop_reasons}  # fmt: skip
            phases.append(
                {"block": index, "phase": "wanda", "seconds": wanda_s, "peak_rss_mb": m.peak_mb, "delta_mb": m.delta_mb}
            )
            phases.append({"block": index, "phase": "dsnot_attention", "seconds": dsnot_s, "peak_rss_mb": m.peak_mb, "delta_mb": m.delta_mb,
                           "layers": per_layer})  # fmt: skip
            log(f"block {index} wanda {wanda_s:.2f}s dsnot(attention) {dsnot_s:.2f}s dsnot(mlp, not applied) {mlp_dsnot:.2f}s")
            del stats
            gc.collect()
            with PeakRSS() as m:
                inputs = run_block(block, inputs)
            phases.append(
                {"block": index, "phase": "re-forward", "seconds": m.seconds, "peak_rss_mb": m.peak_mb, "delta_mb": m.delta_mb}
            )
            log(f"block {index} re-forward {m.seconds:.2f}s")

        # DSnoT's own workspace on the largest layer (bytes per weight), fp32.
        big_name, big = max(find_linears(blocks[0]).items(), key=lambda kv: kv[1].weight.numel())
        w = big.weight.data.float().clone()
        stats = collect_stats(blocks[0], {big_name: big}, capture_block_inputs(model, blocks, ids[:1], 1, "cpu"))[big_name]
        mask = initial_mask(w, stats, "wanda", args.sparsity)
        gc.collect()
        with PeakRSS(interval=0.002) as m_ws:
            dsnot(w, stats, mask, cfg)
        ws_bytes_per_weight = m_ws.delta_mb * 2**20 / w.numel()
        log(f"dsnot workspace on {big_name} {tuple(w.shape)}: {m_ws.delta_mb:.0f} MiB = {ws_bytes_per_weight:.1f} bytes/weight")
        del w, stats, mask
    peak_total = max(p["peak_rss_mb"] for p in phases)
    return {
        "phases": phases, "dsnot_workspace": {"layer": big_name, "delta_mb": m_ws.delta_mb, "bytes_per_weight": ws_bytes_per_weight},
        "build_seconds": m_build.seconds, "rss_before_model_mb": base_rss, "peak_rss_mb": peak_total,
    }  # fmt: skip


def extrapolate(args, measured: dict) -> dict:
    phases = [p for p in measured["phases"] if p["block"] is not None]
    per_block = {}
    for name in ("statistics", "wanda", "dsnot_attention", "dsnot_mlp_not_applied", "re-forward", "statistics+hessians"):
        vals = [p["seconds"] for p in phases if p["phase"] == name]
        if vals:
            per_block[name] = sum(vals) / len(vals)
    capture = next(p["seconds"] for p in measured["phases"] if p["phase"] == "capture")
    p_lin = sum(r * c for r, c in param_counts(args.hidden, args.intermediate, args.heads, 1, args.vocab)["linear_shapes"])
    scale = forward_flops(p_lin, args.hidden, args.target_nsamples * args.target_seqlen, args.target_seqlen) / forward_flops(
        p_lin, args.hidden, args.nsamples * args.seqlen, args.seqlen
    )
    token_scale = args.target_nsamples * args.target_seqlen / (args.nsamples * args.seqlen)
    target = {
        "statistics": per_block["statistics"] * scale,
        "wanda": per_block["wanda"],
        "dsnot_attention": per_block["dsnot_attention"],
        "re-forward": per_block["re-forward"] * scale,
    }
    if "statistics+hessians" in per_block:
        target["statistics+hessians"] = per_block["statistics+hessians"] * scale
    blocks = args.target_blocks
    totals = {
        "measured_calibration": {
            "capture": capture,
            **{k: v * blocks for k, v in per_block.items()},
        },
        "target_calibration": {"capture": capture * token_scale, **{k: v * blocks for k, v in target.items()}},
    }
    for t in totals.values():
        t["pipeline_wanda_dsnot_official"] = t["capture"] + t["statistics"] + t["wanda"] + t["dsnot_attention"] + t["re-forward"]
        if (
            "statistics+hessians" in t
        ):  # prune_model's default record_errors=True accumulates Hessians (error metrics not included)
            t["pipeline_with_error_hessians"] = t["pipeline_wanda_dsnot_official"] - t["statistics"] + t["statistics+hessians"]
    return {"per_block_measured_s": per_block, "forward_flop_scale": scale, "token_scale": token_scale,
            "per_block_target_s": target, "totals_s": totals, "blocks": blocks}  # fmt: skip


def markdown(result: dict) -> str:
    a = result["args"]
    ex = result["extrapolation"]
    lines = [
        "# LLaMA-7B without the weights: per-block time and memory (generated)",
        "",
        f"Generated by `{result['command']}` ({result['finished']}); torch {result['torch']}, "
        f"{result['threads']} threads, load average {result['load_start']} -> {result['load_end']}. "
        f"Random {a['hidden']}/{a['intermediate']}/{a['heads']} LLaMA, {a['blocks']} blocks, {a['dtype']}, "
        f"calibration {a['nsamples']} x {a['seqlen']} random tokens, batch {a['batch_size']}, Wanda {a['sparsity']:.0%} + DSnoT official (T=50).",
        "",
        "## Measured per block (CPU)",
        "",
        "| block | phase | seconds | peak RSS MiB | peak above phase start MiB |",
        "|---|---|---|---|---|",
    ]
    for p in result["measured"]["phases"]:
        lines.append(
            f"| {'' if p['block'] is None else p['block']} | {p['phase']} | {p['seconds']:.2f} | {p['peak_rss_mb']:.0f} | {p['delta_mb']:.0f} |"
        )
    ws = result["measured"]["dsnot_workspace"]
    lines += [
        "",
        f"DSnoT workspace on `{ws['layer']}`: {ws['delta_mb']:.0f} MiB above its inputs, {ws['bytes_per_weight']:.1f} bytes per weight (fp32 inside).",
        "",
        f"## Extrapolated to {ex['blocks']} blocks (CPU, this machine)",
        "",
        f"Forward phases scale by the forward FLOPs (x{ex['forward_flop_scale']:.1f} for {a['target_nsamples']} x {a['target_seqlen']} tokens); "
        "pruning phases do not depend on the calibration size.",
        "",
        f"| phase | {a['nsamples']} x {a['seqlen']} calibration, s | {a['target_nsamples']} x {a['target_seqlen']} calibration, s |",
        "|---|---|---|",
    ]
    m, t = ex["totals_s"]["measured_calibration"], ex["totals_s"]["target_calibration"]
    for k in t:
        lines.append(f"| {k} | {m[k]:.0f} | {t[k]:.0f} |")
    if "dsnot_mlp_not_applied" in m:
        lines.append(
            f"| (DSnoT on MLP layers too, paper preset: add) | {m['dsnot_mlp_not_applied']:.0f} | {m['dsnot_mlp_not_applied']:.0f} |"
        )
    w, d = t["wanda"], t["dsnot_attention"]
    lines += [
        "",
        f"Pruning only (forward passes excluded, as the paper's Table 3): Wanda {w:.0f} s, Wanda + DSnoT {w + d:.0f} s "
        f"(x{(w + d) / w:.2f}); paper on an A100: Wanda {PAPER_SECONDS['wanda']} s, Wanda + DSnoT {PAPER_SECONDS['wanda+dsnot']} s "
        f"(x{PAPER_SECONDS['wanda+dsnot'] / PAPER_SECONDS['wanda']:.1f}), SparseGPT {PAPER_SECONDS['sparsegpt']} s.",
        "",
        "## Predicted GPU memory, fp16, 128 x 2048 calibration (arithmetic, parameters counted on the meta device)",
        "",
        "Peaks are sums of what is alive together: weights + one block's inputs and outputs + one batch's forward "
        "workspace (SDPA) + statistics (+ Hessians) + the pruning workspace of the largest layer. `whole_model`: all "
        "weights on the GPU (the reference code); `block_offload`: one block at a time (this pipeline, `--device cuda`). "
        "`with_error_hessians`: the pipeline's default `record_errors=True` accumulates a Hessian per linear for every method.",
        "",
    ]
    for plan in result["memory_plans"]:
        c = plan["components_gib"]
        lines += [f"### LLaMA-{plan['model']} ({plan['params']['total'] / 1e9:.2f} B parameters, batch {plan['batch']})", "",
                  "| component | GiB |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v:.2f} |" for k, v in c.items()]
        lines += ["", "| predicted peak | GiB |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in plan["peaks_gib"].items()]
        lines.append("")
    chk = result["sanity_check"]
    lines += [
        "## Sanity check of the arithmetic on this run",
        "",
        f"The same formulas for the simulated model ({a['blocks']} blocks, {a['dtype']}, {a['nsamples']} x {a['seqlen']}, whole model resident) "
        f"predict {chk['predicted_mb']:.0f} MiB above the interpreter; measured peak RSS above the interpreter: {chk['measured_mb']:.0f} MiB "
        f"(ratio {chk['ratio']:.2f}; RSS also holds allocator caches and the unused LM head).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--no-hessian-pass", dest="hessian_pass", action="store_false", help="skip timing statistics with Hessians")
    p.add_argument("--target-blocks", type=int, default=32)
    p.add_argument("--target-nsamples", type=int, default=128)
    p.add_argument("--target-seqlen", type=int, default=2048)
    p.add_argument("--plan-batch", type=int, default=8, help="calibration batch for the GPU memory plan (pipeline default 8)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.intermediate, args.heads, args.vocab, args.seqlen = 256, 688, 4, 1000, 128
        if args.out_dir == ROOT / "bench" / "results":
            args.out_dir = ROOT / "bench" / "results" / "quick"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    load_start = [round(x, 2) for x in os.getloadavg()]
    measured = run(args)
    ex = extrapolate(args, measured)
    ws = measured["dsnot_workspace"]["bytes_per_weight"]
    plans = [
        memory_plan(name, *dims, args.target_nsamples, args.target_seqlen, args.plan_batch, 2, ws) for name, dims in LLAMA.items()
    ]
    # Sanity check: the arithmetic on the simulated run itself (CPU, its dtype, whole model resident).
    el = 4 if args.dtype == "float32" else 2
    sim = memory_plan("sim", args.hidden, args.intermediate, args.heads, args.blocks, args.vocab, args.nsamples, args.seqlen,
                      args.batch_size, el, ws)  # fmt: skip
    c = sim["components_gib"]
    predicted_mb = 1024 * (
        c["weights_whole_model"] + c["block_inputs"] + c["block_outputs"] + c["forward_workspace_one_batch"]
        + c["statistics_fp32"] + max(c["hessians_fp32"] if args.hessian_pass else 0.0, c["dsnot_workspace_largest_layer"])
    )  # fmt: skip
    measured_mb = measured["peak_rss_mb"] - measured["rss_before_model_mb"]
    result = {
        "command": " ".join(["python", *[a if i else "bench/llama7b_sim.py" for i, a in enumerate(sys.argv)]]),
        "finished": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "measured": measured, "extrapolation": ex, "memory_plans": plans,
        "sanity_check": {"predicted_mb": predicted_mb, "measured_mb": measured_mb, "ratio": measured_mb / predicted_mb},
        "paper_seconds_llama7b_a100": PAPER_SECONDS,
    }  # fmt: skip
    atomic_write_text(args.out_dir / "llama7b_sim.json", json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    atomic_write_text(args.out_dir / "llama7b_sim.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
