"""Run exported models in this process, and the worker entry point that export
verification and benchmarks start in a fresh process:

    python -m pyprune._runtime verify  <format> <model file> <inputs.npy> <outputs.npz> [dtype]
    python -m pyprune._runtime bench   <json spec>            (prints one JSON line)
    python -m pyprune._runtime turns   <json spec>            (several models timed in turns)
    python -m pyprune._runtime layers  <spec.json> <out.json>  (times single layers: latency tables)
    python -m pyprune._runtime lower   <spec.json>             (single layers to .pte files)

Threads are fixed before any runtime is loaded, which is why every (runtime, threads)
pair gets its own process.
"""
from __future__ import annotations

import json
import os
import sys
import time


def worker_env(**extra: str) -> dict:
    """The environment of a worker process (``python -m pyprune._runtime``): this process's,
    with this pyprune first on the path whatever the working directory or site-packages
    hold (timings and verifications run the code that asked for them), plus `extra`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # PYTHONSAFEPATH: the working directory is not put first on the path (a folder that
    # holds another pyprune's source would otherwise win)
    return dict(os.environ, PYTHONPATH=path, PYTHONSAFEPATH="1", **extra)


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

    def outputs(self, x, dtype: str | None = None) -> list:
        """Every output, in the file's order (an ONNX file takes float32: `dtype` is unused)."""
        return self.sess.run(None, {self.name: x})


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

    def outputs(self, x, dtype: str | None = None) -> list:
        """Every output, in the program's order, the input cast to `dtype` (a numpy array
        holds no bfloat16) and half-precision outputs widened to float32."""
        import torch

        t = torch.from_numpy(x)
        return [to_numpy(y) for y in self.method.execute([t.to(getattr(torch, dtype)) if dtype else t])]


def to_numpy(t):
    """A tensor as a numpy array; float16 and bfloat16 (which numpy lacks) as float32, which
    holds both exactly."""
    import torch

    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()


class EagerRunner:
    """PyTorch eager on a `torch.export` program (.pt2) or a pyprune checkpoint (.pt)."""

    def __init__(self, path: str, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # a second model in this process: set by the first
                pass
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


def bench_turns(spec: dict) -> list[dict]:
    """Time several models of one runtime in turns: each turn runs every model, the order
    rotating from turn to turn, so a machine that slows down or speeds up during the
    measurement moves them all alike and their ratios hold. A model's turn is `block` runs
    in a row (default 8) of which the first is not timed: a model run right after another
    runs slower than on its own, as a deployed model runs (a CIFAR VGG-16 and its pruned
    copy in turns of one run each: 20% and 40% slower than alone; of four runs, the first
    untimed: 3-17%; of eight: within the machine's noise, 5%). At
    least `repeats` timed runs of the first model and `min_seconds`, at most `max_seconds`
    (past `min_repeats` turns). One row per path: p50, p90, mean and runs."""
    import numpy as np

    runners = [RUNNERS[spec["runtime"]](path, spec.get("threads")) for path in spec["paths"]]
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    for run in runners:
        for _ in range(spec.get("warmup", 5)):
            run(x)
    times = [[] for _ in runners]
    start = time.perf_counter()
    floor, deadline = start + spec.get("min_seconds", 2.0), start + spec.get("max_seconds", 12.0)
    block = max(2, int(spec.get("block", 8)))
    turn = 0
    while True:
        now = time.perf_counter()
        enough = len(times[0]) >= spec.get("repeats", 40) and now >= floor
        if turn >= spec.get("min_repeats", 10) and (enough or now >= deadline):
            break
        for j in range(len(runners)):
            i = (j + turn) % len(runners)
            runners[i](x)  # back in the caches, untimed
            for _ in range(block - 1):
                s = time.perf_counter()
                runners[i](x)
                times[i].append(time.perf_counter() - s)
        turn += 1
    return [{"p50_s": float(np.percentile(t, 50)), "p90_s": float(np.percentile(t, 90)), "mean_s": float(np.mean(t)),
             "repeats": len(t)} for t in times]


# -- single layers, for the latency tables (pyprune.latency) ---------------------------------

def _layer_module(p: dict):
    """The torch module of a layer point: a Conv2d or a Linear of the point's widths."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if p.get("chain", 1) > 1:  # the alignment probe: c -> c convs in a row (the runtime's layout between them)
        return nn.Sequential(*[_layer_module(dict(p, chain=1)) for _ in range(p["chain"])]).eval()
    if p["op"] == "linear":
        m = nn.Linear(p["cin"], p["cout"], bias=p["bias"])
    else:
        m = nn.Conv2d(p["cin"], p["cout"], tuple(p["k"]), stride=tuple(p["s"]), padding=tuple(p["p"]),
                      dilation=tuple(p["d"]), groups=p["g"], bias=p["bias"])
    return m.eval()


def layer_input_shape(p: dict, batch: int) -> list:
    return [batch * p["rows"], p["cin"]] if p["op"] == "linear" else [batch, p["cin"], *p["hw"]]


def _onnx_layer(p: dict, batch: int) -> bytes:
    """A one-node ONNX model (Conv or Gemm) of the point, built directly (milliseconds)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = layer_input_shape(p, batch)
    if p["op"] == "linear":
        w = rng.standard_normal((p["cout"], p["cin"])).astype(np.float32)
        b = rng.standard_normal(p["cout"]).astype(np.float32)
        inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if p["bias"] else [])
        node = helper.make_node("Gemm", ["x", "w"] + (["b"] if p["bias"] else []), ["y"], transB=1)
        out = [shape[0], p["cout"]]
    else:
        k, s, pad, d = p["k"], p["s"], p["p"], p["d"]
        w = rng.standard_normal((p["cout"], p["cin"] // p["g"], *k)).astype(np.float32)
        inits = [numpy_helper.from_array(w, "w")]
        if p["bias"]:
            inits.append(numpy_helper.from_array(rng.standard_normal(p["cout"]).astype(np.float32), "b"))
        n = p.get("chain", 1)  # n convs in a row (c -> c) for the alignment probe
        nodes = []
        for i in range(n):
            w = rng.standard_normal((p["cout"], p["cin"] // p["g"], *k)).astype(np.float32)
            if i:
                inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Conv", [f"y{i - 1}" if i else "x", f"w{i}" if i else "w"] +
                                          (["b"] if p["bias"] else []), ["y" if i == n - 1 else f"y{i}"],
                                          kernel_shape=list(k), strides=list(s), pads=[pad[0], pad[1], pad[0], pad[1]],
                                          dilations=list(d), group=p["g"]))
        hw = [(shape[2 + i] + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
        out = [batch, p["cout"], *hw]
        node = nodes
    graph = helper.make_graph(node if isinstance(node, list) else [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _pte_input(p: dict, t):
    """The input tensor `t` of an ExecuTorch point, as it is lowered and timed: a conv's
    channels-last. XNNPACK runs NHWC, and an NCHW program converts its input and output
    around the one layer, which inside a model only the graph's edges do (a 96-channel
    depthwise conv at 112x112: 6.8 ms with the conversions, 1.2 ms without)."""
    import torch

    return t.contiguous(memory_format=torch.channels_last) if p["op"] == "conv2d" else t


def _layer_runner(runtime: str, p: dict, batch: int, threads: int | None, x):
    """(run, input): a callable timing one run of the point in the runtime, and `x` (a
    numpy array of the layer's input shape) as that callable takes it."""
    if runtime in ("onnx", "onnxruntime"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(_onnx_layer(p, batch), so, providers=["CPUExecutionProvider"])
        return (lambda v: sess.run(None, {"x": v})), x
    import torch

    if runtime == "eager":
        if threads:
            torch.set_num_threads(threads)
        m = _layer_module(p)

        def run(v):
            with torch.inference_mode():
                return m(v)
        return run, torch.from_numpy(x)
    method = PteRunner(p["path"], threads).method
    return (lambda v: method.execute([v])), _pte_input(p, torch.from_numpy(x))


def time_layers(spec: dict, out_path: str) -> None:
    """Median seconds per point of the spec; prints one line per point done (the parent's
    progress bar reads them) and writes {id: seconds} to out_path."""
    import numpy as np

    batch, res = int(spec.get("batch", 1)), {}
    rng = np.random.default_rng(0)
    for p in spec["points"]:
        x = rng.standard_normal(layer_input_shape(p, batch)).astype(np.float32)
        run, x = _layer_runner(spec["runtime"], p, batch, spec.get("threads"), x)
        for _ in range(spec.get("warmup", 3)):
            run(x)
        times, t_end = [], time.perf_counter() + spec.get("max_seconds", 2.0)
        floor = time.perf_counter() + spec.get("min_seconds", 0.08)
        while len(times) < spec.get("min_repeats", 15) or (time.perf_counter() < floor and len(times) < 1000):
            s = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - s)
            if time.perf_counter() > t_end and len(times) >= 3:
                break
        res[p["id"]] = float(np.median(times))
        print(p["id"], flush=True)
    with open(out_path, "w") as f:
        json.dump(res, f)


def lower_layers(spec: dict) -> None:
    """Each point of the spec to an XNNPACK .pte at its `path` (one line printed per point);
    a conv point takes a channels-last input (see _pte_input)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    batch = int(spec.get("batch", 1))
    for p in spec["points"]:
        m = _layer_module(p)
        x = _pte_input(p, torch.zeros(layer_input_shape(p, batch)))
        with torch.no_grad():
            ep = torch.export.export(m, (x,))
            prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        tmp = p["path"] + ".tmp"
        with open(tmp, "wb") as f:
            f.write(prog.buffer)
        os.replace(tmp, p["path"])
        print(p["id"], flush=True)


def verify(fmt: str, path: str, inp: str, out: str, dtype: str = "float32") -> None:
    """Run the exported file on the saved input (1 thread) and save every output, in the
    file's order, to `out` (.npz: arr_0, arr_1, ...)."""
    import numpy as np

    ys = RUNNERS[fmt](path, 1).outputs(np.load(inp), dtype)
    np.savez(out, *[np.asarray(y) for y in ys])


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "verify":
        verify(*argv[1:6])
        return 0
    if cmd in ("bench", "turns"):  # a JSON spec in, one JSON line of rows out
        spec = json.loads(argv[1])
        _set_threads(spec.get("threads"))
        print(json.dumps((bench if cmd == "bench" else bench_turns)(spec)))
        sys.stdout.flush()
        return 0
    if cmd == "layers":
        with open(argv[1]) as f:
            spec = json.load(f)
        _set_threads(spec.get("threads"))
        time_layers(spec, argv[2])
        return 0
    if cmd == "lower":
        with open(argv[1]) as f:
            lower_layers(json.load(f))
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
