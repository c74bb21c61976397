"""WikiText-2 perplexity with the Wanda/SparseGPT protocol (``eval_ppl_wikitext``).

Join the test rows with ``"\\n\\n"``, tokenize once (tokenizer defaults, as the reference; the
SmolLM2 tokenizer adds no BOS), cut non-overlapping ``seqlen`` windows, drop the remainder, and
report ``exp(mean NLL)`` over all predicted tokens (``seqlen - 1`` per window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class PerplexityResult:
    ppl: float
    mean_nll: float
    windows: int  # windows evaluated
    total_windows: int  # windows the text has at this seqlen
    predicted_tokens: int
    seqlen: int
    max_windows: int | None


def tokenize_test_text(tokenizer, rows: list[str]) -> torch.Tensor:
    """Token ids (1-D long tensor) of ``"\\n\\n".join(rows)``, tokenized once."""
    return torch.tensor(tokenizer("\n\n".join(rows))["input_ids"], dtype=torch.long)


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
    model.to(device)
    nll_sum = 0.0
    count = 0
    with torch.inference_mode():
        for start in tqdm(range(0, nwin, batch_size), desc="eval windows", disable=not progress):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            nll_sum += float(loss)
            count += ids[:, 1:].numel()
    mean_nll = nll_sum / count
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        mean_nll=mean_nll,
        windows=nwin,
        total_windows=total,
        predicted_tokens=count,
        seqlen=seqlen,
        max_windows=max_windows,
    )
