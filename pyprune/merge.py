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
activation the fold is an approximation too, which fine-tuning then refines. Groups an
InstanceNorm normalises are not merged (it divides out each channel's scale per sample).

Merging never copies a whole consumer tensor: surgery gathers the kept slices as for any
method, then adds the dropped slices, scaled, onto their representatives' (one
``index_add_`` per consumer tensor over every group it reads, a DenseNet BN reading
hundreds). The scales need only each filter's norm and its cosine to its representative,
which the k-means core returns with the clustering.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .graph import ChannelGraph, Group, occurrence_rank, place_rows

__all__ = ["MergeReport", "merge_folds"]


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
    scale = (mod.weight.detach() / torch.sqrt(mod.running_var + mod.eps)).double().cpu().numpy()
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
    occurrence = occurrence_rank(units, order)  # rank among the positions of the same unit
    first = np.searchsorted(sorted_units, target_units)
    count_t = np.searchsorted(sorted_units, target_units, side="right") - first
    su = units[src]
    count_s = np.searchsorted(sorted_units, su, side="right") - np.searchsorted(sorted_units, su)
    fits = count_s == count_t
    return src[fits], order[first[fits] + occurrence[src[fits]]]


def _stats_from_weights(g: Group, modules, labels, reps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Norms, representative cosines and residuals from the group's one producer (in
    double), for a selecting criterion that did not report them."""
    m = g.producers()[0]
    w = getattr(modules[m.module], m.param).detach().movedim(m.dim, 0).reshape(len(m.units), -1).double().cpu()
    f = place_rows(g.positions(m.units), w, g.size)  # as the criteria's filters: a unit written twice, both rows
    norms = f.norm(dim=1)
    rep_of = torch.as_tensor(np.asarray(reps)[np.maximum(np.asarray(labels), 0)])
    fr = f[rep_of]
    ab, bb = (f * fr).sum(1), (fr * fr).sum(1)
    ok = (norms > 0) & (bb > 0)
    cos = torch.where(ok, ab / (norms * bb.sqrt()).clamp_min(1e-300), torch.zeros(()))
    res = (f - (ab / bb.clamp_min(1e-300))[:, None] * fr).norm(dim=1) / norms.clamp_min(1e-300)
    return norms.numpy(), cos.numpy(), torch.where(ok, res, torch.zeros(())).numpy()


def merge_folds(model, graph: ChannelGraph, keep_unit: np.ndarray, clusters: dict, stats: dict | None = None, *,
                unit_scale: bool = False):
    """What to fold into the consumers of every merged group, for :func:`surgery.apply_keep`.

    clusters: group id -> (labels, representatives) from k-means over the group's units.
    stats: group id -> (norms, rep_cosines, rep_residuals): each unit's filter norm, the
        cosine of its filter to its representative's and the relative residual of its
        least-squares multiple of it, as the k-means core reports them; groups missing here
        get them from their producer's weights.
    unit_scale: every dropped channel is an exact copy of its representative (after a
        centripetal phase): fold with scale 1, in every group (several producers too).
    Returns ({(module, param): [(dim, src, dst, scale)]}, MergeReport): for each consumer
    tensor, the positions `src` of dropped channels along `dim` whose slices, times `scale`,
    are added to the slices at positions `dst` (their representatives), in the tensor's
    original numbering.

    The scale of a dropped filter j merged into r is the least-squares one on the BN-folded
    filters, a = (s_j |f_j|) / (s_r |f_r|) * cos(f_j, f_r) (s: the BatchNorm's
    gamma / sqrt(var + eps), 1 without one); its relative residual |a f_r - f_j| / |f_j|
    is the same with or without the BN scale.
    """
    modules = dict(model.named_modules())
    target = np.full(graph.n_units, -1, np.int64)  # dropped unit -> the kept unit it folds into
    scale = np.zeros(graph.n_units)
    merged = skipped = 0
    residuals = []
    for gid, (labels, reps) in clusters.items():
        g = graph.groups[gid]
        kept_local = keep_unit[g.units]
        if unit_scale:
            labels, reps = np.asarray(labels), np.asarray(reps)
            j = np.flatnonzero(~kept_local & (labels >= 0))
            r = reps[labels[j]]
            ok = kept_local[r]
            skipped += int((~kept_local).sum()) - int(ok.sum())
            merged += int(ok.sum())
            target[g.units[j[ok]]] = g.units[r[ok]]
            scale[g.units[j[ok]]] = 1.0
            residuals.extend([0.0] * int(ok.sum()))
            continue
        if len(g.producers()) != 1 or g.scale_free:  # (InstanceNorm: see Group.scale_free)
            skipped += int((~kept_local).sum())
            continue
        labels, reps = np.asarray(labels), np.asarray(reps)
        st = (stats or {}).get(gid)
        norms, cos, res = _stats_from_weights(g, modules, labels, reps) if st is None else st
        norms, cos, res = (np.asarray(v, np.float64) for v in (norms, cos, res))
        bn = _bn_scale(g, modules)
        mag = norms * bn if bn is not None else norms
        dropped = np.flatnonzero(~kept_local & (labels >= 0))
        skipped += int((~kept_local & (labels < 0)).sum())
        rep = reps[labels[dropped]]
        den = mag[rep]
        a = np.where(den != 0, mag[dropped] * cos[dropped] / np.where(den != 0, den, 1.0), 0.0)
        ok = kept_local[rep] & (a > 0)  # ReLU is not odd: only positive multiples merge
        skipped += int((~ok).sum())
        j, r, a = dropped[ok], rep[ok], a[ok]
        if not len(j):
            continue
        residuals.extend(res[j].tolist())
        merged += len(j)
        target[g.units[j]] = g.units[r]
        scale[g.units[j]] = a
    folds: dict = {}
    # a layer whose weight is multiplied by a mask of its shape (XConv2d) takes no folds: the
    # dropped filter's column would be masked by the kept one's pattern; it is cut as by pruning
    masked = {m.module for m in graph.members if m.role == "mask"}
    if merged:
        for m in graph.members:
            if m.role != "in" or m.module in masked:
                continue
            src = np.flatnonzero(target[m.units] >= 0)
            if not len(src):
                continue
            src, dst = _matching_positions(m.units, src, target[m.units[src]])
            if len(src):
                folds.setdefault((m.module, m.param), []).append((m.dim, src, dst, scale[m.units[src]]))
    report = MergeReport(merged, skipped, float(np.mean(residuals)) if residuals else 0.0)
    return folds, report
