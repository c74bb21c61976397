"""``--refit`` end to end: one name in the spec, run name, key, command line and layer records; the
pipeline re-fits the final mask's kept weights on tiny models without changing any mask."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from _tiny import VOCAB, tiny_loaded

from dsnot_lite.cli import PERCDAMP as CLI_PERCDAMP
from dsnot_lite.cli import build_parser, run_spec
from dsnot_lite.core.refit import PERCDAMP as REFIT_PERCDAMP
from dsnot_lite.core.refit import SOLVER as REFIT_SOLVER
from dsnot_lite.lm.models import find_linears
from dsnot_lite.runs.pipeline import prune_model
from dsnot_lite.runs.spec import RunSpec


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
    fields = {
        k: v for k, v in plain.result_fields().items() if k not in ("refit", "refit_solver", "refit_target", "refit_damping")
    }
    assert plain.key() == _key_of(fields)
    # a re-fitted run's key names the solver, so runs of an earlier solver are redone, not mixed in
    refitted = {k: v for k, v in spec.result_fields().items() if k not in ("refit_target", "refit_damping")}
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
    assert default.key() == _key_of(
        {k: v for k, v in default.result_fields().items() if k not in ("refit_target", "refit_damping")}
    )
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
    assert layer.key() == _key_of({k: v for k, v in layer.result_fields().items() if k not in ("refit_target", "refit_damping")})
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


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_dense_target_equals_the_layer_target_in_block_0_and_differs_after(arch):
    """Block 0 sees the same inputs in the dense and the pruned model, so both targets agree there;
    block 1's inputs differ (block 0 was pruned), so its re-fitted weights do too; masks are kept.
    In block 0 the two differ only by rounding and where the CG stops (its right-hand sides are
    computed differently): up to 0.3% of the weights' norm, against 8-58% in block 1."""
    spec = RunSpec(method="sparsegpt", nm=(2, 4), refit=True, batch_size=4, record_errors=True)
    own, aimed = tiny_loaded(arch), tiny_loaded(arch)
    prune_model(own, calibration(), spec, progress=False)
    records = prune_model(aimed, calibration(), spec.replace(refit_target="dense"), progress=False)
    layer_w, dense_w = weights(own), weights(aimed)
    for name, w in dense_w.items():
        assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all()), name
        change = float((w - layer_w[name]).norm() / layer_w[name].norm())
        if name.startswith("0."):
            assert change < 1e-2 and torch.equal(w == 0, layer_w[name] == 0), (name, change)  # 0.3% at most seen
        else:
            assert change > 5e-2, (name, change)  # 7.7% at least seen
    assert all(r.refit_iterations > 0 for r in records)
