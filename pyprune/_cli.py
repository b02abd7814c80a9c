"""Implementation of the `pyprune` command line (entry point: pyprune.cli:main)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch


def _demo(args) -> int:
    from . import prune
    from .data import digits
    from .models import digits_cnn
    from .train import evaluate, fit

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    train, test = digits(seed=args.seed)
    print(f"digits: {len(train)} training and {len(test)} test images (8x8, 10 classes, shipped with scikit-learn)")
    base = digits_cnn()
    t0 = time.perf_counter()
    fit(base, train, epochs=args.epochs, lr=2e-3, seed=args.seed)
    base_metrics = evaluate(base, test)
    print(f"base model: top-1 {base_metrics['top1']:.4f}, macro-F1 {base_metrics['macro_f1']:.4f} "
          f"({time.perf_counter() - t0:.1f} s to train)")
    x = test[:1][0]
    rows = []
    from .summary import count
    from .graph import build_graph

    layers = build_graph(base, x).layers
    p0, m0 = count(base, layers)
    rows.append({"method": "unpruned", "ratio": 0.0, "top1_before_ft": base_metrics["top1"],
                 "top1_after_ft": base_metrics["top1"], "macro_f1_after_ft": base_metrics["macro_f1"],
                 "params": p0, "macs": m0, "prune_s": 0.0, "finetune_s": 0.0})
    for method in args.methods:
        t0 = time.perf_counter()
        res = prune(base, x, method=method, ratio=args.ratio, seed=args.seed)
        t_prune = time.perf_counter() - t0
        before = evaluate(res.model, test)
        t0 = time.perf_counter()
        fit(res.model, train, epochs=args.finetune_epochs, lr=1e-3, seed=args.seed)
        t_ft = time.perf_counter() - t0
        after = evaluate(res.model, test)
        rows.append({"method": method, "ratio": args.ratio, "top1_before_ft": before["top1"],
                     "top1_after_ft": after["top1"], "macro_f1_after_ft": after["macro_f1"],
                     "params": res.summary.params_after, "macs": res.summary.macs_after,
                     "prune_s": t_prune, "finetune_s": t_ft})
        print(f"{method:>8}: top-1 {before['top1']:.4f} after pruning, {after['top1']:.4f} after "
              f"{args.finetune_epochs} fine-tune epochs; params {p0} -> {res.summary.params_after}, "
              f"MACs {m0} -> {res.summary.macs_after} (pruned in {t_prune:.2f} s)")
    wall = time.perf_counter() - t_start
    result = {"dataset": "digits", "ratio": args.ratio, "epochs": args.epochs,
              "finetune_epochs": args.finetune_epochs, "seed": args.seed, "wall_s": wall, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = ["| method | ratio | top-1 before FT | top-1 after FT | macro-F1 after FT | params | MACs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:.2f} | {r['top1_before_ft']:.4f} | {r['top1_after_ft']:.4f} | "
                     f"{r['macro_f1_after_ft']:.4f} | {r['params']} | {r['macs']} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(f"# pyprune demo (digits)\n\nwall time {wall:.1f} s\n\n{table}\n")
    print()
    print(table)
    print(f"\nresults written to {out.resolve()}/results.json and summary.md ({wall:.1f} s)")
    return 0


def _info(args) -> int:
    import torchvision

    from .graph import build_graph
    from .summary import count

    if not hasattr(torchvision.models, args.model):
        print(f"pyprune info: unknown torchvision model {args.model!r}", file=sys.stderr)
        return 2
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    graph = build_graph(model, x)
    params, macs = count(model, graph.layers)
    print(f"{args.model}: {params:,} parameters, {macs:,} MACs at {args.size}x{args.size}")
    print(graph.table())
    return 0


def _kmeans_report(args) -> int:
    """Cluster every conv layer of a torchvision model and report the redundancy found."""
    import torchvision

    from . import engine

    model = getattr(torchvision.models, args.model)(weights=None)
    convs = [(n, m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1]
    ks = [max(1, int(w.shape[0] * (1 - args.ratio))) for _, w in convs]
    t0 = time.perf_counter()
    res = engine.spherical_kmeans([w for _, w in convs], ks, seed=args.seed)
    dt = time.perf_counter() - t0
    for (n, w), k, r in zip(convs, ks, res):
        print(f"{n:<40} {w.shape[0]:>5} filters -> {k:>5} clusters, mean cosine to centroid "
              f"{float(r.objective[-1]) / w.shape[0]:.3f} ({r.n_iter} iterations)")
    print(f"{len(convs)} layers clustered in {dt:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyprune", description="Structured pruning of CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a CNN on the embedded digits, prune it with several methods, compare")
    d.add_argument("--out", default="results/demo", help="results folder (default: results/demo)")
    d.add_argument("--methods", nargs="+", default=["kmeans", "l1", "random"], help="criteria to compare")
    d.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed (default 0.5)")
    d.add_argument("--epochs", type=int, default=30, help="training epochs of the base model")
    d.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs after pruning")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="parameters, MACs and prunable channel groups of a torchvision model")
    i.add_argument("model", help="torchvision model name, e.g. resnet50")
    i.add_argument("--size", type=int, default=224, help="input side (default 224)")
    i.set_defaults(func=_info)
    k = sub.add_parser("kmeans", help="cluster every conv layer of a torchvision model and report it")
    k.add_argument("model")
    k.add_argument("--ratio", type=float, default=0.5)
    k.add_argument("--seed", type=int, default=0)
    k.set_defaults(func=_kmeans_report)
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as e:
        print(f"pyprune {args.command}: error: {e}", file=sys.stderr)
        return 2
