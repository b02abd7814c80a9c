"""Structured surgery: build the smaller model from a channel graph and the kept units.

All sliced tensors are gathered in one batched call (`engine.gather`, which picks the
device's kernel); the modules then get their new parameters, and their size attributes
(``in_channels``, ``num_features``, ...) follow through their layer handlers
(:mod:`pyprune.layers`). Gradients and optimizer state are not carried
over: the pruned model's parameters are fresh leaves, so build a new optimizer for it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import engine
from .graph import ChannelGraph
from .layers import resize

__all__ = ["apply_keep", "slice_plan", "replace_tensor"]


def slice_plan(graph: ChannelGraph, keep_unit: np.ndarray) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """(module, param) -> {dim: kept positions} for every tensor that loses something."""
    plan: dict = {}
    for m in graph.members:
        kept = np.flatnonzero(keep_unit[m.units])
        if len(kept) == len(m.units):
            continue
        if len(kept) == 0:
            raise ValueError(f"pruning would remove every channel of {m.key} (dim {m.dim}); keep at least one")
        plan.setdefault((m.module, m.param), {})[m.dim] = kept
    return plan


def apply_keep(model: nn.Module, graph: ChannelGraph, keep_unit: np.ndarray, *, inplace: bool = False,
               threads: int | None = None, folds: dict | None = None) -> nn.Module:
    """Return the model with every unit where ``keep_unit`` is False removed.

    ``inplace=False`` (the default) leaves `model` untouched and returns a pruned deep copy;
    ``inplace=True`` prunes `model` itself and returns it. ``folds`` (from
    :func:`pyprune.merge.merge_folds`) maps (module, param) to ``(dim, src, dst, scale)``
    entries: after the kept slices are gathered, the slices at positions `src` of the
    original tensor, times `scale`, are added onto those at `dst` (weight merging).
    """
    folds = folds or {}
    keep_unit = np.asarray(keep_unit, bool)
    if keep_unit.shape != (graph.n_units,):
        raise ValueError(f"keep_unit: expected {graph.n_units} flags, got shape {keep_unit.shape}")
    if (~keep_unit & graph.unit_frozen).any():
        bad = int(np.flatnonzero(~keep_unit & graph.unit_frozen)[0])
        g = graph.groups[int(graph.unit_group[bad])]
        raise ValueError(f"unit {bad} of group {g.id} ({g.name}) is frozen ({'; '.join(graph.frozen_reasons.get(g.id, []))}) and cannot be removed")
    plan = slice_plan(graph, keep_unit)
    modules = dict(model.named_modules())
    # Work out the sources first; copy the model without duplicating what is replaced.
    memo: dict = {}
    if not inplace:
        for (mod, pname) in plan:
            t = _get(modules, mod, pname)
            memo[id(t)] = None  # placeholder: replaced below, never deep-copied
        target = copy.deepcopy(model, memo)
    else:
        target = model
    new_modules = dict(target.named_modules())
    keys, sources, idx = [], [], []
    for (mod, pname), dims in plan.items():
        orig = _get(modules, mod, pname)
        keys.append((mod, pname, orig))
        sources.append(orig.detach())
        idx.append([dims.get(d) for d in range(max(dims) + 1)])
    for (mod, pname, orig), new, dims in zip(keys, engine.gather(sources, idx, threads=threads), plan.values()):
        for dim, src, dst, scale in folds.get((mod, pname), ()):
            _fold(new, orig.detach(), dims, dim, src, dst, scale)
        replace_tensor(new_modules[mod], pname, new, like=orig)
    for mod in {m for m, _ in plan}:
        resize(new_modules[mod])
    return target


def _fold(new: torch.Tensor, orig: torch.Tensor, dims: dict, dim: int, src, dst, scale) -> None:
    """new[..., pos(dst), ...] += scale * orig[..., src, ...] along `dim`, where `new` is
    `orig` with `dims` ({dim: kept positions}) gathered and pos maps an original position
    along `dim` to its place among the kept ones."""
    part = orig.index_select(dim, torch.as_tensor(src))
    for d, kept in dims.items():
        if d != dim:
            part = part.index_select(d, torch.as_tensor(kept))
    shape = [1] * part.dim()
    shape[dim] = -1
    part = part * torch.as_tensor(scale, dtype=part.dtype).view(shape)
    kept = dims.get(dim, np.arange(orig.shape[dim]))
    new.index_add_(dim, torch.as_tensor(np.searchsorted(kept, dst)), part)


def _get(modules: dict, mod: str, pname: str) -> torch.Tensor:
    m = modules[mod]
    t = getattr(m, pname)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{mod}.{pname} is not a tensor")
    return t


def replace_tensor(module: nn.Module, name: str, new: torch.Tensor, *, like: torch.Tensor | None = None) -> None:
    """Put `new` in place of the module's parameter or buffer `name` (a parameter stays a
    parameter, with the ``requires_grad`` of `like` or of the old one)."""
    old = like if like is not None else getattr(module, name)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)
