"""The criterion registry: one spec per criterion, the single source of truth for what a
method needs and returns.

A criterion is called with the groups to decide on and a :class:`Context`. Per group it
returns either *scores* (one float per unit, higher = keep) or a :class:`Selection` (the
kept units themselves, e.g. one representative per cluster). Everything the pruner must
know about a method — does it need calibration data, does it select, can it choose its
own keep counts (``ratio="auto"``), does it merge dropped channels into kept ones, which
extra options it accepts — is read from its :class:`CriterionSpec`, never from its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import engine
from ..graph import ChannelGraph, Group, place_rows

__all__ = ["Context", "Selection", "CriterionSpec", "block_jobs", "register_criterion", "get_criterion", "criterion_spec",
           "available_criteria", "CRITERIA"]


@dataclass
class Selection:
    """A selecting criterion's decision for one group.

    keep: positions (into ``group.units``) of the kept units.
    labels / representatives: the clustering behind the choice (cluster of every unit, and
        per cluster the unit kept for it), used to merge dropped units into kept ones.
    norms / rep_cosines / rep_residuals: per unit, its filter's norm, the cosine of its
        filter to its representative's and the relative residual of its least-squares
        multiple of it, which merging needs (computed from the weights when not given).
    n_iter: the iterations the clustering took.
    """

    keep: np.ndarray
    labels: np.ndarray | None = None
    representatives: np.ndarray | None = None
    norms: np.ndarray | None = None
    rep_cosines: np.ndarray | None = None
    rep_residuals: np.ndarray | None = None
    n_iter: int = 0


@dataclass
class Context:
    """What a criterion may look at: the model, its graph, the units to keep per group."""

    model: nn.Module
    graph: ChannelGraph
    n_keep: dict = field(default_factory=dict)  # group id -> units to keep
    seed: int = 0
    threads: int | None = None
    calibration: object = None
    calibration_batches: int | None = None
    options: dict = field(default_factory=dict)  # the criterion's own options (CriterionSpec.options)
    _modules: dict | None = None

    def tensor(self, module: str, param: str) -> torch.Tensor:
        if self._modules is None:
            self._modules = dict(self.model.named_modules())
        return getattr(self._modules[module], param).detach()

    def rows(self, m) -> torch.Tensor:
        """Member `m`'s tensor with its units along dim 0 (a transposed conv's filters are
        dim 1 of its weight)."""
        t = self.tensor(m.module, m.param)
        return t if m.dim == 0 else t.movedim(m.dim, 0).contiguous()

    def filters(self, group: Group, columns: bool = False) -> torch.Tensor | engine.Columns:
        """The group's filters as a (units, features) float32 matrix: for every unit the
        weights of each producer (conv/Linear output rows) that writes it, concatenated.
        A group with one producer that covers it in order is returned without a copy. With
        ``columns=True``, a group whose producers all cover it in order (a residual stream)
        comes back as an :class:`engine.Columns` of their rows, which the core reads in place,
        instead of their concatenation."""
        prods = group.producers()
        where = [group.positions(m.units) for m in prods]
        ws = [self.rows(m) for m in prods]
        if ws and all(np.array_equal(pos, np.arange(group.size)) for pos in where):
            # every producer writes every unit in order: its own rows (no copy), or one
            # concatenation of a residual stream's producers
            rows = [w.reshape(w.shape[0], -1).float() for w in ws]
            if len(rows) == 1:
                return rows[0]
            return engine.Columns(*rows) if columns else torch.cat(rows, dim=1)
        # each producer's rows by unit, a unit it writes twice in two column blocks
        # (graph.place_rows); a group no producer writes keeps one zero column
        blocks = [place_rows(pos, w.float(), group.size) for pos, w in zip(where, ws)]
        return torch.cat(blocks, dim=1) if blocks else torch.zeros(group.size, 1)


@dataclass(frozen=True)
class CriterionSpec:
    """A registered criterion and what the pruner must know about it."""

    name: str
    fn: Callable
    batched: bool = False  # fn(groups, ctx) -> list, instead of fn(group, ctx) -> one result
    needs_data: bool = False  # scores come from calibration batches
    needs_labels: bool = False  # ... which must be (inputs, labels) pairs
    selects: bool = False  # may return a Selection instead of scores
    merges: bool = False  # dropped units are folded into kept ones by default (merge=None)
    auto_keep: Callable | None = None  # (groups, ctx) -> {group id: keep}: ratio="auto"
    rank_with: str = "l2"  # a selecting criterion's scores for the global schedule
    options: tuple = ()  # extra keyword options the criterion reads from ctx.options
    doc: str = ""
    reads_weights: bool = True  # scores from the weights' values (False: from shapes alone, as random)

    @property
    def supports_auto(self) -> bool:
        return self.auto_keep is not None

    def __call__(self, groups: list[Group], ctx: Context) -> list:
        """Scores (np.float64 arrays) or Selections, one per group, checked."""
        out = self.fn(groups, ctx) if self.batched else [self.fn(g, ctx) for g in groups]
        if len(out) != len(groups):
            raise ValueError(f"criterion {self.name!r} returned {len(out)} results for {len(groups)} groups")
        checked = []
        for g, r in zip(groups, out):
            if isinstance(r, Selection):
                if not self.selects:
                    raise ValueError(f"criterion {self.name!r} returned a Selection but was registered without "
                                     "selects=True")
                checked.append(r)
                continue
            s = np.asarray(r.detach().cpu().double() if isinstance(r, torch.Tensor) else r, dtype=np.float64)
            if s.shape != (g.size,):
                raise ValueError(f"criterion {self.name!r} returned shape {s.shape} for group {g.id} "
                                 f"({g.name}) with {g.size} units")
            bad = np.flatnonzero(~np.isfinite(s))
            if len(bad):  # NaN sorts anywhere: the channels kept would be arbitrary
                raise ValueError(f"criterion {self.name!r} gave group {g.id} ({g.name}) {len(bad)} score(s) that are "
                                 f"not finite (channel {bad[0]}: {s[bad[0]]}); scores must be finite numbers")
            checked.append(s)
        return checked


def block_jobs(group: Group, n_keep: int) -> list[tuple[np.ndarray, int]]:
    """(positions, units to keep there) per decision a criterion makes for a group: the whole
    group, or for a group with channel blocks each block and the units in no block."""
    if group.blocks is None:
        return [(np.arange(group.size), int(n_keep))]
    counts, rest = group.block_counts(int(n_keep))
    labels = np.unique(group.blocks[group.blocks >= 0])
    jobs = [(np.flatnonzero(group.blocks == b), int(k)) for b, k in zip(labels, counts)]
    free = np.flatnonzero(group.blocks < 0)
    if len(free):
        jobs.append((free, int(rest)))
    return jobs


CRITERIA: dict[str, CriterionSpec] = {}


def register_criterion(name: str, fn: Callable | None = None, *, batched: bool = False, needs_data: bool = False,
                       needs_labels: bool = False, selects: bool = False, merges: bool = False,
                       auto_keep: Callable | None = None, rank_with: str = "l2", options=(),
                       reads_weights: bool = True):
    """Register `fn` under `name` (usable as ``prune(method=name)``).

    A plain criterion is ``fn(group, ctx) -> scores`` (one float per unit of the group,
    higher = keep); ``batched=True`` means ``fn(groups, ctx) -> [result per group]``. With
    ``selects=True`` a result may be a :class:`Selection` (the kept positions, exactly
    ``ctx.n_keep[group.id]`` of them, or for a group with channel blocks what
    :func:`block_jobs` gives each block) instead of scores. ``needs_data``: the criterion reads
    ``ctx.calibration`` (prune refuses to run without it). ``merges``: merge dropped units
    into kept ones by default (needs Selections with clusters). ``auto_keep``: a function
    ``(groups, ctx) -> {group id: keep count}`` that makes ``ratio="auto"`` valid (pyprune rounds
    the counts to ``round_to`` itself).
    ``options``: names of extra keyword options the criterion reads from ``ctx.options``.
    ``reads_weights=False``: the scores need no weight values (a model on the ``meta``
    device can be planned with it; any other criterion refuses one).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"criterion name must be a non-empty string, got {name!r}")

    def deco(f):
        if not callable(f):
            raise TypeError(f"criterion {name!r}: expected a callable, got {type(f).__name__}")
        CRITERIA[name] = CriterionSpec(name, f, batched=batched, needs_data=needs_data or needs_labels,
                                       needs_labels=needs_labels, selects=selects, merges=merges,
                                       auto_keep=auto_keep, rank_with=rank_with, options=tuple(options),
                                       doc=(f.__doc__ or "").strip().split("\n")[0],
                                       reads_weights=bool(reads_weights))
        return f

    return deco(fn) if fn is not None else deco


def available_criteria() -> list[str]:
    return sorted(CRITERIA)


def criterion_spec(name: str) -> CriterionSpec:
    """The spec of a registered criterion; an unknown name lists the known ones."""
    if not isinstance(name, str) or name not in CRITERIA:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_criteria())}")
    return CRITERIA[name]


def get_criterion(name: str) -> CriterionSpec:
    """The callable spec of a registered criterion: ``spec(groups, ctx) -> [result]``."""
    return criterion_spec(name)
