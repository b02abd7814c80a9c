"""The extension points: a user's layer, op, criterion and schedule registered through the
public registries, and options the configuration does not know."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pyprune
from pyprune.criteria import CRITERIA
from pyprune.graph._trace import _HANDLERS
from pyprune.layers import LAYERS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class GainConv2d(nn.Conv2d):
    """A conv with an extra per-output-channel gain (as weight-scaled convs have)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.gain = nn.Parameter(torch.rand(self.out_channels) + 0.5)

    def forward(self, x):
        return super().forward(x) * self.gain.view(1, -1, 1, 1)


def gain_net() -> nn.Module:
    return nn.Sequential(GainConv2d(3, 16, 3, padding=1), nn.ReLU(), GainConv2d(16, 24, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()


@pytest.fixture
def gain_layer():
    """Register the README's handler for GainConv2d; unregister afterwards."""

    @pyprune.register_layer(GainConv2d)
    class GainConv(pyprune.layers.Conv):
        out_tensors = ("weight", "bias", "gain")

    yield GainConv
    del LAYERS[GainConv2d]


def test_user_layer_prunes_exactly(gain_layer):
    """Zero-planted channels of a user layer registered through register_layer: pruning
    them (gain included) leaves the outputs equal, and the pruned model runs."""
    model = gain_net()
    x = torch.randn(4, 3, 10, 10)
    graph = pyprune.build_graph(model, x)
    assert any(m.param == "gain" for m in graph.members)
    # plant: zero 5 filters (and their gains) of the first conv
    dead = [1, 4, 7, 8, 13]
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        want = model(x)
    res = pyprune.prune(model, x, method="l2", ratio=5 / 16, ignore=["2"])
    small = res.model
    assert small[0].out_channels == 11 and small[0].gain.shape == (11,) and small[2].in_channels == 11
    g0 = next(g for g in res.plan.graph.groups if g.name == "0")
    assert sorted(set(range(16)) - set(res.plan.keep[g0.id].tolist())) == dead
    with torch.no_grad():
        got = small(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_user_layer_subclass_without_handler_uses_its_base():
    """Without registration the subclass is traced as a Conv2d: its gain is not a member
    (issue of its own: the model it gives fails); the registry lookup walks the MRO."""
    assert pyprune.layers.handler_for(GainConv2d(3, 4, 1)) is LAYERS[nn.Conv2d]


def test_register_layer_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        pyprune.register_layer(int)
    with pytest.raises(TypeError, match="LayerHandler"):
        pyprune.register_layer(GainConv2d)(object)


class SincNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.sinc(self.a(x))).mean((2, 3))


def test_user_op_through_register_op():
    """An op pyprune does not know (torch.sinc) is refused under strict, naming it; with
    the user's channel rule registered through register_op the model prunes exactly."""
    model = SincNet().eval()
    x = torch.randn(2, 3, 8, 8)
    assert "sinc" not in _HANDLERS
    with pytest.raises(pyprune.GraphError, match="sinc.*register_op"):
        pyprune.prune(model, x, method="l2", ratio=0.5)

    @pyprune.register_op("sinc")
    def keep_channels(rec, name, args, kwargs, out):
        rec.set_layout(out, rec.layout(args[0]))

    try:
        keep = [0, 2, 3, 5, 8, 11]
        with torch.no_grad():
            drop = [i for i in range(12) if i not in keep]
            model.b.weight[:, drop] = 0  # channels nobody reads: removing them is exact
            model.a.weight[drop] *= 0.01  # and the smallest, so l2 drops them
            want = model(x)
            res = pyprune.prune(model, x, method="l2", ratio=0.5)
            assert res.model.a.out_channels == 6 and res.model.b.in_channels == 6
            torch.testing.assert_close(res.model(x), want, rtol=1e-5, atol=1e-6)
    finally:
        del _HANDLERS["sinc"]


def test_a_failing_op_rule_is_named_not_blamed_on_the_inputs():
    """A registered channel rule that raises is named with the op and where it ran; the
    message does not send the user to their example inputs."""
    @pyprune.register_op("sinc")
    def broken(rec, name, args, kwargs, out):
        rec.set_layout(out, rec.layout(args[1]))  # torch.sinc has one argument

    try:
        with pytest.raises(pyprune.GraphError, match=r"the channel rule for sinc \(.*broken, see pyprune.register_op\) "
                                                     r"failed in .*IndexError") as e:
            pyprune.prune(SincNet().eval(), torch.randn(2, 3, 8, 8), method="l2", ratio=0.5)
        assert "example inputs" not in str(e.value)
    finally:
        del _HANDLERS["sinc"]


def test_register_op_rejects_bad_names():
    with pytest.raises(TypeError, match="op names"):
        pyprune.register_op(3)
    with pytest.raises(TypeError, match="callable"):
        pyprune.register_op("sinc")(42)


def test_user_selecting_criterion():
    """A selecting criterion registered by a user: the pruner keeps exactly what it
    selects, and refuses a selection of the wrong size, naming the criterion."""
    chosen = {}

    @pyprune.register_criterion("first_k", batched=False, selects=True)
    def first_k(group, ctx):
        k = ctx.n_keep[group.id]
        chosen[group.id] = np.arange(group.size - k, group.size)  # the last k units
        return pyprune.Selection(chosen[group.id])

    @pyprune.register_criterion("bad_select", selects=True)
    def bad_select(group, ctx):
        return pyprune.Selection(np.arange(1))

    try:
        model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 4, 3)).eval()
        x = torch.randn(1, 3, 9, 9)
        res = pyprune.prune(model, x, method="first_k", ratio=0.4)
        assert chosen and all(np.array_equal(res.plan.keep[g], k) for g, k in chosen.items())
        torch.testing.assert_close(res.model[0].weight, model[0].weight[4:])
        assert res.merge is None  # not a merging criterion
        with pytest.raises(ValueError, match="bad_select.*selected 1 distinct units"):
            pyprune.prune(model, x, method="bad_select", ratio=0.4)
        assert CRITERIA["first_k"].selects and not CRITERIA["first_k"].needs_data
    finally:
        del CRITERIA["first_k"], CRITERIA["bad_select"]


def test_scores_criterion_cannot_return_selection():
    @pyprune.register_criterion("sneaky")
    def sneaky(group, ctx):
        return pyprune.Selection(np.arange(ctx.n_keep.get(group.id, 1)))

    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        with pytest.raises(ValueError, match="selects=True"):
            pyprune.prune(model, torch.randn(1, 3, 9, 9), method="sneaky", ratio=0.5)
    finally:
        del CRITERIA["sneaky"]


def test_scores_that_are_not_finite_are_refused_naming_the_channel():
    """NaN sorts anywhere: a criterion's NaN score would keep arbitrary channels."""
    @pyprune.register_criterion("nan_top")
    def nan_top(group, ctx):
        s = np.arange(group.size, dtype=np.float64)
        s[-1] = np.nan
        return s

    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        with pytest.raises(ValueError, match=r"'nan_top' gave group 1 \(0\) 1 score\(s\) that are not finite "
                                             r"\(channel 7: nan\)"):
            pyprune.prune(model, torch.randn(1, 3, 9, 9), method="nan_top", ratio=0.5)
    finally:
        del CRITERIA["nan_top"]


@pytest.mark.parametrize("kw, name", [({"ratoi": 0.5}, "ratoi"), ({"kmeans_itr": 5}, "kmeans_itr"),
                                      ({"stat": "mean"}, "stat")])
def test_unknown_option_raises_type_error_naming_it(kw, name):
    """A typo is refused (not swallowed), named, with the closest known option; an option
    of another method (``stat`` belongs to activation) is unknown to kmeans."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with pytest.raises(TypeError, match=f"unknown option.*'{name}'"):
        pyprune.prune(model, torch.randn(1, 3, 9, 9), method="kmeans", **kw)
    with pytest.raises(TypeError, match=f"'{name}'"):
        pyprune.Pruner(model, torch.randn(1, 3, 9, 9), **kw)


def test_criterion_options_reach_the_criterion():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    x = torch.randn(1, 3, 9, 9)
    res = pyprune.prune(model, x, method="kmeans", ratio=0.5, kmeans_iter=1)
    assert set(res.plan.iterations.values()) == {1}
    cfg = pyprune.PruneConfig.from_kwargs(method="kmeans", kmeans_iter=3)
    assert cfg.criterion_options == {"kmeans_iter": 3}
    res = pyprune.Pruner(model, x, config=cfg).prune(0.5)
    assert max(res.plan.iterations.values()) <= 3


def test_ignore_reason_is_recorded():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    pruner = pyprune.Pruner(model, torch.randn(1, 3, 12, 12), method="l2", ignore=["2"])
    graph = pruner.plan(0.5).graph
    frozen = [g for g in graph.groups if g.name == "2"]
    assert frozen and frozen[0].prunable == 0
    assert "ignore='2'" in graph.frozen_reasons[frozen[0].id]
    assert "ignore='2'" in graph.table()


def test_user_schedule():
    @pyprune.register_schedule("half_first")
    def half_first(groups, ratio, *, round_to=None, **_):
        return {g.id: (g.size // 2 if i == 0 else g.size) for i, g in enumerate(groups)}

    from pyprune.schedule import SCHEDULES
    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        res = pyprune.prune(model, torch.randn(1, 3, 12, 12), method="l2", schedule="half_first")
        assert [m.out_channels for m in res.model if isinstance(m, nn.Conv2d)] == [4, 8, 4]
    finally:
        del SCHEDULES["half_first"]


@pytest.mark.parametrize("count, match", [(-3, r"keep count -3: expected an int in 1\.\.8"),
                                          (2.5, r"keep count 2\.5: expected an int"), (None, "it must return")])
def test_a_user_schedules_counts_are_checked(count, match):
    """A registered schedule's keep counts out of 1..size, not integers, or missing are refused
    naming the schedule and the group."""
    @pyprune.register_schedule("odd")
    def odd(groups, ratio, **_):
        return {g.id: count for g in groups if count is not None}

    from pyprune.schedule import SCHEDULES
    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        with pytest.raises(ValueError, match=rf"schedule 'odd' gave .*group 1 \(0.*{match}"):
            pyprune.prune(model, torch.randn(1, 3, 12, 12), method="l2", schedule="odd")
    finally:
        del SCHEDULES["odd"]


def test_per_output_channel_tensor_of_a_subclass_is_sliced_without_a_handler():
    """A conv subclass's extra tensor with one entry per output channel along dim 0 (a gain)
    is sliced with the outputs even without a handler: planted zero channels are pruned
    exactly and the gain follows."""
    model = gain_net()
    x = torch.randn(4, 3, 10, 10)
    dead = [0, 3, 5, 9, 10, 14]
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        want = model(x)
    res = pyprune.prune(model, x, method="l2", ratio=6 / 16, ignore=["2"])
    assert res.model[0].gain.shape == (10,) and res.model[2].in_channels == 10
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


class InScaleConv2d(nn.Conv2d):
    """A conv that scales its input channels first: a per-input-channel tensor."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.in_scale = nn.Parameter(torch.rand(self.in_channels) + 0.5)

    def forward(self, x):
        return super().forward(x * self.in_scale.view(1, -1, 1, 1))


def test_unknown_per_channel_tensor_of_a_layer_is_refused_before_cutting():
    """A layer's own tensor with one entry per *input* channel is not something pyprune
    slices by itself: strict pruning refuses (naming the tensor and the fix), and a lenient
    prune keeps the channels it reads and gives a model that runs."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), InScaleConv2d(16, 24, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(pyprune.GraphError, match=r"InScaleConv2d\.in_scale \(shape \(16,\)\).*register_layer"):
        pyprune.prune(model, x, method="l2", ratio=0.5)
    with pytest.warns(UserWarning, match=r"asked to remove 50% of the channels, removed 0%.*InScaleConv2d"):
        res = pyprune.prune(model, x, method="l2", ratio=0.5, strict=False)  # and says what it kept
    assert res.model[0].out_channels == 16 and res.model[2].in_channels == 16
    with torch.no_grad():
        assert res.model(x).shape == (2, 5)
    with pytest.warns(UserWarning, match=r"asked to remove 50% of the channels, removed 0%.*InScaleConv2d"):
        pyprune.prune(model, x, method="l2", strict=False)  # the default ratio is checked as well
