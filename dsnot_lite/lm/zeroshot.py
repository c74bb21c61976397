"""Zero-shot accuracy through EleutherAI's lm-evaluation-harness, on the model in memory.

``zero_shot(loaded, tasks)`` wraps the (pruned) model in lm-eval's ``HFLM`` (no second copy on
disk) and calls ``lm_eval.simple_evaluate``. Offline, the standard tasks (piqa, arc_easy, ...)
cannot download their data; the local task ``wikitext2_lastword`` (``tasks/``, a smoke task: the
last word of WikiText-2 validation paragraphs, accuracy by greedy match) runs the real harness end
to end without the hub. lm-eval is an optional extra: ``pip install 'dsnot-lite[eval]'``.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import logging
import os
import re
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
    """Fail early (before any model is loaded) when lm-eval is missing, a task name is not in its
    registry (``task_names``), or a local task lacks its data. lm-eval is only looked up here,
    not imported (importing it takes seconds)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError(f"zero-shot evaluation needs lm-evaluation-harness (lm_eval is missing); fix: {EXTRA}")
    hub = [t for t in tasks if t not in LOCAL_TASKS]
    unknown = sorted(set(hub) - task_names()) if hub else []
    if unknown:
        close = {t: difflib.get_close_matches(t, task_names(), n=1) for t in unknown}
        hints = ", ".join(f"{t!r} (did you mean {m[0]!r}?)" if m else repr(t) for t, m in close.items())
        raise ValueError(f"unknown zero-shot task {hints}: not in lm-evaluation-harness's registry nor a local task "
                         f"{list(LOCAL_TASKS)}; fix: check the name (`lm_eval ls tasks` lists them)")  # fmt: skip
    if any(t in LOCAL_TASKS for t in tasks):
        from dsnot_lite.lm.data import resolve_data_dir

        if resolve_data_dir(data_dir) is None:
            raise FileNotFoundError(
                "wikitext2_lastword needs the local data folder; fix: pass --data-dir or set $DSNOT_LITE_DATA"
            )


_NAME_LINE = re.compile(r"^[\"']?(task|group|tag)[\"']?:[ \t]*(.*)$")
_LIST_ITEM = re.compile(r"^[ \t]*-[ \t]*(.+)$")


def task_names() -> frozenset[str]:
    """Every task, group and tag name lm-eval's registry can hold, with the local tasks.

    lm-eval registers a YAML file's top-level ``task:`` or ``group:`` name, its ``tag:`` names (a
    string or a list, possibly inherited through ``include:``, and then written in the included
    template) and a group's listed tasks; reading those lines of its ~14,000 task files and
    templates takes seconds, where building its ``TaskManager`` takes a minute or more here. The list is cached per lm-eval version
    under ``$DSNOT_LITE_CACHE`` (``lm.bundled.cache_root``).
    """
    import importlib.metadata
    import importlib.util

    from dsnot_lite.lm.bundled import cache_root

    version = importlib.metadata.version("lm_eval")
    cache = cache_root() / f"lm_eval-{version}-task-names.json"
    if cache.is_file():
        with contextlib.suppress(OSError, ValueError):
            return frozenset(json.loads(cache.read_text())) | frozenset(LOCAL_TASKS)
    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    names: set[str] = set()
    for path in root.rglob("*"):  # task files, and templates they include (``_default_template_yaml``, ...)
        if path.is_file() and (path.name.endswith("yaml") or not path.suffix):
            names |= _names_in(path.read_text(encoding="utf-8", errors="replace"))
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(sorted(names)))
        os.replace(tmp, cache)
    return frozenset(names) | frozenset(LOCAL_TASKS)


def _names_in(text: str) -> set[str]:
    """The ``task:``, ``group:`` and ``tag:`` names a YAML file declares at its top level."""
    names, in_tags = set(), False
    for line in text.splitlines():
        item = _LIST_ITEM.match(line)
        if in_tags and item:
            names.add(_bare(item.group(1)))
            continue
        in_tags = False
        match = _NAME_LINE.match(line)
        if not match:
            continue
        value = match.group(2).split(" #")[0].strip()
        if not value:  # a list follows: tags, or a group's tasks
            in_tags = True
        elif value.startswith("["):
            names |= {_bare(v) for v in value.strip("[]").split(",") if v.strip()}
        elif value:
            names.add(_bare(value))
    return names


def _bare(value: str) -> str:
    return value.split(" #")[0].strip().strip("'\"")


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
