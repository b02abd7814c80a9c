"""Data-driven criteria: statistics of the feature maps on calibration batches, and Taylor."""
from __future__ import annotations

import numpy as np
import torch

from ..data import iter_batches
from ..layers import handler_for
from ._registry import Context, register_criterion


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

    def make_hook(members, kind: str | None):
        def hook(mod, inputs):
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is None or x.dim() < 2:
                return
            x = x.detach().float()
            # a conv reads channels at dim 1 (N, C, *spatial); a Linear at the last dim,
            # whatever comes before it ((N, F), (N, H, W, C), (N, L, C)); a module pyprune has
            # no handler for (a functional conv or linear inside it) at the first of the two
            # whose width matches, dim 1 first for a map with spatial dims
            last = x.dim() - 1
            order = [1] if kind == "conv" else [last] if kind is not None else [1, last] if x.dim() > 2 else [last]
            per_dim: dict = {}  # the statistic over each channel dim, once for all its members
            for m in members:
                cdim = next((d for d in order if x.shape[d] == len(m.units)), None)
                if cdim is None:
                    continue  # an input the layer reads otherwise is not scored
                if stat == "rank" and not (cdim == 1 and x.dim() == 4):
                    continue
                if cdim not in per_dim:
                    per_dim[cdim] = _stat(x, cdim)
                v = per_dim[cdim]
                np.add.at(total, m.units, v)
                np.add.at(count, m.units, 1.0)
        return hook

    def _stat(x, cdim):
        if stat == "rank":  # HRank: average rank of each channel's feature map
            return torch.linalg.matrix_rank(x.transpose(0, 1)).float().mean(1).double().cpu().numpy()
        fmap = x.movedim(cdim, 0).reshape(x.shape[cdim], x.shape[0], -1)  # C, N, rest
        if stat == "mean":
            return fmap.abs().mean(dim=(1, 2)).double().cpu().numpy()
        return (1.0 - (fmap == 0).float().mean(dim=(1, 2))).double().cpu().numpy()  # apoz: keep channels that fire

    for name, members in consumers.items():
        h = handler_for(mods[name])
        hooks.append(mods[name].register_forward_pre_hook(make_hook(members, None if h is None else h.kind)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _ in iter_batches(ctx.calibration, ctx.calibration_batches):
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


_STATS = ("mean", "apoz", "rank")


@register_criterion("activation", batched=True, needs_data=True, options=("stat",))
def activation(groups, ctx):
    """Feature-map criterion from calibration batches: mean |activation| each channel
    feeds the next layers (option ``stat``: ``mean``, ``apoz`` or ``rank``)."""
    stat = ctx.options.get("stat", "mean")
    if stat not in _STATS:
        raise ValueError(f"stat: expected one of {', '.join(_STATS)}, got {stat!r}")
    return _activation_stats(groups, ctx, stat)


@register_criterion("apoz", batched=True, needs_data=True)
def apoz(groups, ctx):
    """Average percentage of zeros (Hu et al., 2016): channels that are mostly zero after
    the activation go first (score = 1 - APoZ)."""
    return _activation_stats(groups, ctx, "apoz")


@register_criterion("hrank", batched=True, needs_data=True)
def hrank(groups, ctx):
    """HRank (Lin et al., 2020): the average rank of each channel's feature maps; low-rank
    maps carry little information."""
    return _activation_stats(groups, ctx, "rank")


@register_criterion("taylor", batched=True, needs_labels=True)
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
            if m.key in params:
                wanted[m.key] = m
    total = np.zeros(graph.n_units)
    n_batches = 0
    was = model.training
    model.eval()
    saved = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for inputs, labels in iter_batches(ctx.calibration, ctx.calibration_batches):
                if labels is None:
                    raise ValueError("taylor needs labelled calibration batches: (inputs, labels) pairs")
                for p in params.values():
                    p.grad = None
                out = model(*inputs)
                if not isinstance(out, torch.Tensor):
                    raise ValueError(f"taylor scores channels by the gradient of the cross-entropy of the model's output, "
                                     f"which must be one tensor of class scores; this model returns a "
                                     f"{type(out).__name__}. Use a criterion without a loss (l1, activation, ...)")
                loss = torch.nn.functional.cross_entropy(out, labels)
                loss.backward()
                contrib = np.zeros(graph.n_units)
                for k, m in wanted.items():
                    g = params[k].grad
                    if g is None:
                        continue
                    wg = (params[k].detach() * g).movedim(m.dim, 0).reshape(len(m.units), -1).sum(1).double().cpu().numpy()
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
