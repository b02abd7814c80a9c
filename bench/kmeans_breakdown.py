"""Where a path's full-products k-means time goes, by layer shape, against its own 2048^3 rate.

The k-means bench (`test_bench_kmeans.py`) gives one number per model and path: the time
of 20 fixed iterations with every product recomputed over that path's 2048^3 bound. When a
path is over its bound, this script says whether the products of the model's layer shapes
run below the path's 2048^3 throughput (the kernel, or the BLAS, on skinny shapes) or the
time goes outside the iterations (normalising, packing, the final cosines).

Same workload as the bench (every Conv2d of a randomly initialised torchvision model,
K = C_out / 2, the bench's initial centroids, 20 iterations, early stop off, reuse=False),
at one thread so that every layer's iterations are timed alone (the core times each
iteration: its products, argmax and centroid update). Per path it prints the call's time
over the bound, the iterations' share, and per layer shape (n filters, K centroids, depth d)
the iterations' throughput against the path's 2048^3 throughput measured in the same run.

Run:  python3 bench/kmeans_breakdown.py densenet201 resnet152       (every path this CPU has)
      python3 bench/kmeans_breakdown.py densenet201 --paths blas avx512 --rounds 5
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]  # the checkout first

from pyprune import engine  # noqa: E402
from test_bench_kmeans import ITERS, conv_weights, cpu_model, loadavg  # noqa: E402


def one_call(ws, inits, path: str):
    t = time.perf_counter()
    res = engine.spherical_kmeans(ws, [c.shape[0] for c in inits], max_iter=ITERS, early_stop=False, threads=1,
                                  init=inits, reuse=False, kernel=path)
    return time.perf_counter() - t, [sum(s.seconds for s in r.stats) for r in res]


def breakdown(model: str, path: str, rounds: int) -> None:
    ws, inits, flops = conv_weights(model)
    gflops = 2.0 * 2048**3 / engine.gemm_seconds(2048, 1, repeats=3, kernel=path) / 1e9
    calls = [one_call(ws, inits, path) for _ in range(rounds)]
    gflops = max(gflops, 2.0 * 2048**3 / engine.gemm_seconds(2048, 1, repeats=3, kernel=path) / 1e9)
    total = statistics.median(c[0] for c in calls)
    per_layer = [statistics.median(c[1][i] for c in calls) for i in range(len(ws))]
    iters = sum(per_layer)
    bound = flops / (gflops * 1e9)
    print(f"\n{model} / {path}: 2048^3 {gflops:.1f} GFLOP/s at 1 thread; call {total:.3f} s = "
          f"{total / bound:.2f} x bound; iterations {iters:.3f} s = {iters / bound:.2f} x bound "
          f"({iters / total:.0%} of the call); outside them {total - iters:.3f} s")
    shapes: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for w, c, sec in zip(ws, inits, per_layer):
        key = (w.shape[0], c.shape[0], w.shape[1])
        shapes[key][0] += 1
        shapes[key][1] += 2.0 * w.shape[0] * c.shape[0] * w.shape[1] * ITERS
        shapes[key][2] += sec
    print("| n | K | d | layers | share of the flops | share of the iterations' time | GFLOP/s | "
          "over the 2048^3 rate |")
    print("|---|---|---|---|---|---|---|---|")
    for (n, k, d), (count, fl, sec) in sorted(shapes.items(), key=lambda kv: -kv[1][1])[:12]:
        rate = fl / sec / 1e9
        print(f"| {n} | {k} | {d} | {count} | {fl / flops:.1%} | {sec / iters:.1%} | {rate:.1f} | "
              f"{gflops / rate:.2f} |")
    rest = sorted(shapes.items(), key=lambda kv: -kv[1][1])[12:]
    if rest:
        fl, sec = sum(v[1] for _, v in rest), sum(v[2] for _, v in rest)
        print(f"| (the other {len(rest)} shapes) | | | {sum(v[0] for _, v in rest)} | {fl / flops:.1%} | "
              f"{sec / iters:.1%} | {fl / sec / 1e9:.1f} | {gflops / (fl / sec / 1e9):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="torchvision model names (resnet152, densenet201, ...)")
    ap.add_argument("--paths", nargs="+", default=engine.gemm_kernels(),
                    help="products paths (default: every one this CPU has: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="calls per model and path (median taken)")
    args = ap.parse_args()
    unknown = [p for p in args.paths if p not in engine.gemm_kernels()]
    if unknown:
        sys.exit(f"kmeans_breakdown: this CPU has no {', '.join(unknown)} path; it has {engine.gemm_kernels()}")
    print(f"CPU: {cpu_model()}; load average {loadavg()}")
    for model in args.models:
        for path in args.paths:
            breakdown(model, path, args.rounds)
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
