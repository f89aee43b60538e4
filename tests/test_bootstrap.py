"""Bootstrap CIs and paired comparisons: vectorised statistics against scipy/sklearn, known answers,
reproducibility, the few-items flag and the items-needed extrapolation."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import v_measure_score

from inbedder import bootstrap as bs


def _series(values, statistic="mean", key="T\x1fs\x1f", units=None, **kw):
    values = np.atleast_2d(values)
    units = units or [(i,) for i in range(values.shape[0])]
    return bs.Series(key=key, statistic=statistic, units=units, values=values, groups=np.array([""] * values.shape[1]),
                     **kw)


def _estimate(series, n_boot=bs.N_BOOT, seed=bs.BOOT_SEED):
    return bs.estimate(float(np.mean(series.point())), bs.replicates(series, n_boot, seed), series.n, len(series.units))


def test_vectorised_statistics_match_scipy_and_sklearn_on_every_resample():
    rng = np.random.default_rng(3)
    idx = bs.item_indices("k", 200, n_boot=40)
    ties = rng.integers(0, 6, size=(5, 25)).astype(float)
    assert np.allclose(bs._ranks(ties), rankdata(ties, axis=1))
    labels, clusters = rng.integers(0, 7, 200), rng.integers(0, 5, 200)
    got = bs.v_measure_replicates(clusters[None], labels.astype(str), idx)[:, 0]
    assert np.allclose(got, [v_measure_score(labels[i], clusters[i]) for i in idx])
    sims = rng.normal(size=200)
    gold = np.round(sims + rng.normal(size=200))  # ties in the gold scores
    got = bs.spearman_replicates(sims[None], gold, idx)[:, 0]
    assert np.allclose(got, [spearmanr(sims[i], gold[i]).statistic for i in idx])
    vals = rng.integers(0, 2, size=(2, 200)).astype(float)
    assert np.allclose(bs.mean_replicates(vals, idx), np.stack([vals[:, i].mean(axis=1) for i in idx]))


def test_ci_of_a_mean_has_the_normal_width():
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.7).astype(float)
    est = _estimate(_series(correct))
    p = correct.mean()
    assert est.low < p < est.high
    assert est.half_width == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 400), rel=0.15)


def test_identical_runs_give_a_narrow_difference_ci_containing_zero():
    rng = np.random.default_rng(1)
    correct = (rng.random(300) < 0.6).astype(float)
    a, b = _estimate(_series(correct)), _estimate(_series(correct.copy()))
    cmp = bs.paired_difference(a, b)
    assert cmp.low <= 0 <= cmp.high
    assert cmp.detectable < 1e-12
    assert cmp.outcome == "inconclusive"
    assert cmp.scale_needed == math.inf


def test_a_planted_ten_point_gap_on_500_items_is_supported_and_its_reverse_contradicted():
    rng = np.random.default_rng(2)
    u = rng.random(500)
    better, worse = (u < 0.60).astype(float), (u < 0.50).astype(float)  # the same items, 10 points apart
    a, b = _estimate(_series(better)), _estimate(_series(worse))
    assert bs.paired_difference(a, b).outcome == "supported"
    assert bs.paired_difference(b, a).outcome == "contradicted"
    # within a 15-point margin, a 10-point loss is still "competitive"
    assert bs.paired_difference(b, a, threshold=-0.15).outcome == "supported"
    # the paired CI is narrower than the CIs of the two scores
    assert bs.paired_difference(a, b).detectable < min(a.half_width, b.half_width)


def test_the_same_seed_gives_the_same_ci_and_another_seed_another():
    rng = np.random.default_rng(4)
    series = _series(rng.integers(0, 2, size=(3, 120)), units=[(0,), (1,), (2,)])
    one, two = _estimate(series, seed=7), _estimate(series, seed=7)
    assert (one.low, one.high) == (two.low, two.high)
    other = _estimate(series, seed=8)
    assert (one.low, one.high) != (other.low, other.high)


def test_fewer_than_20_items_are_flagged():
    est = _estimate(_series(np.array([1.0, 0.0] * 9)))
    assert est.n_items == 18 and est.few_items
    big = _estimate(_series(np.array([1.0, 0.0] * 10)))
    assert not big.few_items
    assert bs.paired_difference(est, est).few_items


def test_items_needed_extrapolates_the_ci_width_as_one_over_root_n():
    cmp = bs.Comparison(diff=0.05, low=-0.05, high=0.15, threshold=0.0, n_items=100)
    assert cmp.outcome == "inconclusive"
    assert cmp.detectable == pytest.approx(0.10)
    assert cmp.scale_needed == pytest.approx(4.0)
    assert cmp.items_needed == 400
    assert bs.Comparison(0.2, 0.1, 0.3, 0.0, 100).items_needed is None


def test_seed_weights_are_hierarchical_and_sum_to_one():
    w = bs.seed_weights("k", [(0, 0), (0, 1), (1, 0), (1, 1)], n_boot=200)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.all(w >= 0) and (w == 0).any()  # some units are not drawn
    assert np.array_equal(bs.seed_weights("k", [(3,)], n_boot=5), np.ones((5, 1)))
    with pytest.raises(bs.BootstrapError, match="distinct"):
        bs.seed_weights("k", [(0,), (0,)])


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(5)
    base = (rng.random(300) < 0.5).astype(float)
    same = _series(np.stack([base, base, base]), units=[(0,), (1,), (2,)])
    shifted = np.stack([base, base, base])
    shifted[0, :60], shifted[2, 60:120] = 1.0, 0.0  # seeds disagree
    spread = _series(shifted, units=[(0,), (1,), (2,)])
    assert _estimate(spread).half_width > _estimate(same).half_width


def test_grouped_v_measure_averages_the_sets_like_mteb():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 100).astype(str)
    clusters = rng.integers(0, 4, 100)
    groups = np.array(["0"] * 50 + ["1"] * 50)
    series = bs.Series(key="k", statistic="v_measure", units=[(0,)], values=clusters[None], groups=groups,
                       labels=labels)
    want = np.mean([v_measure_score(labels[:50], clusters[:50]), v_measure_score(labels[50:], clusters[50:])])
    assert series.point()[0] == pytest.approx(want)


def test_score_intervals_fill_ci_columns_per_seed_and_for_the_hmean():
    rng = np.random.default_rng(7)
    rows, scores = [], []
    for subset in ("action", "object"):
        for seed in (0, 1):
            clusters, labels = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
            rows += [{"model": "m", "recipe": "none", "task": "T", "mode": "1st-gen", "layer": -1, "subset": subset,
                      "metric": "v_measure", "seed": seed, "item": i, "statistic": "v_measure",
                      "value": float(c), "label": str(lab)} for i, (c, lab) in enumerate(zip(clusters, labels))]
            scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T",
                           "subset": subset, "metric": "v_measure", "seed": seed, "n": 60,
                           "value": v_measure_score(labels, clusters)})
    for seed in (0, 1):
        scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T", "subset": "hmean",
                       "metric": "v_measure", "seed": seed, "n": 60, "value": 0.1})
    scores.append({"model": "m", "recipe": "none", "mode": "1st-gen", "layer": -1, "task": "T", "subset": "all",
                   "metric": "dci", "seed": 0, "n": 60, "value": 0.0})
    items = bs.item_frame(rows)
    out = bs.score_intervals(pd.DataFrame(scores), items, n_boot=200)
    kept = out[out["metric"] == "v_measure"]
    assert kept["ci_low"].notna().all() and (kept["ci_low"] <= kept["ci_high"]).all()
    per = kept[kept["subset"] != "hmean"]
    assert ((per["ci_low"] <= per["value"] + 0.2) & (per["value"] - 0.2 <= per["ci_high"])).all()
    assert out[out["metric"] == "dci"][["ci_low", "ci_high"]].isna().all(axis=None)


def test_series_of_checks_that_seeds_score_the_same_items(tmp_path):
    rows = [{"model": "m", "recipe": "r", "task": "T", "mode": "x", "layer": -1, "subset": "s", "metric": "acc",
             "seed": seed, "item": i, "statistic": "mean", "value": 1.0} for seed in (0, 1) for i in range(5 + seed)]
    with pytest.raises(bs.BootstrapError, match="different numbers of items"):
        bs.series_of(bs.item_frame(rows))
    path = tmp_path / "items.parquet"
    bs.write_items(bs.item_frame(rows[:5]), path)
    (series,) = bs.series_of(bs.read_items([path])).values()
    assert series.n == 5 and series.units == [(-1, 0)]
