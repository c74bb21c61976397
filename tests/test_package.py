"""Smoke test: the package imports from the installed (editable) location and has a version."""

import re
from pathlib import Path

import dsnot_lite

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", dsnot_lite.__version__), dsnot_lite.__version__


def test_imported_from_this_checkout():
    assert Path(dsnot_lite.__file__).resolve().parent == ROOT / "dsnot_lite"


def test_packaging_metadata_matches():
    from importlib.metadata import version

    assert version("dsnot-lite") == dsnot_lite.__version__
