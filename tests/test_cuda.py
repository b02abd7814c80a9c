"""The CUDA half of the core, against the CPU core.

The GPU's k-means repeats the CPU solver's arithmetic (kmeans_logic.h): its labels,
representatives and centroids are the CPU's packed-path bits. Two kinds of test:
- the block solver built for the host (``engine._spherical_kmeans_emulated``: the same
  source as the GPU kernel, one thread) against the CPU solver, on every machine;
- the CUDA ops against the CPU ops, where a GPU and a build with the CUDA kernels exist.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from pyprune import engine

# The host build repeats the fused multiply-add chains of the AVX2 / AVX-512 kernels: the
# CPU solver to compare with runs one of those.
FMA_PATHS = [p for p in ("avx2", "avx512") if p in engine.gemm_kernels()]
needs_fma_path = pytest.mark.skipif(not FMA_PATHS, reason="this CPU has neither AVX2+FMA nor AVX-512: "
                                    "no CPU path computes the chains the GPU repeats")
HAS_GPU = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")
needs_cuda_build = pytest.mark.skipif(HAS_GPU and not engine.cuda_built(),
                                      reason="this build has no CUDA kernels (PYPRUNE_WITH_CUDA=OFF)")


def make(n, d, kind="rand", k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    if kind == "planted":
        c = torch.randn(max(1, k), d, generator=g)
        w = c[torch.randint(0, max(1, k), (n,), generator=g)] + 0.05 * torch.randn(n, d, generator=g)
    elif kind == "zeros":
        w[::3] = 0
    elif kind == "dups":
        w[1::2] = w[0::2][: n // 2] * 2.0
    return w


def same_result(a, b, objective_rtol=1e-9):
    """Every output the same bits (objective: the same up to the order of its sum)."""
    for f in ("labels", "representatives", "centroids", "cosines", "norms", "rep_cosines", "rep_residuals"):
        x, y = getattr(a, f).cpu(), getattr(b, f).cpu()
        assert torch.equal(x, y), f"{f} differs at {int((x != y).flatten().nonzero()[0])} of {x.numel()}"
    assert a.n_iter == b.n_iter
    assert [s[:4] for s in a.stats] == [s[:4] for s in b.stats]
    assert_close(a.objective, b.objective, rtol=objective_rtol, atol=1e-9)


# (n, d, K) from one filter to a layer wider than a products tile, depthwise-like (d = 9),
# with and without the Gram matrix (K = n/20 seeds without it).
EMU_CASES = [(1, 1, 1), (2, 3, 1), (7, 5, 3), (16, 9, 8), (64, 27, 32), (64, 27, 3), (128, 576, 64),
             (200, 300, 10), (33, 257, 16), (100, 513, 50), (256, 9, 128)]


@needs_fma_path
@pytest.mark.parametrize("n,d,k", EMU_CASES, ids=["x".join(map(str, c)) for c in EMU_CASES])
@pytest.mark.parametrize("kind", ["rand", "planted", "zeros", "dups"])
def test_device_logic_is_the_cpu_solver(n, d, k, kind):
    w = make(n, d, kind, k)
    for reuse in (True, False):
        for early_stop, max_iter in ((True, 100), (False, 7), (True, 0)):
            kw = dict(max_iter=max_iter, early_stop=early_stop, reuse=reuse, seed=3)
            a = engine._spherical_kmeans_emulated([w], [k], **kw)[0]
            for p in FMA_PATHS:
                same_result(a, engine.spherical_kmeans(w, k, kernel=p, threads=1, **kw)[0])


@needs_fma_path
def test_device_logic_from_given_centroids_and_many_layers():
    ws = [make(96, 27, seed=1), make(40, 300, "planted", 5, seed=2), make(12, 4, "zeros", seed=3)]
    ks = [48, 5, 6]
    inits = [None, make(5, 300, seed=4), make(6, 4, seed=5)]
    for reuse in (True, False):
        a = engine._spherical_kmeans_emulated(ws, ks, init=inits, reuse=reuse, max_iter=30)
        b = engine.spherical_kmeans(ws, ks, init=inits, reuse=reuse, max_iter=30, kernel=FMA_PATHS[0], threads=2)
        for x, y in zip(a, b):
            same_result(x, y)
    w, c = make(8, 6), make(3, 6, seed=9)  # one weight, one tensor of starting centroids
    same_result(engine._spherical_kmeans_emulated(w, 3, init=c)[0],
                engine.spherical_kmeans(w, 3, init=c, kernel=FMA_PATHS[0], threads=1)[0])


def _emulated_kmeans(weights, ks, **kw):
    """engine.spherical_kmeans through the GPU solver's host build (column blocks joined)."""
    kw.pop("threads", None)
    kw.pop("kernel", None)
    ws = [weights] if isinstance(weights, (torch.Tensor, engine.Columns)) else list(weights)
    ws = [torch.cat([b.reshape(len(b), -1) for b in w], 1) if isinstance(w, engine.Columns) else w for w in ws]
    return engine._spherical_kmeans_emulated(ws, ks if isinstance(ks, list) else [ks] * len(ws), **kw)


# torchvision at 224, and timm CNNs at 96 (grouped, ghost modules with SE, dual paths)
DEVICE_LOGIC_MODELS = ["resnet18", pytest.param("resnet152", marks=pytest.mark.slow),
                       pytest.param("densenet201", marks=pytest.mark.slow),  # slow: ~20 s each
                       *(pytest.param(f"timm:{m}", marks=pytest.mark.slow)
                         for m in ("regnetx_002", "ghostnet_050", "mobilenetv3_small_100", "dpn48b"))]


@needs_fma_path
@pytest.mark.parametrize("model", DEVICE_LOGIC_MODELS)
def test_prune_through_the_device_logic_keeps_the_cpus_channels(model, monkeypatch):
    """Issue 17's acceptance workload with the GPU's solver and tiling run on the host: every
    residual stream, concat and clustered layer of the model keeps the channels the CPU's
    packed path keeps, and the pruned models compute the same outputs."""
    import torchvision

    import pyprune

    if engine.gemm_kernel() not in FMA_PATHS:
        pytest.skip(f"the CPU's products path is {engine.gemm_kernel()}, whose rounding the GPU does not repeat")
    torch.manual_seed(0)
    if model.startswith("timm:"):
        timm = pytest.importorskip("timm", reason="timm is a test extra: pip install timm")
        net = timm.create_model(model[5:], pretrained=False, num_classes=10).eval()
        x = torch.randn(1, 3, 96, 96)
    else:
        net = getattr(torchvision.models, model)(weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
    cpu = pyprune.prune(copy.deepcopy(net), x, method="kmeans", ratio=0.5)
    monkeypatch.setattr(engine, "spherical_kmeans", _emulated_kmeans)
    emu = pyprune.prune(copy.deepcopy(net), x, method="kmeans", ratio=0.5)
    assert np.array_equal(cpu.plan.keep_mask(), emu.plan.keep_mask())
    with torch.no_grad():
        assert torch.equal(cpu.model(x), emu.model(x))


def test_device_logic_reports_non_finite_values_as_the_cpu_does():
    w = make(20, 6)
    w[7, 4] = float("nan")
    with pytest.raises(ValueError) as cpu:
        engine.spherical_kmeans([make(8, 6), w], 4)
    with pytest.raises(ValueError) as emu:
        engine._spherical_kmeans_emulated([make(8, 6), w], [4, 4])
    assert str(emu.value) == str(cpu.value) and "weights[1]" in str(cpu.value) and "filter 7, element 4" in str(cpu.value)


def test_devices_other_than_cpu_and_cuda_are_refused_naming_them():
    """Naming the entry (and the block of a Columns) where the devices part."""
    with pytest.raises(ValueError, match="weights: device meta is not supported"):
        engine.filter_norms(torch.randn(3, 3, device="meta"))
    with pytest.raises(ValueError, match=r"weights\[2\]: on meta, but weights\[0\] is on cpu; put them on one device"):
        engine.spherical_kmeans([torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3, device="meta")], 2)
    with pytest.raises(ValueError, match=r"weights\[1\] block 1: on meta, but weights\[0\] is on cpu"):
        engine.spherical_kmeans([torch.randn(4, 3), engine.Columns(torch.randn(4, 3), torch.randn(4, 2, device="meta"))], 2)
    with pytest.raises(ValueError, match=r"init\[0\]: on meta, but the weights are on the CPU"):
        engine.spherical_kmeans(torch.randn(4, 3), 2, init=torch.randn(2, 3, device="meta"))


# --- on the GPU ------------------------------------------------------------------------

CUDA_CASES = EMU_CASES + [(512, 4608, 256), (2048, 512, 1024), (1024, 9, 512), (5000, 40, 50)]


@needs_cuda
@needs_cuda_build
@needs_fma_path
@pytest.mark.parametrize("n,d,k", CUDA_CASES, ids=["x".join(map(str, c)) for c in CUDA_CASES])
def test_cuda_kmeans_is_the_cpu_kmeans(n, d, k):
    for kind in ("rand", "planted", "zeros", "dups"):
        w = make(n, d, kind, k)
        for reuse, early_stop, max_iter in ((True, True, 100), (False, False, 7), (True, True, 0)):
            kw = dict(max_iter=max_iter, early_stop=early_stop, reuse=reuse, seed=3)
            g = engine.spherical_kmeans(w.cuda(), k, **kw)[0]
            assert g.kernel == "cuda" and g.labels.device.type == "cuda"
            same_result(g, engine.spherical_kmeans(w, k, kernel=FMA_PATHS[0], **kw)[0], objective_rtol=1e-6)


@needs_cuda
@needs_cuda_build
@needs_fma_path
def test_cuda_kmeans_batch_columns_and_given_centroids():
    ws = [make(96, 27, seed=1), engine.Columns(make(40, 30, seed=2), make(40, 270, seed=6)), make(12, 4, "zeros", seed=3)]
    ks = [48, 5, 6]
    inits = [None, make(5, 300, seed=4), make(6, 4, seed=5)]
    on_gpu = [engine.Columns(*(b.cuda() for b in w)) if isinstance(w, engine.Columns) else w.cuda() for w in ws]
    for reuse in (True, False):
        a = engine.spherical_kmeans(on_gpu, ks, init=[None if c is None else c.cuda() for c in inits], reuse=reuse)
        b = engine.spherical_kmeans(ws, ks, init=inits, reuse=reuse, kernel=FMA_PATHS[0])
        for x, y in zip(a, b):
            same_result(x, y, objective_rtol=1e-6)


@needs_cuda
@needs_cuda_build
def test_cuda_norms_similarity_and_fpgm():
    ws = [make(64, 27, seed=1), make(300, 1152, "zeros", seed=2), make(1, 1, seed=3)]
    for p in (1, 2):
        for a, b in zip(engine.filter_norms([w.cuda() for w in ws], p), engine.filter_norms(ws, p)):
            assert a.device.type == "cuda" and torch.equal(a.cpu(), b)  # the same 16-lane sums
    for w in ws:
        assert_close(engine.cosine_similarity(w.cuda()).cpu(), engine.cosine_similarity(w), rtol=0, atol=1e-5)
        f_gpu, f_cpu = engine.fpgm_scores(w.cuda()).cpu(), engine.fpgm_scores(w)
        assert_close(f_gpu, f_cpu, rtol=1e-5, atol=1e-5 * float(f_cpu.abs().max()) + 1e-6)


@needs_cuda
@needs_cuda_build
def test_cuda_errors_name_the_input():
    w = make(20, 6)
    w[7, 4] = float("inf")
    with pytest.raises(ValueError) as cpu:
        engine.spherical_kmeans([make(8, 6), w], 4)
    with pytest.raises(ValueError) as gpu:
        engine.spherical_kmeans([make(8, 6).cuda(), w.cuda()], 4)
    assert str(gpu.value) == str(cpu.value)
    with pytest.raises(ValueError, match="1 <= K <= n = 8"):
        engine.spherical_kmeans(make(8, 6).cuda(), 9)
    with pytest.raises(ValueError, match=r"weights\[1\]: on cpu, but weights\[0\] is on cuda"):
        engine.spherical_kmeans([make(8, 6).cuda(), make(8, 6)], 4)
    with pytest.raises(ValueError, match="kernel="):
        engine.spherical_kmeans(make(8, 6).cuda(), 4, kernel="avx2")
    with pytest.raises(ValueError, match="centroid 1 must be finite and non-zero"):
        engine.spherical_kmeans(make(8, 6).cuda(), 2, init=torch.stack([torch.ones(6), torch.zeros(6)]).cuda())
    with pytest.raises(ValueError, match="CPU only"):
        engine.products(make(4, 3).cuda(), make(5, 3).cuda())
    ops = [lambda t: engine.filter_norms([make(8, 6).to(t.device), t]), engine.cosine_similarity, engine.fpgm_scores]
    for op in ops:
        with pytest.raises(ValueError) as cpu:
            op(w)
        with pytest.raises(ValueError) as gpu:
            op(w.cuda())
        assert str(gpu.value) == str(cpu.value) and "filter 7, element 4" in str(cpu.value)


def _resnet18_and_input(seed=0):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 64, 64)


@needs_cuda
@needs_cuda_build
@needs_fma_path
@pytest.mark.parametrize("method", ["kmeans", "l2", "fpgm"])
def test_prune_on_the_gpu_keeps_the_cpus_channels(method):
    import pyprune

    if engine.gemm_kernel() not in FMA_PATHS:
        pytest.skip(f"the CPU's products path is {engine.gemm_kernel()}, whose rounding the GPU does not repeat")
    model, x = _resnet18_and_input()
    cpu = pyprune.prune(copy.deepcopy(model), x, method=method, ratio=0.5, seed=1)
    gpu = pyprune.prune(copy.deepcopy(model).cuda(), x.cuda(), method=method, ratio=0.5, seed=1)
    assert np.array_equal(cpu.plan.keep_mask(), gpu.plan.keep_mask())
    assert next(gpu.model.parameters()).device.type == "cuda"
    with torch.no_grad():
        assert_close(gpu.model(x.cuda()).cpu(), cpu.model(x), rtol=1e-3, atol=1e-3)
