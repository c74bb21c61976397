"""The paper-style figures and tables, made from a results table (``python -m dsnot_lite figures``).

The table is what ``python -m dsnot_lite run`` appends to and what the study writes
(``studies/refinement-smollm2-135m/results.csv``). Rows are picked by one protocol (the most common
calibration and evaluation setting among pruned runs; WikiText-2 test, default numerics, seed 0),
so every cell compares like with like; the setting is written under each table. Our numbers and
the paper's (``study.paper``) are always in separate, labelled panels or columns.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dsnot_lite.plots.layer_plots import criterion_heatmap
from dsnot_lite.plots.model_plots import flips_per_layer, layer_error_change, layer_errors
from dsnot_lite.plots.style import AFTER, BEFORE, PALETTE, log_axis, new_figure, room_above_bars, save_figure, save_text
from dsnot_lite.study.paper import (
    METHOD_ORDER,
    PAPER_NM_LLAMA1,
    PAPER_SOURCE,
    PAPER_SPARSITY_LLAMA1,
    PAPER_TABLE1,
    SPARSEGPT_NOTE,
    paper_table7_frame,
)  # fmt: skip

PROTOCOL = ("nsamples", "seqlen", "max_windows", "eval_split", "attn", "blocks")
COLUMNS = ((None, "initial"), ("dsnot", "w. DSnoT"), ("exact", "w. exact"))  # (refiner, heading)
FILL_HINT = (
    "fix: fill it with `python -m dsnot_lite study` (the committed table is studies/refinement-smollm2-135m/results.csv) "
    "or `python -m dsnot_lite run --method wanda --dsnot --sparsity 0.6` (each run appends one row)"
)


class TableError(ValueError):
    """The results table is missing or has no usable rows (the message says how to fill it)."""


def load_table(path: str | os.PathLike):
    """The results table as a DataFrame, one row per configuration (latest wins), with the DSnoT
    criteria (``grow``, ``prune``) and other departures from the defaults (``knobs``) as columns."""
    import pandas as pd

    from dsnot_lite.runs.schema import read_table

    path = Path(path)
    if not path.is_file():
        raise TableError(f"results table {path} does not exist; {FILL_HINT}")
    try:
        frame = read_table(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"results table {path} is not a readable CSV table ({str(exc).strip()}); {FILL_HINT}") from None
    need = {"model", "method", "refiner", "sparsity", "ppl", "key"}
    if frame.empty or not need <= set(frame.columns):
        missing = sorted(need - set(frame.columns))
        what = "has no rows" if not missing or frame.empty else f"lacks the columns {missing}"
        raise TableError(f"results table {path} {what}; {FILL_HINT}")
    frame = frame.sort_values("finished_at", na_position="first", kind="stable").drop_duplicates("key", keep="last")
    frame["weight_update"] = frame["weight_update"].astype(str).str.lower().isin(["true", "1"])
    frame["grow"] = [c.get("grow") if c else None for c in frame["dsnot"]]
    frame["prune"] = [c.get("prune") if c else None for c in frame["dsnot"]]
    frame["knobs"] = [_other_knobs(d, p, e) for d, p, e in zip(frame["dsnot"], frame["preset"], frame["exact"])]
    return frame.reset_index(drop=True)


def protocol_rows(frame):
    """Rows of the most common protocol among pruned test-set runs (seed 0, default numerics) and
    the dense run evaluated the same way: one comparable set."""
    test = frame[(frame["eval_split"] == "test") & (frame["attn"] == "sdpa") & (frame["seed"] == 0)]
    pruned = test[test["method"] != "dense"]
    if pruned.empty:
        return test

    def setting(frame, columns) -> list[tuple]:
        return [tuple(str(v) for v in row) for row in frame[list(columns)].astype(object).itertuples(index=False)]

    from collections import Counter

    common = Counter(setting(pruned, PROTOCOL)).most_common(1)[0][0]
    evaluation = ("seqlen", "max_windows", "eval_split")
    same_eval = tuple(common[PROTOCOL.index(c)] for c in evaluation)
    same = [s == common for s in setting(test, PROTOCOL)]
    dense = [m == "dense" and s == same_eval for m, s in zip(test["method"], setting(test, evaluation))]
    return test[[a or b for a, b in zip(same, dense)]]


def _other_knobs(config: dict | None, preset_name, exact: dict | None) -> str:
    """Refiner settings other than grow/prune where a run departs from its defaults, e.g. ``"T=200"``."""
    from dsnot_lite.core.dsnot import preset_overrides
    from dsnot_lite.core.exact import ExactConfig
    from dsnot_lite.runs.spec import exact_overrides

    changed = preset_overrides(config, preset_name) if config and isinstance(preset_name, str) else {}
    knobs = [f"{k}={v}" for k, v in sorted(changed.items()) if k not in ("grow", "prune")]
    knobs += [f"exact.{k}={v}" for k, v in exact_overrides(ExactConfig(**exact)).items()] if exact else []
    return ", ".join(knobs)


def is_preset_default(row) -> bool:
    """Runs of each refiner as its defaults define it (grow Eq. 2, prune Eq. 3, the preset's T,
    epsilon, ...), or without a refiner."""
    grow, prune = row["grow"], row["prune"]
    return (_missing(grow) or grow == "eq2") and (_missing(prune) or prune == "eq3") and not row.get("knobs")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _paper_layout(frame):
    """Default-setting rows where SparseGPT without a refiner is the full method (with its weight
    update), as in the paper; mask-only SparseGPT is left out."""
    frame = frame[frame.apply(is_preset_default, axis=1)]
    return frame[~((frame["method"] == "sparsegpt") & frame["refiner"].isna() & ~frame["weight_update"])]


def _pick(rows, refiner, preset: str = "official"):
    """The ppl of the run with this refiner (DSnoT: this preset), or None."""
    hit = rows[rows["refiner"].isna()] if refiner is None else rows[rows["refiner"] == refiner]
    if refiner == "dsnot":
        hit = hit[hit["preset"] == preset]
    return float(hit["ppl"].iloc[-1]) if len(hit) else None


def _fmt(v) -> str:
    """Our numbers: 2 decimals below 1000, else 3 significant digits (as the paper writes 4.80e3)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if abs(v) >= 1000:
        mantissa, exp = f"{v:.2e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{v:.2f}"


def _setting(frame) -> str:
    parts = []
    for col, name in (("nsamples", "calibration windows"), ("seqlen", "seqlen")):
        if col in frame and frame[col].notna().any():
            parts.append(f"{name} {', '.join(str(int(v)) for v in sorted(set(frame[col].dropna())))}")
    if "windows" in frame and frame["windows"].notna().any():
        pairs = sorted({(int(w), int(t)) for w, t in zip(frame["windows"], frame["total_windows"]) if w == w and t == t})
        parts.append("eval windows " + ", ".join(f"{w}" if w == t else f"first {w} of {t}" for w, t in pairs))
    return "; ".join(parts)


def main_table(frame, sparsity: float = 0.6) -> str:
    """Markdown: ours (per model) at ``sparsity`` unstructured, then the paper's Table 1 rows."""
    heads = " | ".join(f"{m} {h}" if r is None else h for m in METHOD_ORDER for r, h in COLUMNS)
    lines = [f"## WikiText-2 perplexity at {sparsity:.0%} unstructured sparsity (paper Table 1 layout)", "",
             "### Ours (from the results table; DSnoT with the `official` preset)", "",
             f"| model | dense | {heads} | setting |", "|" + "---|" * (3 + len(COLUMNS) * len(METHOD_ORDER))]  # fmt: skip
    sel = _paper_layout(frame)
    sel = sel[sel["nm"].isna()]
    for model in sorted(sel["model"].unique()):
        m = sel[sel["model"] == model]
        at = m[(m["sparsity"] - sparsity).abs() < 1e-9]
        cells = [_fmt(_pick(m[m["method"] == "dense"], None))]
        cells += [_fmt(_pick(at[at["method"] == method], r)) for method in METHOD_ORDER for r, _ in COLUMNS]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {_setting(m)} |")
    lines += ["", f"Note: {SPARSEGPT_NOTE}", "", f"### Paper ({PAPER_SOURCE}; not measured here)", "",
              "| model | dense | " + " | ".join(f"{m} | w. DSnoT" for m in METHOD_ORDER) + " |",
              "|" + "---|" * (2 + 2 * len(METHOD_ORDER))]  # fmt: skip
    for model, vals in PAPER_TABLE1.items():
        cells = [vals["dense"]] + [vals[(m, d)] for m in METHOD_ORDER for d in (False, True)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _perplexity_axes(ax, xlabel: str, bars: bool = False) -> None:
    """A log perplexity axis with its labels; for ``bars`` it starts at perplexity 1 (see ``_bars``)."""
    log_axis(ax)
    if bars:
        ax.set_ylim(bottom=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WikiText-2 perplexity (log scale" + (", bars from 1)" if bars else ")"))


def _bars(ax, x, values, labels, width, offset, color, hatch, label):
    """Bars rising from perplexity 1 (a perfect model): on a log axis a bar's height is then its mean
    token NLL, so bars compare honestly wherever the axis ends."""
    pos = x + offset
    ax.bar(pos, [v - 1.0 for v in values], width, bottom=1.0, color=color, hatch=hatch, label=label)
    for p, v, t in zip(pos, values, labels):
        if math.isfinite(v):
            ax.text(p, v, t, ha="center", va="bottom", fontsize=7, rotation=90)


def main_figure(frame, sparsity: float = 0.6):
    """Grouped bars: ours (left: initial, w. DSnoT, w. exact) and the paper's LLaMA rows (right)."""
    import numpy as np

    fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    sel = _paper_layout(frame)
    sel = sel[sel["nm"].isna() & ((sel["sparsity"] - sparsity).abs() < 1e-9)]
    x = np.arange(len(METHOD_ORDER))
    ax = axes[0, 0]
    model = sel["model"].value_counts().index[0] if len(sel) else None
    colors = {None: BEFORE, "dsnot": AFTER, "exact": PALETTE[2]}
    for j, (refiner, head) in enumerate(COLUMNS):
        vals = [_pick(sel[(sel["model"] == model) & (sel["method"] == m)], refiner) for m in METHOD_ORDER]
        vals = [np.nan if v is None else v for v in vals]
        _bars(ax, x, vals, [_fmt(v) for v in vals], 0.26, (j - 1) * 0.27, colors[refiner], None, head)
    ax.set_xticks(x, METHOD_ORDER)
    _perplexity_axes(ax, "initial pruning method", bars=True)
    room_above_bars(ax)
    ax.set_title(f"Ours: {model}, {sparsity:.0%} unstructured\n({_setting(sel) or 'no runs'})", fontsize=9)
    if model:
        ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, name in enumerate(("LLaMA-1 7B", "LLaMA-2 7B")):
        for j, refined in enumerate((False, True)):
            texts = [PAPER_TABLE1[name][(m, refined)] for m in METHOD_ORDER]
            _bars(ax, x, [float(t) for t in texts], texts, 0.2, (2 * i + j - 1.5) * 0.2, AFTER if refined else BEFORE,
                  "//" if i else None, f"{name}: {'w. DSnoT' if refined else 'initial'}")  # fmt: skip
    ax.set_xticks(x, METHOD_ORDER)
    _perplexity_axes(ax, "initial pruning method", bars=True)
    room_above_bars(ax)
    ax.set_title("Paper, 60% unstructured (quoted, not measured here)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("Does refinement lower perplexity after pruning? (paper Table 1)")
    return fig


def sparsity_figure(frame):
    """Perplexity vs sparsity for Wanda, + DSnoT and + exact: ours (left), the paper's LLaMA-1 7B (right)."""
    fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    ax = axes[0, 0]
    sel = _paper_layout(frame)
    sel = sel[sel["nm"].isna() & (sel["method"] == "wanda") & ((sel["refiner"] != "dsnot") | (sel["preset"] == "official"))]
    for i, (refiner, head) in enumerate(COLUMNS):
        q = (sel[sel["refiner"].isna()] if refiner is None else sel[sel["refiner"] == refiner]).sort_values("sparsity")
        if len(q):
            ax.plot(100 * q["sparsity"], q["ppl"], marker="o", ls="--" if refiner is None else "-", color=PALETTE[i],
                    label=f"wanda {head}")  # fmt: skip
    _perplexity_axes(ax, "sparsity (% of weights pruned)")
    ax.set_title(f"Ours ({_setting(sel) or 'no runs'})", fontsize=9)
    if len(sel):
        ax.set_xticks(sorted({round(100 * v, 6) for v in sel["sparsity"]}))
        ax.legend(fontsize=7)
    ax = axes[0, 1]
    xs = sorted(PAPER_SPARSITY_LLAMA1)
    for k, (ls, name) in enumerate((("--", "Wanda"), ("-", "Wanda + DSnoT"))):
        ys = [float(PAPER_SPARSITY_LLAMA1[s][k]) for s in xs]
        ax.plot([100 * s for s in xs], ys, marker="o", ls=ls, color=PALETTE[k], label=name)
    _perplexity_axes(ax, "sparsity (% of weights pruned)")
    ax.set_title("Paper, LLaMA-1 7B (quoted, not measured here)", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle("Perplexity across sparsity levels")
    return fig


def nm_table(frame) -> str:
    """Markdown: N:M rows, ours and the paper's 2:4 numbers."""
    lines = ["## N:M semi-structured sparsity", "", "### Ours (from the results table)", "",
             "| model | N:M | method | initial | w. DSnoT (official) | w. DSnoT (paper preset) | w. exact |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    sel = _paper_layout(frame)
    sel = sel[sel["nm"].notna()]
    for (model, nm, method), q in sel.groupby(["model", "nm", "method"], sort=True):
        cells = [_pick(q, None), _pick(q, "dsnot"), _pick(q, "dsnot", "paper"), _pick(q, "exact")]
        lines.append(f"| {model} | {nm} | {method} | " + " | ".join(_fmt(c) for c in cells) + " |")
    if len(sel) == 0:
        lines.append("| (no N:M runs in the table yet: `python -m dsnot_lite run --method wanda --nm 2:4 [--dsnot]`) |||||||")
    lines += ["", f"Note: {SPARSEGPT_NOTE}", "", f"### Paper, LLaMA-1 7B ({PAPER_SOURCE}; not measured here)", "",
              "| N:M | method | initial | w. DSnoT |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {nm} | {method} | {a} | {b} |" for (method, nm), (a, b) in PAPER_NM_LLAMA1.items()]
    return "\n".join(lines) + "\n"


def preset_table(frame) -> str:
    """Markdown: the refiners side by side on the same starting mask, every setting of the table."""
    lines = ["## Refiners on the same starting mask: DSnoT `official` (reference code), DSnoT `paper`, exact", "",
             "Ours only. *initial* is the mask the refiners start from: for SparseGPT its saliency mask without the "
             "weight update.", "",
             "| model | method | sparsity | initial | DSnoT official | DSnoT paper | exact |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    sel = frame[frame.apply(is_preset_default, axis=1) & (frame["method"] != "dense")]
    sel = sel[~((sel["method"] == "sparsegpt") & sel["refiner"].isna() & sel["weight_update"])]
    n = 0
    for (model, method, sp, nm), q in sel.groupby(["model", "method", "sparsity", sel["nm"].fillna("")], sort=True):
        cells = [_pick(q, None), _pick(q, "dsnot"), _pick(q, "dsnot", "paper"), _pick(q, "exact")]
        if sum(c is not None for c in cells[1:]) < 2:
            continue
        n += 1
        lines.append(f"| {model} | {method} | {nm or f'{sp:.0%}'} | " + " | ".join(_fmt(c) for c in cells) + " |")
    if not n:
        lines.append("| (no setting with two refiners yet) |||||||")
    return "\n".join(lines) + "\n"


def zero_shot_table(frame) -> str | None:
    """Markdown in the layout of paper Table 6: zero-shot accuracy per task, one row per run (None
    when no run of the table has zero-shot results)."""
    rows = frame[[isinstance(z, dict) and bool(z) for z in frame["zero_shot"]]]
    if rows.empty:
        return None
    tasks = sorted({t for z in rows["zero_shot"] for t in z})
    lines = ["## Zero-shot accuracy (paper Table 6 layout; lm-evaluation-harness)", "",
             "| model | run | sparsity | " + " | ".join(tasks) + " | mean |", "|---|---|---|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    for _, r in rows.iterrows():
        accs = [r["zero_shot"].get(t, {}).get("acc") for t in tasks]
        cells = [f"{100 * a:.2f}" if a is not None else "–" for a in accs]
        mean = f"{100 * sum(a for a in accs if a is not None) / max(1, sum(a is not None for a in accs)):.2f}"
        label = r["method"] if r["refiner"] is None else f"{r['method']} + {r['refiner']}"
        lines.append(
            f"| {r['model']} | {label} | {r['nm'] or format(r['sparsity'], '.0%')} | " + " | ".join(cells) + f" | {mean} |"
        )
    lines += ["", "Accuracy in %. `wikitext2_lastword` is a local smoke task (the last word of WikiText-2 validation "
              "paragraphs), not a benchmark; the paper's Table 6 tasks (BoolQ, RTE, HellaSwag, WinoGrande, ARC, OBQA) "
              "need the hub: `--tasks boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa` online."]  # fmt: skip
    return "\n".join(lines) + "\n"


def criterion_figure(frame):
    """Paper Table 7: ours (Wanda 60% + DSnoT with every grow x prune pair) and the paper's."""
    fig, axes = new_figure(1, 2, size=(11.0, 4.2))
    sel = frame[(frame["refiner"] == "dsnot") & frame["grow"].notna() & (frame["method"] == "wanda") & frame["nm"].isna()
                & (frame["knobs"] == "") & ((frame["sparsity"] - 0.6).abs() < 1e-9) & (frame["preset"] == "official")]  # fmt: skip
    pairs = sel[["grow", "prune"]].drop_duplicates()
    if len(pairs) > 1:
        model = sel["model"].value_counts().index[0]
        sel = sel[sel["model"] == model]
        grid = sel.pivot_table(index="prune", columns="grow", values="ppl", aggfunc="last")
        grid = grid.loc[[r for r in ("eq2", "eq3", "wanda", "magnitude") if r in grid.index],
                        [c for c in ("wanda", "eq3", "eq2", "magnitude") if c in grid.columns]]  # fmt: skip
        grid.index.name, grid.columns.name = "prune criterion", "grow criterion"
        criterion_heatmap(grid, axes[0, 0], title=f"Ours: {model}, Wanda 60%, official preset\n({len(pairs)} grow x prune pairs)",
                          label="WikiText-2 perplexity", fmt="{:.2f}")  # fmt: skip
    else:
        axes[0, 0].text(0.5, 0.5, "This table has no grow x prune grid\nfor Wanda 60% + DSnoT.\n\n"
                        "`python -m dsnot_lite study criteria` runs it.",
                        ha="center", va="center", fontsize=9, transform=axes[0, 0].transAxes)  # fmt: skip
        axes[0, 0].set_axis_off()
        axes[0, 0].set_title("Ours")
    criterion_heatmap(paper_table7_frame(), axes[0, 1], title="Paper Table 7, LLaMA-7B (quoted, not measured here)",
                      label="WikiText-2 perplexity", fmt="{:.2f}")  # fmt: skip
    fig.suptitle("Grow x prune criteria (paper Table 7)")
    return fig


def layer_figure(frame, table_dir: Path):
    """Per-layer error of the latest Wanda + DSnoT (official) run whose JSON has error records."""
    from dsnot_lite.runs.io import read_json
    from dsnot_lite.runs.model_lab import layer_frame

    sel = frame[(frame["refiner"] == "dsnot") & (frame["method"] == "wanda") & frame["output"].notna()]
    sel = sel[sel.apply(is_preset_default, axis=1) & (sel["preset"] == "official")]
    for _, row in sel.iloc[::-1].iterrows():
        output = Path(row["output"])  # absolute (a run's own table) or relative to the table (the study's)
        path = next((p for p in (output, table_dir / output, table_dir / output.name) if p.is_file()), None)
        data = read_json(path) if path else None
        if data and data.get("layers") and data["layers"][0].get("error_initial") is not None:
            lf = layer_frame(data)
            fig, axes = new_figure(3, 1, size=(11.0, 10.0))
            layer_errors(lf, axes[0, 0])
            layer_error_change(lf, axes[1, 0])
            flips_per_layer(lf, axes[2, 0])
            fig.suptitle(f"Ours: {row['model']}, {data['label']} at {row['nm'] or format(row['sparsity'], '.0%')}")
            return fig
    return None


def write_all(table: str | os.PathLike, out_dir: str | os.PathLike = "figures") -> list[Path]:
    """Write the paper-style figures and tables made from ``table``; returns the paths.

    Raises ``TableError`` (with the command that fills it) when the table is missing or empty.
    """
    full = load_table(table)
    frame = protocol_rows(full)
    out = Path(out_dir)
    written = [
        save_text(main_table(frame), out / "table1_ppl_60.md"),
        save_figure(main_figure(frame), out / "fig_table1_ppl_60.png"),
        save_figure(sparsity_figure(frame), out / "fig_sparsity_sweep.png"),
        save_text(nm_table(frame), out / "table2_nm.md"),
        save_text(preset_table(frame), out / "table_presets.md"),
        save_figure(criterion_figure(frame), out / "fig_table7_criteria.png"),
    ]
    layers = layer_figure(frame, Path(table).parent)
    if layers is not None:
        written.append(save_figure(layers, out / "fig_layer_errors.png"))
    zero_shot = zero_shot_table(full)
    if zero_shot is not None:
        written.append(save_text(zero_shot, out / "table6_zero_shot.md"))
    index = ["# Generated figures and tables", "",
             f"Made by `python -m dsnot_lite figures --table {_shown(table)}` from {len(frame)} of its "
             f"{len(full)} configurations (one protocol: {_setting(frame)}). Every number labelled *ours* comes from "
             f"that table; numbers labelled *paper* are quoted from {PAPER_SOURCE} (LLaMA/OPT models, not run here).", ""]  # fmt: skip
    index += [f"- `{p.name}`" for p in written]
    written.append(save_text("\n".join(index) + "\n", out / "INDEX.md"))
    return written


def _shown(table: str | Path) -> str:
    """The table's path as a reader would type it: relative to the checkout when inside it."""
    from dsnot_lite.runs import workspace

    path = Path(table).resolve()
    root = workspace.root().resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else Path(table).as_posix()
