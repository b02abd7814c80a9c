"""Recover a pruned model's accuracy without labels, from a few calibration batches.

- :func:`recalibrate_bn`: re-estimate every BatchNorm's running statistics on the pruned
  network. A cut changes what each BN sees (fewer, merged or refitted channels upstream),
  and stale statistics are what sends one-shot accuracy to chance. No gradients, seconds.
- :func:`reconstruct`: layer-wise reconstruction (ThiNet style). Every conv or Linear whose
  input channels were cut gets new weights, fitted by ridge least squares so that on
  calibration activations its outputs match the unpruned network's:
  ``W' = argmin |A W'^T - Y|^2 + lam |W'|^2`` with A the unpruned network's inputs to the
  layer at the kept channels (patches, for a conv) and Y the unpruned layer's outputs at
  the channels it keeps.
  The Gram matrices and Cholesky solves of all layers run in one call into the C++ core
  (:func:`pyprune.engine.ridge_solve`).

Both run by default in :func:`pyprune.prune` whenever ``calibration=`` is given
(``bn_recalibration=False`` / ``reconstruct=False`` turn them off).
"""
from __future__ import annotations

import collections
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import engine
from ._reparam import computed_tensors
from .data import iter_batches

__all__ = ["recalibrate_bn", "reconstruct", "ReconstructionReport"]


class _HookError(Exception):
    """A failure of pyprune's own forward hook during a calibration pass (not the model's)."""


def _run_calibration(model: nn.Module, inputs: tuple, i: int):
    """model(*inputs) for calibration batch i; a batch the model cannot run is the
    calibration's fault, said so (with the dtype and device the model's weights have).
    A failure of pyprune's own hooks is raised as it was."""
    try:
        return model(*inputs)
    except _HookError as e:
        raise e.__cause__ from None
    except (RuntimeError, TypeError, ValueError) as e:
        p = next(model.parameters(), None)
        has = f" (the model's weights are {p.dtype} on {p.device})" if p is not None else ""
        got = ", ".join(f"{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
                        for x in inputs)
        raise ValueError(f"calibration: {type(model).__name__} failed on batch {i} (inputs {got}): "
                         f"{type(e).__name__}: {e}. Pass batches the model runs on{has}") from e


def _bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, calibration, *, batches: int | None = None) -> int:
    """Re-estimate the running mean and variance of every BatchNorm of `model` from
    calibration batches (inputs only; labels are ignored): statistics reset, then the
    exact average over the batches (``momentum=None``). The model's train/eval flags and
    every other buffer are left as they were. Returns the number of batches used."""
    bns = _bns(model)
    if not bns:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    saved = [(b, b.clone()) for m in bns for b in m.buffers(recurse=False) if b is not None]
    n = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for inputs, _ in iter_batches(calibration, batches):
            _run_calibration(model, inputs, n)
            n += 1
    except BaseException:
        for b, old in saved:  # the statistics as they were: a failed pass changes nothing
            b.copy_(old)
        raise
    finally:
        for m, mom in momenta:
            m.momentum = mom
        for m, training in modes:
            m.training = training
    return n


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct` refitted: per layer the relative residual |A W^T - Y| / |Y|
    of its least-squares fit on the calibration rows, and the rows used."""

    layers: dict = field(default_factory=dict)  # name -> (residual, rows)
    left: dict = field(default_factory=dict)  # name -> why it was left as cut (its weight is computed)
    skipped: dict = field(default_factory=dict)  # name -> why a layer that lost inputs was not refitted

    def left_as_cut(self) -> str:
        """The layers left as cut, each with why (for messages)."""
        return _with_why(self.left.items())

    def __str__(self) -> str:
        left = f"; left as cut: {self.left_as_cut()}" if self.left else ""
        if self.skipped:
            left += (f"; {len(self.skipped)} layer(s) that lost input channels not refitted: "
                     f"{_with_why(list(self.skipped.items())[:5])}" + (" ..." if len(self.skipped) > 5 else ""))
        if not self.layers:
            head = "reconstruction: none" if self.left or self.skipped else "reconstruction: no layer lost input channels"
            return head + left
        res = [r for r, _ in self.layers.values()]
        return (f"reconstructed {len(res)} layers (relative residual median {np.median(res):.3g}, "
                f"max {max(res):.3g})") + left


def _with_why(items) -> str:
    return ", ".join(f"{n} ({why})" for n, why in items)


MAX_FEATURES = 8192  # inputs per output above which a layer is not refitted (its Gram matrix)


def _not_refittable(m: nn.Module) -> str | None:
    """Why least squares cannot refit layer `m` from its input rows (None: it can): a Linear,
    or a Conv1d/Conv2d without groups, whatever its padding (a number, "same", "valid") and
    padding mode."""
    if isinstance(m, nn.Linear):
        features = m.in_features
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
        if m.groups > 1:
            return f"grouped convolution ({m.groups} groups)"
        features = m.in_channels * math.prod(m.kernel_size)
    else:
        return f"{type(m).__name__} is not refitted (Linear, Conv1d and Conv2d are)"
    if features + 1 > MAX_FEATURES:
        return f"{features} inputs per output (at most {MAX_FEATURES - 1} are refitted)"
    return None


def _unstorable(m: nn.Module) -> str | None:
    """Why a refitted weight could not be stored in `m` (None: it can): its weight or bias is
    computed before each call by something other than ``parametrizations.weight_norm``
    (whose ``right_inverse`` takes any weight exactly), so a stored fit would be undone."""
    for name, how in computed_tensors(m).items():
        if name in ("weight", "bias") and how.kind != "weight_norm":
            return f"its {name} is computed by {how.what}"
    return None


def _store(m: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the layer's weight or bias to `value`: in place, or through its parametrization
    (a parametrized tensor is computed anew at each access: a copy into it would be lost)."""
    t = getattr(m, name)
    if name in computed_tensors(m):
        setattr(m, name, value.to(t.dtype))
    else:
        t.copy_(value.to(t.dtype))


def _rows_of(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows: patches (N * locations, C * kernel) for a conv, padded as
    the conv pads (its own padding mode, "same" included), the last dim for a Linear."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
    if isinstance(m, nn.Conv1d):  # a row of height 1
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *m.kernel_size), (1, *m.dilation), (1, *m.stride)
    else:
        kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _out_rows(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


@torch.no_grad()
def reconstruct(original: nn.Module, pruned: nn.Module, keep_in: dict, keep_out: dict, calibration, *,
                batches: int | None = None, rows: int = 4096, lam: float = 1e-4, seed: int = 0,
                threads: int | None = None, layers: list[str] | None = None) -> ReconstructionReport:
    """Refit the weights (and bias) of every conv/Linear of `pruned` whose input channels
    were cut (in place), ThiNet's way: on calibration batches, the unpruned network's input
    to the layer restricted to the channels kept, mapped by least squares onto the unpruned
    layer's outputs at the channels it keeps. Each layer's fit needs only the unpruned
    network's activations, so the layers are independent and all are solved in one call;
    together they reproduce the unpruned network layer by layer as closely as the kept
    channels allow.

    keep_in / keep_out: {layer name: positions of the original layer's input / output
    channels the pruned layer kept} (a layer missing from keep_out kept all its outputs).
    `layers` limits the refit to those names. A layer whose weight another layer holds too
    (tied) is left as cut: no one layer's least squares fits it. At most `rows` sampled rows (locations x
    batches) per layer, drawn with `seed`.
    """
    mods_o, mods_p = dict(original.named_modules()), dict(pruned.named_modules())
    holders = collections.Counter(id(p) for m in mods_p.values() for p in m.parameters(recurse=False))
    report = ReconstructionReport()
    names = []
    for n, m in mods_p.items():
        o = mods_o.get(n)
        if (o is None or type(o) is not type(m) or (layers is not None and n not in layers)
                or not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or _in_features(m) >= _in_features(o)):
            continue  # (not a layer that lost input channels)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels and o.groups == o.in_channels:
            continue  # depthwise: each output reads its own channel, and a kept one kept it
        why = _not_refittable(m)
        if why is None and n not in keep_in:
            why = "its kept inputs are not known by position"
        if why is None and not all(holders[id(p)] == 1 for p in m.parameters(recurse=False)):
            why = "its weight is tied to another layer's (no one layer's fit is right for both)"
        if why is not None:
            report.skipped[n] = why
        else:
            names.append(n)
    for n in list(names):
        why = _unstorable(mods_p[n])
        if why is not None:
            report.left[n] = why
            names.remove(n)
    if report.left:
        warnings.warn(f"pyprune: reconstruction left {len(report.left)} layer(s) as cut, their refitted weights "
                      f"could not be stored: {report.left_as_cut()}",
                      stacklevel=3)
    if not names:
        return report
    batch_list = list(iter_batches(calibration, batches))
    per_batch = max(1, math.ceil(rows / len(batch_list)))
    rng = np.random.default_rng(seed)
    a_rows: dict = {n: [] for n in names}
    y_rows: dict = {n: [] for n in names}
    cols = {}
    for n in names:
        m, kin = mods_o[n], np.asarray(keep_in[n], np.int64)
        k = 1 if isinstance(m, nn.Linear) else math.prod(m.kernel_size)
        cols[n] = torch.as_tensor((kin[:, None] * k + np.arange(k)[None, :]).reshape(-1))

    def hook(name):
        def f(m, inputs, out):
            try:
                take(name, inputs, out)
            except Exception as e:  # pyprune's own failure, not the batch's (see _run_calibration)
                raise _HookError(name) from e
        return f

    def take(name, inputs, out):
        """The rows of one batch at layer `name`: its input restricted to the kept channels, its output."""
        a, y = _rows_of(mods_o[name], inputs[0]), _out_rows(mods_o[name], out)
        idx = torch.as_tensor(np.sort(rng.choice(a.shape[0], min(a.shape[0], per_batch), replace=False)))
        a = a[idx][:, cols[name]].float()
        if mods_p[name].bias is not None:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)], 1)
        y = y[idx]
        kept = keep_out.get(name)
        a_rows[name].append(a)
        y_rows[name].append((y if kept is None else y[:, torch.as_tensor(kept)]).float())

    modes = [(m, m.training) for m in original.modules()]
    hooks = [mods_o[n].register_forward_hook(hook(n)) for n in names]
    try:
        original.eval()
        for i, (inputs, _) in enumerate(batch_list):
            _run_calibration(original, inputs, i)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    ok = [n for n in names if a_rows[n]]
    solved = engine.ridge_solve([torch.cat(a_rows[n]) for n in ok], [torch.cat(y_rows[n]) for n in ok],
                                lam=lam, threads=threads)
    for n, (w, residual) in zip(ok, solved):
        m = mods_p[n]
        if m.bias is not None:
            _store(m, "bias", w[:, -1])
            w = w[:, :-1]
        _store(m, "weight", w.reshape(m.weight.shape))
        report.layers[n] = (residual, int(sum(a.shape[0] for a in a_rows[n])))
    return report


def _in_features(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels
