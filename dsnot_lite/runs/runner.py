"""The one runner: a ``RunSpec`` in, a result dict (``schema``) out.

``run(spec)`` loads the model, draws the calibration windows, prunes block by block, scores the
result on WikiText-2 (and zero-shot tasks when asked) and returns the record that the command
line writes as JSON. A ``ModelSession`` keeps one model loaded for many runs (the model lab and
the study use it): the dense block weights are restored before every run, and calibration
windows and evaluation tokens are drawn once per setting.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dsnot_lite.lm import data
from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text
from dsnot_lite.lm.models import LoadedModel, load_model
from dsnot_lite.runs import schema
from dsnot_lite.runs.pipeline import PhaseTimer, prune_model
from dsnot_lite.runs.spec import RunSpec


class ModelSession:
    """One model loaded once (per model, device, dtype and attention), reset to dense before each run."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self.loaded: LoadedModel | None = None
        self._dense: dict[str, torch.Tensor] = {}
        self._calibration: dict[tuple, torch.Tensor] = {}
        self._tokens: dict[tuple, torch.Tensor] = {}

    def model_for(self, spec: RunSpec, timer: PhaseTimer) -> LoadedModel:
        """The spec's model with dense weights (loaded on first use, restored afterwards)."""
        key = (spec.model, spec.device, spec.dtype, spec.attn)
        if key != self._key:
            self.loaded, self._dense, self._calibration, self._tokens = None, {}, {}, {}
            with timer.phase("load_model"):
                dtype = getattr(torch, spec.dtype) if spec.dtype else None  # None: the model's default_dtype
                self.loaded = load_model(spec.model, device=spec.device, dtype=dtype, attn=spec.attn)
            self._dense = {k: v.detach().clone() for k, v in self.loaded.blocks.state_dict().items()}
            self._key = key
        else:
            self.loaded.blocks.load_state_dict(self._dense)
        return self.loaded

    def calibration(self, spec: RunSpec, data_dir: Path | None) -> torch.Tensor:
        key = (spec.nsamples, spec.seqlen, spec.seed, data_dir)
        if key not in self._calibration:
            docs = data.c4_documents(data_dir)
            self._calibration[key] = data.calibration_windows(self.loaded.tokenizer, docs, *key[:3], progress=False)
        return self._calibration[key]

    def eval_tokens(self, split: str, data_dir: Path | None) -> torch.Tensor:
        if (split, data_dir) not in self._tokens:
            self._tokens[(split, data_dir)] = tokenize_test_text(self.loaded.tokenizer, data.wikitext_rows(split, data_dir))
        return self._tokens[(split, data_dir)]


def run(spec: RunSpec, *, session: ModelSession | None = None, progress: bool = True, after_eval=None) -> dict:
    """Run ``spec`` end to end and return its result dict (``schema.result_record``).

    ``after_eval(loaded)`` is called with the pruned model still in memory (the command line saves
    it there); ``session`` reuses a loaded model across runs.
    """
    session = session or ModelSession()
    memory_scope = schema.reset_peak_memory()
    timer = PhaseTimer()
    start = time.perf_counter()
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # R11: TF32 off
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats(device)
    data_dir = data.resolve_data_dir(spec.data_dir)
    loaded = session.model_for(spec, timer)
    records = []
    if spec.method != "dense":
        with timer.phase("calibration_data"):
            calib = session.calibration(spec, data_dir)
        records = prune_model(loaded, calib, spec, timer=timer, progress=progress)
    with timer.phase("eval_data"):
        tokens = session.eval_tokens(spec.eval_split, data_dir)
    with timer.phase("eval"):
        ppl = perplexity(loaded.model, tokens, spec.seqlen, spec.max_windows, spec.eval_batch_size, device, progress)
    zero_shot = None
    if spec.tasks:
        from dsnot_lite.lm.zeroshot import zero_shot as evaluate_tasks

        with timer.phase("zero_shot"):
            zero_shot = evaluate_tasks(loaded, spec.tasks, spec.tasks_limit, data_dir, device)
    if after_eval is not None:
        after_eval(loaded)
    total_blocks = len(loaded.blocks)
    timer.seconds["total"] = time.perf_counter() - start
    return schema.result_record(
        spec, loaded, ppl, records, dict(timer.seconds), data_dir=data_dir, calib_windows=spec.nsamples if records else 0,
        total_blocks=total_blocks, zero_shot=zero_shot, memory_scope=memory_scope,
    )  # fmt: skip
