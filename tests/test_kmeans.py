"""Spherical k-means: against a pure-torch Lloyd loop and by its invariants."""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import reference as ref
from pyprune import engine

# Every products path by name; those this CPU lacks are skipped, naming what it lacks.
PATHS = ["blas", "portable", "avx2", "avx512"]
_NEEDS = {"avx2": "AVX2 and FMA", "avx512": "AVX-512F"}


def path_params(paths=PATHS):
    return [
        pytest.param(p, id=p, marks=pytest.mark.skipif(p not in engine.gemm_kernels(), reason=f"this CPU has no {_NEEDS.get(p)}"))
        for p in paths
    ]


SHAPES = [(1, 1, 1, 1), (8, 3, 3, 3), (32, 1, 3, 3), (64, 64, 1, 1), (200, 30), (512, 128, 3, 3), (2048, 64, 1, 1)]
IDS = ["x".join(map(str, s)) for s in SHAPES]


def make(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def clustered(n_proto, copies, d, noise, seed=0):
    """Filters made as noisy copies of `n_proto` random prototypes (real cluster structure)."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_proto, d, generator=g)
    x = proto.repeat_interleave(copies, dim=0)
    x = x + noise * torch.randn(x.shape, generator=g) * proto.norm(dim=1).repeat_interleave(copies)[:, None] / d**0.5
    return x, torch.arange(n_proto).repeat_interleave(copies)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_matches_torch_lloyd_from_same_init(shape):
    w = make(shape)
    n = shape[0]
    k = max(1, n // 4)
    init = ref.unit_rows(w)[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:k]].float()
    (r,) = engine.spherical_kmeans(w, k, max_iter=10, early_stop=False, init=init)
    c, labels, obj = ref.lloyd(w, init, 10)
    assert r.n_iter == 10
    assert_close(r.objective, torch.tensor(obj, dtype=torch.float64), rtol=1e-4, atol=1e-3)
    # Labels may differ only where two centroids are (numerically) tied for a filter.
    s = ref.unit_rows(w).float() @ (c / c.norm(dim=1, keepdim=True)).T
    mism = (r.labels != labels).nonzero().flatten()
    for i in mism.tolist():
        assert abs(float(s[i, r.labels[i]] - s[i, labels[i]])) < 1e-4


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("frac", [0.1, 0.5])
def test_invariants(shape, frac):
    w = make(shape, seed=2)
    n = shape[0]
    k = max(1, int(n * frac))
    (r,) = engine.spherical_kmeans(w, k, max_iter=30, seed=5)
    d = w[0].numel()
    assert r.centroids.shape == (k, d)
    assert r.labels.shape == (n,) and r.labels.dtype == torch.int64
    assert int(r.labels.min()) >= 0 and int(r.labels.max()) < k
    # objective never gets worse
    diffs = r.objective[1:] - r.objective[:-1]
    assert bool((diffs >= -1e-6 * r.objective.abs().max()).all()), r.objective
    # centroids unit-norm
    assert_close(r.centroids.norm(dim=1), torch.ones(k), rtol=1e-5, atol=1e-5)
    # representatives: K distinct filters, each a member of its own cluster if it has members
    reps = r.representatives
    assert reps.shape == (k,) and len(set(reps.tolist())) == k
    counts = torch.bincount(r.labels, minlength=k)
    for j in range(k):
        if counts[j] > 0:
            assert int(r.labels[reps[j]]) == j
    # representative = member closest to its centroid
    xn = ref.unit_rows(w).float()
    own = (xn * r.centroids[r.labels]).sum(1)
    for j in range(k):
        members = (r.labels == j).nonzero().flatten()
        if len(members):
            assert float(own[reps[j]]) >= float(own[members].max()) - 1e-6
    # labels are the argmax assignment to the centroids used in the last step (early stop)
    if r.n_iter < 30:
        s = xn @ r.centroids.T
        assert bool((s.gather(1, r.labels[:, None]).squeeze(1) >= s.max(1).values - 1e-5).all())


def test_exact_duplicates_share_a_cluster():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 3, 3, 3, generator=g)
    w = torch.cat([base, base[:15] * 2.5, base[5:10]])  # positive-scaled and exact duplicates
    for k in (5, 20, 40):
        (r,) = engine.spherical_kmeans(w, k, seed=1)
        lab = r.labels
        for i in range(15):
            assert lab[i] == lab[40 + i], (k, i)
        for i in range(5):
            assert lab[5 + i] == lab[55 + i]


def test_k_equals_n_gives_every_filter_its_cluster():
    w = make((50, 4, 3, 3), seed=4)
    (r,) = engine.spherical_kmeans(w, 50)
    assert sorted(r.labels.tolist()) == list(range(50))
    assert sorted(r.representatives.tolist()) == list(range(50))
    assert_close(r.objective[-1], torch.tensor(50.0, dtype=torch.float64), rtol=1e-5, atol=1e-4)


def test_k_equals_one_is_the_mean_direction():
    w = make((30, 12), seed=6)
    (r,) = engine.spherical_kmeans(w, 1)
    mean = ref.unit_rows(w).sum(0)
    assert_close(r.centroids[0].double(), mean / mean.norm(), rtol=1e-5, atol=1e-5)
    assert set(r.labels.tolist()) == {0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_larger_k_never_worse(seed):
    # Same data and seed: K+1 clusters start from the K-cluster seeds plus one (k-means++ is
    # sequential), so the final objective is at least as good.
    x, _ = clustered(12, 6, 40, 0.8, seed=seed)
    finals = []
    for k in (4, 8, 12, 16, 24, 36, 72):
        (r,) = engine.spherical_kmeans(x, k, seed=seed, max_iter=200)
        finals.append(float(r.objective[-1]))
    for a, b in zip(finals, finals[1:]):
        assert b >= a - 1e-4, finals


def test_same_seed_same_result_and_threads_do_not_matter():
    w = [make((256, 64, 3, 3), seed=s) for s in range(3)] + [make((64, 8), seed=9)]
    ks = [64, 128, 30, 16]
    a = engine.spherical_kmeans(w, ks, seed=7, threads=1)
    b = engine.spherical_kmeans(w, ks, seed=7, threads=2)
    c = engine.spherical_kmeans(w, ks, seed=7)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.labels, y.labels) and torch.equal(x.labels, z.labels)
        assert torch.equal(x.representatives, y.representatives)
        assert_close(x.centroids, y.centroids)
    d = engine.spherical_kmeans(w, ks, seed=8)
    assert any(not torch.equal(x.labels, y.labels) for x, y in zip(a, d))


def test_recovers_planted_clusters():
    x, truth = clustered(10, 8, 64, 0.3, seed=3)
    (r,) = engine.spherical_kmeans(x, 10, seed=0)
    # each planted group maps to exactly one cluster and vice versa
    pairs = set(zip(truth.tolist(), r.labels.tolist()))
    assert len(pairs) == 10
    assert r.n_iter < 100  # stopped early once stable


def test_early_stop_stops_when_labels_stable():
    x, _ = clustered(8, 10, 32, 0.2, seed=1)
    (r,) = engine.spherical_kmeans(x, 8, max_iter=100, early_stop=True)
    (f,) = engine.spherical_kmeans(x, 8, max_iter=25, early_stop=False)
    assert r.n_iter < 25 and f.n_iter == 25
    assert torch.equal(r.labels, f.labels)
    assert_close(r.objective[-1], f.objective[-1])


def test_batched_equals_one_by_one():
    ws = [make((n, 9), seed=n) for n in (5, 70, 300, 1200)]
    ks = [2, 35, 100, 600]
    batch = engine.spherical_kmeans(ws, ks, seed=3)
    for w, k, b in zip(ws, ks, batch):
        (single,) = engine.spherical_kmeans(w, k, seed=3)
        assert torch.equal(single.labels, b.labels)
        assert_close(single.objective, b.objective)


@pytest.mark.parametrize("kernel", path_params())
@pytest.mark.parametrize("threads", [1, 2])
def test_reusing_unmoved_centroids_changes_nothing(threads, kernel):
    """reuse=True recomputes only the similarities of centroids that moved; the run must be
    the one that recomputes everything: same labels, centroids and objective at every
    iteration, through empty-cluster re-seeding, zero filters and the row-split path, on
    every products path (the skinny product of the moved centroids runs on the path's
    packed kernel)."""
    g = torch.Generator().manual_seed(4)
    ws = [make((n, d), seed=n) for n, d in ((7, 3), (96, 27), (300, 64), (1024, 144))]
    ws.append(clustered(12, 10, 40, 0.4, seed=2)[0])
    zeros = make((50, 16), seed=5)
    zeros[::7] = 0
    ws.append(zeros)
    ks = [3, 40, 150, 512, 12, 20]
    inits = []
    for w, k in zip(ws, ks):
        pick = torch.randperm(w.shape[0], generator=g)[:k]
        pick[: k // 3] = pick[0]  # duplicated seeds leave clusters empty: re-seeding runs
        c = ref.unit_rows(w[pick] + 1e-3 * (w[pick] == 0).float()).float()
        inits.append(c)
    for early in (False, True):
        full = engine.spherical_kmeans(ws, ks, max_iter=25, early_stop=early, init=inits, threads=threads, reuse=False, kernel=kernel)
        part = engine.spherical_kmeans(ws, ks, max_iter=25, early_stop=early, init=inits, threads=threads, reuse=True, kernel=kernel)
        for a, b in zip(full, part):
            assert a.kernel == b.kernel == kernel
            assert a.n_iter == b.n_iter
            assert torch.equal(a.labels, b.labels)
            assert torch.equal(a.representatives, b.representatives)
            assert_close(a.centroids, b.centroids, rtol=0, atol=1e-6)
            assert_close(a.objective, b.objective, rtol=1e-9, atol=1e-6)
    # and the reused run still is plain Lloyd: compare with the torch reference
    (r,) = engine.spherical_kmeans(ws[3], ks[3], max_iter=15, early_stop=False, init=ref.unit_rows(ws[3][:512]).float(), threads=threads, kernel=kernel)
    _, _, obj = ref.lloyd(ws[3], ref.unit_rows(ws[3][:512]).float(), 15)
    assert_close(r.objective, torch.tensor(obj, dtype=torch.float64), rtol=1e-5, atol=1e-3)


def test_zero_norm_filters_are_deterministic():
    w = make((20, 6), seed=11)
    w[[2, 7, 8]] = 0
    a = engine.spherical_kmeans(w, 5, seed=0)[0]
    b = engine.spherical_kmeans(w, 5, seed=0)[0]
    assert torch.equal(a.labels, b.labels)
    # zero filters are never chosen as representatives while non-zero ones are available
    assert not set(a.representatives.tolist()) & {2, 7, 8}
    assert_close(a.centroids.norm(dim=1), torch.ones(5))


def test_all_zero_filters():
    (r,) = engine.spherical_kmeans(torch.zeros(6, 4), 3)
    assert_close(r.centroids.norm(dim=1), torch.ones(3))
    assert len(set(r.representatives.tolist())) == 3


def test_fewer_directions_than_clusters_still_gives_k_representatives():
    v = make((2, 10))
    w = torch.cat([v[0:1].repeat(5, 1), v[1:2].repeat(5, 1)])
    (r,) = engine.spherical_kmeans(w, 4)
    assert len(set(r.representatives.tolist())) == 4


def test_choose_k_finds_planted_count():
    for n_proto in (4, 8, 16):
        x, _ = clustered(n_proto, 12, 48, 0.25, seed=n_proto)
        ks = list(range(2, 41, 2))
        k, curve = engine.choose_k(x, ks, return_curve=True)
        assert k == n_proto, (k, curve)
        assert curve.shape == (len(ks),)
        assert bool((curve[1:] <= curve[:-1] + 1e-3).all())


def test_choose_k_many_layers():
    xs = [clustered(p, 10, 30, 0.2, seed=p)[0] for p in (3, 6)]
    assert engine.choose_k(xs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]) == [3, 6]


def test_knee_index_hand_computed():
    # L-shaped curve: the corner is the knee
    assert engine.knee_index([1, 2, 3, 4, 5], [10, 2, 1.5, 1.2, 1.0]) == 1
    assert engine.knee_index([1, 2, 3], [5, 5, 5]) == 0  # flat: smallest K


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 47, 3), (8, 48, 256), (9, 49, 257), (16, 32, 1152), (130, 97, 600), (3, 200, 5000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_products_kernels_match_torch(m, n, d, threads):
    """The k-means products (A @ B.T) on the BLAS, the run-time packed kernel and every path
    this CPU runs, against torch in double precision."""
    g = torch.Generator().manual_seed(m * 1000 + n + d)
    a, b = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)
    want = (a.double() @ b.double().T).float()
    kernels = ["blas"] + (["packed"] if engine.packed_gemm_available() else []) + engine.gemm_kernels()
    for kernel in kernels:
        got = engine.products(a, b, kernel=kernel, threads=threads)
        assert_close(got, want, rtol=1e-4, atol=1e-4 * d**0.5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel", path_params())
def test_products_every_tile_remainder(kernel, threads):
    """Every row count m = 1..17 (more than two 8-row tiles) against every filter count
    n = 1..97 (more than two 48-wide panels): every remainder of every path's register tile,
    with a depth d that is not a multiple of the 256-deep block (two blocks, the second
    partial: the accumulate path runs); n = 256..352 repeats every remainder with more
    than 128 filters per thread."""
    g = torch.Generator().manual_seed(11)
    d = 300
    a, b = torch.randn(17, d, generator=g), torch.randn(352, d, generator=g)
    want = (a.double() @ b.double().T).float()
    for m in range(1, 18):
        for n in [*range(1, 98), *range(256, 353)]:
            got = engine.products(a[:m], b[:n], kernel=kernel, threads=threads)
            assert_close(got, want[:m, :n], rtol=1e-4, atol=1e-4 * d**0.5, msg=lambda e: f"m={m} n={n}: {e}")


def test_kernel_names():
    paths = engine.gemm_kernels()
    assert paths[-2:] == ["portable", "blas"], paths
    assert set(paths) <= set(PATHS)
    assert engine.gemm_kernel() in paths
    a = torch.randn(4, 5)
    if "avx512" not in paths:
        with pytest.raises(ValueError, match="needs AVX-512F, which this CPU does not have"):
            engine.products(a, a, kernel="avx512")
    with pytest.raises(ValueError, match="kernel must be 'blas' or 'packed', got 'sse'"):
        engine.spherical_kmeans(a, 2, kernel="sse")


_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_ROOT,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.skipif(not engine.packed_gemm_available(), reason="PYPRUNE_GEMM=blas is set: the packed kernels are off")
def test_kmeans_same_with_blas_and_packed_kernel():
    """PYPRUNE_GEMM=blas makes a process use OpenBLAS for the k-means products: on filters
    with clear clusters both kernels must give the same labels and objective."""
    code = (
        "import torch, sys; sys.path.insert(0, 'tests'); from test_kmeans import clustered; from pyprune import engine\n"
        "x, _ = clustered(40, 6, 200, 0.3, seed=5)\n"
        "r, = engine.spherical_kmeans(x, 40, max_iter=30, early_stop=False, seed=1)\n"
        "print(engine.packed_gemm_available()); print(r.labels.tolist()); print(r.objective[-1].item())\n"
    )
    outs = []
    for env in ({}, {"PYPRUNE_GEMM": "blas"}):
        p = _run(code, env)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout.split("\n"))
    assert outs[0][0] == "True" and outs[1][0] == "False"
    assert outs[0][1] == outs[1][1]
    assert abs(float(outs[0][2]) - float(outs[1][2])) < 1e-3


def test_kmeans_same_on_every_path_forced_by_environment():
    """PYPRUNE_GEMM forces each path this CPU runs (avx512 where it has AVX-512F, avx2,
    portable, blas), one process each: the run reports that path and the labels are those
    of every other path (filters with clear clusters; the paths differ in float rounding)."""
    code = (
        "import torch, sys; sys.path.insert(0, 'tests'); from test_kmeans import clustered; from pyprune import engine\n"
        "x, _ = clustered(40, 6, 200, 0.3, seed=5)\n"
        "ys = [torch.randn(700, 96, generator=torch.Generator().manual_seed(2)), x]\n"
        "rs = engine.spherical_kmeans(ys, [96, 40], max_iter=30, early_stop=False, seed=1, threads=2)\n"
        "print(engine.gemm_kernel(), rs[1].kernel); print(rs[1].labels.tolist()); print(rs[1].objective[-1].item())\n"
    )
    outs = {}
    for path in engine.gemm_kernels():
        p = _run(code, {"PYPRUNE_GEMM": path})
        assert p.returncode == 0, p.stderr
        outs[path] = p.stdout.split("\n")
        assert outs[path][0] == f"{path} {path}"
    first = next(iter(outs.values()))
    for path, out in outs.items():
        assert out[1] == first[1], path
        assert abs(float(out[2]) - float(first[2])) < 1e-3, path


def test_bad_environment_path_is_a_clear_error_at_first_use():
    """An unknown PYPRUNE_GEMM value, or a path this CPU cannot run, must not break the
    import; the first call that needs the path raises ValueError naming the value and what
    the CPU runs."""
    code = (
        "import torch\nfrom pyprune import engine\n"
        "print(engine.gemm_kernels())\n"
        "for f in (engine.gemm_kernel, lambda: engine.spherical_kmeans(torch.randn(9, 4), 3)):\n"
        "    try:\n        f()\n    except ValueError as e:\n        print('ValueError:', e)\n"
        "print(engine.products(torch.ones(2, 3), torch.ones(2, 3), kernel='portable').tolist())\n"
    )
    p = _run(code, {"PYPRUNE_GEMM": "fastest"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 4 and lines[3] == "[[3.0, 3.0], [3.0, 3.0]]", p.stdout
    for line in lines[1:3]:
        assert line.startswith("ValueError: PYPRUNE_GEMM='fastest' is not a GEMM path"), line
        assert "avx512, avx2, portable, blas" in line
    if "avx512" not in engine.gemm_kernels():
        p = _run(code, {"PYPRUNE_GEMM": "avx512"})
        assert p.returncode == 0, p.stderr
        for line in p.stdout.splitlines()[1:3]:
            assert line.startswith("ValueError: PYPRUNE_GEMM=avx512 asks for a path this CPU cannot run (it has no AVX-512F)"), line


def test_blas_environment_turns_the_packed_kernels_off():
    code = (
        "import torch\nfrom pyprune import engine\n"
        "print(engine.gemm_kernel(), engine.packed_gemm_available())\n"
        "(r,) = engine.spherical_kmeans(torch.randn(50, 8), 5)\nprint(r.kernel)\n"
        "try:\n    engine.products(torch.ones(2, 3), torch.ones(2, 3), kernel='packed')\n"
        "except ValueError as e:\n    print('ValueError:', e)\n"
        "print(engine.products(torch.ones(2, 3), torch.ones(2, 3), kernel='portable').sum().item())\n"
    )
    p = _run(code, {"PYPRUNE_GEMM": "blas"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "blas False" and lines[1] == "blas", p.stdout
    assert lines[2].startswith("ValueError: kernel='packed': the packed kernels are off"), lines[2]
    assert lines[3] == "12.0"


@pytest.mark.parametrize("kernel", path_params())
def test_kernel_argument_gives_the_same_clustering(kernel):
    x, _ = clustered(30, 8, 150, 0.3, seed=8)
    (base,) = engine.spherical_kmeans(x, 30, max_iter=30, seed=2, kernel="blas")
    (r,) = engine.spherical_kmeans(x, 30, max_iter=30, seed=2, kernel=kernel)
    assert r.kernel == kernel
    assert torch.equal(r.labels, base.labels)
    assert_close(r.objective, base.objective, rtol=1e-6, atol=1e-4)


def _stats_case():
    ws = [make((300, 64), seed=3), clustered(12, 10, 40, 0.3, seed=4)[0], make((40, 9), seed=6)]
    ws[2][::5] = 0  # zero filters: cosine 0
    ks = [150, 12, 10]
    g = torch.Generator().manual_seed(0)
    inits = []
    for w, k in zip(ws, ks):
        pick = torch.randperm(w.shape[0], generator=g)[:k]
        pick[: k // 3] = pick[0]  # duplicated seeds: clusters left empty, re-seeding runs
        inits.append(ref.unit_rows(w[pick] + 1e-3 * (w[pick] == 0).float()).float())
    return ws, ks, inits


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "full"])
@pytest.mark.parametrize("early_stop", [True, False], ids=["early", "fixed"])
def test_iteration_stats_are_consistent(early_stop, reuse):
    ws, ks, inits = _stats_case()
    res = engine.spherical_kmeans(ws, ks, max_iter=40, early_stop=early_stop, init=inits, reuse=reuse)
    reseeded_somewhere = False
    for w, k, r in zip(ws, ks, res):
        n = w.shape[0]
        st = r.stats
        assert len(st) == r.n_iter == len(r.objective)
        assert all(isinstance(s, engine.IterationStats) for s in st)
        assert st[0].changed == n and st[0].recomputed == k
        for i, s in enumerate(st):
            assert 0 <= s.changed <= n and 0 <= s.moved <= k and 0 <= s.reseeded <= s.moved
            assert 0 <= s.recomputed <= k and s.seconds >= 0.0
            if not reuse:
                assert s.recomputed == k
            elif i > 0:
                # reuse recomputes what the previous update moved (or everything, when most moved)
                prev = st[i - 1].moved
                assert s.recomputed == (prev if prev * 4 <= k * 3 else k), (i, prev, s.recomputed)
        reseeded_somewhere |= any(s.reseeded > 0 for s in st)
        if early_stop and r.n_iter < 40:  # converged: the last assignment changed nothing
            assert st[-1].changed == 0 and st[-1].moved == 0 and st[-1].reseeded == 0
        if not early_stop:
            assert r.n_iter == 40
    assert reseeded_somewhere
    assert any(r.n_iter < 40 for r in res) or not early_stop


@pytest.mark.parametrize("early_stop", [True, False], ids=["early", "fixed"])
@pytest.mark.parametrize("threads", [1, 2])
def test_cosines_match_torch(early_stop, threads):
    """Each filter's cosine to its centroid, from the core, equals a torch recomputation from
    the returned centroids and labels (zero filters: 0)."""
    ws, ks, inits = _stats_case()
    ws.append(make((1024, 144), seed=1))
    ks.append(300)
    inits.append(None)
    for max_iter in (0, 1, 25):
        res = engine.spherical_kmeans(ws, ks, max_iter=max_iter, early_stop=early_stop, init=inits, threads=threads)
        for w, r in zip(ws, res):
            want = (ref.unit_rows(w) * r.centroids.double()[r.labels]).sum(1).float()
            assert r.cosines.shape == (w.shape[0],) and r.cosines.dtype == torch.float32
            assert_close(r.cosines, want, rtol=0, atol=1e-5)
            if max_iter == 0:
                assert r.n_iter == 0 and r.stats == []


@pytest.mark.parametrize("kernel", path_params())
@pytest.mark.parametrize("n,k", [(120, 60), (300, 150), (300, 6), (64, 63)],
                         ids=["gram", "gram-panels", "candidates", "k~n"])
@pytest.mark.parametrize("threads", [1, 2])
def test_seeds_are_greedy_kmeanspp(n, k, threads, kernel):
    """The core's seeding (running sums, binary search, Gram matrix or candidate products)
    picks the filters a float64 reference of greedy k-means++ picks, from the same random
    numbers. Random directions: no two candidates tie (noisy copies of one filter can tie
    exactly in exact arithmetic, and then float rounding decides)."""
    x = make((n, 40), seed=n + k)
    want = ref.greedy_kmeanspp(x, k, seed=3)
    (r,) = engine.spherical_kmeans(x, k, max_iter=0, seed=3, threads=threads, kernel=kernel)
    got = (ref.unit_rows(r.centroids) @ ref.unit_rows(x).T).argmax(1).tolist()
    assert got == want


def test_kept_channels_do_not_depend_on_threads_or_x86_path():
    """Random filters (near-ties everywhere, K = n/2): the labels and representatives are
    the same bits at 1 and 2 threads, and on the AVX2 path as on the AVX-512 one (both
    compute every dot as one FMA chain in the same order); on the BLAS path the same at 1
    and 2 threads."""
    w = [make((512, 576), seed=1), make((1024, 64), seed=2), make((96, 27), seed=3)]
    ks = [256, 512, 48]
    paths = [p for p in ("avx512", "avx2") if p in engine.gemm_kernels()] or [engine.gemm_kernel()]
    runs = [engine.spherical_kmeans(w, ks, seed=5, threads=t, kernel=p) for p in paths for t in (1, 2)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.representatives, b.representatives)
    # the BLAS path (its own bits: the Gram matrix in panels of fixed shape, whichever thread
    # runs them) does not depend on the thread count either
    blas = [engine.spherical_kmeans(w, ks, seed=5, threads=t, kernel="blas") for t in (1, 2)]
    for a, b in zip(*blas):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.representatives, b.representatives)
        assert torch.equal(a.centroids, b.centroids)


def _check_merge_statistics(r, x):
    xd = x.double()
    rep = r.representatives[r.labels]
    assert_close(r.norms.double(), xd.norm(dim=1), rtol=1e-6, atol=0)
    xr = xd[rep]
    cos = torch.where(xd.norm(dim=1) > 0, (xd * xr).sum(1) / (xd.norm(dim=1) * xr.norm(dim=1)).clamp_min(1e-300), 0)
    assert_close(r.rep_cosines.double(), cos, rtol=0, atol=1e-6)
    a = (xd * xr).sum(1) / (xr * xr).sum(1)
    res = torch.where(xd.norm(dim=1) > 0, (xd - a[:, None] * xr).norm(dim=1) / xd.norm(dim=1).clamp_min(1e-300), 0)
    assert_close(r.rep_residuals.double(), res, rtol=1e-4, atol=1e-6)
    assert r.rep_cosines[r.representatives].eq(1).all() and r.rep_residuals[r.representatives].eq(0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_merge_statistics_match_torch(threads):
    """norms, rep_cosines and rep_residuals (what merging needs) against float64 torch."""
    x, _ = clustered(20, 5, 60, 0.2, seed=4)
    x[7] = 0.0
    x[11] = 3.0 * x[10]  # an exact positive multiple: residual 0
    (r,) = engine.spherical_kmeans(x, 20, seed=1, threads=threads)
    _check_merge_statistics(r, x)
    if r.labels[10] == r.labels[11] and r.representatives[r.labels[10]] in (10, 11):
        assert r.rep_residuals[10] < 1e-6 and r.rep_residuals[11] < 1e-6


@pytest.mark.parametrize("d", [1, 5, 16, 17, 31, 32, 47])
def test_merge_statistics_at_every_lane_remainder(d):
    """The core's sums run in 16 lanes: filter lengths below, at and past whole groups of
    them, against float64 torch, with a zero filter and an exact multiple among them."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(40, d, generator=g)
    x[3] = 0.0
    x[9] = -2.5 * x[8]
    (r,) = engine.spherical_kmeans(x, 8, seed=2)
    _check_merge_statistics(r, x)
    assert_close(r.cosines.double(), (ref.unit_rows(x.double()) * r.centroids.double()[r.labels]).sum(1),
                 rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel", path_params())
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "full"])
def test_lloyd_from_the_gram_matrix_matches_torch(reuse, threads, kernel):
    """With k-means++ seeding on any path (the BLAS's too) the core keeps the seeding's Gram matrix and
    reads every iteration's similarities from it (a centroid's row is the sum of its
    members' rows over its norm) instead of multiplying the centroids out. From the same
    seeds, a float64 torch Lloyd loop must reach the same labels, centroids and objective,
    also with zero filters (no direction) and a cluster whose members cancel."""
    x, _ = clustered(24, 10, 96, 1.5, seed=11)
    x[::17] = 0.0
    x[5] = -x[6]  # a pair that can only cancel if alone together
    for k in (24, 60):  # both use the Gram matrix: 2 K (trials + 2) >= n
        (seeds,) = engine.spherical_kmeans(x, k, max_iter=0, seed=4, kernel=kernel)
        (r,) = engine.spherical_kmeans(x, k, max_iter=25, early_stop=False, seed=4, reuse=reuse, threads=threads,
                                       kernel=kernel)
        c, labels, obj = ref.lloyd(x.double(), seeds.centroids.double(), 25)
        assert torch.equal(r.labels, labels)
        assert_close(r.centroids.double(), c, rtol=0, atol=1e-5)
        assert_close(r.objective, torch.tensor(obj, dtype=torch.float64), rtol=1e-6, atol=1e-4)
        assert sum(s.moved for s in r.stats[1:]) > 0  # the iterations did move centroids


@pytest.mark.parametrize("kernel", path_params())
@pytest.mark.parametrize("threads", [1, 2])
def test_column_blocks_cluster_as_their_concatenation(kernel, threads):
    """A layer given as engine.Columns (a residual stream's producers: same filters, their
    own weights each) is clustered exactly as torch.cat of their (filters, -1) views, which
    the core never builds: the same labels, representatives, centroids and objective (the
    same bits: the filters are gathered before they are normalised), and the merge
    statistics of the concatenation. Blocks beside plain layers in one batch, small layers
    and one large enough to be split over the threads, with and without the Gram matrix."""
    g = torch.Generator().manual_seed(5)
    big = [torch.randn(300, c, 1, 1, generator=g) for c in (24, 8, 40)]  # 300 filters x 72 weights
    big[1][17] = 0.0  # a block's row that is zero (the filter is not)
    small = [torch.randn(40, 3, 3, 3, generator=g), torch.randn(40, 5, generator=g)]
    small[0][3], small[1][3] = 0.0, 0.0  # a filter zero in every block: no direction
    plain = torch.randn(64, 18, generator=g)
    cat = [torch.cat([b.reshape(len(b), -1) for b in bl], 1) for bl in (big, small)]
    for ks in ([150, 20, 16], [40, 3, 60]):  # Gram matrix (K = n / 2) and products
        got = engine.spherical_kmeans([engine.Columns(*big), engine.Columns(*small), plain], ks, seed=3,
                                      threads=threads, kernel=kernel)
        want = engine.spherical_kmeans([cat[0], cat[1], plain], ks, seed=3, threads=threads, kernel=kernel)
        for a, b in zip(got, want):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.representatives, b.representatives)
            assert torch.equal(a.centroids, b.centroids) and torch.equal(a.objective, b.objective)
            assert a.n_iter == b.n_iter and torch.equal(a.norms, b.norms)
            assert_close(a.rep_cosines, b.rep_cosines, rtol=0, atol=1e-6)
            assert_close(a.rep_residuals, b.rep_residuals, rtol=1e-5, atol=1e-6)


def test_column_blocks_survive_pickle_and_copy():
    """A Columns pickled (as a multiprocessing worker or a saved call receives it) or
    copied is the same blocks again, not one block holding the tuple of them."""
    import copy
    import pickle

    blocks = (torch.randn(6, 4), torch.randn(6, 2, 3))
    c = engine.Columns(*blocks)
    for d in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c), copy.copy(c)):
        assert type(d) is engine.Columns and len(d) == 2
        assert all(torch.equal(x, y) for x, y in zip(d, blocks))
    a = engine.spherical_kmeans(c, 3, seed=1)[0]
    b = engine.spherical_kmeans(pickle.loads(pickle.dumps(c)), 3, seed=1)[0]
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_column_blocks_errors_name_the_layer_block_and_element():
    a, b = torch.randn(16, 4), torch.randn(16, 3, 2)
    with pytest.raises(ValueError, match=r"weights\[1\]: every column block needs the same number of filters: "
                                         r"block 0 has 16, block 1 has 15"):
        engine.spherical_kmeans([a, engine.Columns(a, b[:15])], 2)
    bad = b.clone()
    bad[9, 2, 1] = float("nan")  # element 5 of block 1: element 4 + 5 = 9 of the filter
    with pytest.raises(ValueError, match=r"weights\[0\]: contains a non-finite value \(nan\) at filter 9, element 9"):
        engine.spherical_kmeans([engine.Columns(a, bad)], 2)
    with pytest.raises(ValueError, match=r"weights block 1: expected a floating-point tensor"):
        engine.spherical_kmeans(engine.Columns(a, torch.ones(16, 2, dtype=torch.int64)), 2)
    with pytest.raises(ValueError, match="Columns: expected at least one tensor"):
        engine.Columns()
    # the core checks the blocks too, for callers of the binding itself
    blocks = [a.numpy(), b[:15].reshape(15, -1).contiguous().numpy()]
    with pytest.raises(ValueError, match=r"weights\[0\]: every column block needs the same rows \(filters\): "
                                         r"block 0 has 16, block 1 has 15"):
        engine._core.spherical_kmeans([blocks], [2])
    with pytest.raises(ValueError, match=r"weights\[0\]: an empty list of column blocks"):
        engine._core.spherical_kmeans([[]], [2])
    with pytest.raises(ValueError, match=r"weights\[0\] block 0: needs at least one filter, got 0 rows"):
        engine._core.spherical_kmeans([[np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32)]], [1])


@pytest.mark.parametrize("threads", [1, 2])
def test_non_finite_value_error_names_the_first_bad_layer(threads):
    """The values are checked while each layer is normalised, layers side by side: the error
    is still the one a check in layer order gives (the first bad layer, its first bad value)."""
    ws = [torch.randn(n, 20, generator=torch.Generator().manual_seed(n)) for n in (300, 30, 40, 500, 50)]
    ws[3][7, 3] = float("inf")  # a large layer (run first, its rows split over threads)
    ws[2][5, 11] = float("nan")
    ws[2][9, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weights\[2\]: contains a non-finite value \(nan\) at filter 5, element 11"):
        engine.spherical_kmeans(ws, [n // 2 for n in (300, 30, 40, 500, 50)], threads=threads)


def test_knee_depth_hand_computed():
    # scaled: y = [1, 1/9, 0.5/9, 0.2/9, 0], chord 1 - x with x = i/4: at i = 1, 3/4 - 1/9
    index, depth = engine.knee_index([1, 2, 3, 4, 5], [10, 2, 1.5, 1.2, 1.0], return_depth=True)
    assert index == 1 and depth == pytest.approx(23 / 36, abs=1e-12)
    assert engine.knee_index([1, 2, 3], [5, 5, 5], return_depth=True) == (0, 0.0)
    assert engine.knee_index([1, 2, 3], [5, 4, 1], return_depth=True) == (0, 0.0)  # concave: none below


def _log_knee(ks, curve, n):
    """The knee of choose_k's log-distortion curve for n filters, computed from the curve it
    returns (with the C library's log, as the core takes it: the same bits)."""
    floor = max(1e-3 * curve[0], 1e-5 * n)
    return engine.knee_index(ks, [math.log(max(v, floor)) for v in curve], return_depth=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_k_min_depth_keeps_the_largest_k_without_an_elbow(seed):
    """Random filters have no cluster structure: their knee is shallow noise on the smallest
    K. With min_depth the largest candidate is chosen instead; without, the knee."""
    x = make((64, 576), seed=seed)
    ks = list(range(1, 33)) + [40, 48, 56, 64]
    plain, curve = engine.choose_k(x, ks, return_curve=True)
    index, depth = _log_knee(ks, curve.tolist(), len(x))
    assert plain == ks[index] and depth < 0.05, (plain, depth)
    assert engine.choose_k(x, ks, min_depth=0.1) == ks[-1]
    assert engine.choose_k([x, x], ks, min_depth=depth + 1e-9) == [ks[-1]] * 2
    if depth > 0:  # the core's depth is this one: just under it the knee counts
        assert engine.choose_k(x, ks, min_depth=depth * (1 - 1e-9)) == plain


def test_choose_k_min_depth_keeps_planted_elbows():
    for n_proto in (4, 8, 16):
        x, _ = clustered(n_proto, 12, 48, 0.25, seed=n_proto)
        ks = list(range(2, 41, 2))
        k, curve = engine.choose_k(x, ks, return_curve=True, min_depth=0.1)
        assert k == n_proto
        depth = _log_knee(ks, curve.tolist(), len(x))[1]
        assert depth > 0.25
        # the core's depth is this one: a threshold just above it drops the elbow
        assert engine.choose_k(x, ks, min_depth=depth * (1 + 1e-9)) == ks[-1]


@pytest.mark.parametrize("n_dirs", [1, 3])
def test_choose_k_scaled_copies_of_a_few_directions(n_dirs):
    """Filters that are positive multiples of n_dirs directions: from K = n_dirs on the
    distortion is float noise, which must not make a knee of its own (it chose 12 of 16 for
    one direction), with or without min_depth."""
    g = torch.Generator().manual_seed(n_dirs)
    dirs = torch.randn(n_dirs, 27, generator=g)
    x = dirs.repeat(16 // n_dirs + 1, 1)[:16] * (torch.rand(16, 1, generator=g) + 0.5)
    for ks in (list(range(1, 17)), list(range(n_dirs, 17))):
        for min_depth in (0.0, 0.15):
            assert engine.choose_k(x, ks, min_depth=min_depth) == n_dirs, (ks, min_depth)


def test_choose_k_min_depth_takes_numpy_numbers():
    x, _ = clustered(4, 12, 48, 0.25, seed=4)
    assert engine.choose_k(x, list(range(2, 41, 2)), min_depth=np.float32(0.1)) == 4


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), True, "0.1"])
def test_choose_k_bad_min_depth(bad):
    with pytest.raises(ValueError, match="min_depth must be a number in"):
        engine.choose_k(make((8, 4)), [1, 2, 4], min_depth=bad)
