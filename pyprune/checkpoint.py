"""Pruned checkpoints: the architecture's name and arguments, its channel spec (the shape
of every tensor) and the state_dict, plus metadata (method, ratio, accuracy, ...).

Loading rebuilds the architecture from the registry, resizes every tensor to the saved
spec (so the pruned widths come back) and then loads the weights strictly. The file holds
only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``:
no pickled classes. A corrupt, foreign or mismatched file raises :class:`CheckpointError`
and no half-loaded model is ever returned. Files are written atomically (temporary file,
then rename), so an interrupted save never destroys the previous checkpoint.
"""
from __future__ import annotations

import copy
import os
import pathlib

import torch
from torch import nn

from ._io import atomic_write, atomic_write_pair
from ._reparam import computed_tensors
from .layers import resize
from .surgery import REWRITTEN, replace_tensor

__all__ = ["save_model", "load_model", "model_from", "resize_to", "atomic_save", "read", "CheckpointError", "FORMAT"]

FORMAT = "pyprune-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable pyprune checkpoint; the message says why."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save(obj) to `path` atomically (the old file stays whole until the new one is)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_model(path, model: nn.Module, *, arch: str | None = None, arch_kwargs: dict | None = None,
               meta: dict | None = None, extra: dict | None = None, attributes: dict | None = None) -> pathlib.Path:
    """Save `model` (pruned or not) as spec + state_dict. `arch`/`arch_kwargs` name a
    registry model (``pyprune.models.get_model``) to rebuild it from; `attributes`
    ({(module, attr): value}, :attr:`pyprune.PruneResult.attributes`) are the channel counts
    pruning rewrote in modules (split sizes, slice bounds), set again on loading.

    A path ending in ``.safetensors`` writes the tensors in that format and the rest (spec,
    architecture, metadata) as JSON beside it (same name, ``.json``): nothing in either
    file is code."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    attributes = {**_size_attributes(model), **_rewritten(model), **(attributes or {})}
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "spec": {k: list(v.shape) for k, v in sd.items()},
        "state_dict": sd,
        "meta": dict(meta or {}),
        "attributes": {f"{mod}|{attr}": list(v) if isinstance(v, (list, tuple)) else v
                       for (mod, attr), v in (attributes or {}).items()},
    }
    if extra:
        obj.update(extra)
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        _save_safetensors(obj, path)
    else:
        atomic_save(obj, path)
    return path


def _rewritten(model: nn.Module) -> dict:
    """{(module, attr): value now} of the attributes pruning rewrote in `model` (split sizes,
    slice bounds: the pruned model lists them), so a checkpoint keeps them without
    ``attributes=``; every round of an iterative prune included."""
    mods = dict(model.named_modules())
    return {(m, a): getattr(mods[m], a) for m, a in model.__dict__.get(REWRITTEN, ())
            if m in mods and hasattr(mods[m], a)}


def _size_attributes(model: nn.Module) -> dict:
    """Counts no tensor's shape tells, saved with every checkpoint and set again on loading:
    a grouped conv's ``groups`` and ``in_channels`` (a depthwise conv with a multiplier that
    lost whole groups, or one whose groups each lost outputs, have the same shapes), and an
    InstanceNorm's ``num_features`` (it may hold no tensor, yet checks its input's count)."""
    out = {(name, attr): getattr(m, attr) for name, m in model.named_modules()
           if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for attr in ("groups", "in_channels")}
    out.update({(name, "num_features"): m.num_features for name, m in model.named_modules()
                if isinstance(m, nn.modules.instancenorm._InstanceNorm)})
    return out


def _save_safetensors(obj: dict, path: pathlib.Path) -> None:
    import json

    try:
        from safetensors.torch import save_file
    except ImportError:
        raise CheckpointError("writing .safetensors needs the safetensors package: pip install safetensors") from None
    if any(k not in ("format", "version", "arch", "arch_kwargs", "spec", "state_dict", "meta", "attributes")
           for k in obj):
        raise CheckpointError(f"{path}: training state cannot be written as .safetensors; use a .pt file")
    # safetensors refuses tensors that share memory: a tied tensor (one storage under two
    # names) is written once per name, and loading ties them again where the architecture does
    sd, seen = {}, set()
    for k, v in obj["state_dict"].items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        sd[k] = v.clone(memory_format=torch.contiguous_format) if ptr in seen else v.contiguous()
        seen.add(ptr)
    header = {k: v for k, v in obj.items() if k != "state_dict"}
    atomic_write_pair((path, path.with_suffix(".json")),
                      (lambda tmp: save_file(sd, str(tmp)),
                       lambda tmp: tmp.write_text(json.dumps(header, indent=1, default=str))))


def _read_safetensors(path: pathlib.Path, what: str) -> dict:
    """The tensors of a .safetensors file, as a dict."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return dict(load_file(str(path)))
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable .safetensors {what} (corrupt or truncated)") from e


def _load(path, what: str):
    """torch.load(weights_only=True) of a file the user named, with errors that name it
    and say what was expected (never torch's advice to load arbitrary pickles)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable {what} (corrupt or truncated, or not a file torch.save "
                              "wrote; pyprune reads tensors and plain values only, never pickled code)") from e


def is_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read(path) -> dict:
    """Read and check a pyprune checkpoint file (weights_only; or .safetensors + its .json)."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        import json

        side = path.with_suffix(".json")
        if not side.is_file():
            raise CheckpointError(f"{path}: its spec {side} is missing (pyprune writes both files)")
        try:
            obj = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{side} is not readable JSON") from e
        if isinstance(obj, dict):
            obj["state_dict"] = _read_safetensors(path, "checkpoint")
        return _check(obj, path)
    return _check(_load(path, "checkpoint"), path)


def read_state_dict(path) -> dict:
    """The state_dict in a weights file: a plain state_dict, a dict holding one under
    ``state_dict``, or a pyprune checkpoint (checked as :func:`read` checks it)."""
    if pathlib.Path(path).suffix == ".safetensors":
        if pathlib.Path(path).with_suffix(".json").is_file():
            return read(path)["state_dict"]
        return _read_safetensors(pathlib.Path(path), "weights file")
    obj = _load(path, "weights file")
    if is_checkpoint(obj):
        return _check(obj, pathlib.Path(path))["state_dict"]
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return sd


def _check(obj, path: pathlib.Path) -> dict:
    if not is_checkpoint(obj):
        raise CheckpointError(f"{path} is not a pyprune checkpoint (no '{FORMAT}' header)")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}, this pyprune reads version {VERSION}")
    for key in ("spec", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path} lacks its {key}")
    for k, shape in obj["spec"].items():
        t = obj["state_dict"].get(k)
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape):
            raise CheckpointError(f"{path}: tensor {k} does not match its spec {shape}")
    return obj


def resize_to(model: nn.Module, spec: dict) -> nn.Module:
    """Give every parameter/buffer of `model` the shape in `spec` (uninitialised values)
    and make the modules' size attributes agree. Names missing on either side raise."""
    own = model.state_dict(keep_vars=True)  # (the tensors themselves: a tied one is one object)
    missing = [k for k in own if k not in spec]
    unexpected = [k for k in spec if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not match the architecture: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    touched, done = set(), {}
    for name, shape in spec.items():
        old = own[name]
        if list(old.shape) == list(shape):
            continue
        mod_name, _, pname = name.rpartition(".")
        resized = _replace_once(done, model.get_submodule(mod_name) if mod_name else model, pname, old,
                                lambda: torch.empty(shape, dtype=old.dtype))
        if list(resized.shape) != list(shape):
            raise CheckpointError(f"{name} is the architecture's tied tensor of another name, yet the checkpoint "
                                  f"gives them different shapes ({list(shape)} against {list(resized.shape)})")
        touched.add(mod_name)
    _recompute(model)  # (a masked weight takes its new shape before the sizes are read from it)
    for mod_name in touched:
        resize(model.get_submodule(mod_name) if mod_name else model)
    return model


def load_model(path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a saved model at its saved (pruned) widths. Without `model`, the
    architecture comes from the registry by the saved name; with `model` (an instance of
    the original, unpruned architecture) a copy of it is resized. Returns (model, meta)."""
    return model_from(read(path), path, model)


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model`. A tensor a forward pre-hook computed (``torch.nn.utils.prune``'s
    ``weight = weight_orig * weight_mask``) is a graph's result, which deepcopy refuses: it is
    copied detached (the hook computes it again before each call)."""
    memo = {}
    for m in model.modules():
        for name in computed_tensors(m):
            t = m.__dict__.get(name)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _take_dtypes(model: nn.Module, state_dict: dict) -> None:
    """Give each floating tensor of `model` the dtype it was saved in (a float16 model
    comes back float16; load_state_dict alone would copy it into float32)."""
    own = model.state_dict(keep_vars=True)
    done = {}
    for name, v in state_dict.items():
        t = own.get(name)
        if (not isinstance(t, torch.Tensor) or not isinstance(v, torch.Tensor)
                or not (t.is_floating_point() and v.is_floating_point()) or t.dtype == v.dtype):
            continue
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if pname in mod._parameters or pname in mod._buffers:
            _replace_once(done, mod, pname, t, lambda: torch.empty(t.shape, dtype=v.dtype, device=t.device))


def _replace_once(done: dict, mod: nn.Module, pname: str, old: torch.Tensor, make) -> torch.Tensor:
    """Put ``make()`` in place of ``mod.pname`` (now `old`), or what took `old`'s place
    before: a tensor under several names (tied weights, a module met twice) stays one.
    `done` maps id(old) -> (old, its replacement), the old one held so its id stays its own."""
    if id(old) in done:
        setattr(mod, pname, done[id(old)][1])
    else:
        replace_tensor(mod, pname, make())
        done[id(old)] = (old, getattr(mod, pname))
    return done[id(old)][1]


def _recompute(model: nn.Module) -> None:
    """Run ``torch.nn.utils.prune``'s hooks once, so the tensors they compute have the
    loaded shapes and values before the first call (as ``out_channels`` and the rest do)."""
    from torch.nn.utils.prune import BasePruningMethod

    with torch.no_grad():
        for m in model.modules():
            for hook in list(m._forward_pre_hooks.values()):
                if isinstance(hook, BasePruningMethod):
                    hook(m, None)


def model_from(obj: dict, path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """:func:`load_model` for a checkpoint already :func:`read` (`path` only names it in errors)."""
    if model is None:
        if not obj.get("arch"):
            raise CheckpointError(f"{path} names no registry architecture: pass the original model, "
                                  "load_model(path, model=MyNet())")
        from .models import get_model

        try:
            model = get_model(obj["arch"], **obj["arch_kwargs"])
        except Exception as e:
            raise CheckpointError(f"{path}: cannot build architecture {obj['arch']!r}: {e}") from e
    else:
        model = _copy(model)
    resize_to(model, obj["spec"])
    _take_dtypes(model, obj["state_dict"])
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture: {e}") from e
    _recompute(model)  # (and the loaded values)
    mods = dict(model.named_modules())
    listed = set()
    for key, value in (obj.get("attributes") or {}).items():
        mod, _, attr = key.rpartition("|")
        if mod not in mods or not hasattr(mods[mod], attr):
            raise CheckpointError(f"{path}: attribute {key!r} does not exist in the architecture")
        old = getattr(mods[mod], attr)
        setattr(mods[mod], attr, type(old)(value) if isinstance(old, (list, tuple)) else value)
        listed.add((mod, attr))
    if listed:  # listed again, so the model saves them as the pruned one did
        model.__dict__[REWRITTEN] = sorted(listed)
    model.eval()
    return model, dict(obj.get("meta", {}))
