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

With ``--windows`` it asks instead whether longer timings move less: one model, exported
once, timed in turns with itself (a pair, as the solver times the pruned model beside the
unpruned one) with at least each window's seconds of runs, the windows taken in turn, and
per window the spread (standard deviation over mean) and the largest and mean change
between consecutive timings of that window (the error of predicting one timing by the
one before, as the solver's next round does).

Run:  python3 bench/latency_drift.py 25            # minutes, onnxruntime, 1 thread
      python3 bench/latency_drift.py 10 executorch
      python3 bench/latency_drift.py --windows 2,6 --samples 12 mobilenet_v2   # about 3 minutes
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from pyprune.bench import _prepare  # noqa: E402
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


def windows(name: str, seconds: list[float], samples: int, runtime: str) -> None:
    torch.manual_seed(0)
    size = MODELS[name][1]
    shape = (1, 3, size, size)
    target = LatencyTarget(runtime, 1, 1)
    with tempfile.TemporaryDirectory(prefix="pyprune-drift-") as tmp:
        files = _prepare(MAKERS[name]().eval(), shape, [runtime], [1], pathlib.Path(tmp), [])[runtime]
        path = str(files.get("*", files.get("1")))
        times: dict[float, list[float]] = {w: [] for w in seconds}
        for _ in range(samples):
            for w in seconds:
                t = measure_turns([path, path], torch.randn(*shape), target, min_seconds=w,
                                  max_seconds=max(12.0, 2 * w))[0]
                times[w].append(t)
                print(time.strftime("%H:%M:%S"), f"{w:g} s: {1e3 * t:.3f} ms", flush=True)
    print(f"\n{name}, {runtime}, 1 thread, {samples} timings per window: window / mean ms / spread (std over "
          "mean) / largest and mean change between consecutive timings")
    for w, v in times.items():
        steps = [abs(b / a - 1) for a, b in zip(v, v[1:])]
        print(f"{w:5g} s  {1e3 * statistics.mean(v):.3f}  {statistics.pstdev(v) / statistics.mean(v):.3f}  "
              f"{max(steps):.3f}  {statistics.mean(steps):.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("minutes", nargs="?", default="25", help="minutes of samples (or, with --windows, the model)")
    ap.add_argument("runtime", nargs="?", default="onnxruntime")
    ap.add_argument("--windows", help="seconds per timing to compare, comma-separated (e.g. 2,6,8,12)")
    ap.add_argument("--samples", type=int, default=10, help="timings per window (with --windows)")
    a = ap.parse_args()
    if a.windows:
        windows(a.minutes, [float(w) for w in a.windows.split(",")], a.samples, a.runtime)
    else:
        main(float(a.minutes), a.runtime)
