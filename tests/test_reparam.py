"""Weights a layer computes before each call (parametrizations, torch.nn.utils.prune masks,
the old weight/spectral norm hooks): cut exactly where pyprune can carry what computes
them, kept with the fix named where it cannot, and never refitted into a throwaway tensor."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import pyprune


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]


def test_a_refit_of_a_weight_normed_layer_lands_in_its_parametrization():
    """The weights reconstruction fits are stored through ``parametrizations.weight_norm``:
    the pruned model equals the same model without the parametrization, pruned and refitted
    alike (before, the fit was copied into the recomputed weight and lost)."""
    x, cal = inputs()
    plain = tiny()
    normed = copy.deepcopy(plain)
    for i in (3, 8):
        parametrizations.weight_norm(normed[i])
    kw = dict(method="l1", ratio=0.5, calibration=cal, bn_recalibration=False)
    got, want = pyprune.prune(normed, x, **kw), pyprune.prune(plain, x, **kw)
    unfitted = pyprune.prune(plain, x, **kw, reconstruct=False)
    assert len(got.recovery["reconstruction"].layers) == 2
    assert parametrize.is_parametrized(got.model[3], "weight")
    assert not torch.allclose(want.model[3].weight, unfitted.model[3].weight)  # the refit changes it
    for i in (3, 8):
        torch.testing.assert_close(got.model[i].weight, want.model[i].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.model(x), want.model(x), rtol=1e-4, atol=1e-5)


def test_pruning_masks_are_cut_with_their_weights():
    """A model holding torch.nn.utils.prune masks prunes as the same model with its masks
    made permanent (prune.remove), and keeps its masks: weight_orig and weight_mask are cut
    as the weight is, so the hook rebuilds the kept part of the masked weight."""
    x, _ = inputs()
    masked = tiny()
    with torch.no_grad():  # the masked weight a leaf, so the model can be deep-copied
        for i in (0, 3, 8):
            torch_prune.l1_unstructured(masked[i], "weight", amount=0.3)
    permanent = copy.deepcopy(masked)
    for i in (0, 3, 8):
        torch_prune.remove(permanent[i], "weight")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing kept whole, nothing failed
        got = pyprune.prune(masked, x, method="l1", ratio=0.5)
    want = pyprune.prune(permanent, x, method="l1", ratio=0.5)
    conv = got.model[3]
    assert conv.weight.shape == conv.weight_orig.shape == conv.weight_mask.shape == (8, 8, 3, 3)
    assert torch_prune.is_pruned(got.model)
    torch.testing.assert_close(got.model(x), want.model(x), rtol=1e-5, atol=1e-6)
    assert got.summary.params_ratio < 0.5


def test_a_masked_pruned_model_loads_into_a_fresh_masked_instance(tmp_path):
    """load_model(path, model=) of a model holding torch.nn.utils.prune masks built the
    usual way (with gradients on: its masked weight is a graph's result, which deepcopy
    refuses): the copy is made, the masked weight and the size attributes have the loaded
    shapes before the first call, and the given instance is left as it was."""
    from pyprune.checkpoint import load_model, save_model

    def masked():
        m = tiny()
        torch_prune.l1_unstructured(m[3], "weight", amount=0.3)  # (not under no_grad)
        return m

    x, _ = inputs()
    res = pyprune.prune(masked(), x, method="l1", ratio=0.5)
    path = save_model(tmp_path / "m.pt", res.model, attributes=res.attributes)
    given = masked()
    loaded, _ = load_model(path, model=given)
    conv = loaded[3]
    assert conv.weight.shape == conv.weight_orig.shape == (8, 8, 3, 3)
    assert (conv.out_channels, conv.in_channels) == (8, 8)  # before any call
    torch.testing.assert_close(conv.weight, res.model[3].weight)
    assert torch_prune.is_pruned(loaded)
    torch.testing.assert_close(loaded(x), res.model(x))
    assert given[3].weight_orig.shape == (16, 16, 3, 3) and given[3].out_channels == 16


def test_a_pruning_mask_is_not_refitted_into_a_weight_its_hook_recomputes():
    x, cal = inputs()
    masked = tiny()
    torch_prune.l1_unstructured(masked[3], "weight", amount=0.3)
    with pytest.warns(UserWarning, match=r"reconstruction left 1 layer.*3 \(its weight is computed by "
                                         r"torch.nn.utils.prune\)"):
        res = pyprune.prune(masked, x, method="l1", ratio=0.5, calibration=cal)
    rep = res.recovery["reconstruction"]
    assert set(rep.left) == {"3"} and set(rep.layers) == {"8"}
    assert "left as cut: 3" in str(rep)


@pytest.mark.parametrize("wrap, layer, fix", [
    (parametrizations.spectral_norm, 3, r"remove_parametrizations\(model.get_submodule\('3'\), 'weight'\)"),
    (parametrizations.orthogonal, 8, r"remove_parametrizations\(model.get_submodule\('8'\), 'weight'\)"),
    (nn.utils.spectral_norm, 3, r"remove_spectral_norm\(model.get_submodule\('3'\), 'weight'\)"),
    (nn.utils.weight_norm, 3, r"remove_weight_norm\(model.get_submodule\('3'\), 'weight'\)"),
], ids=["spectral_norm", "orthogonal", "old_spectral_norm", "old_weight_norm"])
def test_a_weight_a_cut_would_change_keeps_its_channels_and_names_the_fix(wrap, layer, fix):
    """Spectral norm divides by the largest singular value of the whole weight, orthogonal
    keeps it orthogonal, the old hooks rebuild it from tensors cut another way: their
    layer's channels are kept (the model runs, unchanged there), with the reason and the call
    that removes them; the rest of the model is still pruned."""
    x, _ = inputs()
    model = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own note on the old weight_norm
        wrap(model[layer])
    with torch.no_grad():
        model(x)  # the old hooks compute the weight at the first call
    before = model[layer].weight.detach().clone()
    with pytest.warns(UserWarning, match=rf"{layer}.weight is computed by .*which a cut would change.*{fix}"):
        res = pyprune.prune(model, x, method="l1", ratio=0.5)
    assert res.model(x).shape == (4, 10)
    new = res.model[layer]
    assert new.weight.shape == before.shape
    if layer == 8:  # the Linear's inputs are kept, the first conv's group is cut
        assert res.model[0].out_channels == 8
    else:
        torch.testing.assert_close(new.weight, before)


def test_compiled_models_are_refused_naming_the_eager_module():
    x, _ = inputs()
    model = tiny()
    for compiled in (torch.jit.script(model), torch.jit.trace(model, x)):
        with pytest.raises(TypeError, match=r"^model: .*TorchScript.*Prune the eager nn.Module it was made from"):
            pyprune.prune(compiled, x, method="l1", ratio=0.5)
    try:
        whole = torch.compile(model)
    except RuntimeError as e:  # torch.compile is not built for every Python a torch supports
        pytest.skip(f"torch.compile is unavailable here: {e}")
    with pytest.raises(TypeError, match=r"^model: a torch.compile'd module.*model._orig_mod"):
        pyprune.prune(whole, x, method="l1", ratio=0.5)
    part = tiny()
    part[3] = torch.compile(part[3])
    with pytest.raises(TypeError, match=r"^model.3: a torch.compile'd module.*model.3._orig_mod"):
        pyprune.prune(part, x, method="l1", ratio=0.5)


def test_a_model_without_values_plans_only_from_shapes():
    """On the meta device a value-reading criterion refuses, naming the tensor and how to
    materialise it; random (scores from shapes alone, as its registry entry says) plans."""
    with torch.device("meta"):
        model = tiny()
    x = torch.randn(2, 3, 16, 16, device="meta")
    for method in ("l1", "bn_scale", "kmeans"):
        with pytest.raises(ValueError, match=r"^0.weight is on the meta device.*to_empty"):
            pyprune.prune(model, x, method=method, ratio=0.5)
    res = pyprune.prune(model, x, method="random", ratio=0.5)
    assert res.model[0].out_channels == 8
