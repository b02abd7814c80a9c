"""One function per command of the `pyprune` command line."""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import torch

from .._io import write_text
from ._workflow import (RESULT_COLUMNS, brief, check_outputs, data_and_model, dataset_for, distill_options, example,
                        fill_input, input_hint, model_input, named_or_saved, planned_ratio, prune_finetune_eval,
                        prune_model, prune_options, ratio_text, record_data, write_json)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _resume_key(args) -> dict:
    """What makes two training commands the same run: every option but --force, --quiet and
    --max-steps (a stop, not a setting), and each input file's size and modification time
    (a training state saved by another run, or from another input, is not resumed from)."""
    key = {}
    for k, v in sorted(vars(args).items()):
        if k in ("force", "quiet", "max_steps", "func") or callable(v):
            continue
        if k in ("checkpoint", "weights", "teacher", "data_dir", "out", "config") and v is not None:
            v = os.path.realpath(v)  # however the path is spelled
        key[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        if k in ("checkpoint", "weights", "teacher") and isinstance(v, str) and os.path.isfile(v):
            st = os.stat(v)
            key[f"{k}_file"] = f"{st.st_size}:{st.st_mtime_ns}"
        if k == "data_dir" and isinstance(v, str) and os.path.isdir(v):
            key["data_files"] = _folder_digest(v)  # images added, removed or replaced: another run
    return key


def _folder_digest(root: str) -> str:
    """A digest of every file under `root`: its path, size and modification time."""
    import hashlib

    h = hashlib.sha1()
    for folder, dirs, files in os.walk(root, followlinks=True):  # (as ImageFolder reads class folders)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def train(args) -> int:
    from ..checkpoint import save_model
    from ..train import evaluate, fit, init_distributed, is_main_process, ranks_agree

    out = pathlib.Path(args.out)
    check_outputs([out / "model.pt", out / "metrics.json"], [args.weights], force=args.force)
    init_distributed()
    spec, model, arch_kwargs, meta = data_and_model(args)
    history = fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
                  seed=args.seed, label_smoothing=args.label_smoothing, checkpoint=out / "train_state.pt",
                  resume_key=_resume_key(args),
                  arch=args.model, arch_kwargs=arch_kwargs, meta=meta, max_steps=args.max_steps,
                  progress=False if args.quiet else None)
    agree = ranks_agree(model)
    if is_main_process():
        m = evaluate(model, spec.val)
        meta.update(brief(m))
        ckpt = save_model(out / "model.pt", model, arch=args.model, arch_kwargs=arch_kwargs, meta=meta)
        write_json(out / "metrics.json", {"history": history, "val": m, "ranks_agree": agree,
                                          "world_size": _world_size()})
        print(f"top-1 {m['top1']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        print(f"model written to {ckpt}; metrics to {out / 'metrics.json'}")
    return 0 if agree else 1


def prune(args) -> int:
    from ..checkpoint import model_from, read, save_model
    from ..models import get_model

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either --checkpoint (a pyprune checkpoint) or --model (a model name, with --weights "
                         "for a local weights file)")
    check_outputs([args.out], [args.checkpoint, args.weights], force=args.force)
    if args.checkpoint is not None:
        obj = read(args.checkpoint)
        model, meta = model_from(obj, args.checkpoint)
        fill_input(meta, model, args)
    else:
        in_channels, size = model_input(args.model, args.in_channels, args.size)
        arch_kwargs = {"num_classes": args.num_classes, "in_channels": in_channels}
        model = get_model(args.model, weights=args.weights, **arch_kwargs).eval()
        obj = {"arch": args.model, "arch_kwargs": arch_kwargs}
        meta = {"in_channels": in_channels, "size": size, "num_classes": args.num_classes, "weights": args.weights}
    if args.dataset is None:
        args.dataset = meta.get("dataset")
    if args.dataset is None:  # no data named, none recorded: prune on the weights alone
        _without_data(args)
    else:
        meta.setdefault("dataset", args.dataset)  # what calibrated it: the next prune of the output uses it too
        if args.data_dir and args.dataset == meta["dataset"]:
            meta["data_dir"] = os.path.realpath(args.data_dir)
        if getattr(args, "seed_given", True):  # (a seed only where it is known: given, or the input's)
            meta.setdefault("split_seed", args.seed)
    with input_hint(None if args.checkpoint is not None else args.model, meta["in_channels"], meta["size"]):
        res = prune_model(model, meta, args)
    print(res.summary.table(max_rows=None if args.verbose else 20))
    print("\n".join(str(res).splitlines()[len(str(res.summary).splitlines()):]))
    kept = res.graph.explain(max_rows=5)
    if not kept.startswith("kept whole: 0 channels"):
        print(kept)
    meta = dict(meta, method=args.method, ratio=planned_ratio(res.plan), params=res.summary.params_after,
                macs=res.summary.macs_after, pruned_from=str(args.checkpoint or args.weights or args.model))
    meta.pop("top1", None)
    meta.pop("macro_f1", None)
    out = save_model(args.out, res.model, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta,
                     attributes=res.attributes)
    print(f"pruned model written to {out}" + (f" (spec in {out.with_suffix('.json')})" if out.suffix == ".safetensors"
                                               else ""))
    if res.latency:
        from ..report import write_report

        mods = dict(res.model.named_modules())
        widths = {f"{n} ({type(mods[n]).__name__})" if n in mods else n: w for n, w in res.layer_widths().items()}
        report = write_report(out.parent / f"{out.stem}-latency", latency=res.latency, layer_widths=widths,
                              title=f"pyprune: {args.method} to a latency budget on {res.latency['target']}")
        print(f"latency report (where the time goes, predicted vs measured): {report}")
    return 0


def _without_data(args) -> None:
    """`prune` with no data set named and none recorded in the checkpoint: the weights alone
    decide, and the steps that would need the model's own training batches (BatchNorm
    recalibration, reconstruction) are skipped with a note, never run on some other data; a
    method that scores channels from data is refused."""
    from ..criteria import available_criteria, criterion_spec

    source = (f"{args.checkpoint} records no data set" if args.checkpoint is not None
              else f"--model {args.model} comes with no data")
    how = ("give the data the model was trained on with --dataset (digits | cifar10 | cifar100 | imagefolder; "
           "--data-dir for the last three)")
    if criterion_spec(args.method).needs_data:
        free = [m for m in available_criteria() if not criterion_spec(m).needs_data]
        raise ValueError(f"method {args.method!r} scores channels from data, but {source} and no --dataset was "
                         f"given: {how}, or use a method that needs none ({', '.join(free)})")
    skipped = [step for step, off in (("BatchNorm recalibration", args.no_recalibrate),
                                      ("layer-wise reconstruction", args.no_reconstruct)) if not off]
    args.no_recalibrate = args.no_reconstruct = True
    if skipped:
        print(f"pyprune prune: note: {source} and no --dataset was given, so {' and '.join(skipped)} "
              f"{'is' if len(skipped) == 1 else 'are'} skipped (they need batches of the model's own data); to run "
              f"them, {how}. --no-recalibrate --no-reconstruct silence this note.", file=sys.stderr)


def finetune(args) -> int:
    from ..checkpoint import model_from, read, save_model
    from ..train import evaluate, fit, init_distributed, is_main_process

    out = pathlib.Path(args.out)
    check_outputs([out], [args.checkpoint], force=args.force)
    init_distributed()
    obj = read(args.checkpoint)
    model, meta = model_from(obj, args.checkpoint)
    fill_input(meta, model, args)
    spec = dataset_for(meta, args)
    record_data(meta, spec, args)  # what it is fine-tuned on and at (--size, else the size it records)
    state = out.with_name(out.stem + ".train_state.pt")
    distill = {}
    if args.teacher:
        from ..checkpoint import load_model

        teacher = load_model(args.teacher)[0]
        x = example(meta)
        try:
            with torch.no_grad():
                teacher(x)
        except RuntimeError as e:
            raise ValueError(f"the teacher {args.teacher} does not take the student's input "
                             f"({'x'.join(map(str, x.shape[1:]))}): give a teacher trained on the same data "
                             f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
        distill = dict(teacher=teacher, distill_temperature=args.distill_temperature,
                       distill_weight=args.distill_weight)
    fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        seed=args.seed, checkpoint=state, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta,
        max_steps=args.max_steps, resume_key=_resume_key(args), **distill)
    if is_main_process():
        m = evaluate(model, spec.val)
        meta.update(brief(m))
        save_model(out, model, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta)
        print(f"top-1 {m['top1']:.4f}, macro-F1 {m['macro_f1']:.4f}\nfine-tuned model written to {out}")
    return 0


def _load_and_evaluate(args):
    """(model, meta, data spec, validation metrics) of the checkpoint in ``args``."""
    from ..checkpoint import load_model
    from ..train import evaluate

    model, meta = load_model(args.checkpoint)
    fill_input(meta, model, args)
    spec = dataset_for(meta, args)
    classes = meta.get("num_classes")
    if classes is not None and int(classes) != spec.num_classes:
        raise ValueError(f"{args.checkpoint} classifies {classes} classes, the data set {spec.name} has "
                         f"{spec.num_classes}: evaluate it on the data it was trained for (--dataset)")
    return model, meta, spec, evaluate(model, spec.val, num_classes=spec.num_classes)


def evaluate(args) -> int:
    from ..graph import build_graph
    from ..summary import count

    check_outputs([args.out], [args.checkpoint], force=args.force)
    model, meta, spec, m = _load_and_evaluate(args)
    params, macs = count(model, build_graph(model, example(meta, spec.size)).layers)  # at the side evaluated
    result = {"checkpoint": str(args.checkpoint), "dataset": spec.name, "top1": m["top1"], "macro_f1": m["macro_f1"],
              "confusion": m["confusion"], "params": params, "macs": macs, "size": spec.size}
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=1))
    if args.out:
        print(f"metrics written to {write_json(pathlib.Path(args.out), result)}")
    return 0


def run(args) -> int:
    """train -> prune -> fine-tune -> evaluate, from a config file and/or flags."""
    from ..checkpoint import save_model
    from ..prune import check_options
    from ..train import check_fit_options, evaluate, fit

    out = pathlib.Path(args.out)
    check_outputs([out / "base.pt", out / "pruned.pt", out / "results.json"], [args.weights], force=args.force)
    t0 = time.perf_counter()
    check_options(**prune_options(args))  # a bad option stops here, not after the training
    spec, model, arch_kwargs, meta = data_and_model(args)
    check_fit_options(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer)
    check_fit_options(epochs=args.finetune_epochs, lr=args.lr / 2, optimizer=args.optimizer,
                      **distill_options(args, model))
    fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        seed=args.seed, max_steps=args.max_steps)
    base = evaluate(model, spec.val)
    save_model(out / "base.pt", model, arch=args.model, arch_kwargs=arch_kwargs, meta=dict(meta, **brief(base)))
    print(f"base: top-1 {base['top1']:.4f}")
    res, row = prune_finetune_eval(model, meta, spec, args, epochs=args.finetune_epochs, lr=args.lr / 2)
    save_model(out / "pruned.pt", res.model, arch=args.model, arch_kwargs=arch_kwargs, attributes=res.attributes,
               meta=dict(meta, method=args.method, ratio=planned_ratio(res.plan), top1=row["top1"],
                         macro_f1=row["macro_f1"]))
    result = {
        "model": args.model, "dataset": spec.name, "method": args.method, "schedule": args.schedule,
        "ratio": planned_ratio(res.plan),
        "base": {**brief(base), "params": row["params_before"], "macs": row["macs_before"]},
        "pruned": {"top1_before_finetune": row["top1_before_ft"], "top1": row["top1"], "macro_f1": row["macro_f1"],
                   "params": row["params"], "macs": row["macs"]},
        "wall_s": time.perf_counter() - t0,
    }
    path = write_json(out / "results.json", result)
    print(f"pruned ({args.method}, {ratio_text(res.plan)}): top-1 {row['top1_before_ft']:.4f} -> "
          f"{row['top1']:.4f} after {args.finetune_epochs} fine-tune epochs; params "
          f"{row['params_before']} -> {row['params']}")
    print(f"results written to {path} (models: {out / 'base.pt'}, {out / 'pruned.pt'})")
    return 0


def sweep(args) -> int:
    """Several methods x ratios from one trained checkpoint: one results table."""
    from ..prune import check_options
    from ..report import markdown_table
    from ..train import check_fit_options

    out = pathlib.Path(args.out)
    check_outputs([out / "sweep.json", out / "sweep.md"], [args.checkpoint], force=args.force)
    targets = [("target_speedup", sp) for sp in args.speedups] if args.speedups else [("ratio", r) for r in args.ratios]
    for method in args.methods:  # every pruning of the sweep is checked before the first is fine-tuned
        for key, value in targets:
            check_options(**prune_options(args, method=method, **{key: value}))
    base, meta, spec, base_m = _load_and_evaluate(args)
    check_fit_options(epochs=args.finetune_epochs, lr=args.lr, optimizer=getattr(args, "optimizer", "adamw"),
                      **distill_options(args, base))
    rows = [{"method": "unpruned", "ratio": 0.0, "top1_before_ft": base_m["top1"], "top1": base_m["top1"],
             "macro_f1": base_m["macro_f1"]}]
    for method in args.methods:
        for key, value in targets:
            res, row = prune_finetune_eval(base, meta, spec, args, epochs=args.finetune_epochs, lr=args.lr,
                                           method=method, **{key: value})
            row = dict(row, layer_widths=res.layer_widths())
            if res.latency:
                row.update(speedup=value, p50_s=res.latency["measured_s"], predicted_s=res.latency["predicted_s"],
                           runtime=args.runtime)
                rows[0].setdefault("p50_s", res.latency["unpruned_measured_s"])
            rows.append(row)
            label = f"{value:.2f}x faster" if key == "target_speedup" else f"{value:.2f}"
            print(f"{method:>10} @ {label}: top-1 {row['top1_before_ft']:.4f} -> {row['top1']:.4f}")
    path = write_json(out / "sweep.json", {"checkpoint": str(args.checkpoint), "rows": rows})
    cols = RESULT_COLUMNS[:-1] + ([("speedup", "target speedup", ".2f"), ("p50_s", "measured p50 s", ".5f")]
                                 if args.speedups else [])
    table = markdown_table(rows, cols)
    write_text(out / "sweep.md", table + "\n")
    print(table)
    if args.speedups:
        from ..report import write_report

        lat_rows = [dict(r, runtime=args.runtime, ratio=1 - r["p50_s"] / rows[0]["p50_s"]) for r in rows[1:]]
        curve = [{"method": r["method"], "ratio": r["ratio"], "top1": r["top1"], "top1_before_ft": r["top1_before_ft"]}
                 for r in lat_rows] + [dict(method="unpruned", ratio=0.0, top1=rows[0]["top1"])]
        report = write_report(out / "report", sweep=curve, title="pyprune sweep: accuracy vs measured latency",
                              notes=[f"x axis: the share of the unpruned model's measured latency removed on "
                                     f"{args.runtime} ({args.runtime_threads} thread(s), batch {args.runtime_batch})"])
        print(f"accuracy vs latency: {report}")
    print(f"sweep written to {path} and {out / 'sweep.md'}")
    return 0


RECIPES = [("one-shot", dict(bn_recalibration=False, reconstruct=False), False),
           ("+ BN recalibration", dict(reconstruct=False), True),
           ("+ reconstruction", dict(), True)]


def demo(args) -> int:
    """Train a CNN on the embedded digits, prune it with several methods, and show side by
    side what each recipe keeps without any training (one-shot; + BN recalibration; +
    layer-wise reconstruction, pyprune's default when data is at hand), after fine-tuning,
    across ratios, and on the edge runtimes."""
    from .. import prune
    from ..checkpoint import save_model
    from ..data import digits
    from ..graph import build_graph
    from ..models import digits_cnn
    from ..report import markdown_table
    from ..summary import count
    from ..train import evaluate, fit

    out = pathlib.Path(args.out)
    check_outputs([out / "results.json", out / "summary.md", out / "base.pt"]
                  + [out / f"pruned_{m}.pt" for m in args.methods]
                  + ([] if args.no_edge else [out / "edge" / n / "bench.json" for n in ("original", "pruned")]
                     + [out / "report" / "index.html"]),
                  force=args.force)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    steps = 4 if not args.no_edge else 3
    train_set, test = digits(seed=args.seed)
    print(f"digits: {len(train_set)} training and {len(test)} test images (8x8, 10 classes, shipped with scikit-learn)")
    print(f"[1/{steps}] training the base CNN, {args.epochs} epochs (about 10-30 s) ...", flush=True)
    base = digits_cnn()
    t0 = time.perf_counter()
    fit(base, train_set, epochs=args.epochs, lr=2e-3, seed=args.seed, log=lambda r: None)
    base_metrics = evaluate(base, test)
    print(f"      top-1 {base_metrics['top1']:.2%}, macro-F1 {base_metrics['macro_f1']:.4f} "
          f"({time.perf_counter() - t0:.1f} s)")
    meta = {"dataset": "digits", "size": 8, "in_channels": 1, "num_classes": 10}
    arch_kwargs = {"num_classes": 10, "in_channels": 1}
    save_model(out / "base.pt", base, arch="digits_cnn", arch_kwargs=arch_kwargs,
               meta=dict(meta, **brief(base_metrics)))
    x = test[:1][0]
    cal = _demo_calibration(train_set, args.seed)
    p0, m0 = count(base, build_graph(base, x).layers)
    acc = lambda m: evaluate(m, test)["top1"]  # noqa: E731

    t_step = time.perf_counter()
    print(f"[2/{steps}] pruning {args.ratio:.0%} of the channels: {', '.join(args.methods)}, each one-shot, + BN "
          "recalibration, + reconstruction (8 unlabelled batches, no training; a few seconds) ...", flush=True)
    one_shot: dict = {}
    defaults = {}
    for method in args.methods:
        variants = [(r, kw, data) for r, kw, data in RECIPES]
        if method == "kmeans":
            variants.insert(1, ("one-shot, no merge", dict(bn_recalibration=False, reconstruct=False, merge=False),
                                False))
        for recipe, kw, data in variants:
            res = prune(base, x, method=method, ratio=args.ratio, seed=args.seed, calibration=cal if data else None,
                        **kw)
            one_shot[(method, recipe)] = acc(res.model)
        defaults[method] = res  # the last recipe: pyprune's default with data
    recipes = list(dict.fromkeys(r for _, r in one_shot))
    tbl = [{"method": m, **{r: one_shot.get((m, r)) for r in recipes}} for m in args.methods]
    print(markdown_table(tbl, ["method"] + [(r, r, ".2%") for r in recipes]))
    best = max(args.methods, key=lambda m: one_shot[(m, "+ reconstruction")])
    worst = min(args.methods, key=lambda m: one_shot[(m, "+ reconstruction")])
    print(f"      without training, {best} keeps the most: {one_shot[(best, '+ reconstruction')]:.2%} against "
          f"{worst}'s {one_shot[(worst, '+ reconstruction')]:.2%} (unpruned {base_metrics['top1']:.2%}); plain "
          f"one-shot pruning gives {min(one_shot[(m, 'one-shot')] for m in args.methods):.2%}-"
          f"{max(one_shot[(m, 'one-shot')] for m in args.methods):.2%}")

    print(f"      (step 2: {time.perf_counter() - t_step:.1f} s)")
    t_step = time.perf_counter()
    print(f"[3/{steps}] fine-tuning each default-path model {args.finetune_epochs} epochs, and the default path "
          "at ratios 0.3 and 0.7 without training (about 15 s) ...", flush=True)
    rows = [{"method": "unpruned", "ratio": 0.0, "top1_before_ft": base_metrics["top1"], "top1": base_metrics["top1"],
             "macro_f1": base_metrics["macro_f1"], "params": p0, "macs": m0, "prune_s": 0.0, "finetune_s": 0.0}]
    pruned_models = {}
    for method in args.methods:
        res = defaults[method]
        before = acc(res.model)
        t0 = time.perf_counter()
        fit(res.model, train_set, epochs=args.finetune_epochs, lr=1e-3, seed=args.seed, log=lambda r: None)
        after = evaluate(res.model, test)
        pruned_models[method] = res
        save_model(out / f"pruned_{method}.pt", res.model, arch="digits_cnn", arch_kwargs=arch_kwargs,
                   attributes=res.attributes,
                   meta=dict(meta, method=method, ratio=args.ratio, top1=after["top1"], macro_f1=after["macro_f1"]))
        rows.append({"method": method, "ratio": args.ratio, "top1_before_ft": before, "top1": after["top1"],
                     "macro_f1": after["macro_f1"], "params": res.summary.params_after, "macs": res.summary.macs_after,
                     "prune_s": res.seconds.get("total", 0.0), "finetune_s": time.perf_counter() - t0})
        print(f"      {method:>7}: {before:.2%} one-shot -> {after['top1']:.2%} after {args.finetune_epochs} epochs; "
              f"params {p0:,} -> {res.summary.params_after:,}, MACs {m0:,} -> {res.summary.macs_after:,}")
    sweep = list(rows)
    for ratio in (0.3, 0.7):
        for method in args.methods:
            res = prune(base, x, method=method, ratio=ratio, seed=args.seed, calibration=cal)
            v = acc(res.model)
            sweep.append({"method": method, "ratio": ratio, "top1_before_ft": v, "top1": v,
                          "params": res.summary.params_after, "macs": res.summary.macs_after})
    main_s = time.perf_counter() - t_start
    print(f"      (step 3: {time.perf_counter() - t_step:.1f} s; training, pruning and comparing: {main_s:.1f} s)")
    t_step = time.perf_counter()
    edge = {} if args.no_edge else _demo_edge(base, pruned_models, sweep, out, x, args, steps)
    if edge:
        print(f"      (step {steps}: {time.perf_counter() - t_step:.1f} s)")
    wall = time.perf_counter() - t_start
    result = {"dataset": "digits", "ratio": args.ratio, "epochs": args.epochs, "edge": edge,
              "finetune_epochs": args.finetune_epochs, "seed": args.seed, "wall_s": wall, "main_s": main_s,
              "rows": rows,
              "one_shot": [{"method": m, "recipe": r, "top1": v} for (m, r), v in one_shot.items()], "sweep": sweep}
    write_json(out / "results.json", result)
    table = markdown_table(rows, RESULT_COLUMNS)
    write_text(out / "summary.md", f"# pyprune demo (digits)\n\nwall time {wall:.1f} s\n\n## without training\n\n"
               f"{markdown_table(tbl, ['method'] + [(r, r, '.4f') for r in recipes])}\n\n## after fine-tuning\n\n"
               f"{table}\n")
    print()
    print(table)
    if edge:
        print()
        print(edge["table"])
        print(f"\nreport: {edge['report']}")
    print(f"\nresults written to {out.resolve()}/ (results.json, summary.md, base.pt, pruned_*.pt"
          f"{', edge/ (ONNX, .pte, benchmarks), report/' if edge else ''}) in {wall:.1f} s")
    return 0


def _demo_calibration(train_set, seed: int) -> list:
    from torch.utils.data import DataLoader

    return [xb for xb, _ in DataLoader(train_set, batch_size=128, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))][:8]


def _demo_edge(base, pruned_models: dict, rows: list, out: pathlib.Path, x, args, steps: int = 4) -> dict:
    """Export the original and the pruned model, benchmark both, write the report."""
    from ..bench import benchmark
    from ..report import write_report

    method = "kmeans" if "kmeans" in pruned_models else next(iter(pruned_models))
    res = pruned_models[method]
    runtimes = ["eager", "onnxruntime"]
    try:
        import executorch  # noqa: F401

        runtimes.append("executorch")
    except ImportError:
        print("ExecuTorch is not installed (pip install 'pyprune[executorch]'): skipping the .pte export")
    print(f"[{steps}/{steps}] exporting the original and the pruned ({method}) model to {', '.join(runtimes[1:])}, "
          "verifying each in a fresh process, timing them (1-2 minutes: every export is checked and every "
          "runtime timed in a process of its own) ...", flush=True)
    edge_dir = out / "edge"
    bench_rows, tables, onnx_bytes = [], [], {}
    for name, model, ratio in (("original", base, 0.0), ("pruned", res.model, args.ratio)):
        # the benchmark exports (and verifies) each model once, into edge/<name>/
        b = benchmark(model, tuple(x.shape), runtimes=runtimes, threads=[1], batch_sizes=[1],
                      repeats=40, max_seconds=2.0, workdir=edge_dir / name)
        for e in b.exports:
            print(f"exported {e}")
        onnx_bytes[name] = next(e.size_bytes for e in b.exports if e.format == "onnx")
        label = name if name == "original" else f"pruned ({method})"
        tables.append(f"{label}:\n{b.table()}")
        bench_rows += [dict(r, model=label, ratio=ratio) for r in b.rows]
        b.write(edge_dir / name)
    sizes = {"original": {"params": rows[0]["params"], "macs": rows[0]["macs"], "file_bytes": onnx_bytes["original"]},
             "pruned": {"params": res.summary.params_after, "macs": res.summary.macs_after,
                        "file_bytes": onnx_bytes["pruned"]}}
    sweep_rows = [{k: r[k] for k in ("method", "ratio", "top1", "top1_before_ft", "params", "macs")} for r in rows]
    mods = dict(res.model.named_modules())
    widths = {f"{n} ({type(mods[n]).__name__})" if n in mods else n: w for n, w in res.layer_widths().items()}
    report = write_report(out / "report", sweep=sweep_rows, bench=[r for r in bench_rows if r["batch"] == 1],
                          sizes=sizes, layer_widths=widths,
                          title="pyprune demo: digits CNN, 50% of channels",
                          notes=[f"method {method}; latency at batch 1, 1 thread; accuracy at ratio {args.ratio} "
                                 "after fine-tuning, at 0.3 and 0.7 without training (pyprune's default path: BN "
                                 "recalibration and reconstruction on 8 unlabelled batches)"])
    return {"bench": bench_rows, "sizes": sizes, "report": str(report), "table": "\n\n".join(tables)}


def latency_table(args) -> int:
    from ..graph import build_graph
    from ..latency import LatencyModel, LatencyTarget
    from ..summary import CostModel

    model, x, named = named_or_saved(args)
    target = LatencyTarget(args.runtime, args.runtime_threads, args.runtime_batch)
    with input_hint(named, x.shape[1], x.shape[-1]):
        graph = build_graph(model, x)
    cost = CostModel(model, graph)
    t0 = time.perf_counter()
    lat = LatencyModel(model, graph, x, target, cost, cache=args.cache)
    took = time.perf_counter() - t0
    print(lat.report(max_rows=None if args.verbose else 20))
    print(f"{'measured ' + str(lat.measured_points) + ' layer points' if lat.measured_points else 'read from the cache'}"
          f" in {took:.1f} s: {lat.table.path}")
    return 0


def info(args) -> int:
    from ..graph import build_graph
    from ..summary import count

    model, x, named = named_or_saved(args)
    c, size = x.shape[1], x.shape[-1]
    with input_hint(named, c, size):
        graph = build_graph(model, x)
    params, macs = count(model, graph.layers)
    print(f"{args.model}: {params:,} parameters, {macs:,} MACs at {c}x{size}x{size}")
    print(graph.table())
    print(graph.explain())
    return 0


def export(args) -> int:
    from ..checkpoint import load_model
    from ..export import export as export_model
    from ._workflow import calibration

    check_outputs([args.out], [args.checkpoint], force=args.force)
    model, meta = load_model(args.checkpoint)
    x = example(fill_input(meta, model, args), getattr(args, "size", None)).repeat(args.batch, 1, 1, 1)
    cal = calibration(dataset_for(meta, args), n=8, seed=args.seed) if args.int8 else None
    res = export_model(model, x, args.format, args.out, dynamic_batch=args.dynamic_batch,
                       quantize="int8" if args.int8 else None, calibration=cal)
    print(f"verified in a fresh process: {res}")
    print(f"exported model written to {res.path}")
    return 0


EXPORTED = (".onnx", ".pte", ".pt2")  # exported-model files; bench takes anything else as a pyprune checkpoint


def bench(args) -> int:
    from ..bench import benchmark

    target = pathlib.Path(args.target)
    out = pathlib.Path(args.out)
    check_outputs([out / "bench.json", out / "bench.csv"], [target], force=args.force)
    if target.suffix not in EXPORTED:  # a pyprune checkpoint (.pt, .safetensors), as the other commands take
        from ..checkpoint import load_model

        model, meta = load_model(target)
        shape = (1, *args.shape) if args.shape else tuple(example(fill_input(meta, model)).shape)
        res = benchmark(model, shape, runtimes=args.runtimes or ("eager", "onnxruntime", "executorch"),
                        threads=args.threads, batch_sizes=args.batch_sizes, repeats=args.repeats)
    else:
        if not args.shape:
            raise ValueError(f"--shape C H W is needed to benchmark an exported file ({target.suffix}); a pyprune "
                             "checkpoint (.pt, .safetensors) records its own")
        own = {".onnx": "onnxruntime", ".pte": "executorch", ".pt2": "eager"}[target.suffix]
        if args.runtimes and args.runtimes != [own]:
            raise ValueError(f"--runtimes {' '.join(args.runtimes)}: a {target.suffix} file runs on {own} only; "
                             "benchmark the pyprune checkpoint to time other runtimes")
        res = benchmark(target, (1, *args.shape), threads=args.threads, batch_sizes=args.batch_sizes, repeats=args.repeats)
    print(res.table())
    if any(r["noisy"] for r in res.rows):
        print("note: rows marked noisy ran while other load used more than 25% of the machine")
    j, c = res.write(args.out)
    print(f"benchmark written to {j} and {c}")
    return 0
