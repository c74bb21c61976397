"""The two checks every exercise module passes: its checker accepts the solution, and calls a stub
(``raise NotImplementedError``, as the notebooks hand it out) not attempted rather than wrong."""

from __future__ import annotations

from types import ModuleType


def assert_solution_passes(module: ModuleType, name: str, cases: int = 5) -> None:
    verdict = getattr(module, f"check_{name}")(getattr(module, name))
    assert verdict and verdict.attempted and verdict.cases >= cases, f"check_{name} on the solution: {verdict}"


def assert_stub_not_attempted(module: ModuleType, name: str) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError("your code here")

    verdict = getattr(module, f"check_{name}")(stub)
    assert not verdict and not verdict.attempted, f"check_{name} on a stub: {verdict}"
