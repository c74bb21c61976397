"""The checker harness: run a reader's function on cases, compare with the library, say what is wrong.

A checker is ``run_checks(exercise, fn, cases, expected, compare)``: every ``Case`` is run
through the reader's ``fn`` and the library's ``expected`` (each on its own copy of the inputs),
and ``compare(got, want)`` returns ``None`` when they agree or one sentence saying how they
differ (shape, dtype, sign, a constant factor, which row and column, by how much). The first
case that fails ends the check. A stub that still raises ``NotImplementedError`` is "not
attempted", not a failure.

Comparisons offered: ``close`` (float tensors or numbers), ``same_mask`` (boolean masks, True =
pruned), ``same_index`` (one chosen column per row).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

STRICT_ENV = "DSNOT_LITE_STRICT_EXERCISES"
Compare = Callable[[object, object], "str | None"]


@dataclass(frozen=True)
class Case:
    """One input of a check: a name the reader can recognise, and the arguments."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """What a checker found; ``bool(verdict)`` is whether every case passed."""

    exercise: str
    passed: bool
    attempted: bool
    cases: int
    message: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"✓ {self.exercise}: correct on all {self.cases} cases (random and real), same as the library"
        if not self.attempted:
            return f"… {self.exercise}: not attempted yet (the stub raises NotImplementedError); write it, then rerun this cell"
        return f"✗ {self.exercise}: {self.message}"


def strict() -> bool:
    """Whether a failed check raises (``DSNOT_LITE_STRICT_EXERCISES=1``: CI and the book)."""
    return os.environ.get(STRICT_ENV) == "1"


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _changed_inputs(before: tuple, after: tuple) -> list[int]:
    return [
        i for i, (b, a) in enumerate(zip(before, after))
        if isinstance(b, torch.Tensor) and (b.shape != a.shape or not torch.equal(b, a))
    ]  # fmt: skip


def run_checks(exercise: str, fn: Callable, cases: Sequence[Case], expected: Callable, compare: Compare) -> Verdict:
    """Run ``fn`` on every case against ``expected``; print and return the verdict (raise in strict mode)."""
    verdict = _verdict(exercise, fn, cases, expected, compare)
    print(verdict)
    if strict() and not verdict.passed:
        raise AssertionError(str(verdict))
    return verdict


def _verdict(exercise: str, fn: Callable, cases: Sequence[Case], expected: Callable, compare: Compare) -> Verdict:
    if not callable(fn):
        return Verdict(
            exercise, False, True, 0, f"expected a function, got {type(fn).__name__}; pass the function itself, not its result"
        )
    for i, case in enumerate(cases):
        want = expected(*_copy(case.args), **_copy(case.kwargs))
        args = _copy(case.args)
        try:
            got = fn(*args, **_copy(case.kwargs))
        except NotImplementedError:
            return Verdict(exercise, False, False, i)
        except Exception as err:  # the reader's bug: report it as a finding, not a traceback
            return Verdict(exercise, False, True, i, f"case '{case.name}': your function raised {type(err).__name__}: {err}")
        changed = _changed_inputs(case.args, args)
        if changed:
            return Verdict(exercise, False, True, i, f"case '{case.name}': your function changed its input(s) "
                                                     f"{changed} in place; work on a copy (e.g. `mask = mask.clone()`)")  # fmt: skip
        problem = compare(got, want)
        if problem:
            return Verdict(exercise, False, True, i, f"case '{case.name}': {problem}")
    return Verdict(exercise, True, True, len(cases))


def _as_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float, bool)):
        return torch.tensor(value, dtype=torch.float64)
    return None


def _where(shape: torch.Size, flat: int) -> str:
    if len(shape) == 0:
        return "the value"
    index = torch.unravel_index(torch.tensor(flat), shape)
    names = ("row", "column", "index 2", "index 3")
    return ", ".join(f"{names[d]} {int(i)}" for d, i in enumerate(index))


def close(rtol: float = 1e-5, atol: float = 1e-6, what: str = "value") -> Compare:
    """Float tensors (or numbers) equal within ``rtol``/``atol``; on a miss, names the likely slip."""

    def compare(got, want) -> str | None:
        g, w = _as_tensor(got), _as_tensor(want)
        if g is None:
            return f"you returned {type(got).__name__}, expected a tensor of shape {tuple(w.shape)}"
        if g.shape != w.shape:
            return f"the {what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.dtype == torch.bool:
            return f"the {what} is boolean, expected numbers"
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        if torch.isnan(g).any() and not torch.isnan(w).any():
            return f"the {what} has NaN at {_where(g.shape, int(torch.isnan(g).flatten().nonzero()[0]))}"
        if torch.allclose(g, w, rtol=rtol, atol=atol):
            return None
        if w.abs().max() > 0 and torch.allclose(g, -w, rtol=rtol, atol=atol):
            return f"the {what} has the opposite sign everywhere"
        ratio = _constant_ratio(g, w, rtol)
        if ratio is not None:
            return f"the {what} is off by a constant factor {ratio:.6g} (sum instead of mean? a missing power or scale?)"
        err = (g - w).abs() - atol - rtol * w.abs()
        worst = int(err.flatten().argmax())
        return (f"the {what} differs at {_where(g.shape, worst)}: yours {g.flatten()[worst]:.6g}, "
                f"expected {w.flatten()[worst]:.6g} (tolerance rtol={rtol:g}, atol={atol:g}; "
                f"{int((err > 0).sum())} of {g.numel()} entries off)")  # fmt: skip

    return compare


def _constant_ratio(g: torch.Tensor, w: torch.Tensor, rtol: float) -> float | None:
    both = (w.abs() > 1e-12) & (g.abs() > 1e-12)
    if int(both.sum()) < 2 or int(both.sum()) < 0.9 * w.numel():
        return None
    r = g[both] / w[both]
    if torch.allclose(r, r[0].expand_as(r), rtol=max(rtol, 1e-6) * 10) and abs(float(r[0]) - 1) > 1e-3:
        return float(r[0])
    return None


def same_mask(what: str = "mask") -> Compare:
    """Boolean masks (True = pruned) equal entry for entry; on a miss, per-row counts first."""

    def compare(got, want) -> str | None:
        if not isinstance(got, torch.Tensor):
            return f"you returned {type(got).__name__}, expected a boolean tensor of shape {tuple(want.shape)}"
        if got.shape != want.shape:
            return f"the {what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if got.dtype != torch.bool:
            return f"the {what} has dtype {got.dtype}, expected torch.bool (True = pruned)"
        if torch.equal(got, want):
            return None
        if torch.equal(got, ~want):
            return f"the {what} is inverted: True must mean pruned"
        if want.dim() >= 2:
            rows_got, rows_want = got.flatten(1).sum(1), want.flatten(1).sum(1)
            if not torch.equal(rows_got, rows_want):
                r = int((rows_got != rows_want).nonzero()[0])
                return f"row {r} has {int(rows_got[r])} pruned weights, expected {int(rows_want[r])}"
        diff = (got != want).nonzero()
        first = tuple(int(i) for i in diff[0])
        where = _where(got.shape, sum(i * s for i, s in zip(first, got.stride())))
        said, other = ("pruned", "kept") if bool(got[first]) else ("kept", "pruned")
        return f"{len(diff)} entries differ; first at {where}: you {said} it, the library {other} it"

    return compare


def same_index(what: str = "choice") -> Compare:
    """One integer per row (a chosen column) equal; on a miss, the first row that differs."""

    def compare(got, want) -> str | None:
        if not isinstance(got, torch.Tensor) or got.dtype.is_floating_point or got.dtype == torch.bool:
            return f"expected an integer tensor of shape {tuple(want.shape)} (one column per row), got {got!r:.80}"
        if got.shape != want.shape:
            return f"the {what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if torch.equal(got.long(), want.long()):
            return None
        r = int((got.long() != want.long()).flatten().nonzero()[0])
        return f"row {r}: you chose column {int(got.flatten()[r])}, expected {int(want.flatten()[r])}"

    return compare
