"""Typed stub of pyprune._core (C++). Call it through pyprune.engine, not directly."""
from typing import Optional, Sequence, TypedDict

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

class KMeansStats(TypedDict):
    """Per-iteration arrays (n_iter entries each)."""

    changed: I64
    moved: I64
    reseeded: I64
    recomputed: I64
    seconds: F64

__version__: str
cuda_available: bool

def num_procs() -> int: ...
def filter_norms(weights: Sequence[F32], p: int, threads: int = 0) -> list[F32]: ...
def cosine_similarity(weight: F32, threads: int = 0) -> F32: ...
def fpgm_scores(weight: F32, threads: int = 0) -> F32: ...
def spherical_kmeans(
    weights: list[F32 | list[F32]],
    ks: Sequence[int],
    max_iter: int = 100,
    early_stop: bool = True,
    seed: int = 0,
    threads: int = 0,
    inits: Optional[Sequence[Optional[F32]]] = None,
    reuse: bool = True,
    kernel: str = "",
    details: bool = False,
) -> list[tuple[F32, I64, I64, F64, int]] | list[tuple[F32, I64, I64, F64, int, KMeansStats, F32, str, F32, F32, F32]]:
    """One tuple per layer: (centroids, labels, representatives, objective, n_iter), and with
    details=True also (stats, cosines, kernel, norms, rep_cosines, rep_residuals). A layer is an
    array or a list of arrays with the same rows (column blocks, read in place). `kernel` forces
    a path; "" = PYPRUNE_GEMM or the fastest this CPU runs."""
def choose_k(
    weights: Sequence[F32], ks: Sequence[Sequence[int]], max_iter: int = 100, seed: int = 0, threads: int = 0,
    min_depth: float = 0.0,
) -> tuple[list[int], list[list[float]]]: ...
def knee_point(xs: Sequence[float], ys: Sequence[float]) -> tuple[int, float]: ...
def gather(sources: Sequence[np.ndarray], indices: Sequence[Sequence[Sequence[int]]], threads: int = 0,
           folds: Sequence[Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = ...) -> list[np.ndarray]: ...
def time_gemm(size: int = 2048, threads: int = 0, repeats: int = 3, packed: bool = False, kernel: str = "") -> float: ...
def packed_gemm_available() -> bool: ...
def gemm_kernel() -> str: ...
def gemm_kernels() -> list[str]: ...
def products(a: F32, b: F32, packed: bool = False, threads: int = 0, kernel: str = "") -> F32: ...
def ridge_solve(
    inputs: Sequence[F32], targets: Sequence[F32], lambda_: float = 1e-4, threads: int = 0
) -> list[tuple[F32, float, float]]:
    """Per layer (W, relative residual, lambda used): W = argmin |A W^T - B|^2 + lambda' |W|^2."""
def spherical_kmeans_emulated(
    weights: list[F32], ks: Sequence[int], max_iter: int, early_stop: bool, seed: int,
    inits: Optional[Sequence[Optional[F32]]], reuse: bool,
) -> list[tuple[F32, I64, I64, F64, int, KMeansStats, F32, str, F32, F32, F32]]:
    """The CUDA k-means's block solver run on the host with one thread (the GPU kernel's
    source): as spherical_kmeans(details=True), kernel "emulated". For tests."""

# Built with PYPRUNE_WITH_CUDA=ON only (cuda_available is then True). Matrices cross as
# (device pointer, rows, cols) of contiguous float32 data; `stream` is a cudaStream_t handle.
Layer = tuple[int, int, int]
def cuda_device_count() -> int: ...
def spherical_kmeans_cuda(
    layers: Sequence[Layer], ks: Sequence[int], max_iter: int, early_stop: bool, seed: int, reuse: bool,
    inits: Sequence[int], outs: Sequence[Sequence[int]], scratch: int, scratch_bytes: int, device: int, stream: int,
) -> list[tuple[int, F64, KMeansStats]]:
    """Per layer (n_iter, objective, stats without seconds); results written to `outs`: per layer
    the pointers of centroids, labels, representatives, cosines, norms, rep_cosines, rep_residuals."""
def spherical_kmeans_cuda_scratch(
    shapes: Sequence[tuple[int, int]], ks: Sequence[int], max_iter: int, has_init: Sequence[bool]
) -> int: ...
def filter_norms_cuda(layers: Sequence[Layer], p: int, outs: Sequence[int], device: int, stream: int) -> None: ...
def cosine_similarity_cuda(x: Layer, out: int, device: int, stream: int) -> None: ...
def fpgm_scores_cuda(x: Layer, out: int, device: int, stream: int) -> None: ...
