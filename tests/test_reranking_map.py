"""The paper's reranking MAP (mteb 1.x, `metrics.reranking_map_v1_scores`) against the number this project
reports for AskUbuntuDupQuestions / SciDocsRR / StackOverflowDupQuestions: mteb 2.x's retrieval
`map_at_1000`, computed here by mteb's own `calculate_retrieval_scores` (pytrec_eval) on qrels and runs
built the way mteb 2.x's reranking conversion builds them (`AbsTaskReranking._process_example`: one
corpus id per candidate occurrence, `apositive_<query>_<i>` / `negative_<query>_<i>`).

Measured: the two agree on lists with both a positive and a negative and without a tied group of two or
more positives that a negative ties with or precedes; such a group is where they part (sklearn: one
threshold per distinct score, so every tied positive gets the precision at the group's end; pytrec_eval:
ties broken by document id, descending, which puts `negative_*` above `apositive_*`), and map_at_1000 is
then the lower. They part as well on candidates merged into one id (mteb 2.x's data merges none) and on
lists without a positive or without a negative (v1 leaves them out, pytrec_eval scores them)."""

from __future__ import annotations

import json
import warnings
from importlib import resources

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from inbedder import metrics

K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # AbsTaskRetrieval.k_values of mteb 2.x


def _retrieval_scores(run: dict, qrels: dict):
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    return calculate_retrieval_scores(run, qrels, list(K_VALUES))


def _converted(relevance, scores):
    """qrels and run of candidate lists, with mteb 2.x's own reranking-to-retrieval ids."""
    from mteb.abstasks.text.reranking import AbsTaskReranking

    run, qrels = {}, {}
    for i, (rel, sc) in enumerate(zip(relevance, scores, strict=True)):
        pos = [float(s) for r, s in zip(rel, sc, strict=True) if r]
        neg = [float(s) for r, s in zip(rel, sc, strict=True) if not r]
        example = {"query": f"query {i}", "positive": ["p"] * len(pos), "negative": ["n"] * len(neg)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ex = AbsTaskReranking._process_example(None, example, "test", i)
        run[ex["query_id"]] = dict(zip(ex["doc_ids"], pos + neg, strict=True))
        qrels[ex["query_id"]] = dict(zip(ex["doc_ids"], ex["relevance_scores"], strict=True))
    return run, qrels


def _map_at_1000(relevance, scores) -> tuple[float, list[float]]:
    """mteb 2.x's map_at_1000 (rounded to 5 decimals, as reported) and the per-query APs."""
    run, qrels = _converted(relevance, scores)
    result = _retrieval_scores(run, qrels)
    return result.map["MAP@1000"], [result.all_scores[q]["map_cut_1000"] for q in run]


def test_v1_scores_is_the_mean_sklearn_ap_and_the_embedding_form_agrees():
    rel = [[True, False, True], [False, True, False, False], [True, True]]
    sc = [[0.9, 0.5, 0.1], [0.8, 0.7, 0.2, 0.1], [0.3, 0.2]]
    # list 3 has no negative: left out; (1 + 2/3) / 2 and 1/2
    assert metrics.reranking_map_v1_scores(rel, sc) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert metrics.reranking_map_v1_scores(rel[:2], sc[:2]) == pytest.approx(
        np.mean([average_precision_score(r, s) for r, s in zip(rel[:2], sc[:2], strict=True)]))
    q = np.array([[1.0, 0.0]])
    docs = [np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])]
    assert metrics.reranking_map_v1(q, docs, [[True, False, True]]) == pytest.approx(
        metrics.reranking_map_v1_scores([[True, False, True]], [[1.0, 2**-0.5, 0.0]]))
    with pytest.raises(ValueError, match="2 labels but 3 scores"):
        metrics.reranking_map_v1_scores([[True, False]], [[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="no query"):
        metrics.reranking_map_v1_scores([[True, True], [False]], [[0.1, 0.2], [0.3]])


def test_without_ties_the_two_agree_query_by_query():
    rng = np.random.default_rng(7)
    relevance, scores = [], []
    for n in (5, 8, 13, 20, 30, 60):
        rel = rng.random(n) < 0.3
        rel[0], rel[-1] = True, False
        relevance.append(rel.tolist())
        scores.append(rng.normal(size=n).astype(np.float32).tolist())  # float32 cosines: no ties here
    assert all(len(set(s)) == len(s) for s in scores)
    map2, per_query = _map_at_1000(relevance, scores)
    for rel, sc, ap2 in zip(relevance, scores, per_query, strict=True):
        assert ap2 == pytest.approx(average_precision_score(rel, sc), abs=1e-12)
    v1 = metrics.reranking_map_v1_scores(relevance, scores)
    assert v1 == pytest.approx(0.4188794, abs=1e-7)
    assert map2 == round(v1, 5) == 0.41888


def test_tied_positives_with_a_negative_in_or_above_the_tie_are_where_they_part():
    # scores: a negative first, then positive, positive, negative tied at 0.5, then a negative
    rel = [[False, True, True, False, False]]
    sc = [[0.9, 0.5, 0.5, 0.5, 0.1]]
    # v1: the tied three are one step (precision 2/4 at recall 1): AP = 1/2
    assert metrics.reranking_map_v1_scores(rel, sc) == pytest.approx(0.5)
    # mteb 2.x: pytrec_eval orders ties by document id, descending: negative_* before apositive_*,
    # so the ranking is N N P P: AP = (1/3 + 2/4) / 2
    map2, _ = _map_at_1000(rel, sc)
    assert map2 == 0.41667
    # the same scores under ids that sort the other way (positives first: N P P N N) give (1/2 + 2/3) / 2
    run = {"q": {"a": 0.9, "z": 0.5, "y": 0.5, "b": 0.5, "c": 0.1}}
    qrels = {"q": {"a": 0, "z": 1, "y": 1, "b": 0, "c": 0}}
    assert _retrieval_scores(run, qrels).map["MAP@1000"] == 0.58333
    # one positive in a tie group: sklearn's step equals the positive ranked after the tied negatives
    rel1, sc1 = [[True, False, False, True, False]], [[0.9, 0.7, 0.7, 0.7, 0.2]]
    assert metrics.reranking_map_v1_scores(rel1, sc1) == pytest.approx(0.75)
    assert _map_at_1000(rel1, sc1)[0] == 0.75
    # tied negatives change nothing, nor do tied positives with no negative above them
    rel2, sc2 = [[True, True, False, False]], [[0.8, 0.8, 0.3, 0.3]]
    assert metrics.reranking_map_v1_scores(rel2, sc2) == pytest.approx(1.0) == _map_at_1000(rel2, sc2)[0]
    # but two tied positives below a negative do: v1 gives both the precision 2/3 at the group's end,
    # pytrec_eval ranks them 2nd and 3rd: (1/2 + 2/3) / 2
    rel4, sc4 = [[False, True, True]], [[0.9, 0.5, 0.5]]
    assert metrics.reranking_map_v1_scores(rel4, sc4) == pytest.approx(2 / 3)
    assert _map_at_1000(rel4, sc4)[0] == 0.58333


def test_duplicate_candidates_count_once_per_occurrence_unless_merged():
    # candidate list A+ (0.9), B- (0.6), C+ (0.4), B- again (the same text, so the same score 0.6)
    rel, sc = [[True, False, True, False]], [[0.9, 0.6, 0.4, 0.6]]
    v1 = metrics.reranking_map_v1_scores(rel, sc)
    assert v1 == pytest.approx(0.75)  # (1 + 2/4) / 2: B counts twice
    # mteb 2.x's data holds one corpus id per occurrence: the same number
    assert _map_at_1000(rel, sc)[0] == 0.75
    # merged into one corpus id (one run entry, one qrel): A B C, (1 + 2/3) / 2
    merged = _retrieval_scores({"q": {"A": 0.9, "B": 0.6, "C": 0.4}}, {"q": {"A": 1, "B": 0, "C": 1}})
    assert merged.map["MAP@1000"] == 0.83333
    # a positive and its duplicate tied with a negative: a tie like any other
    rel3, sc3 = [[True, False, True, True]], [[0.5, 0.5, 0.2, 0.5]]
    assert metrics.reranking_map_v1_scores(rel3, sc3) == pytest.approx(2 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
    assert _map_at_1000(rel3, sc3)[0] == 0.63889  # N P P P: (1/2 + 2/3 + 3/4) / 3


def test_mteb2_datasets_hold_one_corpus_id_per_candidate_occurrence():
    """mteb 2.x's own statistics of the three sets: as many corpus ids as candidate slots, fewer texts."""
    stats_dir = resources.files("mteb") / "descriptive_stats" / "Reranking"
    found = {}
    for name in ("AskUbuntuDupQuestions", "SciDocsRR", "StackOverflowDupQuestions"):
        test = json.loads((stats_dir / f"{name}.json").read_text(encoding="utf-8"))["test"]
        slots = test["top_ranked_statistics"]["num_top_ranked"]
        found[name] = (test["num_samples"] - slots, slots, test["documents_text_statistics"]["unique_texts"])
    # (queries, candidate slots = corpus ids, distinct candidate texts)
    assert found == {
        "AskUbuntuDupQuestions": (361, 7220, 6743),
        "SciDocsRR": (3978, 118600, 85153),
        "StackOverflowDupQuestions": (2992, 89470, 79806),
    }


def test_lists_without_a_positive_or_a_negative_v1_skips_mteb2_counts():
    rel = [[True, False, True], [True, True], [False, False]]
    sc = [[0.9, 0.5, 0.1], [0.4, 0.3], [0.2, 0.1]]
    assert metrics.reranking_map_v1_scores(rel, sc) == pytest.approx(5 / 6)  # only the first list
    map2, per_query = _map_at_1000(rel, sc)
    assert per_query == pytest.approx([5 / 6, 1.0, 0.0])
    assert map2 == 0.61111  # (5/6 + 1 + 0) / 3
    # mteb 2.x's task drops a query only when its qrels are empty; negatives' 0 grades keep one in
    from datasets import Dataset
    from mteb.abstasks.retrieval import _filter_queries_without_positives

    queries = Dataset.from_dict({"id": ["q0", "q1", "q2"], "text": ["a", "b", "c"]})
    qrels, kept = _filter_queries_without_positives({"q0": {"d": 1}, "q1": {"d": 0}, "q2": {}}, queries)
    assert sorted(qrels) == ["q0", "q1"] and kept["id"] == ["q0", "q1"]


def _synthetic_lists(n_queries: int, n_candidates: int, mean_positives: float, tied_share: float, seed: int = 0):
    """Candidate lists shaped like a reranking set: positives per list 1 + Poisson(mean - 1), float32
    cosines N(0.62, 0.08) for positives and N(0.52, 0.08) for negatives; then `tied_share` of each list
    takes the score of another candidate of the list (the same answer text, hence the same embedding)."""
    rng = np.random.default_rng(seed)
    relevance, scores = [], []
    for _ in range(n_queries):
        n_pos = int(np.clip(rng.poisson(mean_positives - 1) + 1, 1, n_candidates - 1))
        rel = np.zeros(n_candidates, bool)
        rel[rng.choice(n_candidates, n_pos, replace=False)] = True
        sc = np.where(rel, rng.normal(0.62, 0.08, n_candidates), rng.normal(0.52, 0.08, n_candidates))
        sc = sc.astype(np.float32)
        for i in rng.choice(n_candidates, round(tied_share * n_candidates), replace=False):
            sc[i] = sc[rng.integers(n_candidates)]
        relevance.append(rel.tolist())
        scores.append(sc.tolist())
    return relevance, scores


@pytest.mark.parametrize(("tied_share", "v1", "map2"), [
    (0.0, 0.70625, 0.70625),
    (0.1, 0.63735, 0.63633),
    (0.25, 0.59276, 0.58880),
    (0.5, 0.50474, 0.49525),
])
def test_size_of_the_gap_on_askubuntu_shaped_lists(tied_share, v1, map2):
    """361 lists of 20 candidates, 5.47 positives on average (AskUbuntuDupQuestions in mteb 2.x): the gap
    is nil without ties and grows with the share of tied candidates, always against map_at_1000."""
    relevance, scores = _synthetic_lists(361, 20, 5.47, tied_share)
    assert round(metrics.reranking_map_v1_scores(relevance, scores), 5) == v1
    assert _map_at_1000(relevance, scores)[0] == map2


def _parts(rel: list[bool], sc: list[float]) -> bool:
    """Whether a tied group of two or more positives has a negative tied with it or scored above it."""
    for score in set(sc):
        tied_pos = sum(r for r, s in zip(rel, sc, strict=True) if s == score)
        neg_at_or_above = sum(not r for r, s in zip(rel, sc, strict=True) if s >= score)
        if tied_pos >= 2 and neg_at_or_above:
            return True
    return False


def test_map_at_1000_never_exceeds_v1_and_equals_it_exactly_where_no_such_tie():
    rng = np.random.default_rng(3)
    relevance, scores = [], []
    while len(relevance) < 300:
        n = int(rng.integers(2, 12))
        rel = (rng.random(n) < 0.4).tolist()
        if all(rel) or not any(rel):
            continue
        relevance.append(rel)
        scores.append(rng.integers(0, 4, size=n).astype(float).tolist())  # four levels: many ties
    _, per_query = _map_at_1000(relevance, scores)
    parts = 0
    for rel, sc, ap2 in zip(relevance, scores, per_query, strict=True):
        ap1 = metrics.average_precision_v1(rel, sc)
        assert ap2 <= ap1 + 1e-12
        assert (ap2 < ap1 - 1e-12) == _parts(rel, sc), (rel, sc, ap1, ap2)
        parts += _parts(rel, sc)
    assert parts == 132
    # 132 of 300 lists part; MAP 0.54543 (v1) against 0.52607 (map_at_1000)
    assert round(metrics.reranking_map_v1_scores(relevance, scores), 5) == 0.54543
    assert _map_at_1000(relevance, scores)[0] == 0.52607
