"""Criteria against references computed independently in the test."""
from __future__ import annotations

import copy

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyprune



@pytest.fixture(autouse=True)
def _no_grad():
    """These tests only run forward passes: no autograd (scoped to this module)."""
    with torch.no_grad():
        yield


def two_conv(c1=16, c2=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1)).eval()


def kept_filters(res) -> list[int]:
    """Indices (in the original layer 0) of the filters the pruned model kept."""
    plan = res.plan
    g = [g for g in plan.graph.groups if g.name == "0"][0]
    return sorted(int(i) for i in plan.keep[g.id])


@pytest.mark.parametrize("method, ref", [
    ("l1", lambda w: w.flatten(1).abs().sum(1)),
    ("l2", lambda w: w.flatten(1).norm(dim=1)),
    ("fpgm", lambda w: torch.cdist(w.flatten(1).double(), w.flatten(1).double()).sum(1)),
])
def test_rank_criteria_keep_the_reference_top_half(method, ref):
    model = two_conv()
    w = model[0].weight
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method=method, ratio=0.5)
    want = sorted(torch.argsort(ref(w), descending=True)[:8].tolist())
    assert kept_filters(res) == want
    assert torch.equal(res.model[0].weight, w[want])


def test_bn_scale_keeps_largest_gammas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 4, 3)).eval()
    model[1].weight.copy_(torch.randn(12))
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="bn_scale", ratio=0.5)
    want = sorted(torch.argsort(model[1].weight.abs(), descending=True)[:6].tolist())
    assert kept_filters(res) == want


def test_random_is_seeded():
    model = two_conv()
    a = kept_filters(pyprune.prune(model, torch.randn(1, 3, 8, 8), method="random", seed=1))
    b = kept_filters(pyprune.prune(model, torch.randn(1, 3, 8, 8), method="random", seed=1))
    c = kept_filters(pyprune.prune(model, torch.randn(1, 3, 8, 8), method="random", seed=2))
    assert a == b and a != c


def test_kmeans_keeps_one_of_each_planted_pair():
    torch.manual_seed(0)
    model = two_conv(c1=16)
    base = torch.randn(8, 3, 3, 3)
    w = base.repeat_interleave(2, dim=0) + 0.01 * torch.randn(16, 3, 3, 3)  # pairs (0,1), (2,3), ...
    perm = torch.randperm(16)
    model[0].weight.copy_(w[perm])
    pair_of = {int(perm.tolist().index(i)): i // 2 for i in range(16)}  # position -> pair id
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="kmeans", ratio=0.5)
    kept = kept_filters(res)
    assert len(kept) == 8
    assert sorted(pair_of[i] for i in kept) == list(range(8))


def test_custom_criterion_by_name():
    @pyprune.register_criterion("test_last_channels")
    def last(group, ctx):
        return np.arange(group.size, dtype=float)

    res = pyprune.prune(two_conv(), torch.randn(1, 3, 8, 8), method="test_last_channels", ratio=0.5)
    assert kept_filters(res) == list(range(8, 16))
    assert "test_last_channels" in pyprune.available_criteria()


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*kmeans.*l1"):
        pyprune.prune(two_conv(), torch.randn(1, 3, 8, 8), method="nope")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        pyprune.prune(two_conv(), torch.randn(1, 3, 8, 8), ratio=ratio)


def test_ignore_unknown_module():
    with pytest.raises(ValueError, match=r"ignore: 'features\.9' matches no module"):
        pyprune.prune(two_conv(), torch.randn(1, 3, 8, 8), ignore=["features.9"])


def test_ignore_keeps_that_layer():
    res = pyprune.prune(two_conv(), torch.randn(1, 3, 8, 8), method="l2", ignore=["0"])
    assert res.model[0].out_channels == 16


def test_ignoring_a_module_without_channels_of_its_own_is_refused_naming_the_producer():
    """ignore= a BatchNorm would keep nothing (it writes no channels): refused, naming the conv
    whose channels it reads; its conv named instead keeps them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"ignore: '1' produces no channels of its own.*reads: 0$"):
        pyprune.prune(model, x, method="l2", ignore=["1"])
    assert pyprune.prune(model, x, method="l2", ignore=["0"]).model[0].out_channels == 16
    with pytest.warns(UserWarning, match=r"ignore='2' holds no channels pyprune cuts"):  # an activation
        assert pyprune.prune(model, x, method="l2", ignore=["2"]).model[0].out_channels == 8


def test_round_to():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Conv2d(40, 4, 3)).eval()
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", ratio=0.5, round_to=8)
    assert res.model[0].out_channels == 24  # 20 rounded to the nearest multiple of 8 (ties up)


def test_round_to_wider_than_a_group_says_so():
    """A group no wider than round_to is cut to the ratio unrounded, and a warning names it
    with its widths; round_to below every width warns of nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Conv2d(40, 12, 3), nn.ReLU(), nn.Conv2d(12, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    with pytest.warns(UserWarning, match=r"round_to=16 is not below the width of 1 group\(s\).*: 2 \(12 -> 6\)"):
        res = pyprune.prune(model, x, method="l2", ratio=0.5, round_to=16)
    assert (res.model[0].out_channels, res.model[2].out_channels) == (16, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyprune.prune(model, x, method="l2", ratio=0.5, round_to=4)


class _GhostSE(nn.Module):
    """A ghost module (primary conv, depthwise "cheap" conv on its output, concatenated)
    gated by a squeeze-excite whose expand conv writes both halves: its rows write every
    unit of the primary conv's group twice (timm's ghostnet)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.primary = nn.Conv2d(8, 6, 1)
        self.cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.reduce = nn.Conv2d(12, 4, 1)
        self.expand = nn.Conv2d(4, 12, 1)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        a = self.primary(torch.relu(self.stem(x)))
        y = torch.cat([a, self.cheap(a)], 1)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return self.head(y * s).mean((2, 3))


def test_filters_give_each_write_of_a_unit_its_own_columns():
    """Where one producer writes a unit twice, the unit's filter holds both rows (in row
    order, each in columns of its own), so nothing depends on which write lands last."""
    from pyprune.criteria._registry import Context
    from pyprune.graph import build_graph

    torch.manual_seed(0)
    model = _GhostSE().eval()
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    g = next(g for g in graph.groups if any(m.module == "expand" for m in g.producers()))
    f = Context(model, graph).filters(g)
    blocks = []
    for m in g.producers():
        w = getattr(model, m.module).weight.detach().reshape(len(m.units), -1)
        pos = g.positions(m.units)
        for k in range(int(np.bincount(pos[pos >= 0]).max())):
            block = torch.zeros(g.size, w.shape[1])
            for row in np.flatnonzero(pos >= 0):
                if int((pos[:row] == pos[row]).sum()) == k:  # the k-th write of its unit
                    block[pos[row]] = w[row]
            blocks.append(block)
    assert any(int(np.bincount((p := g.positions(m.units))[p >= 0]).max()) == 2 for m in g.producers())
    assert torch.equal(f, torch.cat(blocks, 1))
    # and the kept channels do not depend on the run
    x = torch.randn(1, 3, 8, 8)
    runs = [pyprune.prune(copy.deepcopy(model), x, method="kmeans", ratio=0.5).plan.keep_mask() for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_layer_ratios_override_the_elbow_of_ratio_auto():
    """With ratio="auto" the elbow picks each layer's clusters, except where layer_ratios
    names the layer; a pattern that matches no layer is refused as with a numeric ratio."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers without an elbow are named in a warning
        res = pyprune.prune(model, x, method="kmeans", ratio="auto", layer_ratios={"0": 0.0, "2": 0.5})
    assert (res.model[0].out_channels, res.model[2].out_channels) == (32, 8)
    with pytest.raises(ValueError, match="'nothing' matches no prunable layer"):
        pyprune.prune(model, x, method="kmeans", ratio="auto", layer_ratios={"nothing": 0.5})
