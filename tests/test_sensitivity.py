"""Sensitivity analysis and the sensitivity schedule, on a CNN trained on the digits."""
from __future__ import annotations

import numpy as np
import pytest

import pyprune
from pyprune.sensitivity import Sensitivity, sensitivity_keep
from pyprune.train import evaluate
from planted import trained_digits_cnn


@pytest.fixture(scope="module")
def trained():
    model, _, test = trained_digits_cnn(batchnorm=False, epochs=8, lr=3e-3)
    return model, test


def test_curves_are_what_pruning_one_group_gives(trained, tmp_path):
    model, test = trained
    x = test[:1][0]
    sens = pyprune.sensitivity(model, x, test, ratios=(0.5, 0.9), method="l1")
    assert sens.base == pytest.approx(evaluate(model, test)["top1"])
    assert len(sens.curves) >= 3 and all(len(v) == 2 for v in sens.curves.values())
    name = next(iter(sens.curves))
    size = sens.sizes[name]
    res = pyprune.prune(model, x, method="l1", ratio=0.0, layer_ratios={name: 0.5})
    assert dict(res.plan.layer_widths())[name][1] == size - int(np.floor(0.5 * size + 0.5))
    assert sens.curves[name][0] == pytest.approx(evaluate(res.model, test)["top1"])
    sens.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 5000
    assert "top-1 at 50%" in sens.table()


def test_schedule_spends_the_cut_where_it_costs_least(trained):
    """A synthetic sensitivity: one group loses nothing, the others lose a lot: the schedule
    takes the asked fraction from the insensitive group first; the predicted loss is below
    the uniform schedule's."""
    model, test = trained
    x = test[:1][0]
    groups = [g for g in pyprune.build_graph(model, x).groups if g.prunable >= 2 and g.producers()]
    names = [g.producers()[0].module for g in groups]
    cheap = names[-1]
    sens = Sensitivity([0.5, 0.9], 0.99, {n: ([0.99, 0.99] if n == cheap else [0.5, 0.1]) for n in names},
                       {g.producers()[0].module: g.size for g in groups})
    ratio = 0.3
    keep = sensitivity_keep(groups, ratio, sens)
    total = sum(g.size for g in groups)
    removed = sum(g.size - keep[g.id] for g in groups)
    assert removed >= ratio * total - 1
    cheap_g = next(g for g in groups if g.producers()[0].module == cheap)
    assert keep[cheap_g.id] < cheap_g.size * 0.5
    pred = sum(sens.drop(g.producers()[0].module, 1 - keep[g.id] / g.size) for g in groups)
    uniform = sum(sens.drop(g.producers()[0].module, ratio) for g in groups)
    assert pred < uniform
    res = pyprune.prune(model, x, method="l1", schedule="sensitivity", sensitivity=sens, ratio=ratio)
    assert res.model(x).shape == (1, 10)
    with pytest.raises(ValueError, match="needs sensitivity="):
        pyprune.prune(model, x, method="l1", schedule="sensitivity", ratio=0.3)


def test_sensitivity_schedule_meets_a_parameter_budget(trained):
    model, test = trained
    x = test[:1][0]
    sens = pyprune.sensitivity(model, x, test, ratios=(0.3, 0.6, 0.9), method="l1")
    res = pyprune.prune(model, x, method="l1", schedule="sensitivity", sensitivity=sens, target_params=0.4)
    assert abs(res.summary.params_after / res.summary.params_before - 0.4) < 0.05
