"""Paired comparisons of two pruned models with uncertainty.

Both runs are scored on the same WikiText-2 windows, each of ``seqlen - 1`` predicted tokens, so
the log-perplexity of a run is the mean of its per-window mean NLLs and the difference of two runs
is the mean of the per-window differences ``d_w``. ``paired_difference`` bootstraps the windows
(resampling the same windows for every seed) to give a 95% interval of that mean difference, and
reports the difference of every calibration seed on its own (the seed spread).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BOOTSTRAP_SAMPLES = 4000


@dataclass(frozen=True)
class PairedDifference:
    """``B`` minus ``A`` in log-perplexity (negative: B is better), over windows and seeds."""

    mean: float  # mean over seeds of the mean window difference
    low: float  # 95% bootstrap interval over windows (seeds averaged per window)
    high: float
    per_seed: tuple[float, ...]
    windows: int

    @property
    def ratio(self) -> tuple[float, float, float]:
        """Perplexity ratio B / A with its interval: ``(exp(mean), exp(low), exp(high))``."""
        return math.exp(self.mean), math.exp(self.low), math.exp(self.high)

    @property
    def decided(self) -> bool:
        """Whether the interval excludes 0 and every seed agrees on the sign."""
        same_sign = all(d < 0 for d in self.per_seed) or all(d > 0 for d in self.per_seed)
        return (self.high < 0 or self.low > 0) and same_sign

    def text(self, seeds: Sequence[int] | None = None) -> str:
        """``-12.3% [-13.0, -11.6] (seeds: -12.0, -12.6)``: perplexity change of B against A, its 95%
        interval and each seed's own change; ``seeds`` names them (``(seeds 0, 1: ...)``)."""
        r, lo, hi = self.ratio
        changes = ", ".join(f"{100 * (math.exp(d) - 1):+.1f}" for d in self.per_seed)
        named = "seeds" if seeds is None else f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        return f"{100 * (r - 1):+.1f}% [{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}] ({named}: {changes})"


def paired_difference(a_runs: list[dict], b_runs: list[dict], seed: int = 0) -> PairedDifference:
    """``B - A`` from runs paired by position (seed ``i`` of A with seed ``i`` of B; a single A run,
    such as the dense model, pairs with every B). Every run must carry ``window_nll`` of the same windows."""
    if len(a_runs) == 1 and len(b_runs) > 1:
        a_runs = a_runs * len(b_runs)
    if len(a_runs) != len(b_runs) or not a_runs:
        raise ValueError(f"cannot pair {len(a_runs)} runs with {len(b_runs)}; fix: give one run per seed on each side")
    diffs = []
    for a, b in zip(a_runs, b_runs):
        na, nb = torch.tensor(a["window_nll"], dtype=torch.float64), torch.tensor(b["window_nll"], dtype=torch.float64)
        if na.shape != nb.shape or a["seqlen"] != b["seqlen"] or a.get("eval_split") != b.get("eval_split"):
            raise ValueError(f"runs {a['name']} and {b['name']} were not scored on the same windows; fix: pair like with like")
        diffs.append(nb - na)
    d = torch.stack(diffs)  # (seeds, windows)
    per_window = d.mean(0)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, per_window.numel(), (BOOTSTRAP_SAMPLES, per_window.numel()), generator=gen)
    means = per_window[picks].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return PairedDifference(
        mean=float(per_window.mean()), low=low, high=high, per_seed=tuple(float(x) for x in d.mean(1)),
        windows=per_window.numel(),
    )  # fmt: skip
