"""Zero-shot accuracy through EleutherAI's lm-evaluation-harness, on the model in memory.

``zero_shot(loaded, tasks)`` wraps the (pruned) model in lm-eval's ``HFLM`` (no second copy on
disk) and calls ``lm_eval.simple_evaluate``. Offline, the standard tasks (piqa, arc_easy, ...)
cannot download their data; the local task ``wikitext2_lastword`` (``tasks/``, a smoke task: the
last word of WikiText-2 validation paragraphs, accuracy by greedy match) runs the real harness end
to end without the hub. lm-eval is an optional extra: ``pip install 'dsnot-lite[eval]'``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS = ("wikitext2_lastword",)
EXTRA = "pip install 'dsnot-lite[eval]'"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError(f"zero-shot evaluation needs lm-evaluation-harness ({exc.name} is missing); fix: {EXTRA}") from None
    return lm_eval, HFLM, TaskManager


def check_tasks(tasks, data_dir=None) -> None:
    """Fail early (before any model is loaded) when lm-eval is missing or a local task lacks its data."""
    _lm_eval()
    if any(t in LOCAL_TASKS for t in tasks):
        from dsnot_lite.lm.data import resolve_data_dir

        if resolve_data_dir(data_dir) is None:
            raise FileNotFoundError(
                "wikitext2_lastword needs the local data folder; fix: pass --data-dir or set $DSNOT_LITE_DATA"
            )


def zero_shot(loaded, tasks, limit: int | None = None, data_dir=None, device="cpu", batch_size: int = 8) -> dict:
    """``{task: {metric: value}}``, e.g. ``{"wikitext2_lastword": {"acc": 0.31, "acc_stderr": 0.012, ...}}``.

    ``limit`` takes the first documents of each task (a quick, not a full, number). Global random
    generators are left alone (lm-eval would reseed them), and the model's mode is restored.
    """
    lm_eval, HFLM, TaskManager = _lm_eval()
    tasks = list(tasks)
    hub = [t for t in tasks if t not in LOCAL_TASKS]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=bool(hub),
                          metadata={"data_dir": None if data_dir is None else str(data_dir)})  # fmt: skip
    model = loaded.model
    was_training, logger = model.training, logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # lm-eval prints "bootstrapping for stddev"
            lm = HFLM(pretrained=model.to(device), tokenizer=loaded.tokenizer, batch_size=batch_size, device=str(device))
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False,
                                          bootstrap_iters=1000, random_seed=None, numpy_random_seed=None,
                                          torch_random_seed=None)  # fmt: skip
    except ConnectionError as exc:
        raise FileNotFoundError(f"lm-eval task(s) {hub} need data from the Hugging Face hub, which is unreachable "
                                f"({exc}); fix: run once online, or use the local task(s) {list(LOCAL_TASKS)}") from None  # fmt: skip
    finally:
        model.train(was_training)
        logger.setLevel(level)
    return {task: {key.split(",")[0]: float(value) for key, value in metrics.items()
                   if "," in key and isinstance(value, (int, float))}
            for task, metrics in out["results"].items()}  # fmt: skip
