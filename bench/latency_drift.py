"""How the machine's speed drifts for different models, and whether one model can stand in
for another's speed (no pruning).

The latency solver rescales its predictions by the machine's speed measured on the unpruned
model (`LatencyModel.measure_pair`), one round before the prediction is checked. Where the
machine drifts between rounds, the prediction misses. This script times four of the latency
bench's models (its depthwise efficientnet_b0 and mobilenet_v2, and its two CIFAR models) and
a dense model at 224, resnet18, in a loop, the models of one input size in turns in one worker
(`measure_turns`, as the solver does), and
prints per model how far its p50 moved (max - min over the median, and the largest change
between consecutive samples), and the same for the ratio of every two models of one round
(the models of one input size share a worker, the two sizes run one after the other): a
small spread of a ratio means one model's time would predict the other's drift.

Run:  python3 bench/latency_drift.py 25            # minutes, onnxruntime, 1 thread
      python3 bench/latency_drift.py 10 executorch
"""
from __future__ import annotations

import pathlib
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from pyprune.latency import LatencyTarget, measure_turns  # noqa: E402

try:
    from test_bench_latency import MODELS  # noqa: E402
except BaseException as e:  # the bench module skips (pytest's Skipped) without onnxruntime
    sys.exit(f"latency_drift: {e}")

MAKERS = {name: make for name, (make, _) in MODELS.items()}
MAKERS["resnet18"] = lambda: torchvision.models.resnet18(weights=None)
GROUPS = {  # models timed in turns in one worker, per input size
    224: ["efficientnet_b0", "mobilenet_v2", "resnet18"],
    32: ["resnet56_cifar", "vgg16_cifar"],
}


def spread(v: list[float]) -> float:
    return (max(v) - min(v)) / statistics.median(v)


def largest_step(v: list[float]) -> float:
    return max((abs(b / a - 1) for a, b in zip(v, v[1:])), default=0.0)


def main(minutes: float, runtime: str) -> None:
    torch.manual_seed(0)
    target = LatencyTarget(runtime, 1, 1)
    groups = [(size, {name: MAKERS[name]().eval() for name in group}) for size, group in GROUPS.items()]
    names = [name for _, models in groups for name in models]
    samples: list[list[float]] = []
    end = time.time() + 60 * minutes
    while time.time() < end or len(samples) < 2:
        row = []
        for size, models in groups:
            row += measure_turns(list(models.values()), torch.randn(1, 3, size, size), target)
        samples.append(row)
        print(time.strftime("%H:%M:%S"), " ".join(f"{n} {1e3 * v:.3f} ms" for n, v in zip(names, row)), flush=True)
    print(f"\n{len(samples)} samples, {runtime}, 1 thread: spread (max - min over median) / largest step")
    for i, a in enumerate(names):
        v = [s[i] for s in samples]
        print(f"{a:16s} alone {spread(v):.3f} / {largest_step(v):.3f}")
        for j, b in enumerate(names):
            if j != i:
                r = [s[i] / s[j] for s in samples]
                print(f"{'':16s} / {b:16s} {spread(r):.3f} / {largest_step(r):.3f}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 25.0, sys.argv[2] if len(sys.argv) > 2 else "onnxruntime")
