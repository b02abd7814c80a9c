"""The CUDA k-means against the CPU core, a plain PyTorch loop and cuBLAS, on the GPU.

Workload (as bench/test_bench_kmeans.py): every Conv2d weight of a randomly initialised
torchvision model, K = C_out / 2, exactly 20 iterations (early stop off), every method from
the same starting centroids, every product recomputed each iteration (``reuse=False``, the
"full products" row) and with reuse (the default). Measured in one run on one machine:

- ``cuda``: ``engine.spherical_kmeans`` on the GPU tensors (one call, all layers);
- ``cpu``: the same call on CPU tensors, on all the machine's cores (same results: the
  labels are compared);
- ``torch_gpu``: a plain spherical Lloyd loop per layer in PyTorch on the same GPU;
- ``cublas``: the same products alone (20 x C X^T per layer through torch.mm, TF32 off):
  the GPU's FP32 sgemm throughput on this workload; the 8192^3 sgemm beside it.

Times are the best of a few runs after a warm-up, each ended by a device synchronisation.
Also checked: ``pyprune.prune(model.cuda(), x.cuda(), method="kmeans")`` keeps the channels
the CPU keeps (resnet152, densenet201).

Run (on a machine with a GPU and a build with ``-Ccmake.define.PYPRUNE_WITH_CUDA=ON``):
    python3 -m pytest bench/test_bench_cuda.py -q -s
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
import torchvision

import reference as ref
from bench_tables import record
from pyprune import engine

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if not engine.cuda_built():
    pytest.skip("this build has no CUDA kernels: pip install . -Ccmake.define.PYPRUNE_WITH_CUDA=ON",
                allow_module_level=True)

ITERS = 20
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def conv_weights(name: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    ws = [m.weight.detach().reshape(m.weight.shape[0], -1).contiguous() for m in model.modules()
          if isinstance(m, torch.nn.Conv2d)]
    g = torch.Generator().manual_seed(0)
    inits = []
    for w in ws:
        k = max(1, w.shape[0] // 2)
        inits.append(ref.unit_rows(w[torch.randperm(w.shape[0], generator=g)[:k]]).float().contiguous())
    flops = sum(2.0 * w.shape[0] * c.shape[0] * w.shape[1] * ITERS for w, c in zip(ws, inits))
    return ws, inits, flops


def best_time(fn, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cublas_products(wg, cg):
    xs = [ref.unit_rows(w).float() for w in wg]

    def run():
        for _ in range(ITERS):
            for x, c in zip(xs, cg):
                torch.mm(c, x.T)
    return run


def torch_lloyd(wg, cg):
    return lambda: [ref.lloyd(w, c, ITERS)[0] for w, c in zip(wg, cg)]


def peak_sgemm():
    a = torch.randn(8192, 8192, device="cuda")
    t, _ = best_time(lambda: torch.mm(a, a), repeats=5)
    return 2.0 * 8192**3 / t


@pytest.mark.parametrize("model", ["resnet152", "densenet201"])
def test_cuda_kmeans_all_convs(model):
    ws, inits, flops = conv_weights(model)
    wg, cg = [w.cuda() for w in ws], [c.cuda() for c in inits]
    ks = [c.shape[0] for c in inits]
    row = dict(workload=model, gpu=torch.cuda.get_device_name(), cpu_threads=engine.num_threads(),
               cpu_path=engine.gemm_kernel(), gflop=flops / 1e9)

    def cuda(reuse):
        return lambda: engine.spherical_kmeans(wg, ks, init=cg, max_iter=ITERS, early_stop=False, reuse=reuse)

    def cpu(reuse):
        return lambda: engine.spherical_kmeans(ws, ks, init=inits, max_iter=ITERS, early_stop=False, reuse=reuse)

    t_full, res_gpu = best_time(cuda(False))
    t_reuse, _ = best_time(cuda(True))
    t_cpu_full, res_cpu = best_time(cpu(False), repeats=2, warmup=0)
    t_cpu_reuse, _ = best_time(cpu(True), repeats=2, warmup=0)
    t_pp, _ = best_time(lambda: engine.spherical_kmeans(wg, ks, max_iter=ITERS, early_stop=False, reuse=False))
    t_torch, _ = best_time(torch_lloyd(wg, cg), repeats=2)
    t_cublas, _ = best_time(cublas_products(wg, cg))
    labels_equal = all(torch.equal(a.labels.cpu(), b.labels) and torch.equal(a.centroids.cpu(), b.centroids)
                       for a, b in zip(res_gpu, res_cpu))
    row.update(cuda_full_s=t_full, cuda_reuse_s=t_reuse, cuda_kmeanspp_full_s=t_pp, cpu_full_s=t_cpu_full,
               cpu_reuse_s=t_cpu_reuse, torch_gpu_s=t_torch, cublas_s=t_cublas,
               cuda_full_tflops=flops / t_full / 1e12, cublas_tflops=flops / t_cublas / 1e12,
               peak_sgemm_tflops=peak_sgemm() / 1e12,
               full_of_cublas=t_cublas / t_full, cpu_over_cuda=t_cpu_full / t_full,
               cpu_reuse_over_cuda_reuse=t_cpu_reuse / t_reuse, torch_over_cuda=t_torch / t_full,
               same_as_cpu=labels_equal)
    record("cuda_kmeans", **row)
    print(row)
    assert labels_equal, "the GPU's labels or centroids differ from the CPU's"
    if model == "resnet152":  # the acceptance workload
        assert t_cublas / t_full >= 0.5, f"full products at {t_cublas / t_full:.2f} of cuBLAS's throughput"
        assert t_cpu_full / t_full >= 5, f"only {t_cpu_full / t_full:.1f}x the CPU path"
        assert t_torch / t_full >= 10, f"only {t_torch / t_full:.1f}x the PyTorch loop"


@pytest.mark.parametrize("model", ["resnet152", "densenet201"])
def test_cuda_prune_keeps_the_cpus_channels(model):
    import pyprune

    torch.manual_seed(0)
    net = getattr(torchvision.models, model)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    cpu = pyprune.prune(copy.deepcopy(net), x, method="kmeans", ratio=0.5)
    t_cpu = time.perf_counter() - t0
    gnet = copy.deepcopy(net).cuda()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu = pyprune.prune(gnet, x.cuda(), method="kmeans", ratio=0.5)
    torch.cuda.synchronize()
    t_gpu = time.perf_counter() - t0
    same = bool(np.array_equal(cpu.plan.keep_mask(), gpu.plan.keep_mask()))
    with torch.no_grad():
        err = float((gpu.model(x.cuda()).cpu() - cpu.model(x)).abs().max())
    record("cuda_prune", workload=model, cpu_s=t_cpu, cuda_s=t_gpu, same_kept=same,
           kept=int(cpu.plan.keep_mask().sum()), units=len(cpu.plan.keep_mask()), max_abs_output_diff=err,
           cpu_path=engine.gemm_kernel(), plan_cuda_s=gpu.seconds.get("plan"), plan_cpu_s=cpu.seconds.get("plan"))
    assert same, "the GPU kept other channels than the CPU"
    assert err < 1e-2
