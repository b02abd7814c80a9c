"""How the latency solver's channel weights trade MACs against parameters (no measurement).

The budget solver (`LatencyModel.solve`) cuts the channels that lose the least weighted score
per predicted second saved; `pyprune.prune` weights each group's normalised scores by the MACs
one of its channels carries (`_cost_per_unit`). This script swaps that weight for others and,
for each of the latency bench's five models and budgets 0.6 and 0.4, compares the
latency-targeted plan with the MACs-targeted plan (same L1 criterion) tuned to the same
*predicted* latency (`_macs_plan_at` of the bench): MACs and parameters kept by each, and
"M"/"P" where the latency-targeted plan keeps at least as many. Plans only: nothing is cut
or measured beyond what the latency model's calibration does, and the runtime's latency
table must be cached already (run the latency bench once). A screening: the bench's
comparison is at equal *measured* latency, which moves the MACs-targeted side (unaligned
widths run at other speeds than the table's multiples predict).

Weights: macs (what prune uses), none (every group alike), params (the parameters a channel
holds), mixed (the mean of the macs and params weights).

Run:  python3 bench/screen_latency_weights.py onnxruntime macs,none,params,mixed
      python3 bench/screen_latency_weights.py executorch macs,mixed resnet50,vgg16_cifar
"""
from __future__ import annotations

import importlib
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

prune_module = importlib.import_module("pyprune.prune")
PER_UNIT = prune_module._cost_per_unit  # (cost, groups, kind="macs"): what prune weights by


def params_per_unit(cost: CostModel, groups) -> dict[int, float]:
    return PER_UNIT(cost, groups, "params")


def mixed(cost: CostModel, groups) -> dict[int, float]:
    a, b = PER_UNIT(cost, groups), params_per_unit(cost, groups)
    return {gid: 0.5 * (a[gid] + b[gid]) for gid in a}


WEIGHTS = {"macs": PER_UNIT, "none": lambda cost, groups: {g.id: 1.0 for g in groups},
           "params": params_per_unit, "mixed": mixed}


def screen(runtime: str, weights: list[str], names: list[str]) -> None:
    for name in names:
        model, pruner = budget_pruner(name, runtime)
        cost = CostModel(model, pruner.latency_model().graph)

        def kept(plan):
            c = cost({gid: len(k) for gid, k in plan.keep.items()})
            return c["macs"] / cost.base["macs"], c["params"] / cost.base["params"]

        for fraction in (0.6, 0.4):
            for w in weights:
                prune_module._cost_per_unit = WEIGHTS[w]
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        plan = pruner.plan(target_speedup=1 / fraction)
                finally:
                    prune_module._cost_per_unit = PER_UNIT
                for note in {str(c.message) for c in caught if "pyprune" in str(c.message)}:
                    print(f"  ({note})")
                lat = pruner.latency_model()  # the one the plan used (finer multiples after a fallback)
                full = lat.raw_predict(np.ones(len(lat.graph.groups)))
                pred = lat.raw_predict(pruner._keep_fractions(plan)) / full
                m, p = kept(plan)
                mplan, mpred, _ = _macs_plan_at(pruner, lat, pred)
                mm, mp = kept(mplan)
                flags = ("M" if m >= mm else "-") + ("P" if p >= mp else "-")
                print(f"{name:16s} {fraction} {w:6s} predicted {pred:.3f}: latency-targeted MACs {m:.3f} params "
                      f"{p:.3f} | MACs-targeted (predicted {mpred:.3f}) MACs {mm:.3f} params {mp:.3f}  {flags}",
                      flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    screen(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",") if len(sys.argv) > 3 else list(MODELS))
