"""A whole model, pruned many ways: a cache over the one runner (``runs.runner.run``).

``ModelLab(base, cache_dir)`` keeps one model loaded (``ModelSession``) and runs ``base`` with any
changes (``lab.run(method="wanda", sparsity=0.6, refiner="dsnot")``); every result is kept in
memory and, with ``cache_dir``, in a ``RunCache`` folder (one JSON per run and a results table),
so a sweep re-runs instantly and resumes where it stopped. ``base.blocks = k`` prunes only the
first ``k`` decoder blocks (the notebooks' fast mode; ``lab.label`` says so).

The frames below turn result dicts into tables: one row per run, per layer, per layer type.
"""

from __future__ import annotations

from pathlib import Path

from dsnot_lite.runs.cache import RunCache
from dsnot_lite.runs.runner import ModelSession, run
from dsnot_lite.runs.spec import RunSpec

FAST_BASE = RunSpec(nsamples=4, seqlen=128, max_windows=2)


class ModelLab:
    """Runs of one model that differ only in the changes given to ``run``; every run cached."""

    def __init__(self, base: RunSpec | None = None, cache_dir: str | Path | None = None, progress: bool = True):
        self.base = base or FAST_BASE
        self.session = ModelSession()
        self.progress = progress
        self.cache = RunCache(cache_dir, self.session, progress) if cache_dir else None
        self._memory: dict[str, dict] = {}
        self._computed = 0

    @property
    def computed(self) -> int:
        """Runs this lab really computed (not served from a cache)."""
        return self._computed + (self.cache.computed if self.cache else 0)

    def spec(self, **changes) -> RunSpec:
        return self.base.replace(**changes)

    def run(self, method: str = "wanda", sparsity: float = 0.6, **changes) -> dict:
        """The result of ``base`` with these changes (cached)."""
        spec = self.spec(method=method, sparsity=0.0 if method == "dense" else sparsity, **changes)
        key = spec.key()
        if key not in self._memory:
            if self.cache is not None:
                result = None
                while result is None:  # another worker holds the claim: wait for it
                    result = self.cache.run(spec) or _wait(self.cache, spec)
            else:
                result = run(spec, session=self.session, progress=self.progress)
                self._computed += 1
            self._memory[key] = result
        return self._memory[key]

    def dense(self) -> dict:
        return self.run("dense")

    def runs(self, configs) -> list[dict]:
        """``run(**c)`` for every dict ``c`` in ``configs``."""
        return [self.run(**c) for c in configs]

    @property
    def total_blocks(self) -> int:
        from dsnot_lite.runs.pipeline import PhaseTimer

        return len(self.session.model_for(self.base, PhaseTimer()).blocks)

    @property
    def label(self) -> str:
        """The model name in results, saying when only the first blocks are pruned."""
        total = self.total_blocks
        if self.base.blocks is None or self.base.blocks >= total:
            return self.base.model
        return f"{self.base.model} [first {self.base.blocks}/{total} blocks pruned]"


def _wait(cache: RunCache, spec: RunSpec, seconds: float = 5.0) -> dict | None:
    import time

    time.sleep(seconds)
    return cache.get(spec)


def lab_sweep(lab: ModelLab, param: str, values, method: str = "wanda", sparsity: float = 0.6, refiner: str = "dsnot",
              preset: str = "official"):  # fmt: skip
    """Initial method vs refined for each value of ``param`` (a RunSpec field), cached and resumable.

    One row per value: ``ppl_initial``, ``ppl_refined``, ``delta_ppl`` (refined minus initial,
    negative = the refiner helped), flips and both runs' achieved sparsity.
    """
    import pandas as pd

    rows = []
    for value in values:
        kw = {"method": method, "sparsity": sparsity, "nm": None, param: tuple(value) if param == "nm" and value else value}
        initial = lab.run(**kw)
        refined = lab.run(**{"refiner": refiner, "preset": preset, **kw})
        shown = (f"{value[0]}:{value[1]}" if value else "unstructured") if param == "nm" else value
        rows.append({
            param: shown, "ppl_initial": initial["ppl"], "ppl_refined": refined["ppl"],
            "delta_ppl": refined["ppl"] - initial["ppl"], "flips": refined["total_flips"],
            "sparsity_initial": initial["achieved_sparsity"], "sparsity_refined": refined["achieved_sparsity"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def results_frame(results: list[dict]):
    """One row per run: label, sparsity, perplexity, flips, seconds (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame([
        {
            "run": r["label"],
            "sparsity": r["nm"] or r["sparsity"],
            "ppl": r["ppl"],
            "achieved sparsity (pruned blocks)": r["achieved_sparsity"],
            "flips": r.get("total_flips", 0),
            "swaps": r.get("total_swaps", 0),
            "seconds": r["seconds"]["total"],
        }
        for r in results
    ])  # fmt: skip


def layer_frame(result: dict):
    """A run's per-linear-layer records as a DataFrame with ``block`` and ``type`` columns."""
    import pandas as pd

    rows = []
    for rec in result.get("layers", []):
        parts = rec["name"].split(".")
        idx = next(i for i, p in enumerate(parts) if p.isdigit())
        stops = {f"stop_{k}": v for reasons in rec.get("stop_reasons", {}).values() for k, v in reasons.items()}
        rows.append({
            "block": int(parts[idx]), "type": ".".join(parts[idx + 1 :]), "name": rec["name"],
            "refined": bool(rec["refined_by"]), "error_initial": rec["error_initial"], "error_final": rec["error_final"],
            "mean_share_initial": rec["mean_share_initial"], "mean_share_final": rec["mean_share_final"],
            "flips": rec["flips"], "swaps": rec["swaps"], "sparsity": rec["sparsity"],
            "fraction_flipped": rec["flips"] / (rec["shape"][0] * rec["shape"][1]), **stops,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    if len(frame):
        for col in ("error_initial", "error_final", "mean_share_initial", "mean_share_final"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce")  # None without record_errors
        frame["error_change_%"] = 100 * (frame["error_final"] / frame["error_initial"] - 1)
    return frame


def gain_by_type(result: dict):
    """Per layer type: mean relative output error before/after refinement and mean change in %."""
    frame = layer_frame(result)
    if frame.empty:
        return frame
    columns = ["error_initial", "error_final", "error_change_%", "mean_share_initial", "flips"]
    return frame.groupby("type")[columns].mean().sort_values("error_change_%")


E2E_RUNS = {"wanda_s60": None, "wanda_dsnot_s60": "dsnot"}  # the authors' whole-model masks -> our refiner


def authors_e2e_check(blocks: int | None = None, data_dir: str | None = None, progress: bool = False):
    """Our main path against the authors' own pipeline (``../shared/reference/official-e2e``): Wanda
    and Wanda + DSnoT (``official``) at 60% on SmolLM2-135M with their settings (16 C4 windows of
    512 tokens, seed 0), the first ``blocks`` blocks (None: all 30). One row per run: layers
    compared, layers whose zero pattern differs, differing entries, the first block that differs (a
    DataFrame). Deep blocks may differ by near-tie flips on a CPU whose kernels round differently from
    the reference machine's (``tests/runs/test_conformance_e2e.py``)."""
    import pandas as pd

    from dsnot_lite.lm import data
    from dsnot_lite.lm.models import find_linears
    from dsnot_lite.reference import e2e_differences, load_e2e, zero_patterns

    folder = data.resolve_data_dir(data_dir)
    where = (folder.parent if folder else workspace_shared()) / "reference" / "official-e2e"
    session, rows = ModelSession(), []
    for name, refiner in E2E_RUNS.items():
        spec = RunSpec(method="wanda", sparsity=0.6, refiner=refiner, nsamples=16, seqlen=512, blocks=blocks,
                       max_windows=1, data_dir=data_dir)  # fmt: skip
        ours: dict = {}

        def keep(loaded, ours=ours) -> None:
            names = [f"{loaded.blocks_path}.{i}.{n}" for i, b in enumerate(loaded.blocks[: blocks or len(loaded.blocks)])
                     for n in find_linears(b)]  # fmt: skip
            ours.update(zero_patterns(loaded.model, names))

        run(spec, session=session, progress=progress, after_eval=keep)
        differing = e2e_differences(ours, load_e2e(where / f"{name}.safetensors"))
        first = min((int(k.split(".")[-3]) for k in differing), default=None)  # model.layers.{i}.{module}.{linear}
        rows.append({"authors' run": name, "ours": spec.label(), "layers compared": len(ours),
                     "layers differing": len(differing), "entries differing": sum(differing.values()),
                     "first differing block": first})  # fmt: skip
    return pd.DataFrame(rows)


def workspace_shared() -> Path:
    """``shared/`` beside the checkout (where the reference files live when no data folder is found)."""
    from dsnot_lite.runs import workspace

    return workspace.root().parent / "shared"
