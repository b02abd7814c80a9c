"""The numeric engine: the only Python module that calls the C++ core (`pyprune._core`).

Everything here takes and returns torch tensors. CPU tensors cross into C++ as zero-copy
numpy views (float32, C-contiguous; other float dtypes and non-contiguous tensors are
converted first). Weights of any rank >= 2 are read as ``(out_channels, -1)``: one row per
filter. Each op decides its device in one place, :func:`_on_cuda`: CUDA tensors go to the
core's CUDA kernels (a build with ``PYPRUNE_WITH_CUDA=ON``) as device pointers on the
current stream, and the results stay on their device.

Zero-norm filters have no direction. Their cosine similarity with anything, themselves
included, is 0; in k-means they score 0 against every centroid (so they join the lowest
numbered cluster of highest similarity, deterministically), they are never chosen as a
seed while a non-zero filter exists, and they become a representative only when a cluster
has nothing else to offer.
"""
from __future__ import annotations

import ctypes
import numbers
import operator
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch


def _load_core():
    # The core links OpenBLAS from the scipy-openblas32 wheel; load it globally first so
    # the extension finds it wherever site-packages lives.
    import scipy_openblas32

    lib = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    from . import _core

    return _core


class _UserErrors:
    """The core's functions, with its check details (the failed expression and the C++ file
    and line) kept out of the message a user reads; they stay in ``__cause__``."""

    _detail = re.compile(r"\s*\[check `.*` failed at [^\]]*\]")

    def __init__(self, core):
        self._core = core

    def __getattr__(self, name):
        fn = getattr(self._core, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as e:
                raise ValueError(self._detail.sub("", str(e))) from e

        return call


_core = _UserErrors(_load_core())

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]


class Columns(tuple):
    """One layer's filters given as column blocks: tensors with the same number of filters
    (dim 0), clustered as the concatenation of their ``(filters, -1)`` views along the
    weights, as ``torch.cat([b.reshape(len(b), -1) for b in blocks], 1)`` would give, but
    without building it: the core reads every block in place. A residual stream's
    producers are such blocks. ``spherical_kmeans([Columns(w1, w2), w3], ks)`` clusters two
    layers."""

    def __new__(cls, *blocks: torch.Tensor):
        if not blocks:
            raise ValueError("Columns: expected at least one tensor")
        return super().__new__(cls, blocks)

    def __getnewargs__(self):
        # pickle and copy rebuild through __new__(*blocks), not tuple's __new__(iterable)
        return tuple(self)

    def take(self, index) -> "Columns":
        """The filters at ``index`` (positions along dim 0) of every block."""
        return Columns(*(b[index] for b in self))


__all__ = [
    "Columns",
    "IterationStats",
    "KMeansResult",
    "filter_norms",
    "cosine_similarity",
    "fpgm_scores",
    "spherical_kmeans",
    "choose_k",
    "knee_index",
    "gather",
    "ridge_solve",
    "gemm_seconds",
    "gemm_kernel",
    "gemm_kernels",
    "packed_gemm_available",
    "products",
    "num_threads",
]


class IterationStats(NamedTuple):
    """What one k-means iteration (an assignment step, then an update step) did; the
    counterpart of faiss's ``ClusteringIterationStats``.

    changed: filters whose label changed in the assignment (all n in the first iteration;
        0 in the last one when early stopping ended the run).
    moved: centroids the update step moved, re-seeded ones included (at most K; 0 in the
        last iteration of an early-stopped run, which has no update step).
    reseeded: empty clusters the update step re-seeded with the worst-served filters.
    recomputed: rows of the similarity product the assignment computed anew: K in the
        first iteration and with ``reuse=False``; with reuse the centroids that moved since
        the previous assignment (K again when more than 3/4 of them moved, as one full
        product is then cheaper). This is the work reuse saves.
    seconds: wall-clock time of the iteration (0.0 on CUDA, where the iterations are kernels
        queued on the stream and only the whole call is timed).

    A named tuple: fields by name (``s.moved``) or unpacked in this order.
    """

    changed: int
    moved: int
    reseeded: int
    recomputed: int
    seconds: float


@dataclass(frozen=True)
class KMeansResult:
    """Spherical k-means of one layer.

    centroids: (K, d) unit-norm cluster directions.
    labels: (n,) int64 cluster of every filter (last assignment step).
    representatives: (K,) int64 distinct filter indices, per cluster the member closest to
        its centroid: the filters to keep when pruning to K channels. A cluster left without
        members (K above the number of distinct filter directions) is given a filter no other
        cluster chose, so the K stay distinct; that filter's label names another cluster.
    objective: (n_iter,) float64, sum of each filter's cosine to its centroid, per
        iteration; it never decreases.
    n_iter: number of iterations (assignment steps) run.
    stats: one :class:`IterationStats` per iteration (``len(stats) == n_iter``).
    cosines: (n,) float32, each filter's cosine to its centroid in this result
        (``centroids[labels]``; 0 for a zero filter), computed by the core.
    kernel: the products path the run used (see :func:`gemm_kernel`).
    norms: (n,) float32, each filter's L2 norm as given.
    rep_cosines: (n,) float32, each filter's cosine to its cluster's representative (1 for
        the representative itself, 0 for a zero filter).
    rep_residuals: (n,) float32, the relative residual |w_i - a w_r| / |w_i| of each
        filter's least-squares multiple a of its representative w_r (0 for the representative
        and for zero filters). With ``rep_cosines`` and ``norms``: what weight merging needs.
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    representatives: torch.Tensor
    objective: torch.Tensor
    n_iter: int
    stats: list[IterationStats] = field(default_factory=list)
    cosines: torch.Tensor | None = None
    kernel: str = ""
    norms: torch.Tensor | None = None
    rep_cosines: torch.Tensor | None = None
    rep_residuals: torch.Tensor | None = None


def num_threads() -> int:
    """Number of cores the core uses when ``threads=None``."""
    return int(_core.num_procs())


def _int_arg(name: str, value, lo: int, hi: int, what: str) -> int:
    """An integer argument (Python's or numpy's) in [lo, hi], else a ValueError naming it."""
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or not lo <= v <= hi:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    return _int_arg("threads", threads, 1, 1 << 16, "a positive int (at most 65536) or None (all cores)")


def _as_list(weights: TensorOrList, name: str) -> tuple[list[torch.Tensor], bool]:
    if isinstance(weights, torch.Tensor):
        return [weights], True
    if isinstance(weights, (list, tuple)):
        if len(weights) == 0:
            raise ValueError(f"{name}: empty list, expected at least one weight tensor")
        return list(weights), False
    raise TypeError(f"{name}: expected a torch.Tensor or a list of them, got {type(weights).__name__}")


def _check_weight(w, name: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {w.dtype}")
    if w.dim() < 2:
        raise ValueError(
            f"{name}: expected a conv/linear weight of rank >= 2 (out_channels, ...), "
            f"got shape {tuple(w.shape)}"
        )
    if w.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(w.shape)}")


def _to_core(w: torch.Tensor, name: str) -> np.ndarray:
    """Check one weight and view it as a float32 (n, d) C-contiguous numpy array."""
    if isinstance(w, torch.Tensor) and w.device.type != "cpu":
        if w.device.type == "cuda" and not cuda_built():
            raise _no_cuda_kernels(name, w.device)
        raise ValueError(f"{name}: tensor is on {w.device}, but this operation runs on the CPU only: "
                         "move the tensors to the CPU (.cpu())")
    _check_weight(w, name)
    x = w.detach().reshape(w.shape[0], -1)
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def cuda_built() -> bool:
    """Whether this build of the core has the CUDA kernels (``PYPRUNE_WITH_CUDA=ON``)."""
    return bool(getattr(_core, "cuda_available", False))


def _on_cuda(tensors: Sequence, name: str) -> bool:
    """The one device decision of an op: True when its tensors are on a CUDA device (then
    all must be on the same one, and the build must have the CUDA kernels), False when all
    are on the CPU. Tensors on other devices, or on several, are refused naming the entry
    (``name[i]``, and the block of a Columns) where the devices part."""
    devs = []
    for i, t in enumerate(tensors):
        entry = name if len(tensors) == 1 else f"{name}[{i}]"
        blocks = t if isinstance(t, Columns) else (t,)
        for j, b in enumerate(blocks):
            if isinstance(b, torch.Tensor):
                devs.append((entry + (f" block {j}" if isinstance(t, Columns) else ""), b.device))
    if not devs or all(d.type == "cpu" for _, d in devs):
        return False
    first_label, first = devs[0]
    for label, d in devs[1:]:
        if d != first:
            raise ValueError(f"{label}: on {d}, but {first_label} is on {first}; put them on one device")
    if first.type != "cuda":
        raise ValueError(f"{first_label}: device {first} is not supported by the core (CPU or CUDA)")
    if not cuda_built():
        raise _no_cuda_kernels(first_label, first)
    return True


def _no_cuda_kernels(name: str, device) -> ValueError:
    return ValueError(f"{name}: tensor is on {device}, but this pyprune build has no CUDA kernels; "
                      "move the weights to the CPU (.cpu()) or build with "
                      "`pip install . -Ccmake.define.PYPRUNE_WITH_CUDA=ON`")


def _to_cuda(w, name: str) -> torch.Tensor:
    """Check one weight (or a Columns: concatenated on its device) and return it as a
    float32 (n, d) contiguous matrix on its CUDA device; the caller keeps it alive while
    the core reads it."""
    if isinstance(w, Columns):
        blocks = [_to_cuda(b, f"{name} block {i}") for i, b in enumerate(w)]
        for i, b in enumerate(blocks[1:], 1):
            if b.shape[0] != blocks[0].shape[0]:
                raise ValueError(f"{name}: every column block needs the same number of filters: block 0 has "
                                 f"{blocks[0].shape[0]}, block {i} has {b.shape[0]}")
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)
    _check_weight(w, name)
    return w.detach().reshape(w.shape[0], -1).to(torch.float32).contiguous()


def _layer(x: torch.Tensor) -> tuple[int, int, int]:
    return (x.data_ptr(), x.shape[0], x.shape[1])


def _stream(x: torch.Tensor) -> tuple[int, int]:
    """(device index, the current stream's handle) of a CUDA tensor."""
    return x.device.index, torch.cuda.current_stream(x.device).cuda_stream


def _arrays(weights: TensorOrList, name: str) -> tuple[list[np.ndarray], bool]:
    ws, single = _as_list(weights, name)
    if single:
        return [_to_core(ws[0], name)], True
    return [_to_core(w, f"{name}[{i}]") for i, w in enumerate(ws)], False


def filter_norms(weights: TensorOrList, p: int = 2, *, threads: int | None = None):
    """Per-filter L1 (``p=1``) or L2 (``p=2``) norms, all layers in one parallel call.

    Returns a float32 tensor of shape (out_channels,) for a single weight, a list for a list.
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    ws, single = _as_list(weights, "weights")
    if _on_cuda(ws, "weights"):
        xs = [_to_cuda(w, f"weights[{i}]" if not single else "weights") for i, w in enumerate(ws)]
        out = [torch.empty(x.shape[0], dtype=torch.float32, device=x.device) for x in xs]
        _core.filter_norms_cuda([_layer(x) for x in xs], int(p), [o.data_ptr() for o in out], *_stream(xs[0]))
        return out[0] if single else out
    arrays, single = _arrays(weights, "weights")
    out = [torch.from_numpy(a) for a in _core.filter_norms(arrays, int(p), _threads(threads))]
    return out[0] if single else out


def cosine_similarity(weight: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
    """Pairwise cosine similarity (n, n) of a layer's filters (zero filters give 0); on the
    weight's device."""
    if _on_cuda([weight], "weight"):
        x = _to_cuda(weight, "weight")
        out = torch.empty(x.shape[0], x.shape[0], dtype=torch.float32, device=x.device)
        _core.cosine_similarity_cuda(_layer(x), out.data_ptr(), *_stream(x))
        return out
    return torch.from_numpy(_core.cosine_similarity(_to_core(weight, "weight"), _threads(threads)))


def fpgm_scores(weight: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
    """Geometric-median (FPGM) score per filter: summed Euclidean distance to all other
    filters of the layer, on the signed weights. The smallest scores mark the filters that
    the others can best stand in for. On the weight's device."""
    if _on_cuda([weight], "weight"):
        x = _to_cuda(weight, "weight")
        out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        _core.fpgm_scores_cuda(_layer(x), out.data_ptr(), *_stream(x))
        return out
    return torch.from_numpy(_core.fpgm_scores(_to_core(weight, "weight"), _threads(threads)))


def _kmeans_arrays(weights, name: str) -> tuple[list, bool]:
    """As _arrays, where a layer may also be a Columns: a list of arrays for the core."""
    def layer(w, what):
        if not isinstance(w, Columns):
            return _to_core(w, what)
        blocks = [_to_core(b, f"{what} block {i}") for i, b in enumerate(w)]
        for i, b in enumerate(blocks[1:], 1):
            if b.shape[0] != blocks[0].shape[0]:
                raise ValueError(f"{what}: every column block needs the same number of filters: block 0 has "
                                 f"{blocks[0].shape[0]}, block {i} has {b.shape[0]}")
        return blocks

    if isinstance(weights, (torch.Tensor, Columns)):
        return [layer(weights, name)], True
    ws, _ = _as_list(weights, name)
    return [layer(w, f"{name}[{i}]") for i, w in enumerate(ws)], False


def _rows(a) -> int:
    """Filters of a core layer: an array, or a list of column blocks."""
    return a[0].shape[0] if isinstance(a, list) else a.shape[0]


def _check_ks(ks, arrays: list) -> list[int]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = [int(ks)] * len(arrays)
    if not isinstance(ks, (list, tuple)) or len(ks) != len(arrays):
        raise ValueError(f"ks: expected an int or one int per layer ({len(arrays)}), got {ks!r}")
    out = []
    for i, (k, a) in enumerate(zip(ks, arrays)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"ks[{i}]: expected an int, got {k!r}")
        if not 1 <= int(k) <= _rows(a):
            raise ValueError(f"ks[{i}]: K must satisfy 1 <= K <= n = {_rows(a)} filters, got K = {k}")
        out.append(int(k))
    return out


def spherical_kmeans(
    weights: TensorOrList,
    ks,
    *,
    max_iter: int = 100,
    early_stop: bool = True,
    seed: int = 0,
    threads: int | None = None,
    init: TensorOrList | None = None,
    reuse: bool = True,
    kernel: str | None = None,
) -> list[KMeansResult]:
    """Spherical k-means of every layer's filters, all layers in one call into C++.

    Filters are normalised to unit length and clustered by cosine similarity: k-means++
    seeding (``seed``), Lloyd iterations until no label changes (``early_stop``) or
    ``max_iter``, empty clusters re-seeded with the worst-served filter. Large layers are
    split over threads, small ones run side by side.

    ``ks`` is one K for all layers or one per layer. ``init`` optionally gives the (K, d)
    starting centroids per layer (``None`` entries use k-means++). Returns one
    :class:`KMeansResult` per layer. A layer may be a :class:`Columns` of blocks (a residual
    stream's producers): clustered as their concatenation, read in place.

    Every value is checked to be finite while the filters are normalised; a layer holding
    an infinite or NaN value raises ValueError naming it (the first such layer, after the
    others have run).

    ``reuse=True`` recomputes, at each assignment, the similarities of only the centroids
    that moved since the previous one; the others are kept from before. Lloyd's iterations
    soon leave most centroids where they are (on random conv filters with K = n/2, about 4%
    of the centroids move per iteration after the first), so most of each iteration's
    product is skipped. Labels, centroids and objective are those of recomputing everything
    (up to float rounding of the product); ``reuse=False`` recomputes everything.

    With k-means++ seeding (on every path) and K large enough that seeding plus two
    iterations would multiply out more than the filters' Gram matrix costs (K = n/2 on every
    layer of a ResNet), the seeding computes that Gram matrix once and every iteration reads
    its similarities from it: a centroid's row is the sum of its members' rows over its norm
    (n^2 additions per iteration instead of K n d multiply-adds). The labels are those of the
    products up to float rounding.

    ``kernel`` forces the path of the products (``"blas"``, ``"packed"``, ``"avx512"``,
    ``"avx2"``, ``"portable"``, as for :func:`products`); ``None`` takes
    :func:`gemm_kernel`. Every path gives the same clustering up to float rounding.
    Each result carries per-iteration :class:`IterationStats` and each filter's cosine to
    its centroid.

    On CUDA tensors (a build with ``PYPRUNE_WITH_CUDA=ON``) the same algorithm runs on the
    GPU with the CPU's arithmetic (the AVX2/AVX-512 path's bits), all layers in one call;
    the results stay on the device and ``kernel`` is ``"cuda"``. Those kernels have not yet
    been run on a GPU: ``bench/cuda_check.sh`` is their check.
    """
    layers = [weights] if isinstance(weights, (torch.Tensor, Columns)) else weights
    if isinstance(layers, (list, tuple)) and layers and _on_cuda(layers, "weights"):
        return _spherical_kmeans_cuda(weights, ks, max_iter=max_iter, early_stop=early_stop, seed=seed,
                                      init=init, reuse=reuse, kernel=kernel)
    arrays, single = _kmeans_arrays(weights, "weights")
    k_list = _check_ks(ks, arrays)
    max_iter, seed = _check_kmeans_args(max_iter, seed)
    inits = _cpu_inits(init, single, len(arrays))
    path = "" if kernel is None else _kernel(kernel)
    raw = _core.spherical_kmeans(arrays, k_list, max_iter, bool(early_stop), seed, _threads(threads), inits,
                                 bool(reuse), path, True)
    return [_result(r) for r in raw]


def _result(raw) -> KMeansResult:
    """A KMeansResult from the core's tuple (spherical_kmeans with details=True)."""
    c, lab, rep, obj, n_iter, st, cos, used, nrm, rcos, rres = raw
    return KMeansResult(
        centroids=torch.from_numpy(c),
        labels=torch.from_numpy(lab),
        representatives=torch.from_numpy(rep),
        objective=torch.from_numpy(obj),
        n_iter=int(n_iter),
        stats=[IterationStats(*row) for row in zip(*(st[f].tolist() for f in IterationStats._fields))],
        cosines=torch.from_numpy(cos),
        kernel=str(used),
        norms=torch.from_numpy(nrm),
        rep_cosines=torch.from_numpy(rcos),
        rep_residuals=torch.from_numpy(rres),
    )


def _init_list(init, single: bool, layers: int) -> list:
    """spherical_kmeans's ``init`` as one entry (a tensor or None) per layer."""
    if isinstance(init, torch.Tensor) and not single:
        raise ValueError(f"init: one tensor for {layers} layers; pass a list with one tensor (or None) per layer")
    init_list = [init] if single and isinstance(init, torch.Tensor) else list(init)
    if len(init_list) != layers:
        raise ValueError(f"init: expected one entry per layer ({layers}), got {len(init_list)}")
    return init_list


def _cpu_inits(init, single: bool, layers: int) -> list | None:
    """The CPU k-means's starting centroids, one array (or None) per layer, checked."""
    if init is None:
        return None
    out = []
    for i, c in enumerate(_init_list(init, single, layers)):
        if isinstance(c, torch.Tensor) and c.device.type != "cpu":
            raise ValueError(f"init[{i}]: on {c.device}, but the weights are on the CPU; put them on one device")
        out.append(None if c is None else _to_core(c, f"init[{i}]"))
    return out


def _check_kmeans_args(max_iter, seed) -> tuple[int, int]:
    """(max_iter, seed) as Python ints, in the ranges the core takes."""
    return (_int_arg("max_iter", max_iter, 0, (1 << 31) - 1, "an int in [0, 2**31)"),
            _int_arg("seed", seed, 0, (1 << 63) - 1, "an int in [0, 2**63)"))


def _spherical_kmeans_cuda(weights, ks, *, max_iter, early_stop, seed, init, reuse, kernel) -> list[KMeansResult]:
    """spherical_kmeans on CUDA tensors: the same algorithm and arithmetic as the CPU's
    packed path, all layers in one call; results on the weights' device."""
    if kernel is not None:
        raise ValueError(f"kernel={kernel!r} selects a CPU products path, but the weights are on CUDA; "
                         "leave kernel=None")
    single = isinstance(weights, (torch.Tensor, Columns))
    ws = [weights] if single else list(weights)
    xs = [_to_cuda(w, "weights" if single else f"weights[{i}]") for i, w in enumerate(ws)]
    k_list = _check_ks(ks, xs)
    max_iter, seed = _check_kmeans_args(max_iter, seed)
    inits: list = [None] * len(xs)
    if init is not None:
        inits = []
        for i, (c, x, k) in enumerate(zip(_init_list(init, single, len(xs)), xs, k_list)):
            if c is None:
                inits.append(None)
                continue
            c = _to_cuda(c, f"init[{i}]")
            if c.device != x.device:
                raise ValueError(f"init[{i}]: on {c.device}, the weights on {x.device}")
            if tuple(c.shape) != (k, x.shape[1]):
                raise ValueError(f"init[{i}]: expected shape ({k}, {x.shape[1]}), got {tuple(c.shape)}")
            sq = c.double().pow(2).sum(1)
            bad = torch.nonzero(~(torch.isfinite(sq) & (sq > 0))).flatten()
            if len(bad):
                j = int(bad[0])
                raise ValueError(f"init: centroid {j} must be finite and non-zero (squared norm {float(sq[j])})")
            inits.append(c)
    dev = xs[0].device
    outs, ptrs = [], []
    for x, k in zip(xs, k_list):
        n, d = x.shape
        o = (torch.empty(k, d, dtype=torch.float32, device=dev), torch.empty(n, dtype=torch.int64, device=dev),
             torch.empty(k, dtype=torch.int64, device=dev), *(torch.empty(n, dtype=torch.float32, device=dev)
                                                             for _ in range(4)))
        outs.append(o)
        ptrs.append([t.data_ptr() for t in o])
    init_ptrs = [0 if c is None else c.data_ptr() for c in inits]
    # the working memory from torch's caching allocator, which can free its cache for it
    nbytes = _core.spherical_kmeans_cuda_scratch([tuple(x.shape) for x in xs], k_list, max_iter,
                                                 [c is not None for c in inits])
    scratch = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    raw = _core.spherical_kmeans_cuda([_layer(x) for x in xs], k_list, max_iter, bool(early_stop), seed, bool(reuse),
                                      init_ptrs, ptrs, scratch.data_ptr(), nbytes, *_stream(xs[0]))
    results = []
    for (c, lab, rep, cos, nrm, rcos, rres), (n_iter, obj, st) in zip(outs, raw):
        stats = [IterationStats(int(a), int(b), int(e), int(f), 0.0)
                 for a, b, e, f in zip(st["changed"], st["moved"], st["reseeded"], st["recomputed"])]
        results.append(KMeansResult(centroids=c, labels=lab, representatives=rep, objective=torch.from_numpy(obj),
                                    n_iter=int(n_iter), stats=stats, cosines=cos, kernel="cuda", norms=nrm,
                                    rep_cosines=rcos, rep_residuals=rres))
    return results


def _spherical_kmeans_emulated(weights, ks, *, max_iter=100, early_stop=True, seed=0, init=None,
                               reuse=True) -> list[KMeansResult]:
    """The CUDA k-means's block solver run on the host with one thread (the same source as
    the GPU kernel; slow): what lets a machine without a GPU test the GPU's logic against
    the CPU solver. Contiguous CPU layers; results as spherical_kmeans's, kernel 'emulated'."""
    ws, single = _as_list(weights, "weights")
    arrays = [_to_core(w, "weights" if single else f"weights[{i}]") for i, w in enumerate(ws)]
    k_list = _check_ks(ks, arrays)
    max_iter, seed = _check_kmeans_args(max_iter, seed)
    inits = _cpu_inits(init, single, len(arrays))
    raw = _core.spherical_kmeans_emulated(arrays, k_list, max_iter, bool(early_stop), seed, inits, bool(reuse))
    return [_result(r) for r in raw]


def choose_k(
    weight: TensorOrList,
    ks: Sequence[int],
    *,
    max_iter: int = 100,
    seed: int = 0,
    threads: int | None = None,
    return_curve: bool = False,
    min_depth: float = 0.0,
):
    """Choose the cluster count per layer automatically.

    Runs spherical k-means for every K in ``ks`` (increasing) and takes the final
    distortion ``sum(1 - cos)``. The chosen K is the knee of the log-distortion curve by
    the maximum-distance-to-chord rule (the Kneedle idea): with both axes scaled to
    [0, 1], the point farthest below the line from the first to the last point. The rule
    needs no tuning constant and does not depend on units; taking it on the logarithm makes
    it weigh *relative* gains, so it marks where one more cluster stops removing a real
    share of the remaining distortion, even when the curve falls almost linearly before
    the knee (where the rule on raw values picks too early). Distortions are floored at
    1e-3 of the first one so that K = n (zero distortion) cannot dominate, and at 1e-5 per
    filter, below which a distortion is float noise: a curve there from its first K on (every
    filter a scaled copy of that many directions) gives its first K. A flat curve gives the
    smallest K (with ``min_depth`` 0).

    ``min_depth`` (in [0, 1)) is how far below the chord, on those scaled axes, the knee
    must lie to count as an elbow. A layer whose knee is shallower gets its *largest*
    candidate: no smaller K is clearly enough (the knee is never the last candidate, so
    the largest K marks "no elbow"). Filters with clear cluster structure give knees
    0.17-0.63 deep (noisy copies of a few prototypes, noise up to half their norm); random
    and trained CNN filters up to 0.13, where the knee is geometry, not clusters, and often
    falls on the smallest K. ``prune(ratio="auto")`` uses 0.15; the default 0 keeps every
    knee. The rule needs the candidates to start at or below the true count (from K = 1,
    as ``ratio="auto"`` does): a curve that starts past its elbow has none to find, and
    curves of one or two candidates have no knee (depth 0).

    ``ks`` is one increasing list of candidates for every layer, or (for a list of weights)
    one list per layer. Returns an int for a single weight, a list for a list; with
    ``return_curve=True`` also the distortion curve(s).
    """
    if _on_cuda(weight if isinstance(weight, (list, tuple)) else [weight], "weight"):
        # the candidates' clusterings run on the CPU (the curve is a few numbers per K)
        weight = [w.cpu() for w in weight] if isinstance(weight, (list, tuple)) else weight.cpu()
    arrays, single = _arrays(weight, "weight")
    ks = [ks] if isinstance(ks, int) else [list(k) if isinstance(k, (list, tuple, range)) else k for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one candidate K")
    per_layer_ks = ks if all(isinstance(k, list) for k in ks) and len(ks) == len(arrays) and not single else [ks] * len(arrays)
    per_layer = []
    for i, (a, cand) in enumerate(zip(arrays, per_layer_ks)):
        if not cand:
            raise ValueError(f"ks: layer {i} has no candidate K")
        per_layer.append(_check_ks(list(cand), [a] * len(cand)))
        if any(b <= a_ for a_, b in zip(per_layer[-1], per_layer[-1][1:])):
            raise ValueError(f"ks: candidate values must be strictly increasing, got {list(cand)}")
    if isinstance(min_depth, bool) or not isinstance(min_depth, numbers.Real) or not 0.0 <= min_depth < 1.0:
        raise ValueError(f"min_depth must be a number in [0, 1), got {min_depth!r}")
    max_iter, seed = _check_kmeans_args(max_iter, seed)
    chosen, curves = _core.choose_k(arrays, per_layer, max_iter, seed, _threads(threads), float(min_depth))
    chosen = [int(c) for c in chosen]
    curves = [torch.tensor(c, dtype=torch.float64) for c in curves]
    if single:
        return (chosen[0], curves[0]) if return_curve else chosen[0]
    return (chosen, curves) if return_curve else chosen


def knee_index(xs: Sequence[float], ys: Sequence[float], *, return_depth: bool = False):
    """Index of the knee of a decreasing curve (see :func:`choose_k` for the rule); with
    ``return_depth=True`` also its depth below the chord on the [0, 1]-scaled axes (0 when
    no point lies below it)."""
    index, depth = _core.knee_point([float(x) for x in xs], [float(y) for y in ys])
    return (int(index), float(depth)) if return_depth else int(index)


def ridge_solve(inputs: TensorOrList, targets: TensorOrList, *, lam: float = 1e-4,
                threads: int | None = None) -> list[tuple[torch.Tensor, float]]:
    """Ridge least squares for many layers in one call into C++: for each pair of inputs
    A (rows, d) and targets B (rows, m), W (m, d) = argmin |A W^T - B|^2 + lam' |W|^2 with
    lam' = lam * mean(diag(A^T A)) (scale-free), by Cholesky in double. Returns (W, relative
    residual |A W^T - B| / |B|) per layer; lam is raised where A^T A is singular."""
    a, single = _arrays(inputs, "inputs")
    b, _ = _arrays(targets, "targets")
    if len(a) != len(b):
        raise ValueError(f"ridge_solve: {len(a)} input matrices and {len(b)} targets")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"ridge_solve: inputs[{i}] has {x.shape[0]} rows and targets[{i}] {y.shape[0]}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    out = [(torch.from_numpy(w), float(res)) for w, res, _ in _core.ridge_solve(a, b, float(lam), _threads(threads))]
    return out[:1] if single else out


def _index_list(s, what: str) -> list[int]:
    """Kept indices (a tensor, array or sequence of ints) as a list of Python ints, converted
    in one call (not element by element: surgery passes thousands of index lists)."""
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu().numpy()
    a = np.asarray(s)
    if a.ndim != 1:
        raise TypeError(f"{what}: expected a flat list of indices, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer indices, got {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: index {int(a.max())} is out of range")
    return a.astype(np.int64, copy=False).tolist()


def gather(
    tensors: Sequence[torch.Tensor],
    indices: Sequence[Sequence[torch.Tensor | Sequence[int] | None]],
    *,
    folds: Sequence[Sequence[tuple]] | None = None,
    threads: int | None = None,
) -> list[torch.Tensor]:
    """Structured slicing of many tensors in one call.

    ``out[i] = tensors[i][ix0][:, ix1]...``: for every tensor one entry per leading dim,
    each a list/tensor of kept indices or ``None`` to keep the dim whole. Works for any
    dtype; the results are new contiguous tensors on the sources' devices. CPU tensors go
    to the core in one parallel call; tensors on other devices are sliced there by torch
    (this build has no device kernels), so nothing makes a round trip through the host.

    ``folds`` (weight merging), one list per tensor of ``(dim, src, dst, scale)``: after
    the copy, ``scale[q] * tensors[i][..., src[q], ...]`` (its other dims sliced like the
    output's) is added to the output slice at the kept position of ``dst[q]`` along `dim`,
    in the order given. `dst` must be kept along `dim`. float32 CPU tensors fold in the
    core's call; others with torch.
    """
    if len(tensors) != len(indices):
        raise ValueError(f"gather: {len(tensors)} tensors but {len(indices)} index sets")
    if folds is not None and len(folds) != len(tensors):
        raise ValueError(f"gather: {len(tensors)} tensors but {len(folds)} fold lists")
    result: list = [None] * len(tensors)
    cpu, sources, idx, core_folds, torch_folds = [], [], [], [], []
    for i, (t, ix) in enumerate(zip(tensors, indices)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gather: tensors[{i}] is a {type(t).__name__}, expected a torch.Tensor")
        fl = list(folds[i]) if folds is not None else []
        if fl:  # a dim with folds gets an index list (all of it when it keeps everything)
            ix = list(ix) + [None] * (max(int(f[0]) for f in fl) + 1 - len(ix))
            if len(ix) > t.dim():
                raise ValueError(f"gather: tensors[{i}] has rank {t.dim()} but folds along dim {len(ix) - 1}")
            ix = [np.arange(t.shape[d]) if s is None and any(f[0] == d for f in fl) else s for d, s in enumerate(ix)]
        if len(ix) > t.dim():
            raise ValueError(f"gather: tensors[{i}] has rank {t.dim()} but {len(ix)} index lists")
        lists = [None if s is None else _index_list(s, f"gather: indices[{i}]") for s in ix]
        fl = [_fold_spec(f, lists, i) for f in fl]
        if t.device.type != "cpu":
            new = t.detach()
            for d, keep in enumerate(lists):
                if keep is not None:
                    new = new.index_select(d, torch.as_tensor(keep, device=t.device))
            result[i] = new.contiguous()
            torch_folds.append((i, lists, fl))
            continue
        src = t.detach().contiguous()
        if src.dtype == torch.bfloat16:  # numpy has no bfloat16: move the raw 16-bit words
            src = src.view(torch.int16)
        cpu.append(i)
        sources.append(src.numpy())
        idx.append([[] if keep is None else keep for keep in lists])
        if src.dtype == torch.float32:
            core_folds.append([(d, start, s, np.asarray(a, np.float32)) for d, start, s, _, a in fl])
        else:
            core_folds.append([])
            torch_folds.append((i, lists, fl))
    if cpu:
        for i, a in zip(cpu, _core.gather(sources, idx, _threads(threads), core_folds)):
            r = torch.from_numpy(a)
            result[i] = r.view(torch.bfloat16) if tensors[i].dtype == torch.bfloat16 else r
    for i, lists, fl in torch_folds:  # the same sums with torch (other dtypes and devices)
        for d, _, s, pos, a in fl:
            fold_slices(result[i], tensors[i].detach(), lists, d, s, pos, a)
    return result


def fold_slices(new: torch.Tensor, orig: torch.Tensor, kept: Sequence, dim: int, src, pos, scale) -> None:
    """With torch: ``new[..., pos[q], ...] += scale[q] * orig[..., src[q], ...]`` along
    `dim`, the other dims of `orig` sliced by ``kept`` (one list or None per leading dim),
    as :func:`gather`'s folds do in the core."""
    dev = orig.device
    part = orig.index_select(dim, torch.as_tensor(np.asarray(src, np.int64), device=dev))
    for e, keep in enumerate(kept):
        if keep is not None and e != dim:
            part = part.index_select(e, torch.as_tensor(np.asarray(keep, np.int64), device=dev))
    shape = [1] * part.dim()
    shape[dim] = -1
    part = part * torch.as_tensor(np.asarray(scale), dtype=part.dtype, device=dev).view(shape)
    new.index_add_(dim, torch.as_tensor(np.asarray(pos, np.int64), device=dev), part)


def _fold_spec(fold, lists: list, i: int):
    """(dim, src, dst, scale) as (dim, start, src, pos, scale) for the core: `pos` the
    output positions of `dst` along dim; src and scale ordered by pos (stable), start[p] the
    first of those that land on p."""
    dim, src, dst, scale = fold
    kept = np.asarray(lists[dim], np.int64)
    src, dst = np.asarray(src, np.int64).ravel(), np.asarray(dst, np.int64).ravel()
    scale = np.asarray(scale, np.float64).ravel()
    if not (len(src) == len(dst) == len(scale)):
        raise ValueError(f"gather: fold {dim} of tensors[{i}]: src, dst and scale differ in length")
    order = np.argsort(kept, kind="stable")
    at = np.searchsorted(kept[order], dst)
    at = np.minimum(at, len(kept) - 1)
    pos = order[at]
    if len(dst) and not np.array_equal(kept[pos], dst):
        raise ValueError(f"gather: fold along dim {dim} of tensors[{i}]: a destination is not kept")
    by = np.argsort(pos, kind="stable")
    start = np.zeros(len(kept) + 1, np.int64)
    np.add.at(start, pos + 1, 1)
    return dim, np.cumsum(start), src[by], pos[by], scale[by]


def gemm_seconds(size: int = 2048, threads: int | None = None, repeats: int = 3, *, kernel: str = "blas") -> float:
    """Best-of-``repeats`` seconds of one ``size``^3 float32 GEMM, rows split over
    ``threads`` one-thread GEMMs: the throughput bound of one products path. ``kernel``:
    ``"blas"`` (OpenBLAS), ``"packed"`` (the packed kernel the k-means uses,
    :func:`gemm_kernel`), or a path by name, ``"avx512"``, ``"avx2"``, ``"portable"``
    (one of :func:`gemm_kernels`)."""
    return float(_core.time_gemm(int(size), _threads(threads), int(repeats), False, _kernel(kernel)))


def gemm_kernel() -> str:
    """The path the k-means products take in this process: ``"avx512"``, ``"avx2"``,
    ``"portable"`` (the core's packed kernels: the filters are packed once per layer and
    reused by every iteration) or ``"blas"`` (OpenBLAS). It is the fastest path the CPU runs
    (:func:`gemm_kernels`) unless the environment variable ``PYPRUNE_GEMM`` names one; a
    value that is not a path, or a path this CPU cannot run, raises ValueError here and in
    every k-means call."""
    return str(_core.gemm_kernel())


def gemm_kernels() -> list[str]:
    """The products paths this CPU runs, fastest first, ``"blas"`` last: e.g.
    ``["avx2", "portable", "blas"]`` on an x86 CPU without AVX-512, ``["portable", "blas"]``
    on Arm. Any of them can be forced with ``PYPRUNE_GEMM`` or ``kernel=``."""
    return [str(k) for k in _core.gemm_kernels()]


def packed_gemm_available() -> bool:
    """True when the k-means products run on one of the core's packed kernels
    (:func:`gemm_kernel` is not ``"blas"``): always, unless ``PYPRUNE_GEMM=blas``."""
    return bool(_core.packed_gemm_available())


_PATHS = ("avx512", "avx2", "portable")


def _kernel(kernel: str) -> str:
    """The core's name of the path ``kernel`` asks for ("packed": the run-time choice)."""
    if kernel == "packed":
        path = gemm_kernel()
        if path == "blas":
            raise ValueError("kernel='packed': the packed kernels are off in this process (PYPRUNE_GEMM=blas); "
                             f"use kernel='blas' or name a path: {', '.join(p for p in gemm_kernels() if p != 'blas')}")
        return path
    if kernel == "blas" or kernel in _PATHS:
        return kernel  # the core says so when this CPU cannot run the path
    raise ValueError(f"kernel must be 'blas' or 'packed', got {kernel!r}; "
                     f"a path can also be named: {', '.join(repr(p) for p in _PATHS)}")


def products(a: torch.Tensor, b: torch.Tensor, *, kernel: str = "blas", threads: int | None = None) -> torch.Tensor:
    """``a @ b.T`` (float32) through a products path (``kernel`` as for
    :func:`gemm_seconds`), ``b``'s rows split over the threads: what the k-means
    assignment computes, exposed so every path can be checked against torch."""
    out = _core.products(_to_core(a, "a"), _to_core(b, "b"), False, _threads(threads), _kernel(kernel))
    return torch.from_numpy(out)
