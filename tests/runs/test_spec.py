"""RunSpec: one place for every rule a run's settings obey, its name and its cache key."""

from __future__ import annotations

import dataclasses

import pytest

from dsnot_lite.core.dsnot import preset
from dsnot_lite.core.exact import ExactConfig
from dsnot_lite.runs.spec import RunSpec, parse_nm


def test_cache_key_ignores_speed_only_settings_but_not_result_settings():
    base = RunSpec(method="wanda", sparsity=0.6, refiner="dsnot", nsamples=32, seqlen=512, max_windows=40)
    assert base.replace(eval_batch_size=1).key() == base.key()  # evaluation batching changes speed only
    assert base.replace(data_dir="/elsewhere").key() == base.key()
    for change in (dict(nsamples=16), dict(seqlen=256), dict(max_windows=None), dict(seed=1), dict(blocks=2),
                   dict(dtype="float16"), dict(preset="paper"), dict(refiner="exact"), dict(attn="eager"),
                   dict(eval_split="validation"), dict(record_errors=True), dict(batch_size=1),
                   dict(dsnot=dataclasses.replace(preset("official"), T=49))):  # fmt: skip
        assert base.replace(**change).key() != base.key(), change
    # a DSnoT config equal to the preset's is the preset: same run, same key
    assert base.replace(dsnot=preset("official")).key() == base.key()
    # settings that do not act are not part of the run: the exact config without the exact refiner
    assert base.replace(exact=ExactConfig(T=3)).key() == base.key()
    assert RunSpec(method="dense", sparsity=0.6).key() == RunSpec(method="dense").key()


def test_names_say_what_differs():
    assert RunSpec(method="wanda", sparsity=0.6).name() == "smollm2-135m-wanda-s60"
    assert RunSpec(method="wanda", nm=(2, 4), refiner="dsnot").name() == "smollm2-135m-wanda-dsnot-official-2_4"
    tuned = RunSpec(method="wanda", sparsity=0.6, refiner="dsnot", preset="paper",
                    dsnot=dataclasses.replace(preset("paper"), eps=0.5, var_floor=1.0), seed=2)  # fmt: skip
    assert tuned.name() == "smollm2-135m-wanda-dsnot-paper-eps0.5-var_floor-1-s60-seed2"
    exact = RunSpec(method="sparsegpt", sparsity=0.7, refiner="exact", exact=ExactConfig(T=20, shortlist=None))
    assert exact.name() == "smollm2-135m-sparsegpt-exact-T20-shortlist-all-s70"
    assert RunSpec(method="sparsegpt", sparsity=0.6, weight_update=False).label() == "sparsegpt (mask only)"
    assert RunSpec(method="wanda", sparsity=0.6, refiner="dsnot+exact").label() == "wanda + DSnoT (official) + exact"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="dense", refiner="dsnot"), "method is dense"),
        (dict(method="wanda", sparsity=1.0), "outside"),
        (dict(method="obs"), "method 'obs'"),
        (dict(method="sparsegpt", sparsity=0.5, refiner="dsnot", weight_update=False), "weight_update=False"),
        (dict(method="wanda", sparsity=0.5, refiner="magic"), "refiner 'magic'"),
        (dict(method="wanda", nm=(4, 2)), "0 < N < M"),
        (dict(method="wanda", sparsity=0.5, dsnot=preset("paper")), "does not include DSnoT"),
        (dict(method="wanda", sparsity=0.5, nsamples=0), "nsamples must be"),
        (dict(method="wanda", sparsity=0.5, max_windows=0), "max_windows must be"),
        (dict(method="wanda", sparsity=0.5, device="tpu"), "device 'tpu'"),
        (dict(method="wanda", sparsity=0.5, attn="flash"), "attn 'flash'"),
        (dict(method="wanda", sparsity=0.5, eval_split="train"), "eval_split 'train'"),
    ],
)
def test_bad_settings_name_the_problem_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        RunSpec(**kwargs)
    assert "fix:" in str(info.value)


def test_nm_sets_the_sparsity_and_parses():
    assert RunSpec(method="wanda", nm=[2, 4]).sparsity == 0.5 and RunSpec(method="wanda", nm=[2, 4]).nm == (2, 4)
    assert parse_nm("2:4") == (2, 4) and parse_nm(None) is None
    with pytest.raises(ValueError, match="N:M"):
        parse_nm("2-4")
