"""Channel dependency graph: which channels of which tensors must be pruned together.

`build_graph(model, example_inputs)` runs the model once (see `_trace`) and returns a
:class:`ChannelGraph`: plain data that criteria, schedules and surgery consume.

Vocabulary
- *unit*: one coupled channel. A residual stream's channel 5 is one unit whatever the
  number of convs that write or read it; pruning a unit removes it from every member.
- *member*: one dim of one parameter or buffer (e.g. ``layer1.0.conv1.weight`` dim 0) with
  the unit held at each of its positions. A member may span several groups (the BN after a
  DenseNet concat holds units of every earlier layer).
- *group*: the units that come from one set of coupled producers (one conv, or every conv
  writing the same residual stream). Schedules give a ratio per group.
- *frozen* units are never pruned: network inputs and outputs (the classifier's classes,
  whatever layer holds them), channels split at fixed points (``chunk``), grouped
  convolutions, and anything an unsupported op touched (reported, see ``unsupported``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
import torch
from torch import nn

from ._layout import Layout
from ._trace import LayerRecord, record

__all__ = ["ChannelGraph", "Group", "Member", "GraphError", "build_graph", "as_inputs", "Layout"]


class GraphError(ValueError):
    """The model cannot be analysed or pruned as asked; the message says where and why."""


@dataclass
class Member:
    """Dim `dim` of `module.param` holds unit `units[p]` at position p."""

    module: str
    param: str
    dim: int
    units: np.ndarray
    role: str  # out (a layer's filters) | bias | in (a consumer's input dim) | bn | norm | param

    @property
    def key(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param


@dataclass
class Group:
    """Coupled channels that share one keep/prune decision per unit."""

    id: int  # groups are numbered in forward order of their first channel
    name: str
    units: np.ndarray  # global unit ids, sorted
    frozen: np.ndarray  # bool per unit
    members: list = field(default_factory=list)
    norm_over_channels: bool = False  # a LayerNorm/GroupNorm(1) couples its units' statistics

    @property
    def size(self) -> int:
        return int(len(self.units))

    @property
    def prunable(self) -> int:
        return int((~self.frozen).sum())

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    def positions(self, units: np.ndarray) -> np.ndarray:
        """Position in this group of each of `units` (global ids), -1 where a unit
        belongs to another group (a member spanning several groups)."""
        pos = np.searchsorted(self.units, units)
        inside = (pos < self.size) & (self.units[np.minimum(pos, self.size - 1)] == units)
        return np.where(inside, pos, -1)


@dataclass
class ChannelGraph:
    groups: list[Group]
    members: list[Member]
    n_units: int
    unit_group: np.ndarray  # group id per unit
    unit_frozen: np.ndarray
    frozen_reasons: dict  # group id -> reasons
    unsupported: list  # (module path, op)
    layers: list[LayerRecord]
    untraced: list[str]

    def freeze(self, units: np.ndarray, reason: str) -> None:
        """Never prune `units` (global ids); `reason` is shown wherever the graph explains
        what it keeps (``table()``, errors, the prune result)."""
        units = np.unique(np.asarray(units, np.int64))
        if not len(units):
            return
        self.unit_frozen[units] = True
        for gid in np.unique(self.unit_group[units]):
            g = self.groups[int(gid)]
            g.frozen = self.unit_frozen[g.units]
            reasons = self.frozen_reasons.setdefault(int(gid), [])
            if reason not in reasons:
                reasons.append(reason)

    def table(self, max_members: int = 4) -> str:
        """A readable table: group id, channels, prunable channels, the layers that write
        the group's channels (producers) and how many tensors are sliced with them."""
        rows = [f"{'group':>5}  {'channels':>8}  {'prunable':>8}  producers (+ coupled tensors)"]
        for g in self.groups:
            prods = list(dict.fromkeys(m.module for m in g.members if m.role == "out"))
            shown = ", ".join(prods[:max_members]) + (f", ... (+{len(prods) - max_members} layers)" if len(prods) > max_members else "")
            if not prods:
                shown = g.name
            others = len(g.members) - sum(1 for m in g.members if m.role == "out")
            note = "" if g.prunable else "  [kept: " + "; ".join(self.frozen_reasons.get(g.id, ["frozen"])[:2]) + "]"
            rows.append(f"{g.id:>5}  {g.size:>8}  {g.prunable:>8}  {shown} (+{others}){note}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def as_inputs(example_inputs) -> tuple:
    """The model's positional inputs as a tuple: a tensor is one input, a tuple or list
    holds one input per entry."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs: expected a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def build_graph(model: nn.Module, example_inputs, example_kwargs: dict | None = None) -> ChannelGraph:
    """Trace `model` once on `example_inputs` (a tensor or a tuple of them) and derive
    its channel groups (`example_inputs`: a tensor, or a tuple/list of the model's
    positional inputs). The model's train/eval mode is left as it was; the trace runs
    under ``torch.no_grad()``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs = as_inputs(example_inputs)
    try:
        rec, _ = record(model, inputs, dict(example_kwargs or {}))
    except GraphError:
        raise
    except Exception as e:  # the model itself failed on the example inputs
        raise GraphError(
            f"running {type(model).__name__} on the example inputs failed: "
            f"{type(e).__name__}: {e}. Pass example inputs the model accepts "
            "(shape, dtype, device)."
        ) from e
    graph = _assemble(model, rec)
    if graph.untraced:
        shown = ", ".join(graph.untraced[:5]) + (f" (+{len(graph.untraced) - 5} more)" if len(graph.untraced) > 5 else "")
        warnings.warn(
            f"pyprune: {len(graph.untraced)} layer(s) never ran on the example inputs, in "
            f"{'training' if model.training else 'eval'} mode or the other: {shown}. The channels they read "
            "are unknown, so a pruned model can fail where they run. Pass example inputs that reach "
            "them, or remove them before pruning.",
            stacklevel=2,
        )
    return graph


def _assemble(model: nn.Module, rec) -> ChannelGraph:
    n = rec.n_ids
    # A layer called several times holds the same filters each time: unite its records.
    by_key: dict = {}
    for m in rec.members:
        by_key.setdefault((m.module, m.param, m.dim), []).append(m)
    for recs in by_key.values():
        for other in recs[1:]:
            if len(other.ids) == len(recs[0].ids):
                rec.unite(recs[0].ids, other.ids)
            else:
                rec.freeze(np.concatenate([recs[0].ids, other.ids]), f"{other.module} reused with other shapes")
    # Units: connected components of channel ids under the recorded couplings.
    if rec.unions:
        a = np.concatenate([u[0] for u in rec.unions])
        b = np.concatenate([u[1] for u in rec.unions])
    else:
        a = b = np.zeros(0, np.int64)
    adj = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    n_units, unit_of = connected_components(adj, directed=False)
    unit_of = unit_of.astype(np.int64)
    # Groups: units that come from coupled producers (spaces sharing a unit).
    space_of = np.repeat(np.arange(len(rec.space_origin)), [s for _, s, _ in rec.space_origin])
    n_sp = len(rec.space_origin)
    adj2 = coo_matrix((np.ones(n, np.int8), (unit_of, n_units + space_of)), shape=(n_units + n_sp, n_units + n_sp))
    _, comp = connected_components(adj2, directed=False)
    # renumber groups in forward order of their first channel
    first_seen: dict = {}
    group_of_unit = np.empty(n_units, np.int64)
    unit_comp = comp[:n_units]
    order_key = np.full(n_units, np.iinfo(np.int64).max)
    np.minimum.at(order_key, unit_of, np.arange(n))
    for u in np.argsort(order_key, kind="stable"):
        c = unit_comp[u]
        if c not in first_seen:
            first_seen[c] = len(first_seen)
        group_of_unit[u] = first_seen[c]
    frozen = np.zeros(n_units, bool)
    legit = np.zeros(n_units, bool)  # frozen for a reason other than an unsupported op
    reasons: dict = {}
    for ids, why in rec.frozen:
        if len(ids):
            us = np.unique(unit_of[ids])
            frozen[us] = True
            if not why.startswith("unsupported op"):
                legit[us] = True
            for gid in np.unique(group_of_unit[us]):
                reasons.setdefault(int(gid), [])
                if why not in reasons[int(gid)] and len(reasons[int(gid)]) < 5:
                    reasons[int(gid)].append(why)
    members = [Member(m.module, m.param, m.dim, unit_of[m.ids], m.role) for m in rec.members]
    # drop duplicate member records (a layer called several times)
    seen, uniq = set(), []
    for m in members:
        k = (m.module, m.param, m.dim)
        if k not in seen:
            seen.add(k)
            uniq.append(m)
    members = uniq
    n_groups = len(first_seen)
    groups = []
    units_by_group = [[] for _ in range(n_groups)]
    for u in range(n_units):
        units_by_group[group_of_unit[u]].append(u)
    origin_name = {}
    for gi, (base, size, origin) in enumerate(rec.space_origin):
        if size:
            g = int(group_of_unit[unit_of[base]])
            origin_name.setdefault(g, origin)
    for g in range(n_groups):
        us = np.array(units_by_group[g], np.int64)
        groups.append(Group(g, origin_name.get(g, f"group{g}"), us, frozen[us], []))
    for m in members:
        for g in np.unique(group_of_unit[m.units]):
            groups[int(g)].members.append(m)
            if m.role == "norm":
                groups[int(g)].norm_over_channels = True
    # An unknown op matters only where it touched channels that could otherwise be pruned.
    unsupported = []
    for where, op, ids in rec.unknown:
        if len(ids) and legit[unit_of[ids]].all():
            continue
        if (where, op) not in unsupported:
            unsupported.append((where, op))
    return ChannelGraph(groups, members, int(n_units), group_of_unit, frozen, reasons, unsupported, rec.layers, rec.untraced)
