"""mteb tasks on cached embeddings: loading a task (mteb's hub data or a task table), listing the texts it
will ask for, and running it on the encode cache.

With `tasks.<name>.dataset` set, the task table replaces mteb's own loading (legacy clustering tasks:
each `subset` one cluster set; STS tasks: `text1, text2, score`); without, mteb loads its hub data
and `limits.task_rows` keeps that many queries of a retrieval/reranking task (with their qrels,
candidates and the corpus they reach). Clustering tasks run once per seed, the seed reaching mteb's
KMeans.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from inbedder.bootstrap import item_rows
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
            raise TaskError(f"tasks.{task_name}: limits.task_rows on hub task {base.metadata.name} is only "
                            "supported for retrieval/reranking tasks")
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


def score_mteb(task_name: str, spec: dict, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
    """Run the mteb task (once per seed for clustering) on cached embeddings; mteb's results cached in out_dir."""
    import mteb

    out = Outcome()
    instruction = str(table["instruction"].iloc[0])
    task = mteb_task(task_name, spec, table=table if "dataset" in spec else None, limit=table.attrs.get("limit"),
                     seed=scoring.seeds[0])
    clustering = task.metadata.type == "Clustering"
    seeds: list[int | None] = list(scoring.seeds) if clustering else [None]
    cache = mteb.ResultCache(scoring.out_dir)
    main = task.metadata.main_score
    extras = MTEB_EXTRA_METRICS.get(task.metadata.type, ())
    for i, seed in enumerate(seeds):
        if seed is not None:
            task.seed = seed
        meta = scoring.model_meta(seed)
        encoder = cached_encoder(lookup, instruction, meta)
        with tempfile.TemporaryDirectory() as predictions, threadpool_limits(limits=1):
            result = mteb.evaluate(
                encoder, task, cache=cache, overwrite_strategy="always", co2_tracker=False,
                prediction_folder=predictions if clustering else None,
                show_progress_bar=False, encode_kwargs={"batch_size": 512},
            )
            saved = _predictions(Path(predictions)) if clustering else None
        if result.exceptions:
            raise RuntimeError(f"mteb task {task_name}: {result.exceptions}")
        if clustering and i == 0:
            out.clusterings += _mteb_clusterings(task, saved, instruction, seed)
        (task_result,) = result.task_results
        for split, entries in task_result.scores.items():
            for entry in entries:
                subset = str(entry["hf_subset"]) if len(task_result.scores) == 1 else f"{entry['hf_subset']}/{split}"
                for metric in dict.fromkeys((main, *extras)):
                    if metric in entry:
                        out.scores.append(Score(subset, metric, float(entry[metric]), seed, len(encoder.texts)))
                if len(task_result.scores) == 1:
                    out.items += _mteb_items(task, table, lookup, instruction, saved, str(entry["hf_subset"]), split,
                                             main, seed)
    return out


def _predictions(folder: Path) -> dict | None:
    """mteb's saved predictions of one evaluation (cluster assignments of a clustering task), or None."""
    files = list(folder.glob("*_predictions.json"))
    return json.loads(files[0].read_text(encoding="utf-8")) if files else None


def _mteb_items(task: Any, table: pd.DataFrame, lookup: Lookup, instruction: str, saved: dict | None, hf_subset: str,
                split: str, metric: str, seed: int | None) -> list[dict]:
    """What the bootstrap needs per item of an mteb score: per text of every cluster set its cluster (legacy
    clustering: mteb's own assignment) and label; per pair of an STS table its cosine similarity and gold score.
    Other kinds (retrieval, reranking) keep none: their scores carry no CI."""
    cls = type(task)
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
        return item_rows(hf_subset, metric, seed, "v_measure", clusters,
                         labels=[x for i in kept for x in labels[i]], groups=groups)
    if is_sts(cls) and "text1" in table.columns and metric in ("cosine_spearman", "spearman"):
        a = embed_texts(lookup, [str(t) for t in table["text1"]], instruction, f"mteb task {task.metadata.name}")
        b = embed_texts(lookup, [str(t) for t in table["text2"]], instruction, f"mteb task {task.metadata.name}")
        return item_rows(hf_subset, metric, seed, "spearman", paired_cosine_similarity(a, b),
                         gold=table["score"].to_numpy(dtype=float))
    return []


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

