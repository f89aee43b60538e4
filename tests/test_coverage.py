"""Coverage: do the 95% intervals cover the value they claim to cover 95% of the time?

Each test draws many data sets from a process whose value is known (in closed form, or as the mean of
the statistic over many more draws of the same size: the expected score at the task's size, which is
what the intervals estimate, inbedder.bootstrap), builds each data set's interval through the same
code the report uses (per-item rows -> ItemData -> Estimate), and checks that the share of intervals
holding the value lies between 93% and 97%. Seeds are fixed, so the shares are reproducible; with
R data sets a share's Monte Carlo error is sqrt(0.95 * 0.05 / R) (0.7 points at R = 1,000).
"""

import math

import numpy as np
import pytest
from scipy.stats import norm, spearmanr
from sklearn.metrics import v_measure_score

from inbedder import bootstrap as bs
from inbedder import metrics
from inbedder.item_data import ItemData, item_frame, item_id, item_rows, pair_id

LOW, HIGH = 0.93, 0.97
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def _rows(model, subset, seed, statistic, values, ids, train_seed=-1, **kw):
    return [{"model": model, "recipe": "r", "task": "T", "mode": "m", "layer": -1, "train_seed": train_seed, **row}
            for row in item_rows(subset, "score", seed, statistic, values, ids=ids, **kw)]


def _key(model, subset):
    return (model, "r", "T", "m", -1, subset, "score")


def _covered(estimates, target) -> float:
    return float(np.mean([e.low <= target <= e.high for e in estimates]))


def _check(share, name):
    print(f"{name}: {share:.3f} of the 95% intervals cover the value")
    assert LOW <= share <= HIGH, f"{name}: the 95% intervals cover the value {share:.1%} of the time"


def test_coverage_of_a_success_rate():
    rng = np.random.default_rng(101)
    n, p = 200, 0.65
    ids = [item_id("triplet", i) for i in range(n)]
    ests = []
    for r in range(1000):
        correct = (rng.random(n) < p).astype(float)
        data = ItemData(item_frame(_rows("a", "s", None, "mean", correct, ids)), seed=r)
        ests.append(data.estimate([_key("a", "s")]))
    _check(_covered(ests, p), "success rate, n=200")


def test_coverage_of_a_mean_of_per_query_scores():
    rng = np.random.default_rng(102)
    n = 150
    ids = [item_id("query", i) for i in range(n)]
    ests = []
    for r in range(1000):
        ap = rng.beta(2.0, 5.0, n)  # skewed per-query average precisions
        data = ItemData(item_frame(_rows("a", "s", None, "mean", ap, ids)), seed=r)
        ests.append(data.estimate([_key("a", "s")]))
    _check(_covered(ests, 2.0 / 7.0), "mean of per-query scores, n=150")


def test_coverage_of_spearman():
    rng = np.random.default_rng(103)
    n, rho = 150, 0.5
    target = 6.0 / math.pi * math.asin(rho / 2.0)  # population Spearman of a bivariate normal
    ids = [pair_id(f"a{i}", f"b{i}") for i in range(n)]
    ests = []
    for r in range(1000):
        z = rng.normal(size=(n, 2))
        sim, gold = z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]
        data = ItemData(item_frame(_rows("a", "s", None, "spearman", sim, ids, gold=gold)), seed=r)
        ests.append(data.estimate([_key("a", "s")]))
    _check(_covered(ests, target), "Spearman, bivariate normal, n=150")


def test_coverage_of_spearman_against_binary_gold_scores():
    # InstructSTSB's gold scores are 0/1: half the pairs similar under their instruction
    rng = np.random.default_rng(104)
    n, shift = 200, 0.8

    def draw(size):
        gold = (rng.random(size) < 0.5).astype(float)
        return rng.normal(size=size) + shift * gold, gold

    target = float(spearmanr(*draw(2_000_000)).statistic)  # the population value, to ~1e-3
    ids = [pair_id(f"a{i}", f"b{i}") for i in range(n)]
    ests = []
    for r in range(1000):
        sim, gold = draw(n)
        data = ItemData(item_frame(_rows("a", "s", None, "spearman", sim, ids, gold=gold)), seed=r)
        ests.append(data.estimate([_key("a", "s")]))
    _check(_covered(ests, target), "Spearman against 0/1 gold, n=200")


def _noisy_assignment(rng, labels, k, keep):
    return np.where(rng.random(labels.size) < keep, labels, rng.integers(0, k, labels.size))


def test_coverage_of_the_v_measure_of_a_clustering():
    rng = np.random.default_rng(105)
    n, k, keep = 300, 8, 0.6

    def draw():
        labels = rng.integers(0, k, n)
        return labels, _noisy_assignment(rng, labels, k, keep)

    target = float(np.mean([v_measure_score(*draw()) for _ in range(4000)]))
    ids = [item_id("text", i) for i in range(n)]
    ests = []
    for r in range(1000):
        labels, clusters = draw()
        data = ItemData(item_frame(_rows("a", "s", 0, "v_measure", clusters, ids, labels=labels.astype(str))),
                        seed=r)
        ests.append(data.estimate([_key("a", "s")]))
    _check(_covered(ests, target), "V-measure of a fixed assignment, n=300, 8 clusters")


def test_coverage_of_the_v_measure_of_kmeans_over_three_kmeans_seeds():
    # embeddings in 6 Gaussian clusters; k-means restarts are the k-means seeds, a seed level of their own
    rng = np.random.default_rng(106)
    n, k, dim = 240, 6, 6
    centres = np.random.default_rng(7).normal(size=(k, dim))

    def draw():
        labels = rng.integers(0, k, n)
        return centres[labels] + rng.normal(size=(n, dim)), labels.astype(str)

    target = float(np.mean([metrics.kmeans_v_measure(*draw(), seed=0)[0] for _ in range(600)]))
    ids = [item_id("text", i) for i in range(n)]
    ests = []
    for r in range(800):
        x, labels = draw()
        rows = []
        for seed in (0, 1, 2):
            _, assignment = metrics.kmeans_v_measure(x, labels, seed)
            rows += _rows("a", "s", seed, "v_measure", assignment, ids, labels=labels)
        ests.append(ItemData(item_frame(rows), seed=r).estimate([_key("a", "s")]))
    _check(_covered(ests, target), "V-measure of k-means, 3 k-means seeds, n=240")


def test_coverage_of_the_harmonic_mean_of_two_views_of_one_item_set():
    # NLU++-like: every text has an action and an object label; each view clusters the same texts
    rng = np.random.default_rng(107)
    n, k = 300, 6

    def draw():
        action, obj = rng.integers(0, k, n), rng.integers(0, k, n)
        return action, obj, _noisy_assignment(rng, action, k, 0.5), _noisy_assignment(rng, obj, k, 0.35)

    def hmean(a, b):
        return 2 * a * b / (a + b)

    target = float(np.mean([hmean(v_measure_score(a, ca), v_measure_score(o, co))
                            for a, o, ca, co in (draw() for _ in range(4000))]))
    ids = [item_id("text", i) for i in range(n)]
    ests = []
    for r in range(800):
        action, obj, ca, co = draw()
        rows = (_rows("a", "action", 0, "v_measure", ca, ids, labels=action.astype(str))
                + _rows("a", "object", 0, "v_measure", co, ids, labels=obj.astype(str)))
        ests.append(ItemData(item_frame(rows), seed=r).estimate([_key("a", "action"), _key("a", "object")], "hmean"))
    _check(_covered(ests, target), "harmonic mean of two views' V-measures, n=300")


def test_coverage_of_a_paired_difference_of_success_rates():
    rng = np.random.default_rng(108)
    n = 250
    ids = [item_id("triplet", i) for i in range(n)]
    ests = []
    for r in range(1000):
        difficulty = rng.random(n)  # shared by both runs: their successes are correlated
        a = (difficulty < 0.70).astype(float)
        b = ((difficulty + 0.25 * rng.normal(size=n)) < 0.65).astype(float)
        data = ItemData(item_frame(_rows("a", "s", None, "mean", a, ids) + _rows("b", "s", None, "mean", b, ids)),
                        seed=r)
        cmp = bs.paired_difference(data.estimate([_key("a", "s")]), data.estimate([_key("b", "s")]))
        ests.append(cmp)
    target = 0.70 - float(np.mean(norm.cdf((0.65 - rng.random(400_000)) / 0.25)))  # P(a) - P(b)
    _check(_covered(ests, target), "paired difference of success rates, n=250")


def test_coverage_of_a_paired_difference_of_v_measures():
    rng = np.random.default_rng(109)
    n, k = 300, 8

    def draw():
        labels = rng.integers(0, k, n)
        return labels, _noisy_assignment(rng, labels, k, 0.6), _noisy_assignment(rng, labels, k, 0.5)

    target = float(np.mean([v_measure_score(lab, a) - v_measure_score(lab, b)
                            for lab, a, b in (draw() for _ in range(4000))]))
    ids = [item_id("text", i) for i in range(n)]
    ests = []
    for r in range(1000):
        labels, a, b = draw()
        rows = (_rows("a", "s", 0, "v_measure", a, ids, labels=labels.astype(str))
                + _rows("b", "s", 0, "v_measure", b, ids, labels=labels.astype(str)))
        data = ItemData(item_frame(rows), seed=r)
        ests.append(bs.paired_difference(data.estimate([_key("a", "s")]), data.estimate([_key("b", "s")])))
    _check(_covered(ests, target), "paired difference of V-measures, n=300")


def test_coverage_of_a_score_over_three_training_seeds():
    # the recipe's value is the mean over training seeds; each seed shifts the success rate, items are shared
    rng = np.random.default_rng(110)
    n, mu, tau = 300, 0.6, 0.04
    ids = [item_id("triplet", i) for i in range(n)]
    ests = []
    for r in range(1000):
        difficulty = rng.random(n)
        rows = []
        for train_seed, shift in enumerate(rng.normal(0.0, tau, 3)):
            correct = (difficulty < mu + shift).astype(float)
            rows += _rows("a", "s", None, "mean", correct, ids, train_seed=train_seed)
        ests.append(ItemData(item_frame(rows), seed=r).estimate([_key("a", "s")]))
    _check(_covered(ests, mu), "success rate over 3 training seeds (seed sd 4 points), n=300")
