"""Typed stub of pyprune._core (C++). Call it through pyprune.engine, not directly."""
from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

__version__: str
cuda_available: bool

def num_procs() -> int: ...
def filter_norms(weights: Sequence[F32], p: int, threads: int = 0) -> list[F32]: ...
def cosine_similarity(weight: F32, threads: int = 0) -> F32: ...
def fpgm_scores(weight: F32, threads: int = 0) -> F32: ...
def spherical_kmeans(
    weights: Sequence[F32],
    ks: Sequence[int],
    max_iter: int = 100,
    early_stop: bool = True,
    seed: int = 0,
    threads: int = 0,
    inits: Optional[Sequence[Optional[F32]]] = None,
    reuse: bool = True,
) -> list[tuple[F32, I64, I64, F64, int]]: ...
def choose_k(
    weights: Sequence[F32], ks: Sequence[Sequence[int]], max_iter: int = 100, seed: int = 0, threads: int = 0
) -> tuple[list[int], list[list[float]]]: ...
def knee_index(xs: Sequence[float], ys: Sequence[float]) -> int: ...
def gather(sources: Sequence[np.ndarray], indices: Sequence[Sequence[Sequence[int]]], threads: int = 0) -> list[np.ndarray]: ...
def time_gemm(size: int = 2048, threads: int = 0, repeats: int = 3) -> float: ...
