"""`pyprune.prune`: trace, score, schedule, cut — one call."""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import criteria as _criteria
from .graph import ChannelGraph, GraphError, build_graph
from .schedule import uniform_keep
from .summary import Summary, compare, snapshot
from .surgery import apply_keep

__all__ = ["prune", "PruneResult", "PrunePlan"]


@dataclass
class PrunePlan:
    """What will be cut: per group the kept unit indices (into ``group.units``)."""

    graph: ChannelGraph
    keep: dict  # group id -> np.ndarray of kept positions within the group
    method: str = ""
    ratio: float = 0.0

    def keep_mask(self) -> np.ndarray:
        mask = np.ones(self.graph.n_units, bool)
        for g in self.graph.groups:
            kept = self.keep.get(g.id)
            if kept is None:
                continue
            m = np.zeros(g.size, bool)
            m[np.asarray(kept, np.int64)] = True
            mask[g.units] = m
        return mask

    def widths(self) -> dict[int, tuple[int, int]]:
        """group id -> (units before, units after)."""
        return {g.id: (g.size, len(self.keep.get(g.id, range(g.size)))) for g in self.graph.groups}


@dataclass
class PruneResult:
    model: nn.Module
    plan: PrunePlan
    summary: Summary
    seconds: dict = field(default_factory=dict)

    @property
    def graph(self) -> ChannelGraph:
        return self.plan.graph

    def __str__(self) -> str:
        return str(self.summary)


def _as_inputs(example_inputs):
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs: expected a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _ignored_units(model: nn.Module, graph: ChannelGraph, ignore) -> np.ndarray:
    frozen = np.zeros(graph.n_units, bool)
    if not ignore:
        return frozen
    items = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
    names = {m: n for n, m in model.named_modules()}
    all_names = list(names.values())
    for item in items:
        if isinstance(item, nn.Module):
            if item not in names:
                raise ValueError(f"ignore: module {type(item).__name__} is not part of the model")
            patterns = [names[item], names[item] + ".*"] if names[item] else ["*"]
        elif isinstance(item, str):
            matched = [n for n in all_names if fnmatch.fnmatchcase(n, item) or n == item]
            if not matched:
                raise ValueError(f"ignore: {item!r} matches no module of the model (module names look like {all_names[1:4]})")
            patterns = [item, item + ".*"]
        else:
            raise TypeError(f"ignore: expected module names, patterns or modules, got {type(item).__name__}")
        for m in graph.members:
            if m.role in ("out", "bias") and any(fnmatch.fnmatchcase(m.module, p) for p in patterns):
                frozen[m.units] = True
    return frozen


def prune(
    model: nn.Module,
    example_inputs,
    *,
    method: str = "kmeans",
    ratio: float = 0.5,
    round_to: int | None = None,
    ignore=(),
    inplace: bool = False,
    seed: int = 0,
    threads: int | None = None,
    strict: bool = True,
    example_kwargs: dict | None = None,
) -> PruneResult:
    """Prune `ratio` of the channels of `model` and return the smaller model.

    model: any ``nn.Module``; it is run once on ``example_inputs`` (a tensor or a tuple of
        tensors, plus ``example_kwargs``) to find coupled channels.
    method: a registered criterion (``pyprune.available_criteria()``): ``kmeans``, ``l1``,
        ``l2``, ``fpgm``, ``bn_scale``, ``random``, or your own.
    ratio: fraction of each group's channels removed, in [0, 1).
    round_to: keep channel counts at multiples of this (8 suits most CPU kernels).
    ignore: module names, glob patterns or modules whose output channels stay.
    inplace: ``False`` (default) returns a pruned copy and leaves `model` untouched;
        ``True`` prunes `model` itself.
    strict: an op the tracer does not understand raises :class:`GraphError` naming the
        module and op (the model is untouched); ``strict=False`` keeps those channels instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio: the fraction of channels removed must be in [0, 1), got {ratio!r}")
    criterion = _criteria.get_criterion(method)
    inputs = _as_inputs(example_inputs)
    t0 = time.perf_counter()
    graph = build_graph(model, inputs, example_kwargs)
    t1 = time.perf_counter()
    if graph.unsupported and strict:
        ops = "; ".join(f"{op} in {where}" for where, op in graph.unsupported[:10])
        raise GraphError(
            f"pyprune cannot follow channels through: {ops}. The model was not changed. "
            "Pass strict=False to keep the channels these ops touch, ignore= the modules "
            "around them, or register a handler."
        )
    extra = _ignored_units(model, graph, ignore)
    if extra.any():
        graph.unit_frozen |= extra
        for g in graph.groups:
            g.frozen = graph.unit_frozen[g.units]
    groups = [g for g in graph.groups if g.prunable > 0]
    n_keep = uniform_keep(groups, float(ratio), round_to)
    ctx = _criteria.Context(model, graph, n_keep=n_keep, seed=seed, threads=threads)
    scores = criterion(groups, ctx)
    keep = {}
    for g, s in zip(groups, scores):
        s = np.asarray(s, np.float64).copy()
        s[g.frozen] = np.inf
        k = n_keep[g.id]
        order = np.argsort(-s, kind="stable")[:k]
        keep[g.id] = np.sort(order)
    t2 = time.perf_counter()
    plan = PrunePlan(graph, keep, method, float(ratio))
    before = snapshot(model, graph.layers)
    pruned = apply_keep(model, graph, plan.keep_mask(), inplace=inplace, threads=threads)
    t3 = time.perf_counter()
    summary = compare(before, snapshot(pruned, graph.layers))
    return PruneResult(pruned, plan, summary, {"trace": t1 - t0, "criterion": t2 - t1, "surgery": t3 - t2})
