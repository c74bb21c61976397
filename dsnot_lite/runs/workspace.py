"""Where the notebooks and the study write: the checkout they run in, from any working directory.

Inside a checkout of the project (a folder holding ``dsnot_lite/`` and ``notebooks/``, found from
the working directory upwards) outputs go to its ``results/`` and ``figures/`` folders; anywhere
else (a pip-installed package, a notebook copied elsewhere) to ``./dsnot-lite/`` in the working
directory. ``$DSNOT_LITE_WORKSPACE`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DSNOT_LITE_WORKSPACE"


def root() -> Path:
    """The checkout the working directory is in, or ``./dsnot-lite`` outside any checkout."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dsnot_lite").is_dir() and (folder / "notebooks").is_dir():
            return folder
    return cwd / "dsnot-lite"


def results_dir(*parts: str) -> Path:
    """``<root>/results/<parts>`` (not committed: runs, caches, executed notebooks)."""
    return root().joinpath("results", *parts)


def figures_dir() -> Path:
    """``<root>/figures`` (the generated figures)."""
    return root() / "figures"


def study_dir(model: str = "smollm2-135m") -> Path:
    """The committed study of ``model``: ``<root>/studies/refinement-<model>``."""
    return root() / "studies" / f"refinement-{model}"
