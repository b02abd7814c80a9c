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

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
import torch
from torch import nn

from ._layout import Layout
from ._trace import _HEAD_WIDTHS, LayerRecord, OpRuleError, param_path, record

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
    groups: int = 1  # > 1: a grouped conv's input dim (length len(units) / groups, per group)

    @property
    def key(self) -> str:
        return param_path(self.module, self.param)


@dataclass
class Group:
    """Coupled channels that share one keep/prune decision per unit."""

    id: int  # groups are numbered in forward order of their first channel
    name: str
    units: np.ndarray  # global unit ids, sorted
    frozen: np.ndarray  # bool per unit
    members: list = field(default_factory=list)
    norm_over_channels: bool = False  # a LayerNorm/GroupNorm couples its units' statistics
    blocks: np.ndarray | None = None  # block of each unit (-1: none); see block_counts
    equal_blocks: bool = True  # every block keeps the same count (else: in proportion, >= 1)
    min_keep: int = 1  # units a layer needs to run (a weight-standardised 1x1 conv's inputs: 2)
    # blocks linked across groups (see _link_groups): every block keeps step-ths of its size
    # times one count m shared by the groups in `linked` (0: blocks of this group alone)
    step: int = 0
    linked: tuple = ()
    link_kind: str = ""  # what links them: "grouped convs" or "heads" (see _link_shares)
    equal_removal: bool = False  # every block loses as many units (blocks of unequal sizes)
    inexact: list = field(default_factory=list)  # why cutting these units changes the function
    scale_free: list = field(default_factory=list)  # norms dividing out each unit's scale (InstanceNorm)
    _pieces: list | None = field(default=None, repr=False)  # see pieces(); set when the graph is built

    @property
    def size(self) -> int:
        return int(len(self.units))

    @property
    def prunable(self) -> int:
        return int((~self.frozen).sum())

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    def block_counts(self, n_keep: int) -> tuple[np.ndarray, int]:
        """Per block the units kept when the group keeps about `n_keep`, and the count
        left for the units in no block: blocks keep in proportion to their size (the same
        count for blocks of one size), at least one each and at least their frozen units.
        Linked blocks (``step``) keep m / step of their size each, every unit in a block;
        blocks of ``equal_removal`` lose as many units each."""
        blocks = self.blocks
        labels, sizes = np.unique(blocks[blocks >= 0], return_counts=True)
        if self.step:  # linked blocks: m / step of each, m from the keep count (fit_blocks shares it)
            m = int(np.clip(int(math.floor(n_keep * self.step / self.size + 0.5)), self.step_floor(), self.step))
            return sizes // self.step * m, 0
        frozen = np.array([int(self.frozen[blocks == b].sum()) for b in labels])
        covered = int(sizes.sum())
        free = self.size - covered
        free_frozen = int(self.frozen[blocks < 0].sum())
        # the units in no block take their share of n_keep first, at least their frozen ones,
        # so that the counts of a count these give are these counts again (fit_blocks)
        share = int(np.clip(math.floor(n_keep * free / self.size + 0.5), free_frozen, free)) if free else 0
        in_blocks = n_keep - share
        if self.equal_removal:  # every block loses r units
            r = int(math.floor((covered - in_blocks) / len(sizes) + 0.5))
            counts = sizes - int(np.clip(r, 0, (sizes - np.maximum(frozen, 1)).min()))
        else:
            counts = np.clip(np.floor(sizes * (in_blocks / covered) + 0.5).astype(np.int64), 1, sizes)
            for size in np.unique(sizes):  # blocks of one size keep one count
                same = sizes == size
                counts[same] = max(int(counts[same].max()), int(frozen[same].max()))
        rest = int(np.clip(n_keep - counts.sum(), free_frozen, free)) if free else 0
        return counts, rest

    def step_floor(self) -> int:
        """The least share (in steps) of linked blocks that keeps every frozen unit: at least 1."""
        labels, sizes = np.unique(self.blocks, return_counts=True)
        frozen = np.array([int(self.frozen[self.blocks == b].sum()) for b in labels])
        return max(1, int((-(-frozen * self.step // sizes)).max(initial=1)))

    def pieces(self) -> list[np.ndarray]:
        """Positions (sorted) of each tensor dim that holds only part of this group's units:
        one input of a concatenation whose result joins a residual stream, a consumer of a
        slice. Each must keep at least one unit, or its layer is left without channels."""
        if self._pieces is None:
            self._pieces = []
            for m in self.members:
                pos = self.positions(m.units)
                if not (pos < 0).any():  # (a member spanning several groups keeps units of the others)
                    self._add_piece(pos)
        return self._pieces

    def _add_piece(self, pos: np.ndarray) -> None:
        pos = np.unique(pos)
        if len(pos) < self.size and not any(np.array_equal(pos, p) for p in self._pieces):
            self._pieces.append(pos)

    def positions(self, units: np.ndarray) -> np.ndarray:
        """Position in this group of each of `units` (global ids), -1 where a unit
        belongs to another group (a member spanning several groups)."""
        pos = np.searchsorted(self.units, units)
        inside = (pos < self.size) & (self.units[np.minimum(pos, self.size - 1)] == units)
        return np.where(inside, pos, -1)


@dataclass
class ChannelGraph:
    """The channels of a model and how they are coupled (see the module docstring)."""

    groups: list[Group]
    members: list[Member]
    n_units: int
    unit_group: np.ndarray  # group id per unit
    unit_frozen: np.ndarray
    frozen_reasons: dict  # group id -> reasons
    unsupported: list  # (module path, op)
    layers: list[LayerRecord]
    untraced: list[str]
    rewrites: list = field(default_factory=list)  # (module, attr, kind, [unit arrays], container, index, original)
    output_shapes: list = field(default_factory=list)  # what the model returned, for the check of a cut
    # the torch calls of the model's own code, for the check of a cut: (module, op, [(output
    # shape, (dim, units, second dim of a channel-by-channel map or None) where the output
    # carries channels, else None)])
    op_log: list = field(default_factory=list)
    tentative: list = field(default_factory=list)  # (module, attr) of rewrites to drop if the cut fails
    # (module, units, reason): channels cut on a rule the trace alone cannot prove (chunk pieces
    # that stand for each other, a head width read for equal blocks); where the pruned model
    # fails in that module, or one of its type, they are kept with the reason (drop_tentative)
    tentative_freezes: list = field(default_factory=list)
    param_layers: set = field(default_factory=set)  # (module, param): functional layers on own parameters

    def producer_name(self, m: Member) -> str:
        """The layer name of a producing member: its module, or for a functional layer on a
        module's own parameter (``F.conv2d(x, self.w)``) the parameter's path."""
        return m.key if (m.module, m.param) in self.param_layers else m.module

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

    def add_reason(self, units: np.ndarray, kind: str, why: str) -> None:
        """Add `why` to the ``inexact`` or ``scale_free`` reasons of every group of `units`."""
        for gid in np.unique(self.unit_group[units]):
            reasons_of = getattr(self.groups[int(gid)], kind)
            if why not in reasons_of:
                reasons_of.append(why)

    def tentative_state(self) -> tuple:
        """What :meth:`drop_tentative` changes, to put back with :meth:`restore_tentative`
        where the failure it was called for turns out to have another cause."""
        return (self.unit_frozen.copy(), {gid: list(r) for gid, r in self.frozen_reasons.items()},
                list(self.rewrites), list(self.tentative), list(self.tentative_freezes))

    def restore_tentative(self, state: tuple) -> None:
        """Undo what happened since :meth:`tentative_state` gave `state` (used once)."""
        frozen, self.frozen_reasons, self.rewrites, self.tentative, self.tentative_freezes = state
        self.unit_frozen[:] = frozen
        for g in self.groups:
            g.frozen = self.unit_frozen[g.units]

    def drop_tentative(self, where: str, model: nn.Module) -> bool:
        """The cut failed in module `where`: drop the tentative rewrites of it, of a module
        around it or in it, and keep the tentatively cut channels there
        (:attr:`tentative_freezes`), in every module of those types. True if any was
        dropped or kept."""
        mods = dict(model.named_modules())
        near = [m for m, _ in self.tentative] + [m for m, _, _ in self.tentative_freezes]
        # the failing module, those around it, and those in it (a grouped conv's blocks are
        # recorded by the conv, a failing view in its parent's code reads them)
        kinds = {type(mods.get(m)) for m in near
                 if m == where or where.startswith(m + ".") or m.startswith(where + ".") or not m or not where}
        drop = {(m, a) for m, a in self.tentative if type(mods.get(m)) in kinds}
        freeze = [t for t in self.tentative_freezes if type(mods.get(t[0])) in kinds]
        if not drop and not freeze:
            return False
        self.rewrites = [r for r in self.rewrites if (r[0], r[1]) not in drop]
        self.tentative = [t for t in self.tentative if t not in drop]
        self.tentative_freezes = [t for t in self.tentative_freezes if type(mods.get(t[0])) not in kinds]
        for _, units, reason in freeze:
            self.freeze(units, reason)
        return True

    def freeze_tentative(self) -> None:
        """Keep every tentatively cut channel (a cut that is not checked by running it), and
        the channels an attribute rewritten tentatively counts (it may hold another count:
        Swin-B's num_heads of 32 heads of 32 channels), without that rewrite."""
        for _, units, reason in self.tentative_freezes:
            self.freeze(units, reason)
        self.tentative_freezes = []
        drop = set(self.tentative)
        for mod, attr, _, pieces, *_ in self.rewrites:
            if (mod, attr) in drop:
                self.freeze(np.concatenate(pieces), f"{attr} of {mod or 'the model'} may count other things than "
                                                    "these channels (a cut is checked only with verify=True)")
        self.rewrites = [r for r in self.rewrites if (r[0], r[1]) not in drop]
        self.tentative = []

    def op_units(self, index: int, model: nn.Module) -> np.ndarray:
        """The channels (units) of the output of call `index` of :attr:`op_log`, and of the
        same call (the same op, as the same call of its module's code) in every other module
        of that module's type: the code that gave one the wrong shape does so in all."""
        where, op, outs = self.op_log[index]
        mods = dict(model.named_modules())
        kind = type(mods[where]) if where and where in mods else None
        sites = {n for n, m in mods.items() if type(m) is kind} if kind is not None else {where}
        nth = sum(1 for w, _, _ in self.op_log[:index] if w == where)
        seen: dict = {}
        units = []
        for w, o, outs in self.op_log:
            if w not in sites:
                continue
            k = seen[w] = seen.get(w, -1) + 1
            if k == nth and o == op:
                units += [lay[1] for _, lay in outs if lay is not None]
        return np.unique(np.concatenate(units)) if units else np.zeros(0, np.int64)

    def rewritten(self, keep_unit: np.ndarray) -> dict:
        """{(module, attr): value} for the attributes that hold channel counts (split sizes,
        slice bounds, groups) when the units where ``keep_unit`` is True are kept."""
        out = {}
        for mod, attr, kind, pieces, container, index, original in self.rewrites:
            counts = [int(keep_unit[p].sum()) for p in pieces]
            if kind == "replace":  # entry `index` (or one entry per piece) of the tuple/list
                value = list(original)
                for i, c in (zip(index, counts) if isinstance(index, tuple) else [(index, counts[0])]):
                    value[i] = c
                out[(mod, attr)] = container(value)
            else:
                out[(mod, attr)] = counts[0] if kind == "count" else container(counts)
        return out

    def kept_reasons(self, g: Group) -> list[str]:
        """Why group `g` keeps channels, network inputs and outputs left out. A group that is
        all kept and holds a network input's channels gives none: they could not be cut
        whatever else touched them (the rows of an unbatched image that a detector's
        transform resizes), so ``explain()``, ``PruneResult.frozen()`` and the shortfall
        warning leave it out."""
        reasons = self.frozen_reasons.get(g.id, [])
        if "network input" in reasons and g.frozen.all():
            return []
        return [r for r in reasons if r not in ("network input", "network output")]

    def explain(self, max_rows: int = 10) -> str:
        """What cannot be cut, or not exactly: the groups that keep channels (largest first,
        network inputs and outputs left out) with the reasons, and the groups whose cut
        changes what the model computes."""
        kept = sorted(((int(g.frozen.sum()), g, self.kept_reasons(g)) for g in self.groups if g.frozen.any()),
                      key=lambda t: -t[0])
        kept = [k for k in kept if k[2]]
        lines = [f"kept whole: {sum(n for n, _, _ in kept)} channels in {len(kept)} groups"]
        for n, g, reasons in kept[:max_rows]:
            lines.append(f"  {g.name}: {n} of {g.size} channels ({'; '.join(reasons[:2])})")
        inexact = [g for g in self.groups if g.inexact]
        if inexact:
            lines.append(f"cut inexactly (fine-tuning or recovery refits them): {len(inexact)} groups")
            for g in inexact[:max_rows]:
                lines.append(f"  {g.name}: {g.inexact[0]}")
        return "\n".join(lines)

    def table(self, max_members: int = 4) -> str:
        """A readable table: group id, channels, prunable channels, the layers that write
        the group's channels (producers) and how many tensors are sliced with them."""
        rows = [f"{'group':>5}  {'channels':>8}  {'prunable':>8}  producers (+ coupled tensors)"]
        for g in self.groups:
            prods = list(dict.fromkeys(self.producer_name(m) for m in g.members if m.role == "out"))
            shown = ", ".join(prods[:max_members]) + (f", ... (+{len(prods) - max_members} layers)" if len(prods) > max_members else "")
            if not prods:
                shown = g.name
            others = len(g.members) - sum(1 for m in g.members if m.role == "out")
            note = "" if g.prunable else "  [kept: " + "; ".join(self.frozen_reasons.get(g.id, ["frozen"])[:2]) + "]"
            rows.append(f"{g.id:>5}  {g.size:>8}  {g.prunable:>8}  {shown} (+{others}){note}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def occurrence_rank(values: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """For each entry of `values`, how many earlier entries hold the same value (0 for the
    first): which copy of a unit a position is, where a dim holds a unit more than once.
    ``order``: the caller's ``np.argsort(values, kind="stable")``, where it has one."""
    if order is None:
        order = np.argsort(values, kind="stable")
    ranked = values[order]
    out = np.empty(len(values), np.int64)
    out[order] = np.arange(len(values)) - np.searchsorted(ranked, ranked)
    return out


def place_rows(pos: np.ndarray, rows: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of a producer laid out by unit: row i goes to position ``pos[i]`` of a (size,
    copies * row width) matrix (``pos[i] < 0``: not in it), each write of a position, in row
    order, in columns of its own (an SE expand writing both halves of a ghost module's
    concat writes each unit twice: the unit's filter is both rows, never two rows racing
    for one place). Positions no row writes are zeros; dtype and device are the rows'."""
    rows = rows.reshape(len(pos), -1)
    width = rows.shape[1]
    inside = np.flatnonzero(pos >= 0)
    rank = occurrence_rank(pos[inside])
    copies = int(rank.max()) + 1 if rank.size else 1
    out = torch.zeros(size, copies * width, dtype=rows.dtype, device=rows.device)
    for k in range(copies):
        sel = inside[rank == k]
        out[torch.from_numpy(pos[sel]).to(rows.device), k * width:(k + 1) * width] = rows[torch.from_numpy(sel).to(rows.device)]
    return out


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
    _check_eager(model)
    inputs = as_inputs(example_inputs)
    try:
        rec, _ = record(model, inputs, dict(example_kwargs or {}))
    except GraphError:
        raise
    except OpRuleError as e:  # not the example inputs' fault
        raise GraphError(f"{e}. Fix the rule, or remove it to let pyprune keep the channels the op touches") from e
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


def _check_eager(model: nn.Module) -> None:
    """Refuse a compiled model before tracing it: pyprune follows an eager module's calls
    and rewrites its layers, which TorchScript and ``torch.compile`` replace with their own
    code (the trace would fail, or see no layer at all)."""
    for name, m in model.named_modules():
        where = f"model.{name}" if name else "model"
        if isinstance(m, torch.jit.ScriptModule):
            raise TypeError(f"{where}: {type(m).__name__} is TorchScript (torch.jit.script or torch.jit.trace): "
                            "pyprune cannot trace or cut compiled code. Prune the eager nn.Module it was made from, "
                            "then script or trace the pruned model")
        if isinstance(getattr(m, "_orig_mod", None), nn.Module) and type(m).__name__ == "OptimizedModule":
            raise TypeError(f"{where}: a torch.compile'd module (OptimizedModule): prune the module it wraps, "
                            f"{where}._orig_mod, then compile the pruned model")


def _assemble(model: nn.Module, rec) -> ChannelGraph:
    n = rec.n_ids
    # A layer called several times holds the same filters each time: unite its records. So
    # do layers that hold one tensor (tied weights): cut alike, the tie survives the cut.
    by_key: dict = {}
    for m in rec.members:
        by_key.setdefault((*rec.tied.get((m.module, m.param), (m.module, m.param)), m.dim), []).append(m)
    for recs in by_key.values():
        for other in recs[1:]:
            if len(other.ids) == len(recs[0].ids):
                rec.unite(recs[0].ids, other.ids)
            else:
                rec.freeze(np.concatenate([recs[0].ids, other.ids]), f"{other.module} reused with other shapes")
    # A tied tensor whose other holder the trace does not follow (an embedding read
    # functionally, a layer that never ran) cannot be cut for one holder alone.
    held: dict = {}
    for m in rec.members:
        held.setdefault((m.module, m.param), []).append(m.ids)
    for holder, owner in rec.tied.items():
        if (holder in held) != (owner in held):
            known, other = (holder, owner) if holder in held else (owner, holder)
            rec.freeze(np.concatenate(held[known]), f"{'.'.join(known)} is one tensor with {'.'.join(other)}, "
                                                    "whose channels pyprune does not follow")
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
    members = [Member(m.module, m.param, m.dim, unit_of[m.ids], m.role, m.groups) for m in rec.members]
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
    for g in groups:
        g._pieces = []
    for m in members:
        gids = np.unique(group_of_unit[m.units])
        for g in gids:
            groups[int(g)].members.append(m)
            if m.role == "norm":
                groups[int(g)].norm_over_channels = True
        if len(gids) == 1:  # Group.pieces, found here once instead of per group and plan
            g = groups[int(gids[0])]
            g._add_piece(g.positions(m.units))
    before = frozen.copy()
    graph = ChannelGraph(groups, members, int(n_units), group_of_unit, frozen, reasons, [], rec.layers, rec.untraced,
                         output_shapes=list(rec.output_shapes), param_layers=set(rec.param_layers))
    for kind in ("inexact", "scale_free"):  # (ids, reason) recorded -> the reasons of each group
        for ids, why in getattr(rec, kind):
            graph.add_reason(unit_of[ids], kind, why)
    for ids, n in rec.min_keep:
        gids = np.unique(group_of_unit[unit_of[ids]])
        if len(gids) == 1:
            g = groups[int(gids[0])]
            g.min_keep = min(g.size, max(g.min_keep, int(n)))
    graph.op_log = [(where, op, [(shape, None if lay is None else (lay.dim, unit_of[lay.ids], lay.cross))
                                 for shape, lay in outs])
                    for where, op, outs in rec.op_log]
    _assign_blocks(graph, rec, unit_of)
    _assign_rewrites(graph, rec, unit_of)
    for mod, ids, why in rec.tentative_freezes:
        graph.tentative_freezes.append((mod, np.unique(unit_of[ids]), why))
    # An unknown op matters only where it touched channels that could otherwise be pruned.
    legit |= graph.unit_frozen & ~before  # frozen since, by blocks or rewrites
    for where, op, ids in rec.unknown:
        if len(ids) and legit[unit_of[ids]].all():
            continue
        if (where, op) not in graph.unsupported:
            graph.unsupported.append((where, op))
    return graph


def _assign_blocks(graph: ChannelGraph, rec, unit_of: np.ndarray) -> None:
    """Turn the recorded block constraints (grouped convs, chunks, split sizes, heads) into
    one partition per group: the common refinement of its constraints. Equal pieces that
    shuffled partners straddle keep those partners (:func:`_without_straddlers`); pieces
    that span as many blocks of unequal sizes lose as many units per block; a constraint
    across several groups, or constraints no such partition serves, link their groups
    (:func:`_link_groups`), which freezes them where no step serves."""
    per_group: dict = {}
    linked: list = []  # equal constraints across groups: (units per piece, reason, module)
    for pieces, equal, reason, module in rec.blocks:
        pieces = [unit_of[p] for p in pieces]
        units = _block_units(pieces, same_multiple=equal)
        if units is None and equal:
            units = _without_straddlers(graph, pieces, reason, module)
        elif units is None and _same_units(pieces):
            units = []  # sizes rewritten one by one, each a multiple of one count: tentative as below
            graph.tentative_freezes.append((module, np.unique(np.concatenate(pieces)),
                                            f"{reason}: its pieces share coupled channels"))
        elif units is not None and _block_units(pieces, merge_same=False, same_multiple=equal) is None:
            # pieces that stand for each other: a count that holds whatever is cut, unless the
            # module's code also sizes them by a number no attribute holds; the check of the
            # cut then fails there and they are kept, as they were before this rule
            graph.tentative_freezes.append((module, np.unique(np.concatenate(pieces)),
                                            f"{reason}: its pieces share coupled channels"))
        if units is None:
            if not equal and _one_piece_is_the_others(pieces):
                # pieces sized one by one (a split into attribute sizes) one of which is coupled
                # channel by channel with the others together (MambaOut's gate g times
                # cat(i, c)): the rewritten sizes follow what each piece keeps, so they need no
                # partition; a piece read by a layer alone keeps a channel (Group.pieces),
                # another may keep none
                continue
            graph.freeze(np.unique(np.concatenate(pieces)), f"{reason}: its pieces share coupled channels")
            continue
        allu = np.concatenate(units) if units else np.zeros(0, np.int64)
        gids = np.unique(graph.unit_group[allu])
        if len(gids) > 1 and equal:
            linked.append((units, f"{reason}: its pieces span several coupled groups", module))
            continue
        for gid in gids:  # pieces that only need a channel each: served within every group
            parts = [u[graph.unit_group[u] == gid] for u in units]
            parts = [p for p in parts if len(p)]
            if len(parts) > 1:
                per_group.setdefault(int(gid), []).append((parts, equal, reason, module))
    failed = []
    for gid, cons in per_group.items():
        g = graph.groups[gid]
        label = _cells(g, [units for units, _, _, _ in cons])
        covered = label >= 0
        labels, sizes = np.unique(label[covered], return_counts=True)
        size_of = dict(zip(labels.tolist(), sizes.tolist()))
        ok = True
        for units, equal, _, _ in cons:  # each piece of an equal constraint: the same block sizes
            if not equal:
                continue
            shapes = {tuple(sorted(size_of[int(b)] for b in np.unique(label[g.positions(u)]))) for u in units}
            ok &= len(shapes) == 1
        if not ok:
            if all(len({len(np.unique(label[g.positions(u)])) for u in units}) == 1 for units, e, _, _ in cons if e) \
                    and all(_whole_blocks(label, p) for p in g.pieces()):
                # each piece of every equal constraint spans as many blocks, of unequal sizes
                # (ShuffleNet's 40 channels per group, shuffled in threes, its partners that span
                # two groups kept: 13, 12 and 13 others): they stay as large if every block
                # loses as many units
                g.blocks, g.equal_blocks, g.equal_removal = label, True, True
                continue
            failed.append(gid)
            continue
        g.blocks = label
        g.equal_blocks = all(e for _, e, _, _ in cons)
    if linked or failed:
        _link_groups(graph, per_group, linked, failed)
    links = []
    for a, b, reason, module in rec.links:
        ga, gb = np.unique(graph.unit_group[unit_of[a]]), np.unique(graph.unit_group[unit_of[b]])
        if len(ga) == 1 and len(gb) == 1 and ga[0] != gb[0]:
            links.append(((int(ga[0]), int(gb[0])), reason))
    links += _attribute_links(graph, rec, unit_of)
    if links:
        _link_shares(graph, per_group, links)


def _attribute_links(graph: ChannelGraph, rec, unit_of: np.ndarray) -> list:
    """One attribute read for the channel counts of tensors in several groups, each tensor
    all the channels of its group, as many in each (NextViT's head_dim splits the query's
    heads and the value's: two groups, as the value is not multiplied with the key): the
    groups keep one share (:func:`_link_shares`), so the attribute counts as many in each
    whatever is cut. Without the link they keep their channels (:func:`_assign_rewrites`)."""
    pieces_of: dict = {}
    for r in rec.rewrites:
        if r.kind == "count" and not r.tentative and not r.kept and len(r.pieces) == 1:
            pieces_of.setdefault((r.module, r.attr), []).append(unit_of[r.pieces[0]])
    links = []
    for (mod, attr), pieces in pieces_of.items():
        gids = set()
        for p in pieces:
            gid = np.unique(graph.unit_group[p])
            if len(gid) != 1 or len(p) != len(pieces[0]) or graph.groups[int(gid[0])].size != len(np.unique(p)) \
                    or len(np.unique(p)) != len(p):
                break
            gids.add(int(gid[0]))
        else:
            first, *others = sorted(gids)
            links += [((first, o), f"{mod}.{attr} is read for the channel counts of both") for o in others]
    return links


def _without_straddlers(graph: ChannelGraph, pieces: list, reason: str, module: str) -> list | None:
    """Equal pieces that some units span (a channel shuffle's partners, cut together,
    straddle two groups of the grouped conv after it: ShuffleNet's 20 channels per group,
    shuffled in threes): those units are kept, and the pieces' other units are sized as
    usual (:func:`_block_units`). The kept ones then add as much to every piece (the pieces
    were as large, and the partition's check gives them as many other units each).
    Tentative, as the rules of :func:`_assign_blocks`. None where no such split serves."""
    counts = [dict(zip(*[a.tolist() for a in np.unique(p, return_counts=True)])) for p in pieces]
    where: dict = {}
    for c in counts:
        for u, n in c.items():
            where.setdefault(u, []).append(n)
    straddle = np.asarray(sorted(u for u, ns in where.items() if 1 < len(ns) and (len(ns) < len(pieces)
                                                                                  or len(set(ns)) > 1)), np.int64)
    if not len(straddle):
        return None
    units = _block_units([p[~np.isin(p, straddle)] for p in pieces])
    if units is None or not units:
        return None
    graph.freeze(straddle, f"{reason}: channels that span two of its pieces")
    graph.tentative_freezes.append((module, np.unique(np.concatenate(pieces)), f"{reason}: its pieces share coupled "
                                                                                "channels"))
    return units


def _whole_blocks(label: np.ndarray, positions: np.ndarray) -> bool:
    """Whether `positions` hold every position of each block they touch (none in no block)."""
    touched = np.unique(label[positions])
    return bool((touched >= 0).all() and np.isin(label, touched).sum() == len(np.unique(positions)))


def _cells(g: Group, constraints: list) -> np.ndarray:
    """The common refinement of constraints (each a list of unit arrays, its pieces) over
    group `g`: a label per position, -1 where no constraint reaches."""
    keys = np.full((g.size, len(constraints)), -1, np.int64)
    for c, units in enumerate(constraints):
        for b, u in enumerate(units):
            pos = g.positions(u)
            keys[pos[pos >= 0], c] = b
    covered = (keys >= 0).any(1)
    _, label = np.unique(keys, axis=0, return_inverse=True)
    return np.where(covered, label.reshape(-1), -1)


def _link_groups(graph: ChannelGraph, per_group: dict, linked: list, failed: list) -> None:
    """Equal-count constraints that blocks within one group cannot serve: a grouped conv
    reading a concatenation of several groups (ShuffleNet's stages: a stride-2 unit
    concatenates its branch with the pooled stream), or two grouped convs tiling one group
    differently. The groups they join are cut as one: each group's positions are split
    into cells (the common refinement of every constraint on it, the positions no
    constraint reaches a cell too), and every cell keeps m / step of its units, step the
    greatest common divisor of all the cells' sizes and m one count for all of them. The
    pieces of an equal constraint, as large as each other, then keep as many, whichever
    cells they span. A step of 1 leaves nothing to cut. Tentative (see tentative_freezes):
    where the cut fails in a module that made one of these constraints, they are kept."""
    joins = [np.unique(graph.unit_group[np.concatenate(units)]).tolist() for units, _, _ in linked]
    for gids in _components([[gid] for gid in failed] + joins):
        mine = set(gids)
        cons = [(c[0], c[2], c[3]) for gid in gids for c in per_group.get(gid, ()) if c[1]]  # equal ones
        across = [c for c in linked if graph.unit_group[c[0][0][0]] in mine]
        cons += across
        groups = [graph.groups[gid] for gid in gids]
        units = np.concatenate([g.units for g in groups])
        reasons = [r for _, r, _ in across] + [
            "; ".join(dict.fromkeys(c[2] for c in per_group[gid])) + ": block constraints that one partition "
            "cannot serve" for gid in gids if gid in failed]
        reasons = list(dict.fromkeys(reasons))
        labels = {g.id: _cell_labels(g, [u for u, _, _ in cons] + [list(c[0]) for c in per_group.get(g.id, ())
                                                                  if not c[1]]) for g in groups}
        step = _common_step(labels.values())
        even = all(len({len(np.unique(p)) for p in u}) == 1 for u, _, _ in cons)
        if step < 2 or not even:
            graph.freeze(units, "; ".join(reasons))
            continue
        _set_link(groups, labels, step, "grouped convs")
        for module in dict.fromkeys(m for _, _, m in cons):
            graph.tentative_freezes.append((module, units, "; ".join(reasons)))


def _link_shares(graph: ChannelGraph, per_group: dict, links: list) -> None:
    """Groups that must keep the same share (a head width that may be the input's width
    over the head count, heads merged back to a width the module read from its input:
    ``_trace._link_to_input_width``, ``_trace._link_merged_heads``) are cut as one, the way
    :func:`_link_groups` cuts its groups: every cell (the common refinement of each group's
    block constraints) keeps m / step of its units. Where no step of 2 or more serves, or a
    group is linked already, they are left as they were (a uniform ratio keeps them
    matched; the check of a cut finds where another does not)."""
    for gids in _components([list(pair) for pair, _ in links]):
        groups = [graph.groups[gid] for gid in gids]
        if any(g.linked or g.frozen.all() for g in groups):
            continue
        labels = {g.id: _cell_labels(g, [c[0] for c in per_group.get(g.id, ())]) for g in groups}
        step = _common_step(labels.values())
        if step >= 2:
            _set_link(groups, labels, step, "heads")


def _components(joins: list) -> list[list[int]]:
    """The connected components (each sorted) of the groups that `joins` (lists of group
    ids, each list joined into one) put together: a union-find."""
    parent: dict = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for first, *others in joins:
        find(first)
        for other in others:
            parent[find(other)] = find(first)
    comps: dict = {}
    for gid in list(parent):
        comps.setdefault(find(gid), []).append(gid)
    return [sorted(gids) for gids in comps.values()]


def _cell_labels(g: Group, constraints: list) -> np.ndarray:
    """The cells of group `g` for a link: the common refinement of `constraints` and of the
    tensor dims that hold part of the group (Group.pieces: each a cell of its own, so every
    cell keeping a unit leaves no layer without channels); the positions no constraint
    reaches are one more cell."""
    lab = _cells(g, list(constraints) + [[g.units[p]] for p in g.pieces()])
    lab[lab < 0] = lab.max(initial=-1) + 1
    return lab


def _common_step(labels) -> int:
    """The greatest common divisor of the sizes of every cell in `labels` (arrays of cell
    labels): the finest share that every cell can keep exactly."""
    sizes = [c for lab in labels for c in np.unique(lab, return_counts=True)[1]]
    return int(np.gcd.reduce(np.asarray(sizes, np.int64)))


def _set_link(groups: list, labels: dict, step: int, kind: str) -> None:
    """Cut `groups` as one: every cell of each (labels, by group id) keeps m / step of its
    units, m one count for all of them; `kind` says what links them (for the warnings)."""
    ids = tuple(g.id for g in groups)
    for g in groups:
        g.blocks, g.equal_blocks, g.step, g.linked, g.link_kind = labels[g.id], True, step, ids, kind
        if kind == "heads":
            g.equal_removal = False


def _one_piece_is_the_others(pieces: list[np.ndarray]) -> bool:
    """One piece holds exactly the units of all the others, which share none, and no piece
    holds a unit twice."""
    sets = [set(p.tolist()) for p in pieces]
    if any(len(s) != len(p) for s, p in zip(sets, pieces)):
        return False
    for a, whole in enumerate(sets):
        rest = [s for b, s in enumerate(sets) if b != a]
        if sum(len(s) for s in rest) == len(whole) and set().union(*rest) == whole:
            return True
    return False


def _block_units(pieces: list[np.ndarray], merge_same: bool = True,
                 same_multiple: bool = True) -> list[np.ndarray] | None:
    """The units of each piece that decide its size. A unit found as often in every piece
    (channel shuffle interleaves partners) changes them alike and is left out; every other
    unit must lie in one piece, each as often (the piece's size is then a multiple of its
    units). Pieces holding the same units as often as each other (the query and key of an
    attention whose dot product couples them) keep the same count whatever is cut, so one
    of them stands for all. None when the pieces cannot be sized by their units.

    ``same_multiple=False`` is for pieces whose sizes are rewritten one by one (split
    sizes held by attributes): each piece's size is then counted from its own kept
    channels, so one piece may hold its units twice and another once (LeViT's
    ``split([key_dim, key_dim, val_dim])``, its query and key coupled unit by unit: the
    pieces q+k and v)."""
    distinct: list = []
    for p in pieces:
        key = np.sort(p)
        if not merge_same or not any(np.array_equal(key, d) for d in distinct):
            distinct.append(key)
    if len(distinct) == 1 and len(pieces) > 1:
        return []
    counts = []
    for p in distinct:
        u, c = np.unique(p, return_counts=True)
        counts.append(dict(zip(u.tolist(), c.tolist())))
    everywhere = set.intersection(*(set(c) for c in counts)) if counts else set()
    neutral = {u for u in everywhere if len({c[u] for c in counts}) == 1}
    out, mult = [], set()
    seen: set = set()
    for c in counts:
        own = [u for u in c if u not in neutral]
        if seen & set(own):
            return None
        seen |= set(own)
        mult |= {c[u] for u in own}
        out.append(np.asarray(sorted(own), np.int64))
    if same_multiple and len(mult) > 1:
        return None
    return [o for o in out if len(o)] if any(len(o) for o in out) else []


def _same_units(pieces: list[np.ndarray]) -> bool:
    """Every piece holds the same units, each unit as often within a piece (heads split by
    head count, each head the same channels: CoaT's windows of 2, 3 and 3 heads), so each
    piece keeps its own multiple of one count whatever is cut: split sizes rewritten one
    by one follow it (for pieces sized one by one only: equal pieces are
    :func:`_block_units`'s)."""
    first = np.unique(pieces[0])
    for p in pieces:
        u, c = np.unique(p, return_counts=True)
        if not np.array_equal(u, first) or (c != c[0]).any():
            return False
    return True


def _whole_block(graph: ChannelGraph, units: np.ndarray) -> tuple[int, int, int] | None:
    """(group, block, size) when `units` are exactly one channel block of one group."""
    u = np.unique(units)
    gids = np.unique(graph.unit_group[u])
    if len(gids) != 1:
        return None
    g = graph.groups[int(gids[0])]
    if g.blocks is None:
        return None
    labels = np.unique(g.blocks[g.positions(u)])
    if len(labels) != 1 or labels[0] < 0:
        return None
    size = int((g.blocks == labels[0]).sum())
    return (g.id, int(labels[0]), size) if size == len(u) else None


def _equal_blocks(graph: ChannelGraph, a: np.ndarray, b: np.ndarray) -> bool:
    """Two pieces that are blocks of one size in one group: whatever is cut, they keep the
    same count (Group.block_counts: blocks of one size keep one count). The head width of
    an attention read for its query and its value, each of them a block of the heads."""
    if len(a) != len(b) or len(np.unique(a)) != len(a) or len(np.unique(b)) != len(b):
        return False
    wa, wb = _whole_block(graph, a), _whole_block(graph, b)
    return wa is not None and wb is not None and wa[0] == wb[0] and wa[2] == wb[2]


def _linked_alike(graph: ChannelGraph, a: np.ndarray, b: np.ndarray) -> bool:
    """Two pieces (units, a unit repeated where the tensor repeats it: merged heads) of groups
    linked to keep one share (``Group.linked``) that keep as many units whatever that share:
    as long, and each made of whole cells, every unit of a cell as often."""
    if len(a) != len(b):
        return False
    links = set()
    for piece in (a, b):
        u, c = np.unique(piece, return_counts=True)
        for gid in np.unique(graph.unit_group[u]):
            g = graph.groups[int(gid)]
            if not g.linked or g.blocks is None:
                return False
            links.add(g.linked)
            for cell in np.unique(g.blocks[np.isin(g.units, u)]):
                cu = g.units[g.blocks == cell]
                if not np.isin(cu, u).all():
                    return False
                mult = c[np.searchsorted(u, cu)]
                if (mult != mult[0]).any():
                    return False
    return len(links) == 1


def _cut_alike(graph: ChannelGraph, a: np.ndarray, b: np.ndarray) -> bool:
    """Two pieces that keep as many units whatever is cut: the same units, equal blocks of
    one group, or groups linked to keep one share."""
    return np.array_equal(np.sort(a), np.sort(b)) or _equal_blocks(graph, a, b) or _linked_alike(graph, a, b)


def _unalike_dropped(graph: ChannelGraph, dropped: list, first: list | None, unit_of: np.ndarray) -> list:
    """The channels of readings of an attribute left out beside a certain one (the value was
    as long as another dim there, so it may be that dim's) that are not cut alike with the
    attribute's certain reading `first` (None: the attribute keeps its value): one unit
    array per such reading."""
    out = []
    for r in dropped:
        pieces = [unit_of[p] for p in r.pieces]
        if first is not None and r.kind == "count" and len(pieces) == len(first) and all(
                _cut_alike(graph, a, b) for a, b in zip(pieces, first)):
            continue
        out.append(np.unique(np.concatenate(pieces)))
    return out


def _assign_rewrites(graph: ChannelGraph, rec, unit_of: np.ndarray) -> None:
    """Attributes to rewrite after a cut. One attribute read for several tensors must get the
    same value from each: otherwise the units involved keep their count."""
    by_attr: dict = {}
    for r in rec.rewrites:
        by_attr.setdefault((r.module, r.attr), []).append(r)
    for (mod, attr), recs in by_attr.items():
        # a reading where the value was unambiguous says what the attribute is: the
        # tentative ones (the value as long as another dim) are left out then. A reading
        # for channels that keep their count (a split kept whole) is checked against such
        # readings only: alone, or beside tentative ones, it says nothing (the number may
        # be a literal the attribute happens to equal) and is left out
        sure = [r for r in recs if not r.tentative and not r.kept]
        dropped = [r for r in recs if r.tentative and not r.kept] if sure else []
        recs = sure + [r for r in recs if r.kept] if sure else [r for r in recs if not r.kept]
        if not recs:
            continue
        if all(r.tentative for r in recs) and recs[0].kind == "count" and attr not in _HEAD_WIDTHS \
                and len(recs[0].pieces[0]) in rec.scalar_uses.get(mod, {}):
            # a number that may count other things (as long as another dim, or one of several
            # attributes as wide), not named as a head's width, and that the module's code
            # also uses as a value (a window compared with distances): not rewritten; where
            # the cut then fails there, or is not checked, its channels are kept
            graph.tentative_freezes.append((mod, np.unique(unit_of[recs[0].pieces[0]]),
                                            f"{mod}.{attr} may count these channels, and the code of {mod} uses its "
                                            f"number ({len(recs[0].pieces[0])}) as a value: it is not rewritten"))
            continue
        pieces = [[unit_of[p] for p in r.pieces] for r in recs]
        first = pieces[0]
        same = all(r.kind == recs[0].kind and len(p) == len(first)
                   and all(_cut_alike(graph, a, b) for a, b in zip(p, first)) for r, p in zip(recs, pieces))
        tentative = all(r.tentative for r in recs)
        if same and not all(np.array_equal(np.sort(a), np.sort(b)) or _linked_alike(graph, a, b)
                            for p in pieces for a, b in zip(p, first)):
            # equal blocks of one group (a head width): tentative as the pieces above, and
            # inexact, since forward may compute with it (a scale 1 / sqrt(head dim))
            units = np.unique(np.concatenate([u for p in pieces for u in p]))
            graph.tentative_freezes.append((mod, units, f"{mod}.{attr} is read for channel counts of tensors that "
                                                        "are cut differently"))
            graph.add_reason(units, "inexact", f"{mod}.{attr} is rewritten to the kept count of each head: a number "
                                               "forward computes from it (a scale 1/sqrt(head dim)) changes with it")
        # Readings left out above may read the attribute after all (a head width as long as
        # the tokens): then their channels keep the count the attribute is given, which an
        # independent cut of them breaks. Where they are not cut alike with the attribute's
        # certain reading, the cut that treats them as another dim's is tentative: where it
        # fails, or is not checked, the attribute keeps its value and both keep their channels.
        unalike = _unalike_dropped(graph, dropped, first if same else None, unit_of)
        if unalike:
            units = np.unique(np.concatenate(unalike + ([u for p in pieces for u in p] if same else [])))
            why = (f"{mod}.{attr} surely counts some of these channels and may count the others (a dim as long "
                   "is read beside it), which are cut apart from them" if same else
                   f"{mod}.{attr} keeps its value and may count these channels (a dim as long is read beside it)")
            why += "; cut only where the check of the cut passes (verify=True)"
            graph.tentative_freezes.append((mod, units, why))
            tentative = same  # (recs hold a certain reading here, so it was False)
        if not same:
            if not tentative:  # (a tentative one is left out: the value was likely another dim's)
                graph.freeze(np.concatenate([u for p in pieces for u in p]),
                             f"{mod}.{attr} is read for channel counts of tensors that are cut differently")
            continue
        if tentative:
            graph.tentative.append((mod, attr))
        graph.rewrites.append((mod, attr, recs[0].kind, first, recs[0].container, recs[0].index, recs[0].original))
        if recs[0].kind == "count":
            # the number also used as a value in the module's code (a window compared with
            # token distances, a width divided by): whichever attribute it came from, it may
            # be the one rewritten, and the cut then computes something else there
            value = len(first[0])
            op = rec.scalar_uses.get(mod, {}).get(value)
            if op:
                graph.add_reason(np.unique(first[0]), "inexact",
                                 f"{mod or 'the model'}.{attr} ({value}) is rewritten to the kept count, and the "
                                 f"code of {mod or 'the model'} uses {value} as a value ({op}): it may be that "
                                 "attribute's, and change with the cut")
