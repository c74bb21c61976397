"""RunCache: stored runs are found by key, computed once, and claims keep two workers apart."""

from __future__ import annotations

import json
import os
import socket
import time

from _tinydir import tiny_model_dir

from dsnot_lite.runs import cache as cache_mod
from dsnot_lite.runs.cache import RunCache
from dsnot_lite.runs.spec import RunSpec


def test_runs_are_computed_once_found_by_key_and_claimed(tmp_path, monkeypatch):
    spec = RunSpec(model=str(tiny_model_dir(tmp_path)), method="wanda", sparsity=0.5, nsamples=2, seqlen=32, max_windows=1)
    store = RunCache(tmp_path / "runs", progress=False)
    first = store.run(spec)
    assert store.computed == 1 and store.run(spec) == first and store.computed == 1
    path = store.path(spec)
    renamed = path.with_name("another-name-" + path.name.split("-")[-1])  # a run is found by its key alone
    path.rename(renamed)
    assert store.path(spec) == renamed and store.get(spec)["ppl"] == first["ppl"]
    assert not list((tmp_path / "runs").glob("*.claim"))  # the claim is released
    other = spec.replace(sparsity=0.6)
    claim = store.path(other).with_suffix(".claim")
    claim.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # a live worker holds it
    assert store.run(other) is None and store.computed == 1
    claim.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # that worker died
    assert store.run(other)["sparsity"] == 0.6 and store.computed == 2


def test_claims_from_other_hosts_expire(tmp_path):
    claim = tmp_path / "x.claim"
    claim.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    assert cache_mod._alive(claim)
    old = time.time() - cache_mod.STALE_CLAIM_S - 60
    os.utime(claim, (old, old))
    assert not cache_mod._alive(claim)
