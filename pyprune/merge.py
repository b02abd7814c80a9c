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


def _matching_positions(units: np.ndarray, src: np.ndarray, target_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For positions `src` of a tensor dim holding `units`, the position holding the same
    occurrence (first, second, ...) of each target unit. Returns (src kept, their targets):
    a source is dropped where the dim holds its unit and its target a different number
    of times (the consumer does not read them alike)."""
    order = np.argsort(units, kind="stable")
    sorted_units = units[order]
    occurrence = np.empty(len(units), np.int64)  # rank among the positions of the same unit
    occurrence[order] = np.arange(len(units)) - np.searchsorted(sorted_units, sorted_units)
    first = np.searchsorted(sorted_units, target_units)
    count_t = np.searchsorted(sorted_units, target_units, side="right") - first
    su = units[src]
    count_s = np.searchsorted(sorted_units, su, side="right") - np.searchsorted(sorted_units, su)
    fits = count_s == count_t
    return src[fits], order[first[fits] + occurrence[src[fits]]]


def merge_overrides(model, graph: ChannelGraph, keep_unit: np.ndarray, clusters: dict, filters: dict):
    """New full-size consumer tensors with the dropped channels folded in.

    clusters: group id -> (labels, representatives) from k-means over the group's units.
    filters: group id -> (units, features) filter matrix the clustering used.
    Returns ({(module, param): tensor}, MergeReport).

    The scales come per group; the folding is then one ``index_add_`` per consumer tensor
    over the units of every group it reads (a DenseNet BN reads hundreds of groups).
    """
    modules = dict(model.named_modules())
    target = np.full(graph.n_units, -1, np.int64)  # dropped unit -> the kept unit it folds into
    scale = np.zeros(graph.n_units)
    merged = skipped = 0
    residuals = []
    for gid, (labels, reps) in clusters.items():
        g = graph.groups[gid]
        kept_local = keep_unit[g.units]
        if len(g.producers()) != 1:
            skipped += int((~kept_local).sum())
            continue
        f = filters[gid].double().numpy()
        bn = _bn_scale(g, modules)
        if bn is not None:
            f = f * bn[:, None]
        dropped = np.flatnonzero(~kept_local)
        rep = np.asarray(reps)[np.asarray(labels)[dropped]]
        den = np.einsum("ij,ij->i", f[rep], f[rep])
        a = np.where(den > 0, np.einsum("ij,ij->i", f[dropped], f[rep]) / np.where(den > 0, den, 1.0), 0.0)
        ok = kept_local[rep] & (a > 0)  # ReLU is not odd: only positive multiples merge
        skipped += int((~ok).sum())
        j, r, a = dropped[ok], rep[ok], a[ok]
        if not len(j):
            continue
        nj = np.linalg.norm(f[j], axis=1)
        res = np.linalg.norm(f[j] - a[:, None] * f[r], axis=1)
        residuals.extend(np.where(nj > 0, res / np.where(nj > 0, nj, 1.0), 0.0).tolist())
        merged += len(j)
        target[g.units[j]] = g.units[r]
        scale[g.units[j]] = a
    overrides: dict = {}
    if merged:
        for m in graph.members:
            if m.role != "in":
                continue
            src = np.flatnonzero(target[m.units] >= 0)
            if not len(src):
                continue
            src, dst = _matching_positions(m.units, src, target[m.units[src]])
            if not len(src):
                continue
            key = (m.module, m.param)
            t = overrides.get(key)
            if t is None:
                t = getattr(modules[m.module], m.param).detach().clone()
            shape = [1] * t.dim()
            shape[m.dim] = -1
            w = torch.as_tensor(scale[m.units[src]], dtype=t.dtype).view(shape)
            t.index_add_(m.dim, torch.as_tensor(dst), t.index_select(m.dim, torch.as_tensor(src)) * w)
            overrides[key] = t
    report = MergeReport(merged, skipped, float(np.mean(residuals)) if residuals else 0.0)
    return overrides, report
