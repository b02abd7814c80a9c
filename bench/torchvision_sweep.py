"""Coverage sweep over torchvision's model builders: classification, segmentation, video,
detection, optical flow and the quantizable classifiers (as float models), each model in a
process of its own.

Every model is built with random weights (detection and segmentation with 5 classes and
no backbone weights), pruned by the L2 filter norm at ratio 0.5 (one thread, seed 0), and
the pruned model is run on the example input. A row per model: ok / refused (pyprune
raised its own error before cutting) / error (anything else: a bug) / broken (the pruned
model fails, or its outputs change shape), the share of the parameters removed, pyprune's
warnings, and ``cut_error``: that very cut with zeros planted in exactly the channels it
drops, the relative change of the output (tests/planted.py). Detection models give
detections picked by NMS over scores that tie within rounding when the weights are random,
so their ``cut_error`` compares the outputs of the heads instead, the RoI heads fed the same
proposals (tests/planted.py ``detection_heads_error``; a head whose outputs change shape
fails it).

    python3 bench/torchvision_sweep.py                 # every builder up to --max-params (about 15 min)
    python3 bench/torchvision_sweep.py --families detection,segmentation

Writes results/bench/torchvision_sweep.jsonl, or ``--out`` (resumable: models already there
are skipped) and prints the counts.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import subprocess
import sys
import time
import traceback
import warnings

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "bench" / "torchvision_sweep.jsonl"
FAMILIES = ("classification", "segmentation", "video", "detection", "optical_flow", "quantization")


def _module(family: str):
    import torchvision

    return torchvision.models if family == "classification" else getattr(torchvision.models, family)


def build(name: str, family: str):
    import torch
    import torchvision

    kw: dict = {"weights": None}
    if family in ("detection", "segmentation"):
        kw.update(weights_backbone=None, num_classes=5)
    elif family == "quantization":
        kw.update(quantize=False)
    model = torchvision.models.get_model(name, **kw).eval()
    if family == "video":
        frames, side = (8, 112) if name in ("r3d_18", "mc3_18", "r2plus1d_18") else (16, 224)
        x = (torch.randn(1, 3, frames, side, side),)
    elif family == "optical_flow":
        x = (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
    elif family == "detection":
        x = ([torch.rand(3, 224, 224)],)
    elif family == "segmentation":
        x = (torch.randn(1, 3, 128, 128),)
    else:
        side = 299 if "inception" in name else 224 if any(s in name for s in ("vit", "swin", "maxvit")) else 160
        x = (torch.randn(1, 3, side, side),)
    return model, x


def models(families: list[str], max_params: float) -> list[tuple[str, str]]:
    import torch
    import torchvision

    out = []
    for family in families:
        for name in torchvision.models.list_models(_module(family)):
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    m, _ = build(name, family)
            except Exception:  # noqa: BLE001 - a builder that cannot run on meta: sweep it anyway
                out.append((name, family))
                continue
            if sum(p.numel() for p in m.parameters()) <= max_params:
                out.append((name, family))
    return out


def _flat(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def _shapes(out, family: str) -> list:
    # detections: how many boxes NMS keeps depends on the scores; their other dims must stay
    return [tuple(t.shape[1:]) if family == "detection" else tuple(t.shape) for t in _flat(out)]


def worker(name: str, family: str) -> dict:
    from bench_tables import use_checkout

    use_checkout()
    sys.path[:0] = [str(HERE.parent / "tests")]
    import torch

    import pyprune
    from planted import cut_error, detection_heads_error, randomize_bn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict = {"model": name, "family": family}
    model, x = build(name, family)
    try:
        with torch.no_grad():
            want = _shapes(model(*x), family)
    except Exception as e:  # noqa: BLE001
        row.update(status="no-forward", error=f"{type(e).__name__}: {str(e)[:200]}")
        return row
    randomize_bn(model)
    before = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = pyprune.prune(model, x, method="l2", ratio=0.5, threads=1, seed=0)
    except Exception as e:  # noqa: BLE001 - a refusal is a result, anything else a bug
        row["status"] = "refused" if type(e).__module__.startswith("pyprune") else "error"
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if row["status"] == "error":
            row["traceback"] = traceback.format_exc()[-800:]
        return row
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["warnings"] = [str(w.message)[:240] for w in caught if str(w.message).startswith("pyprune")][:3]
    row["removed_params"] = round(1 - sum(p.numel() for p in res.model.parameters()) / before, 3)
    try:
        with torch.no_grad():
            got = _shapes(res.model(*x), family)
        row["status"] = "ok" if got == want else f"broken: outputs {got[:4]} instead of {want[:4]}"
    except Exception as e:  # noqa: BLE001
        row.update(status="broken", error=f"{type(e).__name__}: {str(e)[:300]}")
        return row
    try:
        with torch.no_grad():
            err = max(detection_heads_error(model, x[0], res.plan).values()) if family == "detection" \
                else cut_error(model, x, res.plan)
        row["cut_error"] = None if err is None else float(f"{err:.2e}")
    except Exception as e:  # noqa: BLE001
        row["cut_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--max-params", type=float, default=100e6)
    ap.add_argument("--timeout", type=int, default=400, help="seconds per model")
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="the JSON-lines file (resumable)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "FAMILY"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    families = a.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}: choose from {', '.join(FAMILIES)}")
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["model"] for line in out.open()} if out.exists() else set()
    todo = [m for m in models(families, a.max_params) if m[0] not in done]
    print(f"{len(todo)} models to sweep ({len(done)} done)", flush=True)
    for i, (name, family) in enumerate(todo, 1):
        cmd = [sys.executable, __file__, "--worker", name, family]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": name, "family": family,
                                                      "status": f"crashed (exit {p.returncode})",
                                                      "error": p.stderr[-400:]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "family": family, "status": "timeout"}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(todo)}] {family} {name}: {row['status']} {row.get('removed_params', '')} "
              f"{row.get('cut_error', '')}", flush=True)
    counts: collections.Counter = collections.Counter()
    for line in out.open():
        row = json.loads(line)
        counts[(row.get("family"), row["status"].split(":")[0])] += 1
        err = row.get("cut_error")
        if "cut_error" in row:
            counts[("cut_error", "<= 1e-5" if isinstance(err, float) and err <= 1e-5 else
                    "none to check" if err is None else "above or failed")] += 1
    for k, v in sorted(counts.items(), key=str):
        print(k, v)


if __name__ == "__main__":
    main()
