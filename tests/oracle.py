"""A slow, per-row, obviously-correct DSnoT: the oracle the vectorised ``dsnot_lite.dsnot`` is checked against.

Written from ``../shared/spec/dsnot.md`` (paper Eq. 2/3, reference facts R2-R5, R9), not from
``dsnot_lite/candidates.py``: every row builds its own grow and prune lists with Python's stable
``sorted()`` and then walks them with plain integer pointers, one Python statement per decision.
Only the per-channel vectors and the contribution matrix ``W * E[A]`` are computed with whole-tensor
operations (elementwise, so a row's values are the same bits as in a per-row computation); the
row's initial error uses the same 2-D ``sum(dim=1)`` as the reference code so that the float32
rounding of the starting point is identical. All error arithmetic is float32 (numpy scalars), in
the reference's order: ``error + pruned - grown``.

Two modes, chosen by ``config.reference_quirks`` (the ``official`` preset has it on, ``paper`` off):

* **official (quirks)**, what the reference code does:
  - grow list (Eq. 2): *every* column of the row, ranked ascending (stable) by
    ``W E[A] / Var^pow`` where kept weights score 0 (R2); 0/0 counts as 0 and x/0 as +-inf (the
    reference would make NaN; documented choice of the library, kept here);
  - prune list (Eq. 3): the kept weights by Wanda score ascending (stable), reordered as
    [negative contributions, ascending] + [zero-contribution slots] + [positive contributions,
    descending]; every zero-contribution slot holds the weakest kept weight (R3);
  - the grow pointer takes the back iff error > 0, the prune pointer the back iff error < 0;
  - one global loop: every row consumes one position of each list per iteration, active or not,
    until *all* rows stopped or ``T`` iterations; stopped rows still write
    ``mask[prune] = False; mask[grow] = True`` (the reference's unconditional scatters);
  - a row stays active while ``|error| > epsilon`` (and, with the sign check, while the swap keeps
    the initial sign, R4); a pointer that leaves its list stops the row cleanly (R9: the
    reference crashes there) and such a row writes nothing any more.
* **paper (strict)**: lists hold only real candidates (pruned weights to grow, kept weights to
  prune, Eq. 3 restricted to the sign segment), the two pointers of a list never cross nor leave
  their segment, and only active rows move pointers and write.

Other grow/prune criteria (paper Table 7) use the same list machinery: ``wanda``/``magnitude`` rank
candidates ascending and always take the back (grow) or the front (prune); ``eq2`` as prune ranks
kept weights by the Eq. 2 score; ``eq3`` as grow orders pruned weights as [negatives by Wanda
descending] + [zero-contribution ascending] + [positives ascending] (the spec is silent on the zero
segment's order; ascending is the library's choice, reachable only in quirks mode: the prune list's
zero slots are overwritten by the weakest kept weight, R3).

N:M: the prune candidate is the lowest key inside the regrown weight's block of M (``torch.topk``
with k=1 on that block, the reference's tie rule); a used candidate's key becomes +inf (in quirks
mode every row with candidates uses one per iteration; in strict mode only rows that swap). The
sign check is always on in quirks mode, as in the reference's N:M branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsnot_lite.core.dsnot import NO_CANDIDATES, RUNNING, SIGN_FLIP, T_REACHED, THRESHOLD, DSnoTConfig
from dsnot_lite.core.pruners import initial_score
from dsnot_lite.core.stats import ChannelStats

INF = float("inf")


@dataclass
class OracleResult:
    mask: torch.Tensor  # bool (C_out, C_in), True = pruned
    swaps: torch.Tensor  # long (C_out,)
    stop_reason: torch.Tensor  # long (C_out,), dsnot_lite.dsnot.STOP_REASONS codes
    initial_error: torch.Tensor  # float32 (C_out,)
    final_error: torch.Tensor  # float32 (C_out,)
    swap_log: list[tuple[int, int, int, int]]  # (iteration, row, grown column, pruned column) of every swap


@dataclass
class _List:
    """One row's ranked candidate list: columns, and the segment limits for strict pointers."""

    cols: list[int]
    front_limit: int  # positions < front_limit are candidates for the front pointer
    back_limit: int  # positions >= back_limit are candidates for the back pointer
    end: str  # "grow": back iff error > 0; "prune": back iff error < 0; "front"/"back": fixed


def _eq2_row(contrib_row: torch.Tensor, var_pow: torch.Tensor | None) -> list[float]:
    """Eq. 2 score of one row (contributions already zeroed outside the candidates)."""
    if var_pow is None:
        return contrib_row.tolist()
    out = []
    for c, v in zip(contrib_row.tolist(), var_pow.tolist()):
        c32, v32 = np.float32(c), np.float32(v)
        if v32 == 0:
            out.append(0.0 if c32 == 0 else (INF if c32 > 0 else -INF))
        else:
            out.append(float(c32 / v32))
    return out


def _ascending(cols: list[int], key: list[float]) -> list[int]:
    return sorted(cols, key=lambda c: key[c])  # Python's sort is stable: ties keep column order


def _partitioned(cols, key, contrib, negatives_ascending: bool) -> tuple[list[int], int, int]:
    """[negatives] + [zeros] + [positives] of ``cols`` by the sign of ``contrib``, each ranked by ``key``.

    ``negatives_ascending``: negatives by key ascending, positives descending (prune list, R3);
    otherwise negatives descending and positives ascending (grow list by Eq. 3). Zeros ascending.
    A descending order is the reverse of the stable ascending one (as a flipped sort).
    """
    order = _ascending(cols, key)
    neg = [c for c in order if contrib[c] < 0]
    zero = [c for c in order if contrib[c] == 0]
    pos = [c for c in order if contrib[c] > 0]
    if negatives_ascending:
        lst = neg + zero + pos[::-1]
    else:
        lst = neg[::-1] + zero + pos
    return lst, len(neg), len(zero)


def _sign(x: np.float32) -> int:
    return 1 if x > 0 else (-1 if x < 0 else 0)


@torch.no_grad()
def dsnot_oracle(
    weight: torch.Tensor,
    stats: ChannelStats,
    mask: torch.Tensor,
    config: DSnoTConfig,
    nm: tuple[int, int] | None = None,
    *,
    initial_method: str = "wanda",
) -> OracleResult:
    """DSnoT of ``weight`` from the start ``mask`` (True = pruned), row by row; see the module docstring.

    Same arguments as ``dsnot_lite.dsnot.dsnot``; ``initial_method`` only matters for N:M with
    ``nm_prune="initial"``. Slow on purpose: Python lists and loops, no vectorisation over rows.
    """
    cfg = config
    quirks = cfg.reference_quirks
    strict = not quirks
    rows, ncols = weight.shape
    w = weight.detach().float().cpu()
    mean = stats.expected_input(cfg.statistics).float().cpu()
    var = stats.variance(cfg.statistics).float().cpu()
    scaler = stats.scaler_row.float().cpu()
    var_pow = torch.pow(var, cfg.var_power) if cfg.var_power else None
    start = mask.detach().cpu().bool()

    contribution = w * mean.reshape(1, -1)  # W_rk E[A_k], elementwise
    wanda = w.abs() * torch.sqrt(scaler.reshape(1, -1))  # |W_rk| ||A_k||
    errors0 = contribution.masked_fill(~start, 0).sum(dim=1)  # E[Delta_r] as the reference sums it
    if nm is not None and cfg.nm_prune == "initial":
        nm_initial = initial_score(w, stats, initial_method).float().cpu()

    threshold = np.float32(cfg.eps)
    sign_check = cfg.sign_check or (nm is not None and quirks)
    T = cfg.T

    # ---- per-row set-up: lists, pointers, state -------------------------------------------
    state = []
    for r in range(rows):
        pruned0 = start[r].tolist()
        c_row = contribution[r].numpy()  # float32 values
        c_list = c_row.tolist()
        wanda_row = wanda[r].tolist()
        abs_row = w[r].abs().tolist()
        pruned_cols = [c for c in range(ncols) if pruned0[c]]
        kept_cols = [c for c in range(ncols) if not pruned0[c]]
        pruned_contrib = [c_list[c] if pruned0[c] else 0.0 for c in range(ncols)]
        kept_contrib = [0.0 if pruned0[c] else c_list[c] for c in range(ncols)]

        # Grow list (R2 / Eq. 2 by default).
        if cfg.grow == "eq2":
            score = _eq2_row(torch.tensor(pruned_contrib, dtype=torch.float32), var_pow)
            members = list(range(ncols)) if quirks else pruned_cols
            lst = _ascending(members, score)
            grow = _List(lst, len(lst), 0, "grow")
        elif cfg.grow == "eq3":
            lst, n_neg, n_zero = _partitioned(pruned_cols, wanda_row, pruned_contrib, negatives_ascending=False)
            grow = _List(lst, n_neg, n_neg + n_zero, "grow")
        else:
            key = wanda_row if cfg.grow == "wanda" else abs_row
            lst = _ascending(pruned_cols, key)
            grow = _List(lst, len(lst), 0, "back")

        # Prune list (R3 / Eq. 3 by default), or the N:M in-block keys.
        prune = None
        nm_key = None
        if nm is None:
            if cfg.prune == "eq3":
                lst, n_neg, n_zero = _partitioned(kept_cols, wanda_row, kept_contrib, negatives_ascending=True)
                if quirks and n_zero:
                    weakest = _ascending(kept_cols, wanda_row)[0]
                    lst[n_neg : n_neg + n_zero] = [weakest] * n_zero
                prune = _List(lst, n_neg, n_neg + n_zero, "prune")
            elif cfg.prune == "eq2":
                score = _eq2_row(torch.tensor(kept_contrib, dtype=torch.float32), var_pow)
                lst = _ascending(kept_cols, score)
                prune = _List(lst, len(lst), 0, "prune")
            else:
                key = wanda_row if cfg.prune == "wanda" else abs_row
                lst = _ascending(kept_cols, key)
                prune = _List(lst, len(lst), 0, "front")
        else:
            if cfg.nm_prune == "initial":
                key = nm_initial[r].tolist()
            elif cfg.nm_prune in ("eq3", "wanda"):
                key = list(wanda_row)
            elif cfg.nm_prune == "magnitude":
                key = list(abs_row)
            else:  # eq2
                key = _eq2_row(torch.tensor(kept_contrib, dtype=torch.float32), var_pow)
            nm_key = [INF if pruned0[c] else key[c] for c in range(ncols)]

        error = np.float32(errors0[r].item())
        state.append(
            dict(
                mask=list(pruned0),
                c=c_row,
                grow=grow,
                prune=prune,
                nm_key=nm_key,
                gf=0,
                gb=len(grow.cols) - 1,
                pf=0,
                pb=(len(prune.cols) - 1) if prune is not None else -1,
                error=error,
                sign0=_sign(error),
                active=True,
                swaps=0,
                stop=RUNNING,
                log=[],
            )
        )

    # ---- the iterations: all rows in lock-step, as the reference's global while loop ---------
    cycle = 0
    while cycle < T and any(s["active"] for s in state):
        cycle += 1
        for s in state:
            if strict and not s["active"]:
                continue  # strict: a stopped row neither moves its pointers nor writes
            _step(s, cfg, nm, strict, threshold, sign_check, cycle - 1)
    for s in state:
        if s["active"]:
            s["stop"] = T_REACHED

    return OracleResult(
        mask=torch.tensor([s["mask"] for s in state], dtype=torch.bool).reshape(rows, ncols).to(weight.device),
        swaps=torch.tensor([s["swaps"] for s in state], dtype=torch.long),
        stop_reason=torch.tensor([s["stop"] for s in state], dtype=torch.long),
        initial_error=errors0.clone(),
        final_error=torch.tensor(np.array([s["error"] for s in state], dtype=np.float32)),
        swap_log=sorted((t, r, g, p) for r, s in enumerate(state) for t, g, p in s["log"]),
    )


def _takes_back(lst: _List, error: np.float32) -> bool:
    if lst.end == "grow":
        return bool(error > 0)
    if lst.end == "prune":
        return bool(error < 0)
    return lst.end == "back"


def _pick(lst: _List, front: int, back: int, use_back: bool, strict: bool) -> int | None:
    """The column the pointer in use points at, or None when it has no candidate (R9)."""
    pos = back if use_back else front
    if not 0 <= pos < len(lst.cols):
        return None
    if strict:
        if use_back and back < lst.back_limit:
            return None
        if not use_back and front >= lst.front_limit:
            return None
        if front > back:
            return None
    return lst.cols[pos]


def _step(s: dict, cfg: DSnoTConfig, nm, strict: bool, threshold: np.float32, sign_check: bool, t: int) -> None:
    error = s["error"]
    c = s["c"]

    # Grow: next pruned weight from the end that lowers |error| (Eq. 2).
    g_back = _takes_back(s["grow"], error)
    g_col = _pick(s["grow"], s["gf"], s["gb"], g_back, strict)

    # Prune: next kept weight whose removal moves the error toward zero (Eq. 3), or N:M block.
    p_col = None
    if nm is None:
        p_back = _takes_back(s["prune"], error)
        p_col = _pick(s["prune"], s["pf"], s["pb"], p_back, strict)
    elif g_col is not None:
        m = nm[1]
        first = g_col - g_col % m
        keys = s["nm_key"][first : first + m]
        if cfg.nm_prune == "eq2":
            keys = [INF if abs(k) == INF else (-k if error < 0 else k) for k in keys]
        if cfg.nm_prune == "eq3" and strict:
            keys = [INF if _sign(c[first + j]) != -_sign(error) else keys[j] for j in range(m)]
        j = int(torch.topk(torch.tensor(keys, dtype=torch.float32), 1, largest=False)[1])
        if strict and keys[j] == INF:
            p_col = None
        else:
            p_col = first + j

    has_candidates = g_col is not None and p_col is not None
    update = False
    if s["active"]:
        if not abs(error) > threshold:
            s["stop"] = THRESHOLD
        elif not has_candidates:
            s["stop"] = NO_CANDIDATES
        else:
            after = error + c[p_col] - c[g_col]
            if sign_check and _sign(after) != s["sign0"]:
                s["stop"] = SIGN_FLIP
            else:
                update = True

    # Write the mask.
    if has_candidates:
        if strict:
            if update:
                s["mask"][p_col] = True
                s["mask"][g_col] = False
        else:  # the reference's two unconditional scatters, prune first, for every row
            s["mask"][p_col] = update
            s["mask"][g_col] = not update
        if nm is not None and (update if strict else True):
            s["nm_key"][p_col] = INF  # this block candidate is used up

    # Move the pointers that were used.
    if nm is None:
        if p_back:
            s["pb"] -= 1
        else:
            s["pf"] += 1
    if g_back:
        s["gb"] -= 1
    else:
        s["gf"] += 1

    if update:
        s["error"] = error + c[p_col]
        s["error"] = s["error"] - c[g_col]
        s["swaps"] += 1
        s["log"].append((t, g_col, p_col))
    s["active"] = update


def exact_oracle(weight, gram, mask, T: int, nm, tolerance: float):
    """Brute-force exact refiner, one row at a time: every allowed swap is tried by recomputing the
    row's true error ``dW G dW^T`` from scratch (float64); the best one is applied while it lowers
    the error by more than ``tolerance`` x the row's initial error (pass the refiner's own,
    ``exact.RELATIVE_TOLERANCE``, or the two stop at different swaps). Returns (mask, swaps per row)."""
    w, g, out = weight.double(), gram.double(), mask.clone()
    swaps = torch.zeros(w.shape[0], dtype=torch.long)

    def error(row, pruned):
        d = torch.where(pruned, w[row], torch.zeros((), dtype=torch.float64))
        return float(d @ g @ d)

    for r in range(w.shape[0]):
        start = current = error(r, out[r])
        for _ in range(T):
            best = None
            for grow in out[r].nonzero().flatten().tolist():
                for prune in (~out[r]).nonzero().flatten().tolist():
                    if nm is not None and grow // nm[1] != prune // nm[1]:
                        continue
                    trial = out[r].clone()
                    trial[grow], trial[prune] = False, True
                    e = error(r, trial)
                    if best is None or e < best[0]:
                        best = (e, grow, prune)
            if best is None or not best[0] - current < -tolerance * abs(start):
                break
            current, out[r, best[1]], out[r, best[2]] = best[0], False, True
            swaps[r] += 1
    return out, swaps
