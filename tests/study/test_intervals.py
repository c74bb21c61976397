"""Paired differences of two runs over the same evaluation windows, with seeds."""

from __future__ import annotations

import math

import pytest

from dsnot_lite.study.intervals import paired_difference


def _run(nll, seqlen=8, name="r", split="test"):
    return {"window_nll": list(nll), "seqlen": seqlen, "name": name, "eval_split": split}


def test_a_constant_shift_is_found_exactly():
    a = _run([2.0, 3.0, 4.0, 5.0])
    b = _run([1.9, 2.9, 3.9, 4.9])
    d = paired_difference([a], [b])
    assert d.mean == pytest.approx(-0.1) and d.low == pytest.approx(-0.1) and d.high == pytest.approx(-0.1)
    assert d.decided and d.ratio[0] == pytest.approx(math.exp(-0.1))
    assert d.text().startswith("-9.5% [-9.5, -9.5]")


def test_noise_gives_an_interval_around_the_mean_and_no_verdict():
    a = _run([1.0] * 40)
    b = _run([1.0 + (0.5 if i % 2 else -0.5) for i in range(40)])
    d = paired_difference([a], [b])
    assert d.mean == pytest.approx(0.0, abs=1e-12) and d.low < 0 < d.high and not d.decided


def test_seeds_pair_by_position_and_one_baseline_pairs_with_all():
    dense = _run([3.0, 3.0, 3.0])
    seeds = [_run([3.0 + s, 3.0 + s, 3.0 + s]) for s in (0.1, 0.2, 0.3)]
    d = paired_difference([dense], seeds)
    assert d.per_seed == pytest.approx((0.1, 0.2, 0.3)) and d.mean == pytest.approx(0.2) and d.windows == 3
    mixed = paired_difference(seeds, [_run([3.1] * 3), _run([3.1] * 3), _run([3.1] * 3)])
    assert mixed.per_seed == pytest.approx((0.0, -0.1, -0.2)) and not mixed.decided  # seeds disagree in sign


def test_runs_on_other_windows_are_refused():
    with pytest.raises(ValueError, match="same windows"):
        paired_difference([_run([1.0, 2.0])], [_run([1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match="same windows"):
        paired_difference([_run([1.0])], [_run([1.0], split="validation")])
    with pytest.raises(ValueError, match="cannot pair"):
        paired_difference([_run([1.0])] * 2, [_run([1.0])] * 3)


def test_the_text_names_the_seeds_it_rests_on():
    d = paired_difference([_run([1.0, 1.0])] * 2, [_run([1.1, 1.1]), _run([0.9, 0.9])])
    assert d.text().endswith("(seeds: +10.5, -9.5)")
    assert d.text([0, 2]).endswith("(seeds 0, 2: +10.5, -9.5)")
    assert paired_difference([_run([1.0])], [_run([1.1])]).text([1]).endswith("(seed 1: +10.5)")
