"""mteb tasks on cached embeddings: loading a task (mteb's hub data or a task table), listing the texts it
will ask for, and running it on the encode cache.

With `tasks.<name>.dataset` set, the task table replaces mteb's own loading (legacy clustering tasks:
each `subset` one cluster set; STS tasks: `text1, text2, score`); without, mteb loads its hub data
and `limits.task_rows` keeps that many queries of a retrieval/reranking task (with their qrels,
candidates and the corpus they reach). Clustering tasks run once per seed, the seed reaching mteb's
KMeans.

Per-item data for the bootstrap (`_mteb_items`): legacy clustering keeps mteb's cluster id per text, STS
the cosine similarity per pair, retrieval/reranking one value per query (its average precision, nDCG,
reciprocal rank, ... as mteb computed it from its saved predictions), so every such score carries a CI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from inbedder.item_data import item_id, item_rows, pair_id
from inbedder.metrics import paired_cosine_similarity
from inbedder.tasks import (
    Lookup,
    Outcome,
    Score,
    Scoring,
    TaskError,
    embed_texts,
    keep_first,
    mteb_task_name,
    table_revision,
)

log = logging.getLogger(__name__)

# Extra mteb scores kept beside each task's main score, by mteb task type.
MTEB_EXTRA_METRICS = {
    "STS": ("cosine_pearson",),
    "Reranking": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
    "Retrieval": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
}


# ----------------------------------------------------------------------------------------------
# task classes and data


def _custom_task_classes() -> dict[str, type]:
    """mteb-style tasks that mteb does not ship: Banking77 as one clustering set (prepared table only)."""
    from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
    from mteb.abstasks.task_metadata import TaskMetadata

    class Banking77Clustering(AbsTaskClusteringLegacy):
        metadata = TaskMetadata(
            name="Banking77Clustering",
            description="Banking77 customer queries clustered by their 77 intents (one cluster set).",
            reference="https://arxiv.org/abs/2003.04807",
            dataset={"path": "PolyAI-LDN/task-specific-datasets:banking_data", "revision": "57ec275d8078af65b7731c2a98be812d844a6d6b"},
            type="Clustering",
            category="t2c",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="v_measure",
            date=("2020-01-01", "2020-12-31"),
            domains=["Written"],
            task_subtypes=[],
            license="cc-by-4.0",
            annotations_creators="human-annotated",
            dialect=[],
            sample_creation="found",
            bibtex_citation="",
        )

    return {"Banking77Clustering": Banking77Clustering}


def mteb_task_class(name: str) -> type:
    """The mteb task class of that name (mteb's registry, or this project's custom tasks)."""
    custom = _custom_task_classes()
    if name in custom:
        return custom[name]
    import mteb

    try:
        return type(mteb.get_task(name))
    except KeyError as err:
        raise TaskError(f"mteb has no task {name!r} ({err})") from err


def is_legacy_clustering(cls: type) -> bool:
    from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

    return issubclass(cls, AbsTaskClusteringLegacy)


def is_sts(cls: type) -> bool:
    from mteb.abstasks.sts import AbsTaskSTS

    return issubclass(cls, AbsTaskSTS)


def is_retrieval(cls: type) -> bool:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return issubclass(cls, AbsTaskRetrieval)


def dataset_from_table(cls: type, table: pd.DataFrame, task_name: str) -> Any:
    """The `dataset` attribute mteb expects, built from a prepared table."""
    from datasets import Dataset, DatasetDict

    split = cls.metadata.eval_splits[0]
    if is_legacy_clustering(cls):
        if "text" not in table.columns:
            raise TaskError(f"tasks.{task_name}: {cls.metadata.name} is a clustering task; table needs text, label")
        rows = {"sentences": [], "labels": []}
        for _, group in table.groupby("subset", sort=False):
            rows["sentences"].append([str(t) for t in group["text"]])
            rows["labels"].append([str(x) for x in group["label"]])
        return DatasetDict({split: Dataset.from_dict(rows)})
    if is_sts(cls):
        if "text1" not in table.columns:
            raise TaskError(f"tasks.{task_name}: {cls.metadata.name} is an STS task; table needs text1, text2, score")
        a, b = cls.column_names
        return DatasetDict({split: Dataset.from_dict({
            a: [str(t) for t in table["text1"]],
            b: [str(t) for t in table["text2"]],
            "score": [float(s) for s in table["score"]],
        })})
    raise TaskError(
        f"tasks.{task_name}.dataset: replacing the data of {cls.metadata.name} "
        f"({cls.__mro__[1].__name__}) is supported for legacy clustering and STS tasks only"
    )


def limit_retrieval(dataset: dict, limit: int) -> None:
    """Keep `limit` queries per split (seeded), their qrels, candidates, and the corpus they reach."""
    for subset in dataset.values():
        for split_data in subset.values():
            queries = split_data["queries"]
            keep = keep_first([str(q) for q in queries["id"]], limit)
            queries = queries.select([i for i, k in enumerate(keep) if k])
            ids = set(queries["id"])
            split_data["queries"] = queries
            split_data["relevant_docs"] = {q: d for q, d in split_data["relevant_docs"].items() if q in ids}
            top = split_data.get("top_ranked")
            if top is not None:
                split_data["top_ranked"] = {q: d for q, d in top.items() if q in ids}
            reach = {d for docs in split_data["relevant_docs"].values() for d in docs}
            if top is not None:
                reach |= {d for docs in split_data["top_ranked"].values() for d in docs}
            corpus = split_data["corpus"]
            split_data["corpus"] = corpus.select([i for i, d in enumerate(corpus["id"]) if d in reach])


def mteb_task(task_name: str, spec: dict, table: pd.DataFrame | None = None, limit: int | None = None,
              seed: int = 42) -> Any:
    """A loaded mteb task: the task table's rows when `dataset` is set, else mteb's hub data cut to `limit`."""
    base = mteb_task_class(mteb_task_name(task_name, spec))
    # The paper's task versions are run on purpose: no "superseded by .v2" warning on every run.
    updates: dict[str, Any] = {"superseded_by": None}
    attrs: dict[str, Any] = {}
    if is_legacy_clustering(base):  # (mteb's v2 clustering tasks read self.seed themselves)

        def _evaluate_subset(self, *args, **kwargs):  # the task's seed reaches mteb's KMeans
            kwargs.setdefault("seed", self.seed)
            return base._evaluate_subset(self, *args, **kwargs)

        attrs["_evaluate_subset"] = _evaluate_subset
    if "dataset" in spec:
        if table is None:
            raise TaskError(f"tasks.{task_name}: an mteb task on dataset {spec['dataset']!r} is built from its task table")
        built = dataset_from_table(base, table, task_name)
        updates["dataset"] = {"path": f"inbedder:data/prepared/{spec['dataset']}.parquet",
                              "revision": table_revision(table)}

        def load_data(self, num_proc=None, *, timer=None, **kwargs):  # replaces mteb's hub loading
            if self.data_loaded:
                return
            self.dataset = built
            self.data_loaded = True

        attrs["load_data"] = load_data
    attrs["metadata"] = base.metadata.model_copy(update=updates)
    cls = type(base.__name__, (base,), attrs)
    task = cls(seed=seed)
    task.load_data()
    if "dataset" not in spec and limit is not None:
        if is_retrieval(base):
            task.convert_v1_dataset_format_to_v2(num_proc=None)
            limit_retrieval(task.dataset, limit)
        else:
            raise TaskError(f"tasks.{task_name}: a row limit (limits.task_rows or tasks.{task_name}.rows) on hub "
                            f"task {base.metadata.name} is only supported for retrieval/reranking tasks")
    return task


def texts_of_loaded_task(task: Any) -> list[str]:
    """Texts of a loaded mteb task, as mteb's dataloaders hand them to `encode`."""
    cls = type(task)
    texts: list[str] = []
    splits = task.metadata.eval_splits
    if is_retrieval(cls):
        from mteb._create_dataloaders import _retrieval_texts
        from mteb.types import PromptType

        task.convert_v1_dataset_format_to_v2(num_proc=None)
        for subset in task.dataset.values():
            for split in splits:
                data = subset[split]
                texts += _retrieval_texts(data["corpus"], PromptType.document)
                texts += _retrieval_texts(data["queries"], PromptType.query)
        return texts
    datasets = task.dataset.values() if task.metadata.is_multilingual else [task.dataset]
    for ds in datasets:
        for split in splits:
            data = ds[split]
            if is_legacy_clustering(cls):
                for row in data[task.input_column_name]:
                    texts += [str(t) for t in row]
            elif is_sts(cls):
                a, b = cls.column_names
                texts += [str(t) for t in data[a]] + [str(t) for t in data[b]]
            elif hasattr(task, "input_column_name"):
                texts += [str(t) for t in data[task.input_column_name]]
            else:
                raise TaskError(f"{task.metadata.name}: cannot list the texts of a {cls.__mro__[1].__name__} task")
    return texts


# ----------------------------------------------------------------------------------------------
# running a task on cached embeddings


def _cached_encoder_class() -> type:
    from mteb.models.abs_encoder import AbsEncoder

    class CachedEmbeddings(AbsEncoder):
        """mteb encoder that serves embeddings from the encode cache under one instruction."""

        def __init__(self, lookup: Lookup, instruction: str, meta: Any) -> None:
            self.model = None
            self.lookup = lookup
            self.instruction = instruction
            self.mteb_model_meta = meta
            self.texts: set[str] = set()

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [str(t) for batch in inputs for t in batch["text"]]
            self.texts.update(texts)
            return embed_texts(self.lookup, texts, self.instruction, f"mteb task {task_metadata.name}")

    return CachedEmbeddings


def cached_encoder(lookup: Lookup, instruction: str, meta: Any) -> Any:
    """An mteb `AbsEncoder` answering `encode` from a (text, instruction) -> vector table."""
    return _cached_encoder_class()(lookup, instruction, meta)


@contextlib.contextmanager
def sentence_transformers_unloaded() -> Iterator[None]:
    """Let `mteb.evaluate` run without importing sentence-transformers, when it is not loaded yet.

    `mteb.evaluate` imports `SentenceTransformer` and `CrossEncoder` only to ask whether the model is one
    of them (to wrap it); ours is an mteb `AbsEncoder`, never either. That import brings transformers'
    modelling code and more: ~3 s of the ~7.5 s an evaluate job of an mteb task took here, in a job that
    needs none of it. For the call, the two names resolve to a class nothing is an instance of; the
    placeholder is removed afterwards, so a later real import is unaffected.
    """
    if "sentence_transformers" in sys.modules:
        yield
        return
    placeholder = types.ModuleType("sentence_transformers", "placeholder: not loaded (inbedder.mteb_tasks)")

    class NotLoaded:  # no object is an instance of it
        pass

    placeholder.SentenceTransformer = placeholder.CrossEncoder = NotLoaded  # type: ignore[attr-defined]
    sys.modules["sentence_transformers"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("sentence_transformers") is placeholder:
            del sys.modules["sentence_transformers"]


def score_mteb(task_name: str, spec: dict, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
    """Run the mteb task (once per seed for clustering) on cached embeddings; mteb's results cached in out_dir."""
    import mteb

    out = Outcome()
    instruction = str(table["instruction"].iloc[0])
    task = mteb_task(task_name, spec, table=table if "dataset" in spec else None, limit=table.attrs.get("limit"),
                     seed=scoring.seeds[0])
    clustering = task.metadata.type == "Clustering"
    keep_predictions = clustering or is_retrieval(type(task))  # cluster ids; per-query rankings
    seeds: list[int | None] = list(scoring.seeds) if clustering else [None]
    cache = mteb.ResultCache(scoring.out_dir)
    main = task.metadata.main_score
    extras = MTEB_EXTRA_METRICS.get(task.metadata.type, ())
    for i, seed in enumerate(seeds):
        if seed is not None:
            task.seed = seed
        meta = scoring.model_meta(seed)
        encoder = cached_encoder(lookup, instruction, meta)
        with (tempfile.TemporaryDirectory() as predictions, threadpool_limits(limits=1),
              sentence_transformers_unloaded()):
            result = mteb.evaluate(
                encoder, task, cache=cache, overwrite_strategy="always", co2_tracker=False,
                prediction_folder=predictions if keep_predictions else None,
                show_progress_bar=False, encode_kwargs={"batch_size": 512},
            )
            saved = _predictions(Path(predictions)) if keep_predictions else None
        if result.exceptions:
            raise RuntimeError(f"mteb task {task_name}: {result.exceptions}")
        if clustering and i == 0:
            out.clusterings += _mteb_clusterings(task, saved, instruction, seed)
        (task_result,) = result.task_results
        for split, entries in task_result.scores.items():
            for entry in entries:
                subset = str(entry["hf_subset"]) if len(task_result.scores) == 1 else f"{entry['hf_subset']}/{split}"
                kept = [m for m in dict.fromkeys((main, *extras)) if m in entry]
                for metric in kept:
                    out.scores.append(Score(subset, metric, float(entry[metric]), seed, len(encoder.texts)))
                if len(task_result.scores) == 1:
                    out.items += _mteb_items(task, table, lookup, instruction, saved, entry, split, kept, seed)
    return out


def _predictions(folder: Path) -> dict | None:
    """mteb's saved predictions of one evaluation (cluster assignments of a clustering task; per query the
    scored documents of a retrieval task), or None."""
    files = list(folder.glob("*_predictions.json"))
    return json.loads(files[0].read_text(encoding="utf-8")) if files else None


def _mteb_items(task: Any, table: pd.DataFrame, lookup: Lookup, instruction: str, saved: dict | None, entry: dict,
                split: str, metrics: list[str], seed: int | None) -> list[dict]:
    """What the bootstrap needs per item of an mteb score (`metrics`: the scores kept of this entry): per text
    of every cluster set its cluster (legacy clustering: mteb's own assignment) and label; per pair of an STS
    table its cosine similarity and gold score; per query of a retrieval/reranking task its value of each
    metric (`retrieval_items`). Other kinds keep none: their scores carry no CI."""
    cls = type(task)
    hf_subset = str(entry["hf_subset"])
    if is_retrieval(cls):
        return retrieval_items(task, saved, entry, split, metrics, seed)
    metric = task.metadata.main_score
    if metric not in metrics:
        return []
    if is_legacy_clustering(cls) and saved is not None and metric == "v_measure":
        data = task.dataset[split]
        sets = saved.get(hf_subset, {}).get(split) or []
        labels = [[str(x) for x in row] for row in data[task.label_column_name]]
        kept = [i for i, lab in enumerate(labels) if len(set(lab)) > 1]  # mteb skips one-label sets
        if len(sets) != len(kept) or any(len(sets[j]) != len(labels[i]) for j, i in enumerate(kept)) \
                or len(kept) != len(labels):
            return []
        clusters = np.concatenate([np.asarray(c) for c in sets])
        groups = [str(i) for i in kept for _ in labels[i]]
        texts = [[str(t) for t in row] for row in data[task.input_column_name]] \
            if task.input_column_name in data.column_names else None
        ids = [item_id(t) for i in kept for t in texts[i]] if texts is not None else None
        return item_rows(hf_subset, metric, seed, "v_measure", clusters,
                         labels=[x for i in kept for x in labels[i]], groups=groups, ids=ids)
    if is_sts(cls) and "text1" in table.columns and metric in ("cosine_spearman", "spearman"):
        a = embed_texts(lookup, [str(t) for t in table["text1"]], instruction, f"mteb task {task.metadata.name}")
        b = embed_texts(lookup, [str(t) for t in table["text2"]], instruction, f"mteb task {task.metadata.name}")
        return item_rows(hf_subset, metric, seed, "spearman", paired_cosine_similarity(a, b),
                         gold=table["score"].to_numpy(dtype=float),
                         ids=[pair_id(x, y) for x, y in zip(table["text1"], table["text2"], strict=True)])
    return []


# mteb's retrieval metric names -> pytrec_eval's per-query measure (`{k}`: the cut-off)
_PYTREC_MEASURES = {"map": "map_cut_{k}", "ndcg": "ndcg_cut_{k}", "recall": "recall_{k}", "precision": "P_{k}",
                    "hit_rate": "success_{k}"}
_RETRIEVAL_METRIC = re.compile(r"^(map|ndcg|recall|precision|hit_rate|mrr)_at_(\d+)$")
MATCH_TOLERANCE = 1e-9  # per-query values are kept only where mteb's averaging of them gives its score to this


def retrieval_per_query(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k_values: list[int],
                        metrics: list[str], *, ignore_identical_ids: bool = False,
                        skip_first_result: bool = False) -> dict[str, tuple[dict[str, float], float]]:
    """Per metric of `metrics` (mteb names, `map_at_1000`, `mrr_at_10`, ...), the value of every query mteb
    averages and the score mteb reports from them, computed as mteb's `AbsTaskRetrieval._evaluate_subset`
    does: queries without qrels dropped, identical query/document ids dropped if the task says so, the first
    result skipped if it says so, pytrec_eval's per-query measures (mteb's `calculate_retrieval_scores`)
    averaged over the queries pytrec_eval scored and rounded to 5 decimals, reciprocal ranks (mteb's `mrr`)
    averaged over the queries searched, unrounded. Metrics without a per-query form are left out."""
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores, mrr

    qrels = {q: docs for q, docs in qrels.items() if len(docs)}  # mteb's _filter_queries_without_positives
    run = {q: {d: s for d, s in docs.items() if not (ignore_identical_ids and d == q)} for q, docs in run.items()}
    if skip_first_result:
        run = {q: dict(sorted(docs.items(), key=lambda x: x[1], reverse=True)[1:]) for q, docs in run.items()}
    k_values = [int(k) for k in k_values]
    scores = calculate_retrieval_scores(run, qrels, k_values).all_scores
    rr = mrr(qrels, run, k_values)
    out: dict[str, tuple[dict[str, float], float]] = {}
    for metric in metrics:
        found = _RETRIEVAL_METRIC.match("recall_at_1" if metric == "accuracy" else metric)
        if found is None or int(found[2]) not in k_values:
            continue
        name, k = found[1], int(found[2])
        if name == "mrr":
            values = dict(zip(run, rr[f"MRR@{k}"], strict=True))
            out[metric] = (values, sum(values.values()) / len(values))
        else:
            measure = _PYTREC_MEASURES[name].format(k=k)
            values = {q: float(s[measure]) for q, s in scores.items()}
            out[metric] = (values, round(sum(values.values()) / len(scores), 5))
    return out


def retrieval_items(task: Any, saved: dict | None, entry: dict, split: str, metrics: list[str],
                    seed: int | None) -> list[dict]:
    """Per query of a retrieval/reranking task (sorted query ids, so two runs' items pair up), its value of
    each of `metrics` (statistic `mean`), recomputed by mteb's own code from mteb's saved predictions and the
    task's qrels. A metric is kept only where averaging those values as mteb does gives mteb's reported score
    (to `MATCH_TOLERANCE`; map/ndcg/recall/precision are reported rounded to 5 decimals, so their items' plain
    mean is within 5e-6 of it); otherwise, or without saved predictions, it keeps no items and the log says why."""
    name, hf_subset = task.metadata.name, str(entry["hf_subset"])
    where = f"mteb task {name} {hf_subset}/{split}"
    run = (saved or {}).get(hf_subset, {}).get(split)
    if not isinstance(run, dict):
        log.warning("%s: mteb saved no predictions; its scores %s keep no per-query items (no CI)", where, metrics)
        return []
    data = task.dataset.get(hf_subset, task.dataset)[split]
    per_query = retrieval_per_query(run, data["relevant_docs"], list(task.k_values), metrics,
                                    ignore_identical_ids=bool(getattr(task, "ignore_identical_ids", False)),
                                    skip_first_result=bool(getattr(task, "skip_first_result", False)))
    out = []
    for metric in metrics:
        if metric not in per_query:
            log.warning("%s: %s has no per-query form here; it keeps no items (no CI)", where, metric)
            continue
        values, averaged = per_query[metric]
        if not values or abs(averaged - float(entry[metric])) > MATCH_TOLERANCE:
            log.warning("%s: %s averaged over %d queries from mteb's predictions is %r, mteb reported %r; "
                        "it keeps no items (no CI)", where, metric, len(values), averaged, entry[metric])
            continue
        queries = sorted(values)
        out += item_rows(hf_subset, metric, seed, "mean", [values[q] for q in queries],
                         ids=[item_id(name, hf_subset, q) for q in queries])
    return out


def _mteb_clusterings(task: Any, saved: dict | None, instruction: str, seed: int | None) -> list[dict]:
    """The first cluster set of an mteb legacy clustering task, with mteb's cluster assignment."""
    if saved is None or not is_legacy_clustering(type(task)):
        return []
    out = []
    split = task.metadata.eval_splits[0]
    subset = next(k for k in saved if k != "mteb_model_meta")
    clusters = saved[subset][split]
    data = task.dataset[split]
    texts = [str(t) for t in data[task.input_column_name][0]]
    labels = [str(x) for x in data[task.label_column_name][0]]
    if clusters and len(clusters[0]) == len(texts):
        out.append({"subset": "set0", "instruction": instruction, "texts": texts, "labels": labels,
                    "assignment": np.asarray(clusters[0]), "seed": seed})
    return out

