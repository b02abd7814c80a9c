"""Tensors a module computes from others before each call, and how a cut treats them.

A layer's ``weight`` need not be a parameter: ``torch.nn.utils.parametrize`` recomputes it
from ``parametrizations.weight.original*`` on every access, and forward pre-hooks rebuild it
from ``weight_orig * weight_mask`` (``torch.nn.utils.prune``) or from ``weight_g`` and
``weight_v`` (the old ``torch.nn.utils.weight_norm``) before every call. Slicing the computed
tensor alone is undone at the next call (or breaks it), so the channel graph and the
refit of weights after a cut ask :func:`computed_tensors` first:

- ``"weight_norm"``: ``parametrizations.weight_norm``. A cut assigns the sliced weight
  through the parametrization (``right_inverse`` derives magnitude and direction from it),
  so the pruned layer computes exactly the kept part of the weight.
- ``"mask"``: ``torch.nn.utils.prune``'s hook. The source and the mask are sliced as the
  weight is, so the hook rebuilds the kept part of the masked weight.
- ``"other"``: any other parametrization or weight hook (spectral norm, orthogonal, a
  user's own): a cut would change what it computes, so those channels are kept and the
  reason says how to remove it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Computed:
    """How a module computes one of its tensors before each call."""

    kind: str  # "weight_norm", "mask" or "other" (see the module's docstring)
    what: str  # what computes it, for messages
    fix: str = ""  # how to remove it, for messages ("other")
    sources: tuple = ()  # "mask": the module's tensors sliced as the computed one is


def computed_tensors(m: nn.Module) -> dict[str, Computed]:
    """{tensor name: how it is computed} for the tensors of `m` that a parametrization or
    a forward pre-hook computes before each call (empty for a plain module)."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.prune import BasePruningMethod

    out: dict[str, Computed] = {}
    if parametrize.is_parametrized(m):
        for name, plist in m.parametrizations.items():
            kinds = [type(p).__name__ for p in plist]
            if kinds == ["_WeightNorm"]:
                out[name] = Computed("weight_norm", "parametrizations.weight_norm")
            else:
                out[name] = Computed("other", f"the parametrization {' + '.join(kinds)}",
                                     f"torch.nn.utils.parametrize.remove_parametrizations(module, {name!r})")
    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod):  # a PruningContainer holds several: one hook
            name = hook._tensor_name
            out[name] = Computed("mask", "torch.nn.utils.prune", sources=(f"{name}_orig", f"{name}_mask"))
        elif type(hook).__module__ in ("torch.nn.utils.weight_norm", "torch.nn.utils.spectral_norm"):
            name = getattr(hook, "name", "weight")
            if type(hook).__name__ == "WeightNorm":
                out[name] = Computed("other", "torch.nn.utils.weight_norm",
                                     f"torch.nn.utils.remove_weight_norm(module, {name!r}), or "
                                     "torch.nn.utils.parametrizations.weight_norm, which pyprune cuts exactly")
            else:
                out[name] = Computed("other", f"torch.nn.utils.{type(hook).__name__}",
                                     f"torch.nn.utils.remove_spectral_norm(module, {name!r})")
    return out
