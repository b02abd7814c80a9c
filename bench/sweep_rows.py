"""What the library sweeps (``torchvision_sweep.py``, ``zoo_sweep.py``) share: one model
pruned and checked inside a worker process, and the loop that runs a worker process per
model into a resumable JSON-lines file and counts the outcomes."""
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
from typing import Callable


def prune_row(row: dict, model, inputs: tuple, want: list, shapes: Callable, check: Callable) -> dict:
    """Prune `model` by the L2 filter norm at ratio 0.5 (one thread, seed 0), run it and fill
    `row`: status ok / refused (pyprune's own error, before cutting) / error (anything else:
    a bug) / broken (the pruned model fails, or ``shapes`` of its outputs differ from
    `want`), seconds, pyprune's warnings, the share of the parameters removed and
    ``cut_error`` (``check(model, inputs, plan)``: planted zeros, see tests/planted.py)."""
    import torch

    import pyprune

    before = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = pyprune.prune(model, inputs, method="l2", ratio=0.5, threads=1, seed=0)
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
            got = shapes(res.model(*inputs))
        row["status"] = "ok" if got == want else f"broken: outputs {got[:4]} instead of {want[:4]}"
    except Exception as e:  # noqa: BLE001
        row.update(status="broken", error=f"{type(e).__name__}: {str(e)[:300]}")
        return row
    try:
        with torch.no_grad():
            err = check(model, inputs, res.plan)
        row["cut_error"] = None if err is None else float(f"{err:.2e}")
    except Exception as e:  # noqa: BLE001
        row["cut_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def parse_sweep_args(doc: str, worker: Callable, worker_args: tuple, choices_attr: str, choices, out: pathlib.Path,
                     timeout: int, extra: tuple = ()) -> tuple | None:
    """A sweep's command line: ``--<choices_attr>`` (comma-separated, checked against
    `choices`), the `extra` (flag, keywords) options, ``--timeout`` (seconds per model),
    ``--out`` and the hidden ``--worker ARGS``. As a worker, print ``worker(*ARGS)``'s row
    and return None; else (the arguments, the chosen list)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument(f"--{choices_attr.replace('_', '-')}", dest=choices_attr, default=",".join(choices))
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    ap.add_argument("--timeout", type=int, default=timeout, help="seconds per model")
    ap.add_argument("--out", type=pathlib.Path, default=out, help="the JSON-lines file (resumable)")
    ap.add_argument("--worker", nargs=len(worker_args), metavar=worker_args, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return None
    chosen = getattr(a, choices_attr).split(",")
    unknown = sorted(set(chosen) - set(choices))
    if unknown:
        ap.error(f"unknown {choices_attr} {unknown}: choose from {', '.join(choices)}")
    return a, chosen


def run_workers(script: str, jobs: list[tuple[dict, list[str]]], out: pathlib.Path, timeout: int) -> None:
    """For each job (the row's identifying fields, the worker's arguments), run
    ``script --worker ARGS`` in a process of its own and append its row (its last JSON line)
    to `out`; a job whose row is there already is skipped (the file is resumable)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.open()] if out.exists() else []
    fields = [k for k in jobs[0][0] if k != "status"] if jobs else []  # what names a model

    def ident(row: dict) -> tuple:
        return tuple(row.get(k) for k in fields)

    seen = {ident(r) for r in done}
    todo = [(key, args) for key, args in jobs if ident(key) not in seen]
    print(f"{len(todo)} models to sweep ({len(jobs) - len(todo)} done)", flush=True)
    for i, (key, args) in enumerate(todo, 1):
        if "status" in key:  # decided without a worker (a library that is not installed)
            row = dict(key)
        else:
            try:
                p = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True,
                                   timeout=timeout)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if lines else {**key, "status": f"crashed (exit {p.returncode})",
                                                          "error": p.stderr[-400:]}
            except subprocess.TimeoutExpired:
                row = {**key, "status": "timeout"}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(todo)}] {' '.join(map(str, key.values()))}: {row['status']} "
              f"{row.get('removed_params', '')} {row.get('cut_error', '')}", flush=True)


def print_counts(out: pathlib.Path, by: str) -> None:
    """How many rows of `out` per (`by`, status), and how many cuts were exact (planted
    zeros changed the output by at most 1e-5 of its largest value)."""
    counts: collections.Counter = collections.Counter()
    for row in map(json.loads, out.open()):
        counts[(row.get(by), row["status"].split(":")[0])] += 1
        if "cut_error" in row:
            err = row["cut_error"]
            counts[("cut_error", "<= 1e-5" if isinstance(err, float) and err <= 1e-5 else
                    "none to check" if err is None else "above or failed")] += 1
    for k, v in sorted(counts.items(), key=str):
        print(k, v)
