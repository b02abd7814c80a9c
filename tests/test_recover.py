"""Recovery without labels: BN recalibration and layer-wise reconstruction (ridge least
squares in the core), against torch and on a model trained on real data (digits)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader

import pyprune
from pyprune import engine
from pyprune.recover import recalibrate_bn
from pyprune.train import evaluate, fit
from planted import trained_digits_cnn


@pytest.mark.parametrize("rows,d,m", [(500, 40, 7), (64, 64, 3), (2000, 300, 50), (1, 1, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_ridge_matches_lstsq(rows, d, m, threads):
    """lam=0 on a full-rank system is plain least squares: torch.linalg.lstsq (float64)."""
    g = torch.Generator().manual_seed(rows + d)
    a, b = torch.randn(rows, d, generator=g), torch.randn(rows, m, generator=g)
    if rows < d:
        pytest.skip("underdetermined")
    [(w, res)] = engine.ridge_solve([a], [b], lam=0.0, threads=threads)
    want = torch.linalg.lstsq(a.double(), b.double()).solution.T
    assert_close(w.double(), want, rtol=1e-4, atol=1e-5)
    got_res = float((a.double() @ w.double().T - b.double()).norm() / b.double().norm())
    assert abs(res - got_res) < 1e-4


def test_ridge_lambda_is_the_closed_form_and_handles_singular_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 20, generator=g).double(), torch.randn(300, 4, generator=g).double()
    lam = 0.1
    [(w, _)] = engine.ridge_solve(a.float(), b.float(), lam=lam)
    gram = a.T @ a
    want = torch.linalg.solve(gram + lam * gram.diagonal().mean() * torch.eye(20, dtype=torch.float64), a.T @ b).T
    assert_close(w.double(), want, rtol=1e-4, atol=1e-5)
    dup = torch.cat([a, a[:, :1]], 1).float()  # a repeated column: singular without ridge
    [(w2, res)] = engine.ridge_solve(dup, b.float(), lam=0.0)
    assert torch.isfinite(w2).all() and res < 1.0
    with pytest.raises(ValueError, match="rows"):
        engine.ridge_solve(a.float(), b[:10].float())


@pytest.fixture(scope="module")
def trained():
    model, train, test = trained_digits_cnn(batchnorm=True, epochs=20, lr=2e-3)
    cal = [x for x, _ in DataLoader(train, batch_size=128)][:4]
    held = [x for x, _ in DataLoader(test, batch_size=128)]
    return model, train, test, cal, held


def test_bn_recalibration_alone_raises_one_shot_accuracy(trained):
    model, _, test, cal, _ = trained
    x = cal[0][:1]
    plain = pyprune.prune(model, x, method="l1", ratio=0.5)
    recal = pyprune.prune(model, x, method="l1", ratio=0.5, calibration=cal, reconstruct=False)
    a0, a1 = evaluate(plain.model, test)["top1"], evaluate(recal.model, test)["top1"]
    assert recal.recovery["bn_batches"] == 4 and "reconstruction" not in recal.recovery
    assert a1 >= a0 + 0.20, (a0, a1)


def test_recalibration_keeps_modes_and_momentum(trained):
    model = copy.deepcopy(trained[0]).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bns[0].momentum = 0.3
    bns[1].eval()
    recalibrate_bn(model, trained[3])
    assert bns[0].momentum == 0.3 and bns[0].training and not bns[1].training
    # the statistics are those of the calibration inputs at that BN
    feats = []
    h = bns[0].register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        model.eval()(torch.cat(trained[3]))
    h.remove()
    assert_close(bns[0].running_mean, feats[0].mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_calibration_the_model_cannot_run_is_named_and_changes_nothing():
    """float32 batches for a float16 model: the error names calibration=, the batch and the
    weights' dtype, and a failed recalibration leaves the statistics as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model.half()
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(ValueError, match=r"^calibration: Sequential failed on batch 0 \(inputs \(2, 3, 8, 8\) "
                                         r"torch.float32 .*torch.float16 on cpu"):
        recalibrate_bn(model, batches)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=r"^calibration: Sequential failed on batch 0"):
        pyprune.prune(model, torch.randn(1, 3, 8, 8).half(), method="l1", ratio=0.5, calibration=batches)


def test_default_with_calibration_recovers_one_shot_accuracy(trained):
    """calibration= turns on BN recalibration and reconstruction: the one-shot pruned model
    at 50% of the channels keeps its accuracy within 2 points, where plain pruning falls."""
    model, _, test, cal, _ = trained
    base = evaluate(model, test)["top1"]
    res = pyprune.prune(model, cal[0][:1], method="l1", ratio=0.5, calibration=cal)
    assert res.recovery["reconstruction"].layers
    assert evaluate(res.model, test)["top1"] >= base - 0.02


def test_reconstruction_lowers_the_next_layers_output_error_on_held_out_batches(trained):
    """Every refitted layer's outputs (at the channels it keeps) are closer to the unpruned
    layer's on held-out digits than without reconstruction."""
    model, _, _, cal, held = trained
    x = cal[0][:1]
    without = pyprune.prune(model, x, method="l1", ratio=0.5, calibration=cal, reconstruct=False)
    with_ = pyprune.prune(model, x, method="l1", ratio=0.5, calibration=cal)
    refit = list(with_.recovery["reconstruction"].layers)
    assert len(refit) >= 3
    mask = with_.plan.keep_mask()
    kept = {m.module: np.flatnonzero(mask[m.units]) for m in with_.graph.members
            if m.role == "out" and m.param == "weight" and m.dim == 0}

    def outputs(net, name):
        got = []
        h = dict(net.named_modules())[name].register_forward_hook(lambda m, i, o: got.append(o))
        with torch.no_grad():
            for xb in held:
                net(xb)
        h.remove()
        return torch.cat(got)

    for name in refit:
        ref = outputs(model, name)[:, torch.as_tensor(kept.get(name, np.arange(outputs(model, name).shape[1])))]
        err_a = float((outputs(without.model, name) - ref).norm() / ref.norm())
        err_b = float((outputs(with_.model, name) - ref).norm() / ref.norm())
        assert err_b < err_a, (name, err_a, err_b)


def _refit(model, x, cal):
    return pyprune.prune(model, x, method="l1", ratio=0.5, calibration=cal, bn_recalibration=False)


def test_reconstruction_refits_every_padding_and_conv1d_as_their_plain_equivalents():
    """padding="same", a reflect/circular/replicate padding mode and Conv1d are refitted,
    each exactly as an equivalent model the refit already took: padding=1, an explicit pad
    layer before an unpadded conv, and a Conv2d of height 1 (same kept channels, same rows,
    same fit). Before, they were skipped while the report said no layer lost input channels."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    cal = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    x = cal[0][:1]

    def pair(a: nn.Sequential, b: nn.Sequential, names_a, names_b, cal_a, cal_b, xa, xb, shape):
        sb = b.state_dict()  # the same weights, in order
        b.load_state_dict({k: v.reshape(sb[k].shape) for k, v in zip(sb, a.state_dict().values())})
        ra, rb = _refit(a.eval(), xa, cal_a), _refit(b.eval(), xb, cal_b)
        assert sorted(ra.recovery["reconstruction"].layers) == names_a
        assert sorted(rb.recovery["reconstruction"].layers) == names_b
        for na, nb in zip(names_a, names_b):
            wa, wb = ra.model.get_submodule(na).weight, rb.model.get_submodule(nb).weight
            assert_close(wa.reshape(wb.shape), wb, rtol=1e-4, atol=1e-5)
        assert ra.model.get_submodule(names_a[0]).weight.shape[1] == 8
        assert shape(ra.model(xa).shape) == rb.model(xb).shape

    same = lambda p, mode="zeros": nn.Sequential(  # noqa: E731
        nn.Conv2d(3, 16, 3, padding=p, padding_mode=mode), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=p, padding_mode=mode),
        nn.ReLU(), nn.Conv2d(16, 4, 3, padding=p, padding_mode=mode))
    pair(same("same"), same(1), ["2", "4"], ["2", "4"], cal, cal, x, x, lambda s: s)
    for mode, pad in (("reflect", nn.ReflectionPad2d), ("circular", nn.CircularPad2d),
                      ("replicate", nn.ReplicationPad2d)):
        explicit = nn.Sequential(pad(1), nn.Conv2d(3, 16, 3), nn.ReLU(), pad(1), nn.Conv2d(16, 16, 3), nn.ReLU(),
                                 pad(1), nn.Conv2d(16, 4, 3))
        pair(same(1, mode), explicit, ["2", "4"], ["4", "7"], cal, cal, x, x, lambda s: s)
    one_d = nn.Sequential(nn.Conv1d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 5, padding="same", dilation=2),
                          nn.ReLU(), nn.Conv1d(16, 4, 3, stride=2))
    flat = nn.Sequential(nn.Conv2d(3, 16, (1, 3), padding=(0, 1)), nn.ReLU(),
                         nn.Conv2d(16, 16, (1, 5), padding=(0, 4), dilation=(1, 2)), nn.ReLU(),
                         nn.Conv2d(16, 4, (1, 3), stride=(1, 2)))
    seq = [c.reshape(8, 3, 64) for c in cal]
    pair(one_d, flat, ["2", "4"], ["2", "4"], seq, [c[:, :, None] for c in seq], seq[0][:1], seq[0][:1, :, None],
         lambda s: (s[0], s[1], 1, s[2]))


def test_layers_the_refit_cannot_take_are_named_in_its_report():
    """A grouped conv, a transposed conv and a Conv3d that lost input channels are listed as
    not refitted, each with why (depthwise convs need no refit and are not listed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                          nn.ConvTranspose2d(16, 4, 3)).eval()
    cal = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    rep = _refit(model, cal[0][:1], cal).recovery["reconstruction"]
    assert rep.skipped == {"2": "grouped convolution (4 groups)",
                           "6": "ConvTranspose2d is not refitted (Linear, Conv1d and Conv2d are)"}
    assert str(rep).startswith("reconstruction: none; 2 layer(s) that lost input channels not refitted: 2 (grouped")
    vol = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 3)).eval()
    cal3 = [torch.randn(2, 3, 6, 6, 6)]
    rep = _refit(vol, cal3[0][:1], cal3).recovery["reconstruction"]
    assert list(rep.skipped) == ["2"] and "Conv3d" in str(rep)


def test_centripetal_merge_is_lossless(trained):
    """After the centripetal phase the clusters' members are identical: merging them leaves
    the outputs equal (1e-4 relative) and top-1 unchanged (0.1 point)."""
    model, train, test, _, _ = trained
    model = copy.deepcopy(model)
    res = pyprune.centripetal(model, test[:1][0], train, ratio=0.5, epochs=1, val=test, progress=False)
    assert res.spread_after < res.spread_before
    assert abs(res.accuracy["merged"] - res.accuracy["trained"]) <= 0.001
    x = test[:128][0]
    with torch.no_grad():
        want, got = model(x), res.model(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    assert res.summary.params_after < 0.35 * res.summary.params_before


def test_shared_gradients_never_widen_a_cluster(trained):
    """C-SGD's half of the centripetal update: before every optimizer step each cluster's
    members get their mean gradient, so training moves them alike. With no weight decay and
    no pull, a member's difference to its cluster's mean is exactly what it was, while the
    weights themselves moved on shuffled labels (without the sharing the differences grow)."""
    from pyprune.centripetal import _share_gradients, cluster_slices

    base, train, test, _, _ = trained

    def diffs(model, slices):
        out = []
        for t, c, k, dim in slices:
            if not isinstance(t, nn.Parameter):
                continue
            sel = torch.nonzero(c >= 0).flatten()
            x = t.detach().movedim(dim, 0).index_select(0, sel).reshape(len(sel), -1).double()
            mean = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, c[sel], x)
            mean /= torch.bincount(c[sel], minlength=k).clamp_min(1).double()[:, None]
            out.append((x - mean[c[sel]], x))
        return out

    xs, ys = train[:512]
    noisy = torch.utils.data.TensorDataset(xs, ys[torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))])
    moved = {}
    for shared in (True, False):
        model = copy.deepcopy(base)
        plan = pyprune.Pruner(model, test[:1][0], method="kmeans").plan(0.5)
        slices = cluster_slices(model, plan)
        before = diffs(model, slices)
        fit(model, noisy, epochs=1, max_steps=6, optimizer="sgd", lr=5e-2, weight_decay=0.0, progress=False,
            before_step=(lambda m: _share_gradients(slices)) if shared else None)
        after = diffs(model, slices)
        assert max(float((xa - xb).abs().max()) for (_, xa), (_, xb) in zip(after, before)) > 1e-3  # trained
        moved[shared] = max(float((da - db).abs().max() / db.abs().max()) for (da, _), (db, _) in zip(after, before))
    assert moved[True] < 1e-5 < 1e-3 < moved[False], moved


def test_distillation_loss_pulls_the_student_to_the_teacher(trained):
    """fit(teacher=...) with distill_weight=1 trains on the teacher's soft labels alone: the
    student ends closer to the teacher's outputs than one trained on the labels alone."""
    teacher, train, test, cal, _ = trained
    base = pyprune.prune(teacher, cal[0][:1], method="l1", ratio=0.7).model
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    fit(a, train, epochs=2, lr=2e-3, seed=0, progress=False)
    fit(b, train, epochs=2, lr=2e-3, seed=0, progress=False, teacher=teacher, distill_weight=1.0,
        distill_temperature=2.0)
    x = test[:256][0]
    with torch.no_grad():
        t = torch.softmax(teacher(x), 1)
        kl = [float(torch.nn.functional.kl_div(torch.log_softmax(m(x), 1), t, reduction="batchmean")) for m in (a, b)]
    assert kl[1] < kl[0], kl
    with pytest.raises(ValueError, match="distill_weight"):
        fit(a, train, epochs=1, teacher=teacher, distill_weight=2.0, progress=False)


def test_centripetal_pull_moves_a_transposed_convs_filters_along_its_output_dim():
    """A ConvTranspose2d's filters are dim 1 of its weight: the centripetal slices hold that
    dim, and a full pull makes every member of a cluster equal to its cluster's mean there
    (the reference: the mean of the member slices w[:, j], computed here)."""
    import models as user_models
    from pyprune.centripetal import _pull, cluster_slices

    torch.manual_seed(0)
    model = user_models.TinyUNet().eval()
    plan = pyprune.Pruner(model, torch.randn(1, 3, 16, 16), method="kmeans").plan(0.5)
    slices = cluster_slices(model, plan)
    (t, c, k, dim), = [s for s in slices if s[0] is model.up.weight]
    assert dim == 1 and len(c) == 16
    w = model.up.weight.detach().clone()
    want = {int(j): w[:, c == j].mean(dim=1) for j in c.unique() if j >= 0}
    _pull(slices, 1.0)
    for i in range(16):
        if c[i] >= 0:
            torch.testing.assert_close(model.up.weight[:, i].detach(), want[int(c[i])], rtol=1e-6, atol=1e-6)
