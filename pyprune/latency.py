"""Latency on the target runtime: per-layer cost tables measured there, a latency model
built from them, and the budget solver that prunes to a latency.

A *target* is ``(runtime, threads, batch)`` on this machine: ``onnxruntime``,
``executorch`` (XNNPACK) or ``eager`` PyTorch. For a model, every Conv2d and Linear is
measured alone in that runtime at a grid of input and output widths (the full width and a
few fractions of it; depthwise convs along their one width, grouped convs in multiples of
their groups), in a worker process whose threads are set before the runtime loads, warm-up
runs discarded, the median kept. Between grid points the cost is interpolated bilinearly
(exact for anything of the form ``a + b*c_in + c*c_out + d*c_in*c_out``, which is what a
convolution's arithmetic is; the steps of the runtime's kernels show as measured points).

A layer inside the model does not cost what it costs alone: a model's weights larger than
the cache stream from memory on every run (alone, one layer's stay cached), and alone a
layer converts its input and output to the runtime's blocked layout (inside, only the
graph's edges do). ExecuTorch convs are therefore lowered and timed on a channels-last
input, the layout XNNPACK runs in, so they pay no conversion alone either; onnxruntime's
reorders are left to the rates below. The cache may hold a model's weights up to a size
and stream the rest: in one hour of this machine a CIFAR VGG-16 on onnxruntime (15M
weights) ran 2.7 ms over its layers' table times at full width, 0.3-0.5 ms at 0.7 of its
channels (7.3M weights) and 0.3 ms at 0.55 and 0.4, where one rate per weight over-predicted
0.7 of the channels by 17-26% and under-predicted 0.4 by 25-30% (in other hours one rate
fitted within 2%). So the prediction is
``r0 + sum over layers of (table time + r_act * output elements) + r_weight * max(0, W -
c_weight)`` at the current widths, ``W`` the weights left, ``r0`` holding everything else
(norms, activations, adds, pooling, per-call work). The rates and ``c_weight`` (the weights
the cache holds; 0 where the rate is linear) come from four measurements of the whole model
in the runtime: as it is, at three quarters and at half of every prunable group's channels,
and with only its later half of groups at half width (early layers hold most activations,
late ones most weights), timed in turns in one worker so that their ratios hold
(:func:`fit_rest`: exact at the model as it is, least squares over the others; a cache only
where one rate misses a model by more than :data:`CACHE_EVIDENCE`).

This machine's speed drifts: the same model measured minutes apart differs by 15-20%. So
whole models are compared in turns, a block of runs of each in rotation in one worker
(:func:`measure_turns`): the pruned model beside the unpruned one, which also gives the
machine's speed at that moment (``speed``, unpruned measured over its calibrated
prediction); every prediction is scaled by the speed last measured.

Widths are cut at multiples of the channel count the runtime's kernels prefer, found by
measurement (:func:`probe_alignment`); a group narrower than twice that multiple at the
largest power of two that still leaves it a cut (:func:`group_alignment`), and the layers
it feeds are measured at those widths.

Tables are cached on disk (``$PYPRUNE_CACHE``, default ``~/.cache/pyprune``), one file per
runtime version, threads, batch and CPU model, keyed inside by layer signature, so a second
model with the same layers, or a second run, measures nothing.

:class:`LatencyModel` is the ``latency`` kind of :class:`pyprune.summary.CostModel`; its
:meth:`LatencyModel.solve` gives keep counts that keep the most importance (the criterion's
scores) under a latency goal, and :func:`measure` times a whole model in the runtime (what
``prune(target_latency_ms=...)`` checks its result with).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._io import write_text
from ._runtime import worker_env
from .criteria._registry import block_jobs

__all__ = ["LatencyTarget", "LatencyModel", "LatencyTable", "measure", "measure_turns", "cache_dir", "RUNTIMES"]

RUNTIMES = ("onnxruntime", "executorch", "eager")
# width fractions measured per prunable dim (ExecuTorch lowers one program per point, ~1 s each)
GRIDS = {"onnxruntime": (1.0, 0.75, 0.5, 0.3, 0.15), "eager": (1.0, 0.75, 0.5, 0.3, 0.15),
         "executorch": (1.0, 0.55, 0.25)}
_PKG = {"onnxruntime": "onnxruntime", "executorch": "executorch", "eager": "torch"}
# how the whole-model calibration is measured (part of its cache key)
_CALIBRATION = "turns-4"  # turns of warm runs (the first run of each untimed), four models
# the calibration's models: name, share of every prunable group's channels kept, later half only
_CALIBRATION_POINTS = (("full", 1.0, False), ("three_quarter", 0.75, False), ("half", 0.5, False),
                       ("late_half", 0.5, True))


@dataclass(frozen=True)
class LatencyTarget:
    """Where the pruned model will run: runtime, its threads and the batch size."""

    runtime: str = "onnxruntime"
    threads: int = 1
    batch: int = 1

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        for name in ("threads", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 16:
                arg = "batch_size" if name == "batch" else name
                raise ValueError(f"{arg}: a latency target needs a positive int (at most 65536), got {v!r}")

    @property
    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(_PKG[self.runtime])
        except PackageNotFoundError:
            raise ValueError(f"runtime {self.runtime!r} is not installed: pip install "
                             f"'pyprune[{'executorch' if self.runtime == 'executorch' else 'onnx'}]'") from None

    def __str__(self) -> str:
        return (f"{self.runtime} {self.version}, {self.threads} thread{'s' if self.threads > 1 else ''}, "
                f"batch {self.batch}, {cpu_model()}")


def cpu_model() -> str:
    """The CPU's model name and its widest vector ISA (two machines of one kind differ there)."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    import platform

    name = name or platform.processor() or platform.machine()
    isa = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else platform.machine()
    return f"{name} ({isa})"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PYPRUNE_CACHE") or pathlib.Path.home() / ".cache" / "pyprune") / "latency"


class LatencyTable:
    """Measured layer costs for one target, cached in one JSON file.

    ``layers[signature] = {"grid_in": [...], "grid_out": [...], "s": [[seconds]]}`` (rows
    over output widths) and ``models[key]`` the whole-model measurements of a model."""

    def __init__(self, target: LatencyTarget, directory=None):
        self.target = target
        meta = {"runtime": target.runtime, "version": target.version, "threads": target.threads,
                "batch": target.batch, "cpu": cpu_model()}
        if target.runtime == "executorch":  # how its layers are measured (older tables timed NCHW programs)
            meta["layers"] = "channels-last"
        tag = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
        self.path = pathlib.Path(directory or cache_dir()) / f"{target.runtime}-t{target.threads}-b{target.batch}-{tag}.json"
        self.meta, self.layers, self.models, self.meta_measured = meta, {}, {}, {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("meta") == meta:
                    self.layers, self.models = data.get("layers", {}), data.get("models", {})
                    self.meta_measured = data.get("measured", {})
            except (OSError, ValueError):
                pass  # an unreadable cache is measured again

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"meta": self.meta, "measured": self.meta_measured, "layers": self.layers,
                                               "models": self.models}))


@dataclass
class LayerCost:
    """A measured layer of the model: its full-width point and how its widths follow the groups."""

    module: str
    point: dict  # op, cin, cout, k, s, p, d, g, hw, bias, rows (full width)
    depthwise: bool
    in_key: tuple | None  # (module, param, dim) whose kept share scales c_in (None: fixed)
    out_key: tuple | None
    out_numel: int  # output elements at full width (the rest-of-graph terms)
    weight_numel: int = 0  # weight elements at full width
    align: int = 1  # the runtime's preferred channel multiple (probe_alignment)
    align_in: int | None = None  # the multiples its input / output widths are cut at (group_alignment;
    align_out: int | None = None  # None: ``align``)
    grid_in: np.ndarray = field(default=None)
    grid_out: np.ndarray = field(default=None)
    seconds: np.ndarray = field(default=None)  # [len(grid_out), len(grid_in)]

    @property
    def signature(self) -> str:
        p = self.point
        a_in, a_out = self.align_in or self.align, self.align_out or self.align
        a = f"{self.align}" if a_in == a_out == self.align else f"{a_in}x{a_out}"
        if p["op"] == "linear":
            return (f"linear:{p['rows']}x{p['cin']}->{p['cout']}:b{int(p['bias'])}:pin{int(self.in_key is not None)}:"
                    f"pout{int(self.out_key is not None)}:a{a}")
        return (f"conv2d:{p['cin']}->{p['cout']}:k{p['k']}:s{p['s']}:p{p['p']}:d{p['d']}:g{p['g']}:hw{p['hw']}:"
                f"b{int(p['bias'])}:dw{int(self.depthwise)}:pin{int(self.in_key is not None)}:pout{int(self.out_key is not None)}"
                f":a{a}").replace(" ", "")

    def widths(self, fractions, full: int, prunable: bool, align: int | None = None) -> list[int]:
        """The measured widths of a dim: full, and multiples of its alignment (``align``, else
        the runtime's; and of a grouped conv's groups) near each fraction."""
        if not prunable:
            return [full]
        m = math.lcm(self.point["g"] if self.point["op"] == "conv2d" and not self.depthwise else 1, align or self.align)
        return sorted({full} | {w for f in fractions if (w := m * max(1, int(round(f * full / m)))) < full})

    def points(self, fractions) -> list[dict]:
        p = self.point
        outs = self.widths(fractions, p["cout"], self.out_key is not None, self.align_out)
        if self.depthwise:
            return [dict(p, cin=c, cout=c, g=c) for c in outs]
        return [dict(p, cin=ci, cout=co) for co in outs
                for ci in self.widths(fractions, p["cin"], self.in_key is not None, self.align_in)]

    def load(self, entry: dict) -> None:
        self.grid_in = np.asarray(entry["grid_in"], np.float64)
        self.grid_out = np.asarray(entry["grid_out"], np.float64)
        self.seconds = np.asarray(entry["s"], np.float64).reshape(len(self.grid_out), len(self.grid_in))

    def at(self, f_in: float, f_out: float) -> float:
        """Seconds at the kept shares of its input and output channels (interpolated)."""
        co = f_out * self.point["cout"]
        rows = self.seconds
        if len(self.grid_in) > 1:
            ci = (f_out if self.depthwise else f_in) * self.point["cin"]
            rows = np.array([_interp(self.grid_in, r, ci) for r in rows])
        else:
            rows = rows[:, 0]
        return max(0.0, _interp(self.grid_out, rows, co)) if len(self.grid_out) > 1 else float(rows[0])


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear through ascending xs, extended linearly past both ends."""
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    x0, x1 = xs[i], xs[i + 1]
    return float(ys[i] + (ys[i + 1] - ys[i]) * (x - x0) / (x1 - x0))


def _layer_costs(model: nn.Module, graph, share: dict) -> list[LayerCost]:
    """The Conv2d and Linear layers the trace saw, with their full-width points: one per
    call (a layer called twice runs twice)."""
    mods = dict(model.named_modules())
    out = []
    for rec in graph.layers:
        m = mods.get(rec.module)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        shape = tuple(rec.out_shape)
        # a dim counts where any of its groups can lose units (not the network's input or classes)
        prunable = {d for (mod, param, d), (gids, _) in share.items() if mod == rec.module and param == "weight"
                    and any(graph.groups[int(gid)].prunable > 0 for gid in gids)}
        in_key = (rec.module, "weight", 1) if 1 in prunable else None
        out_key = (rec.module, "weight", 0) if 0 in prunable else None
        if isinstance(m, nn.Linear):
            rows = math.prod(shape[:-1]) // max(1, shape[0]) if len(shape) > 1 else 1
            pt = {"op": "linear", "cin": m.in_features, "cout": m.out_features, "bias": m.bias is not None,
                  "rows": int(max(1, rows)), "k": [1, 1], "s": [1, 1], "p": [0, 0], "d": [1, 1], "g": 1, "hw": [1, 1]}
            out.append(LayerCost(rec.module, pt, False, in_key, out_key, math.prod(shape[1:]) if len(shape) > 1 else 1,
                                 m.weight.numel()))
            continue
        if len(shape) != 4:
            continue
        k, s, d = list(m.kernel_size), list(m.stride), list(m.dilation)
        pad = m.padding if not isinstance(m.padding, str) else (
            [0, 0] if m.padding == "valid" else [d[i] * (k[i] - 1) // 2 for i in range(2)])
        pad = [int(v) for v in pad]
        # the smallest input that gives the traced output size (timm's "same" convs pad in forward)
        hw = [max(1, (shape[2 + i] - 1) * s[i] - 2 * pad[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
        dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        pt = {"op": "conv2d", "cin": m.in_channels, "cout": m.out_channels, "k": k, "s": s, "p": pad, "d": d,
              "g": m.groups, "hw": hw, "bias": m.bias is not None, "rows": 1}
        if dw:
            in_key = None
        out.append(LayerCost(rec.module, pt, dw, in_key, out_key, math.prod(shape[1:]), m.weight.numel()))
    return out


def _run_worker(cmd: str, spec: dict, out: pathlib.Path | None, bar) -> None:
    """Run a pyprune._runtime worker, advancing the progress bar per line it prints."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        args = [sys.executable, "-m", "pyprune._runtime", cmd, f.name] + ([str(out)] if out else [])
        env = worker_env(OMP_NUM_THREADS=str(spec.get("threads") or 1))
        # stderr to a file: a worker's warnings never fill a pipe nobody reads
        with tempfile.TemporaryFile("w+") as err, \
                subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as p:
            for _ in p.stdout:
                bar.update(1)
            if p.wait() != 0:
                err.seek(0)
                raise RuntimeError(f"latency table: the {spec.get('runtime', 'executorch')} worker failed:\n"
                                   f"{err.read()[-2000:]}")
    finally:
        os.unlink(f.name)


def _parallel_workers(cmd: str, specs: list[dict], bar) -> None:
    """Run `cmd` workers over specs side by side (lowering: CPU-bound, one per core)."""
    procs, files, errs = [], [], []
    for spec in specs:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        files.append(f.name)
        errs.append(tempfile.TemporaryFile("w+"))
        procs.append(subprocess.Popen([sys.executable, "-m", "pyprune._runtime", cmd, f.name],
                                      stdout=subprocess.PIPE, stderr=errs[-1], text=True, env=worker_env()))
    try:
        import selectors

        sel = selectors.DefaultSelector()
        for p in procs:
            sel.register(p.stdout, selectors.EVENT_READ)
        open_ = len(procs)
        while open_:
            for key, _ in sel.select():
                if key.fileobj.readline():
                    bar.update(1)
                else:
                    sel.unregister(key.fileobj)
                    open_ -= 1
        for p, err in zip(procs, errs):
            if p.wait() != 0:
                err.seek(0)
                raise RuntimeError(f"latency table: lowering layers to ExecuTorch failed:\n{err.read()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
        for f in errs:
            f.close()
        for name in files:
            os.unlink(name)


_CALL_POINT = {"op": "conv2d", "cin": 1, "cout": 1, "k": [1, 1], "s": [1, 1], "p": [0, 0], "d": [1, 1], "g": 1,
               "hw": [1, 1], "bias": False, "rows": 1}


_PROBE_BASE = 96  # a multiple of every candidate alignment
_ALIGN_METHOD = 2  # the probe's method (a cached alignment from another is probed again)
_ALIGN_CANDIDATES = (4, 8, 16, 32)


def _probe_widths(a: int) -> tuple[int, int, int]:
    """The probe's widths for candidate a: c = 96 - a and its two neighbours."""
    c = _PROBE_BASE - a
    return c - 1, c, c + 1


def _probe_point(c: int) -> dict:
    """Four c -> c 3x3 convs in a row: what the runtime does between layers of a width
    (a blocked layout kept, or reorders) shows, as it does inside a model."""
    return {"op": "conv2d", "cin": c, "cout": c, "k": [3, 3], "s": [1, 1], "p": [1, 1], "d": [1, 1], "g": 1,
            "hw": [16, 16], "bias": True, "rows": 1, "chain": 4}


def _time_points(points: list[dict], target: LatencyTarget, bar, tmp: str) -> dict:
    """{id: median seconds} of points in the target runtime (lowered first for ExecuTorch)."""
    if target.runtime == "executorch":
        for p in points:
            p["path"] = os.path.join(tmp, f"p{p['id']}.pte")
        n = max(1, min(os.cpu_count() or 1, 4, len(points)))
        _parallel_workers("lower", [{"batch": target.batch, "points": points[i::n]} for i in range(n)], bar)
    out = pathlib.Path(tmp) / "times.json"
    _run_worker("layers", {"runtime": target.runtime, "threads": target.threads, "batch": target.batch,
                           "points": points}, out, bar)
    return json.loads(out.read_text())


def probe_alignment(table: LatencyTable, progress: bool = True) -> int:
    """The channel multiple the runtime's conv kernels prefer, by measurement (cached): for
    a in 4, 8, 16, 32, a chain of 3x3 convs of width c = 96 - a (a multiple of a, not of
    2a) against one channel less and one more. A runtime with a slow path for other widths
    makes both neighbours dearer per MAC; one that pads channels to its register tile (XNNPACK
    does) makes c + 1 cost what c + a does. The ratio of a is c's cost per
    MAC over the dearer neighbour's; the smallest a whose ratio is (within 5 points) the best
    one, when that is <= 0.92; else 1."""
    if table.meta_measured.get("align_method") == _ALIGN_METHOD and "align" in table.meta_measured:
        return int(table.meta_measured["align"])
    from tqdm.auto import tqdm

    points = [dict(_probe_point(c), id=f"{a}-{c}") for a in _ALIGN_CANDIDATES for c in _probe_widths(a)]
    n = len(points) * (2 if table.target.runtime == "executorch" else 1)
    with tempfile.TemporaryDirectory(prefix="pyprune-latency-") as tmp, \
            tqdm(total=n, desc=f"kernel alignment ({table.target.runtime})", disable=not progress,
                 file=sys.stderr, leave=False) as bar:
        secs = _time_points(points, table.target, bar, tmp)
    align, ratios = alignment_from_probe(secs)
    table.meta_measured.update(align=align, align_probe=ratios, align_method=_ALIGN_METHOD)
    table.save()
    return align


def alignment_from_probe(secs: dict) -> tuple[int, dict]:
    """(alignment, ratio per candidate) from the probe's times {"a-c": seconds} (see
    probe_alignment)."""
    ratios = {}
    for a in _ALIGN_CANDIDATES:
        below, c, above = (secs[f"{a}-{w}"] / w ** 2 for w in _probe_widths(a))  # seconds per MAC
        ratios[a] = c / max(below, above)
    best = min(ratios.values())
    # the smallest multiple that gets (within 5 points) the best of the runtime's advantage
    align = next(a for a in sorted(ratios) if ratios[a] <= best + 0.05) if best <= 0.92 else 1
    return align, ratios


def group_alignment(size: int, align: int) -> int:
    """The channel multiple a group of `size` channels is cut at: the runtime's preferred
    one where the group is at least twice as wide, else the largest power of two that leaves
    it one cut at least (at alignment 32, a 16-channel group is cut at multiples of 8 and a
    32-channel one at 16, where the runtime's multiple would hold them whole). The table
    measures the layers at those widths, so what the finer widths cost is predicted."""
    a = int(align)
    while a > 1 and size < 2 * a:
        a //= 2
    return a


def measure_layers(layers: list[LayerCost], table: LatencyTable, progress: bool = True) -> int:
    """Measure the signatures the table lacks; returns how many points were measured."""
    from tqdm.auto import tqdm

    target = table.target
    fractions = GRIDS[target.runtime]
    todo: dict[str, LayerCost] = {}
    for lc in layers:
        if lc.signature not in table.layers:
            todo.setdefault(lc.signature, lc)
    if not todo:
        return 0
    # the runtime's cost of one call that does next to nothing (a 1x1 conv on one value),
    # subtracted from every point: the in-graph layer does not pay it
    points, owner = [dict(_CALL_POINT, id="0")], [None]
    for sig, lc in todo.items():
        for p in lc.points(fractions):
            points.append(dict(p, id=str(len(points))))
            owner.append(sig)
    et = target.runtime == "executorch"
    total = len(points) * (2 if et else 1)
    with tempfile.TemporaryDirectory(prefix="pyprune-latency-") as tmp, \
            tqdm(total=total, desc=f"latency table ({target.runtime})", disable=not progress, file=sys.stderr,
                 leave=False) as bar:
        secs = _time_points(points, target, bar, tmp)
    call = secs["0"]
    table.meta_measured["call_s"] = call
    by_sig: dict[str, list] = {}
    for p, sig in zip(points[1:], owner[1:]):
        by_sig.setdefault(sig, []).append((p["cin"], p["cout"], max(secs[p["id"]] - call, 0.0)))
    for sig, rows in by_sig.items():
        gin = sorted({r[0] for r in rows})
        gout = sorted({r[1] for r in rows})
        grid = {(r[0], r[1]): r[2] for r in rows}
        if todo[sig].depthwise:  # one width: c_in = c_out = groups
            table.layers[sig] = {"grid_in": [todo[sig].point["cin"]], "grid_out": gout,
                                 "s": [[grid[(c, c)]] for c in gout]}
        else:
            table.layers[sig] = {"grid_in": gin, "grid_out": gout, "s": [[grid[(ci, co)] for ci in gin] for co in gout]}
    table.save()
    return len(points)


def measure(model: nn.Module, example_input: torch.Tensor, target: LatencyTarget, *, repeats: int = 40,
            min_seconds: float = 2.0, max_seconds: float = 8.0) -> float:
    """Measured p50 seconds of the whole model in the target runtime (a worker process; see
    :func:`pyprune.benchmark`). At least ``min_seconds`` of runs: the median of a longer
    window moves less with the machine's other load."""
    from .bench import benchmark

    shape = (target.batch, *example_input.shape[1:])
    res = benchmark(model, shape, runtimes=[target.runtime], threads=[target.threads], batch_sizes=[target.batch],
                    repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds, progress=False)
    return float(res.rows[0]["p50_s"])


class ReferenceExport:
    """One model's export for the target runtime, made on first use and kept for the next
    :func:`measure_turns` with the same first model; its folder goes with this object."""

    def __init__(self):
        self.model, self.path = None, None
        self._dir = tempfile.mkdtemp(prefix="pyprune-latency-ref-")
        weakref.finalize(self, shutil.rmtree, self._dir, True)

    def file(self, model: nn.Module, shape, target: LatencyTarget) -> str:
        if self.model is not model:
            from .bench import _prepare

            files = _prepare(model, shape, [target.runtime], [target.batch], pathlib.Path(self._dir), [])[target.runtime]
            self.model, self.path = model, str(files.get("*", files.get(str(target.batch))))
        return self.path


def measure_turns(models, example_input: torch.Tensor, target: LatencyTarget, *, repeats: int = 40,
                  min_seconds: float = 2.0, max_seconds: float = 12.0,
                  reference: ReferenceExport | None = None) -> list[float]:
    """p50 seconds of each model in the target runtime, timed in turns in one worker process
    (see :func:`pyprune.bench.benchmark_turns`). With ``reference`` the first model's export
    is made once and reused by later calls with the same first model."""
    from .bench import benchmark_turns

    shape = (target.batch, *example_input.shape[1:])
    models = list(models)
    if reference is not None and models:
        models[0] = reference.file(models[0], shape, target)
    return benchmark_turns(models, shape, target.runtime, target.threads, repeats=repeats,
                           min_seconds=min_seconds, max_seconds=max_seconds)


def _single_input(inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
        return inputs[0]
    raise ValueError("a latency target needs a model with one input tensor (the runtimes are measured on "
                     "exported single-input models); use target_macs= for this model")


# a cache is fitted only where one rate per weight misses a calibration model by more than
# this share of its time (models timed in turns differ by a few percent run to run)
CACHE_EVIDENCE = 0.05


def _positive_seconds(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def l2_cache_weights() -> int:
    """float32 weights one core's L2 cache holds (sysfs; 1 MiB where it does not say): a
    model's weights up to that never stream from memory."""
    try:
        text = pathlib.Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip().upper()
        size = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    except (OSError, ValueError):
        size = 0
    return (size or (1 << 20)) // 4


def fit_rest(act: np.ndarray, weights: np.ndarray, rest: np.ndarray, total: np.ndarray | None = None,
             min_cache: float = 0.0) -> tuple[float, float, float, float]:
    """(r0, r_act, r_weight, c_weight) that fit ``rest ~ r0 + r_act * act + r_weight *
    max(0, weights - c_weight)`` over the calibration's models: the seconds a model takes
    beyond its layers' table times, against its output elements and weights. Exact at the
    first model (the model as it is: relative budgets and the machine's speed refer to it),
    least squares over the others. ``c_weight`` is 0 or tried on a grid from ``min_cache``
    (what the cache holds at least) to the largest model's weights, then refined around the
    best (the fit is linear in the rest; between two models' weights its error moves
    smoothly); a cache that holds none of them (0) wins
    ties, and a cache is only taken with a positive ``r_weight`` and where one rate per weight
    (no cache) misses a model by more than :data:`CACHE_EVIDENCE` of its measured seconds
    ``total`` (default: ``rest``): four models leave a cache and three rates no freedom,
    so without that evidence it would fit the measurements' noise. Where the models cannot
    tell activations from weights (too few groups), a constant and one rate per output
    element."""
    act, weights, rest = (np.asarray(v, np.float64) for v in (act, weights, rest))
    if not (np.isfinite(act).all() and np.isfinite(weights).all() and np.isfinite(rest).all()):
        raise ValueError(f"fit_rest: the calibration's terms must be finite; got output elements {act.tolist()}, "
                         f"weights {weights.tolist()}, rest seconds {rest.tolist()}")

    def solve(c: float, with_weights: bool = True):
        """(squared error, [r0, r_act, r_weight]) at cache c, or None where the rates are not
        determined: the differences from the first model fitted, the first model exact."""
        cols = [act] + ([np.maximum(0.0, weights - c)] if with_weights else [])
        x = np.stack([v[1:] - v[0] for v in cols], axis=1)
        y = rest[1:] - rest[0]
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        if np.linalg.matrix_rank(x / scale, tol=1e-6) < len(cols):
            return None
        rates = np.linalg.lstsq(x / scale, y, rcond=None)[0] / scale
        r0 = rest[0] - sum(r * v[0] for r, v in zip(rates, cols))
        return float(np.sum((x @ rates - y) ** 2)), np.array([r0, *rates, *([] if with_weights else [0.0])])

    def err(c: float) -> float:
        fit = solve(c)
        if fit is None or (c > 0 and fit[1][2] <= 0):  # a cache only where the weights past it cost time
            return math.inf
        return fit[0]

    top = float(weights.max()) if len(weights) else 0.0
    grid = np.concatenate([[0.0], np.linspace(min_cache, top, 128)[:-1]]) if top > min_cache else np.zeros(1)
    linear = solve(0.0)
    if linear is None:  # activations and weights move together: no evidence for a cache either
        grid = grid[:1]
    else:
        cols = np.stack([np.ones_like(act), act, weights], axis=1)
        miss = np.abs(cols @ linear[1] - rest) / np.abs(rest if total is None else np.asarray(total, np.float64))
        if miss.max() <= CACHE_EVIDENCE:
            grid = grid[:1]
    errs = [err(float(c)) for c in grid]
    if not np.isfinite(errs).any():  # too few groups to tell activations from weights: a constant and one rate
        fit = solve(0.0, with_weights=False)
        sol = fit[1] if fit is not None else np.array([rest[0], 0.0, 0.0])
        return float(sol[0]), float(sol[1]), 0.0, 0.0
    tol = 1e-9 * float(np.sum(rest ** 2))  # fits equal to rounding: the smallest cache
    i = int(np.flatnonzero(np.asarray(errs) <= min(errs) + tol)[0])
    c, e = float(grid[i]), errs[i]
    if i > 0:  # refined between the grid's neighbours (golden section)
        lo, hi = float(grid[i - 1] if i > 1 else grid[i]), float(grid[min(len(grid) - 1, i + 1)])
        g = (math.sqrt(5) - 1) / 2
        for _ in range(60):
            a1, a2 = hi - g * (hi - lo), lo + g * (hi - lo)
            if err(a1) <= err(a2):
                hi = a2
            else:
                lo = a1
        mid = (lo + hi) / 2
        if err(mid) < e - tol:
            c = mid
    sol = solve(c)[1]
    return float(sol[0]), float(sol[1]), float(sol[2]), c


class LatencyModel:
    """Predicted seconds of the model at given keep shares per group (see the module docstring).

    ``cost`` is the model's :class:`pyprune.summary.CostModel` (its per-dim shares of each
    group); ``measure_fn(model) -> seconds`` times a whole model (default :func:`measure`)."""

    def __init__(self, model: nn.Module, graph, example_inputs, target: LatencyTarget, cost, *,
                 progress: bool = True, cache=None, measure_fn=None, turns_fn=None, align: int | None = None):
        self.target, self.graph, self.cost = target, graph, cost
        self.example = _single_input(example_inputs)
        self.table = LatencyTable(target, cache)
        self.probed_align = probe_alignment(self.table, progress)  # the runtime's preferred multiple
        self.align = self.probed_align if align is None else int(align)
        self.layers = _layer_costs(model, graph, cost._share)
        self.group_align = {g.id: group_alignment(g.size, self.align) for g in graph.groups}
        for lc in self.layers:
            lc.align = self.align
            # a dim spanning several groups (a concat) is a multiple of the finest of theirs
            lc.align_in, lc.align_out = (min((self.group_align[int(gid)] for gid in cost._share[key][0]),
                                             default=self.align) if key is not None else self.align
                                         for key in (lc.in_key, lc.out_key))
        self.measured_points = measure_layers(self.layers, self.table, progress)
        for lc in self.layers:
            lc.load(self.table.layers[lc.signature])
        self.model = model  # the unpruned model: the reference of paired measurements
        self._measure = measure_fn or (lambda m: measure(m, self.example, target))
        self._exported = ReferenceExport()  # the unpruned model's export, made once for every paired measurement
        if turns_fn is not None:
            self._turns = turns_fn
        elif measure_fn is not None:  # a stand-in runtime: one model at a time
            self._turns = lambda models: [measure_fn(m) for m in models]
        else:
            self._turns = lambda models: measure_turns(models, self.example, target, reference=self._exported)
        # how much slower (> 1) the machine runs now than when the model was calibrated:
        # every prediction is scaled by it (set by refresh and by every paired measurement)
        self.speed = 1.0
        # layers whose widths follow each group (for the solver's local updates)
        self.group_layers: dict[int, list[int]] = {}
        for i, lc in enumerate(self.layers):
            for key in (lc.in_key, lc.out_key):
                if key is not None:
                    for gid in cost._share[key][0]:
                        self.group_layers.setdefault(int(gid), []).append(i)
        self.r0 = self.r_act = self.r_weight = self.c_weight = 0.0
        self._calibrate(model)

    # -- the model ---------------------------------------------------------------------------
    def _fractions(self, lc: LayerCost, keep_frac: np.ndarray) -> tuple[float, float]:
        f_in = self.cost.dim_share(lc.in_key, keep_frac) if lc.in_key is not None else 1.0
        f_out = self.cost.dim_share(lc.out_key, keep_frac) if lc.out_key is not None else 1.0
        return f_in, f_out

    def _raw(self, i: int, keep_frac: np.ndarray) -> tuple[float, float, float]:
        """(table seconds, output elements, weight elements) of layer i at the keep shares."""
        lc = self.layers[i]
        f_in, f_out = self._fractions(lc, keep_frac)
        return lc.at(f_in, f_out), lc.out_numel * f_out, lc.weight_numel * f_out * (1.0 if lc.depthwise else f_in)

    def _layer(self, i: int, keep_frac: np.ndarray) -> tuple[float, float]:
        """(predicted seconds of layer i inside the model but its weights' streaming: its
        table time plus what it pays there and not alone per output element (r_act), its
        weights)."""
        s, n, w = self._raw(i, keep_frac)
        return s + self.r_act * n, w

    def memory_s(self, weights: float) -> float:
        """Seconds the weights beyond what the cache holds take to stream from memory."""
        return self.r_weight * max(0.0, weights - self.c_weight)

    def terms(self, keep_frac: np.ndarray) -> np.ndarray:
        """[table seconds, output elements, weight elements] summed over the layers."""
        return np.sum([self._raw(i, keep_frac) for i in range(len(self.layers))], axis=0).reshape(3)

    def raw_predict(self, keep_frac: np.ndarray) -> float:
        """Predicted seconds at the machine speed of the calibration."""
        t, a, w = self.terms(keep_frac)
        return max(0.0, t + self.r0 + self.r_act * a + self.memory_s(w))

    def predict(self, keep_frac: np.ndarray) -> float:
        """Predicted seconds at the keep shares, at the machine speed last measured."""
        return self.speed * self.raw_predict(keep_frac)

    def floor_predict(self, groups, *, min_keep: float = 0.1, max_ratio: float = 0.95,
                      fixed: dict | None = None) -> float:
        """Predicted seconds (at the speed last measured) with every group of `groups` cut to
        the floor :meth:`solve` respects, at any width (no multiple): the fastest any
        alignment could plan; ``fixed`` {group id: keep} held."""
        kf = np.ones(len(self.graph.groups))
        for g in groups:
            floor = max(1, int(math.ceil(min_keep * g.size)), g.size - g.prunable,
                        g.size - int(math.floor(max_ratio * g.size)))
            kf[g.id] = (fixed or {}).get(g.id, floor) / g.size
        return self.predict(kf)

    def breakdown(self, keep_frac: np.ndarray | None = None) -> list[dict]:
        """Per measured layer: module, kind and predicted seconds inside the model at the
        keep shares (its table time plus its own share of the rest, see :meth:`_layer`)."""
        kf = np.ones(len(self.graph.groups)) if keep_frac is None else keep_frac
        rows = [self._layer(i, kf) for i in range(len(self.layers))]
        total_w = sum(w for _, w in rows)
        per_weight = self.memory_s(total_w) / total_w if total_w > 0 else 0.0  # the streaming, shared by weight
        return [{"module": lc.module, "kind": lc.point["op"], "seconds": max(0.0, s + per_weight * w)}
                for lc, (s, w) in zip(self.layers, rows)]

    def report(self, keep_frac: np.ndarray | None = None, max_rows: int | None = 20) -> str:
        """The table as a person reads it: target, calibration, and the layers by time."""
        c = self.calibration
        rows = sorted(zip(self.breakdown(keep_frac), self.layers), key=lambda r: -r[0]["seconds"])
        lines = [f"latency on {self.target}",
                 "whole model measured (the calibration): " + ", ".join(
                     f"{name.replace('_', ' ')} {1e3 * c[f'{name}_measured_s']:.3f} ms"
                     for name, _, _ in _CALIBRATION_POINTS),
                 f"measured layers alone: {1e3 * c['layers_s']:.3f} ms; rest of the graph: {1e3 * self.r0:+.3f} ms "
                 f"{1e9 * self.r_act:+.3f} ms per million output elements {1e9 * self.r_weight:+.3f} ms per million "
                 f"weights past the {self.c_weight / 1e6:.2f} million the cache holds; kernel alignment {self.align} "
                 "channels" + (
                     f" (groups narrower than {2 * self.align} at finer multiples)"
                     if any(a < self.align for a in self.group_align.values()) else ""),
                 f"{'layer':<44} {'kind':<6} {'shape':<34} {'ms':>8} {'share':>6}"]
        total = max(1e-12, sum(r[0]["seconds"] for r in rows))
        shown = rows if max_rows is None else rows[:max_rows]
        for b, lc in shown:
            p = lc.point
            shape = (f"{p['cin']}->{p['cout']}" if p["op"] == "linear" else
                     f"{p['cin']}->{p['cout']} k{p['k'][0]}x{p['k'][1]} s{p['s'][0]} g{p['g']} @{p['hw'][0]}x{p['hw'][1]}")
            lines.append(f"{b['module'][:44]:<44} {b['kind']:<6} {shape:<34} {1e3 * b['seconds']:>8.3f} "
                         f"{b['seconds'] / total:>6.1%}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more layers")
        return "\n".join(lines)

    @property
    def key(self) -> str:
        """The model's calibration entry in the table (its layers, input and groups, and how
        the calibration was measured: a new method never reads an old method's numbers)."""
        sig = [(lc.module, lc.signature) for lc in self.layers] + [list(self.example.shape[1:]), len(self.graph.groups),
                                                                    _CALIBRATION]
        return hashlib.sha1(json.dumps(sig).encode()).hexdigest()[:16]

    def half_keep(self, late_only: bool = False) -> np.ndarray:
        """:meth:`share_keep` at one half."""
        return self.share_keep(0.5, late_only)

    def share_keep(self, share: float, late_only: bool = False) -> np.ndarray:
        """Unit mask keeping ``share`` of every prunable group's channels, in multiples of its
        alignment (frozen units first; as many in each block of a grouped conv), or with
        ``late_only`` of the later half of them (forward order): the calibration points
        besides the model itself (early layers hold most activations, late ones most
        weights)."""
        mask = np.ones(self.graph.n_units, bool)
        prunable = [g for g in self.graph.groups if g.prunable > 0]
        late = {g.id for g in prunable[len(prunable) // 2:]}
        for g in prunable:
            if late_only and g.id not in late:
                continue
            a = self.group_align[g.id]
            if g.size <= a:
                continue
            k = max(g.size - g.prunable, a * max(1, round(g.size * share / a)))
            m = np.zeros(g.size, bool)
            for pos, n in block_jobs(g, k):  # a grouped conv's blocks keep one count each
                m[pos[np.argsort(~g.frozen[pos], kind="stable")[:n]]] = True
            mask[g.units] = m
        return mask

    def _calibrate(self, model: nn.Module) -> None:
        """r0, r_act, r_weight and c_weight from the whole model measured as it is and at
        the other shares of :data:`_CALIBRATION_POINTS` (cached).

        Inside a model a layer pays what it does not alone and the reverse: the weights of a
        model larger than the cache stream from memory every run (alone they stay cached),
        and alone a layer converts its input and output to the runtime's blocked layout
        (inside, only the graph's edges do). The first scales with the weights past what the
        cache holds, the second with activations: :func:`fit_rest` fits a constant, one rate
        for each and the cache's size to the four measurements."""
        from .surgery import apply_keep

        n = len(self.graph.groups)
        masks = {name: self.share_keep(share, late) for name, share, late in _CALIBRATION_POINTS[1:]}
        names = [name for name, _, _ in _CALIBRATION_POINTS]
        rec = dict(self.table.models.get(self.key) or {})
        todo = [k for k in names if f"{k}_s" not in rec]
        if todo:  # side by side (in turns): their ratios hold on a drifting machine
            secs = self._turns([model, *(apply_keep(model, self.graph, masks[k]) for k in names[1:])])
            rec.update({f"{k}_s": v for k, v in zip(names, secs)})
        bad = [f"{k}: {rec[f'{k}_s']!r}" for k in names if not _positive_seconds(rec[f"{k}_s"])]
        if bad:  # never fitted, never cached: a NaN would make every plan the unpruned model
            where = "measured now" if todo else f"read from {self.table.path} (delete that file to measure again)"
            raise RuntimeError(f"latency calibration on {self.target.runtime}: the whole-model timings must be positive "
                               f"seconds, got {', '.join(bad)} ({where}); check the runtime or the measure function")
        if todo:
            self.table.models[self.key] = rec
            self.table.save()
        self.calibrated_now = bool(todo)
        self.measured_full = rec["full_s"]
        fracs = {"full": np.ones(n)}
        fracs.update({k: np.array([m[g.units].mean() for g in self.graph.groups]) for k, m in masks.items()})
        terms = np.array([self.terms(fracs[k]) for k in names])
        measured = np.array([rec[f"{k}_s"] for k in names], np.float64)
        self.r0, self.r_act, self.r_weight, self.c_weight = fit_rest(terms[:, 1], terms[:, 2], measured - terms[:, 0],
                                                                     measured, min_cache=l2_cache_weights())
        self.calibration = {"layers_s": float(terms[0, 0]), "cache_weights": self.c_weight}
        for k in names:
            self.calibration[f"{k}_measured_s"] = rec[f"{k}_s"]
            self.calibration[f"{k}_predicted_s"] = self.raw_predict(fracs[k])

    def measure(self, model: nn.Module) -> float:
        return self._measure(model)

    def measure_pair(self, model: nn.Module) -> tuple[float, float]:
        """(unpruned seconds, `model` seconds), timed in turns in one worker. The machine's
        speed now (unpruned measured over its calibrated prediction) rescales every later
        prediction, and the unpruned time is what relative budgets refer to from then on."""
        ref, m = self._turns([self.model, model])
        self.speed = ref / max(1e-12, self.raw_predict(np.ones(len(self.graph.groups))))
        self.measured_full = ref
        return ref, m

    def refresh(self, model: nn.Module) -> float:
        """Measure the unpruned model now and rescale the predictions to match it (a cached
        calibration may come from a busier or quieter hour of the machine: every part of the
        model runs that much slower or faster); returns the measurement, which budgets
        relative to the model use from then on."""
        m = self._turns([model])[0]
        self.speed = m / max(1e-12, self.raw_predict(np.ones(len(self.graph.groups))))
        self.measured_full = m
        self.calibration["full_remeasured_s"] = m
        return m

    # -- the solver --------------------------------------------------------------------------
    def solve(self, groups, scores, goal: float, *, round_to: int | None = None, min_keep: float = 0.1,
              fixed: dict | None = None, max_ratio: float = 0.95, weights: dict | None = None) -> dict[int, int]:
        """Keep counts per group that keep the most importance with predicted seconds <= goal.

        Greedy knapsack: repeatedly take the step (``round_to`` channels, else about 1/32 of
        the group) that loses the least normalised score per second saved, updating only the
        layers the group touches. ``fixed`` {group id: keep} are held; floors: frozen units,
        ``min_keep`` of each group and ``max_ratio`` at most removed. ``weights`` {group id:
        factor} scale a group's normalised scores (the pruner passes a mix of the MACs and
        the parameters one of the group's channels carries, see ``latency_weight``: a
        channel is worth what it carries, so the cuts go where the runtime is slow for it).
        Raises ``ValueError`` when the goal cannot be reached."""
        fixed = dict(fixed or {})
        goal = goal / self.speed  # the table's seconds are those of the calibration
        n = len(self.graph.groups)
        keep_frac = np.ones(n)
        keep = {g.id: g.size for g in groups}
        for gid, k in fixed.items():
            keep_frac[gid] = k / self.graph.groups[gid].size
            keep[gid] = k
        rows0 = [self._layer(i, keep_frac) for i in range(len(self.layers))]
        layer_s = np.array([r[0] for r in rows0])
        layer_w = np.array([r[1] for r in rows0])
        left_w = float(layer_w.sum())  # the weights left: what streams past the cache is one global term
        total = float(layer_s.sum() + self.r0) + self.memory_s(left_w)
        if total <= goal * (1 + 1e-9):  # (the goal may be this very sum, added in another order)
            return keep
        prefix, floor = {}, {}
        for g, s in zip(groups, scores):
            if g.id in fixed:
                continue
            s = np.asarray(s, np.float64)
            finite = s[np.isfinite(s)]
            mean = float(np.mean(np.abs(finite))) if len(finite) else 1.0
            norm = np.where(np.isfinite(s), s / (mean if mean > 0 else 1.0), 0.0) * (weights or {}).get(g.id, 1.0)
            free = np.sort(norm[~g.frozen])
            prefix[g.id] = np.concatenate([[0.0], np.cumsum(np.maximum(free, 0.0))])
            floor[g.id] = max(1, int(math.ceil(min_keep * g.size)), g.size - g.prunable,
                              g.size - int(math.floor(max_ratio * g.size)))
        neighbours = {gid: set() for gid in prefix}
        for gid in prefix:
            for i in self.group_layers.get(gid, []):
                for key in (self.layers[i].in_key, self.layers[i].out_key):
                    if key is not None:
                        neighbours[gid].update(int(x) for x in self.cost._share[key][0] if int(x) in prefix)

        def step_down(gid: int, k: int) -> int:
            """The next smaller keep count: a multiple of the step (``round_to`` and the
            group's alignment; a group no larger than its alignment stays whole), else about
            1/32 of the group less."""
            size, align = self.graph.groups[gid].size, self.group_align[gid]
            step = math.lcm(int(round_to or 1), align)
            if step > 1:
                if size <= step:
                    return k if align > 1 else k - max(1, size // 32)
                return max(((k - 1) // step) * step, 0)
            return k - max(1, size // 32)

        def candidate(gid: int):
            """(loss per second saved, new keep, seconds saved, layer rows) of the best next move,
            at the weights left now (the streaming a move saves shrinks as they do)."""
            size, k = self.graph.groups[gid].size, keep[gid]
            best, k2 = None, k
            for _ in range(4):  # look past flat stretches of the table
                k2, prev = step_down(gid, k2), k2
                if k2 < floor[gid] or k2 >= prev:
                    break
                kf = keep_frac.copy()
                kf[gid] = k2 / size
                rows = {i: self._layer(i, kf) for i in self.group_layers.get(gid, [])}
                cut_w = sum(layer_w[i] - w for i, (_, w) in rows.items())
                saved = (sum(layer_s[i] - r for i, (r, _) in rows.items())
                         + self.memory_s(left_w) - self.memory_s(left_w - cut_w))
                if saved > 1e-9:
                    lost = prefix[gid][size - k2] - prefix[gid][size - k]
                    best = (lost / saved, k2, saved, rows)
                    break
            return best

        version = dict.fromkeys(prefix, 0)
        heap = []
        for gid in prefix:
            c = candidate(gid)
            if c is not None:
                heapq.heappush(heap, (c[0], gid, 0, c))
        while total > goal:
            if not heap:
                raise ValueError(f"latency budget of {1e3 * goal * self.speed:.4g} ms is unreachable: with every group "
                                 f"at its floor (min_keep={min_keep}, at most {max_ratio:.0%} removed) the model is "
                                 f"predicted at {1e3 * total * self.speed:.4g} ms on {self.target.runtime}")
            _, gid, ver, c = heapq.heappop(heap)
            if ver != version[gid]:
                continue
            if self.c_weight > 0:  # a move's streaming saved was counted at more weights than are left now
                c = candidate(gid)
                if c is None:
                    continue
                if heap and c[0] > heap[0][0] * (1 + 1e-12):
                    heapq.heappush(heap, (c[0], gid, ver, c))  # no longer the best move: compared again later
                    continue
            _, k2, saved, rows = c
            keep[gid] = k2
            keep_frac[gid] = k2 / self.graph.groups[gid].size
            for i, (r, w) in rows.items():
                layer_s[i], layer_w[i] = r, w
            left_w = float(layer_w.sum())
            total = float(layer_s.sum() + self.r0) + self.memory_s(left_w)
            for other in neighbours[gid] | {gid}:
                version[other] += 1
                c = candidate(other)
                if c is not None:
                    heapq.heappush(heap, (c[0], other, version[other], c))
        return keep
