"""Parameter and MAC counts, per layer and total, before and after pruning.

We count them ourselves from the traced layer output shapes: MACs are the
multiply-accumulates of convolutions (N*H_out*W_out*C_out*C_in/groups*k_h*k_w) and Linear
layers (rows*in*out); element-wise work (norms, activations, pooling) is not counted, the
same convention as the usual counters (thop, fvcore's conv/linear count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn


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
        return self.params_after / max(1, self.params_before)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(1, self.macs_before)

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

    def as_dict(self) -> dict:
        return {
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "layers": [r.__dict__ for r in self.layers],
        }


def _fmt(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def layer_macs(m: nn.Module, out_shape: tuple) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        spatial = math.prod(out_shape[2:]) * out_shape[0]
        return spatial * m.out_channels * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.Linear):
        return math.prod(out_shape[:-1]) * m.in_features * m.out_features
    return 0


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def _shape(m: nn.Module) -> tuple:
    if isinstance(m, nn.modules.conv._ConvNd):
        return (m.out_channels, m.in_channels)
    if isinstance(m, nn.Linear):
        return (m.out_features, m.in_features)
    w = getattr(m, "weight", None)
    return tuple(w.shape) if w is not None else ()


def snapshot(model: nn.Module, layers) -> dict:
    """Per traced layer (kind, shape, params, MACs), plus the model's total params."""
    mods = dict(model.named_modules())
    snap = {"__total_params__": sum(p.numel() for p in model.parameters())}
    for rec in layers:
        if rec.module in snap or rec.module not in mods:
            continue
        m = mods[rec.module]
        snap[rec.module] = (rec.kind, _shape(m), _own_params(m), layer_macs(m, rec.out_shape))
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


def summarize(before: nn.Module, after: nn.Module, layers) -> Summary:
    """Compare two versions of a model over the traced leaf layers."""
    return compare(snapshot(before, layers), snapshot(after, layers))


def count(model: nn.Module, layers) -> tuple[int, int]:
    """(params, MACs) of a model over its traced layers."""
    snap = snapshot(model, layers)
    return snap["__total_params__"], sum(v[3] for k, v in snap.items() if k != "__total_params__")
