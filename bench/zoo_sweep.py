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

import pathlib
import sys
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

    from planted import cut_error, randomize_bn
    from sweep_rows import prune_row

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = build(library, name)
    randomize_bn(model)
    with torch.no_grad():
        want = _shapes(model(x))
    return prune_row({"model": name, "library": library}, model, (x,), want, _shapes, cut_error)


def main() -> None:
    import importlib.util

    from sweep_rows import parse_sweep_args, print_counts, run_workers

    parsed = parse_sweep_args(__doc__, worker, ("LIBRARY", "MODEL"), "libraries", LIBRARIES, OUT, 300)
    if parsed is None:
        return
    a, libraries = parsed
    jobs = []
    for library in libraries:
        missing = importlib.util.find_spec(library) is None
        for name in LIBRARIES[library]:
            key = {"model": name, "library": library}
            jobs.append(({**key, "status": f"skipped: {library} is not installed"} if missing else key,
                         [library, name]))
    run_workers(__file__, jobs, a.out, a.timeout)
    print_counts(a.out, "library")


if __name__ == "__main__":
    main()
