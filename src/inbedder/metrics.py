"""Scores of the paper's instruction-awareness tasks, as pure functions of embeddings and labels.

Exactly as the authors' evaluators (zhang-yu-wei/InBedder, their fork of mteb 1.x):
- triplets: success rate = share of triplets with cosdist(anchor, positive) < cosdist(anchor, negative)
  (strict: a tie is a failure); a task's score is the harmonic mean over its subsets;
- clustering: MiniBatchKMeans(k = number of gold labels, batch_size 500, n_init "auto" = one
  k-means++ start), V-measure against the gold labels; the authors left the seed unset, we score
  every config seed and keep each one;
- instructed pairs: Spearman correlation of the cosine similarity with the gold score;
- instruction-awareness average: the mean of the triplet, clustering and pairs scores;
- robustness: mean V-measure per instruction group, dci = min(correct) - max(incorrect),
  dii = min(implicit) - max(incorrect).
`reranking_map_v1` (embeddings) and `reranking_map_v1_scores` (scores) are mteb 1.x's reranking MAP
(sklearn average precision over each query's candidate list); the generic tasks themselves are scored by
mteb 2.x (`map_at_1000`), and tests/test_reranking_map.py measures where the two numbers part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from inbedder.vocabulary import ROBUSTNESS_GROUPS

# scikit-learn and SciPy are imported where they are used: this module is imported by the workflow's
# DAG code and by jobs that score nothing, and the two take ~1 s to import.

KMEANS_BATCH_SIZE = 500  # mteb's (and the authors') clustering batch size
KMEANS_N_INIT = "auto"  # the authors' setting: one k-means++ initialisation


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    """A 2-D float array; float32 input stays float32 (KMeans results depend on the dtype, as in mteb)."""
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, H], got shape {arr.shape}")
    return arr


def paired_cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of each row of `a` with the same row of `b` (sklearn, as the authors)."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    from sklearn.metrics.pairwise import paired_cosine_distances

    return paired_cosine_distances(a, b)


def paired_cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return 1.0 - paired_cosine_distance(a, b)


def triplet_correct(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Per triplet: whether the anchor is strictly closer (cosine) to the positive than to the negative."""
    d_ap = paired_cosine_distance(anchor, positive)
    d_an = paired_cosine_distance(anchor, negative)
    if len(d_ap) == 0:
        raise ValueError("triplet_success_rate: no triplets")
    return d_ap < d_an


def triplet_success_rate(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """Share of triplets whose anchor is strictly closer (cosine) to the positive than to the negative."""
    return float(np.mean(triplet_correct(anchor, positive, negative)))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative scores (0 when any score is 0), as the paper combines subsets."""
    vals = np.asarray(list(values), dtype=np.float64)
    if vals.size == 0:
        raise ValueError("harmonic_mean: no values")
    if np.any(vals < 0) or not np.all(np.isfinite(vals)):
        raise ValueError(f"harmonic_mean: needs finite non-negative values, got {vals.tolist()}")
    if np.any(vals == 0):
        return 0.0
    return float(len(vals) / np.sum(1.0 / vals))


def kmeans_assign(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids from MiniBatchKMeans(k, batch 500, n_init 'auto', random_state=seed)."""
    from sklearn.cluster import MiniBatchKMeans

    x = _as_2d(embeddings, "embeddings")
    if not 2 <= k <= len(x):
        raise ValueError(f"kmeans_assign: k={k} must be between 2 and the number of texts ({len(x)})")
    model = MiniBatchKMeans(
        n_clusters=k, batch_size=KMEANS_BATCH_SIZE, n_init=KMEANS_N_INIT, random_state=seed
    )
    # One thread (OpenMP and BLAS): the same result on any machine, and ~50x faster than 2 threads on a busy CPU.
    with threadpool_limits(limits=1):
        return model.fit(x).labels_.astype(int)


def kmeans_v_measure(
    embeddings: np.ndarray, labels: Sequence, seed: int, k: int | None = None
) -> tuple[float, np.ndarray]:
    """V-measure of MiniBatchKMeans clusters (k = number of distinct labels unless given) and the assignment."""
    from sklearn.metrics import v_measure_score

    labels = list(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"kmeans_v_measure: {len(embeddings)} embeddings but {len(labels)} labels")
    k = len(set(labels)) if k is None else k
    assignment = kmeans_assign(embeddings, k, seed)
    return float(v_measure_score(labels, assignment)), assignment


def cosine_silhouette(embeddings: np.ndarray, assignment: Sequence[int]) -> float:
    """Silhouette of a clustering under cosine distance (a label-free quality score for own data)."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(_as_2d(embeddings, "embeddings"), np.asarray(assignment), metric="cosine"))


def pair_spearman(text1: np.ndarray, text2: np.ndarray, scores: Sequence[float]) -> float:
    """Spearman correlation between the pairs' cosine similarity and their gold scores."""
    sims = paired_cosine_similarity(text1, text2)
    gold = np.asarray(list(scores), dtype=np.float64)
    if len(gold) != len(sims):
        raise ValueError(f"pair_spearman: {len(sims)} pairs but {len(gold)} scores")
    if len(gold) < 2:
        raise ValueError("pair_spearman: needs at least two pairs")
    if np.all(gold == gold[0]):
        raise ValueError("pair_spearman: every gold score is the same; Spearman is undefined")
    from scipy.stats import spearmanr

    rho = spearmanr(sims, gold).statistic
    # Constant similarities (an embedder that maps every text alike) carry no ranking: rho = 0.
    return 0.0 if not np.isfinite(rho) else float(rho)


def instruction_awareness_average(triplets: float, clustering: float, pairs: float) -> float:
    """The paper's instruction-awareness Avg: mean of triplet hmean, clustering hmean and pair Spearman."""
    return float(np.mean([triplets, clustering, pairs]))


def robustness_summary(v_measures: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean V-measure per instruction group, dci = min(correct) - max(incorrect), dii = min(implicit) - max(incorrect)."""
    missing = [g for g in ROBUSTNESS_GROUPS if not v_measures.get(g)]
    if missing:
        raise ValueError(f"robustness_summary: no scores for group(s) {missing}")
    out = {f"mean_{g}": float(np.mean(v_measures[g])) for g in ROBUSTNESS_GROUPS}
    worst_wrong = float(np.max(v_measures["incorrect"]))
    out["dci"] = float(np.min(v_measures["correct"])) - worst_wrong
    out["dii"] = float(np.min(v_measures["implicit"])) - worst_wrong
    return out


def average_precision_v1(is_relevant: Sequence[bool], scores: Sequence[float]) -> float:
    """mteb 1.x reranking AP of one query: sklearn's average precision of its candidates' scores."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(is_relevant, dtype=bool), np.asarray(scores)))


def reranking_map_v1_scores(relevance: Sequence[Sequence[bool]], scores: Sequence[Sequence[float]]) -> float:
    """mteb 1.x reranking MAP from scores: per candidate list, sklearn's average precision of the labels
    against the scores; a list without a relevant or without an irrelevant candidate is left out; the
    mean over the lists kept.

    Every entry of a list counts, a repeated candidate once per occurrence; candidates with the same score
    share one threshold (sklearn): each relevant one among them gets the precision at the end of the tied
    group, whatever their order."""
    aps = []
    for rel, sc in zip(relevance, scores, strict=True):
        rel = [bool(r) for r in rel]
        if len(rel) != len(sc):
            raise ValueError(f"reranking_map_v1_scores: {len(rel)} labels but {len(sc)} scores in one list")
        if all(rel) or not any(rel):
            continue
        aps.append(average_precision_v1(rel, sc))
    if not aps:
        raise ValueError("reranking_map_v1: no query has both a relevant and an irrelevant candidate")
    return float(np.mean(aps))


def reranking_map_v1(
    queries: np.ndarray, candidates: Sequence[np.ndarray], relevant: Sequence[Sequence[bool]]
) -> float:
    """mteb 1.x reranking MAP of embeddings: `reranking_map_v1_scores` of each query's cosine with its candidates."""
    queries = _as_2d(queries, "queries")
    sims = []
    for q, docs in zip(queries, candidates, strict=True):
        docs = _as_2d(docs, "candidates")
        sims.append(paired_cosine_similarity(np.repeat(q[None, :], len(docs), axis=0), docs))
    return reranking_map_v1_scores(relevant, sims)
