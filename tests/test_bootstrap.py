"""The half-sample bootstrap: statistics on the kept halves against scipy/sklearn, joint resampling by item
identity, centring, the seeds' t component, paired comparisons, Holm, and the per-item tables.
(Coverage, the proof that the intervals mean what they say, is in tests/test_coverage.py.)"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr, t
from sklearn.metrics import v_measure_score

from inbedder import bootstrap as bs
from inbedder import item_data as itd


def _series(values, statistic="mean", units=None, ids=None, **kw):
    values = np.atleast_2d(values)
    n = values.shape[1]
    units = units or [(i,) for i in range(values.shape[0])]
    ids = np.array(ids if ids is not None else [itd.item_id("T", i) for i in range(n)])
    return itd.Series(statistic=statistic, units=units, values=values, groups=np.array([""] * n), ids=ids, **kw)


def _estimate(series, identity="m\x1fr", n_boot=bs.N_BOOT, seed=bs.BOOT_SEED):
    points = series.point()
    raw = series.item_replicates(n_boot, seed).mean(axis=1)
    seeds = bs.seed_deviations(dict(zip(series.units, points, strict=True)), identity)
    return bs.Estimate(float(points.mean()), raw, series.n, len(series.units), seeds, seed=seed)


def test_statistics_on_the_kept_halves_match_scipy_and_sklearn():
    rng = np.random.default_rng(3)
    ties = rng.integers(0, 6, size=(5, 25)).astype(float)
    assert np.allclose(bs._ranks(ties), rankdata(ties, axis=1))
    mask = bs.kept([itd.item_hash(str(i)) for i in range(200)], n_boot=40)
    labels, clusters = rng.integers(0, 7, 200), rng.integers(0, 5, 200)
    got = bs.v_measure_replicates(clusters[None], labels.astype(str), mask)[:, 0]
    assert np.allclose(got, [v_measure_score(labels[m], clusters[m]) for m in mask])
    sims = rng.normal(size=200)
    gold = np.round(sims + rng.normal(size=200))  # ties in the gold scores
    got = bs.spearman_replicates(sims[None], gold, mask)[:, 0]
    assert np.allclose(got, [spearmanr(sims[m], gold[m]).statistic for m in mask])
    vals = rng.integers(0, 2, size=(2, 200)).astype(float)
    assert np.allclose(bs.mean_replicates(vals, mask), np.stack([vals[:, m].mean(axis=1) for m in mask]))


def test_each_replicate_keeps_about_half_of_the_items_and_no_item_twice():
    mask = bs.kept([itd.item_hash(str(i)) for i in range(1000)], n_boot=500)
    assert mask.dtype == bool
    assert abs(mask.mean() - 0.5) < 0.01
    # inclusion of two items is independent, and independent across replicates
    assert abs(np.corrcoef(mask[:, 0], mask[:, 1])[0, 1]) < 0.15
    assert abs(np.corrcoef(mask[0], mask[1])[0, 1]) < 0.1


def test_the_same_item_is_kept_together_in_every_score_whatever_its_position():
    ids = [itd.item_id(f"text {i}") for i in range(50)]
    hashes = [itd.item_hash(i) for i in ids]
    forward = bs.kept(hashes, n_boot=30)
    backward = bs.kept(hashes[::-1], n_boot=30)
    assert np.array_equal(forward, backward[:, ::-1])
    assert itd.pair_id("a", "b") == itd.pair_id("b", "a")  # both orders of a pair are one item
    assert itd.item_id("a", "b", "c") != itd.item_id("a", "c", "b")  # a triplet's roles matter


def test_a_v_measure_interval_contains_its_estimate_where_the_multinomial_bootstrap_missed_it():
    # many small clusters: duplicated texts raise the V-measure of a multinomial resample above the estimate
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 40, 300)
    clusters = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 40, 300))
    series = _series(clusters[None], statistic="v_measure", labels=labels.astype(str))
    value = v_measure_score(labels, clusters)
    idx = rng.integers(0, 300, size=(300, 300))
    multinomial = [v_measure_score(labels[i], clusters[i]) for i in idx]
    assert np.quantile(multinomial, 0.025) > value  # the old interval excluded its own estimate
    est = _estimate(series)
    assert est.low < value < est.high
    assert est.value == pytest.approx(value)


def test_a_mean_has_the_normal_width():
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.7).astype(float)
    est = _estimate(_series(correct))
    p = correct.mean()
    assert est.low < p < est.high
    assert est.half_width == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 400), rel=0.12)


def test_identical_runs_give_a_zero_difference_and_an_inconclusive_outcome():
    rng = np.random.default_rng(1)
    correct = (rng.random(300) < 0.6).astype(float)
    a, b = _estimate(_series(correct)), _estimate(_series(correct.copy()))
    cmp = bs.paired_difference(a, b)
    assert cmp.low == cmp.high == 0.0
    assert cmp.outcome == "inconclusive" and cmp.p_value == 1.0


def test_a_planted_ten_point_gap_on_500_items_is_supported_and_its_reverse_contradicted():
    rng = np.random.default_rng(2)
    u = rng.random(500)
    better, worse = (u < 0.60).astype(float), (u < 0.50).astype(float)  # the same items, 10 points apart
    a, b = _estimate(_series(better)), _estimate(_series(worse))
    assert bs.paired_difference(a, b).outcome == "supported"
    assert bs.paired_difference(b, a).outcome == "contradicted"
    assert bs.paired_difference(b, a, threshold=-0.15).outcome == "supported"  # within a 15-point margin
    # pairing: the difference's interval is narrower than either score's
    cmp = bs.paired_difference(a, b)
    assert (cmp.high - cmp.low) / 2 < min(a.half_width, b.half_width)
    assert cmp.p_value <= 2 / bs.N_BOOT


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(4)
    series = _series(rng.integers(0, 2, size=(3, 120)), units=[(0,), (1,), (2,)])
    one, two = _estimate(series, seed=7), _estimate(series, seed=7)
    assert (one.low, one.high) == (two.low, two.high)
    other = _estimate(series, seed=8)
    assert (one.low, one.high) != (other.low, other.high)


def test_fewer_than_20_items_are_flagged():
    est = _estimate(_series(np.array([1.0, 0.0] * 9)))
    assert est.n_items == 18 and est.few_items
    assert not _estimate(_series(np.array([1.0, 0.0] * 10))).few_items
    assert bs.paired_difference(est, est).few_items


def test_the_seed_level_is_the_outermost_with_more_than_one_seed():
    values = {(0, 0): 0.5, (0, 1): 0.7, (1, 0): 0.2, (1, 1): 0.4}  # training seeds 0, 1 x k-means seeds 0, 1
    assert bs.seed_deviations(values, "x") == {"x\x1ftrain_seed": {0: pytest.approx(0.15), 1: pytest.approx(-0.15)}}
    one_fine_tune = {(-1, 0): 0.5, (-1, 1): 0.7, (-1, 2): 0.6}  # k-means seeds only
    assert set(bs.seed_deviations(one_fine_tune, "x")["x\x1fseed"]) == {0, 1, 2}
    assert bs.seed_deviations({(-1, -1): 0.5}, "x") == {}


def test_three_seeds_widen_the_interval_to_t_with_two_degrees_of_freedom():
    devs = {"m\x1fr\x1ftrain_seed": {0: -0.1, 1: 0.0, 2: 0.1}}
    s = 0.1  # sd of (-0.1, 0, 0.1)
    seeds_only = bs.Estimate(0.5, np.zeros(20000), 300, 3, devs)  # no item variance: the seeds decide
    assert seeds_only.half_width == pytest.approx(s / math.sqrt(3) * t.ppf(0.975, 2), rel=0.05)
    assert bs.t_inflation(1.0, [(1e-12, 3)]) == pytest.approx(1.0)  # items dominate: normal
    assert bs.t_inflation(0.0, [(1.0, 3)]) == pytest.approx(t.ppf(0.975, 2) / 1.959964, rel=1e-5)


def test_seeds_of_one_fine_tune_pair_up_across_modes_and_fine_tunes_stay_independent():
    rng = np.random.default_rng(5)
    base = (rng.random(300) < 0.5).astype(float)
    shifts = (0.0, 0.05, 0.1)  # the seeds differ by a shift shared by both modes
    mode_a = np.stack([np.clip(base + (rng.random(300) < s), 0, 1) for s in shifts])
    mode_b = mode_a.copy()
    mode_b[:, :15] = 0.0  # mode b loses 15 items under every seed
    a, b = (_estimate(_series(v, units=[(0,), (1,), (2,)])) for v in (mode_a, mode_b))
    same_fine_tune = bs.paired_difference(a, b)
    b_elsewhere = _estimate(_series(mode_b, units=[(0,), (1,), (2,)]), identity="other\x1fr")
    two_fine_tunes = bs.paired_difference(a, b_elsewhere)
    assert same_fine_tune.diff == pytest.approx(two_fine_tunes.diff)
    assert (same_fine_tune.high - same_fine_tune.low) < 0.5 * (two_fine_tunes.high - two_fine_tunes.low)


def test_holm_adjusts_the_p_values_of_a_family_and_decides_at_five_percent():
    comps = [bs.Comparison(0.1, 0.05, 0.15, 0.0, 100, p_value=p) for p in (0.01, 0.04, 0.03)]
    bs.holm(comps)
    assert [c.adjusted_p for c in comps] == pytest.approx([0.03, 0.06, 0.06])
    assert [c.outcome for c in comps] == ["supported", "inconclusive", "inconclusive"]
    assert all(c.family == 3 for c in comps)


def test_the_minimum_detectable_effect_is_at_80_percent_power_and_the_family_level():
    one = bs.Comparison(0.0, -0.196, 0.196, 0.0, 100)  # standard error 0.1
    assert one.detectable == pytest.approx((1.959964 + 0.841621) * 0.1, rel=1e-4)
    one.family = 4
    assert one.detectable == pytest.approx((2.497705 + 0.841621) * 0.1, rel=1e-4)


def test_grouped_v_measure_averages_the_sets_like_mteb():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 100).astype(str)
    clusters = rng.integers(0, 4, 100)
    groups = np.array(["0"] * 50 + ["1"] * 50)
    series = itd.Series(statistic="v_measure", units=[(0,)], values=clusters[None], groups=groups,
                        ids=np.array([itd.item_id(i) for i in range(100)]), labels=labels)
    want = np.mean([v_measure_score(labels[:50], clusters[:50]), v_measure_score(labels[50:], clusters[50:])])
    assert series.point()[0] == pytest.approx(want)


def _score_rows():
    rng = np.random.default_rng(7)
    texts = [f"text {i}" for i in range(60)]
    rows, scores = [], []
    for subset in ("action", "object"):
        for seed in (0, 1):
            clusters, labels = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
            rows += [{"model": "m", "recipe": "none", "task": "T", "mode": "1st-gen", "layer": -1, **row}
                     for row in itd.item_rows(subset, "v_measure", seed, "v_measure", clusters,
                                              labels=labels.astype(str), ids=[itd.item_id(x) for x in texts])]
            scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T",
                           "subset": subset, "metric": "v_measure", "seed": seed, "n": 60,
                           "value": v_measure_score(labels, clusters)})
    for seed in (0, 1):
        parts = [s["value"] for s in scores if s["seed"] == seed]
        scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T", "subset": "hmean",
                       "metric": "v_measure", "seed": seed, "n": 60, "value": 2 / sum(1 / p for p in parts)})
    scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T", "subset": "all",
                   "metric": "dci", "seed": 0, "n": 60, "value": 0.0})
    return itd.item_frame(rows), pd.DataFrame(scores)


def test_score_intervals_contain_every_estimate_per_seed_and_for_the_hmean():
    items, scores = _score_rows()
    out = itd.score_intervals(scores, items, n_boot=200)
    kept = out[out["metric"] == "v_measure"]
    assert kept["ci_low"].notna().all()
    assert ((kept["ci_low"] <= kept["value"]) & (kept["value"] <= kept["ci_high"])).all()
    assert (kept["ci_low"] < kept["ci_high"]).all()
    assert out[out["metric"] == "dci"][["ci_low", "ci_high"]].isna().all(axis=None)


def test_two_views_of_one_item_set_are_resampled_together():
    items, _ = _score_rows()
    data = itd.ItemData(items, n_boot=50)
    action = data.series[("m", "none", "T", "1st-gen", -1, "action", "v_measure")]
    obj = data.series[("m", "none", "T", "1st-gen", -1, "object", "v_measure")]
    assert np.array_equal(bs.kept(action.hashes, 50), bs.kept(obj.hashes, 50))


def test_series_of_checks_that_seeds_score_the_same_items(tmp_path):
    rows = [{"model": "m", "recipe": "r", "task": "T", "mode": "x", "layer": -1, "subset": "s", "metric": "acc",
             "seed": seed, "item": i, "statistic": "mean", "value": 1.0} for seed in (0, 1) for i in range(5 + seed)]
    with pytest.raises(bs.BootstrapError, match="different numbers of items"):
        itd.series_of(itd.item_frame(rows))
    path = tmp_path / "items.parquet"
    itd.write_items(itd.item_frame(rows[:5]), path)
    (series,) = itd.series_of(itd.read_items([path])).values()
    assert series.n == 5 and series.units == [(-1, 0)]


def test_an_interval_stays_within_the_range_its_statistic_can_take():
    # a good clustering of 24 texts: V-measure near 1, where centred replicates would reach above 1
    labels = np.repeat(np.arange(6), 4)
    rng = np.random.default_rng(12)
    clusters = np.where(rng.random(24) < 0.8, labels, rng.integers(0, 6, 24))
    series = _series(clusters[None], statistic="v_measure", labels=labels.astype(str))
    assert series.bounds == (0.0, 1.0)
    est = bs.Estimate(float(series.point()[0]), series.item_replicates().mean(axis=1), 24, bounds=series.bounds)
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0
    points = est.scaled(100.0)
    assert points.bounds == (0.0, 100.0) and 0.0 <= points.low <= points.high <= 100.0
    assert _series(np.array([0.2, 0.9, 0.5])).bounds == (0.2, 0.9)  # a mean: the range of its item values


def test_clipping_never_leaves_the_estimate_outside_its_interval():
    assert bs.clip(0.9, 1.0, 1.0000000000000002, (0.0, 1.0)) == (0.9, 1.0000000000000002)
    assert bs.clip(-0.1, 0.3, 0.1, (0.0, 1.0)) == (0.0, 0.3)
