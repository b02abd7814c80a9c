"""The layer registry: how pyprune traces, slices and counts each type of layer.

One :class:`LayerHandler` per module type says

- ``trace``: which of the layer's tensors hold which channels, when it runs on an input
  whose channel layout is known (a *member* per parameter dim, ``rec.add_member``), and the
  layout of its output;
- ``shape_ops``: the functional ops the layer calls that the trace may run *shape-only*
  (zeros of the right shape, no arithmetic);
- ``resize``: how its size attributes (``out_channels``, ``num_features``, ...) follow its
  sliced tensors;
- ``macs`` and ``shape``: its multiply-accumulates and its size, for the summary and the
  cost model.

Teach pyprune your own layer with :func:`register_layer`. A subclass of a registered type
uses its base's handler, which is right only if it adds no per-channel tensor of its own:

    class GainConv2d(nn.Conv2d):           # a conv with a per-output-channel gain
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.gain = nn.Parameter(torch.ones(self.out_channels))
        def forward(self, x):
            return super().forward(x) * self.gain.view(1, -1, 1, 1)

    @pyprune.register_layer(GainConv2d)
    class GainConv(pyprune.layers.Conv):
        out_tensors = ("weight", "bias", "gain")   # sliced with the output channels

Inside ``trace`` the recorder ``rec`` offers: ``rec.layout(t)`` (a tensor's
:class:`Layout`: which dim holds channels and their ids, or None), ``rec.new_ids(n, name)``
(new channels made here), ``rec.add_member(module, param, dim, ids, role)`` (dim `dim` of
a tensor holds those channels), ``rec.set_layout(out, Layout(dim, ids))``,
``rec.freeze(ids, reason)`` (never prune them) and ``rec.report_unknown(what, layouts,
outputs)`` (an unsupported use: strict pruning refuses it, naming `what`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .graph._layout import Layout
from .graph._trace import Rewrite, register_op

__all__ = ["LayerHandler", "Conv", "ConvTranspose", "Linear", "BatchNorm", "FrozenBatchNorm", "InstanceNorm", "LayerNorm", "GroupNorm", "PReLU", "MultiheadAttention", "Recurrent",
           "register_layer",
           "handler_for", "register_op", "resize", "layer_macs", "Layout", "LAYERS"]

LAYERS: dict[type, "LayerHandler"] = {}
SHAPE_OPS: dict[str, Callable] = {}  # functional op -> output shape, run shape-only inside layers


def register_layer(*types: type):
    """Class decorator: use this :class:`LayerHandler` subclass (or instance) for modules
    of these types (and their subclasses, unless they have a handler of their own)."""
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError(f"register_layer: expected nn.Module subclasses, got {types!r}")

    def deco(handler):
        inst = handler() if isinstance(handler, type) else handler
        if not isinstance(inst, LayerHandler):
            raise TypeError(f"register_layer: expected a LayerHandler subclass, got {type(inst).__name__}")
        for t in types:
            LAYERS[t] = inst
        SHAPE_OPS.update(inst.shape_ops)
        return handler

    return deco


# Layer types of libraries pyprune does not import (importing torchvision or timm would
# slow `import pyprune` down), known by module and class name: a module whose class (or a
# base) is one of these uses that handler.
LAYERS_BY_NAME: dict[str, "LayerHandler"] = {}


def handler_for(module: nn.Module) -> "LayerHandler | None":
    """The handler of the module's type or of its nearest registered base class."""
    for cls in type(module).__mro__:
        h = LAYERS.get(cls)
        if h is None and LAYERS_BY_NAME:
            h = LAYERS_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if h is not None:
            return h
    return None


def resize(module: nn.Module) -> None:
    """Make a sliced module's size attributes agree with its tensors."""
    h = handler_for(module)
    if h is not None:
        h.resize(module)


def layer_macs(module: nn.Module, out_shape: tuple) -> int:
    h = handler_for(module)
    return h.macs(module, out_shape) if h is not None else 0


def _mismatch() -> ValueError:
    return ValueError("shape mismatch: let the real op raise its own error")


class LayerHandler:
    """Base handler: a layer that keeps channels where they are and holds none of its own."""

    kind = "other"  # the summary's label: conv | linear | norm | other
    shape_ops: dict = {}
    cost_param = "weight"  # the tensor whose pruned dims scale the layer's MACs (CostModel)
    # name prefixes of the layer's tensors that are not per channel even where a dim is as
    # long as a channel count it slices (a recurrent layer's hidden-state weights): the check
    # for per-channel tensors a handler misses leaves them alone
    unsliced: tuple = ()

    def trace(self, rec, name: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        lay = rec.layout(x)
        if lay is not None and out.shape == x.shape:
            rec.set_layout(out, lay)

    def resize(self, m: nn.Module) -> None:
        pass

    def macs(self, m: nn.Module, out_shape: tuple) -> int:
        return 0

    def shape(self, m: nn.Module) -> tuple:
        w = getattr(m, "weight", None)
        return tuple(w.shape) if isinstance(w, torch.Tensor) else ()


# -- convolutions and Linear ---------------------------------------------------------------
def _per_dim(args, kwargs, i: int, name: str, default, nd: int):
    """Argument `i` (or keyword `name`) of a functional conv, one value per spatial dim (a
    padding string as it is)."""
    v = args[i] if len(args) > i else kwargs.get(name, default)
    return [v] * nd if isinstance(v, int) else list(v) if not isinstance(v, str) else v


def _conv_out(args, kwargs) -> tuple:
    x, w = args[0], args[1]
    nd = x.dim() - 2
    stride, padding, dilation = (_per_dim(args, kwargs, i, n, d, nd)
                                 for i, n, d in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    if x.shape[1] != w.shape[1] * groups or w.dim() != x.dim():
        raise _mismatch()
    spatial = []
    for i in range(nd):
        size, k = x.shape[2 + i], w.shape[2 + i]
        if padding == "same":
            spatial.append(size)
            continue
        p = 0 if padding == "valid" else padding[i]
        spatial.append((size + 2 * p - dilation[i] * (k - 1) - 1) // stride[i] + 1)
    if min(spatial) < 1:
        raise ValueError("input too small: let the real op raise its own error")
    return (x.shape[0], w.shape[0], *spatial)


def _own_out_tensors(m: nn.Module, known: tuple, count: int) -> list[str]:
    """The layer's tensors sliced with its outputs: those named in `known`, and every other
    parameter or buffer whose dim 0 has one entry per output channel (a subclass's gain or
    scale): slicing them keeps the pruned layer consistent."""
    names = [p for p in known if getattr(m, p, None) is not None]
    for p, t in (*m._parameters.items(), *m._buffers.items()):
        if p not in names and t is not None and t.dim() >= 1 and t.numel() > 1 and t.shape[0] == count:
            names.append(p)
    return names


class Conv(LayerHandler):
    """nn.Conv1d/2d/3d: dim 0 of the weight (and bias) are its output channels, dim 1 its
    input channels. A depthwise conv passes its input channels through. A grouped conv
    keeps its groups: each group loses as many of its input channels, and as many of its
    output channels, as every other group. Another tensor of the layer with one entry per
    output channel along dim 0 (a gain) is sliced with the outputs. A conv whose weight goes
    through other ops before use (weight standardisation) prunes its output channels exactly,
    its input channels not: the standardisation's statistics change."""

    kind = "conv"
    shape_ops = {"conv1d": _conv_out, "conv2d": _conv_out, "conv3d": _conv_out}
    out_tensors: tuple = ("weight", "bias")  # tensors whose dim 0 holds the output channels

    def _outputs(self, rec, name, m, ids) -> None:
        for p in _own_out_tensors(m, self.out_tensors, m.out_channels):
            rec.add_member(name, p, 0, ids, "out" if p == "weight" else "bias" if p == "bias" else "param")

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        in_ids = lay.ids if lay is not None and lay.dim == 1 and len(lay.ids) == m.in_channels else None
        if lay is not None and in_ids is None:
            if (m.in_channels == m.out_channels == 1 and m.groups == 1 and lay.dim >= 2
                    and out.dim() == x.dim() and out.shape[lay.dim] == x.shape[lay.dim]):
                # ECA: a one-channel conv that runs along the channels as its length
                rec.add_inexact(lay.ids, f"{name} runs along the channel axis (ECA attention): a pruned "
                                         "channel changes its neighbours' attention")
                rec.set_layout(out, lay)
                return
            k = lay.dim - 2
            if (0 <= k < len(m.kernel_size) and out.dim() == x.dim() and out.shape[lay.dim] == x.shape[lay.dim]
                    and m.kernel_size[k] == 1 and m.stride[k] == 1
                    and (isinstance(m.padding, str) or m.padding[k] == 0)):
                # a kernel of 1 along the channels as its length (CoaT's aggregate of its scales'
                # class tokens, (B, 3, C)): each channel passes through on its own; the conv's
                # own outputs, in the same tensor, keep their count
                out_ids = rec.new_ids(m.out_channels, name)
                self._outputs(rec, name, m, out_ids)
                rec.freeze(out_ids, f"{name} reads channels along its length: its own outputs keep their count")
                if m.bias is not None:
                    rec.add_inexact(lay.ids, f"{name} adds its bias at every position along the channels: a cut "
                                             "channel takes it along")
                rec.set_layout(out, lay)
                return
            rec.freeze(lay.ids, f"{name} reads channels from an unexpected dim {lay.dim} "
                                f"(shape {tuple(x.shape)})")
        if in_ids is not None and name in rec.transformed:
            rec.add_inexact(in_ids, f"{name} transforms its weight before use (weight standardisation): "
                                    "pruning its input channels changes the statistics")
            if m.groups == 1:  # statistics over each filter need two values: 2 inputs of a 1x1 conv
                rec.min_keep.append((in_ids, -(-2 // math.prod(m.kernel_size))))
        g = m.groups
        if g == 1:
            out_ids = rec.new_ids(m.out_channels, name)
            self._outputs(rec, name, m, out_ids)
            if in_ids is not None:
                rec.add_member(name, "weight", 1, in_ids, "in")
        elif g == m.in_channels == m.out_channels and in_ids is not None:  # depthwise
            out_ids = in_ids
            self._outputs(rec, name, m, out_ids)
        elif g == m.in_channels and m.out_channels % g == 0 and in_ids is not None and not rec.is_frozen(in_ids):
            # depthwise with a channel multiplier: each input channel is a group of its own whose
            # outputs go (and stay) with it; the groups shrink with the input channels kept.
            # (An input kept whole, the network's, leaves the outputs to the grouped rule below.)
            out_ids = np.repeat(in_ids, m.out_channels // g)
            self._outputs(rec, name, m, out_ids)
            for attr in ("groups", "in_channels"):
                rec.rewrites.append(Rewrite(name, attr, "count", [np.asarray(in_ids, np.int64)]))
        else:  # grouped: every group keeps as many inputs, and as many outputs, as the others
            out_ids = rec.new_ids(m.out_channels, name)
            self._outputs(rec, name, m, out_ids)
            rec.add_blocks(out_ids.reshape(g, -1), f"grouped convolution {name} (groups={g})")
            if in_ids is not None:
                rec.add_member(name, "weight", 1, in_ids, "in", groups=g)
                rec.add_blocks(in_ids.reshape(g, -1), f"grouped convolution {name} (groups={g})")
        rec.set_layout(out, Layout(1, out_ids))

    def resize(self, m):
        w = m.weight
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = w.shape[0]
        if depthwise:
            m.groups = m.in_channels = w.shape[0]
        else:  # (a multiplier conv's groups and inputs are rewritten by the graph: see trace)
            m.in_channels = w.shape[1] * m.groups

    def macs(self, m, out_shape):
        spatial = math.prod(out_shape[2:]) * out_shape[0]
        return spatial * m.out_channels * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def shape(self, m):
        return (m.out_channels, m.in_channels)


def _conv_transpose_out(args, kwargs) -> tuple:
    x, w = args[0], args[1]
    nd = x.dim() - 2
    stride, padding, extra, dilation = (_per_dim(args, kwargs, i, n, d, nd) for i, n, d in (
        (3, "stride", 1), (4, "padding", 0), (5, "output_padding", 0), (7, "dilation", 1)))
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    if x.shape[1] != w.shape[0] or w.dim() != x.dim():
        raise _mismatch()
    spatial = [(x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + extra[i] + 1
               for i in range(nd)]
    if min(spatial) < 1:
        raise ValueError("input too small: let the real op raise its own error")
    return (x.shape[0], w.shape[1] * groups, *spatial)


class ConvTranspose(LayerHandler):
    """nn.ConvTranspose1d/2d/3d: its weight is (in, out / groups, *kernel), so dim 1 of the
    weight (and dim 0 of the bias) holds its output channels and dim 0 its inputs. A
    depthwise one (groups = in = out) passes its channels through; other grouped ones keep
    their channels."""

    kind = "conv"
    shape_ops = {"conv_transpose1d": _conv_transpose_out, "conv_transpose2d": _conv_transpose_out,
                 "conv_transpose3d": _conv_transpose_out}

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        in_ids = lay.ids if lay is not None and lay.dim == 1 and len(lay.ids) == m.in_channels else None
        if lay is not None and in_ids is None:
            rec.freeze(lay.ids, f"{name} reads channels from an unexpected dim {lay.dim} (shape {tuple(x.shape)})")
        g = m.groups
        if g == 1:
            out_ids = rec.new_ids(m.out_channels, name)
            rec.add_member(name, "weight", 1, out_ids, "out")
            if in_ids is not None:
                rec.add_member(name, "weight", 0, in_ids, "in")
        elif g == m.in_channels == m.out_channels and in_ids is not None:  # depthwise: (C, 1, *k)
            out_ids = in_ids
            rec.add_member(name, "weight", 0, out_ids, "out")
        else:
            out_ids = rec.new_ids(m.out_channels, name)
            rec.freeze(out_ids, f"grouped transposed convolution {name} (groups={g})")
            if in_ids is not None:
                rec.freeze(in_ids, f"grouped transposed convolution {name} (groups={g})")
            rec.kept_whole.add((name, "weight"))  # (its channels kept: not a tensor the handler forgot)
        if m.bias is not None:
            rec.add_member(name, "bias", 0, out_ids, "bias")
        rec.set_layout(out, Layout(1, out_ids))

    def resize(self, m):
        w = m.weight
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
            m.groups = m.in_channels = m.out_channels = w.shape[0]
        else:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups

    def macs(self, m, out_shape):
        # every input position multiplies its in/groups x out/groups x kernel block: the input
        # side, from the output's (the shape formula inverted). The output's extra rows (the
        # output padding: the constructor's, or what forward(x, output_size=...) asks for)
        # are fewer than the stride unless the dilation is larger, so with dilation <= stride
        # rounding down drops them whichever they were; otherwise the constructor's are taken.
        n_in = out_shape[0]
        for i, size in enumerate(out_shape[2:]):
            k, s, p, d = m.kernel_size[i], m.stride[i], m.padding[i], m.dilation[i]
            extra = 0 if d <= s else m.output_padding[i]
            n_in *= (size - 1 - extra + 2 * p - d * (k - 1)) // s + 1
        return n_in * m.in_channels * (m.out_channels // m.groups) * math.prod(m.kernel_size)

    def shape(self, m):
        return (m.out_channels, m.in_channels)


def _linear_out(a, k) -> tuple:
    if a[0].shape[-1] != a[1].shape[1]:
        raise _mismatch()
    return (*a[0].shape[:-1], a[1].shape[0])


class Linear(LayerHandler):
    """nn.Linear: rows of the weight are its outputs, columns its inputs (the last dim)."""

    kind = "linear"
    shape_ops = {"linear": _linear_out}

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        last = x.dim() - 1
        if lay is not None and lay.dim == last:
            rec.add_member(name, "weight", 1, lay.ids, "in")
        out_ids = rec.new_ids(m.out_features, name)
        for p in _own_out_tensors(m, ("weight", "bias"), m.out_features):
            rec.add_member(name, p, 0, out_ids, "out" if p == "weight" else "bias" if p == "bias" else "param")
        if lay is not None and lay.dim != last:  # the Linear mixes another dim; channels pass through
            rec.freeze(out_ids, f"{name} applied along a non-channel dim")
            rec.set_layout(out, lay)
        else:
            rec.set_layout(out, Layout(out.dim() - 1, out_ids))

    def resize(self, m):
        m.out_features, m.in_features = m.weight.shape

    def macs(self, m, out_shape):
        return math.prod(out_shape[:-1]) * m.in_features * m.out_features

    def shape(self, m):
        return (m.out_features, m.in_features)


# -- normalisation -------------------------------------------------------------------------
def _bn_out(a, k) -> tuple:
    stats = a[1] if len(a) > 1 and isinstance(a[1], torch.Tensor) else k.get("running_mean")
    if stats is not None and a[0].shape[1] != stats.shape[0]:
        raise _mismatch()
    return tuple(a[0].shape)


def _norm_out(a, k, kind: str) -> tuple:
    x = a[0]
    arg = a[1] if len(a) > 1 else k.get("normalized_shape" if kind == "layer" else "num_groups")
    if kind == "layer" and tuple(x.shape[-len(arg):]) != tuple(arg):
        raise _mismatch()
    if kind == "group" and x.shape[1] % int(arg):
        raise _mismatch()
    return tuple(x.shape)


class BatchNorm(LayerHandler):
    """BatchNorm: affine parameters and running statistics per channel of dim 1."""

    kind = "norm"
    shape_ops = {"batch_norm": _bn_out}

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is None:
            return
        if lay.dim != 1 or len(lay.ids) != self.count(m) or out.shape != x.shape:
            rec.report_unknown(f"{type(m).__name__} on an unexpected dim", [lay], [out])
            return
        for p in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, p, None) is not None:
                rec.add_member(name, p, 0, lay.ids, "bn")
        rec.set_layout(out, lay)

    def count(self, m) -> int:
        return m.num_features

    def resize(self, m):
        t = m.weight if m.weight is not None else m.running_mean
        m.num_features = t.shape[0]


class FrozenBatchNorm(BatchNorm):
    """A BatchNorm whose statistics and affine parameters are buffers applied by its own
    arithmetic (``x * scale + bias``): torchvision's FrozenBatchNorm2d, which its detection
    and segmentation backbones use when built for pretrained weights, and timm's frozen
    norms (with their activation, element-wise). The same four tensors per channel; no
    attribute holds the count."""

    shape_ops = {}

    def count(self, m) -> int:
        return m.weight.shape[0]

    def resize(self, m):
        pass


class InstanceNorm(LayerHandler):
    """InstanceNorm: each channel normalised over its own positions (nothing across
    channels, so a cut is exact); affine parameters and running statistics, where the
    module has them, per channel of dim 1, and ``num_features`` rewritten to the kept count
    (the module checks it against its input even without parameters)."""

    kind = "norm"

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is None:
            return
        batched = x.dim() == m._get_no_batch_dim() + 1  # unbatched, dim 1 is not the channels
        if lay.dim != 1 or len(lay.ids) != m.num_features or not batched:
            rec.report_unknown(f"{type(m).__name__} on an unexpected dim", [lay], [out])
            return
        for p in ("weight", "bias", "running_mean", "running_var"):
            if isinstance(getattr(m, p, None), torch.Tensor):
                rec.add_member(name, p, 0, lay.ids, "bn")  # a per-channel affine, as BatchNorm's
        rec.rewrites.append(Rewrite(name, "num_features", "count", [np.asarray(lay.ids, np.int64)]))
        rec.add_scale_free(lay.ids, f"{type(m).__name__} {name}")
        rec.set_layout(out, lay)

    def resize(self, m):
        t = next((t for t in (getattr(m, p, None) for p in ("weight", "running_mean")) if isinstance(t, torch.Tensor)),
                 None)
        if t is not None:  # (without tensors, only the saved attribute knows the count)
            m.num_features = t.shape[0]


def _norm_members(rec, name, m, ids) -> None:
    for p in ("weight", "bias"):
        if getattr(m, p, None) is not None:
            rec.add_member(name, p, 0, ids, "norm")


_CHANNELS_FIRST_LN = {"LayerNorm2d", "LayerNorm2dFp32", "LayerNormAct2d", "ChannelsFirstLayerNorm",
                      "LayerNormChannelsFirst"}


def _channel_first_layernorm(m: nn.Module, x: torch.Tensor, lay) -> bool:
    """LayerNorm subclasses that normalise dim 1 of NCHW: torchvision's and timm's
    LayerNorm2d and what derives from them (timm's LayerNormAct2d, MetaFormer's
    LayerNorm2dNoBias), or any subclass with a forward of its own whose input has the
    normalised width at dim 1 and not at the last dim (where nn.LayerNorm would fail)."""
    if any(c.__name__ in _CHANNELS_FIRST_LN for c in type(m).__mro__):
        return True
    if not (type(m).forward is not nn.LayerNorm.forward and len(m.normalized_shape) == 1 and lay.dim == 1
            and x.dim() >= 3 and x.shape[1] == m.normalized_shape[0]):
        return False
    if x.shape[-1] != m.normalized_shape[0]:
        return True
    # As many channels as the last dim is long (Segformer's 32 channels on a 32 x 32 map):
    # the forward on a last dim one longer runs only if it does not normalise the last dim.
    # Only a norm with no modules of its own is probed: their hooks (the trace's) would run.
    if any(True for _ in m.children()):
        return False
    # (torch.zeros: x.new_zeros would read as a tensor sized by x's channel count and keep them)
    probe = torch.zeros(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    try:
        with torch.no_grad():
            type(m).forward(m, probe)  # not m(probe): the trace's hooks stay out of it
    except Exception:  # noqa: BLE001 - it normalises the last dim, as nn.LayerNorm does
        return False
    return True


class LayerNorm(LayerHandler):
    """LayerNorm (and nn.RMSNorm) over the last dim (or dim 1 for channels-first LayerNorm
    subclasses): its statistics couple all channels, its affine parameters are per channel,
    and ``normalized_shape`` is rewritten to the kept count (also where it has no
    parameters to slice)."""

    kind = "norm"
    shape_ops = dict.fromkeys(("layer_norm", "rms_norm"), lambda a, k: _norm_out(a, k, "layer"))

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is None:
            return
        k = len(m.normalized_shape)
        if k == 1 and _channel_first_layernorm(m, x, lay):
            if lay.dim == 1:
                _norm_members(rec, name, m, lay.ids)
                rec.add_inexact(lay.ids, f"{type(m).__name__} {name} normalises over the channels")
                rec.set_layout(out, lay)
            else:
                rec.report_unknown(f"{type(m).__name__} on an unexpected dim", [lay], [out])
            return
        if lay.dim < x.dim() - k:  # normalises other dims only
            rec.set_layout(out, lay)
            return
        if k == 1 and lay.dim == x.dim() - 1:
            _norm_members(rec, name, m, lay.ids)
            rec.add_inexact(lay.ids, f"{type(m).__name__} {name} normalises over the channels")
            rec.rewrites.append(Rewrite(name, "normalized_shape", "replace", [np.asarray(lay.ids, np.int64)],
                                        tuple, 0, tuple(m.normalized_shape)))
            rec.set_layout(out, lay)
            return
        rec.report_unknown(f"{type(m).__name__} {name} over channels and other dims", [lay], [out])

    def resize(self, m):
        t = m.weight if m.weight is not None else getattr(m, "bias", None)
        if t is not None:
            m.normalized_shape = (t.shape[0],)


class GroupNorm(LayerHandler):
    """GroupNorm: every group keeps as many channels as the others (its statistics, over
    the group's channels, change when channels are cut, as a LayerNorm's do)."""

    kind = "norm"
    shape_ops = {"group_norm": lambda a, k: _norm_out(a, k, "group")}

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is None:
            return
        if lay.dim != 1 or len(lay.ids) != m.num_channels:
            rec.report_unknown(f"GroupNorm on an unexpected dim", [lay], [out])
            return
        if m.num_groups not in (1, m.num_channels):
            rec.add_blocks(lay.ids.reshape(m.num_groups, -1), f"GroupNorm {name} ({m.num_groups} groups)")
        if m.affine:
            _norm_members(rec, name, m, lay.ids)
        if m.num_groups != m.num_channels:
            rec.add_inexact(lay.ids, f"GroupNorm {name} normalises over several channels")
        rec.set_layout(out, lay)

    def resize(self, m):
        old = m.num_channels
        m.num_channels = m.weight.shape[0]
        if m.num_groups == old:
            m.num_groups = m.num_channels


class PReLU(LayerHandler):
    """PReLU: one slope per channel of dim 1 (or one shared slope)."""

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is None:
            return
        if m.weight.numel() > 1:
            if lay.dim != 1:
                rec.report_unknown("prelu", [lay], [out])
                return
            rec.add_member(name, "weight", 0, lay.ids, "param")
        rec.set_layout(out, lay)

    def resize(self, m):
        m.num_parameters = m.weight.shape[0]


class MultiheadAttention(LayerHandler):
    """nn.MultiheadAttention (self-attention, one packed in-projection): its embedding width
    is its input's, and its query, key and value widths must equal it, so channel i of the
    input is cut together with dim i of q, k and v and with output i; every head keeps as
    many dims as the others. Cross-attention and separate projections keep their channels."""

    kind = "linear"
    cost_param = "in_proj_weight"

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        ins = rec.inputs
        self_attn = len(ins) >= 3 and ins[0] is ins[1] is ins[2]
        if lay is None:
            return
        ok = (self_attn and lay.dim == x.dim() - 1 and len(lay.ids) == m.embed_dim and m._qkv_same_embed_dim
              and m.in_proj_weight is not None and m.bias_k is None)
        if not ok:
            rec.freeze(lay.ids, f"{name}: only self-attention with a packed in-projection is pruned")
            return
        ids = lay.ids
        three = np.concatenate([ids, ids, ids])
        rec.add_member(name, "in_proj_weight", 1, ids, "in")
        rec.add_member(name, "in_proj_weight", 0, three, "param")
        if m.in_proj_bias is not None:
            rec.add_member(name, "in_proj_bias", 0, three, "param")
        rec.add_member(f"{name}.out_proj", "weight", 1, ids, "in")
        rec.add_member(f"{name}.out_proj", "weight", 0, ids, "out")
        if m.out_proj.bias is not None:
            rec.add_member(f"{name}.out_proj", "bias", 0, ids, "bias")
        rec.add_blocks(ids.reshape(m.num_heads, -1), f"{name}: {m.num_heads} attention heads")
        rec.add_inexact(ids, f"{name}: the attention's scale 1/sqrt(head dim) follows the pruned head dim")
        rec.leaf_modules[f"{name}.out_proj"] = "linear"
        rec.set_layout(out, Layout(out.dim() - 1, ids))

    def resize(self, m):
        e = m.in_proj_weight.shape[1]
        m.embed_dim = m.kdim = m.vdim = e
        m.head_dim = e // m.num_heads

    def macs(self, m, out_shape):
        tokens = math.prod(out_shape[:-1])
        seq = out_shape[1] if m.batch_first else out_shape[0]
        return tokens * 4 * m.embed_dim * m.embed_dim + 2 * tokens * seq * m.embed_dim

    def shape(self, m):
        return (m.embed_dim, m.num_heads)


class Recurrent(LayerHandler):
    """nn.LSTM, nn.GRU, nn.RNN: the first layer's input weights (``weight_ih_l0`` and, when
    bidirectional, ``weight_ih_l0_reverse``) read the input's channels in their columns, so
    they are cut with them and ``input_size`` is rewritten. The hidden state feeds itself
    back through the recurrent weights: the output's channels (hidden size x directions)
    are kept. Its MACs are not counted."""

    unsliced = ("weight_hh_", "weight_ih_l", "bias_", "weight_hr_")  # the recurrent layer's own widths

    def trace(self, rec, name, m, x, out):
        lay = rec.layout(x)
        if lay is not None:
            if lay.dim == x.dim() - 1:
                for p in ("weight_ih_l0", "weight_ih_l0_reverse"):
                    if isinstance(getattr(m, p, None), torch.Tensor):
                        rec.add_member(name, p, 1, lay.ids, "in")
            else:
                rec.report_unknown(f"{type(m).__name__} over a non-channel dim", [lay], [out])
        ids = rec.new_ids(out.shape[-1], name)
        rec.freeze(ids, f"{type(m).__name__} {name}: its hidden state feeds itself back")
        rec.set_layout(out, Layout(out.dim() - 1, ids))

    def resize(self, m):
        m.input_size = m.weight_ih_l0.shape[1]
        if hasattr(m, "_init_flat_weights"):  # the flat list the forward reads holds the old tensors
            m._init_flat_weights()

    def shape(self, m):
        return (m.hidden_size, m.input_size)


register_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)(Conv)
register_layer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)(ConvTranspose)
register_layer(nn.MultiheadAttention)(MultiheadAttention)
register_layer(nn.Linear)(Linear)
register_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)(BatchNorm)
for _name in ("torchvision.ops.misc.FrozenBatchNorm2d",  # (timm's FrozenBatchNorm2d is this class)
              "timm.layers.norm_act.FrozenBatchNormAct2d"):
    LAYERS_BY_NAME[_name] = FrozenBatchNorm()
register_layer(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(InstanceNorm)
register_layer(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))(LayerNorm)
register_layer(nn.GroupNorm)(GroupNorm)
register_layer(nn.PReLU)(PReLU)
register_layer(nn.LSTM, nn.GRU, nn.RNN)(Recurrent)
