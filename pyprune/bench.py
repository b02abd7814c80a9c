"""Edge benchmarks: latency, throughput and size of a model in eager PyTorch, onnxruntime and
ExecuTorch, at several thread counts and batch sizes.

    rows = pyprune.benchmark(model, (1, 3, 224, 224), runtimes=["eager", "onnxruntime"], threads=[1, 2])

A model is exported once per runtime (``torch.export`` program for eager, ONNX with a
dynamic batch, one ``.pte`` per batch size for ExecuTorch). Then each (runtime, threads)
pair runs in its own process, with its threads set before the runtime loads. Warm-up runs
are discarded. Per batch size you get p50/p90/mean latency per batch and per image, and
throughput. Every row also carries the file size on disk, params and MACs, and how busy
the rest of the machine was meanwhile (from /proc/stat); rows where other load took more
than ``NOISY`` of the machine are flagged ``noisy``. A lock file keeps two benchmarks from
ever running at the same time.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import numbers
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch
from torch import nn

from ._io import write_csv, write_json
from ._runtime import worker_env

__all__ = ["benchmark", "BenchResult", "RUNTIMES", "NOISY"]

RUNTIMES = ("eager", "onnxruntime", "executorch")
NOISY = 0.25
LOCK = pathlib.Path(tempfile.gettempdir()) / "pyprune-bench.lock"


@dataclass
class BenchResult:
    rows: list = field(default_factory=list)
    files: dict = field(default_factory=dict)  # runtime -> {batch or "*": path}
    exports: list = field(default_factory=list)  # verified ExportResults made for this benchmark
    params: int = 0
    macs: int = 0

    def table(self) -> str:
        head = f"{'runtime':<12} {'thr':>3} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'ms/img':>8} {'img/s':>8} {'size MB':>8} {'other load':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            flag = " noisy" if r["noisy"] else ""
            lines.append(f"{r['runtime']:<12} {r['threads']:>3} {r['batch']:>5} {1e3 * r['p50_s']:>9.3f} {1e3 * r['p90_s']:>9.3f} "
                         f"{1e3 * r['per_image_p50_s']:>8.3f} {r['throughput']:>8.1f} {r['size_bytes'] / 1e6:>8.2f} "
                         f"{r['other_load']:>9.0%}{flag}")
        return "\n".join(lines)

    def write(self, out_dir) -> tuple[pathlib.Path, pathlib.Path]:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        j = out / "bench.json"
        write_json(j, {"params": self.params, "macs": self.macs, "rows": self.rows})
        c = out / "bench.csv"
        cols = list(self.rows[0]) if self.rows else []
        write_csv(c, cols, [[r[k] for k in cols] for r in self.rows])
        return j, c


@contextlib.contextmanager
def _exclusive():
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _counts(name: str, values) -> list[int]:
    """A non-empty list of positive ints (thread counts, batch sizes), else a ValueError naming it."""
    values = [values] if isinstance(values, numbers.Integral) else list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"{name}: expected a non-empty list of positive ints, got {values!r}")
    return [int(v) for v in values]


def _prepare(model: nn.Module, shape, runtimes, batch_sizes, workdir: pathlib.Path, exports: list) -> dict:
    """The model exported for each runtime, in eval mode; the caller's mode is restored."""
    was = model.training
    try:
        model.eval()
        return _export_all(model, shape, runtimes, batch_sizes, workdir, exports)
    finally:
        model.train(was)


def _export_all(model: nn.Module, shape, runtimes, batch_sizes, workdir: pathlib.Path, exports: list) -> dict:
    from .export import export

    files = {}
    x = torch.randn(shape)
    if "eager" in runtimes:
        x2 = x.repeat(2, *([1] * (x.dim() - 1))) if x.shape[0] == 1 else x  # keep the batch dim dynamic
        ep = torch.export.export(model, (x2,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        p = workdir / "model.pt2"
        torch.export.save(ep, str(p))
        files["eager"] = {"*": p}
    if "onnxruntime" in runtimes:
        exports.append(export(model, x, "onnx", workdir / "model.onnx", dynamic_batch=True))
        files["onnxruntime"] = {"*": exports[-1].path}
    if "executorch" in runtimes:
        files["executorch"] = {}
        for b in batch_sizes:
            xb = torch.randn((b, *shape[1:]))
            exports.append(export(model, xb, "executorch", workdir / f"model-b{b}.pte"))
            files["executorch"][str(b)] = exports[-1].path
    return files


def _worker_rows(cmd: str, spec: dict) -> list[dict]:
    """Run a pyprune._runtime timing command on `spec` in a fresh process (threads set before
    the runtime loads) and return the rows of the JSON line it prints."""
    env = worker_env(OMP_NUM_THREADS=str(spec["threads"]))
    p = subprocess.run([sys.executable, "-m", "pyprune._runtime", cmd, json.dumps(spec)],
                       capture_output=True, text=True, timeout=1800, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark of {spec['runtime']} at {spec['threads']} threads failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _file_input_shape(path: pathlib.Path) -> list | None:
    """The first input's shape an exported file was made for (None for a dim any size fits,
    or where the file's runtime is not installed to read it): ONNX and ExecuTorch."""
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            return None
        try:
            dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        except Exception as e:  # noqa: BLE001 - an unreadable file
            raise ValueError(f"{path} is not a readable ONNX file: {e}") from e
        return [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if path.suffix == ".pte":
        try:
            from executorch.runtime import Runtime
        except ImportError:
            return None
        try:
            return list(Runtime.get().load_program(str(path)).metadata("forward").input_tensor_meta(0).sizes())
        except Exception as e:  # noqa: BLE001 - an unreadable file
            raise ValueError(f"{path} is not a readable ExecuTorch program: {e}") from e
    return None


def _check_file_input(path: pathlib.Path, shape: tuple, batch_sizes) -> None:
    """An exported file runs at the input shape it was made for (a .pte, and an ONNX file
    without a dynamic batch, at its batch too): say so, and what to pass or do, before
    anything is timed."""
    dims = _file_input_shape(path)
    if dims is None:
        return
    made = "x".join("N" if d is None else str(d) for d in dims)
    if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims[1:], shape[1:])):
        raise ValueError(f"{path} takes inputs of shape {made}, not {'x'.join(map(str, shape[1:]))} per item: pass "
                         f"--shape {' '.join(str(d) for d in dims[1:])}")
    fixed = dims[0]
    other = [b for b in batch_sizes if fixed is not None and b != fixed]
    if other:
        how = ("`pyprune export --dynamic-batch` (any batch size)" if path.suffix == ".onnx" else
               "one .pte per batch size (`pyprune bench` on the checkpoint exports them)")
        raise ValueError(f"{path} was exported with a fixed batch of {fixed}, so it cannot run batch "
                         f"{', '.join(map(str, other))}: benchmark --batch-sizes {fixed}, or export again: {how}")


def benchmark(model_or_file, input_shape, runtimes=("eager", "onnxruntime", "executorch"), threads=(1, 2),
              batch_sizes=(1, 8, 32), *, workdir=None, repeats: int = 50, max_seconds: float = 10.0,
              warmup: int = 5, min_seconds: float = 0.5, progress: bool = True) -> BenchResult:
    """Benchmark an ``nn.Module`` (exported here) or an exported file (.onnx, .pte, .pt2).
    Each row times at least ``repeats`` runs and ``min_seconds`` (at most ``max_seconds``).
    ``progress`` prints a line to stderr as each (runtime, threads) starts."""
    runtimes = [runtimes] if isinstance(runtimes, str) else list(runtimes)
    for r in runtimes:
        if r not in RUNTIMES:
            raise ValueError(f"unknown runtime {r!r}; known: {', '.join(RUNTIMES)}")
    threads, batch_sizes = _counts("threads", threads), _counts("batch_sizes", batch_sizes)
    if not runtimes:
        raise ValueError(f"runtimes: give at least one of {', '.join(RUNTIMES)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    shape = tuple(int(v) for v in input_shape)
    result = BenchResult()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pyprune-bench-")
        workdir = tmp.name
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(model_or_file, nn.Module):
            from .graph import build_graph
            from .summary import count

            result.params, result.macs = count(model_or_file, build_graph(model_or_file, torch.zeros(shape)).layers)
            files = _prepare(model_or_file, shape, runtimes, batch_sizes, workdir, result.exports)
        else:
            path = pathlib.Path(model_or_file)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found")
            rt = {".onnx": "onnxruntime", ".pte": "executorch", ".pt2": "eager", ".pt": "eager"}.get(path.suffix)
            if rt is None:
                raise ValueError(f"{path}: cannot tell the runtime from the suffix (.onnx, .pte, .pt2, .pt)")
            runtimes = [rt]
            files = {rt: {"*": path}}
            _check_file_input(path, shape, batch_sizes)
        result.files = {k: {b: str(p) for b, p in v.items()} for k, v in files.items()}
        with _exclusive():
            for rt in runtimes:
                for th in threads:
                    spec = {"runtime": rt, "threads": int(th), "shapes": [[b, *shape[1:]] for b in batch_sizes],
                            "repeats": repeats, "max_seconds": max_seconds, "warmup": warmup,
                            "min_seconds": min_seconds}
                    paths = files[rt]
                    if "*" in paths:
                        spec["path"] = str(paths["*"])
                    else:
                        spec["paths"] = {b: str(p) for b, p in paths.items()}
                        spec["shapes"] = [s for s in spec["shapes"] if str(s[0]) in paths]
                    if progress:
                        print(f"benchmark: {rt} at {th} thread{'s' if th > 1 else ''}, batch "
                              f"{', '.join(str(sh[0]) for sh in spec['shapes'])} ...", file=sys.stderr, flush=True)
                    for row in _worker_rows("bench", spec):
                        b = row["batch"]
                        f = paths.get(str(b), paths.get("*"))
                        row.update({"per_image_p50_s": row["p50_s"] / b, "per_image_mean_s": row["mean_s"] / b,
                                    "throughput": b / row["mean_s"], "size_bytes": pathlib.Path(f).stat().st_size,
                                    "file": str(f), "params": result.params, "macs": result.macs,
                                    "noisy": row["other_load"] > NOISY})
                        result.rows.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


def benchmark_turns(models, input_shape, runtime: str, threads: int = 1, *, workdir=None, repeats: int = 40,
                    min_seconds: float = 2.0, max_seconds: float = 12.0, warmup: int = 5) -> list[float]:
    """p50 seconds of each model (an ``nn.Module``, exported here, or a file for the runtime)
    timed in turns in one worker process: every turn runs each model a few times in a row
    (the first of them untimed: the model's weights back in the caches), the order
    rotating, so their ratios hold on a machine whose speed drifts during the measurement
    (two separate measurements of the same model here can differ by 15-20%)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    shape = tuple(int(v) for v in input_shape)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pyprune-bench-")
        workdir = tmp.name
    workdir = pathlib.Path(workdir)
    try:
        paths = []
        for i, m in enumerate(models):
            if isinstance(m, nn.Module):
                sub = workdir / f"m{i}"
                sub.mkdir(parents=True, exist_ok=True)
                files = _prepare(m, shape, [runtime], [shape[0]], sub, [])[runtime]
                paths.append(str(files.get("*", files.get(str(shape[0])))))
            else:
                paths.append(str(m))
        spec = {"runtime": runtime, "threads": int(threads), "shape": list(shape), "paths": paths,
                "repeats": repeats, "min_seconds": min_seconds, "max_seconds": max_seconds, "warmup": warmup}
        with _exclusive():
            return [float(r["p50_s"]) for r in _worker_rows("turns", spec)]
    finally:
        if tmp is not None:
            tmp.cleanup()
