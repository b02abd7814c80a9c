"""Two builds of the core on the k-means bench's workload, in one process, in turns.

A change to the core worth a few percent is lost in the drift between two bench runs (the
2048^3 bound and a model's time move by 2-5% from one run to the next on a shared machine).
Here both extensions are loaded side by side and called alternately (ABBA order) on the
same arrays: every conv of a torchvision model, K = C_out / 2, fixed iterations from the
same initial centroids (the workload of `test_bench_kmeans.py`, the "pyprune_full" rows by
default). Printed: each build's time over the path's 2048^3 bound (best of three
measurements, so absolute ratios read higher than the bench's best-of-run bound would
give), and the median over rounds of the time ratio other / this, which is what to quote.

"this" is the checkout's `pyprune/_core*.so` (this script puts the repository root first on
the path; `make setup` or a copy of a build puts the extension there); "other" is the
`_core*.so` in the folder given, e.g. a build of an older commit:

    git worktree add /tmp/old <commit>
    cmake -S /tmp/old -B /tmp/oldbuild -DCMAKE_BUILD_TYPE=Release \
        -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir) && cmake --build /tmp/oldbuild -j2
    python3 bench/compare_builds.py /tmp/oldbuild --path blas --threads 2

The two builds must take the same arguments in `_core.spherical_kmeans`.
"""
from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]  # the checkout first

from pyprune import _core, engine  # noqa: E402


def load_other(folder: str):
    found = sorted(glob.glob(str(pathlib.Path(folder) / "_core*.so")))
    if not found:
        sys.exit(f"compare_builds: no _core*.so in {folder}")
    # its own package name, so it loads beside pyprune._core (the init symbol is PyInit__core)
    loader = importlib.machinery.ExtensionFileLoader("pyprune_other._core", found[0])
    spec = importlib.util.spec_from_file_location("pyprune_other._core", found[0], loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module, found[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="folder holding the other build's _core*.so")
    ap.add_argument("--model", default="densenet201", help="torchvision model (default densenet201)")
    ap.add_argument("--path", default="blas", help="products path: blas, avx512, avx2, portable")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=25, help="calls per build (default 25)")
    ap.add_argument("--reuse", action="store_true", help="reuse=True (the 'pyprune' rows) instead of full products")
    args = ap.parse_args(argv)

    from test_bench_kmeans import conv_weights

    other, other_path = load_other(args.other)
    ws, inits, _ = conv_weights(args.model)
    arrays = [w.numpy() for w in ws]
    ks = [c.shape[0] for c in inits]
    ins = [c.numpy() for c in inits]
    flops = sum(2.0 * w.shape[0] * k * w.shape[1] * args.iters for w, k in zip(ws, ks))
    bound = max(2.0 * 2048**3 / engine.gemm_seconds(2048, args.threads, repeats=3, kernel=args.path)
                for _ in range(3))
    builds = {"this": _core, "other": other}
    times: dict[str, list[float]] = {"this": [], "other": []}
    for r in range(-1, args.rounds):  # round -1 warms both up and is not counted
        order = ("this", "other") if r % 2 == 0 else ("other", "this")
        for name in order:
            t = time.perf_counter()
            builds[name].spherical_kmeans(arrays, ks, args.iters, False, 0, args.threads, ins, args.reuse,
                                          args.path, True)
            if r >= 0:
                times[name].append(time.perf_counter() - t)
    print(f"{args.model}, path {args.path}, {args.threads} threads, {args.iters} iterations, "
          f"reuse={args.reuse}, {args.rounds} rounds\n  this  = {_core.__file__}\n  other = {other_path}")
    for name in ("this", "other"):
        x = [t * bound / flops for t in times[name]]
        print(f"  {name:5s} x bound: min {min(x):.3f}  median {statistics.median(x):.3f}")
    ratio = statistics.median(o / t for o, t in zip(times["other"], times["this"]))
    print(f"  median time other / this: {ratio:.3f}")


if __name__ == "__main__":
    main()
