"""Planted-zero exactness: zero the contribution of some channels of every exactly
prunable group, prune exactly those, and the outputs must not change."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from pyprune.criteria import block_jobs
from pyprune.graph import build_graph
from pyprune.surgery import apply_keep


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def left_whole(graph) -> set:
    """The groups a planted check leaves whole: those cut inexactly, and every group linked
    to one of them (linked groups keep one share, so cutting some alone would not fit)."""
    whole = {g.id for g in graph.groups if g.norm_over_channels or g.inexact}
    for g in graph.groups:
        if g.linked and whole.intersection(g.linked):
            whole |= set(g.linked)
    return whole


@torch.no_grad()
def zero_and_choose(model, graph, frac=0.3, seed=0):
    """Zero the contribution of a random `frac` of each exactly-prunable group's units
    (filters, biases, BN affine, per-channel params) and return the keep mask."""
    rng = np.random.default_rng(seed)
    keep = np.ones(graph.n_units, bool)
    whole = left_whole(graph)
    for g in graph.groups:
        if g.prunable < 2 or g.id in whole:
            continue
        if g.blocks is not None:  # grouped convs, chunks, heads: the same count in every block
            if g.frozen.any():
                continue
            # linked groups keep one share: m steps of each (as fit_blocks gives them)
            n_keep = int(round((1 - frac) * g.size)) if not g.step else \
                max(1, int(round((1 - frac) * g.step))) * g.size // g.step
            for pos, k in block_jobs(g, n_keep):
                if k < len(pos):
                    keep[g.units[rng.choice(pos, len(pos) - k, replace=False)]] = False
            continue
        cand = g.units[~g.frozen]
        n = max(1, int(frac * len(cand)))
        keep[rng.choice(cand, n, replace=False)] = False
    plant(model, graph, keep)
    return keep


@torch.no_grad()
def plant(model, graph, keep) -> None:
    """Zero the contribution of the units where `keep` is False (filters, biases, BN affine,
    per-channel params, and BN running means: a BatchNorm without affine parameters
    outputs ``-mean / std`` for a zero filter, which the cut cannot carry)."""
    mods = dict(model.named_modules())
    for m in graph.members:
        if m.role in ("out", "bias", "param") or (m.role == "bn" and m.param in ("weight", "bias", "running_mean")):
            pos = np.flatnonzero(~keep[m.units])
            if len(pos):
                t = getattr(mods[m.module], m.param)
                t.index_fill_(m.dim, torch.as_tensor(pos), 0.0)


@torch.no_grad()
def cut_error(model, inputs, plan) -> float | None:
    """pyprune's own cut, checked: zeros planted in exactly the channels `plan` drops
    (groups it cuts inexactly left whole) and the planted model cut as planned must give
    the planted model's output. The relative error; None when nothing is left to check."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    graph, keep = plan.graph, plan.keep_mask().copy()
    for gid in left_whole(graph):
        keep[graph.groups[gid].units] = True
    if keep.all():
        return None
    planted = copy.deepcopy(model)
    plant(planted, graph, keep)
    want = _flat(planted(*inputs))
    got = _flat(apply_keep(planted, graph, keep)(*inputs))
    if want.numel() == 0 or got.shape != want.shape:
        raise ValueError(f"outputs of {tuple(got.shape)} values instead of {tuple(want.shape)}")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


@torch.no_grad()
def detection_heads_error(model, images: list, plan) -> dict[str, float]:
    """A torchvision detector's cut, checked where it is deterministic: zeros planted in
    exactly the channels `plan` drops (inexact groups left whole), then per head the
    relative change of its outputs between the planted model and that model cut. The
    RoI heads of the two are fed the same proposals (the planted model's): which boxes
    NMS keeps flips on rounding when random weights make the scores tie."""
    graph, keep = plan.graph, plan.keep_mask().copy()
    for gid in left_whole(graph):
        keep[graph.groups[gid].units] = True
    planted = copy.deepcopy(model).eval()
    plant(planted, graph, keep)
    cut = apply_keep(planted, graph, keep).eval()
    batch, _ = planted.transform(images)
    feats = {tag: net.backbone(batch.tensors) for tag, net in (("planted", planted), ("cut", cut))}
    outs: dict[str, dict] = {"planted": {}, "cut": {}}
    proposals = planted.rpn(batch, feats["planted"])[0] if hasattr(planted, "rpn") else None
    for tag, net in (("planted", planted), ("cut", cut)):
        levels = list(feats[tag].values())
        if hasattr(net, "rpn"):
            outs[tag]["rpn.head"] = net.rpn.head(levels)
            heads = net.roi_heads
            for kind in ("box", "mask", "keypoint"):
                pool = getattr(heads, f"{kind}_roi_pool", None)
                if pool is not None:
                    pooled = getattr(heads, f"{kind}_head")(pool(feats[tag], proposals, batch.image_sizes))
                    outs[tag][f"roi_heads.{kind}_predictor"] = getattr(heads, f"{kind}_predictor")(pooled)
        else:  # one-stage (RetinaNet, FCOS, SSD): the head reads the feature maps
            outs[tag]["head"] = net.head(levels)
    errors = {}
    for name, want in outs["planted"].items():
        want, got = _flat(want), _flat(outs["cut"][name])
        if want.shape != got.shape:
            raise AssertionError(f"{name}: outputs of {tuple(got.shape)} values instead of {tuple(want.shape)}")
        errors[name] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    return errors


def _flat(out) -> torch.Tensor:
    """A model's outputs (a tensor, a tuple/list/dict of them, a ModelOutput, a dataclass) as
    one vector."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    parts = out.values() if isinstance(out, dict) else out
    flat = [_flat(o) for o in parts
            if isinstance(o, (torch.Tensor, tuple, list, dict)) or dataclasses.is_dataclass(o)]
    return torch.cat(flat) if flat else torch.zeros(0)


@torch.no_grad()
def check_exact(model, inputs, seed=0):
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    graph = build_graph(model, inputs)
    keep = zero_and_choose(model, graph, seed=seed)
    assert (~keep).sum() > 0, "nothing was chosen to prune"
    want = model(*inputs)
    pruned = apply_keep(model, graph, keep)
    got = pruned(*inputs)
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-12)
    err = (got - want).abs().max() / scale
    assert err <= 1e-5, f"relative error {err:.2e}"
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in pruned.parameters())
    assert n_after < n_before
    return graph


def trained_digits_cnn(*, batchnorm: bool, epochs: int, lr: float):
    """A digits_cnn trained on scikit-learn's digits (seed 0 throughout): model, train, test."""
    import torch

    from pyprune.data import digits
    from pyprune.models import digits_cnn
    from pyprune.train import fit

    torch.manual_seed(0)
    train, test = digits(seed=0)
    model = digits_cnn(batchnorm=batchnorm)
    fit(model, train, epochs=epochs, lr=lr, seed=0, progress=False)
    return model, train, test
