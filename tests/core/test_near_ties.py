"""core.near_ties: a row that another pipeline's rounding could give is explained, any other is not."""

from __future__ import annotations

import dataclasses

import torch

from dsnot_lite.core.dsnot import dsnot, preset
from dsnot_lite.core.near_ties import Tolerance, explain_rows
from dsnot_lite.core.pruners import initial_mask, wanda_score
from dsnot_lite.core.stats import ChannelStats


def _layer(rows: int = 6, cols: int = 256, seed: int = 0) -> tuple[torch.Tensor, ChannelStats]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    stats = ChannelStats(cols)
    stats.add_batch(torch.randn(4, 32, cols, generator=g) + torch.randn(cols, generator=g))
    return weight, stats


def test_a_stop_at_epsilon_by_a_hair_is_a_near_tie_and_a_changed_row_is_not():
    weight, stats = _layer()
    start = initial_mask(weight, stats, "wanda", 0.5)
    config = preset("official")
    ours = dsnot(weight, stats, start, config, trace=True)
    # their pipeline stopped row 2 one step early: its |E[Delta]| there was at epsilon, within rounding
    row, step = 2, 1
    assert bool(ours.trace.swapped[step, row])
    near = abs(float(ours.trace.error[step, row]))
    theirs_config = dataclasses.replace(config, eps=near)
    below = float(torch.nextafter(torch.tensor(near), torch.tensor(0.0)))  # the float32 just below
    mine = dataclasses.replace(config, eps=below)  # our epsilon a hair below: we went on
    ours_mask = dsnot(weight, stats, start, mine).mask
    theirs = ours_mask.clone()
    theirs[row] = dsnot(weight[row : row + 1], stats, start[row : row + 1], theirs_config).mask[0]
    assert not torch.equal(theirs[row], ours_mask[row])
    pruned, kept = int(theirs[4].nonzero()[0]), int((~theirs[4]).nonzero()[0])
    theirs[4, pruned], theirs[4, kept] = False, True  # and row 4 differs for real
    verdicts = {v.row: v for v in explain_rows(weight, stats, start, ours_mask, theirs, mine, Tolerance())}
    assert set(verdicts) == {2, 4}
    assert verdicts[2].explained and [t.kind for t in verdicts[2].ties] == ["threshold"]
    assert not verdicts[4].explained and "no chain" in verdicts[4].reason
    # with no tolerance for E[Delta_r], the same stop is a real difference
    strict = explain_rows(weight, stats, start, ours_mask, theirs, mine, Tolerance(error=0.0))
    assert not any(v.explained for v in strict)


def _last_grow_and_runner_up(weight, stats, start, ours, row: int) -> tuple[int, int, float] | None:
    """(the row's last grown weight, the next one in line at the same end, their relative key gap)."""
    step = int(ours.swaps[row]) - 1
    if step < 0:
        return None
    taken = int(ours.trace.grown[step, row])
    back = float(ours.trace.error[step, row]) > 0  # Eq. 2's largest key when E[Delta_r] > 0 (R2)
    key = (weight[row] * stats.sum_metric_row).masked_fill(~start[row], 0) / stats.var
    waiting = start[row] & ours.mask[row] & (key > 0 if back else key < 0)  # pruned, never grown, same end
    if not waiting.any():
        return None
    runner_up = int(
        key.masked_fill(~waiting, float("-inf")).argmax() if back else key.masked_fill(~waiting, float("inf")).argmin()
    )
    return taken, runner_up, float((key[taken] - key[runner_up]).abs() / key[taken].abs())


def test_two_grow_keys_that_tie_may_come_in_either_order():
    weight, stats = _layer(rows=16, seed=1)
    start = initial_mask(weight, stats, "wanda", 0.5)
    config = preset("official")
    ours = dsnot(weight, stats, start, config, trace=True)
    found = {r: _last_grow_and_runner_up(weight, stats, start, ours, r) for r in range(weight.shape[0])}
    row = min((r for r in found if found[r]), key=lambda r: found[r][2])  # the closest pair of the layer
    taken, runner_up, gap = found[row]
    key = weight[row] * stats.sum_metric_row / stats.var
    # their statistics put the runner-up a hair ahead: its variance scaled so its key passes the taken one's
    theirs_stats = ChannelStats.from_tensors(stats.as_dict())
    theirs_stats.var = stats.var.clone()
    theirs_stats.var[runner_up] = stats.var[runner_up] * float(key[runner_up] / key[taken]) * (1 - 1e-6)
    theirs = ours.mask.clone()
    theirs[row] = dsnot(weight[row : row + 1], theirs_stats, start[row : row + 1], config).mask[0]
    assert not torch.equal(theirs[row], ours.mask[row])
    verdicts = explain_rows(weight, stats, start, ours.mask, theirs, config, Tolerance(score=gap * 1.01))
    assert [v.explained for v in verdicts] == [True] and [t.kind for t in verdicts[0].ties] == ["grow"]
    assert not explain_rows(weight, stats, start, ours.mask, theirs, config, Tolerance(score=gap * 0.5))[0].explained


def test_wanda_rows_differ_only_at_their_threshold():
    weight, stats = _layer(rows=3)
    ours = initial_mask(weight, stats, "wanda", 0.5)
    score = wanda_score(weight, stats.scaler_row)
    theirs = ours.clone()
    top_pruned = int(score[0].masked_fill(~ours[0], -1).argmax())
    low_kept = int(score[0].masked_fill(ours[0], float("inf")).argmin())
    theirs[0, top_pruned], theirs[0, low_kept] = False, True  # the two scores at the threshold swapped
    gap = float((score[0, low_kept] - score[0, top_pruned]) / score[0, low_kept])
    explained = explain_rows(weight, stats, ours, ours, theirs, None, Tolerance(score=gap * 1.01))
    assert [(v.row, v.explained, v.entries) for v in explained] == [(0, True, 2)]
    assert not explain_rows(weight, stats, ours, ours, theirs, None, Tolerance(score=gap * 0.99))[0].explained
    theirs[1, int(ours[1].nonzero()[0])] = False  # one weight fewer pruned: never a tie
    assert "prunes" in explain_rows(weight, stats, ours, ours, theirs, None, Tolerance(score=1.0))[1].reason


def _tie_channels(weight, stats, row: int, p: int, q: int):
    """The layer with channel ``q`` reading exactly as channel ``p`` (statistics, and the weight in ``row``)."""
    vectors = {name: value.clone() if torch.is_tensor(value) else value for name, value in stats.as_dict().items()}
    for name in ("sum_metric_row", "var", "scaler_row"):
        vectors[name][q] = vectors[name][p]
    weight = weight.clone()
    weight[row, q] = weight[row, p]
    return weight, vectors


def _tie_broken_the_other_way(weight, stats, config):
    """(weight, statistics, start, our mask, their mask, row) where one row's two tied channels went the
    other way in their pipeline, or None."""
    first = dsnot(weight, stats, initial_mask(weight, stats, "wanda", 0.5), config, trace=True)
    for row in range(weight.shape[0]):
        if int(first.swaps[row]) == 0:
            continue
        # p: the row's last pruned weight; q, kept to the end, made its exact copy: both give the
        # error the same change, so the row stops after whichever of the two its sort takes first
        p = int(first.trace.pruned[int(first.swaps[row]) - 1, row])
        contribution = weight[row] * stats.sum_metric_row
        same_sign = (~first.mask[row]) & (torch.sign(contribution) == torch.sign(contribution[p]))
        same_sign[p] = False
        for q in same_sign.nonzero().flatten()[:8].tolist():
            tied_weight, vectors = _tie_channels(weight, stats, row, p, q)
            tied = ChannelStats.from_tensors(vectors)
            start = initial_mask(tied_weight, tied, "wanda", 0.5)
            ours = dsnot(tied_weight, tied, start, config).mask
            for factor in (1 - 1e-6, 1 + 1e-6):  # their sort: the same numbers, the tie broken the other way
                nudged = {**vectors, "scaler_row": vectors["scaler_row"].clone()}
                nudged["scaler_row"][q] *= factor
                mine = dsnot(tied_weight[row : row + 1], ChannelStats.from_tensors(nudged), start[row : row + 1], config)
                if not torch.equal(mine.mask[0], ours[row]):
                    theirs = ours.clone()
                    theirs[row] = mine.mask[0]
                    return tied_weight, tied, start, ours, theirs, row
    return None


def test_an_exact_tie_that_another_sort_breaks_the_other_way_is_a_near_tie():
    """Two kept weights of a row with identical statistics: our stable sort takes the lower column
    first, another pipeline's sort may take the other (seen against the authors' masks at
    model.layers.3.self_attn.k_proj); exchanging equal keys changes nothing, so the search must
    move one a hair."""
    weight, stats = _layer(rows=8, seed=3)
    config = preset("official")
    found = _tie_broken_the_other_way(weight, stats, config)
    assert found is not None
    weight, tied, start, ours, theirs, row = found
    verdicts = explain_rows(weight, tied, start, ours, theirs, config, Tolerance())
    assert [v.row for v in verdicts] == [row]
    assert verdicts[0].explained and [t.gap for t in verdicts[0].ties] == [0.0]
    assert verdicts[0].ties[0].kind in ("prune", "grow")
