"""Streaming per-input-channel statistics of a linear layer's calibration inputs.

One ``ChannelStats`` per ``nn.Linear``; feed it the layer inputs batch by batch (a forward hook
does this in the pipeline). Everything is accumulated in fp32 (R11).

Two flavours of E[A] and Var(A) are kept side by side, so a user can choose:

* ``official`` (spec R1, what the reference code computes):
  ``sum_metric_row`` = running mean over samples of each sample's *sum* over its tokens
  (so it is seqlen x the token mean), ``scaler_row`` = running mean over samples of each
  sample's squared L2 norm, ``var`` = token-weighted mean of each sample's own biased variance.
* ``true``: the token mean ``mean`` and the pooled biased variance ``pooled_var`` over all tokens.

With ``hessian=True`` it also accumulates SparseGPT's ``H = 2/nsamples * sum_x x x^T``.
Every leading element of a 3-D batch counts as one sample, exactly as if the samples had been
fed one by one, so the result does not depend on the batch size.
"""

from __future__ import annotations

import torch

FLAVOURS = ("official", "true")


class ChannelStats:
    """Accumulates R1 statistics (and optionally the Hessian) of inputs with ``in_features`` channels."""

    def __init__(self, in_features: int, *, hessian: bool = False, device: torch.device | str | None = None):
        if not isinstance(in_features, int) or in_features <= 0:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = in_features
        zeros = lambda: torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sum_metric_row = zeros()
        self.scaler_row = zeros()
        self.var = zeros()
        self.mean = zeros()
        self._sq_dev = zeros()  # sum of squared deviations from the running mean (Chan et al.)
        self.nsamples = 0
        self.ntokens = 0
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None

    @property
    def gram(self) -> torch.Tensor | None:
        """``sum_t x_t x_t^T`` over every token seen (SparseGPT's ``H`` is ``2 / nsamples`` times it)."""
        return None if self.hessian is None else self.hessian * (self.nsamples / 2)

    @property
    def pooled_var(self) -> torch.Tensor:
        """Biased variance of every channel over all tokens seen."""
        return self._sq_dev / max(self.ntokens, 1)

    def add_batch(self, x: torch.Tensor) -> None:
        """Add ``x`` of shape (B, L, C) (B samples) or (L, C) (one sample)."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs must be (batch, tokens, {self.in_features}) or (tokens, {self.in_features}), "
                f"got {tuple(x.shape)}; hook the input of the layer these statistics belong to"
            )
        x = x.to(device=self.sum_metric_row.device, dtype=torch.float32)
        # Per-sample reductions for the whole batch at once; the running update below is per
        # sample because R1's statistics are running means over samples.
        tokens = x.shape[1]
        means = x.mean(dim=1)
        variances = x.var(dim=1, unbiased=False)
        sq_norms = torch.linalg.vector_norm(x, ord=2, dim=1) ** 2
        sums = x.sum(dim=1)
        for i in range(x.shape[0]):
            self._add_sample(tokens, means[i], variances[i], sq_norms[i], sums[i])
        if self.hessian is not None:
            self._add_hessian(x)

    def _add_sample(self, tokens: int, mean: torch.Tensor, var: torch.Tensor, sq_norm: torch.Tensor, total: torch.Tensor) -> None:
        """R1 running update with one sample's per-channel mean, variance, squared norm and sum."""
        if self.ntokens == 0:
            self.var = var
            self.mean = mean
            self._sq_dev = var * tokens
        else:
            count = self.ntokens + tokens
            delta = mean - self.mean
            self._sq_dev = self._sq_dev + var * tokens + delta**2 * (self.ntokens * tokens / count)
            self.var = (self.var * self.ntokens + var * tokens) / count
            self.mean = (self.mean * self.ntokens + mean * tokens) / count
        self.ntokens += tokens

        self.scaler_row *= self.nsamples / (self.nsamples + 1)
        self.sum_metric_row *= self.nsamples / (self.nsamples + 1)
        self.nsamples += 1
        self.scaler_row += sq_norm / self.nsamples
        self.sum_metric_row += total / self.nsamples

    def _add_hessian(self, x: torch.Tensor) -> None:
        """SparseGPT's running ``H = 2/n sum x x^T`` over the B samples of ``x``."""
        batch = x.shape[0]
        n_before = self.nsamples - batch
        self.hessian *= n_before / self.nsamples
        flat = x.reshape(-1, self.in_features) * (2.0 / self.nsamples) ** 0.5
        self.hessian += flat.t() @ flat

    def expected_input(self, flavour: str) -> torch.Tensor:
        """E[A] per channel: R1's seqlen-scaled ``sum_metric_row`` or the true token mean."""
        return self.sum_metric_row if _check_flavour(flavour) == "official" else self.mean

    def variance(self, flavour: str) -> torch.Tensor:
        """Var(A) per channel: R1's mean of per-sample variances or the pooled variance."""
        return self.var if _check_flavour(flavour) == "official" else self.pooled_var

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ChannelStats:
        """Rebuild a statistics object from stored vectors (the reference files' format).

        Only the official vectors are required; ``mean`` is used when present, and the pooled
        variance falls back to ``var`` (the stored files do not carry it).
        """
        missing = [k for k in ("sum_metric_row", "scaler_row", "var") if k not in tensors]
        if missing:
            raise ValueError(f"statistics are missing {missing}; a reference file carries all three")
        c_in = int(tensors["sum_metric_row"].shape[0])
        stats = cls(c_in, device=tensors["sum_metric_row"].device)
        stats.sum_metric_row = tensors["sum_metric_row"].float()
        stats.scaler_row = tensors["scaler_row"].float()
        stats.var = tensors["var"].float()
        stats.mean = tensors.get("mean", stats.mean).float()
        stats.nsamples = 1
        stats.ntokens = 1
        stats._sq_dev = stats.var.clone()
        if "hessian" in tensors:
            stats.hessian = tensors["hessian"].float()
        return stats

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The four vectors of the reference format (plus ``pooled_var``)."""
        return {
            "sum_metric_row": self.sum_metric_row,
            "scaler_row": self.scaler_row,
            "var": self.var,
            "mean": self.mean,
            "pooled_var": self.pooled_var,
        }


def _check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise ValueError(f"statistics flavour must be one of {FLAVOURS}, got {flavour!r}")
    return flavour
