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
1e-4 x max|ref|, int8 within 5% of max|ref| with the same top-1 on the verification batch.
For int8 the verification batch is a calibration batch held out of the calibration (the
quantization ranges are only meaningful on data like the user's).
A missing runtime raises ImportError naming the pip command.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["export", "ExportResult", "ExportError", "FORMATS"]

FORMATS = ("onnx", "executorch")
INSTALL = {
    "onnx": "pip install 'pyprune[onnx]'  (onnx, onnxscript, onnxruntime)",
    "executorch": "pip install 'pyprune[executorch]'  (executorch)",
}


class ExportError(RuntimeError):
    """Export or its verification failed; the message says which and by how much."""


@dataclass
class ExportResult:
    path: pathlib.Path
    format: str
    quantized: bool
    size_bytes: int
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")  # max |out - ref| / max |ref|
    top1_agreement: float = float("nan")
    verified: bool = False

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


def run_in_fresh_process(fmt: str, path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
        np.save(inp, x)
        print(f"export: verifying {path.name} in {fmt} (a fresh process) ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, "-m", "pyprune._runtime", "verify", fmt, str(path), inp, out],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise ExportError(f"{fmt} runtime could not run {path} in a fresh process:\n{p.stderr[-2000:]}")
        return np.load(out)


def export(model: nn.Module, example_input: torch.Tensor, format: str = "onnx", path=None, *,
           dynamic_batch: bool = False, quantize: str | None = None, calibration=None, verify: bool = True,
           rtol: float | None = None) -> ExportResult:
    """Export `model` to `format` at `path` and verify it (see the module docstring)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input: expected a tensor")
    _need(format)
    suffix = ".onnx" if format == "onnx" else ".pte"
    path = pathlib.Path(path) if path is not None else pathlib.Path(f"model{'-int8' if quantize else ''}{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = example_input.detach().float().cpu()
    held_out = None
    if quantize and calibration is not None:
        # int8 ranges are calibrated on the user's data: verify on data from the same
        # distribution, a calibration batch held out of the calibration itself
        batches = [b.float() for b in _batches(calibration, limit=9)]
        if len(batches) > 1:
            held_out = batches[-1]
            calibration = [(b, None) for b in batches[:-1]]
    with torch.no_grad():
        if format == "onnx":
            if quantize:
                fp32 = path.with_suffix(".fp32.onnx")
                _export_onnx(model, x, fp32, True)  # calibration batches may have any size
                try:
                    _quantize_onnx(fp32, path, calibration, x)
                finally:
                    fp32.unlink(missing_ok=True)
            else:
                _export_onnx(model, x, path, dynamic_batch)
        else:
            _export_pte(model, x, path, quantize == "int8", calibration)
    res = ExportResult(path, format, quantize is not None, path.stat().st_size)
    if not verify:
        return res
    g = torch.Generator().manual_seed(1234)
    shape = list(x.shape)
    if dynamic_batch and format == "onnx":
        shape[0] = shape[0] + 1  # a batch size the example did not use
    vx = torch.randn(shape, generator=g)
    if held_out is not None:
        n = held_out.shape[0] if (dynamic_batch and format == "onnx") else x.shape[0]
        vx = held_out[torch.randperm(held_out.shape[0], generator=g)[:n]]
    with torch.no_grad():
        ref = model(vx).numpy()
    got = run_in_fresh_process(format, path, vx.numpy())
    if got.shape != ref.shape:
        raise ExportError(f"{path}: output shape {got.shape} differs from eager {ref.shape}")
    scale = float(np.abs(ref).max()) or 1.0
    res.max_abs_error = float(np.abs(got - ref).max())
    res.max_rel_error = res.max_abs_error / scale
    res.top1_agreement = float((got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)).mean())
    tol = rtol if rtol is not None else (0.05 if quantize else 1e-4)
    if res.max_rel_error > tol or (quantize and res.top1_agreement < 1.0 and rtol is None):
        raise ExportError(f"{path} does not agree with eager: max error {res.max_rel_error:.3e} of max|ref| "
                          f"(allowed {tol:g}), top-1 agreement {res.top1_agreement:.3f}")
    res.verified = True
    return res
