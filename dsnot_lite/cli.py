"""The command line: ``python -m dsnot_lite run ...``.

Subcommands:

* ``run``: prune a causal LM block by block (optionally with DSnoT) and measure WikiText-2
  perplexity; writes one JSON result (atomically) and appends a row to the results table.
* ``figures`` (slot, owned elsewhere): registered when a module ``dsnot_lite.figures`` exists
  and defines ``register_cli(subparsers)``.

Bad input (sparsity outside [0, 1), a malformed ``--nm``, a missing data or model folder, ...)
ends with a one-line ``error: <problem>; fix: <fix>`` on stderr and exit code 2, before any
output file is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

EXIT_USAGE = 2
OPTIONAL_SUBCOMMANDS = ("figures",)
GROW_CHOICES = PRUNE_CHOICES = ("eq2", "eq3", "wanda", "magnitude")  # dsnot.GROW_CRITERIA, without importing torch
DSNOT_KNOBS = {"max_cycle_time": "--T", "update_threshold": "--eps", "grow": "--grow", "prune": "--prune",
               "pow_of_var_regrowing": "--pow-of-var", "sign_check": "--sign-check"}  # DSnoTConfig field: flag


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{message}; fix: see `python -m dsnot_lite {self.prog.split()[-1]} --help`")


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: N zeros in every block of M weights, 0 < N < M."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--nm {text!r} is not of the form N:M; fix: e.g. --nm 2:4")
    n, m = (int(p) for p in parts)
    if not 0 < n < m:
        raise UsageError(f"--nm {text!r} needs 0 < N < M (N zeros per M weights); fix: e.g. --nm 2:4")
    return n, m


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="prune a model and measure WikiText-2 perplexity")
    p.add_argument("--model", default="smollm2-135m", help="bundled name (smollm2-135m), local HF folder or hub id")
    p.add_argument("--method", default="wanda", choices=["dense", "magnitude", "wanda", "sparsegpt"])
    p.add_argument("--dsnot", action="store_true", help="refine the initial mask with DSnoT")
    p.add_argument("--no-weight-update", action="store_true",
                   help="SparseGPT without DSnoT: saliency mask only, no OBS weight update (DSnoT's starting point)")
    p.add_argument("--preset", default="official", choices=["official", "paper"], help="DSnoT preset")
    knobs = p.add_argument_group("DSnoT knobs (with --dsnot; each overrides the preset, default: the preset's)")
    knobs.add_argument("--T", type=int, default=None, dest="max_cycle_time", help="max swaps per row (paper: 50)")
    knobs.add_argument("--eps", type=float, default=None, dest="update_threshold", help="stop threshold on |E[Delta]| (paper: 0.1)")
    knobs.add_argument("--grow", default=None, choices=GROW_CHOICES, help="grow criterion (paper Table 7; method: eq2)")
    knobs.add_argument("--prune", default=None, choices=PRUNE_CHOICES, help="prune criterion (paper Table 7; method: eq3)")
    knobs.add_argument("--pow-of-var", type=float, default=None, dest="pow_of_var_regrowing",
                       help="exponent of Var(A) in Eq. 2 (R10: 1)")
    knobs.add_argument("--sign-check", default=None, choices=["on", "off"], help="R4/R5: stop a row before its error changes sign")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of zeros per layer, in [0, 1)")
    p.add_argument("--nm", default=None, help="N:M semi-structured sparsity, e.g. 2:4")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (paper: 128)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration and eval window (paper: 2048)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows (quick run)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per block forward")
    p.add_argument("--eval-batch-size", type=int, default=4, help="WikiText-2 windows per evaluation forward")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]; blocks move to it one at a time")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="model weights (default fp32 on CPU, fp16 on CUDA)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data (else $DSNOT_LITE_DATA)")
    p.add_argument("--output", default=None, help="result JSON (default results/<run name>.json)")
    p.add_argument("--results-table", default="results/results.csv", help="CSV table the run's row is appended to")
    p.add_argument("--no-table", action="store_true", help="do not append to the results table")
    p.add_argument("--save-model", default=None, metavar="DIR", help="also write the pruned model folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def _run_config(args):
    """Validate ``run`` arguments (no heavy work) and build the RunConfig."""
    from dsnot_lite import data as data_mod
    from dsnot_lite.experiment import RunConfig
    from dsnot_lite.pipeline import PruneSpec

    nm = parse_nm(args.nm)
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UsageError(f"--sparsity {args.sparsity} is outside [0, 1); fix: e.g. --sparsity 0.6 for 60% zeros")
    if args.method == "dense":
        if args.dsnot:
            raise UsageError("--dsnot refines a pruned mask, but --method is dense; fix: choose another --method")
        sparsity = 0.0
    elif nm is not None:
        if args.sparsity is not None and abs(args.sparsity - nm[0] / nm[1]) > 1e-9:
            raise UsageError(f"--sparsity {args.sparsity} contradicts --nm {args.nm}; fix: give only one of them")
        sparsity = nm[0] / nm[1]
    elif args.sparsity is None:
        raise UsageError(f"--method {args.method} needs --sparsity or --nm; fix: e.g. --sparsity 0.6")
    else:
        sparsity = args.sparsity
    for flag, value in (
        ("--nsamples", args.nsamples), ("--batch-size", args.batch_size), ("--eval-batch-size", args.eval_batch_size)
    ):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}; fix: pass a positive number")
    if args.seqlen < 2:
        raise UsageError(f"--seqlen must be >= 2, got {args.seqlen}; fix: e.g. --seqlen 512")
    if args.max_windows is not None and args.max_windows < 1:
        raise UsageError(f"--max-windows must be >= 1, got {args.max_windows}; fix: pass a positive number or omit it")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device} but this torch build sees no CUDA GPU; fix: use --device cpu")
    elif args.device != "cpu":
        raise UsageError(f"--device {args.device!r} is not supported; fix: use cpu or cuda[:i]")
    if args.save_model and Path(args.save_model).exists():
        raise UsageError(f"--save-model {args.save_model!r} already exists; fix: choose a new folder")
    try:
        data_mod.resolve_data_dir(args.data_dir)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.no_weight_update and (args.method != "sparsegpt" or args.dsnot):
        raise UsageError("--no-weight-update applies only to --method sparsegpt without --dsnot; fix: drop it")
    spec = PruneSpec(args.method, sparsity, nm, args.dsnot, args.preset, _dsnot_config(args),
                     weight_update=not args.no_weight_update)
    return RunConfig(
        model=args.model, spec=spec, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
        max_windows=args.max_windows, data_dir=args.data_dir, device=args.device, dtype=args.dtype,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, save_model=args.save_model,
        progress=not args.no_progress,
    )  # fmt: skip


def _dsnot_config(args):
    """The preset with the DSnoT knobs given on the command line, or None when none was given."""
    given = {k: getattr(args, k) for k in DSNOT_KNOBS if getattr(args, k) is not None}
    if not given:
        return None
    if not args.dsnot:
        flags = ", ".join(DSNOT_KNOBS[k] for k in given)
        raise UsageError(f"DSnoT options ({flags}) given without --dsnot; fix: add --dsnot or drop them")
    import dataclasses

    from dsnot_lite.dsnot import preset

    if "sign_check" in given:
        given["sign_check"] = given["sign_check"] == "on"
    try:
        return dataclasses.replace(preset(args.preset), **given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args) -> int:
    from dsnot_lite.experiment import default_output, run_experiment
    from dsnot_lite.results import append_table, write_json

    cfg = _run_config(args)
    output = Path(args.output) if args.output else default_output(cfg)
    try:
        result = run_experiment(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:  # input problems found while running
        raise UsageError(str(exc)) from None
    result["output"] = str(output)
    write_json(result, output)
    if not args.no_table:
        append_table(result, args.results_table)
    quick = "" if result["full_eval"] else f" (QUICK: first {result['windows']} of {result['total_windows']} windows)"
    print(
        f"{result['model']} {result['method']}{' + DSnoT ' + result['preset'] if result['dsnot'] else ''} "
        f"sparsity {result['sparsity']:.3g}{' ' + result['nm'] if result['nm'] else ''}: "
        f"WikiText-2 ppl {result['ppl']:.4f} at seqlen {result['seqlen']}{quick}; "
        f"{result['seconds']['total']:.1f} s, peak {result['peak_memory_mb']:.0f} MB -> {output}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsnot_lite", description="DSnoT: training-free refinement of pruned LLM masks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_parser(sub)
    for name in OPTIONAL_SUBCOMMANDS:  # slots other modules fill in
        try:
            module = importlib.import_module(f"dsnot_lite.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dsnot_lite.{name}":
                raise
            continue
        if hasattr(module, "register_cli"):
            module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
