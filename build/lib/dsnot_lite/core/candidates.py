"""Ranked candidate lists read from both ends by two pointers (spec R2, R3).

DSnoT ranks the grow and the prune candidates of every row once per layer and then consumes
each list from its front or its back, one weight per iteration. At most ``T`` weights are ever
taken from a list, so only its ``k = T`` first and ``k`` last entries are materialised, found
with two ``topk`` calls instead of a full sort of the (C_out, C_in) matrix.

The order must be exactly that of a *stable* ascending sort (the reference's). ``topk`` alone
gives it whenever the selected values are all distinct, which is the common case; rows where
two selected values tie (or that hold fewer than ``k + 1`` candidates) are redone with unique
int64 keys, the float value mapped to an order-preserving integer with the column index in the
low bits, so that equal values rank by column as in a stable sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_COL_BITS = 24  # columns per row up to 16.7 M
_VALUE_BITS = 32
_RANK_MAX = (1 << (_COL_BITS + _VALUE_BITS)) - 1
_NEGATIVE, _ZERO, _POSITIVE = 0, 1, 2


def stable_rank_key(values: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys whose ascending order is ``torch.sort(values, dim=1, stable=True)``'s."""
    cols = values.shape[1]
    if cols >= 1 << _COL_BITS:
        raise ValueError(f"rows of {cols} columns are too long for the ranking keys (max {1 << _COL_BITS})")
    bits = (values.float() + 0.0).contiguous().view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
    ordered = torch.where(bits < 0, -bits - (1 << 31) - 1, bits) + (1 << 31)  # [0, 2^32), monotone
    column = torch.arange(cols, device=values.device)
    return (ordered << _COL_BITS) | column


@dataclass
class Candidates:
    """The two ends of a per-row ranked list, addressed by virtual position ``0 .. size-1``.

    ``front[:, i]`` is the column at position ``i``; ``back[:, j]`` the column at position
    ``size - k + j``. Positions ``< front_limit`` are real candidates for the front pointer,
    positions ``>= back_limit`` for the back pointer. ``fill`` (reference quirk R3) replaces
    the columns at positions ``fill_from <= p < fill_to``. ``end`` says which end a row uses:
    ``grow`` = back when its error > 0, ``prune`` = back when its error < 0, else ``front``/``back``.
    """

    front: torch.Tensor
    back: torch.Tensor
    size: torch.Tensor
    front_limit: torch.Tensor
    back_limit: torch.Tensor
    end: str
    fill: torch.Tensor | None = None
    fill_from: torch.Tensor | None = None
    fill_to: torch.Tensor | None = None

    def take_back(self, error: torch.Tensor) -> torch.Tensor:
        if self.end == "grow":
            return error > 0
        if self.end == "prune":
            return error < 0
        return torch.full_like(error, self.end == "back", dtype=torch.bool)

    def column(self, position: torch.Tensor) -> torch.Tensor:
        """Column at each row's virtual ``position`` (R, 1); positions out of the pool are clamped."""
        k = self.front.shape[1]
        from_front = self.front.gather(1, position.clamp(0, k - 1))
        from_back = self.back.gather(1, (position - (self.size.unsqueeze(1) - k)).clamp(0, k - 1))
        col = torch.where(position < k, from_front, from_back)
        if self.fill is not None:
            in_fill = (position >= self.fill_from.unsqueeze(1)) & (position < self.fill_to.unsqueeze(1))
            col = torch.where(in_fill, self.fill.unsqueeze(1), col)
        return col

    def reachable(self, back: torch.Tensor, front_pos: torch.Tensor, back_pos: torch.Tensor, strict: bool) -> torch.Tensor:
        """Whether the pointer each row uses still points at a candidate (R9).

        ``strict=False`` is the reference's view: any position inside the list will do (it only
        fails, by crashing, once a pointer leaves the list). ``strict=True`` also requires the
        pointer to stay in its own segment and the two pointers not to cross.
        """
        position = torch.where(back, back_pos, front_pos)
        inside = (position >= 0) & (position < self.size.unsqueeze(1))
        if not strict:
            return inside
        own_segment = torch.where(back, back_pos >= self.back_limit.unsqueeze(1), front_pos < self.front_limit.unsqueeze(1))
        return inside & own_segment & (front_pos <= back_pos)


def _exact_ends(keys: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of the ``k`` smallest and ``k`` largest valid unique keys, both ascending."""
    big = torch.iinfo(torch.int64).max
    front = torch.topk(keys.masked_fill(~valid, big), k, dim=1, largest=False).indices
    back = torch.topk(keys.masked_fill(~valid, -big - 1), k, dim=1, largest=True).indices.flip(1)
    return front, back


def _fast_end(
    values: torch.Tensor, members: torch.Tensor | None, count: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` best member columns by float ``topk`` (best first) and the rows where ties make it ambiguous.

    ``members=None`` means every column; ``count`` is the number of members per row.
    """
    if members is not None:
        values = torch.where(members, values, float("-inf") if largest else float("inf"))
    top = torch.topk(values, min(k + 1, values.shape[1]), dim=1, largest=largest)
    tied = (top.values[:, 1:] == top.values[:, :-1]).any(1) | (count <= k)
    return top.indices[:, :k], tied


def _width(k: int, cols: int) -> int:
    return max(1, min(k, cols))


def ascending(values: torch.Tensor, valid: torch.Tensor | None, size: torch.Tensor, k: int, end: str) -> Candidates:
    """Valid columns (``None``: all) ranked by ``values`` ascending (stable); both ends share one pool.

    ``size`` is the number of valid columns of each row.
    """
    k = _width(k, values.shape[1])
    front, tied_front = _fast_end(values, valid, size, k, largest=False)
    back, tied_back = _fast_end(values, valid, size, k, largest=True)
    back = back.flip(1)
    redo = (tied_front | tied_back).nonzero().squeeze(1)
    if redo.numel():
        pool = torch.ones_like(values[redo], dtype=torch.bool) if valid is None else valid[redo]
        front[redo], back[redo] = _exact_ends(stable_rank_key(values[redo]), pool, k)
    return Candidates(front, back, size, front_limit=size, back_limit=torch.zeros_like(size), end=end)


def sign_partitioned(
    rank: torch.Tensor,
    valid: torch.Tensor,
    size: torch.Tensor,
    contribution: torch.Tensor,
    *,
    negatives_ascending: bool,
    k: int,
    end: str,
    segments_only: bool,
) -> tuple[Candidates, torch.Tensor, torch.Tensor]:
    """Eq. 3 ordering: negative contributions at the front, zero ones in the middle (by ``rank``
    ascending), positive ones at the back.

    Within a sign, entries go by ``rank`` (stable): the negatives ascending and the positives
    descending when ``negatives_ascending`` (so each end yields the lowest ``rank`` of its sign
    first, the prune list of R3), the reverse otherwise (each end yields the highest first).
    ``segments_only`` promises that no pointer leaves its sign segment (strict pointers), so
    only the first ``k`` of each segment are needed. ``size`` is the number of valid columns of
    each row. Returns the list and the per-row counts of negative and zero-contribution candidates.
    """
    k = _width(k, rank.shape[1])
    negative, positive = valid & (contribution < 0), valid & (contribution > 0)
    n_neg, n_pos = negative.sum(1), positive.sum(1)
    n_zero = size - n_neg - n_pos
    lowest_first = negatives_ascending
    front, tied_front = _fast_end(rank, negative, n_neg, k, largest=not lowest_first)
    back, tied_back = _fast_end(rank, positive, n_pos, k, largest=not lowest_first)
    back = back.flip(1)
    redo = tied_front | tied_back
    if not segments_only:  # a pointer may run past its segment: those rows need the whole order
        redo |= (n_neg < k) | (n_pos < k)
    redo = redo.nonzero().squeeze(1)
    if redo.numel():
        front[redo], back[redo] = _exact_ends(
            _partition_keys(rank[redo], contribution[redo], negatives_ascending), valid[redo], k
        )
    cands = Candidates(front, back, size, front_limit=n_neg, back_limit=n_neg + n_zero, end=end)
    return cands, n_neg, n_zero


def _partition_keys(rank: torch.Tensor, contribution: torch.Tensor, negatives_ascending: bool) -> torch.Tensor:
    """Unique keys ordering negatives, zeros, positives, each by stable ``rank`` (see above)."""
    rank_key = stable_rank_key(rank)
    sign = torch.sign(contribution)
    group = torch.where(sign < 0, _NEGATIVE, torch.where(sign > 0, _POSITIVE, _ZERO))
    descending = torch.where(sign < 0, not negatives_ascending, torch.where(sign > 0, negatives_ascending, False))
    within = torch.where(descending, _RANK_MAX - rank_key, rank_key)
    return (group.long() << (_COL_BITS + _VALUE_BITS)) | within


def weakest(rank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, the valid column that a stable ascending sort of ``rank`` puts first."""
    lowest = rank.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    return (valid & (rank == lowest)).int().argmax(dim=1)  # first column holding the minimum


class Pointers:
    """A front and a back pointer per row over a ``Candidates`` list (R2): each iteration the row's
    error picks one end (``Candidates.end``), ``next`` reads it and ``advance`` moves it inward."""

    def __init__(self, cands: Candidates, strict: bool):
        rows = cands.size.shape[0]
        self.cands, self.strict = cands, strict
        self.front = torch.zeros(rows, 1, dtype=torch.long, device=cands.size.device)
        self.back = cands.size.reshape(rows, 1) - 1
        self._from_back = torch.zeros(rows, 1, dtype=torch.bool, device=cands.size.device)

    def next(self, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(column, whether it is a candidate) at the end each row's ``error`` selects."""
        self._from_back = self.cands.take_back(error)
        ok = self.cands.reachable(self._from_back, self.front, self.back, strict=self.strict)
        return self.cands.column(torch.where(self._from_back, self.back, self.front)), ok

    def advance(self, rows: torch.Tensor | None) -> None:
        """Move the pointer used by the last ``next`` one step inward (every row, or ``rows`` only)."""
        step = torch.ones_like(self.front) if rows is None else rows.long()
        self.front += step * (~self._from_back).long()
        self.back -= step * self._from_back.long()
