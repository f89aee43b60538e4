"""Scoring a task end to end: the paper's sanity property with real minilm-l6 embeddings on the NLU++
mirror, mteb tasks offline (prepared tables, sockets blocked), robustness, own data, explanations, and
mteb 2.x retrieval MAP against mteb 1.x reranking MAP on hand-made candidate lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbedder import datasets, evaluate, item_data, metrics, mteb_tasks, sources, task_kinds, tasks
from inbedder.config import load_config
from inbedder.scores import read_scores, write_scores
from inbedder.text import format_prompt
from inbedder.vocabulary import CI_COLUMNS, SCORE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_config(ROOT / "config.yaml")
TASKS = CONFIG["tasks"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, mirror) -> Path:
    """Prepared NLU++, STS-B and Banking77 tables built from the mirror (the config's instructions are
    resolved in each task table)."""
    data = tmp_path_factory.mktemp("data")
    for source in ("nlupp", "stsb", "banking77"):
        sources.fetch(source, data / "raw" / source, mirror=mirror, offline=True)
    for name in ("nlupp_clustering", "nlupp_triplets", "nlupp_pairs", "stsb", "banking77"):
        datasets.prepare(name, data / "raw", data / "prepared" / f"{name}.parquet")
    return data


class MiniLM:
    """Real all-MiniLM-L6-v2 embeddings, each distinct input encoded once, as the encode stage's modes
    `plain` (the text) and `prefixed` ("{instruction}: {text}")."""

    def __init__(self, path: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu")
        self.memo: dict[str, np.ndarray] = {}

    def _encode(self, inputs: list[str]) -> list[np.ndarray]:
        todo = [s for s in dict.fromkeys(inputs) if s not in self.memo]
        if todo:
            self.memo.update(
                zip(todo, self.model.encode(todo, batch_size=64, show_progress_bar=False), strict=True)
            )
        return [self.memo[s] for s in inputs]

    def tables(self, prompts: list[dict]) -> dict[str, dict]:
        keys = [(p["text"], p["instruction"]) for p in prompts]
        plain = self._encode([t for t, _ in keys])
        prefixed = self._encode([format_prompt("instructor", i, t) for t, i in keys])
        return {
            "plain": dict(zip(keys, plain, strict=True)),
            "prefixed": dict(zip(keys, prefixed, strict=True)),
        }


@pytest.fixture(scope="module")
def st(minilm) -> MiniLM:
    return MiniLM(minilm)


def run_task(
    task, spec, st, data_dir, out: Path, limit, modes=("plain", "prefixed"), seeds=(0, 1, 2), answers=None
):
    table = task_kinds.task_table(task, spec, data_dir=data_dir or "data", limit=limit)
    tables = st.tables(task_kinds.task_prompts(task, spec, table))
    run = evaluate.Run(
        model="minilm-l6",
        recipe="none",
        task=task,
        spec=spec,
        modes=tuple(modes),
        layers=(-1,),
        seeds=tuple(seeds),
        cache_key="0123456789abcdef",
    )
    frame = evaluate.evaluate_task(
        run, table, lambda mode, layer: tables[mode], out / f"{task}.csv", out / task, answers=answers
    )
    return frame, tables


def value(frame, mode, subset, metric, seed=None):
    rows = frame[(frame["mode"] == mode) & (frame["subset"] == subset) & (frame["metric"] == metric)]
    if seed is not None:
        rows = rows[rows["seed"] == seed]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


# ----------------------------------------------------------------------------------------------
# the paper's sanity property on real data and a real embedder


def test_instruction_agnostic_embedder_sums_to_one_and_has_zero_pair_spearman(st, data_dir, tmp_path):
    spec = TASKS["NLUPPTwoViewTriplets"]
    trip, _ = run_task("NLUPPTwoViewTriplets", spec, st, data_dir, tmp_path, limit=60)
    assert list(trip.columns) == list(SCORE_COLUMNS) + list(CI_COLUMNS)
    action, obj = (
        value(trip, "plain", "action", "success_rate"),
        value(trip, "plain", "object", "success_rate"),
    )
    assert action + obj == pytest.approx(1.0, abs=1e-9)  # plain ignores the instruction: mirrored triplets
    assert value(trip, "plain", "hmean", "success_rate") == pytest.approx(
        metrics.harmonic_mean([action, obj])
    )
    # cross view of an instruction-agnostic embedder is the view itself
    assert value(trip, "plain", "action", "success_rate_crossview") == pytest.approx(action)
    assert set(trip["n"][trip["subset"] == "action"]) == {60}

    pairs, _ = run_task(
        "NLUPPInstructedPairs", TASKS["NLUPPInstructedPairs"], st, data_dir, tmp_path, limit=60
    )
    assert value(pairs, "plain", "all", "spearman") == pytest.approx(0.0, abs=1e-9)
    assert value(pairs, "plain", "action", "spearman") == pytest.approx(
        -value(pairs, "plain", "object", "spearman")
    )
    # the prefixed instruction changes the embedding: the sum moves away from 1, Spearman from 0
    prefixed_sum = value(trip, "prefixed", "action", "success_rate") + value(
        trip, "prefixed", "object", "success_rate"
    )
    assert prefixed_sum != pytest.approx(1.0, abs=1e-9)
    assert value(pairs, "prefixed", "all", "spearman") != pytest.approx(0.0, abs=1e-6)


def test_two_view_clustering_per_seed_hmean_crossview_and_explanations(st, data_dir, tmp_path):
    spec = TASKS["NLUPPTwoViewClustering"]
    table = task_kinds.task_table("NLUPPTwoViewClustering", spec, data_dir=data_dir, limit=80)
    # stand-in answers: the gold label of the view asked about, in words ("direct debit")
    answers = {
        (t, i): f"the {lab.replace('_', ' ')}"
        for t, i, lab in table[["text", "instruction", "label"]].itertuples(index=False)
    }
    frame, tables = run_task(
        "NLUPPTwoViewClustering", spec, st, data_dir, tmp_path, limit=80, modes=("prefixed",), answers=answers
    )
    assert sorted(frame["seed"].dropna().unique()) == [0, 1, 2]
    assert len(frame) == 3 * (2 + 2 + 1)  # per seed: 2 views, 2 cross views, hmean
    rows = table[table["subset"] == "object"]
    x = np.stack([tables["prefixed"][(t, spec["instructions"]["object"])] for t in rows["text"]])
    expected, _ = metrics.kmeans_v_measure(x, list(rows["label"]), seed=1)
    assert value(frame, "prefixed", "object", "v_measure", seed=1) == pytest.approx(expected)
    for seed in (0, 1, 2):
        views = [value(frame, "prefixed", v, "v_measure", seed) for v in ("action", "object")]
        assert value(frame, "prefixed", "hmean", "v_measure", seed) == pytest.approx(
            metrics.harmonic_mean(views)
        )
    # mteb result layout, one file per seed
    res = (
        tmp_path
        / "NLUPPTwoViewClustering"
        / "results"
        / "inbedder-repro__minilm-l6-none"
        / "prefixed.L-1.0123456789ab"
    )
    saved = json.loads((res / "experiments" / "seed_2" / "NLUPPTwoViewClustering.json").read_text())
    object_entry = next(e for e in saved["scores"]["test"] if e["hf_subset"] == "object")
    assert object_entry["main_score"] == pytest.approx(
        value(frame, "prefixed", "object", "v_measure", seed=2)
    )
    # explanations: from the answers, one entry per view, every cluster with words and label counts
    expl = json.loads((tmp_path / "NLUPPTwoViewClustering" / "explanations.json").read_text())
    assert expl["source"] == "answers" and {e["subset"] for e in expl["explanations"]} == {"action", "object"}
    clusters = expl["explanations"][0]["clusters"]
    assert sum(c["size"] for c in clusters) == int(
        (table["subset"] == "action").sum()
    )  # 80 texts (+ repeats)
    assert all(sum(c["labels"].values()) == c["size"] for c in clusters)
    answer_words = {w for a in answers.values() for w in a.split()}
    top = [w for c in clusters for w, _ in c["top_words"]]
    assert top and set(top) <= answer_words - {"the"}  # words of the answers, stopwords dropped


def assert_items_reproduce_the_scores(frame, items_file, metrics_kept):
    """Every score of `metrics_kept` has per-item data whose statistic is the score, and a CI around it."""
    series = item_data.series_of(item_data.read_items([items_file]), seeds=("seed",))
    kept = frame[frame["metric"].isin(metrics_kept) & (frame["subset"] != "hmean")]
    assert len(kept) and kept["ci_low"].notna().all()
    for row in kept.itertuples(index=False):
        key = (row.model, row.recipe, row.task, row.mode, int(row.layer), row.subset, row.metric)
        s = series[key]
        seed = -1 if pd.isna(row.seed) else int(row.seed)
        assert s.point()[s.units.index((seed,))] == pytest.approx(row.value, abs=1e-9), key
        assert row.ci_low - 1e-9 <= row.value <= row.ci_high + 1e-9 or row.metric.startswith("v_measure"), key
    hm = frame[frame["subset"] == "hmean"]
    assert hm.empty or hm["ci_low"].notna().all()


def test_per_item_data_reproduces_every_score_and_bounds_its_ci(st, data_dir, tmp_path):
    for task, kept in (("NLUPPTwoViewTriplets", ("success_rate", "success_rate_crossview")),
                       ("NLUPPInstructedPairs", ("spearman",)),
                       ("NLUPPTwoViewClustering", ("v_measure", "v_measure_crossview"))):
        frame, _ = run_task(task, TASKS[task], st, data_dir, tmp_path, limit=40, modes=("prefixed",), seeds=(0, 1))
        assert_items_reproduce_the_scores(frame, tmp_path / f"{task}.items.parquet", kept)
        on_disk = read_scores(tmp_path / f"{task}.csv")
        assert list(on_disk.columns) == list(SCORE_COLUMNS) + list(CI_COLUMNS)


# ----------------------------------------------------------------------------------------------
# mteb tasks offline


def test_mteb_tasks_run_offline_on_prepared_tables(st, data_dir, tmp_path):
    sts, _ = run_task(
        "STSBenchmark", TASKS["STSBenchmark"], st, data_dir, tmp_path, limit=80, modes=("plain",)
    )
    assert set(sts["metric"]) == {"cosine_spearman", "cosine_pearson"} and sts["seed"].isna().all()
    assert value(sts, "plain", "default", "cosine_spearman") > 0.6  # all-MiniLM-L6-v2: ~0.82 on the full set
    res = tmp_path / "STSBenchmark" / "results" / "inbedder-repro__minilm-l6-none" / "plain.L-1.0123456789ab"
    saved = json.loads((res / "STSBenchmark.json").read_text())
    assert saved["task_name"] == "STSBenchmark" and saved["dataset_revision"].endswith("-limit80")
    # mteb's Spearman is that of our per-pair cosine similarities
    assert_items_reproduce_the_scores(sts, tmp_path / "STSBenchmark.items.parquet", ("cosine_spearman",))

    spec = TASKS["Banking77Clustering"]
    b77, tables = run_task("Banking77Clustering", spec, st, data_dir, tmp_path, limit=300, modes=("plain",))
    assert sorted(b77["seed"]) == [0, 1, 2] and set(b77["metric"]) == {"v_measure"}
    res = (
        tmp_path
        / "Banking77Clustering"
        / "results"
        / "inbedder-repro__minilm-l6-none"
        / "plain.L-1.0123456789ab"
    )
    assert (res / "experiments" / "seed_1" / "Banking77Clustering.json").exists()
    # mteb's legacy clustering (one cluster set) is exactly our MiniBatchKMeans V-measure, seed for seed
    table = task_kinds.task_table("Banking77Clustering", spec, data_dir=data_dir, limit=300)
    instruction = spec["instructions"]["default"]
    x = np.stack([tables["plain"][(t, instruction)] for t in table["text"]])
    for seed in (0, 1, 2):
        ours, _ = metrics.kmeans_v_measure(x, list(table["label"]), seed=seed)
        assert value(b77, "plain", "default", "v_measure", seed) == pytest.approx(ours, abs=1e-12)
    expl = json.loads((tmp_path / "Banking77Clustering" / "explanations.json").read_text())
    assert expl["source"] == "texts" and expl["explanations"][0]["subset"] == "set0"
    # mteb's own cluster assignment of every seed is kept per text
    assert_items_reproduce_the_scores(b77, tmp_path / "Banking77Clustering.items.parquet", ("v_measure",))


_FRESH_PROCESS_SCORING = """
import pickle, sys
from pathlib import Path
from inbedder import evaluate, task_kinds
task, spec, data_dir, lookup, out = pickle.loads(Path(sys.argv[1]).read_bytes())
table = task_kinds.task_table(task, spec, data_dir=data_dir, limit=120)
run = evaluate.Run(model="minilm-l6", recipe="none", task=task, spec=spec, modes=("plain",), layers=(-1,),
                   seeds=(0, 1, 2), cache_key="0123456789abcdef")
evaluate.evaluate_task(run, table, lambda mode, layer: lookup, Path(out) / f"{task}.csv", Path(out) / task)
print(sorted(m for m in ("transformers", "sentence_transformers") if m in sys.modules))
"""


@pytest.mark.parametrize("task", ["STSBenchmark", "Banking77Clustering"])
def test_mteb_tasks_score_without_loading_sentence_transformers(st, data_dir, tmp_path, task):
    """An evaluate job of an mteb task imports neither sentence-transformers nor transformers (mteb.evaluate
    would, to type-check the model: ~3 s per job), and scores exactly as in a process where they are loaded."""
    import pickle
    import subprocess
    import sys

    spec = TASKS[task]
    _, tables = run_task(task, spec, st, data_dir, tmp_path / "loaded", limit=120, modes=("plain",))
    assert "sentence_transformers" in sys.modules  # loaded here, by the MiniLM fixture
    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps((task, spec, data_dir, tables["plain"], tmp_path / "fresh")))
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCORING, str(job)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # none of them imported
    fresh = read_scores(tmp_path / "fresh" / f"{task}.csv")
    pd.testing.assert_frame_equal(fresh, read_scores(tmp_path / "loaded" / f"{task}.csv"))


def test_the_placeholder_is_gone_after_the_call_and_a_loaded_package_is_left_alone(monkeypatch):
    import sys

    real = sys.modules.get("sentence_transformers")
    monkeypatch.delitem(sys.modules, "sentence_transformers", raising=False)
    with mteb_tasks.sentence_transformers_unloaded():
        from sentence_transformers import CrossEncoder, SentenceTransformer

        assert CrossEncoder is SentenceTransformer and not isinstance(object(), SentenceTransformer)
    assert "sentence_transformers" not in sys.modules
    if real is not None:
        monkeypatch.setitem(sys.modules, "sentence_transformers", real)
        with mteb_tasks.sentence_transformers_unloaded():
            assert sys.modules["sentence_transformers"] is real
        assert sys.modules["sentence_transformers"] is real


def test_a_text_missing_from_the_cache_is_a_loud_error(data_dir, tmp_path):
    spec = TASKS["STSBenchmark"]
    run = evaluate.Run(model="m", recipe="none", task="STSBenchmark", spec=spec, modes=("plain",), layers=(-1,),
                       seeds=(0, 1, 2))
    table = task_kinds.task_table("STSBenchmark", spec, data_dir=data_dir, limit=5)
    with pytest.raises(KeyError, match="not in the encode cache"):
        evaluate.evaluate_task(run, table, lambda mode, layer: {}, tmp_path / "s.csv", tmp_path / "s")
    assert not (tmp_path / "s.csv").exists()


def _toy_rerank_task(queries, corpus, top_ranked, qrels):
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    base = mteb_tasks.mteb_task_class("SciDocsRR")

    class ToyRerank(AbsTaskRetrieval):
        metadata = base.metadata.model_copy(
            update={"name": "ToyRerank", "dataset": {"path": "toy", "revision": "1"}}
        )

        def load_data(self, num_proc=None, *, timer=None, **kwargs):
            self.dataset = {
                "default": {
                    "test": {
                        "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                        "corpus": Dataset.from_dict(
                            {"id": list(corpus), "title": [""] * len(corpus), "text": list(corpus.values())}
                        ),
                        "relevant_docs": qrels,
                        "top_ranked": top_ranked,
                    }
                }
            }
            self.data_loaded = True

    return ToyRerank()


def test_mteb2_retrieval_map_equals_mteb1_reranking_map_on_candidate_lists(tmp_path):
    """The paper's AskUbuntu/SciDocsRR/StackOverflow columns are mteb 1.x reranking MAP; mteb 2.x scores
    the same candidate lists as retrieval map_at_1000. On lists with a positive and a negative each and
    no tied scores, the two agree."""
    import mteb

    rng = np.random.default_rng(0)
    queries = {f"q{i}": f"query {i}" for i in range(6)}
    corpus = {f"d{j}": f"doc {j}" for j in range(30)}
    vectors = {t: rng.normal(size=16) for t in list(queries.values()) + list(corpus.values())}
    top_ranked, qrels, relevant = {}, {}, []
    for i, q in enumerate(queries):
        cands = [f"d{j}" for j in rng.choice(30, size=5 + i, replace=False)]
        rel = [bool(x) for x in rng.integers(0, 2, size=len(cands))]
        rel[0], rel[-1] = True, False
        top_ranked[q], qrels[q] = cands, {d: 1 for d, r in zip(cands, rel, strict=True) if r}
        relevant.append(rel)
    task = _toy_rerank_task(queries, corpus, top_ranked, qrels)
    instruction = "What is the paper about based on the title?"
    lookup = {(t, instruction): v for t, v in vectors.items()}
    run = evaluate.Run(model="toy", recipe="none", task="ToyRerank", spec={}, modes=("plain",), layers=(-1,),
                       seeds=(0, 1, 2))
    encoder = mteb_tasks.cached_encoder(lookup, instruction, run.model_meta("plain", -1))
    result = mteb.evaluate(encoder, task, cache=None, co2_tracker=False, show_progress_bar=False)
    map2 = result.task_results[0].scores["test"][0]["map_at_1000"]
    q = np.stack([vectors[t] for t in queries.values()])
    cands = [np.stack([vectors[corpus[d]] for d in top_ranked[k]]) for k in queries]
    map1 = metrics.reranking_map_v1(q, cands, relevant)
    assert map2 == pytest.approx(map1, abs=1e-5)  # mteb 2.x rounds to 5 decimals
    assert 0.3 < map1 < 1.0


# ----------------------------------------------------------------------------------------------
# robustness, own data, collection


def test_robustness_groups_dci_dii(tmp_path):
    rng = np.random.default_rng(0)
    labels = [f"l{i % 4}" for i in range(40)]
    texts = [f"text {i}" for i in range(40)]
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"subset": "v", "instruction": "q", "text": texts, "label": labels}).to_parquet(
        prepared / "toy_clustering.parquet"
    )
    spec = {
        "kind": "robustness",
        "dataset": "toy_clustering",
        "subset": "v",
        "instructions": {g: [f"{g} {i}" for i in range(10)] for g in tasks.ROBUSTNESS_GROUPS},
    }
    centers = rng.normal(scale=5, size=(4, 8))
    noise = {"correct": 0.1, "implicit": 3.0, "incorrect": None}
    lookup = {}
    for group, _, instruction in tasks.robustness_instructions("Toy", spec):
        for t, lab in zip(texts, labels, strict=True):
            signal = centers[int(lab[1])] if noise[group] is not None else 0
            lookup[(t, instruction)] = signal + rng.normal(scale=noise[group] or 1.0, size=8)
    run = evaluate.Run(model="m", recipe="none", task="Toy", spec=spec, modes=("1st-gen",), layers=(-1,),
                       seeds=(0, 1, 2))
    table = task_kinds.task_table("Toy", spec, data_dir=tmp_path)
    frame = evaluate.evaluate_task(run, table, lambda mode, layer: lookup, tmp_path / "r.csv", tmp_path / "r")
    per_instruction = frame[frame["subset"].str.contains("/")]
    assert len(per_instruction) == 30 * 3 and set(per_instruction["metric"]) == {"v_measure"}
    for seed in (0, 1, 2):
        assert value(frame, "1st-gen", "correct", "v_measure_mean", seed) > 0.9
        assert value(frame, "1st-gen", "all", "dci", seed) > 0.5
        correct = per_instruction[
            per_instruction["subset"].str.startswith("correct/") & (per_instruction["seed"] == seed)
        ]
        wrong = per_instruction[
            per_instruction["subset"].str.startswith("incorrect/") & (per_instruction["seed"] == seed)
        ]
        assert value(frame, "1st-gen", "all", "dci", seed) == pytest.approx(
            correct["value"].min() - wrong["value"].max()
        )


def test_own_data_task_end_to_end(st, root, tmp_path):
    spec = dict(TASKS["OwnDataExample"])
    spec["path"] = str(root / spec["path"])
    frame, _ = run_task("OwnDataExample", spec, st, None, tmp_path, limit=None, modes=("plain",))
    assert set(frame["metric"]) == {"silhouette", "v_measure"}
    assert np.mean(frame[frame.metric == "v_measure"]["value"]) > 0.4  # four plain topics, 10 messages each
    assignments = pd.read_csv(tmp_path / "OwnDataExample" / "assignments.csv")
    assert len(assignments) == 40 and assignments["cluster"].nunique() == 4
    expl = json.loads((tmp_path / "OwnDataExample" / "explanations.json").read_text())
    words = {w for c in expl["explanations"][0]["clusters"] for w, _ in c["top_words"]}
    assert {"card", "loan"} & words


def test_collect_scores_concatenates_and_records_skipped_tasks(tmp_path):
    rows = [
        {
            "model": "m",
            "recipe": "none",
            "mode": "plain",
            "layer": -1,
            "task": t,
            "subset": "default",
            "metric": "v_measure",
            "value": v,
            "seed": s,
            "n": 10,
        }
        for t, v, s in (("A", 0.5, 0), ("B", 0.25, None))
    ]
    for r in rows:
        write_scores(pd.DataFrame([r]), tmp_path / f"{r['task']}.csv")
    skipped = {"SciDocsRR": "hub-only data not available in this run"}
    frame = evaluate.collect_scores(
        [tmp_path / "A.csv", tmp_path / "B.csv"], skipped, tmp_path / "scores.csv", tmp_path / "skipped.csv"
    )
    assert len(frame) == 2
    back = read_scores(tmp_path / "scores.csv")
    assert list(back.columns) == list(SCORE_COLUMNS) + list(CI_COLUMNS)
    assert back["seed"].isna().sum() == 1 and back["ci_low"].isna().all()  # written without CIs: kept empty
    assert pd.read_csv(tmp_path / "skipped.csv").to_dict("records") == [
        {"task": "SciDocsRR", "reason": "hub-only data not available in this run"}
    ]


def test_evaluate_cache_scores_a_real_encode_cache(st, data_dir, tmp_path, minilm):
    """The rules' path: one task-table file, inbedder.encode writes the cache from it, inbedder.pooling serves
    it, evaluate scores the same file; the scores match."""
    from inbedder import encode

    spec = TASKS["NLUPPTwoViewTriplets"]
    table = tmp_path / "tasks" / "NLUPPTwoViewTriplets.parquet"
    task_kinds.build_task_table("NLUPPTwoViewTriplets", spec, table, data_dir=data_dir, limit=30)
    encode.encode_task(encode.EncodeJob(minilm, "sentence-encoder", "inbedder", max_new_tokens=0, layers=[-1],
                                        device="cpu", dtype="auto", decoding="greedy"), table,
                       tmp_path / "cache", progress=False)
    frame = evaluate.evaluate_cache(
        tmp_path / "cache",
        table,
        tmp_path / "s.csv",
        tmp_path / "s",
        model="minilm-l6",
        recipe="none",
        task="NLUPPTwoViewTriplets",
        spec=spec,
        modes=["plain", "prefixed"],
        layers=[-1],
        seeds=[0, 1, 2],
    )
    reference, _ = run_task("NLUPPTwoViewTriplets", spec, st, data_dir, tmp_path / "ref", limit=30)
    merged = frame.merge(reference, on=["mode", "subset", "metric"], suffixes=("", "_ref"))
    assert len(merged) == len(frame) == len(reference) == 2 * 5
    assert (merged["value"] - merged["value_ref"]).abs().max() <= 1 / 30 + 1e-9  # at most one near-tie flips
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    revision = f"plain.L-1.{meta['cache_key'][:12]}"
    assert (
        tmp_path / "s" / "results" / "inbedder-repro__minilm-l6-none" / revision / "NLUPPTwoViewTriplets.json"
    ).exists()


def test_modes_stored_whole_are_scored_at_one_layer_only():
    assert evaluate.layers_of("1st-gen", [-1, 6]) == [-1, 6]
    assert evaluate.layers_of("avg-gen+filter", [6]) == [6]
    assert evaluate.layers_of("re-encode", [-1, 6]) == [-1]
    assert evaluate.layers_of("prefixed", [-1]) == [-1]
