"""WikiText-2 perplexity with the Wanda/SparseGPT protocol (``eval_ppl_wikitext``).

Join the rows of a split with ``"\\n\\n"``, tokenize once (tokenizer defaults, as the reference;
the SmolLM2 tokenizer adds no BOS), cut non-overlapping ``seqlen`` windows, drop the remainder,
and report ``exp(mean NLL)`` over all predicted tokens (``seqlen - 1`` per window). The mean NLL
of every window is kept too, so two models evaluated on the same windows can be compared window
by window (paired intervals, ``study.intervals``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LOGITS_BUDGET_BYTES = 2**30  # fp32 logits held at once; large vocabularies get smaller batches


@dataclass
class PerplexityResult:
    ppl: float
    mean_nll: float
    windows: int  # windows evaluated
    total_windows: int  # windows the text has at this seqlen
    predicted_tokens: int
    seqlen: int
    max_windows: int | None
    window_nll: list[float] = field(default_factory=list)  # mean NLL of each window, in order
    batch_size: int = 1  # windows per forward actually used


def tokenize_test_text(tokenizer, rows: list[str]) -> torch.Tensor:
    """Token ids (1-D long tensor) of ``"\\n\\n".join(rows)``, tokenized once."""
    return torch.tensor(tokenizer("\n\n".join(rows))["input_ids"], dtype=torch.long)


def eval_batch_size(requested: int, seqlen: int, vocab_size: int) -> int:
    """Windows per forward: ``requested``, lowered so the fp32 logits fit ``LOGITS_BUDGET_BYTES``."""
    return max(1, min(requested, LOGITS_BUDGET_BYTES // max(1, seqlen * vocab_size * 4)))


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` over non-overlapping ``seqlen`` windows of ``token_ids``.

    ``max_windows`` evaluates only the first windows (a quick, not a full, number; it is
    recorded in the result). The model is moved to ``device`` as a whole.
    """
    total = int(token_ids.numel()) // seqlen
    if total == 0:
        raise ValueError(f"text has {token_ids.numel()} tokens, fewer than seqlen {seqlen}; fix: lower --seqlen")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}; fix: pass a positive number or omit it")
    nwin = total if max_windows is None else min(total, max_windows)
    windows = token_ids[: nwin * seqlen].view(nwin, seqlen)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
    batch = eval_batch_size(batch_size, seqlen, vocab)
    model.to(device)
    sums: list[float] = []
    with torch.inference_mode():
        for start in tqdm(range(0, nwin, batch), desc="eval windows", disable=not progress):
            ids = windows[start : start + batch].to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            vocab = logits.shape[-1]  # rows of (token, vocabulary): 3x faster than a (batch, vocab, token) view
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="none")
            sums += loss.view(ids.shape[0], -1).double().sum(dim=1).tolist()
            del logits, loss
    per_window = seqlen - 1
    mean_nll = math.fsum(sums) / (nwin * per_window)
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        mean_nll=mean_nll,
        windows=nwin,
        total_windows=total,
        predicted_tokens=nwin * per_window,
        seqlen=seqlen,
        max_windows=max_windows,
        window_nll=[s / per_window for s in sums],
        batch_size=batch,
    )
