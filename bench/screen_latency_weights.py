"""How the latency solver's channel weights trade MACs against parameters (no measurement).

The budget solver (`LatencyModel.solve`) cuts the channels that lose the least weighted score
per predicted second saved; `latency_weight=` says what a channel is worth besides its score
(`macs`, `params`, or `balanced`: the mix of the two whose plan keeps the largest smaller
share). For each of the latency bench's five models and budgets 0.6 and 0.4, this compares
the latency-targeted plan under each weight with the MACs-targeted plan (same L1 criterion)
tuned to the same *predicted* latency (`_macs_plan_at` of the bench): MACs and parameters
kept by each, and "M"/"P" where the latency-targeted plan keeps at least as many. Plans only:
nothing is cut or measured beyond what the latency model's calibration does, and the
runtime's latency table must be cached already (run the latency bench once). A screening:
the bench's comparison is at equal *measured* latency, which moves the MACs-targeted side
(unaligned widths run at other speeds than the table's multiples predict).

Run:  python3 bench/screen_latency_weights.py onnxruntime macs,params,balanced
      python3 bench/screen_latency_weights.py executorch macs,balanced resnet50,vgg16_cifar
"""
from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from pyprune.summary import CostModel  # noqa: E402

try:
    from test_bench_latency import MODELS, _macs_plan_at, budget_pruner  # noqa: E402
except BaseException as e:  # the bench module skips (pytest's Skipped) without onnxruntime
    sys.exit(f"screen_latency_weights: {e}")


def screen(runtime: str, weights: list[str], names: list[str]) -> None:
    for name in names:
        model, pruner = budget_pruner(name, runtime)
        cost = CostModel(model, pruner.latency_model().graph)

        def kept(plan):
            c = cost({gid: len(k) for gid, k in plan.keep.items()})
            return c["macs"] / cost.base["macs"], c["params"] / cost.base["params"]

        for fraction in (0.6, 0.4):
            for w in weights:
                pruner.config.latency_weight = w
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    plan = pruner.plan(target_speedup=1 / fraction)
                for note in {str(c.message) for c in caught if "pyprune" in str(c.message)}:
                    print(f"  ({note})")
                lat = pruner.latency_model()  # the one the plan used (finer multiples after a fallback)
                full = lat.raw_predict(np.ones(len(lat.graph.groups)))
                pred = lat.raw_predict(pruner._keep_fractions(plan)) / full
                m, p = kept(plan)
                mplan, mpred, _ = _macs_plan_at(pruner, lat, pred)
                mm, mp = kept(mplan)
                flags = ("M" if m >= mm else "-") + ("P" if p >= mp else "-")
                print(f"{name:16s} {fraction} {w:8s} (MACs share of the weight {pruner._latency_mix:.3g}) predicted "
                      f"{pred:.3f}: latency-targeted MACs {m:.3f} params {p:.3f} | MACs-targeted (predicted "
                      f"{mpred:.3f}) MACs {mm:.3f} params {mp:.3f}  {flags}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    screen(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",") if len(sys.argv) > 3 else list(MODELS))
