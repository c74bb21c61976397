"""``--refit`` end to end: one name in the spec, run name, key, command line and layer records; the
pipeline re-fits the final mask's kept weights on tiny models without changing any mask."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from _tiny import VOCAB, tiny_loaded

from dsnot_lite.cli import PERCDAMP as CLI_PERCDAMP
from dsnot_lite.cli import PRECISIONS as CLI_PRECISIONS
from dsnot_lite.cli import TOLERANCE as CLI_TOLERANCE
from dsnot_lite.cli import build_parser, run_spec
from dsnot_lite.core.refit import PERCDAMP as REFIT_PERCDAMP
from dsnot_lite.core.refit import PRECISIONS as REFIT_PRECISIONS
from dsnot_lite.core.refit import SOLVER as REFIT_SOLVER
from dsnot_lite.core.refit import TOLERANCE as REFIT_TOLERANCE
from dsnot_lite.lm.calibration import capture_block_inputs, dense_linear_inputs, group_targets, run_block
from dsnot_lite.lm.models import find_linears
from dsnot_lite.runs.pipeline import prune_model
from dsnot_lite.runs.spec import RunSpec

NEUTRAL = ("refit_target", "refit_damping", "refit_tolerance", "refit_precision")  # left out of the key at their defaults


def calibration(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (6, 32), generator=torch.Generator().manual_seed(seed))


def weights(loaded) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{n}": layer.weight.detach().clone() for i, b in enumerate(loaded.blocks) for n, layer in find_linears(b).items()
    }


def _key_of(fields: dict) -> str:
    """A run key computed here, apart from ``RunSpec.key``: the hash of the settings that enter it."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_one_name_in_spec_run_name_label_key_and_command_line():
    spec = RunSpec(method="wanda", sparsity=0.6, refiner="exact", refit=True)
    assert spec.name() == "smollm2-135m-wanda-exact-refit-s60" and spec.label() == "wanda + exact + refit"
    assert spec.result_fields()["refit"] is True and spec.needs_gram
    assert RunSpec(method="sparsegpt", sparsity=0.7, refit=True).name() == "smollm2-135m-sparsegpt-refit-s70"
    plain = RunSpec(method="wanda", sparsity=0.6)
    assert plain.replace(refit=True).key() != plain.key()
    # runs stored before the re-fit existed keep their key: refit=False (no solver, the layer target) is left out
    fields = {k: v for k, v in plain.result_fields().items() if k not in ("refit", "refit_solver", *NEUTRAL)}
    assert plain.key() == _key_of(fields)
    # a re-fitted run's key names the solver, so runs of an earlier solver are redone, not mixed in
    refitted = {k: v for k, v in spec.result_fields().items() if k not in NEUTRAL}
    assert refitted["refit_solver"] == REFIT_SOLVER
    other = {**refitted, "refit_solver": "another solver"}
    assert spec.key() != _key_of(other)
    assert spec.key() == _key_of(refitted)
    args = build_parser().parse_args(["run", "--method", "wanda", "--sparsity", "0.6", "--refiner", "exact", "--refit"])
    assert run_spec(args) == spec.replace(exact=run_spec(args).exact)
    with pytest.raises(ValueError, match="method is dense"):
        RunSpec(method="dense", refit=True)


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(method="wanda", sparsity=0.6, refiner="exact", batch_size=4, record_errors=True),
        RunSpec(method="magnitude", nm=(2, 4), refiner="exact", batch_size=4, record_errors=True),
        RunSpec(method="sparsegpt", sparsity=0.5, batch_size=4, record_errors=True),
    ],
    ids=["wanda+exact", "magnitude 2:4+exact", "full sparsegpt"],
)
def test_refit_keeps_every_mask_and_lowers_every_layer_error(spec):
    plain, fitted = tiny_loaded("llama"), tiny_loaded("llama")
    dense = weights(plain)
    plain_records = prune_model(plain, calibration(), spec, progress=False)
    records = prune_model(fitted, calibration(), spec.replace(refit=True), progress=False)
    before, after = weights(plain), weights(fitted)
    first_block = [r for r in records if ".0." in r.name]
    for r in records:
        assert r.error_final <= r.error_before_refit * (1 + 1e-6) and r.refit_iterations > 0 and r.refit_seconds > 0
    for r, p in zip(first_block, plain_records):  # block 0 sees the same inputs in both runs
        assert r.error_before_refit == pytest.approx(p.error_final, rel=1e-5)
        assert r.error_final < p.error_final
    for name, w in after.items():
        if name.startswith("0."):  # the same mask; later blocks see other inputs, so may choose others
            assert torch.equal(w == 0, before[name] == 0), name
        if spec.nm:
            assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all())
        kept = w != 0
        assert not torch.equal(w[kept], dense[name][kept])  # kept weights moved


def test_the_refit_damping_has_its_own_name_key_and_flag_and_defaults_to_sparsegpts():
    spec = RunSpec(method="sparsegpt", nm=(2, 4), refit=True, refit_damping=0.1)
    assert spec.name() == "smollm2-135m-sparsegpt-refit-damp0.1-2_4" and spec.label() == "sparsegpt + refit (damping 0.1)"
    both = spec.replace(refit_target="dense")
    assert both.label() == "sparsegpt + refit (dense target, damping 0.1)"
    default = spec.replace(refit_damping=REFIT_PERCDAMP)
    assert default.key() == _key_of({k: v for k, v in default.result_fields().items() if k not in NEUTRAL})
    assert spec.key() != default.key() and CLI_PERCDAMP == REFIT_PERCDAMP
    args = build_parser().parse_args(["run", "--method", "sparsegpt", "--nm", "2:4", "--refit", "--refit-damping", "0.1"])
    assert run_spec(args) == spec


def test_the_dense_target_has_its_own_name_key_and_flag_and_needs_refit():
    spec = RunSpec(method="sparsegpt", nm=(2, 4), refit=True, refit_target="dense")
    assert spec.name() == "smollm2-135m-sparsegpt-refit-dense-target-2_4"
    assert spec.label() == "sparsegpt + refit (dense target)"
    assert spec.key() != spec.replace(refit_target="layer").key()
    # runs stored before the dense target existed keep their key: refit_target "layer" is left out of it
    layer = spec.replace(refit_target="layer")
    assert layer.key() == _key_of({k: v for k, v in layer.result_fields().items() if k not in NEUTRAL})
    args = build_parser().parse_args(["run", "--method", "sparsegpt", "--nm", "2:4", "--refit", "--refit-target", "dense"])
    assert run_spec(args) == spec
    with pytest.raises(ValueError, match="refit is off"):
        RunSpec(method="wanda", sparsity=0.5, refit_target="dense")
    with pytest.raises(ValueError, match="refit is off"):
        RunSpec(method="wanda", sparsity=0.5, refit_damping=0.1)
    with pytest.raises(ValueError, match="positive number"):
        RunSpec(method="wanda", sparsity=0.5, refit=True, refit_damping=0)
    with pytest.raises(ValueError, match="refit_target 'teacher'"):
        RunSpec(method="wanda", sparsity=0.5, refit=True, refit_target="teacher")


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_the_dense_target_equals_the_layer_target_on_the_first_group_and_differs_after(arch):
    """q/k/v of block 0 see the same inputs in the dense and the pruned model, so both targets agree
    there; every later group sees inputs through pruned layers (true-sequential: o_proj through the
    pruned q/k/v already in block 0), so its re-fitted weights differ; masks and 2:4 are kept.
    On q/k/v the two differ only by rounding and where the CG stops (their right-hand sides are
    computed differently): up to 0.3% of the weights' norm, against 5% or more elsewhere."""
    spec = RunSpec(method="sparsegpt", nm=(2, 4), refit=True, batch_size=4, record_errors=True)
    own, aimed = tiny_loaded(arch), tiny_loaded(arch)
    prune_model(own, calibration(), spec, progress=False)
    records = prune_model(aimed, calibration(), spec.replace(refit_target="dense"), progress=False)
    layer_w, dense_w = weights(own), weights(aimed)
    for name, w in dense_w.items():
        assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all()), name
        change = float((w - layer_w[name]).norm() / layer_w[name].norm())
        if name in ("0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj"):
            assert change < 1e-2 and torch.equal(w == 0, layer_w[name] == 0), (name, change)
        else:
            assert change > 1e-2, (name, change)
    assert all(r.refit_iterations > 0 for r in records)


def test_dense_inputs_come_in_call_order_groups_and_group_targets_see_the_pruned_layers_before():
    loaded = tiny_loaded("llama")
    block, ids = loaded.blocks[0], calibration()
    linears = find_linears(block)
    captured = capture_block_inputs(loaded.model, loaded.blocks, ids, 3, "cpu")
    dense = dense_linear_inputs(block, linears, captured.for_block(0))
    assert dense.groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                            ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]  # fmt: skip
    assert [len(v) for v in dense.inputs.values()] == [2, 2, 2, 2]  # 6 windows in batches of 3
    torch.testing.assert_close(torch.cat(dense.outputs.hidden), torch.cat(run_block(block, captured.for_block(0)).hidden))
    o_proj = linears["self_attn.o_proj"]
    target, gram = group_targets(block, o_proj, captured.for_block(0), dense.inputs["self_attn.o_proj"])
    torch.testing.assert_close(target.cross, gram)  # nothing pruned yet: the pruned stream is the dense one
    torch.testing.assert_close(target.gram, gram)
    with torch.no_grad():
        linears["self_attn.v_proj"].weight[:, ::2] = 0  # prune upstream: o_proj's inputs move, the dense ones do not
    moved, moved_gram = group_targets(block, o_proj, captured.for_block(0), dense.inputs["self_attn.o_proj"])
    torch.testing.assert_close(moved.gram, target.gram)
    assert float((moved_gram - gram).norm() / gram.norm()) > 1e-2 and not torch.allclose(moved.cross, target.cross)


def test_the_refit_tolerance_has_its_own_name_key_solver_and_flag_and_keeps_stored_keys():
    spec = RunSpec(method="wanda", sparsity=0.6, refit=True, refit_tolerance=0.005)
    assert spec.name() == "smollm2-135m-wanda-refit-tol0.005-s60" and spec.label() == "wanda + refit (tolerance 0.005)"
    assert spec.result_fields()["refit_solver"] == "cg, (G + lambda I)^-1 preconditioner, tolerance 0.005"
    default = spec.replace(refit_tolerance=REFIT_TOLERANCE)
    assert default.result_fields()["refit_solver"] == REFIT_SOLVER  # the stored runs' solver, so their keys
    assert default.key() == _key_of({k: v for k, v in default.result_fields().items() if k not in NEUTRAL})
    assert spec.key() != default.key() and CLI_TOLERANCE == REFIT_TOLERANCE
    args = build_parser().parse_args(["run", "--method", "wanda", "--sparsity", "0.6", "--refit", "--refit-tolerance", "0.005"])
    assert run_spec(args) == spec
    with pytest.raises(ValueError, match="refit is off"):
        RunSpec(method="wanda", sparsity=0.5, refit_tolerance=0.005)
    for bad in (0, 1, float("nan")):
        with pytest.raises(ValueError, match=r"refit_tolerance must be a number in \(0, 1\)"):
            RunSpec(method="wanda", sparsity=0.5, refit=True, refit_tolerance=bad)


def test_a_looser_tolerance_runs_fewer_iterations_in_the_pipeline():
    spec = RunSpec(method="wanda", sparsity=0.6, refit=True, batch_size=4)
    iterations = {}
    for tol in (REFIT_TOLERANCE, 0.2):
        records = prune_model(tiny_loaded("llama"), calibration(), spec.replace(refit_tolerance=tol), progress=False)
        iterations[tol] = sum(r.refit_iterations for r in records)
    assert iterations[0.2] < iterations[REFIT_TOLERANCE]


def test_the_refit_precision_has_its_own_name_key_solver_and_flag_and_keeps_stored_keys():
    spec = RunSpec(method="wanda", sparsity=0.6, refiner="exact", refit=True, refit_precision="bf16")
    assert spec.name() == "smollm2-135m-wanda-exact-refit-bf16-s60" and spec.label() == "wanda + exact + refit (bf16 products)"
    assert spec.result_fields()["refit_solver"] == "cg, (G + lambda I)^-1 preconditioner, tolerance 0.001, bf16 products"
    default = spec.replace(refit_precision="float32")
    assert default.result_fields()["refit_solver"] == REFIT_SOLVER
    assert default.key() == _key_of({k: v for k, v in default.result_fields().items() if k not in NEUTRAL})
    assert spec.key() != default.key() and CLI_PRECISIONS == REFIT_PRECISIONS
    argv = ["run", "--method", "wanda", "--sparsity", "0.6", "--refiner", "exact", "--refit", "--refit-precision", "bf16"]
    assert run_spec(build_parser().parse_args(argv)) == spec
    with pytest.raises(ValueError, match="refit is off"):
        RunSpec(method="wanda", sparsity=0.5, refit_precision="bf16")
    with pytest.raises(ValueError, match=r"refit_precision 'fp16' is not one of \('float32', 'bf16'\)"):
        RunSpec(method="wanda", sparsity=0.5, refit=True, refit_precision="fp16")


def test_bf16_products_in_the_pipeline_keep_the_masks_and_nearly_the_float32_errors():
    spec = RunSpec(method="wanda", sparsity=0.6, refit=True, batch_size=4, record_errors=True)
    runs = {}
    for precision in REFIT_PRECISIONS:
        loaded = tiny_loaded("llama")
        records = prune_model(loaded, calibration(), spec.replace(refit_precision=precision), progress=False)
        runs[precision] = (records, weights(loaded))
    (full, full_w), (fast, fast_w) = runs["float32"], runs["bf16"]
    first = [k for k in full_w if k.startswith("0.")]  # later blocks see inputs that the re-fits changed
    assert all(torch.equal(full_w[k] == 0, fast_w[k] == 0) for k in first)  # the same masks, kept weights moved
    assert all(not torch.equal(full_w[k], fast_w[k]) for k in first)
    assert all(b.error_final <= b.error_before_refit for b in fast)
    assert all(b.error_final <= 1.01 * a.error_final for a, b in zip(full[: len(first)], fast[: len(first)]))
