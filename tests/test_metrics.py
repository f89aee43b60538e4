"""Metric functions against hand-computed values and against sklearn / scipy on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import hmean, spearmanr
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import average_precision_score, v_measure_score

from inbedder import metrics


def test_triplet_success_rate_hand_computed():
    # anchor (1, 0); 2 of 4 triplets succeed, one fails, and the 4th is an exact tie (a failure).
    a = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=float)
    p = np.array([[1, 0.1], [0, 1], [1, 1], [1, 1]], dtype=float)
    n = np.array([[0, 1], [1, 0.2], [0, 1], [2, 2]], dtype=float)  # last: same direction as p -> tie
    # successes: yes, no (p orthogonal, n almost aligned), yes, tie -> failure (strict <)
    assert metrics.triplet_success_rate(a, p, n) == pytest.approx(0.5)
    assert metrics.triplet_success_rate(a[:1], p[:1], n[:1]) == 1.0


def test_triplet_distance_is_one_minus_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 7)), rng.normal(size=(20, 7))
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(metrics.paired_cosine_distance(a, b), 1 - cos, atol=1e-12)
    np.testing.assert_allclose(metrics.paired_cosine_similarity(a, b), cos, atol=1e-12)


def test_harmonic_mean():
    assert metrics.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0))  # 0.6667
    assert metrics.harmonic_mean([0.2, 0.4, 0.9]) == pytest.approx(hmean([0.2, 0.4, 0.9]))
    assert metrics.harmonic_mean([0.0, 0.9]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        metrics.harmonic_mean([-0.1, 0.5])
    with pytest.raises(ValueError, match="no values"):
        metrics.harmonic_mean([])


def _blobs(seed=0, k=3, per=40, dim=8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=10, size=(k, dim))
    x = np.vstack([c + rng.normal(size=(per, dim)) for c in centers])
    labels = [f"c{i}" for i in range(k) for _ in range(per)]
    return x, labels


def test_kmeans_v_measure_perfect_on_separated_blobs():
    x, labels = _blobs()
    v, assignment = metrics.kmeans_v_measure(x, labels, seed=0)
    assert v == pytest.approx(1.0)
    assert len(set(assignment)) == 3


def test_kmeans_v_measure_equals_sklearn_with_the_authors_settings():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 6))
    labels = rng.integers(0, 4, size=150).tolist()
    for seed in (0, 1, 2):
        ref = MiniBatchKMeans(n_clusters=4, batch_size=500, n_init="auto", random_state=seed).fit(x)
        v, assignment = metrics.kmeans_v_measure(x, labels, seed=seed)
        np.testing.assert_array_equal(assignment, ref.labels_)
        assert v == pytest.approx(v_measure_score(labels, ref.labels_))


def test_kmeans_k_defaults_to_number_of_labels_and_is_checked():
    x, labels = _blobs(k=4, per=10)
    _, assignment = metrics.kmeans_v_measure(x, labels, seed=0)
    assert len(set(assignment)) == 4
    with pytest.raises(ValueError, match="k=50"):
        metrics.kmeans_assign(x, 50, seed=0)
    with pytest.raises(ValueError, match="labels"):
        metrics.kmeans_v_measure(x, labels[:-1], seed=0)


def test_pair_spearman_hand_computed():
    # cosine similarities 1, 0, -1
    t1 = np.array([[1, 0], [1, 0], [1, 0]], dtype=float)
    t2 = np.array([[2, 0], [0, 3], [-1, 0]], dtype=float)
    assert metrics.pair_spearman(t1, t2, [3, 2, 1]) == pytest.approx(1.0)
    # ranks (3, 2, 1) vs (1, 3, 2): d = (2, -1, -1), rho = 1 - 6 * 6 / (3 * 8) = -0.5
    assert metrics.pair_spearman(t1, t2, [1, 3, 2]) == pytest.approx(-0.5)


def test_pair_spearman_matches_scipy_and_instruction_agnostic_is_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    gold = rng.integers(0, 6, size=30)
    ref = spearmanr(metrics.paired_cosine_similarity(a, b), gold).statistic
    assert metrics.pair_spearman(a, b, gold) == pytest.approx(ref)
    # the same pair, scored 1 under one instruction and 0 under another, with identical embeddings:
    # an embedder that ignores the instruction cannot rank them, Spearman is exactly 0
    both_a, both_b = np.vstack([a, a]), np.vstack([b, b])
    gold01 = np.r_[np.ones(30), np.zeros(30)]
    assert metrics.pair_spearman(both_a, both_b, gold01) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="every gold score"):
        metrics.pair_spearman(a, b, np.ones(30))


def test_instruction_awareness_average():
    assert metrics.instruction_awareness_average(0.6, 0.3, 0.15) == pytest.approx(0.35)


def test_robustness_summary_hand_computed():
    groups = {
        "correct": [0.50, 0.40, 0.60],
        "implicit": [0.30, 0.35],
        "incorrect": [0.10, 0.25, 0.05],
    }
    out = metrics.robustness_summary(groups)
    assert out["mean_correct"] == pytest.approx(0.5)
    assert out["mean_implicit"] == pytest.approx(0.325)
    assert out["mean_incorrect"] == pytest.approx(0.4 / 3)
    assert out["dci"] == pytest.approx(0.40 - 0.25)
    assert out["dii"] == pytest.approx(0.30 - 0.25)
    with pytest.raises(ValueError, match="implicit"):
        metrics.robustness_summary({"correct": [0.1], "incorrect": [0.1]})


def test_reranking_map_v1_hand_computed():
    q = np.array([[1.0, 0.0]])
    # cosines 1 (relevant), 0.707 (irrelevant), 0 (relevant): ranking R N R -> AP = (1/1 + 2/3) / 2
    docs = [np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])]
    assert metrics.reranking_map_v1(q, docs, [[True, False, True]]) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.average_precision_v1([True, False, True], [1.0, 0.7, 0.0]) == pytest.approx(
        average_precision_score([1, 0, 1], [1.0, 0.7, 0.0])
    )


def test_reranking_map_v1_skips_lists_without_positive_or_negative():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    docs = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])]
    # second list is all relevant: mteb 1.x drops it
    assert metrics.reranking_map_v1(q, docs, [[False, True], [True, True]]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query"):
        metrics.reranking_map_v1(q[:1], docs[:1], [[True, True]])


def test_cosine_silhouette_high_for_separated_blobs():
    x, _ = _blobs(k=3, per=20)
    assignment = metrics.kmeans_assign(x, 3, seed=0)
    assert metrics.cosine_silhouette(x, assignment) > 0.5
