"""Weight merging for k-means pruning: fold each dropped filter's outgoing contribution
into the filter kept for its cluster.

If filter j is a positive multiple of the kept filter r (w_j = a * w_r, b_j = a * b_r) and
the path to the next layer is positively homogeneous (conv -> ReLU -> (max/avg pool) -> conv),
channel j equals a times channel r, so adding ``a * W_next[:, j]`` to ``W_next[:, r]`` and
dropping j leaves the output unchanged. For near-multiples the scale a is the least-squares
one, a = <w_j, w_r> / |w_r|^2, taken on the BN-folded filters when a BatchNorm follows
(gamma / sqrt(var + eps) per channel); the relative residual |w_j - a w_r| / |w_j| is
reported as the approximation. Filters with a <= 0 are not merged (ReLU is not odd).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .graph import ChannelGraph, Group

__all__ = ["MergeReport", "merge_overrides"]


@dataclass
class MergeReport:
    merged: int  # dropped channels folded into a kept one
    skipped: int  # dropped channels not merged (scale <= 0, or groups merging cannot serve)
    mean_residual: float  # mean relative residual of the merged filters (0 = exact multiples)

    def __str__(self) -> str:
        return f"merged {self.merged} channels (mean relative residual {self.mean_residual:.3g}), skipped {self.skipped}"


def _bn_scale(ctx_tensor, graph: ChannelGraph, g: Group, modules) -> np.ndarray | None:
    """gamma / sqrt(var + eps) per unit of the group when one BatchNorm covers it."""
    bns = [m for m in g.members if m.role == "bn" and m.param == "weight"]
    if len(bns) != 1:
        return None
    m = bns[0]
    mod = modules[m.module]
    if getattr(mod, "running_var", None) is None:
        return None
    scale = (mod.weight.detach() / torch.sqrt(mod.running_var + mod.eps)).double().numpy()
    out = np.ones(g.size)
    pos = np.searchsorted(g.units, m.units)
    ok = (pos < g.size) & (g.units[np.minimum(pos, g.size - 1)] == m.units)
    out[pos[ok]] = scale[ok]
    return out


def merge_overrides(model, graph: ChannelGraph, keep_unit: np.ndarray, clusters: dict, filters: dict):
    """New full-size consumer tensors with the dropped channels folded in.

    clusters: group id -> (labels, representatives) from k-means over the group's units.
    filters: group id -> (units, features) filter matrix the clustering used.
    Returns ({(module, param): tensor}, MergeReport).
    """
    modules = dict(model.named_modules())
    overrides: dict = {}
    merged = skipped = 0
    residuals = []
    for gid, (labels, reps) in clusters.items():
        g = graph.groups[gid]
        if len(g.producers()) != 1:
            skipped += int((~keep_unit[g.units]).sum())
            continue
        f = filters[gid].double().numpy()
        scale = _bn_scale(None, graph, g, modules)
        if scale is not None:
            f = f * scale[:, None]
        labels = np.asarray(labels)
        reps = np.asarray(reps)
        kept_local = keep_unit[g.units]
        pairs = []  # (dropped local index, kept local index, a)
        for j in np.flatnonzero(~kept_local):
            r = int(reps[labels[j]])
            if not kept_local[r]:
                skipped += 1
                continue
            den = float(f[r] @ f[r])
            a = float(f[j] @ f[r]) / den if den > 0 else 0.0
            if a <= 0:
                skipped += 1
                continue
            nj = float(np.linalg.norm(f[j]))
            residuals.append(float(np.linalg.norm(f[j] - a * f[r])) / nj if nj > 0 else 0.0)
            pairs.append((j, r, a))
            merged += 1
        if not pairs:
            continue
        unit_local = {int(u): i for i, u in enumerate(g.units)}
        for m in g.members:
            if m.role != "in":
                continue
            key = (m.module, m.param)
            t = overrides.get(key)
            if t is None:
                t = getattr(modules[m.module], m.param).detach().clone()
            local = np.array([unit_local.get(int(u), -1) for u in m.units])
            for j, r, a in pairs:
                pj, pr = np.flatnonzero(local == j), np.flatnonzero(local == r)
                if len(pj) != len(pr) or not len(pj):
                    continue
                src = t.index_select(m.dim, torch.as_tensor(pj))
                t.index_add_(m.dim, torch.as_tensor(pr), src * a)
            overrides[key] = t
    report = MergeReport(merged, skipped, float(np.mean(residuals)) if residuals else 0.0)
    return overrides, report
