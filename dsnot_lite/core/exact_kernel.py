"""The exact refiner's unstructured search, compiled for the CPU (numba): the same swaps, fewer passes.

``exact._refine_rows`` runs Algorithm "best 1-swap" on all rows at once with torch operators: per
step about a dozen passes over the rows (gains, costs, two ``topk``, gathers, the ``u`` update).
Rows are independent, so this kernel runs each row to its end on its own. Per step: one
vectorised pass scores every column; a shortlist of the ``k`` best grow gains and prune costs is
chosen; ``k x k`` pairs are scored; one pass updates ``u``.

The shortlist is the ``k`` smallest scores, ties to the earlier column. The first step finds it
by one scan with insertion into a short sorted list (``_shortlist``). Later steps take a bar from
the previous step's shortlist, count (vectorised) how many scores lie at or under it, and
move the bar until at least ``k`` and few more do (``_bar``); only those columns are then
ranked (``_candidates``, ``_select``). Any bar with at least ``k`` scores under it holds the
``k`` smallest, so the shortlist is the scan's, exactly; where no bar is found the scan runs.
Insertion on every column was most of the time (mispredicted branches); counting is not.

Every quantity is computed with the same float32 operations in the same order as the torch
path (the ``u`` update as a fused multiply-add, which is what torch's CPU ``addcmul_``
computes), so it returns the same swaps, swap counts, errors and traces, up to near-ties:
torch's ``topk`` leaves equal values in an unspecified order (the kernel keeps the earlier
column; both choices have the same delta), and the torch path itself rounds a few entries
differently with the number of rows it works on (its working set shrinks as rows stop), so where
two scores at the edge of a shortlist agree to a few float32 ulps the two may keep different
columns. ``tests/core/test_exact_kernel.py`` checks this against the torch path;
``bench/exact_kernel.py`` on the 210 layers of a real run.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_INF = np.float32(np.inf)
# numba's own thread pool: its OpenMP layer would reset the thread count torch reads (set_num_threads)
numba.config.THREADING_LAYER = "workqueue"


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _swap_update(u, r, g, p, w_p, q, w_q):
    """``u[r] += G[p] w_p``, then ``u[r] += G[q] w_q``, each with one rounding per entry (a fused
    multiply-add), as torch's CPU ``addcmul_`` computes them one after the other; one pass.
    ``contract`` is the only fast-math flag, and only here."""
    for j in range(u.shape[1]):
        after_p = u[r, j] + g[p, j] * w_p
        u[r, j] = after_p + g[q, j] * w_q


@numba.njit(cache=True, nogil=True)
def _insert(values, index, count, value, col, k):
    """Insert ``value`` (column ``col``) into the ascending list ``values[:count]`` (at most ``k``
    long; equal values keep their order, earlier columns first); returns the new count."""
    if count == k and not value < values[k - 1]:
        return count
    at = count if count < k else k - 1
    while at > 0 and value < values[at - 1]:
        if at < k:
            values[at], index[at] = values[at - 1], index[at - 1]
        at -= 1
    values[at], index[at] = value, col
    return count + 1 if count < k else k


@numba.njit(cache=True, nogil=True)
def _shortlist(scores, values, index, k):
    """The ``k`` smallest finite ``scores`` in ascending order (ties: earlier column first) into
    ``values`` / ``index``; returns how many there are (fewer than ``k`` if fewer are finite)."""
    count, bar = 0, _INF  # bar: the value to beat (+inf until the list is full); one predictable test
    for j in range(scores.shape[0]):
        if scores[j] < bar:
            count = _insert(values, index, count, scores[j], j, k)
            if count == k:
                bar = values[k - 1]
    return count


@numba.njit(cache=True, nogil=True, inline="always")
def _count_at_most(scores, bar):
    """How many ``scores`` are ``<= bar`` (int32 lanes: one vectorised pass)."""
    count = np.int32(0)
    for j in range(scores.shape[0]):
        count += np.int32(scores[j] <= bar)
    return count


@numba.njit(cache=True, nogil=True, inline="always")
def _bar(scores, last, last_count, k):
    """A bar with at least ``k`` of ``scores`` at or under it, and not many more (at most
    ``k + k // 2`` where six halvings find one), from ``last``, the previous step's shortlist;
    ``inf`` where none is found (the caller then scans)."""
    if last_count < k:
        return _INF
    spread = last[k - 1] - last[0]
    low, slack = -_INF, np.float32(0.0)  # low: a bar known to hold fewer than k
    for _ in range(6):
        bar = last[k - 1] + slack * spread
        count = _count_at_most(scores, bar)
        if count >= k:
            for _ in range(6):  # halve the gap to ``low`` while too many lie under the bar
                if count <= k + k // 2 or not low > -_INF:
                    break
                middle = np.float32(0.5) * (low + bar)
                fewer = _count_at_most(scores, middle)
                if fewer >= k:
                    bar, count = middle, fewer
                else:
                    low = middle
            return bar
        low = bar
        slack = np.float32(0.125) if slack == 0 else slack * np.float32(4.0)
    return _INF


@numba.njit(cache=True, nogil=True, inline="always")
def _candidates(grow_score, prune_score, grow_bar, prune_bar, grow_at, prune_at):
    """The columns whose score is at or under each bar, in column order, into ``grow_at`` /
    ``prune_at`` (``cols + 1`` long); returns how many. Branch-free: one store per column."""
    n_grow, n_prune = 0, 0
    for j in range(grow_score.shape[0]):
        grow_at[n_grow] = j
        prune_at[n_prune] = j
        n_grow += grow_score[j] <= grow_bar
        n_prune += prune_score[j] <= prune_bar
    return n_grow, n_prune


@numba.njit(cache=True, nogil=True, inline="always")
def _select(scores, at, n, values, index, k):
    """The ``k`` smallest of ``scores[at[:n]]`` (``n >= k``), ascending, ties to the earlier
    column, into ``values`` / ``index``: each one's rank among the others (branch-free), or the
    full scan when ``n`` is large (many equal scores at the bar). Returns ``k``."""
    if n > 4 * k:
        return _shortlist(scores, values, index, k)
    for a in range(n):
        value, rank = scores[at[a]], 0
        for b in range(n):
            other = scores[at[b]]
            rank += (other < value) | ((other == value) & (b < a))
        if rank < k:
            values[rank], index[rank] = value, at[a]
    return k


@numba.njit(cache=True, nogil=True, inline="always")
def shortlists(grow_score, prune_score, gain, grow, cost, prune, n_grow, n_prune, grow_at, prune_at, k):
    """The two shortlists of one step (see the module's docstring); ``gain`` ... ``prune`` hold the
    previous step's, with ``n_grow`` / ``n_prune`` entries (0 at the first step). Returns the new
    counts: ``k``, or fewer where fewer scores are finite."""
    grow_bar = _bar(grow_score, gain, n_grow, k)
    prune_bar = _bar(prune_score, cost, n_prune, k)
    if grow_bar < _INF and prune_bar < _INF:
        n_grow, n_prune = _candidates(grow_score, prune_score, grow_bar, prune_bar, grow_at, prune_at)
        return _select(grow_score, grow_at, n_grow, gain, grow, k), _select(prune_score, prune_at, n_prune, cost, prune, k)
    return _shortlist(grow_score, gain, grow, k), _shortlist(prune_score, cost, prune, k)


@numba.njit(cache=True, parallel=True)
def refine_rows(w, g, pruned, u, tolerance, error, T, k, swaps, stop, history, codes):
    """Greedy best 1-swaps for every row of ``w`` (float32, C-contiguous): ``pruned``, ``u``,
    ``error``, ``swaps``, ``stop`` and, when it has T + 1 rows, ``history`` (each row's E_r after
    every iteration) are updated in place. ``codes`` are the caller's stop codes for (T reached,
    converged, no candidates), so this module imports nothing from ``exact``."""
    rows, cols = w.shape
    two = np.float32(2.0)
    record = history.shape[0] == T + 1
    for r in numba.prange(rows):
        self_term = np.empty(cols, np.float32)
        for j in range(cols):
            self_term[j] = w[r, j] * w[r, j] * g[j, j]
        grow_score, prune_score = np.empty(cols, np.float32), np.empty(cols, np.float32)
        gain, grow = np.empty(k, np.float32), np.empty(k, np.int64)
        cost, prune = np.empty(k, np.float32), np.empty(k, np.int64)
        grow_at, prune_at = np.empty(cols + 1, np.int64), np.empty(cols + 1, np.int64)
        code = codes[0]  # T reached, unless a step ends the row
        ng, npr = 0, 0
        for step in range(T):
            for j in range(cols):  # one branch-free pass (vectorised): both scores, +inf where not a candidate
                twice_wu = (two * w[r, j]) * u[r, j]
                grow_score[j] = self_term[j] - twice_wu if pruned[r, j] else _INF
                prune_score[j] = _INF if pruned[r, j] else twice_wu + self_term[j]
            ng, npr = shortlists(grow_score, prune_score, gain, grow, cost, prune, ng, npr, grow_at, prune_at, k)
            best, bg, bp = _INF, -1, -1
            for a in range(ng):
                for b in range(npr):
                    cross = g[grow[a], prune[b]] * (w[r, grow[a]] * w[r, prune[b]])
                    delta = (gain[a] + cost[b]) - two * cross
                    if delta < best:
                        best, bg, bp = delta, grow[a], prune[b]
            if not best < -tolerance[r]:
                code = codes[1] if best < _INF else codes[2]
                break
            _swap_update(u, r, g, bp, w[r, bp], bg, -w[r, bg])  # u += G[:, p] W_rp - G[:, g] W_rg
            pruned[r, bg], pruned[r, bp] = False, True
            error[r] = error[r] + best
            swaps[r] += 1
            if record:
                history[step + 1, r] = error[r]
        stop[r] = code
        if record:
            for t in range(swaps[r] + 1, T + 1):
                history[t, r] = error[r]


def refine_rows_cpu(w: torch.Tensor, g: torch.Tensor, pruned: torch.Tensor, u: torch.Tensor, tolerance: torch.Tensor,
                    error: torch.Tensor, T: int, k: int, history: torch.Tensor | None,
                    codes: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Run the kernel on CPU float32 tensors (``pruned``, ``u``, ``error`` and ``history`` in place);
    returns (swaps, stop codes from ``codes``: T reached, converged, no candidates). Uses as many
    threads as torch does."""
    rows = w.shape[0]
    swaps = np.zeros(rows, np.int64)
    stop = np.zeros(rows, np.int64)
    hist = history.numpy() if history is not None else np.zeros((0, rows), np.float32)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    refine_rows(w.contiguous().numpy(), g.contiguous().numpy(), pruned.numpy(), u.numpy(), tolerance.numpy(),
                error.numpy(), T, k, swaps, stop, hist, codes)  # fmt: skip
    return torch.from_numpy(swaps), torch.from_numpy(stop)
