"""WikiText-2 perplexity protocol on a tiny model, checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import VOCAB, tiny_model, tiny_tokenizer

from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text


def _hand_ppl(model, ids: torch.Tensor, seqlen: int, nwin: int) -> float:
    """exp(mean NLL) over every predicted token, one window and one token at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(nwin):
            window = ids[w * seqlen : (w + 1) * seqlen]
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0].double(), dim=-1)
            for t in range(seqlen - 1):
                total -= float(logp[t, window[t + 1]])
                count += 1
    return math.exp(total / count)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_perplexity_equals_hand_computation(arch):
    model = tiny_model(arch)
    ids = torch.randint(0, VOCAB, (5 * 16 + 7,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, ids, seqlen=16, batch_size=2, progress=False)
    assert res.windows == res.total_windows == 5  # the 7-token remainder is dropped
    assert res.predicted_tokens == 5 * 15
    assert res.max_windows is None
    assert res.ppl == pytest.approx(_hand_ppl(model, ids, 16, 5), rel=1e-5)
    quick = perplexity(model, ids, seqlen=16, max_windows=2, progress=False)
    assert (quick.windows, quick.total_windows, quick.max_windows) == (2, 5, 2)
    assert quick.ppl == pytest.approx(_hand_ppl(model, ids, 16, 2), rel=1e-5)


def test_test_text_joined_with_blank_lines_and_tokenized_once():
    tok = tiny_tokenizer()
    rows = [" = Title = \n", "", " Some text . \n"]
    ids = tokenize_test_text(tok, rows)
    assert ids.tolist() == tok(" = Title = \n\n\n\n\n Some text . \n")["input_ids"]


def test_bad_windows_fail_clearly():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"fewer than seqlen.*fix"):
        perplexity(model, torch.arange(10), seqlen=16, progress=False)
    with pytest.raises(ValueError, match=r"max_windows.*fix"):
        perplexity(model, torch.arange(40), seqlen=16, max_windows=0, progress=False)
