"""Does a pruned model still run, and compute what the model did? One forward pass on the
example inputs, cheap: inside the registered layers the convolutions, products and norms
are replaced by zeros of their output shape (as the trace does), after checking that their
operands fit; everything else (reshapes, splits, concatenations, attribute-driven sizes)
runs for real, and its calls are compared with the trace's (:func:`compare_calls`)."""
from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import layers as _layers
from ._trace import _tensors, fixed_rng


def _is_weight(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (``weight.reshape(1, out, -1)``)."""
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


def _carries(entry) -> bool:
    return any(lay is not None for _, lay in entry[2])


def _where(where: str) -> str:
    return where or "the model's own forward"


def compare_calls(log: list, calls: list, complete: bool) -> tuple[int, str] | None:
    """Where the pruned model's own code computes something else than the model's: `calls`
    (module, op, output shapes) as the pruned run made them, against `log`
    (:attr:`ChannelGraph.op_log`). The two are aligned as sequences of (module, op, number
    of outputs), so a call one run makes and the other does not (a cache one of them finds
    built) leaves the rest aligned. (index in `log`, what differs) for the first call that
    carries channels and either gave a tensor whose dims other than the channels' differ
    (a channel count the code holds as a number, a config value or a head size, that the
    cut did not change) or was not made by the pruned run (a branch on a channel count);
    None if there is none. `complete`: the pruned run finished (else the calls it did not
    reach are not missing)."""
    # Only calls of a kind (module, op, number of outputs) that carried channels somewhere
    # can differ in a way that matters; the rest are left out of the alignment, which keeps
    # it short where the code loops over data (SuperPoint's keypoints: thousands of calls,
    # as many as the values find, on no channels; difflib's matching is quadratic in them).
    keys = [(w, op, len(outs)) for w, op, outs in log]
    kinds = {k for k, entry in zip(keys, log) if _carries(entry)}
    li = [i for i, k in enumerate(keys) if k in kinds]
    gj = [j for j, (w, op, shapes) in enumerate(calls) if (w, op, len(shapes)) in kinds]
    a = [keys[i] for i in li]
    b = [(calls[j][0], calls[j][1], len(calls[j][2])) for j in gj]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip((li[x] for x in range(i1, i2)), (gj[y] for y in range(j1, j2))):
                where, op, outs = log[i]
                for (shape, lay), have in zip(outs, calls[j][2]):
                    chan = {lay[0], *lay[2:]} if lay is not None else ()  # (a channel map's columns too)
                    if lay is not None and (len(have) != len(shape) or any(
                            x != y for k, (x, y) in enumerate(zip(have, shape)) if k not in chan)):
                        return i, (f"{op} in {_where(where)} gave a tensor of shape {have}, where the model's has "
                                   f"{shape} (channels in dim {lay[0]}): a channel count in its code did not follow "
                                   "the cut")
        elif tag in ("delete", "replace") and (complete or j2 < len(b)):
            for i in (li[x] for x in range(i1, i2)):
                if _carries(log[i]):
                    return i, (f"the pruned model did not make the call {log[i][1]} in {_where(log[i][0])}, which the "
                               "model made on these channels: its code took another path (a branch on a channel "
                               "count)")
    return None


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
        name = getattr(func, "__name__", None) or str(func)
        where = state["stack"][-1] if state["stack"] else ""
        try:
            out = func(*args, **kwargs)
        except Exception as e:
            state["failed_call"] = (where, name, len(state["calls"]), e)  # the model's own call that raised
            raise
        outs = _tensors(out)
        if outs:  # the model's own code: logged as the trace logs it
            state["calls"].append((where, name, [tuple(t.shape) for t in outs]))
        return out


def check_runs(model: nn.Module, inputs: tuple, kwargs: dict | None, want_shapes: list,
               log: list | None = None) -> tuple[str, str, int | None] | None:
    """None when `model` runs on `inputs` and returns tensors of `want_shapes`, and its own
    code computes what `log` (:attr:`ChannelGraph.op_log` of the unpruned model) says it
    should (:func:`compare_calls`); else (the innermost module that was running when it
    failed, "" for the model's own code, what went wrong, and the index in `log` of the call
    that differs, or None)."""
    state: dict[str, Any] = {"depth": 0, "stack": [], "calls": []}
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
    failure = None
    try:
        with torch.no_grad(), fixed_rng(), _ShapeOnly(state):
            out = model(*inputs, **(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is the answer
        failure = (state["stack"][-1] if state["stack"] else ""), f"{type(e).__name__}: {e}", None
        state["raised"] = e
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    # a call that computed something else comes first: it is the cause of a later failure
    other = compare_calls(log, state["calls"], failure is None) if log else None
    if other is not None:
        i, message = other
        return log[i][0], message, i
    if failure is not None:
        raised = state.get("failed_call")
        if not failure[0] and log and raised is not None and raised[3] is state.get("raised"):
            # raised by a call of the top model's own code (its error, not one the code caught
            # before failing otherwise): keeping "every module of its type" would keep everything,
            # so the call is named (the one of its kind the trace made as often before it)
            # and the caller keeps the channels through it alone
            kind = raised[:2]
            k = sum(1 for w, op, _ in state["calls"] if (w, op) == kind)
            at = [i for i, (w, op, _) in enumerate(log) if (w, op) == kind]
            if k < len(at) and _carries(log[at[k]]):
                return failure[0], f"{kind[1]} in {_where(kind[0])} raised {failure[1]}", at[k]
        return failure
    got = [tuple(t.shape) for t in _tensors(out)]
    if want_shapes and got != [tuple(s) for s in want_shapes]:
        return "", f"the pruned model returns tensors of shapes {got}, the model {[tuple(s) for s in want_shapes]}", None
    return None
