"""Conformance with the authors' code: the 14 public reference layers, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _paths import REFERENCE_DIR

from dsnot_lite.reference import STAT_KEYS, load_case, masks_for_case, statistics_for_case

CASES = sorted(REFERENCE_DIR.glob("*.safetensors"))


def test_all_fourteen_reference_files_are_present():
    assert len(CASES) == 14, f"expected 14 reference files in {REFERENCE_DIR}, found {len(CASES)}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_masks_bit_exact(path: Path):
    tensors, params = load_case(path)
    expected_initial = tensors.pop("initial_pruned_mask").bool()
    expected_final = tensors.pop("expected_pruned_mask").bool()  # never visible to masks_for_case
    initial, final = masks_for_case(tensors, params)
    assert initial.dtype == torch.bool and final.dtype == torch.bool
    assert torch.equal(initial, expected_initial), f"{int((initial != expected_initial).sum())} initial entries differ"
    assert torch.equal(final, expected_final), f"{int((final != expected_final).sum())} final entries differ"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_dsnot_changes_as_many_entries_as_recorded(path: Path):
    from safetensors import safe_open

    tensors, params = load_case(path)
    with safe_open(str(path), framework="pt") as f:
        recorded = int(f.metadata()["flips_vs_initial"])
    initial, final = masks_for_case(tensors, params)
    assert int((final != initial).sum()) == recorded


STAT_CASES = [p for p in CASES if "calibration_inputs" in load_case(p)[0]]


def test_some_files_carry_calibration_inputs():
    assert len(STAT_CASES) >= 3


@pytest.mark.parametrize("path", STAT_CASES, ids=lambda p: p.stem)
def test_statistics_match_stored(path: Path):
    tensors, _ = load_case(path)
    stats = statistics_for_case(tensors["calibration_inputs"])
    assert set(stats) == set(STAT_KEYS)
    for key in STAT_KEYS:
        rel = (stats[key] - tensors[key]).abs() / tensors[key].abs().clamp_min(1e-12)
        assert float(rel.max()) <= 1e-5, f"{key}: max relative error {float(rel.max()):.2e}"


def test_statistics_reject_wrong_rank():
    with pytest.raises(ValueError, match="nsamples, seqlen, C_in"):
        statistics_for_case(torch.zeros(4, 8))


def test_load_case_names_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no reference file"):
        load_case(tmp_path / "nope.safetensors")
