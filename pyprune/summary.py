"""Parameter and MAC counts, per layer and total, before and after pruning.

:class:`CostModel` predicts them for keep counts per group without cutting (the budget
solver's cost). We count them ourselves from the traced layer output shapes: MACs are the
multiply-accumulates of convolutions (N*H_out*W_out*C_out*C_in/groups*k_h*k_w) and Linear
layers (rows*in*out); element-wise work (norms, activations, pooling) is not counted, the
same convention as the usual counters (thop, fvcore's conv/linear count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .layers import handler_for, layer_macs


@dataclass
class LayerStat:
    name: str
    kind: str
    shape_before: tuple
    shape_after: tuple
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int


@dataclass
class Summary:
    layers: list = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    @property
    def params_ratio(self) -> float:
        """Parameters after over before (1.0 where there were none: nothing was removed)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def macs_ratio(self) -> float:
        """MACs after over before (1.0 where no layer counts any: nothing was removed)."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def table(self, max_rows: int | None = None) -> str:
        head = f"{'layer':<40} {'kind':<7} {'shape before':>18} {'shape after':>18} {'params':>18} {'MACs':>22}"
        lines = [head, "-" * len(head)]
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for r in rows:
            lines.append(
                f"{r.name[:40]:<40} {r.kind:<7} {str(r.shape_before):>18} {str(r.shape_after):>18} "
                f"{_fmt(r.params_before):>8} -> {_fmt(r.params_after):<7} {_fmt(r.macs_before):>9} -> {_fmt(r.macs_after):<9}"
            )
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more layers")
        lines.append("-" * len(head))
        lines.append(
            f"total params {_fmt(self.params_before)} -> {_fmt(self.params_after)} ({100 * (1 - self.params_ratio):.1f}% fewer); "
            f"MACs {_fmt(self.macs_before)} -> {_fmt(self.macs_after)} ({100 * (1 - self.macs_ratio):.1f}% fewer)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table(max_rows=30)


def _fmt(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def param_macs(kind: str, w, out_shape: tuple) -> int:
    """MACs of a functional conv or linear with weight `w` (as it is now: pruned or not)
    whose output had `out_shape` when traced: every output element (at the weight's current
    output count) multiplies one filter, ``w[0]``, of inputs."""
    if not hasattr(w, "shape") or not len(w.shape) or not len(out_shape):
        return 0
    c = 1 if kind == "conv" else len(out_shape) - 1  # where the output channels are
    positions = math.prod(out_shape) // max(out_shape[c], 1)
    return int(positions * w.shape[0] * math.prod(w.shape[1:]))


def record_macs(m: nn.Module, rec) -> int:
    """MACs of one traced call `rec` of layer module `m` as it is now: its handler's count, or
    for a functional layer on `m`'s own parameter (``rec.param``) :func:`param_macs`."""
    if rec.param:
        return param_macs(rec.kind, getattr(m, rec.param, None), rec.out_shape)
    return layer_macs(m, rec.out_shape)


def snapshot(model: nn.Module, layers) -> dict:
    """Per traced layer (kind, shape, params, MACs of all its calls), plus the model's total
    params (a tensor held by several layers counted once)."""
    mods = dict(model.named_modules())
    snap = {"__total_params__": sum(p.numel() for p in model.parameters())}
    for rec in layers:
        if rec.module not in mods:
            continue
        m = mods[rec.module]
        name, macs = rec.name, record_macs(m, rec)
        if rec.param:  # a functional layer on the module's own parameter
            w = getattr(m, rec.param, None)
            shape, params = tuple(getattr(w, "shape", ())), getattr(w, "numel", lambda: 0)()
        else:
            h = handler_for(m)
            shape, params = (h.shape(m) if h else ()), _own_params(m)
        if name in snap:  # called again: its MACs again
            kind, shape, params, before = snap[name]
            snap[name] = (kind, shape, params, before + macs)
            continue
        snap[name] = (rec.kind, shape, params, macs)
    return snap


def compare(before: dict, after: dict) -> Summary:
    """Summary from two snapshots of the same model."""
    s = Summary()
    for name, (kind, shape, params, macs) in ((k, v) for k, v in before.items() if k != "__total_params__"):
        _, shape_a, params_a, macs_a = after.get(name, (kind, shape, params, macs))
        s.layers.append(LayerStat(name, kind, shape, shape_a, params, params_a, macs, macs_a))
    s.params_before = before["__total_params__"]
    s.params_after = after["__total_params__"]
    s.macs_before = sum(r.macs_before for r in s.layers)
    s.macs_after = sum(r.macs_after for r in s.layers)
    return s


def count(model: nn.Module, layers) -> tuple[int, int]:
    """(params, MACs) of a model over its traced layers."""
    snap = snapshot(model, layers)
    return snap["__total_params__"], sum(v[3] for k, v in snap.items() if k != "__total_params__")


class CostModel:
    """Costs of the pruned model for keep counts per group, without cutting.

    Every cost kind is a sum over tensors (params) or layers (MACs) of a base cost times,
    for each of its pruned dims, the kept share of the units that dim holds. ``kinds``
    lists what :meth:`__call__` returns; a new kind (latency) is one more entry.
    """

    kinds = ("params", "macs")

    def __init__(self, model: nn.Module, graph):
        self.graph = graph
        self.latency = None  # a pyprune.latency.LatencyModel (attach_latency): the third kind
        self.sizes = np.array([g.size for g in graph.groups], np.float64)
        # per (module, param, dim): the groups its units belong to and their shares
        share = {}
        for m in graph.members:
            gids, counts = np.unique(graph.unit_group[m.units], return_counts=True)
            share[(m.module, m.param, m.dim)] = (gids, counts / len(m.units))
        dims: dict = {}
        for (mod, param, dim) in share:
            dims.setdefault((mod, param), []).append(dim)
        self._share = share
        held: set = set()  # a tensor held by several modules (tied) counts once
        self._params = [(mod, pname, p.numel(), dims.get((mod, pname), []))
                        for mod, sub in model.named_modules() for pname, p in sub.named_parameters(recurse=False)
                        if not (id(p) in held or held.add(id(p)))]
        mods = dict(model.named_modules())
        self._macs = []
        for rec in graph.layers:  # every call of a layer (one called twice costs twice)
            if rec.module not in mods:
                continue
            macs = record_macs(mods[rec.module], rec)
            param = rec.param or getattr(handler_for(mods[rec.module]), "cost_param", "weight")
            if macs:
                self._macs.append((rec.module, param, macs, dims.get((rec.module, param), [])))
        self.base = self({})

    def dim_share(self, key: tuple, keep_frac: np.ndarray) -> float:
        """Kept share of the units along dim `key` = (module, param, dim)."""
        gids, share = self._share[key]
        return float((share * keep_frac[gids]).sum())

    def _scaled(self, entries, keep_frac) -> float:
        total = 0.0
        for mod, param, base, dims in entries:
            f = 1.0
            for d in dims:
                f *= self.dim_share((mod, param, d), keep_frac)
            total += base * f
        return total

    def attach_latency(self, latency) -> None:
        """Add the ``latency`` kind (seconds predicted by a :class:`pyprune.latency.LatencyModel`)."""
        self.latency = latency
        self.kinds = ("params", "macs", "latency")
        self.base = self({})

    def keep_fractions(self, n_keep: dict) -> np.ndarray:
        keep_frac = np.ones(len(self.sizes))
        for gid, k in n_keep.items():
            keep_frac[gid] = k / self.sizes[gid]
        return keep_frac

    def __call__(self, n_keep: dict) -> dict:
        """{kind: predicted cost} when group id -> units kept (others keep everything)."""
        keep_frac = self.keep_fractions(n_keep)
        out = {"params": self._scaled(self._params, keep_frac), "macs": self._scaled(self._macs, keep_frac)}
        if self.latency is not None:
            out["latency"] = self.latency.predict(keep_frac)
        return out
