"""What every task kind shares: its config entry, its data, the row limit, the task-table file, score records
and the base class `TaskKind`.

A task is a config entry `tasks.<name>` with a `kind` (one class per kind in `inbedder.task_kinds`).
Instructions come from `tasks.<name>.instructions[subset]` (`default` serves every subset without its
own key); a prepared table's own `instruction` column, which it has only where the data carries one
(InstructSTSB), is used where the config names none.

`limit` (config `limits.task_rows`) keeps, per subset (per instruction for pairs, per cluster set for
mteb clustering), the `limit` items with the smallest seeded SHA-256 of their key (text; anchor for
triplets; text1 + text2 for pairs; set id + text for mteb cluster sets): deterministic, and the same
texts (and mirrored triplets, and pairs) in every view of a two-view table.

The task table `results/<run>/tasks/<task>.parquet` is the one place where a task's rows are decided:
the rows after the limit, each with its subset and resolved instruction (`write_task_table`). The
encode and evaluate jobs both read it (`read_task_table`); its parquet metadata names the task, its
kind and the limit it was cut with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from inbedder.datasets import hub_only_datasets, read_prepared
from inbedder.files import atomic_path, sha256_json
from inbedder.raw import DataError

LIMIT_SEED = 0  # seed of the deterministic slice taken by limits.task_rows
ROBUSTNESS_GROUPS = ("correct", "implicit", "incorrect")
DEFAULT_SUBSET = "default"
OVERALL = "overall"  # a report column of the task reads one subset (all, default, ...), not a harmonic mean
TABLE_METADATA_KEY = b"inbedder"

Lookup = Mapping[tuple[str, str], np.ndarray]


class TaskError(ValueError):
    """A task's config entry or data is wrong; the message names the task, key, file or column."""


# ----------------------------------------------------------------------------------------------
# config entries


def subset_instructions(task_name: str, spec: Mapping) -> dict[str, str]:
    """Subset -> instruction of a triplets/clustering/pairs/mteb/own task (config `instructions`)."""
    instructions = spec.get("instructions") or {}
    out = {}
    for subset, instruction in instructions.items():
        if not isinstance(instruction, str) or not instruction.strip():
            raise TaskError(f"tasks.{task_name}.instructions.{subset}: expected one non-empty string")
        out[str(subset)] = instruction
    return out


def mteb_instruction(task_name: str, spec: Mapping) -> str:
    """The one instruction an mteb task is encoded with (`instructions.default`, or the only entry)."""
    instructions = subset_instructions(task_name, spec)
    if DEFAULT_SUBSET in instructions:
        return instructions[DEFAULT_SUBSET]
    if len(instructions) == 1:
        return next(iter(instructions.values()))
    raise TaskError(f"tasks.{task_name}.instructions: an mteb task needs one instruction under 'default'")


def robustness_instructions(task_name: str, spec: Mapping) -> list[tuple[str, int, str]]:
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


def mteb_task_name(task_name: str, spec: Mapping) -> str:
    """The mteb task a config task runs (`mteb_task`, default the config name)."""
    return spec.get("mteb_task", task_name)


# ----------------------------------------------------------------------------------------------
# data


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


def read_dataset(task_name: str, spec: Mapping, schema: str, data_dir: str | Path = "data") -> pd.DataFrame:
    """The prepared table `tasks.<name>.dataset`, read and checked by inbedder.datasets (schema of `schema`)."""
    if "dataset" not in spec:
        raise TaskError(f"tasks.{task_name}.dataset: kind {spec.get('kind')!r} reads a prepared table; none is named")
    path = prepared_path(spec["dataset"], data_dir)
    if not path.exists():
        raise TaskError(f"{path}: prepared table of dataset {spec['dataset']!r} not found (run the data rules first)")
    try:
        return read_prepared(path, schema)
    except DataError as err:
        raise TaskError(f"{err} (tasks.{task_name})") from err


def read_own(task_name: str, spec: Mapping) -> pd.DataFrame:
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


def fill_instructions(table: pd.DataFrame, task_name: str, spec: Mapping, where: str) -> pd.DataFrame:
    """Instruction per row from config `instructions[subset]` (or `default`), else the data's own column
    (a prepared table has one only where the data carries an instruction per row)."""
    instructions = subset_instructions(task_name, spec)
    table = table.copy()
    table["subset"] = table["subset"].astype(str)
    fallback = instructions.get(DEFAULT_SUBSET)
    from_config = table["subset"].map(lambda s: instructions.get(s, fallback)).astype(object)
    own = table["instruction"] if "instruction" in table.columns else pd.Series(None, index=table.index, dtype=object)
    table["instruction"] = from_config.where(from_config.notna(), own)
    bad = table["instruction"].isna() | (table["instruction"].astype(str).str.strip() == "")
    if bad.any():
        subsets = sorted(table.loc[bad, "subset"].unique())
        raise TaskError(f"{where}: no instruction for subset(s) {subsets} (set tasks.{task_name}.instructions)")
    return table


# ----------------------------------------------------------------------------------------------
# the row limit


def rank_key(key: str, seed: int = LIMIT_SEED) -> str:
    """Seeded SHA-256 of a text: the order in which `limit` keeps items."""
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()


def keep_first(keys: Sequence[str], limit: int | None) -> list[bool]:
    """Mask keeping the `limit` distinct keys with the smallest seeded hash (all keys when limit is None)."""
    if limit is None:
        return [True] * len(keys)
    kept = set(sorted(set(keys), key=rank_key)[:limit])
    return [k in kept for k in keys]


def limit_per_group(table: pd.DataFrame, group: str, key: pd.Series, limit: int | None) -> pd.DataFrame:
    """Keep `limit` keys per value of column `group` (keep_first within each group)."""
    if limit is None:
        return table.reset_index(drop=True)
    mask = pd.Series(False, index=table.index)
    for idx in table.groupby(group, sort=False).groups.values():
        mask.loc[idx] = keep_first(list(key.loc[idx]), limit)
    return table[mask].reset_index(drop=True)


def distinct_prompts(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Distinct (text, instruction) pairs as prompts, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for text, instruction in pairs:
        seen.setdefault((str(text), str(instruction)), None)
    return [{"text": t, "instruction": i} for t, i in seen]


# ----------------------------------------------------------------------------------------------
# the task-table file


def write_task_table(table: pd.DataFrame, path: str | Path, *, task: str, kind: str, limit: int | None) -> None:
    """Write a task table atomically, with the task, its kind and the limit in the parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[TABLE_METADATA_KEY] = json.dumps({"task": task, "kind": kind, "limit": limit}).encode()
    with atomic_path(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_task_table(path: str | Path) -> pd.DataFrame:
    """Read a task table; `attrs` hold its task, kind and limit."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise TaskError(f"{path}: task table not found (the task_table rule writes it)")
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(TABLE_METADATA_KEY)
    if raw is None:
        raise TaskError(f"{path}: not a task table (no {TABLE_METADATA_KEY.decode()!r} parquet metadata)")
    table = arrow.to_pandas()
    table.attrs.update(json.loads(raw))
    return table


def table_revision(table: pd.DataFrame) -> str:
    """A short content hash of a task table and its limit (the dataset revision in mteb-layout results)."""
    digest = sha256_json(table.to_dict("list"))[:16]
    return f"{digest}-limit{table.attrs.get('limit')}"


# ----------------------------------------------------------------------------------------------
# score records


@dataclass(frozen=True)
class Score:
    """One score of a task under one (mode, layer)."""

    subset: str
    metric: str
    value: float
    seed: int | None
    n: int


@dataclass
class Outcome:
    """Scores of one (mode, layer), the clusterings worth explaining, and the per-item data behind the scores."""

    scores: list[Score] = field(default_factory=list)
    clusterings: list[dict] = field(default_factory=list)  # subset, texts, instruction, assignment, labels, seed
    items: list[dict] = field(default_factory=list)  # what the bootstrap needs per item (inbedder.bootstrap.item_rows)


@dataclass(frozen=True)
class Scoring:
    """What scoring one (mode, layer) needs besides the table and the embeddings."""

    seeds: tuple[int, ...] = (0, 1, 2)
    out_dir: Path | None = None  # mteb tasks keep mteb's result cache here
    model_meta: Callable[[int | None], Any] | None = None  # seed -> mteb ModelMeta of this (mode, layer)


def embed_texts(lookup: Lookup, texts: Sequence[str], instruction: str, where: str) -> np.ndarray:
    """Stack the cached embeddings of `texts` under `instruction`; a text missing from the cache is an error."""
    missing = [t for t in dict.fromkeys(texts) if (t, instruction) not in lookup]
    if missing:
        shown = "; ".join(repr(t[:60]) for t in missing[:3])
        raise KeyError(
            f"{where}: {len(missing)} text(s) are not in the encode cache under instruction {instruction!r} "
            f"(e.g. {shown}). The cache must be built from the prompts of this task table."
        )
    return np.stack([np.asarray(lookup[(t, instruction)], dtype=np.float32) for t in texts])


# ----------------------------------------------------------------------------------------------
# the base class of the task kinds (one subclass per kind in inbedder.task_kinds)


class TaskKind:
    """A kind of task; an instance is one config task (`name`, `spec`)."""

    kind: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # columns of its task table
    main_metric: ClassVar[str | None]  # main score of the mteb-layout results (None: mteb's own)
    writes_mteb_results: ClassVar[bool] = False  # mteb writes the result JSON itself
    writes_assignments: ClassVar[bool] = False  # assignments.csv beside the scores
    default_modes: ClassVar[tuple[str, ...] | None] = None  # modes scored when `tasks.<t>.modes` is unset: all
    report_metrics: ClassVar[tuple[str, ...]]  # the metric a report column shows: the first one scored
    report_combine: ClassVar[str] = OVERALL  # how a report column combines the subsets: OVERALL or HMEAN
    # The authors' filter drops the tokens of the instructions the config names for the task.
    instructions_filtered: ClassVar[bool] = True
    labelled_views: ClassVar[bool] = False  # each subset the same labelled texts under its own instruction

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self.spec = dict(spec)

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        """The rows the task scores, limited, with subset and resolved instruction (`columns`)."""
        raise NotImplementedError

    def prompts(self, table: pd.DataFrame) -> list[dict[str, str]]:
        """Every distinct (text, instruction) the table needs, in a deterministic order (first appearance)."""
        return distinct_prompts(zip(table["text"], table["instruction"], strict=True))

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        """Scores of one (mode, layer) from the embeddings `lookup` serves."""
        raise NotImplementedError

    def where(self, data_dir: str | Path) -> str:
        """The prepared table and config entry an error about this task names."""
        return f"{prepared_path(self.spec.get('dataset', '?'), data_dir)} (tasks.{self.name})"

    def data_files(self, data_dir: str | Path = "data") -> list[str]:
        """The files its table is built from (the task_table rule's inputs): its prepared table, if any."""
        return [prepared_path(self.spec["dataset"], data_dir).as_posix()] if "dataset" in self.spec else []

    def unavailable_offline(self, offline: str) -> str | None:
        """Why an offline run (config `offline`, as text) cannot reach the task's data, or None."""
        dataset = self.spec.get("dataset")
        if dataset in hub_only_datasets():
            return f"hub-only data not available in this run (dataset {dataset!r}; offline: {offline})"
        return None

    def keeps_last_words(self) -> bool:
        """Whether `models.<m>.keep_last_words` cuts its texts (the authors' clustering tasks alone did)."""
        return False

    def data_note(self) -> str:
        """What the report says about where the task's data came from, when that differs from the paper's."""
        return ""
