"""Latency tables, the latency model and pruning to a latency budget (pyprune.latency).

Most tests replace the runtime by a synthetic one (layer seconds from a formula, whole-model
seconds from the model's MACs) so that what they check is exact; one test runs onnxruntime
for real on a small CNN, one the CLI on eager PyTorch."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyprune
from pyprune import latency
from pyprune.graph import build_graph
from pyprune.latency import LatencyModel, LatencyTarget, LayerCost
from pyprune.models import digits_cnn
from pyprune.prune import LATENCY_CLOSE, LATENCY_WEIGHTS
from pyprune.summary import CostModel, count

# synthetic runtime: a conv costs CALL + NS_PER_MAC per multiply-accumulate, alone
CALL, NS_PER_MAC = 2e-5, 1e-9
SPEEDUP_PAST_8 = 3.3  # digits_cnn(width=8): at most 3.0x faster at multiples of 8 channels (its 8-channel group at 4), 3.8x at 4


def _point_seconds(p: dict, batch: int = 1) -> float:
    if p["op"] == "linear":
        macs = batch * p["rows"] * p["cin"] * p["cout"]
    else:
        ho = (p["hw"][0] + 2 * p["p"][0] - p["d"][0] * (p["k"][0] - 1) - 1) // p["s"][0] + 1
        wo = (p["hw"][1] + 2 * p["p"][1] - p["d"][1] * (p["k"][1] - 1) - 1) // p["s"][1] + 1
        macs = batch * ho * wo * p["cout"] * (p["cin"] // p["g"]) * p["k"][0] * p["k"][1]
    return CALL + NS_PER_MAC * macs


def _synthetic_seconds(p: dict, batch: int = 1) -> float:
    s = _point_seconds(p, batch)
    return s if p["cin"] % 8 == 0 and p["cout"] % 8 == 0 else CALL + (s - CALL) / 0.7


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Layer points timed by formula; alignment 8 (multiples of 8 cost 30% less per MAC)."""
    calls = {"points": 0}

    def fake_time(points, target, bar, tmp):
        calls["points"] += len(points)
        return {p["id"]: _synthetic_seconds(p, target.batch) for p in points}

    monkeypatch.setattr(latency, "_time_points", fake_time)
    monkeypatch.setenv("PYPRUNE_CACHE", str(tmp_path))
    return calls


def _whole_model_seconds(model, x):
    """The synthetic runtime's whole model: its MACs at NS_PER_MAC plus 0.1 ms."""
    graph = build_graph(model, x)
    return 1e-4 + NS_PER_MAC * count(model, graph.layers)[1]


def _latency_model(model, x, cache=None):
    graph = build_graph(model, x)
    cost = CostModel(model, graph)
    lat = LatencyModel(model, graph, x, LatencyTarget("onnxruntime"), cost, progress=False, cache=cache,
                       measure_fn=lambda m: _whole_model_seconds(m, x))
    cost.attach_latency(lat)
    return lat, graph, cost


def test_bilinear_table_reproduces_a_bilinear_cost():
    """Between (and past) grid points the table is exact for a + b*ci + c*co + d*ci*co."""
    f = lambda ci, co: 3e-5 + 2e-7 * ci + 5e-7 * co + 4e-9 * ci * co  # noqa: E731
    pt = {"op": "conv2d", "cin": 64, "cout": 96, "k": [3, 3], "s": [1, 1], "p": [1, 1], "d": [1, 1], "g": 1,
          "hw": [8, 8], "bias": False, "rows": 1}
    lc = LayerCost("c", pt, False, ("c", "weight", 1), ("c", "weight", 0), 96 * 64)
    gi, go = [8, 24, 40, 64], [16, 48, 96]
    lc.load({"grid_in": gi, "grid_out": go, "s": [[f(ci, co) for ci in gi] for co in go]})
    for fi, fo in [(1, 1), (0.5, 0.7), (0.3, 0.2), (0.1, 0.1), (0.9, 0.33)]:
        assert lc.at(fi, fo) == pytest.approx(f(fi * 64, fo * 96), rel=1e-9)


def test_alignment_found_by_measurement_and_widths_follow_it(synthetic):
    torch.manual_seed(0)
    model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
    lat, graph, cost = _latency_model(model, x)
    assert lat.align == 8  # the synthetic runtime is 30% cheaper per MAC at multiples of 8 only
    for lc in lat.layers:
        for grid, full in ((lc.grid_in, lc.point["cin"]), (lc.grid_out, lc.point["cout"])):
            assert all(w % 8 == 0 or w == full for w in grid), (lc.module, grid)


def test_narrow_groups_are_cut_at_finer_multiples(synthetic):
    """A group narrower than twice the runtime's multiple is cut at the largest power of two
    that leaves it a cut: the layers it feeds are measured at those widths, and the solver
    cuts it there (at the runtime's multiple it would stay whole)."""
    sizes = (1, 2, 12, 16, 24, 32, 48, 63, 64, 1000)
    assert [latency.group_alignment(n, 32) for n in sizes] == [1, 1, 4, 8, 8, 16, 16, 16, 32, 32]
    assert all(latency.group_alignment(n, 1) == 1 for n in sizes)
    torch.manual_seed(0)
    model, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)  # groups of 8, 16, 32, 32 and 128 channels
    lat, graph, cost = _latency_model(model, x)
    assert lat.align == 8
    groups = [g for g in graph.groups if g.prunable > 0]
    assert sorted((g.size, lat.group_align[g.id]) for g in groups) == [(8, 4), (16, 8), (32, 8), (32, 8), (128, 8)]
    narrow = next(g for g in groups if g.size == 8)
    conv1 = next(lc for lc in lat.layers if lc.out_key is not None and narrow.id in
                 [int(i) for i in cost._share[lc.out_key][0]])
    assert conv1.grid_out.tolist() == [4.0, 8.0] and "a8x4" in conv1.signature
    # half of the narrow group's channels barely matter: the solver's first cut is there, to 4
    scores = [np.where(np.arange(g.size) < 4, 1e-3, 1.0) if g is narrow else np.linspace(1, 2, g.size)
              for g in groups]
    full = lat.raw_predict(np.ones(len(graph.groups)))
    keep = lat.solve(groups, scores, full - 1e-9, min_keep=0.1)
    assert keep[narrow.id] == 4 and all(keep[g.id] == g.size for g in groups if g is not narrow)


def test_grouped_conv_blocks_keep_one_count_at_calibration(synthetic, monkeypatch):
    """The calibration's half-width models keep as many channels in each block of a grouped
    conv (24 channels in 3 groups, cut at multiples of 8: 16 kept as the first 16 would leave
    a group empty and the model could not be cut), and a latency target prunes the model."""
    monkeypatch.setattr(latency, "measure_turns",
                        lambda models, example, target, **kw: [_whole_model_seconds(m, example) for m in models])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=3),
                          nn.ReLU(), nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    x = torch.randn(1, 1, 8, 8)
    lat, graph, _ = _latency_model(model, x)
    blocked = [g for g in graph.groups if g.blocks is not None and g.prunable > 0]
    assert blocked and lat.group_align[blocked[0].id] == 8
    for late_only in (False, True):
        mask = lat.half_keep(late_only)
        for g in blocked:
            kept = mask[g.units]
            per_block = [int(kept[g.blocks == b].sum()) for b in np.unique(g.blocks[g.blocks >= 0])]
            assert len(set(per_block)) == 1 and per_block[0] >= 1, per_block
    res = pyprune.prune(model, x, method="l1", target_speedup=1.5, runtime="onnxruntime", progress=False)
    assert res.latency["measured_s"] <= res.latency["budget_s"] and res.model(x).shape == (1, 10)


def test_model_calibrated_on_full_and_narrower_widths(synthetic):
    """The model as it is is predicted exactly, the three narrower calibration points as
    well as a least-squares fit can: each within twice the spread of what the table leaves
    out there (the rest is a constant here but for the MACs outside convs and Linears), and
    the layer table is what the formula says (call cost removed)."""
    from pyprune.surgery import apply_keep

    torch.manual_seed(0)
    model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
    lat, graph, cost = _latency_model(model, x)
    c = lat.calibration
    rest = []
    for name, share, late in latency._CALIBRATION_POINTS:
        mask = lat.share_keep(share, late) if share < 1 else np.ones(graph.n_units, bool)
        measured = _whole_model_seconds(apply_keep(model, graph, mask), x)
        assert c[f"{name}_measured_s"] == pytest.approx(measured, rel=1e-12)
        rest.append(measured - lat.terms(np.array([mask[g.units].mean() for g in graph.groups]))[0])
    spread = max(rest) - min(rest)
    assert 0 < spread < 0.05 * min(rest)
    assert c["full_predicted_s"] == pytest.approx(c["full_measured_s"], rel=1e-12)
    for name, _, _ in latency._CALIBRATION_POINTS:
        assert abs(c[f"{name}_predicted_s"] - c[f"{name}_measured_s"]) <= 2 * spread
    # alone, each full-width layer costs its MACs (its call cost subtracted)
    mods = dict(model.named_modules())
    for b in lat.breakdown():
        lc = next(lc for lc in lat.layers if lc.module == b["module"])
        # the probe's call point (a 1x1 conv on one value) costs CALL + 1 MAC, unaligned
        call = _synthetic_seconds(latency._CALL_POINT)
        assert lc.at(1, 1) == pytest.approx(_synthetic_seconds(lc.point) - call, rel=1e-9)
        assert isinstance(mods[b["module"]], (nn.Conv2d, nn.Linear))


def test_rest_fit_finds_the_weights_the_cache_holds():
    """fit_rest recovers a planted cache (weights past 6M stream at 0.27 ns each) from four
    models of a CIFAR VGG-16's weights, keeps no cache where one rate misses the models by
    less than the measurements' noise or for a rest linear in the weights (or falling with
    them), and falls back to a constant and one rate where the models cannot tell
    activations from weights."""
    w = np.array([15e6, 8.4e6, 3.7e6, 5.0e6])
    a = np.array([1.0e5, 7.0e4, 5.0e4, 8.0e4])
    rest = 2.5e-4 + 1e-10 * a + 2.7e-10 * np.maximum(0.0, w - 6e6)
    tables = np.array([4.7e-3, 2.5e-3, 1.0e-3, 1.6e-3])  # the layers' table times, with the rest: the measurements
    r0, ra, rw, cw = latency.fit_rest(a, w, rest, rest + tables)
    assert (r0, ra, rw, cw) == pytest.approx((2.5e-4, 1e-10, 2.7e-10, 6e6), rel=1e-6)
    # the same bend in 40x longer models: one rate misses them by under CACHE_EVIDENCE, no cache
    assert latency.fit_rest(a, w, rest, rest + 40 * tables)[3] == 0.0
    # weights that all fit what the cache holds at least (a core's L2) never stream
    assert latency.fit_rest(a, w, rest, rest + tables, min_cache=20e6)[3] == 0.0
    assert latency.l2_cache_weights() >= 1
    assert latency.fit_rest(a, w, 1e-4 + 2e-10 * a + 3e-11 * w) == pytest.approx((1e-4, 2e-10, 3e-11, 0.0), rel=1e-9)
    falling = latency.fit_rest(a, w, 1e-3 - 3e-11 * w)
    assert falling[3] == 0.0 and falling[2] == pytest.approx(-3e-11, rel=1e-6)
    assert latency.fit_rest(np.ones(4), np.full(4, 5.0), np.full(4, 2.0)) == (2.0, 0.0, 0.0, 0.0)  # a constant
    # one group: output elements and weights move together, so no rate per weight (nor a cache)
    # can be told apart; a constant rest with 1% noise must not fit a cache to the noise
    share = np.array([1.0, 0.75, 0.5, 0.5])
    rng = np.random.default_rng(0)
    for _ in range(50):
        noisy = 1e-3 * (1 + 0.01 * rng.standard_normal(4))
        fit = latency.fit_rest(1e5 * share + 3e4, 4e6 * share, noisy, noisy + 5e-3)
        assert fit[2:] == (0.0, 0.0) and fit[0] + fit[1] * 1.3e5 == pytest.approx(noisy[0], rel=1e-9)
    with pytest.raises(ValueError, match="finite"):
        latency.fit_rest(a, w, np.array([1e-3, np.nan, 1e-3, 1e-3]))


def test_a_calibration_timing_that_is_not_seconds_is_refused_and_not_cached(synthetic, tmp_path):
    """A whole-model timing that came back NaN (or 0) stops the calibration with a message
    naming it, before anything is fitted or cached: a NaN rest would make every plan the
    unpruned model. The next calibration measures again."""
    torch.manual_seed(0)
    model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
    graph = build_graph(model, x)
    cost = CostModel(model, graph)
    runs = iter([1e-3, 8e-4, float("nan"), 6e-4])

    def build(measure_fn):
        return LatencyModel(model, graph, x, LatencyTarget("onnxruntime"), cost, progress=False,
                            cache=tmp_path / "tables", measure_fn=measure_fn)

    with pytest.raises(RuntimeError, match=r"half: nan .*measured now"):
        build(lambda m: next(runs))
    lat = build(lambda m: _whole_model_seconds(m, x))
    assert lat.calibrated_now and lat.calibration["full_predicted_s"] == pytest.approx(
        _whole_model_seconds(model, x), rel=1e-12)


def _solver_case():
    """(latency model, graph, cost model, prunable groups, random scores) of digits_cnn(width=32)."""
    torch.manual_seed(0)
    model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
    lat, graph, cost = _latency_model(model, x)
    groups = [g for g in graph.groups if g.prunable > 0]
    rng = np.random.default_rng(0)
    return lat, graph, cost, groups, [rng.uniform(1, 2, g.size) for g in groups]


def test_solver_counts_the_streaming_once_for_the_whole_model(synthetic):
    """With weights past a cache streaming, the solver's plans meet the goal by the whole
    model's prediction; a cache the plans never get under (one weight) cuts exactly as the
    linear rate does, one larger than the model as no rate does; and one at 0.6 of the
    weights: the plans cut past it and, as weights under it save nothing more, keep at least
    as many as at the linear rate."""
    lat, graph, cost, groups, scores = _solver_case()
    ones = np.ones(len(graph.groups))
    full_w = lat.terms(ones)[2]
    lat.r_weight = 0.5 * lat.terms(ones)[0] / full_w  # streaming: half the layers' time at full width

    def plan(c_weight, goal):
        lat.c_weight = c_weight
        keep = lat.solve(groups, scores, goal, min_keep=0.1)
        kf = cost.keep_fractions(keep)
        assert lat.raw_predict(kf) <= goal * (1 + 1e-12)
        return keep, lat.terms(kf)[2]

    lat.c_weight = 0.0
    goal = 0.5 * lat.raw_predict(ones)
    linear, linear_w = plan(0.0, goal)
    assert plan(1.0, goal) == (linear, linear_w)
    r_weight, lat.r_weight = lat.r_weight, 0.0
    goal_unstreamed = 0.5 * lat.raw_predict(ones)
    unstreamed = plan(0.0, goal_unstreamed)[0]
    lat.r_weight = r_weight
    assert plan(2 * full_w, goal_unstreamed)[0] == unstreamed
    for share in (0.5, 0.3):  # plans that end above and under the cache
        goal = share * lat.raw_predict(ones)  # at the linear rate
        linear_w = plan(0.0, goal)[1]
        cached_w = plan(0.6 * full_w, goal)[1]
        assert linear_w <= cached_w < 0.6 * full_w  # cut past the cache, then no more weights than needed
        lat.c_weight = 0.0


def test_table_cached_second_build_measures_nothing(synthetic):
    torch.manual_seed(0)
    model, x = digits_cnn(width=16).eval(), torch.randn(1, 1, 8, 8)
    lat1, _, _ = _latency_model(model, x)
    first = synthetic["points"]
    assert first > 0 and lat1.measured_points > 0
    measured = []
    graph = build_graph(model, x)
    cost = CostModel(model, graph)
    lat2 = LatencyModel(model, graph, x, LatencyTarget("onnxruntime"), cost, progress=False,
                        measure_fn=lambda m: measured.append(1) or 1.0)
    assert synthetic["points"] == first and lat2.measured_points == 0 and not measured
    assert (lat2.r0, lat2.r_act, lat2.r_weight, lat2.c_weight) == (lat1.r0, lat1.r_act, lat1.r_weight, lat1.c_weight)
    # another target (threads) is another table
    lat3 = LatencyModel(model, graph, x, LatencyTarget("onnxruntime", threads=2), cost, progress=False,
                        measure_fn=lambda m: _whole_model_seconds(m, x))
    assert lat3.measured_points > 0 and lat3.table.path != lat1.table.path


def test_solver_meets_goal_keeps_floors_and_alignment(synthetic):
    """Predicted seconds <= goal, counts multiples of the alignment, floors kept, and the
    group with the lowest scores gives up the most."""
    lat, graph, cost, groups, scores = _solver_case()
    low = groups[2].id  # three quarters of this group barely matter (scores are compared per group,
    scores[2] = np.where(np.arange(groups[2].size) < 3 * groups[2].size // 4, 1e-3, 1.0)  # normalised by its mean)
    base = cost.base["latency"]
    goal = 0.5 * base
    keep = lat.solve(groups, scores, goal, min_keep=0.1)
    kf = cost.keep_fractions(keep)
    assert lat.predict(kf) <= goal
    for g in groups:
        assert keep[g.id] % 8 == 0 or keep[g.id] == g.size
        assert keep[g.id] >= max(1, math.ceil(0.1 * g.size), g.size - g.prunable)
    assert keep[low] <= graph.groups[low].size // 4 + 8  # its near-zero units go first
    assert min(keep[g.id] / g.size for g in groups) == keep[low] / graph.groups[low].size
    with pytest.raises(ValueError, match="unreachable"):
        lat.solve(groups, scores, 1e-9)


def _prune_where_pruned_models_run(monkeypatch, factor: float):
    """(model, x, its seconds, result) of digits_cnn(width=32) pruned to 2x its speed on a
    synthetic runtime where every pruned model takes `factor` times the whole-model formula
    the unpruned one (and the calibration) follows."""
    torch.manual_seed(0)
    model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
    full = _whole_model_seconds(model, x)

    def measure(models, example, target, **kw):  # the calibration's models follow the formula
        out = [_whole_model_seconds(m, example) for m in models]
        calibration = len(models) == len(latency._CALIBRATION_POINTS)
        return [s if abs(s - full) < 1e-12 or calibration else s * factor for s in out]

    monkeypatch.setattr(latency, "measure_turns", measure)
    return model, x, full, pyprune.prune(model, x, method="l1", target_speedup=2.0, runtime="onnxruntime")


def test_prune_to_latency_measures_and_tightens(synthetic, monkeypatch):
    """The first plan misses (the runtime is 20% slower than predicted on pruned models):
    the goal is tightened until the measured model meets the budget."""
    model, x, full, res = _prune_where_pruned_models_run(monkeypatch, 1.2)
    lat = res.latency
    assert lat["budget_s"] == pytest.approx(full / 2.0, rel=1e-9)
    assert len(lat["rounds"]) >= 2 and lat["rounds"][0]["measured_s"] > lat["budget_s"]
    assert lat["measured_s"] <= lat["budget_s"]
    assert lat["measured_s"] == pytest.approx(1.2 * _whole_model_seconds(res.model, x), rel=1e-9)
    assert res.model(x).shape == (1, 10)
    assert len(lat["layers"]) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_a_budget_no_plan_reaches_says_so_and_what_to_ask_for(synthetic, monkeypatch):
    """Pruned models run 50x slower than predicted: the rounds tighten until no plan cuts
    deeper, before the rounds run out; the warning says that, and to ask for a smaller
    speedup (not for more rounds)."""
    with warnings.catch_warnings(record=True) as said:  # (finer multiples are tried first, each warned)
        warnings.simplefilter("always")
        _, _, _, res = _prune_where_pruned_models_run(monkeypatch, 50.0)
    said = [str(w.message) for w in said]
    assert any(re.search(r"target_speedup=2: .*over the budget .*no plan cuts deeper .*Ask for a smaller "
                         r"target_speedup", s) for s in said), said
    assert res.latency["measured_s"] > res.latency["budget_s"]
    assert len(res.latency["rounds"]) < 4  # latency_rounds: the default


def test_prune_to_latency_uses_a_budget_it_undershot(synthetic, monkeypatch, tmp_path):
    """The first plan comes in far under the budget (the runtime is 20% faster than predicted
    on pruned models): it is planned again with the table's measured error, the model kept
    is the least cut one within the budget, and its prediction (made before measuring it)
    carries that error."""
    model, x, _, res = _prune_where_pruned_models_run(monkeypatch, 0.8)
    lat, rounds = res.latency, res.latency["rounds"]
    first = rounds[0]
    assert first["measured_s"] < LATENCY_CLOSE * first["budget_s"] and len(rounds) >= 2
    assert first["table_error"] == 1.0 and first["predicted_s"] == first["table_predicted_s"]
    # a round's error is the geometric mean of measured over predicted in the rounds before
    # (the machine's speed is steady here: only pruned models run faster than the table says)
    errors = [r["measured_s"] / r["table_predicted_s"] for r in rounds]
    for i in range(1, len(rounds)):
        assert rounds[i]["table_error"] == pytest.approx(math.exp(np.mean(np.log(errors[:i]))), rel=1e-9)
    assert lat["measured_s"] <= lat["budget_s"]
    assert lat["measured_s"] == max(r["measured_s"] for r in rounds if r["measured_s"] <= r["budget_s"])
    assert lat["measured_s"] > first["measured_s"]  # more of the budget used: fewer channels cut
    assert lat["measured_s"] == pytest.approx(0.8 * _whole_model_seconds(res.model, x), rel=1e-9)
    assert lat["predicted_s"] == pytest.approx(lat["table_error"] * lat["table_predicted_s"], rel=1e-12)
    assert len({r["measured_s"] for r in rounds}) == len(rounds)  # no plan measured twice
    # the report's rounds table: one row per round, the error each prediction carried
    from pyprune.report import write_report

    index = write_report(tmp_path / "rep", latency=lat)
    with open(tmp_path / "rep" / "latency_rounds.csv") as f:
        table = [line.strip().split(",") for line in f]
    assert table[0][:4] == ["round", "goal_ms", "predicted_ms", "table_error"] and len(table) == 1 + len(rounds)
    assert [float(row[3]) for row in table[1:]] == pytest.approx([r["table_error"] for r in rounds], abs=1e-4)
    assert f"kept: round {lat['round']}" in index.read_text()


def test_a_machine_whose_speed_moves_between_measurements_moves_the_times_not_the_cut(synthetic, monkeypatch,
                                                                                      tmp_path):
    """The paired measurements find the machine at 1.15 and 0.87 times the calibration's
    speed in turn (all models alike, as a shared machine does): the plan, the shares of the
    unpruned model's time predicted and measured, and the budget met are those of a steady
    machine (a relative budget and the speed both come from the pair); only the absolute
    times move, and the summary and the report's rounds table say by how much."""
    def run(factors, cache):
        monkeypatch.setenv("PYPRUNE_CACHE", str(tmp_path / cache))  # calibrated afresh: no refresh
        speeds = iter(factors)  # the calibration's turns, then each pair

        def measure(models, example, target, **kw):
            f = next(speeds)
            return [f * _whole_model_seconds(m, example) for m in models]

        monkeypatch.setattr(latency, "measure_turns", measure)
        torch.manual_seed(0)
        model, x = digits_cnn(width=32).eval(), torch.randn(1, 1, 8, 8)
        return pyprune.prune(model, x, method="l1", target_speedup=2.0, runtime="onnxruntime")

    steady = run([1.0] * 20, "steady")
    moving = run([1.0] + [1.15, 0.87] * 10, "moving")
    a, b = steady.latency, moving.latency
    assert moving.plan.widths() == steady.plan.widths() and b["round"] == a["round"]
    assert b["predicted_ratio"] == pytest.approx(a["predicted_ratio"], rel=1e-9)
    assert b["measured_ratio"] == pytest.approx(a["measured_ratio"], rel=1e-9)
    assert b["measured_s"] <= b["budget_s"] and b["budget_s"] == pytest.approx(b["unpruned_measured_s"] / 2, rel=1e-12)
    # the speed the predictions were scaled by is that of the measurement before the kept one
    before = 1.0 if b["round"] == 1 else [1.15, 0.87][(b["round"] - 2) % 2]
    now = [1.15, 0.87][(b["round"] - 1) % 2]
    assert a["machine_drift"] == pytest.approx(0.0, abs=1e-12)
    assert b["machine_drift"] == pytest.approx(now / before - 1, rel=1e-9)
    assert b["predicted_s"] / b["measured_s"] == pytest.approx(a["predicted_s"] / a["measured_s"] * before / now,
                                                               rel=1e-9)
    moved = f"{abs(now / before - 1):.0%} {'slower' if now > before else 'faster'}"
    assert "the machine's speed moved" not in str(steady) and moved in str(moving)
    assert f"predicted {b['predicted_ratio']:.3f}, measured {b['measured_ratio']:.3f}" in str(moving)
    from pyprune.report import write_report

    write_report(tmp_path / "rep", latency=b)
    with open(tmp_path / "rep" / "latency_rounds.csv") as f:
        head, *rows = [line.strip().split(",") for line in f]
    r = dict(zip(head, rows[b["round"] - 1]))
    assert float(r["unpruned_measured_ms"]) / float(r["unpruned_predicted_ms"]) == pytest.approx(now / before, rel=1e-3)
    assert float(r["predicted_share"]) == pytest.approx(b["predicted_ratio"], abs=1e-4)


def _compute_early_weights_late() -> nn.Module:
    """Early layers hold the MACs (wide feature maps, few weights), late ones the weights."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 256, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()


def test_balanced_latency_weight_keeps_the_most_of_both(synthetic, monkeypatch):
    """Weighting a channel by its MACs or by its parameters gives other plans; the balanced
    weight (a grid of mixes that includes both) keeps at least the smaller share, of the
    MACs or the parameters, that either of them keeps, within the budget. Shares are
    counted on the pruned models themselves."""
    monkeypatch.setattr(latency, "measure_turns",
                        lambda models, example, target, **kw: [_whole_model_seconds(m, example) for m in models])
    torch.manual_seed(0)
    model, x = _compute_early_weights_late(), torch.randn(1, 1, 16, 16)
    params0, macs0 = count(model, build_graph(model, x).layers)
    shares = {}
    for weight in ("macs", "params", "balanced"):
        res = pyprune.prune(model, x, method="l1", target_speedup=2.0, runtime="onnxruntime", latency_weight=weight)
        assert res.latency["measured_s"] <= res.latency["budget_s"]
        assert res.latency["weight"] == weight
        params, macs = count(res.model, build_graph(res.model, x).layers)
        shares[weight] = (macs / macs0, params / params0)
    assert abs(shares["macs"][1] - shares["params"][1]) > 0.1, shares  # the weight matters here
    assert min(shares["balanced"]) >= max(min(shares["macs"]), min(shares["params"])), shares
    assert res.latency["weight_macs_share"] in LATENCY_WEIGHTS["balanced"]
    with pytest.raises(ValueError, match="latency_weight.*'flops'.*balanced"):
        pyprune.prune(model, x, target_speedup=2.0, latency_weight="flops")


def test_latency_target_errors():
    m, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="runtime"):
        pyprune.prune(m, x, target_latency_ms=1.0, runtime="tflite")
    with pytest.raises(ValueError, match="target_speedup"):
        pyprune.prune(m, x, target_speedup=0.5)
    with pytest.raises(ValueError, match="target_latency_ms"):
        pyprune.prune(m, x, target_latency_ms=-1)
    with pytest.raises(ValueError, match="one budget"):
        pyprune.prune(m, x, target_latency_ms=1.0, target_macs=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        LatencyTarget("onnxruntime", 1, 0)
    with pytest.raises(ValueError, match=r"threads: .*at most 65536"):
        LatencyTarget("onnxruntime", 10**6, 1)


def test_latency_options_are_checked_before_anything_is_measured(monkeypatch):
    """A bad thread count, a ratio beside the budget, a budget that is not a number or one
    that nothing can be cut towards: refused before a table or a model is timed."""
    def never(*args, **kwargs):
        raise AssertionError("measured before the options were checked")

    monkeypatch.setattr(latency, "_time_points", never)
    monkeypatch.setattr(latency, "measure_turns", never)
    m, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)
    for kw, match in [({"threads": 0}, r"^threads must be a positive int"), ({"threads": 2.5}, "^threads"),
                      ({"threads": "2"}, "^threads"), ({"threads": True}, "^threads"),
                      ({"ratio": 0.5}, "give a ratio or a budget, not both"),
                      ({"ignore": ["*"]}, r"target_speedup=1.5 is out of reach: no channel of the model can be cut")]:
        with pytest.raises(ValueError, match=match):
            pyprune.prune(m, x, method="l1", target_speedup=1.5, progress=False, **kw)
    with pytest.raises(ValueError, match=r"give a ratio or a budget, not both: ratio='auto'"):
        pyprune.prune(m, x, method="kmeans", ratio="auto", target_speedup=1.5)
    with pytest.raises(ValueError, match=r"target_latency_ms: expected a number, got Tensor"):
        pyprune.prune(m, x, method="l1", target_latency_ms=torch.tensor(5.0))


def test_a_speedup_of_one_or_a_numpy_budget_is_taken_as_given(synthetic, monkeypatch):
    """target_speedup=1 asks for the model as it is (the solver's sum and the goal are the
    same seconds added in another order); numpy numbers are numbers."""
    torch.manual_seed(0)
    model, x = digits_cnn(width=16).eval(), torch.randn(1, 1, 8, 8)
    monkeypatch.setattr(latency, "measure_turns", lambda models, example, target, **kw: [
        _whole_model_seconds(m, example) for m in models])
    res = pyprune.prune(model, x, method="l1", target_speedup=np.float32(1.0), runtime="onnxruntime")
    assert res.summary.params_ratio == 1.0
    assert all(before == after for before, after in res.plan.widths().values())
    lat, graph, cost = _latency_model(model, x)
    groups = [g for g in graph.groups if g.prunable > 0]
    full = lat.predict(np.ones(len(graph.groups)))
    for goal in (full, full * (1 - 1e-15), full * (1 + 1e-15)):
        assert lat.solve(groups, [np.ones(g.size) for g in groups], goal) == {g.id: g.size for g in groups}


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("executorch", marks=pytest.mark.slow)])
def test_latency_budget_end_to_end_on_the_runtime(runtime, tmp_path, monkeypatch):
    """The real runtime (onnxruntime; ExecuTorch with XNNPACK, which lowers every layer
    point: slow) on a small CNN: the result is measured, and either it meets the budget or
    pyprune warns that it did not (never a silent miss)."""
    pytest.importorskip(runtime, reason=f"needs the {runtime} extra: pip install 'pyprune[{'onnx' if runtime == 'onnxruntime' else runtime}]'")
    monkeypatch.setenv("PYPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randn(1, 3, 32, 32)
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = pyprune.prune(model, x, method="l1", target_speedup=1.5, runtime=runtime, progress=False)
    lat = res.latency
    missed = [str(v.message) for v in w if "over the budget" in str(v.message)]
    assert lat["measured_s"] <= lat["budget_s"] or missed
    assert lat["unpruned_measured_s"] > 0 and lat["predicted_s"] > 0
    assert res.model(x).shape == (1, 10)
    table = json.loads(next(tmp_path.glob(f"latency/{runtime}-*.json")).read_text())
    assert table["meta"]["threads"] == 1 and table["layers"]


def test_cli_latency_table_builds_then_reads_the_cache(tmp_path):
    cmd = [sys.executable, "-m", "pyprune", "latency-table", "digits_cnn", "--size", "8", "--in-channels", "1",
           "--num-classes", "10", "--runtime", "eager", "--cache", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "measured" in first.stdout and "layer points" in first.stdout
    assert "latency on eager" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "read from the cache" in second.stdout


def test_unreachable_at_the_runtimes_multiple_tries_finer_widths(synthetic, monkeypatch):
    """A budget that multiples of 8 channels cannot reach is met at multiples of 4, with a
    warning; keep counts follow the finer multiple."""
    monkeypatch.setattr(latency, "measure_turns",
                        lambda models, example, target, **kw: [_whole_model_seconds(m, example) for m in models])
    torch.manual_seed(0)
    model, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)
    with pytest.warns(UserWarning, match="multiples of 8 .* trying multiples of 4"):
        res = pyprune.prune(model, x, method="l1", target_speedup=SPEEDUP_PAST_8, runtime="onnxruntime")
    assert res.latency["measured_s"] <= res.latency["budget_s"]
    widths = [after for before, after in res.plan.widths().values() if after != before]
    assert widths and all(w % 4 == 0 for w in widths) and any(w % 8 for w in widths)


def test_a_budget_far_below_any_floor_is_refused_without_finer_tables(synthetic, monkeypatch):
    """100x faster is out of reach at any width: refused at once (no finer multiples, no
    table of theirs), naming the argument and the floor's predicted time."""
    monkeypatch.setattr(latency, "measure_turns",
                        lambda models, example, target, **kw: [_whole_model_seconds(m, example) for m in models])
    torch.manual_seed(0)
    model, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)
    pyprune.prune(model, x, method="l1", target_speedup=1.2, runtime="onnxruntime")  # tables built
    points = synthetic["points"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "trying multiples of" warning
        with pytest.raises(ValueError, match=r"^target_speedup=100: latency budget of .* ms is unreachable.*"
                                             r"at any width the floor is predicted at .* ms, so multiples below "
                                             r"\d+ were not tried; the model was not changed"):
            pyprune.prune(model, x, method="l1", target_speedup=100, runtime="onnxruntime")
    assert synthetic["points"] == points


def test_at_the_edge_of_the_multiples_the_next_finer_plan_is_compared(synthetic, monkeypatch):
    """Once a budget needs finer multiples than the runtime's, the plan at the next finer
    multiple is solved too and the one that keeps more (the smaller share, of the MACs or of
    the parameters) wins; the latency model left is the one the plan was made with."""
    import importlib

    prune_mod = importlib.import_module("pyprune.prune")
    monkeypatch.setattr(latency, "measure_turns",
                        lambda models, example, target, **kw: [_whole_model_seconds(m, example) for m in models])
    torch.manual_seed(0)
    model, x = digits_cnn(width=8).eval(), torch.randn(1, 1, 8, 8)
    params0, macs0 = count(model, build_graph(model, x).layers)
    shares, asked = {}, []
    spy = prune_mod.Pruner.latency_model
    monkeypatch.setattr(prune_mod.Pruner, "latency_model", lambda self, align=None: asked.append(align) or spy(self, align))
    for finest in (4, 2):  # multiples of 8 miss: 4 is tried; then (with 2 allowed) 2 is compared
        monkeypatch.setattr(prune_mod, "FINEST_COMPARED_ALIGN", finest)
        asked.clear()
        pruner = pyprune.Pruner(model, x, method="l1", runtime="onnxruntime", progress=False)
        with pytest.warns(UserWarning, match="multiples of 8 .* trying multiples of 4"):
            plan = pruner.plan(target_speedup=SPEEDUP_PAST_8)
        assert (2 in asked) == (finest == 2)
        lat = pruner.latency_model()
        assert lat.align in (4, 2)
        assert plan.keep
        for gid, kept in plan.keep.items():
            assert len(kept) % lat.group_align[gid] == 0 or len(kept) == plan.graph.groups[gid].size
        assert lat.predict(pruner._keep_fractions(plan)) <= lat.measured_full / SPEEDUP_PAST_8 * (1 + 1e-9)
        params, macs = count(pruner.apply(plan).model, build_graph(model, x).layers)
        shares[finest] = min(macs / macs0, params / params0)
    # here the finer plan keeps more (the synthetic runtime's slow path is the same at 2
    # as at 4), so it won, and the model planned with is the finer one
    assert shares[2] > shares[4] and lat.align == 2, shares


def _probe_times(cost) -> dict:
    """The alignment probe's points {"a-c": seconds} under a runtime costing cost(c) per conv."""
    return {f"{a}-{c}": cost(c) for a in (4, 8, 16, 32) for c in (96 - a - 1, 96 - a, 96 - a + 1)}  # as probed


def test_turns_time_warm_runs_in_blocks(monkeypatch):
    """Models timed in turns run `block` times in a row, the first untimed (the model back in
    the caches), in an order rotating from turn to turn; `repeats` counts timed runs."""
    from pyprune import _runtime

    calls = []
    monkeypatch.setitem(_runtime.RUNNERS, "fake", lambda path, threads: (lambda x: calls.append(path)))
    rows = _runtime.bench_turns({"runtime": "fake", "paths": ["a", "b"], "shape": [1, 2], "warmup": 2, "repeats": 14,
                                 "min_seconds": 0.0, "max_seconds": 30.0, "min_repeats": 1})
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up
    assert calls[4:] == ["a"] * 8 + ["b"] * 8 + ["b"] * 8 + ["a"] * 8  # two turns of eight runs each
    assert [r["repeats"] for r in rows] == [14, 14]  # seven of each eight timed


def test_alignment_probe_sees_padded_tiles_and_slow_paths():
    """A runtime that pads channels to a tile of 16 (c + 1 costs what c + 16 does), one with
    a 40% slower path off multiples of 8, and one that is linear in c^2: 16, 8 and 1."""
    padded = lambda c: math.ceil(c / 16) * 16 * c  # noqa: E731
    assert latency.alignment_from_probe(_probe_times(padded))[0] == 16
    slow = lambda c: c * c * (1.0 if c % 8 == 0 else 1.4)  # noqa: E731
    assert latency.alignment_from_probe(_probe_times(slow))[0] == 8
    assert latency.alignment_from_probe(_probe_times(lambda c: c * c))[0] == 1


def test_alignment_from_an_older_probe_is_measured_again(synthetic):
    """A cached alignment without the probe's current method (an older cache) is probed
    again; a current one is read."""
    table = latency.LatencyTable(LatencyTarget("onnxruntime"))
    table.meta_measured.update(align=1)  # as the first probe method stored it
    assert latency.probe_alignment(table, progress=False) == 8 and synthetic["points"] == 12
    assert latency.probe_alignment(latency.LatencyTable(LatencyTarget("onnxruntime")), progress=False) == 8
    assert synthetic["points"] == 12  # read from the cache


def test_executorch_layer_points_are_timed_channels_last(tmp_path):
    """ExecuTorch conv points are lowered for, and run on, a channels-last input (the layout
    XNNPACK runs; an NCHW program would convert around the one layer), and compute the conv."""
    pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'pyprune[executorch]'")
    from pyprune import _runtime

    p = {"op": "conv2d", "cin": 8, "cout": 16, "k": [3, 3], "s": [1, 1], "p": [1, 1], "d": [1, 1], "g": 1,
         "hw": [6, 6], "bias": True, "rows": 1, "id": "0", "path": str(tmp_path / "p.pte")}
    _runtime.lower_layers({"batch": 1, "points": [p]})
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    run, inp = _runtime._layer_runner("executorch", p, 1, 1, x)
    assert inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous()
    with torch.no_grad():
        ref = _runtime._layer_module(p)(torch.from_numpy(x))
    torch.testing.assert_close(run(inp)[0], ref, rtol=1e-4, atol=1e-4)
