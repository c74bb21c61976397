"""Data folder resolution, local JSONL loading with datasets, seeded calibration windows."""

from __future__ import annotations

import random

import pytest
import torch
from _paths import DATA as SHARED
from _paths import ROOT
from _tiny import tiny_tokenizer

from dsnot_lite.lm import data


def test_default_finds_shared_data(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert data.resolve_data_dir() == SHARED


def test_explicit_and_env_folders(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(SHARED))
    assert data.resolve_data_dir() == SHARED
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"from \$DSNOT_LITE_DATA.*lacks .*test.jsonl.*fix:"):
        data.resolve_data_dir()
    # an explicit argument wins over the environment variable
    assert data.resolve_data_dir(SHARED) == SHARED
    with pytest.raises(FileNotFoundError, match=r"from --data-dir\) does not exist; fix:"):
        data.resolve_data_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"from --data-dir\) lacks .*c4_sample.jsonl; fix:"):
        data.resolve_data_dir(tmp_path)


def test_no_local_data_means_hub(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_dir() is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="--data-dir"):  # offline: a clear error, not a hub traceback
        data.wikitext_rows("test")


def test_shared_data_is_found_from_a_working_directory_inside_a_checkout(monkeypatch, tmp_path):
    """A pip-installed package (PROJECT_ROOT elsewhere) run from inside the checkout finds ../shared/data."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(ROOT / "notebooks")
    assert data.resolve_data_dir() == SHARED


def test_local_rows_match_the_readme():
    test = data.wikitext_rows("test", SHARED)
    validation = data.wikitext_rows("validation", SHARED)
    docs = data.c4_documents(SHARED)
    assert (len(test), len(validation), len(docs)) == (4358, 3760, 200)
    assert test[1] == " = Robert Boulter = \n"
    assert sum(r == "" for r in test) == 1467
    assert len("\n\n".join(test)) == 1_294_336
    with pytest.raises(ValueError, match="fix"):
        data.wikitext_rows("train", SHARED)


def _wanda_get_c4(tokenizer, docs, nsamples, seqlen, seed):
    """Wanda's get_c4 sampling loop, with the global random module as the reference uses it."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tokenizer(docs[i])["input_ids"]
            if len(enc) > seqlen:
                break
        start = random.randint(0, len(enc) - seqlen - 1)
        out.append(enc[start : start + seqlen])
    return torch.tensor(out)


def test_calibration_windows_are_seeded_and_match_the_reference_loop():
    tok = tiny_tokenizer()
    docs = data.c4_documents(SHARED)
    a = data.calibration_windows(tok, docs, nsamples=8, seqlen=64, seed=0, progress=False)
    b = data.calibration_windows(tok, docs, nsamples=8, seqlen=64, seed=0, progress=False)
    c = data.calibration_windows(tok, docs, nsamples=8, seqlen=64, seed=1, progress=False)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, _wanda_get_c4(tok, docs, 8, 64, 0))
    # every window is a contiguous slice of one document's tokens
    encoded = [tok(d)["input_ids"] for d in docs]
    for window in a.tolist():
        assert any(any(ids[i : i + 64] == window for i in range(len(ids) - 63)) for ids in encoded if len(ids) > 64)


def test_calibration_seqlen_longer_than_every_document():
    tok = tiny_tokenizer()
    docs = ["short text", "another short one"]
    with pytest.raises(ValueError, match=r"seqlen 512 is not shorter than any calibration document.*fix:"):
        data.calibration_windows(tok, docs, nsamples=2, seqlen=512, progress=False)
