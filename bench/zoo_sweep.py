"""Coverage sweep over model libraries beyond timm and torchvision that edge users build on:
segmentation_models_pytorch (U-Net, FPN, DeepLabV3+, Segformer, ... over many encoders),
efficientnet_pytorch and ultralytics (YOLOv5/8/9/10/11 detection, segmentation, pose and
classification models from their YAML files). None of them is a dependency of pyprune:

    pip install segmentation-models-pytorch efficientnet-pytorch ultralytics opencv-python-headless
    python3 bench/zoo_sweep.py                 # every model below of the libraries installed (about 2 min)

Every model is built with random weights, its BatchNorms given random statistics, pruned by
the L2 filter norm at ratio 0.5 (one thread, seed 0) on a 160 x 160 image, and run. A row
per model, as in ``timm_sweep.py``: ok / refused / error / broken, the share of the
parameters removed, pyprune's warnings and ``cut_error`` (tests/planted.py). A library that
is not installed gives rows "skipped". Writes results/bench/zoo_sweep.jsonl, or ``--out``.
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
OUT = HERE.parent / "results" / "bench" / "zoo_sweep.jsonl"
SMP = ["Unet:resnet34", "UnetPlusPlus:resnet34", "FPN:efficientnet-b0", "PSPNet:mobilenet_v2", "DeepLabV3:resnet18",
       "DeepLabV3Plus:resnet34", "Linknet:resnet18", "MAnet:resnet18", "PAN:resnet34", "UPerNet:resnet34",
       "Segformer:mit_b0", "Unet:mit_b0", "Unet:resnext50_32x4d", "Unet:densenet121", "Unet:inceptionv4",
       "Unet:inceptionresnetv2", "Unet:xception", "Unet:se_resnet50", "Unet:senet154", "Unet:dpn68", "Unet:vgg16_bn",
       "Unet:mobileone_s0", "Unet:timm-regnetx_002", "Unet:timm-res2net50_26w_4s", "Unet:timm-gernet_s",
       "Unet:timm-efficientnet-b0", "Unet:tu-mobilenetv3_large_100", "Unet:tu-convnext_atto", "FPN:mobilenet_v2"]
EFFICIENTNET = ["efficientnet-b0", "efficientnet-b3"]
ULTRALYTICS = ["yolov5n.yaml", "yolov8n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-cls.yaml",
               "yolov9t.yaml", "yolov10n.yaml", "yolo11n.yaml"]
LIBRARIES = {"segmentation_models_pytorch": SMP, "efficientnet_pytorch": EFFICIENTNET, "ultralytics": ULTRALYTICS}


def build(library: str, name: str):
    import torch

    if library == "segmentation_models_pytorch":
        import segmentation_models_pytorch as smp

        arch, encoder = name.split(":")
        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
    elif library == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet

        model = EfficientNet.from_name(name, num_classes=10)
    else:
        from ultralytics.nn import tasks

        kind = {"seg": tasks.SegmentationModel, "pose": tasks.PoseModel, "cls": tasks.ClassificationModel}
        cls = next((c for k, c in kind.items() if name.endswith(f"-{k}.yaml")), tasks.DetectionModel)
        model = cls(name, nc=10, verbose=False)
    return model.eval(), torch.randn(1, 3, 160, 160)


def _shapes(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for v in out.values() for s in _shapes(v)]
    if isinstance(out, (list, tuple)):
        return [s for v in out for s in _shapes(v)]
    return []


def worker(library: str, name: str) -> dict:
    from bench_tables import use_checkout

    use_checkout()
    sys.path[:0] = [str(HERE.parent / "tests")]
    import torch

    import pyprune
    from planted import cut_error, randomize_bn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict = {"model": name, "library": library}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = build(library, name)
    randomize_bn(model)
    with torch.no_grad():
        want = _shapes(model(x))
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
            got = _shapes(res.model(x))
        row["status"] = "ok" if got == want else f"broken: outputs {got[:4]} instead of {want[:4]}"
    except Exception as e:  # noqa: BLE001
        row.update(status="broken", error=f"{type(e).__name__}: {str(e)[:300]}")
        return row
    try:
        with torch.no_grad():
            err = cut_error(model, x, res.plan)
        row["cut_error"] = None if err is None else float(f"{err:.2e}")
    except Exception as e:  # noqa: BLE001
        row["cut_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="the JSON-lines file (resumable)")
    ap.add_argument("--worker", nargs=2, metavar=("LIBRARY", "MODEL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    libraries = a.libraries.split(",")
    unknown = sorted(set(libraries) - set(LIBRARIES))
    if unknown:
        ap.error(f"unknown libraries {unknown}: choose from {', '.join(LIBRARIES)}")
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["library"], r["model"]) for r in map(json.loads, out.open())} if out.exists() else set()
    import importlib.util

    for library in libraries:
        installed = importlib.util.find_spec(library) is not None
        for name in LIBRARIES[library]:
            if (library, name) in done:
                continue
            if not installed:
                row = {"model": name, "library": library, "status": f"skipped: {library} is not installed"}
            else:
                cmd = [sys.executable, __file__, "--worker", library, name]
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                    row = json.loads(lines[-1]) if lines else {"model": name, "library": library,
                                                              "status": f"crashed (exit {p.returncode})",
                                                              "error": p.stderr[-400:]}
                except subprocess.TimeoutExpired:
                    row = {"model": name, "library": library, "status": "timeout"}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{library} {name}: {row['status']} {row.get('removed_params', '')} {row.get('cut_error', '')}",
                  flush=True)
    counts: collections.Counter = collections.Counter()
    for row in map(json.loads, out.open()):
        counts[(row["library"], row["status"].split(":")[0])] += 1
        err = row.get("cut_error")
        if "cut_error" in row:
            counts[("cut_error", "<= 1e-5" if isinstance(err, float) and err <= 1e-5 else
                    "none to check" if err is None else "above or failed")] += 1
    for k, v in sorted(counts.items(), key=str):
        print(k, v)


if __name__ == "__main__":
    main()
