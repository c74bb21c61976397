"""Exercises of the notebooks: a checker and a solution for each, ARENA style.

A notebook gives the reader a stub (a code cell tagged ``exercise``, whose metadata
``"exercise": "<module>.<name>"`` names it), then calls the checker
(``<module>.check_<name>(fn)``), then offers the solution in a collapsed cell
(``show_solution("<module>.<name>")``). Modules, one per topic: ``one_layer`` (notebook 01),
``statistics`` (02, 03), ``exact`` (06), ``refit`` (07).

Checkers run the reader's function on random and real cases against the library (``checking``
has the harness) and say which case failed and how. They print and return a ``Verdict``; they
raise only in strict mode (``DSNOT_LITE_STRICT_EXERCISES=1``, set when ``scripts/run_notebooks.py
--solutions`` executes the notebooks with every stub replaced by its solution, as CI and the book
do), so a reader's "Run all" never stops at an exercise.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

PREFIX = __name__


def solution(exercise: str) -> Callable:
    """The solution function of ``"<module>.<name>"`` (e.g. ``"one_layer.grow_choice"``)."""
    module, _, name = exercise.rpartition(".")
    if not module or not name:
        raise ValueError(f"an exercise is named '<module>.<name>', got {exercise!r}; fix: e.g. 'one_layer.grow_choice'")
    try:
        fn = getattr(importlib.import_module(f"{PREFIX}.{module}"), name)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ValueError(f"no exercise {exercise!r} ({err}); fix: see the modules listed in {PREFIX}") from None
    return fn


def solution_source(exercise: str) -> str:
    """The source code of the solution, as the reader would type it."""
    return inspect.getsource(solution(exercise))


def show_solution(exercise: str):
    """A collapsed block with the solution's code (HTML ``<details>``: open it when stuck)."""
    from html import escape

    from IPython.display import HTML

    return HTML(
        f"<details><summary>Solution: <code>{escape(exercise)}</code> (click to open)</summary>"
        f"<pre><code class='language-python'>{escape(solution_source(exercise))}</code></pre></details>"
    )
