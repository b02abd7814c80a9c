"""Does pruning pay off on an edge runtime? onnxruntime latency of the unpruned vs the
pyprune-pruned model (50% of channels, L2), 1 thread, batch 1, measured in one run.

Acceptance: latency speedup >= 0.8 x the MACs reduction, for a ResNet-50 at 224x224 and a
CIFAR VGG-16 at 32x32. Each model is exported to ONNX (and verified) and timed in its own
worker process; the rows record how busy the rest of the machine was.

Run:  python3 -m pytest bench/test_bench_edge.py -q
"""
from __future__ import annotations

import pytest
import torch
import torchvision

import pyprune
from bench_tables import record
from pyprune.bench import benchmark
from pyprune.models import get_model

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'pyprune[onnx]'")

CASES = {
    "resnet50": (lambda: torchvision.models.resnet50(weights=None).eval(), (1, 3, 224, 224)),
    "vgg16_cifar": (lambda: get_model("vgg16_cifar", num_classes=10).eval(), (1, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_speedup_follows_macs(name, tmp_path):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make()
    res = pyprune.prune(model, torch.randn(shape), method="l2", ratio=0.5)
    kw = dict(runtimes=["onnxruntime"], threads=[1], batch_sizes=[1], repeats=60, max_seconds=15)
    b0 = benchmark(model, shape, workdir=tmp_path / "orig", **kw).rows[0]
    b1 = benchmark(res.model, shape, workdir=tmp_path / "pruned", **kw).rows[0]
    speedup = b0["p50_s"] / b1["p50_s"]
    macs_cut = res.summary.macs_before / res.summary.macs_after
    record("edge_onnxruntime", model=name, p50_ms_unpruned=1e3 * b0["p50_s"], p50_ms_pruned=1e3 * b1["p50_s"],
           speedup=speedup, macs_reduction=macs_cut, speedup_over_macs=speedup / macs_cut,
           onnx_mb_unpruned=b0["size_bytes"] / 1e6, onnx_mb_pruned=b1["size_bytes"] / 1e6,
           other_load=max(b0["other_load"], b1["other_load"]))
    assert speedup >= 0.8 * macs_cut, f"{name}: {speedup:.2f}x faster for a {macs_cut:.2f}x MACs cut"
