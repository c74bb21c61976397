"""Why another mask of the same layer differs from ours: float near-ties, or a real difference.

Two correct pipelines that round differently (another CPU, batch size or attention kernel)
compute statistics that differ in their last bits, so a decision between two nearly equal numbers
can go either way. ``explain_rows`` judges every row where another mask (the authors') differs
from ours: the row is *explained* when our own algorithm, on our own statistics, reaches that
row exactly once some near-tie decisions go the other way; otherwise it is a real difference.

* Wanda rows (and rows DSnoT leaves alone, R6, R7): both masks prune as many weights, and every
  weight that differs has a Wanda score within ``Tolerance.score`` (relative) of every other one
  that differs: they sit at the row's threshold and any of them could have been cut.
* DSnoT rows (Algorithm 1 with the reference's lists, R2, R3; unstructured): DSnoT is replayed on
  the row, and a search flips the near-tie decisions of the replay, one at a time and up to
  ``Tolerance.flips`` of them, each followed by a new replay, until the other row comes out. A
  decision is a near-tie when the two numbers it compared are close: the start mask's two Wanda
  scores at the threshold; the grow key (Eq. 2) taken against the next one from the same end of
  the list; the prune key (Eq. 3's Wanda score) taken against the next one of the same sign
  segment (both within ``Tolerance.score``, relative); or ``|E[Delta_r]|`` against epsilon, within
  ``Tolerance.error`` times the row's scale ``sum_k |W_rk| sqrt(L ||A_k||^2)`` (L tokens per
  sample), which bounds every sum that makes ``E[Delta_r]`` (the grow/prune end is chosen by the
  sign of ``E[Delta_r]``, which is beyond epsilon whenever a row runs, so it is no near-tie while
  epsilon exceeds that tolerance). A flip is made on the row's own copy of the statistics (two
  keys swapped by changing the variance or the squared norm of their two channels; two equal keys,
  which our stable sort and another sort may order either way, by moving one of them 1e-6) or of
  epsilon.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .dsnot import DSnoTConfig, DSnoTTrace, dsnot
from .pruners import wanda_score
from .stats import ChannelStats


@dataclass(frozen=True)
class Tolerance:
    """How close two numbers must be for a decision between them to count as a near-tie."""

    score: float = 1e-4  # relative gap of two Wanda scores or two Eq. 2 keys
    error: float = 1e-5  # ||E[Delta_r]| - eps| as a fraction of the row's scale (module docstring)
    flips: int = 4  # most near-tie decisions flipped to reach one row


@dataclass(frozen=True)
class Tie:
    """One near-tie decision taken the other way: its kind, DSnoT step (None: the start mask) and gap."""

    kind: str  # "wanda" (start mask), "grow", "prune" or "threshold"
    step: int | None
    gap: float  # relative gap of the two scores, or ||E| - eps| over the row's scale

    def __str__(self) -> str:
        where = "start mask" if self.step is None else f"step {self.step}"
        return f"{self.kind} near-tie at {where} (gap {self.gap:.2e})"


@dataclass
class RowVerdict:
    """Whether one differing row is explained by near-ties, and by which."""

    row: int
    entries: int  # mask entries that differ in this row
    explained: bool
    ties: list[Tie] = field(default_factory=list)
    reason: str = ""

    @property
    def gap(self) -> float:
        """The largest gap among the flipped decisions (0 for an exact tie)."""
        return max((t.gap for t in self.ties), default=0.0)


def explain_rows(
    weight: torch.Tensor,
    stats: ChannelStats,
    start: torch.Tensor,
    ours: torch.Tensor,
    theirs: torch.Tensor,
    config: DSnoTConfig | None,
    tolerance: Tolerance | None = None,
    limit: int | None = None,
) -> list[RowVerdict]:
    """A verdict for every row where the zero patterns ``ours`` and ``theirs`` differ.

    ``start``: our initial (Wanda) mask; ``config``: the DSnoT configuration that made ``ours``
    from it, or None when this layer is not refined (then ``ours`` is ``start``). After ``limit``
    unexplained rows the remaining ones are reported unexplained without a search.
    """
    tolerance = tolerance or Tolerance()
    weight = weight.float()
    zero = weight == 0
    differing = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    verdicts: list[RowVerdict] = []
    score = wanda_score(weight, stats.scaler_row)
    iterations = 0
    if config is not None and differing:
        layer = dsnot(weight, stats, start, config, trace=True)
        if not torch.equal(layer.mask | zero, ours):
            why = "DSnoT from our start mask does not give our mask (the pipeline and DSnoT disagree)"
            return [RowVerdict(r, int((ours[r] != theirs[r]).sum()), False, reason=why) for r in differing]
        iterations = layer.trace.grown.shape[0]
    for r in differing:
        entries = int((ours[r] != theirs[r]).sum())
        if limit is not None and sum(not v.explained for v in verdicts) >= limit:
            verdicts.append(RowVerdict(r, entries, False, reason="not searched (limit reached)"))
            continue
        if config is None:
            verdict = _wanda_row(score[r], ours[r], theirs[r], tolerance)
        else:
            verdict = _dsnot_row(weight[r], zero[r], stats, score[r], start[r], ours[r], theirs[r], config, tolerance, iterations)
        verdicts.append(dataclasses.replace(verdict, row=r, entries=entries))
    return verdicts


def _wanda_row(score: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor, tol: Tolerance) -> RowVerdict:
    if int(ours.sum()) != int(theirs.sum()):
        return RowVerdict(0, 0, False, reason=f"prunes {int(theirs.sum())} weights, not {int(ours.sum())}")
    gap = _rel_gap(score[ours != theirs])
    if gap <= tol.score:
        return RowVerdict(0, 0, True, [Tie("wanda", None, gap)])
    return RowVerdict(0, 0, False, reason=f"Wanda scores of the differing weights {gap:.2e} apart (> {tol.score:g})")


def _rel_gap(values: torch.Tensor) -> float:
    """(max - min) / max of non-negative scores (0 when all are equal)."""
    high, low = float(values.max()), float(values.min())
    return 0.0 if high == low else (high - low) / high


@dataclass
class _State:
    """One replay of a row: its start mask, its own statistics vectors and epsilon, the ties flipped so far."""

    start: torch.Tensor
    vectors: dict[str, torch.Tensor]
    eps: float
    ties: list[Tie]


def _dsnot_row(w, zero, stats, score, start, ours, theirs, cfg: DSnoTConfig, tol: Tolerance, iterations: int) -> RowVerdict:
    if (cfg.statistics, cfg.reference_quirks, cfg.grow, cfg.prune, cfg.var_floor) != ("official", True, "eq2", "eq3", 0) or (
        cfg.var_power <= 0
    ):
        raise ValueError("near-tie replays model the official preset's lists (R1-R3); fix: explain rows of preset('official')")
    vectors = {"sum_metric_row": stats.sum_metric_row, "var": stats.variance("official"), "scaler_row": stats.scaler_row}
    tokens = stats.ntokens / max(stats.nsamples, 1)
    scale = float((w.abs() * torch.sqrt(tokens * stats.scaler_row)).sum())
    cfg = dataclasses.replace(cfg, T=iterations)  # the layer ran this many iterations (stopped rows still write)
    root = _State(start, {k: v.clone() for k, v in vectors.items()}, cfg.eps, [])
    first = _replay(w, root, cfg)
    if first is None:
        return RowVerdict(
            0, 0, False, reason=f"no faithful replay: the layer ran {iterations} iterations, past a row's kept weights"
        )
    if not torch.equal(first.mask[0] | zero, ours):
        return RowVerdict(0, 0, False, reason="a replay of the row does not give our mask")
    queue = [root, *_start_flips(score, start, root, tol)]
    searched = 0
    while queue and searched < 64:
        state = queue.pop(0)
        result = first if state is root else _replay(w, state, cfg)
        searched += 1
        if result is None:
            continue
        if torch.equal(result.mask[0] | zero, theirs):
            return RowVerdict(0, 0, True, state.ties)
        if len(state.ties) < tol.flips:
            queue += _flips(w, state, result, theirs, cfg, scale, tol)
    return RowVerdict(0, 0, False, reason=f"no chain of <= {tol.flips} near-tie flips reaches their row ({searched} replays)")


def _replay(w: torch.Tensor, state: _State, cfg: DSnoTConfig):
    """DSnoT on the row alone, for exactly the layer's ``cfg.T`` iterations: a second, pacing row
    (every contribution positive and large, so its error never nears epsilon) keeps the loop going
    after the row stops, as the layer's other rows did (the reference's stopped rows still write,
    ``quirks.stopped_rows_write``). Returns the result of the row only."""
    stats = ChannelStats.from_tensors(state.vectors)
    mean = state.vectors["sum_metric_row"]
    pacer = torch.where(mean >= 0, 1.0, -1.0) * (1e3 * float(w.abs().max()) + 1.0)
    both = dsnot(torch.stack([w, pacer]), stats, torch.stack([state.start, state.start]),
                 dataclasses.replace(cfg, eps=state.eps), trace=True)  # fmt: skip
    if int(both.swaps[1]) != cfg.T:
        return None  # the pacer ran out of prune candidates (T beyond the kept weights of a row): no faithful replay
    trace = both.trace
    row = DSnoTTrace(trace.error[:, :1], trace.grown[:, :1], trace.pruned[:, :1], trace.swapped[:, :1])
    return dataclasses.replace(both, mask=both.mask[:1], swaps=both.swaps[:1], trace=row)


def _start_flips(score: torch.Tensor, start: torch.Tensor, root: _State, tol: Tolerance) -> list[_State]:
    """The start mask with one pruned and one kept weight exchanged where their Wanda scores tie."""
    pruned, kept = start.nonzero().flatten(), (~start).nonzero().flatten()
    top = pruned[score[pruned] >= score[pruned].max() * (1 - tol.score)]
    low = kept[score[kept] <= score[pruned].max() / (1 - tol.score)]
    out = []
    for i in top.tolist():
        for j in low.tolist():
            gap = _rel_gap(score[[i, j]])
            if gap <= tol.score:
                alt = start.clone()
                alt[i], alt[j] = False, True
                out.append(_State(alt, root.vectors, root.eps, [Tie("wanda", None, gap)]))
    return out


def _flips(w, state: _State, result, theirs, cfg: DSnoTConfig, scale: float, tol: Tolerance) -> list[_State]:
    """Every near-tie decision of the replay up to its first step that their row contradicts."""
    trace, start = result.trace, state.start
    grown_theirs, pruned_theirs = start & ~theirs, ~start & theirs
    contribution = w * state.vectors["sum_metric_row"]
    grow_key = contribution.masked_fill(~start, 0) / torch.pow(state.vectors["var"], cfg.var_power)
    wanda = w.abs() * torch.sqrt(state.vectors["scaler_row"])
    grow = _Ends(_stable_order(grow_key, torch.ones_like(start)))  # R2: the whole row, kept weights at 0
    prune = _Ends(_prune_order(wanda, contribution, ~start))  # R3
    out: list[_State] = []
    for t in range(trace.grown.shape[0]):
        error, swapped = float(trace.error[t, 0]), bool(trace.swapped[t, 0])
        g, p = int(trace.grown[t, 0]), int(trace.pruned[t, 0])
        margin = abs(abs(error) - state.eps) / scale
        if margin <= tol.error:  # |E[Delta_r]| against epsilon: stop here, or go on
            out.append(_with(state, eps=abs(error) if swapped else _below(abs(error)), tie=Tie("threshold", t, margin)))
        if not swapped:
            break
        g_next = grow.take(error > 0)
        p_next = prune.take(error < 0)
        if g_next is not None and g_next[0] == g:
            out += _swap_keys(state, "var", g, g_next[1], grow_key, contribution, cfg.var_power, t, tol)
        if p_next is not None and p_next[0] == p:
            out += _swap_keys(state, "scaler_row", p, p_next[1], wanda, w, 0.5, t, tol)
        if not (grown_theirs[g] and pruned_theirs[p]):
            break  # the first step their row contradicts: later decisions follow from this one
    return out


def _with(state: _State, *, eps: float | None = None, vectors: dict | None = None, tie: Tie) -> _State:
    return _State(state.start, vectors or state.vectors, state.eps if eps is None else eps, [*state.ties, tie])


def _below(x: float) -> float:
    """The float32 just below ``x`` (DSnoT compares float32 errors with epsilon)."""
    return float(torch.nextafter(torch.tensor(x, dtype=torch.float32), torch.tensor(0.0)))


def _swap_keys(state, name, a, b, key, base, power, t, tol: Tolerance) -> list[_State]:
    """``a`` was taken before ``b`` (its neighbour in the list); if their keys tie, exchange them by
    changing channel ``name`` of both (``key = base / vector ** power``), so ``b`` comes first."""
    if b is None:
        return []
    ka, kb = float(key[a]), float(key[b])
    gap = _rel_gap(torch.tensor([abs(ka), abs(kb)]))
    if gap > tol.score or ka == 0 or kb == 0:
        return []
    vectors = dict(state.vectors)
    vec = vectors[name].clone()
    kind = "grow" if name == "var" else "prune"
    vec[a] = (float(base[a]) / kb) ** (1 / power) if name == "var" else (kb / abs(float(base[a]))) ** 2
    vec[b] = (float(base[b]) / ka) ** (1 / power) if name == "var" else (ka / abs(float(base[b]))) ** 2
    # An exact tie: exchanging equal keys changes nothing and the stable sort keeps a first, while
    # another sort may not; so move b's key a hair (1e-6, far inside the tolerance) either way.
    factors = (1.0,) if ka != kb else (1 - 1e-6, 1 + 1e-6)
    return [_with(state, vectors={**vectors, name: _scaled(vec, b, f)}, tie=Tie(kind, t, gap)) for f in factors]


def _scaled(vec: torch.Tensor, i: int, factor: float) -> torch.Tensor:
    if factor == 1.0:
        return vec
    out = vec.clone()
    out[i] = vec[i] * factor
    return out


def _stable_order(key: torch.Tensor, members: torch.Tensor) -> list[int]:
    cols = members.nonzero().flatten()
    return cols[torch.sort(key[cols], stable=True).indices].tolist()


def _prune_order(wanda: torch.Tensor, contribution: torch.Tensor, kept: torch.Tensor) -> list[int | None]:
    """R3's prune list: negative contributions by Wanda ascending, a gap (None) per zero one, positives descending."""
    negative = _stable_order(wanda, kept & (contribution < 0))
    positive = _stable_order(wanda, kept & (contribution > 0))[::-1]
    return negative + [None] * int((kept & (contribution == 0)).sum()) + positive


class _Ends:
    """A list read from its front and its back, as DSnoT's two pointers read it (R2)."""

    def __init__(self, order: list[int | None]):
        self.order, self.front, self.back = order, 0, len(order) - 1

    def take(self, from_back: bool) -> tuple[int | None, int | None] | None:
        """(the entry taken, the next one from the same end); None past the list."""
        if not 0 <= self.front <= self.back:
            return None
        if from_back:
            taken, nxt = self.order[self.back], self.order[self.back - 1] if self.back > self.front else None
            self.back -= 1
        else:
            taken, nxt = self.order[self.front], self.order[self.front + 1] if self.front < self.back else None
            self.front += 1
        return taken, nxt
