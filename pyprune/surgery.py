"""Structured surgery: build the smaller model from a channel graph and the kept units.

All sliced tensors are gathered in one batched, parallel call into the C++ core
(`engine.gather`); the modules then get their new parameters and matching attributes
(``in_channels``, ``num_features``, ...). Gradients and optimizer state are not carried
over: the pruned model's parameters are fresh leaves, so build a new optimizer for it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import engine
from .graph import ChannelGraph

__all__ = ["apply_keep", "slice_plan"]


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
               threads: int | None = None, overrides: dict | None = None) -> nn.Module:
    """Return the model with every unit where ``keep_unit`` is False removed.

    ``inplace=False`` (the default) leaves `model` untouched and returns a pruned deep copy;
    ``inplace=True`` prunes `model` itself and returns it. ``overrides`` maps
    (module, param) to full-size replacement tensors sliced instead of the model's own
    (used by weight merging).
    """
    overrides = overrides or {}
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
    cpu_src, cpu_idx, cpu_keys, other = [], [], [], []
    for (mod, pname), dims in plan.items():
        orig = _get(modules, mod, pname)
        src = overrides.get((mod, pname), orig)
        idx = [dims.get(d) for d in range(max(dims) + 1)]
        if src.device.type == "cpu":
            cpu_src.append(src.detach())
            cpu_idx.append(idx)
            cpu_keys.append((mod, pname, orig))
        else:
            other.append((mod, pname, orig, src, idx))
    results = engine.gather(cpu_src, cpu_idx, threads=threads) if cpu_src else []
    for (mod, pname, src), new in zip(cpu_keys, results):
        _set(new_modules[mod], pname, src, new)
    for mod, pname, orig, src, idx in other:
        new = src.detach()
        for d, ix in enumerate(idx):
            if ix is not None:
                new = new.index_select(d, torch.as_tensor(ix, device=src.device))
        _set(new_modules[mod], pname, orig, new.contiguous())
    for mod in {m for m, _ in plan}:
        _update_attributes(new_modules[mod])
    return target


def _get(modules: dict, mod: str, pname: str) -> torch.Tensor:
    m = modules[mod]
    t = getattr(m, pname)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{mod}.{pname} is not a tensor")
    return t


def _set(module: nn.Module, pname: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if pname in module._parameters:
        module._parameters[pname] = nn.Parameter(new, requires_grad=old.requires_grad)
    elif pname in module._buffers:
        module._buffers[pname] = new
    else:
        setattr(module, pname, new)


def _update_attributes(m: nn.Module) -> None:
    """Make a module's size attributes agree with its (new) tensors."""
    if isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = w.shape[0]
        if depthwise:
            m.groups = m.in_channels = w.shape[0]
        else:
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        t = m.weight if m.weight is not None else m.running_mean
        m.num_features = t.shape[0]
    elif isinstance(m, nn.LayerNorm):
        t = m.weight if m.weight is not None else m.bias
        m.normalized_shape = (t.shape[0],)
    elif isinstance(m, nn.GroupNorm):
        old = m.num_channels
        m.num_channels = m.weight.shape[0]
        if m.num_groups == old:
            m.num_groups = m.num_channels
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]
