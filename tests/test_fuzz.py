"""Property-based tests of the C++ boundary: random shapes, strides, dtypes, non-finite
values, K values and thread counts. Every call returns what the pure-torch reference
gives, or raises ValueError/TypeError: never a crash, a hang or a silent wrong answer."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
from pyprune import engine

FAST = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool]


@st.composite
def weights(draw, allow_bad=True):
    """A weight-like tensor: rank 0-4, sizes 0-9, any dtype, maybe non-contiguous, maybe
    with a NaN/Inf planted."""
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0 if allow_bad else 1, 9), min_size=rank, max_size=rank))
    dtype = draw(st.sampled_from(DTYPES if allow_bad else DTYPES[:2]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64) if shape else torch.randn((), generator=g,
                                                                                        dtype=torch.float64)
    if allow_bad and t.numel() and draw(st.booleans()):
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    t = t.to(dtype)
    if draw(st.booleans()) and t.dim() >= 2:  # non-contiguous: a transposed view
        t = t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def _valid(t: torch.Tensor) -> bool:
    return (t.is_floating_point() and t.dim() >= 2 and t.numel() > 0 and bool(torch.isfinite(t).all()))


@FAST
@given(w=weights(), p=st.sampled_from([1, 2, 3]), threads=st.sampled_from([None, 1, 2, 3, 0, -1]))
def test_filter_norms(w, p, threads):
    ok = _valid(w) and p in (1, 2) and threads in (None, 1, 2, 3)
    if not ok:
        with pytest.raises((ValueError, TypeError)):
            engine.filter_norms(w, p, threads=threads)
        return
    got = engine.filter_norms(w, p, threads=threads)
    want = w.double().reshape(w.shape[0], -1).norm(p=p, dim=1)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max())))


@FAST
@given(w=weights(), threads=st.sampled_from([None, 1, 2]))
def test_cosine_and_fpgm(w, threads):
    if not _valid(w):
        with pytest.raises((ValueError, TypeError)):
            engine.cosine_similarity(w, threads=threads)
        with pytest.raises((ValueError, TypeError)):
            engine.fpgm_scores(w, threads=threads)
        return
    x = w.float().double()  # the core reads float32
    torch.testing.assert_close(engine.cosine_similarity(w, threads=threads).double(), ref.cosine_similarity(x),
                               rtol=1e-4, atol=1e-4)
    want = ref.fpgm_scores(x)
    torch.testing.assert_close(engine.fpgm_scores(w, threads=threads).double(), want, rtol=1e-3,
                               atol=1e-3 * (1 + float(want.abs().max())))


@FAST
@given(w=weights(), k=st.integers(-1, 11), iters=st.integers(0, 4), threads=st.sampled_from([None, 1, 2]),
       reuse=st.booleans())
def test_spherical_kmeans_invariants(w, k, iters, threads, reuse):
    ok = _valid(w) and 1 <= k <= (w.shape[0] if w.dim() else 0)
    if not ok:
        with pytest.raises((ValueError, TypeError)):
            engine.spherical_kmeans(w, k, max_iter=iters, threads=threads, reuse=reuse)
        return
    r, = engine.spherical_kmeans(w, k, max_iter=iters, threads=threads, reuse=reuse)
    n = w.shape[0]
    assert r.labels.shape == (n,) and int(r.labels.min()) >= 0 and int(r.labels.max()) < k
    reps = r.representatives.tolist()
    assert len(reps) == k == len(set(reps)) and all(0 <= i < n for i in reps)
    norms = r.centroids.double().norm(dim=1)
    assert bool(((norms - 1).abs() < 1e-4).all()), norms
    obj = r.objective
    assert bool((obj[1:] >= obj[:-1] - 1e-4 * (1 + obj.abs()[:-1])).all()), obj


@FAST
@given(ranks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bfloat16, torch.uint8]),
       picks=st.data(), threads=st.sampled_from([None, 1, 2]))
def test_gather_matches_indexing(ranks, dtype, picks, threads):
    tensors, indices, want = [], [], []
    for i, rank in enumerate(ranks):
        shape = picks.draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
        t = (torch.arange(torch.Size(shape).numel(), dtype=torch.float64) * 1.5 - 7).reshape(shape).to(dtype)
        ix = []
        out = t
        for d in range(picks.draw(st.integers(0, rank))):
            if picks.draw(st.booleans()):
                ix.append(None)
                continue
            keep = sorted(picks.draw(st.sets(st.integers(0, shape[d] - 1), min_size=1, max_size=shape[d])))
            ix.append(keep)
            out = out.index_select(d, torch.tensor(keep))
        tensors.append(t)
        indices.append(ix)
        want.append(out)
    bad_index = picks.draw(st.booleans()) and ranks[0] >= 1
    if bad_index:  # an index past the end of dim 0 must be refused, not read
        indices[0] = [[tensors[0].shape[0] + picks.draw(st.integers(0, 3))]]
        with pytest.raises((ValueError, IndexError)):
            engine.gather(tensors, indices, threads=threads)
        return
    for got, w in zip(engine.gather(tensors, indices, threads=threads), want):
        assert got.dtype == w.dtype and torch.equal(got, w)
