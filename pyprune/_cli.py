"""Implementation of the `pyprune` command line (entry point: pyprune.cli:main).

Exit codes: 0 success, 2 bad usage or input (a clear message on stderr), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

EXAMPLE_CONFIG = """\
# pyprune run --config this.yaml   (TOML works too: same keys)
model: digits_cnn          # any pyprune.models / torchvision model name
dataset: digits            # digits | cifar10 | cifar100 | imagefolder
data_dir: null             # local folder for cifar*/imagefolder (never downloaded)
epochs: 20
finetune_epochs: 5
method: kmeans
ratio: 0.5
schedule: uniform
out: results/run
"""


def _write_json(path: pathlib.Path, obj) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))
    return path


def _dataset(args, size=None, channels=None):
    from .data import get_dataset

    return get_dataset(args.dataset, args.data_dir, size=size or getattr(args, "size", None),
                       augment=not getattr(args, "no_augment", False), seed=args.seed, channels=channels)


def _spec_for(meta: dict, args):
    return _dataset(args, size=meta.get("size"), channels=meta.get("in_channels"))


def _example(meta: dict) -> torch.Tensor:
    return torch.zeros(1, int(meta.get("in_channels", 3)), int(meta.get("size", 224)), int(meta.get("size", 224)))


def _metrics_brief(m: dict) -> dict:
    return {"top1": m["top1"], "macro_f1": m["macro_f1"]}


def _data_and_model(args):
    """The data set and a fresh (seeded) model sized for it: (spec, model, arch_kwargs, meta)."""
    from .models import get_model

    spec = _dataset(args)
    arch_kwargs = {"num_classes": spec.num_classes}
    if args.model in _registry():
        arch_kwargs["in_channels"] = spec.in_channels
    torch.manual_seed(args.seed)
    model = get_model(args.model, weights=args.weights, **arch_kwargs)
    meta = {"dataset": spec.name, "size": spec.size, "in_channels": spec.in_channels, "num_classes": spec.num_classes}
    return spec, model, arch_kwargs, meta


# -- commands -------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .checkpoint import save_model
    from .train import evaluate, fit, init_distributed, is_main_process, ranks_agree

    init_distributed()
    spec, model, arch_kwargs, meta = _data_and_model(args)
    out = pathlib.Path(args.out)
    history = fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
                  seed=args.seed, label_smoothing=args.label_smoothing, checkpoint=out / "train_state.pt",
                  arch=args.model, arch_kwargs=arch_kwargs, meta=meta, max_steps=args.max_steps,
                  log=(lambda r: print(f"epoch {r['epoch'] + 1}: loss {r['loss']:.4f}")) if not args.quiet else None)
    agree = ranks_agree(model)
    if is_main_process():
        m = evaluate(model, spec.val)
        meta.update(_metrics_brief(m))
        ckpt = save_model(out / "model.pt", model, arch=args.model, arch_kwargs=arch_kwargs, meta=meta)
        _write_json(out / "metrics.json", {"history": history, "val": m, "ranks_agree": agree,
                                           "world_size": _world_size()})
        print(f"top-1 {m['top1']:.4f}, macro-F1 {m['macro_f1']:.4f}")
        print(f"model written to {ckpt}; metrics to {out / 'metrics.json'}")
    return 0 if agree else 1


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _registry():
    from .models import MODELS

    return MODELS


def _calibration(args, spec, n=4):
    from torch.utils.data import DataLoader

    return [b for _, b in zip(range(n), DataLoader(spec.train, batch_size=64, shuffle=False))]


def _prune_kwargs(args) -> dict:
    kw = dict(method=args.method, schedule=args.schedule, taper=args.taper, round_to=args.round_to, seed=args.seed)
    if args.target_macs is not None:
        kw["target_macs"] = args.target_macs
    elif args.target_params is not None:
        kw["target_params"] = args.target_params
    else:
        kw["ratio"] = args.ratio
    return kw


def _do_prune(model, meta, args, spec=None):
    from . import prune
    from .criteria import criterion_spec

    kw = _prune_kwargs(args)
    if criterion_spec(args.method).needs_data:
        spec = spec or _spec_for(meta, args)
        kw["calibration"] = _calibration(args, spec)
    return prune(model, _example(meta), **kw)


def cmd_prune(args) -> int:
    from .checkpoint import model_from, read, save_model

    obj = read(args.checkpoint)
    model, meta = model_from(obj, args.checkpoint)
    res = _do_prune(model, meta, args)
    print(res.summary.table(max_rows=None if args.verbose else 20))
    if res.merge is not None:
        print(f"merge: {res.merge}")
    meta = dict(meta, method=args.method, ratio=res.plan.ratio, params=res.summary.params_after,
                macs=res.summary.macs_after, pruned_from=str(args.checkpoint))
    meta.pop("top1", None)
    meta.pop("macro_f1", None)
    out = save_model(args.out, res.model, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta)
    print(f"pruned model written to {out}")
    return 0


def cmd_finetune(args) -> int:
    from .checkpoint import model_from, read, save_model
    from .train import evaluate, fit, init_distributed, is_main_process

    init_distributed()
    obj = read(args.checkpoint)
    model, meta = model_from(obj, args.checkpoint)
    spec = _spec_for(meta, args)
    out = pathlib.Path(args.out)
    state = out.with_name(out.stem + ".train_state.pt")
    fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        seed=args.seed, checkpoint=state, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta,
        max_steps=args.max_steps)
    if is_main_process():
        m = evaluate(model, spec.val)
        meta.update(_metrics_brief(m))
        save_model(out, model, arch=obj.get("arch"), arch_kwargs=obj.get("arch_kwargs"), meta=meta)
        print(f"top-1 {m['top1']:.4f}, macro-F1 {m['macro_f1']:.4f}\nfine-tuned model written to {out}")
    return 0


def _load_and_evaluate(args):
    """(model, meta, data spec, validation metrics) of the checkpoint in ``args``."""
    from .checkpoint import load_model
    from .train import evaluate

    model, meta = load_model(args.checkpoint)
    spec = _spec_for(meta, args)
    return model, meta, spec, evaluate(model, spec.val)


def cmd_evaluate(args) -> int:
    from .graph import build_graph
    from .summary import count

    model, meta, spec, m = _load_and_evaluate(args)
    params, macs = count(model, build_graph(model, _example(meta)).layers)
    result = {"checkpoint": str(args.checkpoint), "top1": m["top1"], "macro_f1": m["macro_f1"],
              "confusion": m["confusion"], "params": params, "macs": macs}
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=1))
    if args.out:
        print(f"metrics written to {_write_json(pathlib.Path(args.out), result)}")
    return 0


def _load_config(path: str) -> dict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p} not found")
    text = p.read_text()
    if p.suffix in (".toml",):
        import tomllib

        return tomllib.loads(text)
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pragma: no cover
            raise ValueError("YAML configs need PyYAML: pip install pyyaml (or use a .toml config)") from e
        cfg = yaml.safe_load(text) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{p}: expected a mapping of options")
        return cfg
    raise ValueError(f"config {p}: use a .yaml, .yml or .toml file")


def cmd_run(args) -> int:
    """train -> prune -> fine-tune -> evaluate, from a config file and/or flags."""
    if args.config:
        cfg = _load_config(args.config)
        known = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions}
        bad = [k for k in cfg if k not in known]
        if bad:
            raise ValueError(f"config {args.config}: unknown option(s) {bad}; known: {sorted(known - {'help', 'func', 'config'})}")
        for k, v in cfg.items():
            if getattr(args, k) == RUN_DEFAULTS.get(k):
                setattr(args, k, v)
    from .checkpoint import save_model
    from .train import evaluate, fit

    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    spec, model, arch_kwargs, meta = _data_and_model(args)
    fit(model, spec.train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
        seed=args.seed, max_steps=args.max_steps)
    base = evaluate(model, spec.val)
    save_model(out / "base.pt", model, arch=args.model, arch_kwargs=arch_kwargs, meta=dict(meta, **_metrics_brief(base)))
    print(f"base: top-1 {base['top1']:.4f}")
    res = _do_prune(model, meta, args, spec)
    pruned_before = evaluate(res.model, spec.val)
    fit(res.model, spec.train, epochs=args.finetune_epochs, lr=args.lr / 2, batch_size=args.batch_size,
        optimizer=args.optimizer, seed=args.seed, max_steps=args.max_steps)
    after = evaluate(res.model, spec.val)
    save_model(out / "pruned.pt", res.model, arch=args.model, arch_kwargs=arch_kwargs,
               meta=dict(meta, method=args.method, ratio=res.plan.ratio, **_metrics_brief(after)))
    result = {
        "model": args.model, "dataset": spec.name, "method": args.method, "schedule": args.schedule,
        "ratio": res.plan.ratio,
        "base": {**_metrics_brief(base), "params": res.summary.params_before, "macs": res.summary.macs_before},
        "pruned": {"top1_before_finetune": pruned_before["top1"], **_metrics_brief(after),
                   "params": res.summary.params_after, "macs": res.summary.macs_after},
        "wall_s": time.perf_counter() - t0,
    }
    path = _write_json(out / "results.json", result)
    print(f"pruned ({args.method}, ratio {res.plan.ratio:.2f}): top-1 {pruned_before['top1']:.4f} -> "
          f"{after['top1']:.4f} after {args.finetune_epochs} fine-tune epochs; params "
          f"{res.summary.params_before} -> {res.summary.params_after}")
    print(f"results written to {path} (models: {out / 'base.pt'}, {out / 'pruned.pt'})")
    return 0


def cmd_sweep(args) -> int:
    """Several methods x ratios from one trained checkpoint: one results table."""
    import copy

    from .train import evaluate, fit

    base, meta, spec, base_m = _load_and_evaluate(args)
    rows = [{"method": "unpruned", "ratio": 0.0, "top1_before_ft": base_m["top1"], "top1": base_m["top1"],
             "macro_f1": base_m["macro_f1"]}]
    for method in args.methods:
        for ratio in args.ratios:
            a = copy.copy(args)
            a.method, a.ratio, a.target_macs, a.target_params = method, ratio, None, None
            res = _do_prune(base, meta, a, spec)
            before = evaluate(res.model, spec.val)
            if args.finetune_epochs:
                fit(res.model, spec.train, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed, max_steps=args.max_steps)
            after = evaluate(res.model, spec.val)
            rows.append({"method": method, "ratio": ratio, "top1_before_ft": before["top1"], "top1": after["top1"],
                         "macro_f1": after["macro_f1"], "params": res.summary.params_after, "macs": res.summary.macs_after,
                         "params_before": res.summary.params_before, "macs_before": res.summary.macs_before,
                         "layer_widths": res.plan.layer_widths()})
            print(f"{method:>10} @ {ratio:.2f}: top-1 {before['top1']:.4f} -> {after['top1']:.4f}")
    out = pathlib.Path(args.out)
    path = _write_json(out / "sweep.json", {"checkpoint": str(args.checkpoint), "rows": rows})
    lines = ["| method | ratio | top-1 before FT | top-1 | macro-F1 | params | MACs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:.2f} | {r['top1_before_ft']:.4f} | {r['top1']:.4f} | "
                     f"{r['macro_f1']:.4f} | {r.get('params', '')} | {r.get('macs', '')} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"sweep written to {path} and {out / 'sweep.md'}")
    return 0


def cmd_demo(args) -> int:
    from . import prune
    from .checkpoint import save_model
    from .data import digits
    from .graph import build_graph
    from .models import digits_cnn
    from .summary import count
    from .train import evaluate, fit

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    train, test = digits(seed=args.seed)
    print(f"digits: {len(train)} training and {len(test)} test images (8x8, 10 classes, shipped with scikit-learn)")
    base = digits_cnn()
    t0 = time.perf_counter()
    fit(base, train, epochs=args.epochs, lr=2e-3, seed=args.seed)
    base_metrics = evaluate(base, test)
    print(f"base model: top-1 {base_metrics['top1']:.4f}, macro-F1 {base_metrics['macro_f1']:.4f} "
          f"({time.perf_counter() - t0:.1f} s to train)")
    meta = {"dataset": "digits", "size": 8, "in_channels": 1, "num_classes": 10}
    save_model(out / "base.pt", base, arch="digits_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1},
               meta=dict(meta, **_metrics_brief(base_metrics)))
    x = test[:1][0]
    p0, m0 = count(base, build_graph(base, x).layers)
    rows = [{"method": "unpruned", "ratio": 0.0, "top1_before_ft": base_metrics["top1"],
             "top1_after_ft": base_metrics["top1"], "macro_f1_after_ft": base_metrics["macro_f1"],
             "params": p0, "macs": m0, "prune_s": 0.0, "finetune_s": 0.0}]
    pruned_models = {}
    for method in args.methods:
        t0 = time.perf_counter()
        res = prune(base, x, method=method, ratio=args.ratio, seed=args.seed)
        pruned_models[method] = res
        t_prune = time.perf_counter() - t0
        before = evaluate(res.model, test)
        t0 = time.perf_counter()
        fit(res.model, train, epochs=args.finetune_epochs, lr=1e-3, seed=args.seed)
        t_ft = time.perf_counter() - t0
        after = evaluate(res.model, test)
        save_model(out / f"pruned_{method}.pt", res.model, arch="digits_cnn",
                   arch_kwargs={"num_classes": 10, "in_channels": 1},
                   meta=dict(meta, method=method, ratio=args.ratio, **_metrics_brief(after)))
        rows.append({"method": method, "ratio": args.ratio, "top1_before_ft": before["top1"],
                     "top1_after_ft": after["top1"], "macro_f1_after_ft": after["macro_f1"],
                     "params": res.summary.params_after, "macs": res.summary.macs_after,
                     "prune_s": t_prune, "finetune_s": t_ft})
        print(f"{method:>8}: top-1 {before['top1']:.4f} after pruning, {after['top1']:.4f} after "
              f"{args.finetune_epochs} fine-tune epochs; params {p0} -> {res.summary.params_after}, "
              f"MACs {m0} -> {res.summary.macs_after} (pruned in {t_prune:.2f} s)")
    edge = {} if args.no_edge else _demo_edge(base, pruned_models, rows, out, x, args)
    wall = time.perf_counter() - t_start
    result = {"dataset": "digits", "ratio": args.ratio, "epochs": args.epochs, "edge": edge,
              "finetune_epochs": args.finetune_epochs, "seed": args.seed, "wall_s": wall, "rows": rows}
    _write_json(out / "results.json", result)
    lines = ["| method | ratio | top-1 before FT | top-1 after FT | macro-F1 after FT | params | MACs | prune s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:.2f} | {r['top1_before_ft']:.4f} | {r['top1_after_ft']:.4f} | "
                     f"{r['macro_f1_after_ft']:.4f} | {r['params']} | {r['macs']} | {r['prune_s']:.3f} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(f"# pyprune demo (digits)\n\nwall time {wall:.1f} s\n\n{table}\n")
    print()
    print(table)
    if edge:
        print()
        print(edge["table"])
        print(f"\nreport: {edge['report']}")
    print(f"\nresults written to {out.resolve()}/ (results.json, summary.md, base.pt, pruned_*.pt"
          f"{', edge/ (ONNX, .pte, benchmarks), report/' if edge else ''}) in {wall:.1f} s")
    return 0


def _demo_edge(base, pruned_models: dict, rows: list, out: pathlib.Path, x, args) -> dict:
    """Export the original and the pruned model, benchmark both, write the report."""
    from .bench import benchmark
    from .report import write_report

    method = "kmeans" if "kmeans" in pruned_models else next(iter(pruned_models))
    res = pruned_models[method]
    runtimes = ["eager", "onnxruntime"]
    try:
        import executorch  # noqa: F401

        runtimes.append("executorch")
    except ImportError:
        print("ExecuTorch is not installed (pip install 'pyprune[executorch]'): skipping the .pte export")
    edge_dir = out / "edge"
    bench_rows, tables, onnx_bytes = [], [], {}
    for name, model, ratio in (("original", base, 0.0), ("pruned", res.model, args.ratio)):
        # the benchmark exports (and verifies) each model once, into edge/<name>/
        b = benchmark(model, tuple(x.shape), runtimes=runtimes, threads=[1], batch_sizes=[1, 8],
                      repeats=40, max_seconds=3.0, workdir=edge_dir / name)
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
    sweep = [{"method": r["method"], "ratio": r["ratio"], "top1": r["top1_after_ft"], "top1_before_ft": r["top1_before_ft"],
              "params": r["params"], "macs": r["macs"]} for r in rows]
    report = write_report(out / "report", sweep=sweep, bench=[r for r in bench_rows if r["batch"] == 1],
                          sizes=sizes, layer_widths=res.plan.layer_widths(),
                          title="pyprune demo: digits CNN, 50% of channels",
                          notes=[f"method {method}; latency at batch 1, 1 thread; "
                                 f"{len(rows) - 1} methods compared after fine-tuning"])
    return {"bench": bench_rows, "sizes": sizes, "report": str(report), "table": "\n\n".join(tables)}


def cmd_info(args) -> int:
    from .graph import build_graph
    from .models import get_model
    from .summary import count

    kw = {"in_channels": args.in_channels} if args.model in _registry() else {}
    model = get_model(args.model, num_classes=args.num_classes, **kw).eval()
    x = torch.randn(1, args.in_channels, args.size, args.size)
    graph = build_graph(model, x)
    params, macs = count(model, graph.layers)
    print(f"{args.model}: {params:,} parameters, {macs:,} MACs at {args.in_channels}x{args.size}x{args.size}")
    print(graph.table())
    return 0


def cmd_export(args) -> int:
    from .checkpoint import load_model
    from .export import export

    model, meta = load_model(args.checkpoint)
    x = _example(meta).repeat(args.batch, 1, 1, 1)
    cal = None
    if args.int8:
        cal = _calibration(args, _spec_for(meta, args), n=8)
    res = export(model, x, args.format, args.out, dynamic_batch=args.dynamic_batch, quantize="int8" if args.int8 else None,
                 calibration=cal)
    print(f"verified in a fresh process: {res}")
    print(f"exported model written to {res.path}")
    return 0


def cmd_bench(args) -> int:
    from .bench import benchmark

    target = pathlib.Path(args.target)
    if target.suffix == ".pt":
        from .checkpoint import load_model

        model, meta = load_model(target)
        shape = (1, *args.shape) if args.shape else tuple(_example(meta).shape)
        res = benchmark(model, shape, runtimes=args.runtimes, threads=args.threads, batch_sizes=args.batch_sizes,
                        repeats=args.repeats)
    else:
        if not args.shape:
            raise ValueError("--shape C H W is needed to benchmark an exported file")
        res = benchmark(target, (1, *args.shape), threads=args.threads, batch_sizes=args.batch_sizes, repeats=args.repeats)
    print(res.table())
    if any(r["noisy"] for r in res.rows):
        print("note: rows marked noisy ran while other load used more than 25% of the machine")
    j, c = res.write(args.out)
    print(f"benchmark written to {j} and {c}")
    return 0


RUN_DEFAULTS = dict(model="digits_cnn", dataset="digits", data_dir=None, epochs=20, finetune_epochs=5,
                    method="kmeans", ratio=0.5, schedule="uniform", out="results/run", lr=2e-3, batch_size=64,
                    optimizer="adamw", seed=0, size=None, no_augment=False, weights=None, taper=1.0, round_to=None,
                    target_macs=None, target_params=None, max_steps=None)


def _ratio(v: str):
    if v == "auto":
        return v
    try:
        r = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1) or 'auto', got {v!r}")
    return r


def _add_data(p, dataset_default="digits"):
    p.add_argument("--dataset", default=dataset_default, help="digits | cifar10 | cifar100 | imagefolder (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="local data folder (cifar*, imagefolder); nothing is downloaded")
    p.add_argument("--size", type=int, default=None, help="input side (default: the data set's own)")
    p.add_argument("--no-augment", action="store_true", help="switch training augmentation off")
    p.add_argument("--seed", type=int, default=0)


def _add_train(p, epochs=20):
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")


def _add_prune(p):
    from .criteria import available_criteria

    p.add_argument("--method", default="kmeans", help=f"criterion: {', '.join(available_criteria())} (default kmeans)")
    p.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of channels removed (or 'auto' with kmeans)")
    p.add_argument("--schedule", choices=["uniform", "global", "taper"], default="uniform")
    p.add_argument("--taper", type=float, default=1.0, help="taper strength (0 = uniform)")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts at multiples of this")
    p.add_argument("--target-macs", type=float, default=None, help="MACs budget (fraction <= 1 or count) instead of --ratio")
    p.add_argument("--target-params", type=float, default=None, help="parameter budget instead of --ratio")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyprune", description="Structured pruning of CNNs: train, prune, fine-tune, evaluate.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    t = sub.add_parser("train", help="train a model (DDP under torchrun); writes OUT/model.pt and OUT/metrics.json")
    t.add_argument("--model", default="digits_cnn", help="registry or torchvision model name")
    t.add_argument("--weights", default=None, help="local weights file to start from (the head is replaced)")
    t.add_argument("--out", default="results/train")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--quiet", action="store_true")
    _add_data(t)
    _add_train(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("prune", help="prune a checkpoint; writes the pruned checkpoint")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", required=True, help="pruned checkpoint file")
    pr.add_argument("--verbose", action="store_true", help="print every layer")
    _add_prune(pr)
    _add_data(pr)
    pr.set_defaults(func=cmd_prune)

    f = sub.add_parser("finetune", help="fine-tune a (pruned) checkpoint; resumable")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--out", required=True)
    _add_data(f)
    _add_train(f, epochs=5)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("evaluate", help="top-1, macro-F1, confusion matrix, params and MACs of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", default=None, help="write the metrics JSON here")
    _add_data(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("run", help="train -> prune -> fine-tune -> evaluate from a YAML/TOML config or flags",
                       epilog="example config:\n" + EXAMPLE_CONFIG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", default=None, help="YAML or TOML file with the options below (flags given explicitly win)")
    r.add_argument("--model", default=RUN_DEFAULTS["model"])
    r.add_argument("--weights", default=None)
    r.add_argument("--out", default=RUN_DEFAULTS["out"])
    r.add_argument("--finetune-epochs", type=int, default=RUN_DEFAULTS["finetune_epochs"])
    _add_data(r)
    _add_train(r)
    _add_prune(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="several methods x ratios from one checkpoint; one results table")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--methods", nargs="+", default=["kmeans", "l1", "random"])
    s.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    s.add_argument("--finetune-epochs", type=int, default=3)
    s.add_argument("--out", default="results/sweep")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--schedule", choices=["uniform", "global", "taper"], default="uniform")
    s.add_argument("--taper", type=float, default=1.0)
    s.add_argument("--round-to", type=int, default=None)
    _add_data(s)
    s.set_defaults(func=cmd_sweep)

    d = sub.add_parser("demo", help="train a CNN on the embedded digits, prune it with several methods, compare")
    d.add_argument("--out", default="results/demo", help="results folder (default: results/demo)")
    d.add_argument("--methods", nargs="+", default=["kmeans", "l1", "random"], help="criteria to compare")
    d.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed (default 0.5)")
    d.add_argument("--epochs", type=int, default=30, help="training epochs of the base model")
    d.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs after pruning")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-edge", action="store_true", help="skip the export, benchmark and report steps")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("export", help="export a checkpoint to ONNX or ExecuTorch (.pte) and verify it")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", choices=["onnx", "executorch"], default="onnx")
    x.add_argument("--out", required=True, help="output file (.onnx or .pte)")
    x.add_argument("--dynamic-batch", action="store_true", help="ONNX: allow any batch size")
    x.add_argument("--int8", action="store_true", help="static int8 quantization (calibrated on --dataset)")
    x.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    _add_data(x)
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="latency/throughput/size of a checkpoint or exported file")
    b.add_argument("target", help="a pyprune checkpoint (.pt) or an exported file (.onnx, .pte, .pt2)")
    b.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime", "executorch"])
    b.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    b.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    b.add_argument("--shape", nargs="+", type=int, default=None, help="input shape without batch (default: from the checkpoint)")
    b.add_argument("--repeats", type=int, default=50)
    b.add_argument("--out", default="results/bench", help="folder for bench.json and bench.csv")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="parameters, MACs and prunable channel groups of a model")
    i.add_argument("model", help="registry or torchvision model name, e.g. resnet50 or resnet56_cifar")
    i.add_argument("--size", type=int, default=224, help="input side (default 224)")
    i.add_argument("--in-channels", type=int, default=3)
    i.add_argument("--num-classes", type=int, default=1000)
    i.set_defaults(func=cmd_info)
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pyprune {args.command}: error: {e}", file=sys.stderr)
        return 2
