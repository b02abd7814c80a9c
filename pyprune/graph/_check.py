"""Does a pruned model still run? One forward pass on the example inputs, cheap: inside
the registered layers the convolutions, products and norms are replaced by zeros of their
output shape (as the trace does), after checking that their operands fit; everything else
(reshapes, splits, concatenations, attribute-driven sizes) runs for real."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import layers as _layers
from ._trace import _tensors


def _is_weight(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (``weight.reshape(1, out, -1)``)."""
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


_LOOKAHEAD = 8


class OtherShape(Exception):
    """A call of the model's own code gave a tensor whose other dims than the channels'
    differ from the model's: a channel count the code holds as a number (a config value, a
    head size) that the cut did not change, so the pruned model computes something else."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


class _ShapeOnly(TorchFunctionMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        state = self.state
        if state["depth"]:
            shape_of = _layers.SHAPE_OPS.get(getattr(func, "__name__", ""))
            if shape_of is not None and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2 \
                    and not _is_weight(args[0]):  # (a weight's own standardisation runs: it is small)
                try:
                    return args[0].new_zeros(shape_of(args, kwargs))
                except Exception:
                    pass  # operands that do not fit: the real op raises its own error
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        log = state["log"]
        outs = _tensors(out) if log is not None else []
        if outs:
            name = getattr(func, "__name__", None) or str(func)
            where = state["stack"][-1] if state["stack"] else ""
            # the same call of the unpruned run, a few calls on at most (a model that caches a
            # tensor on its first run, as LeViT's attention biases, skips the calls that made it)
            i = next((j for j in range(state["calls"], min(len(log), state["calls"] + _LOOKAHEAD))
                      if log[j][:2] == (where, name) and len(log[j][2]) == len(outs)), None)
            if i is None:  # a call the unpruned run did not make here: nothing to compare with
                return out
            state["calls"] = i + 1
            for t, (shape, lay) in zip(outs, log[i][2]):
                if lay is None:
                    continue
                got = tuple(t.shape)
                if len(got) != len(shape) or any(a != b for k, (a, b) in enumerate(zip(got, shape)) if k != lay[0]):
                    raise OtherShape(i, f"{name} in {where or 'the model' + chr(39) + 's own forward'} gave a tensor of "
                                        f"shape {got}, where the model's has {shape} (channels in dim {lay[0]}): a "
                                        "channel count written in its code as a number stayed unchanged")
        return out


def check_runs(model: nn.Module, inputs: tuple, kwargs: dict | None, want_shapes: list,
               log: list | None = None) -> tuple[str, str, int | None] | None:
    """None when `model` runs on `inputs` and returns tensors of `want_shapes`, and each
    call of its own code that `log` (:attr:`ChannelGraph.op_log` of the unpruned model) says
    carries channels gives a tensor of the same shape but for the channels' dim; else (the
    innermost module that was running when it failed, "" for the model's own code, what went
    wrong, and the index in `log` of the call with the other shape, or None)."""
    state: dict[str, Any] = {"depth": 0, "stack": [], "log": log, "calls": 0}
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def pre(m, _):
        state["stack"].append(names.get(m, ""))
        if _layers.handler_for(m) is not None:
            state["depth"] += 1

    def post(m, _, __):
        state["stack"].pop()
        if _layers.handler_for(m) is not None:
            state["depth"] -= 1

    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _ShapeOnly(state):
            out = model(*inputs, **(kwargs or {}))
    except OtherShape as e:
        return (state["stack"][-1] if state["stack"] else ""), str(e), e.index
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is the answer
        where = state["stack"][-1] if state["stack"] else ""
        return where, f"{type(e).__name__}: {e}", None
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    got = [tuple(t.shape) for t in _tensors(out)]
    if want_shapes and got != [tuple(s) for s in want_shapes]:
        return "", f"the pruned model returns tensors of shapes {got}, the model {[tuple(s) for s in want_shapes]}", None
    return None
