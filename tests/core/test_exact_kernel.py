"""The compiled kernel of the exact refiner (``core/exact_kernel.py``) against the torch path: the
same masks, swaps, stop reasons, errors and traces, bit for bit, on the cases the refiner meets."""

import numpy as np
import pytest
import torch

from dsnot_lite.core.exact import ExactConfig, exact_refine


def _layer(rows, cols, seed, sparsity=0.6, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen)
    x = torch.randn(4 * cols, cols, generator=gen) + shift * torch.rand(cols, generator=gen)  # some channels offset
    gram = x.T @ x
    score = weight.abs() * gram.diagonal().sqrt()
    mask = score <= score.kthvalue(int(sparsity * cols), dim=1, keepdim=True).values  # per-row Wanda-like mask
    return weight, gram, mask


def _same(a, b):
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.swaps, b.swaps)
    assert torch.equal(a.stop_reason, b.stop_reason)
    assert torch.equal(a.initial_error, b.initial_error) and torch.equal(a.final_error, b.final_error)
    if a.trace is not None or b.trace is not None:
        assert torch.equal(a.trace, b.trace)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shortlist", [8, 3, None])
def test_the_kernel_makes_the_torch_paths_swaps(seed, shortlist):
    weight, gram, mask = _layer(48, 64, seed, shift=2.0 * seed)
    cfg = ExactConfig(T=30, shortlist=shortlist)
    torch_path = exact_refine(weight, gram, mask, cfg, kernel="torch", trace=True)
    kernel = exact_refine(weight, gram, mask, cfg, kernel="numba", trace=True)
    assert torch_path.flips > 0  # the case exercises swaps
    _same(torch_path, kernel)


@pytest.mark.parametrize("T", [0, 1, 50])
def test_edge_cases_stop_alike(T):
    weight, gram, mask = _layer(16, 32, 7)
    mask[0] = False  # nothing to grow: no candidates
    mask[1] = True  # nothing to prune
    for cfg in (ExactConfig(T=T), ExactConfig(T=T, shortlist=1)):
        _same(exact_refine(weight, gram, mask, cfg, kernel="torch"), exact_refine(weight, gram, mask, cfg, kernel="numba"))


def test_exact_ties_may_pick_another_column_of_the_same_value():
    """Row 2's zero weights that the mask keeps all have prune cost 0, equal to the last bit.
    torch's ``topk`` orders equal values as its selection algorithm leaves them (unspecified); the
    kernel keeps the earliest column. Both choices have the same delta, so after the swap the
    row's error is the same to the last bit, and every other row is identical."""
    weight, gram, mask = _layer(16, 32, 7)
    weight[2, :8] = 0.0
    zeros_kept = [j for j in range(8) if not mask[2, j]]
    assert len(zeros_kept) >= 2  # a tie to break
    cfg = ExactConfig(T=1, shortlist=1)
    a, b = exact_refine(weight, gram, mask, cfg, kernel="torch"), exact_refine(weight, gram, mask, cfg, kernel="numba")
    others = torch.arange(16) != 2
    assert torch.equal(a.mask[others], b.mask[others]) and torch.equal(a.swaps, b.swaps)
    assert torch.equal(a.final_error, b.final_error)
    pruned = lambda r: (~mask[2] & r.mask[2]).nonzero().flatten().tolist()
    assert pruned(b) == zeros_kept[:1] and set(pruned(a)) <= set(zeros_kept)  # a zero weight either way


def test_auto_uses_the_kernel_on_the_cpu_and_float64_input_is_searched_in_float32():
    weight, gram, mask = _layer(32, 40, 3)
    auto = exact_refine(weight.double(), gram.double(), mask, kernel="auto")
    _same(exact_refine(weight, gram, mask, kernel="torch"), auto)


def test_bad_kernel_names_and_uses_are_refused():
    weight, gram, mask = _layer(8, 16, 0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        exact_refine(weight, gram, mask, kernel="fast")
    with pytest.raises(ValueError, match="unstructured search on the CPU"):
        exact_refine(weight, gram, mask, nm=(2, 4), kernel="numba")


def test_the_kernel_leaves_torchs_thread_count_alone():
    """numba's OpenMP layer would reset the count torch reads; the kernel uses numba's own pool."""
    weight, gram, mask = _layer(32, 40, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        exact_refine(weight, gram, mask, kernel="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _scores(rng, cols, finite_share, levels):
    """Scores with ties (``levels`` distinct values, or continuous when 0) and +inf entries."""
    values = rng.standard_normal(cols).astype(np.float32)
    if levels:
        values = np.round(values * levels) / np.float32(levels)
    values[rng.random(cols) > finite_share] = np.inf
    return values.astype(np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_the_shortlist_from_a_bar_is_the_scans(seed):
    """Later steps take the shortlist from the columns under a bar found by counting; any bar with
    k scores under it holds the k smallest, so values, columns (ties: earlier first) and counts
    equal the full scan's, whatever last step's shortlist was: close, stale, or short."""
    from dsnot_lite.core.exact_kernel import _bar, _shortlist, shortlists

    rng = np.random.default_rng(seed)
    cols = int(rng.choice([5, 64, 577]))
    k = int(rng.choice([1, 3, 8]))
    bars_found = 0
    for trial in range(40):
        finite, levels = float(rng.choice([1.0, 0.6, 0.05])), int(rng.choice([0, 4, 50]))
        grow_score, prune_score = _scores(rng, cols, finite, levels), _scores(rng, cols, finite, levels)
        drift = np.float32(rng.choice([0.0, 0.01, 1.0]))  # last step's scores: the same, close, or far
        last = [s + drift * rng.standard_normal(cols).astype(np.float32) for s in (grow_score, prune_score)]
        gain, grow, cost, prune = np.empty(k, np.float32), np.empty(k, np.int64), np.empty(k, np.float32), np.empty(k, np.int64)
        n_grow, n_prune = _shortlist(last[0], gain, grow, k), _shortlist(last[1], cost, prune, k)
        bars_found += bool(_bar(grow_score, gain, n_grow, k) < np.inf)
        at = np.empty(cols + 1, np.int64), np.empty(cols + 1, np.int64)
        got = shortlists(grow_score, prune_score, gain, grow, cost, prune, n_grow, n_prune, *at, k)
        for scores, values, index, count in ((grow_score, gain, grow, got[0]), (prune_score, cost, prune, got[1])):
            want_values, want_index = np.empty(k, np.float32), np.empty(k, np.int64)
            want = _shortlist(scores, want_values, want_index, k)
            assert count == want, f"trial {trial}: {count} entries, the scan has {want}"
            assert np.array_equal(values[:count], want_values[:want]) and np.array_equal(index[:count], want_index[:want]), (
                f"trial {trial}: shortlist {index[:count]} (values {values[:count]}), the scan's {want_index[:want]}"
            )
    assert bars_found > 10  # the bar path, not only the scan, was exercised
