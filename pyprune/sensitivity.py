"""Sensitivity analysis (Li et al., 2017; Distiller's recipe, automated): how much accuracy
each group of coupled channels costs when it alone is pruned, at a few ratios, on
validation data; and the ``sensitivity`` schedule, which spends a pruning target where it
costs least.

    sens = pyprune.sensitivity(model, x, val_set, ratios=(0.25, 0.5, 0.75), method="l1")
    print(sens.table()); sens.plot("sensitivity.png")
    res = pyprune.prune(model, x, method="l1", schedule="sensitivity", sensitivity=sens, target_params=0.3)

The schedule takes the per-group accuracy curves (linear between the measured ratios, the
unpruned accuracy at 0, never better with more removed) and removes channels greedily,
always from the group whose next step loses the least accuracy per channel, until the
asked fraction of channels is removed; budgets (``target_params``, ``target_macs``) are
met by the usual search over that fraction. The predicted loss is the sum of the groups'
losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .graph import Group
from .schedule import MAX_RATIO, register_schedule, round_keep

__all__ = ["Sensitivity", "sensitivity", "sensitivity_keep"]


@dataclass
class Sensitivity:
    """Accuracy of the model with one group pruned at each ratio (others untouched)."""

    ratios: list
    base: float
    curves: dict = field(default_factory=dict)  # group name -> [accuracy at each ratio]
    sizes: dict = field(default_factory=dict)  # group name -> channels

    def drop(self, name: str, ratio: float) -> float:
        """Predicted accuracy loss of pruning group `name` at `ratio` (0 for a group not
        measured): linear between the measured points, never smaller for a larger ratio."""
        if name not in self.curves:
            return 0.0
        xs = [0.0] + list(self.ratios)
        ys = np.maximum.accumulate([0.0] + [self.base - a for a in self.curves[name]])
        if ratio >= xs[-1]:  # beyond the last ratio: extrapolate the last slope
            slope = (ys[-1] - ys[-2]) / max(1e-9, xs[-1] - xs[-2])
            return float(ys[-1] + max(0.0, slope) * (ratio - xs[-1]))
        return float(np.interp(ratio, xs, ys))

    def table(self) -> str:
        head = "| group | channels | " + " | ".join(f"top-1 at {r:.0%}" for r in self.ratios) + " |"
        lines = [head, "|---|---|" + "---|" * len(self.ratios)]
        for name, accs in self.curves.items():
            lines.append(f"| {name} | {self.sizes.get(name, '')} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
        return f"unpruned top-1 {100 * self.base:.2f}%\n" + "\n".join(lines)

    def plot(self, path) -> None:
        """One line per group: accuracy against the ratio of that group alone."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, accs) in enumerate(self.curves.items()):
            ax.plot([0.0] + list(self.ratios), [100 * self.base] + [100 * a for a in accs],
                    marker="os^Dv"[i % 5], linewidth=1, label=name)
        ax.set_xlabel("fraction of the group's channels removed (that group alone)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Sensitivity of each group of channels")
        ax.grid(alpha=0.3)
        if len(self.curves) <= 20:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _group_name(g: Group) -> str:
    prods = g.producers()
    return prods[0].module if prods else g.name


def sensitivity(model: nn.Module, example_inputs, val, *, ratios=(0.25, 0.5, 0.75), method: str = "l1",
                batch_size: int = 256, calibration=None, **options) -> Sensitivity:
    """Per prunable group (named by its first producing layer), the top-1 accuracy on `val`
    (a Dataset of (input, label)) with only that group pruned at each of `ratios` by
    `method`. `calibration=` recovers each cut as :func:`pyprune.prune` would (then the
    curves measure what recovery cannot win back). Other options go to
    :class:`pyprune.Pruner`."""
    from .prune import Pruner
    from .train import evaluate

    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios) or ratios != sorted(ratios):
        raise ValueError(f"ratios must be increasing fractions in (0, 1), got {ratios!r}")
    pruner = Pruner(model, example_inputs, method=method, calibration=calibration, **options)
    graph = pruner._graph()
    out = Sensitivity(ratios, evaluate(model, val, batch_size=batch_size)["top1"])
    for g in graph.groups:
        if g.prunable < 2 or not g.producers():
            continue
        name = _group_name(g)
        accs = []
        for r in ratios:
            keep = max(g.size - g.prunable, g.size - int(math.floor(r * g.size + 0.5)), 1)
            with torch.no_grad():
                res = pruner.apply(pruner.plan(0.0, keep_by_layer={name: keep}))
            accs.append(evaluate(res.model, val, batch_size=batch_size)["top1"])
        out.curves[name] = accs
        out.sizes[name] = g.size
    return out


def sensitivity_keep(groups: list[Group], ratio: float, sens: Sensitivity, *, round_to=None,
                     min_keep: float = 0.1, step: float = 0.05) -> dict[int, int]:
    """Keep counts that remove `ratio` of all channels where the sensitivity curves predict
    the least loss (greedy over steps of `step` of a group's channels)."""
    total = sum(g.size for g in groups)
    goal = ratio * total
    level = {g.id: 0.0 for g in groups}
    cap = {g.id: min(MAX_RATIO, 1.0 - max(min_keep, (g.size - g.prunable) / g.size, 1.0 / g.size)) for g in groups}
    removed = 0.0
    names = {g.id: _group_name(g) for g in groups}
    by_id = {g.id: g for g in groups}
    while removed < goal - 1e-9:
        best, best_cost = None, math.inf
        for gid, lv in level.items():
            nxt = min(cap[gid], lv + step)
            if nxt <= lv + 1e-12:
                continue
            units = (nxt - lv) * by_id[gid].size
            cost = (sens.drop(names[gid], nxt) - sens.drop(names[gid], lv)) / units
            if cost < best_cost - 1e-15:
                best, best_cost = gid, cost
        if best is None:
            break
        nxt = min(cap[best], level[best] + step)
        removed += (nxt - level[best]) * by_id[best].size
        level[best] = nxt
    out = {}
    for g in groups:
        keep = g.size - int(math.floor(level[g.id] * g.size + 0.5))
        out[g.id] = max(round_keep(keep, g.size, round_to), g.size - g.prunable, 1)
    return out


@register_schedule("sensitivity", needs_sensitivity=True)
def _sensitivity_schedule(groups, ratio, *, round_to=None, min_keep=0.1, sensitivity=None, **_):
    if not isinstance(sensitivity, Sensitivity):
        raise TypeError("sensitivity=: expected the result of pyprune.sensitivity(...)")
    return sensitivity_keep(groups, ratio, sensitivity, round_to=round_to, min_keep=min_keep)
