"""How many units each group keeps.

Schedules turn a target (a ratio, or a MACs/params budget) into a keep count per group:

- ``uniform``: every group loses the same fraction.
- ``global``: all channels of all groups are ranked together on scores normalised per group
  (each group's scores divided by their mean), with a floor so no group falls below
  ``min_keep`` of its channels: where a model is redundant it loses more.
- ``taper``: the ratio grows with depth ("tapering network": shallow layers keep more,
  deep layers lose more). Group i of n (in forward order) gets
  ``ratio_i = base * (1 + taper * (t_i - 1/2))`` with ``t_i = i / (n - 1)``, and ``base`` is
  solved so the overall fraction of removed channels matches ``ratio``. ``taper=0`` is the
  uniform schedule.
- ``layer_ratios``: explicit ratios for groups whose producing layers match a name/pattern.

Schedules are registered by name (:func:`register_schedule`). :func:`solve_for_budget`
turns a budget (params, MACs) into a ratio; :func:`iterative_targets` and
:func:`iterative_keep` split a target over several rounds.
"""
from __future__ import annotations

import fnmatch
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .graph import Group

__all__ = ["round_keep", "keep_for_ratio", "match_layer_ratios", "uniform_keep", "taper_ratios", "global_keep",
           "keep_counts", "fit_blocks", "solve_for_budget", "iterative_targets", "iterative_keep", "register_schedule",
           "available_schedules", "SCHEDULES", "MAX_RATIO"]

MAX_RATIO = 0.95  # the largest share of a group any schedule or budget removes


def round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    """Round a keep count to a multiple of `round_to` (nearest, ties up so that more is
    kept; at least one multiple), never above the group size; groups no larger than
    `round_to` are left as they are."""
    if not round_to or round_to <= 1 or size <= round_to:
        return int(min(max(n_keep, 1), size))
    r = int(math.floor(n_keep / round_to + 0.5)) * round_to
    r = max(round_to, r)
    return int(min(r, size))


def keep_for_ratio(g: Group, ratio: float, round_to: int | None) -> int:
    """Channels group `g` keeps when `ratio` of them go (rounded, frozen ones kept, one at least)."""
    keep = g.size - int(math.floor(ratio * g.size + 0.5))
    keep = round_keep(keep, g.size, round_to)
    return max(keep, g.size - g.prunable, 1)


def uniform_keep(groups: list[Group], ratio: float, round_to: int | None = None) -> dict[int, int]:
    """Every group loses the same fraction `ratio` of its units (at least one kept,
    frozen units always kept)."""
    return {g.id: keep_for_ratio(g, ratio, round_to) for g in groups}


def taper_ratios(groups: list[Group], ratio: float, taper: float) -> dict[int, float]:
    """Per-group ratios growing linearly with depth, overall (unit-weighted) equal to `ratio`."""
    if not groups:
        return {}
    order = sorted(groups, key=lambda g: g.id)  # ids follow the forward order
    n = len(order)
    t = {g.id: (i / (n - 1) if n > 1 else 0.5) for i, g in enumerate(order)}
    sizes = {g.id: g.size for g in groups}
    total = sum(sizes.values())

    def ratios(base):
        return {gid: min(MAX_RATIO, max(0.0, base * (1 + taper * (ti - 0.5)))) for gid, ti in t.items()}

    lo, hi = 0.0, 4.0
    for _ in range(60):
        mid = (lo + hi) / 2
        r = ratios(mid)
        got = sum(r[g] * sizes[g] for g in r) / total
        if got < ratio:
            lo = mid
        else:
            hi = mid
    return ratios((lo + hi) / 2)


def global_keep(groups: list[Group], scores: list[np.ndarray], ratio: float, min_keep: float = 0.1,
                round_to: int | None = None) -> dict[int, int]:
    """Rank all prunable units together on per-group normalised scores; remove the lowest
    `ratio` of all units, never leaving a group below `min_keep` of its size (nor 1)."""
    total = sum(g.size for g in groups)
    n_remove = int(math.floor(ratio * total + 0.5))
    cand_scores, cand_group = [], []
    cap = {}
    for g, s in zip(groups, scores):
        s = np.asarray(s, np.float64)
        finite = s[np.isfinite(s)]
        mean = float(np.mean(np.abs(finite))) if len(finite) else 1.0
        norm = s / (mean if mean > 0 else 1.0)
        free = np.sort(norm[~g.frozen])
        floor = max(1, int(math.ceil(min_keep * g.size)), g.size - g.prunable)
        cap[g.id] = max(0, g.size - floor)
        cand_scores.append(free[: cap[g.id]])
        cand_group.append(np.full(cap[g.id], g.id))
    if not cand_scores:
        return {}
    allsc = np.concatenate(cand_scores)
    allg = np.concatenate(cand_group)
    order = np.argsort(allsc, kind="stable")[:n_remove]
    removed = {g.id: 0 for g in groups}
    for gid in allg[order]:
        removed[int(gid)] += 1
    out = {}
    for g in groups:
        keep = g.size - removed[g.id]
        out[g.id] = max(round_keep(keep, g.size, round_to), g.size - g.prunable, 1)
    return out


def match_layer_ratios(groups: list[Group], layer_ratios: dict) -> dict[int, float]:
    """Group id -> ratio for groups whose producing layers match a key of `layer_ratios`."""
    out = {}
    for pattern, r in layer_ratios.items():
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0.0 <= r < 1.0:
            raise ValueError(f"layer_ratios[{pattern!r}]: ratio must be in [0, 1), got {r!r}")
        hit = False
        for g in groups:
            names = {m.module for m in g.producers()} | {m.key for m in g.producers()}
            if any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names):
                out[g.id] = float(r)
                hit = True
        if not hit:
            raise ValueError(f"layer_ratios: {pattern!r} matches no prunable layer (a layer that writes no channels, "
                             "or one whose channels are kept whole, by ignore= or for a reason PruneResult.frozen() "
                             "names, takes no ratio)")
    return out


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    fn: Callable  # (groups, ratio, *, round_to, taper, scores, min_keep) -> {group id: keep}
    needs_scores: bool = False  # ranks units across groups on the criterion's scores
    needs_sensitivity: bool = False  # reads per-group accuracy curves (sensitivity=)


SCHEDULES: dict[str, ScheduleSpec] = {}


def register_schedule(name: str, *, needs_scores: bool = False, needs_sensitivity: bool = False):
    """Decorator: a schedule ``fn(groups, ratio, *, round_to, taper, scores, min_keep) ->
    {group id: keep count}`` usable as ``prune(schedule=name)``; with ``needs_sensitivity``
    it also gets ``sensitivity=`` (the prune's :class:`pyprune.Sensitivity`)."""
    def deco(fn):
        SCHEDULES[name] = ScheduleSpec(name, fn, needs_scores, needs_sensitivity)
        return fn

    return deco


def available_schedules() -> list[str]:
    return list(SCHEDULES)


def schedule_spec(name: str) -> ScheduleSpec:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


@register_schedule("uniform")
def _uniform(groups, ratio, *, round_to=None, **_):
    return uniform_keep(groups, ratio, round_to)


@register_schedule("global", needs_scores=True)
def _global(groups, ratio, *, round_to=None, scores=None, min_keep=0.1, **_):
    return global_keep(groups, scores, ratio, min_keep, round_to)


@register_schedule("taper")
def _taper(groups, ratio, *, round_to=None, taper=1.0, **_):
    rs = taper_ratios(groups, ratio, taper)
    return {g.id: keep_for_ratio(g, rs[g.id], round_to) for g in groups}


def keep_counts(groups: list[Group], ratio: float, schedule: str, *, round_to=None, taper: float = 1.0,
                layer_ratios: dict | None = None, scores: list | None = None, min_keep: float = 0.1,
                sensitivity=None, fit: bool = True) -> dict[int, int]:
    """Keep count per group for a schedule (``scores`` are needed by ``global`` only,
    ``sensitivity`` (:func:`pyprune.sensitivity`) by schedules registered with
    ``needs_sensitivity``). A count the schedule gives outside 1..size of its group (or none)
    is refused naming both. ``fit=False``: the counts as the schedule asked them, before the
    groups with channel blocks round them (:func:`fit_blocks`)."""
    spec = schedule_spec(schedule)
    extra = {}
    if spec.needs_sensitivity:
        if sensitivity is None:
            raise ValueError(f"schedule {schedule!r} needs sensitivity=pyprune.sensitivity(model, x, val_set)")
        extra["sensitivity"] = sensitivity
    fixed = match_layer_ratios(groups, layer_ratios) if layer_ratios else {}
    rest = [g for g in groups if g.id not in fixed]
    if spec.needs_scores:
        if scores is None:
            raise ValueError(f"the {schedule} schedule needs scores")
        sc = {g.id: s for g, s in zip(groups, scores)}
        scores = [sc[g.id] for g in rest]
    out = dict(spec.fn(rest, ratio, round_to=round_to, taper=taper, scores=scores, min_keep=min_keep, **extra))
    for g in rest:
        k = out.get(g.id)
        if k is None:
            raise ValueError(f"schedule {schedule!r} gave no keep count for group {g.id} ({g.name}); it must return "
                             "{group id: channels to keep} for every group it is given")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= g.size:
            raise ValueError(f"schedule {schedule!r} gave group {g.id} ({g.name}, {g.size} channels) the keep count "
                             f"{k!r}: expected an int in 1..{g.size}")
        out[g.id] = int(k)
    for g in groups:
        if g.id in fixed:
            out[g.id] = keep_for_ratio(g, fixed[g.id], round_to)
    return fit_blocks(groups, out) if fit else out


def fit_blocks(groups: list[Group], n_keep: dict) -> dict[int, int]:
    """Keep counts that groups with channel blocks (grouped convs, chunks, heads) can keep:
    the count each block keeps (see :meth:`pyprune.graph.Group.block_counts`), summed.
    Linked groups (``Group.step``) keep one share m / step, the largest any of them asks
    (all of it where one of them is not cut). The counts returned fit to themselves."""
    out = dict(n_keep)
    by_id = {g.id: g for g in groups}
    for link, step in dict.fromkeys((g.linked, g.step) for g in groups if g.step):
        # linked groups (Group.step): one share m / step for all of them
        members = [by_id.get(i) for i in link]
        if any(m is None or m.id not in out for m in members):
            m_steps = step  # a linked group that is not cut keeps the others whole
        else:  # the largest share asked of any of them (an explicit keep_by_layer, a layer ratio)
            share = max(int(out[m.id]) / m.size for m in members)
            m_steps = max(int(math.floor(share * step + 0.5)), max(m.step_floor() for m in members))
        for m in members:
            if m is not None and m.id in out:
                out[m.id] = m.size // step * min(m_steps, step)
    for g in groups:
        if g.blocks is not None and g.id in out and not g.step:
            counts, rest = g.block_counts(int(out[g.id]))
            out[g.id] = int(counts.sum()) + rest
    return out


def solve_for_budget(counts_at: Callable[[float], dict], cost: Callable[[dict], float], goal: float,
                     base: float, what: str) -> tuple[dict, float]:
    """Keep counts whose cost comes closest to `goal` without exceeding it (a budget is a
    ceiling): bisection over the schedule's ratio.

    counts_at(ratio) gives the keep counts of the schedule at that ratio, cost(counts) their
    cost (params, MACs, ...; non-increasing in the ratio), `base` the unpruned cost. Returns
    (keep counts, ratio). A goal that pruning ``MAX_RATIO`` of every group cannot reach
    raises ``ValueError`` naming `what`.
    """
    if goal >= base:
        return counts_at(0.0), 0.0
    lo, hi = 0.0, MAX_RATIO
    n_hi = counts_at(hi)
    v_hi = cost(n_hi)
    if v_hi > goal:
        raise ValueError(f"{what}: unreachable, pruning {MAX_RATIO:.0%} of every group still leaves "
                         f"{v_hi:.4g} of {base:.4g}")
    best = (n_hi, hi, goal - v_hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        n = counts_at(mid)
        v = cost(n)
        if v <= goal and goal - v < best[2]:
            best = (n, mid, goal - v)
        if v > goal:
            lo = mid
        else:
            hi = mid
    return best[0], best[1]


def iterative_targets(steps: int, base: float, goal: float) -> list[float]:
    """The budget after each of `steps` rounds going from `base` to `goal`: the same
    fraction removed in every round (geometric), the last one exactly `goal`."""
    return [base * (goal / base) ** (s / steps) for s in range(1, steps + 1)]


def iterative_keep(final: dict, step: int, steps: int) -> dict:
    """Keep counts after round `step` of `steps`, each round removing an equal share of
    what the one-shot counts remove. final: name -> (size, keep after the last round)."""
    return {n: size - int(math.floor((size - k) * step / steps + 0.5)) for n, (size, k) in final.items()}
