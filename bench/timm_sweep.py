"""Coverage sweep over timm's zoo: every model family, each model in a process of its own.

For every timm module (family) the smallest models (``--per-family``, default 2; parameter
counts taken on the meta device, models over ``--max-params`` left out) are built with
random weights and a 10-class head, pruned at ratio 0.5 by each of ``--methods`` (one
thread, seed 0), and the pruned model is run on a batch of 2. A row per model: for each
method ok / refused (pyprune raised its own error before cutting) / error (anything else:
a bug) / broken (the returned model fails or changes its output shape), the share of the
channels and of the parameters removed, pyprune's warnings; for L2, ``cut_error``: that very
cut with zeros planted in exactly the channels it drops (groups it cuts inexactly left
whole), the relative change of the output (tests/planted.py ``cut_error``); and the
planted-zero exactness of its graph for a random choice of channels (``check_exact``).
Models that do not run at their input size are "no-forward".

    python3 bench/timm_sweep.py                      # l2 and kmeans, 2 per family (about 40 min)
    python3 bench/timm_sweep.py --per-family 5 --methods l2,kmeans,fpgm,taylor,activation

Writes results/bench/timm_sweep.jsonl, or ``--out`` (resumable: models already there are skipped) and
prints the counts.
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
OUT = HERE.parent / "results" / "bench" / "timm_sweep.jsonl"


def models(per_family: int, max_params: float) -> list[tuple[str, int]]:
    import timm
    import torch

    out = []
    for family in timm.list_modules():
        rows = []
        for name in timm.list_models(module=family):
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    m = timm.create_model(name, pretrained=False, num_classes=10)
            except Exception:  # noqa: BLE001 - a model timm cannot build is not ours to sweep
                continue
            n = sum(p.numel() for p in m.parameters())
            if n <= max_params:
                rows.append((n, name, int(m.pretrained_cfg.get("input_size", (3, 224, 224))[-1])))
        out += [(name, min(side, 224) if side >= 224 else side) for _, name, side in sorted(rows)[:per_family]]
    return out


def calibration(method: str, x):
    import torch

    if method == "taylor":
        return [(x, torch.tensor([1, 3]))]
    if method in ("activation", "apoz", "hrank"):
        return [x]
    return None


def worker(name: str, side: int, methods: list[str]) -> dict:
    from bench_tables import use_checkout

    use_checkout()
    sys.path[:0] = [str(HERE.parent / "tests")]
    import timm
    import torch

    import pyprune
    from planted import check_exact, cut_error, randomize_bn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict = {"model": name, "side": side}
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, side, side)
    try:
        with torch.no_grad():
            want = model(x).shape
    except Exception as e:  # noqa: BLE001
        row.update(status="no-forward", error=f"{type(e).__name__}: {str(e)[:200]}")
        return row
    randomize_bn(model)
    before = sum(p.numel() for p in model.parameters())
    for method in methods:
        r: dict = {}
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = pyprune.prune(model, x[:1], method=method, ratio=0.5, threads=1, seed=0,
                                    calibration=calibration(method, x))
            r["seconds"] = round(time.perf_counter() - t0, 2)
            r["warnings"] = [str(w.message)[:240] for w in caught if str(w.message).startswith("pyprune")][:3]
            r["removed_params"] = round(1 - sum(p.numel() for p in res.model.parameters()) / before, 3)
            total = removed = 0
            for g in res.plan.graph.groups:
                if not g.frozen.all():
                    total += g.size
                    removed += g.size - len(res.plan.keep.get(g.id, range(g.size)))
            r["removed_channels"] = round(removed / max(total, 1), 3)
            if method == "l2":  # this very cut, planted: exact where the graph says so
                try:
                    err = cut_error(model, x[:1], res.plan)
                    r["cut_error"] = None if err is None else float(f"{err:.2e}")
                except Exception as e:  # noqa: BLE001
                    r["cut_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        except Exception as e:  # noqa: BLE001 - a refusal is a result, anything else a bug
            r["status"] = "refused" if type(e).__module__.startswith("pyprune") else "error"
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if r["status"] == "error":
                r["traceback"] = traceback.format_exc()[-800:]
            row[method] = r
            continue
        try:
            with torch.no_grad():
                got = res.model(x).shape
            r["status"] = "ok" if got == want else f"broken: output {tuple(got)} instead of {tuple(want)}"
        except Exception as e:  # noqa: BLE001
            r.update(status="broken", error=f"{type(e).__name__}: {str(e)[:300]}")
        row[method] = r
    try:
        check_exact(model, x[:1])
        row["exact"] = "ok"
    except Exception as e:  # noqa: BLE001 - no group to plant in, or an inexact cut
        row["exact"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-family", type=int, default=2)
    ap.add_argument("--max-params", type=float, default=60e6)
    ap.add_argument("--methods", default="l2,kmeans")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per model")
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="the JSON-lines file (resumable)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    methods = a.methods.split(",")
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), methods)))
        return
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["model"] for line in out.open()} if out.exists() else set()
    todo = [m for m in models(a.per_family, a.max_params) if m[0] not in done]
    print(f"{len(todo)} models to sweep ({len(done)} done)", flush=True)
    for i, (name, side) in enumerate(todo, 1):
        cmd = [sys.executable, __file__, "--methods", a.methods, "--worker", name, str(side)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": name, "status": f"crashed (exit {p.returncode})",
                                                      "error": p.stderr[-400:]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "status": "timeout"}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(todo)}] {name}: " + (row.get("status") or " ".join(
            f"{m}={row[m]['status']}" for m in methods if m in row)), flush=True)
    counts: collections.Counter = collections.Counter()
    for line in out.open():
        row = json.loads(line)
        if row.get("status"):
            counts[row["status"].split(" ")[0]] += 1
            continue
        for m in methods:
            if m in row:
                counts[(m, row[m]["status"].split(":")[0])] += 1
        err = row.get("l2", {}).get("cut_error")
        if err is not None:
            counts[("l2 cut_error", "<= 1e-5" if isinstance(err, float) and err <= 1e-5 else "above or failed")] += 1
    for k, v in sorted(counts.items(), key=str):
        print(k, v)


if __name__ == "__main__":
    main()
