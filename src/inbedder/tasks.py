"""Evaluation tasks: the rows each task scores, the (text, instruction) prompts it needs, and mteb task objects.

A task is a config entry `tasks.<name>` with a `kind`:
- `triplets`   prepared table `subset, instruction, anchor, positive, negative` (IntentEmotion-like);
- `clustering` prepared table `subset, instruction, text, label` (NYT-like; each subset one view);
- `pairs`      prepared table `instruction, text1, text2, score` (InstructSTSB-like);
- `mteb`       an mteb task (`mteb_task`, default the task's name); with `dataset` set, the prepared
               table replaces mteb's own loading (clustering schema for clustering tasks, each
               `subset` one cluster set; pairs schema for STS tasks); without, mteb loads the hub data;
- `robustness` one subset of a clustering table scored under 10 correct, 10 implicit and 10 incorrect
               instructions (`instructions: {correct: [...], implicit: [...], incorrect: [...]}`);
- `own`        a local CSV or JSONL (`path`, `text_column`, optional `label_column`, `instructions`, `k`).

Instructions come from `tasks.<name>.instructions[subset]` (`default` serves every subset without its
own key; the table's own `instruction` column is used only where the config names none). Prompts of the triplet and clustering tasks with two or more
subsets include every text under every subset's instruction, so the cross-view diagnostic (one view's
embeddings scored against the other view's labels) reads from the same cache.

`limit` (config `limits.task_rows`) keeps, per subset (per instruction for pairs, per cluster set for
mteb clustering), the `limit` items with the smallest seeded SHA-256 of their key (text; anchor for
triplets; text1 + text2 for pairs; set id + text for mteb cluster sets): deterministic, and the same
texts (and mirrored triplets, and pairs) in every view of a two-view table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from inbedder.files import sha256_file

KINDS = ("triplets", "clustering", "pairs", "mteb", "robustness", "own")
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "triplets": ("subset", "instruction", "anchor", "positive", "negative"),
    "clustering": ("subset", "instruction", "text", "label"),
    "pairs": ("instruction", "text1", "text2", "score"),
}
LIMIT_SEED = 0  # seed of the deterministic slice taken by limits.task_rows
DEFAULT_ROBUSTNESS_MODES = ("1st-gen",)
ROBUSTNESS_GROUPS = ("correct", "implicit", "incorrect")
DEFAULT_SUBSET = "default"


class TaskError(ValueError):
    """A task's config entry or data is wrong; the message names the task, key, file or column."""


# ----------------------------------------------------------------------------------------------
# config entries


def task_kind(task_name: str, spec: dict) -> str:
    """The task's kind, checked against KINDS."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise TaskError(f"tasks.{task_name}.kind: {kind!r} is not one of {KINDS}")
    return kind


def subset_instructions(task_name: str, spec: dict) -> dict[str, str]:
    """Subset -> instruction of a triplets/clustering/pairs/mteb/own task (config `instructions`)."""
    instructions = spec.get("instructions") or {}
    out = {}
    for subset, instruction in instructions.items():
        if not isinstance(instruction, str) or not instruction.strip():
            raise TaskError(f"tasks.{task_name}.instructions.{subset}: expected one non-empty string")
        out[str(subset)] = instruction
    return out


def mteb_instruction(task_name: str, spec: dict) -> str:
    """The one instruction an mteb task is encoded with (`instructions.default`, or the only entry)."""
    instructions = subset_instructions(task_name, spec)
    if DEFAULT_SUBSET in instructions:
        return instructions[DEFAULT_SUBSET]
    if len(instructions) == 1:
        return next(iter(instructions.values()))
    raise TaskError(f"tasks.{task_name}.instructions: an mteb task needs one instruction under 'default'")


def robustness_instructions(task_name: str, spec: dict) -> list[tuple[str, int, str]]:
    """(group, index, instruction) for every instruction of a robustness task, groups in paper order."""
    instructions = spec.get("instructions") or {}
    unknown = sorted(set(instructions) - set(ROBUSTNESS_GROUPS))
    if unknown:
        raise TaskError(f"tasks.{task_name}.instructions: unknown group(s) {unknown}; use {ROBUSTNESS_GROUPS}")
    out = []
    for group in ROBUSTNESS_GROUPS:
        items = instructions.get(group)
        if isinstance(items, str) or not items:
            raise TaskError(f"tasks.{task_name}.instructions.{group}: expected a non-empty list of instructions")
        out.extend((group, i, str(text)) for i, text in enumerate(items))
    return out


def modes_for(spec: dict, model_modes: Sequence[str]) -> list[str]:
    """The model's modes this task scores: all of them, or those in the task's `modes` restriction.

    Robustness tasks default to ("1st-gen",): 30 instructions x every text is expensive.
    """
    wanted = spec.get("modes")
    if wanted is None and spec.get("kind") == "robustness":
        wanted = DEFAULT_ROBUSTNESS_MODES
    if wanted is None:
        return list(model_modes)
    return [m for m in model_modes if m in wanted]


# ----------------------------------------------------------------------------------------------
# tables


def prepared_path(dataset: str, data_dir: str | Path = "data") -> Path:
    """Path of a prepared table: <data_dir>/prepared/<dataset>.parquet."""
    return Path(data_dir) / "prepared" / f"{dataset}.parquet"


def check_columns(table: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise naming `where` and the missing columns unless `table` has all of `columns`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TaskError(f"{where}: missing column(s) {missing} (has {list(table.columns)})")
    if len(table) == 0:
        raise TaskError(f"{where}: the table is empty")


def read_prepared(dataset: str, kind: str, data_dir: str | Path = "data") -> pd.DataFrame:
    """Read a prepared table and check it has the columns of its kind (see docs/contracts.md)."""
    path = prepared_path(dataset, data_dir)
    if not path.exists():
        raise TaskError(f"{path}: prepared table of dataset {dataset!r} not found (run the data rules first)")
    table = pd.read_parquet(path)
    check_columns(table, TABLE_COLUMNS[kind], str(path))
    return table


def rank_key(key: str, seed: int = LIMIT_SEED) -> str:
    """Seeded SHA-256 of a text: the order in which `limit` keeps items."""
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()


def keep_first(keys: Sequence[str], limit: int | None) -> list[bool]:
    """Mask keeping the `limit` distinct keys with the smallest seeded hash (all keys when limit is None)."""
    if limit is None:
        return [True] * len(keys)
    kept = set(sorted(set(keys), key=rank_key)[:limit])
    return [k in kept for k in keys]


def _limit_per_group(table: pd.DataFrame, group: str, key: pd.Series, limit: int | None) -> pd.DataFrame:
    if limit is None:
        return table.reset_index(drop=True)
    mask = pd.Series(False, index=table.index)
    for idx in table.groupby(group, sort=False).groups.values():
        mask.loc[idx] = keep_first(list(key.loc[idx]), limit)
    return table[mask].reset_index(drop=True)


def _fill_instructions(table: pd.DataFrame, task_name: str, spec: dict, where: str) -> pd.DataFrame:
    """Instruction per row from config `instructions[subset]` (or `default`), else the table's own column."""
    instructions = subset_instructions(task_name, spec)
    table = table.copy()
    table["subset"] = table["subset"].astype(str)
    fallback = instructions.get(DEFAULT_SUBSET)
    from_config = table["subset"].map(lambda s: instructions.get(s, fallback)).astype(object)
    table["instruction"] = from_config.where(from_config.notna(), table["instruction"])
    bad = table["instruction"].isna() | (table["instruction"].astype(str).str.strip() == "")
    if bad.any():
        subsets = sorted(table.loc[bad, "subset"].unique())
        raise TaskError(f"{where}: no instruction for subset(s) {subsets} (set tasks.{task_name}.instructions)")
    return table


def read_own(task_name: str, spec: dict) -> pd.DataFrame:
    """Read an own-data file (CSV or JSONL) into columns `text` (and `label` when configured)."""
    if "path" not in spec:
        raise TaskError(f"tasks.{task_name}.path: an own-data task needs the path of a CSV or JSONL file")
    path = Path(spec["path"])
    if not path.exists():
        raise TaskError(f"tasks.{task_name}.path: {path} does not exist")
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            raw = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif path.suffix.lower() in (".csv", ".tsv"):
            raw = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                              keep_default_na=False, encoding="utf-8")
        else:
            raise TaskError(f"tasks.{task_name}.path: {path} is neither .csv, .tsv nor .jsonl")
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not valid UTF-8 ({err})") from err
    except ValueError as err:
        if isinstance(err, TaskError):
            raise
        raise TaskError(f"{path}: cannot be parsed ({err})") from err
    text_col = spec.get("text_column", "text")
    label_col = spec.get("label_column")
    check_columns(raw, [text_col] + ([label_col] if label_col else []), f"{path} (tasks.{task_name})")
    table = pd.DataFrame({"text": raw[text_col].astype(str)})
    if label_col:
        table["label"] = raw[label_col].astype(str)
    table = table[table["text"].str.strip() != ""].reset_index(drop=True)
    if table.empty:
        raise TaskError(f"{path}: no non-empty text in column {text_col!r}")
    return table


def task_table(task_name: str, spec: dict, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
    """The rows a task scores, limited and with instructions filled in (not for hub mteb tasks)."""
    kind = task_kind(task_name, spec)
    if kind == "own":
        table = read_own(task_name, spec)
        return table[keep_first(list(table["text"]), limit)].reset_index(drop=True)
    if "dataset" not in spec:
        raise TaskError(f"tasks.{task_name}.dataset: kind {kind!r} reads a prepared table; none is named")
    dataset = spec["dataset"]
    where = f"{prepared_path(dataset, data_dir)} (tasks.{task_name})"
    if kind == "triplets":
        table = _fill_instructions(read_prepared(dataset, kind, data_dir), task_name, spec, where)
        # by anchor: a two-view table keeps the same anchors (mirrored triplets) in every view
        return _limit_per_group(table, "subset", table["anchor"], limit)
    if kind == "clustering":
        table = _fill_instructions(read_prepared(dataset, kind, data_dir), task_name, spec, where)
        return _limit_per_group(table, "subset", table["text"], limit)
    if kind == "pairs":
        table = read_prepared(dataset, kind, data_dir)
        return _limit_per_group(table, "instruction", table["text1"] + "\x1f" + table["text2"], limit)
    if kind == "robustness":
        table = read_prepared(dataset, "clustering", data_dir)
        subset = spec.get("subset")
        table = table[table["subset"].astype(str) == str(subset)]
        if table.empty:
            raise TaskError(f"{where}: no rows of subset {subset!r} (tasks.{task_name}.subset)")
        table = table[["text", "label"]]
        return table[keep_first(list(table["text"]), limit)].reset_index(drop=True)
    # mteb on a prepared table: clustering (cluster sets in `subset`) or pairs (STS)
    path = prepared_path(dataset, data_dir)
    if not path.exists():
        raise TaskError(f"{path}: prepared table of dataset {dataset!r} not found (run the data rules first)")
    table = pd.read_parquet(path)
    if {"text1", "text2"} & set(table.columns):
        check_columns(table, ("text1", "text2", "score"), where)
        return table[keep_first(list(table["text1"] + "\x1f" + table["text2"]), limit)].reset_index(drop=True)
    check_columns(table, ("text", "label"), where)
    if "subset" not in table.columns:
        table = table.assign(subset=DEFAULT_SUBSET)
    table = table.assign(subset=table["subset"].astype(str))
    if spec.get("subsets"):
        wanted = [str(s) for s in spec["subsets"]]
        missing = sorted(set(wanted) - set(table["subset"]))
        if missing:
            raise TaskError(f"tasks.{task_name}.subsets: {missing} not in {path} (has {sorted(set(table['subset']))})")
        table = table[table["subset"].isin(wanted)]
    # cluster sets are independent samples: the set id is part of the key
    return _limit_per_group(table, "subset", table["subset"] + "\x1f" + table["text"], limit)


# ----------------------------------------------------------------------------------------------
# prompts


def _distinct(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for text, instruction in pairs:
        seen.setdefault((str(text), str(instruction)), None)
    return [{"text": t, "instruction": i} for t, i in seen]


def task_prompts(
    task_name: str, spec: dict, data_dir: str | Path = "data", limit: int | None = None
) -> list[dict[str, str]]:
    """Every distinct (text, instruction) the task needs, in a deterministic order (first appearance)."""
    kind = task_kind(task_name, spec)
    if kind == "mteb":
        instruction = mteb_instruction(task_name, spec)
        texts = mteb_texts(task_name, spec, data_dir=data_dir, limit=limit)
        return _distinct((t, instruction) for t in texts)
    table = task_table(task_name, spec, data_dir=data_dir, limit=limit)
    if kind == "pairs":
        return _distinct(
            p
            for row in table.itertuples(index=False)
            for p in ((row.text1, row.instruction), (row.text2, row.instruction))
        )
    if kind == "robustness":
        instructions = [text for _, _, text in robustness_instructions(task_name, spec)]
        return _distinct((t, i) for i in instructions for t in table["text"])
    if kind == "own":
        instructions = list(subset_instructions(task_name, spec).values())
        if not instructions:
            raise TaskError(f"tasks.{task_name}.instructions: an own-data task needs at least one instruction")
        return _distinct((t, i) for i in instructions for t in table["text"])
    columns = ("anchor", "positive", "negative") if kind == "triplets" else ("text",)
    own = ((getattr(row, c), row.instruction) for row in table.itertuples(index=False) for c in columns)
    views = list(dict.fromkeys(table["instruction"]))
    if len(views) < 2:
        return _distinct(own)
    texts = list(dict.fromkeys(str(getattr(row, c)) for row in table.itertuples(index=False) for c in columns))
    cross = ((t, i) for i in views for t in texts)
    return _distinct(list(own) + list(cross))


# ----------------------------------------------------------------------------------------------
# mteb


def mteb_task_name(task_name: str, spec: dict) -> str:
    """The mteb task a config task runs (`mteb_task`, default the config name)."""
    return spec.get("mteb_task", task_name)


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


def _is_legacy_clustering(cls: type) -> bool:
    from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

    return issubclass(cls, AbsTaskClusteringLegacy)


def _is_sts(cls: type) -> bool:
    from mteb.abstasks.sts import AbsTaskSTS

    return issubclass(cls, AbsTaskSTS)


def _is_retrieval(cls: type) -> bool:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return issubclass(cls, AbsTaskRetrieval)


def _mteb_dataset_from_table(cls: type, table: pd.DataFrame, task_name: str) -> Any:
    """The `dataset` attribute mteb expects, built from a prepared table."""
    from datasets import Dataset, DatasetDict

    split = cls.metadata.eval_splits[0]
    if _is_legacy_clustering(cls):
        if "text" not in table.columns:
            raise TaskError(f"tasks.{task_name}: {cls.metadata.name} is a clustering task; table needs text, label")
        rows = {"sentences": [], "labels": []}
        for _, group in table.groupby("subset", sort=False):
            rows["sentences"].append([str(t) for t in group["text"]])
            rows["labels"].append([str(x) for x in group["label"]])
        return DatasetDict({split: Dataset.from_dict(rows)})
    if _is_sts(cls):
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


def _limit_retrieval(dataset: dict, limit: int) -> None:
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


def mteb_task(
    task_name: str, spec: dict, data_dir: str | Path = "data", limit: int | None = None, seed: int = 42
) -> Any:
    """A loaded mteb task: the prepared table when `dataset` is set, else mteb's hub data; clustering seeded."""
    base = mteb_task_class(mteb_task_name(task_name, spec))
    # The paper's task versions are run on purpose: no "superseded by .v2" warning on every run.
    updates: dict[str, Any] = {"superseded_by": None}
    attrs: dict[str, Any] = {}
    if _is_legacy_clustering(base):  # (mteb's v2 clustering tasks read self.seed themselves)

        def _evaluate_subset(self, *args, **kwargs):  # the task's seed reaches mteb's KMeans
            kwargs.setdefault("seed", self.seed)
            return base._evaluate_subset(self, *args, **kwargs)

        attrs["_evaluate_subset"] = _evaluate_subset
    if "dataset" in spec:
        path = prepared_path(spec["dataset"], data_dir)
        table = task_table(task_name, spec, data_dir=data_dir, limit=limit)
        built = _mteb_dataset_from_table(base, table, task_name)
        digest = sha256_file(path)[:16] if path.exists() else "missing"
        updates["dataset"] = {
            "path": f"inbedder:data/prepared/{spec['dataset']}.parquet",
            "revision": f"{digest}-limit{limit}",
        }

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
        if _is_retrieval(base):
            task.convert_v1_dataset_format_to_v2(num_proc=None)
            _limit_retrieval(task.dataset, limit)
        else:
            raise TaskError(f"tasks.{task_name}: limits.task_rows on hub task {base.metadata.name} is only "
                            "supported for retrieval/reranking tasks")
    return task


def mteb_texts(task_name: str, spec: dict, data_dir: str | Path = "data", limit: int | None = None) -> list[str]:
    """Every text mteb will ask the model to encode for this task, in a deterministic order."""
    if "dataset" in spec:
        table = task_table(task_name, spec, data_dir=data_dir, limit=limit)
        if "text1" in table.columns:  # mteb encodes the first column, then the second
            return [str(t) for t in table["text1"]] + [str(t) for t in table["text2"]]
        return [str(t) for t in table["text"]]
    task = mteb_task(task_name, spec, data_dir=data_dir, limit=limit)
    return texts_of_loaded_task(task)


def texts_of_loaded_task(task: Any) -> list[str]:
    """Texts of a loaded mteb task, as mteb's dataloaders hand them to `encode`."""
    cls = type(task)
    texts: list[str] = []
    splits = task.metadata.eval_splits
    if _is_retrieval(cls):
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
            if _is_legacy_clustering(cls):
                for row in data[task.input_column_name]:
                    texts += [str(t) for t in row]
            elif _is_sts(cls):
                a, b = cls.column_names
                texts += [str(t) for t in data[a]] + [str(t) for t in data[b]]
            elif hasattr(task, "input_column_name"):
                texts += [str(t) for t in data[task.input_column_name]]
            else:
                raise TaskError(f"{task.metadata.name}: cannot list the texts of a {cls.__mro__[1].__name__} task")
    return texts
