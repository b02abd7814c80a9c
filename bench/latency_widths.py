"""How well the latency model predicts a model at uniform widths (no solver).

For one of the latency bench's models on one runtime (1 thread, batch 1), the model is cut
to the same share of every prunable group's channels (1.0, 0.85, 0.7, 0.55, 0.4, in
multiples of the runtime's alignment) and, with ``--plan``, to the plan of
``target_speedup=1/0.6``. They are timed in turns with the unpruned model in one worker
(`measure_turns`), ``--repeats`` times, and each is printed with its weights, the sum of its
layers' table times, what the table leaves out (measured minus that sum), and predicted over
measured at the machine speed of the same turns (the unpruned model's measured over its
prediction). A rest that falls with the weights and then stays flat is weights streaming
past the cache (the model's ``c_weight``); ratios far from 1 at the calibration's widths
mean the calibration was measured in another hour of the machine.

Run:  python3 bench/latency_widths.py vgg16_cifar
      python3 bench/latency_widths.py resnet56_cifar --runtime executorch --repeats 2 --plan
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

try:
    from test_bench_latency import MODELS, budget_pruner  # noqa: E402
except BaseException as e:  # the bench module skips (pytest's Skipped) without onnxruntime
    sys.exit(f"latency_widths: {e}")

from pyprune.surgery import apply_keep  # noqa: E402

SHARES = (1.0, 0.85, 0.7, 0.55, 0.4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "executorch"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plan", action="store_true", help="also the plan of target_speedup=1/0.6")
    a = ap.parse_args()
    model, pruner = budget_pruner(a.model, a.runtime)
    lat = pruner.latency_model()
    graph = lat.graph
    masks = [lat.share_keep(s) if s < 1 else np.ones(graph.n_units, bool) for s in SHARES]
    names = [f"{s:.2f}" for s in SHARES]
    fracs = [np.array([m[g.units].mean() for g in graph.groups]) for m in masks]
    models = [model] + [apply_keep(model, graph, m) for m in masks[1:]]
    if a.plan:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = pruner.prune(target_speedup=1 / 0.6)
        models.append(res.model)
        fracs.append(pruner._keep_fractions(res.plan))
        names.append("plan 0.6")
    print(f"{a.model} on {lat.target}: r0 {1e3 * lat.r0:+.3f} ms, {1e9 * lat.r_act:+.3f} ms per million output "
          f"elements, {1e9 * lat.r_weight:+.3f} ms per million weights past {lat.c_weight / 1e6:.2f} million")
    for rep in range(a.repeats):
        secs = lat._turns(models)
        speed = secs[0] / lat.raw_predict(fracs[0])
        for name, kf, s in zip(names, fracs, secs):
            t, _, w = lat.terms(kf)
            print(f"{rep} {name:>8}: weights {w / 1e6:7.3f}M  tables {1e3 * t:8.3f} ms  measured {1e3 * s:8.3f} ms  "
                  f"rest {1e3 * (s - t):+8.3f} ms  predicted/measured {speed * lat.raw_predict(kf) / s:.3f}", flush=True)


if __name__ == "__main__":
    main()
