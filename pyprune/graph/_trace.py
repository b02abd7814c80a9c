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

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._layout import Layout


@dataclass
class MemberRecord:
    """Dim `dim` of parameter/buffer `param` of module `module` holds channels `ids`."""

    module: str
    param: str
    dim: int
    ids: np.ndarray
    role: str  # out | bias | in | bn | norm | param


@dataclass
class LayerRecord:
    """A leaf layer as it ran: for MAC counting and the summary."""

    module: str
    kind: str
    out_shape: tuple


@dataclass
class Recorder:
    model: nn.Module
    n_ids: int = 0
    space_origin: list = field(default_factory=list)  # (base, size, origin)
    layouts: dict = field(default_factory=dict)  # id(tensor) -> Layout
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
    count_layers: bool = True  # False in the extra pass: MACs are those of the model's own mode
    untraced: list = field(default_factory=list)  # layers with parameters that never ran

    # -- bookkeeping ---------------------------------------------------------------
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

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is not b and len(a):
            self.unions.append((a, b))

    def where(self) -> str:
        name = self.stack[-1] if self.stack else ""
        return name if name else f"{type(self.model).__name__} (the model's own forward)"

    def add_member(self, module: str, param: str, dim: int, ids: np.ndarray, role: str) -> None:
        self.members.append(MemberRecord(module, param, dim, ids, role))

    def report_unknown(self, op: str, lays: list[Layout], outs: list) -> None:
        ids = np.concatenate([lay.ids for lay in lays]) if lays else np.zeros(0, np.int64)
        self.unknown.append((self.where(), op, ids))
        self.freeze(ids, f"unsupported op {op} in {self.where()}")
        for o in outs:
            self.set_layout(o, None)


_HANDLERS: dict[str, Callable] = {}


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
    "double bfloat16 to type neg __neg__ abs __abs__ exp log sqrt rsqrt square clamp clamp_ clip clip_ "
    "sign round floor ceil nan_to_num requires_grad_ cpu cuda __pos__ erf logsigmoid tanhshrink "
    "softsign hardshrink softshrink threshold threshold_ rrelu glu_ zero_ fill_ exp_ mul_scalar "
    "__rpow__ reciprocal relu6_ celu_ selu_ silu_ mish_ gelu_"
).split()


@register_op(*_UNARY)
def _unary(rec: Recorder, name, args, kwargs, out):
    src = args[0] if args else None
    lay = rec.layout(src)
    outs = _tensors(out)
    if lay is None or len(outs) != 1 or outs[0].shape != src.shape:
        if lay is not None:
            rec.report_unknown(name, [lay], outs)
        return
    rec.set_layout(outs[0], lay)


@register_op("pow", "__pow__", "pow_")
def _pow(rec: Recorder, name, args, kwargs, out):
    if len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].numel() > 1:
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
    if lay.dim != 1 or not outs or outs[0].dim() != src.dim() or outs[0].shape[:2] != src.shape[:2]:
        rec.report_unknown(name, [lay], outs)
        return
    rec.set_layout(outs[0], lay)  # indices of *_with_indices carry no channel meaning


@register_op("pad")
def _pad(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    pad = args[1] if len(args) > 1 else kwargs.get("pad")
    touched = {src.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
    if lay.dim in touched:
        rec.freeze(lay.ids, f"channel padding in {rec.where()}")
        return
    rec.set_layout(out, lay)


# -- element-wise ops between several tensors (broadcasting) -------------------------------
_BINARY = (
    "add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__ rsub mul mul_ __mul__ __imul__ "
    "__rmul__ div div_ __truediv__ __itruediv__ __rtruediv__ true_divide maximum minimum where addcmul "
    "addcdiv lerp hardtanh_backward fmax fmin"
).split()


@register_op(*_BINARY)
def _broadcast(rec: Recorder, name, args, kwargs, out):
    operands = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    outs = _tensors(out)
    if len(outs) != 1:
        return
    o = outs[0]
    od_lays: dict[int, list[Layout]] = {}
    for t in operands:
        lay = rec.layout(t)
        if lay is not None:
            od = lay.dim + o.dim() - t.dim()
            if t.shape[lay.dim] != o.shape[od]:  # broadcast along the channel dim: odd
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
        owner = rec.param_owner.get(id(t))
        if owner is not None and t.shape[pd] == size:
            rec.add_member(owner[0], owner[1], pd, base, "param")
        else:
            rec.freeze(base, f"a tensor of {size} values per channel that is not a parameter ({name} in {rec.where()})")
    rec.set_layout(o, Layout(od, base))


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
    if len({lay.dim for lay in present}) == 1 and all(lay is not None for lay in lays):
        for lay in present[1:]:
            rec.unite(present[0].ids, lay.ids)
        rec.set_layout(out, present[0])
        return
    rec.report_unknown(name, present, [out])


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
    # The split points are fixed in the model's code: these channels keep their count.
    rec.freeze(lay.ids, f"{name} along the channel dim in {rec.where()}")
    offset = 0
    for o in outs:
        n = o.shape[dim] if name != "unbind" else 1
        if name != "unbind":
            rec.set_layout(o, Layout(dim, lay.ids[offset : offset + n]))
        offset += n


# -- views, permutations, reductions, indexing -------------------------------------------
def _view_layout(in_shape, lay: Layout, out_shape) -> Layout | None:
    d, c = lay.dim, in_shape[lay.dim]
    pre = math.prod(in_shape[:d])
    for od in range(len(out_shape)):
        if math.prod(out_shape[:od]) != pre:
            continue
        size = out_shape[od]
        if size == c:
            return Layout(od, lay.ids)
        # channels merged with the dims that follow (flatten before a Linear)
        rep = 1
        for k in range(d + 1, len(in_shape)):
            rep *= in_shape[k]
            if size == c * rep:
                return Layout(od, np.repeat(lay.ids, rep))
    return None


@register_op("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "squeeze_", "unsqueeze_")
def _view(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None or not isinstance(out, torch.Tensor):
        return
    new = _view_layout(tuple(src.shape), lay, tuple(out.shape))
    if new is None:
        rec.freeze(lay.ids, f"{name} {tuple(src.shape)} -> {tuple(out.shape)} splits the channel dim in {rec.where()}")
        rec.set_layout(out, None)
        return
    rec.set_layout(out, new)


@register_op("expand", "expand_as", "broadcast_to")
def _expand(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    od = lay.dim + out.dim() - src.dim()
    if out.shape[od] != src.shape[lay.dim]:
        rec.report_unknown(name, [lay], [out])
        return
    rec.set_layout(out, Layout(od, lay.ids))


@register_op("permute", "transpose", "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "numpy_T")
def _permute(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    nd = src.dim()
    if name == "permute":
        perm = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        perm = [_norm_dim(p, nd) for p in (perm if perm else kwargs["dims"])]
        new = perm.index(lay.dim)
    elif name in ("movedim", "moveaxis"):
        s, dst = _norm_dim(args[1], nd), _norm_dim(args[2], nd)
        order = [i for i in range(nd) if i != s]
        order.insert(dst, s)
        new = order.index(lay.dim)
    else:
        a, b = (0, 1) if name == "t" else (_norm_dim(args[1], nd), _norm_dim(args[2], nd))
        new = b if lay.dim == a else a if lay.dim == b else lay.dim
    rec.set_layout(out, Layout(new, lay.ids))


_REDUCE = "mean sum amax amin max min std var logsumexp nansum nanmean prod norm median".split()


@register_op(*_REDUCE)
def _reduce(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    outs = _tensors(out)
    dims = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    if name in ("max", "min") and isinstance(dims, torch.Tensor):
        return _broadcast(rec, name, args, kwargs, out)
    if dims is None:
        rec.report_unknown(name, [lay], outs)
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_norm_dim(d, src.dim()) for d in dims}
    if lay.dim in dims:
        rec.report_unknown(f"{name} over the channel dim", [lay], outs)
        return
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    new = lay.dim if keep else lay.dim - sum(1 for d in dims if d < lay.dim)
    if outs:
        rec.set_layout(outs[0], Layout(new, lay.ids))


@register_op("softmax", "log_softmax", "softmin", "cumsum", "cumprod", "normalize")
def _along_dim(rec: Recorder, name, args, kwargs, out):
    src = args[0]
    lay = rec.layout(src)
    if lay is None:
        return
    dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", 1 if name == "normalize" else None)
    if dim is None or _norm_dim(dim, src.dim()) == lay.dim:
        rec.report_unknown(f"{name} over the channel dim", [lay], [out])
        return
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
            full = isinstance(i, slice) and i.step in (None, 1) and (i.start in (None, 0)) and (i.stop is None or i.stop >= src.shape[in_dim])
            if full:
                rec.set_layout(out, Layout(out_dim, lay.ids))
            else:
                rec.freeze(lay.ids, f"channels picked by index in {rec.where()}")
            return
        in_dim += 1
        out_dim += 0 if isinstance(i, int) else 1
    rec.set_layout(out, Layout(out_dim + lay.dim - in_dim, lay.ids))


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
            shape_of = _layers.SHAPE_OPS.get(getattr(func, "__name__", ""))
            if shape_of is not None and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
                try:
                    return args[0].new_zeros(shape_of(args, kwargs))
                except Exception:
                    pass
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", None) or str(func)
        if name == "__get__":
            return out
        lays = [rec.layout(t) for t in _tensors(list(args)) + _tensors(list(kwargs.values()))]
        lays = [lay for lay in lays if lay is not None]
        if not lays:
            return out
        handler = _HANDLERS.get(name)
        outs = _tensors(out)
        if handler is None:
            if outs:  # an op that makes tensors from tracked channels and that we do not know
                rec.report_unknown(name, lays, outs)
            return out
        handler(rec, name, args, kwargs, out)
        return out


def record(model: nn.Module, example_inputs: tuple, example_kwargs: dict) -> tuple[Recorder, Any]:
    """Run `model(*example_inputs, **example_kwargs)` once under the recorder."""
    rec = Recorder(model)
    names = {m: n for n, m in model.named_modules()}
    for mname, m in model.named_modules():
        for pname, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if p is not None:
                rec.param_owner[id(p)] = (mname, pname)
    hooks = []

    def pre(m, inputs):
        rec.stack.append(names.get(m, type(m).__name__))
        if _layers.handler_for(m) is not None:
            rec.leaf_depth += 1

    def post(m, inputs, output):
        name = rec.stack.pop() if rec.stack else names.get(m, "")
        h = _layers.handler_for(m)
        if h is None:
            return
        rec.leaf_depth -= 1
        if rec.leaf_depth:
            return
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor):
            first = len(rec.members)
            h.trace(rec, name, m, x, output)
            _check_own_tensors(rec, name, m, rec.members[first:], [x, output])
            if rec.count_layers and h.kind != "other":
                rec.layers.append(LayerRecord(name, h.kind, tuple(output.shape)))
            rec.leaf_modules[name] = h.kind

    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    # Tracing must not change the model: buffers (BN statistics, counters), the modules'
    # train/eval flags and the random state are restored.
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[]):
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
    for pname, t in (*m._parameters.items(), *m._buffers.items()):
        if pname in known or t is None or t.numel() <= 1 or not any(d in counts for d in t.shape):
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
    for t in _tensors(output if isinstance(output, (list, tuple, dict)) else [output]):
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
