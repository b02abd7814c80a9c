"""Coverage of Hugging Face transformers' image classifiers (random weights, default
configs, 10 labels): each pruned at ratio 0.5 by L2 and by k-means in a process of its own
(one thread, seed 0), the pruned model run, that very L2 cut checked with zeros planted in
exactly the channels it drops (tests/planted.py ``cut_error``), and pyprune's warnings kept.
transformers is not a dependency of pyprune: ``pip install transformers`` to run this.

    python3 bench/hf_sweep.py                 # every family below (about 3 minutes)
    python3 bench/hf_sweep.py Segformer Cvt   # some of them

Prints a markdown table (model, input side, share of the parameters removed by each
method, cut_error, the first warning).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import warnings

HERE = pathlib.Path(__file__).resolve().parent
# family -> input side (the vision transformers' position tables want 224)
FAMILIES = {
    "Bit": 64, "ConvNext": 64, "ConvNextV2": 64, "Cvt": 224, "EfficientNet": 224, "FocalNet": 224, "HGNetV2": 64,
    "Levit": 224, "MobileNetV1": 64, "MobileNetV2": 64, "MobileViT": 224, "MobileViTV2": 224, "PoolFormer": 64,
    "PvtV2": 224, "RegNet": 64, "ResNet": 64, "Segformer": 64, "SwiftFormer": 224, "Swin": 224, "Swinv2": 224,
    "TextNet": 64,
}


def worker(family: str, side: int) -> dict:
    from bench_tables import use_checkout

    use_checkout()
    sys.path[:0] = [str(HERE.parent / "tests")]
    import torch
    import transformers

    import pyprune
    from planted import cut_error, randomize_bn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = getattr(transformers, family + "Config")(num_labels=10)
    model = getattr(transformers, family + "ForImageClassification")(config).eval()  # returns a ModelOutput
    with torch.no_grad():  # some classifiers start at zero: the planted check would compare zeros
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0.0, 0.02)
    randomize_bn(model)  # BN statistics as a trained model has them (fresh ones can zero the output)
    x = torch.randn(2, 3, side, side)
    before = sum(p.numel() for p in model.parameters())
    row: dict = {"model": family, "side": side}
    for method in ("l2", "kmeans"):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = pyprune.prune(model, x[:1], method=method, ratio=0.5, threads=1, seed=0)
            with torch.no_grad():
                ok = res.model(x).logits.shape == model(x).logits.shape
            row[method] = round(1 - sum(p.numel() for p in res.model.parameters()) / before, 3) if ok else "broken"
            if method == "l2":
                try:
                    err = cut_error(model, x[:1], res.plan)
                    row["cut_error"] = "-" if err is None else f"{err:.1e}"
                except Exception as e:  # noqa: BLE001 - inexact groups left whole can leave a cut that does not fit
                    row["cut_error"] = f"{type(e).__name__}"
                row["warning"] = next((str(w.message)[:160] for w in caught if str(w.message).startswith("pyprune")), "")
        except Exception as e:  # noqa: BLE001 - a refusal is a result too
            row[method] = ("refused: " if type(e).__module__.startswith("pyprune") else "error: ") + str(e)[:120]
    return row


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
        return
    names = sys.argv[1:] or list(FAMILIES)
    print("| model | side | L2 removed | k-means removed | L2 cut_error | first warning |")
    print("|---|---|---|---|---|---|")
    for name in names:
        p = subprocess.run([sys.executable, __file__, "--worker", name, str(FAMILIES.get(name, 224))],
                           capture_output=True, text=True, timeout=900)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            print(f"| {name} | | crashed | | | {p.stderr.strip().splitlines()[-1][:160] if p.stderr.strip() else ''} |")
            continue
        r = json.loads(lines[-1])
        print(f"| {name} | {r['side']} | {r.get('l2')} | {r.get('kmeans')} | {r.get('cut_error', '')} | "
              f"{r.get('warning', '').replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
