"""Bad input to the engine gives a ValueError/TypeError naming the argument, never a crash."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

import pyprune
from pyprune import engine


def w(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "call",
    [
        lambda x: engine.filter_norms(x, 2),
        lambda x: engine.cosine_similarity(x),
        lambda x: engine.fpgm_scores(x),
        lambda x: engine.spherical_kmeans(x, 2),
        lambda x: engine.choose_k(x, [1, 2]),
    ],
    ids=["norms", "cosine", "fpgm", "kmeans", "choose_k"],
)
def test_non_finite_weights(call, bad):
    x = w(8, 3, 3, 3)
    x[5, 1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"weight.*non-finite.*filter 5"):
        call(x)


@pytest.mark.parametrize("k", [0, -1, 9])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match=rf"ks\[0\].*1 <= K <= n = 8.*K = {k}"):
        engine.spherical_kmeans(w(8, 5), k)


def test_k_per_layer_names_the_layer():
    with pytest.raises(ValueError, match=r"ks\[1\]"):
        engine.spherical_kmeans([w(8, 5), w(4, 5)], [2, 5])


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(0, 3, 3, 3), "empty"),
        (torch.randn(8, 0), "empty"),
        (torch.randn(8), "rank >= 2"),
        (torch.tensor(1.0), "rank >= 2"),
        (torch.ones(4, 4, dtype=torch.int64), "floating-point"),
        (torch.ones(4, 4, dtype=torch.bool), "floating-point"),
    ],
    ids=["no-filters", "no-weights", "rank1", "rank0", "int64", "bool"],
)
def test_bad_tensors(x, match):
    for call in (lambda: engine.filter_norms(x), lambda: engine.cosine_similarity(x), lambda: engine.spherical_kmeans(x, 1)):
        with pytest.raises(ValueError, match=match):
            call()


def test_not_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        engine.filter_norms("weights")
    with pytest.raises(TypeError, match="torch.Tensor"):
        engine.spherical_kmeans([w(4, 4), [1, 2]], 1)


def test_empty_list():
    with pytest.raises(ValueError, match="empty list"):
        engine.spherical_kmeans([], [])


def test_bad_p_threads_iters_seed():
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        engine.filter_norms(w(4, 4), 3)
    with pytest.raises(ValueError, match="threads"):
        engine.filter_norms(w(4, 4), threads=0)
    with pytest.raises(ValueError, match="max_iter"):
        engine.spherical_kmeans(w(4, 4), 2, max_iter=-1)
    with pytest.raises(ValueError, match="seed"):
        engine.spherical_kmeans(w(4, 4), 2, seed=-3)
    # integers past what the core takes are refused by name, not passed on to fail there
    for kw, name in [({"seed": 2**64}, "seed"), ({"max_iter": 2**40}, "max_iter"), ({"threads": 2**40}, "threads")]:
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            engine.spherical_kmeans(w(4, 4), 2, **kw)
    with pytest.raises(ValueError, match=r"^seed must be"):
        engine.choose_k(w(8, 4), ks=[2, 4], seed=2**64)
    # numpy's integers are integers
    x = w(8, 4)
    a, b = engine.spherical_kmeans([x], 2, seed=np.int64(3))[0], engine.spherical_kmeans([x], 2, seed=3)[0]
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_bad_init():
    with pytest.raises(ValueError, match=r"init\[0\].*shape"):
        engine.spherical_kmeans(w(8, 4), 2, init=torch.randn(3, 4))
    with pytest.raises(ValueError, match="init.*non-zero"):
        engine.spherical_kmeans(w(8, 4), 2, init=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="init: one tensor for 2 layers; pass a list with one tensor"):
        engine.spherical_kmeans([w(8, 4), w(6, 4)], 2, init=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"init: expected one entry per layer \(2\), got 1"):
        engine.spherical_kmeans([w(8, 4), w(6, 4)], 2, init=[torch.randn(2, 4)])


def test_choose_k_bad_range():
    with pytest.raises(ValueError, match="increasing"):
        engine.choose_k(w(10, 4), [4, 2])
    with pytest.raises(ValueError, match="1 <= K <= n = 10"):
        engine.choose_k(w(10, 4), [2, 11])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to create a CUDA tensor")
@pytest.mark.skipif(engine.cuda_built(), reason="this build has the CUDA kernels: the error is a CPU-only build's")
def test_cuda_tensor_on_cpu_build_says_how_to_build():
    with pytest.raises(ValueError, match="PYPRUNE_WITH_CUDA"):
        engine.filter_norms(torch.randn(4, 4, device="cuda"))


def test_gather_matches_advanced_indexing():
    x = torch.randn(16, 8, 3, 3)
    b = torch.randn(16)
    i64 = torch.arange(10)
    o, i = [1, 3, 5, 15], [0, 7, 2]
    got = engine.gather([x, b, i64, x.half(), x.bfloat16()], [[o, i], [o], [[9, 0]], [None, i], [o]])
    assert torch.equal(got[0], x[o][:, i])
    assert torch.equal(got[1], b[o])
    assert torch.equal(got[2], i64[[9, 0]])
    assert torch.equal(got[3], x.half()[:, i])
    assert torch.equal(got[4], x.bfloat16()[o])


def _folded_reference(x, kept, dim, src, dst, scale):
    """Gather by advanced indexing, then add each dropped slice, times its scale, onto its
    destination's slice, one at a time in the order given (float64 loop, independent of
    the core)."""
    out = x.double()
    for d, k in enumerate(kept):
        if k is not None:
            out = out.index_select(d, torch.as_tensor(k))
    out = out.clone()
    kd = list(kept[dim]) if kept[dim] is not None else list(range(x.shape[dim]))
    for s_, t_, a in zip(src, dst, scale):
        part = x.double().select(dim, s_)
        for d, k in enumerate(kept):
            if k is not None and d != dim:
                part = part.index_select(d if d < dim else d - 1, torch.as_tensor(k))
        out.select(dim, kd.index(t_)).add_(part * float(np.float32(a)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["core", "torch"])
def test_gather_folds_dropped_slices_onto_kept_ones(dtype):
    """Weight merging in the gather's call: a conv weight sliced on both dims, dropped input
    channels added onto kept ones (two onto the same one, in order), and a fold along a dim
    the slicing keeps whole. float32 folds in the core, float64 with torch; both against a
    float64 loop."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, 3, 3, generator=g, dtype=dtype)
    rows, cols = [0, 2, 5], [1, 3, 4, 6]
    src, dst, scale = [0, 7, 2], [3, 3, 6], [0.5, -1.25, 2.0]
    fold_rows = ([1, 4], [0, 5], [1.5, 0.25])
    got = engine.gather([x, x, x], [[rows, cols], [None, cols], [rows]],
                        folds=[[(1, src, dst, scale)], [(1, src, dst, scale), (0, *fold_rows)], []])
    want0 = _folded_reference(x, [rows, cols], 1, src, dst, scale)
    torch.testing.assert_close(got[0].double(), want0, rtol=1e-5, atol=1e-5)  # float32: a few roundings of values below 20
    want1 = _folded_reference(x, [None, cols], 1, src, dst, scale)
    want1 += _folded_reference(x, [list(range(6)), cols], 0, *fold_rows) - _folded_reference(x, [None, cols], 0, [], [], [])
    torch.testing.assert_close(got[1].double(), want1, rtol=1e-5, atol=1e-5)  # float32: a few roundings of values below 20
    assert torch.equal(got[2], x[rows])
    with pytest.raises(ValueError, match="a destination is not kept"):
        engine.gather([x], [[rows, cols]], folds=[[(1, [0], [2], [1.0])]])


def test_gather_bad_index():
    with pytest.raises(ValueError, match="index 16 out of range for dim 0 of size 16"):
        engine.gather([torch.randn(16, 4)], [[[0, 16]]])


@pytest.mark.parametrize("bad,error,message", [
    ([[0, 1], [2, 3]], TypeError, r"indices\[0\]: expected a flat list of indices, got shape \(2, 2\)"),
    (3, TypeError, r"expected a flat list of indices, got shape \(\)"),
    ([True, False], TypeError, "expected integer indices, got bool"),
    ([0.0, 2.0], TypeError, "expected integer indices, got float64"),
    (np.array([2**63], np.uint64), ValueError, "index 9223372036854775808 is out of range"),
], ids=["nested", "scalar", "mask", "floats", "uint64"])
def test_gather_index_lists_must_be_flat_integers(bad, error, message):
    """An index list one level too deep, a boolean mask or floats would otherwise gather the
    wrong channels without a word."""
    with pytest.raises(error, match=message):
        engine.gather([torch.randn(16, 4)], [[bad]])
    got = engine.gather([torch.randn(16, 4), torch.arange(16)], [[np.array([3, 1], np.uint8)], [torch.tensor([2])]])
    assert got[1].tolist() == [2] and got[0].shape == (2, 4)


def test_products_kernel_name_is_checked():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="kernel must be 'blas' or 'packed', got 'mkl'"):
        engine.products(a, a, kernel="mkl")
    with pytest.raises(ValueError, match="kernel must be 'blas' or 'packed'"):
        engine.gemm_seconds(8, 1, 1, kernel="fast")
    with pytest.raises(ValueError, match="columns"):
        engine.products(a, torch.randn(2, 5), kernel="blas")


@pytest.mark.parametrize("method", ["random", "l2", "kmeans", "fpgm"])
def test_non_finite_weights_are_refused_naming_the_tensor(method):
    """NaN weights: every method refuses before cutting, naming the module and parameter
    (not a list index or a C++ check), and leaves the model as it was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[3].weight[1, 2, 0, 0] = float("nan")
        model[1].running_var[0] = float("inf")
    before = [p.clone() for p in model.state_dict().values()]
    with pytest.raises(ValueError, match=r"^1\.running_var holds 1 non-finite") as e:
        pyprune.prune(model, torch.randn(1, 3, 9, 9), method=method, ratio=0.5)
    assert ".cpp" not in str(e.value)
    with torch.no_grad():
        model[1].running_var[0] = 1.0
    with pytest.raises(ValueError, match=r"^3\.weight holds 1 non-finite"):
        pyprune.prune(model, torch.randn(1, 3, 9, 9), method=method, ratio=0.5)
    after = list(model.state_dict().values())
    assert all(a.shape == b.shape for a, b in zip(after, before))


@pytest.mark.parametrize("call", [
    lambda: engine.filter_norms(torch.tensor([[float("nan"), 1.0]])),
    lambda: engine.spherical_kmeans([torch.randn(4, 3), torch.tensor([[float("inf"), 1.0]])], 1),
    lambda: engine.cosine_similarity(torch.tensor([[1.0, float("-inf")]])),
], ids=["norms", "kmeans", "cosine"])
def test_core_errors_speak_to_the_user(call):
    """The message names the user's argument; the core's check expression and C++ file
    stay in __cause__ for whoever debugs pyprune itself."""
    with pytest.raises(ValueError) as e:
        call()
    msg = str(e.value)
    assert "weight" in msg and "non-finite" in msg
    assert ".cpp" not in msg and "check `" not in msg
    assert ".cpp" in str(e.value.__cause__)


def test_an_edited_plan_is_checked_group_by_group():
    """``plan.keep`` may be edited before ``apply``: positions or a mask of the group's size
    cut the same model; duplicates, positions out of range, floats, a wrong-sized mask or an
    unknown group id are refused naming the group, before a model other than the planned one
    is built; a cut of a channel kept whole names it by its position in the group."""
    import copy

    import models as user_models

    torch.manual_seed(0)
    model, x = user_models.sequential_cnn().eval(), torch.randn(1, 3, 16, 16)
    pruner = pyprune.Pruner(model, x, method="l1")
    plan = pruner.plan(ratio=0.5)
    g = next(g for g in plan.graph.groups if g.name == "0")  # the first conv's 16 filters
    assert repr(plan) == f"PrunePlan(method='l1', ratio=0.5, {len(plan.graph.groups)} groups, " \
                         f"{sum(a for _, a in plan.widths().values())} of {plan.graph.n_units} channels kept)"
    out = next(g for g in plan.graph.groups if g.prunable == 0 and g.size == 10)  # the classes

    def edited(gid, value):
        p = copy.copy(plan)
        p.keep = {**plan.keep, gid: value}
        return p

    mask = np.zeros(16, bool)
    mask[[1, 4, 9]] = True
    by_mask, by_positions = pruner.apply(edited(g.id, mask)), pruner.apply(edited(g.id, np.array([9, 1, 4])))
    assert by_mask.model[0].out_channels == by_positions.model[0].out_channels == 3
    assert torch.equal(by_mask.model[0].weight, model[0].weight[[1, 4, 9]])
    assert edited(g.id, mask).widths()[g.id] == (16, 3)
    for value, message in [([0, 0, 0, 1], r"more than once: \[0\]"), ([0, 16], r"in 0\.\.15"), ([-1, 2], r"in 0\.\.15"),
                           ([0.5, 1.7], "integers"), (np.ones(15, bool), "needs 16 flags")]:
        with pytest.raises(ValueError, match=rf"plan\.keep\[{g.id}\] \(group 0, 16 channels\): .*{message}"):
            pruner.apply(edited(g.id, value))
    with pytest.raises(ValueError, match="no group with id 999"):
        pruner.apply(edited(999, [0]))
    with pytest.raises(ValueError, match=rf"channel 2 of group {out.id} \({out.name}, 10 channels\) is kept whole "
                                         r"\(network output\)"):
        pruner.apply(edited(out.id, [0, 1]))


def test_pruning_options_are_checked_before_any_work():
    """Options that would silently remove nothing or be ignored are refused naming them;
    numpy's numbers count as numbers."""
    from pyprune import PruneConfig, Pruner

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    for kw, match in [({"taper": float("nan"), "schedule": "taper"}, "taper must be a finite number"),
                      ({"min_keep": 1.5, "schedule": "global"}, r"min_keep: .* in \[0, 1\]"),
                      ({"calibration_batches": 0, "method": "activation", "calibration": [x]}, "calibration_batches"),
                      ({"ratio": torch.tensor(0.5)}, r"ratio: expected a number .* got a Tensor"),
                      ({"method": "random", "seed": -1}, r"^seed must be an int in \[0, 2\*\*63\), got -1"),
                      ({"method": "random", "seed": 1.5}, r"^seed must be an int"),
                      ({"method": "l1", "seed": "a"}, r"^seed must be an int")]:
        with pytest.raises(ValueError, match=match):
            pyprune.prune(model, x, **kw)
    with pytest.raises(TypeError, match=r"criterion_options: unknown option\(s\) 'kmeans_itre' .* kmeans_iter"):
        Pruner(model, x, config=PruneConfig(method="kmeans", criterion_options={"kmeans_itre": 0}))
    for target in ("ratio", "target_macs", "iterative_steps"):  # (the message used to list them as known)
        with pytest.raises(TypeError, match=rf"^{target}: what to reach is given to the call that prunes.*"
                                            rf"\.run\({target}=\.\.\.\)"):
            Pruner(model, x, method="l1", **{target: 0.5})
    res = pyprune.prune(model, x, method="l1", ratio=np.float32(0.5))
    assert res.model[0].out_channels == 4 and res.plan.ratio == 0.5
    assert pyprune.prune(model, x, method="l1", schedule="global", min_keep=0).model[2].out_channels == 4


def test_a_model_that_cannot_be_copied_is_named_with_the_way_out():
    """A module holding something deepcopy refuses (a lock): the error names the attribute
    and the in-place way, which then prunes the model itself; nothing was changed before."""
    import threading

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    model[2].lock = threading.Lock()
    x = torch.randn(1, 3, 8, 8)
    for kw in ({}, {"inplace": True}):
        with pytest.raises(ValueError, match=r"2\.lock \(lock\) cannot be copied .* inplace=True and verify=False"):
            pyprune.prune(model, x, method="l1", ratio=0.5, **kw)
        assert model[0].out_channels == 8
    res = pyprune.prune(model, x, method="l1", ratio=0.5, inplace=True, verify=False)
    assert res.model is model and model[0].out_channels == 4 and model(x).shape == (1, 4, 4, 4)


def test_a_plan_for_another_model_or_an_earlier_state_is_refused():
    """A plan applied after the model was cut in place, or to another model, is refused
    before anything is cut, naming a tensor whose channels do not match."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = pyprune.Pruner(model, x, method="l1")
    plan = pruner.plan(0.5)
    pruner.apply(plan, inplace=True)
    with pytest.raises(ValueError, match=r"records 0\.weight with 16 channels along dim 0, the model has shape "
                                         r"\(8, 3, 3, 3\).*make a new plan"):
        pruner.apply(plan)
    other = pyprune.Pruner(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)).eval(), x, method="l1")
    with pytest.raises(ValueError, match=r"records 2\.weight .* no such tensor"):
        other.apply(pyprune.Pruner(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval(), x,
                                   method="l1").plan(0.5))


def test_a_model_with_no_counted_layer_removes_no_macs():
    """MACs 0 -> 0 is nothing removed, not 100% fewer."""
    from pyprune.summary import Summary

    s = Summary(params_before=3, params_after=3, macs_before=0, macs_after=0)
    assert s.macs_ratio == 1.0 and s.params_ratio == 1.0
    assert "MACs 0 -> 0 (0.0% fewer)" in s.table()
    assert Summary(params_before=0, params_after=0, macs_before=10, macs_after=5).params_ratio == 1.0
