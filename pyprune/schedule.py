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
"""
from __future__ import annotations

import fnmatch
import math

import numpy as np

from .graph import Group

__all__ = ["round_keep", "uniform_keep", "taper_ratios", "global_keep", "keep_counts", "SCHEDULES"]

SCHEDULES = ("uniform", "global", "taper")
MAX_RATIO = 0.95


def round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    """Round a keep count to a multiple of `round_to` (nearest, ties up so that more is
    kept; at least one multiple), never above the group size; groups no larger than
    `round_to` are left as they are."""
    if not round_to or round_to <= 1 or size <= round_to:
        return int(min(max(n_keep, 1), size))
    r = int(math.floor(n_keep / round_to + 0.5)) * round_to
    r = max(round_to, r)
    return int(min(r, size))


def _keep_for_ratio(g: Group, ratio: float, round_to: int | None) -> int:
    keep = g.size - int(math.floor(ratio * g.size + 0.5))
    keep = round_keep(keep, g.size, round_to)
    return max(keep, g.size - g.prunable, 1)


def uniform_keep(groups: list[Group], ratio: float, round_to: int | None = None) -> dict[int, int]:
    """Every group loses the same fraction `ratio` of its units (at least one kept,
    frozen units always kept)."""
    return {g.id: _keep_for_ratio(g, ratio, round_to) for g in groups}


def taper_ratios(groups: list[Group], ratio: float, taper: float) -> dict[int, float]:
    """Per-group ratios growing linearly with depth, overall (unit-weighted) equal to `ratio`."""
    if not groups:
        return {}
    order = sorted(groups, key=lambda g: g.depth)
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
            names = {m.module for m in g.producers()}
            if any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names):
                out[g.id] = float(r)
                hit = True
        if not hit:
            raise ValueError(f"layer_ratios: {pattern!r} matches no prunable layer")
    return out


def keep_counts(groups: list[Group], ratio: float, schedule: str, *, round_to=None, taper: float = 1.0,
                layer_ratios: dict | None = None, scores: list | None = None, min_keep: float = 0.1) -> dict[int, int]:
    """Keep count per group for a schedule (``scores`` are needed by ``global`` only)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
    fixed = match_layer_ratios(groups, layer_ratios) if layer_ratios else {}
    rest = [g for g in groups if g.id not in fixed]
    if schedule == "uniform":
        out = uniform_keep(rest, ratio, round_to)
    elif schedule == "taper":
        rs = taper_ratios(rest, ratio, taper)
        out = {g.id: _keep_for_ratio(g, rs[g.id], round_to) for g in rest}
    else:
        if scores is None:
            raise ValueError("the global schedule needs scores")
        sc = {g.id: s for g, s in zip(groups, scores)}
        out = global_keep(rest, [sc[g.id] for g in rest], ratio, min_keep, round_to)
    for g in groups:
        if g.id in fixed:
            out[g.id] = _keep_for_ratio(g, fixed[g.id], round_to)
    return out
