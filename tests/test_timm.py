"""The CNNs users bring, one per mechanism, from timm (random weights): each is exact in
the planted-zero test and loses as large a share of its parameters at ratio 0.5 as a plain
ResNet of its family does (within 5 points), or the test says why not."""
from __future__ import annotations

import warnings

import pytest
import torch

import pyprune
from planted import check_exact, randomize_bn

timm = pytest.importorskip("timm", reason="timm is a test extra: pip install timm")
from timm.layers import BlurPool2d  # noqa: E402

# mechanism -> (model, its options, input side, plain model of its family)
CASES = {
    "nf_gain": ("nf_resnet26", {}, 64, "resnet26"),  # ScaledStdConv2d: per-output gain, weight standardisation
    "layer_scale_reshape": ("convnext_atto", {}, 64, "resnet26"),  # gamma.reshape(1, -1, 1, 1)
    "layer_scale_view": ("poolformer_s12", {}, 64, "resnet26"),  # scale.view(self.shape)
    "grn": ("convnextv2_atto", {}, 64, "resnet26"),  # global response norm: a mean over the channels
    "selective_kernel": ("skresnet18", {}, 64, "resnet18"),  # split(in_channels // paths), view(B, paths, C)
    "mixnet_split": ("mixnet_s", {}, 64, "efficientnet_b0"),  # split(self.splits) into unequal pieces
    "dpn_slice": ("dpn48b", {}, 64, "resnet50"),  # x[:, :self.num_1x1_c], dense concat, grouped convs
    "res2net_split": ("res2net50_26w_4s", {}, 64, "resnet50"),  # split(self.width)
    "ghost_slice": ("ghostnet_100", {}, 64, "mobilenetv2_100"),  # out[:, :self.out_chs]
    "eca": ("ecaresnet26t", {}, 64, "resnet26t"),  # a Conv1d along the channels
    "blurpool": ("resnet18", {"aa_layer": BlurPool2d}, 64, "resnet18"),  # F.conv2d(x, self.filt, groups=self.channels)
    "grouped": ("resnext26ts", {}, 64, "resnet26"),  # grouped 3x3 convs
    "mobilevit_attention": ("mobilevit_xxs", {}, 64, "mobilenetv2_100"),  # unfold to patches, attention, fold
    "partial_residual": ("rexnet_100", {}, 64, "mobilenetv2_100"),  # x[:, :C] + shortcut: blocks of unequal size
    "stream_of_concat": ("cspnext_tiny", {}, 64, "resnet26"),  # a stream one of whose pieces a lone conv writes
    "one_channel_gate": ("csatv2", {}, 64, "resnet26"),  # a 1-channel map times every channel; DCT stem pieces
    "layernorm2d_subclass": ("poolformerv2_s12", {}, 64, "resnet26"),  # LayerNorm2dNoBias(LayerNorm2d)
    "layernorm_act2d": ("test_efficientnet_ln", {}, 64, "efficientnet_b0"),  # LayerNormAct2d(nn.LayerNorm)
    "gated_split": ("mambaout_femto", {}, 64, "resnet26"),  # split(split_indices), gelu(g) * cat(i, c)
}


def build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


def removed(model, side: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pyprune.prune(model, torch.randn(1, 3, side, side), method="l2", ratio=0.5)
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, side, side)).shape == (2, 10)
    return 1 - res.summary.params_after / res.summary.params_before


_baseline: dict = {}


@pytest.mark.parametrize("mechanism", list(CASES))
def test_mechanism_is_exact_and_loses_as_much_as_its_family(mechanism):
    name, kw, side, plain = CASES[mechanism]
    model = build(name, **kw)
    randomize_bn(model)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    graph = pyprune.build_graph(model, x)
    plantable = [g for g in graph.groups if g.prunable >= 2 and not g.norm_over_channels and not g.inexact]
    if plantable:
        check_exact(model, x)
    else:  # every cut changes the function (weight standardisation, GRN): it must say so
        assert all(g.inexact or g.norm_over_channels for g in graph.groups if g.prunable), name
    cut = removed(build(name, **kw), side)
    if plain not in _baseline:
        _baseline[plain] = removed(build(plain), side)
    assert cut >= _baseline[plain] - 0.05, f"{name}: {cut:.1%} of the parameters against {_baseline[plain]:.1%} for {plain}"


@pytest.mark.parametrize("mechanism", list(CASES))
def test_kmeans_keeps_as_many_channels_as_l2_in_every_group(mechanism):
    """k-means decides which channels, the schedule how many: on every mechanism it keeps
    exactly as many units per group as L2 does (blocks of unequal size included, whose
    counts round above the asked count), and the pruned model runs."""
    name, kw, side, _ = CASES[mechanism]
    model = build(name, **kw)
    x = torch.randn(1, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l2 = pyprune.prune(model, x, method="l2", ratio=0.5)
        km = pyprune.prune(model, x, method="kmeans", ratio=0.5, seed=0)
    assert {g: len(k) for g, k in km.plan.keep.items()} == {g: len(k) for g, k in l2.plan.keep.items()}
    assert km.summary.params_after < 0.6 * km.summary.params_before
    with torch.no_grad():
        assert km.model(torch.randn(2, 3, side, side)).shape == (2, 10)


def test_split_sizes_with_repeated_units_keep_their_partition():
    """SHViT's attention splits qkv by [qk_dim, qk_dim, pdim] with q and k coupled by their
    product: the pieces (q and k together, v) hold their units a different number of times,
    which no partition serves, so they keep their count; only a split one piece of which is
    the others' channels one by one (MambaOut) goes without one. The cut passes its check
    (it failed in qkv.c when both were let through) and removes what it did before."""
    model = build("shvit_s1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pyprune.prune(model, torch.randn(1, 3, 128, 128), method="l2", ratio=0.5)
    # no cut failed its check; the one warning names what is kept whole (under 3/4 of the
    # parameters that half of every layer's channels would remove)
    assert [str(w.message)[:62] for w in caught] == ["pyprune: asked to remove 50% of the channels, removed 44% (and"]
    assert "Kept whole: stages.2.downsample.2.conv3.c (320 channels: split sizes [68, 252]" in str(caught[0].message)
    assert 1 - res.summary.params_after / res.summary.params_before > 0.4
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 128, 128)).shape == (2, 10)


def test_a_weight_standardised_1x1_conv_keeps_two_inputs():
    """ScaledStdConv2d standardises each filter over its values with batch statistics, which
    need two: a 1x1 one keeps two input channels even where the ratio asks for one, and the
    pruned model runs (it failed on its first forward)."""
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), ScaledStdConv2d(8, 4, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", ratio=0.9)
    assert res.model[2].in_channels == 2
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)


def test_the_check_of_a_cut_runs_a_layers_own_weight_ops():
    """A grouped 1x1 ScaledStdConv2d whose groups keep one input each: its standardisation
    (batch_norm over each filter's one value) fails. The check of the cut runs that op for
    real (it is the layer's weight, not a feature map), finds it, keeps the layer's channels
    and says so: the model returned runs."""
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), ScaledStdConv2d(8, 8, 1, groups=4)).eval()
    with pytest.warns(UserWarning, match=r"failed in 2 \(ScaledStdConv2d.*more than 1 value"):
        res = pyprune.prune(model, torch.randn(1, 3, 8, 8), method="l2", ratio=0.75)
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 8, 8)).shape == (2, 8, 6, 6)


def test_weight_standardised_conv_inputs_are_reported_inexact():
    """ScaledStdConv2d standardises each filter over its input channels: cutting inputs
    changes the statistics, and the result says so (outputs alone would be exact)."""
    res = pyprune.prune(build("nf_resnet26"), torch.randn(1, 3, 64, 64), method="l2", ratio=0.5)
    reasons = [r for _, rs in res.inexact() for r in rs]
    assert any("weight standardisation" in r for r in reasons)


def test_auto_ratio_keeps_filters_without_cluster_structure_whole():
    """Random filters have no clusters to prune by: ratio="auto" keeps every group whole and
    says so, also the wide expansions of inverted residuals, whose depthwise weights give
    their distortion curves knees 0.12 deep (cut there, they lost 96% of their channels)."""
    model = build("mobilenetv2_100")
    with pytest.warns(UserWarning, match=r"found no elbow .* of (\d+) of \1 groups"):
        res = pyprune.prune(model, torch.randn(1, 3, 64, 64), method="kmeans", ratio="auto")
    assert res.summary.params_after == res.summary.params_before


class _FixedSplitStream(torch.nn.Module):
    """A residual stream that forward splits at a constant no attribute holds: its channels
    keep their width, and its convs hold most of the weights; only the head's hidden
    channels can go."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(3))
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + torch.relu(block(x))
        a, _ = x.split([16, 16], dim=1)
        return self.fc2(torch.relu(self.fc1(a.mean((2, 3)))))


def test_a_cut_that_keeps_the_weight_heavy_channels_whole_warns_with_the_share_of_parameters():
    """Half of the channels asked, a third removed, and a few percent of the parameters: the
    warning says so and names the stream's reason."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"asked to remove 50% of the channels, removed 33% \(and \d+% of the "
                                         r"parameters\).*constants of forward"):
        res = pyprune.prune(_FixedSplitStream().eval(), torch.randn(1, 3, 8, 8), method="l2", ratio=0.5)
    assert 1 - res.summary.params_ratio < 0.1


def test_coat_factorised_attention_and_class_token_aggregate_are_cut():
    """CoaT multiplies its heads' channels with each other (softmax(k)^T v, then q times it),
    splits v by head counts for its convolutional position encoding, and aggregates the
    class tokens of three scales with a Conv1d along their channels: all of it is cut, with
    no warning, and the pruned model runs."""
    torch.manual_seed(0)
    model = timm.create_model("coat_tiny", pretrained=False, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pyprune.prune(model, torch.randn(1, 3, 224, 224), method="l2", ratio=0.5)
    assert 1 - res.summary.params_ratio > 0.7
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_levit_attention_split_into_key_and_value_widths_is_cut():
    """LeViT splits each head's qkv by ``[key_dim, key_dim, val_dim]``: the heads lose
    channels, key_dim and val_dim follow, no warning, and the pruned model runs (they were
    kept whole: 65.8% removed)."""
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pyprune.prune(model, torch.randn(1, 3, 224, 224), method="l2", ratio=0.5)
    attn = res.model.stages[1].blocks[0].attn
    before = model.stages[1].blocks[0].attn
    assert attn.key_dim < before.key_dim and attn.val_dim < before.val_dim
    assert 1 - res.summary.params_ratio > 0.7
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def _channel_attention(kind: str, dim: int, heads: int):
    from timm.models import davit, xcit

    if kind == "xcit":
        return xcit.XCA(dim, num_heads=heads, qkv_bias=True)
    return davit.ChannelAttention(dim, num_heads=heads, qkv_bias=True)


@pytest.mark.parametrize("kind", ["xcit", "davit"])
def test_channel_attention_cut_equals_timms_module_at_the_kept_width(kind):
    """XCiT's and DaViT's channel attention (q and k multiplied over the tokens: a map of
    channels by channels) lose half their head channels, and the stream they read half of
    its own; the pruned model equals timm's own module built at the kept width with the
    kept weights (its temperature or scale as before the cut)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.attn = torch.nn.Conv1d(8, 32, 1), _channel_attention(kind, 32, 4)
            self.head = torch.nn.Linear(32, 3)

        def forward(self, x):
            x = self.stem(x).transpose(1, 2)
            return self.head((x + self.attn(x)).mean(1))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 8, 12)
    with torch.no_grad():
        if kind == "xcit":
            model.attn.temperature.uniform_(0.5, 2.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = pyprune.prune(model, x[:1], method="l2", ratio=0.5)
        a, p = model.attn, res.model.attn
        assert p.qkv.weight.shape == (48, 16) and p.proj.weight.shape == (16, 16)

        def rows(orig, pruned):
            return [int((orig - r).abs().flatten(1).sum(1).argmin()) for r in pruned]

        s = rows(model.stem.weight, res.model.stem.weight)
        r = rows(a.qkv.weight[:, s], p.qkv.weight)
        ref = _channel_attention(kind, 16, 4).eval()
        ref.qkv.weight.copy_(a.qkv.weight[r][:, s])
        ref.qkv.bias.copy_(a.qkv.bias[r])
        ref.proj.weight.copy_(a.proj.weight[s][:, r[:16]])
        ref.proj.bias.copy_(a.proj.bias[s])
        if kind == "xcit":
            ref.temperature.copy_(a.temperature)
        else:
            ref.scale = a.scale
        h = model.stem(x).transpose(1, 2)[..., s]
        want = (h + ref(h)).mean(1) @ model.head.weight[:, s].T + model.head.bias
        torch.testing.assert_close(res.model(x), want, rtol=1e-5, atol=1e-5)


# Latency targets on the shapes users bring: the calibration's half-width models and the
# solver's widths must keep these mechanisms runnable (one channel count per block of a
# grouped conv, slices of a ghost module, squeeze-excite gates, hard-swish).
LATENCY_CASES = {
    "grouped_blocks": "regnetx_002",
    "grouped_bottleneck": "resnext26ts",
    "ghost_slice": "ghostnet_050",
    "squeeze_excite": "mobilenetv3_small_100",
}


@pytest.mark.slow  # each measures its layers' latency table on onnxruntime: about a minute
@pytest.mark.parametrize("mechanism", list(LATENCY_CASES))
def test_latency_target_on_the_cnns_users_bring(mechanism, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'pyprune[onnx]'")
    monkeypatch.setenv("PYPRUNE_CACHE", str(tmp_path))
    model, x = build(LATENCY_CASES[mechanism]), torch.randn(1, 3, 96, 96)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = pyprune.prune(model, x, method="l1", target_speedup=1.6, runtime="onnxruntime", progress=False)
    lat = res.latency
    missed = [str(v.message) for v in w if "over the budget" in str(v.message)]
    # what is promised was measured: within the budget, or a warning that says it is not
    assert lat["measured_s"] <= lat["budget_s"] or missed
    assert res.summary.macs_ratio < 0.9
    with torch.no_grad():
        assert res.model(torch.randn(2, 3, 96, 96)).shape == (2, 10)
