"""Where the authors' code departs from Algorithm 1: every quirk in one named place.

``DSnoTConfig(reference_quirks=True)`` (the ``official`` preset) switches on ``REFERENCE``, which
reproduces the reference code bit for bit (14 reference layers, the whole-model masks of
SmolLM2-135M); ``reference_quirks=False`` (the ``paper`` preset) uses ``NONE``, Algorithm 1 as the
paper states it. ``dsnot()`` itself never tests the flag: it asks this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Quirks:
    """One switch per departure from Algorithm 1 (spec facts R2-R5, R9 and what the spec does not list)."""

    grow_list_whole_row: bool
    """R2: the Eq. 2 grow list ranks the whole row, kept weights at score 0 between its two ends."""
    prune_list_zero_fill: bool
    """R3: kept weights whose contribution is exactly 0 are read as the row's weakest kept weight."""
    loose_pointers: bool
    """R2/R9: a pointer may run past its own sign segment or cross the other; only leaving the
    list stops a row (where the reference would crash)."""
    stopped_rows_write: bool
    """Stopped rows keep writing their (no-op) swap and moving their pointers until every row has
    stopped; a pointer that ran onto kept weights then prunes them (sparsity drift at large T)."""
    nm_sign_check: bool
    """R5: the N:M branch always applies the sign check (R4), whatever the setting."""
    nm_any_sign: bool
    """N:M prune takes the block's lowest key whatever its sign, and a block's candidate is used up
    even when no swap happens."""

    def sign_check(self, configured: bool, nm: bool) -> bool:
        """Whether R4's sign check applies."""
        return configured or (nm and self.nm_sign_check)

    def write_swap(
        self, pruned: torch.Tensor, grow: torch.Tensor, prune: torch.Tensor, update: torch.Tensor, has: torch.Tensor
    ) -> None:
        """Apply the swap where ``update``; with ``stopped_rows_write`` every row with candidates writes."""
        current_p, current_g = pruned.gather(1, prune), pruned.gather(1, grow)
        if self.stopped_rows_write:  # the reference's unconditional scatters
            new_p, new_g = torch.where(has, update, current_p), torch.where(has, ~update, current_g)
        else:
            new_p, new_g = current_p | update, current_g & ~update
        pruned.scatter_(1, prune, new_p)
        pruned.scatter_(1, grow, new_g)

    def moving_rows(self, active: torch.Tensor) -> torch.Tensor | None:
        """Rows whose pointers advance this iteration (``None``: every row)."""
        return None if self.stopped_rows_write else active

    def nm_used(self, update: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """N:M rows whose in-block prune candidate is used up this iteration."""
        return has if self.nm_any_sign else update


REFERENCE = Quirks(
    grow_list_whole_row=True,
    prune_list_zero_fill=True,
    loose_pointers=True,
    stopped_rows_write=True,
    nm_sign_check=True,
    nm_any_sign=True,
)
NONE = Quirks(
    grow_list_whole_row=False,
    prune_list_zero_fill=False,
    loose_pointers=False,
    stopped_rows_write=False,
    nm_sign_check=False,
    nm_any_sign=False,
)
