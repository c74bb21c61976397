"""Zero-shot evaluation through lm-evaluation-harness on the model in memory, with the local smoke
task ``wikitext2_lastword`` (offline)."""

from __future__ import annotations

import builtins
import importlib.util

import pytest
import torch

from dsnot_lite.lm import zeroshot
from dsnot_lite.lm.models import load_model

UTILS = zeroshot.TASKS_DIR / "wikitext2_lastword" / "utils.py"


def _utils():
    spec = importlib.util.spec_from_file_location("wikitext2_lastword_utils", UTILS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paragraphs_become_context_and_last_word():
    make_doc = _utils().make_doc
    text = " ".join(["word"] * 20) + " the end of the story . \n"
    assert make_doc(text) == {"context": " ".join(["word"] * 20) + " the end of the", "target": " story"}
    assert make_doc(" = Heading = \n") is None
    assert make_doc("too short .") is None
    assert make_doc(" ".join(["word"] * 20) + " in 1996 .") is None  # a number is not a word to guess
    docs = _utils().load_docs()["validation"]
    assert len(docs) == 1456 and all(d["target"].startswith(" ") and d["target"][1:].isalpha() for d in docs)


def test_accuracy_is_greedy_match_computed_by_hand():
    """lm-eval's acc on the first documents of the bundled model equals our own count of documents
    whose target tokens are all the model's argmax (some are, some are not: the check has teeth)."""
    loaded = load_model("smollm2-135m")
    result = zeroshot.zero_shot(loaded, ["wikitext2_lastword"], limit=10)["wikitext2_lastword"]
    docs = _utils().load_docs()["validation"].select(range(10))
    hits = []
    with torch.no_grad():
        for doc in docs:
            context = loaded.tokenizer(doc["context"])["input_ids"]
            whole = loaded.tokenizer(doc["context"] + doc["target"])["input_ids"]
            target = whole[len(context) :]
            logits = loaded.model(input_ids=torch.tensor([whole])).logits[0]
            hits.append(bool((logits[len(context) - 1 : len(whole) - 1].argmax(-1) == torch.tensor(target)).all()))
    assert 0 < sum(hits) < len(hits)
    assert result["acc"] == pytest.approx(sum(hits) / len(hits))
    assert result["acc_stderr"] >= 0 and result["perplexity"] > 1
    assert not loaded.model.training


def test_missing_lm_eval_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ModuleNotFoundError("No module named 'lm_eval'", name="lm_eval")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(ImportError, match=r"pip install 'dsnot-lite\[eval\]'"):
        zeroshot.zero_shot(None, ["wikitext2_lastword"])
    real_find = importlib.util.find_spec  # the up-front check only looks the package up
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real_find(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'dsnot-lite\[eval\]'"):
        zeroshot.check_tasks(["wikitext2_lastword"])


def test_task_names_read_from_the_yaml_files():
    """Top-level task/group names, tag strings and lists (quoted keys too), a group's task list; not nested keys."""
    text = '"task": "alpha"\ntag:\n  - beta\n  - gamma\ngroup: delta\ntask:\n  - eps # a comment\nmetric_list:\n  - metric: acc\n'
    assert zeroshot._names_in(text) == {"alpha", "beta", "gamma", "delta", "eps"}
    assert zeroshot._names_in("tag: [one, 'two']\n  task: nested\n") == {"one", "two"}
    names = zeroshot.task_names()  # scanned once per lm-eval version, then read from the cache
    assert {"piqa", "arc_easy", "mmlu", "wikitext2_lastword"} <= names and "arc_easyy" not in names
    from dsnot_lite.lm.bundled import cache_root

    assert list(cache_root().glob("lm_eval-*-task-names.json"))
    with pytest.raises(ValueError, match=r"unknown zero-shot task 'arc_easyy' \(did you mean 'arc_easy'\?\).*fix:"):
        zeroshot.check_tasks(["wikitext2_lastword", "arc_easyy"])


@pytest.mark.slow
def test_task_names_hold_every_name_of_lm_evals_registry():
    """The quick scan misses no name that lm-eval's own TaskManager registers (it builds in minutes here)."""
    from lm_eval.tasks import TaskManager

    registry = set(TaskManager(include_path=str(zeroshot.TASKS_DIR)).all_tasks)
    assert registry - zeroshot.task_names() == set()
