"""One model, one tool, in a process of its own (a crash or a hang cannot take the run
with it): build a timm model with random weights, prune it at ratio 0.5 by the L2 norm of
the filters (classifier outputs kept), check that the pruned model runs and keeps its
output shape, and print one JSON line.

    python3 bench/coverage_worker.py <timm model> <pyprune|torch_pruning> [side]
"""
from __future__ import annotations

import json
import sys
import time
import warnings

from bench_tables import use_checkout


def main() -> None:
    use_checkout()
    name, tool = sys.argv[1], sys.argv[2]
    side = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    import timm
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    side = side or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        want = model(x).shape
    before = sum(p.numel() for p in model.parameters())
    row = {"model": name, "tool": tool, "side": side, "params": before}
    caught = []
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if tool == "pyprune":
                import pyprune

                small = pyprune.prune(model, x, method="l2", ratio=0.5, threads=1).model
            else:
                import torch_pruning as tp

                head = model.get_classifier()
                pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                              pruning_ratio=0.5, ignored_layers=[head] if head is not None else [])
                pruner.step()
                small = model
    except Exception as e:  # noqa: BLE001 - a refusal is a result
        row.update(status="refused", error=f"{type(e).__name__}: {str(e)[:300]}")
        print(json.dumps(row))
        return
    row["seconds"] = time.perf_counter() - t0
    row["warnings"] = [str(w.message)[:300] for w in caught if "pyprune" in str(w.message)][:3]
    after = sum(p.numel() for p in small.parameters())
    row["removed"] = 1 - after / before
    try:
        with torch.no_grad():
            got = small(torch.randn(2, 3, side, side)).shape
        row["status"] = "ok" if got[1:] == want[1:] else f"wrong output shape {tuple(got)}"
    except Exception as e:  # noqa: BLE001 - a broken model is a result too
        row.update(status="broken", error=f"{type(e).__name__}: {str(e)[:300]}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
