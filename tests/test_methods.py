"""Pruning methods, schedules and the Pruner API (issue: methods and the Python API)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import pyprune
from pyprune.models import digits_cnn
from pyprune.train import evaluate, fit
from planted import trained_digits_cnn


def net(c1=16, c2=8, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, c1, 3, padding=1, bias=bias), nn.ReLU(),
                         nn.Conv2d(c1, c2, 3, padding=1, bias=bias), nn.ReLU(), nn.Conv2d(c2, 4, 1)).eval()


def kept(res, name="0"):
    g = [g for g in res.plan.graph.groups if g.name == name][0]
    return sorted(int(i) for i in res.plan.keep[g.id])


def batches(n=3, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 8, 8, generator=g), torch.randint(0, 4, (bs,), generator=g)) for _ in range(n)]


class Pool(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


# -- data-driven criteria against hook / autograd references ------------------------------
def inputs_seen(model, layer, cal):
    """What `layer` reads over the calibration batches, via a hook."""
    seen = []
    h = layer.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    with torch.no_grad():
        for x, _ in cal:
            model(x)
    h.remove()
    return torch.cat(seen)


def reference_stats(model, cal):
    """Statistics of the input of model[2] (= channels of layer 0 after ReLU), via a hook."""
    a = inputs_seen(model, model[2], cal)  # N, C, H, W
    mean = a.abs().mean(dim=(0, 2, 3))
    apoz = (a == 0).float().mean(dim=(0, 2, 3))
    rank = torch.linalg.matrix_rank(a).float().mean(0)
    return mean, apoz, rank


@pytest.mark.parametrize("method", ["activation", "apoz", "hrank"])
def test_activation_criteria_match_hooks(method):
    model = net()
    cal = batches()
    mean, apoz, rank = reference_stats(model, cal)
    ref = {"activation": mean, "apoz": -apoz, "hrank": rank}[method]
    res = pyprune.prune(model, cal[0][0][:1], method=method, calibration=cal, ratio=0.5)
    got = kept(res)
    order = torch.argsort(ref, descending=True, stable=True)
    top = set(order[:8].tolist())
    if method == "hrank":  # ranks tie a lot: the kept set must be a valid top-8
        assert all(float(ref[i]) >= float(ref[order[7]]) for i in got)
    else:
        assert set(got) == top


class ChannelsLastMlp(nn.Module):
    """A ConvNeXt-style block: conv, then a Linear MLP over the channels-last map (N, H, W, C)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.fc2(torch.relu(self.fc1(y)))
        return self.head(y.mean(dim=(1, 2)))


@pytest.mark.parametrize("method", ["activation", "apoz"])
def test_activation_criteria_read_a_linear_input_channels_last(method):
    """fc2 reads fc1's 16 units at the last dim of a (N, H, W, 16) map: the statistics are
    taken over N, H and W per unit, as a hook on fc2 computes them (a conv reads dim 1)."""
    model = ChannelsLastMlp().eval()
    cal = batches()
    a = inputs_seen(model, model.fc2, cal).reshape(-1, 16)
    ref = a.abs().mean(0) if method == "activation" else -(a == 0).float().mean(0)
    res = pyprune.prune(model, cal[0][0][:1], method=method, calibration=cal, ratio=0.5)
    assert kept(res, "fc1") == sorted(torch.argsort(ref, descending=True, stable=True)[:8].tolist())
    assert res.model(cal[0][0]).shape == (8, 4)


def test_taylor_matches_autograd_reference():
    model = Pool(net())
    cal = batches(n=4)
    w, b = model.body[0].weight, model.body[0].bias
    score = torch.zeros(16, dtype=torch.float64)
    for x, y in cal:
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [w, b])
        c = (w * gw).flatten(1).sum(1) + b * gb
        score += c.double() ** 2
    want = sorted(torch.argsort(score, descending=True)[:8].tolist())
    res = pyprune.prune(model, cal[0][0][:1], method="taylor", calibration=cal, ratio=0.5)
    assert kept(res, "body.0") == want
    assert all(p.grad is None for p in model.parameters())


class FunctionalConv(nn.Module):
    """A module pyprune has no handler for, running F.conv2d on its own weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8, 3, 3) * 0.1)

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, padding=1)


def test_activation_reads_a_functional_convs_input_at_dim_1():
    """The 8 channels feed F.conv2d inside a module pyprune has no handler for, on 8x8 maps
    (dim 1 and the last dim both 8 wide): the statistics are per channel (dim 1), as a hook
    computes them, not per column."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), FunctionalConv(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    cal = batches()
    ref = reference_stats(model, cal)[0]
    res = pyprune.prune(model, cal[0][0][:1], method="activation", calibration=cal, ratio=0.5)
    assert kept(res) == sorted(torch.argsort(ref, descending=True, stable=True)[:4].tolist())


def test_taylor_sums_a_transposed_convs_filters_over_its_output_dim():
    """Taylor on a ConvTranspose2d: each output channel's w * dL/dw summed over dim 1's slice
    of the (in, out, k, k) weight, plus its bias term; autograd reference."""
    import models as user_models

    torch.manual_seed(0)
    model = user_models.TinyUNet().eval()
    g = torch.Generator().manual_seed(0)
    cal = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]
    w, b = model.up.weight, model.up.bias
    score = torch.zeros(16, dtype=torch.float64)
    for x, y in cal:
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [w, b])
        score += ((w * gw).transpose(0, 1).flatten(1).sum(1) + b * gb).double() ** 2
    want = sorted(torch.argsort(score, descending=True)[:8].tolist())
    res = pyprune.prune(model, cal[0][0][:1], method="taylor", calibration=cal, ratio=0.5)
    assert kept(res, "up") == want


@pytest.mark.parametrize("method", ["activation", "apoz", "hrank", "taylor"])
def test_data_methods_need_calibration(method):
    with pytest.raises(ValueError, match="calibration"):
        pyprune.prune(net(), torch.randn(1, 3, 8, 8), method=method)


def test_unknown_schedule():
    with pytest.raises(ValueError, match=r"unknown schedule 'zigzag'.*uniform.*global.*taper"):
        pyprune.prune(net(), torch.randn(1, 3, 8, 8), schedule="zigzag")


# -- k-means merging -----------------------------------------------------------------------
def duplicated_net(seed=0):
    """conv(3->16) -> ReLU -> conv(16->8): filters 8..15 are positive multiples of 0..7."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    with torch.no_grad():
        base_w, base_b = model[0].weight[:8].clone(), model[0].bias[:8].clone()
        scale = torch.rand(8) * 2 + 0.3
        model[0].weight[8:] = base_w * scale[:, None, None, None]
        model[0].bias[8:] = base_b * scale
    return model


def test_kmeans_merge_is_exact_for_scaled_duplicates():
    model = duplicated_net()
    x = torch.randn(4, 3, 10, 10)
    want = model(x)
    res = pyprune.prune(model, x[:1], method="kmeans", ratio=0.5, merge=True)
    got = res.model(x)
    assert res.model[0].out_channels == 8
    assert ((got - want).abs().max() / want.abs().max()) <= 1e-5
    assert res.merge is not None and res.merge.merged == 8 and res.merge.mean_residual < 1e-5
    plain = pyprune.prune(model, x[:1], method="kmeans", ratio=0.5, merge=False).model(x)
    assert ((plain - want).abs().max() / want.abs().max()) > 1e-2


class _MaskedConv(nn.Conv2d):
    """A conv whose weight is multiplied by a fixed 0/1 mask of its shape (XConv2d)."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=1)
        self.register_buffer("mask", (torch.rand(self.weight.shape) > 0.5).float())

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=1)


def test_kmeans_merge_leaves_a_masked_consumer_as_plain_pruning_does():
    """Folding a dropped channel's column into the kept one's would put it under the kept
    column's mask pattern: a consumer with a weight mask takes no folds. Its weight and mask
    are the original's at the kept channels, and the pruned model is what plain pruning of
    the same channels gives."""
    model = duplicated_net()
    torch.manual_seed(1)
    model[2] = _MaskedConv(16, 8).eval()
    x = torch.randn(4, 3, 10, 10)
    res = pyprune.prune(model, x[:1], method="kmeans", ratio=0.5, merge=True)
    pm = res.model
    kept = torch.tensor([int(torch.nonzero((model[0].weight == w).flatten(1).all(1))[0]) for w in pm[0].weight])
    assert len(kept) == 8
    assert torch.equal(pm[2].weight, model[2].weight[:, kept]) and torch.equal(pm[2].mask, model[2].mask[:, kept])
    with torch.no_grad():
        h = nn.functional.conv2d(x, model[0].weight[kept], model[0].bias[kept], padding=1).relu()
        want = nn.functional.conv2d(h, (model[2].weight * model[2].mask)[:, kept], model[2].bias, padding=1)
        torch.testing.assert_close(pm(x), want, rtol=1e-5, atol=1e-5)


class _ConcatFlatten(nn.Module):
    """Two convs with scaled duplicate filters, concatenated (one consumer reads both
    groups), then flattened into a Linear (each channel read at 4 positions)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(14, 7, 1)
        self.fc = nn.Linear(14 * 4, 7)

    def forward(self, x):
        h = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.c(h).mean((2, 3)) + self.fc(nn.functional.adaptive_max_pool2d(h, 2).flatten(1))


def test_kmeans_merge_is_exact_through_concat_and_flatten():
    """The merge folds a dropped channel into every position its consumers read it at:
    once in the conv after a concat of two groups, four times in the Linear after a
    flatten; with positive scaled duplicates the pruned model computes the same."""
    torch.manual_seed(0)
    model = _ConcatFlatten().eval()
    with torch.no_grad():
        for conv, half in ((model.a, 4), (model.b, 3)):
            s = torch.rand(half) * 2 + 0.3
            conv.weight[half:] = conv.weight[:half] * s[:, None, None, None]
            conv.bias[half:] = conv.bias[:half] * s
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        want = model(x)
    res = pyprune.prune(model, x[:1], method="kmeans", ratio=0.5, merge=True)
    assert (res.model.a.out_channels, res.model.b.out_channels, res.model.fc.in_features) == (4, 3, 28)
    assert res.merge.merged == 7 and res.merge.mean_residual < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_kmeans_auto_k_finds_planted_clusters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3), nn.ReLU(), nn.Conv2d(48, 4, 1)).eval()
    proto = torch.randn(6, 3, 3, 3)
    with torch.no_grad():
        model[0].weight.copy_(proto.repeat(8, 1, 1, 1) * (1 + 0.05 * torch.randn(48, 1, 1, 1))
                              + 0.05 * torch.randn(48, 3, 3, 3))
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="kmeans", ratio="auto")
    assert res.model[0].out_channels == 6


def test_kmeans_auto_keeps_layers_without_cluster_structure_and_says_so():
    """A layer of random filters has no elbow in its distortion curve: ratio="auto" keeps it
    whole and names it in a warning that points at the caller's line; the planted layer
    beside it still gets its cluster count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3), nn.ReLU(), nn.Conv2d(48, 32, 3), nn.ReLU(), nn.Conv2d(32, 4, 1)).eval()
    proto = torch.randn(6, 3, 3, 3)
    with torch.no_grad():
        model[0].weight.copy_(proto.repeat(8, 1, 1, 1) * (1 + 0.05 * torch.randn(48, 1, 1, 1))
                              + 0.05 * torch.randn(48, 3, 3, 3))
    x = torch.randn(2, 3, 10, 10)
    with pytest.warns(UserWarning, match=r"no elbow in the k-means distortion curve of 1 of 2 groups \(2\)") as rec:
        res = pyprune.prune(model, x[:1], method="kmeans", ratio="auto")
    assert [w.filename for w in rec if "no elbow" in str(w.message)] == [__file__]
    assert (res.model[0].out_channels, res.model[2].out_channels) == (6, 32)
    torch.testing.assert_close(res.model[4].weight, model[4].weight)  # its input kept whole
    with pytest.warns(UserWarning, match="no elbow") as rec:  # the plan step, called directly
        plan = pyprune.Pruner(model, x[:1], method="kmeans").plan(ratio="auto")
    assert [w.filename for w in rec if "no elbow" in str(w.message)] == [__file__]
    assert [len(plan.keep[g.id]) for g in plan.graph.groups if g.name in ("0", "2")] == [6, 32]


# -- schedules -----------------------------------------------------------------------------
def deep_net():
    torch.manual_seed(0)
    layers, c = [], 3
    for w in (32, 32, 64, 64, 128, 128):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers).eval()


def test_global_never_removes_a_whole_layer():
    model = deep_net()
    with torch.no_grad():  # 60 of this layer's 64 filters look useless next to the other 4
        model[4].weight[4:].mul_(1e-4)
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", schedule="global", ratio=0.6)
    w = res.plan.widths()
    for gid, (before, after) in w.items():
        g = res.plan.graph.groups[gid]
        if g.prunable:
            assert after >= max(1, int(np.ceil(0.1 * before)))
    assert res.model[4].out_channels == 7  # ceil(10% of 64): the floor stops it
    assert set(kept(res, "4")) >= {0, 1, 2, 3}
    removed = sum(b - a for b, a in w.values())
    assert abs(removed - 0.6 * sum(b for gid, (b, a) in w.items() if res.plan.graph.groups[gid].prunable)) <= 1


@pytest.mark.parametrize("taper", [0.5, 1.0, 1.8])
@pytest.mark.parametrize("round_to", [None, 8])
def test_taper_monotone_and_hits_overall_ratio(taper, round_to):
    model = deep_net()
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l1", schedule="taper", taper=taper,
                        ratio=0.5, round_to=round_to)
    groups = [g for g in res.plan.graph.groups if g.prunable]
    groups.sort(key=lambda g: g.id)
    ratios = [1 - len(res.plan.keep[g.id]) / g.size for g in groups]
    tol = (round_to or 1) / min(g.size for g in groups)
    assert all(b >= a - tol for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] > ratios[0]
    total = sum(g.size for g in groups)
    removed = sum(g.size - len(res.plan.keep[g.id]) for g in groups)
    assert abs(removed - 0.5 * total) <= (round_to or 1) * len(groups) / 2 + 1


def test_taper_zero_is_uniform():
    a = pyprune.prune(deep_net(), torch.randn(1, 3, 8, 8), method="l1", schedule="taper", taper=0.0, ratio=0.5)
    b = pyprune.prune(deep_net(), torch.randn(1, 3, 8, 8), method="l1", schedule="uniform", ratio=0.5)
    assert a.plan.widths() == b.plan.widths()


@pytest.mark.parametrize("schedule", ["uniform", "taper", "global"])
@pytest.mark.parametrize("target", [0.5, 0.3])
def test_target_macs_lands_within_3_percent(schedule, target):
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = pyprune.prune(model, x, method="l2", schedule=schedule, target_macs=target)
    got = res.summary.macs_after / res.summary.macs_before
    assert (1 - 0.03) * target <= got <= target, got  # a budget: never above it


def test_target_params_absolute_count():
    model = deep_net()
    total = sum(p.numel() for p in model.parameters())
    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", max_params=total // 3)
    assert (1 - 0.03) * (total // 3) <= res.summary.params_after <= total // 3


@pytest.mark.parametrize("kw", [{"max_params": 2000}, {"target_params": 0.3}, {"target_params": 0.5},
                                {"target_macs": 0.5}, {"target_macs": 0.3}])
def test_a_budget_is_never_exceeded_on_small_models(kw):
    """On models whose channel counts move the cost in coarse steps, the plan keeps under the
    budget (the largest the schedule gives there), never the closest step above it."""
    from models import sequential_cnn

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval(), torch.randn(1, 3, 8, 8)
    for m in (model, sequential_cnn().eval()):
        s = pyprune.prune(m, x if m is model else torch.randn(1, 3, 16, 16), method="l1", **kw).summary
        (kind, value), = kw.items()
        before, after = (s.params_before, s.params_after) if "params" in kind else (s.macs_before, s.macs_after)
        assert after <= (value if kind.startswith("max") else value * before)


@pytest.mark.parametrize("kw, match", [
    ({"target_params": 5000}, "fraction .* in \\(0, 1\\].*max_params="),
    ({"target_macs": 0.0}, "fraction"),
    ({"max_macs": 0.5e-9}, None),
    ({"max_params": -3}, "absolute count"),
    ({"target_params": 0.5, "max_params": 100}, "one budget"),
    ({"ratio": 0.3, "target_macs": 0.5}, r"a ratio or a budget, not both: ratio=0.3 and target_macs=0.5"),
    ({"ratio": 0.5, "max_params": 100, "iterative_steps": 2}, "not both"),
])
def test_budget_forms_are_unambiguous(kw, match):
    """A fraction and an absolute count have separate arguments; a count given as a
    fraction (or the reverse) is refused with the right argument named."""
    model = deep_net()
    if match is None:  # an absolute count below anything reachable
        with pytest.raises(ValueError, match="max_macs=.*unreachable"):
            pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", **kw)
        return
    with pytest.raises(ValueError, match=match):
        pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", **kw)


def test_layer_ratios_override():
    res = pyprune.prune(deep_net(), torch.randn(1, 3, 8, 8), method="l2", ratio=0.5, layer_ratios={"0": 0.0, "1?": 0.75})
    assert res.model[0].out_channels == 32
    assert res.model[10].out_channels == 32  # "10" matches "1?"
    assert res.model[2].out_channels == 16
    with pytest.raises(ValueError, match="matches no prunable layer"):
        pyprune.prune(deep_net(), torch.randn(1, 3, 8, 8), layer_ratios={"nope": 0.5})


def test_linear_layers_are_pruned():
    model = digits_cnn(batchnorm=False)
    res = pyprune.prune(model, torch.randn(1, 1, 8, 8), method="l2", ratio=0.5)
    assert res.model[9].out_features == 64 and res.model[11].in_features == 64
    assert res.model[11].out_features == 10


# -- Pruner: plan / edit / apply, iterative ----------------------------------------------
def test_pruner_plan_edit_apply():
    model = net()
    pruner = pyprune.Pruner(model, torch.randn(1, 3, 8, 8), method="l1")
    plan = pruner.plan(ratio=0.5)
    g = [g for g in plan.graph.groups if g.name == "0"][0]
    plan.keep[g.id] = np.array([0, 1, 2])
    res = pruner.apply(plan)
    assert res.model[0].out_channels == 3
    assert torch.equal(res.model[0].weight, model[0].weight[:3])
    assert plan.layer_widths()["0"] == (16, 3)


def test_iterative_steps_call_finetune_and_reach_target():
    model = deep_net()
    calls = []

    def finetune(m, step):
        calls.append((step, sum(p.numel() for p in m.parameters())))

    res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l1", ratio=0.5, iterative_steps=3, finetune=finetune)
    assert [c[0] for c in calls] == [1, 2, 3]
    assert calls[0][1] > calls[1][1] > calls[2][1]
    assert len(res.steps) == 3
    w = [m.out_channels for m in res.model if isinstance(m, nn.Conv2d)]
    assert w == [16, 16, 32, 32, 64, 64]
    assert res.summary.params_before == sum(p.numel() for p in model.parameters())
    # the widths span every round: the model given against the pruned one (the last plan's
    # 'before' is the second round's model)
    width = lambda m: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features  # noqa: E731
    given = {n: width(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    final = {n: width(m) for n, m in res.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert res.layer_widths() == {n: (given[n], final[n]) for n in given}
    assert len(res.plans) == 3 and res.plans[-1] is res.plan
    assert any(b < given[n] for n, (b, _) in res.plan.layer_widths().items())


def test_iterative_rounds_are_robust_to_what_finetune_does():
    """A finetune that wraps the model (new layer names) is refused at the next round instead
    of cutting the renamed layers again from their current widths; one that returns a
    (model, metrics) pair is refused, one that returns a history trained in place; one step calls finetune once; an in-place run reports
    against the model as it was; a failed run leaves the Pruner on the model it was given."""
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"keep_by_layer names layers .*'0'.*not a wrapper such as DataParallel"):
        pyprune.prune(deep_net(), x, method="l1", ratio=0.5, iterative_steps=3,
                      finetune=lambda m, step: nn.Sequential(m))
    with pytest.raises(TypeError, match=r"returned a tuple holding a module \(step 1\): return the fine-tuned model"):
        pyprune.prune(deep_net(), x, method="l1", ratio=0.5, finetune=lambda m, step: (m, {"top1": 0.9}))
    calls = []
    pyprune.prune(deep_net(), x, method="l1", ratio=0.5, finetune=lambda m, step: calls.append(step))
    assert calls == [1]
    # a finetune that trains in place and returns its history (as pyprune.train.fit does) is fine
    res = pyprune.prune(deep_net(), x, method="l1", ratio=0.5, iterative_steps=2,
                        finetune=lambda m, step: [{"epoch": 0, "loss": 1.0}])
    assert [m.out_channels for m in res.model if isinstance(m, nn.Conv2d)] == [16, 16, 32, 32, 64, 64]
    model = deep_net()
    n = sum(p.numel() for p in model.parameters())
    res = pyprune.prune(model, x, method="l1", ratio=0.5, iterative_steps=2, inplace=True)
    assert res.summary.params_before == n and res.summary.params_after == sum(p.numel() for p in model.parameters()) < n
    model = deep_net()
    pruner = pyprune.Pruner(model, x, method="l1")

    def fails(m, step):
        if step == 2:
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        pruner.run(0.5, iterative_steps=3, finetune=fails)
    assert pruner.model is model and sum(p.numel() for p in model.parameters()) == n
    again = pruner.run(0.5, iterative_steps=3)
    assert [m.out_channels for m in again.model if isinstance(m, nn.Conv2d)] == [16, 16, 32, 32, 64, 64]


# -- real data: scikit-learn's handwritten digits -------------------------------------------
DIGITS_METHODS = ["kmeans", "kmeans_nomerge", "l1", "l2", "fpgm", "activation", "apoz", "hrank", "taylor", "random"]


@pytest.fixture(scope="module")
def digits_run():
    model, train, test = trained_digits_cnn(batchnorm=False, epochs=20, lr=2e-3)
    base = evaluate(model, test)["top1"]
    cal = [(x, y) for x, y in DataLoader(train, batch_size=128)][:4]
    x = test[:1][0]
    rows = {}
    for method in DIGITS_METHODS:
        name = "kmeans" if method.startswith("kmeans") else method
        kw = {"merge": False} if method == "kmeans_nomerge" else {}
        if method in ("activation", "apoz", "hrank", "taylor"):
            kw["calibration"] = cal
        seeds = [0, 1, 2] if method == "random" else [0]
        before = []
        for seed in seeds:
            res = pyprune.prune(model, x, method=name, ratio=0.5, seed=seed, **kw)
            before.append(evaluate(res.model, test)["top1"])
        fit(res.model, train, epochs=10, lr=2e-3, seed=0, progress=False)
        after = evaluate(res.model, test)["top1"]
        rows[method] = dict(before=float(np.mean(before)), after=after, params=res.summary.params_after,
                            macs=res.summary.macs_after)
    rows["unpruned"] = dict(before=base, after=base, params=res.summary.params_before, macs=res.summary.macs_before)
    print("\n| method | top-1 pruned (no FT) | top-1 after 10 FT epochs | params | MACs |\n|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['before']:.4f} | {r['after']:.4f} | {r['params']} | {r['macs']} |")
    return base, rows


def test_digits_base_model_is_accurate(digits_run):
    base, _ = digits_run
    assert base >= 0.97


@pytest.mark.parametrize("method", ["kmeans", "l1", "l2", "fpgm"])
def test_digits_criteria_beat_random(digits_run, method):
    _, rows = digits_run
    assert rows[method]["before"] > rows["random"]["before"] + 0.02, rows


def test_digits_merge_beats_no_merge(digits_run):
    _, rows = digits_run
    assert rows["kmeans"]["before"] > rows["kmeans_nomerge"]["before"], rows


@pytest.mark.parametrize("method", DIGITS_METHODS)
def test_digits_finetuned_within_1_5_points(digits_run, method):
    base, rows = digits_run
    assert rows[method]["after"] >= base - 0.015, rows[method]


def _numpy_filled(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights and BN statistics from numpy's PCG64 (the same numbers on every machine)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point():
                v = rng.standard_normal(t.shape) * 0.1
                if name.endswith("running_var") or name.endswith(".weight") and t.dim() == 1:
                    v = np.abs(v) + 0.5
                t.copy_(torch.from_numpy(v))
    return model.eval()


# sha256 of the kept channels, prune(method="kmeans", ratio=0.5, seed=0): a change of any
# kept channel shows here. They are the same bits on the AVX-512 and AVX2 paths (each dot is
# one FMA chain in the same order) and at any thread count.
KEPT_SHA256 = {
    "mobilenet_v2": "cb261a3fc7d4c0937da8f916f7e04a48ef69c2d6881a92d667db49a8012dd9af",
    "resnet18": "46b414e1fa70b09f8675b29379853a424e72e37771446e5aa84edebdeff6c9d1",
}


@pytest.mark.skipif(not {"avx512", "avx2"} & set(pyprune.engine.gemm_kernels()),
                    reason="the recorded channels are those of the AVX2/AVX-512 paths; this CPU has neither")
@pytest.mark.parametrize("name", sorted(KEPT_SHA256))
def test_kmeans_kept_channels_unchanged(name):
    import hashlib

    import torchvision

    model = _numpy_filled(getattr(torchvision.models, name)(weights=None, num_classes=10))
    res = pyprune.prune(model, torch.zeros(1, 3, 32, 32), method="kmeans", ratio=0.5, seed=0)
    kept = np.concatenate([np.asarray(res.plan.keep[g], np.int64) for g in sorted(res.plan.keep)])
    digest = hashlib.sha256(kept.tobytes()).hexdigest()
    assert digest == KEPT_SHA256[name], digest


def test_calibration_batches_the_model_cannot_take_are_refused_before_any_work():
    """The first calibration batch is checked against the example inputs: a two-input model
    given bare (a, b) pairs (read as inputs and labels), a batch with other channels, or one
    with NaN are refused with what to pass; ((a, b), None) is taken. Taylor on a model that
    returns no one tensor of scores says so."""
    from models import TwoInputs

    torch.manual_seed(0)
    model, x = TwoInputs().eval(), (torch.randn(1, 3, 8, 8), torch.randn(1, 7))
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 7)
    with pytest.raises(ValueError, match=r"holds 1 input tensor\(s\), but the model takes 2.*\(\(input_1, input_2"):
        pyprune.prune(model, x, method="l1", calibration=[(a, b)])
    res = pyprune.prune(model, x, method="l1", calibration=[((a, b), None)])
    assert res.recovery["bn_batches"] == 1
    with pytest.raises(ValueError, match=r"input 0 of the first batch has shape \(4, 1, 8, 8\).*3 channels"):
        pyprune.prune(model, x, method="l1", calibration=[((a[:, :1], b), None)])
    # a sequence model's batches may be longer than its example: rank and count are what is checked
    seq = nn.Sequential(nn.Conv1d(4, 16, 3), nn.ReLU(), nn.Conv1d(16, 3, 3)).eval()
    assert pyprune.prune(seq, torch.randn(1, 4, 12), method="l1",
                         calibration=[(torch.randn(4, 4, 40), None)]).model[0].out_channels == 8
    tokens = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()  # (batch, time, features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (its Linear layers along the last dim are kept whole: warned)
        pyprune.prune(tokens, torch.randn(1, 8, 12), method="l1", calibration=[(torch.randn(4, 20, 12), None)])
    with pytest.raises(ValueError, match="input 1 of the first batch holds NaN"):
        pyprune.prune(model, x, method="l1", calibration=[((a, torch.full_like(b, float("nan"))), None)])

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = self.c(x).mean((2, 3))
            return {"logits": self.fc(h), "features": h}

    with pytest.raises(ValueError, match="returns a dict"):
        pyprune.prune(TwoHeads().eval(), a[:1], method="taylor", calibration=[(a, torch.zeros(4, dtype=torch.long))])


def test_a_shortfall_from_returned_feature_maps_is_named():
    """A backbone that returns its stages' maps keeps their widths (what reads them expects
    them): the warning names those outputs instead of staying silent (nothing cut, or the
    parameters far short). A classifier's logits, also an output, warn of nothing."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    class Stages(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, 64, 3, 2, 1)

        def forward(self, x):
            f1 = self.a(x).relu()
            f2 = self.b(f1).relu()
            return [f1, f2, self.c(f2).relu()]

    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"asked to remove 50% of the channels; 112 channels are the model's outputs "
                                         r"and keep their widths: c \(64\), b \(32\), a \(16\), and no other channel"):
        res = pyprune.prune(Stages().eval(), x, method="l1", ratio=0.5)
    assert res.summary.params_ratio == 1.0
    resnet = torchvision.models.resnet18().eval()
    backbone = create_feature_extractor(resnet, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=r"896 channels are the model's outputs .*layer4\.0\.conv2 \(512\).* and 50% of "
                                         r"the other 1984 were removed"):
        res = pyprune.prune(backbone, x, method="l1", ratio=0.5)
    assert {k: v.shape[1] for k, v in res.model(x).items()} == {"c3": 128, "c4": 256, "c5": 512}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyprune.prune(resnet, x, method="l1", ratio=0.5)


def test_a_shortfall_from_round_to_is_named():
    """ratio=0.3 with round_to=4 on 8-channel layers: 6 kept rounds to 8, so nothing is cut;
    the warning says round_to did it (it was silent: the rounded counts were what the
    schedule asked). round_to=2 cuts them."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"removed 0% .*round_to=4 rounds each group's count to a multiple of 4, and "
                                         r"2 group\(s\) keep more than the ratio asks: 0 \(kept 8 of 8\); 2 \(kept 8 of 8\)"):
        pyprune.prune(model, x, method="l2", ratio=0.3, round_to=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pyprune.prune(model, x, method="l2", ratio=0.3, round_to=2).model[0].out_channels == 6


def test_a_shortfall_from_grouped_blocks_is_named():
    """Nothing kept whole, yet far fewer channels removed than asked (each two-channel block
    of a grouped conv keeps one at least): a warning names the groups kept above what the
    schedule asked. A schedule's own choice to keep more warns of nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=8),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with pytest.warns(UserWarning, match=r"asked to remove 90% of the channels, removed 5\d%.*Kept above what the "
                                         r"schedule asked: 0 \(kept 8 of 16, the schedule asked 2; blocks of a grouped"):
        res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", ratio=0.9)
    assert res.model[2].groups == 8 and res.model[2].in_channels == 8
