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

import pathlib
import sys
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

    from planted import cut_error, detection_heads_error, randomize_bn
    from sweep_rows import prune_row

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

    def check(model, x, plan):
        return max(detection_heads_error(model, x[0], plan).values()) if family == "detection" \
            else cut_error(model, x, plan)

    return prune_row(row, model, x, want, lambda out: _shapes(out, family), check)


def main() -> None:
    from sweep_rows import parse_sweep_args, print_counts, run_workers

    parsed = parse_sweep_args(__doc__, worker, ("MODEL", "FAMILY"), "families", FAMILIES, OUT, 400,
                              extra=(("--max-params", {"type": float, "default": 100e6}),))
    if parsed is None:
        return
    a, families = parsed
    jobs = [({"model": name, "family": family}, [name, family]) for name, family in models(families, a.max_params)]
    run_workers(__file__, jobs, a.out, a.timeout)
    print_counts(a.out, "family")


if __name__ == "__main__":
    main()
