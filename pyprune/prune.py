"""`pyprune.prune` and `pyprune.Pruner`: trace, score, schedule, cut.

The flow of a method, with no special case by name: ``prune(method=...)`` builds a
:class:`PruneConfig`; :class:`Pruner` looks the method up in the criterion registry
(:func:`pyprune.criteria.criterion_spec`) and reads from its spec whether it needs data,
selects, merges or supports ``ratio="auto"``; the schedule (or a budget, solved against
:class:`pyprune.summary.CostModel`) gives keep counts; the criterion gives scores or a
:class:`~pyprune.criteria.Selection` per group; surgery cuts, merging clusters where the
spec says so.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import fnmatch
import itertools
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .criteria import Context, Selection, block_jobs, criterion_spec
from . import engine
from .data import check_calibration
from .graph import ChannelGraph, GraphError, as_inputs, build_graph, param_path
from .graph._check import check_runs
from .latency import RUNTIMES
from .layers import LAYERS
from .merge import MergeReport, merge_folds
from .schedule import (fit_blocks, iterative_keep, iterative_targets, keep_counts, keep_for_ratio,
                       match_layer_ratios, round_keep, schedule_spec, solve_for_budget)
from .summary import CostModel, Summary, compare, snapshot
from .surgery import apply_keep

__all__ = ["prune", "Pruner", "PruneConfig", "PruneResult", "PrunePlan"]


@dataclass
class PruneConfig:
    """How to prune: everything :func:`prune` and :class:`Pruner` take besides the model,
    its example inputs and the target (see :func:`prune` for each option)."""

    method: str = "kmeans"
    schedule: str = "uniform"
    taper: float = 1.0
    round_to: int | None = None
    ignore: object = ()
    layer_ratios: dict | None = None
    calibration: object = None
    calibration_batches: int | None = None
    merge: bool | None = None
    seed: int = 0
    threads: int | None = None
    strict: bool = True
    example_kwargs: dict | None = None
    min_keep: float = 0.1
    verify: bool = True
    sensitivity: object = None  # pyprune.sensitivity(...) for schedule="sensitivity"
    bn_recalibration: bool | None = None  # None: on when calibration is given
    reconstruct: bool | None = None  # None: on when calibration is given
    runtime: str = "onnxruntime"  # latency targets: the runtime measured (onnxruntime, executorch, eager)
    batch_size: int = 1  # latency targets: the batch size measured
    latency_rounds: int = 4  # latency targets: measure -> plan again rounds at most
    latency_weight: str = "balanced"  # latency targets: what a channel is worth besides its score (see prune())
    latency_cache: object = None  # latency targets: the table folder (default pyprune.latency.cache_dir())
    progress: bool = True  # progress bars for long work (latency tables)
    criterion_options: dict = field(default_factory=dict)  # the method's own options (its spec's `options`)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "PruneConfig":
        """A config from keyword options; the method's own options (e.g. ``kmeans_iter``)
        go to ``criterion_options``. An option that neither knows raises ``TypeError``
        naming it."""
        names = {f.name for f in dataclasses.fields(cls)} - {"criterion_options"}
        own = {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        cfg = cls(**own, criterion_options=dict(kwargs.get("criterion_options") or {}))
        spec = criterion_spec(cfg.method)
        unknown = [k for k in rest if k not in spec.options]
        targets = [k for k in unknown if k in _TARGET_OPTIONS]
        if targets:
            raise TypeError(f"{', '.join(targets)}: what to reach is given to the call that prunes, not to the "
                            f"Pruner or PruneConfig: pyprune.prune(model, x, {targets[0]}=...), or "
                            f"Pruner(model, x, ...).run({targets[0]}=...) (also .prune() and .plan())")
        if unknown:
            known = sorted(names | set(spec.options) | _TARGET_OPTIONS)
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                     for k in unknown]
            raise TypeError(f"unknown option(s) {', '.join(hints)} for method {cfg.method!r}; "
                            f"known options: {', '.join(known)}")
        cfg.criterion_options.update(rest)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        spec = criterion_spec(self.method)  # unknown method: ValueError listing them
        if schedule_spec(self.schedule).needs_sensitivity and self.sensitivity is None:
            raise ValueError(f"schedule {self.schedule!r} needs sensitivity=pyprune.sensitivity(model, x, val_set) "
                             "(the per-layer accuracy curves it spreads the ratio by)")
        if spec.needs_data and self.calibration is None:
            raise ValueError(f"method {self.method!r} scores channels from data: pass calibration=<DataLoader or "
                             "list of (inputs, labels) batches>")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise ValueError(f"round_to must be a positive int or None, got {self.round_to!r}")
        if isinstance(self.taper, bool) or not isinstance(self.taper, numbers.Real) or not 0 <= self.taper < math.inf:
            raise ValueError(f"taper must be a finite number >= 0 (0 = uniform), got {self.taper!r}")
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, numbers.Real) or not 0 <= self.min_keep <= 1:
            raise ValueError(f"min_keep: the share of each group the global schedule keeps at least must be in [0, 1], "
                             f"got {self.min_keep!r}")
        engine._threads(self.threads)  # the core's own checks of both
        engine._int_arg("seed", self.seed, 0, 2**63 - 1, "an int in [0, 2**63)")
        if self.calibration_batches is not None and (isinstance(self.calibration_batches, bool) or not isinstance(
                self.calibration_batches, numbers.Integral) or self.calibration_batches < 1):
            raise ValueError(f"calibration_batches must be a positive int or None (all), got {self.calibration_batches!r}")
        unknown = [k for k in self.criterion_options if k not in spec.options]
        if unknown:
            raise TypeError(f"criterion_options: unknown option(s) {', '.join(map(repr, unknown))} for method "
                            f"{self.method!r}; its options: {', '.join(spec.options) or 'none'}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if isinstance(self.latency_rounds, bool) or not isinstance(self.latency_rounds, int) or self.latency_rounds < 1:
            raise ValueError(f"latency_rounds must be an int >= 1, got {self.latency_rounds!r}")
        if self.latency_weight not in LATENCY_WEIGHTS:
            raise ValueError(f"latency_weight: unknown weight {self.latency_weight!r}; known: "
                             f"{', '.join(LATENCY_WEIGHTS)}")
        if self.layer_ratios is not None and not isinstance(self.layer_ratios, dict):
            raise TypeError("layer_ratios: expected a dict {layer name or pattern: ratio}")


@dataclass
class PrunePlan:
    """What will be cut: per group the kept unit indices (into ``group.units``). Edit
    ``keep`` before :meth:`Pruner.apply` to change the plan."""

    graph: ChannelGraph
    keep: dict  # group id -> np.ndarray of kept positions within the group
    method: str = ""
    ratio: float = 0.0
    clusters: dict = field(default_factory=dict)  # group id -> (labels, representatives), selecting methods
    cluster_stats: dict = field(default_factory=dict)  # group id -> (norms, rep_cosines, rep_residuals)
    iterations: dict = field(default_factory=dict)  # group id -> iterations the clustering took
    asked: dict = field(default_factory=dict)  # group id -> channels the schedule asked to keep
    # what Pruner.plan was asked (its arguments) and the keep it gave: an unedited plan can be
    # made again after a tentative cut fails (Pruner.apply)
    request: dict | None = field(default=None, repr=False)
    _planned: dict | None = field(default=None, repr=False)

    def edited(self) -> bool:
        """Whether ``keep`` differs from what :meth:`Pruner.plan` gave."""
        if self._planned is None:
            return True
        return self.keep.keys() != self._planned.keys() or any(
            not np.array_equal(np.asarray(self.keep[k]), v) for k, v in self._planned.items())

    def __repr__(self) -> str:  # (the dataclass's would print the whole graph)
        try:
            sizes = self.widths()
        except ValueError:  # an edited keep that apply() would refuse
            return f"PrunePlan(method={self.method!r}, ratio={self.ratio:g}, keep edited: not valid)"
        before, after = sum(b for b, _ in sizes.values()), sum(a for _, a in sizes.values())
        return (f"PrunePlan(method={self.method!r}, ratio={self.ratio:g}, {len(sizes)} groups, "
                f"{after} of {before} channels kept)")

    def kept(self, group) -> np.ndarray:
        """The sorted positions (into ``group.units``) the plan keeps of a group. ``keep``
        entries may be positions or a mask of the group's size; anything else is refused
        with the group named, before it can become another model than the one planned."""
        kept = self.keep.get(group.id)
        if kept is None:
            return np.arange(group.size)
        where = f"plan.keep[{group.id}] (group {group.name}, {group.size} channels)"
        a = np.asarray(kept)
        if a.dtype == bool:
            if a.shape != (group.size,):
                raise ValueError(f"{where}: a mask needs {group.size} flags, got shape {a.shape}")
            return np.flatnonzero(a)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{where}: expected the kept positions as integers in 0..{group.size - 1} (or a mask of "
                             f"{group.size} booleans), got {a.dtype} of shape {a.shape}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= group.size):
            raise ValueError(f"{where}: positions must lie in 0..{group.size - 1}, got {a.min()}..{a.max()}")
        values, counts = np.unique(a, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{where}: positions listed more than once: {values[counts > 1].tolist()[:5]}")
        return np.sort(a)

    def keep_mask(self) -> np.ndarray:
        unknown = sorted(set(self.keep) - {g.id for g in self.graph.groups}, key=str)
        if unknown:
            raise ValueError(f"plan.keep: no group with id {unknown[0]!r} (groups are 0..{len(self.graph.groups) - 1}; "
                             "see plan.graph.table())")
        mask = np.ones(self.graph.n_units, bool)
        for g in self.graph.groups:
            if g.id in self.keep:
                m = np.zeros(g.size, bool)
                m[self.kept(g)] = True
                mask[g.units] = m
        return mask

    def widths(self) -> dict[int, tuple[int, int]]:
        """group id -> (units before, units after)."""
        return {g.id: (g.size, len(self.kept(g))) for g in self.graph.groups}

    def layer_widths(self) -> dict[str, tuple[int, int]]:
        """Producing layer -> (output channels before, after), in forward order."""
        mask = self.keep_mask()
        name = self.graph.producer_name
        return {name(m): (len(m.units), int(mask[m.units].sum())) for g in self.graph.groups for m in g.producers()}


@dataclass
class PruneResult:
    model: nn.Module
    plan: PrunePlan
    summary: Summary
    seconds: dict = field(default_factory=dict)
    merge: MergeReport | None = None
    steps: list = field(default_factory=list)  # per iterative step: summaries
    plans: list = field(default_factory=list)  # per iterative step: its plan (``plan`` is the last one's)
    recovery: dict = field(default_factory=dict)  # bn_batches, reconstruction (with calibration)
    latency: dict = field(default_factory=dict)  # latency targets: budget, predicted, measured, rounds, layers

    @property
    def graph(self) -> ChannelGraph:
        return self.plan.graph

    def layer_widths(self) -> dict[str, tuple[int, int]]:
        """Producing layer -> (output channels of the model given, of the pruned model), in
        forward order. After ``iterative_steps`` this spans every round (``plan.layer_widths()``
        is the last round's alone: its 'before' is the round before's model)."""
        plans = self.plans or [self.plan]
        widths = {name: [b, a] for name, (b, a) in plans[0].layer_widths().items()}
        for plan in plans[1:]:
            for name, (_, a) in plan.layer_widths().items():
                if name in widths:
                    widths[name][1] = a
        return {name: (b, a) for name, (b, a) in widths.items()}

    @property
    def attributes(self) -> dict:
        """{(module, attr): value} of the channel counts pruning rewrote in modules (split
        sizes, slice bounds, ``groups``): saved with a checkpoint, set again on loading."""
        return self.graph.rewritten(self.plan.keep_mask())

    def frozen(self) -> list[tuple[str, int, int, list[str]]]:
        """Per group that kept channels it could otherwise lose: (name, channels, channels
        kept whole, why), largest first (network inputs and outputs left out)."""
        graph = self.graph
        rows = []
        for g in graph.groups:
            reasons = graph.kept_reasons(g)
            if g.frozen.any() and reasons:
                rows.append((g.name, g.size, int(g.frozen.sum()), reasons))
        return sorted(rows, key=lambda r: -r[2])

    def inexact(self) -> list[tuple[str, list[str]]]:
        """Groups whose cut changes what the model computes even on zero channels (norms
        over channels, weight standardisation, a conv along the channel axis)."""
        return [(g.name, list(g.inexact)) for g in self.graph.groups if g.inexact]

    def __str__(self) -> str:
        lines = [str(self.summary)]
        its = sorted(self.plan.iterations.values())
        if its:
            lines.append(f"k-means: {len(its)} clusterings, iterations median {its[len(its) // 2]}, max {its[-1]} "
                         "(PrunePlan.iterations has them per group)")
        if self.merge is not None:
            lines.append(f"merge: {self.merge}")
        rec = self.recovery.get("reconstruction")
        if "bn_batches" in self.recovery:
            lines.append(f"BN recalibrated on {self.recovery['bn_batches']} batches")
        if rec is not None:
            lines.append(str(rec))
        lat = self.latency
        if lat:
            lines.append(f"latency on {lat['target']}: budget {1e3 * lat['budget_s']:.3f} ms, predicted "
                         f"{1e3 * lat['predicted_s']:.3f} ms, measured {1e3 * lat['measured_s']:.3f} ms (unpruned "
                         f"{1e3 * lat['unpruned_measured_s']:.3f} ms" + (
                             f"; round {lat.get('round', 1)} of {len(lat['rounds'])} kept)" if lat.get("rounds") else ")"))
            if lat.get("predicted_ratio") is not None:
                line = (f"share of the unpruned model's time: predicted {lat['predicted_ratio']:.3f}, measured "
                        f"{lat['measured_ratio']:.3f} (the two timed in turns)")
                drift = lat.get("machine_drift", 0.0)
                if abs(drift) > DRIFT_NOTED:
                    line += (f"; the unpruned model measured {abs(drift):.0%} {'slower' if drift > 0 else 'faster'} "
                             "than at the measurement the predictions were scaled by (the machine's speed moved, "
                             "the absolute times with it; the share carries over)")
                lines.append(line)
            if lat.get("weight_macs_share") is not None:
                a = lat["weight_macs_share"]
                lines.append(f"channels weighted by {a:.3g} x their MACs + {1 - a:.3g} x their parameters "
                             f"(latency_weight={lat['weight']!r})")
        return "\n".join(lines)


def _check_ratio(ratio, method: str, allow_auto: bool) -> None:
    if allow_auto and ratio == "auto":
        return
    extra = f" or 'auto' ({method})" if allow_auto else ""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ValueError(f"ratio: expected a number in [0, 1){extra}, got a {type(ratio).__name__} ({ratio!r})")
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio: the fraction of channels removed must be in [0, 1){extra}, got {ratio!r}")


_BUDGETS = {"target_params": ("params", True), "target_macs": ("macs", True),
            "max_params": ("params", False), "max_macs": ("macs", False),
            "target_latency_ms": ("latency", False), "target_speedup": ("latency", True)}


# what prune() and Pruner.run() are asked to reach, beside the PruneConfig options of how
_TARGET_OPTIONS = {"ratio", "inplace", "iterative_steps", "finetune"} | set(_BUDGETS)


def _warn_unrounded(groups, n_keep: dict, round_to: int | None) -> None:
    """Name the groups ``round_to`` does not reach (no wider than it): cut, but not to a multiple."""
    if not round_to or round_to <= 1:
        return
    narrow = [g for g in groups if g.size <= round_to and n_keep[g.id] < g.size and n_keep[g.id] % round_to]
    if narrow:
        shown = ", ".join(f"{g.name} ({g.size} -> {n_keep[g.id]})" for g in narrow[:5])
        warnings.warn(f"pyprune: round_to={round_to} is not below the width of {len(narrow)} group(s), which are cut "
                      f"without rounding: {shown}{' ...' if len(narrow) > 5 else ''}. Use a smaller round_to, or "
                      "ignore= those layers to keep them whole.", stacklevel=3)


def _finetuned(finetune: Callable, model: nn.Module, step: int) -> nn.Module:
    """``finetune(model, step)``: the model it returns, else `model` (trained in place: None,
    or a history such as :func:`pyprune.train.fit` returns); a tuple holding a module is
    refused (a (model, metrics) pair would otherwise lose the model silently)."""
    out = finetune(model, step)
    if isinstance(out, nn.Module):
        return out
    if isinstance(out, (tuple, list)) and any(isinstance(o, nn.Module) for o in out):
        raise TypeError(f"finetune(model, step) returned a {type(out).__name__} holding a module (step {step}): "
                        "return the fine-tuned model alone (or None where it trains the model in place)")
    return model  # None, a history, metrics: the model was trained in place


def _ratio_or_budget(ratio, budget) -> float | str:
    """The ratio to plan with: 0.5 where neither is given; a ratio and a budget together are
    refused (the budget would silently win)."""
    if budget is not None and ratio is not None:
        raise ValueError(f"give a ratio or a budget, not both: ratio={ratio!r} and {budget[0]}={budget[2]:g} "
                         f"(drop ratio= to prune to the budget)")
    return 0.5 if ratio is None else ratio


def check_options(ratio=None, **options) -> None:
    """Refuse, without a model, what :func:`prune` would refuse in its options: the method,
    schedule, the method's own options, the rest of :class:`PruneConfig`, the ratio or the
    one budget. For flows that train before they prune (``pyprune run``, ``sweep``), so a
    typo is an error before the training, not after it. A data-driven method is not asked
    for its calibration data here (the flow supplies it)."""
    targets = {k: options.pop(k) for k in list(options) if k in _TARGET_OPTIONS}
    budgets = {k: v for k, v in targets.items() if k in _BUDGETS}
    method = options.get("method", "kmeans")
    if criterion_spec(method).needs_data and options.get("calibration") is None:
        options["calibration"] = ()  # stands for the data the flow gives
    PruneConfig.from_kwargs(**options)
    _check_ratio(_ratio_or_budget(ratio, _budget(**budgets)), method, criterion_spec(method).supports_auto)


def _budget(**given) -> tuple[str, str, float, bool] | None:
    """(argument, cost kind, value, is a fraction) of the one budget given, or None.
    ``target_*`` are fractions of the model's own cost in (0, 1]; ``max_*`` absolute counts."""
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) > 1:
        raise ValueError(f"give one budget, not {' and '.join(sorted(given))}")
    if not given:
        return None
    (arg, value), = given.items()
    kind, fraction = _BUDGETS[arg]
    if kind == "latency":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{arg}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value) or value <= 0 or (arg == "target_speedup" and value < 1):
            need = "a speedup >= 1 over the measured unpruned model" if arg == "target_speedup" else \
                "milliseconds per batch (> 0)"
            raise ValueError(f"{arg}: expected {need}, got {value!r}")
        return arg, kind, float(value), fraction
    if fraction:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise ValueError(f"{arg} is a fraction of the model's {kind} in (0, 1], got {value!r}; for an "
                             f"absolute count use max_{kind}=")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{arg} is an absolute count of {kind} (> 0), got {value!r}")
    return arg, kind, float(value), fraction


def _check_finite(ctx: Context, spec) -> None:
    """Refuse NaN/Inf in any tensor pruning reads or slices, naming it, before anything is
    scored or cut (a NaN filter has no norm, direction or cluster, and the pruned model
    would compute NaN); and a tensor on the ``meta`` device (no values) where the
    criterion `spec` scores from the weights' values."""
    for key in dict.fromkeys((m.module, m.param) for m in ctx.graph.members):
        t = ctx.tensor(*key)
        name = f"{key[0]}.{key[1]}" if key[0] else key[1]
        if t.device.type == "meta":
            if spec.reads_weights:
                raise ValueError(f"{name} is on the meta device (a shape without values): method {spec.name!r} "
                                 "ranks channels by the weights' values. Materialise the model first "
                                 "(model.to_empty(device='cpu'), then load_state_dict(...)), or plan from shapes "
                                 "alone with method='random'; the model was not changed.")
            continue
        if not t.is_floating_point() or torch.isfinite(t.sum()):
            continue  # one summing pass: NaN/Inf propagate (an overflow is counted below)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or Inf) of {t.numel()}: pyprune "
                             "cannot rank or cut such a layer. Load finite weights (a diverged training run?) "
                             "before pruning; the model was not changed.")


def _ignored(model: nn.Module, graph: ChannelGraph, ignore) -> list[tuple[np.ndarray, str]]:
    """(output units, reason) per item of ``ignore=`` (module names, patterns or modules)."""
    if ignore is None or (isinstance(ignore, (tuple, list)) and not ignore):
        return []
    items = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
    names = {m: n for n, m in model.named_modules()}
    all_names = list(names.values())
    layer_params = [param_path(mod, par) for mod, par in graph.param_layers]  # F.conv2d(x, self.w)
    out = []
    for item in items:
        if isinstance(item, nn.Module):
            if item not in names:
                raise ValueError(f"ignore: module {type(item).__name__} is not part of the model")
            patterns = [names[item], names[item] + ".*"] if names[item] else ["*"]
            label = names[item] or type(item).__name__
        elif isinstance(item, str):
            matched = [n for n in all_names + layer_params if fnmatch.fnmatchcase(n, item) or n == item]
            if not matched:
                raise ValueError(f"ignore: {item!r} matches no module of the model (module names look like {all_names[1:4]})")
            patterns = [item, item + ".*"]
            label = item
        else:
            raise TypeError(f"ignore: expected module names, patterns or modules, got {type(item).__name__}")
        units = [m.units for m in graph.members if m.role in ("out", "bias") and any(
            fnmatch.fnmatchcase(m.module, p) or fnmatch.fnmatchcase(graph.producer_name(m), p) for p in patterns)]
        if units:
            out.append((np.concatenate(units), f"ignore={label!r}"))
            continue
        # a module that produces no channels (a norm): ignoring it would keep nothing
        touched = {int(graph.unit_group[u]) for m in graph.members if any(fnmatch.fnmatchcase(m.module, p)
                                                                           for p in patterns) for u in m.units[:1]}
        if not touched:  # no channels traced at all (an activation, a layer that never ran): nothing to keep
            warnings.warn(f"pyprune: ignore={label!r} holds no channels pyprune cuts (it has none, or never ran on "
                          "the example inputs): it keeps nothing", stacklevel=4)
            continue
        producers = sorted({p.module for gid in touched for p in graph.groups[gid].producers()})
        hint = f"; the layers that write the channels it reads: {', '.join(producers[:5])}" if producers else ""
        raise ValueError(f"ignore: {label!r} produces no channels of its own (it reads channels a layer writes), so "
                         f"ignoring it would keep nothing: name the layer whose output channels should stay{hint}")
    return out


class Pruner:
    """Structured pruner for iterative and inspectable use.

        pruner = pyprune.Pruner(model, x, method="l1", schedule="taper")
        plan = pruner.plan(ratio=0.5)      # inspect plan.widths(), edit plan.keep ...
        result = pruner.apply(plan)        # the pruned model + summary

        result = pruner.run(ratio=0.6, iterative_steps=3, finetune=lambda m, step: train(m))

    Options are those of :func:`prune` (or a :class:`PruneConfig` as ``config=``). The model
    is traced once, here: bad ``ignore=`` names and unsupported ops fail at construction.
    """

    def __init__(self, model: nn.Module, example_inputs, config: PruneConfig | None = None, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if config is not None and options:
            raise TypeError(f"give either config= or keyword options, not both (got {sorted(options)})")
        if config is not None:
            config.validate()
        cfg = config if config is not None else PruneConfig.from_kwargs(**options)
        if isinstance(cfg.calibration, collections.abc.Iterator):  # (iter() of a DataLoader would start it)
            # a one-pass iterator (a generator): read once, as scoring, BN recalibration and
            # reconstruction each pass over the batches
            batches = cfg.calibration if cfg.calibration_batches is None else itertools.islice(
                cfg.calibration, cfg.calibration_batches)
            cfg = dataclasses.replace(cfg, calibration=list(batches))
        self.config = cfg
        self.spec = criterion_spec(cfg.method)
        self.method = cfg.method
        self.merge = self.spec.merges if cfg.merge is None else bool(cfg.merge)
        self.model = model
        self.inputs = as_inputs(example_inputs)
        check_calibration(cfg.calibration, self.inputs)
        self._traced = (model, self._trace(model))
        self._latency = None  # (model, LatencyModel) once a latency target asked for one
        self._latency_scale = 1.0  # the goal's correction while measure -> plan again rounds run
        self._latency_mix = None  # the compute share of the channel weight of the last latency solve
        self._latency_budget_s = None  # the budget in seconds while prune() works towards it

    # -- planning -------------------------------------------------------------------------
    def _trace(self, model: nn.Module) -> ChannelGraph:
        graph = build_graph(model, self.inputs, self.config.example_kwargs)
        if graph.unsupported and self.config.strict:
            ops = "; ".join(f"{op} in {where}" for where, op in graph.unsupported[:10])
            raise GraphError(
                f"pyprune cannot follow channels through: {ops}. The model was not changed. "
                "Pass strict=False to keep the channels these ops touch, ignore= the modules "
                "around them, or teach pyprune the op (pyprune.register_op) or layer (pyprune.register_layer)."
            )
        for units, reason in _ignored(model, graph, self.config.ignore):
            graph.freeze(units, reason)
        if not self.config.verify:  # no run of the cut to find out: what is cut tentatively is kept
            graph.freeze_tentative()
        return graph

    def _graph(self) -> ChannelGraph:
        """The graph of the current model: traced once per model (a pruned model from an
        earlier round of :meth:`run` is a new model)."""
        if self._traced[0] is not self.model:
            self._traced = (self.model, self._trace(self.model))
        return self._traced[1]

    def _context(self, graph, n_keep=None) -> Context:
        cfg = self.config
        return Context(self.model, graph, n_keep=dict(n_keep or {}), seed=cfg.seed, threads=cfg.threads,
                       calibration=cfg.calibration, calibration_batches=cfg.calibration_batches,
                       options=dict(cfg.criterion_options))

    def _counts(self, groups, ratio, scores, fit: bool = True):
        cfg = self.config
        return keep_counts(groups, ratio, cfg.schedule, round_to=cfg.round_to, taper=cfg.taper, sensitivity=cfg.sensitivity,
                           layer_ratios=cfg.layer_ratios, scores=scores, min_keep=cfg.min_keep, fit=fit)

    def latency_model(self, align: int | None = None):
        """The :class:`pyprune.latency.LatencyModel` of the current model on the configured
        target (``runtime``, ``threads`` (default 1), ``batch_size``): built on first use,
        its layer table measured or read from the cache; with a cached calibration the
        unpruned model is measured again now. ``align`` overrides the probed channel
        multiple (a new model is built when it differs)."""
        current = self._latency[1] if self._latency is not None and self._latency[0] is self.model else None
        if current is None or (align is not None and align != current.align):
            from .latency import LatencyModel, LatencyTarget

            cfg = self.config
            target = LatencyTarget(cfg.runtime, int(cfg.threads or 1), cfg.batch_size)
            graph = self._graph()
            cost = CostModel(self.model, graph)
            lat = LatencyModel(self.model, graph, self.inputs, target, cost, progress=cfg.progress,
                               cache=cfg.latency_cache, align=align)
            if not lat.calibrated_now:
                lat.refresh(self.model)
            cost.attach_latency(lat)
            self._latency = (self.model, lat)
        return self._latency[1]

    def plan(self, ratio: float | str | None = None, *, target_macs: float | None = None, target_params: float | None = None,
             max_macs: int | None = None, max_params: int | None = None, target_latency_ms: float | None = None,
             target_speedup: float | None = None, keep_by_layer: dict | None = None) -> PrunePlan:
        """Decide what to cut. ``ratio`` is the fraction of channels removed (``"auto"``
        where the method chooses its own counts, as kmeans does by the elbow rule). A
        budget replaces ``ratio``: ``target_macs`` / ``target_params`` as a fraction in
        (0, 1] of the current model's, or ``max_macs`` / ``max_params`` as absolute counts
        (the schedule's ratio is solved for); ``target_latency_ms`` / ``target_speedup`` on
        the configured runtime (per-group widths solved against its latency table, the
        criterion's scores deciding where; the plan is predicted, :meth:`prune` measures
        it). ``keep_by_layer`` ({producing layer: channels to keep}) overrides the schedule
        for those layers' groups. ``ratio`` defaults to 0.5 where no budget is given."""
        request = dict(ratio=ratio, target_macs=target_macs, target_params=target_params, max_macs=max_macs,
                       max_params=max_params, target_latency_ms=target_latency_ms, target_speedup=target_speedup,
                       keep_by_layer=keep_by_layer)
        budget = _budget(target_macs=target_macs, target_params=target_params, max_macs=max_macs,
                         max_params=max_params, target_latency_ms=target_latency_ms, target_speedup=target_speedup)
        ratio = _ratio_or_budget(ratio, budget)
        _check_ratio(ratio, self.method, self.spec.supports_auto)
        ratio = ratio if ratio == "auto" else float(ratio)  # numpy's floats too
        graph = self._graph()
        groups = [g for g in graph.groups if g.prunable > 0]
        ctx = self._context(graph)
        _check_finite(ctx, self.spec)
        base_scores = None
        if schedule_spec(self.config.schedule).needs_scores or (budget is not None and budget[1] == "latency"):
            ranker = criterion_spec(self.spec.rank_with) if self.spec.selects else self.spec
            base_scores = ranker(groups, ctx)
        if budget is not None:
            n_keep, ratio = self._solve(graph, groups, base_scores, budget)
        elif ratio == "auto":  # the elbow per group; explicit layer_ratios for theirs
            fixed = match_layer_ratios(groups, self.config.layer_ratios) if self.config.layer_ratios else {}
            n_keep = {g.id: (keep_for_ratio(g, fixed[g.id], self.config.round_to) if g.id in fixed else g.size)
                      for g in groups}
            for gid, k in self.spec.auto_keep([g for g in groups if g.id not in fixed], ctx).items():
                size = graph.groups[gid].size
                n_keep[gid] = round_keep(max(1, min(size, int(k))), size, self.config.round_to)
        else:
            n_keep = self._counts(groups, float(ratio), base_scores, fit=False)
        if keep_by_layer:
            firsts = {graph.producer_name(g.producers()[0]) for g in graph.groups if g.producers()}  # (a group cut to its
            # floor in an earlier round is no longer prunable, yet still the model's)
            unknown = sorted(set(keep_by_layer) - firsts)
            if unknown:
                raise ValueError(f"keep_by_layer names layers that produce no channel group of this model: "
                                 f"{', '.join(map(repr, unknown[:5]))}. (In run(), a finetune callback must return "
                                 "the model itself or one with the same layer names, not a wrapper such as "
                                 "DataParallel.)")
        for g in groups:
            names = [graph.producer_name(m) for m in g.producers()]
            if keep_by_layer and names and names[0] in keep_by_layer:
                n_keep[g.id] = int(min(g.size, max(1, g.size - g.prunable, keep_by_layer[names[0]])))
        asked = dict(n_keep)
        n_keep = fit_blocks(groups, n_keep)
        _warn_unrounded(groups, n_keep, self.config.round_to)
        if self.spec.selects or base_scores is None:
            ctx.n_keep = n_keep
            results = self.spec(groups, ctx)
        else:
            results = base_scores
        plan = PrunePlan(graph, {}, self.method, ratio if isinstance(ratio, float) else float("nan"), asked=asked)
        for g, r in zip(groups, results):
            plan.keep[g.id] = self._kept(g, r, n_keep[g.id], plan)
        plan.request = dict(request)
        plan._planned = {k: np.array(v, copy=True) for k, v in plan.keep.items()}
        return plan

    def _kept(self, g, result, n_keep: int, plan: PrunePlan) -> np.ndarray:
        """Kept positions of group `g` from the criterion's scores or Selection."""
        if isinstance(result, Selection):
            keep = np.unique(np.asarray(result.keep, np.int64))
            # a group with channel blocks keeps what its blocks keep (Group.block_counts: at
            # least one each, one count per block size), which can round above n_keep
            want = n_keep if g.blocks is None else sum(k for _, k in block_jobs(g, n_keep))
            if len(keep) != want or keep.min(initial=0) < 0 or keep.max(initial=0) >= g.size:
                raise ValueError(f"criterion {self.method!r} selected {len(keep)} distinct units of group {g.id} "
                                 f"({g.name}, {g.size} units): expected {want} positions in [0, {g.size})")
            if g.frozen.any() and not np.isin(np.flatnonzero(g.frozen), keep).all():
                raise ValueError(f"criterion {self.method!r} dropped frozen units of group {g.id} ({g.name})")
            if g.blocks is not None:
                counts, rest = g.block_counts(n_keep)
                labels = np.unique(g.blocks[g.blocks >= 0])
                got = np.array([int(np.isin(np.flatnonzero(g.blocks == b), keep).sum()) for b in labels])
                if not np.array_equal(got, counts):
                    raise ValueError(f"criterion {self.method!r} kept {got.tolist()} units per block of group "
                                     f"{g.id} ({g.name}); its blocks must keep {counts.tolist()} "
                                     "(Group.block_counts)")
            if result.labels is not None:
                plan.clusters[g.id] = (np.asarray(result.labels), np.asarray(result.representatives))
                if result.norms is not None and result.rep_cosines is not None and result.rep_residuals is not None:
                    plan.cluster_stats[g.id] = (np.asarray(result.norms), np.asarray(result.rep_cosines),
                                                np.asarray(result.rep_residuals))
                plan.iterations[g.id] = result.n_iter
            if g.blocks is not None:
                return keep
            # an emptied piece's unit is kept in place of its own cluster's representative
            # (it stands for that cluster), else of the representative of the smallest cluster
            pick = None if result.norms is None else np.asarray(result.norms, np.float64)
            if result.labels is None:
                return _keep_at_least(g, _keep_every_piece(g, keep, pick=pick)[0], pick)[0]
            labels, reps = np.asarray(result.labels), np.asarray(result.representatives)
            size = np.bincount(labels + 1)[labels + 1]
            keep, swaps = _keep_every_piece(g, keep, pick=pick, cost=size,
                                            prefer=lambda u: int(reps[labels[u]]) if labels[u] >= 0 else None)
            keep, added = _keep_at_least(g, keep, pick)
            swaps += [(u, None) for u in added]  # each a cluster of its own
            if swaps:
                plan.clusters[g.id] = _reassign_clusters(labels, reps, swaps)
                plan.cluster_stats.pop(g.id, None)  # measured against the old representatives
            return keep
        s = np.asarray(result, np.float64).copy()
        s[g.frozen] = np.inf
        if g.blocks is None:
            keep = np.sort(np.argsort(-s, kind="stable")[:n_keep])
            return _keep_at_least(g, _keep_every_piece(g, keep, pick=s, cost=s)[0], s)[0]
        return np.sort(np.concatenate([pos[np.argsort(-s[pos], kind="stable")[:k]] for pos, k in block_jobs(g, n_keep)]))

    def _solve(self, graph, groups, scores, budget) -> tuple[dict, float]:
        arg, kind, value, fraction = budget
        if kind == "latency":
            lat = self.latency_model()
            budget_s = self._latency_budget_s or _latency_budget_s(lat, value, fraction)
            goal = budget_s * self._latency_scale
            cfg = self.config
            fixed = {}
            if cfg.layer_ratios:
                fixed = {gid: keep_for_ratio(graph.groups[gid], r, cfg.round_to)
                         for gid, r in match_layer_ratios(groups, cfg.layer_ratios).items()}
            while True:
                try:
                    n_keep, self._latency_mix, key = _solve_weighted(lat, groups, scores, goal, cfg, fixed)
                    break
                except ValueError as e:
                    floor = lat.floor_predict(groups, min_keep=cfg.min_keep, fixed=fixed)
                    if lat.align <= 1 or floor > FLOOR_MARGIN * goal:
                        raise ValueError(f"{arg}={value:g}: {e}" + (
                            "" if lat.align <= 1 else f"; at any width the floor is predicted at {1e3 * floor:.4g} ms, "
                            f"so multiples below {lat.align} were not tried") + "; the model was not changed") from None
                    # the runtime's preferred multiple leaves too little to cut: finer widths
                    # (a table of their own), at the kernels' cost
                    warnings.warn(f"pyprune: {arg}={value:g} is out of reach at multiples of {lat.align} channels "
                                  f"on {lat.target.runtime}; trying multiples of {lat.align // 2}", stacklevel=4)
                    lat = self.latency_model(align=lat.align // 2)
            if lat.align < lat.probed_align and lat.align // 2 >= FINEST_COMPARED_ALIGN:
                # the budget is at the edge of what the coarse multiples reach: the next finer
                # ones may spread the cut (resnet56_cifar at 0.4x on onnxruntime: multiples
                # of 8 kept 0.15 of its MACs and 0.06 of its parameters, of 4 kept 0.25 and 0.52)
                finer = self.latency_model(align=lat.align // 2)
                try:
                    n2, mix2, key2 = _solve_weighted(finer, groups, scores, goal, cfg, fixed)
                except ValueError:
                    key2 = None
                if key2 is not None and key2 > key:
                    n_keep, self._latency_mix = n2, mix2
                else:
                    self._latency = (self.model, lat)  # the coarser model stays the one planned with
            n_keep = fit_blocks(groups, n_keep)
            total = sum(g.size for g in groups)
            return n_keep, 1.0 - sum(n_keep[g.id] for g in groups) / max(1, total)
        cost = CostModel(self.model, graph)
        base = cost.base[kind]
        goal = value * base if fraction else value
        return solve_for_budget(lambda r: self._counts(groups, r, scores), lambda n: cost(n)[kind], goal, base,
                                f"{arg}={value:g}")

    # -- cutting --------------------------------------------------------------------------
    def apply(self, plan: PrunePlan, *, inplace: bool = False) -> PruneResult:
        """Cut the model as planned. ``inplace=False`` returns a pruned copy.

        With ``verify`` (the default) the pruned model is run once on the example inputs
        (shape-only inside its layers, so it costs little): if it fails, or returns other
        shapes, :class:`GraphError` names the module where it failed, and `model` is left
        as it was (an in-place cut is made on a copy first)."""
        t0 = time.perf_counter()
        mask = plan.keep_mask()
        folds, report = {}, None
        if self.merge and plan.clusters:
            folds, report = merge_folds(self.model, plan.graph, mask, plan.clusters, plan.cluster_stats)
        before = snapshot(self.model, plan.graph.layers)
        cfg = self.config
        verify = cfg.verify
        recover = cfg.calibration is not None and (cfg.bn_recalibration is not False or cfg.reconstruct is not False)
        on_copy = inplace and (verify or recover)  # the model itself is cut once the copy is right
        pruned = apply_keep(self.model, plan.graph, mask, inplace=inplace and not on_copy,
                            threads=cfg.threads, folds=folds)
        if verify:
            failure = check_runs(pruned, self.inputs, cfg.example_kwargs, plan.graph.output_shapes, plan.graph.op_log)
            if failure is not None:
                graph = plan.graph
                state = graph.tentative_state() if graph.tentative or graph.tentative_freezes else None
                if state is not None and plan.request is not None and graph is self._traced[1] \
                        and not plan.edited() and graph.drop_tentative(failure[0], self.model):
                    # a tentative cut (Graph.tentative_freezes) may be what failed: those
                    # channels are kept, and the plan is made again as it was asked
                    try:
                        return self.apply(self.plan(**plan.request), inplace=inplace)
                    except PrunedModelFails as e:
                        if _same_failure(e, failure):  # not theirs: they are cut again
                            graph.restore_tentative(state)
                            e.tentative_tried = True
                        raise
                raise PrunedModelFails(*failure)
        seconds = {"surgery": time.perf_counter() - t0}
        recovery = self._recover(pruned, plan, mask) if recover else {}
        if recovery:
            seconds["recovery"] = time.perf_counter() - t0 - seconds["surgery"]
        if on_copy:
            state = pruned.state_dict()
            pruned = apply_keep(self.model, plan.graph, mask, inplace=True, threads=cfg.threads, folds=folds)
            pruned.load_state_dict(state)
        if inplace and self._traced[0] is pruned:  # its trace no longer describes it
            self._traced = (None, None)
        summary = compare(before, snapshot(pruned, plan.graph.layers))
        res = PruneResult(pruned, plan, summary, seconds, report)
        res.recovery = recovery
        return res

    def _recover(self, pruned: nn.Module, plan: PrunePlan, mask: np.ndarray) -> dict:
        """BN recalibration and layer-wise reconstruction on the calibration batches."""
        from .recover import recalibrate_bn, reconstruct

        cfg = self.config
        out: dict = {}
        recal = cfg.bn_recalibration is not False
        if recal:
            out["bn_batches"] = recalibrate_bn(pruned, cfg.calibration, batches=cfg.calibration_batches)
        if cfg.reconstruct is not False:
            members = [m for m in plan.graph.members if m.param == "weight" and m.groups == 1]
            keep_out = {m.module: np.flatnonzero(mask[m.units]) for m in members if m.role == "out" and m.dim == 0}
            keep_in = {m.module: np.flatnonzero(mask[m.units]) for m in members if m.role == "in" and m.dim == 1}
            out["reconstruction"] = reconstruct(self.model, pruned, keep_in, keep_out, cfg.calibration,
                                                batches=cfg.calibration_batches, seed=cfg.seed, threads=cfg.threads)
            if recal and out["reconstruction"].layers:
                recalibrate_bn(pruned, cfg.calibration, batches=cfg.calibration_batches)
        return out

    def prune(self, ratio: float | str | None = None, *, inplace: bool = False, **targets) -> PruneResult:
        """:meth:`plan` (with its targets) then :meth:`apply`. Where the pruned model fails
        to run (a module that uses channel counts in a way pyprune did not follow), that
        module's channels are kept and the model is pruned again, with a warning naming the
        module and the error; after a few such rounds, :class:`GraphError`.

        With a latency target the pruned model is measured in the runtime. While it misses
        the budget, or comes in under ``LATENCY_CLOSE`` of it (a cut deeper than asked),
        the table's error on it (measured over predicted) corrects the goal and the model is
        planned again (at most ``latency_rounds``). The result is the least cut model
        measured within its budget, so its ``latency["measured_s"]`` is what was promised,
        or, where none was, the last one with a warning that says by how much it missed.
        Its ``predicted_s`` is the prediction made before measuring it: the table's, times
        the table's error (geometric mean) on the models measured in the rounds before
        (``table_predicted_s`` and ``table_error``)."""
        budget = _budget(**{k: v for k, v in targets.items() if k in _BUDGETS})
        if budget is not None and budget[1] == "latency":
            _check_ratio(_ratio_or_budget(ratio, budget), self.method, self.spec.supports_auto)  # before measuring
            return self._prune_to_latency(ratio, inplace, targets, budget)
        return self._prune_once(ratio, inplace, targets)

    def _prune_to_latency(self, ratio, inplace: bool, targets: dict, budget) -> PruneResult:
        arg, _, value, fraction = budget
        if fraction and value > 1 and not any(g.prunable > 0 for g in self._graph().groups):
            raise ValueError(f"{arg}={value:g} is out of reach: no channel of the model can be cut (ignore=, or the "
                             "groups PruneResult.frozen() lists); the model was not changed")
        lat = self.latency_model()
        budget_s = self._latency_budget_s = _latency_budget_s(lat, value, fraction)
        rounds, results, planned, res = [], [], [], None
        floor = stalled = False  # a tighter plan was asked for and none exists / it was measured already
        error, errors = 1.0, []  # measured over table-predicted seconds of the pruned models measured
        try:
            for _ in range(self.config.latency_rounds):
                goal = budget_s * self._latency_scale
                try:
                    res = self._prune_once(ratio, False, targets)
                except ValueError:
                    if res is None:
                        raise
                    floor = True
                    break  # no tighter plan exists: the last one stands (and the warning below says so)
                kf = self._keep_fractions(res.plan)
                if any(np.array_equal(kf, seen) for seen in planned):
                    stalled = True
                    break  # the goal moved less than a step of the widths: measured already
                planned.append(kf)
                lat = self.latency_model()  # finer widths may have been needed
                ones = np.ones(len(kf))
                # before measuring, at the speed last measured, times the table's error on the
                # models measured in the rounds before (1 in the first round)
                table_predicted = lat.predict(kf)
                table_ratio = lat.raw_predict(kf) / lat.raw_predict(ones)
                predicted_full = lat.predict(ones)
                reference, measured = lat.measure_pair(res.model)  # in turns with the unpruned model
                if fraction:  # a relative budget follows the machine: the unpruned model measured beside
                    budget_s = self._latency_budget_s = reference / value
                rounds.append({"goal_s": goal, "budget_s": budget_s, "predicted_s": error * table_predicted,
                               "table_predicted_s": table_predicted, "table_error": error,
                               "measured_s": measured, "unpruned_measured_s": reference,
                               "unpruned_predicted_s": predicted_full,
                               "predicted_ratio": error * table_ratio, "table_predicted_ratio": table_ratio,
                               "measured_ratio": measured / reference, "weight_macs_share": self._latency_mix})
                results.append(res)
                if LATENCY_CLOSE * budget_s <= measured <= budget_s:
                    break
                # the table's error on this model, at this pair's speed (the machine's drift
                # is not the table's), averaged (geometric mean) over the models measured so
                # far: a plan's own kernels add their noise to what the table misses on all.
                # The next goal is what the table must predict for the measurement to land
                # just under the budget
                errors.append(measured / max(1e-12, lat.predict(kf)))
                error = float(np.exp(np.mean(np.log(errors))))
                self._latency_scale = LATENCY_AIM / error
        finally:
            self._latency_scale, self._latency_budget_s = 1.0, None
        # the least cut model measured within its budget, else the last one (warned below)
        within = [i for i, r in enumerate(rounds) if r["measured_s"] <= r["budget_s"]]
        pick = max(within, key=lambda i: rounds[i]["measured_s"] / rounds[i]["budget_s"]) if within else len(rounds) - 1
        res, chosen = results[pick], rounds[pick]
        budget_s, self._latency_mix = chosen["budget_s"], chosen["weight_macs_share"]
        if inplace:
            plan = res.plan
            res = self.apply(plan, inplace=True)
        kf = self._keep_fractions(res.plan)
        res.latency = {"target": str(lat.target), "budget_s": budget_s, "round": pick + 1,
                       **{k: chosen[k] for k in ("unpruned_measured_s", "unpruned_predicted_s", "predicted_s",
                                                 "table_predicted_s", "table_error", "measured_s", "predicted_ratio",
                                                 "measured_ratio")},
                       # how far the machine's speed moved between the measurement the
                       # predictions were scaled by and the one they are compared with
                       "machine_drift": chosen["unpruned_measured_s"] / chosen["unpruned_predicted_s"] - 1,
                       "speed": lat.speed,
                       "weight": self.config.latency_weight, "weight_macs_share": self._latency_mix,
                       "rounds": rounds, "calibration": dict(lat.calibration),
                       "table_points_measured": lat.measured_points, "table": str(lat.table.path),
                       "layers": [{"module": b["module"], "kind": b["kind"], "before_s": b["seconds"],
                                   "after_s": a["seconds"]}
                                  for b, a in zip(lat.breakdown(), lat.breakdown(kf))]}
        if res.latency["measured_s"] > budget_s:
            looser = "a larger target_latency_ms" if arg == "target_latency_ms" else "a smaller target_speedup"
            why = ("no plan cuts deeper (every group at its floor: min_keep=, ignore=, round_to=)" if floor else
                   "the next plan was one already measured (the budget is closer than a step of the widths)"
                   if stalled else
                   f"the rounds ran out (latency_rounds={self.config.latency_rounds}); more rounds may reach it")
            warnings.warn(f"pyprune: {arg}={value:g}: the pruned model measured {1e3 * res.latency['measured_s']:.3f} ms "
                          f"on {lat.target.runtime}, over the budget of {1e3 * budget_s:.3f} ms after {len(rounds)} "
                          f"round(s): {why}. Ask for {looser}.", stacklevel=3)
        return res

    @staticmethod
    def _keep_fractions(plan: PrunePlan) -> np.ndarray:
        return np.array([after / before for before, after in plan.widths().values()], np.float64)

    def _prune_once(self, ratio, inplace: bool, targets: dict) -> PruneResult:
        t0 = time.perf_counter()
        fallbacks = []
        undo = None  # (the failure, the graph before) of the last tentative cuts dropped
        while True:  # each round drops tentative rewrites or keeps more channels: at most _MAX_FALLBACKS of those
            t1 = time.perf_counter()
            plan = self.plan(ratio, **targets)
            t2 = time.perf_counter()
            try:
                res = self.apply(plan, inplace=inplace)
            except PrunedModelFails as e:
                graph = plan.graph
                if undo is not None and _same_failure(e, undo[0]):
                    graph.restore_tentative(undo[1])  # the same failure without them: not theirs
                elif not e.tentative_tried:
                    state = graph.tentative_state()
                    if graph.drop_tentative(e.module, self.model):
                        undo = ((e.module, e.message, e.call), state)
                        continue  # a count read from an attribute as long as another dim: cut again without it
                undo = None
                if e.call is not None:  # keep the channels that went through the call (and its copies)
                    units = plan.graph.op_units(e.call, self.model)
                    units = units[~plan.graph.unit_frozen[units]]
                    if len(units) and len(fallbacks) < _MAX_FALLBACKS:
                        verb = "fails" if " raised " in e.message else "computes something else"
                        why = f"the pruned model {verb}: {e.message[:300]}; those channels are kept"
                        plan.graph.freeze(units, why)
                        fallbacks.append(why)
                        continue
                blamed = self._blamed(self.model, e.module)
                units = self._units_of(plan.graph, self.model, blamed)
                if units is None or not len(units) or len(fallbacks) == _MAX_FALLBACKS:
                    raise GraphError(f"the pruned model fails in {e.module or 'the model' + chr(39) + 's own forward'}: "
                                     f"{e.message}. The model was not changed. Keep those channels with ignore=, or "
                                     "teach pyprune how that module uses its channels (pyprune.register_layer / "
                                     "register_op).") from None
                kind = type(dict(self.model.named_modules()).get(blamed, self.model)).__name__
                why = (f"the pruned model failed in {e.module or 'the forward'} ({kind}: {e.message[:200]}); "
                       f"the channels of every {kind} are kept")
                plan.graph.freeze(units, why)
                fallbacks.append(why)
                continue
            res.seconds["plan"] = t2 - t1
            res.seconds["first_plans"] = t1 - t0
            for why in fallbacks:
                warnings.warn(f"pyprune: {why} and the model was pruned again. Teach pyprune "
                              "how that module uses its channel counts (pyprune.register_layer / register_op) to "
                              "prune it.", stacklevel=3)
            if all(v is None for v in targets.values()):  # a ratio (or the default one), not a budget, was asked
                _warn_shortfall(res, self.config.round_to)
            return res

    @staticmethod
    def _blamed(model: nn.Module, module: str) -> str:
        """The module whose code is at fault when the pruned model fails in `module`: a
        layer of one of torch's own types that pyprune handles (nn.Linear, nn.Conv2d, ...)
        does what pyprune expects of it, so the input its parent's code gave it is (an
        attention block's projection: the block, not every Linear of the model)."""
        m = dict(model.named_modules()).get(module) if module else None
        return module.rpartition(".")[0] if m is not None and type(m) in LAYERS and "." in module else module

    @staticmethod
    def _units_of(graph: ChannelGraph, model: nn.Module, module: str) -> np.ndarray | None:
        """The units of every tensor in `module` or below it (the nearest enclosing module
        that holds any), and in every other module of its type (the same code fails the same
        way), to keep when the pruned model fails there."""
        mods = dict(model.named_modules())
        while True:
            kind = type(mods[module]) if module in mods and module else None
            roots = [n for n, m in mods.items() if type(m) is kind] if kind is not None else [module]
            units = [m.units for m in graph.members
                     if any(r == "" or m.module == r or m.module.startswith(r + ".") for r in roots)]
            if units:
                return np.unique(np.concatenate(units))
            if not module:
                return None
            module = module.rpartition(".")[0]

    def run(self, ratio: float | str | None = None, *, target_macs=None, target_params=None, max_macs=None, max_params=None,
            target_latency_ms=None, target_speedup=None, iterative_steps: int = 1, finetune: Callable | None = None,
            inplace: bool = False) -> PruneResult:
        """Prune to the target in ``iterative_steps`` rounds; after each round
        ``finetune(model, step)`` (if given) trains the pruned model and may return a
        replacement. The final summary compares against the model as it was at the start;
        the Pruner stays on the model it was given (``result.model`` is the pruned one).
        A latency target is solved once on the model as it is (its latency table), the
        rounds split those widths, and the final model is measured."""
        if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
            raise ValueError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
        if iterative_steps > 1 and ratio == "auto":
            raise ValueError("ratio='auto' picks the cluster counts in one step; use iterative_steps=1")
        targets = dict(target_macs=target_macs, target_params=target_params, max_macs=max_macs,
                       max_params=max_params, target_latency_ms=target_latency_ms, target_speedup=target_speedup)
        given = {k: v for k, v in targets.items() if v is not None}
        budget = _budget(**given)
        if iterative_steps == 1:
            result = self.prune(ratio, inplace=inplace, **targets)
            if finetune is not None:
                result.model = _finetuned(finetune, result.model, 1)
            return result
        ratio = _ratio_or_budget(ratio, budget)
        _check_ratio(ratio, self.method, self.spec.supports_auto)
        original, first_graph = self.model, self._graph()
        before = snapshot(original, first_graph.layers)  # (an in-place first round cuts `original` itself)
        try:
            return self._rounds(ratio, budget, given, iterative_steps, finetune, inplace, first_graph, before)
        finally:
            self.model = original  # the Pruner stays on the model it was given, whatever happened

    def _rounds(self, ratio, budget, given, iterative_steps, finetune, inplace, first_graph, before) -> PruneResult:
        original = self.model
        latency = budget is not None and budget[1] == "latency"
        if latency:  # widths solved once on the original model, split over the rounds
            self.latency_model()
            plan = self.plan(**given)
            lat = self._latency[1]  # the one the plan used (finer widths may have been needed)
            groups = [g for g in first_graph.groups if g.prunable > 0]
            final = {first_graph.producer_name(g.producers()[0]): (g.size, len(plan.keep[g.id])) for g in groups
                     if g.producers()}
            step_targets = [{"keep_by_layer": iterative_keep(final, s, iterative_steps)}
                            for s in range(1, iterative_steps + 1)]
        elif budget is not None:  # the same fraction of the cost removed in every round
            _, kind, value, fraction = budget
            base = CostModel(original, first_graph).base[kind]
            goals = iterative_targets(iterative_steps, base, value * base if fraction else value)
            step_targets = [{f"max_{kind}": g} for g in goals]
        else:  # each round removes an equal share of what the one-shot plan removes
            groups = [g for g in first_graph.groups if g.prunable > 0]
            scores = None
            if schedule_spec(self.config.schedule).needs_scores:
                ranker = criterion_spec(self.spec.rank_with) if self.spec.selects else self.spec
                scores = ranker(groups, self._context(first_graph))
            n_keep = self._counts(groups, float(ratio), scores)
            final = {first_graph.producer_name(g.producers()[0]): (g.size, n_keep[g.id]) for g in groups
                     if g.producers()}
            step_targets = [{"keep_by_layer": iterative_keep(final, s, iterative_steps)}
                            for s in range(1, iterative_steps + 1)]
        steps, plans, result = [], [], None
        for step, targets in enumerate(step_targets, 1):
            r = None if budget is not None else float(ratio) * step / iterative_steps  # refined by the targets
            result = self.prune(r, inplace=inplace or step > 1, **targets)
            self.model = result.model
            steps.append(result.summary)
            plans.append(result.plan)
            if finetune is not None:
                self.model = result.model = _finetuned(finetune, self.model, step)
        result.summary = compare(before, snapshot(self.model, first_graph.layers))
        result.steps, result.plans = steps, plans
        if latency:
            predicted = lat.predict(self._keep_fractions(plan))
            reference, measured = lat.measure_pair(self.model)  # in turns with the unpruned model
            budget_s = _latency_budget_s(lat, budget[2], budget[3])
            result.latency = {"target": str(lat.target), "budget_s": budget_s, "unpruned_measured_s": reference,
                              "predicted_s": predicted, "measured_s": measured}
            if measured > budget_s:
                warnings.warn(f"pyprune: after {iterative_steps} rounds the model measured {1e3 * measured:.3f} ms on "
                              f"{lat.target.runtime}, over the budget of {1e3 * budget_s:.3f} ms (iterative rounds "
                              "are planned once, not re-measured per round).", stacklevel=3)
        return result


def _keep_every_piece(g, keep: np.ndarray, *, pick=None, cost=None, prefer=None) -> tuple[np.ndarray, list]:
    """`keep` (sorted positions in group `g`) with a unit of every piece of the group
    (Group.pieces: a layer writing or reading only part of it) that it would empty, as
    the surgery cannot leave a layer without channels. The piece's unit with the highest
    `pick` (else its first) replaces a kept unit that is not frozen and whose own pieces keep
    others: ``prefer(unit)``'s choice where it is such a unit, else the one of lowest `cost`
    (else the last), so the count stays what the schedule asked; with no such unit it is
    kept in addition. Returns (keep, [(unit kept, unit given up or None)])."""
    pieces = g.pieces()
    kept = np.zeros(g.size, bool)
    kept[keep] = True
    if all(kept[p].any() for p in pieces):
        return keep, []
    holds = np.zeros((len(pieces), g.size), bool)  # piece x position
    for i, p in enumerate(pieces):
        holds[i, p] = True
    swaps = []
    for i in sorted(range(len(pieces)), key=lambda i: len(pieces[i])):  # the smallest first
        p = pieces[i]
        if kept[p].any():
            continue
        u = int(p[np.argmax(pick[p])]) if pick is not None else int(p[0])
        counts = (holds & kept).sum(axis=1)
        spare = kept & ~g.frozen & ~holds[counts < 2].any(axis=0)
        v = prefer(u) if prefer is not None else None
        if v is None or not spare[v]:
            cand = np.flatnonzero(spare)
            v = None
            if len(cand):
                v = int(cand[np.argsort(cost[cand], kind="stable")[0]] if cost is not None else cand[-1])
        if v is not None:
            kept[v] = False
        kept[u] = True
        swaps.append((u, v))
    return np.flatnonzero(kept), swaps


def _keep_at_least(g, keep: np.ndarray, pick=None) -> tuple[np.ndarray, list]:
    """`keep` with the best units by `pick` (else the first) added up to ``g.min_keep``
    (a layer that needs that many to run): (keep, units added)."""
    if len(keep) >= g.min_keep:
        return keep, []
    rest = np.setdiff1d(np.arange(g.size), keep)
    order = np.argsort(-pick[rest], kind="stable") if pick is not None else np.arange(len(rest))
    added = [int(u) for u in rest[order[:g.min_keep - len(keep)]]]
    return np.union1d(keep, added), added


def _reassign_clusters(labels: np.ndarray, reps: np.ndarray, swaps: list) -> tuple[np.ndarray, np.ndarray]:
    """The clusters after _keep_every_piece's swaps, every one with a kept representative:
    a unit kept in place of its own cluster's representative stands for that cluster; any
    other kept unit becomes a cluster of its own, and the clusters whose representative was
    given up lose their members (labels -1: dropped without a merge)."""
    labels, reps = labels.copy(), reps.copy()
    for u, v in swaps:
        c = labels[u]
        if v is not None and c >= 0 and reps[c] == v:
            reps[c] = u
            continue
        if v is not None and labels[v] >= 0:
            labels[labels == labels[v]] = -1
        labels[u] = len(reps)
        reps = np.append(reps, u)
    return labels, reps


def _latency_budget_s(lat, value: float, speedup: bool) -> float:
    """A latency budget in seconds: ``target_speedup`` over the measured unpruned model, or
    ``target_latency_ms``."""
    return lat.measured_full / value if speedup else value / 1e3


# latency_weight -> the compute shares tried for a channel's worth (see _solve_weighted)
LATENCY_WEIGHTS = {"balanced": tuple(i / 40 for i in range(40, 19, -1)) + (0.4, 0.3, 0.2, 0.1, 0.0),
                   "macs": (1.0,), "params": (0.0,)}
# a model measured under LATENCY_CLOSE of its latency budget is planned again, aiming at
# LATENCY_AIM of it (a margin for the machine's noise between two measurements)
LATENCY_CLOSE, LATENCY_AIM = 0.95, 0.98
# a summary says so where the unpruned model's time moved more than this between the
# measurement the predictions were scaled by and the last one (the machine's speed drifts:
# a 3-5% spread over minutes on a shared 2-core machine, steps up to 9-14% between two
# timings half a minute apart, however long each lasts)
DRIFT_NOTED = 0.05
# finer channel multiples are not tried where even cutting every group to its floor at any
# width is predicted above this many times the goal (a finer table costs measurements; the
# table misses a plan by up to about 20%, more where the floor lies below its measured widths)
FLOOR_MARGIN = 2.0
# a budget the runtime's channel multiple cannot reach is solved at finer ones; the plan at
# the next finer one is compared too, down to this one (below it odd-width kernel paths make
# the tables' interpolation unreliable: resnet56_cifar on onnxruntime at multiples of 1 was
# predicted at 0.40 of the unpruned model and measured at 0.68)
FINEST_COMPARED_ALIGN = 4


def _solve_weighted(lat, groups, scores, goal: float, cfg: PruneConfig, fixed: dict) -> tuple[dict, float, tuple]:
    """(keep counts, compute share, key) of the latency solve under ``cfg.latency_weight``
    (key: the smaller and the sum of the MACs and parameters shares kept, rounded).

    The solver weights each group's normalised scores by what one of its channels carries:
    ``a`` times its MACs plus ``1 - a`` times its parameters (each relative to the mean over
    groups). MACs alone (a = 1) cut the wide late layers that hold most weights wherever the
    runtime is slow for their MACs; parameters alone do the reverse. "balanced" solves for
    every ``a`` of the grid and keeps the plan whose smaller share, of the MACs or of the
    parameters kept, is largest (then the larger sum, then the larger ``a``): the budget is
    spent where the runtime is slow without giving up either the compute or the weights.
    Raises the solver's ValueError when the goal is out of reach (the weights order the
    cuts, not how far they can go: the first solve tells)."""
    macs, params = _cost_per_unit(lat.cost, groups), _cost_per_unit(lat.cost, groups, "params")
    base = lat.cost.base
    best = None
    for a in LATENCY_WEIGHTS[cfg.latency_weight]:
        weights = {gid: a * macs[gid] + (1.0 - a) * params[gid] for gid in macs}
        try:
            n_keep = lat.solve(groups, scores, goal, round_to=cfg.round_to, min_keep=cfg.min_keep, fixed=fixed,
                               weights=weights)
        except ValueError:
            if best is None:  # out of reach: every other weight would take as long to say so
                raise
            continue
        kept = lat.cost(n_keep)
        shares = [kept[k] / base[k] if base[k] > 0 else 1.0 for k in ("macs", "params")]
        key = (round(min(shares), 6), round(sum(shares), 6))
        if best is None or key > best[0]:
            best = (key, n_keep, a)
    return best[1], best[2], best[0]


def _cost_per_unit(cost: CostModel, groups, kind: str = "macs") -> dict[int, float]:
    """Group id -> the `kind` of cost (MACs by default, or e.g. "params") one of its channels
    carries at full width, relative to the mean over groups (floored at 1% of it, so a group
    without any still counts)."""
    base = cost.base[kind]
    per = {g.id: (base - cost({g.id: g.size - 1})[kind]) for g in groups}
    mean = float(np.mean(list(per.values()))) if per else 1.0
    if mean <= 0:
        return {gid: 1.0 for gid in per}
    return {gid: max(v / mean, 0.01) for gid, v in per.items()}


class PrunedModelFails(GraphError):
    """The model cut as planned did not run (raised by :meth:`Pruner.apply` with verify;
    `model` is unchanged)."""

    def __init__(self, module: str, message: str, call: int | None = None):
        super().__init__(f"the pruned model fails in {module or 'the model' + chr(39) + 's own forward'}: {message}. "
                         "The model was not changed.")
        self.module, self.message = module, message
        self.call = call  # the index in the graph's op_log of a call that gave another shape
        self.tentative_tried = False  # the tentative cuts near it were dropped, and it failed the same way


def _same_failure(e: PrunedModelFails, failure: tuple) -> bool:
    """Whether `e` is the failure `failure` (module, message, call) again: the same call of
    the model's code, or where none is known the same message in the same module (the
    shapes in a message change with the cut)."""
    module, message, call = failure
    return e.module == module and (e.call == call if call is not None or e.call is not None else e.message == message)


_MAX_FALLBACKS = 4


def _held_why(g) -> str:
    """Why a group with channel blocks keeps more than its schedule asked."""
    if g.step:
        floor = "; a part of it is kept whole, so all of it is" if g.step_floor() >= g.step else ""
        return (f"; {'heads sized from its width link' if g.link_kind == 'heads' else 'grouped convs link'} it "
                f"to {len(g.linked) - 1} other group(s): they are cut in steps of 1/{g.step} together, and not at all "
                f"where one of them keeps its channels{floor}") if len(g.linked) > 1 else \
            f"; grouped convs that tile it differently cut it in steps of 1/{g.step}{floor}"
    return "; blocks of a grouped layer keep one each at least" if g.blocks is not None else ""


def _warn_shortfall(res: PruneResult, round_to: int | None = None) -> None:
    """Warn when far fewer channels were removed than the ratio asked, or under three
    quarters of the parameters that cutting that share of every layer's inputs and outputs
    removes (1 - (1 - ratio)^2: channels kept whole may be few and hold most of the
    weights; at ratio 0.5, under 56% where 75% was the aim), naming the largest groups that
    kept channels and why."""
    ratio = res.plan.ratio  # the ratio planned with (NaN for ratio="auto")
    if not ratio > 0:
        return
    graph, kept = res.plan.graph, {gid: after for gid, (_, after) in res.plan.widths().items()}
    total = removed = 0
    kept_back, outputs = [], []
    for g in graph.groups:
        if g.size < 2:
            continue  # one channel: no ratio cuts it
        reasons = graph.kept_reasons(g)
        if g.frozen.all() and graph.frozen_reasons.get(g.id) and all(r.startswith("ignore=") for r in reasons):
            why = graph.frozen_reasons[g.id]
            if not reasons and "network output" in why and "network input" not in why:
                outputs.append(g)  # (an input's channels passed through could not be cut anyway)
            continue  # what the user or the network's inputs and outputs fix
        total += g.size
        removed += g.size - kept[g.id]
        if g.frozen.any():
            kept_back.append((int(g.frozen.sum()), g, reasons))
    params_removed = 1.0 - res.summary.params_ratio
    few_params = params_removed < 0.75 * (1.0 - (1.0 - ratio) ** 2)
    few_channels = removed < 0.8 * ratio * total
    outputs.sort(key=lambda g: -g.size)
    out_total = sum(g.size for g in outputs)

    def warn_outputs() -> None:
        shown = ", ".join(f"{g.name} ({g.size})" for g in outputs[:5]) + (" ..." if len(outputs) > 5 else "")
        warnings.warn(f"pyprune: asked to remove {ratio:.0%} of the channels; {out_total} channels are the model's "
                      f"outputs and keep their widths: {shown}"
                      + (f", and {removed / total:.0%} of the other {total} were removed" if total else
                         ", and no other channel could be cut")
                      + f" ({params_removed:.0%} of the parameters). What reads a returned feature map expects "
                        "its width: to cut it, prune one module that holds both (backbone and head).",
                      stacklevel=4)

    read_on = any(m.role == "in" for g in outputs for m in g.members)  # returned maps its own layers read
    if read_on and out_total > total:  # most channels are what the model returns (a backbone's feature
        warn_outputs()  # maps; a classifier's logits are far fewer than its other channels)
        return
    if not total or not (few_channels or few_params):
        return
    head = (f"pyprune: asked to remove {ratio:.0%} of the channels, removed {removed / total:.0%} "
            f"(and {params_removed:.0%} of the parameters). ")
    asked = res.plan.asked
    held = sorted(((kept[g.id] - asked[g.id], g) for g in graph.groups
                   if g.id in asked and kept[g.id] > asked[g.id]), key=lambda t: -t[0])
    above = "; ".join(f"{g.name} (kept {kept[g.id]} of {g.size}, the schedule asked {asked[g.id]}{_held_why(g)})"
                      for _, g in held[:5])
    if kept_back:
        kept_back.sort(key=lambda t: -t[0])
        shown = "; ".join(f"{g.name} ({n} channels: {', '.join(r[:2]) or 'frozen'})" for n, g, r in kept_back[:5])
        more = ""
        if held and held[0][0] > kept_back[0][0]:  # (more held above the schedule than kept whole)
            more = f" Kept above what the schedule asked: {above}."
        warnings.warn(head + f"Kept whole: {shown}.{more} See PruneResult.frozen() for every group.", stacklevel=3)
    elif few_channels and held:  # nothing kept whole, yet channels short: groups held above what was asked
        warnings.warn(head + f"Kept above what the schedule asked: {above}.", stacklevel=3)
    elif few_channels and round_to and round_to > 1:  # the schedule's counts, rounded to multiples
        unrounded = {g.id: keep_for_ratio(g, ratio, None) for g in graph.groups if g.id in kept and g.prunable > 0}
        over = sorted(((kept[g] - n, graph.groups[g]) for g, n in unrounded.items() if kept[g] > n),
                      key=lambda t: -t[0])
        if over:
            shown = "; ".join(f"{g.name} (kept {kept[g.id]} of {g.size})" for _, g in over[:5])
            warnings.warn(head + f"round_to={round_to} rounds each group's count to a multiple of {round_to}, "
                          f"and {len(over)} group(s) keep more than the ratio asks: {shown}"
                          f"{' ...' if len(over) > 5 else ''}. A smaller round_to cuts closer to the ratio.",
                          stacklevel=3)
    elif few_params and read_on and out_total >= 0.25 * total:  # parameters short, and many returned
        warn_outputs()  # channels are maps its own layers read on (a backbone's stages, not a classifier's logits)
    # (else the schedule's own choice)


def prune(
    model: nn.Module,
    example_inputs,
    *,
    method: str = "kmeans",
    ratio: float | str | None = None,
    schedule: str = "uniform",
    round_to: int | None = None,
    ignore=(),
    layer_ratios: dict | None = None,
    calibration=None,
    inplace: bool = False,
    target_macs: float | None = None,
    target_params: float | None = None,
    max_macs: int | None = None,
    max_params: int | None = None,
    target_latency_ms: float | None = None,
    target_speedup: float | None = None,
    runtime: str = "onnxruntime",
    batch_size: int = 1,
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
    ratio: fraction of channels removed, in [0, 1) (0.5 where neither it nor a budget is
        given); with kmeans also ``"auto"`` (each group keeps the cluster count chosen by
        the elbow rule). A ratio and a budget together are refused.
    schedule: ``uniform``, ``global`` (rank all channels together, normalised per group,
        keeping at least ``min_keep`` of each group) or ``taper`` (deeper layers lose more;
        strength ``taper``, 0 = uniform).
    round_to: keep channel counts at multiples of this (8 suits most CPU kernels).
    ignore: module names, glob patterns or modules whose output channels stay.
    layer_ratios: {layer name or pattern: ratio} overriding the schedule for those layers.
    calibration: a DataLoader or list of batches (tensors, or (inputs, labels) pairs) for
        the data-driven criteria (``calibration_batches=`` limits how many are used).
    target_macs / target_params: instead of ``ratio``, a budget as a fraction in (0, 1] of
        the model's MACs / parameters; max_macs / max_params: the same as an absolute
        count. The schedule's ratio is solved for.
    target_latency_ms / target_speedup: instead of ``ratio``, a latency budget per batch on
        ``runtime`` (``onnxruntime``, ``executorch`` or ``eager``) at ``threads`` (default 1)
        and ``batch_size``, in milliseconds or as a speedup over the measured unpruned
        model. Each Conv2d/Linear is measured there at a few widths (cached on disk, see
        :mod:`pyprune.latency`); widths per group keep the most of the criterion's scores,
        each channel's weighted by what it carries (``latency_weight``: ``"macs"``,
        ``"params"``, or ``"balanced"`` (default), the mix of the two whose plan keeps the
        largest share of both), under the predicted budget; the pruned model is measured
        and, if it misses or comes in well under, planned again with the table's measured
        error (``latency_rounds``); the least cut model within budget is kept.
        ``result.latency`` holds budget, prediction, measurement, the weight used, every
        round and per-layer times.
    merge: fold dropped filters into their cluster's kept filter (default: on for methods
        that merge, i.e. kmeans).
    iterative_steps, finetune: reach the target in several prune -> ``finetune(model, step)``
        rounds.
    inplace: ``False`` (default) returns a pruned copy and leaves `model` untouched;
        ``True`` prunes `model` itself.
    strict: an op the tracer does not understand raises :class:`GraphError` naming the
        module and op (the model is untouched); ``strict=False`` keeps those channels.
    options: the method's own options (``kmeans_iter`` for kmeans, ``stat`` for
        activation) and the rest of :class:`PruneConfig`; anything else raises ``TypeError``.
    """
    pruner = Pruner(model, example_inputs, method=method, schedule=schedule, taper=taper, round_to=round_to,
                    ignore=ignore, layer_ratios=layer_ratios, calibration=calibration, merge=merge, seed=seed,
                    threads=threads, strict=strict, example_kwargs=example_kwargs, runtime=runtime,
                    batch_size=batch_size, **options)
    t0 = time.perf_counter()
    res = pruner.run(ratio, target_macs=target_macs, target_params=target_params, max_macs=max_macs,
                     max_params=max_params, target_latency_ms=target_latency_ms, target_speedup=target_speedup,
                     iterative_steps=iterative_steps, finetune=finetune, inplace=inplace)
    res.seconds["total"] = time.perf_counter() - t0
    return res
