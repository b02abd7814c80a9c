"""Channel criteria: score (or cluster) every group's units; higher score = keep.

A criterion is registered by name with :func:`register_criterion`. Built-ins score all
groups of a model in one batched call into the C++ core. A user criterion is a function
``(group, context) -> scores`` (one float per unit of the group, higher = more important):

    @pyprune.register_criterion("my_l1")
    def my_l1(group, ctx):
        return ctx.filters(group).abs().sum(1)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import engine
from ..graph import ChannelGraph, Group

__all__ = ["Context", "register_criterion", "get_criterion", "available_criteria", "CRITERIA"]


@dataclass
class Context:
    """What a criterion may look at: the model, its graph, the units to keep per group."""

    model: nn.Module
    graph: ChannelGraph
    n_keep: dict = field(default_factory=dict)  # group id -> units to keep
    seed: int = 0
    threads: int | None = None
    calibration: object = None
    options: dict = field(default_factory=dict)
    _modules: dict | None = None

    def tensor(self, module: str, param: str) -> torch.Tensor:
        if self._modules is None:
            self._modules = dict(self.model.named_modules())
        return getattr(self._modules[module], param).detach()

    def filters(self, group: Group) -> torch.Tensor:
        """The group's filters as a (units, features) float32 matrix: for every unit the
        weights of each producer (conv/Linear output rows) that writes it, concatenated.
        A group with one producer is returned without a copy."""
        prods = [m for m in group.producers()]
        pos_in_group = [np.searchsorted(group.units, m.units) for m in prods]
        mask = [(p < group.size) & (group.units[np.minimum(p, group.size - 1)] == m.units) for p, m in zip(pos_in_group, prods)]
        if len(prods) == 1 and mask[0].all() and np.array_equal(pos_in_group[0], np.arange(group.size)):
            w = self.tensor(prods[0].module, prods[0].param)
            return w.reshape(w.shape[0], -1).float()
        widths = [int(np.prod(self.tensor(m.module, m.param).shape[1:])) for m in prods]
        out = torch.zeros(group.size, max(1, sum(widths)))
        off = 0
        for m, p, ok, wd in zip(prods, pos_in_group, mask, widths):
            w = self.tensor(m.module, m.param).reshape(len(m.units), -1).float()
            rows = torch.from_numpy(np.flatnonzero(ok))
            out[torch.from_numpy(p[ok]), off : off + wd] = w[rows]
            off += wd
        return out


Criterion = Callable[[list, Context], list]
CRITERIA: dict[str, tuple[Callable, bool]] = {}


def register_criterion(name: str, fn: Callable | None = None, *, batched: bool = False):
    """Register `fn` under `name` (usable as ``prune(method=name)``). A plain criterion is
    ``fn(group, ctx) -> scores``; ``batched=True`` means ``fn(groups, ctx) -> [scores]``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"criterion name must be a non-empty string, got {name!r}")

    def deco(f):
        if not callable(f):
            raise TypeError(f"criterion {name!r}: expected a callable, got {type(f).__name__}")
        CRITERIA[name] = (f, batched)
        return f

    return deco(fn) if fn is not None else deco


def available_criteria() -> list[str]:
    return sorted(CRITERIA)


def get_criterion(name: str) -> Callable[[list, Context], list]:
    if name not in CRITERIA:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_criteria())}")
    fn, batched = CRITERIA[name]
    if batched:
        return fn

    def per_group(groups, ctx):
        out = []
        for g in groups:
            s = fn(g, ctx)
            s = np.asarray(s.detach().cpu().double() if isinstance(s, torch.Tensor) else s, dtype=np.float64)
            if s.shape != (g.size,):
                raise ValueError(f"criterion {name!r} returned shape {s.shape} for group {g.id} with {g.size} units")
            out.append(s)
        return out

    return per_group


# -- built-ins ------------------------------------------------------------------------------
def _norm_scores(groups, ctx: Context, p: int) -> list:
    """Per unit: the Lp norm of all its producer filters together (one core call)."""
    graph = ctx.graph
    prods = {}
    for g in groups:
        for m in g.producers():
            prods[(m.module, m.param)] = m
    members = list(prods.values())
    total = np.zeros(graph.n_units)
    if members:
        norms = engine.filter_norms([ctx.tensor(m.module, m.param) for m in members], p, threads=ctx.threads)
        for m, nv in zip(members, norms):
            np.add.at(total, m.units, nv.double().numpy() ** p)
    return [total[g.units] ** (1.0 / p) for g in groups]


@register_criterion("l1", batched=True)
def l1(groups, ctx):
    """L1 norm of each channel's filters (Li et al., 2017)."""
    return _norm_scores(groups, ctx, 1)


@register_criterion("l2", batched=True)
def l2(groups, ctx):
    """L2 norm of each channel's filters."""
    return _norm_scores(groups, ctx, 2)


@register_criterion("random", batched=True)
def random_(groups, ctx):
    """Random scores (seeded): the honest baseline."""
    rng = np.random.default_rng(ctx.seed)
    return [rng.random(g.size) for g in groups]


@register_criterion("fpgm", batched=True)
def fpgm(groups, ctx):
    """Geometric median (He et al., 2019): a filter close to all others (small summed
    distance, on the signed weights) is the most replaceable."""
    out = []
    for g in groups:
        if g.size < 2 or not g.producers():
            out.append(np.zeros(g.size))
            continue
        out.append(engine.fpgm_scores(ctx.filters(g), threads=ctx.threads).double().numpy())
    return out


@register_criterion("bn_scale", batched=True)
def bn_scale(groups, ctx):
    """Network slimming: |gamma| of the BatchNorm that follows each channel (summed over
    coupled BNs); groups without a BN fall back to the L2 filter norm."""
    total = np.zeros(ctx.graph.n_units)
    has = np.zeros(ctx.graph.n_units, bool)
    for m in ctx.graph.members:
        if m.role == "bn" and m.param == "weight":
            np.add.at(total, m.units, ctx.tensor(m.module, m.param).abs().double().numpy())
            has[m.units] = True
    fallback = _norm_scores(groups, ctx, 2)
    return [total[g.units] if has[g.units].all() else fb for g, fb in zip(groups, fallback)]


@register_criterion("kmeans", batched=True)
def kmeans(groups, ctx):
    """Spherical k-means over filter directions, K = units to keep per group: the cluster
    representatives (the member closest to each centroid) get the top scores, so the
    schedule keeps exactly them; the others are ranked by their cosine to their centroid
    (most redundant last). Groups with frozen units are ranked by L2 norm."""
    scores = _norm_scores(groups, ctx, 2)
    jobs, ks, where = [], [], []
    for i, g in enumerate(groups):
        k = ctx.n_keep.get(g.id, g.size)
        if k >= g.size or k < 1 or g.frozen.any() or not g.producers():
            continue
        jobs.append(ctx.filters(g))
        ks.append(int(k))
        where.append(i)
    if jobs:
        res = engine.spherical_kmeans(jobs, ks, seed=ctx.seed, threads=ctx.threads,
                                      max_iter=int(ctx.options.get("kmeans_iter", 100)))
        for i, x, r in zip(where, jobs, res):
            xn = torch.nn.functional.normalize(x.float(), dim=1)
            cos = (xn * r.centroids[r.labels]).sum(1).double().numpy()
            s = cos - 3.0  # members: below every representative
            s[r.representatives.numpy()] = 3.0 + cos[r.representatives.numpy()]
            scores[i] = s
            ctx.options.setdefault("kmeans_results", {})[groups[i].id] = (r, x)  # for weight merging
    return scores


# -- data-driven criteria -------------------------------------------------------------------
def iter_batches(calibration, limit: int | None = None):
    """Yield (inputs tuple, labels or None) from a DataLoader / iterable of batches. A batch
    is a tensor (inputs only), or a (inputs, labels) pair whose inputs are a tensor or a
    tuple of tensors."""
    if calibration is None:
        raise ValueError("this method needs calibration data: pass calibration=<DataLoader or list of batches>")
    n = 0
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            yield (batch,), None
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
            yield (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y
        else:
            raise ValueError("calibration: each batch must be a tensor or an (inputs, labels) pair")
        n += 1
        if limit is not None and n >= limit:
            return
    if n == 0:
        raise ValueError("calibration: no batches")


def _activation_stats(groups, ctx: Context, stat: str) -> list:
    """Per unit, a statistic of the feature maps the next layers read (post-activation)."""
    graph, model = ctx.graph, ctx.model
    consumers: dict[str, list] = {}
    for m in graph.members:
        if m.role == "in":
            consumers.setdefault(m.module, []).append(m)
    total = np.zeros(graph.n_units)
    count = np.zeros(graph.n_units)
    mods = dict(model.named_modules())
    hooks = []

    def make_hook(members):
        def hook(mod, inputs):
            x = inputs[0].detach().float()
            if x.dim() >= 3:  # conv input (N, C, *spatial)
                fmap = x.transpose(0, 1).reshape(x.shape[1], x.shape[0], -1)  # C, N, HW
            else:  # Linear input (N, F): each position is one feature of its unit
                fmap = x.transpose(0, 1).reshape(x.shape[-1], x.shape[0], 1)
            if stat == "mean":
                v = fmap.abs().mean(dim=(1, 2))
            elif stat == "apoz":
                v = 1.0 - (fmap == 0).float().mean(dim=(1, 2))  # keep channels that fire
            elif x.dim() == 4:  # HRank: average rank of each channel's feature map
                v = torch.linalg.matrix_rank(x.transpose(0, 1)).float().mean(1)
            else:
                return
            v = v.double().numpy()
            for m in members:
                np.add.at(total, m.units, v)
                np.add.at(count, m.units, 1.0)
        return hook

    for name, members in consumers.items():
        hooks.append(mods[name].register_forward_pre_hook(make_hook(members)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _ in iter_batches(ctx.calibration, ctx.options.get("calibration_batches")):
                model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = []
    for g in groups:
        c = count[g.units]
        s = np.where(c > 0, total[g.units] / np.maximum(c, 1), np.nan)
        fill = np.nanmedian(s) if np.isfinite(s).any() else 0.0
        out.append(np.where(np.isnan(s), fill, s))
    return out


@register_criterion("activation", batched=True)
def activation(groups, ctx):
    """Feature-map criterion from calibration batches: mean |activation| each channel
    feeds the next layers (option ``stat``: ``mean``, ``apoz`` or ``rank``)."""
    return _activation_stats(groups, ctx, ctx.options.get("stat", "mean"))


@register_criterion("apoz", batched=True)
def apoz(groups, ctx):
    """Average percentage of zeros (Hu et al., 2016): channels that are mostly zero after
    the activation go first (score = 1 - APoZ)."""
    return _activation_stats(groups, ctx, "apoz")


@register_criterion("hrank", batched=True)
def hrank(groups, ctx):
    """HRank (Lin et al., 2020): the average rank of each channel's feature maps; low-rank
    maps carry little information."""
    return _activation_stats(groups, ctx, "rank")


@register_criterion("taylor", batched=True)
def taylor(groups, ctx):
    """First-order Taylor (Molchanov et al., 2019): per calibration batch, the change of
    the loss from removing a channel is estimated as sum(w * dL/dw) over its filters,
    biases and BN affine parameters; the score is the mean over batches of its square.
    (The gradient of a trained model averages to almost zero over batches, so the
    per-batch squares, not the square of the sum, carry the signal.)"""
    model = ctx.model
    graph = ctx.graph
    params = dict(model.named_parameters())
    wanted = {}
    for m in graph.members:
        if m.role in ("out", "bias") or (m.role == "bn" and m.param in ("weight", "bias")):
            key = f"{m.module}.{m.param}" if m.module else m.param
            if key in params:
                wanted[key] = m
    total = np.zeros(graph.n_units)
    n_batches = 0
    was = model.training
    model.eval()
    saved = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for inputs, labels in iter_batches(ctx.calibration, ctx.options.get("calibration_batches")):
                if labels is None:
                    raise ValueError("taylor needs labelled calibration batches: (inputs, labels) pairs")
                for p in params.values():
                    p.grad = None
                loss = torch.nn.functional.cross_entropy(model(*inputs), labels)
                loss.backward()
                contrib = np.zeros(graph.n_units)
                for k, m in wanted.items():
                    g = params[k].grad
                    if g is None:
                        continue
                    wg = (params[k].detach() * g).reshape(params[k].shape[0], -1).sum(1).double().numpy()
                    np.add.at(contrib, m.units, wg)
                total += contrib**2
                n_batches += 1
    finally:
        for k, p in params.items():
            p.grad = None
            p.requires_grad_(saved[k])
        model.train(was)
    total /= max(1, n_batches)
    return [total[g.units] for g in groups]
