"""What the CPU kernels compiled with numba (``exact_kernel``, ``refit_kernel``) share: one thread pool,
as many threads as torch uses."""

from __future__ import annotations

import numba
import torch

# numba's own thread pool: its OpenMP layer would reset the thread count torch reads (set_num_threads)
numba.config.THREADING_LAYER = "workqueue"


def match_torch_threads() -> None:
    """Give the next kernel call as many threads as torch has (within numba's pool)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
