"""Filter norms, cosine similarity and FPGM scores against pure-torch references."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import reference as ref
from pyprune import engine

# (out, in, kh, kw) or (out, in): 1x1, 3x3, depthwise-like, linear, n from 1 to 2048.
SHAPES = [
    (1, 1, 1, 1),
    (1, 16, 3, 3),
    (7, 3, 3, 3),
    (64, 64, 1, 1),
    (32, 1, 3, 3),  # depthwise
    (96, 1, 5, 5),  # depthwise, 5x5
    (128, 64, 3, 3),
    (300, 17),  # linear
    (2048, 512, 1, 1),
    (513, 256, 3, 3),
]
IDS = ["x".join(map(str, s)) for s in SHAPES]


def make(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("p", [1, 2])
def test_filter_norms_match_torch(shape, p):
    w = make(shape)
    got = engine.filter_norms(w, p)
    want = w.flatten(1).double().norm(p=p, dim=1).float()
    assert got.shape == (shape[0],)
    assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
def test_filter_norms_are_double_sums_at_every_lane_remainder(p):
    """Rows of 1..49 entries (the core sums in 16 lanes: every remainder, 0 to 3 whole
    groups), entries from 1e-4 to 1e4 side by side: summed in double, each norm is the
    float64 norm rounded to float (a float sum would be off by several float steps)."""
    g = torch.Generator().manual_seed(3)
    for d in range(1, 50):
        w = torch.randn(8, d, generator=g) * 10.0 ** torch.randint(-4, 5, (8, d), generator=g)
        want = w.double().norm(p=p, dim=1)
        assert_close(engine.filter_norms(w, p).double(), want, rtol=2.0**-23, atol=0, msg=f"d={d}")


def test_filter_norms_many_layers_in_one_call():
    ws = [make(s, seed=i) for i, s in enumerate(SHAPES)]
    got = engine.filter_norms(ws, 2)
    assert isinstance(got, list) and len(got) == len(ws)
    for g, w in zip(got, ws):
        assert_close(g, w.flatten(1).double().norm(dim=1).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_other_float_dtypes_are_converted(dtype):
    w = make((40, 8, 3, 3)).to(dtype)
    got = engine.filter_norms(w, 2)
    assert_close(got, w.float().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_works():
    base = make((32, 64, 3, 3))
    w = base.transpose(0, 1)  # (64, 32, 3, 3) view, not contiguous
    assert not w.is_contiguous()
    assert_close(engine.filter_norms(w, 1), w.reshape(64, -1).abs().sum(1), rtol=1e-5, atol=1e-5)
    assert_close(engine.cosine_similarity(w), ref.cosine_similarity(w).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_cosine_similarity_matches_torch(shape):
    w = make(shape)
    got = engine.cosine_similarity(w)
    assert got.shape == (shape[0], shape[0])
    assert_close(got, ref.cosine_similarity(w).float(), rtol=1e-4, atol=2e-5)


def test_cosine_similarity_zero_filter_is_zero_everywhere():
    w = make((10, 4, 3, 3))
    w[3] = 0
    s = engine.cosine_similarity(w)
    assert torch.count_nonzero(s[3]) == 0 and torch.count_nonzero(s[:, 3]) == 0
    assert_close(s, ref.cosine_similarity(w).float(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_fpgm_scores_match_cdist(shape):
    w = make(shape)
    got = engine.fpgm_scores(w)
    want = ref.fpgm_scores(w).float()
    assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fpgm_uses_signed_filters():
    # w and -w have the same |w| but lie far apart: FPGM must see the sign.
    v = make((1, 27))
    w = torch.cat([v, -v, v * 1.01])
    s = engine.fpgm_scores(w)
    d = 2 * v.norm()
    assert_close(s[1], d + d * 1.005, rtol=1e-4, atol=1e-4)
    assert s[1] > s[0]


def test_fpgm_duplicate_filters_are_most_replaceable():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 50, generator=g)
    center = w.mean(0, keepdim=True)
    w[5] = center[0]
    assert int(engine.fpgm_scores(w).argmin()) == 5
