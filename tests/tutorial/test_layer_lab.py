"""study.layers and study.layer_lab: one layer, synthetic or real, refined by DSnoT or the exact refiner."""

from __future__ import annotations

import pytest
import torch
from _tinydir import tiny_model_dir

from dsnot_lite.core.dsnot import STOP_REASONS, dsnot
from dsnot_lite.core.errors import row_output_error
from dsnot_lite.core.exact import exact_refine
from dsnot_lite.core.pruners import initial_mask
from dsnot_lite.tutorial import layer_lab, layers
from dsnot_lite.tutorial.layer_lab import LayerParams


@pytest.fixture(scope="module")
def layer():
    return layers.synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1)


def test_synthetic_layer_is_cached_and_has_outliers(layer):
    again = layers.synthetic_layer(32, 128, 3, 64, 3, seed=1)
    assert again is layer  # same object: keyword and positional calls share the cache entry
    mean = layer.stats.mean.abs()
    others = torch.ones_like(mean, dtype=torch.bool)
    others[list(layer.outlier_channels)] = False
    assert len(layer.outlier_channels) == 3
    assert float(mean[list(layer.outlier_channels)].min()) > 10 * float(mean[others].max())
    assert layer.stats.nsamples == 3 and layer.stats.ntokens == 3 * 64
    assert layer.heldout_gram.shape == (128, 128) and not torch.equal(layer.heldout_gram, layer.gram)


def test_run_layer_official_refines_and_reports(layer):
    run = layer_lab.run_layer(layer, sparsity=0.6, T=50, eps=0.1)
    res, s = run.result, run.summary
    mask0 = initial_mask(layer.weight, layer.stats, "wanda", 0.6)
    assert torch.equal(run.initial_mask, mask0)
    # same as calling the core directly
    direct = dsnot(layer.weight, layer.stats, mask0, run.config)
    assert torch.equal(direct.mask, res.mask)
    # the summary's sparsity flag is the truth (the official preset reproduces the reference's
    # unconditional writes of stopped rows, which on this small layer prune one more weight in a row)
    assert s["row_sparsity_preserved"] == bool(torch.equal(res.mask.sum(1), mask0.sum(1)))
    assert s["sparsity_after"] == pytest.approx(float(res.mask.float().mean()))
    # the expected error shrank a lot; each swap flips two entries
    assert s["mean_abs_error_after"] < s["mean_abs_error_before"] / 5
    assert s["swaps"] > 0 and abs(s["flips"] - 2 * s["swaps"]) <= 32 and s["flips"] == int((res.mask != mask0).sum())
    assert run.trace.error.shape[1] == 32 and run.trace.error.shape[0] == run.trace.grown.shape[0] + 1
    assert torch.allclose(run.trace.error[0], res.initial_error) and torch.allclose(run.trace.error[-1], res.final_error)
    assert torch.allclose(run.expected_error_before, res.initial_error, rtol=1e-4, atol=1e-3)
    # the true output errors are what row_output_error says for the two masks
    assert torch.allclose(run.output_error_before, row_output_error(layer.weight, mask0, layer.gram))
    assert torch.allclose(run.output_error_after, row_output_error(layer.weight, res.mask, layer.gram))
    dense = row_output_error(layer.weight, torch.ones_like(mask0), layer.gram)
    expected = float(run.output_error_after.square().sum().sqrt() / dense.square().sum().sqrt())
    assert s["rel_output_error_after"] == pytest.approx(expected, rel=1e-5)
    assert sum(s[f"stop_{k}"] for k in STOP_REASONS) == 32


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_sparsity_exact_without_reference_quirks(layer, preset):
    import dataclasses

    params = LayerParams(preset=preset, eps=0.0 if preset == "paper" else 0.1)
    run = layer_lab.run_layer(layer, params)
    cfg = dataclasses.replace(run.config, reference_quirks=False)
    res = dsnot(layer.weight, layer.stats, run.initial_mask, cfg)
    assert torch.equal(res.mask.sum(1), run.initial_mask.sum(1))
    if preset == "paper":  # the paper preset has no quirks: the explored run is exact too
        assert run.summary["row_sparsity_preserved"] and run.summary["flips"] == 2 * run.summary["swaps"] > 0


def test_run_layer_cache(layer):
    layer_lab.clear_cache()
    a = layer_lab.run_layer(layer, T=7)
    b = layer_lab.run_layer(layer, LayerParams(T=7))
    c = layer_lab.run_layer(layer, T=8)
    assert a is b and c is not a
    assert layer_lab.cache_info() == {"hits": 1, "misses": 2, "size": 2}


def test_T_zero_and_huge_epsilon_change_nothing(layer):
    for run in (layer_lab.run_layer(layer, T=0), layer_lab.run_layer(layer, eps=1e9)):
        assert run.summary["flips"] == 0
        assert torch.equal(run.mask, run.initial_mask)
        assert run.summary["rel_output_error_after"] == run.summary["rel_output_error_before"]
    assert layer_lab.run_layer(layer, eps=1e9).summary["stop_threshold"] == 32


def test_fewer_iterations_are_a_prefix_of_more(layer):
    short, long = layer_lab.run_layer(layer, T=5), layer_lab.run_layer(layer, T=50)
    assert torch.equal(short.trace.error, long.trace.error[: short.trace.error.shape[0]])
    frame = layer_lab.sweep(layer, "T", [0, 1, 5, 20, 50])
    assert list(frame["T"]) == [0, 1, 5, 20, 50]
    assert frame["swaps"].is_monotonic_increasing


def test_explain_row_follows_the_trace(layer):
    run = layer_lab.run_layer(layer)
    row = layer_lab.rows_by_initial_error(run, 1)[0]
    assert abs(float(run.expected_error_before[row])) == float(run.expected_error_before.abs().max())
    table = layer_lab.explain_row(layer, run, row, steps=4)
    assert len(table) == 4
    mean = layer.stats.expected_input("official")
    for i, line in table.iterrows():
        g, p = line["grown column"], line["pruned column"]
        assert run.initial_mask[row, g] and not run.initial_mask[row, p]  # grown was pruned, pruned was kept
        assert line["grown W*E[A]"] == pytest.approx(float(layer.weight[row, g] * mean[g]), rel=1e-5)
        if line["swapped"]:
            step = line["pruned W*E[A]"] - line["grown W*E[A]"]
            assert line["E[Delta_r] after"] == pytest.approx(line["E[Delta_r] before"] + step, rel=1e-4, abs=1e-5)
        if i:
            assert line["E[Delta_r] before"] == table.loc[i - 1, "E[Delta_r] after"]
    with pytest.raises(ValueError, match="out of range"):
        layer_lab.explain_row(layer, run, 99)


def test_criterion_grid_is_table7_shaped(layer):
    grid = layer_lab.criterion_grid(layer, "flips", T=10)
    assert grid.shape == (4, 4)
    assert grid.index.name == "prune criterion" and grid.columns.name == "grow criterion"
    assert grid.loc["eq3", "eq2"] == layer_lab.run_layer(layer, T=10).summary["flips"]
    assert grid.loc["wanda", "magnitude"] == layer_lab.run_layer(layer, T=10, grow="magnitude", prune="wanda").summary["flips"]


def test_nm_keeps_n_zeros_per_block(layer):
    run = layer_lab.run_layer(layer, nm=(2, 4), T=10)
    assert run.params.sparsity == 0.5
    blocks = run.mask.reshape(32, -1, 4).sum(-1)
    assert bool((blocks == 2).all())
    assert run.summary["flips"] > 0


def test_sweep_rejects_unknown_parameter(layer):
    with pytest.raises(ValueError, match="cannot sweep"):
        layer_lab.sweep(layer, "colour", [1])


@pytest.mark.parametrize("refiner", ["exact", "dsnot+exact"])
def test_exact_refiner_in_the_layer_lab(layer, refiner):
    run = layer_lab.run_layer(layer, refiner=refiner, T=20)
    start = run.dsnot_result.mask if refiner == "dsnot+exact" else run.initial_mask
    direct = exact_refine(layer.weight, layer.gram, start, run.params.exact_config())
    assert torch.equal(run.mask, direct.mask)
    assert (run.trace is not None) == (refiner == "dsnot+exact")
    s = run.summary
    assert s["row_sparsity_preserved"] and s["rel_output_error_after"] <= s["rel_output_error_before"] + 1e-9
    assert bool((run.output_error_after <= run.output_error_before * (1 + 1e-6) + 1e-6).all())
    assert run.result.trace.shape[1] == 32 and s["swaps"] == int(direct.swaps.sum()) + (
        int(run.dsnot_result.swaps.sum()) if run.dsnot_result else 0
    )
    with pytest.raises(ValueError, match="no DSnoT"):
        layer_lab.explain_row(layer, layer_lab.run_layer(layer, refiner="exact", T=20), 0)


# -- real models, on a tiny LLaMA saved as a folder -------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def test_bundled_layer_on_a_model_folder(tiny_dir):
    layer = layers.bundled_layer(block=1, linear="self_attn.q_proj", nsamples=3, seqlen=32, heldout=2, model=tiny_dir)
    assert layer.shape == (64, 64) and layer.name == "model.layers.1.self_attn.q_proj"
    assert layer.stats.nsamples == 3 and layer.stats.ntokens == 96 and layer.stats.hessian is not None
    assert layers.bundled_layer(1, "self_attn.q_proj", 3, 32, 0, 2, tiny_dir) is layer
    # calibration windows are the seeded C4 draw (a prefix of a longer draw); held-out ones come
    # from WikiText-2 validation and do not depend on nsamples
    assert torch.equal(layers.calibration_ids(tiny_dir, 5, 32, 0)[:3], layers.calibration_ids(tiny_dir, 3, 32, 0))
    other = layers.bundled_layer(block=1, linear="self_attn.q_proj", nsamples=2, seqlen=32, heldout=2, model=tiny_dir)
    assert torch.equal(other.heldout_gram, layer.heldout_gram) and not torch.equal(other.gram, layer.gram)
    run = layer_lab.run_layer(layer)
    assert run.summary["heldout_rel_error_before"] > 0 and run.summary["row_sparsity_preserved"]
    with pytest.raises(ValueError, match="no linear"):
        layers.bundled_layer(block=0, linear="nope", nsamples=3, seqlen=32, model=tiny_dir)


def test_flip_accounting_explains_flips_versus_swaps(layer):
    """Replaying the trace gives the run's mask; at T = 50 every swap flips two entries, at T = 200
    with eps = 0 the official quirks make round trips (R2) and idle writes, and the identity holds."""
    short = layer_lab.flip_accounting(layer_lab.run_layer(layer, sparsity=0.6, T=50, eps=0.1))
    long = layer_lab.run_layer(layer, sparsity=0.6, T=200, eps=0.0)
    acc = layer_lab.flip_accounting(long)
    assert acc["flips"] == long.summary["flips"] and acc["swaps"] == long.summary["swaps"]
    assert acc["flips"] == acc["swap_changes"] + acc["stopped_row_changes"] - 2 * acc["round_trips"]
    assert acc["round_trips"] > 0 and acc["flips"] < acc["two_per_swap"]
    assert short["swap_changes"] == short["two_per_swap"] - short["idle_writes"]
    paper = layer_lab.flip_accounting(layer_lab.run_layer(layer, sparsity=0.6, T=200, eps=0.0, preset="paper"))
    assert paper["flips"] == paper["two_per_swap"] and paper["round_trips"] == paper["idle_writes"] == 0
    with pytest.raises(ValueError, match="fix"):
        layer_lab.flip_accounting(layer_lab.run_layer(layer, refiner="exact", T=5))


def test_synthetic_layer_channel_mean_sets_the_mean_share(layer):
    """A larger spread of the ordinary channels' means makes the mean part a larger share of the error."""
    small = layers.synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1)
    heavy = layers.synthetic_layer(c_out=32, c_in=128, samples=3, tokens=64, n_outliers=3, seed=1, channel_mean=2.0)
    assert small is layer and heavy.key != small.key
    share = {}
    for name, lay in (("small", small), ("heavy", heavy)):
        split = layer_lab.error_split(lay, layer_lab.run_layer(lay, T=0))
        share[name] = split["mean part before"] / split["total before"]
    assert share["small"] < 0.1 < 0.3 < share["heavy"]
