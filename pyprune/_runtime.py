"""Run exported models in this process, and the worker entry point that export
verification and benchmarks start in a fresh process:

    python -m pyprune._runtime verify  <format> <model file> <inputs.npy> <outputs.npy>
    python -m pyprune._runtime bench   <json spec>            (prints one JSON line)

Threads are fixed before any runtime is loaded, which is why every (runtime, threads)
pair gets its own process.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _set_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


class OnnxRunner:
    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]


class PteRunner:
    def __init__(self, path: str, threads: int | None = None):
        from executorch.runtime import Runtime

        self.threads = None
        try:  # XNNPACK's threadpool size, set before the program loads
            from executorch.extension.pybindings import portable_lib

            if threads:
                portable_lib._unsafe_reset_threadpool(int(threads))
            self.threads = int(portable_lib._threadpool_get_thread_count())
        except (ImportError, AttributeError):
            pass

        self.rt = Runtime.get()
        self.program = self.rt.load_program(path)
        self.method = self.program.load_method("forward")

    def __call__(self, x):
        import torch

        out = self.method.execute([torch.from_numpy(x)])
        return out[0].numpy()


class EagerRunner:
    """PyTorch eager on a `torch.export` program (.pt2) or a pyprune checkpoint (.pt)."""

    def __init__(self, path: str, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
            torch.set_num_interop_threads(1)
        if path.endswith(".pt2"):
            self.model = torch.export.load(path).module()
        else:
            from .checkpoint import load_model

            self.model, _ = load_model(path)
            self.model.eval()

    def __call__(self, x):
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


RUNNERS = {"onnx": OnnxRunner, "onnxruntime": OnnxRunner, "executorch": PteRunner, "pte": PteRunner, "eager": EagerRunner}


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat (0, 0 where absent)."""
    try:
        with open("/proc/stat") as f:
            parts = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def bench(spec: dict) -> list[dict]:
    """Time every shape of the spec; `paths` may give one file per batch size (static-shape
    formats such as .pte), else `path` serves all shapes."""
    rows = []
    runners = {}
    for shape in spec["shapes"]:
        path = spec.get("paths", {}).get(str(shape[0]), spec.get("path"))
        if path not in runners:
            runners[path] = RUNNERS[spec["runtime"]](path, spec.get("threads"))
        rows.append(_bench_one(runners[path], spec, shape))
        actual = getattr(runners[path], "threads", None)
        rows[-1]["runtime_threads"] = actual if actual is not None else spec.get("threads")
    return rows


def _bench_one(runner, spec: dict, shape) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    for _ in range(spec.get("warmup", 5)):
        runner(x)
    times = []
    own0 = time.process_time()
    b0, t0 = _busy_jiffies()
    wall0 = time.perf_counter()
    deadline = wall0 + spec.get("max_seconds", 10.0)
    # at least `min_seconds` of measuring: /proc/stat counts in 10 ms jiffies, so the load
    # estimate needs a window far longer than that
    floor = wall0 + spec.get("min_seconds", 0.5)
    while True:
        now = time.perf_counter()
        enough = len(times) >= spec.get("repeats", 50) and now >= floor
        if len(times) >= spec.get("min_repeats", 10) and (enough or now >= deadline):
            break
        s = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - s)
    wall = time.perf_counter() - wall0
    own = time.process_time() - own0
    b1, t1 = _busy_jiffies()
    ncpu = os.cpu_count() or 1
    machine_busy = (b1 - b0) / max(1, t1 - t0) if t1 > t0 else 0.0
    # busy share of the machine that was not us: other load during the measurement
    other = max(0.0, machine_busy - own / max(1e-9, wall) / ncpu) if t1 > t0 else 0.0
    t = np.array(times)
    return {"runtime": spec["runtime"], "threads": spec.get("threads"), "batch": shape[0],
            "p50_s": float(np.percentile(t, 50)), "p90_s": float(np.percentile(t, 90)), "mean_s": float(t.mean()),
            "repeats": len(times), "machine_busy": machine_busy, "other_load": other}


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "verify":
        fmt, path, inp, out = argv[1:5]
        import numpy as np

        x = np.load(inp)
        y = RUNNERS[fmt](path, 1)(x)
        np.save(out, np.asarray(y))
        return 0
    if cmd == "bench":
        spec = json.loads(argv[1])
        _set_threads(spec.get("threads"))
        print(json.dumps(bench(spec)))
        sys.stdout.flush()
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
