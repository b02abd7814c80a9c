"""Run a model once and record how channels flow: producers, consumers and couplings.

The model runs for real on the example inputs under a TorchFunctionMode (every torch
function and Tensor method is seen with its actual arguments and outputs) while module
hooks mark where the leaf layers that own prunable parameters (Conv, Linear, norms) run.
Python control flow, several inputs and custom modules need nothing special: only what
actually executed is recorded. Ops are handled by functions registered per op name in
`_HANDLERS` (:func:`register_op`); leaf layers by their handlers in :mod:`pyprune.layers`.
An op that touches tracked channels and has no handler is reported.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._reparam import computed_tensors
from ._layout import Layout


@dataclass
class MemberRecord:
    """Dim `dim` of parameter/buffer `param` of module `module` holds channels `ids`."""

    module: str
    param: str
    dim: int
    ids: np.ndarray
    role: str  # out | bias | in | bn | norm | param
    groups: int = 1  # > 1: a grouped conv's input dim, which holds ids[b * len / groups + p] at (block b, p)


@dataclass
class Rewrite:
    """A module attribute that holds a channel count the pruned model must see changed:
    a split size, slice bound or ``groups`` read in ``forward``. After pruning it becomes
    ``kind`` of the kept channels among ``pieces`` (id arrays): ``count`` the kept count of
    pieces[0]; ``counts`` one kept count per piece (a list or tuple, as ``container``)."""

    module: str
    attr: str
    kind: str  # count | counts | replace (entry `index` of the tuple/list `original` set to the count;
    # a tuple of indices: each set to the count of its piece)
    pieces: list
    container: type = int
    index: int = -1
    original: Any = None
    tentative: bool = False  # the value read might be another dim's (as long): dropped if the cut fails
    # read for channels that keep their count (a split kept whole): checked against the
    # certain readings of the attribute only, never rewritten from alone
    kept: bool = False


def param_path(module: str, param: str) -> str:
    """The dotted name of `module`'s tensor `param` (the root's: `param` alone)."""
    return f"{module}.{param}" if module else param


@dataclass
class LayerRecord:
    """A leaf layer as it ran: for MAC counting and the summary. A functional conv/linear on
    a module's own parameter (no layer module holds it) is one too, named by ``param``."""

    module: str
    kind: str
    out_shape: tuple
    param: str = ""

    @property
    def name(self) -> str:
        """The layer's name: its module, or for a functional one its parameter's path."""
        return param_path(self.module, self.param) if self.param else self.module


@dataclass
class Recorder:
    model: nn.Module
    n_ids: int = 0
    space_origin: list = field(default_factory=list)  # (base, size, origin)
    layouts: dict = field(default_factory=dict)  # id(tensor) -> Layout
    # id(tensor) -> the channels a product contracted to make it (q @ k^T over a head's width)
    contracted: dict = field(default_factory=dict)
    # module -> {number: the first op} for Python numbers its own code gave element-wise ops
    scalar_uses: dict = field(default_factory=dict)
    # id(tensor) -> (channel ids, the op that made them non-zero where their filters are
    # zero: sigmoid(0) = 0.5; see _lift), along the layout's dim; lifted_cross: along the
    # columns of a channel-by-channel map (Layout.cross)
    lifted: dict = field(default_factory=dict)
    lifted_cross: dict = field(default_factory=dict)
    keep_alive: list = field(default_factory=list)
    unions: list = field(default_factory=list)  # (ids_a, ids_b)
    members: list = field(default_factory=list)
    frozen: list = field(default_factory=list)  # (ids, reason)
    unknown: list = field(default_factory=list)  # (module path, op, ids)
    layers: list = field(default_factory=list)
    leaf_modules: dict = field(default_factory=dict)  # module name -> kind
    stack: list = field(default_factory=list)
    leaf_depth: int = 0
    param_owner: dict = field(default_factory=dict)  # id(tensor) -> (module, name)
    tied: dict = field(default_factory=dict)  # (module, name) -> (first module, name) holding the same tensor
    count_layers: bool = True  # False in the extra pass: MACs are those of the model's own mode
    param_layers: set = field(default_factory=set)  # (module, param) of functional layers on own parameters
    kept_whole: set = field(default_factory=set)  # (module, param) a handler keeps whole on purpose
    untraced: list = field(default_factory=list)  # layers with parameters that never ran
    blocks: list = field(default_factory=list)  # (pieces: list of id arrays, equal: bool, reason, module)
    rewrites: list = field(default_factory=list)  # Rewrite
    inexact: list = field(default_factory=list)  # (ids, reason): cutting them changes the function
    scale_free: list = field(default_factory=list)  # (ids, reason): a norm divides out each one's scale
    min_keep: list = field(default_factory=list)  # (ids, n): a layer needs n of these channels to run
    param_views: dict = field(default_factory=dict)  # id(tensor) -> (module, param, {tensor dim: param dim})
    transformed: set = field(default_factory=set)  # leaf layers whose weight passes through other ops
    modules: dict = field(default_factory=dict)  # name -> module
    output_shapes: list = field(default_factory=list)  # shapes of the tensors the model returned
    inputs: tuple = ()  # the positional inputs of the layer being traced (for its handler)
    module_inputs: dict = field(default_factory=dict)  # module name -> layouts of its last call's inputs
    width_tied: set = field(default_factory=set)  # modules whose heads' width was tied to their input's
    links: list = field(default_factory=list)  # (ids, ids, reason, module): their groups keep the same share
    square_heads: set = field(default_factory=set)  # modules whose head width an attribute equals ambiguously
    # (module, ids, reason): channels whose count the code may hold in a way no rewrite
    # follows; cut only where the check of the cut passes (Graph.tentative_freezes)
    tentative_freezes: list = field(default_factory=list)
    weight_views: set = field(default_factory=set)  # ids of tensors made from a leaf layer's weight
    param_shape_attrs: dict = field(default_factory=dict)  # (module, param, dim) -> [Rewrite without pieces]
    # The torch calls of the model's own code (outside the leaf layers) as they ran, for the
    # check of a cut: (module, op, [(output shape, its Layout or None)]), first pass only.
    op_log: list = field(default_factory=list)
    in_hook: bool = False  # a layer's handler is running (its own torch calls are not the model's)
    fresh: set = field(default_factory=set)  # ids of tensors made by torch.zeros & co. (their contents: constants)
    weight_masks: dict = field(default_factory=dict)  # (module, "weight") -> its buffers it is multiplied by
    computed: dict = field(default_factory=dict)  # (module, tensor) -> _reparam.Computed: made before each call
    widths_read: dict = field(default_factory=dict)  # a channel count read from a shape -> the ids of those channels
    widths_read_all: dict = field(default_factory=dict)  # the same: (module whose code read it, ids), every read

    # -- bookkeeping ---------------------------------------------------------------
    def read_width(self, width: int, ids: np.ndarray) -> None:
        """The model's code read the channel count `width` of a tensor holding `ids`."""
        self.widths_read[width] = ids
        self.widths_read_all.setdefault(width, []).append((self.stack[-1] if self.stack else "", ids))

    def new_ids(self, size: int, origin: str) -> np.ndarray:
        ids = np.arange(self.n_ids, self.n_ids + size, dtype=np.int64)
        self.space_origin.append((self.n_ids, size, origin))
        self.n_ids += size
        return ids

    def set_layout(self, t: torch.Tensor, lay: Layout | None) -> None:
        if lay is None:
            self.layouts.pop(id(t), None)
            return
        self.layouts[id(t)] = lay
        self.keep_alive.append(t)

    def layout(self, t: Any) -> Layout | None:
        return self.layouts.get(id(t)) if isinstance(t, torch.Tensor) else None

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        self.frozen.append((ids, reason))

    def is_frozen(self, ids: np.ndarray) -> bool:
        """Whether any of these channel ids is kept whole by what was recorded so far (the
        network's inputs, frozen before the forward; later freezes are not known yet)."""
        return any(np.isin(ids, f).any() for f, _ in self.frozen)

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is not b and len(a):
            self.unions.append((a, b))

    def where(self) -> str:
        name = self.stack[-1] if self.stack else ""
        return name if name else f"{type(self.model).__name__} (the model's own forward)"

    def add_member(self, module: str, param: str, dim: int, ids: np.ndarray, role: str, groups: int = 1) -> None:
        self.members.append(MemberRecord(module, param, dim, ids, role, groups))
        made = self.computed.get((module, param))
        if made is not None and made.kind == "other":  # a cut would change what it computes
            self.freeze(ids, f"{module}.{param} is computed by {made.what}, which a cut would change; to prune "
                             f"these channels remove it first: {made.fix.replace('module', f'model.get_submodule({module!r})')}")
        for src in made.sources if made is not None else ():  # torch.nn.utils.prune: sliced as the weight is
            self.members.append(MemberRecord(module, src, dim, ids, "mask", groups))
        for mask in self.weight_masks.get((module, param), ()):  # sliced as the weight is
            self.members.append(MemberRecord(module, mask, dim, ids, "mask", groups))
        for r in self.param_shape_attrs.get((module, param, dim), ()):  # gamma.view(self.shape)
            self.rewrites.append(Rewrite(r.module, r.attr, r.kind, [np.asarray(ids, np.int64)], r.container,
                                         r.index, r.original))

    def add_blocks(self, pieces, reason: str, equal: bool = True) -> None:
        """The channels of each piece (id arrays, or the rows of a 2-D array) are cut by the
        same count (``equal``: the pieces are as large and stay so: the groups of a grouped
        conv, the chunks of ``chunk``) or in proportion, at least one each (split sizes that
        are rewritten)."""
        pieces = [np.asarray(p, np.int64) for p in pieces]
        if len(pieces) > 1:
            self.blocks.append((pieces, equal, reason, self.stack[-1] if self.stack else ""))

    def add_inexact(self, ids: np.ndarray, reason: str) -> None:
        """Cutting these channels is allowed but changes what the model computes even where
        they are zero (statistics over channels, a conv along the channel axis)."""
        self.inexact.append((np.asarray(ids, np.int64), reason))

    def add_scale_free(self, ids: np.ndarray, reason: str) -> None:
        """A norm divides out each of these channels' scale per sample (InstanceNorm): the
        cut is exact, but a dropped channel is no multiple of a kept one after it, so
        k-means merging leaves their group alone."""
        self.scale_free.append((np.asarray(ids, np.int64), reason))

    def module(self, name: str) -> nn.Module:
        return self.modules.get(name, self.model)

    def find_attr(self, value, container_ok: bool = False) -> str | None:
        """The one attribute of the current module that holds `value` (an int by value, a
        list/tuple by identity or, with ``container_ok``, by value), else None."""
        if not self.stack:
            return None
        mod = self.module(self.stack[-1])
        hits = []
        for k, v in vars(mod).items():
            if k.startswith("_"):
                continue
            if isinstance(value, (list, tuple)):
                if v is value or (container_ok and isinstance(v, (list, tuple)) and list(v) == list(value)):
                    hits.append(k)
            elif type(v) is int and type(value) is int and v == value:
                hits.append(k)
        return hits[0] if len(hits) == 1 else None

    def held_by(self, values) -> str:
        """Why no one attribute of the current module was found for each of `values` (ints),
        for messages: none holds it, or several do (pyprune cannot tell which to rewrite)."""
        parts = []
        for v in values:
            names = self.find_attrs(v) if type(v) is int else []
            if len(names) > 1:
                parts.append(f"{v} is held by {len(names)} attributes ({', '.join(names[:4])}) and pyprune cannot "
                             "tell which one sets it (give the one that does a value no other int attribute has)")
            elif not names:
                parts.append(f"no attribute of the module holds {v} (pyprune rewrites the counts it finds as module "
                             "attributes)")
        return "; ".join(parts)

    def scalar_use(self, value: int, op: str) -> None:
        """`value` is a number the current module's code computes with (in `op`)."""
        self.scalar_uses.setdefault(self.stack[-1] if self.stack else "", {}).setdefault(value, op)

    def find_attrs(self, value: int) -> list[str]:
        """Every int attribute of the current module equal to `value`."""
        if not self.stack:
            return []
        mod = self.module(self.stack[-1])
        return [k for k, v in vars(mod).items() if not k.startswith("_") and type(v) is int and v == value]

    def add_rewrite(self, attr: str, kind: str, pieces, container: type = int, tentative: bool = False,
                    kept: bool = False) -> None:
        self.rewrites.append(Rewrite(self.stack[-1], attr, kind, [np.asarray(p, np.int64) for p in pieces], container,
                                     tentative=tentative, kept=kept))

    def param_dim(self, t: Any, dim: int) -> tuple[str, str, int] | None:
        """(module, parameter, its dim) when dim `dim` of tensor `t` is a dim of a parameter or
        buffer (the tensor itself, or a view/reshape/expand of it)."""
        if not isinstance(t, torch.Tensor):
            return None
        owner = self.param_owner.get(id(t))
        if owner is not None:
            return owner[0], owner[1], dim
        view = self.param_views.get(id(t))
        if view is not None and dim in view[2]:
            return view[0], view[1], view[2][dim]
        return None

    def report_unknown(self, op: str, lays: list[Layout], outs: list) -> None:
        ids = np.concatenate([lay.ids for lay in lays]) if lays else np.zeros(0, np.int64)
        self.unknown.append((self.where(), op, ids))
        self.freeze(ids, f"unsupported op {op} in {self.where()}")
        for o in outs:
            self.set_layout(o, None)


_HANDLERS: dict[str, Callable] = {}


class OpRuleError(RuntimeError):
    """A channel rule (:func:`register_op`) raised while the model was traced."""


def register_op(*names: str):
    """Decorator: `fn` is the channel rule of the torch functions / Tensor methods with
    these names (``torch.sinc``, ``Tensor.roll``, ...; the name is ``func.__name__``).

    ``fn(rec, name, args, kwargs, out)`` runs after the op, with its real arguments and
    output, whenever an input carries tracked channels. It tells the recorder where the
    channels went: ``rec.set_layout(out, rec.layout(args[0]))`` for an op that keeps them
    in place, ``rec.unite(a.ids, b.ids)`` where two tensors' channels must be pruned
    together, ``rec.freeze(ids, reason)`` where they must stay, or
    ``rec.report_unknown(name, layouts, outputs)`` where the rule cannot follow them (strict
    pruning then refuses the model, naming the op). See :mod:`pyprune.layers` for the
    recorder's methods."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"register_op: expected op names (strings), got {names!r}")

    def deco(fn):
        if not callable(fn):
            raise TypeError(f"register_op({', '.join(names)}): expected a callable, got {type(fn).__name__}")
        for n in names:
            _HANDLERS[n] = fn
        return fn

    return deco


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# -- shape-preserving element-wise ops --------------------------------------------------
_UNARY = (
    "relu relu_ relu6 hardtanh hardtanh_ elu elu_ selu celu leaky_relu leaky_relu_ gelu silu mish "
    "sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid softplus dropout dropout_ dropout1d "
    "dropout2d dropout3d alpha_dropout feature_alpha_dropout clone contiguous detach detach_ float half "
    "double bfloat16 to type type_as neg __neg__ abs __abs__ exp log sqrt rsqrt square "
    "sign round floor ceil nan_to_num requires_grad_ cpu cuda __pos__ erf logsigmoid tanhshrink "
    "softsign hardshrink softshrink threshold threshold_ rrelu glu_ zero_ fill_ exp_ mul_scalar "
    "__rpow__ reciprocal relu6_ celu_ selu_ silu_ mish_ gelu_ "
    "log1p expm1 log2 log10 exp2 sin cos tan sinh cosh atan asin acos trunc frac erfc logit logical_not "
    "bitwise_not __invert__ isnan isinf isfinite sqrt_ abs_ neg_ sign_ sigmoid_ log_ log1p_ sin_ cos_ "
    "trunc_ frac_ reciprocal_ square_ rsqrt_ floor_ ceil_ round_ as_tensor asarray"
).split()


@register_op(*_UNARY)
def _unary(rec: Recorder, name, args, kwargs, out):
    src = args[0] if args else next((kwargs[k] for k in ("input", "data", "self") if k in kwargs), None)
    lay = rec.layout(src)
    outs = _tensors(out)
    if lay is None or len(outs) != 1 or outs[0].shape != src.shape:
        # (a call by keywords only that passes channels under a keyword it does not read is
        # reported; `buf.to(x)` and `buf.type_as(x)` take only x's dtype and device)
        others = [] if args else [la for la in map(rec.layout, _tensors(list(kwargs.values()))) if la is not None]
        if lay is not None or others:
            rec.report_unknown(name, [lay] if lay is not None else others, outs)
        return
    rec.set_layout(outs[0], lay)


@register_op("pow", "__pow__", "pow_", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_",
             "clamp_max", "clamp_max_")
def _operand_or_unary(rec: Recorder, name, args, kwargs, out):
    """An exponent or bound that is a tensor of several values is an operand like any
    (sliced with the channels, or refused); a number or one value: element-wise."""
    if any(isinstance(a, torch.Tensor) and a.numel() > 1 for a in list(args[1:]) + list(kwargs.values())):
        return _broadcast(rec, name, args, kwargs, out)
    return _unary(rec, name, args, kwargs, out)


# -- ops on spatial dims only (pooling, resizing) ---------------------------------------
_SPATIAL = (
    "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d avg_pool1d avg_pool2d avg_pool3d "
    "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
    "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
    "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices interpolate upsample "
    "upsample_nearest upsample_bilinear lp_pool2d lp_pool1d fractional_max_pool2d"
).split()


@register_op(*_SPATIAL)
def _spatial(rec: Recorder, name, args, kwargs, out):
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    # the op works on the last k dims (k from its name, all but two for interpolate): the
    # channels before them (dim 1 batched, dim 0 one map per channel: keypoint heatmaps)
    k = next((int(c) for c in "123" if name.endswith(f"{c}d") or f"{c}d_" in name), src.dim() - 2)
    if lay.dim >= src.dim() - k or not outs or outs[0].dim() != src.dim() \
            or outs[0].shape[:lay.dim + 1] != src.shape[:lay.dim + 1]:
        rec.report_unknown(name, [lay], outs)
        return
    rec.set_layout(outs[0], lay)
    if len(outs) == 2 and outs[1].shape == outs[0].shape and not outs[1].is_floating_point():
        rec.set_layout(outs[1], lay)  # the indices of a max pool: one map per channel (max_unpool reads them)


@register_op("grid_sample")
def _grid_sample(rec: Recorder, name, args, kwargs, out):
    """F.grid_sample(x, grid): every channel of x sampled alone at the grid's points (SuperPoint's
    descriptors, spatial transformers): x's channels pass through; a grid that carries
    channels is not followed."""
    src = args[0] if args else kwargs.get("input")
    grid = args[1] if len(args) > 1 else kwargs.get("grid")
    lay, glay = rec.layout(src), rec.layout(grid) if isinstance(grid, torch.Tensor) else None
    if lay is None and glay is None:
        return
    if glay is not None or lay.dim != 1 or not isinstance(out, torch.Tensor) or out.shape[:2] != src.shape[:2]:
        rec.report_unknown(name, [la for la in (lay, glay) if la is not None], _tensors(out))
        return
    rec.set_layout(out, lay)


@register_op("max_unpool1d", "max_unpool2d", "max_unpool3d")
def _max_unpool(rec: Recorder, name, args, kwargs, out):
    """F.max_unpool (SegNet, ENet decoders): each channel of the input is scattered by the
    indices of the same channel of an earlier max pool, so the two are one set of channels
    and the output has it."""
    src = args[0] if args else kwargs.get("input")
    idx = args[1] if len(args) > 1 else kwargs.get("indices")
    lays = [rec.layout(t) for t in (src, idx) if isinstance(t, torch.Tensor)]
    lays = [lay for lay in lays if lay is not None]
    if not lays:
        return
    k = int(name[-2])
    ok = (isinstance(out, torch.Tensor) and isinstance(idx, torch.Tensor) and idx.shape == src.shape
          and out.dim() == src.dim() and all(lay.dim < src.dim() - k for lay in lays)
          and len({lay.dim for lay in lays}) == 1 and out.shape[:lays[0].dim + 1] == src.shape[:lays[0].dim + 1])
    if not ok or len(lays) != 2:  # indices of no known pool: which channel each belongs to is unknown
        rec.report_unknown(name, lays, _tensors(out))
        return
    rec.unite(lays[0].ids, lays[1].ids)
    rec.set_layout(out, lays[0])


@register_op("roi_align", "roi_pool")
def _roi_pool(rec: Recorder, name, args, kwargs, out):
    """torchvision's RoI pooling (detection heads): (N, C, H, W) maps and boxes give one
    (boxes, C, h, w) crop per box, each channel pooled alone."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    if lay.dim != 1 or not outs or outs[0].dim() != src.dim() or outs[0].shape[1] != src.shape[1]:
        rec.report_unknown(name, [lay], outs)
        return
    rec.set_layout(outs[0], lay)


@register_op("argmax", "argmin")
def _arg_extreme(rec: Recorder, name, args, kwargs, out):
    """The position of the largest (smallest) value: over the channels it is a channel's
    index, which pruning would change (the class a head picks), so those channels stay;
    along another dim the channels pass through as in a reduction."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None or _norm_dim(dim, src.dim()) == lay.dim:
        rec.freeze(lay.ids, f"{name} over the channels (an index of a channel) in {rec.where()}")
        rec.set_layout(out, None)
        return
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    rec.set_layout(out, Layout(lay.dim if keep or lay.dim < _norm_dim(dim, src.dim()) else lay.dim - 1, lay.ids))


@register_op("topk", "sort", "argsort", "msort")
def _ordered(rec: Recorder, name, args, kwargs, out):
    """Sorting along a dim: along another dim than the channels' they pass through (values
    and indices alike); along the channels, an order (and indices) of the channels, which
    pruning would change: they stay."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    if name == "msort":
        dim = 0
    elif name == "topk":
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    else:
        dim = args[1] if len(args) > 1 and isinstance(args[1], int) and not isinstance(args[1], bool) \
            else kwargs.get("dim", -1)
    if not isinstance(dim, int) or _norm_dim(dim, src.dim()) == lay.dim \
            or any(o.dim() != src.dim() or o.shape[lay.dim] != src.shape[lay.dim] for o in outs):
        rec.freeze(lay.ids, f"{name} along the channels in {rec.where()}")
        for o in outs:
            rec.set_layout(o, None)
        return
    for o in outs:
        rec.set_layout(o, lay)


@register_op("pad")
def _pad(rec: Recorder, name, args, kwargs, out):
    """Padding of other dims passes the channels through. Constant channels added before or
    after the input's (PyramidNet's shortcut, ``F.pad(x, (0, 0, 0, 0, 0, C_out - C_in))``,
    MONAI's ChannelPad on both sides, added to the wider branch) become channels of their
    own: cut with what they are added to, the pad tuple's entries rewritten to the kept
    counts when it is an attribute of the module; a pad tuple built in ``forward`` keeps
    them all. Cropping, and reflected or replicated channels, keep the input's channels."""
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    pad = args[1] if len(args) > 1 else kwargs.get("pad")
    touched = {src.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
    if lay.dim not in touched:
        rec.set_layout(out, lay)
        return
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    i = 2 * (src.dim() - 1 - lay.dim)  # pad[i] goes before the channels, pad[i + 1] after them
    before, after = int(pad[i]), int(pad[i + 1]) if i + 1 < len(pad) else 0
    if mode != "constant" or min(before, after) < 0 or not isinstance(out, torch.Tensor) \
            or out.shape[lay.dim] != len(lay.ids) + before + after:
        rec.freeze(lay.ids, f"channel padding in {rec.where()}")
        return
    first, last = (rec.new_ids(n, f"channel padding in {rec.where()}") if n else np.zeros(0, np.int64)
                   for n in (before, after))
    sides = [(p, j) for p, j, n in ((first, i, before), (last, i + 1, after)) if n]
    attr = rec.find_attr(pad) if isinstance(pad, (tuple, list)) else None
    if attr is not None:
        rec.rewrites.append(Rewrite(rec.stack[-1], attr, "replace", [p for p, _ in sides], type(pad),
                                    tuple(j for _, j in sides), pad))
    else:
        rec.freeze(np.concatenate([first, last]), f"channel padding of a width computed in forward ({rec.where()})")
    rec.set_layout(out, Layout(lay.dim, np.concatenate([first, lay.ids, last])))


# -- element-wise ops between several tensors (broadcasting) -------------------------------
_BINARY = (
    "add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__ rsub mul mul_ __mul__ __imul__ "
    "__rmul__ div div_ __truediv__ __itruediv__ __rtruediv__ true_divide maximum minimum where addcmul "
    "addcdiv lerp hardtanh_backward fmax fmin gt ge lt le eq ne __gt__ __ge__ __lt__ __le__ __eq__ __ne__ "
    "greater greater_equal less less_equal not_equal logical_and logical_or logical_xor remainder fmod "
    "__mod__ __rmod__ floor_divide __floordiv__ __rfloordiv__ atan2 copysign hypot xlogy bitwise_and "
    "bitwise_or bitwise_xor __and__ __or__ __xor__ masked_fill masked_fill_"
).split()


_SCALINGS = {"mul": 1, "mul_": 1, "__mul__": 1, "__imul__": 1, "__rmul__": 1, "div": -1, "div_": -1,
             "__truediv__": -1, "__itruediv__": -1, "true_divide": -1}


def _scale_from_width(rec: Recorder, name: str, args) -> None:
    """``q * self.head_dim ** -0.5`` or ``(q @ k^T) / math.sqrt(C)``: a tensor whose last dim
    holds a head's channels (or a product that contracted them) scaled by 1/sqrt of their
    count, a number no attribute of the module holds (``self.scale`` is set once, and keeps
    its value after a cut): it was computed in forward from the width, and follows the kept
    count, so the cut changes what the model computes (reported inexact)."""
    if len(args) != 2 or not rec.stack:
        return
    t, s = (args[0], args[1]) if isinstance(args[0], torch.Tensor) else (args[1], args[0])
    if not isinstance(t, torch.Tensor) or type(s) is not float or not s > 0 or \
            (_SCALINGS[name] < 0 and t is not args[0]):
        return
    lay = rec.layout(t)
    ids = lay.ids if lay is not None and lay.dim == t.dim() - 1 and lay.cross is None else rec.contracted.get(id(t))
    if ids is None or len(ids) < 2:
        return
    width = len(ids) ** (-0.5 * _SCALINGS[name])
    if abs(s - width) > 1e-6 * width:
        return
    mod = rec.module(rec.stack[-1])
    if any(type(v) is float and abs(v - s) <= 1e-6 * s for v in vars(mod).values()):
        return
    rec.add_inexact(ids, f"{name} in {rec.where()} scales by 1/sqrt({len(ids)}), computed in forward from the "
                         "count of these channels: it follows the cut")


def _map_columns(rec: Recorder, operands: list, o: torch.Tensor):
    """For an element-wise op giving `o`: the dim of `o` that holds the columns of the
    channel-by-channel maps among `operands` (``Layout.cross``), None when none is one, or
    False where the op meets a map with other values along its columns (an operand with
    channels that is no map or another one, a tensor of several values along them)."""
    cross, seen = None, False
    for t in operands:
        lay = rec.layout(t)
        if lay is not None:
            c = None if lay.cross is None else lay.cross + o.dim() - t.dim()
            if seen and c != cross or c is not None and t.shape[lay.cross] != o.shape[c]:
                return False
            cross, seen = c, True
    if cross is None:
        return None
    for t in operands:
        pd = cross - (o.dim() - t.dim())
        if rec.layout(t) is None and pd >= 0 and t.shape[pd] > 1:
            return False
    return cross


_BINARY_OPS = frozenset(_BINARY)


@register_op(*_BINARY)
def _broadcast(rec: Recorder, name, args, kwargs, out):
    operands = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    outs = _tensors(out)
    if len(outs) != 1 or (name == "where" and len(operands) == 1):  # where(cond): indices of its true entries
        lays = [rec.layout(t) for t in operands if rec.layout(t) is not None]
        if lays:
            rec.report_unknown(name, lays, outs)
        return
    o = outs[0]
    od_lays: dict[int, list[Layout]] = {}
    cross = _map_columns(rec, operands, o)
    if cross is False:
        rec.report_unknown(f"{name} of a channel-by-channel map with other values along its columns",
                           [rec.layout(t) for t in operands if rec.layout(t) is not None], outs)
        return
    for t in operands:
        lay = rec.layout(t)
        if lay is not None:
            od = lay.dim + o.dim() - t.dim()
            if t.shape[lay.dim] != o.shape[od]:  # broadcast along the channel dim
                if t.shape[lay.dim] == 1:  # one channel over all of them (a spatial attention map)
                    rec.freeze(lay.ids, f"one channel broadcast over {o.shape[od]} ({name} in {rec.where()})")
                    continue
                rec.report_unknown(name, [lay], outs)
                return
            od_lays.setdefault(od, []).append(lay)
    if not od_lays:
        return
    if len(od_lays) > 1:
        rec.report_unknown(name, [lay for ls in od_lays.values() for lay in ls], outs)
        return
    (od, lays), = od_lays.items()
    base = lays[0].ids
    for lay in lays[1:]:
        rec.unite(base, lay.ids)
    size = o.shape[od]
    for t in operands:
        if rec.layout(t) is not None:
            continue
        pd = od - (o.dim() - t.dim())
        if pd < 0 or t.shape[pd] == 1:
            continue  # broadcast over the channels: nothing to slice
        owner = rec.param_dim(t, pd)
        if owner is not None and t.shape[pd] == size:
            rec.add_member(owner[0], owner[1], owner[2], base, "param")
        else:
            rec.freeze(base, f"a tensor of {size} values per channel that is not a parameter ({name} in {rec.where()})")
    rec.set_layout(o, Layout(od, base, cross))


@register_op("prelu")
def _prelu(rec: Recorder, name, args, kwargs, out):
    x, w = args[0], args[1]
    lay = rec.layout(x)
    if lay is None:
        return
    if w.numel() > 1:
        owner = rec.param_owner.get(id(w))
        if owner is None or lay.dim != 1:
            rec.report_unknown(name, [lay], [out])
            return
        rec.add_member(owner[0], owner[1], 0, lay.ids, "param")
    rec.set_layout(out, lay)


# -- concatenation and splitting -----------------------------------------------------------
@register_op("cat", "concat", "concatenate")
def _cat(rec: Recorder, name, args, kwargs, out):
    tensors = list(args[0]) if args else list(kwargs["tensors"])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    dim = _norm_dim(dim, out.dim())
    lays = [rec.layout(t) for t in tensors]
    if all(lay is None for lay in lays):
        return
    if all(lay is None or lay.dim == dim for lay in lays):
        parts = []
        for t, lay in zip(tensors, lays):
            if lay is None:
                ids = rec.new_ids(t.shape[dim], f"untracked input of cat in {rec.where()}")
                rec.freeze(ids, f"untracked input of cat in {rec.where()}")
                parts.append(ids)
            else:
                parts.append(lay.ids)
        rec.set_layout(out, Layout(dim, np.concatenate(parts)))
        return
    present = [lay for lay in lays if lay is not None]
    if len({lay.dim for lay in present}) == 1:  # along another dim (tokens, a class token)
        base = present[0].ids
        for lay in present[1:]:
            rec.unite(base, lay.ids)
        cd = present[0].dim
        for t, lay in zip(tensors, lays):
            if lay is not None:
                continue
            owner = rec.param_dim(t, cd)
            if owner is not None and t.shape[cd] == len(base):
                rec.add_member(owner[0], owner[1], owner[2], base, "param")
            elif t.shape[cd] != 1:
                rec.freeze(base, f"a tensor that is not a parameter is concatenated to these channels along dim "
                                 f"{dim} in {rec.where()}")
        rec.set_layout(out, present[0])
        return
    # Channels along different dims of the pieces (SSD's boxes per anchor: an anchor count of 4
    # on one level and 6 on another puts the tracked dim elsewhere after the same reshape):
    # what cat does is known, but no one layout describes its result. Kept whole, every piece
    # is the same in the pruned model, and so is the result.
    for lay in present:
        rec.freeze(lay.ids, f"concatenated along dim {dim} with pieces whose channels lie along other dims "
                            f"in {rec.where()}")
    rec.set_layout(out, None)


@register_op("stack")
def _stack(rec: Recorder, name, args, kwargs, out):
    tensors = list(args[0]) if args else list(kwargs["tensors"])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    dim = _norm_dim(dim, out.dim())
    lays = [rec.layout(t) for t in tensors]
    present = [lay for lay in lays if lay is not None]
    if not present:
        return
    if len(present) == len(lays) and len({lay.dim for lay in present}) == 1:
        for lay in present[1:]:
            rec.unite(present[0].ids, lay.ids)
        d = present[0].dim
        rec.set_layout(out, Layout(d + 1 if d >= dim else d, present[0].ids))
        return
    rec.report_unknown(name, present, [out])


@register_op("split", "chunk", "tensor_split", "unbind", "split_with_sizes", "hsplit", "vsplit")
def _split(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    if name == "unbind":
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    elif name == "hsplit":  # columns: dim 1, or dim 0 of a 1-D tensor
        dim = 1 if src.dim() > 1 else 0
    elif name == "vsplit":
        dim = 0
    else:  # split(x, sizes, dim), chunk(x, chunks, dim), tensor_split(x, sections, dim)
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    dim = _norm_dim(dim, src.dim())
    if dim != lay.dim:
        for o in outs:
            nd = lay.dim - (1 if name == "unbind" and dim < lay.dim else 0)
            rec.set_layout(o, Layout(nd, lay.ids))
        return
    where = rec.where()
    sizes = [o.shape[dim] for o in outs] if name != "unbind" else [1] * len(outs)
    pieces, off = [], 0
    for n in sizes:
        pieces.append(lay.ids[off: off + n])
        off += n
    arg = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size",
                                                      kwargs.get("chunks", kwargs.get("sections", kwargs.get("split_sizes")))))
    equal = len(set(sizes)) == 1
    reason = None
    if name == "unbind" or len(outs) < 2 or min(sizes) < 1:
        reason = f"{name} along the channel dim in {where}"
    elif name in ("chunk", "tensor_split", "hsplit", "vsplit") and isinstance(arg, int):
        # the pieces follow the (pruned) size: they stay valid while they stay equal
        if equal:
            rec.add_blocks(pieces, f"{name}({arg}) along the channel dim in {where}")
        else:
            reason = f"{name} into unequal pieces in {where}"
    elif isinstance(arg, int):  # split(x, size): the size is a constant of forward
        attr = rec.find_attr(arg)
        total = rec.find_attrs(len(lay.ids)) if attr is None and equal else []
        if equal and attr is not None:
            rec.add_blocks(pieces, f"split({attr}) along the channel dim in {where}")
            rec.add_rewrite(attr, "count", [pieces[0]])
        elif total:  # split(x, self.channels // n): an attribute holds the total
            rec.add_blocks(pieces, f"split({total[0]} // {len(pieces)}) along the channel dim in {where}")
            for t in total:  # (every attribute that holds it: in/out channels alike)
                rec.add_rewrite(t, "count", [lay.ids])
        else:
            reason = (f"split size {arg} in {where}: " + ("not a divisor of the channels" if not equal else
                      rec.held_by([arg])))
    elif isinstance(arg, (list, tuple)):
        attr = rec.find_attr(arg)
        if attr is not None:  # the list itself is an attribute: rewritten piece by piece
            rec.add_blocks(pieces, f"split({attr}) along the channel dim in {where}", equal=False)
            rec.add_rewrite(attr, "counts", pieces, type(arg))
        else:  # sizes built in forward from attributes: one rewrite per attribute
            names = [rec.find_attr(v) if isinstance(v, int) else None for v in arg]
            if any(n is None for n in names):
                unfound = [v for v, n in zip(arg, names) if n is None]
                if any(type(v) is int and len(rec.find_attrs(v)) > 1 for v in unfound):
                    reason = f"split sizes {list(arg)} in {where}: " + rec.held_by(unfound)
                else:
                    reason = (f"split sizes {list(arg)} in {where} are constants of forward that no attribute of the "
                              "module holds (pyprune rewrites split sizes it finds as module attributes)")
                # the sizes an attribute does hold are read here for channels that keep their
                # count: an attribute rewritten for channels cut elsewhere (SHViT's pdim, also
                # the value's width) must keep them too
                for n, piece in zip(names, pieces):
                    if n is not None:
                        rec.add_rewrite(n, "count", [piece], kept=True)
            else:
                by_attr: dict = {}
                for n, piece in zip(names, pieces):
                    by_attr.setdefault(n, []).append(piece)
                for n, ps in by_attr.items():
                    rec.add_blocks(ps, f"split({n}) along the channel dim in {where}")
                    rec.add_rewrite(n, "count", [ps[0]])
                if len(by_attr) > 1:
                    rec.add_blocks([np.concatenate(ps) for ps in by_attr.values()],
                                   f"split along the channel dim in {where}", equal=False)
    else:
        reason = f"{name} along the channel dim in {where}"
    if reason is not None:  # the split points are fixed in the model's code: these channels keep their count
        rec.freeze(lay.ids, reason)
    for o, piece in zip(outs, pieces):
        if name != "unbind":
            rec.set_layout(o, Layout(dim, piece))


# -- views, permutations, reductions, indexing -------------------------------------------
def _reshape_plan(in_shape, d: int, out_shape):
    """Where dim `d` of a tensor goes through a reshape (C order), as
    ("same", k): out dim k is dim d; ("split", k0, sizes): dims k0.. of the output split it
    into `sizes`; ("merge", k, inner, outer): out dim k holds it merged with `inner`
    following and `outer` preceding elements (flatten); or None (split across dims)."""
    c = in_shape[d]
    post = math.prod(in_shape[d + 1:])
    suffix = [math.prod(out_shape[k:]) for k in range(len(out_shape) + 1)]
    same = [k for k in range(len(out_shape)) if out_shape[k] == c and suffix[k + 1] == post]
    if same:  # several only when c == 1 (size-1 dims around it): the one nearest its place
        return ("same", min(same, key=lambda k: (abs(k - d), k)))
    for k0 in range(len(out_shape)):
        if suffix[k0] != post * c:
            continue
        for k1 in range(k0 + 2, len(out_shape) + 1):
            if suffix[k1] == post:
                return ("split", k0, tuple(out_shape[k0:k1]))
    for k in range(len(out_shape)):
        lo, hi = suffix[k + 1], suffix[k]
        if lo and hi and post % lo == 0 and hi % (post * c) == 0:
            return ("merge", k, post // lo, hi // (post * c))
    return None


def _reshape_elementwise(in_shape, d: int, out_shape, ids: np.ndarray):
    """_reshape_plan for any reshape, element by element (small tensors): the channel (id)
    of every element, reshaped. (k, rows): the channel varies along out dim k alone (one
    row), or along several dims, k the largest of them (rows: the positions along k, per
    combination of the others, whose channels are cut together); None if it varies nowhere."""
    n = math.prod(in_shape)
    if n == 0 or n > (1 << 22):
        return None
    shape = [1] * len(in_shape)
    shape[d] = in_shape[d]
    pos = np.broadcast_to(np.arange(in_shape[d]).reshape(shape), in_shape).reshape(out_shape)
    val = ids[pos]
    varies = [k for k in range(len(out_shape)) if out_shape[k] > 1 and
              not (np.take(val, [0], axis=k) == val).all()]
    if not varies:
        return None
    k = max(varies, key=lambda i: (out_shape[i], i))
    rows = np.unique(np.moveaxis(pos, k, -1).reshape(-1, out_shape[k]), axis=0)
    return k, rows


def _one_component(rows: np.ndarray, n: int) -> bool:
    """Whether cutting the channel positions of each row together (``rows[0][i]`` with
    ``rows[r][i]``) ties all `n` channels into one: a reshape that only reads as channels
    (MAnet's ``(B, h*w, C).reshape(B, C, h, w)``), which no cut can follow. (The graph's
    coupling, ``connected_components``, on these ties alone.)"""
    used = np.unique(rows)
    if len(used) < 2:
        return False
    a, b = np.broadcast_to(rows[:1], rows[1:].shape).ravel(), rows[1:].ravel()
    ties = coo_matrix((np.ones(len(a), bool), (a, b)), shape=(n, n))
    return len(np.unique(connected_components(ties, directed=False)[1][used])) == 1


def _view_layout(rec: Recorder, in_shape, lay: Layout, out_shape, where: str) -> Layout | None:
    plan = _reshape_plan(tuple(in_shape), lay.dim, tuple(out_shape))
    if plan is None:
        plan = _reshape_elementwise(tuple(in_shape), lay.dim, tuple(out_shape), lay.ids)
        if plan is None:
            return None
        k, rows = plan
        if len(rows) > 1 and _one_component(rows, in_shape[lay.dim]):
            return None  # every channel tied to every other: a mix of channels and positions
        for row in rows[1:]:  # the same slot of the other dims' slices: cut together
            rec.unite(lay.ids[rows[0]], lay.ids[row])
        return Layout(k, lay.ids[rows[0]])
    if plan[0] == "same":
        return Layout(plan[1], lay.ids)
    if plan[0] == "merge":  # channels merged with the dims around them (flatten before a Linear)
        _, k, inner, outer = plan
        return Layout(k, np.tile(np.repeat(lay.ids, inner), outer))
    # Channels split over several dims (channel shuffle, selective-kernel attention, heads):
    # the largest of them follows the pruned count, the others are structural constants,
    # so a channel is cut together with its partners in every other slice.
    _, k0, sizes = plan
    q = max(range(len(sizes)), key=lambda i: (sizes[i], i))
    grid = lay.ids.reshape(sizes)
    grid = np.moveaxis(grid, q, -1).reshape(-1, sizes[q])
    for row in grid[1:]:
        rec.unite(grid[0], row)
    return Layout(k0 + q, grid[0])


@register_op("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "squeeze_", "unsqueeze_")
def _view(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    new = _view_layout(rec, tuple(src.shape), lay, tuple(out.shape), rec.where())
    if new is None:
        rec.freeze(lay.ids, f"{name} {tuple(src.shape)} -> {tuple(out.shape)} splits the channel dim in {rec.where()}")
        rec.set_layout(out, None)
        return
    if name in ("view", "reshape"):  # the channel count written in the target shape
        shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
        if len(shape) == out.dim() and type(shape[new.dim]) is int and shape[new.dim] == len(new.ids) > 1:
            attr = rec.find_attr(shape[new.dim])
            if attr is not None:
                # where another dim of the shape is as long, the attribute may be that dim's
                # (Swin-B's 32 heads of 32 channels: num_heads; a side as long as the width):
                # the rewrite is dropped if the cut with it fails
                ambiguous = sum(1 for v in shape if v == shape[new.dim]) > 1
                rec.add_rewrite(attr, "count", [new.ids], tentative=ambiguous)
                if not ambiguous and len(new.ids) == len(lay.ids):
                    # the width may as well be the one read from the input's shape (PVT-v2's
                    # ``self.sr(x).reshape(B, C, -1)``, C = x.shape[-1], also self.dim): the two
                    # keep one count, so the attribute counts one thing
                    _tie_to_width_read(rec, shape[new.dim], new, merged=False)
                elif not ambiguous:  # heads merged back to it (``reshape(B, N, C)``): one share
                    _link_merged_heads(rec, attr, shape[new.dim], new)
                if ambiguous:
                    rec.square_heads.add(rec.stack[-1])
                    if len(new.ids) < len(lay.ids):
                        _link_to_input_width(rec, lay, new)
                    else:  # heads merged back (as many tokens as channels): see below
                        _link_merged_heads(rec, attr, shape[new.dim], new)
            elif [a for a in rec.find_attrs(shape[new.dim]) if a in _HEAD_WIDTHS]:
                # several attributes hold the width, one of them named as a head width (PVT-v2's
                # one head: dim and head_dim): split into heads, that one is rewritten,
                # tentatively (dropped where the cut with it fails; a window or a token count as
                # long is left alone); a width the module read from its input ties the two
                if len(new.ids) < len(lay.ids):
                    for a in rec.find_attrs(shape[new.dim]):
                        if a in _HEAD_WIDTHS:
                            rec.add_rewrite(a, "count", [new.ids], tentative=True)
                elif len(new.ids) == len(lay.ids):
                    _tie_to_width_read(rec, shape[new.dim], new, merged=False)
                    _rewrite_merged_width(rec, shape[new.dim], new)
            elif not rec.find_attrs(shape[new.dim]):  # a width no attribute holds: read or computed
                if len(new.ids) < len(lay.ids):
                    _tie_to_input_width(rec, lay, new)
                else:
                    _tie_to_width_read(rec, shape[new.dim], new)
            elif len(new.ids) < len(lay.ids) or (len(new.ids) == len(lay.ids)
                                                  and not _width_read_of(rec, shape[new.dim], lay.ids)):
                # split into heads whose width several attributes hold, none of them named as a
                # head's (``reshape(B, N, self.h, self.hd)`` with h == hd), or a count they all
                # hold that the module did not read from the tensor itself (as ``B, H, W, C =
                # x.shape; x.view(B, -1, C)`` does): a non-local block's ``view(B,
                # self.inter_channels, -1)`` with in_channels == inter_channels, even where it
                # read its input's size. Which one counts the channels is not known, so none is
                # rewritten. Where the count is computed from the input the cut runs; where it
                # is one of the attributes it fails: cut only if the check of the cut passes,
                # kept otherwise (and without the check)
                _keep_unknown_count(rec, lay, shape[new.dim], "heads' width" if len(new.ids) < len(lay.ids)
                                    else "channel count")
            elif len(new.ids) > len(lay.ids):
                # heads merged back to a width that several attributes hold, none of them a
                # head's (NextViT's ``reshape(B, N, C)``, C = x.shape[-1], also dim and out_dim;
                # Hiera's ``reshape(B, -1, self.dim_out)``, also dim): a width read from the
                # input keeps one share with the heads, and each attribute is rewritten
                _link_merged_heads(rec, None, shape[new.dim], new)
                _rewrite_merged_width(rec, shape[new.dim], new)
    if name == "unflatten" and rec.stack:  # nn.Unflatten's unflattened_size (a decoder's Linear -> C x H x W)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        sizes = args[2] if len(args) > 2 else kwargs.get("sizes")
        if type(dim) is int and isinstance(sizes, (tuple, list)):
            i = new.dim - (dim % src.dim())
            attr = rec.find_attr(sizes)
            if attr is not None and 0 <= i < len(sizes) and sizes[i] == len(new.ids) > 1:
                rec.rewrites.append(Rewrite(rec.stack[-1], attr, "replace", [np.asarray(new.ids, np.int64)],
                                            type(sizes), i, sizes))
    rec.set_layout(out, new)


def _tie_to_width_read(rec: Recorder, width: int, new: Layout, merged: bool = True) -> None:
    """A reshape whose channel dim is written as a width the model's code read from another
    tensor's shape (``B, C, H, W = x.shape`` ... ``y.transpose(1, 2).reshape(B, N, C)``: heads
    merged back to the input's width, in FastViT's and YOLOv10's attention): the pruned model
    needs `new`'s channels to keep as many as that tensor's. Channel i of one is cut with
    channel i of the other: a tie of the two counts (it only narrows the cuts allowed).
    Only for a width read from the module's own input, and not where the heads' width was
    computed from it (the split already tied the counts, in rows of the head width; NesT
    merges the heads in another order, and a second tie would couple nearly every channel),
    nor where the head count was taken from a dim as long as another (Swin-B's 32 heads of
    32 channels): that rewrite is tentative, and the cut without it keeps both counts.
    (``merged=False``: a tensor of its own channels reshaped, not heads merged: after a split
    tie too, as Twins' ``self.sr(x).reshape(B, C, -1)``.)"""
    if not rec.stack or rec.in_hook or merged and rec.stack[-1] in rec.width_tied:
        return
    read = _width_read_from_input(rec, width)
    if read is None or len(read) != len(new.ids) or np.intersect1d(read, new.ids).size \
            or rec.stack[-1] in rec.square_heads:
        return
    rec.unite(read, new.ids)


# Attribute names that hold one head's width: where several attributes hold the same number,
# the one of these is taken for it (and none of the others: a window, a token count).
_HEAD_WIDTHS = frozenset({"head_dim", "dim_head", "head_width", "head_size", "d_head", "head_channels",
                          "dim_per_head", "head_dims"})


def _link_merged_heads(rec: Recorder, attr: str | None, width: int, new: Layout) -> None:
    """Heads merged back to a width (``reshape(B, N, C)``) that an attribute holds (``attr``;
    None: several do) and the module's code read from its input's shape: the input and the
    heads keep one share (``rec.links``), so the two counts stay equal whichever the code
    uses."""
    read = _width_read_from_input(rec, width)
    if read is not None and not np.intersect1d(read, new.ids).size:
        what = f"{attr} of {rec.where()} counts" if attr else f"{rec.where()} merges its heads to a width that counts"
        rec.links.append((read, new.ids, f"{what} both its input's channels and its heads'", rec.stack[-1]))


def _rewrite_merged_width(rec: Recorder, width: int, new: Layout) -> None:
    """Heads merged back to a width that several attributes of the module hold (Hiera's
    dim and dim_out, and head_dim where one head is all): the code may read any of them,
    so each that is not a head's width (those are rewritten where the heads are split) is
    rewritten to the merged count, tentatively: dropped where the cut with them fails (one
    may be a window or a token count as long), and not made where the module's code also
    uses that number as a value (``_assign_rewrites``)."""
    for a in rec.find_attrs(width):
        if a not in _HEAD_WIDTHS:
            rec.add_rewrite(a, "count", [new.ids], tentative=True)


def _width_read_from_input(rec: Recorder, width: int) -> np.ndarray | None:
    """The channels of the current module's input whose count `width` its own code read
    (``B, N, C = x.shape``), the last such read; None where there is none."""
    if not rec.stack:
        return None
    inputs = rec.module_inputs.get(rec.stack[-1], ())
    return next((r for where, r in reversed(rec.widths_read_all.get(width, ()))
                 if where == rec.stack[-1] and any(np.array_equal(xl.ids, r) for xl in inputs)), None)


def _keep_unknown_count(rec: Recorder, lay: Layout, count: int, what: str) -> None:
    """Channels `lay` whose count several attributes of the current module hold (the view's
    caller): cut only where the check of the cut passes (Graph.tentative_freezes), once per
    module and channels."""
    ids = np.asarray(lay.ids, np.int64)
    if any(m == rec.stack[-1] and np.array_equal(i, ids) for m, i, _ in rec.tentative_freezes):
        return
    *first, last = rec.find_attrs(count)
    attrs = f"{', '.join(first)} and {last}" if first else last
    rec.tentative_freezes.append((rec.stack[-1], ids, f"{attrs} of {rec.where()} hold the same {what} ({count}): "
                                                      "which one counts these channels is not known"))


def _width_read_of(rec: Recorder, width: int, ids: np.ndarray) -> bool:
    """True when the current module's code read the channel count `width` of a tensor
    holding the channels `ids` (``C = x.shape[-1]`` before ``x.view(B, -1, C)``)."""
    where = rec.stack[-1] if rec.stack else ""
    return any(w == where and np.array_equal(r, ids) for w, r in rec.widths_read_all.get(width, ()))


def _tie_to_input_width(rec: Recorder, lay: Layout, new: Layout) -> None:
    """A reshape that splits channels into heads with a head width D that no int attribute
    of the module equals, in a module whose input has H x D channels of another group: the width was
    computed from the input's (``x.reshape(B, N, 3, heads, C // heads)``, ``C = x.shape[-1]``),
    so the pruned model needs the input to keep H times as many channels as each head. The
    input's channels are taken in H rows of D, cut together, and with the heads' D units:
    a tie of the two counts (it only narrows the cuts allowed, so it cannot break a model)."""
    xl = _heads_input(rec, lay, new)
    if xl is None:
        return
    rows = xl.ids.reshape(-1, len(new.ids))
    for row in rows[1:]:
        rec.unite(rows[0], row)
    rec.unite(rows[0], new.ids)
    rec.width_tied.add(rec.stack[-1])


def _heads_input(rec: Recorder, lay: Layout, new: Layout) -> Layout | None:
    """The input of the current module whose width the heads' width D (`new`, split from
    `lay`) may have been computed from: H x D channels of another group, `lay` a multiple."""
    d = len(new.ids)
    for xl in rec.module_inputs.get(rec.stack[-1] if rec.stack else "", ()):
        n = len(xl.ids)
        if n > d and not n % d and not len(lay.ids) % n and not np.intersect1d(xl.ids, lay.ids).size:
            return xl
    return None


def _link_to_input_width(rec: Recorder, lay: Layout, new: Layout) -> None:
    """A head width that an attribute equals but that may as well be computed from the
    input's (``reshape(B, N, 3, self.num_heads, C // self.num_heads)`` with as many heads as
    channels per head: Swin-B's 32 x 32, CoaT-Lite's 8 x 8): the attribute's rewrite is
    tentative, and where the check of the cut drops it, the input must keep H times each
    head's count. The two groups are linked to keep the same share (``rec.links``), which
    holds either way and leaves each free to choose its channels (a tie by rows would not)."""
    xl = _heads_input(rec, lay, new)
    if xl is not None:
        rec.links.append((xl.ids, new.ids, f"a head width of {len(new.ids)} in {rec.where()} may be its input's "
                                           f"{len(xl.ids)} over the head count", rec.stack[-1]))


def _dims_arg(v, nd: int) -> list[int] | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return [_norm_dim(v, nd)]
    if isinstance(v, (list, tuple, torch.Size)) and all(isinstance(d, int) for d in v):
        return [_norm_dim(d, nd) for d in v]
    return None


@register_op("flip", "fliplr", "flipud", "rot90", "roll", "narrow", "index_select")
def _along_dims(rec: Recorder, name, args, kwargs, out):
    """Ops that reorder or select positions along some dims and leave the others as they
    are: the channels pass through when their dim is not one of them; a flip of the
    channels reverses them (their units with them)."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    nd = src.dim()
    if name == "flip":  # x.flip(2, 3) passes the dims as separate arguments
        dims = _dims_arg(tuple(args[1:]) if len(args) > 2 else args[1] if len(args) > 1 else kwargs.get("dims"), nd)
    elif name in ("fliplr", "flipud"):
        dims = [1 if name == "fliplr" else 0]
    elif name == "rot90":
        dims = _dims_arg(args[2] if len(args) > 2 else kwargs.get("dims", (0, 1)), nd)
    elif name == "roll":
        dims = _dims_arg(args[2] if len(args) > 2 else kwargs.get("dims"), nd) or None  # none: the flat tensor
    else:  # narrow, index_select
        dims = _dims_arg(args[1] if len(args) > 1 else kwargs.get("dim"), nd)
    if dims is None or not isinstance(out, torch.Tensor) or out.dim() != nd:
        rec.report_unknown(name, [lay], _tensors(out))
        return
    if lay.dim not in dims:
        if out.shape[lay.dim] != src.shape[lay.dim]:
            rec.report_unknown(name, [lay], [out])
            return
        rec.set_layout(out, lay)
        return
    if name in ("flip", "fliplr", "flipud"):  # the kept channels, reversed: what the pruned flip gives
        rec.set_layout(out, Layout(lay.dim, lay.ids[::-1].copy()))
    else:
        # roll of the channels: the pruned model would roll its kept channels by the same
        # shift, which matches the cut only when the channels rolled around are all kept;
        # rot90 mixes them with another dim; narrow/index_select pick them by constants
        rec.report_unknown(name, [lay], [out])


@register_op("repeat", "tile")
def _repeat(rec: Recorder, name, args, kwargs, out):
    """repeat/tile: the channels pass through where their dim is repeated once; repeated f
    times, each channel's unit comes f times, in the order the copies are laid out."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    sizes = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else (
        args[1] if len(args) > 1 else kwargs.get("repeats", kwargs.get("dims")))
    nd = src.dim()
    if not isinstance(sizes, (list, tuple, torch.Size)) or not all(isinstance(v, int) for v in sizes) \
            or not isinstance(out, torch.Tensor):
        rec.report_unknown(name, [lay], _tensors(out))
        return
    sizes = list(sizes)
    if name == "tile" and len(sizes) < nd:
        sizes = [1] * (nd - len(sizes)) + sizes
    if len(sizes) < nd:
        rec.report_unknown(name, [lay], [out])
        return
    od = lay.dim + len(sizes) - nd
    rec.set_layout(out, Layout(od, np.tile(lay.ids, sizes[od])))


@register_op("repeat_interleave")
def _repeat_interleave(rec: Recorder, name, args, kwargs, out):
    """repeat_interleave(x, r, dim): along another dim the channels pass through; along
    theirs each channel's unit comes r times in a row. Per-element counts along the
    channels, or no dim (a flat result), are not followed."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    r = args[1] if len(args) > 1 else kwargs.get("repeats")
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    if isinstance(r, torch.Tensor) and r.numel() == 1:
        r = int(r)
    if dim is None or not isinstance(out, torch.Tensor) or out.dim() != src.dim():
        rec.report_unknown(name, [lay], _tensors(out))
        return
    if _norm_dim(dim, src.dim()) != lay.dim:
        rec.set_layout(out, lay)
    elif isinstance(r, int):
        rec.set_layout(out, Layout(lay.dim, np.repeat(lay.ids, r)))
    else:
        rec.report_unknown(f"{name} with a count per channel", [lay], [out])


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return v[0], v[1]
    return None


@register_op("unfold")
def _unfold(rec: Recorder, name, args, kwargs, out):
    """F.unfold (im2col): (N, C, H, W) -> (N, C*kh*kw, L), channel c on rows c*kh*kw..:
    each channel's unit repeated kh*kw times. Tensor.unfold(dim, size, step) adds a window
    dim: along another dim than the channels' they pass through."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    if out.dim() == src.dim() + 1:  # Tensor.unfold(dimension, size, step)
        d = args[1] if len(args) > 1 else kwargs.get("dimension")
        if isinstance(d, int) and _norm_dim(d, src.dim()) != lay.dim:
            rec.set_layout(out, lay)
        else:
            rec.report_unknown(f"{name} of the channels", [lay], [out])
        return
    k = _pair(args[1] if len(args) > 1 else kwargs.get("kernel_size"))
    c = src.dim() - 3  # the channel dim of a (N, C, H, W) or (C, H, W) input
    if k is None or lay.dim != c or out.shape[c] != src.shape[c] * k[0] * k[1]:
        rec.report_unknown(name, [lay], [out])
        return
    rec.set_layout(out, Layout(c, np.repeat(lay.ids, k[0] * k[1])))


@register_op("fold")
def _fold(rec: Recorder, name, args, kwargs, out):
    """F.fold (col2im): (N, C*kh*kw, L) -> (N, C, H, W); output channel c sums rows
    c*kh*kw..: those rows' units are cut together, as c."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    k = _pair(args[2] if len(args) > 2 else kwargs.get("kernel_size"))
    c = src.dim() - 2
    if k is None or lay.dim != c or src.shape[c] != out.shape[c] * k[0] * k[1]:
        rec.report_unknown(name, [lay], [out])
        return
    rows = lay.ids.reshape(-1, k[0] * k[1])
    for j in range(1, rows.shape[1]):
        rec.unite(rows[:, 0], rows[:, j])
    rec.set_layout(out, Layout(c, rows[:, 0].copy()))


@register_op("channel_shuffle", "native_channel_shuffle")
def _channel_shuffle(rec: Recorder, name, args, kwargs, out):
    """channel_shuffle(x, g): x's channels as g slices, interleaved. Channel j of every slice
    is one unit (the slices keep equal widths) and the output reads the units interleaved."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    g = args[1] if len(args) > 1 else kwargs.get("groups")
    if (not isinstance(g, int) or g < 1 or lay.dim != 1 or len(lay.ids) % g
            or not isinstance(out, torch.Tensor)):
        rec.report_unknown(name, [lay], _tensors(out))
        return
    grid = lay.ids.reshape(g, -1)
    for row in grid[1:]:
        rec.unite(grid[0], row)
    rec.set_layout(out, Layout(1, grid.T.reshape(-1).copy()))


def _per_channel_args(rec: Recorder, name: str, args, kwargs, lay: Layout, keys: tuple, first: int, role: str):
    """A functional norm's per-channel tensors (argument `first` on, or by keyword): each one
    that is a parameter of the channels' count is sliced with them (as `role`); another
    tensor there (a computed weight) keeps the channels."""
    for i, key in enumerate(keys, start=first):
        t = args[i] if len(args) > i else kwargs.get(key)
        if not isinstance(t, torch.Tensor):
            continue
        owner = rec.param_dim(t, 0)
        if owner is None or t.dim() != 1 or t.shape[0] != len(lay.ids):
            rec.freeze(lay.ids, f"{name}'s {key} is not a parameter of {len(lay.ids)} channels ({rec.where()})")
            continue
        rec.add_member(owner[0], owner[1], owner[2], lay.ids, role)


def _channels_in_place(rec: Recorder, name, args, kwargs, out) -> Layout | None:
    """The layout of a norm's input whose channels (dim 1) it keeps in place, with an output
    of the input's shape; None where the input carries no channels or (reported) where they
    are elsewhere."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return None
    if lay.dim != 1 or not isinstance(out, torch.Tensor) or out.shape != src.shape:
        rec.report_unknown(name, [lay], _tensors(out))
        return None
    return lay


@register_op("instance_norm")
def _instance_norm(rec: Recorder, name, args, kwargs, out):
    """F.instance_norm: each channel normalised over its own positions (nothing across
    channels); its per-channel tensors (statistics, weight, bias) are sliced with them."""
    lay = _channels_in_place(rec, name, args, kwargs, out)
    if lay is None:
        return
    _per_channel_args(rec, name, args, kwargs, lay, ("running_mean", "running_var", "weight", "bias"), 1, "param")
    rec.add_scale_free(lay.ids, f"{name} in {rec.where()}")
    rec.set_layout(out, lay)


@register_op("batch_norm")
def _batch_norm(rec: Recorder, name, args, kwargs, out):
    """F.batch_norm in a module's own code (a conditional or custom BatchNorm): each channel
    normalised by its own statistics, which are sliced with it, as its weight and bias are."""
    lay = _channels_in_place(rec, name, args, kwargs, out)
    if lay is None:
        return
    _per_channel_args(rec, name, args, kwargs, lay, ("running_mean", "running_var", "weight", "bias"), 1, "param")
    rec.set_layout(out, lay)


@register_op("local_response_norm")
def _local_response_norm(rec: Recorder, name, args, kwargs, out):
    """F.local_response_norm (AlexNet's LRN): each channel (dim 1) divided by a power of the
    sum of squares over a window of its neighbours. The channels pass through; a cut channel
    leaves the windows of its neighbours, even a zero one (the next channel moves in), so the
    cut is inexact."""
    lay = _channels_in_place(rec, name, args, kwargs, out)
    if lay is None:
        return
    rec.add_inexact(lay.ids, f"{name} in {rec.where()}: each channel is divided by a sum over its neighbours")
    rec.set_layout(out, lay)


@register_op("layer_norm", "rms_norm")
def _last_dims_norm(rec: Recorder, name, args, kwargs, out):
    """F.layer_norm and F.rms_norm called by the model's own code (timm's RmsNorm, a norm
    written by hand): statistics over the last ``len(normalized_shape)`` dims. Over other
    dims only, the channels pass through. Over the channel dim alone (the last), they pass
    through too, the weight (and layer_norm's bias) are sliced with them, and the module
    attribute that holds ``normalized_shape`` (or its one entry) is rewritten to the kept
    count; the statistics couple the channels, so the cut is inexact. Over the channels and
    other dims together the rule cannot follow them."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
    nd = src.dim()
    if isinstance(shape, int) and not isinstance(shape, bool):
        k = 1
    elif isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1:
        k = len(shape)
    else:
        k = 0
    if k == 0 or not isinstance(out, torch.Tensor) or out.shape != src.shape:
        rec.report_unknown(name, [lay], _tensors(out))
        return
    if lay.dim < nd - k:  # normalises other dims only
        rec.set_layout(out, lay)
        return
    if k != 1 or lay.dim != nd - 1:
        rec.report_unknown(f"{name} over the channels and other dims", [lay], [out])
        return
    _per_channel_args(rec, name, args, kwargs, lay, ("weight", "bias") if name == "layer_norm" else ("weight",), 2,
                      "norm")
    rec.add_inexact(lay.ids, f"{name} over the channels in {rec.where()}")
    ids = np.asarray(lay.ids, np.int64)
    whole = rec.find_attr(shape) if isinstance(shape, (tuple, list)) else None
    if whole is not None:  # F.layer_norm(x, self.normalized_shape, ...)
        rec.rewrites.append(Rewrite(rec.stack[-1], whole, "replace", [ids], type(shape), 0, shape))
    else:  # F.layer_norm(x, (self.dim,), ...): the count, unless another dim is as long
        attr = rec.find_attr(shape if isinstance(shape, int) else shape[0])
        if attr is not None:
            rec.add_rewrite(attr, "count", [ids], tentative=sum(1 for v in src.shape if v == len(ids)) > 1)
    rec.set_layout(out, lay)


@register_op("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")
def _new_tensor(rec: Recorder, name, args, kwargs, out):
    """x.new_zeros(shape) and the like: a fresh tensor of the shape given, with x's dtype and
    device and nothing of its channels. Where that shape has x's channel count in x's
    channel dim (``x.new_zeros(x.shape)``), the count may come from x and would not follow a
    cut: x's channels are kept."""
    src = args[0] if args else None
    lay = rec.layout(src)
    if (lay is not None and isinstance(out, torch.Tensor) and out.dim() == src.dim()
            and out.shape[lay.dim] == len(lay.ids)):
        rec.freeze(lay.ids, f"{name} of {tuple(out.shape)} in {rec.where()}: a shape with the channel count")


@register_op("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like")
def _like(rec: Recorder, name, args, kwargs, out):
    """zeros_like(x) and the like: constants in x's shape, its channels where x has them."""
    lay = rec.layout(args[0]) if args else None
    if lay is not None and isinstance(out, torch.Tensor) and out.shape == args[0].shape:
        rec.set_layout(out, lay)


@register_op("pixel_shuffle", "pixel_unshuffle")
def _pixel_shuffle(rec: Recorder, name, args, kwargs, out):
    """pixel_shuffle(x, r): each run of r*r channels of x becomes one channel at r times the
    resolution, so the run is one unit (cut whole); pixel_unshuffle(x, r): each channel
    becomes r*r channels, its unit repeated. The channels are dim -3 of both."""
    src = args[0] if args else kwargs.get("input")
    lay = rec.layout(src)
    if lay is None:
        return
    r = args[1] if len(args) > 1 else kwargs.get("upscale_factor", kwargs.get("downscale_factor"))
    if (not isinstance(out, torch.Tensor) or not isinstance(r, int) or isinstance(r, bool) or r < 1
            or lay.dim != src.dim() - 3):
        rec.report_unknown(name, [lay], _tensors(out))
        return
    if name == "pixel_unshuffle":
        rec.set_layout(out, Layout(lay.dim, np.repeat(lay.ids, r * r)))
        return
    runs = lay.ids.reshape(-1, r * r)
    for j in range(1, r * r):
        rec.unite(runs[:, 0], runs[:, j])
    rec.set_layout(out, Layout(lay.dim, runs[:, 0]))


@register_op("expand", "expand_as", "broadcast_to")
def _expand(rec: Recorder, name, args, kwargs, out):
    """The channels pass through to the same dim of the result. One channel repeated over
    many (BAM's spatial gate, ``att.expand_as(x)``) is what a broadcast does: that channel
    is kept, and the result takes the channels of the tensor it was shaped as (expand_as),
    whose width it follows when they are cut; shaped by numbers, it has none of its own
    (an op that meets it with channels keeps those, as a broadcast constant)."""
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    od = lay.dim + out.dim() - src.dim()
    if out.shape[od] != src.shape[lay.dim]:
        if src.shape[lay.dim] != 1:
            rec.report_unknown(name, [lay], [out])
            return
        rec.freeze(lay.ids, f"one channel repeated over {out.shape[od]} ({name} in {rec.where()})")
        other = args[1] if name == "expand_as" and len(args) > 1 else kwargs.get("other")
        olay = rec.layout(other) if isinstance(other, torch.Tensor) and other.dim() == out.dim() else None
        if olay is not None and olay.dim == od:
            rec.set_layout(out, olay)
        return
    rec.set_layout(out, Layout(od, lay.ids))


def _permuted_dim(name: str, args, kwargs, nd: int, d: int) -> int:
    """Where dim d goes under permute/transpose/movedim/t."""
    if name == "permute":
        perm = args[1:] if len(args) > 2 or (len(args) > 1 and not isinstance(args[1], (list, tuple))) else (
            args[1] if len(args) > 1 else kwargs["dims"])
        perm = [_norm_dim(p, nd) for p in perm]
        return perm.index(d)
    if name in ("movedim", "moveaxis"):
        src = args[1] if len(args) > 1 else kwargs.get("source")
        dst = args[2] if len(args) > 2 else kwargs.get("destination")
        if isinstance(src, (list, tuple)):
            if len(src) != 1:
                raise ValueError("several dims moved")
            src, dst = src[0], dst[0]
        s, t = _norm_dim(src, nd), _norm_dim(dst, nd)
        order = [i for i in range(nd) if i != s]
        order.insert(t, s)
        return order.index(d)
    if name in ("t", "numpy_T"):
        a, b = (0, 1) if name == "t" or nd == 2 else (None, None)
        if a is None:  # .T reverses all dims
            return nd - 1 - d
    else:
        a = _norm_dim(args[1] if len(args) > 1 else kwargs["dim0"], nd)
        b = _norm_dim(args[2] if len(args) > 2 else kwargs["dim1"], nd)
    return b if d == a else a if d == b else d


@register_op("permute", "transpose", "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "numpy_T")
def _permute(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    try:
        new = _permuted_dim(name, args, kwargs, src.dim(), lay.dim)
        cross = None if lay.cross is None else _permuted_dim(name, args, kwargs, src.dim(), lay.cross)
    except (ValueError, KeyError, IndexError):
        rec.report_unknown(name, [lay], _tensors(out))
        return
    rec.set_layout(out, Layout(new, lay.ids, cross))


_NORMS = ("norm", "linalg_vector_norm", "linalg_norm", "linalg_matrix_norm")  # (input, ord, dim, keepdim)
_REDUCE = "mean sum amax amin max min std var logsumexp nansum nanmean prod median".split() + list(_NORMS)


@register_op(*_REDUCE)
def _reduce(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    pos = 2 if name in _NORMS else 1
    dims = args[pos] if len(args) > pos else kwargs.get("dim", kwargs.get("axis"))
    if isinstance(dims, bool):  # std(x, True): `unbiased`, over every dim
        dims = kwargs.get("dim")
    if dims is None and name == "linalg_matrix_norm":
        dims = (-2, -1)
    if name in ("max", "min") and isinstance(dims, torch.Tensor):
        return _broadcast(rec, name, args, kwargs, out)
    if dims is None:
        rec.report_unknown(name, [lay], outs)
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_norm_dim(d, src.dim()) for d in dims}
    chan = [d for d in _channel_dims(lay) if d not in dims]  # the channel dims the result keeps
    if len(chan) < len(_channel_dims(lay)):  # a statistic over the channels (GRN, channel attention)
        p = args[1] if name in _NORMS and len(args) > 1 else kwargs.get("p", kwargs.get("ord", 2))
        # a zero channel leaves a sum and a norm (of a positive order) as they were, not a mean or max
        if not (name in ("sum", "nansum") or name in _NORMS and (p is None or isinstance(p, str) or p > 0)):
            rec.add_inexact(lay.ids, f"{name} over the channels in {rec.where()}")
        if not chan:  # any count works
            for o in outs:
                rec.set_layout(o, None)
            return
    at = pos + 2 if name in ("std", "var") else pos + 1  # std(input, dim, unbiased, keepdim)
    keep = kwargs.get("keepdim", args[at] if len(args) > at and isinstance(args[at], bool) else False)

    def place(d: int) -> int:
        return d if keep else d - sum(1 for x in dims if x < d)

    if outs:  # (of a channel-by-channel map reduced along its rows or columns: the other one's channels)
        rec.set_layout(outs[0], Layout(place(chan[0]), lay.ids, place(chan[1]) if len(chan) > 1 else None))


@register_op("softmax", "log_softmax", "softmin", "cumsum", "cumprod", "normalize")
def _along_dim(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    if name == "normalize":  # normalize(input, p=2, dim=1)
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 1)
    else:
        dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim")
    if dim is None:
        rec.report_unknown(f"{name} over all dims", [lay], [out])
        return
    if _norm_dim(dim, src.dim()) in _channel_dims(lay) and name != "normalize":  # a zero channel leaves a norm alone
        rec.add_inexact(lay.ids, f"{name} over the channels in {rec.where()}")
    rec.set_layout(out, lay)


@register_op("__getitem__")
def _getitem(rec: Recorder, name, args, kwargs, out):
    src, idx = args[0], args[1]
    lay = rec.layout(src)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.Tensor) or isinstance(i, (list, np.ndarray)) for i in idx):
        rec.freeze(lay.ids, f"advanced indexing in {rec.where()}")
        return
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    in_dim = out_dim = 0
    for i in idx:
        if i is Ellipsis:
            skip = src.dim() - n_real
            if in_dim <= lay.dim < in_dim + skip:
                rec.set_layout(out, Layout(out_dim + lay.dim - in_dim, lay.ids))
                return
            in_dim += skip
            out_dim += skip
            continue
        if i is None:
            out_dim += 1
            continue
        if in_dim == lay.dim:
            _channel_slice(rec, lay, i, src.shape[in_dim], out, out_dim)
            return
        in_dim += 1
        out_dim += 0 if isinstance(i, int) else 1
    rec.set_layout(out, Layout(out_dim + lay.dim - in_dim, lay.ids))


def _is_int_index(i) -> bool:
    return isinstance(i, (int, np.integer)) and not isinstance(i, bool)


def _index_entries(idx: tuple, nd: int) -> list | None:
    """Each entry of a basic/advanced index with the dims of a rank-`nd` tensor it reads (a
    boolean mask reads as many as it has; an Ellipsis is spelt out as full slices), trailing
    full slices dropped; None when the index has a None, whose placement this does not
    follow."""
    idx = list(idx)  # (identity tests only: a numpy index compares element-wise)
    dots = [k for k, i in enumerate(idx) if i is Ellipsis]
    if any(i is None for i in idx) or len(dots) > 1:
        return None
    width = [i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else 1 for i in idx if i is not Ellipsis]
    if dots:
        idx[dots[0]:dots[0] + 1] = [slice(None)] * max(0, nd - sum(width))
    while idx and isinstance(idx[-1], slice) and idx[-1] == slice(None):
        idx.pop()
    entries, d = [], 0
    for i in idx:
        n = i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else 1
        entries.append((i, list(range(d, d + n))))
        d += n
    return entries if d <= nd else None


_FACTORIES = {"zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros",
              "new_ones", "new_empty", "new_full"}


@register_op("__setitem__")
def _setitem(rec: Recorder, name, args, kwargs, out):
    """``dst[idx] = value`` (in place, nothing returned). The value's channels, in a dim the
    index leaves whole, land in that dim of `dst`: a new tensor (``torch.zeros``, filled per
    pyramid level as torchvision's RoI pooling does) carries them from then on; a tensor
    with channels of its own shares them. A write into chosen channels, or into a tensor
    whose other contents the trace does not follow, keeps the channels involved: they are
    the same in the pruned model, and so is what the write does. A boolean mask as large
    as `dst` with one value (``x[x < 0] = 0``) is element-wise."""
    dst, idx = args[0], args[1]
    value = args[2] if len(args) > 2 else kwargs.get("value")
    dl, vl = rec.layout(dst), rec.layout(value)
    lays = [lay for lay in (dl, vl) if lay is not None]
    if not lays:
        return
    entries = _index_entries(idx if isinstance(idx, tuple) else (idx,), dst.dim())
    if entries is None:
        rec.report_unknown(name, lays, [dst])
        return
    scalar = not isinstance(value, torch.Tensor) or value.numel() == 1
    if vl is None and scalar and len(entries) == 1 and isinstance(entries[0][0], torch.Tensor) \
            and entries[0][0].dtype == torch.bool and entries[0][0].shape == dst.shape:
        return  # one value where a mask of dst's own shape is true: element-wise
    covered = sum(len(ds) for _, ds in entries)
    picked = {d: i for i, ds in entries for d in ds}  # dst dim -> the index entry reading it
    if any(isinstance(i, (torch.Tensor, list, np.ndarray)) for i, _ in entries):
        whole = list(range(covered, dst.dim()))  # advanced: only the dims past the index keep their place
    else:  # basic: every dim but those an int removes, in order
        whole = [d for d in range(dst.dim()) if not _is_int_index(picked.get(d))]

    def untouched(d: int) -> bool:
        p = picked.get(d)
        return d >= covered or (isinstance(p, slice) and p == slice(None))

    def keep(lay: Layout, why: str) -> None:
        rec.freeze(lay.ids, f"{why} in {rec.where()}")

    if dl is not None and not untouched(dl.dim):  # positions picked along the channels
        keep(dl, "assignment to chosen channels")
        if vl is not None:
            keep(vl, "written into chosen channels")
        return
    if not isinstance(value, torch.Tensor):
        return
    if vl is None:  # a tensor of values per channel of `dst`, written along its channels
        pos = len(whole) - 1 - whole.index(dl.dim) if dl.dim in whole else None
        vd = value.dim() - 1 - pos if pos is not None else -1
        if vd >= 0 and value.shape[vd] != 1:
            owner = rec.param_dim(value, vd)
            if owner is not None:
                rec.add_member(owner[0], owner[1], owner[2], dl.ids, "param")
            else:
                keep(dl, "a tensor of values per channel that is not a parameter is written into these channels")
        return
    r = value.dim() - vl.dim  # the value's channel dim, counted from the right (1: the last)
    td = whole[len(whole) - r] if r <= len(whole) else None
    if td is None or (dl is not None and dl.dim != td):
        rec.report_unknown(name, lays, [dst])
        return
    if not untouched(td):  # a piece of a preallocated tensor's dim (out[:, :8] = y)
        keep(vl, "written into chosen positions of another tensor")
        return
    if dst.shape[td] != value.shape[vl.dim]:
        rec.report_unknown(name, lays, [dst])
        return
    if dl is not None:
        rec.unite(dl.ids, vl.ids)
    elif id(dst) in rec.fresh and rec.param_dim(dst, td) is None:
        rec.set_layout(dst, Layout(td, vl.ids))
    else:
        keep(vl, "written into a tensor whose other contents are not followed")


# -- functional layers and products -------------------------------------------------------
def _arg(args, kwargs, i: int, name: str, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _functional_layer(rec: Recorder, owner: str, kind: str, out: torch.Tensor, param: str = "") -> None:
    """A module whose weight a functional call used (it never ran as a module): counted
    as a layer of `kind`, and not reported as untraced. A parameter of a module that is no
    layer (``F.conv2d(x, self.w)``): a layer of its own, named by the parameter, counted at
    every call."""
    if _on_own_parameter(rec, owner, param):
        rec.param_layers.add((owner, param))
        if rec.count_layers:
            rec.layers.append(LayerRecord(owner, kind, tuple(out.shape), param))
    elif _layers.handler_for(rec.module(owner)) is not None and owner not in rec.leaf_modules:
        rec.leaf_modules[owner] = kind
        if rec.count_layers:
            rec.layers.append(LayerRecord(owner, kind, tuple(out.shape)))


def _on_own_parameter(rec: Recorder, owner: str, param: str) -> bool:
    """A functional layer on the parameter of a module that is no layer (``F.conv2d(x,
    self.w)``), not on a layer's own weight (F.linear on a Linear's)."""
    return bool(param) and _layers.handler_for(rec.module(owner)) is None


def _producer(rec: Recorder, owner: str, param: str) -> str:
    """The name a functional layer's output channels go by: its module where that is a layer,
    else the parameter's path (two in one module stay apart)."""
    return param_path(owner, param) if _on_own_parameter(rec, owner, param) else owner


def _layer_outputs(rec: Recorder, wout: tuple, bias, n_out: int, what: str) -> np.ndarray:
    """The output channels of a functional layer whose weight is `wout` (module, param,
    dim): new units, the weight's rows and the bias's entries (a bias that is no parameter
    keeps them)."""
    out_ids = rec.new_ids(n_out, _producer(rec, wout[0], wout[1]))
    rec.add_member(wout[0], wout[1], wout[2], out_ids, "out")
    if bias is not None:
        bo = rec.param_dim(bias, 0)
        if bo is None:
            rec.freeze(out_ids, f"{what} adds a bias that is not a parameter")
        else:
            rec.add_member(bo[0], bo[1], bo[2], out_ids, "bias")
    return out_ids


@register_op("linear")
def _linear(rec: Recorder, name, args, kwargs, out):
    """F.linear(x, W, b) outside a Linear module (swin's attention calls it on its
    submodules' weights): the same channels as an nn.Linear with that weight."""
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    lay = rec.layout(x)
    wout, win = rec.param_dim(w, 0), rec.param_dim(w, 1)
    if wout is None or win is None or not isinstance(out, torch.Tensor):
        rec.report_unknown("linear with a weight that is not a parameter", [lay] if lay is not None else [], _tensors(out))
        return
    last = x.dim() - 1
    if lay is not None and lay.dim == last:
        rec.add_member(win[0], win[1], win[2], lay.ids, "in")
    out_ids = _layer_outputs(rec, wout, b, out.shape[-1], f"linear in {rec.where()}")
    if lay is not None and lay.dim != last:
        rec.freeze(out_ids, f"linear in {rec.where()} applied along a non-channel dim")
        rec.set_layout(out, lay)
    else:
        rec.set_layout(out, Layout(out.dim() - 1, out_ids))
    _functional_layer(rec, wout[0], "linear", out, wout[1])


_MHA_SIGNATURE = inspect.signature(nn.functional.multi_head_attention_forward)


@register_op("multi_head_attention_forward")
def _mha_forward(rec: Recorder, name, args, kwargs, out):
    """F.multi_head_attention_forward on a module's weights (CLIP's attention pool), as
    nn.MultiheadAttention (see :class:`pyprune.layers.MultiheadAttention`): in
    self-attention (query, key and value carry the same channels: ``query=x[:1]``, the
    class token, too), channel i of the input is cut with dim i of q, k and v (their width
    must be the input's) and with the out-projection's input i; every head keeps as many
    dims as the others. The out-projection's outputs are channels of their own. The
    projections are packed (``in_proj_weight``) or separate (``q/k/v_proj_weight``); a
    packed bias computed as the concatenation of the separate projections' biases is cut in
    those biases. ``embed_dim_to_check`` must be read from the input's shape or be an
    attribute (rewritten). Anything else is an op pyprune does not follow (strict: refused).
    The projections count as layers either way (their MACs; the attention's products are
    not counted)."""
    a = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
    q = a["query"]
    lays = [rec.layout(t) for t in (q, a["key"], a["value"])]
    present = [lay for lay in lays if lay is not None]
    if not present:
        return
    lay = lays[0]
    where = rec.where()
    result = out[0] if isinstance(out, tuple) else out
    e = q.shape[-1]
    heads = a["num_heads"]
    separate = a.get("use_separate_proj_weight", False)
    weights = [a.get(f"{k}_proj_weight") for k in "qkv"] if separate else [a["in_proj_weight"]]
    owners = [(rec.param_dim(w, 0), rec.param_dim(w, 1)) for w in weights]
    for w in weights + [a["out_proj_weight"]]:
        o = rec.param_dim(w, 0)
        if o is not None and isinstance(w, torch.Tensor) and w.dim() == 2:
            _functional_layer(rec, o[0], "linear", torch.empty(q.shape[:-1] + (w.shape[0],), device="meta"), o[1])
    why = None
    if any(t is None or t.dim != t_.dim() - 1 or not np.array_equal(t.ids, lay.ids)
           for t, t_ in zip(lays, (q, a["key"], a["value"]))):
        why = "only self-attention is cut: query, key and value carrying the same channels"
    elif len(lay.ids) != e or not isinstance(heads, int) or e % heads:
        why = "its channels are not the embedding dim"
    elif any(a.get(k) is not None for k in ("bias_k", "bias_v", "static_k", "static_v")) or a.get("add_zero_attn"):
        why = "bias_k/bias_v, static keys or values and add_zero_attn are not followed"
    elif any(o is None or i is None for o, i in owners) or rec.param_dim(a["out_proj_weight"], 1) is None:
        why = "a projection weight that is not a parameter"
    elif not isinstance(result, torch.Tensor):
        why = "an output that is not a tensor"
    check = a["embed_dim_to_check"]
    check_attr = None
    if why is None and not (check in rec.widths_read and np.array_equal(rec.widths_read[check], lay.ids)):
        # the width to check is read from the input's shape, or an attribute to rewrite
        check_attr = rec.find_attr(check) if isinstance(check, int) else None
        if check_attr is None:
            why = f"embed_dim_to_check={check!r} is neither read from the input's shape nor an attribute"
    bias_members = []
    bias = a.get("in_proj_bias")
    if why is None and bias is not None:
        owner = rec.param_dim(bias, 0)
        if owner is not None:
            bias_members = [(owner, np.concatenate([lay.ids] * 3))]
        elif separate and bias.dim() == 1 and len(bias) == 3 * e:
            # torch.cat([q_proj.bias, k_proj.bias, v_proj.bias]): the projections' own biases
            for i, (o, _) in enumerate(owners):
                b = getattr(rec.module(o[0]), "bias", None)
                if not isinstance(b, torch.Tensor) or b.shape != (e,) or not torch.equal(b.detach(), bias[i * e:(i + 1) * e].detach()):
                    why = "its in_proj_bias is neither a parameter nor the projections' biases concatenated"
                    break
                bias_members.append(((o[0], "bias", 0), lay.ids))
        else:
            why = "its in_proj_bias is not a parameter"
    if why is not None:
        rec.report_unknown(f"multi_head_attention_forward ({why})", present, _tensors(out))
        return
    if check_attr is not None:
        rec.add_rewrite(check_attr, "count", [lay.ids])
    ids = lay.ids
    rows = ids if separate else np.concatenate([ids, ids, ids])
    for wo, wi in owners:
        rec.add_member(wi[0], wi[1], wi[2], ids, "in")
        rec.add_member(wo[0], wo[1], wo[2], rows, "param")
    for (mod, param, dim), units in bias_members:
        rec.add_member(mod, param, dim, units, "param")
    pw, pb = a["out_proj_weight"], a.get("out_proj_bias")
    po, pi = rec.param_dim(pw, 0), rec.param_dim(pw, 1)
    rec.add_member(pi[0], pi[1], pi[2], ids, "in")
    out_ids = _layer_outputs(rec, po, pb, result.shape[-1], f"multi_head_attention_forward in {where}")
    if heads > 1:
        rec.add_blocks(ids.reshape(heads, -1), f"multi_head_attention_forward in {where}: {heads} attention heads")
    rec.add_inexact(ids, f"multi_head_attention_forward in {where}: the attention's scale 1/sqrt(head dim) follows "
                         "the pruned head dim")
    rec.set_layout(result, Layout(result.dim() - 1, out_ids))


@register_op("conv1d", "conv2d", "conv3d")
def _conv(rec: Recorder, name, args, kwargs, out):
    """F.conv*d outside a conv module: a fixed depthwise filter held as a buffer (anti-aliasing
    BlurPool) or a module's own weight. ``groups`` equal to the channel count is rewritten
    where the module holds it as an attribute."""
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = _arg(args, kwargs, 6, "groups", 1)
    lay = rec.layout(x)
    if lay is None:
        return
    where = rec.where()
    if lay.dim != 1 or not isinstance(out, torch.Tensor):
        rec.report_unknown(f"{name} reading channels from dim {lay.dim}", [lay], _tensors(out))
        return
    c_in, c_out = x.shape[1], out.shape[1]
    wout, win = rec.param_dim(w, 0), rec.param_dim(w, 1)
    # one filter for every channel: a buffer expanded over them, or the same numbers repeated
    # (TResNet's blur, ``torch.tensor(...).repeat(x.shape[1], 1, 1, 1)``, made again at the kept
    # count; where the count is fixed instead, the check of the cut finds the pruned model fails)
    # (the numbers themselves are compared: they carry no channels and are not all zero, since a
    # filter computed from the activations would be the zeros that layers give in the trace)
    shared = wout is None and isinstance(w, torch.Tensor) and (id(w) in rec.param_views or (
        rec.layout(w) is None and w.dim() >= 2 and w.shape[0] == c_in and bool((w == w[:1]).all())
        and bool(w.ne(0).any())))
    if groups == c_in == c_out:  # depthwise: the channels pass through
        if wout is not None:
            rec.add_member(wout[0], wout[1], wout[2], lay.ids, "param")
        elif not shared:
            rec.report_unknown(f"{name} with a filter that is not a parameter", [lay], [out])
            return
        if groups > 1:
            attr = rec.find_attr(groups)
            if attr is not None:
                rec.add_rewrite(attr, "count", [lay.ids])
        if b is not None:
            bo = rec.param_dim(b, 0)
            if bo is None:
                rec.freeze(lay.ids, f"{name} in {where} adds a bias that is not a parameter")
            else:
                rec.add_member(bo[0], bo[1], bo[2], lay.ids, "param")
        rec.set_layout(out, lay)
        return
    if wout is None or win is None:
        rec.report_unknown(f"{name} with a weight that is not a module's parameter", [lay], [out])
        return
    if groups != 1:  # (a grouped conv module is followed; its functional form is not)
        rec.report_unknown(f"{name} with groups={groups} (a functional grouped convolution: an nn.Conv2d with "
                           "groups= is cut)", [lay], [out])
        return
    rec.add_member(win[0], win[1], win[2], lay.ids, "in")
    out_ids = _layer_outputs(rec, wout, b, c_out, f"{name} in {where}")
    rec.set_layout(out, Layout(1, out_ids))
    _functional_layer(rec, wout[0], "conv", out, wout[1])


def _channel_dims(lay: Layout | None) -> list[int]:
    """The dims of a tensor that hold its channels: the layout's, and a channel map's second."""
    if lay is None:
        return []
    return [lay.dim] if lay.cross is None else [lay.dim, lay.cross]


@register_op("matmul", "__matmul__", "bmm", "mm")
def _matmul(rec: Recorder, name, args, kwargs, out):
    """a @ b: the contracted dim couples a's last dim with b's second to last; a's rows and
    b's columns carry their channels to the output; batch dims broadcast. Rows and columns
    that carry the same channels (``q @ k^T`` over the tokens, q and k cut in the same
    places: cross-covariance attention) make a channel-by-channel map (``Layout.cross``),
    whose columns a later product contracts with the channels of v."""
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    la, lb = rec.layout(a), rec.layout(b)
    if not isinstance(out, torch.Tensor) or not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) \
            or a.dim() < 2 or b.dim() < 2:
        rec.report_unknown(name, [x for x in (la, lb) if x is not None], _tensors(out))
        return
    carried = []  # (output dim, ids, through a batch dim)
    for first, lay, t, contracted, kept_dim in ((True, la, a, a.dim() - 1, a.dim() - 2),
                                                (False, lb, b, b.dim() - 2, b.dim() - 1)):  # (a may be b: g @ g)
        for d in _channel_dims(lay):
            if d == contracted:
                other, odim = (b, b.dim() - 2) if first else (a, a.dim() - 1)
                lo = rec.layout(other)
                if lo is not None and odim in _channel_dims(lo):
                    rec.unite(lay.ids, lo.ids)
                    rec.contracted[id(out)] = lay.ids
                    rec.keep_alive.append(out)
                elif lo is not None:  # met by a dim without channels: keep its length
                    rec.freeze(lay.ids, f"{name} in {rec.where()} contracts these channels with a dim that is not "
                                        "channels")
                else:
                    owner = rec.param_dim(other, odim)
                    if owner is None:
                        rec.freeze(lay.ids, f"{name} in {rec.where()} contracts these channels with a tensor that "
                                            "is not a parameter")
                    else:
                        rec.add_member(owner[0], owner[1], owner[2], lay.ids, "in")
            elif d == kept_dim:
                carried.append((out.dim() - 2 if first else out.dim() - 1, lay.ids, False))
            else:  # a batch dim
                od = d + out.dim() - t.dim()
                if out.shape[od] != t.shape[d]:
                    rec.report_unknown(name, [lay], [out])
                    return
                carried.append((od, lay.ids, True))
    dims = {od for od, _, _ in carried}
    if len(dims) > 1:
        # A tensor carries one channel dim. Channels along a batch dim and along the rows or
        # columns: heads that a layer mixed (talking heads, a learnt bias per head) times the
        # heads of v, whose channels run along its columns: those heads are kept. The same
        # channels along the rows and the columns: a channel-by-channel map. Other channels
        # along both (x @ s^T, EfficientViM's state per channel): the fewer are kept.
        rows = [c for c in carried if not c[2]]
        if not rows:
            rec.report_unknown(name, [x for x in (la, lb) if x is not None], [out])
            return
        if len(carried) == 2 and len(rows) == 2 and np.array_equal(rows[0][1], rows[1][1]):
            (ra, ids, _), (rb, _, _) = sorted(rows, key=lambda c: c[0])
            rec.set_layout(out, Layout(ra, ids, cross=rb))
            return
        keep = max(range(len(rows)), key=lambda i: len(rows[i][1]))
        others = [c for c in carried if c is not rows[keep]]
        if any(np.intersect1d(ids, rows[keep][1]).size for _, ids, _ in others):
            # the same channels on both sides in another order, or also along a batch dim
            rec.report_unknown(name, [x for x in (la, lb) if x is not None], [out])
            return
        for _, ids, batch in others:
            why = "heads made by a layer" if batch else "channels along the other side of a product"
            rec.freeze(ids, f"{name} in {rec.where()}: {why}, multiplied with channels")
        carried = [rows[keep]]
    if carried:
        for _, ids, _ in carried[1:]:  # both operands' channels along one batch dim: the same
            rec.unite(carried[0][1], ids)
        rec.set_layout(out, Layout(carried[0][0], carried[0][1]))


@register_op("einsum")
def _einsum(rec: Recorder, name, args, kwargs, out):
    """torch.einsum("bhid,bhjd->bhij", ...): a channel dim is a letter of its operand. A
    letter kept in the output carries its channels there; a contracted one couples every
    operand that has it (a parameter operand is sliced along it)."""
    eq = args[0] if args and isinstance(args[0], str) else None
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    lays = [rec.layout(t) for t in ops]
    present = [x for x in lays if x is not None]
    if eq is None or not isinstance(out, torch.Tensor) or "..." in eq or "->" not in eq:
        rec.report_unknown(name, present, _tensors(out))
        return
    lhs, rhs = eq.replace(" ", "").split("->")
    subs = lhs.split(",")
    if len(subs) != len(ops) or any(len(sub) != t.dim() for sub, t in zip(subs, ops)):
        rec.report_unknown(name, present, _tensors(out))
        return
    by_letter: dict = {}
    for sub, lay in zip(subs, lays):
        if lay is not None:
            by_letter.setdefault(sub[lay.dim], []).append(lay)
    new = None
    for letter, ls in by_letter.items():
        for other in ls[1:]:
            rec.unite(ls[0].ids, other.ids)
        for sub, t, lay in zip(subs, ops, lays):
            if lay is None and letter in sub:
                owner = rec.param_dim(t, sub.index(letter))
                if owner is not None:
                    rec.add_member(owner[0], owner[1], owner[2], ls[0].ids, "param" if letter in rhs else "in")
                elif t.shape[sub.index(letter)] != 1:
                    rec.freeze(ls[0].ids, f"einsum in {rec.where()} combines these channels with a tensor that is "
                                          "not a parameter")
        if letter in rhs:
            if new is not None:
                rec.report_unknown(name, present, [out])
                return
            new = Layout(rhs.index(letter), ls[0].ids)
    if new is not None:
        rec.set_layout(out, new)


@register_op("scaled_dot_product_attention")
def _sdpa(rec: Recorder, name, args, kwargs, out):
    """softmax(q k^T) v: q's and k's last dims are contracted (cut together), v's last dim
    is the output's. Heads (a batch dim) keep their count."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    lq, lk, lv = rec.layout(q), rec.layout(k), rec.layout(v)
    present = [x for x in (lq, lk, lv) if x is not None]
    last = {id(lq): q.dim() - 1, id(lk): k.dim() - 1, id(lv): v.dim() - 1}
    if any(x.dim != last[id(x)] for x in present) or not isinstance(out, torch.Tensor):
        rec.report_unknown(f"{name} with channels on a batch or token dim", present, _tensors(out))
        return
    if (lq is None) != (lk is None):
        rec.freeze((lq or lk).ids, f"{name} in {rec.where()}: only one of query and key carries channels")
    elif lq is not None:
        rec.unite(lq.ids, lk.ids)
        scale = _arg(args, kwargs, 6, "scale")
        if scale is None:
            rec.add_inexact(lq.ids, f"{name} in {rec.where()}: its scale 1/sqrt(dim) follows the pruned dim")
        elif type(scale) is float and rec.stack:  # scale=1 / math.sqrt(q.shape[-1]), computed in forward
            _scale_from_width(rec, "mul", (q, scale))
    if lv is not None:
        rec.set_layout(out, Layout(out.dim() - 1, lv.ids))


def _channel_slice(rec: Recorder, lay: Layout, i, size: int, out: torch.Tensor, out_dim: int) -> None:
    """x[:, a:b] on the channel dim. A bound inside the channels is a constant of forward:
    pyprune rewrites it when the module holds it as an attribute (DPN's ``num_1x1_c``,
    GhostNet's ``out_chs``) to the number of kept channels before it; otherwise the
    channels keep their count."""
    where = rec.where()
    if not isinstance(i, slice) or i.step not in (None, 1):
        rec.freeze(lay.ids, f"channels picked by index in {where}")
        return
    bounds = []  # the bounds that fall inside the channels
    if i.start is not None and not (type(i.start) is int and i.start == 0):
        bounds.append(i.start)
    if i.stop is not None and not (type(i.stop) is int and i.stop >= size):
        bounds.append(i.stop)
    for v in bounds:
        if type(v) is not int or v < 0 or v > size:
            rec.freeze(lay.ids, f"channels picked by slice bound {v!r} in {where}")
            return
    attrs = [rec.find_attr(v) for v in bounds]
    if any(a is None for a in attrs):
        rec.freeze(lay.ids, f"slice bound(s) {bounds} of the channels in {where}: "
                            + rec.held_by([v for v, a in zip(bounds, attrs) if a is None]))
        start, stop, _ = i.indices(size)  # the piece still carries those (kept) channels, not new ones
        rec.set_layout(out, Layout(out_dim, lay.ids[start:stop]))
        return
    for v, a in zip(bounds, attrs):
        rec.add_rewrite(a, "count", [lay.ids[:v]])
        rec.add_blocks([lay.ids[:v], lay.ids[v:]], f"slice at {a} in {where}", equal=False)
    start, stop, _ = i.indices(size)
    rec.set_layout(out, Layout(out_dim, lay.ids[start:stop]))


_PASS = set("contiguous clone detach to float half double bfloat16 type requires_grad_".split())
_RESHAPES = set("view reshape flatten unflatten squeeze unsqueeze view_as reshape_as squeeze_ unsqueeze_".split())
_EXPANDS = set("expand expand_as broadcast_to".split())
_PERMUTES = set("permute transpose transpose_ swapaxes swapdims movedim moveaxis t numpy_T".split())
_VIEW_LIKE = _PASS | _RESHAPES | _EXPANDS | _PERMUTES
_LAYER_OPS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}


def _dim_through(name: str, args, kwargs, src: torch.Tensor, out: torch.Tensor, d: int) -> int | None:
    """Where dim d of `src` is in `out` after a view-like op, when it stays one whole dim."""
    if name in _PASS:
        return d if out.shape == src.shape else None
    if name in _RESHAPES:
        plan = _reshape_plan(tuple(src.shape), d, tuple(out.shape))
        return plan[1] if plan is not None and plan[0] == "same" else None
    if name in _EXPANDS:
        od = d + out.dim() - src.dim()
        return od if out.shape[od] == src.shape[d] else None
    if name in _PERMUTES:
        return _permuted_dim(name, args, kwargs, src.dim(), d)
    if name == "__getitem__" and len(args) == 2:
        return _indexed_dim(args[1], src.dim(), d)
    return None


def _indexed_dim(idx, ndim: int, d: int) -> int | None:
    """Where dim d is after indexing with only ``None``, ``:`` and ``...`` (``gamma[None, :,
    None, None]``, ``gamma[:, None, None]``: new axes around whole dims); None for any other
    index (a selection)."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if not all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in idx) \
            or sum(i is Ellipsis for i in idx) > 1:
        return None
    whole = sum(1 for i in idx if i is not None and i is not Ellipsis)
    dims = []  # the index with ... and the trailing dims written out as ':'
    for i in idx:
        dims += [slice(None)] * (ndim - whole) if i is Ellipsis else [i]
    dims += [slice(None)] * (ndim - sum(1 for i in dims if i is not None))
    at = 0  # the source dim the next ':' takes
    for out_d, i in enumerate(dims):
        if i is not None:
            if at == d:
                return out_d
            at += 1
    return None


def _param_view(rec: Recorder, name: str, args, kwargs, out) -> None:
    """Follow a parameter through views (``gamma.reshape(1, -1, 1, 1)``, ``.view``, ``.expand``,
    ``.permute``): the result is recorded as a view of the parameter, so a broadcast or a
    concatenation with it slices the parameter itself."""
    src = args[0] if args else None
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor) or out is src:
        return
    owner = rec.param_owner.get(id(src))
    if owner is not None:
        mod, pname, dims = owner[0], owner[1], {i: i for i in range(src.dim())}
    elif id(src) in rec.param_views:
        mod, pname, dims = rec.param_views[id(src)]
    else:
        return
    new = {}
    for d, pd in dims.items():
        if src.shape[d] <= 1:
            continue
        od = _dim_through(name, args, kwargs, src, out, d)
        if od is not None:
            new[od] = pd
    if new:
        rec.param_views[id(out)] = (mod, pname, new)
        rec.keep_alive.append(out)
        if name in ("view", "reshape") and rec.stack:  # a size written in the target shape
            shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            for od, pd in new.items():
                if od >= len(shape) or type(shape[od]) is not int or shape[od] != out.shape[od]:
                    continue
                whole = rec.find_attr(shape) if isinstance(shape, (tuple, list)) and len(args) == 2 else None
                one = rec.find_attr(shape[od])
                r = (Rewrite(rec.stack[-1], whole, "replace", [], type(shape), od, shape) if whole is not None else
                     Rewrite(rec.stack[-1], one, "count", []) if one is not None else None)
                if r is not None:
                    rec.param_shape_attrs.setdefault((mod, pname, pd), []).append(r)


def _weight_mask(rec: Recorder, leaf: str, fname: str, args, kwargs) -> bool:
    """``self.weight * self.mask`` in a layer's forward, the mask a tensor of the layer's
    own with the weight's shape (a fixed sparsity pattern: pytorchcv's XConv2d): an
    element-wise mask, sliced with the weight (recorded for :meth:`Recorder.add_member`),
    leaves the filters as they are. True when the call is one."""
    if fname not in ("mul", "__mul__", "__rmul__") or len(args) != 2 or kwargs:
        return False
    owners = [rec.param_owner.get(id(t)) if isinstance(t, torch.Tensor) else None for t in args]
    if None in owners or any(o[0] != leaf for o in owners) or args[0].shape != args[1].shape:
        return False
    names = [o[1] for o in owners]
    if "weight" not in names or names[0] == names[1]:
        return False
    rec.weight_masks.setdefault((leaf, "weight"), set()).add(names[1 - names.index("weight")])
    return True


_WIDTH_VALUES = {"tensor", "as_tensor", "scalar_tensor"}
# ops that take a count or a shift, not a shape: (positions, keywords) of those arguments
_COUNT_ARGS = {"topk": ((1,), ("k",)), "kthvalue": ((1,), ("k",)), "roll": ((1,), ("shifts",)),
               "narrow": ((2, 3), ("start", "length")), "repeat_interleave": ((1,), ("repeats",))}


def _width_as_value(rec: Recorder, name: str, args, kwargs) -> None:
    """``torch.tensor(C)`` with C a channel count the model's forward read from a shape
    (RAFT's correlation divided by ``sqrt(torch.tensor(C))``): a number the pruned model
    computes again from the kept width, so cutting those channels changes the function
    even where they carry zeros. Their group is reported inexact (the trace cannot follow a
    plain Python number; this is the one form it sees)."""
    value = args[0] if args else kwargs.get("data", kwargs.get("s"))
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) in rec.widths_read:
        rec.add_inexact(rec.widths_read[int(value)], f"torch.{name}({int(value)}) in {rec.where()}: a channel count "
                        "read from a shape becomes a number the model computes with, and the pruned model reads "
                        "the kept count")


# The rules that follow a channel-by-channel map (``Layout.cross``): element-wise ops, ops
# along one dim, reductions, transposes and products. Any other op given one reports it as unsupported.
CROSS_RULES = frozenset({_unary, _broadcast, _along_dim, _permute, _matmul, _reduce})


class _Mode(TorchFunctionMode):
    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if rec.leaf_depth:
            # Inside a registered layer only the output's shape matters to the graph: its
            # own ops run as zeros of the right shape (no arithmetic, no running-stat
            # updates of a training-mode BN); the layer's handler records its channels.
            fname = getattr(func, "__name__", "")
            shape_of = _layers.SHAPE_OPS.get(fname)
            derived = False
            if rec.stack and fname not in _LAYER_OPS:
                # a layer whose weight goes through other ops before its conv (weight
                # standardisation): its filters depend on all of their input channels together
                leaf = rec.stack[-1]
                for t in _tensors(list(args)):
                    owner = rec.param_owner.get(id(t))
                    if id(t) in rec.weight_views or owner is not None and owner[0] == leaf and owner[1] == "weight":
                        derived = True
                if derived and fname not in _VIEW_LIKE and not _weight_mask(rec, leaf, fname, args, kwargs):
                    rec.transformed.add(leaf)
            res = None
            if shape_of is not None and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
                try:
                    res = args[0].new_zeros(shape_of(args, kwargs))
                except Exception:
                    res = None
            if res is None:
                res = func(*args, **kwargs)
            if derived and isinstance(res, torch.Tensor):
                rec.weight_views.add(id(res))
                rec.keep_alive.append(res)
            return res
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", None) or str(func)
        self._follow(func, name, args, kwargs, out)
        if rec.count_layers and not rec.in_hook:
            outs = _tensors(out)
            if outs:
                rec.op_log.append((rec.stack[-1] if rec.stack else "", name,
                                   [(tuple(t.shape), rec.layout(t)) for t in outs]))
        return out

    def _follow(self, func, name: str, args, kwargs, out) -> None:
        """Record how `out` carries the channels of the op's inputs (its handler)."""
        rec = self.rec
        if name == "__get__":  # a Tensor property: the transposes move the channels
            prop = getattr(getattr(func, "__self__", None), "__name__", None)
            src = args[0] if args else None
            lay = rec.layout(src)
            if lay is not None and prop in ("T", "H", "mT", "mH") and isinstance(out, torch.Tensor) \
                    and out.dim() == src.dim():
                nd = src.dim()

                def moved(d: int | None) -> int | None:
                    if d is None:
                        return None
                    return nd - 1 - d if prop in ("T", "H") else {nd - 1: nd - 2, nd - 2: nd - 1}.get(d, d)

                rec.set_layout(out, Layout(moved(lay.dim), lay.ids, moved(lay.cross)))
            elif lay is not None and prop == "shape" and isinstance(out, torch.Size) and len(out) == src.dim() \
                    and not rec.in_hook:  # (the model's own code, not a layer's handler)
                rec.read_width(int(out[lay.dim]), lay.ids)
            return
        if name in _WIDTH_VALUES:
            _width_as_value(rec, name, args, kwargs)
        if (name in _VIEW_LIKE or name == "__getitem__") and args and isinstance(args[0], torch.Tensor):
            _param_view(rec, name, args, kwargs, out)
        if name in _FACTORIES and isinstance(out, torch.Tensor):  # a new tensor (filled in place later)
            rec.fresh.add(id(out))
            rec.keep_alive.append(out)
        if name in _BINARY_OPS and not rec.in_hook:
            if name in _SCALINGS:
                _scale_from_width(rec, name, args)
            for v in list(args) + list(kwargs.values()):
                if type(v) in (int, float) and v >= 2 and float(v).is_integer():
                    rec.scalar_use(int(v), name)
        if name in _COUNT_ARGS and not rec.in_hook:
            # a number of elements or a shift (top-k's k, roll's shifts): a value the code
            # computes with, which the check of a cut (it compares shapes) may not catch
            pos, keys = _COUNT_ARGS[name]
            vals = [args[i] for i in pos if i < len(args)] + [kwargs[k] for k in keys if k in kwargs]
            for v in vals:
                for n in (v if isinstance(v, (tuple, list)) else (v,)):
                    if type(n) is int and abs(n) >= 2:
                        rec.scalar_use(abs(n), name)
        lays = [rec.layout(t) for t in _tensors(list(args)) + _tensors(list(kwargs.values()))]
        lays = [lay for lay in lays if lay is not None]
        if not lays:
            return
        if name == "size" and isinstance(args[0], torch.Tensor) and not rec.in_hook:  # x.size(dim): a width read
            lay = rec.layout(args[0])
            if lay is not None:
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                if dim is None or _norm_dim(dim, args[0].dim()) == lay.dim:
                    rec.read_width(int(args[0].shape[lay.dim]), lay.ids)
        handler = _HANDLERS.get(name)
        outs = _tensors(out)
        if outs and handler not in CROSS_RULES and any(lay.cross is not None for lay in lays):
            rec.report_unknown(f"{name} of a channel-by-channel map", lays, outs)
            return
        if handler is None:
            if outs:  # an op that makes tensors from tracked channels and that we do not know
                rec.report_unknown(name, lays, outs)
            return
        try:
            handler(rec, name, args, kwargs, out)
        except OpRuleError:
            raise
        except Exception as e:  # the rule's own failure, not the model's: name the rule
            rule = f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"
            raise OpRuleError(f"the channel rule for {name} ({rule}, see pyprune.register_op) failed in "
                              f"{rec.where()}: {type(e).__name__}: {e}") from e
        if not rec.in_hook:
            _lift(rec, name, args, kwargs, out)


# Element-wise ops that give a channel of zeros a value other than zero (f(0) != 0).
_LIFTING = frozenset((
    "sigmoid sigmoid_ hardsigmoid exp exp_ exp2 cos cos_ cosh softplus logsigmoid log log_ log2 log10 "
    "erfc reciprocal reciprocal_ rsqrt rsqrt_ logit logical_not isfinite __rpow__ bitwise_not __invert__ "
    "acos softmax log_softmax softmin"
).split())
_PRODUCTS = frozenset("mul mul_ __mul__ __imul__ __rmul__ addcmul".split())
_QUOTIENTS = frozenset("div div_ __truediv__ __itruediv__ true_divide".split())
_SUMS = frozenset("add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__ rsub masked_fill "
                  "masked_fill_ where".split())
_COMPARISONS = frozenset("ge le eq __ge__ __le__ __eq__ greater_equal less_equal gt lt ne __gt__ __lt__ __ne__ "
                         "greater less not_equal".split())
_CLAMPS = frozenset("clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_".split())
_FUNCTIONAL_LAYERS = frozenset("linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d".split())


def _per_channel_param(rec: Recorder, t, o) -> bool:
    """A parameter or buffer (or a view of one) with a value per channel of output `o`
    (along the dim that meets its channels): cut, and planted as zeros, with them. (A
    scalar bias, or one value per pixel, is not.)"""
    if not isinstance(t, torch.Tensor) or not isinstance(o, torch.Tensor) or rec.layout(o) is None:
        return False
    od = rec.layout(o).dim
    pd = od - (o.dim() - t.dim())
    return 0 <= pd < t.dim() and t.shape[pd] == o.shape[od] > 1 and rec.param_dim(t, pd) is not None


def _clamps_zero_away(args, kwargs) -> bool:
    """clamp(x, min, max) with a bound that moves 0 (min > 0 or max < 0)."""
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    return (type(lo) in (int, float) and lo > 0) or (type(hi) in (int, float) and hi < 0)


def _lift(rec: Recorder, name: str, args, kwargs, out) -> None:
    """Which channels of each output are not zero where their filters are zero (what a cut
    that is exact on planted zeros needs of every channel a layer reads): an op with
    f(0) != 0 (``sigmoid``: 0.5; a softmax over the tokens: 1/N) makes its input's channels
    so ("lifted"); a product keeps a channel zero where any factor has it zero (a
    squeeze-excitation gate times the features); a sum with a non-zero number or a tensor
    without channels lifts them all; any other op (a view, a cat, a chunk, a product with
    a map over the tokens) passes on the lifted channels it carries. Recorded per channel
    id (``rec.lifted``: id(tensor) -> (ids, the op that lifted them)); a layer that reads
    lifted channels changes when they are cut (:func:`_reads_lifted`)."""
    if name in _MATMULS:
        _lift_product(rec, args, kwargs, out)
        return
    if name in _FUNCTIONAL_LAYERS and args and isinstance(args[0], torch.Tensor) and id(args[0]) in rec.lifted:
        groups = _arg(args, kwargs, 6, "groups", 1) if name.startswith("conv") else 1
        if not (groups > 1 and groups == args[0].shape[1]):  # (depthwise: cut with its channels)
            rec.add_inexact(rec.lifted[id(args[0])][0], f"{name} in {rec.where()} reads these channels where they "
                                                        f"are not zero even if their filters are "
                                                        f"({rec.lifted[id(args[0])][1]}): cutting them changes it")
    outs = [o for o in _tensors(out) if rec.layout(o) is not None]
    if not outs:
        return
    ins = [t for t in _tensors(list(args)) + _tensors(list(kwargs.values())) if rec.layout(t) is not None]
    crossed = [rec.lifted_cross[id(t)] for t in ins if id(t) in rec.lifted_cross]
    have = [rec.lifted[id(t)] for t in ins if id(t) in rec.lifted] + crossed
    why = have[0][1] if have else None
    if name in _LIFTING:
        dim = _arg(args, kwargs, 1, "dim") if name in ("softmax", "log_softmax", "softmin") else None
        lifts = dim is None or not ins or _norm_dim(dim, ins[0].dim()) != rec.layout(ins[0]).dim
        # (over the channels: reported inexact by its rule; the lifted pass on)
    else:
        lifts = name in _COMPARISONS or name in _CLAMPS and _clamps_zero_away(args, kwargs) or name in _SUMS and (
            any(type(v) in (int, float) and v != 0 for v in list(args) + [kwargs.get("value")])
            or any(rec.layout(t) is None and not _per_channel_param(rec, t, outs[0]) and t.dtype != torch.bool
                   for t in _tensors(list(args))))
    if lifts:  # every channel it carries
        lifted = np.unique(np.concatenate([_carried(rec.layout(t)) for t in ins])) if ins else None
        why = (why or f"{name} of a number or a tensor without these channels in {rec.where()}") if name in _SUMS \
            else f"{name} in {rec.where()}"
    elif not have:
        lifted = None
    elif name in _PRODUCTS:  # zero where any factor carrying the channel has it zero
        # (a per-channel parameter factor is cut, and planted as zeros, with the channels)
        weighted = any(_per_channel_param(rec, t, outs[0]) for t in _tensors(list(args)) if rec.layout(t) is None)
        lifted = None if weighted or not all(id(t) in rec.lifted for t in ins) \
            else _by_position(rec, ins, outs[0], np.logical_and)
    elif name in _QUOTIENTS:
        lifted = rec.lifted.get(id(args[0]), (None,))[0] if args and isinstance(args[0], torch.Tensor) else None
    elif name in _BINARY_OPS:  # element-wise: a position lifted in any operand
        lifted = _by_position(rec, [t for t in ins if id(t) in rec.lifted], outs[0], np.logical_or, have)
    else:
        lifted = np.unique(np.concatenate([h[0] for h in have]))
    for o in outs:
        mine = None if lifted is None else np.intersect1d(lifted, _carried(rec.layout(o)))
        _set_lifted(rec, o, mine, why, mine if crossed and rec.layout(o).cross is not None else None)


def _by_position(rec: Recorder, ts: list, o, combine, have: list | None = None) -> np.ndarray:
    """The lifted channels of an element-wise op's output `o` from its operands `ts` (each
    lifted): position by position, `combine` (``np.logical_and``: a product, zero where
    any factor is; ``np.logical_or``: a sum) of theirs; where the positions do not align,
    by channel id (the intersection, or the union of `have`)."""
    base = np.asarray(rec.layout(o).ids)
    masks = [np.isin(rec.layout(t).ids, rec.lifted[id(t)][0]) for t in ts]
    if masks and all(len(mk) == len(base) for mk in masks):
        return base[combine.reduce(masks)]
    if combine is np.logical_or:
        return np.unique(np.concatenate([h[0] for h in have]))
    lifted = rec.lifted[id(ts[0])][0]
    for t in ts[1:]:
        lifted = np.intersect1d(lifted, rec.lifted[id(t)][0])
    return lifted


def _set_lifted(rec: Recorder, t, ids, why, cross_ids=None) -> None:
    """Record the lifted channels of `t` along its layout's dim (`ids`) and along its
    columns where it is a channel-by-channel map (`cross_ids`); None or empty: none."""
    for table, got in ((rec.lifted, ids), (rec.lifted_cross, cross_ids)):
        if got is not None and len(got):
            table[id(t)] = (np.asarray(got, np.int64), why)
        else:
            table.pop(id(t), None)


def _carried(lay: Layout) -> np.ndarray:
    """The channel ids a layout carries (both dims of a channel-by-channel map)."""
    return np.asarray(lay.ids, np.int64)


_MATMULS = frozenset(("matmul", "__matmul__", "bmm", "mm"))


def _lifted_on(rec: Recorder, t, d: int):
    """(ids of tensor dim `d`, the lifted ones among them, why) where `d` holds channels."""
    lay = rec.layout(t)
    if lay is None or d not in (lay.dim, lay.cross):
        return None
    got = (rec.lifted if d == lay.dim else rec.lifted_cross).get(id(t))
    return np.asarray(lay.ids, np.int64), (None if got is None else got[0]), (None if got is None else got[1])


def _lift_product(rec: Recorder, args, kwargs, out) -> None:
    """a @ b: a channel contracted where both sides are lifted (or one side against a
    weight) changes every output when it is cut (reported inexact); where one side is zero
    there, the product is too. The output's rows keep a's lifted channels, its columns
    b's (a map of k's channels by v's over the tokens, softmax(k)^T v: lifted along k
    only, so q times it, contracting k's channels with q's zeros, is not)."""
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    if not isinstance(out, torch.Tensor) or not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) \
            or a.dim() < 2 or b.dim() < 2:
        return
    ca, cb = _lifted_on(rec, a, a.dim() - 1), _lifted_on(rec, b, b.dim() - 2)
    for side, other, t in ((ca, cb, b), (cb, ca, a)):
        if side is None or side[1] is None:
            continue
        if other is None:  # against a weight, or a dim without channels: it reads them
            if rec.param_dim(t, t.dim() - 2 if t is b else t.dim() - 1) is not None:
                rec.add_inexact(side[1], f"a product in {rec.where()} reads these channels where they are not "
                                         f"zero even if their filters are ({side[2]}): cutting them changes it")
        elif other[1] is not None and len(side[0]) == len(other[0]):
            both = side[0][np.isin(side[0], side[1]) & np.isin(other[0], other[1])]
            if len(both):
                rec.add_inexact(both, f"a product in {rec.where()} contracts these channels where both sides are "
                                      f"not zero even if their filters are ({side[2]}): cutting them changes it")
    lay = rec.layout(out)
    if lay is None:
        return
    rows, cols = _lifted_on(rec, a, a.dim() - 2), _lifted_on(rec, b, b.dim() - 1)

    def along(d: int):
        src = rows if d == out.dim() - 2 else cols if d == out.dim() - 1 else None
        if src is None:  # a batch dim (heads): whatever either side lifted there
            got = [g for g in (rec.lifted.get(id(a)), rec.lifted.get(id(b))) if g is not None]
            return (np.intersect1d(np.concatenate([g[0] for g in got]), lay.ids), got[0][1]) if got else (None, None)
        return (None, None) if src[1] is None else (np.intersect1d(src[1], lay.ids), src[2])

    ids, why = along(lay.dim)
    cross, why_c = along(lay.cross) if lay.cross is not None else (None, None)
    _set_lifted(rec, out, ids, why or why_c, cross)


def _reads_lifted(rec: Recorder, name: str, m: nn.Module, kind: str, x, out) -> None:
    """A layer given channels that are not zero where their filters are (:func:`_lift`): a
    conv, a Linear or a layer pyprune does not know reads them, so cutting them changes its
    output (reported inexact); a norm (and PReLU) passes them on unless its affine
    parameters, cut with the channels, zero them."""
    got = rec.lifted.get(id(x)) if isinstance(x, torch.Tensor) else None
    if got is None or rec.layout(x) is None:
        return
    ids, why = got
    if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels \
            or isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return  # a depthwise conv's filters, cut with the channels, zero them; a constant channel normalised is 0
    if kind == "norm" or isinstance(m, nn.PReLU):
        if (kind != "norm" or getattr(m, "weight", None) is None) and isinstance(out, torch.Tensor) \
                and rec.layout(out) is not None:
            rec.lifted[id(out)] = (np.intersect1d(ids, _carried(rec.layout(out))), why)
        return
    rec.add_inexact(ids, f"{name} reads these channels where they are not zero even if their filters are "
                         f"({why}): cutting them changes its output")


@contextlib.contextmanager
def fixed_rng(seed: int = 0):
    """torch's (CPU), Python's and numpy's random state seeded for the block and restored
    after it: the trace and the check of a cut make the same random choices (a layer drop
    decided by `random.random()`), and the caller's state is untouched."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # (CPU only: the CUDA state is not forked)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def record(model: nn.Module, example_inputs: tuple, example_kwargs: dict) -> tuple[Recorder, Any]:
    """Run `model(*example_inputs, **example_kwargs)` once under the recorder."""
    rec = Recorder(model)
    names = {m: n for n, m in model.named_modules()}
    rec.modules = {n: m for m, n in names.items()}
    for mname, m in model.named_modules():
        rec.computed.update(((mname, t), how) for t, how in computed_tensors(m).items())
        for pname, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if p is not None:
                owner = rec.param_owner.setdefault(id(p), (mname, pname))  # a tied tensor: its first holder
                if owner != (mname, pname):  # tied: one tensor held by several modules (or names)
                    rec.tied[(mname, pname)] = owner
    hooks = []

    def pre(m, inputs):
        rec.stack.append(names.get(m, type(m).__name__))
        if _layers.handler_for(m) is not None:
            rec.leaf_depth += 1
        elif not rec.leaf_depth:
            rec.module_inputs[rec.stack[-1]] = [lay for lay in map(rec.layout, inputs) if lay is not None]

    def post(m, inputs, output):
        name = rec.stack.pop() if rec.stack else names.get(m, "")
        h = _layers.handler_for(m)
        if h is None:
            return
        rec.leaf_depth -= 1
        if rec.leaf_depth:
            return
        x = inputs[0] if inputs else None
        out = output[0] if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) else output
        maps = [lay for lay in map(rec.layout, _tensors(list(inputs))) if lay is not None and lay.cross is not None]
        if maps:  # a layer's rule reads one channel dim: the map's channels are kept, its own outputs too
            rec.stack.append(name)
            rec.report_unknown(f"{type(m).__name__} on a channel-by-channel map", maps, _tensors(output))
            rec.stack.pop()
        elif isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
            first = len(rec.members)
            rec.inputs = inputs
            rec.in_hook = True
            try:
                h.trace(rec, name, m, x, out)
                _check_own_tensors(rec, name, m, rec.members[first:], [x, out])
            finally:
                rec.in_hook = False
        if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
            _reads_lifted(rec, name, m, h.kind, x, out)
            if rec.count_layers and h.kind != "other":
                with torch._C.DisableTorchFunction():  # pyprune's read, not the model's: not recorded as one
                    rec.layers.append(LayerRecord(name, h.kind, tuple(out.shape)))
            rec.leaf_modules[name] = h.kind
            if out is not output:  # the other outputs (attention weights, say) carry no channels
                for o in _tensors(list(output)[1:]):
                    rec.set_layout(o, None)

    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    # Tracing must not change the model: buffers (BN statistics, counters), the modules'
    # train/eval flags and the random state are restored.
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with fixed_rng():
            output = _forward(rec, model, example_inputs, example_kwargs)
            rec.untraced = untraced_layers(model, rec.leaf_modules)
            if rec.untraced:
                # Layers that only run in the other mode (inception's auxiliary head runs in
                # training only) still read channels that pruning changes: trace that mode
                # too, so their inputs are coupled. Its MACs are not counted.
                model.train(not model.training)
                rec.count_layers = False
                try:
                    _forward(rec, model, example_inputs, example_kwargs)
                except Exception:  # the other mode needs other inputs: those layers stay untraced
                    rec.stack.clear()
                    rec.leaf_depth = 0
                rec.untraced = untraced_layers(model, rec.leaf_modules)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    return rec, output


def _check_own_tensors(rec: Recorder, name: str, m: nn.Module, new: list, tensors: list) -> None:
    """A layer's handler slices the tensors it knows. Another tensor of the layer that has
    a dim as long as one of the channel counts it slices (a subclass's per-channel gain,
    say) would keep its old size in the pruned model, which then fails: report it, so a
    strict prune refuses the model before cutting and a lenient one keeps those channels."""
    if not new:
        return
    known = {r.param for r in new}
    counts = {len(r.ids) for r in new}
    own = _layers.handler_for(m).unsliced  # prefixes of the layer's own widths (LayerHandler)
    for pname, t in (*m._parameters.items(), *m._buffers.items()):
        if pname in known or t is None or t.numel() <= 1 or not any(d in counts for d in t.shape) \
                or (name, pname) in rec.kept_whole:
            continue
        if any(pname.startswith(p) for p in own):
            continue
        lays = [lay for lay in (rec.layout(t) for t in tensors) if lay is not None]
        rec.report_unknown(
            f"{type(m).__name__}.{pname} (shape {tuple(t.shape)}), a per-channel tensor the "
            f"{type(_layers.handler_for(m)).__name__} handler does not slice: register a handler for "
            f"{type(m).__name__} (pyprune.register_layer) that names it", lays, [])
        lays_ids = [lay.ids for lay in lays]
        for r in new:  # the layer's own channels (a conv's outputs) stay too
            if not any(r.ids is ids for ids in lays_ids):
                rec.freeze(r.ids, f"{name}.{pname} is not sliced by pyprune")


def _forward(rec: Recorder, model: nn.Module, example_inputs: tuple, example_kwargs: dict):
    """One forward pass under the recorder: the inputs' channels are new (frozen) units and
    so are the channels of every tensor the model returns."""
    for i, t in enumerate(_tensors(list(example_inputs)) + _tensors(list(example_kwargs.values()))):
        if t.dim() >= 2:
            ids = rec.new_ids(t.shape[1], f"input {i}")
            rec.freeze(ids, "network input")
            rec.set_layout(t, Layout(1, ids))
        elif t.dim() == 1 and t.is_floating_point():
            ids = rec.new_ids(t.shape[0], f"input {i}")
            rec.freeze(ids, "network input")
            rec.set_layout(t, Layout(0, ids))
    with torch.no_grad(), _Mode(rec):
        output = model(*example_inputs, **example_kwargs)
    outs = _tensors(output if isinstance(output, (list, tuple, dict)) else [output])
    if rec.count_layers:
        rec.output_shapes = [tuple(t.shape) for t in outs]
    for t in outs:
        lay = rec.layout(t)
        if lay is not None:
            rec.freeze(lay.ids, "network output")
    return output


def untraced_layers(model: nn.Module, traced) -> list[str]:
    """Layers with parameters that the recorder handles but that never ran."""
    return [
        name for name, mod in model.named_modules()
        if _layers.handler_for(mod) is not None and name not in traced and any(True for _ in mod.parameters(recurse=False))
    ]


# Last: pyprune.layers registers the layer handlers and re-exports register_op from here.
from .. import layers as _layers  # noqa: E402
