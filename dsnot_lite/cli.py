"""The command line: ``python -m dsnot_lite {run,demo,study,figures} ...``.

* ``run``: prune a causal LM block by block (optionally refined by DSnoT or the exact refiner),
  score it on WikiText-2 (and zero-shot tasks), write one JSON result and a results-table row;
* ``demo``: dense, Wanda and both refiners side by side on the bundled model (``make demo``);
* ``study``: the resumable "when does refinement help?" study (``study.refinement``);
* ``figures``: the paper-style figures and tables from a results table (``study.paper_figures``).

Every option has the name of the setting it sets (``--var-floor`` is ``RunSpec.dsnot.var_floor``).
Bad input ends with one line ``error: <problem>; fix: <fix>`` on stderr and exit code 2 before
any model is loaded or any file written: values, task names (lm-eval's registry), the model folder
(config, weights, tokenizer), the data files (every JSON line, documents long enough for the
windows) and every output location (a file is created and removed there). A write that fails
later (a full disk) ends with one such line and exit code 1, earlier files untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAULT = 1  # the machine failed us (a full disk), not the input
CRITERIA = ("eq2", "eq3", "wanda", "magnitude")  # core.dsnot.GROW_CRITERIA, without importing torch
PERCDAMP = 0.01  # core.refit.PERCDAMP, without importing torch
TOLERANCE = 1e-3  # core.refit.TOLERANCE, without importing torch
PRECISIONS = ("float32", "bf16")  # core.refit.PRECISIONS, without importing torch
DSNOT_KNOBS = {"T": "--T", "eps": "--eps", "grow": "--grow", "prune": "--prune", "var_power": "--var-power",
               "var_floor": "--var-floor", "sign_check": "--sign-check", "T_width": "--T-width"}  # fmt: skip


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block, naming this command
        raise UsageError(f"{message}; fix: see `python -m {self.prog} --help`")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="prune a model and score it on WikiText-2")
    p.add_argument("--model", default="smollm2-135m", help="bundled name (smollm2-135m, gemma3-270m), local HF folder or hub id")
    p.add_argument("--method", default="wanda", choices=["dense", "magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=None, help="fraction of zeros per layer, in [0, 1)")
    p.add_argument("--nm", default=None, help="N:M semi-structured sparsity, e.g. 2:4")
    p.add_argument("--refiner", default=None, choices=["dsnot", "exact", "dsnot+exact"], help="refine the initial mask")
    p.add_argument("--dsnot", action="store_true", help="short for --refiner dsnot")
    p.add_argument("--preset", default="official", choices=["official", "paper"], help="DSnoT preset")
    p.add_argument(
        "--no-weight-update",
        action="store_true",
        help="SparseGPT without a refiner: saliency mask only, no OBS weight update (the refiners' starting point)",
    )
    p.add_argument(
        "--refit",
        action="store_true",
        help="after the pruner and any refiner, re-fit the kept weights by least squares on the calibration inputs",
    )
    p.add_argument(
        "--refit-target",
        default="layer",
        choices=["layer", "dense"],
        help="what --refit fits: the layer's own outputs (layer) or the dense model's, on its own inputs (dense)",
    )
    p.add_argument(
        "--refit-damping",
        type=float,
        default=PERCDAMP,
        help="--refit's damping lambda as a fraction of the mean of diag G (default: SparseGPT's 0.01)",
    )
    p.add_argument(
        "--refit-tolerance",
        type=float,
        default=TOLERANCE,
        help="--refit's conjugate gradients stop once an iteration gains less than this share of all gained "
        "(default 0.001; 0.005 takes about 0.8x the time: bench/results/refit_tolerance.md)",
    )
    p.add_argument(
        "--refit-precision",
        default="float32",
        choices=PRECISIONS,
        help="--refit's matrix products: float32, or bf16 (0.76x the time on a CPU with AMX bf16; likely slower without; "
        "bench/results/refit_precision.md)",
    )
    knobs = p.add_argument_group("refiner knobs (each overrides the preset; default: the preset's)")
    knobs.add_argument("--T", type=int, default=None, help="most swaps per row, DSnoT and exact (paper: 50)")
    knobs.add_argument("--eps", type=float, default=None, help="DSnoT: stop a row at |E[Delta]| <= eps (paper: 0.1)")
    knobs.add_argument("--grow", default=None, choices=CRITERIA, help="DSnoT grow criterion (paper Table 7; method: eq2)")
    knobs.add_argument("--prune", default=None, choices=CRITERIA, help="DSnoT prune criterion (paper Table 7; method: eq3)")
    knobs.add_argument("--var-power", type=float, default=None, help="DSnoT: exponent of Var(A) in Eq. 2 (R10: 1)")
    knobs.add_argument(
        "--var-floor", type=float, default=None, help="DSnoT: Eq. 2 divides by max(Var, var_floor x median Var) (0: off)"
    )
    knobs.add_argument(
        "--sign-check", default=None, choices=["on", "off"], help="DSnoT, R4/R5: stop a row before its error changes sign"
    )
    knobs.add_argument("--T-width", type=int, default=None, help="DSnoT: scale T to each layer, T x C_in / T_width (e.g. 4096)")
    knobs.add_argument("--shortlist", default=None, help="exact: candidates per side scored in pairs, or 'all' (default 8)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (paper: 128)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration and evaluation window (paper: 2048)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows (quick run)")
    p.add_argument("--eval-split", default="test", choices=["test", "validation"], help="WikiText-2 split scored")
    p.add_argument("--blocks", type=int, default=None, help="prune only the first N decoder blocks")
    p.add_argument(
        "--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation (eager: the reference's numerics)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per block forward")
    p.add_argument("--eval-batch-size", type=int, default=4, help="evaluation windows per forward")
    p.add_argument(
        "--record-errors", action="store_true", help="record each layer's output error before/after (needs its Gram matrix)"
    )
    p.add_argument(
        "--tasks", default=None, help="zero-shot tasks, comma-separated (lm-evaluation-harness; offline: wikitext2_lastword)"
    )
    p.add_argument("--tasks-limit", type=int, default=None, help="documents per zero-shot task (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]; blocks move to it one at a time")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="weights (default fp32 on CPU, fp16 on CUDA)"
    )
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data (else $DSNOT_LITE_DATA)")
    p.add_argument("--output", default=None, help="result JSON (default results/<run name>.json)")
    p.add_argument("--results-table", default="results/results.csv", help="CSV table the run's row is appended to")
    p.add_argument("--no-table", action="store_true", help="do not append to the results table")
    p.add_argument("--save-model", default=None, metavar="DIR", help="also write the pruned model folder (safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="the resumable 'when does refinement help?' study on a bundled model")
    p.add_argument("stage", nargs="*", default=[], help="stages to run (default: all; see --list)")
    p.add_argument("--model", default="smollm2-135m", help="bundled model or folder")
    p.add_argument("--out", default=None, help="output folder (default: studies/refinement-<model> in the checkout)")
    p.add_argument("--list", action="store_true", help="list the stages and their runs, compute nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the stored runs")
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="dense, Wanda, + DSnoT, + exact refiner side by side on the bundled model (cached)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="paper-style figures and tables from a results table")
    p.add_argument(
        "--table",
        default=None,
        help="results table (CSV) to read (default: the committed study's, studies/refinement-smollm2-135m/results.csv)",
    )
    p.add_argument("--out", default=None, help="folder for the PNG figures and Markdown tables (default: figures/)")
    p.set_defaults(func=cmd_figures)


def run_spec(args):
    """The ``RunSpec`` of parsed ``run`` arguments (validation lives in ``RunSpec``)."""
    from dsnot_lite.runs.spec import RunSpec, parse_nm

    nm = parse_nm(args.nm)
    refiner = args.refiner or ("dsnot" if args.dsnot else None)
    if args.dsnot and args.refiner not in (None, "dsnot"):
        raise UsageError(f"--dsnot means --refiner dsnot, but --refiner {args.refiner} was given; fix: give one of them")
    if nm is not None and args.sparsity is not None and abs(args.sparsity - nm[0] / nm[1]) > 1e-9:
        raise UsageError(f"--sparsity {args.sparsity} contradicts --nm {args.nm}; fix: give only one of them")
    if args.method != "dense" and nm is None and args.sparsity is None:
        raise UsageError(f"--method {args.method} needs --sparsity or --nm; fix: e.g. --sparsity 0.6")
    return RunSpec(
        model=args.model, method=args.method, sparsity=args.sparsity or 0.0, nm=nm, refiner=refiner,
        preset=args.preset, dsnot=_dsnot_config(args, refiner), exact=_exact_config(args, refiner),
        weight_update=not args.no_weight_update, refit=args.refit, refit_target=args.refit_target,
        refit_damping=args.refit_damping, refit_tolerance=args.refit_tolerance,
        refit_precision=args.refit_precision, nsamples=args.nsamples,
        seqlen=args.seqlen, seed=args.seed,
        max_windows=args.max_windows, eval_split=args.eval_split, blocks=args.blocks, attn=args.attn,
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, record_errors=args.record_errors,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else (),
        tasks_limit=args.tasks_limit, eval_batch_size=args.eval_batch_size, data_dir=args.data_dir,
    )  # fmt: skip


def _dsnot_config(args, refiner: str | None):
    """The preset with the DSnoT knobs given on the command line, or None when none was given."""
    given = {k: getattr(args, k) for k in DSNOT_KNOBS if k != "T" and getattr(args, k) is not None}
    if args.T is not None and refiner and "dsnot" in refiner:
        given["T"] = args.T
    if not given:
        return None
    if not refiner or "dsnot" not in refiner:
        flags = ", ".join(DSNOT_KNOBS[k] for k in given)
        raise UsageError(f"DSnoT options ({flags}) given without --refiner dsnot; fix: add --dsnot or drop them")
    from dsnot_lite.core.dsnot import preset

    if "sign_check" in given:
        given["sign_check"] = given["sign_check"] == "on"
    return dataclasses.replace(preset(args.preset), **given)


def _exact_config(args, refiner: str | None):
    from dsnot_lite.core.exact import ExactConfig

    uses_exact = bool(refiner) and "exact" in refiner
    if args.shortlist is not None and not uses_exact:
        raise UsageError("--shortlist is an option of the exact refiner; fix: add --refiner exact or drop it")
    changes = {}
    if args.shortlist is not None:
        if args.shortlist != "all" and not args.shortlist.isdigit():
            raise UsageError(f"--shortlist {args.shortlist!r} must be a positive integer or 'all'; fix: e.g. --shortlist 8")
        changes["shortlist"] = None if args.shortlist == "all" else int(args.shortlist)
    if args.T is not None and uses_exact:
        changes["T"] = args.T
    if args.T is not None and not refiner:
        raise UsageError("--T sets the refiners' swaps per row, but no refiner was chosen; fix: add --refiner or drop --T")
    return ExactConfig(**changes)


def _preflight(args, spec) -> Path:
    """Checks that load no model: output locations, the model folder, data, GPU, task names. Returns the output path."""
    from dsnot_lite.lm import data
    from dsnot_lite.lm.models import check_model
    from dsnot_lite.runs.io import check_writable

    output = Path(args.output) if args.output else Path("results") / f"{spec.name()}.json"
    check_writable(output, "--output")
    if not args.no_table:
        check_writable(args.results_table, "--results-table")
    if args.save_model:
        if Path(args.save_model).exists():
            raise UsageError(f"--save-model {args.save_model!r} already exists; fix: choose a new folder")
        check_writable(Path(args.save_model), "--save-model", folder=True)
    check_model(spec.model)
    data.check_data(spec.data_dir, spec.seqlen)
    if spec.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec.device} but this torch build sees no CUDA GPU; fix: use --device cpu")
    if spec.tasks:
        from dsnot_lite.lm.zeroshot import check_tasks

        check_tasks(spec.tasks, spec.data_dir)
    return output


def cmd_run(args) -> int:
    spec = run_spec(args)
    output = _preflight(args, spec)
    from dsnot_lite.runs import schema
    from dsnot_lite.runs.runner import run

    saved: dict = {}

    def save(loaded) -> None:
        if args.save_model:
            from dsnot_lite.lm.models import save_model

            loaded.model.to("cpu")
            saved.update(save_model(loaded, args.save_model))

    result = run(spec, progress=not args.no_progress, after_eval=save)
    result["saved_model"] = saved or None
    schema.save_result(result, output, None if args.no_table else args.results_table)
    quick = "" if result["full_eval"] else f" (QUICK: first {result['windows']} of {result['total_windows']} windows)"
    print(f"{result['model']} {result['label']} sparsity {result['sparsity']:.3g}: WikiText-2 {spec.eval_split} "
          f"ppl {result['ppl']:.4f} at seqlen {spec.seqlen}{quick}; {result['seconds']['total']:.1f} s, "
          f"peak {result['peak_memory_mb']:.0f} MB -> {output}")  # fmt: skip
    for task, metrics in (result["zero_shot"] or {}).items():
        print(f"  zero-shot {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def cmd_study(args) -> int:
    from dsnot_lite.lm import data
    from dsnot_lite.lm.models import check_model
    from dsnot_lite.runs import workspace
    from dsnot_lite.runs.io import check_writable
    from dsnot_lite.study import design, refinement

    if not args.list:
        check_writable(Path(args.out) if args.out else workspace.study_dir(args.model), "--out", folder=True)
    if not (args.list or args.report_only):
        check_model(args.model)
        data.check_data(args.data_dir, design.base_spec(args.model, args.data_dir).seqlen)
    return refinement.main(args)


def cmd_demo(args) -> int:
    from dsnot_lite.lm import data
    from dsnot_lite.lm.models import check_model
    from dsnot_lite.runs import workspace
    from dsnot_lite.runs.io import check_writable
    from dsnot_lite.study.demo import QUICK, demo

    fix = f"set ${workspace.ENV_VAR} to a folder you can write to"
    check_writable(workspace.results_dir("demo"), "the demo's results folder", folder=True, fix=fix)
    check_model(QUICK.model)
    data.check_data(QUICK.data_dir, QUICK.seqlen)
    print(demo(progress=not args.no_progress))
    return 0


def cmd_figures(args) -> int:
    from dsnot_lite.runs import workspace
    from dsnot_lite.runs.io import check_writable
    from dsnot_lite.study import paper_figures

    table = args.table or workspace.study_dir() / "results.csv"
    out = args.out or workspace.figures_dir()
    check_writable(out, "--out", folder=True)
    paper_figures.load_table(table)  # a missing or unreadable table fails here, before anything is drawn
    paths = paper_figures.write_all(table, out)
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsnot_lite", description="DSnoT: training-free refinement of pruned LLM masks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_run, _add_demo, _add_study, _add_figures):
        add(sub)
    return parser


def _quiet_loading_bars() -> None:
    """``--no-progress`` also silences the Hugging Face bars (``Loading weights``, downloads)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is imported
    if "transformers" in sys.modules:  # already imported (a caller in the same process)
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}; fix: see `python -m dsnot_lite {args.command} --help`")
        if getattr(args, "no_progress", False):
            _quiet_loading_bars()
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # bad input found by the library, before any long work
        return EXIT_USAGE
    except OSError as exc:
        from dsnot_lite.runs.io import WriteError

        if not isinstance(exc, WriteError):
            raise
        print(f"error: {exc}", file=sys.stderr)  # a write failed (e.g. no space left): what was written before stays
        return EXIT_FAULT


if __name__ == "__main__":
    sys.exit(main())
