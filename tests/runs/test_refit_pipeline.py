"""``--refit`` end to end: one name in the spec, run name, key, command line and layer records; the
pipeline re-fits the final mask's kept weights on tiny models without changing any mask."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from _tiny import VOCAB, tiny_loaded

from dsnot_lite.cli import build_parser, run_spec
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
    # runs stored before the re-fit existed keep their key: refit=False (and no solver) is left out of it
    fields = {k: v for k, v in plain.result_fields().items() if k not in ("refit", "refit_solver")}
    assert plain.key() == _key_of(fields)
    # a re-fitted run's key names the solver, so runs of an earlier solver are redone, not mixed in
    refitted = spec.result_fields()
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
