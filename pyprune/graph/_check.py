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


class OtherShape(BaseException):  # (not an Exception: the model's own `except Exception` must not hide it)
    """The pruned model's own code computes something else than the model's where the
    channels go: a call gave a tensor whose dims other than the channels' differ from the
    unpruned run (a channel count the code holds as a number, a config value or a head
    size, that the cut did not change), or the code skipped a call that carried channels
    (a branch on a channel count)."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


def _carries(entry) -> bool:
    return any(lay is not None for _, lay in entry[2])


def _where(where: str) -> str:
    return where or "the model's own forward"


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
            i = self._same_call(where, name, len(outs))
            if i is None:  # a call the unpruned run did not make: nothing to compare with
                return out
            state["calls"] = i + 1
            for t, (shape, lay) in zip(outs, log[i][2]):
                if lay is None:
                    continue
                got = tuple(t.shape)
                if len(got) != len(shape) or any(a != b for k, (a, b) in enumerate(zip(got, shape)) if k != lay[0]):
                    raise OtherShape(i, f"{name} in {_where(where)} gave a tensor of shape {got}, where the model's "
                                        f"has {shape} (channels in dim {lay[0]}): a channel count in its code did not "
                                        "follow the cut")
        return out

    def _same_call(self, where: str, name: str, n_out: int) -> int | None:
        """This call's index in the unpruned run's log: the next call of this op in this
        module. Calls passed over must not carry channels (a tensor cached on the model's
        first run, as LeViT's attention biases, is made from parameters only): one that
        does was skipped by the pruned model's code, which then took another path. (The
        pruned copy is made after the trace, so it finds whatever the trace cached: it
        makes fewer calls, not more.)"""
        log, start = self.state["log"], self.state["calls"]
        for j in range(start, len(log)):
            if log[j][:2] == (where, name) and len(log[j][2]) == n_out:
                return j
            if _carries(log[j]):
                raise OtherShape(j, f"the pruned model did not make the call {log[j][1]} in {_where(log[j][0])}, which "
                                    "the model made on these channels: its code took another path (a branch on a "
                                    "channel count)")
        return None


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
        rest = [j for j in range(state["calls"], len(log or [])) if _carries(log[j])]
        if rest:  # the unpruned run made more calls on channels than the pruned one
            raise OtherShape(rest[0], f"the pruned model did not make the call {log[rest[0]][1]} in "
                                      f"{_where(log[rest[0]][0])}, which the model made on these channels: its code "
                                      "took another path (a branch on a channel count)")
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
