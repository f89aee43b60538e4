"""Per-query items of mteb retrieval/reranking scores: a toy reranking task (built offline, as mteb 2.x runs
AskUbuntuDupQuestions / SciDocsRR / StackOverflowDupQuestions) scored through `evaluate.evaluate_task`;
every kept score's items are its queries' values (sorted query ids), their mean is mteb's score (rounded
as mteb rounds), the written CI brackets it, and two embedders' items pair up query by query."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from inbedder import bootstrap, evaluate, item_data, mteb_tasks, task_kinds

INSTRUCTION = "What is the paper about based on the title?"
SPEC = {"kind": "mteb", "instructions": {"default": INSTRUCTION}}
METRICS = ("map_at_1000", "mrr_at_10", "ndcg_at_10")  # SciDocsRR's main score and MTEB_EXTRA_METRICS
N_QUERIES = 30


def _toy_data(seed: int = 0):
    """30 queries with 6-10 candidates each (qrels: 1 positive, 0 negative, as mteb's reranking conversion
    writes them); q07 has only negatives (kept by mteb, AP 0), q13 has no qrels at all (dropped by mteb)."""
    rng = np.random.default_rng(seed)
    queries = {f"q{i:02d}": f"query {i}" for i in range(N_QUERIES)}
    corpus = {f"d{j:03d}": f"doc {j}" for j in range(150)}
    top_ranked, qrels = {}, {}
    for i, q in enumerate(queries):
        cands = [f"d{j:03d}" for j in rng.choice(len(corpus), size=6 + i % 5, replace=False)]
        rel = rng.random(len(cands)) < 0.35
        rel[0], rel[-1] = True, False
        if q == "q07":
            rel[:] = False
        top_ranked[q] = cands
        qrels[q] = {} if q == "q13" else {d: int(r) for d, r in zip(cands, rel, strict=True)}
    return queries, corpus, top_ranked, qrels


def _toy_task_class(queries, corpus, top_ranked, qrels) -> type:
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    base = mteb_tasks.mteb_task_class("SciDocsRR")

    class ToyRerank(AbsTaskRetrieval):
        metadata = base.metadata.model_copy(update={"name": "ToyRerank", "dataset": {"path": "toy", "revision": "1"}})

        def load_data(self, num_proc=None, *, timer=None, **kwargs):
            self.dataset = {"default": {"test": {
                "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                "corpus": Dataset.from_dict(
                    {"id": list(corpus), "title": [""] * len(corpus), "text": list(corpus.values())}),
                "relevant_docs": {q: dict(d) for q, d in qrels.items()},
                "top_ranked": {q: list(d) for q, d in top_ranked.items()},
            }}}
            self.data_loaded = True

    return ToyRerank


@pytest.fixture
def toy(monkeypatch):
    """The toy task registered as an mteb task of this project, and its data."""
    data = _toy_data()
    cls = _toy_task_class(*data)
    custom = mteb_tasks._custom_task_classes
    monkeypatch.setattr(mteb_tasks, "_custom_task_classes", lambda: {**custom(), "ToyRerank": cls})
    return data


def _vectors(data, noise: float, seed: int) -> dict[str, np.ndarray]:
    """A vector per text: a positive is its query's vector plus noise, everything else random."""
    queries, corpus, _, qrels = data
    rng = np.random.default_rng(seed)
    vec = {t: rng.normal(size=16) for t in list(queries.values()) + list(corpus.values())}
    for q, docs in qrels.items():
        for d, r in docs.items():
            if r:
                vec[corpus[d]] = vec[queries[q]] + noise * rng.normal(size=16)
    return vec


def _score(model: str, vectors: dict[str, np.ndarray], out):
    table = task_kinds.task_table("ToyRerank", SPEC)
    lookup = {(t, INSTRUCTION): vectors[t] for t in table["text"]}
    run = evaluate.Run(model=model, recipe="none", task="ToyRerank", spec=SPEC, modes=("plain",), layers=(-1,),
                       seeds=(0, 1, 2))
    frame = evaluate.evaluate_task(run, table, lambda mode, layer: lookup, out / f"{model}.csv", out / model)
    return frame, item_data.read_items([out / f"{model}.items.parquet"])


def _expected_ap(data, vectors) -> dict[str, float]:
    """Per query mteb scores, its average precision over its candidates by cosine (sklearn; no ties here)."""
    queries, corpus, top_ranked, qrels = data
    out = {}
    for q, docs in qrels.items():
        if not docs:
            continue  # no qrels: mteb drops the query
        v = vectors[queries[q]]
        cos = [float(v @ vectors[corpus[d]] / np.linalg.norm(v) / np.linalg.norm(vectors[corpus[d]]))
               for d in top_ranked[q]]
        rel = [docs[d] for d in top_ranked[q]]
        out[q] = average_precision_score(rel, cos) if any(rel) else 0.0
    return out


def test_reranking_scores_keep_one_item_per_query_whose_mean_is_the_score(toy, tmp_path):
    vectors = {"near": _vectors(toy, 0.8, 1), "far": _vectors(toy, 2.5, 1)}
    frames, items = {}, {}
    for model, vec in vectors.items():
        frames[model], items[model] = _score(model, vec, tmp_path)
    for model, frame in frames.items():
        assert sorted(frame["metric"]) == sorted(METRICS) and frame["ci_low"].notna().all()
        its = items[model]
        assert set(its["statistic"]) == {"mean"} and set(its["group"]) == {""} and set(its["seed"]) == {-1}
        for row in frame.itertuples(index=False):
            mine = its[its["metric"] == row.metric].sort_values("item")
            assert list(mine["item"]) == list(range(N_QUERIES - 1))  # q13 (no qrels) is not an item
            mean = float(mine["value"].mean())
            # mteb reports map/ndcg rounded to 5 decimals, mrr unrounded
            if row.metric == "mrr_at_10":
                assert mean == pytest.approx(row.value, abs=1e-12)
            else:
                assert round(mean, 5) == row.value and abs(mean - row.value) <= 5e-6
            assert row.ci_low < row.value < row.ci_high
        # items follow the sorted query ids: item i is the i-th query's own average precision
        ap = _expected_ap(toy, vectors[model])
        got = its[its["metric"] == "map_at_1000"].sort_values("item")["value"].to_numpy()
        np.testing.assert_allclose(got, [ap[q] for q in sorted(ap)], atol=1e-9)
        assert ap["q07"] == 0.0  # only negatives: scored 0, as mteb averages it
    near = frames["near"].set_index("metric")
    far = frames["far"].set_index("metric")
    assert (near.loc["map_at_1000", "value"], far.loc["map_at_1000", "value"]) == (0.87877, 0.74288)
    assert near.loc["map_at_1000", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.7920, 0.9654], abs=5e-4)
    assert far.loc["map_at_1000", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.6263, 0.8516], abs=5e-4)
    # the two embedders' items pair up by query: one paired comparison over the same resamples
    data = item_data.ItemData(pd.concat(items.values(), ignore_index=True))
    est = {m: data.estimate([(m, "none", "ToyRerank", "plain", -1, "default", "map_at_1000")],
                            value=float(f.loc["map_at_1000", "value"])) for m, f in (("near", near), ("far", far))}
    diff = bootstrap.paired_difference(est["near"], est["far"])
    assert diff.outcome == "supported" and diff.low > 0
    assert (round(diff.low, 3), round(diff.high, 3)) == (0.064, 0.211)


def test_a_retrieval_score_without_saved_predictions_keeps_no_items_and_says_so(toy, tmp_path, monkeypatch,
                                                                                   caplog):
    monkeypatch.setattr(mteb_tasks, "_predictions", lambda folder: None)
    with caplog.at_level(logging.WARNING, logger="inbedder.mteb_tasks"):
        frame, items = _score("near", _vectors(toy, 0.8, 1), tmp_path)
    assert sorted(frame["metric"]) == sorted(METRICS) and frame["ci_low"].isna().all() and items.empty
    assert "mteb saved no predictions" in caplog.text and "keep no per-query items (no CI)" in caplog.text


def test_predictions_that_do_not_give_mtebs_score_keep_no_items(toy, tmp_path, monkeypatch, caplog):
    real = mteb_tasks._predictions

    def reversed_ranking(folder):
        saved = real(folder)
        for q, docs in saved["default"]["test"].items():
            saved["default"]["test"][q] = {d: -s for d, s in docs.items()}
        return saved

    monkeypatch.setattr(mteb_tasks, "_predictions", reversed_ranking)
    with caplog.at_level(logging.WARNING, logger="inbedder.mteb_tasks"):
        frame, items = _score("near", _vectors(toy, 0.8, 1), tmp_path)
    assert frame["ci_low"].isna().all() and items.empty
    assert "map_at_1000 averaged over 29 queries from mteb's predictions is" in caplog.text


def test_retrieval_per_query_follows_mtebs_averaging():
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    run = {"a": {"x": 0.9, "y": 0.5, "z": 0.1, "a": 0.95}, "b": {"x": 0.2, "y": 0.8}, "c": {"x": 0.3},
           "d": {"y": 0.4, "z": 0.6}}
    qrels = {"a": {"x": 0, "z": 1}, "b": {"x": 1, "y": 0}, "c": {}, "d": {"y": 0, "z": 0}}
    got = mteb_tasks.retrieval_per_query({q: r for q, r in run.items() if q != "c"}, qrels, [1, 10, 1000],
                                         ["map_at_1000", "mrr_at_10", "ndcg_at_10", "accuracy", "map_at_7",
                                          "cv_recall"], ignore_identical_ids=True)
    # "c" (no qrels) is not scored; "d" (only negatives) scores 0; "a"'s own id is dropped (z at rank 3)
    assert set(got) == {"map_at_1000", "mrr_at_10", "ndcg_at_10", "accuracy"}
    values, score = got["map_at_1000"]
    assert values == pytest.approx({"a": 1 / 3, "b": 0.5, "d": 0.0})
    assert score == round((1 / 3 + 0.5) / 3, 5) == 0.27778
    assert got["mrr_at_10"] == (pytest.approx({"a": 1 / 3, "b": 0.5, "d": 0.0}), pytest.approx(5 / 18, abs=1e-15))
    assert got["accuracy"][0] == {"a": 0.0, "b": 0.0, "d": 0.0}
    # the same numbers as mteb's own aggregate of that run (its identical id removed)
    clean = {q: {d: s for d, s in r.items() if d != q} for q, r in run.items() if q != "c"}
    mteb_map = calculate_retrieval_scores(clean, {q: d for q, d in qrels.items() if d}, [1, 10, 1000]).map
    assert mteb_map["MAP@1000"] == score
