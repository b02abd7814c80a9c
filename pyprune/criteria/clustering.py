"""Clustering criteria: spherical k-means over filter directions, one unit kept per cluster."""
from __future__ import annotations

import numpy as np
import torch

from .. import engine
from ._registry import Selection, block_jobs, register_criterion
from .magnitude import norm_scores


def _clusterable(g, k: int | None = None) -> bool:
    """A group k-means can decide: free of frozen units, written by filters, and (when k
    is given) asked to drop something."""
    if g.frozen.any() or not g.producers():
        return False
    return k is None or 1 <= k < g.size


def auto_cluster_counts(groups, ctx) -> dict:
    """``ratio="auto"``: per group the cluster count at the knee of the k-means distortion
    curve (:func:`pyprune.engine.choose_k`); groups it cannot decide keep everything."""
    out = {g.id: g.size for g in groups}
    jobs, cands, ids = [], [], []
    for g in groups:
        if not _clusterable(g) or g.size < 4:
            continue
        # every K up to 32, then a geometric grid up to the group size
        ks = set(range(1, min(g.size, 32) + 1))
        if g.size > 32:
            ks |= {int(round(v)) for v in np.geomspace(32, g.size, 16)}
        jobs.append(ctx.filters(g))
        cands.append(sorted(ks))
        ids.append(g.id)
    if jobs:
        for gid, k in zip(ids, engine.choose_k(jobs, cands, seed=ctx.seed, threads=ctx.threads)):
            out[gid] = int(k)
    return out


@register_criterion("kmeans", batched=True, selects=True, merges=True, auto_keep=auto_cluster_counts,
                    rank_with="l2", options=("kmeans_iter",))
def kmeans(groups, ctx):
    """Spherical k-means over filter directions, K = units to keep per group; per cluster
    the member closest to its centroid is kept (a Selection with the clusters, so dropped
    filters can be merged into their representative). Groups k-means cannot decide (frozen
    units, no filters) are ranked by L2 norm."""
    out: list = [None] * len(groups)
    jobs, ks, where = [], [], []  # one clustering per group, or per block of a group with blocks
    for i, g in enumerate(groups):
        k = int(ctx.n_keep.get(g.id, g.size))
        if not _clusterable(g, k):
            continue
        f = ctx.filters(g, columns=True)
        for pos, kb in block_jobs(g, k):
            if kb < 1:
                continue
            if len(pos) == g.size:
                jobs.append(f)
            else:
                idx = torch.as_tensor(pos)
                jobs.append(f.take(idx) if isinstance(f, engine.Columns) else f[idx])
            ks.append(kb)
            where.append((i, pos))
    clustered = {i for i, _ in where}
    ranked = [i for i in range(len(groups)) if i not in clustered]  # by L2 norm
    if ranked:
        for i, sc in zip(ranked, norm_scores([groups[i] for i in ranked], ctx, 2)):
            out[i] = sc
    if jobs:
        res = engine.spherical_kmeans(jobs, ks, seed=ctx.seed, threads=ctx.threads,
                                      max_iter=int(ctx.options.get("kmeans_iter", 100)))
        parts: dict = {}
        for (i, pos), r in zip(where, res):
            parts.setdefault(i, []).append((pos, r))
        for i, rs in parts.items():
            g = groups[i]
            labels = np.full(g.size, -1, np.int64)  # -1: dropped without a cluster (a block keeping nothing)
            reps, stats = [], [np.zeros(g.size, np.float32) for _ in range(3)]
            for pos, r in rs:
                labels[pos] = r.labels.numpy() + sum(len(x) for x in reps)
                reps.append(pos[r.representatives.numpy()])
                for a, v in zip(stats, (r.norms, r.rep_cosines, r.rep_residuals)):
                    a[pos] = v.numpy()
            reps = np.concatenate(reps)
            out[i] = Selection(np.sort(reps), labels, reps, *stats, max(r.n_iter for _, r in rs))
    return out
