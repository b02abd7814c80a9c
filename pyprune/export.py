"""Export for edge runtimes, verified.

    res = pyprune.export(model, example_input, format="onnx", path="model.onnx")
    res = pyprune.export(model, example_input, format="executorch", path="model.pte",
                         quantize="int8", calibration=loader)

- ``onnx``: ``torch.onnx.export`` (dynamo exporter), one self-contained file (no external
  data sidecar), optionally a dynamic batch dim; run by onnxruntime. ``quantize="int8"``:
  onnxruntime static quantization in QDQ format, calibrated on your batches.
- ``executorch``: ``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK
  partitioner -> ``to_executorch``, a ``.pte`` file run by ``executorch.runtime`` (the
  mobile path). ``quantize="int8"``: PT2E with the XNNPACK quantizer.

Every export is verified: the file is loaded by its runtime in a fresh process and run on
seeded inputs that differ from the example; fp32 must agree with eager within
1e-4 x max|ref|, int8 within 5% of max|ref| with the same top-1 on at least 95% of the
verification batch (on all of it where it holds under 20 items: a near tie may flip).
For int8 the verification batch is a calibration batch held out of the calibration (the
quantization ranges are only meaningful on data like the user's).
A missing runtime raises ImportError naming the pip command.

What export promises besides:
- Outputs: a tensor, or tuples, lists and dicts of tensors (any nesting). They are
  flattened in ``torch.utils._pytree`` order (sequences in order, dicts in key insertion
  order) -- the order of the file's outputs -- and every one is verified;
  ``ExportResult.outputs`` names them (``output['seg']``, ``output[1]``). Top-1 agreement
  is measured on the first.
- Dtype: the example input takes the model's floating dtype. ExecuTorch runs float32,
  float64, float16 and bfloat16 programs; a half-precision program rounds differently from
  eager, so its verification needs the ``rtol`` you accept. ONNX export is float32 only
  (onnxruntime's CPU kernels run no float64 or bfloat16 Conv); int8 starts from float32.
- The model is run once on the example input before anything is exported: an input it
  rejects is a short ValueError naming the input's shape (the model's error chained).
- Nothing half-done is left: the file is written under a temporary name next to `path`
  and moved into place only once it is exported and verified (``pyprune._io.atomic_write``);
  a failed export leaves `path` as it was.
- The caller's model keeps its train/eval state: it is exported in eval mode and each
  module's flag is restored afterwards.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._io import atomic_write
from ._runtime import to_numpy, worker_env

__all__ = ["export", "ExportResult", "ExportError", "FORMATS"]

FORMATS = ("onnx", "executorch")
INSTALL = {
    "onnx": "pip install 'pyprune[onnx]'  (onnx, onnxscript, onnxruntime)",
    "executorch": "pip install 'pyprune[executorch]'  (executorch)",
}
_HALF = (torch.float16, torch.bfloat16)  # no default tolerance: see _check_dtype


class ExportError(RuntimeError):
    """Export or its verification failed; the message says which and by how much."""


@dataclass
class ExportResult:
    path: pathlib.Path
    format: str
    quantized: bool
    size_bytes: int
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")  # max over outputs of max |out - ref| / max |ref|
    top1_agreement: float = float("nan")  # on the first output
    verified: bool = False
    outputs: tuple[str, ...] = ()  # the model's outputs, flattened in the file's order

    def __str__(self) -> str:
        return (f"{self.path} ({self.format}{', int8' if self.quantized else ''}, {self.size_bytes / 1e6:.2f} MB): "
                f"max error {self.max_rel_error:.2e} of max|ref|, top-1 agreement {self.top1_agreement:.3f}")


def _need(fmt: str):
    try:
        if fmt == "onnx":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        else:
            import executorch  # noqa: F401
    except ImportError as e:
        raise ImportError(f"exporting to {fmt} needs its runtime: {INSTALL[fmt]} ({e})") from e


def _batches(calibration, limit=8):
    from .data import iter_batches

    for inputs, _ in iter_batches(calibration, limit):
        yield inputs[0]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The model's floating dtype (its parameters', else its buffers'), else the example's."""
    for tensors in (list(model.parameters()), list(model.buffers())):
        dtypes = {t.dtype for t in tensors if t.is_floating_point()}
        if len(dtypes) > 1:
            names = ", ".join(sorted(_dtype_name(d) for d in dtypes))
            raise ValueError(f"the model's parameters mix dtypes ({names}): convert it to one, e.g. model.float()")
        if dtypes:
            return dtypes.pop()
    return x.dtype


def _check_dtype(fmt: str, dtype: torch.dtype, quantize: str | None, verify: bool, rtol: float | None) -> None:
    """Refuse, before anything is written, a dtype the format or its check cannot serve."""
    name = _dtype_name(dtype)
    if quantize and dtype != torch.float32:
        raise ValueError(f"quantize='int8' starts from a float32 model, this one is {name}: export model.float()")
    if fmt == "onnx" and dtype != torch.float32:
        raise ValueError(f"ONNX export is float32 only and this model is {name}: onnxruntime's CPU kernels run no "
                         "float64 or bfloat16 Conv. Export model.float(), or use format='executorch', "
                         f"which runs {name}")
    if dtype in _HALF and verify and rtol is None:
        raise ValueError(f"a {name} ExecuTorch program rounds differently from {name} eager (a resnet18 in bfloat16: "
                         "5% of max|ref| apart), so the float32 check (1e-4) cannot hold: pass rtol= (the error you "
                         "accept) or verify=False, or export model.float()")


def _check_device(model: nn.Module) -> None:
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type != "cpu":
            raise ValueError(f"the model is on {t.device}: export traces and verifies on the CPU, pass model.cpu()")


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """`model` in eval mode for the block; each module's own train/eval flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _flat_outputs(out) -> tuple[list[str], list[torch.Tensor]]:
    """The model's output flattened in pytree order (the order torch.export gives the file's
    outputs) with a name for each: `output`, `output[0]`, `output['seg']`."""
    leaves = pytree.tree_flatten_with_path(out)[0]
    names, tensors = [], []
    for keys, leaf in leaves:
        name = "output" + pytree.keystr(keys)
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"the model's {name} is a {type(leaf).__name__}, not a tensor: export needs a model "
                            "that returns tensors (one, or tuples, lists and dicts of them)")
        names.append(name)
        tensors.append(leaf)
    if not tensors:
        raise TypeError("the model returns no tensor: export needs a model that returns tensors")
    return names, tensors


def _export_onnx(model, x, path: pathlib.Path, dynamic_batch: bool) -> None:
    dyn = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    if dynamic_batch and x.shape[0] == 1:  # a batch of 1 would be specialised to a constant
        x = x.repeat(2, *([1] * (x.dim() - 1)))
    prog = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dyn, optimize=True, verbose=False)
    prog.save(str(path), external_data=False)


def _quantize_onnx(fp32: pathlib.Path, out: pathlib.Path, calibration, x) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnxruntime as ort

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    batches = [b.numpy().astype(np.float32) for b in _batches(calibration)] if calibration is not None else [x.numpy()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2, plain AVX-512) multiply
        # u8 x s8 with vpmaddubsw, whose int16 pair sums saturate for 8-bit weights; with 7 bits
        # they cannot, so every CPU computes the same exact integer products and the int8
        # model's error is the quantisation error alone (not 5x that on some machines).
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
    finally:
        if pre.exists():
            pre.unlink()


def _export_pte(model, x, path: pathlib.Path, quantize: bool, calibration) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    m = model
    if quantize:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        q = XNNPACKQuantizer()
        q.set_global(get_symmetric_quantization_config(is_per_channel=True))
        m = prepare_pt2e(torch.export.export(model, (x,)).module(), q)
        with torch.no_grad():
            for b in (_batches(calibration) if calibration is not None else [x]):
                if b.shape[0] != x.shape[0]:
                    for i in range(0, b.shape[0] - x.shape[0] + 1, x.shape[0]):
                        m(b[i : i + x.shape[0]])
                else:
                    m(b)
        m = convert_pt2e(m)
    ep = torch.export.export(m, (x,))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)


def run_in_fresh_process(fmt: str, path: pathlib.Path, x) -> list[np.ndarray]:
    """Every output of the exported file at `path` run on `x` (a tensor, or an array) by its
    runtime in a fresh process, in the file's order."""
    t = torch.as_tensor(x)
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "x.npy"), os.path.join(d, "y.npz")
        np.save(inp, to_numpy(t))
        env = worker_env()  # this pyprune, whatever the cwd
        p = subprocess.run([sys.executable, "-m", "pyprune._runtime", "verify", fmt, str(path), inp, out,
                            _dtype_name(t.dtype)], capture_output=True, text=True, timeout=600, env=env)
        if p.returncode != 0:
            raise ExportError(f"the {fmt} runtime could not run the exported file in a fresh process:\n"
                              f"{p.stderr[-2000:]}")
        with np.load(out) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |got - ref|, that / max |ref|); NaN where they disagree on a NaN, so it never passes."""
    if ref.size == 0:
        return 0.0, 0.0
    g, r = got.astype(np.float64), ref.astype(np.float64)
    g, r = np.atleast_1d(g), np.atleast_1d(r)  # (a 0-d output: a scalar loss or score)
    with np.errstate(invalid="ignore"):
        err = np.abs(g - r)
    err[(g == r) | (np.isnan(g) & np.isnan(r))] = 0.0  # equal infinities, NaN in both
    finite = np.abs(r[np.isfinite(r)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    worst = float(err.max())
    return worst, worst / scale


def export(model: nn.Module, example_input: torch.Tensor, format: str = "onnx", path=None, *,
           dynamic_batch: bool = False, quantize: str | None = None, calibration=None, verify: bool = True,
           rtol: float | None = None) -> ExportResult:
    """Export `model` to `format` at `path` and verify it (see the module docstring).

    Everything that can be checked before exporting is (format, dtype, device, the model
    running on `example_input`, tensor outputs); then the file is exported and verified
    under a temporary name and moved to `path` only on success."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input: expected a tensor")
    if not example_input.is_floating_point():
        raise TypeError(f"example_input: expected a floating-point tensor (verification feeds random normal inputs), "
                        f"got {_dtype_name(example_input.dtype)}")
    suffix = ".onnx" if format == "onnx" else ".pte"
    path = pathlib.Path(path) if path is not None else pathlib.Path(f"model{'-int8' if quantize else ''}{suffix}")
    other = {".onnx": "onnx", ".pte": "executorch"}.get(path.suffix.lower())
    if other is not None and other != format:
        raise ValueError(f"{path}: a {path.suffix} file is {other}'s, not {format}'s: name it *{suffix}")
    if path.suffix.lower() in (".pt", ".pth", ".safetensors", ".pt2", ".json"):  # what other readers take
        raise ValueError(f"{path}: a {path.suffix} file is read as a checkpoint or weights file, not as a {format} "
                         f"export: name it *{suffix}")
    if dynamic_batch and format != "onnx":
        raise ValueError(f"dynamic_batch: {format} programs are exported for one batch size (that of the example "
                         "input); export one per batch size, or use onnx")
    _need(format)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    _check_device(model)
    dtype = _model_dtype(model, example_input)
    _check_dtype(format, dtype, quantize, verify, rtol)
    x = example_input.detach().cpu().to(dtype)
    with _evaluating(model), torch.no_grad():
        try:
            out = model(x)
        except Exception as e:
            msg = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(f"the model rejected the example input of shape {tuple(x.shape)} ({_dtype_name(dtype)}): "
                             f"{type(e).__name__}: {msg}. Pass an input the model accepts, e.g. one batch of its "
                             "data") from e
        _flat_outputs(out)  # tensors only, before anything is written
        results = []
        atomic_write(path, lambda tmp: results.append(
            _export_and_verify(model, x, tmp, path, format, dynamic_batch, quantize, calibration, verify, rtol)))
    res = results[0]
    res.size_bytes = path.stat().st_size
    return res


def _export_and_verify(model, x, tmp: pathlib.Path, path: pathlib.Path, format, dynamic_batch, quantize,
                       calibration, verify, rtol) -> ExportResult:
    """Export to `tmp` and verify it there; messages name `path`, where it will be moved."""
    held_out = None
    if quantize and calibration is not None:
        # int8 ranges are calibrated on the user's data: verify on data from the same
        # distribution, a calibration batch held out of the calibration itself
        batches = [b.float() for b in _batches(calibration, limit=9)]
        if len(batches) > 1:
            held_out = batches[-1]
            calibration = [(b, None) for b in batches[:-1]]
    if format == "onnx":
        if quantize:
            fp32 = tmp.with_suffix(".fp32.onnx")
            try:
                _export_onnx(model, x, fp32, True)  # calibration batches may have any size
                _quantize_onnx(fp32, tmp, calibration, x)
            finally:
                fp32.unlink(missing_ok=True)
        else:
            _export_onnx(model, x, tmp, dynamic_batch)
    else:
        _export_pte(model, x, tmp, quantize == "int8", calibration)
    res = ExportResult(path, format, quantize is not None, tmp.stat().st_size)
    if not verify:
        return res
    g = torch.Generator().manual_seed(1234)
    shape = list(x.shape)
    if dynamic_batch and format == "onnx":
        shape[0] = shape[0] + 1  # a batch size the example did not use
    vx = torch.randn(shape, generator=g).to(x.dtype)
    if held_out is not None:
        n = held_out.shape[0] if (dynamic_batch and format == "onnx") else x.shape[0]
        vx = held_out[torch.randperm(held_out.shape[0], generator=g)[:n]]
    names, ref = _flat_outputs(model(vx))
    res.outputs = tuple(names)
    ref = [to_numpy(t) for t in ref]
    print(f"export: verifying {path.name} in {format} (a fresh process) ...", file=sys.stderr, flush=True)
    try:
        got = run_in_fresh_process(format, tmp, vx)
    except ExportError as e:
        raise ExportError(f"{path}: {e}") from None
    got = [got] if isinstance(got, np.ndarray) else list(got)
    if len(got) != len(ref):
        raise ExportError(f"{path}: the {format} file has {len(got)} outputs, eager {len(ref)} ({', '.join(names)})")
    errors = []
    for name, a, b in zip(names, got, ref):
        if a.shape != b.shape:
            raise ExportError(f"{path}: {name} has shape {a.shape} in {format}, {b.shape} in eager")
        errors.append(_compare(a, b))
    res.max_abs_error = float(np.max([e[0] for e in errors]))  # NaN if any is
    worst = max(range(len(errors)), key=lambda i: np.inf if np.isnan(errors[i][1]) else errors[i][1])
    res.max_rel_error = errors[worst][1]
    a, b = got[0], ref[0]
    if a.ndim and len(a):
        res.top1_agreement = float((a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)).mean())
    tol = rtol if rtol is not None else (0.05 if quantize else 1e-4)
    # int8: a near tie in the reference may flip within the error allowed; at most one item
    # in 20 of the batch may (none of a batch under 20)
    flips = 0 if not (a.ndim and len(a)) else round((1.0 - res.top1_agreement) * len(a))
    if not res.max_rel_error <= tol or (quantize and rtol is None and flips > int(0.05 * len(a))):
        where = f" (in {names[worst]})" if len(names) > 1 else ""
        raise ExportError(f"{path} does not agree with eager: max error {res.max_rel_error:.3e} of max|ref|{where} "
                          f"(allowed {tol:g}), top-1 agreement {res.top1_agreement:.3f}")
    res.verified = True
    return res
