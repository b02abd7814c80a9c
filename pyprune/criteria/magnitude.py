"""Criteria from the weights alone: filter norms, geometric median, BN scale, random."""
from __future__ import annotations

import numpy as np

from .. import engine
from ._registry import Context, register_criterion


def norm_scores(groups, ctx: Context, p: int) -> list:
    """Per unit: the Lp norm of all its producer filters together (one core call)."""
    graph = ctx.graph
    prods = {}
    for g in groups:
        for m in g.producers():
            prods[(m.module, m.param)] = m
    members = list(prods.values())
    total = np.zeros(graph.n_units)
    if members:
        norms = engine.filter_norms([ctx.rows(m) for m in members], p, threads=ctx.threads)
        for m, nv in zip(members, norms):
            np.add.at(total, m.units, nv.double().cpu().numpy() ** p)
    return [total[g.units] ** (1.0 / p) for g in groups]


@register_criterion("l1", batched=True)
def l1(groups, ctx):
    """L1 norm of each channel's filters (Li et al., 2017)."""
    return norm_scores(groups, ctx, 1)


@register_criterion("l2", batched=True)
def l2(groups, ctx):
    """L2 norm of each channel's filters."""
    return norm_scores(groups, ctx, 2)


@register_criterion("random", batched=True, reads_weights=False)
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
        out.append(engine.fpgm_scores(ctx.filters(g), threads=ctx.threads).double().cpu().numpy())
    return out


@register_criterion("bn_scale", batched=True)
def bn_scale(groups, ctx):
    """Network slimming: |gamma| of the BatchNorm that follows each channel (summed over
    coupled BNs); groups without a BN fall back to the L2 filter norm."""
    total = np.zeros(ctx.graph.n_units)
    has = np.zeros(ctx.graph.n_units, bool)
    for m in ctx.graph.members:
        if m.role == "bn" and m.param == "weight":
            np.add.at(total, m.units, ctx.tensor(m.module, m.param).abs().double().cpu().numpy())
            has[m.units] = True
    fallback = norm_scores(groups, ctx, 2)
    return [total[g.units] if has[g.units].all() else fb for g, fb in zip(groups, fallback)]
