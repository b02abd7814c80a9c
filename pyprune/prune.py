"""`pyprune.prune` and `pyprune.Pruner`: trace, score, schedule, cut."""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import criteria as _criteria
from . import engine
from .graph import ChannelGraph, GraphError, build_graph
from .merge import MergeReport, merge_overrides
from .schedule import SCHEDULES, keep_counts, round_keep
from .summary import Summary, compare, snapshot
from .surgery import apply_keep

__all__ = ["prune", "Pruner", "PruneResult", "PrunePlan", "DATA_METHODS"]

DATA_METHODS = {"activation", "apoz", "hrank", "taylor"}


@dataclass
class PrunePlan:
    """What will be cut: per group the kept unit indices (into ``group.units``). Edit
    ``keep`` before :meth:`Pruner.apply` to change the plan."""

    graph: ChannelGraph
    keep: dict  # group id -> np.ndarray of kept positions within the group
    method: str = ""
    ratio: float = 0.0
    clusters: dict = field(default_factory=dict)  # group id -> (labels, representatives), kmeans
    filters: dict = field(default_factory=dict)  # group id -> filter matrix used for clustering

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

    def layer_widths(self) -> dict[str, tuple[int, int]]:
        """Producing layer -> (output channels before, after), in forward order."""
        mask = self.keep_mask()
        return {m.module: (len(m.units), int(mask[m.units].sum())) for g in self.graph.groups for m in g.producers()}


@dataclass
class PruneResult:
    model: nn.Module
    plan: PrunePlan
    summary: Summary
    seconds: dict = field(default_factory=dict)
    merge: MergeReport | None = None
    steps: list = field(default_factory=list)  # per iterative step: summaries

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


def _check_ratio(ratio, allow_auto: bool) -> None:
    if allow_auto and ratio == "auto":
        return
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        extra = " or 'auto' (kmeans)" if allow_auto else ""
        raise ValueError(f"ratio: the fraction of channels removed must be in [0, 1){extra}, got {ratio!r}")


def _ignored_units(model: nn.Module, graph: ChannelGraph, ignore) -> np.ndarray:
    frozen = np.zeros(graph.n_units, bool)
    if ignore is None or (isinstance(ignore, (tuple, list)) and not ignore):
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


class _Estimator:
    """Params and MACs of the pruned model for given keep counts, without cutting."""

    def __init__(self, model: nn.Module, graph: ChannelGraph):
        self.graph = graph
        comp = {}
        for m in graph.members:
            gids, counts = np.unique(graph.unit_group[m.units], return_counts=True)
            comp[(m.module, m.param, m.dim)] = (gids, counts / len(m.units))
        self.comp = comp
        self.sizes = np.array([g.size for g in graph.groups], np.float64)
        params = {}
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                params[(mname, pname)] = (p.numel(), [d for (a, b, d) in comp if a == mname and b == pname])
        self.params = params
        mods = dict(model.named_modules())
        from .summary import layer_macs

        self.layers = []
        seen = set()
        for rec in graph.layers:
            if rec.module in seen or rec.module not in mods:
                continue
            seen.add(rec.module)
            macs = layer_macs(mods[rec.module], rec.out_shape)
            if macs:
                dims = [d for (a, b, d) in comp if a == rec.module and b == "weight"]
                self.layers.append((rec.module, macs, dims))

    def _frac(self, key, keep_frac) -> float:
        gids, share = self.comp[key]
        return float((share * keep_frac[gids]).sum())

    def __call__(self, n_keep: dict) -> tuple[float, float]:
        keep_frac = np.ones(len(self.graph.groups))
        for gid, k in n_keep.items():
            keep_frac[gid] = k / self.sizes[gid]
        params = 0.0
        for (mname, pname), (numel, dims) in self.params.items():
            f = 1.0
            for d in dims:
                f *= self._frac((mname, pname, d), keep_frac)
            params += numel * f
        macs = 0.0
        for mname, base, dims in self.layers:
            f = 1.0
            for d in dims:
                f *= self._frac((mname, "weight", d), keep_frac)
            macs += base * f
        return params, macs


class Pruner:
    """Structured pruner for iterative and inspectable use.

        pruner = pyprune.Pruner(model, x, method="l1", schedule="taper")
        plan = pruner.plan(ratio=0.5)      # inspect plan.widths(), edit plan.keep ...
        result = pruner.apply(plan)        # the pruned model + summary

        result = pruner.run(ratio=0.6, iterative_steps=3, finetune=lambda m, step: train(m))

    Arguments are those of :func:`prune` (see there).
    """

    def __init__(self, model: nn.Module, example_inputs, *, method: str = "kmeans", schedule: str = "uniform",
                 taper: float = 1.0, round_to: int | None = None, ignore=(), layer_ratios: dict | None = None,
                 calibration=None, merge: bool | None = None, seed: int = 0, threads: int | None = None,
                 strict: bool = True, example_kwargs: dict | None = None, min_keep: float = 0.1,
                 calibration_batches: int | None = None, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.criterion = _criteria.get_criterion(method)  # unknown method: ValueError listing them
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
        if method in DATA_METHODS and calibration is None:
            raise ValueError(f"method {method!r} scores channels from data: pass calibration=<DataLoader or list of "
                             "(inputs, labels) batches>")
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"round_to must be a positive int or None, got {round_to!r}")
        if not isinstance(taper, (int, float)) or taper < 0:
            raise ValueError(f"taper must be >= 0 (0 = uniform), got {taper!r}")
        if layer_ratios is not None and not isinstance(layer_ratios, dict):
            raise TypeError("layer_ratios: expected a dict {layer name or pattern: ratio}")
        self.model = model
        self.inputs = _as_inputs(example_inputs)
        self.example_kwargs = example_kwargs
        self.method = method
        self.schedule = schedule
        self.taper = float(taper)
        self.round_to = round_to
        self.ignore = ignore
        self.layer_ratios = layer_ratios
        self.calibration = calibration
        self.merge = (method == "kmeans") if merge is None else bool(merge)
        self.seed = seed
        self.threads = threads
        self.strict = strict
        self.min_keep = min_keep
        self.options = dict(options)
        if calibration_batches is not None:
            self.options["calibration_batches"] = calibration_batches
        # trace now: bad ignore= names and unsupported ops fail at construction; the graph
        # is reused by the first plan() on this same model
        self._cached = (self.model, self._graph())

    # -- planning -------------------------------------------------------------------------
    def _graph(self) -> ChannelGraph:
        cached = getattr(self, "_cached", None)
        if cached is not None:
            self._cached = None
            if cached[0] is self.model:
                return cached[1]
        graph = build_graph(self.model, self.inputs, self.example_kwargs)
        if graph.unsupported and self.strict:
            ops = "; ".join(f"{op} in {where}" for where, op in graph.unsupported[:10])
            raise GraphError(
                f"pyprune cannot follow channels through: {ops}. The model was not changed. "
                "Pass strict=False to keep the channels these ops touch, ignore= the modules "
                "around them, or register a handler."
            )
        extra = _ignored_units(self.model, graph, self.ignore)
        if extra.any():
            graph.unit_frozen |= extra
            for g in graph.groups:
                g.frozen = graph.unit_frozen[g.units]
        return graph

    def _context(self, graph, n_keep=None) -> _criteria.Context:
        return _criteria.Context(self.model, graph, n_keep=dict(n_keep or {}), seed=self.seed, threads=self.threads,
                                 calibration=self.calibration, options=dict(self.options))

    def _counts(self, groups, ratio, scores):
        return keep_counts(groups, ratio, self.schedule, round_to=self.round_to, taper=self.taper,
                           layer_ratios=self.layer_ratios, scores=scores, min_keep=self.min_keep)

    def plan(self, ratio: float | str = 0.5, *, target_macs: float | None = None,
             target_params: float | None = None, keep_by_layer: dict | None = None) -> PrunePlan:
        """Decide what to cut. ``ratio`` is the fraction of channels removed (``"auto"``
        with kmeans: each group keeps the cluster count of the elbow rule);
        ``target_macs`` / ``target_params`` (a fraction <= 1 of the current model, or an
        absolute count) replace ``ratio``: the schedule's ratio is found by bisection.
        ``keep_by_layer`` ({producing layer: channels to keep}) overrides the schedule for
        those layers' groups."""
        _check_ratio(ratio, allow_auto=self.method == "kmeans")
        graph = self._graph()
        groups, ctx, n_keep, ratio, base_scores = self._decide(graph, ratio, target_macs, target_params)
        if keep_by_layer:
            for g in groups:
                names = [m.module for m in g.producers()]
                if names and names[0] in keep_by_layer:
                    n_keep[g.id] = int(min(g.size, max(1, g.size - g.prunable, keep_by_layer[names[0]])))
        if self.method == "kmeans" or base_scores is None:
            ctx.n_keep = n_keep
            scores = self.criterion(groups, ctx)
        else:
            scores = base_scores
        keep = {}
        for g, s in zip(groups, scores):
            s = np.asarray(s, np.float64).copy()
            if s.shape != (g.size,):
                raise ValueError(f"criterion {self.method!r} returned {s.shape} scores for group {g.id} of {g.size} channels")
            s[g.frozen] = np.inf
            order = np.argsort(-s, kind="stable")[: n_keep[g.id]]
            keep[g.id] = np.sort(order)
        clusters, filters = {}, {}
        for gid, (r, x) in ctx.options.get("kmeans_results", {}).items():
            clusters[gid] = (r.labels.numpy(), r.representatives.numpy())
            filters[gid] = x
        return PrunePlan(graph, keep, self.method, ratio if isinstance(ratio, float) else float("nan"), clusters, filters)

    def _decide(self, graph, ratio, target_macs, target_params):
        """How many units each prunable group keeps: (groups, context, keep counts, the
        ratio used, the scores the global schedule ranked on or None)."""
        groups = [g for g in graph.groups if g.prunable > 0]
        ctx = self._context(graph)
        base_scores = None
        if self.schedule == "global":
            scorer = _criteria.get_criterion("l2") if self.method == "kmeans" else self.criterion
            base_scores = scorer(groups, ctx)
        if target_macs is not None or target_params is not None:
            n_keep, ratio = self._solve_target(graph, groups, base_scores, target_macs, target_params)
        elif ratio == "auto":
            n_keep = self._auto_k(ctx, groups)
        else:
            n_keep = self._counts(groups, float(ratio), base_scores)
        return groups, ctx, n_keep, ratio, base_scores

    def _auto_k(self, ctx, groups) -> dict:
        jobs, cands, ids = [], [], []
        out = {g.id: g.size for g in groups}
        for g in groups:
            if g.frozen.any() or not g.producers() or g.size < 4:
                continue
            # every K up to 32, then a geometric grid up to the group size
            dense = set(range(1, min(g.size, 32) + 1))
            ks = sorted(dense | {int(round(v)) for v in np.geomspace(32, g.size, 16)} if g.size > 32 else dense)
            jobs.append(ctx.filters(g))
            cands.append(ks)
            ids.append(g.id)
        if jobs:
            chosen = engine.choose_k(jobs, cands, seed=self.seed, threads=self.threads)
            for gid, k in zip(ids, chosen):
                g = ctx.graph.groups[gid]
                out[gid] = round_keep(max(1, min(g.size, int(k))), g.size, self.round_to)
        return out

    def _solve_target(self, graph, groups, scores, target_macs, target_params):
        if target_macs is not None and target_params is not None:
            raise ValueError("give target_macs or target_params, not both")
        est = _Estimator(self.model, graph)
        p0, m0 = est({})
        which, value, base = ("macs", target_macs, m0) if target_macs is not None else ("params", target_params, p0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"target_{which} must be a positive fraction (<= 1) or count, got {value!r}")
        goal = value * base if value <= 1.0 else float(value)
        if goal >= base:
            return self._counts(groups, 0.0, scores), 0.0

        def at(r):
            n = self._counts(groups, r, scores)
            p, m = est(n)
            return n, (m if which == "macs" else p)

        lo, hi = 0.0, 0.95
        n_hi, v_hi = at(hi)
        if v_hi > goal:
            raise ValueError(f"target_{which}={value}: unreachable, pruning 95% of every group still leaves "
                             f"{v_hi:.4g} of {base:.4g}")
        best = (n_hi, hi, abs(v_hi - goal))
        for _ in range(40):
            mid = (lo + hi) / 2
            n, v = at(mid)
            if abs(v - goal) < best[2]:
                best = (n, mid, abs(v - goal))
            if v > goal:
                lo = mid
            else:
                hi = mid
        return best[0], best[1]

    # -- cutting --------------------------------------------------------------------------
    def apply(self, plan: PrunePlan, *, inplace: bool = False) -> PruneResult:
        """Cut the model as planned. ``inplace=False`` returns a pruned copy."""
        t0 = time.perf_counter()
        mask = plan.keep_mask()
        overrides, report = {}, None
        if self.merge and plan.clusters:
            overrides, report = merge_overrides(self.model, plan.graph, mask, plan.clusters, plan.filters)
        before = snapshot(self.model, plan.graph.layers)
        pruned = apply_keep(self.model, plan.graph, mask, inplace=inplace, threads=self.threads, overrides=overrides)
        summary = compare(before, snapshot(pruned, plan.graph.layers))
        return PruneResult(pruned, plan, summary, {"surgery": time.perf_counter() - t0}, report)

    def prune(self, ratio: float | str = 0.5, *, target_macs=None, target_params=None, inplace: bool = False,
              keep_by_layer: dict | None = None) -> PruneResult:
        """:meth:`plan` then :meth:`apply`."""
        t0 = time.perf_counter()
        plan = self.plan(ratio, target_macs=target_macs, target_params=target_params, keep_by_layer=keep_by_layer)
        t1 = time.perf_counter()
        res = self.apply(plan, inplace=inplace)
        res.seconds["plan"] = t1 - t0
        return res

    def run(self, ratio: float | str = 0.5, *, target_macs=None, target_params=None, iterative_steps: int = 1,
            finetune: Callable | None = None, inplace: bool = False) -> PruneResult:
        """Prune to the target in ``iterative_steps`` rounds; after each round
        ``finetune(model, step)`` (if given) trains the pruned model and may return a
        replacement. The final summary compares against the model as it was at the start."""
        if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
            raise ValueError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
        if iterative_steps > 1 and ratio == "auto":
            raise ValueError("ratio='auto' picks the cluster counts in one step; use iterative_steps=1")
        original = self.model
        first_graph = None
        est0 = None
        steps = []
        result = None
        for step in range(1, iterative_steps + 1):
            kw = {}
            if target_macs is not None or target_params is not None:
                if est0 is None:
                    first_graph = self._graph()
                    est0 = _Estimator(original, first_graph)({})
                p0, m0 = est0
                val, base = (target_macs, m0) if target_macs is not None else (target_params, p0)
                goal = val * base if val <= 1.0 else float(val)
                step_goal = base * (goal / base) ** (step / iterative_steps)
                kw["target_macs" if target_macs is not None else "target_params"] = step_goal
                r = 0.5
            elif ratio == "auto":
                r = "auto"
            else:
                if step == 1 and iterative_steps > 1:
                    # the one-shot counts on the original model; each step moves a share of the way
                    graph = self._graph()
                    groups, _, n_keep, _, _ = self._decide(graph, float(ratio), None, None)
                    final = {g.producers()[0].module: (g.size, n_keep[g.id]) for g in groups if g.producers()}
                    self._cached = (self.model, graph)  # the first step reuses this trace
                if iterative_steps > 1:
                    kw["keep_by_layer"] = {n: size - int(math.floor((size - k) * step / iterative_steps + 0.5))
                                           for n, (size, k) in final.items()}
                r = float(ratio) * step / iterative_steps  # refined per group by keep_by_layer
            result = self.prune(r, inplace=inplace or step > 1, **kw)
            self.model = result.model
            steps.append(result.summary)
            if finetune is not None:
                out = finetune(self.model, step)
                if isinstance(out, nn.Module):
                    self.model = result.model = out
        if iterative_steps > 1:
            layers = first_graph.layers if first_graph is not None else build_graph(original, self.inputs, self.example_kwargs).layers
            result.summary = compare(snapshot(original, layers), snapshot(self.model, layers))
        result.steps = steps
        return result


def prune(
    model: nn.Module,
    example_inputs,
    *,
    method: str = "kmeans",
    ratio: float | str = 0.5,
    schedule: str = "uniform",
    round_to: int | None = None,
    ignore=(),
    layer_ratios: dict | None = None,
    calibration=None,
    inplace: bool = False,
    target_macs: float | None = None,
    target_params: float | None = None,
    taper: float = 1.0,
    merge: bool | None = None,
    iterative_steps: int = 1,
    finetune: Callable | None = None,
    seed: int = 0,
    threads: int | None = None,
    strict: bool = True,
    example_kwargs: dict | None = None,
    **options,
) -> PruneResult:
    """Prune `model` and return the smaller model, the plan and a summary.

    model: any ``nn.Module``; it is run once on ``example_inputs`` (a tensor or a tuple of
        tensors, plus ``example_kwargs``) to find coupled channels.
    method: a registered criterion (``pyprune.available_criteria()``): ``kmeans`` (spherical
        k-means over filter directions, one representative kept per cluster), ``l1``, ``l2``,
        ``fpgm``, ``bn_scale``, ``activation`` / ``apoz`` / ``hrank`` and ``taylor`` (these
        need ``calibration``), ``random``, or your own (:func:`register_criterion`).
    ratio: fraction of channels removed, in [0, 1); with kmeans also ``"auto"`` (each group
        keeps the cluster count chosen by the elbow rule).
    schedule: ``uniform``, ``global`` (rank all channels together, normalised per group,
        keeping at least ``min_keep`` of each group) or ``taper`` (deeper layers lose more;
        strength ``taper``, 0 = uniform).
    round_to: keep channel counts at multiples of this (8 suits most CPU kernels).
    ignore: module names, glob patterns or modules whose output channels stay.
    layer_ratios: {layer name or pattern: ratio} overriding the schedule for those layers.
    calibration: a DataLoader or list of batches (tensors, or (inputs, labels) pairs) for
        the data-driven criteria.
    target_macs / target_params: instead of ``ratio``, a budget as a fraction (<= 1) of the
        model's MACs / parameters or an absolute count; the schedule's ratio is solved for.
    merge: kmeans only (default on): fold dropped filters into their cluster's kept filter.
    iterative_steps, finetune: reach the target in several prune -> ``finetune(model, step)``
        rounds.
    inplace: ``False`` (default) returns a pruned copy and leaves `model` untouched;
        ``True`` prunes `model` itself.
    strict: an op the tracer does not understand raises :class:`GraphError` naming the
        module and op (the model is untouched); ``strict=False`` keeps those channels.
    """
    _check_ratio(ratio, allow_auto=method == "kmeans")
    pruner = Pruner(model, example_inputs, method=method, schedule=schedule, taper=taper, round_to=round_to,
                    ignore=ignore, layer_ratios=layer_ratios, calibration=calibration, merge=merge, seed=seed,
                    threads=threads, strict=strict, example_kwargs=example_kwargs, **options)
    t0 = time.perf_counter()
    res = pruner.run(ratio, target_macs=target_macs, target_params=target_params, iterative_steps=iterative_steps,
                     finetune=finetune, inplace=inplace)
    res.seconds["total"] = time.perf_counter() - t0
    return res
