"""How many units each group keeps."""
from __future__ import annotations

import math

from .graph import Group

__all__ = ["uniform_keep", "round_keep"]


def round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    """Round a keep count to a multiple of `round_to` (nearest, ties up so that more is
    kept; at least one multiple), never above the group size; groups no larger than
    `round_to` are left as they are."""
    if not round_to or round_to <= 1 or size <= round_to:
        return int(min(max(n_keep, 1), size))
    r = int(math.floor(n_keep / round_to + 0.5)) * round_to
    r = max(round_to, r)
    return int(min(r, size))


def uniform_keep(groups: list[Group], ratio: float, round_to: int | None = None) -> dict[int, int]:
    """Every group loses the same fraction `ratio` of its units (at least one kept,
    frozen units always kept)."""
    out = {}
    for g in groups:
        keep = g.size - int(round(ratio * g.size))
        keep = round_keep(keep, g.size, round_to)
        keep = max(keep, g.size - g.prunable, 1)
        out[g.id] = keep
    return out
