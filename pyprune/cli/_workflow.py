"""Steps the commands share: data and model set-up, pruning from flags, and one
prune -> fine-tune -> evaluate pass (used by ``run``, ``sweep`` and ``demo``)."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import torch

from .._io import check_outputs, write_json, write_text


def planned_ratio(plan) -> float | str:
    """The ratio a plan was made with, as a checkpoint or results file records it: ``"auto"``
    where the method chose its own counts (the plan holds NaN there)."""
    return "auto" if math.isnan(plan.ratio) else plan.ratio


def ratio_text(plan) -> str:
    r = planned_ratio(plan)
    if r != "auto":
        return f"ratio {r:.2f}"
    prunable = {g.id for g in plan.graph.groups if g.prunable > 0}  # (not the input's or the classes')
    widths = [w for gid, w in plan.widths().items() if gid in prunable]
    before, after = sum(b for b, _ in widths), sum(a for _, a in widths)
    return f"ratio auto ({1 - after / max(before, 1):.0%} of the prunable channels removed)"


def dataset(args, size=None, channels=None):
    from ..data import get_dataset

    return get_dataset(args.dataset, args.data_dir, size=size or getattr(args, "size", None),
                       augment=not getattr(args, "no_augment", False), seed=args.seed, channels=channels)


def dataset_for(meta: dict, args):
    """The data set of a checkpoint (its size and channels): ``--dataset``, else the one the
    checkpoint records; neither is refused rather than guessed."""
    if getattr(args, "dataset", None) is None:
        if meta.get("dataset") is None:
            raise ValueError("the checkpoint records no data set (it was pruned from a model given by name): give "
                             "the data it takes with --dataset (digits | cifar10 | cifar100 | imagefolder; --data-dir "
                             "for the last three)")
        args.dataset = meta["dataset"]
    same = args.dataset == meta.get("dataset")
    if not getattr(args, "seed_given", True) and meta.get("split_seed") is not None and same:
        args.seed = int(meta["split_seed"])  # the checkpoint's held-out split, not another that mixes them
    if getattr(args, "data_dir", None) is None and same and meta.get("data_dir") and os.path.isdir(meta["data_dir"]):
        args.data_dir = meta["data_dir"]
        print(f"note: data from {args.data_dir}, the folder the checkpoint records (--data-dir for another)",
              file=sys.stderr)
    spec = dataset(args, size=getattr(args, "size", None) or meta.get("size"), channels=meta.get("in_channels"))
    if meta.get("classes") is not None and spec.classes is not None and list(meta["classes"]) != spec.classes:
        raise ValueError(f"the checkpoint was trained on the classes {_names(meta['classes'])}, the data in "
                         f"{args.data_dir} has {_names(spec.classes)}: give the folder it was trained on (its "
                         "labels would be read as other classes)")
    return spec


def record_data(meta: dict, spec, args) -> dict:
    """Record in a checkpoint's `meta` the data it was trained on: the data set, its folder,
    the side, the seed of its held-out split and, where the data names them, the classes."""
    meta.update(dataset=spec.name, size=spec.size, split_seed=args.seed)
    if getattr(args, "data_dir", None):  # (where it lives here: a later command finds it without --data-dir)
        meta["data_dir"] = os.path.realpath(args.data_dir)
    if spec.classes is not None:
        meta["classes"] = spec.classes
    return meta


def _names(classes) -> str:
    return ", ".join(map(str, classes[:6])) + (f" ... ({len(classes)})" if len(classes) > 6 else "")


_DATA_SIDE = {"digits": 8, "cifar10": 32, "cifar100": 32}


def named_or_saved(args) -> tuple:
    """(model in eval mode, example input, its name for input hints or None) for ``--model``
    or the positional model of ``info``/``latency-table``: a pyprune checkpoint file (its own
    pruned model, at the input it records: a missing file is named by load_model), else a
    model name built at its own input size."""
    if str(args.model).endswith((".pt", ".safetensors")):
        from ..checkpoint import load_model

        model, meta = load_model(args.model)
        return model.eval(), example(fill_input(meta, model, args), args.size), None
    from ..models import get_model

    c, size = model_input(args.model, args.in_channels, args.size)
    model = get_model(args.model, num_classes=args.num_classes, in_channels=c).eval()
    return model, torch.randn(1, c, size, size), args.model


def fill_input(meta: dict, model: torch.nn.Module, args=None) -> dict:
    """The input shape of a checkpoint saved without one (``save_model`` without ``meta=``):
    channels from its first convolution, side from ``--size``, else the data set named
    (digits 8, CIFAR 32), else 224; said in a note. `meta` is completed in place."""
    missing = [k for k in ("in_channels", "size") if meta.get(k) is None]
    if not missing:
        return meta
    if "in_channels" in missing:
        first = next((m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
        meta["in_channels"] = first.in_channels if first is not None else 3
    if "size" in missing:
        data = getattr(args, "dataset", None) or meta.get("dataset")
        meta["size"] = getattr(args, "size", None) or _DATA_SIDE.get(data, 224)
    what = " or ".join("channels" if m == "in_channels" else m for m in missing)
    print(f"note: the checkpoint records no input {what}: taking {meta['in_channels']}x{meta['size']}x{meta['size']} "
          "(--size sets the side)", file=sys.stderr)
    return meta


def example(meta: dict, size: int | None = None) -> torch.Tensor:
    """A zero input of the checkpoint's channels, at `size` (--size) or the size it records."""
    side = int(size or meta.get("size", 224))
    return torch.zeros(1, int(meta.get("in_channels", 3)), side, side)


def brief(m: dict) -> dict:
    return {"top1": m["top1"], "macro_f1": m["macro_f1"]}


def registry():
    from ..models import MODELS

    return MODELS


def model_input(name: str, in_channels: int | None = None, size: int | None = None) -> tuple[int, int]:
    """(input channels, input side) for the model called `name`: the values given, else the
    model's own where pyprune's registry model is built for one input (digits_cnn: 1 x 8 x 8;
    the *_cifar networks: 3 x 32 x 32, the size they are built and reported for), else 3 x 224.
    (The registry records no input sizes, so they are named here.)"""
    own = (3, 224)
    if name in registry():
        if name == "digits_cnn":
            own = (1, 8)
        elif name.endswith("_cifar"):
            own = (3, 32)
    return (in_channels or own[0], size or own[1])


@contextlib.contextmanager
def input_hint(name: str | None, in_channels: int, size: int):
    """Where the model called `name` fails on the command's example input, say which flags
    set that input (a command-line user cannot pass example inputs). ``name=None``: no hint
    (a checkpoint records its own input)."""
    from ..graph import GraphError

    try:
        yield
    except GraphError as e:
        if name is None or e.__cause__ is None:  # the cause: the model itself failed on the input
            raise
        raise ValueError(f"{name} does not run on a {in_channels}x{size}x{size} input "
                         f"({type(e.__cause__).__name__}: {e.__cause__}): give the input side it takes with --size "
                         "(and its channels with --in-channels)") from e


def data_and_model(args):
    """The data set and a fresh (seeded) model sized for it: (spec, model, arch_kwargs, meta)."""
    from ..models import get_model

    spec = dataset(args, channels=getattr(args, "in_channels", None))
    arch_kwargs = {"num_classes": spec.num_classes, "in_channels": spec.in_channels}
    torch.manual_seed(args.seed)
    model = get_model(args.model, weights=args.weights, **arch_kwargs)
    meta = record_data({"in_channels": spec.in_channels, "num_classes": spec.num_classes}, spec, args)
    return spec, model, arch_kwargs, meta


def calibration(spec, n=4, seed=0):
    """The first `n` training batches of 64, drawn with `seed`: the training set's random
    augmentation (shifts, crops, flips) is the same on every run, so the same command gives
    the same recovered or quantised model."""
    from torch.utils.data import DataLoader

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [b for _, b in zip(range(n), DataLoader(spec.train, batch_size=64, shuffle=False))]


_TARGETS = ("target_macs", "target_params", "max_macs", "max_params", "target_latency_ms", "target_speedup")


def prune_options(args, **override) -> dict:
    """prune() keywords from the command's flags (a budget flag replaces --ratio)."""
    get = lambda k, d=None: override.get(k, getattr(args, k, d))  # noqa: E731
    kw = dict(method=get("method"), schedule=get("schedule", "uniform"), taper=get("taper", 1.0),
              round_to=get("round_to"), seed=get("seed", 0))
    budgets = {k: get(k) for k in _TARGETS if get(k) is not None}
    kw.update(budgets if budgets else {"ratio": get("ratio")})
    if "target_latency_ms" in budgets or "target_speedup" in budgets:
        kw.update(runtime=get("runtime", "onnxruntime"), threads=get("runtime_threads", 1),
                  batch_size=get("runtime_batch", 1), latency_weight=get("latency_weight", "balanced"))
    if get("no_recalibrate", False):
        kw["bn_recalibration"] = False
    if get("no_reconstruct", False):
        kw["reconstruct"] = False
    return kw


def wants_calibration(kw: dict) -> bool:
    """The command's data calibrates the prune: a data-driven method, or recovery on."""
    from ..criteria import criterion_spec

    return criterion_spec(kw["method"]).needs_data or kw.get("bn_recalibration", True) or kw.get("reconstruct", True)


def prune_model(model, meta, args, spec=None, example_input=None, **override):
    """Prune `model` as the flags (and `override`) say, traced on `example_input` (else the
    checkpoint's input); data-driven methods and recovery calibrate on the training set."""
    from .. import prune

    kw = prune_options(args, **override)
    if wants_calibration(kw):
        kw["calibration"] = calibration(spec or dataset_for(meta, args), seed=getattr(args, "seed", 0))
        kw["seed"] = override.get("seed", args.seed)  # (dataset_for may have taken the checkpoint's)
    return prune(model, example(meta) if example_input is None else example_input, **kw)


def distill_options(args, teacher) -> dict:
    """fit()'s distillation keywords from the flags: `teacher` with ``--distill``, else none."""
    if not getattr(args, "distill", False):
        return {}
    return dict(teacher=teacher, distill_temperature=args.distill_temperature, distill_weight=args.distill_weight)


def prune_finetune_eval(model, meta, spec, args, *, epochs: int, lr: float, example_input=None, **override) -> tuple:
    """Prune `model` (a copy), evaluate, fine-tune `epochs`, evaluate again.

    Returns (PruneResult, row): the row holds method, ratio, top-1 before and after
    fine-tuning, macro-F1 after, params and MACs before/after, and the seconds spent."""
    from ..train import evaluate, fit

    t0 = time.perf_counter()
    res = prune_model(model, meta, args, spec, example_input, **override)
    t_prune = time.perf_counter() - t0
    before = evaluate(res.model, spec.val)
    t0 = time.perf_counter()
    if epochs:
        distill = distill_options(args, model)
        fit(res.model, spec.train, epochs=epochs, lr=lr, batch_size=getattr(args, "batch_size", 64),
            optimizer=getattr(args, "optimizer", "adamw"), seed=args.seed, max_steps=getattr(args, "max_steps", None),
            **distill)
    t_ft = time.perf_counter() - t0
    after = evaluate(res.model, spec.val)
    s = res.summary
    row = {"method": res.plan.method, "ratio": res.plan.ratio, "top1_before_ft": before["top1"],
           "top1": after["top1"], "macro_f1": after["macro_f1"], "params": s.params_after, "macs": s.macs_after,
           "params_before": s.params_before, "macs_before": s.macs_before, "prune_s": t_prune, "finetune_s": t_ft}
    return res, row


RESULT_COLUMNS = [("method", "method"), ("ratio", "ratio", ".2f"), ("top1_before_ft", "top-1 before FT", ".4f"),
                  ("top1", "top-1 after FT", ".4f"), ("macro_f1", "macro-F1 after FT", ".4f"), ("params", "params"),
                  ("macs", "MACs"), ("prune_s", "prune s", ".3f")]
