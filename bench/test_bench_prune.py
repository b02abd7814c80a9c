"""End-to-end structured prune (trace + groups + L2 ranking + surgery) at 50%:
pyprune vs Torch-Pruning (when installed), same thread count, in the same group.

Workload: randomly initialised torchvision resnet50, resnet152, densenet201, vgg16_bn,
mobilenet_v2, example input 1x3x224x224, ratio 0.5, classifier ignored. Both prune in place
(Torch-Pruning's only mode); building the model is outside the timing. Every benchmark
checks the pruned model runs and keeps its output shape.

Also `prune(method="kmeans")` against `prune(method="l2")` end to end at 2 threads
(resnet152, densenet201): what clustering and merging cost on top of a norm ranking.

Run:  make bench   (or: python3 -m pytest bench/test_bench_prune.py -q)
"""
from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch
import torchvision

import pyprune
from bench_tables import record

MODELS = {
    "resnet50": lambda m: m.fc,
    "resnet152": lambda m: m.fc,
    "densenet201": lambda m: m.classifier,
    "vgg16_bn": lambda m: m.classifier[6],
    "mobilenet_v2": lambda m: m.classifier[1],
}
THREADS = 1
_models: dict = {}
_times: dict = {}


def base(name):
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = getattr(torchvision.models, name)(weights=None).eval()
    return _models[name]


def run_pyprune(model, x):
    return pyprune.prune(model, x, method="l2", ratio=0.5, inplace=True, threads=THREADS).model


def run_tp(model, x, classifier):
    import torch_pruning as tp

    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[classifier])
    pruner.step()
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["torch_pruning", "pyprune"])
def test_prune_end_to_end(benchmark, method, name):
    if method == "torch_pruning":
        pytest.importorskip("torch_pruning", reason="Torch-Pruning is the baseline: pip install torch-pruning")
    benchmark.group = f"prune-{name}"
    x = torch.randn(1, 3, 224, 224)
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        def setup():
            m = copy.deepcopy(base(name))
            return ((m, x) if method == "pyprune" else (m, x, MODELS[name](m))), {}

        fn = run_pyprune if method == "pyprune" else run_tp
        rounds = 1 if (method == "torch_pruning" and name == "densenet201") else 3
        pruned = benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1)
        with torch.no_grad():
            y = pruned(x)
    finally:
        torch.set_num_threads(old)
    assert y.shape == (1, 1000)
    n0 = sum(p.numel() for p in base(name).parameters())
    n1 = sum(p.numel() for p in pruned.parameters())
    assert n1 < 0.65 * n0, f"{method} removed only {1 - n1 / n0:.1%} of {name}'s parameters"
    t = benchmark.stats.stats.min
    _times[(name, method)] = t
    row = dict(model=name, method=method, threads=THREADS, seconds=t, params_cut=1 - n1 / n0)
    if (name, "torch_pruning") in _times and method == "pyprune":
        row["speedup_vs_torch_pruning"] = _times[(name, "torch_pruning")] / t
    record("prune_end_to_end", **row)


KMEANS_MODELS = ("resnet152", "densenet201")
KMEANS_THREADS = 2


KMEANS_ROUNDS = 5


@pytest.mark.parametrize("name", KMEANS_MODELS)
def test_kmeans_end_to_end_vs_l2(benchmark, name):
    """`prune(method="kmeans")` (clustering, early stop on, merging) against
    `prune(method="l2")`, whole call (trace included), same model, 2 threads: the cost of
    clustering end to end. The two alternate, round by round (the l2 call in each round's
    untimed setup, timed by hand), so a machine that slows down for a while slows both;
    the ratio is of the best rounds. Also records the k-means iterations per layer."""
    benchmark.group = f"kmeans-vs-l2-{name}"
    x = torch.randn(1, 3, 224, 224)
    l2_times: list = []

    def run(method):
        return pyprune.prune(base(name), x, method=method, ratio=0.5, seed=0, threads=KMEANS_THREADS)

    def setup():
        t0 = time.perf_counter()
        res = run("l2")
        l2_times.append(time.perf_counter() - t0)
        assert res.summary.params_after < 0.65 * res.summary.params_before
        return (), {}

    old = torch.get_num_threads()
    torch.set_num_threads(KMEANS_THREADS)
    try:
        res = benchmark.pedantic(lambda: run("kmeans"), setup=setup, rounds=KMEANS_ROUNDS, iterations=1)
        with torch.no_grad():
            y = res.model(x)
    finally:
        torch.set_num_threads(old)
    assert y.shape == (1, 1000) and res.summary.params_after < 0.65 * res.summary.params_before
    t, l2 = benchmark.stats.stats.min, min(l2_times)
    iters = sorted(res.plan.iterations.values())
    assert iters and res.merge is not None and res.merge.merged > 0
    record("kmeans_end_to_end", model=name, threads=KMEANS_THREADS, rounds=KMEANS_ROUNDS, l2_s=l2, kmeans_s=t,
           ratio=t / l2, ratio_of_medians=benchmark.stats.stats.median / statistics.median(l2_times),
           plan_s=res.seconds["plan"], surgery_s=res.seconds["surgery"], layers=len(iters),
           iterations_median=iters[len(iters) // 2], iterations_max=iters[-1])
