"""Weight merging for k-means pruning: fold each dropped filter's outgoing contribution
into the filter kept for its cluster.

If filter j is a positive multiple of the kept filter r (w_j = a * w_r, b_j = a * b_r) and
the path to the next layer is positively homogeneous (conv -> ReLU -> max/avg pool ->
conv), channel j equals a times channel r, so adding ``a * W_next[:, j]`` to ``W_next[:, r]``
and dropping j leaves the output unchanged. For near-multiples the scale a is the
least-squares one, a = <w_j, w_r> / |w_r|^2, taken on the BN-folded filters when a
BatchNorm follows (gamma / sqrt(var + eps) per channel); the relative residual
|w_j - a w_r| / |w_j| is reported as the approximation. Filters with a <= 0 are not merged
(ReLU is not odd). The path itself is not inspected: through a BN shift or another
activation the fold is an approximation too, which fine-tuning then refines.

All dropped channels of a group are folded at once: one ``index_add_`` per consumer tensor.
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


def _bn_scale(g: Group, modules) -> np.ndarray | None:
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
    pos = g.positions(m.units)
    out[pos[pos >= 0]] = scale[pos >= 0]
    return out


def _occurrences(local: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For positions holding local units 0..n-1 (-1 = another group's): per position its
    occurrence index among the positions of the same unit; per unit where its positions
    start in `order` and how many there are; and `order`, the positions sorted by unit."""
    order = np.argsort(local, kind="stable")
    sorted_local = local[order]
    first = np.searchsorted(sorted_local, np.arange(n))
    count = np.searchsorted(sorted_local, np.arange(n), side="right") - first
    occ = np.empty(len(local), np.int64)
    occ[order] = np.arange(len(local)) - np.searchsorted(sorted_local, sorted_local)
    return occ, first, count, order


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
        kept_local = keep_unit[g.units]
        if len(g.producers()) != 1:
            skipped += int((~kept_local).sum())
            continue
        f = filters[gid].double().numpy()
        scale = _bn_scale(g, modules)
        if scale is not None:
            f = f * scale[:, None]
        dropped = np.flatnonzero(~kept_local)
        target = np.asarray(reps)[np.asarray(labels)[dropped]]
        ok = kept_local[target]
        den = np.einsum("ij,ij->i", f[target], f[target])
        a = np.where(den > 0, np.einsum("ij,ij->i", f[dropped], f[target]) / np.where(den > 0, den, 1.0), 0.0)
        ok &= a > 0  # ReLU is not odd: only positive multiples merge
        skipped += int((~ok).sum())
        j, r, a = dropped[ok], target[ok], a[ok]
        if not len(j):
            continue
        nj = np.linalg.norm(f[j], axis=1)
        res = np.linalg.norm(f[j] - a[:, None] * f[r], axis=1)
        residuals.extend(np.where(nj > 0, res / np.where(nj > 0, nj, 1.0), 0.0).tolist())
        merged += len(j)
        for m in g.members:
            if m.role != "in":
                continue
            key = (m.module, m.param)
            t = overrides.get(key)
            if t is None:
                t = getattr(modules[m.module], m.param).detach().clone()
            local = g.positions(m.units)
            occ, first, count, order = _occurrences(local, g.size)
            # each position of a dropped unit adds to the same occurrence of its target
            src = np.flatnonzero(np.isin(local, j))
            if not len(src):
                continue
            target_of = np.full(g.size, -1)
            target_of[j] = r
            scale_of = np.zeros(g.size)
            scale_of[j] = a
            u = local[src]
            tr = target_of[u]
            fits = count[tr] == count[u]  # the consumer reads both units equally often
            src, u, tr = src[fits], u[fits], tr[fits]
            dst = order[first[tr] + occ[src]]
            shape = [1] * t.dim()
            shape[m.dim] = -1
            w = torch.as_tensor(scale_of[u], dtype=t.dtype).view(shape)
            t.index_add_(m.dim, torch.as_tensor(dst), t.index_select(m.dim, torch.as_tensor(src)) * w)
            overrides[key] = t
    report = MergeReport(merged, skipped, float(np.mean(residuals)) if residuals else 0.0)
    return overrides, report
