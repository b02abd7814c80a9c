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


class _ShapeOnly(TorchFunctionMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.state["depth"]:
            shape_of = _layers.SHAPE_OPS.get(getattr(func, "__name__", ""))
            if shape_of is not None and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2 \
                    and not _is_weight(args[0]):  # (a weight's own standardisation runs: it is small)
                try:
                    return args[0].new_zeros(shape_of(args, kwargs))
                except Exception:
                    pass  # operands that do not fit: the real op raises its own error
        return func(*args, **kwargs)


def check_runs(model: nn.Module, inputs: tuple, kwargs: dict | None, want_shapes: list) -> tuple[str, str] | None:
    """None when `model` runs on `inputs` and returns tensors of `want_shapes`; else
    (the innermost module that was running when it failed, "" for the model's own code, and
    what went wrong)."""
    state: dict[str, Any] = {"depth": 0, "stack": []}
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
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is the answer
        where = state["stack"][-1] if state["stack"] else ""
        return where, f"{type(e).__name__}: {e}"
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    got = [tuple(t.shape) for t in _tensors(out)]
    if want_shapes and got != [tuple(s) for s in want_shapes]:
        return "", f"the pruned model returns tensors of shapes {got}, the model {[tuple(s) for s in want_shapes]}"
    return None
