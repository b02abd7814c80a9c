"""Structured surgery: build the smaller model from a channel graph and the kept units.

All sliced tensors are gathered in one batched call (`engine.gather`, which picks the
device's kernel); the modules then get their new parameters, and their size attributes
(``in_channels``, ``num_features``, ...) follow through their layer handlers
(:mod:`pyprune.layers`). Gradients and optimizer state are not carried
over: the pruned model's parameters are fresh leaves, so build a new optimizer for it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import engine
from .graph import ChannelGraph
from .layers import resize

__all__ = ["apply_keep", "slice_plan", "replace_tensor", "BlockedSlice"]


@dataclass(frozen=True)
class BlockedSlice:
    """A grouped conv's input dim: of input channel c (block c // (n / groups)) the kept
    ones, `kept` (sorted, in 0..n), the same count in every block; the tensor's dim holds
    the n / groups positions of one block for the output rows of that block."""

    groups: int
    kept: np.ndarray
    n: int

    def local(self) -> np.ndarray:
        """(groups, kept per block) positions within each block."""
        per = self.n // self.groups
        return (self.kept % per).reshape(self.groups, -1)


def slice_plan(graph: ChannelGraph, keep_unit: np.ndarray) -> dict[tuple[str, str], dict]:
    """(module, param) -> {dim: kept positions, or a BlockedSlice} for every tensor that
    loses something."""
    plan: dict = {}
    for m in graph.members:
        kept = np.flatnonzero(keep_unit[m.units])
        if len(kept) == len(m.units):
            continue
        if len(kept) == 0:
            raise ValueError(f"pruning would remove every channel of {m.key} (dim {m.dim}); keep at least one")
        if m.groups > 1:
            per = np.bincount(kept // (len(m.units) // m.groups), minlength=m.groups)
            if m.dim != 1 or len(set(per.tolist())) != 1:
                raise ValueError(f"{m.key}: the groups of a grouped conv must keep as many input channels each, "
                                 f"got {per.tolist()}")
            plan.setdefault((m.module, m.param), {})[m.dim] = BlockedSlice(m.groups, kept, len(m.units))
        else:
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
        raise ValueError(f"channel {int(np.searchsorted(g.units, bad))} of group {g.id} ({g.name}, {g.size} channels) "
                         f"is kept whole ({'; '.join(graph.frozen_reasons.get(g.id, []))}) and cannot be removed")
    modules = dict(model.named_modules())
    _check_graph_fits(graph, modules)
    plan = slice_plan(graph, keep_unit)
    # Work out the sources first; copy the model without duplicating what is replaced.
    memo: dict = {}
    if not inplace:
        for (mod, pname) in plan:
            t = _get(modules, mod, pname)
            memo[id(t)] = None  # placeholder: replaced below, never deep-copied
        target = _deepcopy(model, memo)
    else:
        target = model
    new_modules = dict(target.named_modules())
    keys, sources, idx, gather_folds = [], [], [], []
    tied: dict = {}  # id(tensor) -> (module, param, dims, folds) of its first holder
    ties = []  # (module, param, first holder's module, param): one tensor in the pruned model too
    for (mod, pname), dims in plan.items():
        orig = _get(modules, mod, pname)
        first = tied.setdefault(id(orig), (mod, pname, dims, folds.get((mod, pname), ())))
        if first[:2] != (mod, pname):
            if not (_same_cut(first[2], dims) and _same_folds(first[3], folds.get((mod, pname), ()))):
                raise ValueError(f"{mod}.{pname} and {first[0]}.{first[1]} are one tensor (tied) but would be cut "
                                 "differently; untie them (give each its own copy) or keep their channels")
            ties.append((mod, pname, first[0], first[1]))
            continue
        keys.append((mod, pname, orig))
        sources.append(orig.detach())
        idx.append([None if isinstance(dims.get(d), BlockedSlice) else dims.get(d) for d in range(max(dims) + 1)])
        blocked = any(isinstance(b, BlockedSlice) for b in dims.values())
        gather_folds.append(() if blocked else folds.get((mod, pname), ()))  # folded in the gather's call
    gathered = engine.gather(sources, idx, folds=gather_folds, threads=threads)
    for (mod, pname, orig), new, dims in zip(keys, gathered, plan.values()):
        blocked = {d: b for d, b in dims.items() if isinstance(b, BlockedSlice)}
        for d, b in blocked.items():
            new = _block_gather(new, d, b)
        if blocked:  # a grouped conv's tensor: its folds are done here
            for dim, src, dst, scale in folds.get((mod, pname), ()):
                if dim in blocked:
                    _fold_blocked(new, orig.detach(), dims, dim, src, dst, scale)
                else:
                    _fold(new, orig.detach(), dims, dim, src, dst, scale)
        replace_tensor(new_modules[mod], pname, new, like=orig)
    for mod, pname, first_mod, first_pname in ties:
        _put(new_modules[mod], pname, getattr(new_modules[first_mod], first_pname))  # the very same tensor
    for mod in {m for m, _ in plan}:
        resize(new_modules[mod])
    rewritten = graph.rewritten(keep_unit)
    for (mod, attr), value in rewritten.items():
        setattr(new_modules[mod] if mod in new_modules else target, attr, value)
    if rewritten:  # which attributes now hold channel counts, for save_model (their values at saving)
        target.__dict__[REWRITTEN] = sorted(set(target.__dict__.get(REWRITTEN, ())) | set(rewritten))
    return target


REWRITTEN = "_pyprune_rewritten"  # a pruned model's list of (module, attr) pruning rewrote


def _block_gather(t: torch.Tensor, dim: int, b: BlockedSlice) -> torch.Tensor:
    """Keep, for the output rows of each group (dim 0, in groups of equal size), the kept
    input positions of that group along `dim` (1)."""
    rows, g = t.shape[0], b.groups
    t5 = t.reshape(g, rows // g, *t.shape[1:])
    local = torch.as_tensor(b.local(), device=t.device)
    return torch.stack([t5[i].index_select(dim, local[i]) for i in range(g)]).reshape(rows, len(local[0]), *t.shape[2:])


def _fold_blocked(new: torch.Tensor, orig: torch.Tensor, dims: dict, dim: int, src, dst, scale) -> None:
    """_fold for a grouped conv's input dim: a dropped input channel is added onto its
    representative in the same group, for that group's output rows."""
    b = dims[dim]
    per = b.n // b.groups
    rows = dims.get(0, np.arange(orig.shape[0]))
    rows = rows if not isinstance(rows, BlockedSlice) else np.arange(orig.shape[0])
    row_block = rows // (orig.shape[0] // b.groups)
    new_rows = new.shape[0] // b.groups
    for g in range(b.groups):
        sel = (src // per == g) & (dst // per == g)
        if not sel.any():
            continue
        kept_g = b.kept[b.kept // per == g]
        dev = orig.device
        part = (orig.index_select(0, torch.as_tensor(rows[row_block == g], device=dev))
                .index_select(dim, torch.as_tensor(src[sel] % per, device=dev)))
        for d, kept in dims.items():
            if d not in (0, dim):
                part = part.index_select(d, torch.as_tensor(kept, device=dev))
        shape = [1] * part.dim()
        shape[dim] = -1
        part = part * torch.as_tensor(scale[sel], dtype=part.dtype, device=dev).view(shape)
        new[g * new_rows:(g + 1) * new_rows].index_add_(dim, torch.as_tensor(np.searchsorted(kept_g, dst[sel]), device=dev),
                                                        part)


def _fold(new: torch.Tensor, orig: torch.Tensor, dims: dict, dim: int, src, dst, scale) -> None:
    """new[..., pos(dst), ...] += scale * orig[..., src, ...] along `dim`, where `new` is
    `orig` with `dims` ({dim: kept positions}) gathered and pos maps an original position
    along `dim` to its place among the kept ones."""
    kept = dims.get(dim, np.arange(orig.shape[dim]))
    lists = [dims.get(d) for d in range(max(max(dims), dim) + 1)]
    engine.fold_slices(new, orig, lists, dim, src, np.searchsorted(kept, dst), scale)


def _check_graph_fits(graph: ChannelGraph, modules: dict) -> None:
    """The graph (and a plan made on it) describes this model as it is now: every tensor it
    slices exists with the channel count it recorded. Else a plan made for another model, or
    for this one before it was cut, would cut the wrong channels or fail deep in the gather."""
    for m in graph.members:
        t = getattr(modules.get(m.module), m.param, None) if m.module in modules else None
        if not isinstance(t, torch.Tensor) or t.dim() <= m.dim or t.shape[m.dim] != _recorded_size(m):
            now = "no such tensor" if not isinstance(t, torch.Tensor) else f"shape {tuple(t.shape)}"
            raise ValueError(f"the plan (its channel graph) is not for this model as it is: it records {m.key} with "
                             f"{_recorded_size(m)} channels along dim {m.dim}, the model has {now}. It was made for "
                             "another model, or for this one before a cut: make a new plan on the model as it is")


def _recorded_size(m) -> int:
    """A member's length along its dim: its positions (for a grouped conv's input dim those
    of one group: the weight holds in / groups)."""
    return len(m.units) // m.groups


def _get(modules: dict, mod: str, pname: str) -> torch.Tensor:
    m = modules[mod]
    t = getattr(m, pname)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{mod}.{pname} is not a tensor")
    return t


def _same_cut(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for d in a:
        x, y = a[d], b[d]
        if isinstance(x, BlockedSlice) or isinstance(y, BlockedSlice):
            if not (isinstance(x, BlockedSlice) and isinstance(y, BlockedSlice) and x.groups == y.groups
                    and x.n == y.n and np.array_equal(x.kept, y.kept)):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def _same_folds(a, b) -> bool:
    return len(a) == len(b) and all(
        fa[0] == fb[0] and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(fa[1:], fb[1:]))
        for fa, fb in zip(a, b))


def _put(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the module's parameter, buffer or plain attribute `name` to `value` as it is."""
    if name in module._parameters:
        module._parameters[name] = value
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def _deepcopy(model: nn.Module, memo: dict) -> nn.Module:
    """copy.deepcopy(model, memo), or a ValueError naming the attribute that cannot be copied
    (a lock, a file, an open session held by a module) and the ways out."""
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:
        culprit = next((f"{name + '.' if name else ''}{attr} ({type(v).__name__})"
                        for name, m in model.named_modules() for attr, v in vars(m).items()
                        if not attr.startswith("_") and not isinstance(v, (torch.Tensor, nn.Module))
                        and not _copyable(v)), "an attribute of the model")
        raise ValueError(f"pruning works on a copy of the model, and {culprit} cannot be copied "
                         f"({type(e).__name__}: {e}). Prune the model itself with inplace=True and verify=False "
                         "(the check of a cut, and recovery with calibration=, run on a copy first), or make "
                         "that attribute copyable (a __deepcopy__ that shares or recreates it); the model was not "
                         "changed.") from e


def _copyable(v) -> bool:
    try:
        copy.deepcopy(v)
    except Exception:  # noqa: BLE001 - whatever deepcopy raises for it
        return False
    return True


def replace_tensor(module: nn.Module, name: str, new: torch.Tensor, *, like: torch.Tensor | None = None) -> None:
    """Put `new` in place of the module's parameter or buffer `name` (a parameter stays a
    parameter, with the ``requires_grad`` of `like` or of the old one)."""
    old = like if like is not None else getattr(module, name)
    if isinstance(old, torch.Tensor) and old.dim() == 4 and new.dim() == 4 and not old.is_contiguous() \
            and old.is_contiguous(memory_format=torch.channels_last):
        new = new.contiguous(memory_format=torch.channels_last)  # the layout the model was put in
    _put(module, name, nn.Parameter(new, requires_grad=old.requires_grad) if name in module._parameters else new)
