"""Sequential block-by-block pruning end to end on tiny models of every supported architecture."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny import ARCHS, VOCAB, tiny_loaded

from dsnot_lite.lm.calibration import capture_block_inputs, collect_stats
from dsnot_lite.core.dsnot import STOP_REASONS, preset
from dsnot_lite.lm.models import find_linears
from dsnot_lite.runs.pipeline import PruneSpec, prune_model
from dsnot_lite.core.pruners import initial_mask
from dsnot_lite.core.stats import ChannelStats

NSAMPLES, SEQLEN = 6, 32


def calibration(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (NSAMPLES, SEQLEN), generator=torch.Generator().manual_seed(seed))


def linear_weights(loaded) -> dict[str, torch.Tensor]:
    return {
        f"{loaded.blocks_path}.{i}.{name}": layer.weight.detach().clone()
        for i, block in enumerate(loaded.blocks)
        for name, layer in find_linears(block).items()
    }


SPECS = {
    "wanda+dsnot official": PruneSpec("wanda", 0.5, dsnot=True, preset="official"),
    # The paper preset's true token means are tiny in a random model: epsilon 0 makes DSnoT act.
    "wanda+dsnot paper": PruneSpec("wanda", 0.6, dsnot=True, preset="paper",
                                   dsnot_config=dataclasses.replace(preset("paper"), eps=0.0)),
    "sparsegpt": PruneSpec("sparsegpt", 0.5),
    "sparsegpt+dsnot": PruneSpec("sparsegpt", 0.6, dsnot=True),
    "sparsegpt mask only": PruneSpec("sparsegpt", 0.6, weight_update=False),
    "magnitude": PruneSpec("magnitude", 0.6),
    "magnitude+dsnot": PruneSpec("magnitude", 0.5, dsnot=True),
    "wanda 2:4+dsnot official": PruneSpec("wanda", nm=(2, 4), dsnot=True),
    "magnitude 2:4+dsnot paper": PruneSpec("magnitude", nm=(2, 4), dsnot=True, preset="paper",
                                           dsnot_config=dataclasses.replace(preset("paper"), eps=0.0)),
    "sparsegpt 2:4": PruneSpec("sparsegpt", nm=(2, 4)),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("label", list(SPECS))
def test_pipeline_end_to_end(arch, label):
    spec = SPECS[label]
    loaded = tiny_loaded(arch)
    dense = linear_weights(loaded)
    records = prune_model(loaded, calibration(), spec, batch_size=4, progress=False)
    pruned = linear_weights(loaded)
    assert [r.name for r in records] == list(dense)  # every linear of every block, in order
    cfg = spec.config()
    for r in records:
        w = pruned[r.name]
        zeros = (w == 0)
        assert r.sparsity == pytest.approx(float(zeros.float().mean()))
        c_in = w.shape[1]
        if spec.nm:
            n, m = spec.nm
            per_block = zeros.reshape(w.shape[0], c_in // m, m).sum(-1)
            if r.dsnot_applied and cfg.reference_quirks:
                # Reference quirk (reported to the core owner): rows that stopped keep writing their
                # no-op swaps, which breaks N:M blocks in tiny layers (C_in = 64); the record still
                # reports the sparsity really achieved (checked above).
                assert bool((per_block >= 1).any()), r.name
            else:
                assert bool((per_block == n).all()), r.name
        elif not spec.dsnot and (spec.method == "magnitude" or spec.method == "sparsegpt" and spec.weight_update):
            # one threshold per layer (magnitude baseline) or per 128-column block (SparseGPT)
            assert float(zeros.float().mean()) == pytest.approx(spec.sparsity, abs=1 / w.numel() + 1e-9)
        elif r.dsnot_applied and cfg.reference_quirks:
            # The reference's stopped rows keep writing their grow pointer's entry as pruned; once
            # that pointer walks past the row's pruned weights (tiny layers: C_in = 64) a row can
            # end with more than int(C_in * p) zeros, never fewer.
            assert bool((zeros.sum(1) >= int(c_in * spec.sparsity)).all()), r.name
        else:  # per row (R7), exactly int(C_in * p) zeros in every row
            assert bool((zeros.sum(1) == int(c_in * spec.sparsity)).all()), r.name
        assert r.dsnot_applied == (spec.dsnot and cfg.applies_to(r.name))
        if not r.dsnot_applied:
            assert r.swaps == 0 and r.flips == 0 and r.stop_reasons == {}
        else:
            assert sum(r.stop_reasons.values()) == w.shape[0] and set(r.stop_reasons) == set(STOP_REASONS)
        has_errors = spec.dsnot or spec.method == "sparsegpt"  # Hessian accumulated only then
        assert (r.rel_output_error_before is not None) == has_errors == (r.rel_output_error_after is not None)
        if has_errors and not r.dsnot_applied:
            assert r.rel_output_error_after == pytest.approx(r.rel_output_error_before)
        if spec.method != "sparsegpt" or spec.dsnot or not spec.weight_update:  # kept weights unchanged
            kept = ~zeros
            assert torch.equal(w[kept], dense[r.name][kept])
    if spec.dsnot and spec.preset == "official":
        assert all(not r.dsnot_applied for r in records if "mlp" in r.name or ".fc" in r.name)
        assert any(r.dsnot_applied for r in records)
    if spec.dsnot:
        assert sum(r.swaps for r in records) > 0
    with torch.no_grad():
        logits = loaded.model(input_ids=calibration(2)).logits
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_official_preset_leaves_mlp_masks_as_the_initial_method(arch):
    """Block 0 sees the same inputs with and without DSnoT: its MLP weights must be identical."""
    plain, refined = tiny_loaded(arch), tiny_loaded(arch)
    prune_model(plain, calibration(), PruneSpec("wanda", 0.5), progress=False)
    records = prune_model(refined, calibration(), PruneSpec("wanda", 0.5, dsnot=True), progress=False)
    a, b = linear_weights(plain), linear_weights(refined)
    block0 = [r for r in records if f"{refined.blocks_path}.0." in r.name]
    for r in block0:
        if r.dsnot_applied:
            assert "attn" in r.name
        else:
            assert torch.equal(a[r.name], b[r.name]), r.name
    assert any(r.dsnot_applied and r.flips > 0 for r in block0)
    assert any(not torch.equal(a[r.name], b[r.name]) for r in block0 if r.dsnot_applied)


def test_paper_preset_refines_mlp_layers_too():
    loaded = tiny_loaded("llama")
    cfg = dataclasses.replace(preset("paper"), eps=0.0)  # tiny random model: force swaps
    records = prune_model(loaded, calibration(), PruneSpec("wanda", 0.5, dsnot=True, preset="paper", dsnot_config=cfg),
                          progress=False)  # fmt: skip
    mlp = [r for r in records if ".mlp." in r.name]
    assert mlp and all(r.dsnot_applied for r in mlp)
    assert sum(r.swaps for r in mlp) > 0


def test_pruned_outputs_feed_the_next_block():
    """Block 1's Wanda mask must come from block 0's *pruned* outputs (sequential pruning)."""
    dense_model = tiny_loaded("llama")
    loaded = tiny_loaded("llama")
    ids = calibration()
    prune_model(loaded, ids, PruneSpec("wanda", 0.5), batch_size=3, progress=False)

    def block1_q_mask(model) -> torch.Tensor:
        with torch.no_grad():
            hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states[1]
            x = dense_model.model.model.layers[1].input_layernorm(hidden)
        stats = ChannelStats(x.shape[-1])
        stats.add_batch(x)
        weight = dense_model.model.model.layers[1].self_attn.q_proj.weight.detach()
        return initial_mask(weight, stats, "wanda", 0.5)

    got = loaded.model.model.layers[1].self_attn.q_proj.weight == 0
    assert torch.equal(got, block1_q_mask(loaded.model))  # inputs from the pruned block 0
    assert not torch.equal(got, block1_q_mask(dense_model.model))  # control: dense inputs differ


def test_captured_kwargs_reproduce_the_model_forward():
    """Running the blocks on the captured inputs and kwargs gives the model's own hidden states."""
    loaded = tiny_loaded("llama")
    ids = calibration()
    inputs = capture_block_inputs(loaded.model, loaded.blocks, ids, batch_size=4)
    assert [h.shape[0] for h in inputs.hidden] == [4, 2] and inputs.nsamples == NSAMPLES
    assert "position_embeddings" in inputs.kwargs[0]  # transformers 5 LLaMA passes RoPE tables as kwargs
    with torch.no_grad():
        expected = loaded.model.model(input_ids=ids, output_hidden_states=True).hidden_states
    hidden = torch.cat(inputs.hidden)
    torch.testing.assert_close(hidden, expected[0])
    from dsnot_lite.lm.calibration import run_block

    out = run_block(loaded.blocks[0], inputs)
    torch.testing.assert_close(torch.cat(out.hidden), expected[1])


SHARING = {
    "qwen2": [{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, {"self_attn.o_proj"},
              {"mlp.gate_proj", "mlp.up_proj"}, {"mlp.down_proj"}],
    "opt": [{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, {"self_attn.out_proj"}, {"fc1"}, {"fc2"}],
}  # fmt: skip


@pytest.mark.parametrize("arch", list(SHARING))
def test_shared_statistics_equal_separate_accumulation(arch):
    loaded = tiny_loaded(arch)
    inputs = capture_block_inputs(loaded.model, loaded.blocks, calibration(), batch_size=4)
    block = loaded.blocks[0]
    linears = find_linears(block)
    shared = collect_stats(block, linears, inputs, hessian=True)
    groups = {}
    for name, s in shared.items():
        groups.setdefault(id(s), set()).add(name)
    # Only linears fed the very same tensor share; a freed input's reused address must not alias.
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, SHARING[arch]))
    for name, layer in linears.items():
        alone = collect_stats(block, {name: layer}, inputs, hessian=True)[name]
        for attr in ("sum_metric_row", "scaler_row", "var", "hessian"):
            assert torch.equal(getattr(alone, attr), getattr(shared[name], attr)), (name, attr)


def test_dense_is_a_no_op_and_bad_specs_fail_clearly():
    loaded = tiny_loaded("llama")
    before = linear_weights(loaded)
    assert prune_model(loaded, calibration(), PruneSpec("dense"), progress=False) == []
    after = linear_weights(loaded)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="fix"):
        PruneSpec("dense", dsnot=True)
    with pytest.raises(ValueError, match="fix"):
        PruneSpec("wanda", 1.0)
    with pytest.raises(ValueError, match="fix"):
        PruneSpec("obs", 0.5)
    with pytest.raises(ValueError, match="weight_update=False only applies to SparseGPT without DSnoT"):
        PruneSpec("sparsegpt", 0.5, dsnot=True, weight_update=False)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reconstruction_error_record_matches_direct_computation(method):
    """rel_output_error = ||(W - W_pruned) X||_F / ||W X||_F on block 0's real calibration inputs."""
    dense_model, loaded = tiny_loaded("llama"), tiny_loaded("llama")
    ids = calibration()
    records = prune_model(loaded, ids, PruneSpec(method, 0.5), record_errors=True, progress=False)
    with torch.no_grad():
        x = dense_model.model.model.layers[0].input_layernorm(dense_model.model.model.embed_tokens(ids))
    x = x.reshape(-1, x.shape[-1]).double()
    w = dense_model.model.model.layers[0].self_attn.q_proj.weight.detach().double()
    w_new = loaded.model.model.layers[0].self_attn.q_proj.weight.detach().double()
    expected = float(torch.linalg.norm((w - w_new) @ x.T) / torch.linalg.norm(w @ x.T))
    record = records[0]
    assert record.name == "model.layers.0.self_attn.q_proj"
    assert record.rel_output_error_after == pytest.approx(expected, rel=1e-4)
    assert record.rel_output_error_before == pytest.approx(expected, rel=1e-4)  # no DSnoT
