"""Coverage: the CNNs users bring. Each of the timm models below (random weights, a
10-class head) is pruned at ratio 0.5 by the L2 filter norm, by pyprune and by
Torch-Pruning (MetaPruner, GroupMagnitudeImportance(p=2), classifier ignored), each in a
process of its own (bench/coverage_worker.py, one thread), and the pruned model is run.

Checked for every model: pyprune never returns a model that fails (it prunes and the model
runs, or it refuses); where Torch-Pruning gives a working model, pyprune removes at least
as large a share of the parameters, within 2 points. The table has both shares, the
status of each tool and pyprune's time.

Run:  python3 -m pytest bench/test_bench_coverage.py -q   (about 10 minutes)
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from bench_tables import record

pytest.importorskip("timm", reason="the coverage models come from timm: pip install timm")

# (timm name, input side): families across the zoo; small sides where the model allows.
MODELS = [
    ("resnet18", 128), ("resnet50d", 128), ("seresnext26d_32x4d", 128), ("resnext26ts", 128), ("skresnet18", 128),
    ("res2net50_26w_4s", 128), ("res2next50", 128), ("resnest14d", 128), ("dpn48b", 128), ("densenet121", 128),
    ("dla34", 128), ("ese_vovnet19b_dw", 128), ("cspresnet50", 128), ("cspdarknet53", 128), ("regnetx_002", 128),
    ("regnety_002", 128), ("regnetz_b16", 128), ("mobilenetv2_100", 128), ("mobilenetv3_small_100", 128),
    ("mobilenetv4_conv_small", 128), ("efficientnet_b0", 128), ("efficientnet_lite0", 128), ("mixnet_s", 128),
    ("mnasnet_100", 128), ("fbnetc_100", 128), ("ghostnet_100", 128), ("hardcorenas_a", 128), ("tinynet_a", 128),
    ("lcnet_050", 128), ("rexnet_100", 128), ("convnext_atto", 128), ("convnextv2_atto", 128),
    ("poolformer_s12", 128), ("nf_resnet26", 128), ("nfnet_l0", 128), ("nf_regnet_b0", 128), ("ecaresnet26t", 128),
    ("tresnet_m", 224), ("gernet_s", 128), ("repvgg_a0", 128), ("mobileone_s0", 128), ("hrnet_w18_small", 128),
    ("xception41", 128), ("inception_v3", 160), ("fastvit_t8", 128), ("efficientvit_b0", 128),
    ("mobilevit_xxs", 256), ("mobilevitv2_050", 256), ("mobilenetv4_hybrid_medium", 224), ("edgenext_xx_small", 256),
    ("efficientformer_l1", 224), ("levit_128s", 224),
]
WORKER = pathlib.Path(__file__).with_name("coverage_worker.py")
_rows: dict = {}


def run(name: str, tool: str, side: int) -> dict:
    try:
        p = subprocess.run([sys.executable, str(WORKER), name, tool, str(side)], capture_output=True, text=True,
                           timeout=300)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"status": f"crashed (exit {p.returncode})", "error": p.stderr[-300:]}
    return json.loads(lines[-1])


@pytest.mark.parametrize("name,side", MODELS, ids=[m for m, _ in MODELS])
def test_coverage(name, side):
    ours, theirs = run(name, "pyprune", side), run(name, "torch_pruning", side)
    row = {"model": name, "pyprune": ours.get("status"), "pyprune_removed": ours.get("removed"),
           "torch_pruning": theirs.get("status"), "torch_pruning_removed": theirs.get("removed"),
           "pyprune_s": ours.get("seconds"), "note": (ours.get("error") or "; ".join(ours.get("warnings", [])))[:160]}
    record("coverage", **row)
    assert ours.get("status") in ("ok", "refused"), f"pyprune returned a model that does not work: {ours}"
    if theirs.get("status") == "ok":
        assert ours.get("status") == "ok" and ours["removed"] >= theirs["removed"] - 0.02, (ours, theirs)
