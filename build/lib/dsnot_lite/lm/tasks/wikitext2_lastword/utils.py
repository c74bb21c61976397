"""Documents of the local lm-eval task ``wikitext2_lastword`` (a smoke task, not a benchmark).

A paragraph is a non-empty, non-heading WikiText-2 *validation* row with at least ``MIN_WORDS``
words. Trailing tokens without a letter or digit (``.``, ``"``, ``)``, ...) are dropped; the last
remaining token is the target when it is a plain word (letters only), else the paragraph is
skipped. Context: the paragraph before that word; target: ``" " + word``. The rows are found in
the data folder of ``dsnot_lite.lm.data.resolve_data_dir`` (lm-eval passes the ``data_dir`` of
the TaskManager's metadata).
"""

from __future__ import annotations

import json

MIN_WORDS = 20


def make_doc(text: str) -> dict | None:
    """``{"context", "target"}`` for one row, or None when the row is not a usable paragraph."""
    if not text.strip() or text.startswith(" =") or len(text.split()) < MIN_WORDS:
        return None
    tokens = text.strip().split(" ")
    while tokens and not any(ch.isalnum() for ch in tokens[-1]):
        tokens.pop()
    if len(tokens) < 2 or not tokens[-1].isalpha():
        return None  # numbers, "St.", "'s", "@-@" pieces: not a clean word to guess
    return {"context": " ".join(tokens[:-1]), "target": " " + tokens[-1]}


def load_docs(data_dir: str | None = None, **_metadata):
    """lm-eval's ``custom_dataset`` hook, called with the task's metadata."""
    import datasets

    from dsnot_lite.lm.data import WIKITEXT_FILES, resolve_data_dir

    folder = resolve_data_dir(data_dir)
    if folder is None:
        raise FileNotFoundError("wikitext2_lastword reads WikiText-2 validation from the local data folder; "
                                "fix: pass --data-dir or set $DSNOT_LITE_DATA")  # fmt: skip
    with open(folder / WIKITEXT_FILES["validation"], encoding="utf-8") as fh:
        docs = [d for line in fh if (d := make_doc(json.loads(line)["text"])) is not None]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})
