"""Clustering criteria: spherical k-means over filter directions, one unit kept per cluster."""
from __future__ import annotations

import os
import sys
import warnings

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


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_stacklevel() -> int:
    """The stacklevel of a warning raised here that points at the first caller outside
    pyprune (the user's line), however deep the call came in."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        level, frame = level + 1, frame.f_back
    return level  # the outermost frame when every one is pyprune's


# How far below the chord (scaled axes) the knee of a group's distortion curve must lie for
# ratio="auto" to take it as an elbow. Planted clusters (noisy copies of a few prototypes)
# give 0.6-0.63 at a noise of a tenth of their norm, 0.34-0.45 at a quarter and 0.17-0.27 at
# half of it. Filters with no cluster structure give 0-0.03 in the trained digits CNN and, over
# 28 timm models with random weights, 0-0.07 in plain convs and up to 0.128 in the wide
# expansion groups of inverted residuals (each channel's filter there is the 1x1 conv's row
# beside the depthwise conv's few weights, which dominate its direction). Taking those knees
# removed 94-99.7% of the parameters.
AUTO_MIN_KNEE_DEPTH = 0.15


def auto_cluster_counts(groups, ctx) -> dict:
    """``ratio="auto"``: per group the cluster count at the knee of the k-means distortion
    curve (:func:`pyprune.engine.choose_k`). Groups it cannot decide, and groups whose curve
    has no elbow (a knee shallower than ``AUTO_MIN_KNEE_DEPTH``: no cluster structure to
    prune by), keep everything; the latter are named in a warning."""
    out = {g.id: g.size for g in groups}
    jobs, cands, picked = [], [], []
    for g in groups:
        if not _clusterable(g) or g.size < 4:
            continue
        # every K up to 32, then a geometric grid up to the group size
        ks = set(range(1, min(g.size, 32) + 1))
        if g.size > 32:
            ks |= {int(round(v)) for v in np.geomspace(32, g.size, 16)}
        jobs.append(ctx.filters(g))
        cands.append(sorted(ks))
        picked.append(g)
    if not jobs:
        return out
    flat = []
    chosen = engine.choose_k(jobs, cands, seed=ctx.seed, threads=ctx.threads, min_depth=AUTO_MIN_KNEE_DEPTH)
    for g, ks, k in zip(picked, cands, chosen):
        out[g.id] = int(k)
        if k == ks[-1]:  # the largest candidate is never a knee: no elbow
            flat.append(g)
    if flat:
        names = ", ".join(g.name for g in flat[:5]) + (", ..." if len(flat) > 5 else "")
        warnings.warn(f"pyprune: ratio='auto' found no elbow in the k-means distortion curve of {len(flat)} of "
                      f"{len(picked)} groups ({names}): their filters show no cluster structure to prune by, so "
                      f"they are kept whole. Give a numeric ratio (e.g. 0.5) to prune them by a count.",
                      stacklevel=_user_stacklevel())
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
                labels[pos] = r.labels.cpu().numpy() + sum(len(x) for x in reps)
                reps.append(pos[r.representatives.cpu().numpy()])
                for a, v in zip(stats, (r.norms, r.rep_cosines, r.rep_residuals)):
                    a[pos] = v.cpu().numpy()
            reps = np.concatenate(reps)
            out[i] = Selection(np.sort(reps), labels, reps, *stats, max(r.n_iter for _, r in rs))
    return out
