"""WikiText-2 and C4 text, and seeded calibration windows (Wanda/SparseGPT ``get_c4``).

Local JSONL files (``../shared/data``, see its README) are read with ``datasets``' JSON builder;
the project never copies them. Search order for the data folder: the ``data_dir`` argument
(``--data-dir``), ``$DSNOT_LITE_DATA``, then ``shared/data`` beside the project root or beside
the working directory or any folder above it (so a pip-installed package run from inside a
checkout finds it too), then ``data/`` in the project root. When none of these has the files,
the Hugging Face hub datasets are used (``wikitext``/``wikitext-2-raw-v1`` and the first
``allenai/c4`` shard), which needs internet.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (dsnot_lite/lm/data.py)
WIKITEXT_FILES = {"test": "wikitext-2-raw-v1/test.jsonl", "validation": "wikitext-2-raw-v1/validation.jsonl"}
C4_FILE = "c4/c4_sample.jsonl"
C4_HUB_SHARD = "en/c4-train.00000-of-01024.json.gz"  # the shard Wanda/SparseGPT/DSnoT calibrate on
ENV_VAR = "DSNOT_LITE_DATA"


def _has_data(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (*WIKITEXT_FILES.values(), C4_FILE))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder, or ``None`` to use the hub.

    An explicit ``data_dir`` or ``$DSNOT_LITE_DATA`` must hold the files (else FileNotFoundError);
    the two default places are only tried.
    """
    explicit = [(data_dir, "--data-dir")] if data_dir is not None else []
    if not explicit and os.environ.get(ENV_VAR):
        explicit = [(os.environ[ENV_VAR], f"${ENV_VAR}")]
    for value, origin in explicit:
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data folder {str(folder)!r} (from {origin}) does not exist; "
                f"fix: point {origin} at a folder laid out like ../shared/data (see its README)"
            )
        if not _has_data(folder):
            missing = [f for f in (*WIKITEXT_FILES.values(), C4_FILE) if not (folder / f).is_file()]
            raise FileNotFoundError(
                f"data folder {str(folder)!r} (from {origin}) lacks {', '.join(missing)}; "
                f"fix: point {origin} at a folder laid out like ../shared/data (see its README)"
            )
        return folder
    cwd = Path.cwd().resolve()
    beside = [PROJECT_ROOT.parent] + [folder.parent for folder in (cwd, *cwd.parents)]
    for folder in [b / "shared" / "data" for b in beside] + [PROJECT_ROOT / "data"]:
        if _has_data(folder):
            return folder
    return None


def check_data(data_dir: str | os.PathLike | None, seqlen: int) -> Path | None:
    """Fail fast, before any model is loaded, when the local data cannot serve a run: a line of a
    JSONL file that is not a JSON object with a ``text`` string, or calibration documents all too
    short for ``seqlen``-token windows (a document of B UTF-8 bytes has at most B + 2 tokens under
    byte-level tokenizers, BOS and EOS counted; the exact count is checked again once the tokenizer
    is loaded). Returns the data folder (None: the hub)."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        return None
    longest = 0
    for name in (*WIKITEXT_FILES.values(), C4_FILE):
        for text in _checked_lines(folder / name):
            if name == C4_FILE:
                longest = max(longest, len(text.encode("utf-8")))
    if longest + 2 <= seqlen:
        raise ValueError(f"seqlen {seqlen} is longer than any calibration document in {folder / C4_FILE} (the longest has "
                         f"{longest} bytes, so at most {longest + 2} tokens); fix: use --seqlen below {longest}")  # fmt: skip
    return folder


def _checked_lines(path: Path):
    """The ``text`` of every line of a JSONL file, or a ValueError naming the first bad line."""
    import json

    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError("no 'text' string")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path} line {number} is not a JSON object with a 'text' string ({exc}); "
                                 f"fix: repair or remove that line, or point --data-dir at an intact copy of ../shared/data") from None  # fmt: skip
            yield row["text"]


def _load_texts(data_dir: Path | None, local_file: str, hub_args: tuple, hub_kwargs: dict) -> list[str]:
    import datasets

    if data_dir is not None:
        ds = datasets.load_dataset("json", data_files=str(data_dir / local_file), split="train")
        return list(ds["text"])
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(_NO_DATA + " (and the hub is switched off by HF_*_OFFLINE)")
    try:
        ds = datasets.load_dataset(*hub_args, **hub_kwargs)
    except ConnectionError as exc:
        raise FileNotFoundError(f"{_NO_DATA} and the Hugging Face hub is unreachable ({exc})") from None
    return list(ds["text"])


_NO_DATA = (
    "no local WikiText-2/C4 files were found (looked for shared/data beside the project and the working "
    "directory); fix: pass --data-dir DIR or set $DSNOT_LITE_DATA to a folder laid out like ../shared/data"
)


def wikitext_rows(split: str = "test", data_dir: str | os.PathLike | None = None) -> list[str]:
    """WikiText-2 raw v1 rows of ``split`` (``test`` or ``validation``), in order."""
    if split not in WIKITEXT_FILES:
        raise ValueError(f"unknown WikiText-2 split {split!r}; fix: use one of {sorted(WIKITEXT_FILES)}")
    return _load_texts(resolve_data_dir(data_dir), WIKITEXT_FILES[split], ("wikitext", "wikitext-2-raw-v1"), {"split": split})


def c4_documents(data_dir: str | os.PathLike | None = None) -> list[str]:
    """C4 documents for calibration: the local sample, or the first C4 training shard from the hub."""
    return _load_texts(
        resolve_data_dir(data_dir), C4_FILE, ("allenai/c4",), {"data_files": {"train": C4_HUB_SHARD}, "split": "train"}
    )


def calibration_windows(
    tokenizer,
    documents: list[str],
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """``nsamples`` random ``seqlen``-token windows from random documents, as Wanda's ``get_c4``.

    With ``random.Random(seed)``: draw a document index until its tokenization is longer than
    ``seqlen``, then a random window start inside it. Returns a long tensor ``(nsamples, seqlen)``.
    The tokenizer is called with its defaults, as the reference loaders do.
    """
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}; fix: raise them")
    cache: dict[int, list[int]] = {}

    def tokens(i: int) -> list[int]:
        if i not in cache:
            cache[i] = tokenizer(documents[i])["input_ids"]
        return cache[i]

    if len(documents) <= 5000:  # small local sample: check up front that some document is long enough
        longest = max(len(tokens(i)) for i in range(len(documents)))
        if longest <= seqlen:
            raise ValueError(
                f"seqlen {seqlen} is not shorter than any calibration document (longest has {longest} tokens); "
                f"fix: use --seqlen below {longest}"
            )
    rng = random.Random(seed)
    windows = []
    for _ in tqdm(range(nsamples), desc="calibration samples", disable=not progress):
        for _attempt in range(100_000):
            ids = tokens(rng.randint(0, len(documents) - 1))
            if len(ids) > seqlen:
                break
        else:
            raise ValueError(f"no calibration document longer than seqlen {seqlen} found; fix: lower --seqlen")
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return torch.tensor(windows, dtype=torch.long)
