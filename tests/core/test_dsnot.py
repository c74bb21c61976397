"""DSnoT: hand-worked cases, robustness (R9, degenerate statistics), errors, properties, trace."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsnot_lite.core.dsnot import (
    GROW_CRITERIA,
    PRUNE_CRITERIA,
    STOP_REASONS,
    DSnoTConfig,
    dsnot,
    preset,
)
from dsnot_lite.core.errors import gram_matrix, row_output_error
from dsnot_lite.core.pruners import initial_mask
from dsnot_lite.core.stats import ChannelStats


def _stats(mean, scaler=None, var=None) -> ChannelStats:
    """Statistics given by hand; both flavours see the same E[A] and Var(A)."""
    mean = torch.as_tensor(mean, dtype=torch.float32)
    ones = torch.ones_like(mean)
    return ChannelStats.from_tensors(
        {
            "sum_metric_row": mean,
            "mean": mean,
            "scaler_row": ones if scaler is None else torch.as_tensor(scaler, dtype=torch.float32),
            "var": ones if var is None else torch.as_tensor(var, dtype=torch.float32),
        }
    )


def _reasons(result) -> list[str]:
    return [STOP_REASONS[i] for i in result.stop_reason.tolist()]


# --------------------------------------------------------------------------- hand-worked cases
# 1x4: W = [0.4, 0.6, 0.5, 3.0], E[A] = [1, -1, 1, 1], unit norms and variances.
# Contributions W*E[A] = [0.4, -0.6, 0.5, 3.0]; Wanda = |W|; 50% prunes columns 0 and 2.
# E[Delta] = 0.4 + 0.5 = 0.9 > 0, so grow takes the largest pruned score (column 2, 0.5)
# and prune takes the kept weight of negative contribution with the smallest Wanda score
# (column 1, -0.6): 0.9 - 0.5 - 0.6 = -0.2.
ONE_BY_FOUR = (torch.tensor([[0.4, 0.6, 0.5, 3.0]]), _stats([1.0, -1.0, 1.0, 1.0]))


def test_one_by_four_single_swap():
    weight, stats = ONE_BY_FOUR
    start = initial_mask(weight, stats, "wanda", 0.5)
    assert start.tolist() == [[True, False, True, False]]
    result = dsnot(weight, stats, start, replace(preset("official"), T=1), trace=True)
    assert result.mask.tolist() == [[True, True, False, False]]
    assert result.trace.grown.tolist() == [[2]] and result.trace.pruned.tolist() == [[1]]
    assert result.initial_error.item() == pytest.approx(0.9)
    assert result.final_error.item() == pytest.approx(-0.2)
    assert result.flips == 2 and result.swaps.tolist() == [1]


def test_one_by_four_sign_check_refuses_the_overshoot():
    """Paper preset: the swap would flip E[Delta] from +0.9 to -0.2, so the row stops (R4)."""
    weight, stats = ONE_BY_FOUR
    start = initial_mask(weight, stats, "wanda", 0.5)
    result = dsnot(weight, stats, start, preset("paper"))
    assert torch.equal(result.mask, start)
    assert _reasons(result) == ["sign_flip"]


def test_one_by_four_reference_regrows_what_it_just_pruned():
    """R2 defect: the grow list was ranked before DSnoT started, when column 1 was kept (score 0).

    At E[Delta] = -0.2 the front of that list is column 1, pruned one step earlier, so the
    reference brings it back and prunes column 3 (contribution 3.0): -0.2 + 3.0 + 0.6 = 3.4.
    """
    weight, stats = ONE_BY_FOUR
    start = initial_mask(weight, stats, "wanda", 0.5)
    result = dsnot(weight, stats, start, replace(preset("official"), T=2), trace=True)
    assert result.trace.grown.tolist() == [[2], [1]] and result.trace.pruned.tolist() == [[1], [3]]
    assert result.final_error.item() == pytest.approx(3.4)
    assert result.mask.tolist() == [[True, False, False, True]]


# 2x8: row 1 is row 0 negated. Channel 7 has norm 10, so its small weight (-0.1) is kept.
# Row 0 prunes columns 0-3 (contributions 0.30, 0.20, 0.15, 0.02): E[Delta] = 0.67.
# Kept: 0.9, 0.8, 0.7 (positive) and -0.1 (the only negative one).
TWO_BY_EIGHT_ROW = torch.tensor([0.30, 0.20, 0.15, 0.02, 0.9, 0.8, 0.7, -0.10])
TWO_BY_EIGHT = (torch.stack([TWO_BY_EIGHT_ROW, -TWO_BY_EIGHT_ROW]), _stats([1.0] * 8, scaler=[1.0] * 7 + [100.0]))


def test_two_by_eight_paper_stops_when_negatives_run_out():
    """Swap 1: grow column 0 (0.30), prune column 7 (-0.10): 0.67 - 0.30 - 0.10 = 0.27.

    Swap 2 needs another kept weight of negative contribution; there is none, so the row stops
    cleanly (R9) with E[Delta] = 0.27. Row 1 is the mirror image.
    """
    weight, stats = TWO_BY_EIGHT
    start = initial_mask(weight, stats, "wanda", 0.5)
    result = dsnot(weight, stats, start, preset("paper"), trace=True)
    assert result.final_error.tolist() == pytest.approx([0.27, -0.27])
    assert _reasons(result) == ["no_candidates", "no_candidates"]
    assert result.mask[0].tolist() == [False, True, True, True, False, False, False, True]
    assert torch.equal(result.mask[1], result.mask[0])
    assert result.trace.pruned[1].tolist() == [-1, -1]  # no candidate in the second iteration


def test_two_by_eight_official_prunes_the_wrong_sign():
    """R3 without a segment check: after the only negative, the front pointer reads the positives.

    0.27 - 0.20 + 0.90 = 0.97; - 0.15 + 0.80 = 1.62; - 0.02 + 0.70 = 2.30; then the prune list
    (4 kept weights) is used up and the row stops (R9; the reference code crashes here).
    """
    weight, stats = TWO_BY_EIGHT
    start = initial_mask(weight, stats, "wanda", 0.5)
    result = dsnot(weight, stats, start, preset("official"), trace=True)
    assert result.trace.error[:, 0].tolist() == pytest.approx([0.67, 0.27, 0.97, 1.62, 2.30, 2.30])
    assert result.trace.pruned[:4, 0].tolist() == [7, 4, 5, 6]
    assert _reasons(result) == ["no_candidates", "no_candidates"]
    assert result.mask[0].tolist() == [False] * 4 + [True] * 4


# --------------------------------------------------------------------------- robustness
def _random_layer(rows=16, cols=32, seed=0, samples=4, tokens=16):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g) * 0.02
    x = torch.randn(samples, tokens, cols, generator=g) + torch.randn(cols, generator=g)
    x[..., 1] *= 30
    stats = ChannelStats(cols)
    stats.add_batch(x)
    return weight, stats, x


@pytest.mark.parametrize("name", ["official", "paper"])
def test_t_larger_than_candidates_stops_cleanly(name):
    weight, stats, _ = _random_layer(rows=8, cols=16)
    start = initial_mask(weight, stats, "wanda", 0.5)
    cfg = replace(preset(name), T=500, eps=0.0)
    result = dsnot(weight, stats, start, cfg)
    assert result.stop_counts["no_candidates"] + result.stop_counts["sign_flip"] + result.stop_counts["threshold"] == 8
    kept = 8
    if name == "paper":
        assert int(result.swaps.max()) <= kept  # strict pointers never reuse a candidate
    else:  # the reference never checks whether its two pointers crossed: each may walk the list
        assert int(result.swaps.max()) <= 2 * kept


@pytest.mark.parametrize("name", ["official", "paper"])
def test_degenerate_statistics_and_rows(name):
    weight, stats, x = _random_layer()
    x[..., 5] = 3.0  # a constant channel: zero variance
    x[..., 6] = 0.0  # a dead channel: zero mean, zero norm, zero variance
    stats = ChannelStats(32)
    stats.add_batch(x)
    assert float(stats.var[5]) == 0.0 and float(stats.var[6]) == 0.0
    weight[0] = 0.0  # an all-zero row
    weight[1, :] = 0.01  # a row of ties
    start = initial_mask(weight, stats, "wanda", 0.5)
    for grow in GROW_CRITERIA:
        for prune in PRUNE_CRITERIA:
            cfg = replace(preset(name), grow=grow, prune=prune)
            result = dsnot(weight, stats, start, cfg)
            assert bool(torch.isfinite(result.final_error).all())
            if name == "paper":
                assert torch.equal(result.mask.sum(1), start.sum(1))
            assert result.stop_reason[0].item() == STOP_REASONS.index("threshold")  # E[Delta] = 0


def test_zero_sparsity_has_nothing_to_grow():
    """Paper: nothing happens. Official: every row stops at once (E[Delta] = 0), yet the
    reference's unconditional write still sets mask[grow pointer] = True, and with nothing pruned
    that pointer is a kept weight: the reference prunes one weight per row. We reproduce it."""
    weight, stats, _ = _random_layer()
    start = initial_mask(weight, stats, "wanda", 0.0)
    assert not bool(dsnot(weight, stats, start, preset("paper")).mask.any())
    official = dsnot(weight, stats, start, preset("official"))
    assert official.stop_counts["threshold"] == 16
    assert official.mask.sum(1).tolist() == [1] * 16


def test_zero_cycles_is_identity():
    weight, stats, _ = _random_layer()
    start = initial_mask(weight, stats, "wanda", 0.5)
    result = dsnot(weight, stats, start, replace(preset("official"), T=0))
    assert torch.equal(result.mask, start) and result.stop_counts["T_reached"] == 16


def test_runs_on_half_precision_weights():
    weight, stats, _ = _random_layer()
    start = initial_mask(weight.half(), stats, "wanda", 0.5)
    result = dsnot(weight.half(), stats, start, preset("official"))
    assert result.mask.dtype == torch.bool and result.flips > 0


# --------------------------------------------------------------------------- errors
def test_bad_input_is_named():
    weight, stats, _ = _random_layer()
    start = initial_mask(weight, stats, "wanda", 0.5)
    with pytest.raises(ValueError, match=r"mask has shape \(16, 31\)"):
        dsnot(weight, stats, start[:, :31])
    with pytest.raises(ValueError, match="bool tensor"):
        dsnot(weight, stats, start.int())
    with pytest.raises(ValueError, match="C_in = 16"):
        dsnot(weight[:, :16], stats, start[:, :16])
    with pytest.raises(ValueError, match="not divisible by M = 3"):
        dsnot(weight, stats, start, nm=(1, 3))
    with pytest.raises(ValueError, match="ChannelStats"):
        dsnot(weight, {"var": 1}, start)
    bad = _random_layer()[1]
    bad.var[3] = float("nan")
    with pytest.raises(ValueError, match=r"Var\(A\) contains 1 NaN/inf"):
        dsnot(weight, bad, start)
    uneven = start.clone()
    uneven[0, start[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number of pruned weights in every row"):
        dsnot(weight, stats, uneven, preset("official"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(T=-1), "T must be an int"),
        (dict(T=2.5), "T must be an int"),
        (dict(eps=-0.1), "eps must be"),
        (dict(eps=float("nan")), "eps must be"),
        (dict(var_floor=-1.0), "var_floor must be"),
        (dict(T_width=0), "T_width must be"),
        (dict(grow="eq4"), "grow must be one of"),
        (dict(prune="initial"), "prune must be one of"),
        (dict(statistics="exact"), "statistics must be one of"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSnoTConfig(**kwargs)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="official"):
        preset("fast")


def test_official_skips_mlp_paper_does_not():
    official, paper = preset("official"), preset("paper")
    assert official.applies_to("self_attn.q_proj") and official.applies_to("self_attn.o_proj")
    assert not official.applies_to("mlp.down_proj") and not official.applies_to("fc1")
    assert paper.applies_to("mlp.down_proj")


# --------------------------------------------------------------------------- properties
layers = st.fixed_dictionaries(
    {
        "rows": st.integers(1, 6),
        "blocks": st.integers(1, 6),
        "seed": st.integers(0, 10_000),
        "sparsity": st.sampled_from([0.25, 0.5, 0.75]),
        "quantize": st.booleans(),
        "constant_channel": st.booleans(),
    }
)


def _hyp_layer(spec, m=8):
    cols = spec["blocks"] * m
    weight, stats, x = _random_layer(rows=spec["rows"], cols=cols, seed=spec["seed"])
    if spec["quantize"]:  # many exact ties
        weight = (weight * 100).round() / 100
    if spec["constant_channel"]:
        x[..., 0] = 2.0
        stats = ChannelStats(cols)
        stats.add_batch(x)
    return weight, stats, x


def _within_segments(result_start, weight, stats, cfg, T):
    """Whether no pointer can leave its sign segment in T steps (then the quirks keep sparsity)."""
    contribution = weight * stats.expected_input(cfg.statistics)
    pruned = result_start
    counts = [
        (pruned & (contribution > 0)).sum(1),
        (pruned & (contribution < 0)).sum(1),
        (~pruned & (contribution > 0)).sum(1),
        (~pruned & (contribution < 0)).sum(1),
    ]
    return all(bool((c >= T).all()) for c in counts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=layers,
    name=st.sampled_from(["official", "paper"]),
    grow=st.sampled_from(GROW_CRITERIA),
    prune=st.sampled_from(PRUNE_CRITERIA),
    T=st.integers(0, 40),
    eps=st.sampled_from([0.0, 0.01, 0.1, 10.0]),
    nm=st.sampled_from([None, (2, 4), (4, 8), (1, 8)]),
)
def test_structure_is_kept_and_runs_are_deterministic(spec, name, grow, prune, T, eps, nm):
    weight, stats, _ = _hyp_layer(spec)
    cfg = replace(preset(name), grow=grow, prune=prune, T=T, eps=eps)
    start = initial_mask(weight, stats, "wanda", spec["sparsity"], nm)
    first = dsnot(weight, stats, start, cfg, nm)
    second = dsnot(weight, stats, start, cfg, nm)
    assert torch.equal(first.mask, second.mask)  # same input, same mask
    strict = not cfg.reference_quirks
    if strict or (nm is None and _within_segments(start, weight, stats, cfg, T)):
        assert torch.equal(first.mask.sum(1), start.sum(1))  # exact per-row sparsity
    if nm is not None and strict:
        blocks = first.mask.reshape(weight.shape[0], -1, nm[1]).sum(-1)
        assert bool((blocks == nm[0]).all())  # N:M structure kept
    if strict:
        assert first.flips == 2 * int(first.swaps.sum())
    assert int(first.swaps.max()) <= T
    assert sum(first.stop_counts.values()) == weight.shape[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=layers, T=st.integers(1, 40), eps=st.sampled_from([0.0, 0.01, 0.1]), nm=st.sampled_from([None, (2, 4)]))
def test_with_sign_check_the_error_never_grows(spec, T, eps, nm):
    """Paper preset (Eq. 2 grow, Eq. 3 prune, sign check): |E[Delta_r]| is non-increasing."""
    weight, stats, _ = _hyp_layer(spec)
    cfg = replace(preset("paper"), T=T, eps=eps)
    start = initial_mask(weight, stats, "wanda", spec["sparsity"], nm)
    result = dsnot(weight, stats, start, cfg, nm, trace=True)
    errors = result.trace.error.abs()
    slack = 1e-5 * (1 + errors[0])
    assert bool((errors[1:] <= errors[:-1] + slack).all())
    assert bool((torch.sign(result.final_error) * torch.sign(result.initial_error) >= 0).all())


@settings(max_examples=40, deadline=None)
@given(spec=layers, name=st.sampled_from(["official", "paper"]), T=st.integers(1, 30))
def test_trace_is_consistent_with_the_mask(spec, name, T):
    weight, stats, _ = _hyp_layer(spec)
    cfg = replace(preset(name), T=T)
    start = initial_mask(weight, stats, "wanda", spec["sparsity"])
    result = dsnot(weight, stats, start, cfg, trace=True)
    trace = result.trace
    assert trace.error.shape[0] == trace.grown.shape[0] + 1
    torch.testing.assert_close(trace.error[0], result.initial_error.cpu())
    torch.testing.assert_close(trace.error[-1], result.final_error.cpu())
    assert torch.equal(trace.swapped.sum(0), result.swaps.cpu())
    if not cfg.reference_quirks:  # then E[Delta] is exactly the sum over the final mask
        contribution = weight * stats.expected_input(cfg.statistics)
        recomputed = contribution.masked_fill(~result.mask, 0).sum(1)
        torch.testing.assert_close(result.final_error, recomputed, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- true output error
def test_output_error_from_the_gram_matrix_equals_the_direct_one():
    weight, stats, x = _random_layer(rows=32, cols=64, tokens=64)
    start = initial_mask(weight, stats, "wanda", 0.6)
    direct = (x.reshape(-1, 64) @ weight.masked_fill(~start, 0).t()).norm(dim=0)
    torch.testing.assert_close(row_output_error(weight, start, gram_matrix(x)), direct, rtol=1e-3, atol=1e-5)


def test_dsnot_lowers_the_output_error_of_a_wanda_mask():
    """On inputs with a large shared mean, the mean term dominates ||W X - (M.W) X||: DSnoT lowers it."""
    g = torch.Generator().manual_seed(3)
    cols = 256
    weight = torch.randn(128, cols, generator=g) * 0.02
    x = torch.randn(8, 128, cols, generator=g) * 0.5 + torch.rand(cols, generator=g) * 2
    stats = ChannelStats(cols)
    stats.add_batch(x)
    start = initial_mask(weight, stats, "wanda", 0.6)
    gram = gram_matrix(x)
    for name in ("official", "paper"):
        result = dsnot(weight, stats, start, preset(name))
        before, after = row_output_error(weight, start, gram), row_output_error(weight, result.mask, gram)
        assert float(after.square().sum()) < 0.9 * float(before.square().sum()), name


def test_official_stopped_rows_drift_while_another_row_runs():
    """Reference quirk (README): a stopped row keeps writing its swap, with moving pointers, until
    the last row stops; past its pruned weights of one sign the grow pointer reaches kept weights
    (R2: score 0 mid-list) and the write prunes them. Row 0 has E[Delta] = 0 and stops at once;
    row 1 needs four swaps. Alone, row 0 is left as it was; next to row 1 it loses a kept weight.
    The paper preset leaves stopped rows alone."""
    ones = [1.0] * 8
    stats = _stats(ones)
    weight = torch.tensor([[-1.0, 1.0, -0.01, 0.01, 4.0, 4.0, 4.0, 4.0], [5.0, 5.0, 5.0, 5.0, 0.1, 0.2, 0.3, 0.4]])
    start = torch.zeros(2, 8, dtype=torch.bool)
    start[:, :4] = True
    cfg = replace(preset("official"), T=6)
    alone = dsnot(weight[:1], stats, start[:1], cfg)
    assert torch.equal(alone.mask, start[:1]) and alone.swaps.tolist() == [0]
    both = dsnot(weight, stats, start, cfg)
    assert both.swaps.tolist() == [0, 4] and _reasons(both)[0] == "threshold"
    assert int(both.mask[0].sum()) == 5 and bool(both.mask[0, :4].all())  # one kept weight pruned
    paper = dsnot(weight, stats, start, replace(preset("paper"), T=6))
    assert torch.equal(paper.mask[0], start[0]) and torch.equal(paper.mask.sum(1), start.sum(1))
